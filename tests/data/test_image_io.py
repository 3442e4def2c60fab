"""The one image loader: bad files become ImageLoadError naming the file; odd modes become RGB uint8."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sbir.data.image_io import array_to_image, is_image_file, load_image, load_image_bytes, to_rgb
from sbir.errors import DataError, ImageLoadError


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


def _expect_error(path, match: str | None = None) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    err = info.value
    assert str(path) in str(err) and err.path == str(path)
    assert isinstance(err, DataError)  # the CLI prints all SbirErrors without a traceback
    if match is not None:
        assert match in err.reason, err.reason
    return err


# ---------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.png", "does not exist")


def test_directory(tmp_path):
    d = tmp_path / "folder.png"
    d.mkdir()
    _expect_error(d, "not a regular file")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _expect_error(p, "0 bytes")


def test_text_pretending_to_be_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n" * 10)
    _expect_error(p)


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.jpg"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect_error(p)


def test_truncated_png(tmp_path):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = _png_bytes(img)
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    _expect_error(p)


def test_truncated_jpeg(tmp_path):
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = _jpeg_bytes(img, quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    _expect_error(p)


def test_png_with_corrupt_compressed_data(tmp_path):
    """Header is fine, IDAT payload is garbage: a zlib error inside Pillow must not escape."""
    img = Image.fromarray(np.full((16, 16), 200, dtype=np.uint8))
    data = bytearray(_png_bytes(img))
    i = data.index(b"IDAT")
    length = struct.unpack(">I", data[i - 4 : i])[0]
    payload = bytes((b ^ 0x5A) for b in data[i + 4 : i + 4 + length])
    data[i + 4 : i + 4 + length] = payload
    crc = zlib.crc32(b"IDAT" + payload) & 0xFFFFFFFF  # valid CRC, so only the decompression fails
    data[i + 4 + length : i + 8 + length] = struct.pack(">I", crc)
    p = tmp_path / "garbled.png"
    p.write_bytes(bytes(data))
    _expect_error(p)


def test_decompression_bomb_header(tmp_path):
    """A tiny file whose header claims 100000 x 100000 pixels is refused before decoding."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    )
    p = tmp_path / "bomb.png"
    p.write_bytes(png)
    err = _expect_error(p)
    assert "bomb" in err.reason


def test_bomb_limit_is_configurable(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(_png_bytes(Image.new("RGB", (100, 100), "white")))
    assert load_image(p).size == (100, 100)
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(p, max_pixels=5000)


# ---------------------------------------------------------------- mode normalisation


def test_rgba_alpha_composited_on_white(tmp_path):
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red everywhere
    arr[:4, :, 3] = 0  # top half fully transparent
    arr[4:, :, 3] = 255  # bottom half opaque
    p = tmp_path / "rgba.png"
    p.write_bytes(_png_bytes(Image.fromarray(arr, "RGBA")))
    out = _rgb(load_image(p))
    assert (out[:4] == 255).all()  # transparent -> white
    assert (out[4:] == [255, 0, 0]).all()  # opaque red stays red


def test_rgba_half_alpha_blends_with_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 3] = 128  # black at ~50% opacity
    p = tmp_path / "half.png"
    p.write_bytes(_png_bytes(Image.fromarray(arr, "RGBA")))
    out = _rgb(load_image(p)).astype(int)
    assert np.all(np.abs(out - 127) <= 2)


def test_la_greyscale_with_alpha(tmp_path):
    arr = np.zeros((4, 4, 2), dtype=np.uint8)  # black ink
    arr[:2, :, 1] = 255
    arr[2:, :, 1] = 0
    p = tmp_path / "la.png"
    p.write_bytes(_png_bytes(Image.fromarray(arr, "LA")))
    out = _rgb(load_image(p))
    assert (out[:2] == 0).all() and (out[2:] == 255).all()


def test_palette_png_with_transparency(tmp_path):
    img = Image.new("P", (6, 6), 0)
    img.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)  # 0 = blue, 1 = green
    img.paste(1, (0, 0, 6, 3))  # top half green
    p = tmp_path / "pal.png"
    p.write_bytes(_png_bytes(img, transparency=0))  # index 0 (blue) is transparent
    out = _rgb(load_image(p))
    assert (out[:3] == [0, 255, 0]).all()
    assert (out[3:] == 255).all()  # transparent blue -> white, not blue


def test_greyscale_with_trns_colour(tmp_path):
    img = Image.fromarray(np.array([[0, 100], [100, 0]], dtype=np.uint8))
    p = tmp_path / "l_trns.png"
    p.write_bytes(_png_bytes(img, transparency=100))
    out = _rgb(load_image(p))
    assert (out[0, 0] == 0).all() and (out[0, 1] == 255).all()


def test_cmyk_jpeg(tmp_path):
    # pure cyan in CMYK is (255, 0, 0, 0) -> RGB (0, 255, 255)
    img = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    p = tmp_path / "cmyk.jpg"
    p.write_bytes(_jpeg_bytes(img, quality=95))
    assert Image.open(p).mode == "CMYK"
    out = _rgb(load_image(p)).astype(int)
    assert np.all(np.abs(out - [0, 255, 255]) <= 8)


def test_16bit_png(tmp_path):
    arr = np.zeros((4, 4), dtype=np.uint16)
    arr[:, 2:] = 65535
    arr[0, 0] = 32768
    p = tmp_path / "deep.png"
    p.write_bytes(_png_bytes(Image.fromarray(arr)))
    assert Image.open(p).mode.startswith("I;16")
    out = _rgb(load_image(p))
    assert (out[:, 2:] == 255).all()
    assert (out[1:, :2] == 0).all()
    assert abs(int(out[0, 0, 0]) - 128) <= 1  # scaled by full 16-bit range, not stretched


def test_one_bit_image(tmp_path):
    img = Image.new("1", (8, 8), 1)
    img.paste(0, (0, 0, 4, 8))
    p = tmp_path / "bw.png"
    p.write_bytes(_png_bytes(img))
    out = _rgb(load_image(p))
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()


def test_float_image_to_rgb():
    img = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32), mode="F")
    out = _rgb(to_rgb(img))
    assert out[0, 0, 0] == 0 and out[1, 0, 0] == 255


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), dtype=np.uint8)  # 20 wide, 10 high
    arr[:, :10] = [255, 0, 0]
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "phone.jpg"
    p.write_bytes(_jpeg_bytes(img, exif=exif.tobytes(), quality=95))
    out = load_image(p)
    assert out.size == (10, 20)  # displayed portrait


def test_plain_rgb_roundtrip(tmp_path):
    arr = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = tmp_path / "ok.png"
    p.write_bytes(_png_bytes(Image.fromarray(arr)))
    assert np.array_equal(_rgb(load_image(p)), arr)


def test_loads_from_str_path(tmp_path):
    p = tmp_path / "s.png"
    p.write_bytes(_png_bytes(Image.new("L", (3, 3), 7)))
    assert (_rgb(load_image(str(p))) == 7).all()


# ---------------------------------------------------------------- bytes, arrays, names


def test_load_image_bytes_ok_and_errors():
    data = _png_bytes(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    assert (_rgb(load_image_bytes(data)) == 255).all()
    with pytest.raises(ImageLoadError, match="upload.png"):
        load_image_bytes(b"GIF89a not really", name="upload.png")
    with pytest.raises(ImageLoadError, match="<upload>"):
        load_image_bytes(b"")
    half = _jpeg_bytes(Image.new("RGB", (64, 64), "red"))
    with pytest.raises(ImageLoadError, match="query.jpg"):
        load_image_bytes(half[: len(half) // 3], name="query.jpg")


def test_array_to_image():
    grey = np.array([[0, 255]], dtype=np.uint8)
    assert _rgb(array_to_image(grey)).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    assert array_to_image(rgb).size == (2, 2)
    with pytest.raises(ValueError):
        array_to_image(np.zeros((2, 2, 4), dtype=np.uint8))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.png", True),
        ("b.JPG", True),
        ("c.jpeg", True),
        ("notes.txt", False),
        (".DS_Store", False),
        ("x.png.bak", False),
    ],
)
def test_is_image_file(name, expected):
    assert is_image_file(name) is expected


def test_jpeg_draft_decodes_at_reduced_scale(tmp_path):
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    big = small.resize((1600, 1200), Image.Resampling.BICUBIC)
    big.save(tmp_path / "p.jpg", quality=92)
    big.save(tmp_path / "p.png")
    full = load_image(tmp_path / "p.jpg")
    draft = load_image(tmp_path / "p.jpg", draft=128)
    assert full.size == (1600, 1200) and draft.mode == "RGB"
    assert draft.size == (200, 150)  # 1/8 scale: the smallest DCT scale keeping both sides >= 128
    assert load_image(tmp_path / "p.jpg", draft=500).size == (800, 600)
    assert load_image(tmp_path / "p.png", draft=128).size == (1600, 1200)  # not a JPEG: full decode
    # Same picture: the draft matches the full decode resized to its size.
    ref = np.asarray(full.resize(draft.size, Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(np.asarray(draft, dtype=np.float32) - ref).mean() < 6
