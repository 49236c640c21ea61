"""Run two Syncthing nodes on loopback (discovery, relays, NAT and usage
reporting off), sharing one folder, for the sync benchmark."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

API_KEY = "sovrynbenchkey"


def _free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class SyncthingNode:
    def __init__(self, base, name):
        self.home = os.path.join(base, f"st-{name}-home")
        self.folder = os.path.join(base, f"st-{name}-folder")
        os.makedirs(self.folder, exist_ok=True)
        self.gui_port = _free_port()
        self.listen_port = _free_port()
        out = subprocess.run(
            ["syncthing", "generate", f"--home={self.home}", "--no-default-folder"],
            capture_output=True, text=True, check=True,
        )
        m = re.search(r"Device ID: ([A-Z0-9-]{63})", out.stdout + out.stderr)
        if not m:
            raise RuntimeError("could not read the Syncthing device id: " + out.stdout + out.stderr)
        self.device_id = m.group(1)
        self.proc = None

    def configure(self, peer):
        path = os.path.join(self.home, "config.xml")
        xml = open(path).read()
        xml = re.sub(r"<gui [^>]*>.*?</gui>",
                     f'<gui enabled="true" tls="false"><address>127.0.0.1:{self.gui_port}</address>'
                     f"<apikey>{API_KEY}</apikey></gui>", xml, flags=re.S)
        opts = (
            f"<listenAddress>tcp://127.0.0.1:{self.listen_port}</listenAddress>"
            "<globalAnnounceEnabled>false</globalAnnounceEnabled><localAnnounceEnabled>false</localAnnounceEnabled>"
            "<relaysEnabled>false</relaysEnabled><natEnabled>false</natEnabled><urAccepted>-1</urAccepted>"
            "<autoUpgradeIntervalH>0</autoUpgradeIntervalH><crashReportingEnabled>false</crashReportingEnabled>"
            "<startBrowser>false</startBrowser>"
        )
        xml = re.sub(r"<options>.*?</options>", f"<options>{opts}</options>", xml, flags=re.S)
        devices = (
            f'<device id="{self.device_id}" name="self" compression="metadata" introducer="false">'
            f"<address>dynamic</address></device>"
            f'<device id="{peer.device_id}" name="peer" compression="metadata" introducer="false">'
            f"<address>tcp://127.0.0.1:{peer.listen_port}</address></device>"
        )
        folder = (
            f'<folder id="bench" label="bench" path="{self.folder}" type="sendreceive" rescanIntervalS="3600" '
            f'fsWatcherEnabled="true" fsWatcherDelayS="1" ignorePerms="false">'
            f'<device id="{self.device_id}"></device><device id="{peer.device_id}"></device>'
            f"<minDiskFree unit=\"%\">0</minDiskFree></folder>"
        )
        xml = re.sub(r"<device [^>]*>.*?</device>", "", xml, flags=re.S)
        xml = re.sub(r"<folder [^>]*>.*?</folder>", "", xml, flags=re.S)
        xml = xml.replace("</configuration>", folder + devices + "</configuration>")
        open(path, "w").write(xml)

    def start(self):
        env = dict(os.environ, STNODEFAULTFOLDER="1", STNOUPGRADE="1")
        self.proc = subprocess.Popen(
            ["syncthing", "serve", f"--home={self.home}", "--no-browser", "--no-restart", "--no-upgrade"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.get("/rest/system/ping")
                return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError("syncthing did not start")

    def get(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui_port}{path}", headers={"X-API-Key": API_KEY})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def rescan(self):
        """Asks for a scan of the folder now, without waiting for it (the
        call returns when the scan is done, so it runs on a thread)."""
        def post():
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.gui_port}/rest/db/scan?folder=bench",
                headers={"X-API-Key": API_KEY}, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    r.read()
            except Exception as e:  # the clock shows a scan that never ran
                print(f"syncthing rescan: {e}", file=sys.stderr)
        threading.Thread(target=post, daemon=True).start()

    def connected(self):
        conns = self.get("/rest/system/connections")["connections"]
        return any(c.get("connected") for c in conns.values())

    def wire_bytes(self):
        t = self.get("/rest/system/connections")["total"]
        return t["inBytesTotal"] + t["outBytesTotal"]

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def pair(base):
    a, b = SyncthingNode(base, "a"), SyncthingNode(base, "b")
    a.configure(b)
    b.configure(a)
    a.start()
    b.start()
    deadline = time.time() + 60
    while time.time() < deadline and not (a.connected() and b.connected()):
        time.sleep(0.2)
    if not a.connected():
        raise RuntimeError("syncthing nodes did not connect")
    return a, b


def cleanup(base):
    shutil.rmtree(base, ignore_errors=True)
