"""End to end: ``sbir train --task zeroshot --method clip-prompt`` on a few Sketchy classes with a tiny random
CLIP (32 px), then ``sbir eval`` and ``sbir index build`` / ``search`` on the run; the fine-grained zero-shot
variant; one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sbir.cli import main
from tests.clip_fixtures import tiny_clip  # noqa: F401  (fixture)
from tests.conftest import shared_data

pytestmark = pytest.mark.shared_data

CLASSES = ("airplane", "apple", "axe", "cat", "bear", "bench")
UNSEEN = "bear,bench"
PHOTOS_PER_CLASS = 6


@pytest.fixture(scope="module")
def sketchy_subset(tmp_path_factory) -> Path:
    """A few Sketchy classes (6 photos each with all their sketches), copied in the sketchy layout."""
    src = shared_data("sketchy_mini")
    out = tmp_path_factory.mktemp("sketchy_subset")
    for c in CLASSES:
        (out / "photo" / c).mkdir(parents=True)
        (out / "sketch" / c).mkdir(parents=True)
        for photo in sorted((src / "photo" / c).iterdir())[:PHOTOS_PER_CLASS]:
            shutil.copy(photo, out / "photo" / c / photo.name)
            for sk in sorted((src / "sketch" / c).glob(f"{photo.stem}-*")):
                shutil.copy(sk, out / "sketch" / c / sk.name)
    return out


def _train_args(tiny_clip, data: Path, out: Path, task: str = "zeroshot") -> list[str]:  # noqa: F811
    config, weights = tiny_clip
    return [
        "train", "--task", task, "--method", "clip-prompt", "--data", str(data), "--out", str(out),
        "--unseen", UNSEEN, "--image-size", "32", "--batch-size", "4", "--epochs", "1", "--workers", "0",
        "--no-progress", "--seed", "0",
        "--set", f"model.clip_model={config}", f"model.weights_path={weights}", "optim.samples_per_class=2",
        "optim.max_steps_per_epoch=2", "data.val_fraction=0.5",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def clip_run(tiny_clip, sketchy_subset, tmp_path_factory) -> Path:  # noqa: F811
    run = tmp_path_factory.mktemp("clip_run") / "run"
    assert main(_train_args(tiny_clip, sketchy_subset, run)) == 0
    return run


def test_train_writes_metrics_and_a_prompts_only_checkpoint(clip_run: Path):
    from sbir.engine.checkpoint import read_weights

    rows = list(csv.DictReader((clip_run / "metrics.csv").open()))
    assert len(rows) == 1 and 0.0 < float(rows[0]["val_map@all"]) <= 1.0
    assert float(rows[0]["train_triplet"]) >= 0 and float(rows[0]["train_text"]) > 0
    tensors, meta = read_weights(clip_run / "best.safetensors")
    assert set(tensors) == {"sketch_prompt", "photo_prompt"}
    cfg = json.loads(meta["config"])
    assert cfg["task"] == "zeroshot" and cfg["method"] == "clip-prompt" and cfg["loss"]["name"] == "clip-prompt"
    split = json.loads((clip_run / "split.json").read_text())
    assert split["unseen_classes"] == ["bear", "bench"]
    assert not {"bear", "bench"} & set(split["train_classes"] + split["val_classes"])


def test_the_classifier_trained_against_the_training_class_names(clip_run: Path):
    import torch

    from sbir.engine.inference import load_model

    state = torch.load(clip_run / "checkpoints" / "epoch-0001" / "train_state.pt", weights_only=True)
    weights = state["criterion"]["text.class_embeddings"]
    model, _, _ = load_model(clip_run)
    train_classes = json.loads((clip_run / "split.json").read_text())["train_classes"]
    assert torch.allclose(weights, model.class_embeddings(train_classes), atol=1e-6)
    assert state["criterion"]["text.scale"].item() == pytest.approx(model.logit_scale())


def test_eval_ranks_the_unseen_classes_with_the_prompted_encoders(clip_run: Path, sketchy_subset: Path, capsys):
    from sbir.data.formats import load_dataset
    from sbir.data.policies import evaluation_split
    from sbir.engine.inference import load_model
    from sbir.metrics import category_report

    capsys.readouterr()
    assert main(["eval", str(clip_run), "--no-progress", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_classes"] == 2 and metrics["distance"] == "cosine" and metrics["model_id"].startswith("clip-")
    # Independent recomputation: the reloaded prompted encoders, cosine distance.
    model, cfg, _ = load_model(clip_run)
    target = evaluation_split(load_dataset(str(sketchy_subset)), cfg, str(sketchy_subset), "unseen", clip_run, False)
    import torch

    from sbir.data.transforms import eval_transform

    tf = eval_transform(32, model.mean, model.std)
    with torch.no_grad():
        s = model.embed(torch.stack([tf(r.image.load()) for r in target.sketches]), "sketch").numpy()
        p = model.embed(torch.stack([tf(r.image.load()) for r in target.photos]), "photo").numpy()
    ref = category_report(
        s, np.array([r.label for r in target.sketches], dtype=object), p,
        np.array([r.label for r in target.photos], dtype=object), distance="cosine",
    )  # fmt: skip
    assert metrics["map@all"] == pytest.approx(ref["map@all"], abs=1e-5)


def test_index_build_and_search_accept_the_run(clip_run: Path, sketchy_subset: Path, tmp_path: Path, capsys):
    idx = tmp_path / "idx"
    gallery = sketchy_subset / "photo" / "bear"
    assert main(["index", "build", str(gallery), "--model", str(clip_run), "--out", str(idx), "--workers", "0"]) == 0
    sketch = next((sketchy_subset / "sketch" / "bear").iterdir())
    capsys.readouterr()
    assert main(["search", str(idx), str(sketch), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert len(hits) == 3 and all(h["path"].endswith(".jpg") for h in hits)


def test_finegrained_zeroshot_trains_with_patch_shuffle(tiny_clip, sketchy_subset: Path, tmp_path: Path):  # noqa: F811
    run = tmp_path / "fg"
    assert main(_train_args(tiny_clip, sketchy_subset, run, task="finegrained-zeroshot")) == 0
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert 0.0 <= float(row["val_acc@1"]) <= 100.0
    assert float(row["train_patch_shuffle"]) >= 0 and "train_rel_distance" in row
    assert main(["eval", str(run), "--no-progress"]) == 0
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["n_queries"] > 0 and metrics["n_gallery"] == 2 * PHOTOS_PER_CLASS


def test_bad_inputs_are_one_line_errors(tiny_clip, sketchy_subset: Path, tmp_path: Path, capsys):  # noqa: F811
    def err_of(args: list[str]) -> str:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, err
        return err

    base = _train_args(tiny_clip, sketchy_subset, tmp_path / "r")
    assert "no method 'nope'" in err_of([a if a != "clip-prompt" else "nope" for a in base])
    missing = tmp_path / "nowhere.pt"
    assert str(missing) in err_of([*base, f"model.weights_path={missing}"])
    assert "--image-size 32" in err_of([*base[:-9], "--image-size", "64", *base[-8:]])
    assert not (tmp_path / "r" / "last.json").exists()
