"""Helpers shared by the Python test suites (tests/mcp, tests/mcp_daemon).

pytest puts `tests/` on the import path because `tests/conftest.py` exists.
"""

import http.client
import json
import os
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sovryn_bin() -> str:
    """The binary under test: $SOVRYN_BIN (relative to the repo root) or target/debug/sovryn."""
    b = os.environ.get("SOVRYN_BIN", str(ROOT / "target" / "debug" / "sovryn"))
    b = str((ROOT / b).resolve()) if not os.path.isabs(b) else b
    if not os.path.exists(b):
        pytest.skip(f"sovryn binary not found at {b}; run cargo build and set SOVRYN_BIN")
    return b


def free_port(kind=socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free when asked (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listing(result) -> dict:
    """`list_directory`'s text answer, parsed: path, total, next_cursor and
    entries ({kind, size, version, modified, name}), as a client would."""
    assert not result.is_error, result.content
    head, columns, *rows = result.content[0].text.split("\n")
    assert columns.split("\t") == ["kind", "size", "version", "modified", "name"], columns
    m = re.fullmatch(r"(.*): (\d+) entries(?: \(more: cursor (\S+)\))?", head)
    assert m, head
    path, total, cursor = m.group(1), int(m.group(2)), m.group(3)
    entries = []
    for row in rows:
        kind, size, version, modified, name = row.split("\t")
        entries.append({"kind": kind, "size": int(size), "version": version,
                        "modified": modified, "name": name})
    return {"path": "" if path == "/" else path, "total": total, "next_cursor": cursor,
            "entries": entries}


class Node:
    """A node made with `sovryn init` in `tmp`, started with `up()` (MCP and
    the file API on `mcp_port`)."""

    def __init__(self, tmp: Path, name: str, folder_key: Path | None = None):
        self.bin = sovryn_bin()
        self.name = name
        self.home = tmp / f"{name}-home"
        self.folder = tmp / f"{name}-folder"
        self.port = free_port(socket.SOCK_DGRAM)
        self.mcp_port = free_port()
        args = ["init", "--storage-path", str(self.folder), "--node-id", name, "--no-passphrase",
                "--listen", f"127.0.0.1:{self.port}", "--mcp-port", str(self.mcp_port)]
        if folder_key:
            args += ["--folder-key-file", str(folder_key)]
        self.run(*args)
        self.id = self.run("id").stdout.strip()
        self.proc = None
        self.lines: list[str] = []

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.bin, "--home", str(self.home), *args],
                              check=True, capture_output=True, text=True, timeout=60)

    def up(self) -> None:
        self.proc = subprocess.Popen([self.bin, "--home", str(self.home), "up"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.strip() == "ready":
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(30):
            self.proc.kill()
            log = self.home / "sovryn.log"
            tail = log.read_text()[-4000:] if log.exists() else ""
            raise RuntimeError(f"{self.name} did not start: {self.lines} {self.proc.stderr.read()}\nlog:\n{tail}")

    def mcp_url(self) -> str | None:
        for line in self.lines:
            if line.startswith("MCP listening on "):
                return line.split()[-1]
        return None

    def stop(self) -> int | None:
        if not self.proc:
            return None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


def call(node, method, path, token=None, body=None, headers=None):
    """(status, headers, body bytes) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", node.mcp_port, timeout=120)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def linked_pair(tmp: Path) -> tuple:
    """Two nodes of one folder, alpha and beta, each a peer of the other
    (not started; no LAN announcements)."""
    a = Node(tmp, "alpha")
    key = tmp / "folder.key"
    key.write_text(a.run("folder-key").stdout)
    b = Node(tmp, "beta", key)
    a.run("peers", "add", b.id, "--address", f"127.0.0.1:{b.port}", "--name", "beta")
    b.run("peers", "add", a.id, "--address", f"127.0.0.1:{a.port}", "--name", "alpha")
    for n in (a, b):
        n.run("config", "set", "sync.mdns", "false")
    return a, b


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
