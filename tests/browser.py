"""Headless Chromium driven through the DevTools protocol, cut off from the network.

The browser runs with every host unresolvable and a dead proxy, and the page's requests are
recorded (``Network.requestWillBeSent``), so a test sees both that the page renders offline
and that it asked for nothing but itself. Console messages, uncaught exceptions and the
browser's own log entries are collected as they come.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OFFLINE = ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--host-resolver-rules=MAP * ~NOTFOUND"]


class Browser:
    """One headless Chromium with one page, driven over a websocket.

    Parameters
    ----------
    profile : Path
        A fresh folder for the browser's profile.
    width, height : int
        Size of the window (and of screenshots).
    """

    def __init__(self, profile, width: int = 1440, height: int = 2400):
        import websocket  # websocket-client, of the test extra

        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--disable-quic",
                "--remote-debugging-port=0", "--remote-allow-origins=*",
                f"--user-data-dir={profile}", f"--window-size={width},{height}", *OFFLINE,
                "about:blank"]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.stderr: list[str] = []
        port = self._devtools_port()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no env proxy
        deadline = time.monotonic() + 30
        while True:
            pages = [t for t in json.loads(opener.open(f"http://127.0.0.1:{port}/json/list",
                                                       timeout=10).read())
                     if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60,
                                              suppress_origin=True)
        self.next_id = 0
        self.console: list[str] = []  # console errors and warnings, exceptions, log errors
        self.requests: list[str] = []
        self.loaded = False
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")

    def _devtools_port(self) -> int:
        found = {}

        def read():
            for line in self.proc.stderr:
                self.stderr.append(line)
                m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
                if m:
                    found["port"] = int(m.group(1))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 60
        while "port" not in found:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start: " + "".join(self.stderr[-20:]))
            time.sleep(0.05)
        return found["port"]

    def _event(self, msg: dict):
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
            self.console.append(f"console.{p['type']}: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.console.append("exception: " + d.get("exception", {}).get(
                "description", d.get("text", "")))
        elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            self.console.append(f"log.{p['entry']['level']}: {p['entry']['text']} "
                                f"{p['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])
        elif method == "Page.loadEventFired":
            self.loaded = True

    def call(self, method: str, **params):
        """Send a DevTools command; its result (events that arrive meanwhile are recorded)."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("exception", {}).get(
                "description", r["exceptionDetails"]["text"]))
        return r["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 90):
        """Load ``url`` and wait until the expression ``ready`` is true."""
        self.loaded = False
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not (self.evaluate(f"Boolean({ready})") and self.loaded):  # reads the events
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: not ready ({ready}) after {timeout} s")
            time.sleep(0.25)

    def screenshot(self) -> bytes:
        """A PNG of the whole page."""
        import base64

        r = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(r["data"])

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

