"""Real-browser test of the drawing page: ``sbir serve`` on loopback, headless Chromium via Playwright.

The server is the real command (``python -m sbir.cli serve``) in a subprocess
over an index of generated shapes built with the pretrained model. Chromium
draws a shape's outline on the canvas with the mouse (and with touch and pen
input), and the test checks that result images appear without a page reload
and that the top result is the photo of that shape.

Needs Debian's ``chromium`` (``apt-get install chromium``); without it the
tests are skipped, unless ``SBIR_REQUIRE_BROWSER=1`` (CI), where that fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from .shapes import SHAPES, outline

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("SBIR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(shape_index):
    _, index_dir = shape_index
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sbir.cli",
            "serve",
            str(index_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sbir serve exited with {proc.returncode}: {proc.stdout.read().decode()[-3000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("sbir serve did not answer /healthz within 180 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        msg = f"Chromium not found at {CHROMIUM}; install it with 'apt-get install chromium'"
        if os.environ.get("SBIR_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture
def page(browser, server):
    # bypass_csp: Playwright's own polling helpers use eval, which the page's CSP (rightly) forbids;
    # the CSP header itself is asserted by the API tests.
    context = browser.new_context(viewport={"width": 1100, "height": 850}, has_touch=True, bypass_csp=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    pg.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.goto(server + "/")
    pg.wait_for_function("() => document.getElementById('info').textContent.includes('10 images')")
    pg.evaluate("() => { window.__sameDocument = true; }")
    yield pg
    assert pg.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    context.close()
    assert not errors, errors


def canvas_box(pg) -> dict:
    return pg.evaluate(
        """() => { const c = document.getElementById('sketch'); const r = c.getBoundingClientRect();
                  return {x: r.left + c.clientLeft, y: r.top + c.clientTop, w: c.clientWidth, h: c.clientHeight}; }"""
    )


def draw_with_mouse(pg, points) -> None:
    """One stroke through ``points`` (unit coordinates on the canvas)."""
    box = canvas_box(pg)
    xy = [(box["x"] + x * box["w"], box["y"] + y * box["h"]) for x, y in points]
    pg.mouse.move(*xy[0])
    pg.mouse.down()
    for x, y in xy[1:]:
        pg.mouse.move(x, y, steps=4)
    pg.mouse.up()


def searches_done(pg) -> int:
    return pg.evaluate("() => window.__searches || 0")


def wait_for_results(pg, after: int = 0) -> list[dict]:
    """Wait for a completed search (counted by a hook on fetch) whose results and thumbnails are shown."""
    # (function expressions, not bare expressions: the page's CSP forbids eval, which Playwright uses for those)
    pg.wait_for_function(f"() => (window.__searches || 0) > {after}")
    pg.wait_for_function("() => document.getElementById('status').textContent.includes('results in')")
    pg.wait_for_function(
        """() => { const imgs = Array.from(document.querySelectorAll('#results img'));
                  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"""
    )
    return pg.evaluate(
        """() => Array.from(document.querySelectorAll('#results a.result'))
                  .map(a => ({rank: +a.dataset.rank, path: a.dataset.path, href: a.getAttribute('href')}))"""
    )


def count_searches(pg) -> None:
    pg.evaluate(
        """() => { const orig = window.fetch; window.__searches = 0;
                  window.fetch = async (...args) => { const r = await orig(...args);
                    if (String(args[0]).includes('/api/search')) r.clone().json().then(() => { window.__searches++; });
                    return r; }; }"""
    )


@pytest.mark.parametrize("shape", ["moon", "heart"])
def test_drawn_copy_of_a_photo_finds_that_photo(page, shape):
    count_searches(page)
    draw_with_mouse(page, outline(shape))
    results = wait_for_results(page)
    assert len(results) == 10
    assert [r["rank"] for r in results] == list(range(1, 11))
    assert results[0]["path"] == f"{shape}.png", results[:3]
    assert sorted(r["path"] for r in results) == sorted(f"{n}.png" for n in SHAPES)
    assert results[0]["href"].startswith("/api/images/")


def test_results_update_stroke_by_stroke_and_tools_work(page):
    count_searches(page)
    pts = outline("moon")
    half = len(pts) // 2
    draw_with_mouse(page, pts[: half + 1])
    wait_for_results(page, after=0)
    first = searches_done(page)
    assert first >= 1
    draw_with_mouse(page, pts[half:])
    results = wait_for_results(page, after=first)
    assert results[0]["path"] == "moon.png"
    assert page.evaluate("() => window.sbir.strokes().length") == 2

    # undo removes the last stroke and searches again with the rest
    n = searches_done(page)
    page.click("#undo")
    wait_for_results(page, after=n)
    assert page.evaluate("() => window.sbir.strokes().length") == 1

    # brush size: new strokes use the slider's width
    page.fill("#brush", "12")
    assert page.text_content("#brush-value") == "12"
    draw_with_mouse(page, [(0.1, 0.1), (0.2, 0.15)])
    assert page.evaluate("() => window.sbir.strokes().slice(-1)[0].width") == 12

    # clear empties canvas and results
    page.click("#clear")
    assert page.evaluate("() => window.sbir.strokes().length") == 0
    page.wait_for_function("() => document.querySelectorAll('#results li').length === 0")
    blank = page.evaluate(
        """() => { const c = document.getElementById('sketch');
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  for (let i = 0; i < d.length; i += 4) if (d[i] < 250) return false; return true; }"""
    )
    assert blank


def test_upload_button_searches_with_the_file(page, shape_index):
    gallery, _ = shape_index
    count_searches(page)
    page.set_input_files("#upload", str(gallery / "heart.png"))
    results = wait_for_results(page)
    assert results[0]["path"] == "heart.png"


def test_touch_input_draws_and_searches(page):
    """Real touch events through the DevTools protocol become pointer events of type touch."""
    count_searches(page)
    page.evaluate(
        """() => { window.__types = [];
                  document.getElementById('sketch')
                    .addEventListener('pointerdown', e => window.__types.push(e.pointerType)); }"""
    )
    box = canvas_box(page)
    cdp = page.context.new_cdp_session(page)
    pts = [(box["x"] + x * box["w"], box["y"] + y * box["h"]) for x, y in outline("heart")]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": pts[0][0], "y": pts[0][1]}]})
    for x, y in pts[1:]:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    results = wait_for_results(page)
    assert page.evaluate("() => window.__types") == ["touch"]
    assert page.evaluate("() => window.sbir.strokes().length") == 1
    assert results[0]["path"] == "heart.png"


def test_pen_input_draws_and_searches(page):
    """A stylus stroke (pointerType pen) is drawn like any other."""
    count_searches(page)
    box = canvas_box(page)
    pts = [(box["x"] + x * box["w"], box["y"] + y * box["h"]) for x, y in outline("moon")]
    page.evaluate(
        """(pts) => { const c = document.getElementById('sketch');
             const ev = (type, [x, y]) => c.dispatchEvent(new PointerEvent(type, {pointerId: 7, pointerType: 'pen',
                 isPrimary: true, clientX: x, clientY: y, button: type === 'pointermove' ? -1 : 0, buttons: 1,
                 pressure: 0.5, bubbles: true}));
             ev('pointerdown', pts[0]); pts.slice(1).forEach(p => ev('pointermove', p));
             ev('pointerup', pts[pts.length - 1]); }""",
        [list(p) for p in pts],
    )
    results = wait_for_results(page)
    assert page.evaluate("() => window.sbir.strokes().length") == 1
    assert results[0]["path"] == "moon.png"


def test_failed_upload_clears_the_previous_results(browser, server, tmp_path):
    # its own page: the 400 this test provokes is logged by the browser, which the page fixture counts as an error
    context = browser.new_context(viewport={"width": 1100, "height": 850}, bypass_csp=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(server + "/")
        pg.wait_for_function("() => document.getElementById('info').textContent.includes('10 images')")
        count_searches(pg)
        draw_with_mouse(pg, outline("moon"))
        wait_for_results(pg)
        assert pg.evaluate("() => document.querySelectorAll('#results li').length") == 10
        bad = tmp_path / "not-an-image.png"
        bad.write_bytes(b"this is not an image")
        pg.set_input_files("#upload", str(bad))
        pg.wait_for_function("() => document.getElementById('status').textContent.startsWith('Search failed')")
        assert "not an image" in pg.text_content("#status")
        assert pg.evaluate("() => document.querySelectorAll('#results li').length") == 0
    finally:
        context.close()


@pytest.mark.parametrize(
    "path, ready",
    [
        ("/docs", "() => document.querySelectorAll('.opblock-summary-path').length >= 4"),
        ("/redoc", "() => document.body.innerText.includes('Search the index with a sketch')"),
    ],
)
def test_api_docs_work_with_no_network(browser, server, path, ready):
    """Swagger UI and ReDoc come from the server itself: with every other host unreachable the operations show."""
    context = browser.new_context(viewport={"width": 1100, "height": 850})
    outside: list[str] = []

    def only_the_server(route):
        if route.request.url.startswith(server):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    context.route("**/*", only_the_server)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(server + path)
        pg.wait_for_function(ready)
        text = pg.evaluate("() => document.body.innerText")
        for op in ("/api/search", "/healthz", "/api/info"):
            assert op in text, op
        assert not outside, outside
    finally:
        context.close()


def test_example_sketch_searches_and_shows_the_raster(page):
    """An example button draws a Quick, Draw! sketch, searches, and shows the server's raster of it."""
    count_searches(page)
    page.wait_for_function("() => document.querySelectorAll('#examples button.example').length >= 3")
    names = page.evaluate("() => Array.from(document.querySelectorAll('#examples .example')).map(b => b.dataset.name)")
    assert "star" in names and "cat" in names
    page.click("#examples button[data-name='star']")
    results = wait_for_results(page)
    assert len(results) == 10
    assert page.evaluate("() => window.sbir.strokes().length") >= 1
    page.wait_for_function(
        """() => { const i = document.getElementById('preview');
                  return !document.getElementById('preview-box').hidden && i.complete && i.naturalWidth === 256; }"""
    )
    # the preview is the server's raster of exactly what was searched: ink present, white background
    ink = page.evaluate(
        """() => { const i = document.getElementById('preview'); const c = document.createElement('canvas');
                  c.width = 256; c.height = 256; const x = c.getContext('2d'); x.drawImage(i, 0, 0);
                  const d = x.getImageData(0, 0, 256, 256).data; let dark = 0, rows = new Set();
                  for (let p = 0; p < d.length; p += 4) if (d[p] < 128) { dark++; rows.add(Math.floor(p / 4 / 256)); }
                  return {dark, span: rows.size, corner: d[0]}; }"""
    )
    assert ink["dark"] > 200 and ink["span"] > 150 and ink["corner"] == 255, ink  # fitted to the frame
    # clear hides the preview
    page.click("#clear")
    page.wait_for_function("() => document.getElementById('preview-box').hidden")


def test_more_like_this_shows_similar_photos(page):
    count_searches(page)
    draw_with_mouse(page, outline("moon"))
    results = wait_for_results(page)
    assert results[0]["path"] == "moon.png"
    n = searches_done(page)
    page.click("#results li:first-child button.similar")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('photos like moon.png')")
    after = wait_for_results(page, after=n)
    assert len(after) == 9 and "moon.png" not in [r["path"] for r in after]
    assert [r["rank"] for r in after] == list(range(1, 10))


@pytest.fixture(scope="module")
def keyed_server(shape_index):
    """``sbir serve --api-key`` in a subprocess; yields (url, start-up output)."""
    _, index_dir = shape_index
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sbir.cli", "serve", str(index_dir), "--port", str(port), "--api-key", "k3y"]
        + ["--log-level", "warning", "--no-access-log", "--max-queue-ms", "800"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"sbir serve exited with {proc.wait()}: {''.join(lines)[-3000:]}")
            lines.append(line)
            if line.startswith("serving"):
                break
        yield f"http://127.0.0.1:{port}", "".join(lines)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_api_key_page_sends_the_key(browser, keyed_server):
    url, startup = keyed_server
    assert "runtime: torch" in startup and "API key required" in startup, startup
    assert httpx.get(url + "/api/info").status_code == 401
    info = httpx.get(url + "/api/info", headers={"X-API-Key": "k3y"}).json()
    assert info["runtime"] == "torch" and info["threads"] >= 1 and info["max_queue_ms"] == 800
    context = browser.new_context(viewport={"width": 1100, "height": 850}, bypass_csp=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(url + "/")
        pg.wait_for_function("() => document.getElementById('info').textContent.includes('needs an API key')")
        assert pg.is_visible("#apikey")
        pg.fill("#apikey", "k3y")
        pg.click("#apikey-set")
        pg.wait_for_function("() => document.getElementById('info').textContent.includes('torch')")
        count_searches(pg)
        draw_with_mouse(pg, outline("heart"))
        results = wait_for_results(pg)  # thumbnails fetched with the key (blob URLs) are shown
        assert results[0]["path"] == "heart.png"
        assert pg.evaluate("() => document.querySelector('#results img').src.startsWith('blob:')")
    finally:
        context.close()
