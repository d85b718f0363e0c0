#!/usr/bin/env bash
# Plain-proxy benchmark: gw-runtime against nginx as a reverse proxy, same upstream, same load.
#
# Starts one upstream (nginx, 1 worker, `return 200` with a 20-byte body), nginx as a reverse
# proxy (1 worker, keep-alive to the upstream) and gw-runtime (`--worker-threads 1`, a config
# file with one API on `/`), then drives each with wrk for the same duration and connection
# count, in turns, for several rounds: direct to the upstream, through nginx, through gw.
# Prints requests/s, p50 and p99 per run, the medians, the gw/nginx ratio, and gw's memory
# (RSS idle and its peak under load).
#
# With POLICIES=1 (the default), a second gw-runtime runs the case Kong and API7 publish:
# 100 APIs (`/api0/` to `/api99/`), 100 consumers with an API key each, and on every API
# `api-key` + a local `rate-limit` per consumer (high enough never to trigger) +
# `request-headers` (one templated header). Every target is then driven with the same wrk
# script, which spreads requests over the 100 APIs and the 100 keys; the ratio printed for
# it is gw-with-policies over nginx's plain proxy.
#
# Usage: bench/proxy.sh            (ROUNDS=3 DURATION=6 CONNECTIONS=50 by default)
#        GW_BIN=path/to/gw-runtime bench/proxy.sh   (a binary built elsewhere; no build)
#        ROUNDS=5 DURATION=10 CONNECTIONS=100 bench/proxy.sh
# Needs: nginx and wrk (installed with apt-get when missing and run as root), cargo.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
CONNECTIONS=${CONNECTIONS:-50}
UPSTREAM_PORT=${UPSTREAM_PORT:-28081}
NGINX_PORT=${NGINX_PORT:-28082}
GW_PORT=${GW_PORT:-28083}
GW_STATUS_PORT=${GW_STATUS_PORT:-28084}
GWP_PORT=${GWP_PORT:-28085}
GWP_STATUS_PORT=${GWP_STATUS_PORT:-28086}
POLICIES=${POLICIES:-1}

cd "$(dirname "$0")/.."
root=$(pwd)

. bench/lib.sh
bench_need nginx:nginx-light wrk:wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -n "${GW_BIN:-}" ]; then
    GW=$GW_BIN # a binary built elsewhere (another checkout, for a before/after comparison)
else
    echo "building gw-runtime (release)" >&2
    cargo build --release -q -p gw-runtime
    GW="$root/target/release/gw-runtime"
fi

bench_workdir gw-bench
bench_upstream "$UPSTREAM_PORT"
bench_api "$UPSTREAM_PORT"
bench_nginx_conf proxy "upstream up { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
    server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

bench_policies_api "$UPSTREAM_PORT"
# every target gets the same requests: a random API and a random key
cat >"$work/spread.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  local i = math.random(0, 99)
  local k = math.random(0, 99)
  return wrk.format("GET", "/api" .. i .. "/", { ["X-API-Key"] = "bench-key-" .. k .. "-0123456789abcdef" })
end
LUA

"$NGINX" -c "$work/proxy/nginx.conf" -p "$work/proxy" & pids+=($!)
"$GW" --config "$work/api.yaml" --proxy-addr "127.0.0.1:$GW_PORT" \
    --status-addr "127.0.0.1:$GW_STATUS_PORT" --data-dir "$work/gw" \
    --worker-threads 1 --log-format json >"$work/gw.log" 2>&1 & gw_pid=$!
pids+=("$gw_pid")

if [ "$POLICIES" = 1 ]; then
    "$GW" --config "$work/policies.yaml" --proxy-addr "127.0.0.1:$GWP_PORT" \
        --status-addr "127.0.0.1:$GWP_STATUS_PORT" --data-dir "$work/gwp" \
        --worker-threads 1 --log-format json >"$work/gwp.log" 2>&1 & gwp_pid=$!
    pids+=("$gwp_pid")
fi

bench_wait_ok "http://127.0.0.1:$UPSTREAM_PORT/"
bench_wait_ok "http://127.0.0.1:$NGINX_PORT/"
bench_wait_ok "http://127.0.0.1:$GW_STATUS_PORT/status/ready"
bench_wait_ok "http://127.0.0.1:$GW_PORT/"
if [ "$POLICIES" = 1 ]; then
    bench_wait_ok "http://127.0.0.1:$GWP_STATUS_PORT/status/ready"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-API-Key: bench-key-7-0123456789abcdef' "http://127.0.0.1:$GWP_PORT/api42/")
    [ "$code" = 200 ] || { echo "the policies gateway answered $code" >&2; cat "$work/gwp.log" >&2; exit 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GWP_PORT/api42/")
    [ "$code" = 401 ] || { echo "the policies gateway let a request without a key through ($code)" >&2; exit 1; }
fi

rss_kb() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
idle_rss=$(rss_kb "$gw_pid" VmRSS)

# wrk's latency figures come with units; print them in milliseconds
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n
    }'
}

run() { # name, port, [wrk script] -> "rps p50 p99"
    local out script=()
    [ -n "${3:-}" ] && script=(-s "$3")
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${script[@]}" "http://127.0.0.1:$2/")
    if echo "$out" | grep -q "Non-2xx or 3xx responses"; then
        echo "$1: wrk saw non-2xx responses:" >&2
        echo "$out" >&2
        exit 1
    fi
    local rps p50 p99
    rps=$(echo "$out" | awk '/^Requests\/sec/ { printf "%d", $2 }')
    p50=$(to_ms "$(echo "$out" | awk '$1 == "50%" { print $2 }')")
    p99=$(to_ms "$(echo "$out" | awk '$1 == "99%" { print $2 }')")
    echo "$rps $p50 $p99"
}

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, $ROUNDS rounds, $(nproc) cores"
printf "%-6s %-7s %10s %9s %9s\n" round target "req/s" "p50 ms" "p99 ms"
declare -A results
targets=(direct nginx gw)
[ "$POLICIES" = 1 ] && targets+=(direct-s nginx-s gw-pol)
for round in $(seq 1 "$ROUNDS"); do
    for target in "${targets[@]}"; do
        script=
        case $target in
            direct) port=$UPSTREAM_PORT ;;
            nginx) port=$NGINX_PORT ;;
            gw) port=$GW_PORT ;;
            # the same spread requests (100 APIs, 100 keys) for the policies case
            direct-s) port=$UPSTREAM_PORT script=$work/spread.lua ;;
            nginx-s) port=$NGINX_PORT script=$work/spread.lua ;;
            gw-pol) port=$GWP_PORT script=$work/spread.lua ;;
        esac
        read -r rps p50 p99 < <(run "$target" "$port" "$script")
        results[$target.rps]+="$rps "
        results[$target.p50]+="$p50 "
        results[$target.p99]+="$p99 "
        printf "%-6s %-7s %10s %9s %9s\n" "$round" "$target" "$rps" "$p50" "$p99"
    done
done
peak_rss=$(rss_kb "$gw_pid" VmHWM)

echo
echo "medians over $ROUNDS rounds"
printf "%-7s %10s %9s %9s\n" target "req/s" "p50 ms" "p99 ms"
for target in "${targets[@]}"; do
    rps=$(echo "${results[$target.rps]}" | tr ' ' '\n' | grep . | median)
    p50=$(echo "${results[$target.p50]}" | tr ' ' '\n' | grep . | median)
    p99=$(echo "${results[$target.p99]}" | tr ' ' '\n' | grep . | median)
    printf "%-7s %10.0f %9s %9s\n" "$target" "$rps" "$p50" "$p99"
    declare "median_${target//-/_}_rps=$rps" "median_${target//-/_}_p99=$p99"
done
echo
awk -v g="$median_gw_rps" -v n="$median_nginx_rps" 'BEGIN { printf "gw/nginx requests/s: %.2fx\n", g / n }'
echo "p99: gw ${median_gw_p99} ms, nginx ${median_nginx_p99} ms"
if [ "$POLICIES" = 1 ]; then
    awk -v g="$median_gw_pol_rps" -v n="$median_nginx_s_rps" 'BEGIN { printf "gw with 100 APIs, 100 consumers, api-key + rate-limit + request-headers / nginx plain proxy (same requests): %.2fx\n", g / n }'
    echo "p99: gw with policies ${median_gw_pol_p99} ms, nginx ${median_nginx_s_p99} ms"
fi
echo "gw-runtime RSS: idle $((idle_rss / 1024)) MB, peak under load $((peak_rss / 1024)) MB"
