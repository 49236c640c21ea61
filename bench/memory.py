#!/usr/bin/env python3
"""Daemon memory, index size and an unchanged rescan with many files indexed
(brief target: < 150 MB RSS at 100,000; issue 11: at 1,000,000 files RSS
< 500 MB, index < 1 KB per file, unchanged rescan < 15 s).

    python3 bench/memory.py --sovryn target/release/sovryn [--files 100000]

Creates FILES small text files in 1,000 directories, records them with
`sovryn add`, starts `sovryn up` (watcher on every directory, MCP listener,
sync endpoint, no peers), waits until it is ready and idle, and prints the
daemon's resident set size (VmRSS and VmHWM from /proc).
"""

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time

from sync_bench import free_port


def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sovryn", required=True)
    ap.add_argument("--files", type=int, default=100_000)
    args = ap.parse_args()
    binary = os.path.abspath(args.sovryn)
    base = tempfile.mkdtemp(prefix="sovryn-mem-")
    home, folder = os.path.join(base, "home"), os.path.join(base, "folder")
    try:
        for i in range(args.files):
            d = os.path.join(folder, f"d{i % 1000:03}")
            if i < 1000:
                os.makedirs(d)
            with open(os.path.join(d, f"f{i}.txt"), "w") as f:
                f.write(f"file {i}: some words to index, number {i * 7919}\n")

        def sv(*a):
            subprocess.run([binary, "--home", home, *a], check=True, capture_output=True)

        sv("init", "--storage-path", folder, "--node-id", "mem", "--no-passphrase",
           "--listen", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
           "--mcp-port", str(free_port()))
        t0 = time.time()
        sv("add", folder)
        added = time.time() - t0
        p = subprocess.Popen([binary, "--home", home, "up"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        for line in p.stdout:
            if line.strip() == "ready":
                break
        time.sleep(5)  # the startup scan and watcher registration settle
        r = rss_kib(p.pid)
        # A rescan of the unchanged tree, done by the running node.
        t0 = time.time()
        sv("scan")
        rescan = time.time() - t0
        r2 = rss_kib(p.pid)
        p.terminate()
        p.wait(15)
        index = sum(os.path.getsize(os.path.join(home, n)) for n in os.listdir(home)
                    if n.startswith("index.db"))
        print(f"files indexed: {args.files:,} (sovryn add: {added:.1f} s)")
        print(f"daemon RSS: {r['VmRSS'] / 1024:.1f} MiB, peak {r['VmHWM'] / 1024:.1f} MiB;"
              f" after a rescan {r2['VmRSS'] / 1024:.1f} MiB, peak {r2['VmHWM'] / 1024:.1f} MiB")
        print(f"unchanged rescan through the node: {rescan:.2f} s")
        print(f"index: {index / 2**20:.1f} MiB = {index / args.files:.0f} bytes per file"
              " (index.db and its WAL; full-text words included)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
