"""Query expansion (sbir.index.expansion): the formula, the index's two-pass search, its default and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sbir.errors import SbirError
from sbir.index.expansion import DEFAULT_EXPAND, EXPAND_WEIGHT, check_expand, expand_queries
from sbir.index.hubness import Hubness, SketchStats
from sbir.index.store import Index

from .index_helpers import (
    class_clusters,
    precision_at,
    synthetic_index,
    two_domain_vectors,
    write_gallery,
    write_sketches,
)


def test_expand_queries_by_hand():
    q = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    nb = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0], [9.0, 9.0, 9.0]]], np.float32)
    valid = np.array([[True, True], [True, False]])  # the second query's second neighbour is padding
    out = expand_queries(q, nb, valid, weight=2.0)
    # q1 + 2 * mean([0,1,0], [0,0,1]) = [1, 1, 1] -> /sqrt(3); q2 + 2 * [1,0,0] = [2, 0, 1] -> /sqrt(5)
    np.testing.assert_allclose(out[0], np.ones(3) / np.sqrt(3), atol=1e-6)
    np.testing.assert_allclose(out[1], np.array([2.0, 0.0, 1.0]) / np.sqrt(5), atol=1e-6)
    # no valid neighbour: the query is unchanged
    np.testing.assert_allclose(expand_queries(q[:1], nb[:1], np.zeros((1, 2), bool), 2.0), q[:1], atol=1e-7)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_expand_is_one_clear_error(bad):
    with pytest.raises(SbirError, match="--expand must be a whole number"):
        check_expand(bad)


@pytest.mark.parametrize("kind", ["none", "hnsw"])
def test_index_expands_like_the_two_pass_hand_computation(tmp_path, kind):
    photos, sketches, queries = two_domain_vectors(3, 40)
    idx = synthetic_index(tmp_path, photos, sketches, "csls", kind, expand=4)
    hub = Hubness.fit("csls", photos, SketchStats(sketches, ""), k=3)
    qs, gs = hub.queries(queries), hub.photos(photos)
    first = 2 * qs @ gs.T - hub.r_g[None]
    top = np.argsort(-first, axis=1, kind="stable")[:, :4]
    moved = qs + EXPAND_WEIGHT * gs[top].mean(1)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    ref = 2 * moved @ gs.T - hub.r_g[None]
    hits = idx.search_many(queries, 10, model_id="synthetic")  # the index's recorded expand: 4
    for qi, row in enumerate(hits):
        order = np.argsort(-ref[qi], kind="stable")[:10]
        assert [h.id for h in row] == order.tolist()
        np.testing.assert_allclose([h.score for h in row], ref[qi][order], atol=1e-4)
    # expand=0 at search time searches the query itself
    plain = idx.search_many(queries, 10, model_id="synthetic", expand=0)
    assert [h.id for h in plain[0]] == np.argsort(-first[0], kind="stable")[:10].tolist()
    assert idx.info()["expand"] == 4
    # more photos than the gallery holds: expanded with all of them, no padding rows
    small = synthetic_index(tmp_path / "small", photos[:3], sketches, "csls", kind, expand=10)
    assert len(small.search_many(queries, 3, model_id="synthetic")[0]) == 3


def test_expansion_finds_more_of_the_class_when_photos_of_a_class_are_close(tmp_path):
    """Photos of a class lie close together, sketches further off: the photos a sketch finds first pull it
    into its class, so more of the top 5 are of the right class (mean over four random galleries)."""
    gains = []
    for seed in range(4):
        photos, labels, queries, q_labels, _ = class_clusters(seed, 0.15, 10)
        idx = synthetic_index(tmp_path / str(seed), photos, None, "none", expand=3)
        precision = {expand: precision_at(idx, queries, labels, q_labels, 5, expand=expand) for expand in (0, 3)}
        gains.append(precision[3] - precision[0])
    assert min(gains) > 0 and np.mean(gains) > 0.02


def test_build_records_the_default_and_search_overrides_it(tmp_path, gallery, tiny_checkpoint, cli, capsys):
    from sbir.index.builder import build_index, update_index

    stats_dir = tmp_path / "stats"
    write_sketches(stats_dir, 8)
    corrected, trained, off = tmp_path / "corrected", tmp_path / "trained", tmp_path / "off"
    common = {"progress": False, "num_workers": 0, "sketch_stats": stats_dir, "hubness": "csls"}
    assert build_index(gallery, str(tiny_checkpoint), corrected, **common).expand == DEFAULT_EXPAND
    assert build_index(gallery, str(tiny_checkpoint), off, expand=0, **common).expand == 0
    # a trained run without a correction keeps sbir eval's ranking: no expansion
    assert build_index(gallery, str(tiny_checkpoint), trained, progress=False, num_workers=0).expand == 0
    assert Index.open(corrected).model.expand == DEFAULT_EXPAND and Index.open(off).model.expand == 0
    with pytest.raises(SbirError, match="--expand must be"):
        build_index(gallery, str(tiny_checkpoint), tmp_path / "bad", expand=-2, progress=False)
    assert not (tmp_path / "bad").exists()

    query = write_sketches(tmp_path / "q", 1, start=70)[0]
    assert cli(["search", str(corrected), str(query), "-k", "3", "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert cli(["search", str(corrected), str(query), "-k", "3", "--json", "--expand", "0"]) == 0
    none = json.loads(capsys.readouterr().out)
    assert cli(["search", str(off), str(query), "-k", "3", "--json"]) == 0
    built_off = json.loads(capsys.readouterr().out)
    assert default["expand"] == DEFAULT_EXPAND and none["expand"] == 0
    assert [r["id"] for r in none["results"]] == [r["id"] for r in built_off["results"]]
    assert [r["score"] for r in none["results"]] != [r["score"] for r in default["results"]]

    # an update keeps the recorded setting
    write_gallery(gallery, n=2, start=30)
    assert update_index(corrected, progress=False, num_workers=0).expand == DEFAULT_EXPAND
    assert Index.open(corrected).model.expand == DEFAULT_EXPAND


def test_photo_queries_are_centred_like_photos_and_not_expanded(tmp_path):
    """'More like this' searches with a gallery photo's vector: it is centred with the photo mean, as the
    gallery is (with the sketch mean it would be pushed toward the sketches' side), and not expanded."""
    photos, sketches, _ = two_domain_vectors(5, 30)
    idx = synthetic_index(tmp_path, photos, sketches, "csls", expand=4)
    hub = Hubness.fit("csls", photos, SketchStats(sketches, ""), k=3)
    gs = hub.photos(photos)
    ref = 2 * gs[:3] @ gs.T - hub.r_g[None]
    hits = idx.search_many(photos[:3], 5, model_id="synthetic", domain="photo")
    for qi, row in enumerate(hits):
        assert row[0].id == qi  # a photo is most like itself
        assert [h.id for h in row] == np.argsort(-ref[qi], kind="stable")[:5].tolist()
    with pytest.raises(SbirError, match="domain must be"):
        idx.search_many(photos[:1], 5, model_id="synthetic", domain="text")


def test_search_refuses_a_bad_expand_before_opening_anything(tmp_path, cli):
    # the index folder does not even exist: the flag is checked first, so the error names --expand
    with pytest.raises(SbirError, match="--expand must be a whole number"):
        cli(["search", str(tmp_path / "no-index"), str(tmp_path / "s.png"), "--expand", "-3"])
