#!/usr/bin/env bash
# Push to and recover from a local S3-compatible server (moto, from PyPI):
# upload throughput of `remotes sync` and the time of `recover --from s3://`.
#   bench/remote.sh [SOVRYN_BIN] [MIB]
# MIB of incompressible data in 1 MiB files (default 256), plus the test
# folder of the acceptance test (200 small files with history).
set -euo pipefail
S=${1:-target/release/sovryn}
S=$(realpath "$S")
MIB=${2:-256}
W=$(mktemp -d /var/tmp/sovryn-remote-bench.XXXXXX)
trap 'kill $MOTO 2>/dev/null || true; rm -rf "$W"' EXIT
cd "$W"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
MOTO=$!
until python3 -c "import socket; socket.create_connection(('127.0.0.1',$PORT))" 2>/dev/null; do sleep 0.1; done
python3 -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$PORT', aws_access_key_id='a', aws_secret_access_key='s', region_name='us-east-1').create_bucket(Bucket='bkt')"
echo a > ak; echo s > sk; echo 'a long vault passphrase here' > pass
B=(--endpoint "http://127.0.0.1:$PORT" --access-key-file ak --secret-key-file sk)
now() { date +%s.%N; }
run() { # name, data setup function
    "$S" --home h-$1 init --storage-path d-$1 --no-passphrase --listen 127.0.0.1:0 >/dev/null
    "$2" d-$1
    "$S" --home h-$1 add d-$1 >/dev/null
    "$S" --home h-$1 vault init --vault-passphrase-file pass >/dev/null
    "$S" --home h-$1 remotes add bk "s3://bkt/$1" "${B[@]}" >/dev/null
    local t0 t1 t2
    t0=$(now); "$S" --home h-$1 remotes sync >/dev/null; t1=$(now)
    "$S" --home r-$1 --passphrase-file pass recover --from "s3://bkt/$1" "${B[@]}" \
        --storage-path rd-$1 --listen 127.0.0.1:0 >/dev/null; t2=$(now)
    diff -r d-$1 rd-$1 >/dev/null
    local bytes
    bytes=$(du -sb "h-$1/packs" | cut -f1)
    python3 -c "
push=$t1-$t0; rec=$t2-$t1; b=$bytes
print(f'$1: {b/2**20:.1f} MiB stored; push {push:.2f} s ({b/2**20/push:.0f} MiB/s); recover {rec:.2f} s ({b/2**20/rec:.0f} MiB/s)')"
}
big() { mkdir -p "$1"; for i in $(seq 1 "$MIB"); do head -c 1048576 /dev/urandom > "$1/f$i.bin"; done; }
small() {
    mkdir -p "$1"
    for i in $(seq 0 199); do d="$1/dir$((i % 7))"; mkdir -p "$d"; echo "content $i of the plans" > "$d/file$i.txt"; done
}
run big big
run small small
