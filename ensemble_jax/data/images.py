"""Loading labeled frames (PNG/JPEG/... through Pillow) into one uint8 array.

Channel policy: if any image of a project is colour, every image becomes RGB (grey ones
are repeated into three channels); if all are grey, the images keep one channel.
Size policy: see `load_images`; every image is letterboxed (`ensemble_jax.data.letterbox`)
to one training size, and the exact keypoint transform is returned with it.
"""
from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.letterbox import letterbox_image, parse_image_size

__all__ = ["image_info", "load_image", "load_images", "images_to_common_size",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _where(path: Path, context: str | None) -> str:
    return f"{path} (referenced by {context})" if context else f"{path}"


MAX_PIXELS_ENV = "ENSEMBLE_JAX_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485     # Pillow's own decompression-bomb limit


def max_pixels() -> int:
    """Largest image (width x height) decoded: $ENSEMBLE_JAX_MAX_PIXELS or Pillow's limit
    (a small file can declare a huge image and take all the memory when decoded)."""
    from PIL import Image
    try:
        n = int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))
    except ValueError:
        raise DatasetError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}: expected a "
                           f"number of pixels") from None
    Image.MAX_IMAGE_PIXELS = max(n, 1)   # Pillow refuses at twice this, before decoding
    # Pillow warns between 1x and 2x its limit; the size check below says it in one line
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return n


def _bomb_size(e: Exception) -> str:
    m = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(m.group(1)):,} pixels" if m else str(e)


def _too_large(path: Path, context: str | None, size: str) -> DatasetError:
    return DatasetError(
        f"image {_where(path, context)} is too large to decode ({size}, limit "
        f"{max_pixels():,} pixels); if it is a real image, raise {MAX_PIXELS_ENV}")


def image_info(path: str | os.PathLike, context: str | None = None) -> tuple[int, int, bool]:
    """(width, height, is_grey) from the image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file not found: {_where(path, context)}")
    limit = max_pixels()
    try:
        with Image.open(path) as im:
            w, h = im.size
            grey = im.mode in _GREY_MODES or (im.mode == "P" and _palette_is_grey(im))
    except Image.DecompressionBombError as e:
        raise _too_large(path, context, _bomb_size(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DatasetError(
            f"unreadable image {_where(path, context)}: {type(e).__name__}: {e}") from e
    if w < 1 or h < 1:
        raise DatasetError(f"image {_where(path, context)} has size {w}x{h}")
    if w * h > limit:
        raise _too_large(path, context, f"{w}x{h} = {w * h:,} pixels")
    return int(w), int(h), grey


def _palette_is_grey(im) -> bool:
    pal = im.getpalette() or []
    rgb = np.asarray(pal[: 3 * (len(pal) // 3)], np.int32).reshape(-1, 3)
    return bool(len(rgb)) and bool((rgb == rgb[:, :1]).all())


def _to_uint8(im) -> np.ndarray:
    """A decoded PIL image -> uint8 [h, w, 1] (grey) or [h, w, 3] (colour)."""
    mode = im.mode
    if mode in ("1", "L"):
        arr = np.asarray(im.convert("L"))
    elif mode == "LA":
        arr = np.asarray(im.convert("L"))
    elif mode == "P":
        arr = np.asarray(im.convert("L")) if _palette_is_grey(im) else np.asarray(im.convert("RGB"))
    elif mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        raw = np.asarray(im).astype(np.float64)
        top = 65535.0 if (mode.startswith("I;16") or raw.max(initial=0) > 255) else 255.0
        arr = np.clip(np.round(raw * (255.0 / top)), 0, 255).astype(np.uint8)
    else:  # RGB, RGBA, CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.ascontiguousarray(arr, dtype=np.uint8)


def load_image(path: str | os.PathLike, context: str | None = None) -> np.ndarray:
    """Decodes one image to uint8 `[h, w, 1]` (grey) or `[h, w, 3]` (colour).

    A missing or corrupt file raises `DatasetError` naming the file (and `context`, e.g.
    the CSV file and line that referenced it).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image file not found: {_where(path, context)}")
    limit = max_pixels()
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > limit:
                raise _too_large(path, context, f"{w}x{h} = {w * h:,} pixels")
            im.load()
            return _to_uint8(im)
    except DatasetError:
        raise
    except Image.DecompressionBombError as e:
        raise _too_large(path, context, _bomb_size(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DatasetError(
            f"unreadable image {_where(path, context)}: {type(e).__name__}: {e}") from e


def _target_size(sizes: Sequence[tuple[int, int]], image_size, names: Sequence[str]
                 ) -> tuple[int, int]:
    from ensemble_jax.data.auto_size import AutoImageSize
    if isinstance(image_size, AutoImageSize):   # chosen from the frame sizes
        return image_size.choose(sizes)
    hw = parse_image_size(image_size)
    if hw is not None:
        return hw
    distinct = {}
    for (w, h), name in zip(sizes, names):
        distinct.setdefault((w, h), name)
    if len(distinct) > 1:
        examples = ", ".join(f"{w}x{h} ({name})" for (w, h), name in list(distinct.items())[:4])
        raise DatasetError(
            f"images have {len(distinct)} different sizes (width x height: {examples}); "
            f"pass image_size=(H, W) (or an int) to letterbox them to one training size")
    w, h = next(iter(distinct))
    return h, w


def _workers(n: int) -> int:
    return max(1, min(8, os.cpu_count() or 1, n))


def load_images(paths: Sequence[str | os.PathLike], image_size=None,
                contexts: Sequence[str] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loads and letterboxes images into one array.

    Args:
      paths: n image files.
      image_size: `None` (keep the images as they are; they must all have one size),
        an int `s` (-> `s x s`) or `(H, W)`: every image is letterboxed to it.
      contexts: n strings naming where each path came from (used in error messages).

    Returns:
      images uint8 `[n, H, W, C]` (C = 3 if any image is colour, else 1),
      letterbox float32 `[n, 3]` (scale, dx, dy), original_sizes int32 `[n, 2]` (w, h).
    """
    paths = [Path(p) for p in paths]
    n = len(paths)
    if contexts is None:
        contexts = [None] * n  # type: ignore[list-item]
    if n == 0:
        raise DatasetError("no images to load")
    with ThreadPoolExecutor(_workers(n)) as pool:
        infos = list(pool.map(image_info, paths, contexts))
    sizes = [(w, h) for w, h, _ in infos]
    out_h, out_w = _target_size(sizes, image_size, [str(p) for p in paths])
    channels = 1 if all(g for _, _, g in infos) else 3
    images = np.zeros((n, out_h, out_w, channels), np.uint8)
    letterbox = np.zeros((n, 3), np.float32)

    def work(i: int) -> None:
        arr = load_image(paths[i], contexts[i])
        if arr.shape[:2] != (sizes[i][1], sizes[i][0]):  # header lied (should not happen)
            raise DatasetError(f"image {_where(paths[i], contexts[i])}: decoded size "
                               f"{arr.shape[1]}x{arr.shape[0]} differs from its header")
        if arr.shape[-1] != channels:
            arr = np.repeat(arr, 3, axis=-1)
        boxed, lb = letterbox_image(arr, (out_h, out_w))
        images[i] = boxed
        letterbox[i] = lb.as_array()

    with ThreadPoolExecutor(_workers(n)) as pool:
        for fut in [pool.submit(work, i) for i in range(n)]:
            fut.result()
    return images, letterbox, np.asarray(sizes, np.int32).reshape(n, 2)


def images_to_common_size(arrays: Sequence[np.ndarray], image_size=None,
                          names: Sequence[str] | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like `load_images` for already-decoded uint8 arrays `[h, w]` or `[h, w, C]`."""
    arrs = []
    for a in arrays:
        a = np.asarray(a)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.dtype != np.uint8:
            raise DatasetError(f"image must be uint8 [h, w, 1|3], got {a.dtype} {a.shape}")
        arrs.append(a[..., :3])
    n = len(arrs)
    if n == 0:
        raise DatasetError("no images")
    names = list(names) if names is not None else [f"#{i}" for i in range(n)]
    sizes = [(a.shape[1], a.shape[0]) for a in arrs]
    out_h, out_w = _target_size(sizes, image_size, names)
    channels = 1 if all(a.shape[-1] == 1 for a in arrs) else 3
    images = np.zeros((n, out_h, out_w, channels), np.uint8)
    letterbox = np.zeros((n, 3), np.float32)
    for i, a in enumerate(arrs):
        if a.shape[-1] != channels:
            a = np.repeat(a, 3, axis=-1)
        images[i], lb = letterbox_image(a, (out_h, out_w))
        letterbox[i] = lb.as_array()
    return images, letterbox, np.asarray(sizes, np.int32).reshape(n, 2)
