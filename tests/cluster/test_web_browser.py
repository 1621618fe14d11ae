"""The dashboard in a real headless browser (Debian's chromium) against two real nodes.

Chromium is driven over the Chrome DevTools Protocol on a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file
descriptors 3 and 4), so there is no debugging port and no websocket library.
Clicks are real mouse events at the element's centre, typing is real text
input.  The test skips when chromium is not installed.

Set BSCLUSTER_SCREENSHOT_DIR to also copy the screenshots there
(``BSCLUSTER_SCREENSHOT_DIR=docs/img`` refreshes the README's picture).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from bsclient import Client, ClusterClient, TimedOutError
from bsclient.config import NodeAddress
from servers import bscluster_command, free_port, start_bsnode

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(apt-get install chromium)")
TOKEN = "browser-test-token"
WAIT = 20.0  # seconds any one thing may take to show up
TRAFFIC_SECONDS = 4.0
TRAFFIC_MAX_JOBS = 4000


class CDPError(Exception):
    pass


class Chromium:
    """A headless chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the child's ends go above 10, clear of 3 and 4 where chromium wants them
        theirs = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        r, w = theirs
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
                 "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 f"--window-size={width},{height}", "about:blank"]
        # a tiny Python trampoline puts the pipe ends on 3 and 4, then becomes chromium
        trampoline = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); "
                      "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w); "
                      "os.execv(sys.argv[3], sys.argv[3:])")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, str(r), str(w), CHROMIUM, *flags],
            pass_fds=(r, w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(r)
        os.close(w)
        self._buf = b""
        self._next_id = 0
        self.session = None
        try:
            targets = self.call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self.session = self.call("Target.attachToTarget",
                                     {"targetId": page["targetId"], "flatten": True}
                                     )["sessionId"]
            self.call("Page.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1,
                       "mobile": False})
        except Exception:
            self.close()
            raise

    # protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise CDPError("chromium closed the pipe")
                self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, browser: bool = False,
             timeout: float = WAIT) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not browser:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    # the page
    def js(self, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise CDPError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def wait(self, expression: str, what: str, timeout: float = WAIT):
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.js(expression)
            except CDPError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {expression}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element."""
        box = self.wait(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            f" if (!e || e.disabled) return null; e.scrollIntoView({{block: 'center'}});"
            f" const r = e.getBoundingClientRect();"
            f" return r.width ? [r.left + r.width / 2, r.top + r.height / 2] : null; }})()",
            f"{selector} to be clickable")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def type(self, selector: str, text: str) -> None:
        self.click(selector)
        self.call("Input.insertText", {"text": text})

    def text(self, selector: str) -> str | None:
        return self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                       f" return e ? e.textContent : null; }})()")

    def wait_text(self, selector: str, want: str, timeout: float = WAIT) -> None:
        self.wait(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                  f" return e && e.textContent.trim() === {json.dumps(want)}; }})()",
                  f"{selector} to read {want!r} (it reads {self.text(selector)!r})", timeout)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png",
                                                    "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close", browser=True, timeout=5)
                except (CDPError, TimeoutError, OSError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        finally:
            for fd in (self._to_chrome, self._from_chrome):
                try:
                    os.close(fd)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture
def cluster():
    with start_bsnode() as a, start_bsnode() as b:
        yield (NodeAddress("node1", f"{a.host}:{a.port}"),
               NodeAddress("node2", f"{b.host}:{b.port}"))


def _bscluster() -> list[str]:
    return bscluster_command()


class WebProcess:
    def __init__(self, nodes, token: str | None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "BSCLUSTER_WEB_TOKEN"}
        if token:
            env["BSCLUSTER_WEB_TOKEN"] = token
        args = ["web", "-l", "127.0.0.1:0", "--interval", "0.5"]
        for n in nodes:
            args += ["--node", f"{n.name}={n.address}"]
        self.proc = subprocess.Popen(_bscluster() + args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        m = re.search(r"dashboard on (http://127\.0\.0\.1:\d+/)", line)
        if not m:
            self.stop()
            raise AssertionError(f"bscluster web did not start: {line!r}")
        self.url = m.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def _save(browser: Chromium, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    browser.screenshot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    extra = os.environ.get("BSCLUSTER_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


def _traffic(nodes, stop: threading.Event) -> None:
    """Bounded load for the charts: puts into a few tubes, a worker taking some."""
    deadline = time.monotonic() + TRAFFIC_SECONDS
    producer = ClusterClient(nodes)
    worker = ClusterClient(nodes, watch=["thumbnails", "emails-low"])
    try:
        for i in range(TRAFFIC_MAX_JOBS):
            if stop.is_set() or time.monotonic() > deadline:
                break
            producer.use(("thumbnails", "emails-low", "reports")[i % 3])
            producer.put(b'{"n": %d}' % i, delay=30 if i % 17 == 0 else 0)
            if i % 2 == 0:
                try:
                    worker.delete(worker.reserve(timeout=0))
                except TimedOutError:
                    pass
            time.sleep(0.004)
    finally:
        producer.close()
        worker.close()


def _row_cell(tube: str, field: str) -> str:
    return f'#tubes tr[data-tube="{tube}"] td[data-field="{field}"]'


def test_dashboard_live_counts_kick_and_clear(browser, cluster, tmp_path):
    web = WebProcess(cluster, TOKEN)
    stop = threading.Event()
    try:
        browser.goto(web.url)
        browser.wait("document.body.dataset.ready === '1'", "the first render")
        browser.wait("document.querySelectorAll('#nodes tbody tr .pill.up').length === 2",
                     "both nodes up")
        browser.wait_text("#total-nodes .value", "2 / 2")
        assert browser.js("document.getElementById('readonly').hidden") is True

        # counts change as jobs are put
        cc = ClusterClient(cluster, use="emails", watch=["emails"])
        try:
            for i in range(5):
                cc.put(b"hello %d" % i)
            browser.wait_text(_row_cell("emails", "ready"), "5")
            browser.wait_text("#total-ready .value", "5")
            for _ in range(2):
                cc.bury(cc.reserve(timeout=0))
        finally:
            cc.close()
        browser.wait_text(_row_cell("emails", "buried"), "2")
        browser.wait_text(_row_cell("emails", "ready"), "3")

        # some traffic so the charts have something to show, then the picture
        traffic = threading.Thread(target=_traffic, args=(cluster, stop))
        traffic.start()
        traffic.join(TRAFFIC_SECONDS + 15)
        assert not traffic.is_alive()
        browser.wait("document.querySelectorAll('#chart-rate polyline').length === 3",
                     "the throughput chart")
        browser.wait("document.querySelector('#tubes tbody tr').dataset.tube === 'emails'",
                     "the tube with buried jobs listed first")
        _save(browser, tmp_path, "dashboard.png")

        # the token, typed into the page
        browser.type("#token", TOKEN)
        browser.click("#token-form button")
        browser.wait("document.getElementById('token').placeholder === 'token set'",
                     "the token to be taken")

        # into the tube page, kick one buried job from its card
        browser.click('#tubes tr[data-tube="emails"] a')
        browser.wait_text("#tube-name", "emails")
        handle = browser.wait("(() => { const e = document.querySelector("
                              "'.job[data-state=\"buried\"][data-job]');"
                              " return e && e.dataset.job; })()", "a buried job card")
        browser.click(f'.job[data-job="{handle}"] button[data-action="kick"]')
        browser.wait_text("#tube-buried .value", "1")
        browser.wait_text("#tube-ready .value", "4")
        node, job_id = handle.split("/")
        address = next(n.address for n in cluster if n.name == node)
        with Client(address) as c:
            assert c.stats_job(int(job_id))["state"] == "ready"
        browser.wait("document.getElementById('flash').textContent.includes('kicked')",
                     "the kick to be reported")
        _save(browser, tmp_path, "dashboard-tube.png")

        # clear the tube: two clicks (the second confirms)
        browser.click("#clear-button")
        browser.wait("document.getElementById('clear-button').classList.contains('armed')",
                     "the clear button to ask for confirmation")
        browser.click("#clear-button")
        browser.wait_text("#tube-ready .value", "0")
        browser.wait_text("#tube-buried .value", "0")
        for n in cluster:
            with Client(n.address) as c:
                if "emails" in c.list_tubes():
                    st = c.stats_tube("emails")
                    assert st["current-jobs-ready"] == st["current-jobs-buried"] == 0
        browser.wait("document.getElementById('flash').textContent.includes('deleted')",
                     "the clear to be reported")
    finally:
        stop.set()
        web.stop()


def test_dashboard_names_hung_and_refused_nodes_as_status_does(browser, cluster):
    gone = NodeAddress("node3", f"127.0.0.1:{free_port()}")  # nothing listens there
    with start_bsnode() as stopped:
        stopped.signal(signal.SIGSTOP)  # hung: it holds its port and never answers
        hung = NodeAddress("node4", f"{stopped.host}:{stopped.port}")
        web = WebProcess((*cluster, gone, hung), None)
        try:
            browser.goto(web.url)
            browser.wait_text('#nodes tr[data-node="node3"] .pill', "down")
            browser.wait_text('#nodes tr[data-node="node4"] .pill', "no answer")
        finally:
            stopped.signal(signal.SIGCONT)
            web.stop()


def test_dashboard_without_token_is_read_only(browser, cluster, tmp_path):
    with Client(cluster[0].address) as c:
        c.use("ro")
        c.put(b"x")
        c.watch("ro")
        c.bury(c.reserve(timeout=0))
    web = WebProcess(cluster, None)
    try:
        browser.goto(web.url + "#/tube/ro")
        browser.wait_text("#tube-name", "ro")
        browser.wait("!document.getElementById('readonly').hidden", "the read-only banner")
        assert "--token" in browser.text("#readonly")
        browser.wait("document.querySelector('.job[data-state=\"buried\"] button"
                     "[data-action=\"kick\"]') !== null", "the buried job card")
        assert browser.js("[...document.querySelectorAll('#tube-actions button, .job button')]"
                          ".every(b => b.disabled)") is True
        with Client(cluster[0].address) as c:
            assert c.stats_tube("ro")["current-jobs-buried"] == 1
    finally:
        web.stop()
