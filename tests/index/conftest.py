"""Fixtures for index tests: a small generated gallery and the pretrained model (loaded once)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from .index_helpers import write_gallery


@pytest.fixture(scope="session")
def pretrained():
    """(model, cfg, model_id) of the off-the-shelf model, loaded once per test session."""
    from sbir.engine.inference import load_model

    return load_model("pretrained")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real sbir checkpoint of a tiny random network (timm's test_efficientnet): fast to load in subprocesses."""
    from sbir.config import ModelConfig, TrainConfig
    from sbir.engine.checkpoint import save_weights
    from sbir.models.fgsbir import build_model

    cfg = TrainConfig(
        model=ModelConfig(
            backbone="test_efficientnet", pretrained=False, shared_encoder=True, head="linear", embed_dim=32
        )
    )
    cfg.data.image_size = 48
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-run") / "best.safetensors"
    save_weights(build_model(cfg.model), path, cfg)
    return path


@pytest.fixture
def gallery(tmp_path) -> Path:
    root = tmp_path / "photos"
    write_gallery(root)
    return root


@pytest.fixture
def cli():
    """Parse and run ``sbir index/search`` argv with the commands registered as the real CLI does."""
    from sbir.index.commands import add_index_commands

    def run(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="sbir")
        sub = parser.add_subparsers(dest="command")
        add_index_commands(sub)
        args = parser.parse_args(argv)
        return args.func(args)

    return run
