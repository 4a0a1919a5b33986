# shellcheck shell=bash
# Small helpers the benchmark scripts share (source this file).

# a free TCP port on 127.0.0.1
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
kv() { # kv KEY LINE: the value of key=value in LINE
    sed -n "s/.*[ ^]$1=\([^ ]*\).*/\1/p" <<<" $2"
}
machine_jiffies() { # busy and total jiffies of the whole machine (all CPUs), from /proc/stat
    awk '/^cpu / { idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i; print total - idle, total }' /proc/stat
}
busy_percent() { # busy% of the machine between two machine_jiffies samples
    echo "$1 $2" | awk '{ printf "%.0f", ($3 - $1) / ($4 - $2) * 100 }'
}
