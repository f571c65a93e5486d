"""The demo page at GET / driven end to end in headless Chromium against a real server.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (fd 3: commands in,
fd 4: replies out, NUL-separated JSON): no websocket library, no port to discover, nothing beyond the
standard library. Skips when no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from service_helpers import RunningServer, image_bytes

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)


BASH = shutil.which("bash") or "/bin/bash"


def find_chromium() -> str | None:
    override = os.environ.get("STYA2K_TEST_CHROMIUM")
    if override:
        return override
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class CDPError(RuntimeError):
    pass


class Browser:
    """A headless Chromium and a minimal DevTools-protocol client over its debugging pipe."""

    def __init__(self, executable: str, profile_dir: Path) -> None:
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # The child's ends go to fds >= 10 first so bash's "3<&N 4>&M" cannot overwrite one another
        # (bash, not sh: dash only redirects single-digit fds).
        child_in = fcntl.fcntl(commands_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(replies_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(commands_read)
        os.close(replies_write)
        script = f'exec "$0" "$@" 3<&{child_in} 4>&{child_out} {child_in}<&- {child_out}>&-'
        self.log_path = profile_dir / "chromium.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [BASH, "-c", script, executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                pass_fds=(child_in, child_out),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        os.close(child_in)
        os.close(child_out)
        self._next_id = 0
        self._lock = threading.Condition()
        self._responses: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._lock:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._responses[message["id"]] = message
                    else:
                        self.events.append(message)
                self._lock.notify_all()
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        with self._lock:
            if not self._lock.wait_for(lambda: message_id in self._responses or self._closed, timeout=30):
                raise CDPError(f"{method}: no reply within 30 s")
            if message_id not in self._responses:
                raise CDPError(f"{method}: the browser exited; log: {self.log_tail()}")
            reply = self._responses.pop(message_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        with self._lock:
            found = self._lock.wait_for(lambda: any(e["method"] == method for e in self.events), timeout=timeout)
            if not found:
                raise CDPError(f"no {method} event within {timeout} s")
            event = next(e for e in self.events if e["method"] == method)
            self.events.remove(event)
            return event

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        with contextlib.suppress(CDPError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        self._reader.join(timeout=5)
        os.close(self._replies)


class Page:
    """One tab: navigation, evaluation, file inputs, real mouse input, screenshots."""

    def __init__(self, browser: Browser, width: int = 1280, height: int = 1000) -> None:
        self.browser = browser
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, self.session)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.browser.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        errors = self.evaluate("document.getElementById('error').textContent")
        raise AssertionError(f"timed out waiting for {expression!r}; page error box: {errors!r}")

    def set_file(self, selector: str, path: Path) -> None:
        found = self.call("Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(selector)})"})
        self.call("DOM.setFileInputFiles", {"files": [str(path)], "objectId": found["result"]["objectId"]})

    def center(self, selector: str) -> tuple[float, float]:
        box = self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        return float(box[0]), float(box[1])

    def mouse(self, kind: str, x: float, y: float, buttons: int = 0) -> None:
        params = {"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1}
        if kind == "mouseMoved":
            params["button"] = "left" if buttons else "none"
        self.call("Input.dispatchMouseEvent", params)

    def click(self, selector: str) -> None:
        x, y = self.center(selector)
        # A click at stale coordinates (the layout moved) silently hits another element: fail loudly instead.
        hit = self.evaluate(
            f"(() => {{ const el = document.elementFromPoint({x}, {y});"
            f" return Boolean(el && document.querySelector({json.dumps(selector)}).contains(el)); }})()"
        )
        if not hit:
            raise AssertionError(f"{selector!r} is not the element under its own centre ({x:.0f}, {y:.0f})")
        self.mouse("mousePressed", x, y, buttons=1)
        self.mouse("mouseReleased", x, y)

    def drag(self, selector: str, path: list[tuple[float, float]]) -> None:
        """Press, move through ``path`` (fractions of the element's box), release."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x, r.y, r.width, r.height]; })()"
        )
        points = [(box[0] + fx * box[2], box[1] + fy * box[3]) for fx, fy in path]
        self.mouse("mousePressed", *points[0], buttons=1)
        for point in points[1:]:
            self.mouse("mouseMoved", *point, buttons=1)
        self.mouse("mouseReleased", *points[-1])

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the demo page test needs it")
    with tempfile.TemporaryDirectory(prefix="stya2k-chromium-") as profile:
        running = Browser(executable, Path(profile))
        try:
            running.call("Browser.getVersion")
        except CDPError as exc:
            running.close()
            pytest.fail(f"Chromium did not answer on its debugging pipe: {exc}")
        yield running
        running.close()


@pytest.fixture
def page(browser: Browser, server: RunningServer) -> Iterator[Page]:
    tab = Page(browser)
    tab.goto(server.url + "/")
    tab.wait_for("document.getElementById('status').classList.contains('ready')")
    tab.wait_for("state.opened === true")  # the opening photo and painting are in place: no race with the test's
    yield tab
    tab.call("Page.close")


def _save_screenshot(page: Page, tmp_path: Path, name: str) -> None:
    shot = page.screenshot(tmp_path / name)
    with Image.open(shot) as img:
        assert img.size[0] > 1000
    wanted = os.environ.get("STYA2K_DEMO_SCREENSHOT_DIR")  # to look at the page by eye
    if wanted:
        shutil.copy(shot, Path(wanted) / name)


def _result_size(page: Page) -> tuple[int, int]:
    page.wait_for("document.getElementById('result').naturalWidth > 0")
    return tuple(
        page.evaluate(
            "[document.getElementById('result').naturalWidth, document.getElementById('result').naturalHeight]"
        )
    )


def test_page_is_served(server: RunningServer) -> None:
    response = httpx.get(server.url + "/", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'id="content-file"' in response.text and "/v1/" in response.text


def test_api_docs_need_no_internet(server: RunningServer) -> None:
    html = httpx.get(server.url + "/docs", timeout=10).text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(source.startswith("/") for source in sources), sources  # nothing from a CDN
    for source, media_type in (("swagger-ui-bundle.js", "application/javascript"), ("swagger-ui.css", "text/css")):
        response = httpx.get(f"{server.url}/docs/assets/{source}", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media_type)
        assert len(response.content) > 10_000


def test_api_docs_render_offline_in_a_browser(page: Page, server: RunningServer) -> None:
    page.goto(server.url + "/docs")  # the test browser has no route to the internet
    title = page.wait_for("(document.querySelector('.swagger-ui .info .title') || {}).textContent")
    assert "StyA2K Serve" in title
    assert page.wait_for("document.querySelectorAll('.opblock').length") >= 6  # the transfer operations


# Every <img> that takes up room on the page but has no picture: the browser draws a broken-image placeholder.
BROKEN_IMAGES = (
    "[...document.images].filter((img) => getComputedStyle(img).display !== 'none' && img.getClientRects().length"
    " && !(img.complete && img.naturalWidth > 0)).map((img) => img.id || img.alt)"
)


def test_page_opens_with_a_real_photo_and_painting_and_no_broken_images(page: Page, tmp_path: Path) -> None:
    # The shipped sample photo (512 px) and the Starry Night preset, sent by name; no broken-image icons anywhere.
    assert page.evaluate("document.getElementById('content-preview').naturalWidth") == 512
    assert page.evaluate("state.styles[0].preset") == "starry_night"
    assert page.evaluate("document.querySelector('.style-row img').naturalWidth") > 0
    assert page.evaluate("document.getElementById('style-preset-0').options.length") > 10
    assert page.evaluate("getComputedStyle(document.querySelector('.stage .empty')).display") == "none"
    assert page.evaluate(BROKEN_IMAGES) == []
    page.click("#add-style")  # a second, still empty style row
    assert page.evaluate(BROKEN_IMAGES) == []
    page.evaluate("document.querySelector('.style-row:nth-child(2) .remove').click()")
    page.click("#run")
    assert _result_size(page) == (64, 64)  # the 512x512 photo at the test server's max side
    assert page.evaluate("document.getElementById('error').textContent") == ""
    _save_screenshot(page, tmp_path, "demo-opening.png")


def test_upload_two_images_and_stylize(page: Page, tmp_path: Path) -> None:
    content, style = tmp_path / "content.png", tmp_path / "style.jpg"
    content.write_bytes(image_bytes((80, 60), color=(30, 120, 200)))
    style.write_bytes(image_bytes((64, 64), "JPEG", color=(250, 200, 10)))
    page.set_file("#content-file", content)
    page.set_file("#style-file-0", style)
    page.wait_for("document.getElementById('content-preview').naturalWidth === 80")
    page.wait_for("document.querySelector('.style-row img').naturalWidth === 64")
    assert page.evaluate("document.getElementById('result').naturalWidth") == 0
    page.click("#run")
    assert _result_size(page) == (64, 48)  # the test server's max side is 64
    latency = page.wait_for("document.getElementById('latency').textContent")
    assert "ms on the server" in latency
    assert page.evaluate("document.getElementById('error').textContent") == ""
    assert page.evaluate("document.getElementById('download').hidden") is False
    _save_screenshot(page, tmp_path, "demo-stylize.png")


def test_samples_interpolation_and_painted_regions(page: Page, tmp_path: Path) -> None:
    page.click("[data-content-sample=landscape]")
    # The preview appears asynchronously and pushes the style rows ~200 px down: like a user, look before clicking on.
    page.wait_for("document.getElementById('content-preview').naturalWidth === 384")
    page.click(".style-row [data-style-sample=waves]")
    page.click("#add-style")
    page.click(".style-row:nth-child(2) [data-style-sample=mosaic]")
    page.wait_for("document.querySelectorAll('.style-row img').length === 2 && "
                  "[...document.querySelectorAll('.style-row img')].every((i) => i.naturalWidth > 0)")  # fmt: skip

    page.evaluate("document.getElementById('mode').value = 'interpolate';"
                  "document.getElementById('mode').dispatchEvent(new Event('change'))")  # fmt: skip
    assert page.evaluate("document.body.className") == "mode-interpolate"
    page.click("#run")
    assert _result_size(page) == (64, 48)  # 384x288 sample at max side 64
    first = page.evaluate("document.getElementById('result').src")

    page.evaluate("document.getElementById('mode').value = 'multistyle';"
                  "document.getElementById('mode').dispatchEvent(new Event('change'))")  # fmt: skip
    page.click("[data-brush='1']")
    page.drag("#mask-canvas", [(0.1, 0.5), (0.3, 0.45), (0.5, 0.5), (0.7, 0.55), (0.9, 0.5)])
    painted = page.evaluate("state.labels.reduce((n, v) => n + (v === 1), 0)")
    assert painted > 100  # the brush stroke set pixels of the label map to style 2
    page.click("#run")
    page.wait_for(f"document.getElementById('result').src !== {json.dumps(first)}")
    assert _result_size(page) == (64, 48)
    assert page.evaluate("document.getElementById('error').textContent") == ""
    _save_screenshot(page, tmp_path, "demo-multistyle.png")


def test_server_errors_are_shown(page: Page, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature and nothing usable
    page.click("[data-content-sample=still-life]")
    page.wait_for("document.getElementById('content-preview').naturalWidth === 320")
    page.click(".style-row [data-style-sample=sunburst]")
    page.wait_for("document.querySelector('.style-row img').naturalWidth > 0")
    page.evaluate("document.getElementById('max-side').value = '5000'")  # above the server's limit
    page.click("#run")
    message = page.wait_for("document.getElementById('error').textContent")
    assert "422" in message and "max_side" in message
    page.set_file("#content-file", broken)
    assert "content" in page.wait_for("document.getElementById('error').textContent.includes('content') && "
                                      "document.getElementById('error').textContent")  # fmt: skip


def test_whole_style_option(page: Page, server: RunningServer, tmp_path: Path) -> None:
    from service.contract import StyleFit
    from service.pipeline import style_key

    content, style = tmp_path / "content.png", tmp_path / "panorama.png"
    content.write_bytes(image_bytes((80, 60), color=(30, 120, 200)))
    style.write_bytes(image_bytes((200, 60), color=(160, 60, 210)))
    assert page.evaluate("document.getElementById('whole-style').checked") is False  # the server's default: crop
    page.set_file("#content-file", content)
    page.set_file("#style-file-0", style)
    page.wait_for("document.querySelector('.style-row img').naturalWidth === 200")
    page.click("#whole-style")
    page.click("#run")
    assert _result_size(page) == (64, 48)
    assert page.evaluate("document.getElementById('error').textContent") == ""
    features = server.state.engine.cache.peek(style_key(style.read_bytes(), server.state.settings.style_size,
                                                        StyleFit.whole))  # fmt: skip
    assert features is not None and features.padded_size == (32, 64)  # the whole 200x60 style, at 64x19


def _run_clip(page: Page, tmp_path: Path) -> dict[str, Any]:
    """Pick a generated clip (64x48, 6 frames at 12 fps, AAC tone) and two styles, press Stylize, wait for the
    result; returns the job as the page last saw it."""
    from video_clips import make_clip

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_clip(frames=6))
    page.click("#add-style")
    page.set_file("#video-file", clip)
    page.wait_for("document.getElementById('content-video').src.startsWith('blob:')")
    # the preview's size arrives with its metadata and moves the layout: click only after it settled
    page.wait_for("(v => v.readyState >= 1 || v.error !== null)(document.getElementById('content-video'))")
    page.click(".style-row [data-style-sample=waves]")
    page.click(".style-row:nth-child(2) [data-style-sample=mosaic]")
    page.wait_for("[...document.querySelectorAll('.style-row img')].every((i) => i.naturalWidth > 0)")
    # every text the status line shows while the job runs
    page.evaluate(
        "window.seen = []; const line = document.getElementById('latency');"
        "new MutationObserver(() => seen.push(line.textContent)).observe(line, {childList: true, subtree: true})"
    )
    page.click("#run")
    page.wait_for("document.getElementById('result-video').src.startsWith('blob:')", timeout=60)
    return page.evaluate("state.job")


def test_a_clip_runs_as_a_video_job_with_progress_in_frames(page: Page, server: RunningServer, tmp_path: Path) -> None:
    page.click("#add-style")  # two styles, then a clip: multistyle is for photos only
    page.evaluate("document.getElementById('mode').value = 'multistyle';"
                  "document.getElementById('mode').dispatchEvent(new Event('change'))")  # fmt: skip
    page.click(".style-row:nth-child(2) .remove")
    job = _run_clip(page, tmp_path)
    assert page.evaluate("document.body.className").split() == ["mode-interpolate", "has-video"]
    assert page.evaluate("document.querySelector('#mode option[value=multistyle]').disabled") is True
    assert page.evaluate("getComputedStyle(document.getElementById('smoothing')).display") != "none"
    assert page.evaluate("getComputedStyle(document.getElementById('format')).display") == "none"  # always mp4
    assert (job["state"], job["kind"], job["mode"]) == ("done", "video", "interpolate")
    assert job["progress"] == {"done": 6, "total": 6, "unit": "frames"}
    assert any(text.endswith(("queued", "running")) and "/6 frames" in text for text in page.evaluate("seen"))
    assert page.evaluate("document.getElementById('error').textContent") == ""
    assert "6 frames at 12 fps · 64×48" in page.evaluate("document.getElementById('latency').textContent")
    link = page.evaluate("(() => { const a = document.getElementById('download'); return [a.hidden, a.download,"
                         " a.href === document.getElementById('result-video').src]; })()")  # fmt: skip
    assert link == [False, "stylized.mp4", True]
    assert page.evaluate("getComputedStyle(document.getElementById('result-video')).display") == "block"
    assert page.evaluate("getComputedStyle(document.getElementById('result')).display") == "none"
    mp4 = httpx.get(server.url + job["links"]["result"], timeout=30)
    assert mp4.headers["content-type"] == "video/mp4" and len(mp4.content) == job["result"]["bytes"]
    _save_screenshot(page, tmp_path, "demo-video.png")
    page.click("[data-content-sample=landscape]")  # a photo again: the clip is dropped
    page.wait_for("document.getElementById('content-preview').naturalWidth === 384")
    assert page.evaluate("document.body.className") == "mode-interpolate"
    assert page.evaluate("document.getElementById('content-video').hasAttribute('src')") is False


def test_the_clip_and_its_result_play_in_the_page(page: Page, tmp_path: Path) -> None:
    if not page.evaluate("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.640015\"')"):
        pytest.skip("this Chromium has no H.264 decoder (a build without proprietary codecs)")
    _run_clip(page, tmp_path)
    for element in ("result-video", "content-video"):
        found = f"document.getElementById('{element}')"
        page.wait_for(f"{found}.readyState >= 1 || {found}.error !== null", timeout=15)
        assert page.evaluate(f"{found}.error && {found}.error.message") is None
        assert page.evaluate(f"[{found}.videoWidth, {found}.videoHeight]") == [64, 48]
