#!/usr/bin/env bash
# HTTP/2 floods against gw-runtime: its memory and CPU stay bounded, and legitimate HTTP/2
# traffic goes on.
#
# Starts one upstream (nginx, `return 200`) and gw-runtime (release build, default limits,
# one API on `/`), then for each scenario drives legitimate HTTP/2 traffic with h2load
# (4 connections, 10 streams each) for DURATION seconds while bench/h2flood.py floods the
# runtime from FLOODERS connections at a time:
#
#   baseline       no flood
#   rapid-reset    streams opened and reset at once (CVE-2023-44487)
#   continuation   a header block that never ends (CVE-2024-27316 and kin)
#   streams        1,000 streams per connection, each with a body that never comes
#
# Prints, per scenario: the legitimate requests/s and their ratio to the baseline, the
# runtime's CPU use, its peak resident memory, and what the flooder saw (connections it
# made, frames it wrote, GOAWAYs it received). Run a scenario several times (ROUNDS) and
# read the medians: the machines are shared and noisy.
#
# Usage: bench/h2flood.sh              (ROUNDS=3 DURATION=8 FLOODERS=8 by default)
# Needs: nginx, h2load (nghttp2-client; both installed with apt-get when missing and run as
# root), python3, cargo.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
FLOODERS=${FLOODERS:-8}
UPSTREAM_PORT=${UPSTREAM_PORT:-28181}
GW_PORT=${GW_PORT:-28183}
GW_STATUS_PORT=${GW_STATUS_PORT:-28184}

cd "$(dirname "$0")/.."
root=$(pwd)

. bench/lib.sh
bench_need nginx:nginx-light h2load:nghttp2-client python3:python3

echo "building gw-runtime (release)" >&2
cargo build --release -q -p gw-runtime
GW="$root/target/release/gw-runtime"

bench_workdir gw-h2flood
bench_upstream "$UPSTREAM_PORT"
bench_api "$UPSTREAM_PORT"
"$GW" --config "$work/api.yaml" --proxy-addr "127.0.0.1:$GW_PORT" \
    --status-addr "127.0.0.1:$GW_STATUS_PORT" --data-dir "$work/gw" \
    --log-format json >"$work/gw.log" 2>&1 & gw_pid=$!
pids+=("$gw_pid")
bench_wait_ok "http://127.0.0.1:$UPSTREAM_PORT/"
bench_wait_ok "http://127.0.0.1:$GW_STATUS_PORT/status/ready"
bench_wait_ok "http://127.0.0.1:$GW_PORT/"

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$gw_pid/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$gw_pid/status"; }

# one scenario: prints "req/s cpu% peak_rss_mib flooder_json"
run() { # mode
    local mode=$1 flood_pid="" sampler_pid peak_file="$work/peak" out
    : >"$peak_file"
    # the runtime's resident memory, sampled every 100 ms
    (peak=0; while kill -0 "$gw_pid" 2>/dev/null; do
        r=$(rss_kib); [ "$r" -gt "$peak" ] && peak=$r && echo "$peak" >"$peak_file"
        sleep 0.1; done) & sampler_pid=$!
    if [ "$mode" != baseline ]; then
        python3 bench/h2flood.py "$mode" "127.0.0.1:$GW_PORT" "$DURATION" "$FLOODERS" >"$work/flood.json" &
        flood_pid=$!
    else
        echo '{}' >"$work/flood.json"
    fi
    local before; before=$(cpu_ticks)
    local started; started=$(date +%s.%N)
    out=$(h2load -D "$DURATION" -c 4 -m 10 "http://127.0.0.1:$GW_PORT/" 2>&1)
    [ -n "$flood_pid" ] && wait "$flood_pid"
    local ended; ended=$(date +%s.%N)
    local after; after=$(cpu_ticks)
    kill "$sampler_pid" 2>/dev/null; wait "$sampler_pid" 2>/dev/null || true
    local rps; rps=$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
    local cpu; cpu=$(awk -v a="$before" -v b="$after" -v t="$ticks" -v s="$started" -v e="$ended" \
        'BEGIN {printf "%.0f", 100 * (b - a) / t / (e - s)}')
    local peak; peak=$(awk '{printf "%.1f", $1 / 1024}' "$peak_file")
    echo "${rps:-0} $cpu $peak $(cat "$work/flood.json")"
}

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

printf "%-13s %10s %7s %6s %9s  %s\n" scenario "req/s" ratio "cpu%" "peak MiB" "flooder (last round)"
baseline=""
for mode in baseline rapid-reset continuation streams; do
    results=()
    for _ in $(seq 1 "$ROUNDS"); do
        results+=("$(run "$mode")")
    done
    rps=$(printf '%s\n' "${results[@]}" | awk '{print $1}' | median)
    cpu=$(printf '%s\n' "${results[@]}" | awk '{print $2}' | median)
    peak=$(printf '%s\n' "${results[@]}" | awk '{print $3}' | sort -n | tail -1)
    flood=$(printf '%s\n' "${results[@]}" | tail -1 | cut -d' ' -f4-)
    [ "$mode" = baseline ] && baseline=$rps
    ratio=$(awk -v r="$rps" -v b="$baseline" 'BEGIN {printf "%.2f", (b > 0 ? r / b : 0)}')
    printf "%-13s %10s %7s %6s %9s  %s\n" "$mode" "$rps" "$ratio" "$cpu" "$peak" "$flood"
done
echo "runtime: default limits (--http2-max-streams 100, keep-alive 20s, header list 64 KiB)"
