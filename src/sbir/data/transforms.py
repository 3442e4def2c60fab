"""Image transforms: deterministic evaluation preprocessing and training augmentation.

Every image is first padded to a square on white (sketches and product photos
sit on white; padding keeps the aspect ratio), then resized. Training adds the
augmentations the double-siamese NT-Xent needs for its two views: random
resized crop, horizontal flip, small rotation (filled white), colour jitter on
photos, and random erasing (a partial sketch / occluded photo).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2 as T

from sbir.config import AugmentConfig

WHITE = (255, 255, 255)


def pad_to_square(img: Image.Image, fill=WHITE) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    return ImageOps.pad(img, (side, side), color=fill, centering=(0.5, 0.5))


class PadToSquare:
    def __call__(self, img: Image.Image) -> Image.Image:
        return pad_to_square(img)


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean=list(mean), std=list(std))]


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Pad to square, resize to ``image_size``, normalise."""
    return T.Compose([PadToSquare(), T.Resize((image_size, image_size), antialias=True), *_to_tensor(mean, std)])


# Multi-view testing (Triplet-SN, DSSA): the 4 corner crops and the centre crop of the slightly enlarged
# image, then the same 5 mirrored. MIRRORED_VIEWS[v] is the view of the original image that equals view v
# of the mirrored image (mirroring swaps left and right crops).
MULTIVIEW_NAMES = ("tl", "tr", "bl", "br", "c", "tl_flip", "tr_flip", "bl_flip", "br_flip", "c_flip")
MIRRORED_VIEWS = (6, 5, 8, 7, 9, 1, 0, 3, 2, 4)


class TenCrop:
    """``(10, C, S, S)``: torchvision's FiveCrop (tl, tr, bl, br, centre) of the input, then of its mirror."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        crops = T.functional.five_crop(x, [self.size, self.size])
        return torch.stack([*crops, *(torch.flip(c, dims=[-1]) for c in crops)])


def multiview_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], scale: float = 256 / 224
) -> T.Compose:
    """Pad to square, resize to about ``image_size * scale`` (an even margin), normalise, then the 10 views."""
    if scale < 1.0:
        raise ValueError(f"multi-view scale must be >= 1 (crops of the enlarged image), got {scale}")
    # An even margin keeps the centre crop centred, so mirroring the image only permutes the views.
    big = image_size + 2 * int(round(image_size * (scale - 1.0) / 2))
    return T.Compose([PadToSquare(), T.Resize((big, big), antialias=True), *_to_tensor(mean, std), TenCrop(image_size)])


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], aug: AugmentConfig, domain: str
) -> T.Compose:
    """Random augmentation for one view of a ``domain`` ("sketch" or "photo") image."""
    ops: list = [PadToSquare()]
    if aug.rotation_deg > 0:
        ops.append(T.RandomRotation(aug.rotation_deg, fill=WHITE))
    if aug.crop == "fixed":
        big = max(image_size, int(round(image_size * aug.fixed_crop_scale)))
        ops.extend([T.Resize((big, big), antialias=True), T.RandomCrop(image_size)])
    else:
        ops.append(T.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0), ratio=(0.85, 1.15), antialias=True))
    if aug.hflip:
        ops.append(T.RandomHorizontalFlip())
    if domain == "photo" and aug.color_jitter > 0:
        j = aug.color_jitter
        ops.append(T.RandomApply([T.ColorJitter(j, j, j, min(j, 0.5) / 5)], p=0.8))
    ops.extend(_to_tensor(mean, std))
    if aug.erase_prob > 0:
        # Erased patches are white in pixel space, i.e. (1 - mean) / std after normalisation.
        white = [(1.0 - m) / s for m, s in zip(mean, std, strict=False)]
        ops.append(T.RandomErasing(p=aug.erase_prob, scale=(0.02, 0.15), value=white))
    return T.Compose(ops)
