"""The file API with a large file: a 1 GiB upload (time, and the node's
peak RSS above idle) and its download, against an anchor in the same run:
copying the same bytes into a file on the same disk and syncing it (what
any upload must at least do).

    python3 bench/api.py [SOVRYN_BIN] [MIB]
"""

import hashlib
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("SOVRYN_BIN", sys.argv[1] if len(sys.argv) > 1 else "target/release/sovryn")
from sovryn_support import Node, rss_kib  # noqa: E402

MIB = int(sys.argv[2]) if len(sys.argv) > 2 else 1024


def main():
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="sovryn-api-bench."))
    data = work / "data.bin"
    with open(data, "wb") as f:
        for _ in range(MIB):
            f.write(os.urandom(1 << 20))
    subprocess.run(["sync"], check=True)
    # The anchor: the same bytes into a file on the same disk, synced.
    t0 = time.time()
    with open(data, "rb") as src, open(work / "copy.bin", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    anchor = time.time() - t0
    (work / "copy.bin").unlink()

    n = Node(work, "bench")
    n.run("config", "set", "sync.mdns", "false")
    token = n.run("mcp", "tokens", "create", "--name", "b", "--capabilities", "read,write").stdout.strip()
    n.up()
    try:
        time.sleep(1)
        pid = n.proc.pid
        idle = rss_kib(pid)
        peak = [idle]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(pid))
                time.sleep(0.01)

        threading.Thread(target=sample, daemon=True).start()
        conn = http.client.HTTPConnection("127.0.0.1", n.mcp_port, timeout=900)
        t0 = time.time()
        conn.putrequest("PUT", "/api/v1/files/big.bin")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Length", str(MIB << 20))
        conn.endheaders()
        with open(data, "rb") as src:
            while chunk := src.read(1 << 20):
                conn.send(chunk)
        r = conn.getresponse()
        r.read()
        up = time.time() - t0
        done.set()
        assert r.status == 201, r.status
        h = hashlib.sha256()
        t0 = time.time()
        conn.request("GET", "/api/v1/files/big.bin", headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        while chunk := r.read(1 << 20):
            h.update(chunk)
        down = time.time() - t0
        want = hashlib.sha256(data.read_bytes()).hexdigest()
        assert h.hexdigest() == want, "the download differs"
        print(f"{MIB} MiB: upload {up:.2f} s ({MIB / up:.0f} MiB/s), RSS {idle // 1024} MiB idle, "
              f"+{(peak[0] - idle) // 1024} MiB at peak; download {down:.2f} s ({MIB / down:.0f} MiB/s); "
              f"anchor (copy + fsync on the same disk) {anchor:.2f} s ({MIB / anchor:.0f} MiB/s)")
    finally:
        n.stop()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
