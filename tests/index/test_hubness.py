"""Hubness correction (sbir.index.hubness): centring, CSLS, storage in the index, CLI."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sbir.errors import SbirError
from sbir.index.hubness import Hubness, HubnessError, SketchStats, center
from sbir.index.store import Index

from .index_helpers import synthetic_index, two_domain_vectors, unit, write_gallery, write_sketches


def test_center_and_csls_by_hand():
    rng = np.random.default_rng(0)
    photos = unit(rng.normal(size=(7, 5)) + 1.0).astype(np.float32)
    sketches = unit(rng.normal(size=(6, 5)) - 0.5).astype(np.float16)  # the statistics are kept as float16
    queries = unit(rng.normal(size=(3, 5))).astype(np.float32)
    k = 3
    hub = Hubness.fit("csls", photos, SketchStats(sketches, "test"), k=k)
    mp, ms = photos.astype(np.float64).mean(0), sketches.astype(np.float64).mean(0)
    np.testing.assert_allclose(hub.photo_mean, mp, atol=1e-6)
    np.testing.assert_allclose(hub.sketch_mean, ms, atol=1e-6)
    pc, sc, qc = unit(photos - mp), unit(sketches - ms), unit(queries - ms)
    r_g = []
    for g in pc:
        sims = sorted((float(g @ s) for s in sc), reverse=True)
        r_g.append(sum(sims[:k]) / k)
    np.testing.assert_allclose(hub.r_g, r_g, atol=1e-5)
    expected = 2 * qc @ pc.T - np.array(r_g)[None, :]
    np.testing.assert_allclose(hub.scores(queries, photos), expected, atol=1e-5)
    center_hub = Hubness.fit("center", photos, SketchStats(sketches, "test"))
    np.testing.assert_allclose(center_hub.scores(queries, photos), qc @ pc.T, atol=1e-5)
    assert center_hub.r_g is None
    none_hub = Hubness.fit("none", photos, None)
    np.testing.assert_allclose(none_hub.scores(queries, photos), queries @ photos.T, atol=1e-6)


def test_errors_are_clear():
    with pytest.raises(HubnessError, match="--hubness must be one of"):
        Hubness.fit("mutual", np.zeros((2, 3), np.float32), None)
    with pytest.raises(HubnessError, match="needs sketch statistics"):
        Hubness.fit("center", np.ones((2, 3), np.float32), None)
    with pytest.raises(HubnessError, match="another model"):
        Hubness.fit("center", np.ones((2, 3), np.float32), SketchStats(np.ones((4, 5), np.float32), "x"))


@pytest.mark.parametrize("kind", ["none", "hnsw"])
def test_index_applies_csls_like_the_hand_computation(tmp_path, kind):
    photos, sketches, queries = two_domain_vectors(1, 40)
    idx = synthetic_index(tmp_path, photos, sketches, "csls", kind)
    assert idx.hubness.method == "csls" and idx.searcher.index.d == 9  # [g, -r_g]
    ref = Hubness.fit("csls", photos, SketchStats(sketches, ""), k=3).scores(queries, photos)
    hits = idx.search_many(queries, 10, model_id="synthetic")
    for qi, row in enumerate(hits):
        order = np.argsort(-ref[qi], kind="stable")[:10]
        assert [h.id for h in row] == order.tolist()
        np.testing.assert_allclose([h.score for h in row], ref[qi][order], atol=1e-4)
    info = idx.info()["hubness"]
    assert info["method"] == "csls" and info["k"] == 3 and info["stat_sketches"] == 20


def test_synthetic_hub_stops_dominating(tmp_path):
    """A photo near the mean of all queries is everyone's first hit without correction, rarely with it."""
    rng = np.random.default_rng(2)
    dim, n_cls = 16, 8
    protos = unit(rng.normal(size=(n_cls, dim)))
    photo_offset, sketch_offset = unit(rng.normal(size=dim)) * 2.5, unit(rng.normal(size=dim)) * 2.5
    labels = np.repeat(np.arange(n_cls), 5)
    photos = unit(protos[labels] + photo_offset + 0.3 * rng.normal(size=(len(labels), dim)))
    queries = unit(protos[labels] + sketch_offset + 0.3 * rng.normal(size=(len(labels), dim)))
    stat_sketches = unit(protos[rng.integers(0, n_cls, 60)] + sketch_offset + 0.3 * rng.normal(size=(60, dim)))
    hub_vec = unit(queries.mean(0) + 0.05 * rng.normal(size=dim))
    photos = np.vstack([photos, hub_vec]).astype(np.float32)
    hub_id = len(photos) - 1
    first_hits = {}
    for method in ("none", "center", "csls"):
        idx = synthetic_index(tmp_path, photos, stat_sketches.astype(np.float32), method)
        hits = idx.search_many(queries.astype(np.float32), 1, model_id="synthetic")
        first_hits[method] = sum(h[0].id == hub_id for h in hits) / len(hits)
    assert first_hits["none"] > 0.8
    assert first_hits["center"] < 0.2
    assert first_hits["csls"] < 0.2


# ---------------------------------------------------------------- a real index with a real model


@pytest.fixture
def stats_dir(tmp_path) -> Path:
    d = tmp_path / "sketch-stats"
    write_sketches(d, 8)
    return d


def test_build_search_update_with_a_model(tmp_path, gallery, stats_dir, tiny_checkpoint, cli, capsys):
    from sbir.index.builder import build_index, update_index
    from sbir.index.model import QueryEncoder

    out = tmp_path / "idx"
    rep = build_index(  # expand=0: the hand computation below is csls alone (expansion: test_expansion.py)
        gallery,
        str(tiny_checkpoint),
        out,
        hubness="csls",
        sketch_stats=stats_dir,
        expand=0,
        progress=False,
        num_workers=0,
    )
    assert rep.hubness == "csls" and "sketch statistics" in rep.hubness_note
    idx = Index.open(out)
    assert idx.model.hubness == "csls" and str(stats_dir.resolve()) in idx.model.hubness_source
    assert (out / idx.generation / "hubness.npz").is_file()
    raw = np.asarray(idx.vectors, dtype=np.float32)
    np.testing.assert_allclose(idx.hubness.photo_mean, raw.mean(0), atol=1e-6)
    enc = QueryEncoder.for_index(idx)
    stat_imgs = [Image.open(p).convert("RGB") for p in sorted(stats_dir.glob("*.png"))]
    np.testing.assert_allclose(idx.hubness.sketch_mean, enc.encode(stat_imgs).mean(0), atol=5e-4)  # float16 set

    queries = write_sketches(tmp_path / "queries", 2, start=50)
    q = enc.encode([Image.open(p).convert("RGB") for p in queries])
    ref = idx.hubness.scores(q, raw)  # 2 cos(centred) - r_g
    api = idx.search_many(q, 3, model_id=enc.model_id)
    for qi in range(2):
        order = np.argsort(-ref[qi], kind="stable")[:3]
        assert [h.id for h in api[qi]] == order.tolist()

    # sbir search with several sketches: one list per sketch, same ids and scores as the API
    assert cli(["search", str(out), *map(str, queries), "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["hubness"] == "csls" and len(res["queries"]) == 2
    for qi, entry in enumerate(res["queries"]):
        assert entry["query"] == str(queries[qi]) and entry["k"] == 3
        assert [r["id"] for r in entry["results"]] == [h.id for h in api[qi]]
        np.testing.assert_allclose([r["score"] for r in entry["results"]], [h.score for h in api[qi]], atol=1e-4)
    # one sketch keeps the single-query shape
    assert cli(["search", str(out), str(queries[0]), "-k", "2", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in single["results"]] == [h.id for h in api[0][:2]]

    # sbir serve's service (unchanged) searches through Index.search_many: the same ranking
    from sbir.serve.service import SearchService

    svc = SearchService.from_index_dir(out)
    try:
        served = svc.search_image(Image.open(queries[1]).convert("RGB"), 3).hits
    finally:
        svc.close()
    assert [h.id for h in served] == [h.id for h in api[1]]
    np.testing.assert_allclose([h.score for h in served], [h.score for h in api[1]], atol=1e-4)

    assert cli(["index", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["hubness"]["method"] == "csls" and info["hubness"]["stat_sketches"] == 8

    # update: the setting is kept, photo statistics are re-estimated over the new gallery
    write_gallery(gallery, n=2, start=20)
    rep = update_index(out, progress=False, num_workers=0)
    assert rep.written and rep.hubness == "csls"
    new = Index.open(out)
    assert new.model.hubness == "csls" and len(new) == len(idx) + 2 and new.hubness.r_g.shape == (len(new),)
    raw2 = np.asarray(new.vectors, dtype=np.float32)
    np.testing.assert_allclose(new.hubness.photo_mean, raw2.mean(0), atol=1e-6)
    assert not np.allclose(new.hubness.photo_mean, idx.hubness.photo_mean)
    np.testing.assert_allclose(new.hubness.sketch_vectors, idx.hubness.sketch_vectors)
    ref2 = new.hubness.scores(q, raw2)
    got = new.search_many(q, 4, model_id=enc.model_id)
    assert [h.id for h in got[0]] == np.argsort(-ref2[0], kind="stable")[:4].tolist()


def test_build_refuses_missing_statistics(tmp_path, gallery, tiny_checkpoint, stats_dir):
    from sbir.index.builder import build_index

    kw = {"progress": False, "num_workers": 0}
    with pytest.raises(SbirError, match="--sketch-stats DIR"):
        build_index(gallery, str(tiny_checkpoint), tmp_path / "a", hubness="center", **kw)
    with pytest.raises(SbirError, match="only with --hubness center or csls"):
        build_index(gallery, str(tiny_checkpoint), tmp_path / "b", hubness="none", sketch_stats=stats_dir, **kw)
    with pytest.raises(SbirError, match="is not a folder"):
        build_index(gallery, str(tiny_checkpoint), tmp_path / "c", sketch_stats=tmp_path / "nope", **kw)
    # no statistics and no explicit choice: falls back to none, and says so
    rep = build_index(gallery, str(tiny_checkpoint), tmp_path / "d", **kw)
    assert rep.hubness == "none" and "no sketch statistics" in rep.hubness_note
    assert Index.open(tmp_path / "d").model.hubness == "none"
    assert "hubness" in asdict(Index.open(tmp_path / "d").model)


def test_center_helper_normalises():
    v = center(np.array([[3.0, 4.0], [1.0, 1.0]], np.float32), np.array([1.0, 1.0], np.float32))
    np.testing.assert_allclose(v[0], [0.5547002, 0.8320503], atol=1e-6)
    assert np.isfinite(v).all()


def test_explicit_hubness_with_a_trained_run_uses_its_training_sketches(tmp_path, gallery):
    """No --sketch-stats, no shipped statistics: the run's train split (split.json replayed) is the set."""
    import torch

    from sbir.config import ModelConfig, TrainConfig
    from sbir.data.policies import prepare_splits
    from sbir.engine.checkpoint import save_weights
    from sbir.index.builder import build_index
    from sbir.models.fgsbir import build_model

    data = tmp_path / "fg"
    for i in range(8):
        (data / "trainB").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (30 * i, 20, 200 - 20 * i)).save(data / "trainB" / f"{i:05d}.png")
    sk = write_sketches(tmp_path / "sk", 16)
    (data / "trainA").mkdir()
    for j, p in enumerate(sk):
        p.rename(data / "trainA" / f"{j // 2:05d}_{j % 2 + 1:02d}.png")
    cfg = TrainConfig(
        model=ModelConfig(
            backbone="test_efficientnet", pretrained=False, shared_encoder=True, head="linear", embed_dim=32
        )
    )
    cfg.data.image_size = 48
    cfg.data.path = str(data)
    run = tmp_path / "run"
    run.mkdir()
    _, train, val = prepare_splits(cfg, run, None, False, "photo")  # writes run/split.json
    torch.manual_seed(0)
    save_weights(build_model(cfg.model), run / "best.safetensors", cfg)

    kw = {"progress": False, "num_workers": 0}
    rep = build_index(gallery, str(run / "best.safetensors"), tmp_path / "default", **kw)
    assert rep.hubness == "none"  # trained runs are not corrected unless asked
    rep = build_index(gallery, str(run / "best.safetensors"), tmp_path / "idx", hubness="center", **kw)
    idx = Index.open(tmp_path / "idx")
    assert rep.hubness == "center" and "training sketches" in idx.model.hubness_source
    assert len(idx.hubness.sketch_vectors) == len(train.sketches) < 16  # validation sketches left out
    assert len(val.sketches) > 0
