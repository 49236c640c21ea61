#!/usr/bin/env python3
"""Sovryn vs Syncthing: two nodes on loopback, the same generated workloads.

    python3 bench/sync_bench.py --sovryn target/release/sovryn [--big-mib 1024] [--only sovryn|syncthing]

Each workload gets fresh directories (ext4 without a journal creates files far
slower for minutes after mass deletes); everything is deleted only at the end.
Each workload's data is written and synced outside A's folder first, then
moved in with one rename (a directory of small files, or the large file) at
the moment the clock starts, when Syncthing is also asked to rescan (its
watcher would wait a second); Sovryn learns of it from its watcher. So both
learn of the data at the same moment, and neither sees it half-written.
Times run from that moment until B's tree holds every file under its real
name with the right size (both tools write to temp names and rename, so a
present name is a complete file); contents are then checked.
Wire bytes: each tool's own connection counters (Syncthing's REST
connection totals; Sovryn's per-peer QUIC byte counts from
`sovryn peers list --json`), in and out, on node A.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import syncthing  # noqa: E402


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class SovrynPair:
    def __init__(self, binary, base):
        self.bin = os.path.abspath(binary)
        self.base = base
        self.nodes = []
        for name in ("a", "b"):
            home = os.path.join(base, f"sv-{name}-home")
            folder = os.path.join(base, f"sv-{name}-folder")
            self.nodes.append({"name": name, "home": home, "folder": folder,
                               "port": free_port(socket.SOCK_DGRAM), "mcp": free_port()})
        a, b = self.nodes
        self.sv(a, "init", "--storage-path", a["folder"], "--node-id", "a", "--listen", f"127.0.0.1:{a['port']}",
                "--mcp-port", str(a["mcp"]), "--no-passphrase")
        key = os.path.join(base, "folder.key")
        with open(key, "w") as f:
            f.write(self.sv(a, "folder-key"))
        self.sv(b, "init", "--storage-path", b["folder"], "--node-id", "b", "--listen", f"127.0.0.1:{b['port']}",
                "--mcp-port", str(b["mcp"]), "--no-passphrase", "--folder-key-file", key)
        for n in self.nodes:
            n["id"] = self.sv(n, "id").strip()
            self.sv(n, "config", "set", "sync.mdns", "false")  # loopback only: no LAN multicast
        self.sv(a, "peers", "add", b["id"], "--address", f"127.0.0.1:{b['port']}", "--name", "b")
        self.sv(b, "peers", "add", a["id"], "--address", f"127.0.0.1:{a['port']}", "--name", "a")
        self.procs = []
        for n in self.nodes:
            log = open(os.path.join(base, f"sv-{n['name']}.log"), "w")
            self.procs.append(subprocess.Popen([self.bin, "--home", n["home"], "up"], stdout=log, stderr=log))
        time.sleep(1.5)
        self.a_folder, self.b_folder = a["folder"], b["folder"]

    def sv(self, node, *args):
        out = subprocess.run([self.bin, "--home", node["home"], *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"sovryn {' '.join(args)}: {out.stderr}")
        return out.stdout

    def wire_bytes(self):
        # The node's own count of QUIC bytes exchanged with its peer (UDP
        # payloads both ways: data, headers, acks, retransmissions), like
        # Syncthing's connection counters; not the loopback interface.
        out = json.loads(self.sv(self.nodes[0], "peers", "list", "--json"))
        total = 0
        for p in out["peers"]:
            st = p.get("status") or {}
            total += st.get("bytes_sent", 0) + st.get("bytes_received", 0)
        return total

    def started(self):
        """Nothing to ask: the watcher sees the rename."""

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


class SyncthingPair:
    def __init__(self, base):
        self.a, self.b = syncthing.pair(base)
        self.a_folder, self.b_folder = self.a.folder, self.b.folder

    def wire_bytes(self):
        return self.a.wire_bytes()

    def started(self):
        self.a.rescan()

    def stop(self):
        self.a.stop()
        self.b.stop()


def tree(folder):
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".st")]
        for f in files:
            if f.startswith(".syncthing.") or f.startswith(".sovryn-tmp-") or f.startswith("~syncthing~") or f == ".stignore":
                continue
            p = os.path.join(root, f)
            try:
                out[os.path.relpath(p, folder)] = os.path.getsize(p)
            except FileNotFoundError:
                pass
    return out


def wait_converged(pair, expected, timeout):
    """Waits until every expected path is on B under its real name with its
    size. Only the expected paths are looked at (stat, no tree walk): a walk
    of B's whole folder takes ~80 ms once it holds 10,000 files and would
    swamp the latency probes. Each poll stops at the first path still
    missing, so polling 10,000 paths costs next to nothing while the tool
    works (a poll of every pending path took tens of milliseconds of the
    two cores the tools share). Same check for both tools."""
    start = time.time()
    pending = dict(expected)
    while time.time() - start < timeout:
        for rel in list(pending):
            try:
                if os.path.getsize(os.path.join(pair.b_folder, rel)) != pending[rel]:
                    break
            except OSError:
                break
            del pending[rel]
        if not pending:
            return time.time()
        time.sleep(0.002)
    raise TimeoutError(f"B did not converge within {timeout}s ({len(expected) - len(pending)}/{len(expected)} files)")


def digest(path):
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def check_same(pair, rels):
    for r in rels:
        if digest(os.path.join(pair.a_folder, r)) != digest(os.path.join(pair.b_folder, r)):
            raise AssertionError(f"{r} differs between A and B")


def write_files(staging, sub, count, size, seed):
    """Writes `count` files of `size` bytes under `staging/sub`, outside the
    folder, to be moved in whole (see `move_in`)."""
    rnd = random.Random(seed)
    expected = {}
    for i in range(count):
        rel = os.path.join(sub, f"d{i % 100:02d}", f"f{i:05d}.bin")
        p = os.path.join(staging, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(rnd.randbytes(size))
        expected[rel] = size
    return expected


def move_in(pair, src, rel):
    """Starts a workload: moves `src` to `rel` in A's folder with one
    rename and tells both tools at once. Returns the start time."""
    t0 = time.time()
    os.rename(src, os.path.join(pair.a_folder, rel))
    pair.started()
    return t0


def run_tool(name, make_pair, args, results):
    base = tempfile.mkdtemp(prefix=f"bench-{name}-", dir=args.workdir)
    pair = make_pair(base)
    try:
        r = {}
        # 10,000 x 1 KiB
        staging = os.path.join(base, "staging")
        exp = write_files(staging, "small", 10_000, 1024, 1)
        settle(args)
        t0 = move_in(pair, os.path.join(staging, "small"), "small")
        r["small"] = wait_converged(pair, exp, args.timeout) - t0
        check_same(pair, list(exp)[::500])
        # 1,000 x 100 KiB
        exp = write_files(staging, "medium", 1_000, 100 * 1024, 2)
        settle(args)
        t0 = move_in(pair, os.path.join(staging, "medium"), "medium")
        r["medium"] = wait_converged(pair, exp, args.timeout) - t0
        check_same(pair, list(exp)[::100])
        # One large file, written elsewhere and moved in so it appears whole.
        size = args.big_mib << 20
        staging = os.path.join(base, "staging.bin")
        with open(staging, "wb") as f:
            rnd = random.Random(3)
            for _ in range(args.big_mib):
                f.write(rnd.randbytes(1 << 20))
            # On disk before the clock starts, so neither tool pays for
            # writing the benchmark's own input.
            f.flush()
            os.fsync(f.fileno())
        settle(args)
        t0 = move_in(pair, staging, "big.bin")
        r["big"] = wait_converged(pair, {"big.bin": size}, args.timeout) - t0
        r["big_mibs"] = args.big_mib / r["big"]
        check_same(pair, ["big.bin"])
        # One byte inserted in the middle: rewrite to a temp name and rename over.
        time.sleep(2)
        src = os.path.join(pair.a_folder, "big.bin")
        tmp = os.path.join(base, "big.new")
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            fo.write(fi.read(size // 2))
            fo.write(b"!")
            shutil.copyfileobj(fi, fo, 1 << 20)
            fo.flush()
            os.fsync(fo.fileno())
        settle(args)
        w0 = pair.wire_bytes()
        t0 = move_in(pair, tmp, "big.bin")
        r["insert"] = wait_converged(pair, {"big.bin": size + 1}, args.timeout) - t0
        check_same(pair, ["big.bin"])
        time.sleep(0.5)
        r["insert_wire"] = pair.wire_bytes() - w0
        # Change-to-peer latency.
        lat = []
        for i in range(args.latency_samples):
            rel = f"lat/l{i:03d}.txt"
            p = os.path.join(pair.a_folder, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            body = f"latency probe {i}\n".encode()
            t0 = time.time()
            with open(p, "wb") as f:
                f.write(body)
            wait_converged(pair, {rel: len(body)}, 30)
            lat.append(time.time() - t0)
            time.sleep(0.05)
        lat.sort()
        r["lat_p50"] = statistics.median(lat)
        r["lat_p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        results[name] = r
    finally:
        pair.stop()
        args.made.append(base)


def settle(args):
    """Before a clock starts: the disk in step and, with --drop-caches
    (root), the page cache emptied, so no workload pays for reclaiming the
    cache the one before it filled (a second GiB written took 1.7x as long
    as the first on this machine)."""
    os.sync()
    if args.drop_caches:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sovryn", default="target/release/sovryn")
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--latency-samples", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--only", choices=["sovryn", "syncthing"])
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--pause", type=float, default=5,
                    help="seconds between the two tools' runs")
    ap.add_argument("--sovryn-first", action="store_true",
                    help="run Sovryn's workloads before Syncthing's")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--drop-caches", action="store_true",
                    help="empty the page cache before each workload (needs root)")
    args = ap.parse_args()
    results = {}
    if args.only:
        args.made = []
        try:
            make = SyncthingPair if args.only == "syncthing" else (
                lambda base: SovrynPair(args.sovryn, base))
            run_tool(args.only, make, args, results)
        finally:
            if not args.keep:
                for base in args.made:
                    shutil.rmtree(base, ignore_errors=True)
    else:
        # Each tool runs in a Python process of its own (the harness's own
        # state after one tool's run slowed the next tool's small files by
        # 0.3-0.7 s), in one work directory deleted only after both ran (a
        # tool running after another's mass delete pays for it in every
        # file it creates).
        work = args.workdir or tempfile.mkdtemp(prefix="sync-bench-")
        order = ["sovryn", "syncthing"] if args.sovryn_first else ["syncthing", "sovryn"]
        passed = [a for a in sys.argv[1:] if a not in ("--json", "--keep", "--sovryn-first")]
        try:
            for i, name in enumerate(order):
                if i > 0:
                    os.sync()
                    time.sleep(args.pause)
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), *passed,
                     "--only", name, "--json", "--keep", "--workdir", work],
                    check=True, stdout=subprocess.PIPE, text=True).stdout
                results.update(json.loads(out))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rows = [
        ("10,000 x 1 KiB files (s)", "small", "{:.2f}"),
        ("1,000 x 100 KiB files (s)", "medium", "{:.2f}"),
        (f"one {args.big_mib} MiB file (s)", "big", "{:.2f}"),
        ("  throughput (MiB/s)", "big_mibs", "{:.0f}"),
        ("1 byte inserted mid-file (s)", "insert", "{:.2f}"),
        ("  bytes on the wire", "insert_wire", "{:,}"),
        ("change-to-peer latency p50 (ms)", "lat_p50", "{:.0f}"),
        ("change-to-peer latency p99 (ms)", "lat_p99", "{:.0f}"),
    ]
    tools = list(results)
    print("| workload | " + " | ".join(tools) + " |")
    print("| --- | " + " | ".join("---" for _ in tools) + " |")
    for label, key, fmt in rows:
        cells = []
        for t in tools:
            v = results[t][key]
            if key.startswith("lat"):
                v *= 1000
            cells.append(fmt.format(v))
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
