#!/usr/bin/env bash
# The second-device flow, timed: A runs; invite on A; join on D; up on D until D has A's 1,000 files.
set -euo pipefail
S=${1:-target/release/sovryn}
W=$(mktemp -d /tmp/flow.XXXX)
PA=$((30000 + RANDOM % 10000)); PD=$((PA + 1))
$S --home $W/a init --storage-path $W/fa --no-passphrase --listen 127.0.0.1:$PA --mcp-port $((PA+2)) >/dev/null
$S --home $W/a config set mcp.enabled false >/dev/null
mkdir -p $W/fa/docs; for i in $(seq 1 1000); do echo "file $i" > $W/fa/docs/f$i.txt; done
$S --home $W/a up > $W/a.log 2>&1 & A=$!
sleep 2
t0=$(date +%s.%N)
CODE=$($S --home $W/a --json invite | python3 -c "import json,sys; print(json.load(sys.stdin)['code'])")
t1=$(date +%s.%N)
$S --home $W/d join "$CODE" --storage-path $W/fd --no-passphrase --listen 127.0.0.1:$PD --mcp-port $((PD+2)) --node-id laptop2
t2=$(date +%s.%N)
$S --home $W/d config set mcp.enabled false >/dev/null
$S --home $W/d up > $W/d.log 2>&1 & D=$!
until [ "$(ls $W/fd/docs 2>/dev/null | wc -l)" = 1000 ]; do sleep 0.01; done
t3=$(date +%s.%N)
echo "invite: $(echo "$t1 - $t0" | bc) s; join: $(echo "$t2 - $t1" | bc) s; up until 1,000 files: $(echo "$t3 - $t2" | bc) s; code ${#CODE} chars"
kill $A $D; wait 2>/dev/null || true
rm -rf $W
