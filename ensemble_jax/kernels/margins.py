"""Heatmap margins (for AUM) and the probability / confidence a heatmap gives the label.

Conventions (shared by every function here):
- heatmaps are logits at OUTPUT resolution, `[..., K, h, w]`;
- keypoints_xy are (x, y) in INPUT image pixels, `[..., K, 2]`, converted with
  `ensemble_jax.data.coords.to_heatmap(xy, stride)` (u = (x - (stride-1)/2) / stride);
- the *label pixel* is the nearest output pixel: (col, row) = round(u, v) with
  round-half-to-even (`jnp.round`), then clipped into [0, w-1] x [0, h-1], so a label
  outside the map is scored at the nearest border pixel;
- a keypoint with any non-finite coordinate is unlabeled: every output there is NaN;
- NaN logits propagate (a NaN in the region a function reads makes its output NaN).

The functions run inside the jitted training step on every batch, so they are vectorised:
iota masks and `take_along_axis` (one element, or the 2R+1 rows through the exclusion
disc, per keypoint), one plain max pass over the maps, no loops.
"""
from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp

from ensemble_jax.data.coords import to_heatmap


def _check(heatmaps, keypoints_xy):
    chex.assert_rank(heatmaps, {3, 4, 5, 6})
    chex.assert_type(heatmaps, float)
    chex.assert_type(keypoints_xy, float)
    chex.assert_shape(keypoints_xy, heatmaps.shape[:-2] + (2,))


def _label_pixel(keypoints_xy, stride: int, h: int, w: int):
    """keypoints_xy `[..., K, 2]` -> (labeled bool `[..., K]`, row, col int32 `[..., K]`)."""
    labeled = jnp.isfinite(keypoints_xy).all(-1)
    uv = to_heatmap(jnp.where(labeled[..., None], keypoints_xy, 0.0), stride)
    col = jnp.clip(jnp.round(uv[..., 0]), 0, w - 1).astype(jnp.int32)
    row = jnp.clip(jnp.round(uv[..., 1]), 0, h - 1).astype(jnp.int32)
    return labeled, row, col


def _value_at(heatmaps, row, col):
    """Logit at (row, col): `[..., K, h, w]`, `[..., K]` x2 -> `[..., K]`."""
    h, w = heatmaps.shape[-2:]
    flat = heatmaps.reshape(heatmaps.shape[:-2] + (h * w,))
    return jnp.take_along_axis(flat, (row * w + col)[..., None], axis=-1)[..., 0]


def _competitor(heatmaps, row, col, radius: float):
    """Max logit over pixels farther than `radius` from (row, col), `[..., K]`.

    Rows with |dy| > radius lie wholly outside the disc, so they enter through their row
    maxima (one plain max pass over the maps). Only the 2R+1 rows through the disc
    (R = floor(radius)) are gathered and masked pixel by pixel. A masked max over the
    whole map measured 4-10x slower on CPU (XLA does not vectorise it)."""
    h, w = heatmaps.shape[-2:]
    r2 = float(radius) ** 2
    R = min(int(math.floor(radius)), h - 1)
    row_max = heatmaps.max(-1)                                        # [..., K, h]
    dy_all = jnp.arange(h, dtype=jnp.int32) - row[..., None]
    far_rows = jnp.where(jnp.abs(dy_all) > R, row_max, -jnp.inf).max(-1)
    dy = jnp.arange(-R, R + 1, dtype=jnp.int32)                      # [2R+1]
    ys = row[..., None] + dy                                          # [..., K, 2R+1]
    near = jnp.take_along_axis(heatmaps, jnp.clip(ys, 0, h - 1)[..., None], axis=-2)
    dx = jnp.arange(w, dtype=jnp.int32) - col[..., None]              # [..., K, w]
    d2 = (dx * dx)[..., None, :] + (dy * dy)[:, None]                 # [..., K, 2R+1, w]
    far = (d2.astype(jnp.float32) > r2) & ((ys >= 0) & (ys < h))[..., None]
    return jnp.maximum(far_rows, jnp.where(far, near, -jnp.inf).max((-2, -1)))


def _has_competitor(row, col, h: int, w: int, radius: float):
    """Whether any pixel lies farther than `radius`: true iff the farthest corner does."""
    mr = jnp.maximum(row, h - 1 - row)
    mc = jnp.maximum(col, w - 1 - col)
    return (mr * mr + mc * mc).astype(jnp.float32) > float(radius) ** 2


@functools.partial(jax.jit, static_argnames=("stride", "radius"))
def _heatmap_margin(heatmaps, keypoints_xy, *, stride, radius):
    h, w = heatmaps.shape[-2:]
    labeled, row, col = _label_pixel(keypoints_xy, stride, h, w)
    margin = _value_at(heatmaps, row, col) - _competitor(heatmaps, row, col, radius)
    ok = labeled & _has_competitor(row, col, h, w, radius)
    return jnp.where(ok, margin, jnp.nan)


def heatmap_margin(heatmaps: jnp.ndarray, keypoints_xy: jnp.ndarray, *, stride: int,
                   radius: float) -> jnp.ndarray:
    """Margin of the labeled pixel over the best pixel far from it (the AUM margin).

    Args:
      heatmaps: float logits `[..., K, h, w]` (e.g. `[B, K, h, w]`).
      keypoints_xy: float `[..., K, 2]`, (x, y) in input image pixels; NaN = unlabeled.
      stride: int (static), input pixels per output pixel.
      radius: float (static), in output pixels. Competitors are the pixels whose Euclidean
        distance from the label pixel is strictly greater than `radius`.

    Returns:
      `[..., K]`: logit at the label pixel - max logit over competitors. NaN where the
      keypoint is unlabeled, and where no pixel lies farther than `radius` (no competitor).
    """
    _check(heatmaps, keypoints_xy)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    return _heatmap_margin(heatmaps, keypoints_xy, stride=int(stride), radius=float(radius))


@functools.partial(jax.jit, static_argnames=("stride",))
def _gt_probability(heatmaps, keypoints_xy, *, stride):
    h, w = heatmaps.shape[-2:]
    labeled, row, col = _label_pixel(keypoints_xy, stride, h, w)
    value = _value_at(heatmaps, row, col)
    lse = jax.nn.logsumexp(heatmaps, axis=(-2, -1))
    return jnp.where(labeled, jnp.exp(value - lse), jnp.nan)


def gt_probability(heatmaps: jnp.ndarray, keypoints_xy: jnp.ndarray, *, stride: int
                   ) -> jnp.ndarray:
    """Softmax over all h*w pixels of the logits, evaluated at the label pixel.

    Args:
      heatmaps: float logits `[..., K, h, w]`.
      keypoints_xy: float `[..., K, 2]` (x, y) input pixels; NaN = unlabeled.
      stride: int (static).

    Returns:
      `[..., K]` in [0, 1]; NaN where unlabeled.
    """
    _check(heatmaps, keypoints_xy)
    return _gt_probability(heatmaps, keypoints_xy, stride=int(stride))


@functools.partial(jax.jit, static_argnames=("stride",))
def _gt_confidence(heatmaps, keypoints_xy, *, stride):
    h, w = heatmaps.shape[-2:]
    labeled, row, col = _label_pixel(keypoints_xy, stride, h, w)
    return jnp.where(labeled, jax.nn.sigmoid(_value_at(heatmaps, row, col)), jnp.nan)


def gt_confidence(heatmaps: jnp.ndarray, keypoints_xy: jnp.ndarray, *, stride: int
                  ) -> jnp.ndarray:
    """sigmoid(logit at the label pixel): the confidence the model gives the label.

    Args:
      heatmaps: float logits `[..., K, h, w]`.
      keypoints_xy: float `[..., K, 2]` (x, y) input pixels; NaN = unlabeled.
      stride: int (static).

    Returns:
      `[..., K]` in [0, 1]; NaN where unlabeled.
    """
    _check(heatmaps, keypoints_xy)
    return _gt_confidence(heatmaps, keypoints_xy, stride=int(stride))
