"""MCP served by a running node (`sovryn up` with mcp.enabled): a write made
through MCP on node A reaches node B's disk, authored by A, with the actor
mcp:<token name>."""

import asyncio
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

try:
    from mcp.shared._httpx_utils import create_mcp_http_client
except ImportError:  # pragma: no cover - other SDK layouts
    import httpx

    def create_mcp_http_client(headers=None):
        return httpx.AsyncClient(headers=headers, timeout=30)


from sovryn_support import Node, free_port, linked_pair, sovryn_bin  # noqa: F401 (Node: re-exported)


@pytest.fixture
def pair(tmp_path: Path):
    a, b = linked_pair(tmp_path)
    token = a.run("mcp", "tokens", "create", "--name", "agent", "--capabilities", "read,write").stdout.strip()
    a.up()
    b.up()
    yield a, b, token
    for n in (a, b):
        n.stop()


def mcp_session(url: str, token: str, body):
    async def main():
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with client:
            async with streamable_http_client(url, http_client=client) as streams:
                async with ClientSession(streams[0], streams[1]) as s:
                    await s.initialize()
                    return await body(s)

    return asyncio.run(asyncio.wait_for(main(), timeout=60))


def wait_connected(node: Node, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = json.loads(node.run("peers", "list", "--json").stdout)
        if any(p.get("status", {}).get("connected", 0) > 0 for p in out["peers"]):
            return
        time.sleep(0.1)
    raise AssertionError(f"{node.name} never connected to its peer")


def test_mcp_write_on_a_lands_on_b_within_a_second(pair):
    a, b, token = pair
    url = a.mcp_url()
    assert url == f"http://127.0.0.1:{a.mcp_port}/mcp", a.lines
    assert b.mcp_url() == f"http://127.0.0.1:{b.mcp_port}/mcp", b.lines
    wait_connected(a)
    wait_connected(b)

    async def write(s):
        tools = {t.name for t in (await s.list_tools()).tools}
        assert {"write_file", "read_file"} <= tools
        t0 = time.time()
        r = await s.call_tool("write_file", {"path": "notes/from-agent.md", "content": "written by an agent\n"})
        assert not getattr(r, "is_error", getattr(r, "isError", False)), r
        return t0

    t0 = mcp_session(url, token, write)
    target = b.folder / "notes" / "from-agent.md"
    while time.time() - t0 < 5 and not (target.exists() and target.read_text() == "written by an agent\n"):
        time.sleep(0.01)
    elapsed = time.time() - t0
    assert target.exists() and target.read_text() == "written by an agent\n", "never reached B"
    assert elapsed < 1.0, f"took {elapsed:.3f} s to reach B"

    # B's history names A as the author and the token as the actor.
    hist = json.loads(b.run("versions", "notes/from-agent.md", "--json").stdout)
    versions = hist["versions"] if isinstance(hist, dict) else hist
    newest = versions[0]
    assert newest["author"] == "alpha", newest
    assert newest["actor"] == "mcp:agent", newest

    # A's server reads back what B now also holds.
    async def read(s):
        r = await s.call_tool("read_file", {"path": "notes/from-agent.md"})
        return getattr(r, "structured_content", None) or getattr(r, "structuredContent", None)

    content = mcp_session(url, token, read)
    assert "written by an agent" in json.dumps(content)


def test_daemon_stops_cleanly_with_mcp_running(pair):
    a, b, _ = pair
    assert a.mcp_url()
    assert a.stop() == 0
    assert b.stop() == 0
    # The port is free again.
    s = socket.socket()
    s.bind(("127.0.0.1", a.mcp_port))
    s.close()
