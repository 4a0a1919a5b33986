#!/usr/bin/env bash
# Outbound delivery rate over verified TLS: tlsmta vs Postfix's smtp client,
# in one run, both delivering MESSAGES queued messages of SIZE bytes to the
# same loopback STARTTLS sink (tls = required / smtp_tls_security_level =
# verify; the sink's certificate chains to a private CA and names
# mx.sink.bench), in two modes:
#
#   reuse   up to SESSIONS connections, up to REUSE messages per connection
#           (tlsmta max_connections = 20, max_messages_per_connection = 100;
#           Postfix connection caching through tlsproxy(8),
#           smtp_connection_reuse_count_limit = 100)
#   conn    a new connection, STARTTLS and handshake per message, TLS session
#           resumption allowed (tlsmta max_messages_per_connection = 1, it
#           resumes by itself; Postfix connection caching off,
#           smtp_tls_session_cache_database = btree:...)
#
# tlsmta: the spool is written offline (bench/lib/spool_fill.py), then
# tlsmta is started on it; timed from `queue_loaded` (and from process
# start) to the MESSAGES-th `queue_done` log line (bench/lib/tlsmta_run.py).
# Postfix: a private instance (bench/lib/postfix.sh) takes the messages from
# smtp-source into its hold queue; `postsuper -H ALL` moves them to
# deferred/, and the clock runs from `postqueue -f` until its queue is empty.
#
# The sink is bench/lib/tls_smtp.c (compiled here with cc + libssl-dev): a
# small threaded C server, measured on its own first with its own C load
# generator in the same three shapes (reuse, new connection + full
# handshake, new connection + resumed handshake).  stunnel4 (protocol =
# smtp) in front of smtp-sink was tried and rejected: it waits 200 ms on
# every new connection before it talks (its RFC 2487 client detection).
#
#   bash bench/outbound_tls.sh
#
# Environment (all optional):
#   MESSAGES=2000 SIZE=4096 SESSIONS=20 REUSE=100   the load
#   ROUNDS=2        rounds; in each, both modes for both senders (who goes
#                   first alternates); means over the rounds at the end
#   MODES="reuse conn"
#   SINK_MESSAGES=10000   messages per sink-capacity measurement (0: skip)
#   SINK_QUICKACK=1 start the sink with -q (TCP_QUICKACK after every read:
#                   no delayed ACKs) -- a diagnostic, see bench/README.md
#   PROFILE_DIR=DIR run tlsmta under cProfile, stats files into DIR
#   INSTANCES=1     tlsmta processes, each with its own spool holding
#                   MESSAGES/INSTANCES messages and SESSIONS/INSTANCES
#                   connections (docs/architecture.md's scaling by processes); timed
#                   until the last one is done, CPU summed
#   VENV=<repo>/.venv   KEEP=1 (keep the temp dir: logs, configs)
#
# Everything listens on 127.0.0.1 only; every load is bounded (message
# counts, LOAD_TIMEOUT=600 s per run); every process started here is stopped
# by its PID and the temp dir removed on exit.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
VENV=${VENV:-$ROOT/.venv}
MESSAGES=${MESSAGES:-2000}
SIZE=${SIZE:-4096}
SESSIONS=${SESSIONS:-20}
REUSE=${REUSE:-100}
ROUNDS=${ROUNDS:-2}
INSTANCES=${INSTANCES:-1}
((MESSAGES % INSTANCES == 0)) || { echo "MESSAGES must be a multiple of INSTANCES" >&2; exit 2; }
MODES=${MODES:-reuse conn}
SINK_MESSAGES=${SINK_MESSAGES:-10000}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-600}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SINK_NAME=mx.sink.bench

# shellcheck source=lib/postfix.sh
source "$HERE/lib/postfix.sh"
# shellcheck source=lib/common.sh
source "$HERE/lib/common.sh"

die() {
    echo "$*" >&2
    exit 1
}
[[ $(id -u) == 0 ]] || die "run as root (a private Postfix instance needs it)"
[[ -x $SMTP_SOURCE ]] || die "$SMTP_SOURCE missing (apt-get install postfix)"
command -v cc >/dev/null || die "cc missing (apt-get install gcc)"
[[ -r /usr/include/openssl/ssl.h ]] || die "OpenSSL headers missing (apt-get install libssl-dev)"
[[ -x $VENV/bin/twistd ]] || die "$VENV/bin/twistd missing (VENV=...)"

TMP=$(mktemp -d /tmp/tlsmta-bench-outbound.XXXXXX)
chmod 0755 "$TMP" # the Postfix instances' unprivileged processes read ca.pem here
SINK_PID=
CHILD_PID=
RUN_PIDS=()
cleanup() {
    local rc=$?
    set +e
    for pid in $CHILD_PID "${RUN_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" # tlsmta_run.py stops its tlsmta by PID; timeout(1) passes TERM on
        wait "$pid" 2>/dev/null
    done
    pf_stop "$TMP/pf-reuse"
    pf_stop "$TMP/pf-conn"
    if [[ -n $SINK_PID ]] && kill -0 "$SINK_PID" 2>/dev/null; then
        kill -TERM "$SINK_PID"
        wait "$SINK_PID" 2>/dev/null
    fi
    if [[ ${KEEP:-} == 1 ]]; then
        echo "kept $TMP"
    else
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_seconds() { # user+system of a process (all its threads, live and exited)
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}
# run a command in the background and wait for it, so a signal is handled at
# once (the EXIT trap stops it by its PID)
run_child() {
    "$@" &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=
    return $rc
}

# ---------------------------------------------------------------- sink
cc -O2 -Wall -o "$TMP/tls_smtp" "$HERE/lib/tls_smtp.c" -lssl -lcrypto -lpthread
"$VENV/bin/python" - "$TMP" "$SINK_NAME" <<'EOF'
import sys, trustme
tmp, name = sys.argv[1], sys.argv[2]
ca = trustme.CA()  # ECDSA P-256, as trustme makes by default
ca.cert_pem.write_to_path(f"{tmp}/ca.pem")
# the name both senders check, plus 127.0.0.1 as an IP SAN (not relied on)
ca.issue_cert(name, "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(f"{tmp}/sink.pem")
EOF
chmod 0644 "$TMP/ca.pem"
chmod 0600 "$TMP/sink.pem"

SPORT=$(free_port)
"$TMP/tls_smtp" sink -l "127.0.0.1:$SPORT" -c "$TMP/sink.pem" -n "$SINK_NAME" ${SINK_QUICKACK:+-q} >"$TMP/sink.out" 2>&1 &
SINK_PID=$!
for _ in $(seq 100); do
    grep -q listening "$TMP/sink.out" && break
    kill -0 "$SINK_PID" 2>/dev/null || die "sink exited: $(cat "$TMP/sink.out")"
    sleep 0.05
done

# SINK_STATS: the sink's counters "messages connections tls resumed errors"
sink_stats() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$SPORT"
    read -r line <&3
    printf 'XSTATS\r\n' >&3
    read -r line <&3
    printf 'QUIT\r\n' >&3
    exec 3<&- 3>&-
    line=${line%$'\r'}
    SINK_STATS="$(kv messages "$line") $(kv connections "$line") $(kv tls "$line") $(kv resumed "$line") $(kv errors "$line")"
}
# sink_delta BEFORE AFTER -> "messages connections tls resumed errors" (this
# run's own stats connection excluded)
sink_delta() {
    echo "$1 $2" | awk '{ printf "%d %d %d %d %d", $6 - $1, $7 - $2 - 1, $8 - $3, $9 - $4, $10 - $5 }'
}

echo "tlsmta-bench outbound TLS: $MESSAGES messages x $SIZE bytes, tls=required tls_verify=host" \
    "(Postfix: smtp_tls_security_level=verify), sink 127.0.0.1:$SPORT${SINK_QUICKACK:+ (quick-ACK diagnostic)}"
echo "host: $(nproc) CPUs; $(uname -r); $(df -PT "$TMP" | awk 'NR==2 {print $2 " on " $1}');" \
    "$(openssl version | cut -d' ' -f1-2); postfix $(postconf -d -h mail_version 2>/dev/null); tlsmta processes: $INSTANCES"

# ---------------------------------------------------------------- sink capacity
if ((SINK_MESSAGES > 0)); then
    echo "sink capacity on its own (its C load generator, $SESSIONS sessions, $SINK_MESSAGES messages, verified TLS," \
        "sharing the $(nproc) CPUs with it):"
    for shape in "reuse:-r $REUSE" "conn-full:-r 1" "conn-resumed:-r 1 -R"; do
        name=${shape%%:*}
        # shellcheck disable=SC2086
        set -- ${shape#*:}
        c0=$(cpu_seconds "$SINK_PID")
        j0=$(machine_jiffies)
        run_child timeout "$LOAD_TIMEOUT" "$TMP/tls_smtp" load -t "127.0.0.1:$SPORT" -C "$TMP/ca.pem" -N "$SINK_NAME" \
            -s "$SESSIONS" -m "$SINK_MESSAGES" -z "$SIZE" "$@" >"$TMP/load-$name.out" 2>&1 ||
            die "sink load $name failed: $(cat "$TMP/load-$name.out")"
        j1=$(machine_jiffies)
        c1=$(cpu_seconds "$SINK_PID")
        out=$(cat "$TMP/load-$name.out")
        printf '  %-13s %7.0f msg/s (%s s; handshakes %s, resumed %s); sink CPU %.3f ms/msg; machine %s%% busy\n' \
            "$name" "$(kv rate "$out")" "$(kv seconds "$out")" "$(kv handshakes "$out")" "$(kv resumed "$out")" \
            "$(calc "($c1 - $c0) / $SINK_MESSAGES * 1000")" "$(busy_percent "$j0" "$j1")"
    done
fi

# ---------------------------------------------------------------- postfix senders
# pf_sender DIR PORT MODE: a private Postfix that holds what smtpd receives
# (PF_MODE=hold) and, once released, relays everything to the sink over
# verified TLS.  The sink is reached as [127.0.0.1]:PORT (no /etc/hosts
# entry, no DNS); the certificate name is pinned with
# smtp_tls_verify_cert_match = mx.sink.bench, the same name tlsmta checks
# (the MX host name), and SNI is sent for it as tlsmta does.
pf_sender() {
    local dir=$1 port=$2 mode=$3
    PF_MODE=hold pf_create "$dir" "$port" >/dev/null
    local pc=(postconf -c "$dir/etc" -e)
    "${pc[@]}" "defer_transports =" \
        "relayhost = [127.0.0.1]:$SPORT" \
        "smtp_tls_security_level = verify" \
        "smtp_tls_CAfile = $TMP/ca.pem" \
        "smtp_tls_verify_cert_match = $SINK_NAME" \
        "smtp_tls_servername = $SINK_NAME" \
        "smtp_tls_loglevel = 1" \
        'smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache' \
        "smtp_destination_concurrency_limit = $SESSIONS" \
        "initial_destination_concurrency = $SESSIONS" \
        "tlsproxy_tls_security_level = none"
    if [[ $mode == reuse ]]; then
        "${pc[@]}" "smtp_connection_cache_on_demand = yes" \
            "smtp_connection_cache_destinations = 127.0.0.1" \
            "smtp_tls_connection_reuse = yes" \
            "smtp_connection_reuse_count_limit = $REUSE"
    else
        "${pc[@]}" "smtp_connection_cache_on_demand = no" \
            "smtp_connection_cache_destinations =" \
            "smtp_tls_connection_reuse = no"
    fi
    postconf -c "$dir/etc" -Me "tlsproxy/unix=tlsproxy unix - - n - 0 tlsproxy"
    "$PF_POSTFIX" -c "$dir/etc" check
    pf_start "$dir"
}
PPORT_REUSE=$(free_port)
PPORT_CONN=$(free_port)
pf_sender "$TMP/pf-reuse" "$PPORT_REUSE" reuse
pf_sender "$TMP/pf-conn" "$PPORT_CONN" conn

pf_count() { find "$1/queue/$2" -type f | wc -l; }

# run_postfix MODE ROUND: sets RESULT="seconds rate busy sink_cpu_ms_per_msg"
run_postfix() {
    local mode=$1 round=$2 dir=$TMP/pf-$1 port lines0 t0 t1 j0 j1 c0 c1 n
    port=$(pf_port "$dir")
    # queue MESSAGES messages on hold (plain SMTP into its own smtpd)
    run_child timeout "$LOAD_TIMEOUT" "$SMTP_SOURCE" -4 -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
        -M sender.bench -f bench@sender.bench -t user@sink.bench "127.0.0.1:$port" \
        >"$TMP/inject-$mode-$round.out" 2>&1 || die "smtp-source into postfix failed: $(tail "$TMP/inject-$mode-$round.out")"
    for _ in $(seq 100); do
        (($(pf_count "$dir" hold) >= MESSAGES)) && break
        sleep 0.1
    done
    n=$(pf_count "$dir" hold)
    ((n == MESSAGES)) || die "postfix ($mode) holds $n messages, expected $MESSAGES"
    postsuper -c "$dir/etc" -H ALL >/dev/null 2>&1
    n=$(pf_count "$dir" deferred)
    ((n == MESSAGES)) || die "postfix ($mode): $n messages in deferred/ after release, expected $MESSAGES"
    sleep 1
    lines0=$(wc -l <"$dir/maillog")
    sink_stats
    local s0=$SINK_STATS
    c0=$(cpu_seconds "$SINK_PID")
    j0=$(machine_jiffies)
    t0=$(now)
    postqueue -c "$dir/etc" -f
    local deadline=$((SECONDS + LOAD_TIMEOUT))
    # one cheap find per 50 ms (it stops at the first queue file it sees)
    while [[ -n $(find "$dir/queue/incoming" "$dir/queue/active" "$dir/queue/deferred" -type f -print -quit) ]]; do
        ((SECONDS < deadline)) || die "postfix ($mode) did not empty its queue in $LOAD_TIMEOUT s"
        sleep 0.05
    done
    t1=$(now)
    j1=$(machine_jiffies)
    c1=$(cpu_seconds "$SINK_PID")
    sink_stats
    local d secs
    d=$(sink_delta "$s0" "$SINK_STATS")
    secs=$(calc "$t1 - $t0")
    tail -n +"$((lines0 + 1))" "$dir/maillog" >"$TMP/maillog-$mode-$round"
    local sent verified deferred
    sent=$(grep -c ' status=sent ' "$TMP/maillog-$mode-$round" || true)
    verified=$(grep -c 'postfix/\(smtp\|tlsproxy\)\[[0-9]*\]: Verified TLS connection established' "$TMP/maillog-$mode-$round" || true)
    deferred=$(grep -Ec ' status=(deferred|bounced)' "$TMP/maillog-$mode-$round" || true)
    read -r m conns tlsn resumed errs <<<"$d"
    printf '  postfix %-5s %7.1f msg/s  (%.2f s from postqueue -f to empty queue; sink got %d msgs over %d connections,' \
        "$mode" "$(calc "$MESSAGES / $secs")" "$secs" "$m" "$conns"
    printf ' %d TLS handshakes, %d resumed; log: %d status=sent, %d "Verified TLS connection established", %d deferred;' \
        "$tlsn" "$resumed" "$sent" "$verified" "$deferred"
    printf ' sink CPU %.3f ms/msg; machine %s%% busy)\n' "$(calc "($c1 - $c0) / $MESSAGES * 1000")" "$(busy_percent "$j0" "$j1")"
    ((m == MESSAGES && sent == MESSAGES && deferred == 0 && verified > 0)) ||
        die "postfix ($mode) run did not deliver exactly $MESSAGES verified messages; see $TMP/maillog-$mode-$round"
    RESULT="$secs $(calc "$MESSAGES / $secs")"
}

# ---------------------------------------------------------------- tlsmta
# run_tlsmta MODE ROUND: sets RESULT="seconds_from_loaded rate seconds_from_start rate_from_start"
run_tlsmta() {
    local mode=$1 round=$2 top=$TMP/tlsmta-$1-$2 per_conn dir i
    [[ $mode == reuse ]] && per_conn=$REUSE || per_conn=1
    local share=$((MESSAGES / INSTANCES)) sessions=$(((SESSIONS + INSTANCES - 1) / INSTANCES))
    for ((i = 1; i <= INSTANCES; i++)); do
        dir=$top/$i
        mkdir -p "$dir/state"
        "$VENV/bin/python" "$HERE/lib/spool_fill.py" "$dir/spool" -n "$share" --size "$SIZE" \
            --rcpt user@sink.bench --sender bench@sender.bench 2>"$dir/fill.out"
        cat >"$dir/bench.toml" <<EOF
[global]
hostname = "sender.bench"
state_dir = "$dir/state"
route = "mx"
tls = "required"
tls_verify = "host"
tls_ca = "$TMP/ca.pem"
smtp_port = $SPORT
max_connections = $sessions
max_messages_per_connection = $per_conn

[queue]
max_connections = 200
retry_schedule = [60]

[spool]
path = "$dir/spool"

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
endpoint = "tcp:$(free_port):interface=127.0.0.1"
tls = "no"
EOF
    done
    local profile=()
    if [[ -n ${PROFILE_DIR:-} ]]; then
        mkdir -p "$PROFILE_DIR"
        profile=(--profile "$PROFILE_DIR/tlsmta-$mode-$round.cprofile")
    fi
    sync
    sleep 1
    sink_stats
    local s0=$SINK_STATS c0 c1 j0 j1
    c0=$(cpu_seconds "$SINK_PID")
    j0=$(machine_jiffies)
    RUN_PIDS=()
    for ((i = 1; i <= INSTANCES; i++)); do
        dir=$top/$i
        ((i == 1)) || profile=()
        "$VENV/bin/python" "$HERE/lib/tlsmta_run.py" --config "$dir/bench.toml" --log "$dir/tlsmta.log" \
            --done "$share" --timeout "$LOAD_TIMEOUT" "${profile[@]}" >"$dir/run.out" &
        RUN_PIDS+=($!)
    done
    for ((i = 1; i <= INSTANCES; i++)); do
        dir=$top/$i
        wait "${RUN_PIDS[i - 1]}" ||
            die "tlsmta ($mode, instance $i) run failed: $(cat "$dir/run.out"); log tail: $(tail -n 20 "$dir/tlsmta.log")"
    done
    RUN_PIDS=()
    j1=$(machine_jiffies)
    c1=$(cpu_seconds "$SINK_PID")
    sink_stats
    local out d
    # one line for all instances: counts and CPU summed, times the slowest instance's
    out=$(cat "$top"/*/run.out | awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); k = kv[1]; v = kv[2] + 0;
            if (k ~ /^(start|loaded)_to_/) { if (v > x[k]) x[k] = v } else x[k] += v; if (!(k in seen)) { seen[k] = 1; order[++n] = k } } }
          END { line = "tlsmta_run"; for (i = 1; i <= n; i++) line = line " " order[i] "=" x[order[i]]; print line }')
    d=$(sink_delta "$s0" "$SINK_STATS")
    read -r m conns tlsn resumed errs <<<"$d"
    local secs start_secs cpu left
    secs=$(kv loaded_to_done "$out")
    start_secs=$(kv start_to_done "$out")
    cpu=$(kv cpu "$out")
    left=$(find "$top"/*/spool/q -type f | wc -l)
    printf '  tlsmta  %-5s %7.1f msg/s  (%.2f s from queue_loaded to the %dth queue_done; %.2f s = %.1f msg/s from process start;' \
        "$mode" "$(calc "$MESSAGES / $secs")" "$secs" "$MESSAGES" "$start_secs" "$(calc "$MESSAGES / $start_secs")"
    printf ' sink got %d msgs over %d connections, %d TLS handshakes, %d resumed; log: %d delivery lines, %d verified=yes,' \
        "$m" "$conns" "$tlsn" "$resumed" "$(kv delivery "$out")" "$(kv verified_yes "$out")"
    printf ' %d resumed=yes, %d not delivered; spool files left %d; tlsmta CPU %.2f ms/msg (reactor thread %.0f%% busy from start to done);' \
        "$(kv resumed_yes "$out")" "$(kv deferred "$out")" "$left" "$(calc "$cpu / $MESSAGES * 1000")" \
        "$(calc "$(kv cpu_reactor "$out") / $start_secs * 100")"
    printf ' sink CPU %.3f ms/msg; machine %s%% busy)\n' \
        "$(calc "($c1 - $c0) / $MESSAGES * 1000")" "$(busy_percent "$j0" "$j1")"
    (($(kv queue_done "$out") == MESSAGES && $(kv verified_yes "$out") == MESSAGES && $(kv deferred "$out") == 0 &&
        m == MESSAGES && left == 0)) ||
        die "tlsmta ($mode) run did not deliver exactly $MESSAGES verified messages; see $top"
    if cat "$top"/*/tlsmta.log | grep -Eqi 'traceback|unhandled|#critical|#error|#warn'; then
        echo "  --- tlsmta log, suspicious lines (first 10):"
        cat "$top"/*/tlsmta.log | grep -Ei 'traceback|unhandled|#critical|#error|#warn' | head -n 10 | cut -c1-300
    fi
    RESULT="$secs $(calc "$MESSAGES / $secs") $start_secs $(calc "$MESSAGES / $start_secs")"
    [[ ${KEEP:-} == 1 ]] || rm -rf "$top"/*/spool
}

# ---------------------------------------------------------------- rounds
declare -A SUM_T SUM_TS SUM_P
for mode in $MODES; do SUM_T[$mode]=0 SUM_TS[$mode]=0 SUM_P[$mode]=0; done
for ((round = 1; round <= ROUNDS; round++)); do
    echo "round $round:"
    for mode in $MODES; do
        if ((round % 2 == 1)); then
            run_tlsmta "$mode" "$round"
            rt=$RESULT
            run_postfix "$mode" "$round"
            rp=$RESULT
        else
            run_postfix "$mode" "$round"
            rp=$RESULT
            run_tlsmta "$mode" "$round"
            rt=$RESULT
        fi
        read -r _ t_rate _ t_start_rate <<<"$rt"
        read -r _ p_rate <<<"$rp"
        printf '  => %-5s tlsmta/postfix = %.2f (from process start: %.2f)\n' "$mode" \
            "$(calc "$t_rate / $p_rate")" "$(calc "$t_start_rate / $p_rate")"
        SUM_T[$mode]=$(calc "${SUM_T[$mode]} + $t_rate")
        SUM_TS[$mode]=$(calc "${SUM_TS[$mode]} + $t_start_rate")
        SUM_P[$mode]=$(calc "${SUM_P[$mode]} + $p_rate")
    done
done

echo "mean over $ROUNDS round(s):"
for mode in $MODES; do
    case $mode in reuse) target="≥ 2.5, goal 3" ;; conn) target="≥ 1, goal 1.5" ;; *) target="?" ;; esac
    printf '  %-5s tlsmta %7.1f msg/s (%.1f from process start), postfix %7.1f msg/s, ratio %.2f (%.2f); target %s\n' \
        "$mode" "$(calc "${SUM_T[$mode]} / $ROUNDS")" "$(calc "${SUM_TS[$mode]} / $ROUNDS")" \
        "$(calc "${SUM_P[$mode]} / $ROUNDS")" "$(calc "${SUM_T[$mode]} / ${SUM_P[$mode]}")" \
        "$(calc "${SUM_TS[$mode]} / ${SUM_P[$mode]}")" "$target"
    # one machine-readable line per mode (bench/compare.sh reads these)
    printf 'RESULT outbound mode=%s instances=%d rounds=%d tlsmta=%.1f tlsmta_from_start=%.1f postfix=%.1f ratio=%.3f ratio_from_start=%.3f\n' \
        "$mode" "$INSTANCES" "$ROUNDS" "$(calc "${SUM_T[$mode]} / $ROUNDS")" "$(calc "${SUM_TS[$mode]} / $ROUNDS")" \
        "$(calc "${SUM_P[$mode]} / $ROUNDS")" "$(calc "${SUM_T[$mode]} / ${SUM_P[$mode]}")" \
        "$(calc "${SUM_TS[$mode]} / ${SUM_P[$mode]}")"
done
sink_stats
echo "sink totals: messages connections tls resumed errors = $SINK_STATS"
