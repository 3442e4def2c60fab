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
