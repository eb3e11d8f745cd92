"""Content-addressed image files: each distinct image is stored once, named by its SHA-256.

Layout: DATA_DIR/images/<sha256[:2]>/<sha256><ext>. The bytes are kept exactly as received (the
hash is of those bytes), after `mimic.data.images.load_image` has fully decoded them with a pixel cap,
so a corrupt, truncated, non-image or oversized file is refused with `InvalidImage` before
anything is written. A file is written to a temporary name, fsynced and renamed into place, so a
crash never leaves a half-written image under its final name; writing the same image twice (two
processes, a retry) is harmless because both produce the same bytes under the same name.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidImage

# PIL format name -> file extension. Anything else keeps a generic extension.
_EXT = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "MPO": ".jpg",
    "ICO": ".ico",
    "PPM": ".ppm",
}


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    ext: str
    width: int
    height: int
    size_bytes: int
    path: Path


class ImageStore:
    """Validate and store images under `root` (normally DATA_DIR/images)."""

    def __init__(self, root: str | Path, *, max_bytes: int = 20 * 1024 * 1024, max_pixels: int = 40_000_000):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def path_for(self, sha256: str, ext: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{ext}"

    def read_source(self, source: str | Path | bytes, field: str = "image") -> bytes:
        """The raw bytes of a path or bytes source, refusing oversized files before reading them."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
        elif isinstance(source, (str, Path)):
            p = Path(source)
            if not p.is_file():
                raise InvalidImage(f"file not found: {p}", field)
            size = p.stat().st_size
            if size > self.max_bytes:
                raise InvalidImage(f"{p} is {size} bytes, over the limit of {self.max_bytes} bytes", field)
            data = p.read_bytes()
        else:
            raise InvalidImage(f"expected a path or bytes, got {type(source).__name__}", field)
        if len(data) > self.max_bytes:
            raise InvalidImage(f"image is {len(data)} bytes, over the limit of {self.max_bytes} bytes", field)
        if not data:
            raise InvalidImage("empty file", field)
        return data

    def validate(self, data: bytes, field: str = "image") -> tuple[str, int, int]:
        """(extension, width, height) of fully decodable image bytes, else InvalidImage."""
        # Imported here: mimic.data.images pulls in torch, which processes that never see an image
        # (journal tools, exports, the tests' writer subprocesses) should not pay for.
        from PIL import Image

        from mimic.data.images import ImageError, load_image

        try:
            img = load_image(data, max_pixels=self.max_pixels, convert_rgb=False, apply_exif=False)
        except ImageError as e:
            raise InvalidImage(str(e), field) from e
        # load_image returns a decoded copy without the format; read it from the header again.
        with Image.open(io.BytesIO(data)) as header:
            fmt = header.format or ""
        return _EXT.get(fmt, ".img"), img.size[0], img.size[1]

    def put(self, source: str | Path | bytes, field: str = "image") -> StoredImage:
        """Validate and store one image; return where it lives. Idempotent for identical bytes."""
        data = self.read_source(source, field)
        ext, width, height = self.validate(data, field)
        sha = hashlib.sha256(data).hexdigest()
        final = self.path_for(sha, ext)
        if not final.is_file() or final.stat().st_size != len(data):
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    tmp.unlink()
        return StoredImage(sha, ext, width, height, len(data), final)
