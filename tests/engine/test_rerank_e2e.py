"""The trained re-ranker end to end: trained with the embedding, saved and restored with the checkpoint,
used by ``sbir eval`` (rerank_acc@K) and by index search (re-orders the top-K hits only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sbir.cli import main
from sbir.config import load_config
from sbir.engine.inference import load_model
from sbir.engine.trainer import Trainer

pytestmark = pytest.mark.slow
K = 4


@pytest.fixture(scope="module")
def rerank_run(tiny_paired_dataset: Path, tmp_path_factory):
    """An EfficientNet-Lite0 run with a re-ranker on its last feature map's positions (2x2 at 64 px)."""
    run = tmp_path_factory.mktemp("rerank") / "run"
    cfg = load_config(
        None,
        [
            f"data.path={tiny_paired_dataset}",
            "data.image_size=64",
            "data.num_workers=0",
            "model.pretrained=false",
            "model.embed_dim=32",
            "model.rerank=true",
            "model.rerank_dim=32",
            f"model.rerank_top_k={K}",
            "model.rerank_negatives=3",
            "optim.epochs=1",
            "optim.batch_size=8",
            "optim.max_steps_per_epoch=3",
        ],
    )
    trainer = Trainer(cfg, run, progress=False)
    before = {k: v.clone() for k, v in trainer.model.reranker.state_dict().items()}
    trainer.fit()
    return run, before


def test_reranker_is_trained_saved_and_restored(rerank_run):
    run, before = rerank_run
    saved = load_file(str(run / "best.safetensors"))
    keys = [k for k in saved if k.startswith("reranker.")]
    assert keys, "the checkpoint holds no re-ranker weights"
    model, cfg, _ = load_model(run)
    assert cfg.model.rerank and model.reranker is not None and model.rerank_top_k == K
    restored = model.reranker.state_dict()
    for k in keys:
        assert torch.equal(restored[k[len("reranker.") :]], saved[k]), k
    changed = [k for k, v in before.items() if not torch.equal(v, restored[k])]
    assert len(changed) > len(before) // 2, "training did not update the re-ranker"
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train_rerank" in header and "val_rerank_acc@1" in header


def test_eval_reports_plain_and_reranked_accuracy(rerank_run, capsys):
    run, _ = rerank_run
    assert main(["eval", str(run), "--split", "test", "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert "rerank_ranks" not in printed and printed["rerank_top_k"] == K
    m = json.loads((run / "eval-test" / "metrics.json").read_text())
    plain, rer = np.array(m["ranks"]), np.array(m["rerank_ranks"])
    assert len(rer) == len(plain) == m["n_queries"]
    assert np.array_equal(rer[plain > K], plain[plain > K])  # below the top-K nothing moves
    assert (rer[plain <= K] <= K).all()
    assert m[f"rerank_acc@{1}"] == pytest.approx(100 * np.mean(rer <= 1))
    assert m["rerank_acc@5"] == m["acc@5"]  # re-ordering inside the top 4 cannot change Acc@5


def test_index_search_reranks_the_top_k_only(rerank_run, tiny_paired_dataset: Path, tmp_path, capsys):
    from sbir.index.model import QueryEncoder
    from sbir.index.store import Index

    run, _ = rerank_run
    idx = tmp_path / "idx"
    gallery = tiny_paired_dataset / "testB"
    assert (
        main(
            ["index", "build", str(gallery), "--model", str(run), "--out", str(idx), "--workers", "0", "--no-progress"]
        )
        == 0
    )
    index = Index.open(idx)
    enc = QueryEncoder.for_index(index)
    assert enc.rerank_k == K
    sketch = sorted((tiny_paired_dataset / "testA").iterdir())[0]
    from sbir.data.image_io import load_image

    img = load_image(sketch)
    plain = index.search(enc.encode([img])[0], 8, model_id=enc.model_id)
    reranked = enc.rerank(img, plain, index)
    assert sorted(h.id for h in reranked[:K]) == sorted(h.id for h in plain[:K])
    assert [(h.id, h.score, h.rank) for h in reranked[K:]] == [(h.id, h.score, h.rank) for h in plain[K:]]
    assert [h.rank for h in reranked[:K]] == list(range(1, K + 1))
    assert all(a.score >= b.score for a, b in zip(reranked[: K - 1], reranked[1:K], strict=True))

    capsys.readouterr()
    assert main(["search", str(idx), str(sketch), "-k", "6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in out["results"]] == [h.id for h in reranked[:6]]
    assert main(["search", str(idx), str(sketch), "-k", "6", "--json", "--no-rerank"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in out["results"]] == [h.id for h in plain[:6]]


def test_serve_reranks_the_top_k_unless_told_not_to(rerank_run, tiny_paired_dataset: Path, tmp_path):
    from fastapi.testclient import TestClient

    from sbir.data.image_io import load_image
    from sbir.serve.app import app_from_index_dir
    from sbir.serve.service import ServeSettings

    run, _ = rerank_run
    idx = tmp_path / "idx"
    gallery = tiny_paired_dataset / "testB"
    args = ["index", "build", str(gallery), "--model", str(run), "--out", str(idx), "--workers", "0", "--no-progress"]
    assert main(args) == 0
    sketch = sorted((tiny_paired_dataset / "testA").iterdir())[0]
    ids = {}
    for rerank in (True, False):
        app = app_from_index_dir(idx, settings=ServeSettings(rerank=rerank))
        with TestClient(app) as client:
            r = client.post("/api/search?k=6", files={"file": ("s.png", sketch.read_bytes(), "image/png")})
            assert r.status_code == 200, r.text
            ids[rerank] = [h["id"] for h in r.json()["results"]]
            assert (r.json()["timings_ms"]["rerank"] > 0) == rerank
        service = app.state.service
    enc, index = service.encoder, service.index
    img = load_image(sketch)
    plain = index.search(enc.encode([img])[0], 8, model_id=enc.model_id)
    assert ids[False] == [h.id for h in plain[:6]]
    assert ids[True] == [h.id for h in enc.rerank(img, plain, index)[:6]]


def test_serve_settings_refuse_a_non_boolean_rerank():
    from sbir.errors import ConfigError
    from sbir.serve.service import ServeSettings

    with pytest.raises(ConfigError, match="rerank"):
        ServeSettings(rerank=1)
