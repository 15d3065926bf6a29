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

The functions run inside the jitted training step on every batch, so they are one fused
elementwise pass over the maps with iota masks: no gathers, no loops.
"""
from __future__ import annotations

import functools

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
    """keypoints_xy `[..., K, 2]` -> (labeled bool `[..., K]`, squared distance from the label
    pixel int32 `[..., K, h, w]`)."""
    labeled = jnp.isfinite(keypoints_xy).all(-1)
    uv = to_heatmap(jnp.where(labeled[..., None], keypoints_xy, 0.0), stride)
    col = jnp.clip(jnp.round(uv[..., 0]), 0, w - 1).astype(jnp.int32)
    row = jnp.clip(jnp.round(uv[..., 1]), 0, h - 1).astype(jnp.int32)
    rows = jax.lax.broadcasted_iota(jnp.int32, (h, w), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (h, w), 1)
    dr = rows - row[..., None, None]
    dc = cols - col[..., None, None]
    return labeled, dr * dr + dc * dc


def _value_at(heatmaps, d2):
    """Logit at the label pixel (the pixel with d2 == 0), `[..., K]`."""
    return jnp.where(d2 == 0, heatmaps, -jnp.inf).max((-2, -1))


@functools.partial(jax.jit, static_argnames=("stride", "radius"))
def _heatmap_margin(heatmaps, keypoints_xy, *, stride, radius):
    h, w = heatmaps.shape[-2:]
    labeled, d2 = _label_pixel(keypoints_xy, stride, h, w)
    value = _value_at(heatmaps, d2)
    far = d2.astype(jnp.float32) > float(radius) ** 2
    competitor = jnp.where(far, heatmaps, -jnp.inf).max((-2, -1))
    has_competitor = far.any((-2, -1))
    return jnp.where(labeled & has_competitor, value - competitor, jnp.nan)


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
    labeled, d2 = _label_pixel(keypoints_xy, stride, h, w)
    value = _value_at(heatmaps, d2)
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
    labeled, d2 = _label_pixel(keypoints_xy, stride, h, w)
    return jnp.where(labeled, jax.nn.sigmoid(_value_at(heatmaps, d2)), jnp.nan)


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
