"""`sbir eval`'s test protocol per task, and the index ranking as `sbir eval` does (through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sbir.cli import main
from tests.engine.test_category_e2e import SHAPES, TRAIN_ARGS, _embed, make_category_dataset


def _dataset_with_test(root: Path, classes, seed: int) -> Path:
    make_category_dataset(root, classes, n_photos=4, n_sketches=4, seed=seed, split="train")
    make_category_dataset(root, classes, n_photos=5, n_sketches=3, seed=seed + 100, split="test")
    return root


def _mean_ap(scores: np.ndarray, relevant: np.ndarray) -> float:
    return float(np.mean([average_precision_score(relevant[i], scores[i]) for i in range(len(scores))]))


def test_zeroshot_eval_reports_unseen_classes_only(tmp_path: Path, capsys):
    from sbir.engine.inference import load_model

    data = _dataset_with_test(tmp_path / "zs", SHAPES, seed=3)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--task",
                "zeroshot",
                "--unseen",
                "star,bar",
                "--data",
                str(data),
                "--out",
                str(run),
                "--epochs",
                "1",
                *TRAIN_ARGS,
                "data.val_fraction=0.5",
                "optim.samples_per_class=4",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "test", "--json", "--no-progress"]) == 0
    m = json.loads(capsys.readouterr().out)
    # The test split holds all six classes; the zero-shot number ranks the two unseen ones only.
    assert m["n_classes"] == 2 and m["n_queries"] == 2 * 3 and m["n_gallery"] == 2 * 5
    assert m["distance"] == "euclidean"

    model, cfg, _ = load_model(run)
    unseen = ("bar", "star")
    sk = sorted(p for c in unseen for p in (data / "test" / "sketches" / c).glob("*.png"))
    ph = sorted(p for c in unseen for p in (data / "test" / "photos" / c).glob("*.png"))
    s = _embed(model, sk, "sketch", cfg.data.image_size).numpy()
    p = _embed(model, ph, "photo", cfg.data.image_size).numpy()
    dist = np.linalg.norm(s[:, None] - p[None], axis=-1)
    relevant = np.array([a.parent.name for a in sk])[:, None] == np.array([b.parent.name for b in ph])[None]
    assert m["map@all"] == pytest.approx(_mean_ap(-dist, relevant), abs=1e-5)


def test_index_of_a_mems_run_ranks_as_eval_does(tmp_path: Path, capsys):
    from sbir.engine.inference import load_model

    data = _dataset_with_test(tmp_path / "cat", SHAPES, seed=5)
    run = tmp_path / "run"
    assert (
        main(["train", "--task", "category", "--data", str(data), "--out", str(run), "--epochs", "1", *TRAIN_ARGS]) == 0
    )
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "test", "--json", "--no-progress"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["distance"] == "euclidean"  # MEMS with eval.distance auto

    gallery = data / "test" / "photos"
    idx = tmp_path / "idx"
    assert (
        main(
            ["index", "build", str(gallery), "--model", str(run), "--out", str(idx), "--no-progress", "--workers", "0"]
        )
        == 0
    )
    capsys.readouterr()
    sketches = sorted((data / "test" / "sketches").glob("*/*.png"))
    photos = sorted(gallery.glob("*/*.png"))
    n = len(photos)
    scores = np.zeros((len(sketches), n))
    relevant = np.zeros((len(sketches), n), dtype=bool)
    for i, sketch in enumerate(sketches):
        assert main(["search", str(idx), str(sketch), "-k", str(n), "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)["results"]
        assert len(hits) == n
        for h in hits:  # rank r gets score n - r: the ranking alone decides the AP
            scores[i, h["rank"] - 1] = n - h["rank"]
            relevant[i, h["rank"] - 1] = Path(h["path"]).parent.name == sketch.parent.name
    assert _mean_ap(scores, relevant) == pytest.approx(m["map@all"], abs=1e-6)

    # The test can tell the distances apart: cosine ranks these raw MEMS embeddings differently.
    model, cfg, _ = load_model(run)
    s = _embed(model, sketches, "sketch", cfg.data.image_size).numpy()
    p = _embed(model, photos, "photo", cfg.data.image_size).numpy()
    euclid = np.argsort(np.linalg.norm(s[:, None] - p[None], axis=-1), axis=1, kind="stable")
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    cosine = np.argsort(-(unit(s) @ unit(p).T), axis=1, kind="stable")
    assert (euclid != cosine).any()
