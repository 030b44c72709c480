#!/usr/bin/env bash
# Quota benchmarks, one run on this machine:
#   1. store `Acquire` throughput and latency on a 3-node cluster: each client is a gateway whose
#      Acquire wants 3 buckets (requests/min, input tokens/min, a monthly token budget), with no
#      usage records and with 10 per call;
#   2. gateway throughput with limits on vs off, in the same run: one gateway, one simulated
#      upstream, two orgs — "on" with those 3 limits (large enough never to refuse), "off" with
#      none — JSON chat completions at 50 connections, alternating on/off each repeat.
# The criterion bench of the local decision is separate:
#   cargo bench -p tollgate-gateway --bench admission
# Usage: [PARTS="acquire gateway"] benches/quota.sh [repeats=3] [seconds=10]. Loopback only; every process started here
# is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS=${1:-3}
SECS=${2:-10}
# which parts to run: acquire (store), gateway (limits on vs off)
PARTS=${PARTS:-acquire gateway}
cargo build --release --locked -p tollgate -p tollgate-bench >&2
BIN=target/release/tollgate
LOAD=target/release/tollgate-load
DIR=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

S1=$(port); S2=$(port); S3=$(port); MOCK=$(port); GW=$(port)
INITIAL="1=127.0.0.1:$S1,2=127.0.0.1:$S2,3=127.0.0.1:$S3"
PEER=$(head -c 48 /dev/urandom | base64 | tr -dc A-Za-z0-9)
i=1
for p in $S1 $S2 $S3; do
  $BIN store --node-id $i --listen 127.0.0.1:$p --data-dir "$DIR/store-$i" --initial-cluster "$INITIAL" \
    --peer-token "$PEER" 2>"$DIR/store-$i.log" & PIDS+=($!)
  i=$((i + 1))
done
$BIN mock-upstream --listen 127.0.0.1:$MOCK --completion-tokens 16 2>"$DIR/mock.log" & PIDS+=($!)
wait_port $S1; wait_port $S2; wait_port $S3; wait_port $MOCK
TOKEN=""
for _ in $(seq 300); do
  for i in 1 2 3; do [ -s "$DIR/store-$i/bootstrap-admin-token" ] && TOKEN=$(cat "$DIR/store-$i/bootstrap-admin-token"); done
  [ -n "$TOKEN" ] && break; sleep 0.1
done
export TOLLGATE_STORE=127.0.0.1:$S1,127.0.0.1:$S2,127.0.0.1:$S3 TOLLGATE_ADMIN_TOKEN=$TOKEN
cat > "$DIR/config.yaml" <<YAML
version: 1
orgs: [{id: on, name: Limits on}, {id: off, name: Limits off}]
projects: [{org: on, id: p, name: P}, {org: off, id: p, name: P}]
models:
  - name: demo-chat
    max_output_tokens: 4096
    default_output_tokens: 16
    price: {input_per_mtok_micros: 150000, output_per_mtok_micros: 600000}
    tiers: [{endpoints: [{url: "http://127.0.0.1:$MOCK/v1"}]}]
limits:
  - {scope: {org: {org: on}}, dimension: requests_per_minute, limit: 100000000}
  - {scope: {org: {org: on}}, dimension: input_tokens_per_minute, limit: 10000000000}
  - {scope: {org: {org: on}}, dimension: {token_budget: {period: month}}, limit: 1000000000000}
YAML
for _ in $(seq 100); do $BIN admin apply -f "$DIR/config.yaml" >/dev/null 2>&1 && break; sleep 0.1; done
key() { $BIN admin key create --org "$1" --project p --env test --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'; }
KEY_ON=$(key on); KEY_OFF=$(key off)

# 1. Acquire on the store
case " $PARTS " in *" acquire "*) BATCHES="0 10" ;; *) BATCHES="" ;; esac
for batch in $BATCHES; do
  for c in 1 16; do
    for r in $(seq "$REPEATS"); do
      out=$($LOAD --clients $c --duration-s "$SECS" store --store "$TOLLGATE_STORE" --token "$TOKEN" --acquire --batch $batch)
      echo "{\"label\":\"acquire\",\"batch\":$batch,\"run\":$r,\"result\":$out}"
    done
  done
done

# 2. gateway, limits on vs off (3. journal on vs off reuses this gateway)
case " $PARTS " in *" gateway "*|*" journal "*) ;; *) exit 0 ;; esac
$BIN gateway --listen 127.0.0.1:$GW --store "$TOLLGATE_STORE" --store-token "$TOKEN" --data-dir "$DIR/gw" \
  2>"$DIR/gw.log" & PIDS+=($!)
for _ in $(seq 200); do curl -sf 127.0.0.1:$GW/readyz >/dev/null && break; sleep 0.05; done
BODY='{"model":"demo-chat","messages":[{"role":"user","content":"benchmark prompt of a few words"}],"max_tokens":16}'
case " $PARTS " in *" gateway "*) GW_REPEATS=$REPEATS ;; *) GW_REPEATS=0 ;; esac
for r in $(seq "$GW_REPEATS"); do
  for mode in on off; do
    k=$KEY_OFF; [ $mode = on ] && k=$KEY_ON
    out=$(TOLLGATE_API_KEY=$k $LOAD --clients 50 --duration-s "$SECS" http --url "http://127.0.0.1:$GW/v1/chat/completions" --body "$BODY")
    echo "{\"label\":\"gateway-limits-$mode\",\"run\":$r,\"result\":$out}"
  done
done
curl -s -H "authorization: Bearer $TOKEN" 127.0.0.1:$GW/admin/quota > "$DIR/quota.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({"label":"gateway-quota-status","store_reachable":d["store_reachable"],"refresh_ok":d["refresh_ok"],"states":[b["state"] for b in d["buckets"]],"denied":[b["denied"] for b in d["buckets"]]}))' "$DIR/quota.json"

# 3. journal on vs off: a second gateway without the journal, same store and upstream; added
#    latency at 1 connection (JSON and SSE) and throughput at 50, alternating each repetition
case " $PARTS " in *" journal "*) ;; *) exit 0 ;; esac
GW2=$(port)
$BIN gateway --listen 127.0.0.1:$GW2 --store "$TOLLGATE_STORE" --store-token "$TOKEN" --data-dir "$DIR/gw2" \
  --gateway-id nojournal --no-journal 2>"$DIR/gw2.log" & PIDS+=($!)
for _ in $(seq 200); do curl -sf 127.0.0.1:$GW2/readyz >/dev/null && break; sleep 0.05; done
SSE='{"model":"demo-chat","messages":[{"role":"user","content":"benchmark prompt of a few words"}],"max_tokens":16,"stream":true}'
for r in $(seq "$REPEATS"); do
  for c in 1 50; do
    for b in json sse; do
      body=$BODY; [ $b = sse ] && body=$SSE
      for mode in on off; do
        g=$GW; [ $mode = off ] && g=$GW2
        out=$(TOLLGATE_API_KEY=$KEY_OFF $LOAD --clients $c --duration-s "$SECS" http --url "http://127.0.0.1:$g/v1/chat/completions" --body "$body")
        echo "{\"label\":\"journal-$mode\",\"mode\":\"$b\",\"clients\":$c,\"run\":$r,\"result\":$out}"
      done
    done
  done
done
