#!/usr/bin/env bash
# Durable inbound accept rate: tlsmta (Maildir, fsync on) vs a private
# Postfix (accepting into its queue), in one run, with the same load for
# both: MESSAGES messages of SIZE bytes over SESSIONS parallel sessions, a
# new TCP connection per message.  The load generators (LOADS):
#
#   smtp-source  Postfix's smtp-source (its default: it disconnects after
#                each message unless given -d); plain SMTP, no STARTTLS
#   plain        the C load generator in lib/tls_smtp.c (`tls_smtp load
#                -P`), plain SMTP, MAIL/RCPT/DATA pipelined; it also
#                measures every message's latency from the final "." to the
#                250 (p50/p99 are printed)
#   starttls     the same with STARTTLS on every connection (a full TLS
#                handshake, certificate chain and name verified; both
#                servers serve the same ECDSA P-256 certificate, made with
#                trustme, for mx.inbound.bench), latency too
#   starttls-resumed   the same, offering the previous TLS session
#
# With a C load the generator is compiled into the temp dir (cc,
# libssl-dev) and both servers get the certificate: tlsmta's listener
# tls_certificate/tls_key, Postfix smtpd_tls_security_level = may with
# smtpd_tls_cert_file/key_file (lib/postfix.sh).  Without one, tlsmta
# uses tls_certificate = "auto" and Postfix has no TLS (as before).
#
#   bash bench/inbound.sh
#   LOADS="smtp-source plain starttls" bash bench/inbound.sh
#
# Environment (all optional):
#   MESSAGES=2000 SIZE=4096 SESSIONS=20   the load
#   LOADS=smtp-source   load generators, see above, run in this order in
#                   every round
#   PER_CONN=1      messages per connection for the C loads
#   ROUNDS=3        pairs of measurements (same instances; who goes first
#                   alternates); the mean is reported too
#   PF_MODE=hold    how Postfix keeps the mail (hold|defer, see lib/postfix.sh)
#   VENV=<repo>/.venv      where twistd with tlsmta lives
#   ENDPOINT_OPTIONS=backlog=1024   appended to tlsmta's listener endpoint
#                   (Twisted's default listen backlog is 50)
#   KEEP=1          keep the temp dir (logs, maildir) for inspection
#   COMMIT=fsync    tlsmta's [spool] commit: fsync, or syncfs (storage.groupcommit)
#   INSTANCES=1     tlsmta processes sharing the port (endpoint reuseport:,
#                   each with its own state dir, one Maildir): docs/architecture.md's
#                   scaling by processes; rates, CPU and RSS are their sums
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
LOADS=${LOADS:-smtp-source}
COMMIT=${COMMIT:-fsync}
PER_CONN=${PER_CONN:-1}
CERT_NAME=mx.inbound.bench
C_LOADS=0
for load in $LOADS; do
    case $load in
    smtp-source) ;;
    plain | starttls | starttls-resumed) C_LOADS=1 ;;
    *)
        echo "unknown load $load (smtp-source, plain, starttls, starttls-resumed)" >&2
        exit 2
        ;;
    esac
done

# shellcheck source=lib/postfix.sh
source "$HERE/lib/postfix.sh"
# shellcheck source=lib/common.sh
source "$HERE/lib/common.sh"

[[ $(id -u) == 0 ]] || {
    echo "run as root (a private Postfix instance needs it)" >&2
    exit 1
}
[[ -x $SMTP_SOURCE ]] || {
    echo "$SMTP_SOURCE missing (apt-get install postfix)" >&2
    exit 1
}
if ((C_LOADS)); then
    command -v cc >/dev/null && [[ -r /usr/include/openssl/ssl.h ]] || {
        echo "the C load generator needs cc and the OpenSSL headers (apt-get install gcc libssl-dev)" >&2
        exit 1
    }
fi

TMP=$(mktemp -d /tmp/tlsmta-bench-inbound.XXXXXX)
chmod 0755 "$TMP"
INSTANCES=${INSTANCES:-1}
TLSMTA_PIDS=()
cleanup() {
    local rc=$?
    set +e
    if [[ -n $LOAD_PID ]]; then
        kill -TERM "$LOAD_PID" 2>/dev/null # timeout(1) passes it on to smtp-source
        wait "$LOAD_PID" 2>/dev/null
    fi
    for pid in "${TLSMTA_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        wait "$pid" 2>/dev/null
    done
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

# cpu seconds (user+system) of the tlsmta processes (all threads), and of
# their main threads (the reactors) alone
cpu_seconds() {
    local files=()
    for pid in "${TLSMTA_PIDS[@]}"; do files+=("/proc/$pid/stat"); done
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); s += $12 + $13 } END { print s / hz }' "${files[@]}"
}
main_thread_cpu_seconds() {
    local files=()
    for pid in "${TLSMTA_PIDS[@]}"; do files+=("/proc/$pid/task/$pid/stat"); done
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); s += $12 + $13 } END { print s / hz }' "${files[@]}"
}

# TcpExt ListenOverflows (whole machine): connections dropped on a full accept queue
listen_overflows() {
    awk '/^TcpExt:/ { if (!n) { n = split($0, k) } else { split($0, v); for (i = 1; i <= n; i++) if (k[i] == "ListenOverflows") print v[i] } }' /proc/net/netstat
}

# run_load PORT LABEL LOAD ROUND: sets LOAD_RESULT to "elapsed_seconds
# machine_busy_percent listen_overflows" (100% busy = all CPUs); fails if
# the load generator did.  A C load also leaves its per-message latencies
# (ms) in $TMP/lat-LABEL-LOAD-ROUND.txt and its summary line in LOAD_LINE.
# The generator runs in the background and is waited for, so a signal is
# handled at once (the EXIT trap stops it by its PID).
LOAD_PID=
LOAD_RESULT=
LOAD_LINE=
run_load() {
    local port=$1 label=$2 load=$3 round=$4 t0 t1 j0 j1 o0 o1 out
    local cmd
    out=$TMP/load-$label-$load-$round.out
    case $load in
    smtp-source)
        cmd=("$SMTP_SOURCE" -4 -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE"
            -M bench-client.local -f sender@bench-client.local -t rcpt@remote.example "127.0.0.1:$port")
        ;;
    *)
        cmd=("$TMP/tls_smtp" load -t "127.0.0.1:$port" -s "$SESSIONS" -m "$MESSAGES" -r "$PER_CONN" -z "$SIZE"
            -H bench-client.local -F sender@bench-client.local -T rcpt@remote.example
            -L "$TMP/lat-$label-$load-$round.txt")
        case $load in
        plain) cmd+=(-P) ;;
        starttls) cmd+=(-C "$TMP/ca.pem" -N "$CERT_NAME") ;;
        starttls-resumed) cmd+=(-C "$TMP/ca.pem" -N "$CERT_NAME" -R) ;;
        esac
        ;;
    esac
    o0=$(listen_overflows)
    j0=$(machine_jiffies)
    t0=$(now)
    timeout "$LOAD_TIMEOUT" "${cmd[@]}" >"$out" 2>&1 &
    LOAD_PID=$!
    if ! wait "$LOAD_PID"; then
        LOAD_PID=
        echo "$load against $label failed:" >&2
        tail -n 20 "$out" >&2
        return 1
    fi
    LOAD_PID=
    t1=$(now)
    j1=$(machine_jiffies)
    o1=$(listen_overflows)
    LOAD_RESULT="$(calc "$t1 - $t0") $(echo "$j0 $j1" | awk '{ printf "%.0f", ($3 - $1) / ($4 - $2) * 100 }') $((o1 - o0))"
    LOAD_LINE=$(grep '^load ' "$out" || true)
}

# lat_summary FILE...: "p50 p90 p99 max mean" in ms over all the latencies
# in the files (nearest rank), or "- - - - -"
lat_summary() {
    local files=() f
    for f in "$@"; do [[ -s $f ]] && files+=("$f"); done
    if ((${#files[@]} == 0)); then
        echo "- - - - -"
        return
    fi
    sort -n "${files[@]}" | awk '{ v[NR] = $1; s += $1 }
        function pct(p,  k) { k = int(p * NR + 0.999999999); if (k < 1) k = 1; if (k > NR) k = NR; return v[k] }
        END { printf "%.2f %.2f %.2f %.2f %.2f", pct(0.50), pct(0.90), pct(0.99), v[NR], s / NR }'
}

# ---------------------------------------------------------------- certificate + C load generator
TLS_LISTENER='tls_certificate = "auto"'
if ((C_LOADS)); then
    cc -O2 -Wall -o "$TMP/tls_smtp" "$HERE/lib/tls_smtp.c" -lssl -lcrypto -lpthread
    "$VENV/bin/python" - "$TMP" "$CERT_NAME" <<'PYEOF'
import sys, trustme
tmp, name = sys.argv[1], sys.argv[2]
ca = trustme.CA()  # ECDSA P-256, as trustme makes by default
ca.cert_pem.write_to_path(f"{tmp}/ca.pem")
leaf = ca.issue_cert(name, "127.0.0.1")
with open(f"{tmp}/server-chain.pem", "wb") as f:
    for blob in leaf.cert_chain_pems:
        f.write(blob.bytes())
leaf.private_key_pem.write_to_path(f"{tmp}/server-key.pem")
PYEOF
    chmod 0644 "$TMP/ca.pem" "$TMP/server-chain.pem"
    chmod 0600 "$TMP/server-key.pem"
    TLS_LISTENER="tls_certificate = \"$TMP/server-chain.pem\"
tls_key = \"$TMP/server-key.pem\""
fi

# ---------------------------------------------------------------- tlsmta
TPORT=$(free_port)
KIND=tcp
((INSTANCES > 1)) && KIND=reuseport
for ((i = 1; i <= INSTANCES; i++)); do
    mkdir -p "$TMP/tlsmta/state$i"
    cat >"$TMP/tlsmta/bench$i.toml" <<EOF
[global]
hostname = "bench.local"
state_dir = "$TMP/tlsmta/state$i"
route = "maildir:$TMP/tlsmta/maildir"

[[listener]]
name = "bench"
endpoint = "$KIND:$TPORT:interface=127.0.0.1${ENDPOINT_OPTIONS:+:$ENDPOINT_OPTIONS}"
tls = "starttls"
$TLS_LISTENER
relay_networks = ["127.0.0.0/8"]
max_connections = 20000

[spool]
path = "$TMP/tlsmta/spool$i"
commit = "$COMMIT"
EOF
    log=$TMP/tlsmta/tlsmta$i.log
    bash -c "$RAISE_NOFILE"' exec "$@"' _ "$VENV/bin/twistd" -n --pidfile= tlsmta \
        --config "$TMP/tlsmta/bench$i.toml" >"$log" 2>&1 &
    pid=$!
    TLSMTA_PIDS+=("$pid")
    for _ in $(seq 200); do
        grep -q "listening on" "$log" && break
        kill -0 "$pid" 2>/dev/null || { echo "tlsmta exited:" >&2; cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    grep -q "listening on" "$log" || { echo "tlsmta did not start:" >&2; cat "$log" >&2; exit 1; }
done
tlsmta_logs() { cat "$TMP"/tlsmta/tlsmta*.log; }

# ---------------------------------------------------------------- postfix
PPORT=$(free_port)
if ((C_LOADS)); then
    pf_create "$TMP/postfix" "$PPORT" "$TMP/server-chain.pem" "$TMP/server-key.pem" >/dev/null
else
    pf_create "$TMP/postfix" "$PPORT" >/dev/null
fi
pf_start "$TMP/postfix"

echo "tlsmta-bench inbound: $MESSAGES messages x $SIZE bytes, $SESSIONS sessions," \
    "$( ((PER_CONN == 1)) && echo "new connection per message" || echo "$PER_CONN messages per connection (C loads)"), loopback;" \
    "loads: $LOADS; Postfix mode: ${PF_MODE:-hold}$( ((C_LOADS)) && echo "; both offer STARTTLS with the same certificate")"
echo "host: $(nproc) CPUs; $(uname -r); $(df -PT "$TMP" | awk 'NR==2 {print $2 " on " $1}'); tlsmta processes: $INSTANCES"

declare -A SUM_T SUM_P
for load in $LOADS; do SUM_T[$load]=0 SUM_P[$load]=0; done
for ((round = 1; round <= ROUNDS; round++)); do
    for load in $LOADS; do
        t_tlsmta= t_postfix= line_tlsmta= line_postfix=
        cpu0=$(cpu_seconds)
        main0=$(main_thread_cpu_seconds)
        # alternate who goes first, so neither always runs on a warmer machine
        if ((round % 2 == 0)); then
            run_load "$PPORT" postfix "$load" "$round"
            read -r t_postfix busy_postfix ovf_postfix <<<"$LOAD_RESULT"
            line_postfix=$LOAD_LINE
            cpu0=$(cpu_seconds)
            main0=$(main_thread_cpu_seconds)
        fi
        run_load "$TPORT" tlsmta "$load" "$round"
        read -r t_tlsmta busy_tlsmta ovf_tlsmta <<<"$LOAD_RESULT"
        line_tlsmta=$LOAD_LINE
        cpu1=$(cpu_seconds)
        main1=$(main_thread_cpu_seconds)
        if ((round % 2 == 1)); then
            run_load "$PPORT" postfix "$load" "$round"
            read -r t_postfix busy_postfix ovf_postfix <<<"$LOAD_RESULT"
            line_postfix=$LOAD_LINE
        fi
        [[ -n $t_tlsmta && -n $t_postfix ]] || exit 1
        r_tlsmta=$(calc "$MESSAGES / $t_tlsmta")
        r_postfix=$(calc "$MESSAGES / $t_postfix")
        ratio=$(calc "$r_tlsmta / $r_postfix")
        cpu=$(calc "($cpu1 - $cpu0) / $t_tlsmta * 100")
        main=$(calc "($main1 - $main0) / $t_tlsmta * 100")
        per_msg=$(calc "($cpu1 - $cpu0) / $MESSAGES * 1000")
        lat_t= lat_p=
        if [[ -n $line_tlsmta ]]; then
            lat_t=$(printf '; end of DATA -> 250 p50 %s ms, p99 %s ms' "$(kv lat_p50_ms "$line_tlsmta")" "$(kv lat_p99_ms "$line_tlsmta")")
            lat_p=$(printf '; end of DATA -> 250 p50 %s ms, p99 %s ms' "$(kv lat_p50_ms "$line_postfix")" "$(kv lat_p99_ms "$line_postfix")")
            if [[ $load == starttls* ]]; then
                lat_t+=$(printf '; TLS handshakes %s, resumed %s' "$(kv handshakes "$line_tlsmta")" "$(kv resumed "$line_tlsmta")")
                lat_p+=$(printf '; TLS handshakes %s, resumed %s' "$(kv handshakes "$line_postfix")" "$(kv resumed "$line_postfix")")
            fi
        fi
        printf 'round %d %-16s tlsmta  %6.1f msg/s (%.2f s; tlsmta CPU %.0f%% of a core, reactor thread %.0f%%, %.2f ms CPU/msg; machine %s%% busy; listen overflows %s%s)\n' \
            "$round" "$load:" "$r_tlsmta" "$t_tlsmta" "$cpu" "$main" "$per_msg" "$busy_tlsmta" "$ovf_tlsmta" "$lat_t"
        printf '        %-16s postfix %6.1f msg/s (%.2f s; machine %s%% busy; listen overflows %s%s)  ratio tlsmta/postfix %.2f\n' \
            "" "$r_postfix" "$t_postfix" "$busy_postfix" "$ovf_postfix" "$lat_p" "$ratio"
        SUM_T[$load]=$(calc "${SUM_T[$load]} + $r_tlsmta")
        SUM_P[$load]=$(calc "${SUM_P[$load]} + $r_postfix")
    done
done

# ---------------------------------------------------------------- verify
n_loads=$(wc -w <<<"$LOADS")
expected=$((MESSAGES * ROUNDS * n_loads))
sleep 1 # let Postfix's cleanup/qmgr settle (250 was given after the fsync already)
n_tlsmta=$(find "$TMP/tlsmta/maildir/new" -type f | wc -l)
n_tmp=$(find "$TMP/tlsmta/maildir/tmp" -type f | wc -l)
n_postfix=$(pf_queue_count "$TMP/postfix")
rss_kb=0
for pid in "${TLSMTA_PIDS[@]}"; do rss_kb=$((rss_kb + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status"))); done
received=$(tlsmta_logs | grep -c ' code=250 ' || true)
problems=$(tlsmta_logs | grep -Eic 'traceback|unhandled|error|#critical|#error|#warn' || true)
pf_problems=$(grep -Eic ': (warning|fatal|panic|error):' "$TMP/postfix/maillog" || true)

echo "verify: tlsmta maildir new/ $n_tlsmta files (tmp/ $n_tmp), $received 'code=250' log lines;" \
    "postfix queue $n_postfix files; expected $expected each"
echo "tlsmta RSS after the load: $((rss_kb / 1024)) MiB; suspicious tlsmta log lines: $problems;" \
    "postfix warnings: $pf_problems"
if ((problems > 0)); then
    echo "--- tlsmta log, suspicious lines (first 20):"
    tlsmta_logs | grep -Ei 'traceback|unhandled|error|#critical|#error|#warn' | head -n 20 || true
fi
if ((pf_problems > 0)); then
    echo "--- postfix maillog, warnings (first 10):"
    grep -Ei ': (warning|fatal|panic|error):' "$TMP/postfix/maillog" | head -n 10 || true
fi
sizes=$(find "$TMP/tlsmta/maildir/new" -type f -printf '%s\n' | sort -n | uniq -c | sort -rn | awk 'NR <= 3 { printf "%s x %s B; ", $1, $2 }')
echo "tlsmta maildir file sizes (count size): $sizes"

for load in $LOADS; do
    r_t=$(calc "${SUM_T[$load]} / $ROUNDS")
    r_p=$(calc "${SUM_P[$load]} / $ROUNDS")
    read -r tp50 _ tp99 tmax _ <<<"$(lat_summary "$TMP"/lat-tlsmta-"$load"-*.txt)"
    read -r pp50 _ pp99 pmax _ <<<"$(lat_summary "$TMP"/lat-postfix-"$load"-*.txt)"
    printf 'mean over %d round(s), %-16s tlsmta %.1f msg/s, postfix %.1f msg/s, ratio %.2f' \
        "$ROUNDS" "$load:" "$r_t" "$r_p" "$(calc "$r_t / $r_p")"
    if [[ $tp50 != - ]]; then
        printf '; end of DATA -> 250 over all rounds: tlsmta p50 %s ms p99 %s ms (max %s), postfix p50 %s ms p99 %s ms (max %s)' \
            "$tp50" "$tp99" "$tmax" "$pp50" "$pp99" "$pmax"
    fi
    printf '\n'
    # one machine-readable line per load (bench/compare.sh reads these)
    printf 'RESULT inbound load=%s rounds=%d tlsmta=%.1f postfix=%.1f ratio=%.3f tlsmta_p50=%s tlsmta_p99=%s postfix_p50=%s postfix_p99=%s\n' \
        "$load" "$ROUNDS" "$r_t" "$r_p" "$(calc "$r_t / $r_p")" "$tp50" "$tp99" "$pp50" "$pp99"
done

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
