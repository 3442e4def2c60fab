"""eval.hubness: fine-grained scores corrected with the run's training sketches, in validation, `sbir eval`
and the index built from the run alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sbir.cli import main
from sbir.config import EvalConfig, ModelConfig, TrainConfig
from sbir.data.formats import load_dataset
from sbir.data.splits import apply_split_record, load_split_record
from sbir.engine.embed import embed_images
from sbir.engine.inference import load_model
from sbir.engine.tasks import check_config
from sbir.errors import ConfigError
from sbir.metrics import true_match_ranks
from sbir.metrics.hubness import hubness_scores
from tests.engine.test_ridge_head import GRID as RIDGE_GRID

GRID = [*RIDGE_GRID, "eval.hubness=csls"]  # the ridge-head run of test_ridge_head, corrected


@pytest.fixture(scope="module")
def csls_run(tiny_paired_dataset: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("csls") / "run"
    args = ["train", "--data", str(tiny_paired_dataset), "--out", str(run), "--epochs", "0", "--no-progress"]
    assert main([*args, "--set", *GRID]) == 0
    return run


def test_validation_and_eval_score_against_the_training_sketches(tiny_paired_dataset: Path, csls_run: Path):
    summary = json.loads((csls_run / "summary.json").read_text())
    assert main(["eval", str(csls_run), "--split", "val", "--no-progress"]) == 0
    metrics = json.loads((csls_run / "eval-val" / "metrics.json").read_text())
    assert metrics["hubness"] == "csls"
    assert metrics["acc@1"] == pytest.approx(summary["best_val_acc@1"])

    # By hand: the statistics set is the training split's sketches, never the validation queries.
    model, cfg, _ = load_model(csls_run)
    full = load_dataset(tiny_paired_dataset).split("train")
    train, val = apply_split_record(full, load_split_record(csls_run / "split.json"))
    kw = dict(image_size=64, progress=False)
    emb = lambda refs, dom: embed_images(model, refs, dom, **kw).embeddings  # noqa: E731
    queries = emb([s.image for s in val.sketches], "sketch")
    photos = emb([p.image for p in val.photos], "photo")
    stats = emb([s.image for s in train.sketches], "sketch")
    truth = np.array([val.photo_index()[s.photo_id] for s in val.sketches])
    ranks = true_match_ranks(hubness_scores("csls", queries, photos, stats), truth)
    assert metrics["ranks"] == [int(r) for r in ranks]
    plain = true_match_ranks(queries @ photos.T, truth)
    assert not np.array_equal(ranks, plain)  # the correction changes the ranking on this data


def _without_training_sketches(data: Path, tmp_path: Path) -> Path:
    """A copy of ``data`` whose test split is there but whose training split is another one."""
    moved = tmp_path / "data"
    shutil.copytree(data, moved)
    for name, new in (("trainA", "99999_01.png"), ("trainB", "99999.png")):
        one = sorted((moved / name).iterdir())[0]
        shutil.copy(one, tmp_path / new)
        shutil.rmtree(moved / name)
        (moved / name).mkdir()
        shutil.copy(tmp_path / new, moved / name / new)
    return moved


def test_the_ridge_head_holds_its_training_sketches_embeddings(tiny_paired_dataset, csls_run, tmp_path):
    model, _, _ = load_model(csls_run)
    full = load_dataset(tiny_paired_dataset).split("train")
    train, _ = apply_split_record(full, load_split_record(csls_run / "split.json"))
    embedded = embed_images(model, [s.image for s in train.sketches], "sketch", 64, progress=False).embeddings
    held = model.hubness_statistics()
    assert held.shape == embedded.shape
    np.testing.assert_allclose(held, embedded, atol=1e-4)
    # So `sbir eval` needs only the test split: the same metrics on a folder without the training images.
    assert main(["eval", str(csls_run), "--data", str(tiny_paired_dataset), "--split", "test", "--no-progress"]) == 0
    with_images = json.loads((csls_run / "eval-test" / "metrics.json").read_text())
    moved = _without_training_sketches(tiny_paired_dataset, tmp_path)
    out = tmp_path / "eval"
    args = ["eval", str(csls_run), "--data", str(moved), "--split", "test", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    without = json.loads((out / "metrics.json").read_text())
    assert without["ranks"] == with_images["ranks"] and without["hubness"] == "csls"


def test_a_run_without_held_statistics_needs_its_training_sketches(tiny_paired_dataset, tmp_path, capsys):
    run = tmp_path / "linear"
    args = ["train", "--data", str(tiny_paired_dataset), "--out", str(run), "--epochs", "0", "--no-progress"]
    assert main([*args, "--set", *GRID, "model.head=linear", "model.embed_dim=16"]) == 0
    model, _, _ = load_model(run)
    assert model.hubness_statistics() is None
    moved = _without_training_sketches(tiny_paired_dataset, tmp_path)
    code = main(["eval", str(run), "--data", str(moved), "--split", "test", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "eval.hubness=csls needs the run's training sketches" in err and "Traceback" not in err


def test_an_index_built_from_the_run_corrects_as_eval_does(tiny_paired_dataset, csls_run, tmp_path):
    from sbir.index.builder import build_index
    from sbir.index.store import Index

    rep = build_index(tiny_paired_dataset / "testB", str(csls_run), tmp_path / "idx", progress=False, num_workers=0)
    idx = Index.open(tmp_path / "idx")
    full = load_dataset(tiny_paired_dataset).split("train")
    train, _ = apply_split_record(full, load_split_record(csls_run / "split.json"))
    assert rep.hubness == "csls" and "training sketches held by" in idx.model.hubness_source
    assert idx.model.expand == 0  # as sbir eval ranks: no query expansion unless asked
    assert len(idx.hubness.sketch_vectors) == len(train.sketches)
    # Without the ridge head's held embeddings, the same run's images are embedded: the same statistics.
    model, _, _ = load_model(csls_run)
    embedded = embed_images(model, [s.image for s in train.sketches], "sketch", 64, progress=False).embeddings
    np.testing.assert_allclose(idx.hubness.sketch_vectors, embedded, atol=2e-3)  # stored as float16


def test_hubness_settings_are_checked_early():
    with pytest.raises(ConfigError, match="eval.hubness must be none, center or csls"):
        EvalConfig(hubness="zca").validate()
    with pytest.raises(ConfigError, match="unset eval.multiview"):
        EvalConfig(hubness="csls", multiview=True).validate()
    with pytest.raises(ConfigError, match="eval.hubness is for fine-grained runs"):
        check_config(TrainConfig(task="category", eval=EvalConfig(hubness="csls")))
    with pytest.raises(ConfigError, match="choose one"):
        check_config(TrainConfig(model=ModelConfig(rerank=True), eval=EvalConfig(hubness="center")))


def test_multiview_testing_of_a_corrected_run_is_refused(csls_run):
    from sbir.engine.evaluate import evaluate_run

    with pytest.raises(ConfigError, match="multi-view testing averages ten views' scores"):
        evaluate_run(csls_run, split="val", multiview=True, progress=False)


def test_export_checks_a_corrected_run_with_its_training_sketches(csls_run, tmp_path):
    out = tmp_path / "onnx"
    assert main(["export", str(csls_run), "--out", str(out), "--no-speed", "--no-openvino", "--no-progress"]) == 0
    assert (out / "sketch.onnx").is_file() and (out / "photo.onnx").is_file()
