"""Letterboxing: fit an image of any size into one training size, keeping its aspect ratio.

The image is scaled by one factor `s` (the same in x and y) so that it fits inside the
training size `(H, W)`, then centred and padded with zeros. Keypoints follow exactly:

    x_train = s * x_orig + dx        y_train = s * y_orig + dy
    dx = 0.5 * s - 0.5 + pad_x       dy = 0.5 * s - 0.5 + pad_y

This is the exact map of pixel *centres* (pixel centres at integer coordinates, the
project's convention, see `ensemble_jax.data.coords`): in edge coordinates u = x + 0.5
the resize is u_train = s * u_orig + pad, hence the formula above. The pixels obey the
same map: the resize uses Pillow's `resize(..., box=...)`, whose output pixel centre
`j + 0.5` samples the input at edge coordinate `box0 + (j + 0.5) * box_width / out_width`,
and we choose the box so that `box_width / out_width == 1 / s` exactly. The scaled
image therefore covers `floor(w * s)` output columns (the limiting side exactly `W`);
at most a sub-pixel sliver at the right/bottom edge of the original is not shown.

`KeypointDataset.letterbox` stores `(s, dx, dy)` per frame; `to_train` / `to_original`
apply the forward and inverse maps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ensemble_jax.data.dataset import DatasetError

__all__ = ["Letterbox", "parse_image_size", "letterbox_params", "letterbox_image",
           "to_train", "to_original", "IDENTITY"]

IDENTITY = np.array([1.0, 0.0, 0.0], np.float32)


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """How one original image of `(orig_w, orig_h)` sits in the training image."""
    scale: float
    pad_x: int
    pad_y: int
    new_w: int          # columns covered by the scaled image
    new_h: int          # rows covered by the scaled image
    orig_w: int
    orig_h: int
    out_w: int
    out_h: int

    @property
    def dx(self) -> float:
        return 0.5 * self.scale - 0.5 + self.pad_x

    @property
    def dy(self) -> float:
        return 0.5 * self.scale - 0.5 + self.pad_y

    @property
    def is_identity(self) -> bool:
        return (self.orig_w, self.orig_h) == (self.out_w, self.out_h)

    def as_array(self) -> np.ndarray:
        """float32 [3]: (scale, dx, dy) as stored in `KeypointDataset.letterbox`."""
        return np.array([self.scale, self.dx, self.dy], np.float32)


def parse_image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """`None`, an int `s` (-> `(s, s)`) or `(H, W)` -> `(H, W)` of positive ints."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    else:
        try:
            vals = [v for v in image_size]  # type: ignore[union-attr]
        except TypeError:
            raise DatasetError(
                f"image_size must be an int or (H, W), got {image_size!r}") from None
        if len(vals) != 2 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            raise DatasetError(f"image_size must be an int or (H, W) ints, got {image_size!r}")
        hw = (int(vals[0]), int(vals[1]))
    if hw[0] < 1 or hw[1] < 1:
        raise DatasetError(f"image_size must be positive, got {image_size!r}")
    return hw


def letterbox_params(orig_w: int, orig_h: int, out_h: int, out_w: int) -> Letterbox:
    """The letterbox of an original `orig_w x orig_h` image in an `out_h x out_w` frame."""
    if orig_w < 1 or orig_h < 1:
        raise DatasetError(f"image size must be positive, got {orig_w}x{orig_h}")
    if (orig_w, orig_h) == (out_w, out_h):
        return Letterbox(1.0, 0, 0, orig_w, orig_h, orig_w, orig_h, out_w, out_h)
    scale = min(out_w / orig_w, out_h / orig_h)
    # The limiting side fills the frame exactly; guard against float round-off.
    new_w = min(out_w, int(math.floor(orig_w * scale + 1e-6)))
    new_h = min(out_h, int(math.floor(orig_h * scale + 1e-6)))
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    pad_x = (out_w - new_w) // 2
    pad_y = (out_h - new_h) // 2
    return Letterbox(float(scale), pad_x, pad_y, new_w, new_h, orig_w, orig_h, out_w, out_h)


def letterbox_image(image: np.ndarray, out_hw: tuple[int, int],
                    resample: str = "bilinear") -> tuple[np.ndarray, Letterbox]:
    """Letterboxes a uint8 image `[h, w]` or `[h, w, C]` into `[H, W, C]` (zeros around).

    `resample`: "bilinear" (Pillow's BILINEAR, which widens its support when shrinking,
    so downscaling averages like an area filter) or "box" (pure area average).
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3):
        raise DatasetError(f"letterbox_image expects uint8 [h, w, 1|3], got {arr.dtype} {arr.shape}")
    h, w, c = arr.shape
    out_h, out_w = out_hw
    lb = letterbox_params(w, h, out_h, out_w)
    if lb.is_identity:
        return arr, lb
    filt = {"bilinear": Image.Resampling.BILINEAR, "box": Image.Resampling.BOX}.get(resample)
    if filt is None:
        raise DatasetError(f"resample must be 'bilinear' or 'box', got {resample!r}")
    # The box in original edge coordinates whose width/height over the output size is 1/s.
    box = (0.0, 0.0, min(float(w), lb.new_w / lb.scale), min(float(h), lb.new_h / lb.scale))
    pil = Image.fromarray(arr[..., 0] if c == 1 else arr)
    small = np.asarray(pil.resize((lb.new_w, lb.new_h), filt, box=box))
    if small.ndim == 2:
        small = small[..., None]
    out = np.zeros((out_h, out_w, c), np.uint8)
    out[lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w] = small
    return out, lb


def _split(letterbox: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lb = np.asarray(letterbox, np.float64)
    if lb.shape[-1] != 3:
        raise DatasetError(f"letterbox must end in (scale, dx, dy), got shape {lb.shape}")
    # [n, 3] with xy [n, K, 2]: one transform per frame, broadcast over keypoints.
    while lb.ndim > 1 and lb.ndim < xy.ndim:
        lb = lb[..., None, :]
    return lb[..., :1], lb[..., 1:]


def to_train(xy: np.ndarray, letterbox: np.ndarray) -> np.ndarray:
    """Original-pixel coordinates `[..., 2]` -> training pixels: `scale * xy + (dx, dy)`.

    `letterbox` is `[3]` or `[n, 3]` (then `xy` is `[n, ..., 2]`). NaN stays NaN.
    """
    xy = np.asarray(xy, np.float64)
    scale, off = _split(letterbox, xy)
    return (scale * xy + off).astype(np.float32)


def to_original(xy: np.ndarray, letterbox: np.ndarray) -> np.ndarray:
    """Training-pixel coordinates `[..., 2]` -> original pixels: `(xy - (dx, dy)) / scale`."""
    xy = np.asarray(xy, np.float64)
    scale, off = _split(letterbox, xy)
    return ((xy - off) / scale).astype(np.float32)
