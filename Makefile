# Two entry points for a fresh machine (see README.md):
#   make run   - create .venv and run the dev test relay on 127.0.0.1:2525 (web page: http://127.0.0.1:8025/)
#   make test  - create .venv, install the real peers (postfix, swaks, openssl, systemd tools, haproxy,
#                chromium, unbound + ldns for a DNSSEC-signed test zone), run the tests

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-stamp
# Debian packages the tests drive as real peers (chromium: the dev relay's web page;
# unbound + ldnsutils: a DNSSEC-signed test zone).
SYSTEM_PACKAGES = postfix swaks openssl systemd haproxy chromium unbound ldnsutils
SYSTEM_TOOLS = /usr/sbin/postfix /usr/sbin/smtp-source /usr/bin/swaks /usr/bin/openssl /usr/bin/systemd-analyze /usr/bin/systemd-socket-activate /usr/sbin/haproxy /usr/bin/chromium /usr/sbin/unbound /usr/bin/ldns-signzone

.PHONY: run test venv system-deps

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat mode puts the checkout on sys.path, so twistd finds twisted/plugins here.
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= tlsmta $(ARGS)

system-deps:
	@missing=; for tool in $(SYSTEM_TOOLS); do [ -x $$tool ] || missing=yes; done; \
	if [ -n "$$missing" ]; then \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $$sudo debconf-set-selections; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); \
	fi

test: $(STAMP) system-deps
	$(BIN)/pytest $(PYTEST_ARGS)
