"""Database-side augmentation (sbir.index.dba): neighbours, the averaged gallery, the index, its default and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sbir.errors import SbirError
from sbir.index.dba import DBA_WEIGHT, DEFAULT_DBA, check_dba, gallery_neighbours
from sbir.index.hubness import Hubness, HubnessError, SketchStats
from sbir.index.store import Index

from .index_helpers import (
    class_clusters,
    precision_at,
    synthetic_index,
    two_domain_vectors,
    unit,
    write_gallery,
    write_sketches,
)


def _hand_augmented(photos: np.ndarray, k: int, weight: float = DBA_WEIGHT) -> np.ndarray:
    """Centred photos, each plus ``weight`` times the mean of its k most similar other centred photos."""
    c = unit(photos - photos.astype(np.float64).mean(0))
    sims = c @ c.T
    np.fill_diagonal(sims, -np.inf)
    out = []
    for i in range(len(c)):
        nb = np.argsort(-sims[i], kind="stable")[:k]
        out.append(c[i] + weight * c[nb].mean(0))
    return unit(np.array(out))


def test_gallery_neighbours_by_hand():
    x = unit(np.array([[1, 0, 0], [0.9, 0.1, 0], [0.8, 0.3, 0], [0.1, 0, 1], [0, 0.2, 1]], np.float64))
    x = x.astype(np.float32)
    nb = gallery_neighbours(x, 2)
    assert nb.shape == (5, 2) and nb.dtype == np.int64
    assert nb[0].tolist() == [1, 2] and nb[3].tolist() == [4, 0]
    assert all(i not in row for i, row in enumerate(nb))  # never its own neighbour
    # fewer other photos than asked: -1 padding; one photo has none
    small = gallery_neighbours(x[:2], 3)
    assert small.tolist() == [[1, -1, -1], [0, -1, -1]]
    assert gallery_neighbours(x[:1], 3).tolist() == [[-1, -1, -1]]
    # a duplicate (same vector) is a neighbour like any other photo, and the row itself still is not
    dup = gallery_neighbours(np.vstack([x, x[:1]]), 1)
    assert dup[0].tolist() == [5] and dup[5].tolist() == [0]


@pytest.mark.parametrize("bad", [-1, 2.5, "5", True])
def test_bad_dba_is_one_clear_error(bad):
    with pytest.raises(SbirError, match="--dba must be a whole number"):
        check_dba(bad)


def test_fit_augments_the_centred_gallery_and_scores_on_it():
    photos, sketches, queries = two_domain_vectors(2, 30)
    hub = Hubness.fit("csls", photos, SketchStats(sketches, ""), k=3, dba=4)
    expected = _hand_augmented(photos, 4)
    np.testing.assert_allclose(hub.gallery(photos), expected, atol=1e-5)
    # any subset, read row by row from the raw gallery, equals the same rows of the whole
    np.testing.assert_allclose(hub.gallery(photos, np.array([7, 2, 7])), expected[[7, 2, 7]], atol=1e-5)
    # csls's r_g is measured on the augmented photos
    sc = unit(sketches.astype(np.float16).astype(np.float64) - sketches.astype(np.float16).astype(np.float64).mean(0))
    r_g = np.sort(expected @ sc.T, axis=1)[:, -3:].mean(1)
    np.testing.assert_allclose(hub.r_g, r_g, atol=1e-5)
    qc = unit(queries - sketches.astype(np.float16).astype(np.float64).mean(0))
    np.testing.assert_allclose(hub.scores(queries, photos), 2 * qc @ expected.T - r_g[None], atol=1e-5)
    # photo queries ("more like this") are centred, not averaged with anything
    np.testing.assert_allclose(hub.photos(photos[:2]), unit(photos[:2] - photos.astype(np.float64).mean(0)), atol=1e-5)
    # an update re-finds the neighbours in the new gallery
    again = hub.refit(photos[:10])
    assert again.dba == 4 and again.neighbours.shape == (10, 4) and again.neighbours.max() < 10
    assert hub.summary()["dba"] == 4
    with pytest.raises(HubnessError, match="needs --hubness center or csls"):
        Hubness.fit("none", photos, None, dba=3)


@pytest.mark.parametrize("kind", ["none", "hnsw"])
def test_index_searches_the_augmented_gallery_and_expands_with_it(tmp_path, kind):
    photos, sketches, queries = two_domain_vectors(3, 40)
    idx = synthetic_index(tmp_path, photos, sketches, "csls", kind, expand=4, dba=3)
    hub = Hubness.fit("csls", photos, SketchStats(sketches, ""), k=3, dba=3)
    qs, gs = hub.queries(queries), hub.gallery(photos)
    first = 2 * qs @ gs.T - hub.r_g[None]
    np.testing.assert_allclose(gs, _hand_augmented(photos, 3), atol=1e-5)
    top = np.argsort(-first, axis=1, kind="stable")[:, :4]
    moved = unit(qs + 16.0 * gs[top].mean(1))  # query expansion's default weight, with augmented photos
    ref = 2 * moved @ gs.T - hub.r_g[None]
    for qi, row in enumerate(idx.search_many(queries, 10, model_id="synthetic")):
        order = np.argsort(-ref[qi], kind="stable")[:10]
        assert [h.id for h in row] == order.tolist()
        np.testing.assert_allclose([h.score for h in row], ref[qi][order], atol=1e-4)
    plain = idx.search_many(queries, 10, model_id="synthetic", expand=0)
    assert [h.id for h in plain[1]] == np.argsort(-first[1], kind="stable")[:10].tolist()
    assert idx.info()["hubness"]["dba"] == 3 and idx.info()["dba"] == 3
    # reopened from disk: the stored neighbours give the same ranking
    again = Index.open(idx.root)
    assert np.array_equal(again.hubness.neighbours, hub.neighbours)


def test_ivfpq_reranks_with_the_augmented_photos(tmp_path):
    """IVF-PQ re-ranks its candidates with exact vectors: they must be the augmented ones, so every returned
    score equals the hand-computed score of that photo."""
    rng = np.random.default_rng(5)
    photos = unit(rng.normal(size=(10_000, 16)) + 0.3).astype(np.float32)
    sketches = unit(rng.normal(size=(40, 16)) - 0.3).astype(np.float32)
    queries = unit(rng.normal(size=(5, 16)) - 0.2).astype(np.float32)
    idx = synthetic_index(tmp_path, photos, sketches, "csls", "ivfpq", dba=2)
    ref = Hubness.fit("csls", photos, SketchStats(sketches, ""), k=3, dba=2).scores(queries, photos)
    for qi, row in enumerate(idx.search_many(queries, 10, model_id="synthetic")):
        ids = [h.id for h in row]
        np.testing.assert_allclose([h.score for h in row], ref[qi][ids], atol=1e-4)
        assert len(set(ids) & set(np.argsort(-ref[qi])[:10].tolist())) >= 7


def test_stored_neighbours_that_do_not_fit_are_refused(tmp_path):
    photos, sketches, _ = two_domain_vectors(4, 12)
    hub = Hubness.fit("csls", photos, SketchStats(sketches, ""), k=3, dba=2)
    path = tmp_path / "hubness.npz"
    path.write_bytes(hub.to_bytes())
    assert np.array_equal(Hubness.load(path, "csls", 3, 12, 8, 2).neighbours, hub.neighbours)
    for n, dba in ((12, 3), (11, 2)):
        with pytest.raises(HubnessError, match="does not match the index"):
            Hubness.load(path, "csls", 3, n, 8, dba)


def test_augmentation_finds_more_of_the_class_when_photos_of_a_class_are_close(tmp_path):
    """Photos of a class lie close together and vary around it; averaging each with its neighbours moves it
    toward its class centre, so more of a sketch's top 5 are of its class (mean over four galleries)."""
    gains = []
    for seed in range(4):
        photos, labels, queries, q_labels, protos = class_clusters(seed, 0.3, 5)
        rng = np.random.default_rng(100 + seed)
        picked = rng.integers(0, len(protos), 60)
        sketches = unit(protos[picked] + 0.5 * rng.normal(size=(60, protos.shape[1]))).astype(np.float32)
        precision = {
            dba: precision_at(
                synthetic_index(tmp_path / f"{seed}", photos, sketches, "center", dba=dba), queries, labels, q_labels, 5
            )
            for dba in (0, 5)
        }
        gains.append(precision[5] - precision[0])
    assert min(gains) >= 0 and np.mean(gains) > 0.02


def test_build_records_the_default_and_updates_recompute_it(tmp_path, gallery, tiny_checkpoint, cli, capsys):
    from sbir.index.builder import build_index, update_index

    stats_dir = tmp_path / "stats"
    write_sketches(stats_dir, 8)
    corrected, off = tmp_path / "corrected", tmp_path / "off"
    common = {"progress": False, "num_workers": 0, "sketch_stats": stats_dir, "hubness": "csls"}
    assert build_index(gallery, str(tiny_checkpoint), corrected, **common).dba == DEFAULT_DBA
    assert build_index(gallery, str(tiny_checkpoint), off, dba=0, **common).dba == 0
    # a trained run without a correction keeps sbir eval's ranking: no augmentation
    assert build_index(gallery, str(tiny_checkpoint), tmp_path / "trained", progress=False, num_workers=0).dba == 0
    idx = Index.open(corrected)
    assert idx.model.dba == DEFAULT_DBA and idx.hubness.neighbours.shape == (6, DEFAULT_DBA)
    assert (idx.hubness.neighbours >= 0).all()  # 6 photos: each has 5 others
    assert Index.open(off).model.dba == 0 and Index.open(off).hubness.neighbours is None
    for bad, kw, match in (
        ("neg", {"dba": -1}, "--dba must be"),
        ("nohub", {"dba": 3, "hubness": "none"}, "needs --hubness center or csls"),
        # no --hubness, and this run has neither shipped statistics nor eval.hubness: no correction to augment
        ("nostats", {"dba": 3}, r"needs --hubness center or csls \(this index has none"),
    ):
        with pytest.raises(SbirError, match=match):
            build_index(gallery, str(tiny_checkpoint), tmp_path / bad, progress=False, **kw)
        assert not (tmp_path / bad).exists()

    # the CLI says what it recorded
    capsys.readouterr()
    out = tmp_path / "cli"
    argv = ["index", "build", str(gallery), "--model", str(tiny_checkpoint), "--out", str(out)]
    assert cli([*argv, "--hubness", "csls", "--sketch-stats", str(stats_dir), "--dba", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert "database-side augmentation: each photo averaged with its 2 nearest photos" in captured.err
    assert json.loads(captured.out)["dba"] == 2

    # an update keeps the setting and finds the neighbours again, in the new gallery
    write_gallery(gallery, n=4, start=30)
    assert update_index(corrected, progress=False, num_workers=0).dba == DEFAULT_DBA
    idx = Index.open(corrected)
    assert idx.model.dba == DEFAULT_DBA and idx.hubness.neighbours.shape == (10, DEFAULT_DBA)
    assert (idx.hubness.neighbours >= 0).all()


def test_large_galleries_find_nearly_the_same_neighbours_approximately():
    """Above ``exact_up_to`` photos the neighbours come from an HNSW graph; on clustered photos
    they are the exact ones."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, 32))
    x = unit(centres[rng.integers(0, 40, 3000)] + 0.6 * rng.normal(size=(3000, 32))).astype(np.float32)
    exact = gallery_neighbours(x, 5)
    approx = gallery_neighbours(x, 5, exact_up_to=1000)
    assert approx.shape == (3000, 5) and (approx >= 0).all()
    assert all(i not in row for i, row in enumerate(approx))
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact, approx, strict=True)])
    assert overlap > 0.95
