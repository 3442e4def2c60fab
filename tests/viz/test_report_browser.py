"""``sbir report``: the page in headless Chromium (Playwright) shows every figure and the metrics table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sbir.cli import main
from tests.serve.test_serve_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def report_page(tiny_paired_dataset: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("report") / "vit"
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_paired_dataset),
                "--out",
                str(run),
                "--epochs",
                "2",
                "--workers",
                "0",
                "--no-progress",
                "--image-size",
                "64",
                "--batch-size",
                "8",
                "--set",
                "model.backbone=vit_tiny_patch16_224",
                "model.pretrained=false",
                "model.backbone_kwargs={depth: 2}",
                "model.shared_encoder=true",
                "model.embed_dim=32",
                "optim.max_steps_per_epoch=2",
            ]
        )
        == 0
    )
    assert main(["report", str(run), "--data", str(tiny_paired_dataset), "--no-progress"]) == 0
    return run / "report" / "index.html"


def test_report_files(report_page: Path):
    root = report_page.parent
    for name in ("curves.png", "val/retrieval.png", "test/retrieval.png", "tsne.png", "attention_distance.png"):
        assert (root / name).stat().st_size > 1000, name
    dist = json.loads((root / "attention_distance.json").read_text())
    assert list(dist) == ["shared"]


def test_report_page_in_chromium(report_page: Path):
    if not os.path.exists(CHROMIUM):
        msg = f"Chromium not found at {CHROMIUM}"
        if os.environ.get("SBIR_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    test_metrics = json.loads((report_page.parent / "test" / "metrics.json").read_text())
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda req: errors.append(f"failed: {req.url}"))
            page.goto(report_page.resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                "() => [...document.images].map(i => ({src: i.getAttribute('src'), w: i.naturalWidth}))"
            )
            srcs = {i["src"]: i["w"] for i in images}
            assert set(srcs) == {
                "curves.png",
                "val/retrieval.png",
                "test/retrieval.png",
                "tsne.png",
                "attention_distance.png",
            }
            assert all(w > 100 for w in srcs.values()), srcs  # every figure decoded
            header = page.eval_on_selector_all("#metrics thead th", "els => els.map(e => e.textContent)")
            assert header == ["metric", "validation", "test"]
            row = page.eval_on_selector_all('#metrics tr[data-metric="acc@1"] td', "els => els.map(e => e.textContent)")
            assert row[1] == f"{test_metrics['acc@1']:.2f}"
            assert page.is_visible("#fig-attention figcaption")
            assert not errors, errors
        finally:
            browser.close()
