#!/usr/bin/env bash
# A relaying MTA's whole job, end to end: tlsmta vs a private Postfix in one
# run with the same load.  A client sends MESSAGES messages of SIZE bytes
# over SESSIONS parallel sessions, a new connection per message; the MTA
# stores each durably before its 250 and relays it to one C sink
# (lib/tls_smtp.c); the clock runs from the first connection until the
# sink has counted all of them (its XSTATS counter, polled every 20 ms).
#
#   MODES: plain      smtp-source -> MTA -> sink, plain SMTP on both legs
#          starttls   the C load generator (tls_smtp load, STARTTLS, chain
#                     and name verified) -> MTA -> sink with STARTTLS,
#                     tlsmta `tls = "required"`, `tls_verify = "host"`;
#                     Postfix `smtp_tls_security_level = verify`
#
# tlsmta: route "mx", `[dns.mx] "sink.bench"` and `[dns.hosts]` point at the
# sink (no DNS), listener with relay_networks 127.0.0.0/8; INSTANCES=2 runs
# two processes on one `reuseport:` port, each with its own state dir and
# spool.  Postfix: `relayhost = [127.0.0.1]:SINK` (the name pinned with
# smtp_tls_verify_cert_match, as in outbound_tls.sh), the same outbound
# concurrency (SESSIONS, no slow start), its TLS session cache, and TLS
# connection reuse through tlsproxy(8) (PF_TLS_REUSE=0 turns it off).
#
#   bash bench/relay.sh
#   MESSAGES=200 ROUNDS=1 bash bench/relay.sh            # a quick check
#   INSTANCES=2 MODES=starttls bash bench/relay.sh
#
# Environment (all optional):
#   MESSAGES=4000 SIZE=4096 SESSIONS=20 ROUNDS=3 MODES="plain starttls"
#   INSTANCES=1      tlsmta processes sharing the port (reuseport:)
#   COMMIT=fsync     tlsmta's [spool] commit: fsync, or syncfs (storage.groupcommit)
#   PF_TLS_REUSE=1   Postfix reuses TLS connections (tlsproxy)
#   PROFILE=py-spy   attach `py-spy record` to every tlsmta for the measured
#                    run (folded stacks, $TMP/tlsmta-MODE-ROUND/N/profile.txt;
#                    KEEP=1 keeps them; lib/profile_summary.py sums them up;
#                    PYSPY_IDLE= samples only threads on a CPU, not wall clock);
#                    PROFILE=strace: `strace -c -f` instead (syscall counts,
#                    .../strace.txt); PROFILE=perf: `perf record -g` (.../perf.data,
#                    kernel and C frames: `perf report -i FILE --no-children`)
#   RUN_TIMEOUT=600  seconds per measured run
#   VENV=<repo>/.venv   KEEP=1 (keep the temp dir)
#
# Root (the private Postfix), Debian postfix (smtp-source), gcc and
# libssl-dev (the C sink and load generator).  Loopback only; every process
# started here is stopped by its PID and the temp dir removed on exit.
# Last lines: `RESULT relay mode=M instances=I tlsmta=R postfix=R ratio=X`.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
VENV=${VENV:-$ROOT/.venv}
MESSAGES=${MESSAGES:-4000}
SIZE=${SIZE:-4096}
SESSIONS=${SESSIONS:-20}
ROUNDS=${ROUNDS:-3}
MODES=${MODES:-plain starttls}
INSTANCES=${INSTANCES:-1}
COMMIT=${COMMIT:-fsync}
PF_TLS_REUSE=${PF_TLS_REUSE:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SINK_NAME=mx.sink.bench
IN_NAME=mx.inbound.bench

# shellcheck source=lib/postfix.sh
source "$HERE/lib/postfix.sh"
# shellcheck source=lib/common.sh
source "$HERE/lib/common.sh"

die() {
    echo "$*" >&2
    exit 1
}
[[ $(id -u) == 0 ]] || die "run as root (the private Postfix instance needs it)"
[[ -x $SMTP_SOURCE ]] || die "$SMTP_SOURCE missing (apt-get install postfix)"
command -v cc >/dev/null && [[ -r /usr/include/openssl/ssl.h ]] ||
    die "the C sink needs cc and the OpenSSL headers (apt-get install gcc libssl-dev)"
for mode in $MODES; do
    [[ $mode == plain || $mode == starttls ]] || die "unknown mode $mode (plain starttls)"
done

TMP=$(mktemp -d /tmp/tlsmta-bench-relay.XXXXXX)
chmod 0755 "$TMP"
TLSMTA_PIDS=()
PROFILER_PIDS=()
SINK_PID=
LOAD_PID=
PF_DIRS=()
stop_pid() { # stop_pid PID: TERM, wait up to 10 s, then KILL
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
}
stop_tlsmta() {
    local pid
    for pid in "${TLSMTA_PIDS[@]}"; do stop_pid "$pid"; done
    TLSMTA_PIDS=()
}
cleanup() {
    local rc=$?
    set +e
    [[ -n $LOAD_PID ]] && stop_pid "$LOAD_PID"
    stop_profilers
    stop_tlsmta
    for d in "${PF_DIRS[@]}"; do pf_stop "$d"; done
    [[ -n $SINK_PID ]] && stop_pid "$SINK_PID"
    if [[ ${KEEP:-} == 1 ]]; then
        echo "kept $TMP"
    else
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_seconds() { # "user system" seconds of the given PIDs (all threads)
    local files=() pid
    for pid in "$@"; do files+=("/proc/$pid/stat"); done
    stat_seconds "${files[@]}"
}
reactor_seconds() { # user + system seconds of the given PIDs' main threads (their reactors)
    local files=() pid
    for pid in "$@"; do files+=("/proc/$pid/task/$pid/stat"); done
    stat_seconds "${files[@]}" | awk '{ print $1 + $2 }'
}
ctx_switches() { # "voluntary involuntary" context switches of all the given PIDs' threads
    local files=() pid
    for pid in "$@"; do files+=("/proc/$pid/task/"*/status); done
    awk '/^voluntary_ctxt_switches/ { v += $2 } /^nonvoluntary_ctxt_switches/ { n += $2 } END { print v, n }' "${files[@]}"
}
stat_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); u += $12; s += $13 } END { print u / hz, s / hz }' "${files[@]}"
}

# ---------------------------------------------------------------- certificates, sink
cc -O2 -Wall -o "$TMP/tls_smtp" "$HERE/lib/tls_smtp.c" -lssl -lcrypto -lpthread
"$VENV/bin/python" - "$TMP" "$SINK_NAME" "$IN_NAME" <<'PYEOF'
import sys, trustme
tmp, sink, inbound = sys.argv[1:4]
ca = trustme.CA()  # ECDSA P-256
ca.cert_pem.write_to_path(f"{tmp}/ca.pem")
ca.issue_cert(sink, "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(f"{tmp}/sink.pem")
leaf = ca.issue_cert(inbound, "127.0.0.1")
with open(f"{tmp}/in-chain.pem", "wb") as f:
    for blob in leaf.cert_chain_pems:
        f.write(blob.bytes())
leaf.private_key_pem.write_to_path(f"{tmp}/in-key.pem")
PYEOF
chmod 0644 "$TMP/ca.pem" "$TMP/in-chain.pem"
chmod 0600 "$TMP/sink.pem" "$TMP/in-key.pem"

SPORT=$(free_port)
"$TMP/tls_smtp" sink -l "127.0.0.1:$SPORT" -c "$TMP/sink.pem" -n "$SINK_NAME" >"$TMP/sink.out" 2>&1 &
SINK_PID=$!
for _ in $(seq 100); do
    grep -q listening "$TMP/sink.out" && break
    kill -0 "$SINK_PID" 2>/dev/null || die "sink exited: $(cat "$TMP/sink.out")"
    sleep 0.05
done
sink_stats() { # the sink's counters line (messages=N connections=N ...); asking is a connection too
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$SPORT"
    read -r line <&3
    printf 'XSTATS\r\nQUIT\r\n' >&3
    read -r line <&3
    exec 3<&- 3>&-
    printf '%s\n' "${line%$'\r'}"
}
sink_messages() { kv messages "$(sink_stats)"; }
sink_connections() { kv connections "$(sink_stats)"; }

# ---------------------------------------------------------------- Postfix
# pf_relay DIR PORT MODE: accepts from 127.0.0.0/8 and relays all to the sink
pf_relay() {
    local dir=$1 port=$2 mode=$3
    PF_DIRS+=("$dir")
    PF_MODE=defer pf_create "$dir" "$port" "$TMP/in-chain.pem" "$TMP/in-key.pem" >/dev/null
    local pc=(postconf -c "$dir/etc" -e)
    "${pc[@]}" "defer_transports =" \
        "relayhost = [127.0.0.1]:$SPORT" \
        "smtp_destination_concurrency_limit = $SESSIONS" \
        "initial_destination_concurrency = $SESSIONS"
    if [[ $mode == starttls ]]; then
        "${pc[@]}" "smtp_tls_security_level = verify" \
            "smtp_tls_CAfile = $TMP/ca.pem" \
            "smtp_tls_verify_cert_match = $SINK_NAME" \
            "smtp_tls_servername = $SINK_NAME" \
            'smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache' \
            "tlsproxy_tls_security_level = none"
        if ((PF_TLS_REUSE)); then
            "${pc[@]}" "smtp_tls_connection_reuse = yes"
            postconf -c "$dir/etc" -Me "tlsproxy/unix=tlsproxy unix - - n - 0 tlsproxy"
        fi
    else
        "${pc[@]}" "smtp_tls_security_level = none"
    fi
    "$PF_POSTFIX" -c "$dir/etc" check
    pf_start "$dir"
}

# ---------------------------------------------------------------- tlsmta
# start_tlsmta MODE ROUND: INSTANCES processes on one fresh port (TPORT)
start_tlsmta() {
    local mode=$1 round=$2 i dir kind=tcp out_tls listener_tls pid log
    ((INSTANCES > 1)) && kind=reuseport
    TPORT=$(free_port)
    if [[ $mode == starttls ]]; then
        out_tls='tls = "required"
tls_verify = "host"'
        listener_tls="tls = \"starttls\"
tls_certificate = \"$TMP/in-chain.pem\"
tls_key = \"$TMP/in-key.pem\""
    else
        out_tls='tls = "no"'
        listener_tls='tls = "no"'
    fi
    for ((i = 1; i <= INSTANCES; i++)); do
        dir=$TMP/tlsmta-$mode-$round/$i
        mkdir -p "$dir/state"
        cat >"$dir/relay.toml" <<EOF
[global]
hostname = "relay.bench"
state_dir = "$dir/state"
route = "mx"
$out_tls
tls_ca = "$TMP/ca.pem"
smtp_port = $SPORT
max_connections = $(((SESSIONS + INSTANCES - 1) / INSTANCES))

[spool]
path = "$dir/spool"
commit = "$COMMIT"

[dns.mx]
"sink.bench" = ["$SINK_NAME"]

[dns.hosts]
"$SINK_NAME" = ["127.0.0.1"]

# No MTA-STS record and no TLSA records, answered here: the policy lookups
# still run, but no query leaves the machine (nor waits for its resolver).
[dns.txt]
"_mta-sts.sink.bench" = []

[dns.tlsa]
"_25._tcp.$SINK_NAME" = []

[[listener]]
name = "relay"
endpoint = "$kind:$TPORT:interface=127.0.0.1:backlog=1024"
$listener_tls
relay_networks = ["127.0.0.0/8"]
max_connections = 20000
EOF
        log=$dir/tlsmta.log
        "$VENV/bin/twistd" -n --pidfile= tlsmta --config "$dir/relay.toml" >"$log" 2>&1 &
        pid=$!
        TLSMTA_PIDS+=("$pid")
        for _ in $(seq 200); do
            grep -q "listening on" "$log" && break
            kill -0 "$pid" 2>/dev/null || die "tlsmta exited: $(cat "$log")"
            sleep 0.1
        done
        grep -q "listening on" "$log" || die "tlsmta did not start: $(cat "$log")"
        case ${PROFILE:-} in
        py-spy)
            "$VENV/bin/py-spy" record --format raw --rate 250 --threads ${PYSPY_IDLE---idle} --nonblocking \
                --pid "$pid" -o "$dir/profile.txt" >"$dir/py-spy.out" 2>&1 &
            PROFILER_PIDS+=("$!")
            ;;
        strace)
            strace -c -f -p "$pid" -o "$dir/strace.txt" 2>"$dir/strace.err" &
            PROFILER_PIDS+=("$!")
            ;;
        perf)
            perf record -q -F 999 -g -p "$pid" -o "$dir/perf.data" >"$dir/perf.out" 2>&1 &
            PROFILER_PIDS+=("$!")
            ;;
        esac
    done
}
# stop_profilers: SIGINT makes py-spy, strace and perf write their files and exit
stop_profilers() {
    local pid
    for pid in "${PROFILER_PIDS[@]}"; do
        kill -INT "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null || true
    done
    PROFILER_PIDS=()
}

# ---------------------------------------------------------------- one run
# run_relay PORT MODE LABEL: sets RUN="seconds rate machine_busy% sink_connections_per_message"
run_relay() {
    local port=$1 mode=$2 label=$3 s0 s1 t0 t1 j0 j1 c0 c1 polls=0 deadline cmd
    if [[ $mode == plain ]]; then
        cmd=("$SMTP_SOURCE" -4 -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE"
            -M bench-client.local -f sender@bench-client.local -t user@sink.bench "127.0.0.1:$port")
    else
        cmd=("$TMP/tls_smtp" load -t "127.0.0.1:$port" -s "$SESSIONS" -m "$MESSAGES" -r 1 -z "$SIZE"
            -H bench-client.local -F sender@bench-client.local -T user@sink.bench -C "$TMP/ca.pem" -N "$IN_NAME")
    fi
    c0=$(sink_connections)
    s0=$(sink_messages)
    j0=$(machine_jiffies)
    t0=$(now)
    "${cmd[@]}" >"$TMP/load-$label.out" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || die "load against $label failed: $(tail -n 20 "$TMP/load-$label.out")"
    LOAD_PID=
    deadline=$(calc "$t0 + $RUN_TIMEOUT")
    while :; do
        s1=$(sink_messages)
        polls=$((polls + 1))
        ((s1 - s0 >= MESSAGES)) && break
        awk -v a="$(now)" -v b="$deadline" 'BEGIN { exit !(a > b) }' &&
            die "$label: the sink got $((s1 - s0)) of $MESSAGES within $RUN_TIMEOUT s"
        sleep 0.02
    done
    t1=$(now)
    j1=$(machine_jiffies)
    ((s1 - s0 == MESSAGES)) || die "$label: the sink got $((s1 - s0)) messages, expected $MESSAGES"
    c1=$(sink_connections)
    # the MTA's connections: less this function's own (the s0 read, every poll, the c1 read)
    RUN="$(calc "$t1 - $t0") $(calc "$MESSAGES / ($t1 - $t0)") $(busy_percent "$j0" "$j1") $(calc "($c1 - $c0 - 2 - $polls) / $MESSAGES")"
}

echo "tlsmta-bench relay: $MESSAGES messages x $SIZE bytes, $SESSIONS sessions, a new connection per message," \
    "stored durably and relayed to a C sink; modes: $MODES; tlsmta processes: $INSTANCES"
echo "host: $(nproc) CPUs; $(uname -r); $(df -PT "$TMP" | awk 'NR==2 {print $2 " on " $1}'); postfix $(postconf -d -h mail_version 2>/dev/null)"

for mode in $MODES; do
    PPORT=$(free_port)
    pf_relay "$TMP/postfix-$mode" "$PPORT" "$mode"
    rates_t=() rates_p=()
    for ((round = 1; round <= ROUNDS; round++)); do
        # alternate who goes first
        if ((round % 2 == 0)); then
            run_relay "$PPORT" "$mode" "postfix-$mode-$round"
            read -r secs_p rate_p busy_p conns_p <<<"$RUN"
        fi
        start_tlsmta "$mode" "$round"
        read -r u0 k0 <<<"$(cpu_seconds "${TLSMTA_PIDS[@]}")"
        r0=$(reactor_seconds "${TLSMTA_PIDS[@]}")
        read -r v0 n0 <<<"$(ctx_switches "${TLSMTA_PIDS[@]}")"
        run_relay "$TPORT" "$mode" "tlsmta-$mode-$round"
        read -r secs_t rate_t busy_t conns_t <<<"$RUN"
        read -r u1 k1 <<<"$(cpu_seconds "${TLSMTA_PIDS[@]}")"
        r1=$(reactor_seconds "${TLSMTA_PIDS[@]}") procs=${#TLSMTA_PIDS[@]}
        read -r v1 n1 <<<"$(ctx_switches "${TLSMTA_PIDS[@]}")"
        stop_profilers
        bad=$(cat "$TMP/tlsmta-$mode-$round"/*/tlsmta.log | grep -Eic 'traceback|unhandled|#critical|#error' || true)
        stop_tlsmta
        if ((round % 2 == 1)); then
            run_relay "$PPORT" "$mode" "postfix-$mode-$round"
            read -r secs_p rate_p busy_p conns_p <<<"$RUN"
        fi
        printf 'round %d %-9s tlsmta %7.1f msg/s (%.2f s; CPU/msg %.2f ms user + %.2f ms kernel, reactor threads %.2f ms, %.0f%% of a core each; context switches/msg %.1f + %.1f involuntary; machine %s%% busy; sink connections/msg %.3f; suspicious log lines %d)' \
            "$round" "$mode:" "$rate_t" "$secs_t" "$(calc "($u1 - $u0) / $MESSAGES * 1000")" \
            "$(calc "($k1 - $k0) / $MESSAGES * 1000")" "$(calc "($r1 - $r0) / $MESSAGES * 1000")" \
            "$(calc "($r1 - $r0) / $secs_t / $procs * 100")" \
            "$(calc "($v1 - $v0) / $MESSAGES")" "$(calc "($n1 - $n0) / $MESSAGES")" "$busy_t" "$conns_t" "$bad"
        printf '  postfix %7.1f msg/s (%.2f s; machine %s%% busy; sink connections/msg %.3f)  ratio %.2f\n' \
            "$rate_p" "$secs_p" "$busy_p" "$conns_p" "$(calc "$rate_t / $rate_p")"
        rates_t+=("$rate_t") rates_p+=("$rate_p")
    done
    pf_stop "$TMP/postfix-$mode"
    med() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    mt=$(med "${rates_t[@]}") mp=$(med "${rates_p[@]}")
    printf 'RESULT relay mode=%s instances=%d rounds=%d tlsmta=%.1f postfix=%.1f ratio=%.3f (medians)\n' \
        "$mode" "$INSTANCES" "$ROUNDS" "$mt" "$mp" "$(calc "$mt / $mp")"
done
