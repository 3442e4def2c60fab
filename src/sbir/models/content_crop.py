"""Crop every image to the box around its ink before the encoder (``model.content_crop``).

A sketch is drawn anywhere on its canvas, at any size, and a photo's object sits with its own margins; a grid
of features (``model.pool_grid``) compares cell with cell, so both are first brought to one frame. Part of the
model (no parameters, nothing in the state dict), so training, evaluation, an index, the service and an
exported ONNX or OpenVINO graph all crop the same way, from the same tensor the encoder would get.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# A pixel is ink when the mean of its R, G and B (in [0, 1]) is below this: stroke pixels and anti-aliased
# stroke edges of a black-on-white drawing, an object on a white product-photo background.
INK_THRESHOLD = 200 / 255
# The crop's side is at least this fraction of the image's: a lone dot is not blown up to the whole frame.
MIN_SIDE_FRACTION = 0.1


class ContentCrop(nn.Module):
    """Resample each image of a normalised batch ``(B, 3, H, W)`` to the square around its ink, same shape.

    With ``(x0, x1) x (y0, y1)`` the pixel box of the ink (pixels whose mean of R, G, B is below
    ``INK_THRESHOLD``) and ``m`` the margin:

        side = max(x1 - x0, y1 - y0, MIN_SIDE_FRACTION * max(H, W)) * (1 + 2 m),   centre = box centre

    and the output is that square, bilinearly resampled to ``H x W``, white where it leaves the image. An image
    without ink is returned unchanged. ``mean`` and ``std`` are the normalisation the input carries.
    """

    def __init__(self, margin: float, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if not 0 <= margin <= 1:
            raise ValueError(f"content crop margin must be in [0, 1], got {margin}")
        self.margin = float(margin)
        # Not persistent: the state dict of a model with the crop equals the one without.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        ink = (x * self.std + self.mean).mean(1) < INK_THRESHOLD  # (B, H, W)
        cols, rows = ink.any(1), ink.any(2)  # (B, W), (B, H)
        x0, x1 = _extent(cols)
        y0, y1 = _extent(rows)
        has_ink = cols.any(1)
        size_w, size_h = torch.full_like(x0, float(w)), torch.full_like(y0, float(h))
        side = torch.maximum(x1 - x0, y1 - y0).clamp(min=MIN_SIDE_FRACTION * max(h, w)) * (1 + 2 * self.margin)
        side = torch.where(has_ink, side, torch.maximum(size_w, size_h))
        cx = torch.where(has_ink, (x0 + x1) / 2, size_w / 2)
        cy = torch.where(has_ink, (y0 + y1) / 2, size_h / 2)
        # Output pixel centre u in (-1, 1) (align_corners=False) reads the input at cx + u * side / 2 pixels.
        u = (2 * torch.arange(w, device=x.device, dtype=x.dtype) + 1) / w - 1
        v = (2 * torch.arange(h, device=x.device, dtype=x.dtype) + 1) / h - 1
        gx = (2 * cx / w - 1)[:, None] + (side / w)[:, None] * u[None, :]  # (B, W)
        gy = (2 * cy / h - 1)[:, None] + (side / h)[:, None] * v[None, :]  # (B, H)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (B, H, W, 2)
        white = (1 - self.mean) / self.std
        return F.grid_sample(x - white, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + white


def _extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last index of the True entries of each row of ``mask`` (B, N), as floats."""
    index = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)[None, :]
    first = torch.where(mask, index, torch.full_like(index, float(mask.shape[1]))).amin(1)
    last = torch.where(mask, index, torch.full_like(index, -1.0)).amax(1)
    return first, last + 1


__all__ = ["INK_THRESHOLD", "MIN_SIDE_FRACTION", "ContentCrop"]
