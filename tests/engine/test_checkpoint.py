"""Checkpoints: safetensors with config metadata, foreign files refused, atomic writes, RNG state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from safetensors.torch import safe_open, save_file

from sbir.config import ModelConfig, TrainConfig
from sbir.engine import checkpoint as ck
from sbir.engine.inference import load_model
from sbir.errors import CheckpointError
from sbir.models.fgsbir import build_model


def _cfg() -> TrainConfig:
    return TrainConfig(model=ModelConfig(backbone="resnet18", pretrained=False, embed_dim=16))


def test_weights_round_trip_and_model_id(tmp_path):
    cfg = _cfg()
    model = build_model(cfg.model)
    path = tmp_path / "best.safetensors"
    ck.save_weights(model, path, cfg, {"epoch": 3})
    loaded, cfg2, model_id = load_model(path)
    assert cfg2.model.embed_dim == 16 and model_id.startswith("resnet18:")
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    torch.testing.assert_close(model.embed(x, "photo"), loaded.embed(x, "photo"))
    # a run folder resolves to its best.safetensors; the id is the same
    assert load_model(tmp_path)[2] == model_id


def test_foreign_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an sbir checkpoint"):
        load_model(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(junk)
    pth = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(1)}, pth)
    with pytest.raises(CheckpointError, match=str(pth)):
        load_model(pth)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no best.safetensors"):
        load_model(tmp_path)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    cfg = _cfg()
    model = build_model(cfg.model)
    path = tmp_path / "best.safetensors"
    ck.save_weights(model, path, cfg)
    before = path.read_bytes()

    def half_then_full_disk(self, data):
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])  # the temporary file is half written when the disk fills up
        raise OSError("disk full")

    monkeypatch.setattr(ck.Path, "write_bytes", half_then_full_disk)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        ck.save_weights(model, path, cfg)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]  # no temp files left


def test_rng_state_round_trip():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = ck.capture_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b


def test_training_checkpoint_pointer_and_pruning(tmp_path):
    cfg = _cfg()
    model = build_model(cfg.model)
    for epoch in (1, 2, 3):
        ck.save_training_checkpoint(tmp_path, model, cfg, {"epoch": epoch, "rng": ck.capture_rng_state()})
    dirs = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert dirs == ["epoch-0003"]
    tensors, state, cfg2 = ck.load_training_checkpoint(tmp_path)
    assert state["epoch"] == 3 and cfg2.model.embed_dim == 16 and tensors


def test_the_same_weights_saved_in_two_processes_are_the_same_bytes(tmp_path):
    # safetensors orders its header from a hash map seeded per process; the model id (the file digest) must not
    # change when the same weights are written again, e.g. by 'sbir export --format fp16' run twice.
    import subprocess
    import sys

    script = (
        "import sys, torch; from sbir.engine.checkpoint import save_safetensors; "
        "save_safetensors({'b.weight': torch.arange(6.).reshape(2, 3), 'a': torch.ones(5, dtype=torch.float16)}, "
        "sys.argv[1], {'format': 'x', 'config': '{}', 'epoch': '3', 'val': '{}', 'unused_tensors': '[]'})"
    )
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for p in paths:
        subprocess.run([sys.executable, "-c", script, str(p)], check=True)
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    with safe_open(str(paths[0]), framework="pt") as fh:
        assert fh.metadata() == {"format": "x", "config": "{}", "epoch": "3", "val": "{}", "unused_tensors": "[]"}
        assert torch.equal(fh.get_tensor("b.weight"), torch.arange(6.0).reshape(2, 3))
        assert fh.get_tensor("a").dtype == torch.float16
    header_len = int.from_bytes(paths[0].read_bytes()[:8], "little")
    assert header_len % 8 == 0
