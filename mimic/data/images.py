"""Safe image loading and the pixel preprocessing the backbones use (PIL + plain torch, no torchvision).

`load_image` never lets a bad file crash the caller with an unexpected exception: every problem
(missing file, path outside the allowed folders, not an image, corrupt or truncated data, too many
pixels, unsupported mode) becomes an `ImageError` whose message names the source and the problem.

Normalisation helpers:
  to_tensor_normalized(img, mean, std): (x / 255 - mean) / std   (CLIP: CLIP_MEAN / CLIP_STD)
  to_tensor_affine(img, offset, scale): (x - offset) / scale     (EfficientNet-Lite: 127 / 128)
"""

from __future__ import annotations

import io
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# What PIL may raise while identifying or decoding a damaged file.
# DecompressionBombWarning is listed because it is raised as an error under `-W error`.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class ImageError(ValueError):
    """An image could not be used; the message names the source and the problem."""


def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    return repr(source)


def _check_allowed(path: str, allowed_dirs) -> None:
    """Raise ImageError unless `path`, symlinks resolved, lies inside one of `allowed_dirs`."""
    real = os.path.realpath(path)
    for d in allowed_dirs:
        root = os.path.realpath(d)
        try:
            if os.path.commonpath([real, root]) == root:
                return
        except ValueError:  # different drives on Windows
            continue
    raise ImageError(f"{path}: path is outside the allowed directories")


def _scale_to_uint8(arr: np.ndarray, bits16: bool) -> np.ndarray:
    """Map a high-bit-depth or float greyscale array onto 0..255 without clipping everything to white.

    16-bit data is divided by 257 (65535 -> 255). Otherwise: floats in 0..1 are scaled by 255,
    values already in 0..255 are kept, 0..65535 integers are treated as 16-bit, and anything else
    (negative or larger) is min-max stretched.
    """
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if bits16:
        a = a / 257.0
    elif lo >= 0 and hi <= 1.0 and arr.dtype.kind == "f":
        a = a * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535 and arr.dtype.kind != "f":
        a = a / 257.0
    else:
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image, desc: str) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited onto white."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        grey = _scale_to_uint8(np.asarray(img), bits16=mode.startswith("I;16"))
        return Image.fromarray(grey, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info
    try:
        if has_alpha:
            # Converting via RGBA also turns palette/"L"/"RGB" tRNS transparency into real alpha.
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")  # covers 1, L, P, CMYK, YCbCr, RGBX, ...
    except (ValueError, OSError) as e:
        raise ImageError(f"{desc}: unsupported image mode {mode!r} ({e})") from e


def load_image(
    source, *, allowed_dirs=None, max_pixels: int = 40_000_000, convert_rgb: bool = True, apply_exif: bool = True
) -> Image.Image:
    """Open and fully decode an image, or raise ImageError.

    source:       a path (str / Path), the encoded bytes, or a PIL image.
    allowed_dirs: if given (paths only), the file, symlinks resolved, must lie inside one of them.
    max_pixels:   width * height limit, checked from the header before any pixel is decoded.
    convert_rgb:  True -> 8-bit RGB (alpha composited onto white, 16-bit / float scaled to 0..255);
                  False -> the decoded image in its original mode (compat mode mimicking old code).
    apply_exif:   rotate/flip per the EXIF orientation tag (pass False to mimic code that did not).
    Animated images (GIF, APNG, WebP) give their first frame.
    """
    desc = _describe(source)
    if isinstance(source, Image.Image):
        return _finish(source, desc, max_pixels, convert_rgb, apply_exif)
    if isinstance(source, (str, Path)):
        path = str(source)
        if allowed_dirs is not None:
            _check_allowed(path, [allowed_dirs] if isinstance(allowed_dirs, (str, Path)) else allowed_dirs)
        if not os.path.exists(path):
            raise ImageError(f"{desc}: file not found")
        if not os.path.isfile(path):
            raise ImageError(f"{desc}: not a regular file")
        opened = _open(path, desc)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        opened = _open(io.BytesIO(bytes(source)), desc)
    else:
        raise ImageError(f"{desc}: unsupported image source type {type(source).__name__}")
    try:
        return _finish(opened, desc, max_pixels, convert_rgb, apply_exif)
    finally:
        opened.close()  # animated files keep their handle open for seeking; release it


def _finish(img, desc, max_pixels, convert_rgb, apply_exif) -> Image.Image:
    """Size check, full decode, EXIF, mode conversion. Returns an image independent of `img`."""
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{desc}: image too large ({w}x{h} = {w * h} pixels > max_pixels {max_pixels})")
    if w <= 0 or h <= 0:
        raise ImageError(f"{desc}: image has no pixels ({w}x{h})")
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()  # force the full decode so corrupt or truncated data fails here, not later
        out = ImageOps.exif_transpose(img) if apply_exif else img  # (exif_transpose returns a copy)
    except _DECODE_ERRORS as e:
        raise ImageError(f"{desc}: corrupt or truncated image data ({type(e).__name__}: {e})") from e
    if convert_rgb:
        out = _to_rgb(out, desc)
    # Never hand back the caller's own object, nor one tied to a file we are about to close.
    return out.copy() if out is img else out


def _open(fp, desc: str) -> Image.Image:
    """Read the header only. PIL's own decompression-bomb check can raise here, before our
    max_pixels check sees the size; it is turned into an ImageError like everything else."""
    try:
        return Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{desc}: image too large ({e})") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(f"{desc}: not an image or unknown format") from e
    except _DECODE_ERRORS as e:
        raise ImageError(f"{desc}: not an image or corrupt header ({type(e).__name__}: {e})") from e


# -- resizing --------------------------------------------------------------------------------


def squash_resize(img: Image.Image, size: int = 224, resample: int = Image.Resampling.LANCZOS) -> Image.Image:
    """Resize to size x size ignoring the aspect ratio (the official MIMIC preprocessing)."""
    return img.resize((size, size), resample)


def resize_center_crop(
    img: Image.Image, shorter: int = 256, crop: int = 224, resample: int = Image.Resampling.BICUBIC
) -> Image.Image:
    """Shorter side to `shorter` (longer side truncated like torchvision's Resize), then a
    centre crop of crop x crop (zero-padded by PIL if the image is smaller than the crop)."""
    w, h = img.size
    if w <= h:
        nw, nh = shorter, max(1, int(shorter * h / w))
    else:
        nw, nh = max(1, int(shorter * w / h)), shorter
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample)
    left, top = int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


# -- to tensors ------------------------------------------------------------------------------


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W] (what the backbones' `resize_image` returns)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _rgb_array(img: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor [3, H, W] with values 0..255."""
    return to_uint8_tensor(img).float()


_POOL = None
_POOL_LOCK = threading.Lock()


def thread_pool() -> ThreadPoolExecutor:
    """One process-wide pool (min(8, CPUs) threads) for decoding and resizing images: PIL releases
    the GIL in both, and a pool per call would cost its start-up on every batch. Tasks given to it
    must not wait on other tasks of it."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="mimic-images")
        return _POOL


def to_tensor_normalized(img: Image.Image, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] = (x / 255 - mean) / std, mean/std in 0..1 scale."""
    x = _rgb_array(img) / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def to_tensor_affine(img: Image.Image, offset: float = 127.0, scale: float = 128.0) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] = (x - offset) / scale on 0..255 pixels.

    The default (x - 127) / 128 is the EfficientNet-Lite (TF-Lite) normalisation, roughly -1..1.
    """
    return (_rgb_array(img) - offset) / scale
