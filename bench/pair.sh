#!/usr/bin/env bash
# Two nodes on loopback; one workload moved into A's folder at t0; prints
# the time until B has it, both nodes' CPU seconds and B's fetch timeline.
# Usage: bench/pair.sh [path/to/sovryn]; env: SMALL=1 (10,000 x 1 KiB) or
# MED=1 (1,000 x 100 KiB) instead of one 1 GiB file; DROP=1 empties the
# page cache before t0 (root); TSA/TSB prefix each node's command (e.g.
# TSA='taskset -c 0' TSB='taskset -c 1' for one core each); KEEP=1 keeps
# the homes and logs.
set -euo pipefail
S=${1:-target/release/sovryn}
W=$(mktemp -d /tmp/pair.XXXX)
if [ -n "${MED:-}" ]; then mkdir $W/big.bin; python3 -c "import os,sys
for i in range(1000): open(f'$W/big.bin/f{i:05}.bin','wb').write(os.urandom(102400))"; sync; elif [ -n "${SMALL:-}" ]; then mkdir $W/big.bin; python3 -c "import os,sys
for i in range(10000): open(f'$W/big.bin/f{i:05}.txt','wb').write(os.urandom(1024))"; else head -c 1073741824 /dev/urandom > $W/big.bin; fi
PA=$((20000 + RANDOM % 10000)); PB=$((PA + 1))
$S --home $W/a init --storage-path $W/fa --no-passphrase --listen 127.0.0.1:$PA --mcp-port $((PA+2)) >/dev/null
$S --home $W/a folder-key > $W/key
$S --home $W/b init --storage-path $W/fb --no-passphrase --listen 127.0.0.1:$PB --mcp-port $((PA+3)) --folder-key-file $W/key >/dev/null
for h in a b; do $S --home $W/$h config set sync.mdns false >/dev/null; $S --home $W/$h config set mcp.enabled false >/dev/null; done
$S --home $W/a peers add $($S --home $W/b id) --address 127.0.0.1:$PB >/dev/null
$S --home $W/b peers add $($S --home $W/a id) --address 127.0.0.1:$PA >/dev/null
L="${LOGS:-warn,sovryn_daemon=debug,sovryn_engine=debug,sovryn_net=debug}"
${TSA:-} $S --home $W/a --log $L up > $W/a.log 2>&1 & A=$!
${TSB:-} $S --home $W/b --log $L up > $W/b.log 2>&1 & B=$!
sleep 3; sync; [ -n "${DROP:-}" ] && echo 3 > /proc/sys/vm/drop_caches; sleep 1
t0=$(date +%s.%N); echo "t0 $(date -u +%H:%M:%S.%N)"
mv $W/big.bin $W/fa/big.bin
if [ -n "${MED:-}" ]; then until [ "$(ls $W/fb/big.bin 2>/dev/null | grep -c bin)" = 1000 ]; do sleep 0.02; done; elif [ -n "${SMALL:-}" ]; then until [ "$(ls $W/fb/big.bin 2>/dev/null | grep -c txt)" = 10000 ]; do sleep 0.05; done; else until [ "$(stat -c %s $W/fb/big.bin 2>/dev/null || echo 0)" = 1073741824 ]; do sleep 0.02; done; fi
t1=$(date +%s.%N); echo "done in $(echo "$t1 - $t0" | bc) s"
echo "A cpu: $(awk '{print ($14+$15)/100}' /proc/$A/stat) s  B cpu: $(awk '{print ($14+$15)/100}' /proc/$B/stat) s"
kill $A $B; wait || true
sed 's/\x1b\[[0-9;]*m//g' $W/a.log | grep -E "rescanning|scan recorded" | cut -c12-130
sed 's/\x1b\[[0-9;]*m//g' $W/b.log | grep -v "^$" | grep -E "fetched|staged|apply|recorded|chunks|added|applied|index" | cut -c12-400 | head -${HEADN:-30}
[ -n "${KEEP:-}" ] && echo "kept $W" || rm -rf $W
