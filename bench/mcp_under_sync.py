#!/usr/bin/env python3
"""MCP `read_file` latency on a node while a large file syncs into its folder.

    python3 bench/mcp_under_sync.py --sovryn target/release/sovryn [--big-mib 1024] [--rate 50]

Two nodes on loopback (as in `sync_bench.py`). B holds a 4 KiB file; an MCP
client (the Python `mcp` SDK over Streamable HTTP, one session, a read-only
token) reads it on B at `--rate` calls per second, open loop: each call is
sent at its slot, and its latency counts from that slot, so a stall shows in
every call it delays. Phase 1 measures the idle node; in phase 2 a 1 GiB
file is renamed into A's folder at t0 and the reads go on until B holds it
under its name with its size (the whole pull, the write of the file and its
commit). Prints p50/p99/max per phase.
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sync_bench import SovrynPair  # noqa: E402

try:
    from mcp.shared._httpx_utils import create_mcp_http_client
except ImportError:  # newer SDK layouts
    import httpx2

    def create_mcp_http_client(headers=None):
        return httpx2.AsyncClient(headers=headers, timeout=60)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def summary(xs):
    return {
        "calls": len(xs),
        "p50_ms": round(statistics.median(xs) * 1000, 2),
        "p99_ms": round(pct(xs, 0.99) * 1000, 2),
        "max_ms": round(max(xs) * 1000, 2),
    }


def call_of(tool):
    """The probing call: a 4 KiB read of one file, or a 4 KiB write (a new
    version each time) of one of 20 files."""
    if tool == "read":
        return lambda i: ("read_file", {"path": "probe.txt"})
    return lambda i: ("write_file", {"path": f"probe-writes/w{i % 20}.txt",
                                     "content": f"{i:08}" + "w" * 4088})


async def probe(session, rate, until, call):
    """Calls at `rate` per second until `until()` holds; latencies in s."""
    period = 1.0 / rate
    lat = []
    slot = time.perf_counter()
    while not until():
        now = time.perf_counter()
        if now < slot:
            await asyncio.sleep(slot - now)
        tool, tool_args = call(len(lat))
        r = await session.call_tool(tool, tool_args)
        if getattr(r, "is_error", None) or getattr(r, "isError", None):
            raise RuntimeError(f"{tool} failed: {r.content}")
        lat.append(time.perf_counter() - slot)
        slot += period
    return lat


async def run(args, pair, big_src, size):
    b = pair.nodes[1]
    caps = "read" if args.tool == "read" else "read,write"
    token = pair.sv(b, "mcp", "tokens", "create", "--name", "bench", "--capabilities", caps).strip()
    call = call_of(args.tool)
    url = f"http://127.0.0.1:{b['mcp']}/mcp"
    headers = {"Authorization": f"Bearer {token}"}
    async with create_mcp_http_client(headers=headers) as client:
        async with streamable_http_client(url, http_client=client) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                await s.initialize()
                idle_end = time.perf_counter() + args.idle_seconds
                idle = await probe(s, args.rate, lambda: time.perf_counter() > idle_end, call)
                target = os.path.join(pair.b_folder, "big.bin")

                def arrived():
                    try:
                        return os.path.getsize(target) == size
                    except FileNotFoundError:
                        return False

                t0 = time.perf_counter()
                os.rename(big_src, os.path.join(pair.a_folder, "big.bin"))
                loaded = await probe(s, args.rate, arrived, call)
                secs = time.perf_counter() - t0
    return {"idle": summary(idle), "during_sync": summary(loaded), "sync_seconds": round(secs, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sovryn", default="target/release/sovryn")
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--idle-seconds", type=float, default=10)
    ap.add_argument("--tool", choices=["read", "write"], default="read",
                    help="probe with 4 KiB reads (default) or 4 KiB writes")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="sovryn-mcpload-", dir=args.workdir)
    pair = SovrynPair(args.sovryn, base)
    try:
        with open(os.path.join(pair.b_folder, "probe.txt"), "wb") as f:
            f.write(os.urandom(2048).hex().encode())
        big_src = os.path.join(base, "big.bin")
        size = args.big_mib * 1024 * 1024
        with open(big_src, "wb") as f:
            for _ in range(args.big_mib):
                f.write(os.urandom(1024 * 1024))
        # The probe file recorded (the watcher) before the clock starts.
        deadline = time.time() + 30
        while time.time() < deadline:
            out = subprocess.run([pair.bin, "--home", pair.nodes[1]["home"], "versions", "probe.txt"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                break
            time.sleep(0.2)
        res = asyncio.run(run(args, pair, big_src, size))
        res.update({"tool": args.tool, "big_mib": args.big_mib, "rate_per_s": args.rate,
                    "date": time.strftime("%Y-%m-%d")})
        print(json.dumps(res, indent=2))
    finally:
        pair.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
