"""A tiny random open_clip model (32 px, 2 layers) for the clip-prompt tests: no download, no GPU.

``tiny_clip`` writes its model-config JSON and a weights file (a fixed random initialisation) and
returns ``(config_json, weights_path)``; ``tiny_clip_cfg(...)`` is the matching ``TrainConfig``.
Test modules import both (``from tests.clip_fixtures import tiny_clip, tiny_clip_cfg``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny_clip")
    config = root / "tiny-clip-test.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(1234)
    model = open_clip.create_model("tiny-clip-test")
    weights = root / "tiny-clip-test.pt"
    torch.save(model.state_dict(), weights)
    return config, weights


def tiny_clip_cfg(tiny_clip, **model_overrides):
    """A zeroshot / clip-prompt TrainConfig on the tiny CLIP (32 px), task defaults filled in."""
    from sbir.config import TrainConfig
    from sbir.engine.tasks import with_defaults

    config, weights = tiny_clip
    cfg = TrainConfig(task="zeroshot", method="clip-prompt")
    cfg.data.image_size = 32
    cfg.model.clip_model = str(config)
    cfg.model.weights_path = str(weights)
    for k, v in model_overrides.items():
        setattr(cfg.model, k, v)
    return with_defaults(cfg)
