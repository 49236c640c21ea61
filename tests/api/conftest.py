"""Fixtures of the file API's tests."""

from pathlib import Path

import pytest

from sovryn_support import Node


@pytest.fixture
def solo(tmp_path: Path):
    """One running node (no peers, no LAN announcements)."""
    n = Node(tmp_path, "solo")
    n.run("config", "set", "sync.mdns", "false")
    n.up()
    yield n
    n.stop()
