"""The run report in a real browser: Debian's headless Chromium, driven by its own CLI
(`--dump-dom`, `--screenshot`) and over the DevTools protocol (console errors, clicks).

Skips with one reason where no `chromium` is installed (`.ci/run` installs it).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from mrcnn_cli.config import ModelConfig, SegmentConfig
from mrcnn_cli.journal import Journal
from mrcnn_cli.progress import RunSummary
from mrcnn_cli.writers.report import REPORT_FILE, ReportRun, write_run_report
from mrcnn_cli.writers.thumbs import thumb_path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium not found (apt-get install chromium; .ci/run does)"
    ),
    pytest.mark.slow,  # a model run and a browser: about 12 s for the module
]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
HOSTILE = "bad <b>bold\nnext.png"  # markup and a newline in a file name (no "/")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium(tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


class DevTools:
    """The smallest DevTools-protocol client that loads a page, evaluates script and
    clicks, and collects every console error, uncaught exception and failed load."""

    def __init__(self, profile: Path) -> None:
        import websocket  # the dev extra `websocket-client`

        self.proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost
        for _ in range(100):
            targets = json.load(opener.open(f"http://127.0.0.1:{port}/json/list", timeout=5))
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            time.sleep(0.05)
        self.ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while self.eval("document.readyState") != "complete" or not self.eval(
            "document.body && document.body.dataset.ready === '1'"
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading: {self.errors()}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView(); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)  # fmt: skip

    def choose(self, select_id: str, text: str) -> None:
        """Pick an option by its text, as a user's choice does (value, then `change`)."""
        self.eval(
            f"(() => {{ const s = document.getElementById({json.dumps(select_id)});"
            f" s.value = [...s.options].find(o => o.text === {json.dumps(text)}).value;"
            " s.dispatchEvent(new Event('change')); })()"
        )

    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, failed loads, so far."""
        self.call("Runtime.evaluate", expression="0")  # flush pending events
        found = []
        for ev in self.events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                thrown = details.get("exception", {}).get("description", "")
                found.append(f"{details.get('text', '')} {thrown}".strip())
            elif method == "Runtime.consoleAPICalled" and params["type"] in (
                "error",
                "warning",
                "assert",
            ):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"{params['entry']['source']}: {params['entry']['text']}")
        return found

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled examples plus one hostile broken file, segmented with --save report."""
    from mrcnn_cli.engine import run_segment

    root = tmp_path_factory.mktemp("report_run")
    images = root / "in"
    shutil.copytree(EXAMPLES, images)
    (images / HOSTILE).write_bytes(b"<b>not an image</b>")
    out = root / "out"
    cfg = SegmentConfig(inputs=(str(images),), out=out, model=ModelConfig("demo", device="cpu"),
                        save=("overlay", "coco", "report"))  # fmt: skip
    summary = run_segment(cfg)
    assert (summary.processed, len(summary.failed)) == (6, 1)
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("websocket", reason="websocket-client not installed (the dev extra)")
    tools = DevTools(tmp_path_factory.mktemp("profile"))
    yield tools
    tools.close()


@pytest.fixture
def page(browser: DevTools, run_dir: Path) -> DevTools:
    browser.events.clear()
    browser.open((run_dir / REPORT_FILE).as_uri())
    return browser


def classes_by_image(out: Path) -> dict[str, set[str]]:
    """From the run's own COCO files: which classes each image has."""
    names = {1: "circle", 2: "square", 3: "triangle"}  # the demo model's
    files = {i["id"]: i["file_name"] for i in json.loads((out / "images.json").read_text())}
    found: dict[str, set[str]] = {f: set() for f in files.values()}
    for det in json.loads((out / "predictions.json").read_text()):
        found[files[det["image_id"]]].add(names[det["category_id"]])
    return found


class _Text(HTMLParser):
    """Text of the elements with an id, and every tag name met (from a dumped DOM)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.stack: list[str | None] = []
        self.text: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in ("meta", "img", "br", "input", "link"):
            self.stack.append(dict(attrs).get("id"))

    def handle_endtag(self, tag: str) -> None:
        if self.stack and tag not in ("meta", "img", "br", "input", "link"):
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for key in self.stack:
            if key:
                self.text[key] = self.text.get(key, "") + data


# ----------------------------------------------------------------------------- CLI
def test_dumped_dom_shows_the_counts_and_names_the_failure_literally(run_dir, tmp_path):
    done = chromium(tmp_path / "p", "--dump-dom", (run_dir / REPORT_FILE).as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = _Text()
    parsed.feed(done.stdout)
    assert parsed.text["count-processed"].startswith("6")
    assert parsed.text["count-failed"].startswith("1")
    assert parsed.text["count-detections"].startswith("19")
    failures = parsed.text["failures"]
    assert "bad <b>bold\\nnext.png" in failures  # as text, the newline as \n
    assert "b" not in parsed.tags  # the name's markup did not become an element
    assert parsed.text["gallery"].count("detection") == 6


def test_screenshot_of_the_first_view_is_not_blank(run_dir, tmp_path):
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path / "p", f"--screenshot={shot}", "--window-size=1280,900",
                    (run_dir / REPORT_FILE).as_uri())  # fmt: skip
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = cv2.imread(str(shot))
    assert image.shape[:2] == (900, 1280)
    header, body = image[:60], image[100:]
    assert header.mean() < 80 < body.mean()  # the dark title bar above the light page
    colors = np.unique(image.reshape(-1, 3) // 32, axis=0)
    assert len(colors) > 8 and body.std() > 20  # text, bars and boxes, not a flat page


# ----------------------------------------------------------------------------- DevTools
def test_every_thumbnail_on_the_page_exists_and_loads(page, run_dir):
    page.eval("window.scrollTo(0, document.body.scrollHeight)")  # lazy images come into view
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        imgs = page.eval(
            "[...document.querySelectorAll('#gallery img')]"
            ".map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
        )
        if imgs and all(ok for _, ok in imgs):
            break
        time.sleep(0.1)
    assert len(imgs) == 6 and all(ok for _, ok in imgs), imgs
    for src, _ in imgs:
        assert (run_dir / src).is_file()
    names = page.eval("[...document.querySelectorAll('#gallery .card')].map(c => c.dataset.name)")
    assert sorted(src for src, _ in imgs) == sorted(
        thumb_path(run_dir, n).relative_to(run_dir).as_posix() for n in names
    )
    assert page.errors() == []


def test_filtering_by_a_class_shows_exactly_the_images_with_it(page, run_dir):
    truth = classes_by_image(run_dir)
    for cls in ("circle", "square", "triangle"):
        page.choose("class-filter", cls)
        shown = page.eval(
            "[...document.querySelectorAll('#gallery .card')].map(c => c.dataset.name)"
        )
        assert sorted(shown) == sorted(f for f, c in truth.items() if cls in c)
        assert f"class={cls}" in page.eval("location.hash")
    assert 0 < len(shown) < 6  # the filter really narrowed the gallery
    page.choose("class-filter", "all (6)")
    assert page.eval("document.querySelectorAll('#gallery .card').length") == 6
    assert page.errors() == []


def test_a_linked_view_opens_filtered(browser, run_dir):
    browser.call("Page.navigate", url="about:blank")  # a fresh load, not a hash change
    browser.open((run_dir / REPORT_FILE).as_uri() + "#class=circle&sort=lowest")
    shown = browser.eval(
        "[...document.querySelectorAll('#gallery .card')].map(c => c.dataset.name)"
    )
    assert sorted(shown) == sorted(f for f, c in classes_by_image(run_dir).items() if "circle" in c)
    assert browser.eval("document.getElementById('sort').value") == "lowest"
    browser.eval("location.hash = 'class=square'")  # back/forward and edited links too
    time.sleep(0.2)
    shown = browser.eval(
        "[...document.querySelectorAll('#gallery .card')].map(c => c.dataset.name)"
    )
    assert sorted(shown) == sorted(f for f, c in classes_by_image(run_dir).items() if "square" in c)
    assert browser.eval("document.getElementById('sort').value") == "input"


def test_sorting_by_lowest_score_puts_the_least_sure_image_first(page, run_dir):
    page.choose("sort", "lowest score first")
    first = page.eval("document.querySelector('#gallery .card').dataset.name")
    files = {i["id"]: i["file_name"] for i in json.loads((run_dir / "images.json").read_text())}
    scores = json.loads((run_dir / "predictions.json").read_text())
    worst = min(scores, key=lambda d: d["score"])
    assert first == files[worst["image_id"]]


@pytest.fixture(scope="module")
def big_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report of 130 synthetic images (no thumbnails): three pages of cards."""
    out = tmp_path_factory.mktemp("big")
    journal = Journal(out)
    rels = [f"img{i:03d}.jpg" for i in range(130)]
    for i, rel in enumerate(rels):
        dets = [{"category_id": 1 + i % 2, "score": 0.5 + (i % 50) / 100}] * (i % 4)
        journal.record(rel, source=rel, image_id=i, width=640, height=480, results=dets,
                       settings_hash="s")  # fmt: skip
    run = ReportRun("segment", out, save=("coco",))
    summary = RunSummary(total=130, processed=130, skipped=0)
    assert write_run_report(out / REPORT_FILE, run, summary, journal, rels, "s",
                            ("bg", "a", "b"), (0, 1, 2)) == []  # fmt: skip
    return out


def test_pages_hold_sixty_cards_and_the_buttons_turn_them(browser, big_report):
    browser.events.clear()
    browser.open((big_report / REPORT_FILE).as_uri())
    cards = "document.querySelectorAll('#gallery .card').length"
    info = "document.getElementById('page-info').textContent"
    assert browser.eval(cards) == 60 and browser.eval(info).startswith("page 1 of 3")
    browser.click("#next")
    browser.click("#next")
    assert browser.eval(cards) == 10 and browser.eval(info).startswith("page 3 of 3")
    assert browser.eval("document.getElementById('next').disabled") is True
    browser.click("#prev")
    assert browser.eval("document.querySelector('#gallery .card').dataset.name") == "img060.jpg"
    assert browser.eval("document.querySelectorAll('#gallery img').length") == 0
    assert browser.errors() == []


def test_the_error_check_sees_console_errors_and_exceptions(browser, tmp_path):
    """The `errors() == []` checks above can fail: a page with errors is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<body><script>console.error('boom'); document.body.dataset.ready = '1';"
        " setTimeout(() => undefinedFunction(), 0);</script></body>"
    )
    browser.events.clear()
    browser.open(bad.as_uri())
    time.sleep(0.2)
    found = browser.errors()
    assert any("boom" in e for e in found) and any("undefinedFunction" in e for e in found)


def test_the_report_needs_no_network(run_dir):
    html = (run_dir / REPORT_FILE).read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert os.path.getsize(run_dir / REPORT_FILE) < 50_000


def test_eval_report_shows_the_coco_table_and_its_pictures_load(browser, tmp_path):
    from mrcnn_cli.config import EvalConfig
    from mrcnn_cli.evaluation.run import run_eval

    out = tmp_path / "eval"
    cfg = EvalConfig(ann=EXAMPLES.parent / "instances.json", out=out, images=EXAMPLES,
                     model=ModelConfig("demo", device="cpu"), gallery=2)  # fmt: skip
    run_eval(cfg)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    browser.events.clear()
    browser.open((out / REPORT_FILE).as_uri())
    rows = browser.eval(
        "[...document.querySelectorAll('#eval-stats tbody tr')]"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )
    assert rows[0] == ["AP", f"{metrics['bbox']['stats']['AP']:.3f}",
                       f"{metrics['segm']['stats']['AP']:.3f}"]  # fmt: skip
    assert len(rows) == 12
    classes = browser.eval("[...document.querySelectorAll('#eval-classes tbody tr')].length")
    assert classes == 3
    browser.eval("window.scrollTo(0, document.body.scrollHeight)")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        loaded = browser.eval(
            "[...document.querySelectorAll('#eval-section img')].map(i => i.naturalWidth > 0)"
        )
        if loaded and all(loaded):
            break
        time.sleep(0.1)
    assert len(loaded) >= 5 and all(loaded)  # 4 PR plots and the worst images
    assert (
        browser.eval("getComputedStyle(document.getElementById('gallery-section')).display")
        == "none"
    )
    assert browser.errors() == []


def test_thumbnails_of_odd_names_load(browser, tmp_path):
    """Names the page must percent-encode (`#`, `?`, `%`, spaces) or cannot spell (not
    UTF-8: the URL then comes from the name's bytes)."""
    from mrcnn_cli.engine import run_segment

    folder = tmp_path / "in"
    folder.mkdir()
    source = (EXAMPLES / "000001.png").read_bytes()
    (folder / "odd #1?%25 x.png").write_bytes(source)
    (Path(os.fsdecode(bytes(folder) + b"/caf\xe9.png"))).write_bytes(source)
    out = tmp_path / "out"
    cfg = SegmentConfig(inputs=(str(folder),), out=out, model=ModelConfig("demo", device="cpu"),
                        save=("overlay", "report"))  # fmt: skip
    assert run_segment(cfg).processed == 2
    browser.events.clear()
    browser.open((out / REPORT_FILE).as_uri())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        loaded = browser.eval(
            "[...document.querySelectorAll('#gallery img')].map(i => i.naturalWidth)"
        )
        if len(loaded) == 2 and all(loaded):
            break
        time.sleep(0.1)
    assert len(loaded) == 2 and all(loaded), loaded
    names = browser.eval(
        "[...document.querySelectorAll('#gallery .card')].map(c => c.dataset.name)"
    )
    assert sorted(names) == ["caf\\xe9.png", "odd #1?%25 x.png"]
    assert browser.errors() == []
