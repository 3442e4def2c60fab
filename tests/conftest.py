"""Shared fixtures: small generated datasets and the location of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()

# Two cores: keep torch from oversubscribing when pytest runs alongside data workers.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test when it is not there."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


@pytest.fixture(scope="session")
def tiny_paired_dataset(tmp_path_factory) -> Path:
    """A small generated dataset in the paired trainA/trainB/testA/testB layout."""
    from sbir.data.synthetic import generate_paired_dataset

    out = tmp_path_factory.mktemp("paired")
    generate_paired_dataset(
        out, n_train_photos=24, n_test_photos=8, sketches_per_photo=2, image_size=64, seed=1, progress=False
    )
    return out
