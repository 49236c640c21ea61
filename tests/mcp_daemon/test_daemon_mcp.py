"""MCP and a running node (`sovryn up`): `sovryn mcp start|stop|status`
through the control socket, `sovryn mcp serve --stdio` served by the
running node, list_changed for files made on disk, and per-peer sync state
in get_file_metadata."""

import asyncio
import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from test_daemon import Node, mcp_session, wait_connected


def stdio_session(node: Node, body, message_handler=None):
    # The server's stderr goes to a file, shown when the session fails.
    errlog_path = node.home.parent / f"{node.name}-stdio.err"

    async def main():
        params = StdioServerParameters(command=node.bin, args=["--home", str(node.home), "mcp", "serve", "--stdio"])
        with open(errlog_path, "a") as errlog:
            async with stdio_client(params, errlog=errlog) as (r, w):
                async with ClientSession(r, w, message_handler=message_handler) as s:
                    await s.initialize()
                    return await body(s)

    try:
        return asyncio.run(asyncio.wait_for(main(), timeout=60))
    except BaseException:
        print("mcp serve --stdio stderr:\n" + errlog_path.read_text() if errlog_path.exists() else "(none)")
        raise


async def ok(s, tool, args):
    res = await s.call_tool(tool, args)
    assert not res.is_error, f"{tool} {args}: {res.content}"
    return res.structured_content


def nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def solo(tmp_path: Path):
    n = Node(tmp_path, "solo")
    n.run("config", "set", "mcp.enabled", "false")
    n.run("config", "set", "sync.mdns", "false")
    yield n
    n.stop()


def test_mcp_start_stop_status_on_a_running_node(solo):
    n = solo
    # No node running: a clear error, not a hang or a traceback.
    r = subprocess_run(n, "mcp", "start")
    assert r.returncode != 0 and "no node is running" in r.stderr, r.stderr

    n.up()
    assert n.mcp_url() is None  # mcp.enabled = false
    st = json.loads(n.run("--json", "mcp", "status").stdout)
    assert st["daemon"] == {"running": True, "mcp_url": None} and st["running"] is False
    assert "MCP off" in n.run("mcp", "status").stdout

    out = n.run("mcp", "start").stdout
    url = f"http://127.0.0.1:{n.mcp_port}/mcp"
    assert out.strip() == f"MCP listening on {url}", out
    st = json.loads(n.run("--json", "mcp", "status").stdout)
    assert st["running"] is True and st["state"] == "ready" and st["daemon"]["mcp_url"] == url, st
    assert f"serving MCP on {url}" in n.run("mcp", "status").stdout
    # It serves the daemon's node, with tokens.
    (n.folder / "hello.md").write_text("hello\n")
    token = n.run("mcp", "tokens", "create", "--name", "t", "--capabilities", "read").stdout.strip()

    async def read(s):
        for _ in range(100):
            r = await s.call_tool("read_file", {"path": "hello.md"})
            if not r.is_error:
                return r.structured_content
            await asyncio.sleep(0.05)
        raise AssertionError(r.content)

    assert mcp_session(url, token, read)["content"] == "hello\n"
    again = json.loads(n.run("--json", "mcp", "start").stdout)
    assert again["already_running"] is True and again["url"] == url

    assert n.run("mcp", "stop").stdout.strip() == "MCP stopped"
    assert nothing_listens(n.mcp_port)
    assert "MCP off" in n.run("mcp", "status").stdout
    assert n.run("mcp", "stop").stdout.strip() == "MCP was not running"
    # The node itself kept running.
    assert json.loads(n.run("--json", "daemon", "status").stdout)["running"] is True


def subprocess_run(n: Node, *args):
    import subprocess

    return subprocess.run([n.bin, "--home", str(n.home), *args], capture_output=True, text=True, timeout=60)


def test_stdio_is_served_by_the_running_node(solo):
    n = solo
    (n.folder / "before.md").write_text("made before\n")
    n.up()
    changes = []

    async def on_message(msg):
        if str(getattr(msg, "method", "")) == "notifications/resources/list_changed":
            changes.append(time.time())

    async def body(s):
        # The daemon holds the store; the session is its.
        r = await ok(s, "read_file", {"path": "before.md"})
        assert r["content"] == "made before\n"
        w = await ok(s, "write_file", {"path": "agent.md", "content": "from the agent\n"})
        assert w["created"]
        meta = await ok(s, "get_file_metadata", {"path": "agent.md"})
        assert meta["actor"] == "mcp:stdio" and meta["sync"] == []
        # A file made on disk: the daemon's watcher records it, the session hears of it.
        changes.clear()
        (n.folder / "typed-by-hand.md").write_text("by hand\n")
        for _ in range(100):
            if changes:
                break
            await asyncio.sleep(0.05)
        assert changes, "no list_changed for a file created on disk"
        uris = [str(x.uri) for x in (await s.list_resources()).resources]
        assert "sovryn://solo/typed-by-hand.md" in uris
        return True

    assert stdio_session(n, body, on_message)
    assert (n.folder / "agent.md").read_text() == "from the agent\n"
    hist = json.loads(n.run("versions", "agent.md", "--json").stdout)
    versions = hist["versions"] if isinstance(hist, dict) else hist
    assert versions[0]["actor"] == "mcp:stdio"
    audit = [json.loads(l) for l in (n.home / "audit.jsonl").read_text().splitlines()]
    assert any(l["tool"] == "write_file" and l["token"] == "stdio" for l in audit)
    # `sovryn logs --audit` prints it, for humans and as JSON lines.
    human = n.run("logs", "--audit").stdout.splitlines()
    assert any(" stdio " in l and " write_file " in l and " ok " in l and "agent.md" in l for l in human), human
    lines = [json.loads(l) for l in n.run("logs", "--audit", "--json", "-n", "2").stdout.splitlines()]
    assert len(lines) == 2 and lines == audit[-2:]
    # A second session right after the first: the node keeps serving.
    assert stdio_session(n, lambda s: ok(s, "get_stats", {}))["files"] >= 3
    # Once the node stops, serve --stdio opens the node itself again.
    n.stop()
    n.proc = None
    assert stdio_session(n, lambda s: ok(s, "read_file", {"path": "agent.md"}))["content"] == "from the agent\n"


def test_stdio_session_hands_over_to_a_node_that_starts_later(solo):
    """`mcp serve --stdio` with no node running serves the session itself;
    `sovryn up` started later takes the store over, and the same client
    session goes on through the node (Claude Desktop keeps its session)."""
    n = solo
    (n.folder / "before.md").write_text("made before\n")

    async def body(s):
        r = await ok(s, "read_file", {"path": "before.md"})
        assert r["content"] == "made before\n"
        await ok(s, "write_file", {"path": "first.md", "content": "served in process\n"})
        # A node starts while the session is open: it is not refused.
        n.up()
        w = await ok(s, "write_file", {"path": "second.md", "content": "served by the node\n"})
        assert w["created"]
        assert (await ok(s, "read_file", {"path": "first.md"}))["content"] == "served in process\n"
        assert len((await s.list_tools()).tools) > 10
        return True

    assert stdio_session(n, body)
    # The node holds the store: it recorded the write made through it and
    # syncs it like any other (its status answers, its history has both).
    st = json.loads(n.run("status", "--json").stdout)
    assert st["running"] is True
    for path, text in (("first.md", "served in process\n"), ("second.md", "served by the node\n")):
        assert (n.folder / path).read_text() == text
        hist = json.loads(n.run("versions", path, "--json").stdout)
        versions = hist["versions"] if isinstance(hist, dict) else hist
        assert versions[0]["actor"] == "mcp:stdio"
    assert not (n.home / "mcp-stdio.sock").exists()


@pytest.fixture
def pair(tmp_path: Path):
    a = Node(tmp_path, "alpha")
    key = tmp_path / "folder.key"
    key.write_text(a.run("folder-key").stdout)
    b = Node(tmp_path, "beta", key)
    for n in (a, b):
        n.run("config", "set", "sync.mdns", "false")
    a.run("peers", "add", b.id, "--address", f"127.0.0.1:{b.port}", "--name", "beta")
    b.run("peers", "add", a.id, "--address", f"127.0.0.1:{a.port}", "--name", "alpha")
    yield a, b
    for n in (a, b):
        n.stop()


def test_file_metadata_shows_sync_state_per_peer(pair):
    a, b = pair
    (a.folder / "shared.md").write_text("one\n")

    # Before any connection the peer's state is unknown.
    def meta_once(s):
        return ok(s, "get_file_metadata", {"path": "shared.md"})

    meta = stdio_session(a, meta_once)
    assert meta["sync"] == [{"peer": b.id, "name": "beta", "state": "unknown"}], meta

    a.up()
    b.up()
    wait_connected(a)
    target = b.folder / "shared.md"
    deadline = time.time() + 15
    while time.time() < deadline and not (target.exists() and target.read_text() == "one\n"):
        time.sleep(0.05)
    assert target.read_text() == "one\n"

    async def until_in_sync(s):
        states = []
        for _ in range(200):
            m = await ok(s, "get_file_metadata", {"path": "shared.md"})
            states.append(m["sync"][0]["state"])
            if states[-1] == "in_sync":
                return m
            await asyncio.sleep(0.05)
        raise AssertionError(f"never in_sync: {states[-5:]}")

    meta = stdio_session(a, until_in_sync)
    assert meta["sync"] == [{"peer": b.id, "name": "beta", "state": "in_sync"}]
    # The output schema declares it.
    async def schema(s):
        tools = {t.name: t for t in (await s.list_tools()).tools}
        return tools["get_file_metadata"].output_schema

    out_schema = stdio_session(a, schema)
    assert "sync" in out_schema["properties"] and "sync" in out_schema["required"]
