"""Share links as people use them: `sovryn share create|list|revoke` and
`/api/v1/shares`, opened with a plain HTTP client that has nothing but the
URL: a password form, a file's download (with Range), a directory's page
and zip, and one refusal page for a link that is unknown, expired, revoked
or used up; every access is in the audit log."""

import http.client
import io
import json
import time
import urllib.parse
import zipfile

import pytest

from test_files import call, ok_json, solo, token, wait_for  # noqa: F401 (solo: a fixture)


@pytest.fixture
def node(solo):
    return solo


def get(url, cookie=None, headers=None, method="GET", body=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    h = dict(headers or {})
    if cookie:
        h["Cookie"] = cookie
    if body is not None:
        h["Content-Type"] = "application/x-www-form-urlencoded"
        body = urllib.parse.urlencode(body)
    conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def share(node, *args):
    return json.loads(node.run("--json", "share", "create", *args).stdout)


def test_a_link_with_a_password_and_an_expiry_hands_out_one_file(node, tmp_path):
    t = token(node, "app", "read,write")
    body = bytes(range(256)) * 400
    ok_json(node, "PUT", "/api/v1/files/docs/report.bin", t, body, expect=(201,))
    pw = tmp_path / "pw"
    pw.write_text("open sesame, please\n")
    link = share(node, str(node.folder / "docs" / "report.bin"), "--password-file", str(pw), "--expires", "1h")
    url = link["url"]
    assert url.startswith(f"http://127.0.0.1:{node.mcp_port}/s/") and link["expires"]

    status, _, page = get(url)
    assert status == 200 and b'type="password"' in page
    status, _, page = get(url, method="POST", body={"password": "wrong one"})
    assert status == 403 and b"wrong" in page
    status, h, _ = get(url, method="POST", body={"password": "open sesame, please"})
    assert status == 303 and "HttpOnly" in h["set-cookie"] and "SameSite=Strict" in h["set-cookie"]
    cookie = h["set-cookie"].split(";")[0]
    status, _, page = get(url, cookie)
    assert status == 200 and b"report.bin" in page and b"download=1" in page
    status, h, got = get(url + "?download=1", cookie)
    assert status == 200 and got == body and h["content-disposition"].startswith("attachment")
    status, h, got = get(url + "?download=1", cookie, {"Range": "bytes=100-199"})
    assert status == 206 and got == body[100:200]
    # Without the cookie, the file is not handed out.
    status, _, page = get(url + "?download=1")
    assert status == 200 and b'type="password"' in page and body[:50] not in page

    listed = json.loads(node.run("--json", "share", "list").stdout)["shares"]
    [mine] = [s for s in listed if s["id"] == link["id"]]
    assert mine["password"] and mine["downloads"] >= 1 and mine["path"] == "docs/report.bin"
    assert "open sesame" not in (node.home / "mcp.db").read_bytes().decode("latin-1")


def test_unknown_expired_revoked_and_used_up_links_get_the_same_refusal(node):
    t = token(node, "app", "read,write")
    ok_json(node, "PUT", "/api/v1/files/a.txt", t, b"shared words", expect=(201,))
    expired = share(node, str(node.folder / "a.txt"), "--expires", "1s")["url"]
    revoked = share(node, str(node.folder / "a.txt"))
    once = share(node, str(node.folder / "a.txt"), "--max-downloads", "1")["url"]
    node.run("share", "revoke", revoked["id"])
    assert get(once + "?download=1")[2] == b"shared words"
    time.sleep(1.2)
    base = expired.rsplit("/", 1)[0]
    unknown = base + "/" + "ab" * 24
    answers = [get(u) for u in (unknown, expired, revoked["url"])] + [get(once + "?download=1")]
    statuses = {a[0] for a in answers}
    pages = {a[2] for a in answers}
    assert statuses == {404} and len(pages) == 1, answers
    assert b"does not work" in answers[0][2]
    # A password sent to a link that does not work: the same page.
    assert get(unknown, method="POST", body={"password": "whatever it is"})[0:3:2] == (404, answers[0][2])

    audit = [json.loads(l) for l in (node.home / "audit.jsonl").read_text().splitlines()]
    shares = [l for l in audit if l["tool"].startswith("share ")]
    assert any(l["outcome"] == "ok" and l["tool"] == "share download" for l in shares)
    refused = [l for l in shares if l["outcome"].startswith("denied")]
    assert len(refused) >= 5, shares


def test_a_directory_link_is_a_browsable_page_and_a_zip_and_the_api_makes_and_revokes_links(node):
    t = token(node, "app", "read,write")
    scoped = token(node, "docs-only", "read,write", "docs/**")
    files = {"docs/one.txt": b"one", "docs/sub/two.txt": b"two" * 1000, "private/no.txt": b"no"}
    for path, body in files.items():
        ok_json(node, "PUT", f"/api/v1/files/{path}", t, body, expect=(201,))
    made = ok_json(node, "POST", "/api/v1/shares", scoped, {"path": "docs", "expires": "2h"}, expect=(201,))
    url = made["url"]
    status, _, page = get(url)
    assert status == 200 and b"one.txt" in page and b"sub/" in page and b"no.txt" not in page
    status, _, page = get(url + "/sub")
    assert status == 200 and b"two.txt" in page
    assert get(url + "/sub/two.txt?download=1")[2] == b"two" * 1000
    # A path out of the shared directory does not exist for the link.
    assert get(url + "/../private/no.txt?download=1")[0] == 404
    status, h, data = get(url + "?download=zip")
    assert status == 200 and h["content-type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == ["one.txt", "sub/two.txt"]
    assert z.read("sub/two.txt") == b"two" * 1000

    # A scoped token shares nothing outside its scope, and sees no other links.
    status, _, err = call(node, "POST", "/api/v1/shares", scoped, {"path": "private/no.txt"})
    assert status == 403 and b"outside" in err
    ok_json(node, "POST", "/api/v1/shares", t, {"path": "private/no.txt"}, expect=(201,))
    mine = ok_json(node, "GET", "/api/v1/shares", scoped)["shares"]
    assert [s["path"] for s in mine] == ["docs"], mine
    assert call(node, "DELETE", f"/api/v1/shares/{made['id']}", token(node, "ro", "read"))[0] == 403
    ok_json(node, "DELETE", f"/api/v1/shares/{made['id']}", scoped)
    assert get(url)[0] == 404


def test_removing_a_user_revokes_their_links_and_tokens(node, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("carol's long password\n")
    node.run("users", "add", "carol", "--password-file", str(pw))
    status, h, body = call(node, "POST", "/api/v1/login", None, {"name": "carol", "password": "carol's long password"})
    assert status == 200
    cookie = h["set-cookie"].split(";")[0]
    csrf = json.loads(body)["csrf"]
    session = {"Cookie": cookie, "X-CSRF-Token": csrf}
    status, _, _ = call(node, "PUT", "/api/v1/files/workspaces/carol/c.txt", None, b"carol's", headers=session)
    assert status == 201
    # Outside her workspace: refused; without the CSRF token: refused.
    assert call(node, "PUT", "/api/v1/files/other.txt", None, b"x", headers=session)[0] == 403
    assert call(node, "PUT", "/api/v1/files/workspaces/carol/d.txt", None, b"x", headers={"Cookie": cookie})[0] == 403
    status, _, body = call(node, "POST", "/api/v1/shares", None, {"path": "workspaces/carol/c.txt"}, headers=session)
    assert status == 201
    url = json.loads(body)["url"]
    status, _, body = call(node, "POST", "/api/v1/tokens", None, {"name": "laptop", "capabilities": ["read"]}, headers=session)
    assert status == 201
    made = json.loads(body)
    assert made["name"] == "carol.laptop" and made["paths"] == ["workspaces/carol/**"]
    secret = made["token"]
    assert call(node, "GET", "/api/v1/files/workspaces/carol/c.txt", secret)[2] == b"carol's"
    # A token cannot hold more than its maker.
    status, _, _ = call(node, "POST", "/api/v1/tokens", None,
                        {"name": "wide", "capabilities": ["read"], "paths": ["**"]}, headers=session)
    assert status == 403
    assert get(url + "?download=1")[2] == b"carol's"

    out = json.loads(node.run("--json", "users", "remove", "carol").stdout)
    assert out["tokens_revoked"] == 1 and out["links_revoked"] == 1, out
    assert get(url)[0] == 404
    wait_for("the removed user's token still works",
             lambda: call(node, "GET", "/api/v1/files", secret)[0] == 401)
    assert call(node, "GET", "/api/v1/me", None, headers={"Cookie": cookie})[0] == 401
