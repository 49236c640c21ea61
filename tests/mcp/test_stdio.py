"""`sovryn mcp serve --stdio` driven by the real Python MCP SDK."""

import asyncio
import base64

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from sovryn_support import listing

EXPECTED_TOOLS = {
    "read_file", "read_multiple_files", "write_file", "edit_file", "create_directory",
    "delete_file", "move_file", "list_directory", "directory_tree", "get_file_metadata",
    "search_files", "get_version_history", "restore_version", "diff_versions", "get_stats",
}


def run(node, body, message_handler=None):
    async def main():
        params = StdioServerParameters(
            command=node.bin, args=["--home", str(node.home), "mcp", "serve", "--stdio"]
        )
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w, message_handler=message_handler) as s:
                await s.initialize()
                await body(s)

    asyncio.run(asyncio.wait_for(main(), timeout=60))


async def ok(s, tool, args):
    res = await s.call_tool(tool, args)
    assert not res.is_error, f"{tool} {args}: {res.content}"
    return res.structured_content


async def err(s, tool, args) -> str:
    res = await s.call_tool(tool, args)
    assert res.is_error, f"{tool} {args} should fail: {res.structured_content}"
    return res.content[0].text


def test_tools_are_listed_with_honest_annotations(node):
    async def body(s):
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert EXPECTED_TOOLS <= set(tools)
        for name in ["read_file", "search_files", "list_directory", "diff_versions"]:
            assert tools[name].annotations.read_only_hint is True
        for name in ["read_file", "search_files", "diff_versions"]:
            assert tools[name].output_schema is not None
        # Listings are text (one line per entry), like the reference server's.
        assert tools["list_directory"].output_schema is None
        for name in ["write_file", "edit_file", "delete_file", "restore_version"]:
            assert tools[name].annotations.read_only_hint is False
            assert tools[name].annotations.destructive_hint is True
        assert tools["create_directory"].annotations.idempotent_hint is True
        assert tools["read_file"].input_schema["required"] == ["path"]

    run(node, body)


def test_write_read_edit_search_list_move_delete(node):
    (node.folder / "existing.md").write_text("made by hand\n")

    async def body(s):
        # The folder is scanned before serving: files made by hand are there.
        out = await ok(s, "read_file", {"path": "existing.md"})
        assert out["content"] == "made by hand\n" and out["version"] == "v1"

        w = await ok(s, "write_file", {"path": "docs/plan.md", "content": "alpha\nbeta\ngamma\n"})
        assert w["created"] and w["version"] == "v1"
        assert (node.folder / "docs" / "plan.md").read_text() == "alpha\nbeta\ngamma\n"

        r = await ok(s, "read_file", {"path": "docs/plan.md", "head": 2})
        assert r["content"] == "alpha\nbeta\n" and r["total_lines"] == 3
        r = await ok(s, "read_file", {"path": "docs/plan.md", "tail": 1})
        assert r["content"] == "gamma\n"
        r = await ok(s, "read_file", {"path": "docs/plan.md", "offset": 1, "length": 1})
        assert r["content"] == "beta\n" and r["start"] == 1

        # Binary content round-trips as base64.
        blob = bytes(range(256))
        await ok(s, "write_file", {"path": "bin/blob", "content": base64.b64encode(blob).decode(), "encoding": "base64"})
        r = await ok(s, "read_file", {"path": "bin/blob"})
        assert r["encoding"] == "base64" and base64.b64decode(r["content"]) == blob
        assert (node.folder / "bin" / "blob").read_bytes() == blob

        many = await ok(s, "read_multiple_files", {"paths": ["docs/plan.md", "nope.txt"]})
        assert many["files"][0]["file"]["content"].startswith("alpha")
        assert "no such file" in many["files"][1]["error"]

        # Dry-run edit shows a diff and changes nothing.
        d = await ok(s, "edit_file", {"path": "docs/plan.md", "dry_run": True,
                                      "edits": [{"old_text": "beta", "new_text": "BETA"}]})
        assert d["dry_run"] and "-beta" in d["diff"] and "+BETA" in d["diff"] and "version" not in d
        assert (node.folder / "docs" / "plan.md").read_text() == "alpha\nbeta\ngamma\n"
        e = await ok(s, "edit_file", {"path": "docs/plan.md",
                                      "edits": [{"old_text": "beta", "new_text": "BETA"}]})
        assert e["version"] == "v2"
        assert (node.folder / "docs" / "plan.md").read_text() == "alpha\nBETA\ngamma\n"
        msg = await err(s, "edit_file", {"path": "docs/plan.md", "edits": [{"old_text": "nothere", "new_text": "x"}]})
        assert "not found" in msg

        found = await ok(s, "search_files", {"query": "gamma"})
        assert [m["path"] for m in found["matches"]] == ["docs/plan.md"]
        assert "[gamma]" in found["matches"][0]["snippet"]
        named = await ok(s, "search_files", {"name": "*.md"})
        assert {m["path"] for m in named["matches"]} == {"docs/plan.md", "existing.md"}

        await ok(s, "create_directory", {"path": "empty/inner"})
        assert (node.folder / "empty" / "inner").is_dir()
        ls = listing(await s.call_tool("list_directory", {"path": ""}))
        names = [e["name"] for e in ls["entries"]]
        assert names == sorted(names) and {"docs", "bin", "empty", "existing.md"} <= set(names)
        page = listing(await s.call_tool("list_directory", {"limit": 2}))
        assert len(page["entries"]) == 2 and page["next_cursor"] == "2"
        page2 = listing(await s.call_tool("list_directory", {"limit": 2, "cursor": page["next_cursor"]}))
        assert page2["entries"][0]["name"] == names[2]
        tree = await ok(s, "directory_tree", {"path": "docs"})
        assert tree["entries"] == [{"name": "plan.md", "kind": "file", "size": 17}]

        meta = await ok(s, "get_file_metadata", {"path": "docs/plan.md"})
        assert meta["version"] == "v2" and meta["versions"] == 2 and meta["kind"] == "file"
        assert meta["actor"] == "mcp:stdio" and meta["mode"] == "0644"

        mv = await ok(s, "move_file", {"source": "docs", "destination": "archive/docs"})
        assert mv["entries_moved"] == 2
        assert not (node.folder / "docs").exists()
        assert (node.folder / "archive" / "docs" / "plan.md").read_text() == "alpha\nBETA\ngamma\n"
        msg = await err(s, "move_file", {"source": "existing.md", "destination": "archive/docs/plan.md"})
        assert "already exists" in msg

        msg = await err(s, "delete_file", {"path": "archive"})
        assert "recursively" in msg
        dl = await ok(s, "delete_file", {"path": "archive", "recursive": True})
        assert "archive/docs/plan.md" in dl["deleted"]
        assert not (node.folder / "archive").exists()
        assert "deleted" in await err(s, "read_file", {"path": "archive/docs/plan.md"})

        stats = await ok(s, "get_stats", {})
        assert stats["node_name"] == "test-node" and stats["versions"] >= 5

    run(node, body)
    # The writes are versions recorded with the stdio actor; the CLI sees them too.
    out = node.run("versions", "existing.md")
    assert out.returncode == 0


def test_history_diff_restore(node):
    async def body(s):
        await ok(s, "write_file", {"path": "notes.txt", "content": "one\n"})
        await ok(s, "write_file", {"path": "notes.txt", "content": "one\ntwo\n"})
        h = await ok(s, "get_version_history", {"path": "notes.txt"})
        assert [v["version"] for v in h["versions"]] == ["v2", "v1"]
        assert all(v["actor"] == "mcp:stdio" for v in h["versions"])
        d = await ok(s, "diff_versions", {"path": "notes.txt", "from": "v1"})
        assert "+two" in d["diff"] and d["to"] == "v2"
        old = await ok(s, "read_file", {"path": "notes.txt", "version": "v1"})
        assert old["content"] == "one\n"
        r = await ok(s, "restore_version", {"path": "notes.txt", "version": "v1"})
        assert r["version"] == "v3" and r["restored_from"] == "v1"
        assert (node.folder / "notes.txt").read_text() == "one\n"
        h = await ok(s, "get_version_history", {"path": "notes.txt"})
        assert h["versions"][0]["message"] == "restored from v1"
        # A deleted file comes back too.
        await ok(s, "delete_file", {"path": "notes.txt"})
        assert not (node.folder / "notes.txt").exists()
        await ok(s, "restore_version", {"path": "notes.txt", "version": "v2"})
        assert (node.folder / "notes.txt").read_text() == "one\ntwo\n"
        assert "no version v9" in await err(s, "restore_version", {"path": "notes.txt", "version": "v9"})

    run(node, body)


def test_bad_paths_are_refused(node):
    outside = node.folder.parent / "outside.txt"
    outside.write_text("secret")
    (node.folder / "link").symlink_to(node.folder.parent)

    async def body(s):
        for bad in ["../outside.txt", "/etc/passwd", "a/../../x", "a\u0000b"]:
            await err(s, "read_file", {"path": bad})
            await err(s, "write_file", {"path": bad, "content": "x"})
        # Writing through a symlink out of the tree is refused.
        await err(s, "write_file", {"path": "link/outside.txt", "content": "pwned"})
        assert outside.read_text() == "secret"
        # Bad arguments are tool errors the model can read, not protocol failures.
        res = await s.call_tool("read_file", {"nope": 1})
        assert res.is_error

    run(node, body)


def test_an_unrecorded_edit_is_kept_before_an_agent_overwrites_it(node):
    async def body(s):
        await ok(s, "write_file", {"path": "f.txt", "content": "agent 1\n"})
        (node.folder / "f.txt").write_text("human edit\n")
        await ok(s, "write_file", {"path": "f.txt", "content": "agent 2\n"})
        h = await ok(s, "get_version_history", {"path": "f.txt"})
        assert len(h["versions"]) == 3
        mid = await ok(s, "read_file", {"path": "f.txt", "version": "v2"})
        assert mid["content"] == "human edit\n"

    run(node, body)


def test_resources_list_read_and_subscribe(node):
    (node.folder / "docs").mkdir()
    (node.folder / "docs" / "a b.md").write_text("# title\n")
    (node.folder / "img.bin").write_bytes(b"\x00\x01\x02")
    updates = []

    async def on_message(msg):
        uri = getattr(getattr(msg, "params", None), "uri", None)
        if uri is not None and "updated" in str(getattr(msg, "method", "")):
            updates.append(str(uri))

    async def body(s):
        res = (await s.list_resources()).resources
        uris = {str(r.uri): r for r in res}
        doc = "sovryn://test-node/docs/a%20b.md"
        assert doc in uris and uris[doc].mime_type == "text/markdown" and uris[doc].size == 8
        templates = (await s.list_resource_templates()).resource_templates
        assert templates[0].uri_template == "sovryn://test-node/{+path}"
        text = (await s.read_resource(doc)).contents[0]
        assert text.text == "# title\n"
        blob = (await s.read_resource("sovryn://test-node/img.bin")).contents[0]
        assert base64.b64decode(blob.blob) == b"\x00\x01\x02"
        for bad in ["sovryn://test-node/../etc/passwd", "sovryn://other-node/docs/a%20b.md", "file:///etc/passwd"]:
            try:
                await s.read_resource(bad)
            except Exception:
                continue
            raise AssertionError(f"{bad} should be refused")
        await s.subscribe_resource(doc)
        await ok(s, "write_file", {"path": "docs/a b.md", "content": "# changed\n"})
        await ok(s, "write_file", {"path": "docs/other.md", "content": "not subscribed"})
        for _ in range(50):
            if updates:
                break
            await asyncio.sleep(0.05)
        assert updates == [doc]

    run(node, body, message_handler=on_message)


def test_protocol_2026_07_28_tools_and_listen(node):
    """The modern (sessionless) protocol: server/discover, tools, subscriptions/listen."""
    from mcp import Client

    (node.folder / "watched.md").write_text("v1\n")

    async def main():
        params = StdioServerParameters(
            command=node.bin, args=["--home", str(node.home), "mcp", "serve", "--stdio"]
        )
        async with Client(params) as c:
            assert c.protocol_version == "2026-07-28"
            r = await c.call_tool("read_file", {"path": "watched.md"})
            assert r.structured_content["content"] == "v1\n"
            uri = "sovryn://test-node/watched.md"
            async with c.listen(resource_subscriptions=[uri]) as sub:
                assert sub.honored.resource_subscriptions == [uri]
                w = await c.call_tool("write_file", {"path": "watched.md", "content": "v2\n"})
                assert not w.is_error

                async def first():
                    async for ev in sub:
                        return ev

                ev = await asyncio.wait_for(first(), 10)
                assert str(ev.uri) == uri

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_a_listing_follows_every_change(node):
    """Listings are cached while the index is unchanged: each kind of change
    shows in the next listing, and a listing is of its own directory."""
    async def body(s):
        async def names(path=""):
            return {e["name"]: e for e in listing(await s.call_tool("list_directory", {"path": path}))["entries"]}

        before = await names()
        assert "fresh.md" not in before
        assert not (await s.call_tool("write_file", {"path": "fresh.md", "content": "one"})).is_error
        now = await names()
        assert now["fresh.md"]["size"] == 3 and now["fresh.md"]["version"] == "v1"
        assert not (await s.call_tool("write_file", {"path": "fresh.md", "content": "three"})).is_error
        assert (await names())["fresh.md"]["size"] == 5 and (await names())["fresh.md"]["version"] == "v2"
        assert not (await s.call_tool("create_directory", {"path": "sub"})).is_error
        assert await names("sub") == {}
        (node.folder / "sub" / "from-disk.txt").write_text("made outside")
        assert not (await s.call_tool("force_sync_path", {"path": "sub"})).is_error
        assert set(await names("sub")) == {"from-disk.txt"}
        assert "from-disk.txt" not in await names()
        assert not (await s.call_tool("move_file", {"source": "fresh.md", "destination": "sub/moved.md"})).is_error
        assert "fresh.md" not in await names()
        assert set(await names("sub")) == {"from-disk.txt", "moved.md"}
        assert not (await s.call_tool("delete_file", {"path": "sub/from-disk.txt"})).is_error
        assert set(await names("sub")) == {"moved.md"}
        res = await s.call_tool("list_directory", {"path": "sub/moved.md"})
        assert res.is_error and "not a directory" in res.content[0].text
        res = await s.call_tool("list_directory", {"path": "nowhere"})
        assert res.is_error and "no such file" in res.content[0].text

    run(node, body)
