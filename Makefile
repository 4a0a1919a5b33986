# Two entry points for a fresh machine (see README.md):
#   make run   - create .venv and run the dev test relay on 127.0.0.1:2525 (web page: http://127.0.0.1:8025/)
#   make test  - create .venv, install the real peers (postfix, swaks, openssl, systemd tools, haproxy,
#                chromium, unbound + ldns for a DNSSEC-signed test zone), run the tests

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed-stamp
# Debian packages the tests drive as real peers, each named (never via Recommends):
# swaks needs libnet-ssleay-perl for TLS; chromium: the dev relay's web page;
# unbound + ldnsutils: a DNSSEC-signed test zone; dovecot-core + dovecot-lmtpd: the LMTP mailbox server;
# opendkim, opendkim-tools, rspamd: milters, and opendkim -t the independent verifier of our DKIM signatures;
# redis-server: the fleet's shared state ([cluster]).
SYSTEM_PACKAGES = postfix swaks libnet-ssleay-perl openssl systemd haproxy chromium unbound ldnsutils testssl.sh dovecot-core dovecot-lmtpd opendkim opendkim-tools rspamd redis-server

.PHONY: run test venv dist system-deps

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# A plain editable install: setup.cfg's package_dir puts the checkout on sys.path,
	# so twistd finds twisted/plugins/ here (checked from another directory).
	$(BIN)/pip install -q -e '.[test]'
	# sslyze (tests/test_tls_profile.py runs it against a listener, as a peer process) pins
	# cryptography<47, which pyOpenSSL 26 cannot use: it gets a venv of its own.
	$(PYTHON) -m venv $(VENV)/sslyze
	$(VENV)/sslyze/bin/pip install -q 'sslyze>=6.3'
	cd / && $(abspath $(BIN))/twistd tlsmta --help >/dev/null
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= tlsmta $(ARGS)

# Every run: ask dpkg for each package by name and install the ones missing. The tests start their
# own peers: a policy-rc.d (unless one exists) keeps the install from starting system daemons (dovecot).
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $$sudo debconf-set-selections; \
	  policy=; [ -e /usr/sbin/policy-rc.d ] || { policy=/usr/sbin/policy-rc.d; \
	    printf '#!/bin/sh\nexit 101\n' | $$sudo tee $$policy >/dev/null; $$sudo chmod 755 $$policy; }; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  status=$$?; [ -z "$$policy" ] || $$sudo rm -f $$policy; exit $$status; \
	fi

# A wheel in dist/ for `pip install dist/tlsmta-*.whl` on a machine without this checkout.
dist: $(STAMP)
	rm -rf dist && $(BIN)/pip wheel -q --no-deps -w dist .

test: $(STAMP) system-deps
	$(BIN)/pytest $(PYTEST_ARGS)
