#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a figure that does not
# depend on what else the machine is doing, for judging changes to the hot path that are
# smaller than the noise of bench/proxy.sh.
#
# Starts an upstream (nginx, `return 200`), runs gw-runtime (the `profiling` build, one
# thread) under callgrind with instrumentation off, sends WARMUP requests, turns
# instrumentation on, sends REQUESTS requests on one keep-alive connection, and prints the
# instructions counted divided by REQUESTS, with the top functions.
#
# With POLICIES=1, gw-runtime serves the policies case of bench/proxy.sh instead (100 APIs,
# 100 consumers, api-key + rate-limit + request-headers), and the requests go round the 100
# APIs and the 100 keys.
#
# Usage: bench/instructions.sh           (REQUESTS=2000 WARMUP=200 POLICIES=0 by default)
# Needs: valgrind, nginx (installed with apt-get when missing and run as root), python3.
# KEEP=1 keeps the work directory (the callgrind output) for callgrind_annotate.
set -euo pipefail

REQUESTS=${REQUESTS:-2000}
WARMUP=${WARMUP:-200}
UPSTREAM_PORT=${UPSTREAM_PORT:-28181}
GW_PORT=${GW_PORT:-28183}
GW_STATUS_PORT=${GW_STATUS_PORT:-28184}
POLICIES=${POLICIES:-0}

cd "$(dirname "$0")/.."
root=$(pwd)

. bench/lib.sh
bench_need valgrind:valgrind nginx:nginx-light

echo "building gw-runtime (profiling profile: release with line tables)" >&2
cargo build --profile profiling -q -p gw-runtime
GW="$root/target/profiling/gw-runtime"

bench_workdir gw-instr
bench_upstream "$UPSTREAM_PORT"
bench_api "$UPSTREAM_PORT"
config=$work/api.yaml
if [ "$POLICIES" = 1 ]; then
    bench_policies_api "$UPSTREAM_PORT"
    config=$work/policies.yaml
fi
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
    "$GW" --config "$config" --proxy-addr "127.0.0.1:$GW_PORT" \
    --status-addr "127.0.0.1:$GW_STATUS_PORT" --data-dir "$work/gw" \
    --worker-threads 1 --log-format json >"$work/gw.log" 2>&1 & gw_pid=$!
pids+=("$gw_pid")

send() { # count
    python3 - "$GW_PORT" "$1" "$POLICIES" <<'EOF'
import http.client, sys
port, count, policies = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for i in range(count):
    if policies:
        # every API and every key in turn (7 and 100 are coprime: all pairs come round)
        key = f"bench-key-{(i * 7) % 100}-0123456789abcdef"
        conn.request("GET", f"/api{i % 100}/items/42?q=1", headers={"X-API-Key": key})
    else:
        conn.request("GET", "/items/42?q=1")
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"status {response.status}")
EOF
}

bench_wait_ok "http://127.0.0.1:$GW_STATUS_PORT/status/ready"
send "$WARMUP"
callgrind_control -i on "$gw_pid" >/dev/null
send "$REQUESTS"
callgrind_control -i off "$gw_pid" >/dev/null
callgrind_control -d "$gw_pid" >/dev/null
kill -TERM "$gw_pid"
wait "$gw_pid" 2>/dev/null || true

# the dump taken while instrumentation was on holds the counts (the file written at exit
# covers the time after it, with instrumentation off)
dump=$(grep -l "^totals: [1-9]" "$work"/callgrind.out* | head -1)
total=$(awk '/^totals:/ { print $2; exit }' "$dump")
echo "requests: $REQUESTS (after $WARMUP to warm up), one keep-alive connection, policies case: $POLICIES"
echo "instructions per request: $((total / REQUESTS))"
echo
callgrind_annotate --inclusive=no "$dump" 2>/dev/null | grep -E "^ *[0-9,]+ \(" | head -25
