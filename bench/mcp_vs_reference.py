#!/usr/bin/env python3
"""Sovryn's MCP server against the reference MCP filesystem server, through
the same client (the Python `mcp` SDK over stdio), on the same tree.

    python3 bench/mcp_vs_reference.py --sovryn target/release/sovryn [--runs 50]

The tree is made first, outside any server: a 4 KiB text file, a directory
of 1,000 files and 10,000 more files in 100 directories (one of them named
`needle-7777.txt`). Sovryn's node is initialised on it and scanned (its
index is part of its setup), then both servers start and, one session each,
answer the same calls in turn:

* read 4 KiB: Sovryn `read_file`, the reference `read_text_file`;
* list 1,000: `list_directory` of the 1,000-entry directory (all of it;
  both answer in text, one line per entry);
* write 4 KiB: `write_file` of a new file (Sovryn's is synced to disk and
  recorded as a version; the reference's is a plain `writeFile`);
* find by name: Sovryn `search_files` with `name`, the reference
  `search_files` with `pattern`, for `needle-7777.txt` among 11,000 files.

Prints median and p90 per call and the ratio (reference median / Sovryn
median: above 1 means Sovryn is faster), after a `ping` through the same
client and pipe: what no server can go below. Before each server starts,
dirty pages are written back (`sync`), so neither inherits the other's
writeback. The reference server comes from
npm (`@modelcontextprotocol/server-filesystem`, pinned) into
~/.cache/sovryn-bench.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

REFERENCE = "@modelcontextprotocol/server-filesystem"
REFERENCE_VERSION = "2026.8.31"


def reference_server() -> list[str]:
    prefix = Path.home() / ".cache" / "sovryn-bench" / "server-filesystem"
    entry = prefix / "node_modules" / REFERENCE / "dist" / "index.js"
    if not entry.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix),
                        "node@22.23.3", f"{REFERENCE}@{REFERENCE_VERSION}"], check=True)
    return [str(prefix / "node_modules" / ".bin" / "node"), str(entry)]


def make_tree(root: Path) -> None:
    text = ("All work and no play makes a dull day. " * 120)[:4096]
    (root / "notes.md").write_text(text)
    big = root / "big"
    big.mkdir()
    for i in range(1000):
        (big / f"file-{i:04}.txt").write_text(f"entry {i}\n")
    for d in range(100):
        sub = root / "tree" / f"d{d:02}"
        sub.mkdir(parents=True)
        for i in range(100):
            n = d * 100 + i
            name = "needle-7777.txt" if n == 7777 else f"f-{n:05}.txt"
            (sub / name).write_text(f"{n}\n")


async def timed(session, tool, args, runs, check):
    times = []
    for i in range(runs):
        a = args(i) if callable(args) else args
        t0 = time.perf_counter()
        res = await session.call_tool(tool, a)
        times.append(time.perf_counter() - t0)
        assert not res.is_error, f"{tool}: {res.content}"
        check(res)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1]


def text_of(res) -> str:
    return "".join(getattr(c, "text", "") for c in res.content)


async def run_server(params, calls, runs):
    out = {}
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            # The floor: a ping through the same client and pipe, no tool.
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                await s.send_ping()
                times.append(time.perf_counter() - t0)
            times.sort()
            out["ping (the client's floor)"] = (statistics.median(times), times[int(len(times) * 0.9) - 1])
            for name, (tool, args, check, n) in calls.items():
                out[name] = await timed(s, tool, args, n or runs, check)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sovryn", required=True)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    sovryn = os.path.abspath(args.sovryn)
    ref = reference_server()
    work = Path(tempfile.mkdtemp(prefix="sovryn-mcp-bench-"))
    try:
        content = "x" * 4096
        results = {}
        for who in ("reference", "sovryn"):
            root = work / who / "tree"
            root.mkdir(parents=True)
            make_tree(root)
            home = work / who / "home"
            if who == "sovryn":
                env = {**os.environ, "SOVRYN_HOME": str(home)}
                subprocess.run([sovryn, "init", "--storage-path", str(root), "--no-passphrase",
                                "--listen", "127.0.0.1:0"], check=True, capture_output=True, env=env)
                subprocess.run([sovryn, "config", "set", "sync.mdns", "false"], check=True,
                               capture_output=True, env=env)
                subprocess.run([sovryn, "scan"], check=True, capture_output=True, env=env)
                params = StdioServerParameters(command=sovryn, args=["--home", str(home), "mcp", "serve", "--stdio"])
                calls = {
                    "read 4 KiB": ("read_file", {"path": "notes.md"},
                                   lambda r: len(text_of(r)) >= 4096 or None, 0),
                    "list 1,000": ("list_directory", {"path": "big", "limit": 1000},
                                   lambda r: text_of(r).count("\nfile\t") == 1000 or None, 0),
                    "write 4 KiB": ("write_file", lambda i: {"path": f"w/new-{i}.txt", "content": content},
                                    lambda r: None, 0),
                    "find by name": ("search_files", {"name": "needle-7777.txt"},
                                     lambda r: "needle-7777" in text_of(r) or None, 20),
                }
            else:
                params = StdioServerParameters(command=ref[0], args=[ref[1], str(root)])
                (root / "w").mkdir()
                calls = {
                    "read 4 KiB": ("read_text_file", {"path": str(root / "notes.md")},
                                   lambda r: len(text_of(r)) >= 4096 or None, 0),
                    "list 1,000": ("list_directory", {"path": str(root / "big")},
                                   lambda r: text_of(r).count("[FILE]") == 1000 or None, 0),
                    "write 4 KiB": ("write_file", lambda i: {"path": str(root / "w" / f"new-{i}.txt"),
                                                             "content": content},
                                    lambda r: None, 0),
                    "find by name": ("search_files", {"path": str(root), "pattern": "**/needle-7777.txt"},
                                     lambda r: "needle-7777" in text_of(r) or None, 20),
                }
            os.sync()
            results[who] = asyncio.run(run_server(params, calls, args.runs))
        print(f"MCP over stdio, same client, {time.strftime('%Y-%m-%d')}, medians of {args.runs} calls "
              f"(find: 20); {REFERENCE}@{REFERENCE_VERSION}")
        print(f"| call | reference | Sovryn | ratio |")
        print(f"| --- | --- | --- | --- |")
        for name in results["sovryn"]:
            rm, rp = results["reference"][name]
            sm, sp = results["sovryn"][name]
            print(f"| {name} | {rm * 1000:.2f} ms (p90 {rp * 1000:.2f}) | {sm * 1000:.2f} ms (p90 {sp * 1000:.2f}) "
                  f"| {rm / sm:.1f}× |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
