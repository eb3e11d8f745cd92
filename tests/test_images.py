"""mimic.data.images: every bad or odd image is generated here with PIL, nothing is shipped."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mimic.data.images import (
    CLIP_MEAN,
    CLIP_STD,
    ImageError,
    load_image,
    resize_center_crop,
    squash_resize,
    to_tensor_affine,
    to_tensor_normalized,
)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def _png_with_header_size(path, width: int, height: int):
    """A PNG whose IHDR claims width x height but holds almost no data (cheap "bomb")."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then chunk length + type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


# -- errors ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found") as e:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(e.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    p = tmp_path / "fake.png"
    p.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="not an image") as e:
        load_image(p)
    assert "fake.png" in str(e.value)
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"garbage bytes")


def test_corrupt_body(tmp_path):
    # A valid PNG header followed by scrambled compressed data.
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60:200] = bytes(140)
    p = tmp_path / "corrupt.png"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt") as e:
        load_image(p)
    assert "corrupt.png" in str(e.value)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated") as e:
        load_image(p)
    assert "cut.jpg" in str(e.value)


def test_too_many_pixels_small_limit(tmp_path):
    p = _save(Image.new("RGB", (100, 100)), tmp_path / "a.png")
    with pytest.raises(ImageError, match="too large") as e:
        load_image(p, max_pixels=5000)
    assert "max_pixels" in str(e.value)
    assert load_image(p, max_pixels=10_000).size == (100, 100)


def test_header_size_checked_before_decoding(tmp_path):
    # 8000x8000 = 64 M pixels: above our 40 M default but below PIL's own bomb limit, so our
    # check must fire from the header (the data is only 1 pixel; decoding would say "truncated").
    p = _png_with_header_size(tmp_path / "big.png", 8000, 8000)
    with pytest.raises(ImageError, match="too large.*max_pixels"):
        load_image(p)


def test_pil_bomb_check_becomes_image_error(tmp_path):
    # 100000^2 pixels trips PIL's DecompressionBombError inside Image.open; it must surface as ImageError.
    p = _png_with_header_size(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(ImageError, match="too large"):
        load_image(p, max_pixels=10**12)
    with pytest.raises(ImageError, match="too large"):
        load_image(p.read_bytes())


def test_path_outside_allowed_dirs(tmp_path):
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    p = _save(Image.new("RGB", (8, 8)), other / "x.png")
    with pytest.raises(ImageError, match="outside the allowed"):
        load_image(p, allowed_dirs=[allowed])
    with pytest.raises(ImageError, match="outside the allowed"):
        load_image(allowed / ".." / "other" / "x.png", allowed_dirs=[allowed])
    # A sibling whose name merely starts with the allowed name is still outside.
    evil = tmp_path / "allowed_evil"
    evil.mkdir()
    with pytest.raises(ImageError, match="outside the allowed"):
        load_image(_save(Image.new("RGB", (8, 8)), evil / "y.png"), allowed_dirs=str(allowed))
    assert load_image(p, allowed_dirs=[allowed, other]).size == (8, 8)


def test_symlink_escaping_allowed_dirs(tmp_path):
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    target = _save(Image.new("RGB", (8, 8)), secret / "s.png")
    link = allowed / "link.png"
    os.symlink(target, link)
    with pytest.raises(ImageError, match="outside the allowed"):
        load_image(link, allowed_dirs=[allowed])
    inner = allowed / "inner.png"
    os.symlink(_save(Image.new("RGB", (8, 8)), allowed / "real.png"), inner)
    assert load_image(inner, allowed_dirs=[allowed]).mode == "RGB"


# -- odd but valid images ------------------------------------------------------------------------


def test_cmyk_jpeg(tmp_path):
    p = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")  # red in CMYK
    img = load_image(p)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60
    assert load_image(p, convert_rgb=False).mode == "CMYK"


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)
    p = _save(Image.fromarray(ramp), tmp_path / "g16.png")
    with Image.open(p) as raw:
        assert raw.mode.startswith("I;16")
    a = np.asarray(load_image(p))
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert a.min() <= 1 and a.max() >= 254 and 100 < a.mean() < 155  # a ramp, not a white sheet
    assert load_image(p, convert_rgb=False).mode.startswith("I;16")


def test_32bit_int_and_float_modes():
    i32 = Image.fromarray((np.arange(256, dtype=np.int32) * 200).reshape(16, 16))  # 0..51000, mode I
    assert i32.mode == "I"
    a = np.asarray(load_image(i32))
    assert a.min() == 0 and a.max() >= 190 and a.mean() > 60
    f = Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16))  # mode F in 0..1
    a = np.asarray(load_image(f))
    assert a.min() == 0 and a.max() == 255
    neg = Image.fromarray(np.linspace(-5, 5, 256, dtype=np.float32).reshape(16, 16))
    a = np.asarray(load_image(neg))
    assert a.min() == 0 and a.max() == 255


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 1)
    p = _save(img, tmp_path / "pal.png", transparency=0)  # index 0 (black) is transparent
    out = load_image(p)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((5, 5)) == (255, 255, 255)  # transparent -> white, not black
    assert load_image(p, convert_rgb=False).mode == "P"


def test_rgba_and_la_composited_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    img.putpixel((1, 1), (0, 0, 0, 128))
    img.putpixel((2, 2), (0, 255, 0, 255))
    out = load_image(_save(img, tmp_path / "a.png"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert all(120 <= c <= 135 for c in out.getpixel((1, 1)))
    assert out.getpixel((2, 2)) == (0, 255, 0)
    la = Image.new("LA", (4, 4), (0, 0))
    assert load_image(la).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as raw:
        assert raw.n_frames == 3
    out = load_image(p)
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 0, 0)


def test_bilevel_and_grey(tmp_path):
    one = Image.new("1", (4, 4), 1)
    assert load_image(one).getpixel((0, 0)) == (255, 255, 255)
    grey = load_image(_save(Image.new("L", (4, 4), 77), tmp_path / "g.png"))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)


def test_exif_orientation(tmp_path):
    img = Image.new("RGB", (20, 10), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = _save(img, tmp_path / "rot.jpg", exif=exif)
    assert load_image(p).size == (10, 20)
    assert load_image(p, apply_exif=False).size == (20, 10)


def test_sources_bytes_and_pil(tmp_path):
    src = Image.new("RGBA", (6, 5), (1, 2, 3, 255))
    buf = io.BytesIO()
    src.save(buf, "PNG")
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (1, 2, 3)
    out = load_image(src, convert_rgb=False)
    assert out is not src and out.mode == "RGBA"
    with pytest.raises(ImageError, match="unsupported image source"):
        load_image(12345)


# -- resizing and tensors ------------------------------------------------------------------------


def test_squash_and_center_crop():
    img = Image.new("RGB", (400, 200), (0, 0, 0))
    img.paste((255, 255, 255), (150, 0, 250, 200))  # a white band in the middle
    assert squash_resize(img).size == (224, 224)
    c = resize_center_crop(img, shorter=256, crop=224)
    assert c.size == (224, 224)
    assert c.getpixel((112, 112)) == (255, 255, 255) and c.getpixel((0, 112)) == (0, 0, 0)
    assert resize_center_crop(Image.new("RGB", (200, 400))).size == (224, 224)


def test_tensor_normalisation():
    img = Image.new("RGB", (3, 2), (255, 127, 0))
    x = to_tensor_normalized(img, CLIP_MEAN, CLIP_STD)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full((2, 3), (1 - CLIP_MEAN[0]) / CLIP_STD[0]))
    y = to_tensor_affine(img)  # (x - 127) / 128
    assert torch.allclose(y[:, 0, 0], torch.tensor([1.0, 0.0, -127 / 128]))
