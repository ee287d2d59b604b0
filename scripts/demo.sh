#!/usr/bin/env bash
# make demo: the main job on the local stack, end to end, on real interfaces.
#
#   1. start the local stack (Apache Kafka KRaft broker + MinIO) if it is not running
#   2. make a veth pair: rcdemo0 (root namespace, 10.231.77.1) <-> rcdemo1 (namespace
#      rcdemo, 10.231.77.2) with an HTTP server and a DNS-ish UDP echo inside the namespace
#   3. run `rawcap capture --iface rcdemo0` while curl and UDP clients talk across the pair
#   4. export the captured window from Kafka as pcapng, check it with capinfos/tshark
#   5. dissect the same window into API calls, and print a summary
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
ip netns exec "$NS" $PY -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.231.77.2", 5353))
while True:
    data, peer = s.recvfrom(2048); s.sendto(data[::-1], peer)
' & UDP_PID=$!
sleep 1

echo "== 3. capture on rcdemo0 for 12 s while clients talk"
BUF="$OUT/buffer"
rm -rf "$BUF"
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
$RAWCAP capture --iface rcdemo0 --node "$NODE" --buffer-dir "$BUF" --duration 12 &
CAP_PID=$!
sleep 3
for i in $(seq 1 20); do
  curl -s -o /dev/null "http://10.231.77.2:8080/api/orders?page=$i" || true
  curl -s -o /dev/null "http://10.231.77.2:8080/missing/$i" || true
done
curl -s -o /dev/null http://10.231.77.2:8080/big.txt
$PY -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
for i in range(50):
    s.sendto(b"query %d" % i, ("10.231.77.2", 5353)); s.recvfrom(2048)
'
wait "$CAP_PID"
END=$(date -u +%Y-%m-%dT%H:%M:%SZ)

echo "== 4. export $START .. $END from Kafka as pcapng"
$RAWCAP pcap export --from "$START" --to "$END" --node "$NODE" -o "$OUT/demo.pcapng"
capinfos -c -u -i "$OUT/demo.pcapng" | sed 's/^/   /'
echo "   tshark protocol hierarchy:"
tshark -r "$OUT/demo.pcapng" -q -z io,phs 2>/dev/null | sed -n '/^eth/,/^=/p' | head -12 | sed 's/^/   /'

echo "== 5. dissect the same window into API calls"
if $RAWCAP dissect --help >/dev/null 2>&1; then
  $RAWCAP dissect --pcap "$OUT/demo.pcapng" --json > "$OUT/calls.jsonl" || true
  $PY - "$OUT/calls.jsonl" <<'EOF'
import collections, json, sys
calls = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = collections.Counter((c.get("protocol"), c.get("method"), c.get("status")) for c in calls)
print(f"   {len(calls)} calls")
for (proto, method, status), n in by.most_common(8):
    print(f"   {n:4} x {proto} {method or ''} {status}")
EOF
fi

echo "== summary"
echo "   pcapng: $OUT/demo.pcapng   (open it in Wireshark)"
echo "   stack:  $RAWCAP stack status ; stop it with: $RAWCAP stack down"
