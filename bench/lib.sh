# Shared by the bench/ scripts (sourced, not run): packages, a work directory that is
# removed with every process started in it, and nginx configurations.

# Installs the Debian packages named (as `command:package`) whose command is missing, when
# run as root; otherwise names them and exits.
bench_need() {
    local missing=() item
    for item in "$@"; do
        command -v "${item%%:*}" >/dev/null || [ -x "/usr/sbin/${item%%:*}" ] || missing+=("${item#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${missing[*]} (Debian packages)" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "$0 needs these Debian packages: ${missing[*]}" >&2
        exit 1
    fi
}

# $work: a fresh directory; $pids: processes to stop. Both go at exit (KEEP=1 keeps $work).
bench_workdir() {
    work=$(mktemp -d "/tmp/$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}

# Writes $work/NAME/nginx.conf: one worker, no access log, the given http-level block.
bench_nginx_conf() { # name, block
    mkdir -p "$work/$1"
    cat >"$work/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/$1;
    proxy_temp_path $work/$1;
    fastcgi_temp_path $work/$1;
    uwsgi_temp_path $work/$1;
    scgi_temp_path $work/$1;
    keepalive_requests 1000000;
    $2
}
CONF
}

# The upstream of every benchmark: `return 200` with a 20-byte body on PORT.
bench_upstream() { # port
    bench_nginx_conf upstream "server { listen 127.0.0.1:$1; location / { return 200 \"hello from upstream\n\"; } }"
    "$(command -v nginx || echo /usr/sbin/nginx)" -c "$work/upstream/nginx.conf" -p "$work/upstream" &
    pids+=($!)
}

# A one-API config file for gw-runtime, proxying `/` to the upstream on PORT.
bench_api() { # port
    cat >"$work/api.yaml" <<YAML
apiVersion: gw/v1
kind: Api
metadata: {name: bench}
spec:
  context: /
  upstream:
    endpoints: [{url: 'http://127.0.0.1:$1'}]
YAML
}

# Waits (at most 60 s) until URL answers 200.
bench_wait_ok() { # url
    local _
    for _ in $(seq 1 600); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = 200 ]; then return 0; fi
        sleep 0.1
    done
    echo "no 200 from $1" >&2
    exit 1
}

# The policies case Kong and API7 publish, as $work/policies.yaml: 100 APIs (`/api0/` to
# `/api99/`) proxying to the upstream on PORT, 100 consumers with the API key
# `bench-key-N-0123456789abcdef` each, and on every API `api-key`, a local `rate-limit` per
# consumer (high enough never to trigger) and `request-headers` (one templated header).
bench_policies_api() { # port
    local UPSTREAM_PORT=$1
    {
        for i in $(seq 0 99); do
            cat <<YAML
apiVersion: gw/v1
kind: Api
metadata: {name: api$i}
spec:
  context: /api$i
  upstream:
    endpoints: [{url: 'http://127.0.0.1:$UPSTREAM_PORT'}]
  policies:
    - {name: api-key}
    - name: rate-limit
      params: {key: consumer, limits: [{requests: 100000000, window: second}]}
    - name: request-headers
      params: {set: {x-consumer: '\${consumer.name}'}}
---
apiVersion: gw/v1
kind: Consumer
metadata: {name: consumer$i}
spec:
  credentials: [{type: api-key, id: key, key: bench-key-$i-0123456789abcdef}]
---
YAML
        done
    } >"$work/policies.yaml"
}
