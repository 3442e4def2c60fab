"""configs/arnet_vit.yaml with a tiny ViT on ../shared/data/qmul_v1/shoes: one epoch through the CLI, then the
checkpoint goes through ``sbir eval``, ``sbir index build`` and ``sbir report``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sbir.cli import main
from tests.conftest import REPO_ROOT, shared_data

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


def test_arnet_vit_recipe_one_epoch_on_qmul_shoes(tmp_path: Path, tiny_paired_dataset: Path, capsys):
    shoes = shared_data("qmul_v1", "shoes")
    run = tmp_path / "arnet"
    rc = main(
        [
            "train",
            "--config",
            str(REPO_ROOT / "configs" / "arnet_vit.yaml"),
            "--data",
            str(shoes),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--workers",
            "0",
            "--no-progress",
            "--set",
            "model.backbone=vit_tiny_patch16_224",
            "model.pretrained=false",
            "model.backbone_kwargs={depth: 2}",
            "data.image_size=64",
            "optim.batch_size=8",
            "optim.max_steps_per_epoch=2",
            "eval.batch_size=32",
            "model.rerank=true",
            "model.rerank_dim=32",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "best epoch 1: val acc@1 =" in out
    cfg = (run / "config.yaml").read_text()
    assert "name: adam\n" in cfg and "lr: 6.0e-06" in cfg and "temperature: 0.07" in cfg
    assert "shared_encoder: false" in cfg and (run / "best.safetensors").is_file()

    assert main(["eval", str(run), "--split", "val", "--no-progress", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n_queries"] == 46 and {"acc@1", "acc@10", "rerank_acc@1", "rerank_acc@10", "%corr"} <= set(m)

    assert (
        main(
            [
                "index",
                "build",
                str(tiny_paired_dataset / "testB"),
                "--model",
                str(run),
                "--out",
                str(tmp_path / "idx"),
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )

    assert main(["report", str(run), "--no-progress"]) == 0
    report = run / "report"
    for name in ("index.html", "curves.png", "tsne.png", "attention_distance.png", "val/retrieval.png"):
        assert (report / name).is_file(), name
    dist = json.loads((report / "attention_distance.json").read_text())
    assert set(dist) == {"sketch", "photo"}  # two separate encoders
    layers = dist["sketch"]["layers_by_heads_pixels"]
    assert len(layers) == 2 and len(layers[0]) == 3  # 2 blocks x 3 heads
    # Between 0 and the 4x4 grid's largest patch distance (3 * sqrt(2) patches of 16 px).
    assert all(0 <= v <= 16 * 3 * 2**0.5 for row in layers for v in row)
