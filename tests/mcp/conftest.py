"""Shared fixtures: a fresh Sovryn node (home + folder) and the binary under test."""

import subprocess
from pathlib import Path

import pytest

from sovryn_support import sovryn_bin


class Node:
    def __init__(self, tmp: Path):
        self.bin = sovryn_bin()
        self.home = tmp / "home"
        self.folder = tmp / "folder"
        self.run("init", "--storage-path", str(self.folder), "--no-passphrase", "--node-id", "test-node")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.bin, "--home", str(self.home), *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def token(self, name: str, caps: str, *paths: str) -> str:
        extra = [a for p in paths for a in ("--paths", p)]
        out = self.run("mcp", "tokens", "create", "--name", name, "--capabilities", caps, *extra)
        return out.stdout.strip()

    def audit(self) -> list[dict]:
        import json

        p = self.home / "audit.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)
