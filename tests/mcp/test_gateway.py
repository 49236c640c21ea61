"""Gateway hardening of `sovryn mcp serve --http`: Host/Origin validation,
the CIDR allowlist, HS256 JWTs, /readyz, /metrics, TLS, the unauthenticated
test mode and `sovryn mcp status`, against the real binary."""

import base64
import hashlib
import hmac
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from test_http import Server, http

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
V2026 = {"MCP-Protocol-Version": "2026-07-28"}


def call_body(tool, args):
    """A sessionless (2026-07-28) tools/call: answered without a handshake."""
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": args, "_meta": META}}


def std_headers(body):
    """The SEP-2243 headers a 2026-07-28 request carries."""
    return {**V2026, "Mcp-Method": body["method"], "Mcp-Name": body["params"]["name"]}


def post(url, body, token=None, headers=None):
    return http("POST", url, token=token, body=body, headers={**std_headers(body), **(headers or {})})


@pytest.fixture
def files(node):
    (node.folder / "docs").mkdir()
    (node.folder / "docs" / "a.md").write_text("public words\n")
    (node.folder / "secret.txt").write_text("classified words\n")
    return node


def serving(node, *extra):
    return Server(node, *extra)


def test_foreign_host_and_origin_are_403(files):
    node = files
    tok = node.token("agent", "read")
    s = serving(node)
    try:
        body = call_body("read_file", {"path": "docs/a.md"})
        status, _, _ = post(s.url, token=tok, body=body)
        assert status == 200
        # A browser page on another site (DNS rebinding or CSRF) is refused before auth.
        status, _, resp = post(s.url, token=tok, body=body,
                               headers={"Origin": "http://evil.example.com"})
        assert status == 403 and b"Origin" in resp
        status, _, _ = post(s.url, body=body, headers={"Origin": "https://evil.example.com"})
        assert status == 403
        status, _, resp = http("GET", s.base + "/healthz", headers={"Host": "evil.example.com"})
        assert status == 403 and b"Host" in resp
        status, _, _ = post(s.url, token=tok, body=body, headers={"Origin": "null"})
        assert status == 403
        # Loopback origins (a local tool's page) pass.
        status, _, _ = post(s.url, token=tok, body=body,
                            headers={"Origin": "http://localhost:6274"})
        assert status == 200
    finally:
        s.stop()
    # A configured origin and host pass.
    node.run("config", "set", "mcp.allowed_origins", '["https://app.example.com"]')
    node.run("config", "set", "mcp.allowed_hosts", '["mcp.example.com"]')
    s = serving(node)
    try:
        status, _, _ = post(s.url, token=tok, body=call_body("get_file_metadata", {"path": "docs/a.md"}),
                            headers={"Origin": "https://app.example.com"})
        assert status == 200
        status, _, _ = http("GET", s.base + "/healthz", headers={"Host": "mcp.example.com:8765"})
        assert status == 200
        status, _, _ = http("GET", s.base + "/healthz", headers={"Origin": "https://app.example.com.evil.io"})
        assert status == 403
    finally:
        s.stop()


def test_cidr_allowlist(files):
    node = files
    tok = node.token("agent", "read")
    node.run("config", "set", "mcp.allow_cidrs", '["10.0.0.0/8", "192.168.0.0/16"]')
    s = serving(node)
    try:
        status, _, resp = http("GET", s.base + "/healthz")
        assert status == 403 and b"allow_cidrs" in resp
        status, _, _ = post(s.url, token=tok, body=call_body("read_file", {"path": "docs/a.md"}))
        assert status == 403
    finally:
        s.stop()
    node.run("config", "set", "mcp.allow_cidrs", '["10.0.0.0/8", "127.0.0.0/8"]')
    s = serving(node)
    try:
        status, _, _ = post(s.url, token=tok, body=call_body("read_file", {"path": "docs/a.md"}))
        assert status == 200
    finally:
        s.stop()
    bad = node.run("config", "set", "mcp.allow_cidrs", '["10.0.0.0/40"]', check=False)
    assert bad.returncode != 0


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(secret: bytes, claims: dict, alg="HS256") -> str:
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def test_hs256_jwts(files, tmp_path):
    node = files
    secret = b"s" * 40
    f = tmp_path / "jwt.secret"
    f.write_bytes(secret + b"\n")
    f.chmod(0o600)
    node.run("config", "set", "mcp.jwt_secret_file", str(f))
    s = serving(node)
    try:
        now = int(time.time())
        reader = jwt(secret, {"sub": "ci-bot", "exp": now + 600, "capabilities": ["read"], "paths": ["docs/**"]})
        status, _, resp = post(s.url, token=reader, body=call_body("read_file", {"path": "docs/a.md"}))
        assert status == 200 and b"public words" in resp
        # Same scope rules as tokens: outside the paths is "no such file".
        status, _, resp = post(s.url, token=reader, body=call_body("read_file", {"path": "secret.txt"}))
        assert status == 200 and b"classified" not in resp and b"no such file" in resp
        # Capabilities: a write needs 'write' (403).
        status, headers, _ = post(s.url, token=reader,
                                  body=call_body("write_file", {"path": "docs/x.md", "content": "x"}))
        assert status == 403 and 'scope="write"' in headers["www-authenticate"]
        writer = jwt(secret, {"sub": "ci-bot", "exp": now + 600, "scope": "read write"})
        status, _, resp = post(s.url, token=writer,
                               body=call_body("write_file", {"path": "docs/x.md", "content": "by jwt\n"}))
        assert status == 200 and b'"isError":true' not in resp
        assert "mcp:jwt:ci-bot" in node.run("--json", "versions", "docs/x.md").stdout
        # Expired, wrong key, alg none, tampered: 401.
        for bad in [
            jwt(secret, {"sub": "ci-bot", "exp": now - 3600, "capabilities": ["read"]}),
            jwt(b"t" * 40, {"sub": "ci-bot", "exp": now + 600, "capabilities": ["read"]}),
            b64url(b'{"alg":"none"}') + "." + b64url(json.dumps({"sub": "x", "exp": now + 600, "capabilities": ["admin"]}).encode()) + ".",
            reader[:-4] + ("AAAA" if not reader.endswith("AAAA") else "BBBB"),
        ]:
            status, headers, _ = post(s.url, token=bad, body=call_body("get_file_metadata", {"path": "docs/a.md"}))
            assert status == 401, bad
            assert 'error="invalid_token"' in headers["www-authenticate"]
        assert any(l["token"] == "jwt:ci-bot" and l["tool"] == "read_file" for l in node.audit())
    finally:
        s.stop()


def test_readyz_and_prometheus_metrics(files):
    node = files
    reader = node.token("reader", "read")
    watcher = node.token("prometheus", "status")
    s = serving(node)
    try:
        status, _, body = http("GET", s.base + "/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
        post(s.url, token=reader, body=call_body("read_file", {"path": "docs/a.md"}))
        post(s.url, token=reader, body=call_body("read_file", {"path": "nope.md"}))  # a tool error
        post(s.url, token="svn_bad", body=call_body("read_file", {"path": "docs/a.md"}))  # a 401
        status, _, _ = http("GET", s.base + "/metrics")
        assert status == 401
        status, _, _ = http("GET", s.base + "/metrics", token=reader)
        assert status == 403
        status, headers, body = http("GET", s.base + "/metrics", token=watcher)
        assert status == 200 and headers["content-type"].startswith("text/plain")
        text = body.decode()
        assert 'mcp_requests_total{route="/mcp",status="200"}' in text
        assert 'mcp_requests_total{route="/mcp",status="401"}' in text
        assert "mcp_request_duration_seconds_bucket" in text
        assert 'mcp_errors_total{kind="http",status="401"}' in text
        assert 'mcp_errors_total{kind="tool",tool="read_file"}' in text
        gauge = [l for l in text.splitlines() if l.startswith("mcp_clients_connected")]
        assert gauge and float(gauge[0].split()[-1]) >= 1
    finally:
        s.stop()


def test_tls_when_cert_and_key_are_configured(files, tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    node = files
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    node.run("config", "set", "mcp.tls_cert", str(cert))
    bad = node.run("mcp", "serve", "--http", "--port", "0", "--no-scan", check=False)
    assert bad.returncode != 0 and "tls_key" in bad.stderr  # a cert without a key is refused
    node.run("config", "set", "mcp.tls_key", str(key))
    tok = node.token("agent", "read")
    s = serving(node)
    try:
        assert s.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        body = call_body("read_file", {"path": "docs/a.md"})
        req = urllib.request.Request(
            s.url, data=json.dumps(body).encode(), method="POST",
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json",
                     "Accept": "application/json, text/event-stream", **std_headers(body)})
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            assert r.status == 200 and b"public words" in r.read()
        # The RFC 9728 document names the https resource.
        with urllib.request.urlopen(s.base + "/.well-known/oauth-protected-resource", timeout=10, context=ctx) as r:
            assert json.loads(r.read())["resource"].startswith("https://")
        # Plain HTTP on the TLS port gets nowhere.
        plain = s.base.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, ConnectionError, http_client_errors())):
            urllib.request.urlopen(plain + "/healthz", timeout=5)
    finally:
        s.stop()


def http_client_errors():
    import http.client
    return http.client.HTTPException


def test_insecure_no_auth_is_loopback_only(files):
    node = files
    out = node.run("mcp", "serve", "--http", "--bind", "0.0.0.0", "--port", "0", "--insecure-no-auth",
                   "--no-scan", check=False)
    assert out.returncode != 0 and "loopback" in out.stderr
    s = serving(node, "--insecure-no-auth")
    try:
        status, _, resp = post(s.url, body=call_body("read_file", {"path": "docs/a.md"}))
        assert status == 200 and b"public words" in resp
        assert node.audit()[-1]["token"] == "anonymous"
        # Host/Origin checks still apply.
        status, _, _ = post(s.url, body=call_body("read_file", {"path": "docs/a.md"}),
                            headers={"Origin": "http://evil.example.com"})
        assert status == 403
    finally:
        s.stop()


def test_mcp_status(files):
    node = files
    node.token("a", "read")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    out = node.run("--json", "mcp", "status", "--port", str(free))
    st = json.loads(out.stdout)
    assert st["running"] is False and st["tokens"] == {"total": 1, "usable": 1}
    assert st["url"] == f"http://127.0.0.1:{free}/mcp" and st["tls"] is False
    s = serving(node)
    try:
        port = s.url.rsplit(":", 1)[1].split("/")[0]
        out = node.run("mcp", "status", "--port", port)
        assert "state:      ready" in out.stdout, out.stdout
        st = json.loads(node.run("--json", "mcp", "status", "--port", port).stdout)
        assert st["running"] is True and st["state"] == "ready"
    finally:
        s.stop()
