"""The sync tools (conflicts, peers, sync status, forced rescans) over stdio,
and their capability checks over HTTP."""

import tomllib

from conftest import Node
from test_http import Server, call_body, http, session
from test_stdio import ok, err, run

COPY = "docs/a.sync-conflict-20261121-123456-laptop.md"
SYNC_TOOLS = {
    "list_conflicts", "resolve_conflict", "get_peers", "add_peer", "remove_peer",
    "get_sync_status", "force_sync_path",
}


def other_id(tmp_path) -> str:
    return Node(tmp_path / "other").run("id").stdout.strip().split()[0]


def config_peers(node) -> list[dict]:
    return tomllib.loads((node.home / "config.toml").read_text()).get("peers", [])


def test_conflicts_are_listed_and_resolved(node):
    (node.folder / "docs").mkdir()
    (node.folder / "docs" / "a.md").write_text("mine\n")
    (node.folder / COPY).write_text("theirs\n")
    (node.folder / "b.sync-conflict-20261121-123456-laptop.txt").write_text("other\n")

    async def body(s):
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert SYNC_TOOLS <= set(tools)
        assert tools["list_conflicts"].annotations.read_only_hint is True
        assert tools["resolve_conflict"].annotations.destructive_hint is True
        assert tools["resolve_conflict"].output_schema is not None

        out = await ok(s, "list_conflicts", {})
        by_path = {c["path"]: c for c in out["conflicts"]}
        assert set(by_path) == {COPY, "b.sync-conflict-20261121-123456-laptop.txt"}
        c = by_path[COPY]
        assert c["original"] == "docs/a.md" and c["author"] == "laptop"
        assert c["time"] == "2026-11-21 12:34:56" and c["original_exists"] is True

        st = await ok(s, "get_sync_status", {})
        assert st["conflicts"] == 2

        # Naming the original works when it has exactly one copy.
        r = await ok(s, "resolve_conflict", {"path": "docs/a.md", "keep": "remote"})
        assert r["copy"] == COPY and r["original"] == "docs/a.md"
        assert set(r["changed"]) == {COPY, "docs/a.md"}
        assert (node.folder / "docs" / "a.md").read_text() == "theirs\n"
        assert not (node.folder / COPY).exists()
        h = await ok(s, "get_version_history", {"path": "docs/a.md"})
        assert h["versions"][0]["actor"] == "mcp:stdio"

        r = await ok(s, "resolve_conflict", {"path": "b.sync-conflict-20261121-123456-laptop.txt", "keep": "both"})
        assert r["renamed_to"] == "b.from-laptop.txt"
        assert (node.folder / "b.from-laptop.txt").read_text() == "other\n"

        assert (await ok(s, "list_conflicts", {}))["conflicts"] == []
        assert "not a conflict copy" in await err(s, "resolve_conflict", {"path": "docs/a.md", "keep": "local"})
        await err(s, "resolve_conflict", {"path": "docs/a.md", "keep": "sideways"})

    run(node, body)


def test_peers_are_added_listed_and_removed(node, tmp_path):
    peer_id = other_id(tmp_path)
    own_id = node.run("id").stdout.strip().split()[0]

    async def body(s):
        assert (await ok(s, "get_peers", {}))["peers"] == []
        a = await ok(s, "add_peer", {"endpoint_id": peer_id, "addresses": ["127.0.0.1:7777"],
                                     "name": "laptop", "paths": ["docs"]})
        assert a["updated"] is False and a["peer"]["id"] == peer_id
        peers = (await ok(s, "get_peers", {}))["peers"]
        assert peers == [{"id": peer_id, "name": "laptop", "addresses": ["127.0.0.1:7777"],
                          "read_only": False, "paths": ["docs"]}]
        assert config_peers(node)[0]["id"] == peer_id

        a = await ok(s, "add_peer", {"endpoint_id": peer_id, "addresses": [], "read_only": True})
        assert a["updated"] is True and a["peer"]["read_only"] is True
        assert (await ok(s, "get_sync_status", {}))["peers"] == 1

        assert "not an endpoint id" in await err(s, "add_peer", {"endpoint_id": "not-a-key", "addresses": []})
        assert "not an endpoint id" in await err(s, "add_peer", {"endpoint_id": "ab" * 31, "addresses": []})
        assert "HOST:PORT" in await err(s, "add_peer", {"endpoint_id": peer_id, "addresses": ["nowhere"]})
        assert "own" in await err(s, "add_peer", {"endpoint_id": own_id, "addresses": []})
        assert len((await ok(s, "get_peers", {}))["peers"]) == 1

        await ok(s, "add_peer", {"endpoint_id": peer_id, "addresses": [], "name": "laptop"})
        r = await ok(s, "remove_peer", {"endpoint_id_or_name": "laptop"})
        assert r == {"removed": [peer_id], "peers": 0}
        assert "no peer" in await err(s, "remove_peer", {"endpoint_id_or_name": "laptop"})
        assert (await ok(s, "get_peers", {}))["peers"] == []

    run(node, body)
    assert config_peers(node) == []


def test_sync_status_and_force_sync_path(node):
    async def body(s):
        st = await ok(s, "get_sync_status", {})
        assert st["paused"] is False and st["peers"] == 0 and st["conflicts"] == 0
        assert st["node_name"] == "test-node"
        (node.home / "paused").write_text("")
        st2 = await ok(s, "get_sync_status", {})
        assert st2["paused"] is True and st2["sequence"] == st["sequence"]

        # An edit made on disk after the server started is recorded on demand.
        (node.folder / "late").mkdir()
        (node.folder / "late" / "x.txt").write_text("new on disk\n")
        (node.folder / "elsewhere.txt").write_text("not scanned\n")
        f = await ok(s, "force_sync_path", {"path": "late"})
        assert f["path"] == "late" and f["added"] == 2
        assert set(f["changed"]) == {"late", "late/x.txt"}
        assert f["sequence"] > st["sequence"]
        h = await ok(s, "get_version_history", {"path": "late/x.txt"})
        assert h["versions"][0]["actor"] == "mcp:stdio"
        await err(s, "read_file", {"path": "elsewhere.txt"})
        again = await ok(s, "force_sync_path", {"path": "late"})
        assert again["changed"] == [] and again["added"] == 0
        await err(s, "force_sync_path", {"path": "../outside"})

    run(node, body)


def test_capabilities_and_scopes_over_http(node, tmp_path):
    (node.folder / "docs").mkdir()
    (node.folder / "docs" / "a.md").write_text("mine\n")
    (node.folder / COPY).write_text("theirs\n")
    (node.folder / "a.sync-conflict-20261121-123456-laptop.md").write_text("hidden\n")
    peer_id = other_id(tmp_path)
    server = Server(node)
    try:
        reader = node.token("reader", "read", "docs/**")
        status, headers, _ = http("POST", server.url, token=reader,
                                  body=call_body("add_peer", {"endpoint_id": peer_id, "addresses": []}))
        assert status == 403 and 'scope="admin"' in headers["www-authenticate"]
        status, _, _ = http("POST", server.url, token=reader,
                            body=call_body("resolve_conflict", {"path": COPY, "keep": "local"}))
        assert status == 403

        async def listed(s):
            names = {t.name for t in (await s.list_tools()).tools}
            assert "list_conflicts" in names and not names & {"add_peer", "resolve_conflict", "get_peers"}
            return await ok(s, "list_conflicts", {})

        # Copies outside the token's paths do not exist for it.
        out = session(server.url, reader, listed)
        assert [c["path"] for c in out["conflicts"]] == [COPY]

        status, _, _ = http("POST", server.url, token=node.token("st", "status"),
                            body=call_body("remove_peer", {"endpoint_id_or_name": "x"}))
        assert status == 403

        async def add(s):
            return await ok(s, "add_peer", {"endpoint_id": peer_id, "addresses": []})

        assert session(server.url, node.token("boss", "admin"), add)["updated"] is False
        assert config_peers(node)[0]["id"] == peer_id
    finally:
        server.stop()
