"""Images in and out of the codec: reading with PIL, the padding policy, atomic writes.

Padding policy: the model needs sides that are multiples of 128 (``IMAGE_MULTIPLE``). An image
whose sides are not is extended at the bottom and on the right by repeating its last row and
column ("replicate") up to the next multiple; the decoder crops the same rows and columns off.
Sizes that already are multiples are not padded, so the codec then runs exactly the model (and
the official code) on the image. Bits per pixel always count the original pixels.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from mambaic.models import IMAGE_MULTIPLE


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def image_files(folder: str | os.PathLike, extensions=IMAGE_EXTENSIONS) -> list:
    """The files below ``folder`` (recursively) whose extension is one of ``extensions``, sorted;
    ValueError when the folder does not exist or holds none."""
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{folder}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(extensions))}) in it or below it")
    return files


class ImageError(ValueError):
    """An input file that is not an image we can code (the message names the file and why)."""


def _deep_mode(im: Image.Image) -> str | None:
    """The raw mode when ``im`` stores more than 8 bits per sample ("I;16", "RGB;16B", ...), else None."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return im.mode
    for tile in getattr(im, "tile", None) or []:
        args = tile.args if hasattr(tile, "args") else tile[3]
        if isinstance(args, tuple) and args:
            args = args[0]
        raw = args if isinstance(args, str) else ""
        if ";16" in raw or ";32" in raw:  # PIL reads 16-bit RGB(A) PNGs as 8-bit RGB(A), silently
            return raw
    return None


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file into a (1, 3, H, W) float32 tensor in [0, 1].

    Grayscale, palette and CMYK images are converted to RGB; an alpha channel is dropped with a
    warning; an EXIF orientation is applied (the image as viewers show it). Images of more than
    8 bits per sample are refused (the model codes 8-bit RGB), so are images of more than
    ``max_pixels`` pixels (checked before decoding them) and anything PIL cannot read. Raises
    :class:`ImageError`, or FileNotFoundError.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ImageError(f"{path}: is a folder, not an image")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageError(f"{path}: {im.width}x{im.height} is {im.width * im.height:,} pixels, above the limit of "
                                 f"{max_pixels:,} (--max-pixels)")  # fmt: skip
            deep = _deep_mode(im)
            if deep is not None:
                raise ImageError(
                    f"{path}: {deep} images (more than 8 bits per sample) are not supported; "
                    f"convert it to 8-bit RGB first"
                )
            mode = im.mode
            im.load()
            if "A" in mode or (mode == "P" and "transparency" in im.info):
                warnings.warn(f"{path}: dropping the alpha channel of a {mode} image", stacklevel=2)
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except PermissionError:
        raise ImageError(f"{path}: cannot read it (permission denied)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL's errors for non-images, truncated or broken files and oversized images
        if isinstance(exc, FileNotFoundError):
            raise
        raise ImageError(f"{path}: not a readable image ({exc})") from None
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float().div_(255)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounding to nearest."""
    return x[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    readers see the old file or the whole new one, and a failure leaves no partial output."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_png(path: str | os.PathLike, x: torch.Tensor) -> None:
    """Save a (1, 3, H, W) tensor in [0, 1] as an 8-bit RGB PNG, atomically."""
    import io

    buf = io.BytesIO()
    Image.fromarray(to_uint8(x), "RGB").save(buf, format="PNG")
    write_atomic(path, buf.getvalue())


def padding_for(height: int, width: int, multiple: int = IMAGE_MULTIPLE) -> tuple[int, int]:
    """(rows, columns) to add at the bottom and right so both sides are multiples of ``multiple``."""
    return (-height) % multiple, (-width) % multiple


def pad_to_multiple(x: torch.Tensor, multiple: int = IMAGE_MULTIPLE) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad (batch, C, H, W) at the bottom and right; returns (padded, (rows, columns))."""
    rows, cols = padding_for(x.shape[-2], x.shape[-1], multiple)
    if rows or cols:
        x = F.pad(x, (0, cols, 0, rows), mode="replicate")
    return x, (rows, cols)


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left ``height`` x ``width`` of a (batch, C, H, W) map (undoes :func:`pad_to_multiple`)."""
    return x[..., :height, :width]
