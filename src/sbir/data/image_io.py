"""The one image loader used everywhere (datasets, index, API).

Decodes any image Pillow understands and normalises it to 8-bit RGB on a white
background: palette, alpha (composited on white, since sketches are drawn on
white), CMYK, 16-bit and 32-bit float greyscale, 1-bit; the EXIF orientation tag
is applied (phone photos). Any failure becomes an
:class:`~sbir.errors.ImageLoadError` naming the file, never a library traceback.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sbir.errors import ImageLoadError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Pillow's own bomb limit warns at ~89 Mpx and errors at 2x; we make both an error.
MAX_IMAGE_PIXELS = 64_000_000

PathLike = str | os.PathLike


def is_image_file(path: PathLike) -> bool:
    """True when the file name has an image extension we index."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow image mode to 8-bit RGB, compositing alpha on ``background``."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = np.clip((arr - lo) * scale, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr8, mode="L")
    if "transparency" in img.info and img.mode in ("P", "L", "1", "RGB"):
        # tRNS chunk / GIF transparency: a colour (or palette entry) that means "transparent".
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says (phone photos), so pixels match what viewers show.

    A malformed EXIF block is ignored rather than failing the whole image.
    """
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        return img
    if orientation in (None, 1):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _decode(fp, name: str, max_pixels: int, draft: int | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageLoadError(
                    name, f"{w}x{h} pixels exceeds the limit of {max_pixels} (possible decompression bomb)"
                )
            if draft and img.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale (DCT scaling), keeping both sides >= ``draft``.
                img.draft(None, (int(draft), int(draft)))
            img.load()
            img = _apply_exif_orientation(img)
            img = to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageLoadError(name, "not an image file Pillow can identify") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"image is too large (possible decompression bomb): {exc}") from exc
    except Image.DecompressionBombWarning as exc:
        raise ImageLoadError(name, f"image is too large (possible decompression bomb): {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(name, f"corrupt or truncated image data ({exc})") from exc
    except MemoryError as exc:
        raise ImageLoadError(name, "not enough memory to decode the image") from exc
    except Exception as exc:  # any other decoder failure (zlib.error, struct.error, ...) is bad input
        raise ImageLoadError(name, f"cannot decode image data ({type(exc).__name__}: {exc})") from exc
    if img.size[0] == 0 or img.size[1] == 0:
        raise ImageLoadError(name, "image has zero width or height")
    return img


def load_image(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS, draft: int | None = None) -> Image.Image:
    """Load ``path`` as an RGB :class:`PIL.Image.Image`.

    ``draft``: a JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8) whose sides stay at least
    ``draft`` pixels (Pillow's draft mode: several times faster for large photos that are resized
    to ``draft`` anyway). Other formats ignore it.

    Raises :class:`ImageLoadError` (with the path) for missing, empty, corrupt,
    truncated, oversized or non-image files.
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(p, "file does not exist")
    if not p.is_file():
        raise ImageLoadError(p, "not a regular file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageLoadError(p, f"cannot stat file ({exc})") from exc
    if size == 0:
        raise ImageLoadError(p, "file is empty (0 bytes)")
    try:
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageLoadError(p, f"cannot open file ({exc})") from exc
    return _decode(io.BytesIO(data), str(p), max_pixels, draft)


def load_image_bytes(data: bytes, name: str = "<upload>", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an in-memory image (e.g. an HTTP upload); errors name ``name``."""
    if not data:
        raise ImageLoadError(name, "empty upload (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)


def array_to_image(arr: np.ndarray) -> Image.Image:
    """uint8 greyscale (H, W) or RGB (H, W, 3) array to an RGB image."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(arr, mode="RGB")
    raise ValueError(f"expected an (H, W) or (H, W, 3) array, got shape {arr.shape}")
