"""Mean attention distance on hand-built attention maps with known distances (pixels on the 2-D grid)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sbir.viz.attention import mean_attention_distance, patch_distances

P = 16  # patch size in pixels
GRID = (3, 3)  # 9 patches, row-major; token 0 is CLS


def _map() -> np.ndarray:
    """(1, 3 heads, 10, 10) attention over CLS + a 3x3 grid."""
    t = 10
    a = np.zeros((1, 3, t, t))
    a[0, :, 0, -1] = 1.0  # the CLS query attends to the far corner: must not count
    for q in range(9):
        r, c = divmod(q, 3)
        a[0, 0, 1 + q, 1 + q] = 1.0  # head 0: every patch attends to itself
        a[0, 1, 1 + q, 1 + 0] = 1.0  # head 1: every patch attends to the top-left patch
        # head 2: half on CLS (dropped, renormalised), half on the patch below (itself on the last row)
        below = q + 3 if r < 2 else q
        a[0, 2, 1 + q, 0] = 0.5
        a[0, 2, 1 + q, 1 + below] = 0.5
    return a


def test_known_distances_in_pixels():
    d = mean_attention_distance(_map(), GRID, P, num_prefix_tokens=1)
    corner = [math.hypot(r, c) for r in range(3) for c in range(3)]
    assert d[0] == pytest.approx(0.0)
    assert d[1] == pytest.approx(P * sum(corner) / 9)  # 2-D euclidean distance to (0, 0)
    assert d[2] == pytest.approx(P * 6 / 9)  # one row down (16 px) for 6 of the 9 patches


def test_not_the_token_index_distance():
    # ARNet's 1-D |i - j| would call the patch below 3 tokens away (48 px at 16 px per token); it is 16 px.
    d = mean_attention_distance(_map(), GRID, P, num_prefix_tokens=1)
    index_distance = P * 3 * 6 / 9
    assert d[2] != pytest.approx(index_distance)
    assert patch_distances((3, 3), P)[0, 3] == pytest.approx(16.0)
    assert patch_distances((3, 3), P)[0, 8] == pytest.approx(16 * math.sqrt(8))
    assert patch_distances((2, 4), 1)[0, 4] == 1.0  # non-square grids: row-major with 4 columns


def test_accepts_torch_and_batches_and_rejects_wrong_grid():
    a = torch.tensor(np.concatenate([_map(), _map()]))
    assert np.allclose(mean_attention_distance(a, GRID, P), mean_attention_distance(_map(), GRID, P))
    with pytest.raises(ValueError, match="does not fit 1 prefix tokens"):
        mean_attention_distance(_map(), (4, 4), P)


def test_uniform_attention_on_a_real_vit_is_the_mean_pairwise_distance():
    from sbir.models import create_backbone

    torch.manual_seed(0)
    vit = create_backbone("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=64).eval()
    # Zero queries and keys: attention is uniform over all 17 tokens; over patches, the mean pairwise distance.
    torch.nn.init.zeros_(vit.model.blocks[0].attn.qkv.weight)
    torch.nn.init.zeros_(vit.model.blocks[0].attn.qkv.bias)
    x = torch.randn(2, 3, 64, 64)
    (maps,) = vit.attention_maps(x)
    d = mean_attention_distance(maps, vit.grid_size(x), vit.patch_size, vit.num_prefix_tokens)
    assert d == pytest.approx(np.full(3, patch_distances((4, 4), 16).mean()), rel=1e-5)
