#!/usr/bin/env bash
# The MCP Inspector CLI (npm @modelcontextprotocol/inspector, pinned, --cli mode)
# against a real `sovryn mcp serve --http` with a bearer token: lists the tools,
# calls read_file, and checks that a missing token and a read-only token are refused.
#
#   tests/inspector/run.sh                  # uses target/debug/sovryn (builds it)
#   SOVRYN_BIN=target/release/sovryn tests/inspector/run.sh
#
# Node.js 22 and the Inspector are installed with npm into $INSPECTOR_PREFIX
# (default target/inspector-node); the system node only runs npm.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
INSPECTOR_VERSION=2.12.0
PREFIX=${INSPECTOR_PREFIX:-$ROOT/target/inspector-node}
. tests/npm_tool.sh
sovryn_bin
npm_tool "$PREFIX" @modelcontextprotocol/inspector "$INSPECTOR_VERSION"
PKG=$PREFIX/node_modules/@modelcontextprotocol/inspector
INSPECTOR=$PKG/clients/launcher/build/index.js

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
export MCP_CATALOG_PATH=$WORK/catalog.json HOME=$WORK

mkdir -p "$WORK/folder/docs"
printf 'hello from the inspector test\n' > "$WORK/folder/docs/hello.md"
"$SOVRYN_BIN" --home "$WORK/home" init --storage-path "$WORK/folder" --no-passphrase --node-id inspector >/dev/null 2>&1
TOKEN=$("$SOVRYN_BIN" --home "$WORK/home" mcp tokens create --name inspector --capabilities read 2>/dev/null)

"$SOVRYN_BIN" --home "$WORK/home" mcp serve --http --bind 127.0.0.1 --port 0 > "$WORK/server.out" 2> "$WORK/server.err" &
SERVER_PID=$!
for _ in $(seq 1 100); do
    grep -q "listening on" "$WORK/server.out" 2>/dev/null && break
    sleep 0.1
done
URL=$(sed -n 's/^MCP listening on //p' "$WORK/server.out" | head -n1)
[ -n "$URL" ] || { echo "the server did not start:" >&2; cat "$WORK/server.err" >&2; exit 1; }

inspect() {
    timeout 60 "$NODE" "$INSPECTOR" --cli "$URL" --transport http "$@"
}
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "inspector $INSPECTOR_VERSION against $URL" >&2

# 1. tools/list with the token: the read tools, and no write tools for a read-only token.
inspect --header "Authorization: Bearer $TOKEN" --method tools/list > "$WORK/tools.json" \
    || fail "tools/list: $(cat "$WORK/tools.json")"
python3 - "$WORK/tools.json" <<'PY' || fail "tools/list output: $(head -c 600 "$WORK/tools.json")"
import json, sys
names = {t["name"] for t in json.load(open(sys.argv[1]))["tools"]}
assert {"read_file", "search_files", "list_directory"} <= names, names
assert "write_file" not in names, names
PY
echo "ok: tools/list" >&2

# 2. tools/call read_file.
inspect --header "Authorization: Bearer $TOKEN" --method tools/call --tool-name read_file \
    --tool-arg path=docs/hello.md > "$WORK/read.json" || fail "read_file: $(cat "$WORK/read.json")"
python3 - "$WORK/read.json" <<'PY' || fail "read_file output: $(head -c 600 "$WORK/read.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert not r.get("isError"), r
assert r["structuredContent"]["content"] == "hello from the inspector test\n", r
PY
echo "ok: tools/call read_file" >&2

# 3. No token: the Inspector must fail to connect (401).
if inspect --method tools/list > "$WORK/noauth.out" 2>&1; then
    fail "tools/list without a token succeeded: $(head -c 300 "$WORK/noauth.out")"
fi
echo "ok: no token refused" >&2

# 4. A write with the read-only token is refused.
if inspect --header "Authorization: Bearer $TOKEN" --method tools/call --tool-name write_file \
    --tool-arg path=docs/x.md --tool-arg content=x > "$WORK/write.out" 2>&1 \
    && ! grep -q '"isError": *true' "$WORK/write.out"; then
    fail "write_file with a read-only token: $(head -c 300 "$WORK/write.out")"
fi
[ ! -e "$WORK/folder/docs/x.md" ] || fail "write_file wrote with a read-only token"
echo "ok: read-only token cannot write" >&2
echo "inspector: all checks passed" >&2
