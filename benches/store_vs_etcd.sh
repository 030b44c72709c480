#!/usr/bin/env bash
# Store write benchmark: a 3-node Tollgate store vs a single-node etcd 3.4, same machine, same run,
# all on loopback. For each client count (1, 16, 256): Tollgate usage records one per request (no
# batching) and 100 per request (batching), and etcd Put of a value of the same size (300 B, about
# one JSON usage record). Repeats REPS times and prints medians as a markdown table.
#
#   benches/store_vs_etcd.sh [REPS=3] [SECONDS=10]
#
# CLIENTS="1 16 256" and BATCHES="1 100 etcd" choose the cells (e.g. BATCHES=100 CLIENTS=256 to
# watch ingestion alone over a long run).
#
# Needs: cargo build --release -p tollgate -p tollgate-bench; apt-get install etcd-server.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
SECS=${2:-10}
BIN=${BIN:-target/release/tollgate} # BIN=<path> measures another build (A/B)
LOAD=target/release/tollgate-load
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
[ -x "$BIN" ] && [ -x "$LOAD" ] || cargo build --release -p tollgate -p tollgate-bench

WORK=$(mktemp -d)
PIDS=()
# KEEP_LOGS=<dir> keeps the nodes' and etcd's logs there
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$WORK"/*.log "$KEEP_LOGS"/; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TOKEN=$(python3 - <<'PY'
import random, string, zlib
alpha = string.digits + string.ascii_uppercase + string.ascii_lowercase
rnd = ''.join(random.SystemRandom().choice(alpha) for _ in range(32))
body = f"tg_admin_{rnd}"
n = zlib.crc32(body.encode()); out = ''
for _ in range(6): out = alpha[n % 62] + out; n //= 62
print(f"{body}_{out}")
PY
)
PEER=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
P1=$(port); P2=$(port); P3=$(port)
IC="1=127.0.0.1:$P1,2=127.0.0.1:$P2,3=127.0.0.1:$P3"
for i in 1 2 3; do
  eval "P=\$P$i"
  "$BIN" store --node-id $i --listen 127.0.0.1:$P --data-dir "$WORK/store-$i" --initial-cluster "$IC" \
    --bootstrap-admin-token "$TOKEN" --peer-token "$PEER" >"$WORK/store-$i.log" 2>&1 &
  PIDS+=($!)
done
EC=$(port); EP=$(port)
etcd --name bench --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EC" \
  --advertise-client-urls "http://127.0.0.1:$EC" --listen-peer-urls "http://127.0.0.1:$EP" \
  --initial-advertise-peer-urls "http://127.0.0.1:$EP" --initial-cluster "bench=http://127.0.0.1:$EP" \
  >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
export TOLLGATE_STORE="127.0.0.1:$P1,127.0.0.1:$P2,127.0.0.1:$P3" TOLLGATE_ADMIN_TOKEN="$TOKEN"
for _ in $(seq 1 100); do "$BIN" admin org list >/dev/null 2>&1 && break; sleep 0.2; done

RESULTS="$WORK/results.jsonl"
for rep in $(seq 1 "$REPS"); do
  for c in ${CLIENTS:-1 16 256}; do
    for b in ${BATCHES:-1 100 etcd}; do
      if [ "$b" = etcd ]; then
        "$LOAD" --clients $c --duration-s "$SECS" etcd --endpoint "127.0.0.1:$EC" --value-bytes 300 >>"$RESULTS"
      else
        "$LOAD" --clients $c --duration-s "$SECS" store --store "$TOLLGATE_STORE" --token "$TOKEN" --batch "$b" >>"$RESULTS"
      fi
    done
    echo "rep $rep clients $c done" >&2
  done
done
# how many writes the leader's proposer carried per log entry (proposal batching)
"$BIN" cluster status --output json 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); w,e=s.get("writes_proposed",0),s.get("entries_proposed",0); print(f"leader proposed {w} writes in {e} log entries ({w/max(e,1):.1f} per entry)", file=sys.stderr)' || true
cp "$RESULTS" "${RAW_OUT:-/tmp/store_vs_etcd.jsonl}"
echo "raw results: ${RAW_OUT:-/tmp/store_vs_etcd.jsonl}" >&2
python3 - "$RESULTS" <<'PY'
import json, sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line); rows[(r["target"], r["batch"], r["clients"])].append(r)
print("| clients | target | records/s (median) | requests/s | p50 ms | p99 ms | errors | runs |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for key in sorted(rows, key=lambda k: (k[2], k[0], k[1])):
    rs = rows[key]; med = lambda f: statistics.median(x[f] for x in rs)
    name = f"{key[0]} batch={key[1]}" if key[0] != "etcd" else "etcd put"
    print(f"| {key[2]} | {name} | {med('records_per_s'):,.0f} | {med('requests_per_s'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {sum(x['errors'] for x in rs)} | {len(rs)} |")
PY
