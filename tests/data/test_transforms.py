"""Training crops: the published fixed-size random crops of the enlarged image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sbir.config import AugmentConfig, load_config
from sbir.data.transforms import train_transform
from sbir.errors import ConfigError


def test_fixed_crops_are_windows_of_the_enlarged_image():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    aug = AugmentConfig(crop="fixed", fixed_crop_scale=1.25, hflip=False, rotation_deg=0, color_jitter=0, erase_prob=0)
    tf = train_transform(32, (0.0,) * 3, (1.0,) * 3, aug, "photo")
    from torchvision.transforms import v2 as T

    big = T.Compose([T.Resize((40, 40), antialias=True), T.ToImage(), T.ToDtype(torch.float32, scale=True)])(img)
    seen = set()
    for _ in range(12):
        out = tf(img)
        assert out.shape == (3, 32, 32)
        hits = [(y, x) for y in range(9) for x in range(9) if torch.allclose(out, big[:, y : y + 32, x : x + 32])]
        assert len(hits) == 1  # exactly one 32 px window of the 40 px image
        seen.add(hits[0])
    assert len(seen) > 1  # random positions


def test_crop_option_is_checked():
    with pytest.raises(ConfigError, match="augment.crop"):
        load_config(None, ["augment.crop=center"])
