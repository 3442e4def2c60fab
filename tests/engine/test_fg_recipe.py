"""The fine-grained recipe (configs/fg_qmul_v1.yaml) run exactly as the README and issue give it:
``sbir train --data DIR --config configs/fg_qmul_v1.yaml`` then ``sbir eval RUN --data DIR --split test``,
on a QMUL-V1 folder that also holds test .mat files (here the last 40 real chairs pairs, as test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io as sio

from sbir.cli import main
from sbir.config import load_config
from tests.conftest import shared_data

REPO = Path(__file__).resolve().parents[2]


def test_recipe_trains_and_evaluates_on_a_folder_with_test_files(tmp_path: Path):
    src = shared_data("qmul_v1", "chairs")
    data = tmp_path / "chairs"
    data.mkdir()
    for kind in ("sketch", "edge"):
        arr = sio.loadmat(src / f"chairs_{kind}_db_train.mat")["data"]
        sio.savemat(data / f"chairs_{kind}_db_train.mat", {"data": arr[:160]})
        sio.savemat(data / f"chairs_{kind}_db_test.mat", {"data": arr[160:]})
    cfg = load_config(REPO / "configs" / "fg_qmul_v1.yaml")
    assert (cfg.model.feature_level, cfg.model.pool_grid, cfg.model.head, cfg.optim.epochs) == (3, 4, "ridge", 0)
    assert cfg.model.extra_backbones == ["efficientnet_lite1", "efficientnet_lite2"] and cfg.eval.hubness == "csls"

    run = tmp_path / "run"
    config = str(REPO / "configs" / "fg_qmul_v1.yaml")
    assert main(["train", "--data", str(data), "--config", config, "--out", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 0  # the recipe keeps the ImageNet grid features
    assert main(["eval", str(run), "--data", str(data), "--split", "test", "--no-progress"]) == 0
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert metrics["n_queries"] == metrics["n_gallery"] == 40
    assert metrics["hubness"] == "csls"  # scored against the run's training sketches, found on the same folder
    ranks = np.asarray(metrics["ranks"])
    # Real sketches against their own chairs' edge maps: far above chance (1 in 40 at rank 1).
    assert metrics["acc@1"] > 40.0 and np.mean(ranks <= 10) > 0.8
