"""Heatmap decoding: argmax plus subpixel refinement.

logits `[..., K, h, w]` -> keypoints `[..., K, 2]` (x, y in input pixels) and confidence
`[..., K]` = sigmoid of the logit at the peak (the heatmap value DeepLabCut reports as
likelihood).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ensemble_jax.data.coords import from_heatmap


def decode_heatmaps(logits: jnp.ndarray, stride: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    *lead, h, w = logits.shape
    flat = logits.reshape(*lead, h * w)
    arg = jnp.argmax(flat, axis=-1)
    py, px = arg // w, arg % w
    peak = jnp.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
    # Subpixel: centroid of sigmoid probabilities in the 3x3 window around the peak.
    prob = jax.nn.sigmoid(logits)
    offsets = jnp.arange(-1, 2)
    yy = jnp.clip(py[..., None] + offsets, 0, h - 1)            # [..., 3]
    xx = jnp.clip(px[..., None] + offsets, 0, w - 1)
    valid_y = (py[..., None] + offsets >= 0) & (py[..., None] + offsets < h)
    valid_x = (px[..., None] + offsets >= 0) & (px[..., None] + offsets < w)
    rows = jnp.take_along_axis(prob, yy[..., :, None], axis=-2)  # [..., 3, w]
    win = jnp.take_along_axis(rows, xx[..., None, :], axis=-1)   # [..., 3, 3]
    win = win * (valid_y[..., :, None] & valid_x[..., None, :])
    total = jnp.maximum(win.sum((-1, -2)), 1e-12)
    dy = (win.sum(-1) * offsets).sum(-1) / total
    dx = (win.sum(-2) * offsets).sum(-1) / total
    uv = jnp.stack([px + dx, py + dy], axis=-1)
    return from_heatmap(uv, stride), jax.nn.sigmoid(peak)
