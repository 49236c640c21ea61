"""Several folders on one node (issue 10): alpha shares `work` with beta and
`photos` with gamma, both on its one endpoint. Each folder converges with
its own peers only: beta never receives anything of `photos`, gamma nothing
of `work`, and an MCP token of one folder opens nothing of the other.
Sharing, adding and removing a folder take effect on the running node."""

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from sovryn_support import free_port, listing
from test_daemon import Node, mcp_session


def wait_for(what, check, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def try_run(node: Node, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([node.bin, "--home", str(node.home), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def mcp_status(url: str, token: str) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"}}}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_two_folders_shared_with_different_peers(tmp_path: Path):
    a = Node(tmp_path, "alpha")
    a.run("config", "set", "sync.mdns", "false")
    a.run("config", "set", "mcp.enabled", "false")
    work, photos = tmp_path / "alpha-work", tmp_path / "alpha-photos"
    a.run("folders", "add", "work", "--path", str(work))
    a.run("folders", "add", "photos", "--path", str(photos))
    ports = {}
    for f in ("work", "photos"):
        ports[f] = free_port()
        a.run("-F", f, "config", "set", "mcp.enabled", "true")
        a.run("-F", f, "config", "set", "mcp.port", str(ports[f]))
    keys = {}
    for f in ("work", "photos"):
        keys[f] = tmp_path / f"{f}.key"
        keys[f].write_text(a.run("-F", f, "folder-key").stdout)
    assert keys["work"].read_text() != keys["photos"].read_text()

    # Outside every storage path, a folder-scoped command must be told which.
    r = try_run(a, "ls", cwd=tmp_path)
    assert r.returncode != 0 and "default, photos, work" in r.stderr, r.stderr
    # Inside one, it is that one.
    (work / "plan.md").write_text("work plan\n")
    r = try_run(a, "add", "plan.md", cwd=work)
    assert r.returncode == 0, r.stderr
    r = try_run(a, "ls", cwd=work)
    assert r.returncode == 0 and "plan.md" in r.stdout, r

    b = Node(tmp_path, "beta", keys["work"])
    c = Node(tmp_path, "gamma", keys["photos"])
    for n in (b, c):
        n.run("config", "set", "sync.mdns", "false")
        n.run("config", "set", "mcp.enabled", "false")
        n.run("peers", "add", a.id, "--address", f"127.0.0.1:{a.port}", "--name", "alpha")
    a.run("-F", "work", "peers", "add", b.id, "--address", f"127.0.0.1:{b.port}", "--name", "beta")
    work_token = a.run("-F", "work", "mcp", "tokens", "create", "--name", "w",
                       "--capabilities", "read").stdout.strip()
    photos_token = a.run("-F", "photos", "mcp", "tokens", "create", "--name", "p",
                         "--capabilities", "read").stdout.strip()
    try:
        a.up()
        assert f"folder work: {work}" in a.lines and f"folder photos: {photos}" in a.lines, a.lines
        b.up()
        c.up()
        # photos is shared with gamma while alpha runs: no restart.
        a.run("folders", "share", "photos", c.id, "--address", f"127.0.0.1:{c.port}")
        listed = json.loads(a.run("--json", "folders", "list").stdout)
        assert listed["node_running"] is True
        by_name = {f["name"]: f for f in listed["folders"]}
        assert set(by_name) == {"default", "work", "photos"}
        assert all(f["running"] for f in by_name.values()), listed
        assert [p["id"] for p in by_name["photos"]["peers"]] == [c.id]
        assert [p["name"] for p in by_name["work"]["peers"]] == ["beta"]

        (photos / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
        (work / "notes.md").write_text("meeting notes\n")
        (b.folder / "from-beta.md").write_text("beta wrote this\n")
        (c.folder / "from-gamma.jpg").write_bytes(b"\xff\xd8 a dog")
        wait_for("work on beta", lambda: {"plan.md", "notes.md"} <= files(b.folder))
        wait_for("beta's file on alpha", lambda: (work / "from-beta.md").exists())
        wait_for("photos on gamma", lambda: "cat.jpg" in files(c.folder))
        wait_for("gamma's file on alpha", lambda: (photos / "from-gamma.jpg").exists())
        assert (work / "from-beta.md").read_text() == "beta wrote this\n"

        # Each folder's status shows its own peer, connected.
        st = json.loads(a.run("-F", "photos", "--json", "status").stdout)
        assert [p["id"] for p in st["peers"]] == [c.id], st
        # Outside every folder, one object with each folder's status.
        every = json.loads(try_run(a, "--json", "status", cwd=tmp_path).stdout)
        assert [f["folder"] for f in every["folders"]] == ["default", "photos", "work"], every
        assert [p["id"] for p in every["folders"][2]["peers"]] == [b.id], every

        # Nothing crossed between folders, in either direction.
        time.sleep(1.0)
        assert files(b.folder) == {"plan.md", "notes.md", "from-beta.md"}, files(b.folder)
        assert files(c.folder) == {"cat.jpg", "from-gamma.jpg"}, files(c.folder)
        assert files(a.folder) == set(), files(a.folder)
        assert "cat.jpg" not in b.run("ls").stdout

        # An MCP token of one folder opens nothing of the other.
        work_url = f"http://127.0.0.1:{ports['work']}/mcp"
        photos_url = f"http://127.0.0.1:{ports['photos']}/mcp"
        assert mcp_status(photos_url, work_token) == 401
        assert mcp_status(work_url, photos_token) == 401

        async def root_listing(s):
            return json.dumps(listing(await s.call_tool("list_directory", {"path": ""})))

        seen = mcp_session(work_url, work_token, root_listing)
        assert "notes.md" in seen and "cat.jpg" not in seen and "from-gamma" not in seen, seen
        seen = mcp_session(photos_url, photos_token, root_listing)
        assert "cat.jpg" in seen and "notes.md" not in seen, seen

        # A folder added while the node runs is served at once; removed, it stops.
        late = tmp_path / "alpha-late"
        a.run("folders", "add", "late", "--path", str(late))
        listed = json.loads(a.run("--json", "folders", "list").stdout)
        assert {f["name"]: f["running"] for f in listed["folders"]}["late"] is True, listed
        (late / "x.txt").write_text("late\n")
        wait_for("late folder scanned", lambda: "x.txt" in try_run(a, "-F", "late", "ls").stdout)
        out = a.run("folders", "remove", "late").stdout
        assert "removed-folders" in out, out
        listed = json.loads(a.run("--json", "folders", "list").stdout)
        assert "late" not in {f["name"] for f in listed["folders"]}
        assert (late / "x.txt").read_text() == "late\n"
        # The node still syncs its other folders.
        (work / "after.md").write_text("still syncing\n")
        wait_for("work still syncs", lambda: (b.folder / "after.md").exists())
    finally:
        for n in (a, b, c):
            n.stop()
