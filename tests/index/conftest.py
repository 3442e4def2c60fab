"""Fixtures for index tests: a small generated gallery and the pretrained model (loaded once)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from index_helpers import write_gallery


@pytest.fixture(scope="session")
def pretrained():
    """(model, cfg, model_id) of the off-the-shelf model, loaded once per test session."""
    from sbir.engine.checkpoint import load_model

    return load_model("pretrained")


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
