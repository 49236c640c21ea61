"""Long tool calls report `notifications/progress` and honour
`notifications/cancelled` (the real Python SDK over stdio): a cancelled
restore leaves the file untouched, a cancelled rescan records only whole
files, and the server keeps answering."""

import asyncio
import hashlib
import os
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

MIB = 1024 * 1024


def run(node, body, *extra):
    async def main():
        params = StdioServerParameters(
            command=node.bin, args=["--home", str(node.home), "mcp", "serve", "--stdio", *extra]
        )
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                await body(s)

    asyncio.run(asyncio.wait_for(main(), timeout=120))


async def ok(s, tool, args, **kw):
    res = await s.call_tool(tool, args, **kw)
    assert not res.is_error, f"{tool} {args}: {res.content}"
    return res.structured_content


class Progress:
    def __init__(self):
        self.steps = []
        self.first = asyncio.Event()

    async def __call__(self, progress, total, message):
        self.steps.append((progress, total, message))
        self.first.set()


async def cancel_on_first_progress(s, tool, args):
    """Calls `tool`, cancels it (the SDK sends notifications/cancelled) as
    soon as the server reports progress, i.e. while it is working."""
    prog = Progress()
    task = asyncio.create_task(s.call_tool(tool, args, progress_callback=prog))
    await asyncio.wait_for(prog.first.wait(), 30)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:  # pragma: no cover - the server answered before the cancel landed
        raise AssertionError(f"{tool} finished before it could be cancelled")
    return prog


def wait_audit(node, tool, n=1, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = [l for l in node.audit() if l["tool"] == tool]
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"no audit line for {tool}: {node.audit()}")


def test_progress_of_read_restore_and_rescan(node):
    big = os.urandom(3 * MIB)
    (node.folder / "big.bin").write_bytes(big)

    async def body(s):
        prog = Progress()
        r = await ok(s, "read_file", {"path": "big.bin", "offset": 0, "length": 16}, progress_callback=prog)
        assert r["size"] == len(big)
        totals = {t for _, t, _ in prog.steps}
        assert totals == {float(len(big))}, prog.steps
        done = [p for p, _, _ in prog.steps]
        assert done == sorted(done) and done[0] == 0 and done[-1] == len(big), done
        assert 3 <= len(done) <= 52, len(done)
        assert "big.bin" in prog.steps[-1][2]

        # read_multiple_files counts files.
        prog = Progress()
        await ok(s, "read_multiple_files", {"paths": ["big.bin", "big.bin", "missing"]}, progress_callback=prog)
        assert prog.steps[-1][:2] == (3.0, 3.0), prog.steps

        # restore_version checks the version's chunks with progress, then restores.
        await ok(s, "write_file", {"path": "big.bin", "content": "small now\n"})
        prog = Progress()
        out = await ok(s, "restore_version", {"path": "big.bin", "version": "v1"}, progress_callback=prog)
        assert out["version"] == "v3" and out["restored_from"] == "v1"
        assert prog.steps[-1][0] == prog.steps[-1][1] == float(len(big)), prog.steps[-1]
        assert (node.folder / "big.bin").read_bytes() == big

        # force_sync_path counts the paths of a directory.
        for i in range(300):
            (node.folder / "many" / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
            (node.folder / "many" / f"d{i % 7}" / f"f{i}.txt").write_text(f"file {i}\n")
        prog = Progress()
        out = await ok(s, "force_sync_path", {"path": "many"}, progress_callback=prog)
        assert out["added"] >= 307, out  # 300 files, 7 directories (and `many`)
        assert prog.steps[0][:2] == (0.0, 300.0) and prog.steps[-1][:2] == (300.0, 300.0), prog.steps

        # Without a progress token nothing is reported and results are the same.
        r = await ok(s, "read_file", {"path": "big.bin", "length": 4})
        assert r["encoding"] == "base64"

    run(node, body)


def test_cancelled_restore_leaves_the_file_untouched(node):
    big = os.urandom(16 * MIB)
    (node.folder / "video.bin").write_bytes(big)

    async def body(s):
        await ok(s, "write_file", {"path": "video.bin", "content": "replaced\n"})
        before = await ok(s, "get_version_history", {"path": "video.bin"})
        assert [v["version"] for v in before["versions"]] == ["v2", "v1"]

        prog = await cancel_on_first_progress(s, "restore_version", {"path": "video.bin", "version": "v1"})
        assert prog.steps[0][0] == 0 and prog.steps[0][1] == float(len(big))

        # The server is healthy and nothing was written: same history, same file.
        stats = await ok(s, "get_stats", {})
        assert stats["files"] >= 1
        after = await ok(s, "get_version_history", {"path": "video.bin"})
        assert [v["version"] for v in after["versions"]] == ["v2", "v1"], after
        assert (node.folder / "video.bin").read_bytes() == b"replaced\n"
        assert not [p for p in node.folder.iterdir() if p.name.startswith(".sovryn-tmp-")]
        line = wait_audit(node, "restore_version")[-1]
        assert line["outcome"] == "cancelled", line

        # The same call, not cancelled, restores it as a new version.
        out = await ok(s, "restore_version", {"path": "video.bin", "version": "v1"})
        assert out["version"] == "v3"
        assert hashlib.sha256((node.folder / "video.bin").read_bytes()).digest() == hashlib.sha256(big).digest()

    run(node, body)


def test_cancelled_rescan_and_read_keep_the_server_healthy(node):
    big = os.urandom(16 * MIB)
    (node.folder / "big.bin").write_bytes(big)

    async def body(s):
        # A big read, cancelled mid-way.
        await cancel_on_first_progress(s, "read_file", {"path": "big.bin", "length": 8})
        line = wait_audit(node, "read_file")[-1]
        assert line["outcome"] == "cancelled", line
        r = await ok(s, "read_file", {"path": "big.bin", "offset": len(big) - 4})
        assert r["size"] == len(big)

        # A rescan of 3000 new files, cancelled after its first batch.
        bulk = node.folder / "bulk"
        for d in range(10):
            (bulk / f"d{d}").mkdir(parents=True)
            for i in range(300):
                (bulk / f"d{d}" / f"{i}.txt").write_text(f"bulk file {d}/{i}\n" * 20)
        await cancel_on_first_progress(s, "force_sync_path", {"path": "bulk"})
        line = wait_audit(node, "force_sync_path")[-1]
        assert line["outcome"] == "cancelled", line
        listed = await ok(s, "search_files", {"name": "*.txt", "path": "bulk", "limit": 200})
        tree = await ok(s, "directory_tree", {"path": "bulk", "max_entries": 100000})
        recorded = sum(len(d.get("children", [])) for d in tree["entries"])
        assert 0 < recorded < 3000, recorded
        # Every recorded file is whole (the rescan stops between files).
        for m in listed["matches"]:
            got = await ok(s, "read_file", {"path": m["path"]})
            assert got["content"] == (bulk.parent / m["path"]).read_text()

        # Rescanning again records the rest.
        out = await ok(s, "force_sync_path", {"path": "bulk"})
        assert out["added"] >= 3000 - recorded, (out["added"], recorded)
        tree = await ok(s, "directory_tree", {"path": "bulk", "max_entries": 100000})
        assert sum(len(d.get("children", [])) for d in tree["entries"]) == 3000

    run(node, body)
