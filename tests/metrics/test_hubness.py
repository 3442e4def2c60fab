"""Hubness-corrected scores (sbir.metrics.hubness): the math `sbir eval` (eval.hubness) and the index share."""

from __future__ import annotations

import numpy as np
import pytest

from sbir.index.hubness import Hubness, SketchStats
from sbir.metrics.hubness import hubness_scores


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_csls_by_hand_on_two_dimensions():
    # Photos: gallery mean (0.5, 0.5); sketch statistics: mean (0, 1). k = 1.
    photos = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    sketches = np.array([[1.0, 1.0], [-1.0, 1.0]], np.float32)
    query = np.array([[1.0, 2.0]], np.float32)
    # Centred: photos (0.5, -0.5) / (-0.5, 0.5) -> (1, -1)/sqrt2, (-1, 1)/sqrt2; sketches (1, 0), (-1, 0);
    # query (1, 1) / sqrt2. cos(query, photos) = 0, 0. r_g (k = 1) = 1/sqrt2 for both photos.
    scores = hubness_scores("csls", query, photos, sketches, k=1)
    np.testing.assert_allclose(scores, [[-1 / np.sqrt(2), -1 / np.sqrt(2)]], atol=1e-6)
    np.testing.assert_allclose(hubness_scores("center", query, photos, sketches), [[0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(hubness_scores("none", query, photos, None), query @ photos.T)


@pytest.mark.parametrize("method", ["none", "center", "csls"])
def test_eval_scores_equal_the_index_scores(method):
    """`sbir eval` with eval.hubness ranks exactly as an index built with --hubness does."""
    rng = np.random.default_rng(3)
    photos = _unit(rng.normal(size=(9, 6)) + 0.7).astype(np.float32)
    sketches = _unit(rng.normal(size=(12, 6)) - 0.3).astype(np.float32)
    queries = _unit(rng.normal(size=(4, 6))).astype(np.float32)
    hub = Hubness.fit(method, photos, SketchStats(sketches, "test") if method != "none" else None, k=5)
    np.testing.assert_allclose(
        hubness_scores(method, queries, photos, sketches, k=5), hub.scores(queries, photos), atol=1e-6
    )


def test_a_hub_photo_loses_its_lead():
    """A photo close to every sketch of the statistics set is pushed below the query's own photo."""
    rng = np.random.default_rng(0)
    sketches = _unit(rng.normal(size=(30, 8)) + np.eye(8)[0] * 2).astype(np.float32)
    hub = _unit(sketches.mean(0, keepdims=True))
    own = _unit(rng.normal(size=(1, 8)))
    others = _unit(rng.normal(size=(5, 8)))
    photos = np.vstack([hub, own, others]).astype(np.float32)
    query = _unit(0.45 * own + 0.55 * hub).astype(np.float32)
    assert np.argmax(query @ photos.T) == 0  # plain cosine: the hub wins
    assert np.argmax(hubness_scores("csls", query, photos, sketches)) == 1


def test_bad_method_and_missing_statistics_are_errors():
    x = np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match="must be one of none, center, csls"):
        hubness_scores("zca", x, x, x)
    with pytest.raises(ValueError, match="needs a sketch statistics set"):
        hubness_scores("csls", x, x, None)
