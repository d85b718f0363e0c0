#!/usr/bin/env bash
# How long gw's processes take to exit after SIGTERM (no drain period), timed by their parent
# (`wait`), which is what a supervisor sees:
#
#   standalone     gw-runtime --config FILE, idle
#   runtime        gw-runtime connected to a controller (SQLite): it ends its sync stream
#                  and waits for the controller's answer; then the fleet view's status of it
#   all-in-one     gw-controller --all-in-one --dev, an API deployed, requests served
#   orphan         the standalone runtime again, started by a subshell that is gone (its
#                  parent is then PID 1): the time until it has exited (a zombie), and the
#                  time until `kill -0` fails, which is when PID 1 reaps it
#
# Prints, per scenario, the median and the largest of ROUNDS runs, in milliseconds.
#
# Usage: bench/shutdown.sh        (ROUNDS=5; BIN=dir of gw-runtime and gw-controller to use
#                                  prebuilt ones, else the release build is made)
# Needs: curl, cargo.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
BASE_PORT=${BASE_PORT:-28280}

cd "$(dirname "$0")/.."
root=$(pwd)
. bench/lib.sh
bench_need curl:curl
if [ -z "${BIN:-}" ]; then
    echo "building gw-runtime and gw-controller (release)" >&2
    cargo build --release -q -p gw-runtime -p gw-controller
    BIN="$root/target/release"
fi
bench_workdir gw-shutdown

PROXY=127.0.0.1:$BASE_PORT
STATUS=127.0.0.1:$((BASE_PORT + 1))
ADMIN=127.0.0.1:$((BASE_PORT + 2))
SYNC=127.0.0.1:$((BASE_PORT + 3))
bench_api 9 # an upstream that is never called

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Sends SIGTERM to PID (a child of this shell); sets $ms to the milliseconds until it exits.
stop() { # pid
    local start
    start=$(now_ms)
    kill -TERM "$1"
    wait "$1" || true
    ms=$(($(now_ms) - start))
}

# Median and largest of the numbers given.
summary() {
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { printf "median %d ms, max %d ms", v[int((NR + 1) / 2)], v[NR] }'
}

# Starts a development controller on $work/ctl (a new one) with extra arguments; sets $ctl.
controller() {
    rm -rf "$work/ctl"
    "$BIN/gw-controller" --dev --data-dir "$work/ctl" --admin-addr "$ADMIN" --sync-addr "$SYNC" "$@" \
        >/dev/null 2>>"$work/controller.log" &
    ctl=$!
    bench_wait_ok "http://$ADMIN/readyz"
}

standalone() {
    "$BIN/gw-runtime" --config "$work/api.yaml" --proxy-addr "$PROXY" --status-addr "$STATUS" \
        >/dev/null 2>>"$work/standalone.log" &
    local pid=$!
    bench_wait_ok "http://$STATUS/status"
    stop "$pid"
}

# Sets $ms, and $status: the runtime's status in the fleet view right after it exited.
runtime() {
    rm -rf "$work/rt"
    controller
    "$BIN/gw-runtime" --controller "$SYNC" --node-id bench-rt --data-dir "$work/rt" \
        --proxy-addr "$PROXY" --status-addr "$STATUS" >/dev/null 2>>"$work/runtime.log" &
    local rt=$!
    for _ in $(seq 1 600); do
        curl -s "http://$ADMIN/api/v1/runtimes" | grep -q '"status":"connected"' && break
        sleep 0.05
    done
    stop "$rt"
    status=$(curl -s "http://$ADMIN/api/v1/runtimes" | grep -o '"status":"[a-z]*"' | cut -d'"' -f4)
    local took=$ms
    stop "$ctl"
    ms=$took
}

all_in_one() {
    controller --all-in-one --proxy-addr "$PROXY" --status-addr "$STATUS"
    curl -s -o /dev/null -X PUT -H 'Content-Type: application/yaml' --data-binary @"$work/api.yaml" \
        "http://$ADMIN/api/v1/apis/bench?wait=applied"
    for _ in $(seq 1 20); do curl -s -o /dev/null "http://$PROXY/"; done
    stop "$ctl"
}

# Sets $exited (SIGTERM to a zombie) and $gone (to `kill -0` failing).
orphan() {
    (
        "$BIN/gw-runtime" --config "$work/api.yaml" --proxy-addr "$PROXY" --status-addr "$STATUS" \
            >/dev/null 2>>"$work/orphan.log" &
        echo $! >"$work/orphan.pid"
    )
    local pid start
    pid=$(cat "$work/orphan.pid")
    bench_wait_ok "http://$STATUS/status"
    exited=""
    start=$(now_ms)
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        if [ -z "$exited" ] && grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
            exited=$(($(now_ms) - start))
        fi
        sleep 0.002
    done
    gone=$(($(now_ms) - start))
    exited=${exited:-$gone}
}

declare -a a b c d e s
for _ in $(seq 1 "$ROUNDS"); do
    standalone
    a+=("$ms")
    runtime
    b+=("$ms")
    s+=("$status")
    all_in_one
    c+=("$ms")
    orphan
    d+=("$exited")
    e+=("$gone")
done
echo "SIGTERM to exit, over $ROUNDS runs:"
echo "  standalone runtime:             $(summary "${a[@]}")"
echo "  runtime with a controller:      $(summary "${b[@]}"); fleet view right after: ${s[*]}"
echo "  all-in-one controller:          $(summary "${c[@]}")"
echo "  orphaned runtime, exited:       $(summary "${d[@]}")"
echo "  orphaned runtime, reaped:       $(summary "${e[@]}") (by PID 1: $(tr '\0' ' ' </proc/1/cmdline | cut -c1-40))"
