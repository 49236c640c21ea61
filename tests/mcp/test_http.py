"""`sovryn mcp serve --http`: bearer auth, scopes, limits and audit, through
raw HTTP and through the real Python MCP SDK."""

import asyncio
import json
import subprocess
import urllib.error
import urllib.request

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from sovryn_support import listing

try:
    from mcp.shared._httpx_utils import create_mcp_http_client
except ImportError:  # pragma: no cover - older/newer SDK layouts
    import httpx2

    def create_mcp_http_client(headers=None):
        return httpx2.AsyncClient(headers=headers, timeout=30)


class Server:
    def __init__(self, node, *extra):
        self.proc = subprocess.Popen(
            [node.bin, "--home", str(node.home), "mcp", "serve", "--http", "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line.split()[-1]  # http://127.0.0.1:PORT/mcp
        self.base = self.url.rsplit("/", 1)[0]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def server(node):
    (node.folder / "docs").mkdir()
    (node.folder / "docs" / "a.md").write_text("public words\n")
    (node.folder / "secret.txt").write_text("classified words\n")
    s = Server(node)
    yield s
    s.stop()


def http(method, url, token=None, body=None, headers=None):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    h.update(headers or {})
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def call_body(tool, args):
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args}}


def session(url, token, body):
    async def main():
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with client:
            async with streamable_http_client(url, http_client=client) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    return await body(s)

    return asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_health_and_protected_resource_metadata(server):
    status, _, body = http("GET", server.base + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = http("GET", server.base + "/.well-known/oauth-protected-resource")
    doc = json.loads(body)
    assert status == 200 and doc["resource"].endswith("/mcp")
    assert "read" in doc["scopes_supported"] and doc["bearer_methods_supported"] == ["header"]


def test_401_without_or_with_a_bad_token(server, node):
    status, headers, _ = http("POST", server.url, body=call_body("read_file", {"path": "docs/a.md"}))
    assert status == 401
    www = headers["www-authenticate"]
    assert www.startswith("Bearer ") and "resource_metadata=" in www
    assert "/.well-known/oauth-protected-resource" in www
    status, headers, _ = http("POST", server.url, token="svn_wrong", body=call_body("get_stats", {}))
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    # A revoked token stops working at once.
    tok = node.token("gone", "read")
    node.run("mcp", "tokens", "revoke", "gone")
    status, _, _ = http("POST", server.url, token=tok, body=call_body("get_stats", {}))
    assert status == 401


def test_full_token_works_through_the_sdk(server, node):
    tok = node.token("agent", "read,write,status")

    async def body(s):
        names = {t.name for t in (await s.list_tools()).tools}
        assert {"write_file", "read_file", "get_stats"} <= names
        w = await s.call_tool("write_file", {"path": "docs/new.md", "content": "via http\n"})
        assert not w.is_error, w.content
        r = await s.call_tool("read_file", {"path": "docs/new.md"})
        return r.structured_content

    out = session(server.url, tok, body)
    assert out["content"] == "via http\n"
    assert (node.folder / "docs" / "new.md").read_text() == "via http\n"
    hist = node.run("--json", "versions", "docs/new.md").stdout
    assert "mcp:agent" in hist


def test_read_only_token_is_refused_writes(server, node):
    tok = node.token("reader", "read")
    status, headers, _ = http("POST", server.url, token=tok,
                              body=call_body("write_file", {"path": "docs/x.md", "content": "x"}))
    assert status == 403
    assert 'error="insufficient_scope"' in headers["www-authenticate"] and 'scope="write"' in headers["www-authenticate"]

    async def body(s):
        names = {t.name for t in (await s.list_tools()).tools}
        assert "read_file" in names and "write_file" not in names and "get_stats" not in names
        r = await s.call_tool("read_file", {"path": "docs/a.md"})
        assert not r.is_error
        try:
            res = await s.call_tool("write_file", {"path": "docs/x.md", "content": "x"})
        except Exception:
            return "refused"
        return "error" if res.is_error else "written"

    assert session(server.url, tok, body) in ("refused", "error")
    assert not (node.folder / "docs" / "x.md").exists()


def test_path_scoped_token_sees_nothing_outside(server, node):
    tok = node.token("docs-only", "read,write", "docs/**")

    async def body(s):
        out = {}
        r = await s.call_tool("read_file", {"path": "secret.txt"})
        out["read_outside"] = (r.is_error, r.content[0].text)
        r = await s.call_tool("read_file", {"path": "docs/a.md"})
        out["read_inside"] = r.structured_content["content"]
        r = await s.call_tool("list_directory", {})
        out["root"] = [e["name"] for e in listing(r)["entries"]]
        r = await s.call_tool("search_files", {"query": "words"})
        out["search"] = [m["path"] for m in r.structured_content["matches"]]
        r = await s.call_tool("search_files", {"name": "*"})
        out["names"] = [m["path"] for m in r.structured_content["matches"]]
        r = await s.call_tool("write_file", {"path": "elsewhere.txt", "content": "x"})
        out["write_outside"] = r.is_error
        r = await s.call_tool("write_file", {"path": "docs/ok.md", "content": "fine"})
        out["write_inside"] = r.is_error
        r = await s.call_tool("get_version_history", {"path": "secret.txt"})
        out["history_outside"] = r.is_error
        for bad in ["../etc/passwd", "/etc/passwd", "docs/../../x", "docs/../secret.txt"]:
            r = await s.call_tool("read_file", {"path": bad})
            out.setdefault("bad", []).append(r.is_error)
        return out

    out = session(server.url, tok, body)
    assert out["read_outside"][0] and "no such file" in out["read_outside"][1]
    assert out["read_inside"] == "public words\n"
    assert out["root"] == ["docs"]
    assert out["search"] == ["docs/a.md"]
    assert "secret.txt" not in out["names"]
    assert out["write_outside"] and not out["write_inside"]
    assert out["history_outside"]
    assert out["bad"] == [True, True, True, True]
    assert not (node.folder / "elsewhere.txt").exists()


def test_audit_lines_are_written(server, node):
    tok = node.token("audited", "read")

    async def body(s):
        await s.call_tool("read_file", {"path": "docs/a.md"})
        await s.call_tool("read_file", {"path": "../nope"})

    session(server.url, tok, body)
    http("POST", server.url, token=tok, body=call_body("delete_file", {"path": "docs/a.md"}))
    lines = [l for l in node.audit() if l["token"] == "audited"]
    outcomes = [(l["tool"], l["paths"], l["outcome"].split(":")[0]) for l in lines]
    assert ("read_file", ["docs/a.md"], "ok") in outcomes
    assert ("read_file", ["../nope"], "error") in outcomes
    assert ("delete_file", ["docs/a.md"], "denied (403)") in outcomes
    assert all({"time", "token", "tool", "paths", "outcome", "duration_ms"} <= set(l) for l in lines)


def test_rate_limit_and_body_cap(node):
    s = Server(node, "--rate-per-minute", "1", "--burst", "3", "--max-body-bytes", "2000")
    try:
        tok = node.token("busy", "read")
        codes = []
        for _ in range(6):
            status, headers, _ = http("POST", s.url, token=tok, body=call_body("get_stats", {}))
            codes.append(status)
            if status == 429:
                assert int(headers["retry-after"]) >= 1
        assert 429 in codes and codes[:3].count(429) == 0
        tok2 = node.token("big", "read")
        status, _, _ = http("POST", s.url, token=tok2, body=b"{" + b" " * 5000 + b"}")
        assert status == 413
        # Per client address too (4x a token's rate), with or without a token.
        codes = [http("POST", s.url, body=call_body("get_stats", {}))[0] for _ in range(12)]
        assert codes[0] == 401 and 429 in codes
    finally:
        s.stop()


def test_protocol_2026_07_28_over_http_is_scoped_too(server, node):
    """Sessionless 2026-07-28 requests carry the token on every request."""
    from mcp import Client

    tok = node.token("modern", "read", "docs/**")

    async def main():
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {tok}"})
        async with client:
            async with Client(streamable_http_client(server.url, http_client=client)) as c:
                assert c.protocol_version == "2026-07-28"
                names = {t.name for t in (await c.list_tools()).tools}
                assert "read_file" in names and "write_file" not in names
                r = await c.call_tool("read_file", {"path": "docs/a.md"})
                assert r.structured_content["content"] == "public words\n"
                r = await c.call_tool("read_file", {"path": "secret.txt"})
                assert r.is_error
                res = [str(x.uri) for x in (await c.list_resources()).resources]
                assert res == ["sovryn://test-node/docs/a.md"]

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_status_only_token_cannot_read_resources(server, node):
    tok = node.token("monitor", "status")
    body = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "sovryn://test-node/docs/a.md"}}
    status, headers, _ = http("POST", server.url, token=tok, body=body)
    assert status == 403 and 'scope="read"' in headers["www-authenticate"]

    async def run_stats(s):
        names = {t.name for t in (await s.list_tools()).tools}
        assert names == {"get_stats", "get_peers", "get_sync_status"}
        r = await s.call_tool("get_stats", {})
        return r.structured_content

    assert session(server.url, tok, run_stats)["node_name"] == "test-node"


def test_malformed_and_huge_requests_fail_cleanly(server, node):
    tok = node.token("fuzz", "read,write")
    for bad in [b"{not json", b"[]", b"{}", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}']:
        status, _, _ = http("POST", server.url, token=tok, body=bad)
        assert 400 <= status < 500, (bad, status)
    # A declared body over the cap is refused before it is read.
    import socket
    from urllib.parse import urlparse

    u = urlparse(server.url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(
            f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {tok}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {9 * 1024 * 1024}\r\n\r\n".encode()
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    # Still serving afterwards.
    assert http("GET", server.base + "/healthz")[0] == 200

    async def body(s):
        r = await s.call_tool("write_file", {"path": 3})
        assert r.is_error
        r = await s.call_tool("write_file", {"path": "x.bin", "content": "!!notbase64", "encoding": "base64"})
        assert r.is_error and "base64" in r.content[0].text
        r = await s.call_tool("edit_file", {"path": "docs/a.md", "edits": [{"old_text": "words", "new_text": "W"}, {"old_text": "words", "new_text": "again"}]})
        assert r.is_error and "edit 2" in r.content[0].text
        return True

    assert session(server.url, tok, body)
    assert (node.folder / "docs" / "a.md").read_text() == "public words\n"


def test_agents_writing_and_editing_at_once_lose_nothing(server, node):
    """Concurrent writes share group commits; concurrent edits of one file
    each apply to the version before them (none is lost)."""
    from mcp import Client

    tok = node.token("busy-agents", "read,write")

    async def main():
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {tok}"})
        async with client:
            async with Client(streamable_http_client(server.url, http_client=client)) as c:
                first = "".join(f"[m{i}]\n" for i in range(6))
                r = await c.call_tool("write_file", {"path": "docs/shared.md", "content": first})
                assert not r.is_error, r.content
                writes = [c.call_tool("write_file", {"path": f"docs/w{i}.md", "content": f"note {i}\n"}) for i in range(8)]
                edits = [c.call_tool("edit_file", {"path": "docs/shared.md",
                                                   "edits": [{"old_text": f"[m{i}]", "new_text": f"done {i}"}]})
                         for i in range(6)]
                results = await asyncio.gather(*writes, *edits)
                assert all(not r.is_error for r in results), [r.content for r in results if r.is_error]
                return [r.structured_content.get("version") for r in results[8:]]

    versions = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert sorted(versions) == [f"v{n}" for n in range(2, 8)], versions
    for i in range(8):
        assert (node.folder / "docs" / f"w{i}.md").read_text() == f"note {i}\n"
    assert (node.folder / "docs" / "shared.md").read_text() == "".join(f"done {i}\n" for i in range(6))
    hist = json.loads(node.run("--json", "versions", "docs/shared.md").stdout)
    assert len(hist["versions"]) == 7, hist
