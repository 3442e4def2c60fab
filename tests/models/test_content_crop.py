"""model.content_crop: every image cropped to the square around its ink before the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sbir.config import ModelConfig, load_config
from sbir.data.transforms import eval_transform
from sbir.errors import ConfigError
from sbir.models.content_crop import ContentCrop
from sbir.models.fgsbir import SBIRModel

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normalise(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) normalised."""
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _pixels(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) normalised -> (H, W) grey in [0, 1]."""
    return (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1))[0].mean(0).numpy()


def _shoe(canvas: int, box: tuple[int, int, int, int], width: int = 3) -> Image.Image:
    """A shoe-like drawing (sole, heel, lace) scaled into ``box`` = (x0, y0, x1, y1) of a white canvas."""
    img = Image.new("RGB", (canvas, canvas), "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box

    def p(u: float, v: float) -> tuple[float, float]:
        return x0 + u * (x1 - x0), y0 + v * (y1 - y0)

    d.line([p(0, 1), p(1, 1), p(1, 0.6), p(0.55, 0.45), p(0.4, 0), p(0.1, 0), p(0, 1)], fill="black", width=width)
    d.line([p(0.45, 0.3), p(0.7, 0.55)], fill="black", width=width)
    d.ellipse([p(0.15, 0.2), p(0.3, 0.4)], outline="black", width=width)
    return img


def _drawings(size: int) -> torch.Tensor:
    """(2, 3, size, size): the shoe drawn small on the left and large on the right, eval-transformed."""
    tf = eval_transform(size, MEAN, STD)
    return torch.stack([tf(_shoe(256, (20, 120, 120, 200))), tf(_shoe(256, (60, 40, 250, 192), width=6))])


def test_a_rectangle_fills_the_frame_along_its_longer_side_and_is_centred():
    rgb = np.full((64, 64, 3), 255, np.uint8)
    rgb[10:20, 30:50] = 0  # rows 10..19, columns 30..49: a 20 x 10 box, centre (40, 15)
    out = _pixels(ContentCrop(0.0, MEAN, STD)(_normalise(rgb)))
    ink = out < 0.5
    cols, rows = np.where(ink.any(0))[0], np.where(ink.any(1))[0]
    # Margin 0: the 20 px side becomes the 64 px frame (x 3.2), so columns 0..63 and 32 rows centred.
    assert cols.min() == 0 and cols.max() == 63
    assert rows.min() == pytest.approx(16, abs=1) and rows.max() == pytest.approx(47, abs=1)
    assert out[5, 32] > 0.99 and out[58, 32] > 0.99  # above and below the box: white, not stretched ink


def test_the_margin_leaves_white_around_the_box():
    rgb = np.full((64, 64, 3), 255, np.uint8)
    rgb[10:30, 10:30] = 0  # a 20 px square
    out = _pixels(ContentCrop(0.25, MEAN, STD)(_normalise(rgb)))
    ink_cols = np.where((out < 0.5).any(0))[0]
    # side = 20 * (1 + 2 * 0.25) = 30 px -> the square covers 64 * 20 / 30 = 42.7 px, 10.7 px white each side
    assert ink_cols.min() == pytest.approx(10.7, abs=1.2) and ink_cols.max() == pytest.approx(63 - 10.7, abs=1.2)


def test_an_image_without_ink_is_returned_unchanged():
    rgb = np.random.default_rng(0).integers(230, 256, (48, 48, 3), dtype=np.uint8)  # light paper noise
    x = _normalise(rgb)
    assert torch.allclose(ContentCrop(0.1, MEAN, STD)(x), x, atol=1e-5)


def test_the_same_drawing_at_another_place_and_size_comes_out_the_same():
    crop = ContentCrop(0.1, MEAN, STD)
    small_left, big_right = _drawings(96).split(1)

    def box(x):
        ink = _pixels(x) < 0.7
        cols, rows = np.where(ink.any(0))[0], np.where(ink.any(1))[0]
        return np.array([cols.min(), cols.max(), rows.min(), rows.max()])

    def layout(x):  # ink density on a coarse 8 x 8 grid: where the strokes are, not how thick
        return torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(1 - _pixels(x))[None], 8)[0].numpy()

    assert np.abs(box(small_left) - box(big_right)).max() > 30
    assert np.abs(box(crop(small_left)) - box(crop(big_right))).max() <= 2
    before = np.corrcoef(layout(small_left).ravel(), layout(big_right).ravel())[0, 1]
    after = np.corrcoef(layout(crop(small_left)).ravel(), layout(crop(big_right)).ravel())[0, 1]
    assert before < 0.3 and after > 0.9
    # each batch row is cropped to its own box
    both = crop(torch.cat([small_left, big_right]))
    assert torch.allclose(both[:1], crop(small_left), atol=1e-5) and torch.allclose(
        both[1:], crop(big_right), atol=1e-5
    )


def _model(content_crop: float | None) -> SBIRModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="test_efficientnet", pretrained=False, shared_encoder=True, embed_dim=16, content_crop=content_crop
    )
    return SBIRModel(cfg).eval()


def test_the_model_crops_on_every_path_and_keeps_its_state_dict():
    plain, cropped = _model(None), _model(0.1)
    assert plain.state_dict().keys() == cropped.state_dict().keys()
    cropped.load_state_dict(plain.state_dict())
    x = eval_transform(64, plain.mean, plain.std)(_shoe(256, (20, 120, 120, 200)))[None]
    seen = cropped.content_crop(x)
    with torch.no_grad():
        assert torch.allclose(cropped.embed(x, "sketch"), plain.embed(seen, "sketch"), atol=1e-5)
        assert torch.allclose(cropped.features(x, "photo"), plain.features(seen, "photo"), atol=1e-5)
        assert not torch.allclose(cropped.embed(x, "sketch"), plain.embed(x, "sketch"), atol=1e-3)


def test_content_crop_is_validated_early():
    assert load_config(None, ["model.content_crop=0.1"]).model.content_crop == 0.1
    for bad in ("-0.1", "1.5", "2", "wide"):
        with pytest.raises(ConfigError, match="model.content_crop"):
            load_config(None, [f"model.content_crop={bad}"])
    with pytest.raises(ConfigError, match="model.content_crop crops the fine-grained model"):
        load_config(None, ["task=category", "model.content_crop=0.1"])
