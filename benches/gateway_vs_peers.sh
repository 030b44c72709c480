#!/usr/bin/env bash
# Gateway data-plane benchmark, all targets in one run on this machine, all proxying to the same
# simulated upstream (`tollgate mock-upstream`, its own process):
#   upstream direct | nginx (1 worker) as a bare reverse proxy | TensorZero | Tollgate gateway
# Modes: JSON and SSE chat completions (16 completion tokens), at 1 and 50 connections.
# Tollgate runs as DESIGN.md section 10 asks: API-key auth, three limits on the org (leases and
# a reservation per request), routing, the usage journal (fdatasync group commit) and shipping.
# Usage: [TARGETS="nginx tollgate"] [STREAMS=false] [CONNS=50] [GATEWAY_THREADS=n] benches/gateway_vs_peers.sh [repeats=3] [seconds=10]
# Needs: nginx (apt-get install nginx-light); TensorZero in a venv at $TZ_VENV (default
# /tmp/tz-venv: python3 -m venv /tmp/tz-venv && /tmp/tz-venv/bin/pip install tensorzero==2026.6.0).
# Prints one JSON line per rep and cell (stdout); reps are interleaved across targets; at the end
# the medians as a markdown table and the ratios of DESIGN.md section 10 (benches/gateway_table.py,
# stderr).
# Loopback only; every process started here is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
SECS=${2:-10}
TZ_VENV=${TZ_VENV:-/tmp/tz-venv}
# which targets to measure (all by default), STREAMS and CONNS which modes; GATEWAY_THREADS sets the
# gateway's worker threads. Each result line carries the CPU µs per request of every process.
TARGETS=${TARGETS:-direct nginx tensorzero tollgate}
cargo build --release --locked -p tollgate -p tollgate-bench >&2
BIN=${BIN:-target/release/tollgate} # BIN=<path> measures another build (A/B)
LOAD=target/release/tollgate-load
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

MOCK=$(port); STORE=$(port); GW=$(port); NGINX=$(port)
$BIN mock-upstream --listen 127.0.0.1:$MOCK --completion-tokens 16 2>"$DIR/mock.log" & PIDS+=($!); MOCK_PID=$!
$BIN store --node-id 1 --listen 127.0.0.1:$STORE --data-dir "$DIR/store" \
  --initial-cluster 1=127.0.0.1:$STORE --peer-token "$(head -c 48 /dev/urandom | base64 | tr -dc A-Za-z0-9)" \
  2>"$DIR/store.log" & PIDS+=($!); STORE_PID=$!
wait_port $MOCK; wait_port $STORE
for _ in $(seq 200); do [ -s "$DIR/store/bootstrap-admin-token" ] && break; sleep 0.05; done
export TOLLGATE_STORE=127.0.0.1:$STORE TOLLGATE_ADMIN_TOKEN=$(cat "$DIR/store/bootstrap-admin-token")
cat > "$DIR/config.yaml" <<YAML
version: 1
orgs: [{id: bench, name: Bench}]
projects: [{org: bench, id: p, name: P}]
models:
  - name: demo-chat
    max_output_tokens: 4096
    default_output_tokens: 16
    price: {input_per_mtok_micros: 150000, output_per_mtok_micros: 600000}
    tiers: [{endpoints: [{url: "http://127.0.0.1:$MOCK/v1"}]}]
limits: # DESIGN.md section 10 counts leases and reservations: three limits, large enough never to refuse
  - {scope: {org: {org: bench}}, dimension: requests_per_minute, limit: 100000000}
  - {scope: {org: {org: bench}}, dimension: input_tokens_per_minute, limit: 10000000000}
  - {scope: {org: {org: bench}}, dimension: {token_budget: {period: month}}, limit: 1000000000000}
YAML
for _ in $(seq 100); do $BIN admin apply -f "$DIR/config.yaml" >/dev/null 2>&1 && break; sleep 0.1; done
KEY=$($BIN admin key create --org bench --project p --env test --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
TOLLGATE_WORKER_THREADS=${GATEWAY_THREADS:-} $BIN gateway --listen 127.0.0.1:$GW --store 127.0.0.1:$STORE --store-token "$TOLLGATE_ADMIN_TOKEN" \
  --data-dir "$DIR/gw" 2>"$DIR/gw.log" & PIDS+=($!); GW_PID=$!
for _ in $(seq 200); do curl -sf 127.0.0.1:$GW/readyz >/dev/null && break; sleep 0.05; done

mkdir -p "$DIR/nginx"
cat > "$DIR/nginx.conf" <<NGINX
worker_processes 1;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $DIR/nginx; proxy_temp_path $DIR/nginx; fastcgi_temp_path $DIR/nginx;
  uwsgi_temp_path $DIR/nginx; scgi_temp_path $DIR/nginx;
  upstream mock { server 127.0.0.1:$MOCK; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -c "$DIR/nginx.conf" -g 'daemon off;' & PIDS+=($!); NGINX_PID=$!
wait_port $NGINX

TZ_URL=""
if [ -x "$TZ_VENV/bin/python" ]; then
  "$TZ_VENV/bin/python" benches/tensorzero_gateway.py $MOCK > "$DIR/tz.out" 2>"$DIR/tz.log" & PIDS+=($!); TZ_PID=$!
  for _ in $(seq 300); do TZ_URL=$(grep -o 'http://[^ ]*' "$DIR/tz.out" | head -1 || true); [ -n "$TZ_URL" ] && break; sleep 0.1; done
fi

body() { # $1 = model, $2 = stream
  echo "{\"model\":\"$1\",\"messages\":[{\"role\":\"user\",\"content\":\"benchmark prompt of a few words\"}],\"max_tokens\":16,\"stream\":$2}"
}
# CPU time (clock ticks) of a process and its children (nginx's worker), and of this shell's
# waited-for children (the load generator)
ticks() { local t=0; for p in "$@" $(pgrep -P "$1" 2>/dev/null || true); do
  t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
load_ticks() { awk '{print $16 + $17}' /proc/$$/stat; }
HZ=$(getconf CLK_TCK)
proxy_pid() { case $1 in nginx) echo "$NGINX_PID" ;; tensorzero) echo "$TZ_PID" ;; tollgate) echo "$GW_PID" ;; *) echo "" ;; esac; }
# CPU ms per 1,000 requests for each process of the run: what the throughput ratio comes from
cpu_json() { # requests proxy_before mock_before store_before load_before proxy_pid
  local n=$1 pp=$6 pr=0
  [ -n "$pp" ] && pr=$(( $(ticks "$pp") - $2 ))
  python3 -c "import sys; n,hz=max(int(sys.argv[1]),1),int(sys.argv[2]); f=lambda t: round(int(t)*1e6/hz/n,1)
print('{\"proxy\":%s,\"mock\":%s,\"store\":%s,\"load\":%s}' % tuple(f(x) for x in sys.argv[3:]))" \
    "$n" "$HZ" "$pr" $(( $(ticks "$MOCK_PID") - $3 )) $(( $(ticks "$STORE_PID") - $4 )) $(( $(load_ticks) - $5 ))
}
run() { # label url model stream clients rep [key]: one rep of one cell
  local label=$1 url=$2 model=$3 stream=$4 c=$5 r=$6 key=${7:-}
  case " $TARGETS " in *" $label "*) ;; *) return 0 ;; esac
  local pp; pp=$(proxy_pid "$label")
  local b0=0; [ -n "$pp" ] && b0=$(ticks "$pp")
  local b1 b2 b3; b1=$(ticks "$MOCK_PID"); b2=$(ticks "$STORE_PID"); b3=$(load_ticks)
  out=$(TOLLGATE_API_KEY=$key $LOAD --clients "$c" --duration-s "$SECS" http --url "$url" --body "$(body "$model" "$stream")")
  n=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$out")
  cpu=$(cpu_json "$n" "$b0" "$b1" "$b2" "$b3" "$pp")
  echo "{\"label\":\"$label\",\"stream\":$stream,\"run\":$r,\"result\":$out,\"cpu_us_per_req\":$cpu}" | tee -a "$DIR/results.jsonl"
}
# reps are the outer loop: each rep measures every target back to back, so a noisy spell on the
# shared machine hits all targets of a rep alike instead of all reps of one target
for stream in ${STREAMS:-false true}; do
  for c in ${CONNS:-1 50}; do
    for r in $(seq "$REPEATS"); do
      run direct "http://127.0.0.1:$MOCK/v1/chat/completions" demo-chat $stream $c $r
      run nginx "http://127.0.0.1:$NGINX/v1/chat/completions" demo-chat $stream $c $r
      if [ -n "$TZ_URL" ]; then
        run tensorzero "$TZ_URL/chat/completions" tensorzero::model_name::demo $stream $c $r
      fi
      run tollgate "http://127.0.0.1:$GW/v1/chat/completions" demo-chat $stream $c $r "$KEY"
    done
  done
done
# the medians as a markdown table, and the section-10 ratios (stderr)
python3 benches/gateway_table.py < "$DIR/results.jsonl" >&2
# what Tollgate did during the run (stderr): requests admitted on leases, lease refreshes, usage
# shipped, journal syncs — evidence that the limits and the journal were in the path
curl -sf "127.0.0.1:$GW/metrics" | grep -E '^tollgate_gateway_(quota_admitted|lease_refresh|usage_shipped|journal|requests_total)' >&2 || true
