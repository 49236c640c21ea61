"""The dashboard in a real browser (Debian's Chromium, headless, through
Selenium and Debian's chromedriver), against two running nodes: a user
signs in, uploads a file with the upload control and it reaches the peer's
disk, opens its history and restores an older version, makes a share link
with a password and an expiry, a fresh browser opens the link and downloads
the file, the link is revoked and refuses; a second user sees nothing of
the first one's workspace and their quota stops an upload. Screenshots of
the main pages go to $SOVRYN_SCREENSHOTS (default target/screenshots)."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from sovryn_support import ROOT, call, linked_pair

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait as _Wait  # noqa: E402


def WebDriverWait(d, timeout):  # noqa: N802 (reads like the class it wraps)
    """A wait that looks again when the page replaced what it looked at
    (the file list re-renders as changes stream in)."""
    return _Wait(d, timeout, ignored_exceptions=[StaleElementReferenceException])

SHOTS = Path(os.environ.get("SOVRYN_SCREENSHOTS", ROOT / "target" / "screenshots"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)


def browser(downloads: Path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
              "--disable-gpu", "--no-first-run"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    d = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    d.set_page_load_timeout(30)
    return d


def wait_for(what, check, timeout=30):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, what
        time.sleep(0.1)


def click_when_steady(d, locator, tries=20):
    """Clicks what `locator` finds once the page stops replacing it."""
    for _ in range(tries):
        try:
            d.find_element(*locator).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{locator} never settled")


def shot(d, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(SHOTS / f"{name}.png"))


@pytest.fixture
def mesh(tmp_path: Path):
    a, b = linked_pair(tmp_path)
    for name, extra in (("ann", []), ("bob", ["--quota", "1M"]), ("root", ["--admin"])):
        pw = tmp_path / f"{name}.pw"
        pw.write_text(f"{name}'s long password\n")
        a.run("users", "add", name, "--password-file", str(pw), *extra)
    a.up()
    b.up()
    yield a, b, tmp_path
    for n in (a, b):
        n.stop()


def sign_in(d, node, name):
    d.get(f"http://127.0.0.1:{node.mcp_port}/")
    w = WebDriverWait(d, 20)
    w.until(EC.visibility_of_element_located((By.ID, "login-name"))).send_keys(name)
    d.find_element(By.ID, "login-password").send_keys(f"{name}'s long password")
    click_when_steady(d, (By.CSS_SELECTOR, "#login-form button[type=submit]"))
    w.until(EC.visibility_of_element_located((By.ID, "files")))
    return w


def upload(d, w, path: Path):
    d.find_element(By.ID, "upload-input").send_keys(str(path))
    w.until(lambda _: d.find_elements(By.CSS_SELECTOR, f'#files tr[data-name="{path.name}"]')
            or d.find_elements(By.CSS_SELECTOR, ".upload-error"))


def test_a_user_uploads_restores_shares_and_revokes_in_the_browser(mesh):
    a, b, tmp = mesh
    d = browser(tmp / "downloads-ann")
    try:
        w = sign_in(d, a, "ann")
        shot(d, "01-files-empty")
        doc = tmp / "plan.txt"
        doc.write_text("first draft\n")
        upload(d, w, doc)
        on_peer = b.folder / "workspaces" / "ann" / "plan.txt"
        wait_for("the upload never reached the peer", lambda: on_peer.exists() and on_peer.read_text() == "first draft\n")
        doc.write_text("second draft, worse\n")
        upload(d, w, doc)
        wait_for("the second version never reached the peer", lambda: on_peer.read_text() == "second draft, worse\n")
        shot(d, "02-files")

        # History: restore the first version.
        click_when_steady(d, (By.CSS_SELECTOR, 'button[aria-label="History of plan.txt"]'))
        w.until(EC.visibility_of_element_located((By.ID, "versions")))
        click_when_steady(d, (By.CSS_SELECTOR, "#versions button.plain"))  # the changes
        w.until(lambda _: "+second draft" in d.find_element(By.ID, "diff").text)
        shot(d, "03-history-diff")
        click_when_steady(d, (By.CSS_SELECTOR, 'button[aria-label="Restore v1"]'))
        w.until(lambda _: "v3 (current)" in d.find_element(By.ID, "versions").text)
        assert (a.folder / "workspaces" / "ann" / "plan.txt").read_text() == "first draft\n"
        wait_for("the restore never reached the peer", lambda: on_peer.read_text() == "first draft\n")
        click_when_steady(d, (By.ID, "dialog-close"))

        # A share link with a password and an expiry.
        click_when_steady(d, (By.CSS_SELECTOR, 'button[aria-label="Share plan.txt"]'))
        w.until(EC.visibility_of_element_located((By.ID, "share-form")))
        d.find_element(By.ID, "share-password").send_keys("a password for the link")
        click_when_steady(d, (By.CSS_SELECTOR, "#share-form button[type=submit]"))
        url = w.until(EC.visibility_of_element_located((By.ID, "share-url"))).get_attribute("value")
        assert "/s/" in url
        shot(d, "04-share-dialog")
        click_when_steady(d, (By.ID, "dialog-close"))
    finally:
        pass

    # A fresh browser (no session) opens the link and downloads the file.
    got = tmp / "downloads-guest"
    got.mkdir()
    guest = browser(got)
    try:
        guest.get(url)
        gw = WebDriverWait(guest, 20)
        gw.until(EC.visibility_of_element_located((By.ID, "pw"))).send_keys("a password for the link")
        shot(guest, "05-link-password")
        click_when_steady(guest, (By.CSS_SELECTOR, "form button[type=submit]"))
        try:
            gw.until(lambda g: "download=1" in g.page_source)
        except Exception:
            raise AssertionError(guest.current_url + "\n" + guest.page_source[:2000])
        click_when_steady(guest, (By.LINK_TEXT, "Download"))
        wait_for("the download never arrived", lambda: (got / "plan.txt").exists())
        assert (got / "plan.txt").read_text() == "first draft\n"
    finally:
        guest.quit()

    # Revoked from the dashboard, the link refuses.
    try:
        click_when_steady(d, (By.CSS_SELECTOR, 'header nav button[data-view="shares"]'))
        w.until(EC.visibility_of_element_located((By.ID, "shares")))
        shot(d, "06-share-links")
        click_when_steady(d, (By.CSS_SELECTOR, 'button[aria-label="Revoke the link to workspaces/ann/plan.txt"]'))
        w.until(lambda _: "revoked" in d.find_element(By.ID, "shares").text)
    finally:
        d.quit()
    fresh = browser(tmp / "downloads-late")
    try:
        fresh.get(url)
        assert "does not work" in fresh.page_source
        shot(fresh, "07-link-refused")
    finally:
        fresh.quit()
    audit = [json.loads(l) for l in (a.home / "audit.jsonl").read_text().splitlines()]
    outcomes = [(l["tool"], l["outcome"].split(" ")[0]) for l in audit if l["tool"].startswith("share ")]
    assert ("share download", "ok") in outcomes and ("share open", "denied") in outcomes, outcomes


def test_a_second_user_sees_nothing_of_the_first_and_their_quota_holds(mesh):
    a, b, tmp = mesh
    ann = browser(tmp / "dl-ann")
    try:
        w = sign_in(ann, a, "ann")
        secret = tmp / "ann-secret.txt"
        secret.write_text("zanzibar ann's private words\n")
        upload(ann, w, secret)
    finally:
        ann.quit()
    bob = browser(tmp / "dl-bob")
    try:
        w = sign_in(bob, a, "bob")
        listed = bob.find_element(By.ID, "files").text
        assert "ann-secret" not in listed and "workspaces" not in listed
        # The API, with bob's session: ann's workspace does not exist for him.
        probe = bob.execute_async_script("""
            const done = arguments[arguments.length - 1];
            Promise.all([
              fetch('/api/v1/files/workspaces/ann/ann-secret.txt').then(r => r.status),
              fetch('/api/v1/files/workspaces').then(r => r.json()),
              fetch('/api/v1/search?q=zanzibar').then(r => r.json()),
              fetch('/api/v1/shares').then(r => r.json()),
              fetch('/api/v1/files/workspaces/ann/x.txt', {method: 'PUT', body: 'x'}).then(r => r.status),
            ]).then(done);""")
        # Above his workspace he sees the way to it, and nothing else.
        assert probe[0] == 404 and [e["name"] for e in probe[1]["entries"]] == ["bob"], probe
        assert probe[2]["hits"] == [] and probe[3]["shares"] == [], probe
        assert probe[4] == 403, "a change without the CSRF token is refused"
        # The quota (1 MiB): a 2 MiB upload is refused with a clear error, and nothing of it stays.
        big = tmp / "too-big.bin"
        big.write_bytes(os.urandom(2 << 20))
        upload(bob, w, big)
        err = w.until(EC.visibility_of_element_located((By.CSS_SELECTOR, ".upload-error"))).text
        assert "quota" in err, err
        shot(bob, "08-quota-refused")
        ws = a.folder / "workspaces" / "bob"
        assert not (ws / "too-big.bin").exists()
        assert not [p for p in ws.iterdir() if p.name.startswith(".sovryn-tmp-")]
        small = tmp / "fits.txt"
        small.write_text("this fits\n")
        upload(bob, w, small)
        assert (ws / "fits.txt").read_text() == "this fits\n"
        # Phone width: the page still works (no horizontal scroll).
        bob.set_window_size(390, 844)
        bob.refresh()
        WebDriverWait(bob, 20).until(EC.visibility_of_element_located((By.ID, "files")))
        shot(bob, "09-phone-width")
        assert bob.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    finally:
        bob.quit()


def test_an_admin_sees_devices_live_makes_a_token_and_reads_the_audit_log(mesh):
    a, b, tmp = mesh
    d = browser(tmp / "dl-root")
    try:
        w = sign_in(d, a, "root")
        click_when_steady(d, (By.CSS_SELECTOR, 'header nav button[data-view="devices"]'))
        w.until(lambda _: "connected" in d.find_element(By.ID, "devices").text)
        assert "beta" in d.find_element(By.ID, "devices").text
        shot(d, "10-devices")
        click_when_steady(d, (By.CSS_SELECTOR, 'header nav button[data-view="tokens"]'))
        w.until(EC.visibility_of_element_located((By.ID, "token-form"))).find_element(By.ID, "token-name").send_keys("notes-agent")
        d.find_element(By.ID, "token-paths").send_keys("docs/**")
        click_when_steady(d, (By.CSS_SELECTOR, "#token-form button[type=submit]"))
        secret = w.until(EC.visibility_of_element_located((By.ID, "token-secret"))).get_attribute("value")
        assert secret.startswith("svn_")
        shot(d, "11-tokens")
        # The token works, only within its scope.
        assert call(a, "GET", "/api/v1/files", secret)[0] == 200
        assert call(a, "PUT", "/api/v1/files/docs/x.txt", secret, b"x")[0] == 403, "read only"
        click_when_steady(d, (By.CSS_SELECTOR, 'header nav button[data-view="audit"]'))
        w.until(lambda _: "token create" in d.find_element(By.ID, "audit").text)
        shot(d, "12-audit-log")
        click_when_steady(d, (By.CSS_SELECTOR, 'header nav button[data-view="status"]'))
        w.until(EC.visibility_of_element_located((By.ID, "status")))
        shot(d, "13-status")
    finally:
        d.quit()


def test_files_dropped_on_the_page_upload_and_a_conflict_resolves_side_by_side(mesh):
    a, b, tmp = mesh
    d = browser(tmp / "dl-drop")
    try:
        w = sign_in(d, a, "ann")
        # What a browser does when a file is dropped on the drop zone.
        d.execute_script("""
            const dt = new DataTransfer();
            dt.items.add(new File(['dropped words\\n'], 'dropped.txt', {type: 'text/plain'}));
            document.getElementById('drop').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));""")
        dropped = a.folder / "workspaces" / "ann" / "dropped.txt"
        wait_for("the dropped file never arrived", lambda: dropped.exists() and dropped.read_text() == "dropped words\n")
        w.until(lambda _: d.find_elements(By.CSS_SELECTOR, '#files tr[data-name="dropped.txt"]'))
        # A conflict: this device's notes and a copy another device wrote.
        ws = a.folder / "workspaces" / "ann"
        (ws / "notes.txt").write_text("mine\n")
        (ws / "notes.sync-conflict-20261201-101010-beta.txt").write_text("theirs\n")
        click_when_steady(d, (By.CSS_SELECTOR, 'header nav button[data-view="conflicts"]'))
        w.until(lambda _: "theirs" in d.find_element(By.ID, "view").text and "mine" in d.find_element(By.ID, "view").text)
        shot(d, "14-conflict")
        keep_theirs = (By.CSS_SELECTOR, 'button[data-keep="remote"]')
        w.until(EC.element_to_be_clickable(keep_theirs))
        click_when_steady(d, keep_theirs)
        w.until(lambda _: "No conflicts." in d.find_element(By.ID, "view").text)
        wait_for("the conflict was not resolved on disk",
                 lambda: (ws / "notes.txt").read_text() == "theirs\n"
                 and not (ws / "notes.sync-conflict-20261201-101010-beta.txt").exists())
    finally:
        d.quit()
