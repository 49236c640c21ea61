"""Security regressions of the MCP server, each playing the attacker against
the real binary: scoped admins administering peers, `*` globs leaking
subtrees, setuid bits surviving agent writes, unbounded sessions, streams
outliving a revoked token, silent 401s, stale peers, peer details for
read-only tokens, and JWT audience/issuer."""

import asyncio
import base64
import hashlib
import hmac
import http.client as httpclient
import json
import os
import queue
import stat
import threading
import time
import tomllib
from urllib.parse import urlparse

import pytest

from conftest import Node
from test_gateway import META, V2026, call_body as call_2026, post as post_2026
from test_http import Server, http, session
from test_stdio import err, ok
from sovryn_support import listing


def config_peers(node) -> list[dict]:
    return tomllib.loads((node.home / "config.toml").read_text()).get("peers", [])


def other_id(tmp_path, name="other") -> str:
    return Node(tmp_path / name).run("id").stdout.strip().split()[0]


def sse_messages(body: bytes) -> list[dict]:
    out = []
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("data:") and line[5:].strip():
            try:
                out.append(json.loads(line[5:]))
            except json.JSONDecodeError:
                pass
    return out


INIT = {
    "jsonrpc": "2.0", "id": 0, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
               "clientInfo": {"name": "attacker", "version": "1"}},
}


def open_session(url, token):
    """A handshake-era session opened by raw HTTP: (status, session id, body)."""
    status, headers, body = http("POST", url, token=token, body=INIT)
    return status, headers.get("mcp-session-id"), body


def in_session(url, token, sid, body):
    return http("POST", url, token=token, body=body,
                headers={"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})


class Stream:
    """An SSE response read line by line on a thread (its end is noted)."""

    def __init__(self, url, method, headers, body=None):
        u = urlparse(url)
        self.conn = httpclient.HTTPConnection(u.hostname, u.port, timeout=30)
        self.conn.request(method, u.path, body=json.dumps(body).encode() if body is not None else None,
                          headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.messages = queue.Queue()
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                text = line.decode(errors="replace").strip()
                if text.startswith("data:") and text[5:].strip():
                    try:
                        self.messages.put(json.loads(text[5:]))
                    except json.JSONDecodeError:
                        pass
        except Exception:
            pass
        finally:
            self.ended.set()

    def wait_for(self, method, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if m.get("method") == method:
                return m
        raise AssertionError(f"no {method} within {timeout}s")

    def drain(self):
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self):
        self.conn.close()


# ---------- A: a path-scoped admin token cannot administer peers ----------

def test_a_scoped_admin_cannot_add_rewrite_or_remove_peers(node, tmp_path):
    peer = other_id(tmp_path)
    node.run("peers", "add", peer, "--name", "laptop", "--read-only", "--path", "docs")
    before = config_peers(node)
    assert before[0]["read_only"] is True and before[0]["paths"] == ["docs"]
    server = Server(node)
    try:
        scoped = node.token("docs-admin", "admin", "docs/**")
        # The attack: turn the read-only, docs-only peer into a read-write
        # peer of the whole folder, or add a new unlimited one, or drop it.
        for body in [
            call_2026("add_peer", {"endpoint_id": peer, "addresses": [], "read_only": False}),
            call_2026("add_peer", {"endpoint_id": other_id(tmp_path, "third"), "addresses": []}),
            call_2026("remove_peer", {"endpoint_id_or_name": "laptop"}),
        ]:
            status, headers, resp = post_2026(server.url, body, token=scoped)
            assert status == 403, (body, status, resp)
            assert 'scope="admin"' in headers["www-authenticate"]
            assert b"without path limits" in resp
        assert config_peers(node) == before

        # Through a session too: the tools are not even listed, and calling
        # them anyway is refused.
        async def body(s):
            names = {t.name for t in (await s.list_tools()).tools}
            assert "add_peer" not in names and "remove_peer" not in names
            assert "read_file" in names and "get_peers" in names

        session(server.url, scoped, body)
        assert config_peers(node) == before

        # An admin token without path limits may.
        async def rewrite(s):
            return await ok(s, "add_peer", {"endpoint_id": peer, "addresses": [], "read_only": False})

        assert session(server.url, node.token("root", "admin"), rewrite)["updated"] is True
        assert config_peers(node)[0]["read_only"] is False
    finally:
        server.stop()


# ---------- B: `*` stays within one path component ----------

def test_b_star_globs_do_not_leak_subtrees(node):
    f = node.folder
    (f / "notes" / "y.md").mkdir(parents=True)
    (f / "notes" / "y.md" / "secret.txt").write_text("nested secret\n")
    (f / "notes" / "a.md").write_text("note a\n")
    (f / "docs" / "sub" / "deep").mkdir(parents=True)
    (f / "docs" / "sub" / "deep" / "x.txt").write_text("deep secret\n")
    (f / "docs" / "top.txt").write_text("top\n")
    server = Server(node)
    try:
        notes = node.token("notes-md", "read,write", "notes/*.md")
        docs = node.token("docs-star", "read,write", "docs/*")

        async def attack_notes(s):
            assert (await ok(s, "read_file", {"path": "notes/a.md"}))["content"] == "note a\n"
            assert "no such file" in await err(s, "read_file", {"path": "notes/y.md/secret.txt"})
            await err(s, "get_file_metadata", {"path": "notes/y.md/secret.txt"})
            await err(s, "get_version_history", {"path": "notes/y.md/secret.txt"})
            await err(s, "write_file", {"path": "notes/new.md/any/thing.sh", "content": "#!/bin/sh\n"})
            await err(s, "create_directory", {"path": "notes/new.md/any"})
            await err(s, "write_file", {"path": "notes/y.md/secret.txt", "content": "overwritten"})
            await err(s, "delete_file", {"path": "notes/y.md", "recursive": True})
            await err(s, "move_file", {"source": "notes/y.md", "destination": "notes/z.md"})
            # The directory matching the glob lists nothing below it.
            listed = listing(await s.call_tool("list_directory", {"path": "notes/y.md"}))
            assert listed["entries"] == []
            tree = await ok(s, "directory_tree", {"path": "notes"})
            assert "secret.txt" not in json.dumps(tree)
            names = await ok(s, "search_files", {"name": "*"})
            assert not [m for m in names["matches"] if m["path"].startswith("notes/y.md/")]
            found = await ok(s, "search_files", {"query": "nested"})
            assert found["matches"] == []
            res = [str(r.uri) for r in (await s.list_resources()).resources]
            assert res == ["sovryn://test-node/notes/a.md"]
            try:
                await s.read_resource("sovryn://test-node/notes/y.md/secret.txt")
                raise AssertionError("read a resource below a matched glob")
            except Exception as e:
                assert "no such file" in str(e)

        async def attack_docs(s):
            assert (await ok(s, "read_file", {"path": "docs/top.txt"}))["content"] == "top\n"
            await err(s, "read_file", {"path": "docs/sub/deep/x.txt"})
            assert listing(await s.call_tool("list_directory", {"path": "docs/sub"}))["entries"] == []
            await err(s, "list_directory", {"path": "docs/sub/deep"})
            await err(s, "write_file", {"path": "docs/sub/deep/x.txt", "content": "pwned"})
            await err(s, "write_file", {"path": "docs/sub/new.txt", "content": "pwned"})
            tree = await ok(s, "directory_tree", {"path": "docs"})
            assert "deep" not in json.dumps(tree)
            names = await ok(s, "search_files", {"name": "*.txt"})
            assert [m["path"] for m in names["matches"]] == ["docs/top.txt"]
            # A rescan of the matched directory does not walk (or name) what is below it.
            (f / "docs" / "sub" / "deep" / "new.txt").write_text("planted\n")
            r = await ok(s, "force_sync_path", {"path": "docs/sub"})
            assert not [p for p in r["changed"] if p.startswith("docs/sub/")], r
            # Inside the scope, writes work.
            await ok(s, "write_file", {"path": "docs/new.txt", "content": "fine\n"})

        session(server.url, notes, attack_notes)
        session(server.url, docs, attack_docs)
        assert (f / "notes" / "y.md" / "secret.txt").read_text() == "nested secret\n"
        assert not (f / "notes" / "new.md").exists()
        assert (f / "docs" / "sub" / "deep" / "x.txt").read_text() == "deep secret\n"
        assert not (f / "docs" / "sub" / "new.txt").exists()
        assert (f / "docs" / "new.txt").read_text() == "fine\n"
    finally:
        server.stop()


# ---------- C: setuid, setgid and sticky never survive an agent's write ----------

SPECIAL = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def test_c_agent_writes_drop_setuid_setgid_and_sticky(node):
    f = node.folder
    for name, mode in [("suid.sh", 0o4755), ("sgid.sh", 0o2755), ("sticky.sh", 0o1755),
                       ("moved.sh", 0o6755), ("restored.sh", 0o4755)]:
        (f / name).write_text("#!/bin/sh\necho original\n")
        os.chmod(f / name, mode)
        assert os.stat(f / name).st_mode & SPECIAL, name
    server = Server(node)  # scans the folder: v1 of each is recorded with its bits
    try:
        tok = node.token("agent", "read,write")

        async def body(s):
            await ok(s, "write_file", {"path": "suid.sh", "content": "#!/bin/sh\necho pwned\n"})
            await ok(s, "edit_file", {"path": "sgid.sh", "edits": [{"old_text": "original", "new_text": "pwned"}]})
            await ok(s, "write_file", {"path": "sticky.sh", "content": "#!/bin/sh\necho pwned\n"})
            await ok(s, "move_file", {"source": "moved.sh", "destination": "moved-away.sh"})
            await ok(s, "write_file", {"path": "restored.sh", "content": "#!/bin/sh\necho pwned\n"})
            await ok(s, "restore_version", {"path": "restored.sh", "version": "v1"})

        session(server.url, tok, body)
        for name in ["suid.sh", "sgid.sh", "sticky.sh", "moved-away.sh", "restored.sh"]:
            mode = os.stat(f / name).st_mode
            assert mode & SPECIAL == 0, f"{name} kept {oct(mode & 0o7777)}"
            assert mode & 0o777 == 0o755, f"{name}: {oct(mode & 0o777)}"
        assert "pwned" in (f / "suid.sh").read_text()
    finally:
        server.stop()


def test_c_agent_versions_record_no_special_bits(node):
    f = node.folder
    (f / "suid.sh").write_text("#!/bin/sh\n")
    os.chmod(f / "suid.sh", 0o4755)
    server = Server(node)
    try:
        tok = node.token("agent", "read,write")

        async def body(s):
            await ok(s, "write_file", {"path": "suid.sh", "content": "#!/bin/sh\necho pwned\n"})
            return await ok(s, "get_file_metadata", {"path": "suid.sh"})

        meta = session(server.url, tok, body)
        assert int(meta["mode"], 8) & 0o7000 == 0, meta["mode"]
    finally:
        server.stop()


# ---------- D: sessions are capped per token and in total ----------

def test_d_sessions_per_token_are_capped(node):
    server = Server(node)
    try:
        tok = node.token("hoarder", "read")
        other = node.token("neighbour", "read")
        sids = []
        for i in range(32):
            status, sid, body = open_session(server.url, tok)
            assert status == 200 and sid, (i, status, body)
            sids.append(sid)
        in_session(server.url, tok, sids[0], {"jsonrpc": "2.0", "method": "notifications/initialized"})
        # The 33rd is refused with a JSON-RPC error saying what to do.
        status, headers, body = http("POST", server.url, token=tok, body=INIT)
        assert status == 429, (status, body)
        assert "mcp-session-id" not in headers and int(headers["retry-after"]) >= 1
        err_msg = json.loads(body)
        assert err_msg["jsonrpc"] == "2.0" and err_msg["id"] == 0
        assert "32 MCP sessions" in err_msg["error"]["message"]
        # Other tokens are not affected.
        status, other_sid, _ = open_session(server.url, other)
        assert status == 200 and other_sid
        # A session belongs to its token: another token cannot use or close it.
        status, _, _ = in_session(server.url, other, sids[0],
                                  {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert status == 404
        status, _, _ = http("DELETE", server.url, token=other, headers={"Mcp-Session-Id": sids[0]})
        assert status == 404
        status, _, body = in_session(server.url, tok, sids[0],
                                     {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert status == 200 and sse_messages(body)[-1]["result"]["tools"]
        # Closing one makes room for one.
        status, _, _ = http("DELETE", server.url, token=tok, headers={"Mcp-Session-Id": sids[0]})
        assert status in (200, 202, 204)
        status, sid, _ = open_session(server.url, tok)
        assert status == 200 and sid
        assert open_session(server.url, tok)[0] == 429
        # Sessionless (2026-07-28) calls do not need a session and still work.
        status, _, _ = post_2026(server.url, call_2026("get_file_metadata", {"path": "x"}), token=tok)
        assert status == 200
    finally:
        server.stop()


# ---------- E: revoking a token ends its open streams ----------

def test_e_revocation_ends_sessions_and_listen_streams(node):
    (node.folder / "docs").mkdir()
    (node.folder / "docs" / "a.md").write_text("a\n")
    server = Server(node)
    streams = []
    try:
        victim = node.token("victim", "read")
        writer = node.token("writer", "read,write")
        uri = "sovryn://test-node/docs/a.md"
        auth = {"Authorization": f"Bearer {victim}"}

        # A handshake-era session with its standalone SSE stream and a subscription.
        status, sid, _ = open_session(server.url, victim)
        assert status == 200 and sid
        assert in_session(server.url, victim, sid,
                          {"jsonrpc": "2.0", "method": "notifications/initialized"})[0] in (200, 202)
        get = Stream(server.url, "GET", {**auth, "Accept": "text/event-stream",
                                         "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"})
        streams.append(get)
        assert get.status == 200
        status, _, _ = in_session(server.url, victim, sid, {
            "jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": uri}})
        assert status == 200
        # A sessionless 2026-07-28 listen stream.
        listen_body = {"jsonrpc": "2.0", "id": 3, "method": "subscriptions/listen",
                       "params": {"_meta": META, "notifications": {
                           "resourcesListChanged": True, "resourceSubscriptions": [uri]}}}
        listen = Stream(server.url, "POST", {
            **auth, **V2026, "Mcp-Method": "subscriptions/listen",
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
            listen_body)
        streams.append(listen)
        assert listen.status == 200
        time.sleep(0.5)

        def write(content):
            status, _, body = post_2026(server.url, call_2026("write_file", {"path": "docs/a.md", "content": content}),
                                        token=writer)
            assert status == 200, body

        # Both streams deliver while the token is valid.
        write("b\n")
        get.wait_for("notifications/resources/updated")
        listen.wait_for("notifications/resources/updated")

        node.run("mcp", "tokens", "revoke", "victim")
        revoked = time.monotonic()
        assert get.ended.wait(5), "the session's SSE stream outlived the revocation"
        assert listen.ended.wait(5), "the listen stream outlived the revocation"
        assert time.monotonic() - revoked < 3.0
        get.drain(), listen.drain()
        write("c\n")
        time.sleep(0.5)
        assert not [m for m in get.drain() + listen.drain() if m.get("method")]
        # And the session is gone, the token refused.
        status, _, _ = in_session(server.url, victim, sid, {"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
        assert status == 401
    finally:
        for s in streams:
            s.close()
        server.stop()


def test_e_an_expiring_jwt_ends_its_stream(node):
    secret = node.home / "jwt.secret"
    secret.write_text("k" * 40)
    os.chmod(secret, 0o600)
    node.run("config", "set", "mcp.jwt_secret_file", str(secret))
    server = Server(node)
    try:
        # Past its `exp`, but inside the verifier's 30 s leeway for 2 more seconds.
        token = jwt("k" * 40, {"sub": "short", "exp": int(time.time()) - 28, "capabilities": ["read"]})
        listen_body = {"jsonrpc": "2.0", "id": 3, "method": "subscriptions/listen",
                       "params": {"_meta": META, "notifications": {"resourcesListChanged": True}}}
        s = Stream(server.url, "POST", {
            "Authorization": f"Bearer {token}", **V2026, "Mcp-Method": "subscriptions/listen",
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
            listen_body)
        try:
            assert s.status == 200
            assert s.ended.wait(8), "the stream outlived the JWT"
        finally:
            s.close()
    finally:
        server.stop()


# ---------- F: refused authentications are audited, at a bounded rate ----------

def test_f_refused_tokens_are_audited_without_the_secret(node):
    server = Server(node)
    try:
        tok = node.token("doomed", "read")
        node.run("mcp", "tokens", "revoke", "doomed")
        bad = "svn_" + "0" * 64
        for t in [None, bad, tok]:
            status, _, _ = http("POST", server.url, token=t, body=call_2026("get_stats", {}))
            assert status == 401
        lines = [l for l in node.audit() if l["outcome"].startswith("denied (401)")]
        assert len(lines) == 3, lines
        assert all(l["client"] == "127.0.0.1" and l["tool"] == "auth /mcp" for l in lines)
        text = (node.home / "audit.jsonl").read_text()
        assert bad not in text and tok not in text and tok[4:20] not in text
        # A short fingerprint of what was presented: the start of mcp.db's hash for a real token.
        assert lines[0]["token"] == ""
        assert lines[2]["token"] == "sha256:" + hashlib.sha256(tok.encode()).hexdigest()[:8]

        # A flood: at most 10 lines per client per minute, the rest counted.
        for _ in range(40):
            http("POST", server.url, token=bad, body=call_2026("get_stats", {}))
        lines = [l for l in node.audit() if l["outcome"].startswith("denied (401)")]
        assert len(lines) == 10, len(lines)
    finally:
        server.stop()


# ---------- G: peers stay current, and are shown only to status tokens ----------

def test_g_get_peers_follows_the_cli_and_metadata_hides_peers(node, tmp_path):
    (node.folder / "a.md").write_text("a\n")
    peer = other_id(tmp_path)
    server = Server(node)
    try:
        status_tok = node.token("monitor", "read,status")
        reader = node.token("reader", "read")

        async def peers(s):
            return [p["id"] for p in (await ok(s, "get_peers", {}))["peers"]], \
                (await ok(s, "get_sync_status", {}))["peers"]

        assert session(server.url, status_tok, peers) == ([], 0)
        node.run("peers", "add", peer, "--name", "laptop")
        assert session(server.url, status_tok, peers) == ([peer], 1)

        async def meta(s):
            return await ok(s, "get_file_metadata", {"path": "a.md"})

        shown = session(server.url, status_tok, meta)["sync"]
        assert shown == [{"peer": peer, "name": "laptop", "state": "unknown"}]
        hidden = session(server.url, reader, meta)
        assert hidden["sync"] == [] and peer not in json.dumps(hidden) and "laptop" not in json.dumps(hidden)

        node.run("peers", "remove", "laptop")
        assert session(server.url, status_tok, peers) == ([], 0)
    finally:
        server.stop()


def jwt(secret: str, claims: dict) -> str:
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_g_jwt_audience_and_issuer_are_enforced_when_configured(node):
    (node.folder / "a.md").write_text("a\n")
    key = "s" * 40
    secret = node.home / "jwt.secret"
    secret.write_text(key)
    os.chmod(secret, 0o600)
    node.run("config", "set", "mcp.jwt_secret_file", str(secret))
    # `sovryn config set` does not know these keys (yet): written into [mcp] directly.
    cfg = node.home / "config.toml"
    text = cfg.read_text()
    assert "[mcp]" in text
    cfg.write_text(text.replace("[mcp]\n", '[mcp]\njwt_audience = "sovryn-mcp"\njwt_issuer = "https://idp.example"\n', 1))
    server = Server(node)
    try:
        now = int(time.time())
        base = {"sub": "ci", "exp": now + 600, "capabilities": ["read"]}
        body = call_2026("read_file", {"path": "a.md"})
        good = jwt(key, {**base, "aud": "sovryn-mcp", "iss": "https://idp.example"})
        assert post_2026(server.url, body, token=good)[0] == 200
        many = jwt(key, {**base, "aud": ["x", "sovryn-mcp"], "iss": "https://idp.example"})
        assert post_2026(server.url, body, token=many)[0] == 200
        for claims in [base, {**base, "aud": "other-service", "iss": "https://idp.example"},
                       {**base, "aud": "sovryn-mcp"}, {**base, "aud": "sovryn-mcp", "iss": "https://evil"}]:
            status, headers, _ = post_2026(server.url, body, token=jwt(key, claims))
            assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"], claims
    finally:
        server.stop()


# ---------- H: a locked token database does not stall the listener ----------

def test_h_a_locked_token_database_does_not_stall_the_listener(node):
    """Another process holding mcp.db's lock: token lookups wait for it (on
    blocking threads), while the listener's async threads go on answering."""
    import fcntl
    import secrets

    server = Server(node)
    try:
        node.token("agent", "read")
        # Hold every WAL read lock of mcp.db (bytes 123..127 of its -shm file,
        # the way SQLite's unix VFS takes them): no connection can start a
        # read until they are released.
        shm = open(node.home / "mcp.db-shm", "r+b")
        fcntl.lockf(shm, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 123)
        results = []

        def lookup():
            # An unknown token misses the cache: a query that waits for the lock.
            t = "svn_" + secrets.token_hex(32)
            results.append(http("POST", server.url, token=t, body=call_2026("get_stats", {}))[0])

        waiting = [threading.Thread(target=lookup) for _ in range(8)]
        for t in waiting:
            t.start()
        time.sleep(0.5)
        slowest = 0.0
        for _ in range(10):
            started = time.monotonic()
            assert http("GET", server.base + "/healthz")[0] == 200
            slowest = max(slowest, time.monotonic() - started)
        assert not results, "the lookups should still be waiting for the lock"
        assert slowest < 1.0, f"/healthz took {slowest:.1f}s while mcp.db was locked"
        fcntl.lockf(shm, fcntl.LOCK_UN, 5, 123)
        shm.close()
        for t in waiting:
            t.join(30)
        assert results == [401] * 8, results
    finally:
        server.stop()
