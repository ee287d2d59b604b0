#!/usr/bin/env bash
# make demo: the main job on the local stack, end to end, on real interfaces.
#
#   1. start the local stack (Apache Kafka KRaft broker + MinIO) if it is not running
#   2. make a veth pair: rcdemo0 (root namespace, 10.231.77.1) <-> rcdemo1 (namespace
#      rcdemo, 10.231.77.2) with an HTTP server and a DNS server inside the namespace
#   3. run `rawcap capture --iface rcdemo0` (and tcpdump beside it, as the reference) while
#      curl and DNS clients talk across the pair; stop it with SIGTERM (final flush)
#   4. export the captured window from Kafka as pcapng, check it with capinfos/tshark and
#      compare it with what tcpdump wrote
#   5. dissect the same window from Kafka into API calls
#   6. archive rawcap.packets into the stack's S3 bucket, export the window back from the
#      archive, and print a summary
#   7. write the calls of step 5 into the bucket as Parquet (rawcap archive tables) and show
#      their trend from there (rawcap trends: a table with sparklines and a PNG chart)
set -euo pipefail
cd "$(dirname "$0")/.."
RAWCAP=.venv/bin/rawcap
PY=.venv/bin/python
OUT=${RAWCAP_DEMO_OUT:-.rawcap/demo}
NODE=demo-node
NS=rcdemo
mkdir -p "$OUT"

cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "${UDP_PID:-}" ] && kill "$UDP_PID" 2>/dev/null || true
  [ -n "${TD_PID:-}" ] && kill "$TD_PID" 2>/dev/null || true
  [ -n "${ARC_PID:-}" ] && kill "$ARC_PID" 2>/dev/null || true
  [ -n "${TAB_PID:-}" ] && kill "$TAB_PID" 2>/dev/null || true
  ip link del rcdemo0 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT

echo "== 1. local stack"
$RAWCAP stack up
BOOTSTRAP=$($RAWCAP stack status --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["kafka"]["bootstrap"])')
export RAWCAP_BOOTSTRAP=$BOOTSTRAP

echo "== 2. veth pair rcdemo0 <-> $NS/rcdemo1"
cleanup
ip netns add "$NS"
ip link add rcdemo0 type veth peer name rcdemo1
ip link set rcdemo1 netns "$NS"
ip addr add 10.231.77.1/24 dev rcdemo0
ip link set rcdemo0 up
ip netns exec "$NS" ip addr add 10.231.77.2/24 dev rcdemo1
ip netns exec "$NS" ip link set rcdemo1 up
ip netns exec "$NS" ip link set lo up
mkdir -p "$OUT/www/api"
echo '{"orders": [1, 2, 3]}' > "$OUT/www/api/orders"
head -c 200000 /dev/urandom | base64 > "$OUT/www/big.txt"
ip netns exec "$NS" $PY -m http.server 8080 --bind 10.231.77.2 --directory "$OUT/www" \
  >/dev/null 2>&1 & SERVER_PID=$!
ip netns exec "$NS" $PY tests/dissector/servers/dns_server.py 10.231.77.2 53 >/dev/null & UDP_PID=$!
sleep 1

echo "== 3. capture on rcdemo0 while clients talk, then SIGTERM (final flush)"
BUF="$OUT/buffer"   # kept across runs: the agent resumes its sequence numbers
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tcpdump -i rcdemo0 -s 0 -B 32768 -n -U -w "$OUT/tcpdump.pcap" 'tcp or udp' 2>/dev/null & TD_PID=$!
$RAWCAP capture --iface rcdemo0 --node "$NODE" --buffer-dir "$BUF" --duration 120 \
  2> >(tee "$OUT/capture.log" >&2) &
CAP_PID=$!
# Compiling the eBPF filter takes a few seconds: talk only once the ring is open.
for _ in $(seq 1 600); do
  grep -q "capture running" "$OUT/capture.log" 2>/dev/null && break
  kill -0 "$CAP_PID" 2>/dev/null || { echo "demo: capture agent exited early" >&2; exit 1; }
  sleep 0.1
done
for i in $(seq 1 20); do
  curl -s -o /dev/null "http://10.231.77.2:8080/api/orders?page=$i"
  curl -s -o /dev/null "http://10.231.77.2:8080/missing/$i"
done
curl -s -o /dev/null http://10.231.77.2:8080/big.txt
$PY tests/dissector/servers/dns_client.py 10.231.77.2 53 \
  udp:api.rawcap.test:A udp:db.rawcap.test:AAAA udp:nx.rawcap.test:A tcp:web.rawcap.test:A \
  udp:www.example.invalid:A
sleep 1
kill -TERM "$CAP_PID" "$TD_PID"
wait "$CAP_PID"
wait "$TD_PID" || true
END=$(date -u +%Y-%m-%dT%H:%M:%SZ)

echo "== 4. export $START .. $END from Kafka as pcapng"
$RAWCAP pcap export --from "$START" --to "$END" --node "$NODE" -o "$OUT/demo.pcapng"
capinfos -c -u -i "$OUT/demo.pcapng" | sed 's/^/   /'
echo "   tshark protocol hierarchy:"
tshark -r "$OUT/demo.pcapng" -q -z io,phs 2>/dev/null | sed -n '/^eth/,/^=/p' | head -12 | sed 's/^/   /'
RC_N=$(capinfos -M -c -T -r "$OUT/demo.pcapng" | awk -F'\t' '{print $2}')
TD_N=$(capinfos -M -c -T -r "$OUT/tcpdump.pcap" | awk -F'\t' '{print $2}')
echo "   rawcap exported $RC_N packets; tcpdump on the same interface wrote $TD_N"

echo "== 5. dissect the same window from Kafka into API calls"
$RAWCAP dissect --from "$START" --to "$END" --node "$NODE" --json --no-store > "$OUT/calls.jsonl"
$PY - "$OUT/calls.jsonl" <<'EOF'
import collections, json, sys
calls = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = collections.Counter(
    (c["proto"], c.get("method") or c.get("qname") or "",
     c["status"] if c["proto"].startswith("http") else c.get("rcode"))
    for c in calls)
print(f"   {len(calls)} calls")
for (proto, what, status), n in sorted(by.items(), key=str):
    print(f"   {n:4} x {proto:6} {what:24} {status}")
EOF

echo "== 6. archive rawcap.packets to the S3 bucket, export the window back from it"
eval "$($RAWCAP stack status --json | $PY -c '
import json, sys
s = json.load(sys.stdin)["s3"]
print("export AWS_ENDPOINT_URL=%(endpoint)s AWS_ACCESS_KEY_ID=%(access_key)s "
      "AWS_SECRET_ACCESS_KEY=%(secret_key)s AWS_REGION=us-east-1 BUCKET=%(bucket)s" % s)')"
export RAWCAP_ARCHIVE_URL="s3://$BUCKET/demo-archive"
$RAWCAP archive --flush-interval 2s 2> "$OUT/archive.log" & ARC_PID=$!
ARCHIVED=0
for _ in $(seq 1 120); do
  ARCHIVED=$($RAWCAP archive ls --from "$START" --to "$END" --node "$NODE" --json 2>/dev/null \
             | $PY -c 'import json,sys; print(sum(json.loads(l).get("packets", 0) for l in sys.stdin if l.strip()))')
  [ "$ARCHIVED" -ge "$RC_N" ] && break
  kill -0 "$ARC_PID" 2>/dev/null || { cat "$OUT/archive.log" >&2; echo "demo: archiver exited" >&2; exit 1; }
  sleep 1
done
kill -TERM "$ARC_PID"; wait "$ARC_PID"
$RAWCAP archive ls --from "$START" --to "$END" --node "$NODE" | sed 's/^/   /'
$RAWCAP pcap export --source archive --from "$START" --to "$END" --node "$NODE" -o "$OUT/demo-archive.pcapng"
AR_N=$(capinfos -M -c -T -r "$OUT/demo-archive.pcapng" | awk -F'\t' '{print $2}')
echo "   archive export: $AR_N packets"

echo "== 7. the calls as Parquet in the bucket (rawcap archive tables), and their trend from there"
N_CALLS=$(wc -l < "$OUT/calls.jsonl")
$RAWCAP archive tables --kinds calls --flush-interval 2s 2> "$OUT/tables.log" & TAB_PID=$!
TREND_ARGS=(--source archive --from "$START" --to "$END" --node "$NODE" --every 2s)
IN_TABLES=0
for _ in $(seq 1 120); do
  IN_TABLES=$($RAWCAP trends "${TREND_ARGS[@]}" --metric requests --json 2>/dev/null \
              | $PY -c 'import json,sys; print(sum(json.loads(l)["requests"] for l in sys.stdin if l.strip()))')
  [ "$IN_TABLES" -ge "$N_CALLS" ] && break
  kill -0 "$TAB_PID" 2>/dev/null || { cat "$OUT/tables.log" >&2; echo "demo: table writer exited" >&2; exit 1; }
  sleep 1
done
kill -TERM "$TAB_PID"; wait "$TAB_PID"; TAB_PID=
$RAWCAP trends "${TREND_ARGS[@]}" --by endpoint --metric requests,error-rate,p99 --png "$OUT/trend.png" \
  | sed 's/^/   /'
echo "   chart: $OUT/trend.png"

echo "== summary"
echo "   captured: $RC_N packets (tcpdump: $TD_N)   calls: $(wc -l < "$OUT/calls.jsonl")   from the archive: $AR_N packets"
echo "   pcapng: $OUT/demo.pcapng   (open it in Wireshark)"
[ "$RC_N" = "$TD_N" ] || { echo "demo: rawcap and tcpdump disagree ($RC_N vs $TD_N packets)" >&2; exit 1; }
[ "$AR_N" = "$RC_N" ] || { echo "demo: the archive holds $AR_N of $RC_N packets" >&2; exit 1; }
[ "$IN_TABLES" = "$N_CALLS" ] || { echo "demo: the calls table holds $IN_TABLES of $N_CALLS calls" >&2; exit 1; }
echo "   stack:  $RAWCAP stack status ; stop it with: $RAWCAP stack down"
