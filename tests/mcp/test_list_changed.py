"""`notifications/resources/list_changed`: sent when a file appears or
disappears (not when one changes), only to sessions whose token may see it;
over stdio, Streamable HTTP sessions, and 2026-07-28 `subscriptions/listen`.
Real Python SDK clients."""

import asyncio
import json

from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from test_http import Server, create_mcp_http_client

LIST_CHANGED = "notifications/resources/list_changed"


class Seen:
    def __init__(self):
        self.methods = []
        self.event = asyncio.Event()

    async def __call__(self, msg):
        method = str(getattr(msg, "method", ""))
        if method == LIST_CHANGED:
            self.methods.append(method)
            self.event.set()

    async def wait(self, timeout=10.0):
        await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()

    async def none_for(self, seconds=0.6):
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError("unexpected list_changed")


async def ok(s, tool, args):
    res = await s.call_tool(tool, args)
    assert not res.is_error, f"{tool} {args}: {res.content}"
    return res.structured_content


def test_stdio_session_hears_creations_and_deletions(node):
    (node.folder / "old.md").write_text("here\n")
    seen = Seen()

    async def main():
        params = StdioServerParameters(command=node.bin, args=["--home", str(node.home), "mcp", "serve", "--stdio"])
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w, message_handler=seen) as s:
                init = await s.initialize()
                assert init.capabilities.resources.list_changed is True
                assert init.capabilities.resources.subscribe is True
                await asyncio.sleep(0.2)  # the session starts following after `initialized`
                await ok(s, "write_file", {"path": "new.md", "content": "x\n"})
                await seen.wait()
                # Changing a file that exists is an update, not a list change.
                await ok(s, "write_file", {"path": "new.md", "content": "y\n"})
                await seen.none_for()
                # A file made on disk, recorded by a rescan.
                (node.folder / "disk.md").write_text("from disk\n")
                await ok(s, "force_sync_path", {"path": "disk.md"})
                await seen.wait()
                uris = [str(x.uri) for x in (await s.list_resources()).resources]
                assert "sovryn://test-node/disk.md" in uris and "sovryn://test-node/new.md" in uris
                await ok(s, "delete_file", {"path": "old.md"})
                await seen.wait()
                # A directory is not a resource.
                await ok(s, "create_directory", {"path": "empty/dir"})
                await seen.none_for()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_http_sessions_hear_what_their_scope_covers(node):
    (node.folder / "docs").mkdir()
    (node.folder / "docs" / "a.md").write_text("a\n")
    server = Server(node)
    writer_tok = node.token("writer", "read,write")
    docs_tok = node.token("docs-reader", "read", "docs/**")
    status_tok = node.token("monitor", "status")
    seen_docs, seen_all, seen_status = Seen(), Seen(), Seen()

    async def session(tok, seen, body):
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {tok}"})
        async with client:
            async with streamable_http_client(server.url, http_client=client) as streams:
                async with ClientSession(streams[0], streams[1], message_handler=seen) as s:
                    await s.initialize()
                    return await body(s)

    async def main():
        ready = asyncio.Event()
        stop = asyncio.Event()

        async def listener(s):
            ready.set()
            await stop.wait()

        async def writer(s):
            await ready.wait()
            await asyncio.sleep(0.3)
            # Outside the docs scope: only the unscoped session hears it.
            await ok(s, "write_file", {"path": "other/x.md", "content": "x\n"})
            await seen_all.wait()
            await seen_docs.none_for()
            # Inside it: both do.
            await ok(s, "write_file", {"path": "docs/new.md", "content": "n\n"})
            await seen_docs.wait()
            await seen_all.wait()
            await ok(s, "move_file", {"source": "docs/new.md", "destination": "docs/moved.md"})
            await seen_docs.wait()
            stop.set()

        await asyncio.gather(
            session(docs_tok, seen_docs, listener),
            session(status_tok, seen_status, listener),
            session(writer_tok, seen_all, writer),
        )
        # A token without `read` hears nothing.
        assert seen_status.methods == []

    try:
        asyncio.run(asyncio.wait_for(main(), timeout=60))
    finally:
        server.stop()


def test_listen_2026_07_28_resources_list_changed(node):
    async def main():
        params = StdioServerParameters(command=node.bin, args=["--home", str(node.home), "mcp", "serve", "--stdio"])
        async with Client(params) as c:
            assert c.protocol_version == "2026-07-28"
            async with c.listen(resources_list_changed=True) as sub:
                assert sub.honored.resources_list_changed
                w = await c.call_tool("write_file", {"path": "fresh.md", "content": "hi\n"})
                assert not w.is_error

                async def first():
                    async for ev in sub:
                        return ev

                ev = await asyncio.wait_for(first(), 10)
                assert "ListChanged" in type(ev).__name__, ev

    asyncio.run(asyncio.wait_for(main(), timeout=60))
