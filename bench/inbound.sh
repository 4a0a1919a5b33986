#!/usr/bin/env bash
# Durable inbound accept rate: tlsmta (Maildir, fsync on) vs a private
# Postfix (accepting into its queue), in one run, with Postfix's
# smtp-source: MESSAGES messages of SIZE bytes over SESSIONS parallel
# sessions, a new TCP connection per message (smtp-source's default: it
# disconnects after each message unless given -d).  Plain SMTP only:
# smtp-source has no STARTTLS support, and no other load tool on the
# machine speaks it (swaks is one process per message).
#
#   bash bench/inbound.sh
#
# Environment (all optional):
#   MESSAGES=2000 SIZE=4096 SESSIONS=20   the load
#   ROUNDS=3        pairs of measurements (same instances; who goes first
#                   alternates); the mean is reported too
#   PF_MODE=hold    how Postfix keeps the mail (hold|defer, see lib/postfix.sh)
#   VENV=<repo>/.venv      where twistd with tlsmta lives
#   ENDPOINT_OPTIONS=backlog=1024   appended to tlsmta's listener endpoint
#                   (Twisted's default listen backlog is 50)
#   KEEP=1          keep the temp dir (logs, maildir) for inspection
#
# Everything listens on 127.0.0.1 only; every process started here is
# stopped by its PID and the temp dir removed on exit.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
VENV=${VENV:-$ROOT/.venv}
MESSAGES=${MESSAGES:-2000}
SIZE=${SIZE:-4096}
SESSIONS=${SESSIONS:-20}
ROUNDS=${ROUNDS:-3}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-900}

# shellcheck source=lib/postfix.sh
source "$HERE/lib/postfix.sh"

[[ $(id -u) == 0 ]] || {
    echo "run as root (a private Postfix instance needs it)" >&2
    exit 1
}
[[ -x $SMTP_SOURCE ]] || {
    echo "$SMTP_SOURCE missing (apt-get install postfix)" >&2
    exit 1
}

TMP=$(mktemp -d /tmp/tlsmta-bench-inbound.XXXXXX)
chmod 0755 "$TMP"
TLSMTA_PID=
cleanup() {
    local rc=$?
    set +e
    if [[ -n $LOAD_PID ]]; then
        kill -TERM "$LOAD_PID" 2>/dev/null # timeout(1) passes it on to smtp-source
        wait "$LOAD_PID" 2>/dev/null
    fi
    if [[ -n $TLSMTA_PID ]] && kill -0 "$TLSMTA_PID" 2>/dev/null; then
        kill -TERM "$TLSMTA_PID"
        for _ in $(seq 100); do kill -0 "$TLSMTA_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$TLSMTA_PID" 2>/dev/null && kill -KILL "$TLSMTA_PID"
        wait "$TLSMTA_PID" 2>/dev/null
    fi
    pf_stop "$TMP/postfix"
    if [[ ${KEEP:-} == 1 ]]; then
        echo "kept $TMP"
    else
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# raise the soft open-files limit towards 65536, as far as the hard limit allows
# (without CAP_SYS_RESOURCE root cannot raise the hard limit either)
RAISE_NOFILE='h=$(ulimit -Hn); if [ "$h" = unlimited ] || [ "$h" -gt 65536 ]; then h=65536; fi; ulimit -Sn "$h";'

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# cpu seconds (user+system) of a PID (all threads), and of its main thread
# (the reactor) alone
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
main_thread_cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/task/$1/stat"
}

# TcpExt ListenOverflows (whole machine): connections dropped on a full accept queue
listen_overflows() {
    awk '/^TcpExt:/ { if (!n) { n = split($0, k) } else { split($0, v); for (i = 1; i <= n; i++) if (k[i] == "ListenOverflows") print v[i] } }' /proc/net/netstat
}

# busy and total jiffies of the whole machine (all CPUs), from /proc/stat
machine_jiffies() {
    awk '/^cpu / { idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i; print total - idle, total }' /proc/stat
}

# run_load PORT LABEL: sets LOAD_RESULT to "elapsed_seconds machine_busy_percent
# listen_overflows" (100% busy = all CPUs); fails if smtp-source did.
# smtp-source runs in the background and is waited for, so a signal is
# handled at once (the EXIT trap stops it by its PID).
LOAD_PID=
LOAD_RESULT=
run_load() {
    local port=$1 label=$2 t0 t1 j0 j1 o0 o1
    o0=$(listen_overflows)
    j0=$(machine_jiffies)
    t0=$(now)
    timeout "$LOAD_TIMEOUT" "$SMTP_SOURCE" -4 -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
        -M bench-client.local -f sender@bench-client.local -t rcpt@remote.example \
        "127.0.0.1:$port" >"$TMP/smtp-source-$label.out" 2>&1 &
    LOAD_PID=$!
    if ! wait "$LOAD_PID"; then
        LOAD_PID=
        echo "smtp-source against $label failed:" >&2
        tail -n 20 "$TMP/smtp-source-$label.out" >&2
        return 1
    fi
    LOAD_PID=
    t1=$(now)
    j1=$(machine_jiffies)
    o1=$(listen_overflows)
    LOAD_RESULT="$(calc "$t1 - $t0") $(echo "$j0 $j1" | awk '{ printf "%.0f", ($3 - $1) / ($4 - $2) * 100 }') $((o1 - o0))"
}

# ---------------------------------------------------------------- tlsmta
TPORT=$(free_port)
mkdir -p "$TMP/tlsmta/state"
cat >"$TMP/tlsmta/bench.toml" <<EOF
[global]
hostname = "bench.local"
state_dir = "$TMP/tlsmta/state"
route = "maildir:$TMP/tlsmta/maildir"

[[listener]]
name = "bench"
endpoint = "tcp:$TPORT:interface=127.0.0.1${ENDPOINT_OPTIONS:+:$ENDPOINT_OPTIONS}"
tls = "starttls"
tls_certificate = "auto"
relay_networks = ["127.0.0.0/8"]
max_connections = 20000
EOF
TLOG=$TMP/tlsmta/tlsmta.log
bash -c "$RAISE_NOFILE"' exec "$@"' _ "$VENV/bin/twistd" -n --pidfile= tlsmta \
    --config "$TMP/tlsmta/bench.toml" >"$TLOG" 2>&1 &
TLSMTA_PID=$!
for _ in $(seq 200); do
    grep -q "listening on" "$TLOG" && break
    kill -0 "$TLSMTA_PID" 2>/dev/null || { echo "tlsmta exited:" >&2; cat "$TLOG" >&2; exit 1; }
    sleep 0.1
done
grep -q "listening on" "$TLOG" || { echo "tlsmta did not start:" >&2; cat "$TLOG" >&2; exit 1; }

# ---------------------------------------------------------------- postfix
PPORT=$(free_port)
pf_create "$TMP/postfix" "$PPORT" >/dev/null
pf_start "$TMP/postfix"

echo "tlsmta-bench inbound: $MESSAGES messages x $SIZE bytes, $SESSIONS sessions," \
    "new connection per message, plain SMTP, loopback; Postfix mode: ${PF_MODE:-hold}"
echo "host: $(nproc) CPUs; $(uname -r); $(df -PT "$TMP" | awk 'NR==2 {print $2 " on " $1}')"

results=()
for ((round = 1; round <= ROUNDS; round++)); do
    cpu0=$(cpu_seconds "$TLSMTA_PID")
    main0=$(main_thread_cpu_seconds "$TLSMTA_PID")
    # alternate who goes first, so neither always runs on a warmer machine
    if ((round % 2 == 0)); then
        run_load "$PPORT" postfix
        read -r t_postfix busy_postfix ovf_postfix <<<"$LOAD_RESULT"
        cpu0=$(cpu_seconds "$TLSMTA_PID")
        main0=$(main_thread_cpu_seconds "$TLSMTA_PID")
    fi
    run_load "$TPORT" tlsmta
    read -r t_tlsmta busy_tlsmta ovf_tlsmta <<<"$LOAD_RESULT"
    cpu1=$(cpu_seconds "$TLSMTA_PID")
    main1=$(main_thread_cpu_seconds "$TLSMTA_PID")
    if ((round % 2 == 1)); then
        run_load "$PPORT" postfix
        read -r t_postfix busy_postfix ovf_postfix <<<"$LOAD_RESULT"
    fi
    [[ -n $t_tlsmta && -n $t_postfix ]] || exit 1
    r_tlsmta=$(calc "$MESSAGES / $t_tlsmta")
    r_postfix=$(calc "$MESSAGES / $t_postfix")
    ratio=$(calc "$r_tlsmta / $r_postfix")
    cpu=$(calc "($cpu1 - $cpu0) / $t_tlsmta * 100")
    main=$(calc "($main1 - $main0) / $t_tlsmta * 100")
    per_msg=$(calc "($cpu1 - $cpu0) / $MESSAGES * 1000")
    printf 'round %d: tlsmta  %6.1f msg/s (%.2f s; tlsmta CPU %.0f%% of a core, reactor thread %.0f%%, %.2f ms CPU/msg; machine %s%% busy; listen overflows %s)\n' \
        "$round" "$r_tlsmta" "$t_tlsmta" "$cpu" "$main" "$per_msg" "$busy_tlsmta" "$ovf_tlsmta"
    printf '         postfix %6.1f msg/s (%.2f s; machine %s%% busy; listen overflows %s)  ratio tlsmta/postfix %.2f\n' \
        "$r_postfix" "$t_postfix" "$busy_postfix" "$ovf_postfix" "$ratio"
    results+=("$r_tlsmta $r_postfix")
done

# ---------------------------------------------------------------- verify
expected=$((MESSAGES * ROUNDS))
sleep 1 # let Postfix's cleanup/qmgr settle (250 was given after the fsync already)
n_tlsmta=$(find "$TMP/tlsmta/maildir/new" -type f | wc -l)
n_tmp=$(find "$TMP/tlsmta/maildir/tmp" -type f | wc -l)
n_postfix=$(pf_queue_count "$TMP/postfix")
rss_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$TLSMTA_PID/status")
received=$(grep -c ' code=250 ' "$TLOG" || true)
problems=$(grep -Eic 'traceback|unhandled|error|#critical|#error|#warn' "$TLOG" || true)
pf_problems=$(grep -Eic ': (warning|fatal|panic|error):' "$TMP/postfix/maillog" || true)

echo "verify: tlsmta maildir new/ $n_tlsmta files (tmp/ $n_tmp), $received 'code=250' log lines;" \
    "postfix queue $n_postfix files; expected $expected each"
echo "tlsmta RSS after the load: $((rss_kb / 1024)) MiB; suspicious tlsmta log lines: $problems;" \
    "postfix warnings: $pf_problems"
if ((problems > 0)); then
    echo "--- tlsmta log, suspicious lines (first 20):"
    grep -Ei 'traceback|unhandled|error|#critical|#error|#warn' "$TLOG" | head -n 20 || true
fi
if ((pf_problems > 0)); then
    echo "--- postfix maillog, warnings (first 10):"
    grep -Ei ': (warning|fatal|panic|error):' "$TMP/postfix/maillog" | head -n 10 || true
fi
sizes=$(find "$TMP/tlsmta/maildir/new" -type f -printf '%s\n' | sort -n | uniq -c | sort -rn | awk 'NR <= 3 { printf "%s x %s B; ", $1, $2 }')
echo "tlsmta maildir file sizes (count size): $sizes"

if ((ROUNDS > 1)); then
    printf '%s\n' "${results[@]}" | awk '{ t += $1; p += $2; n++ }
        END { printf "mean over %d rounds: tlsmta %.1f msg/s, postfix %.1f msg/s, ratio %.2f\n", n, t/n, p/n, t/p }'
fi

status=0
if ((n_tlsmta != expected)); then
    echo "MISMATCH: tlsmta stored $n_tlsmta of $expected" >&2
    status=1
fi
if ((n_postfix != expected)); then
    echo "MISMATCH: postfix queued $n_postfix of $expected" >&2
    status=1
fi
exit $status
