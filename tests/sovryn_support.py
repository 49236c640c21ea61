"""Helpers shared by the Python test suites (tests/mcp, tests/mcp_daemon).

pytest puts `tests/` on the import path because `tests/conftest.py` exists.
"""

import os
import re
import socket
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
