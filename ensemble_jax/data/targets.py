"""Gaussian heatmap targets at the output stride, computed on device per batch."""
from __future__ import annotations

import jax.numpy as jnp

from ensemble_jax.data.coords import to_heatmap


def gaussian_targets(keypoints: jnp.ndarray, heatmap_hw: tuple[int, int], stride: int,
                     sigma: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """keypoints `[B, K, 2]` (input pixels, NaN = unlabeled) ->
    (targets `[B, K, h, w]` in [0, 1], weights `[B, K]` = 1 where labeled, 0 where NaN).

    `sigma` is in output (heatmap) pixels. Unlabeled keypoints get an all-zero target and
    zero weight, so they contribute nothing to the loss.
    """
    h, w = heatmap_hw
    labeled = ~jnp.isnan(keypoints).any(-1)
    uv = to_heatmap(jnp.where(labeled[..., None], keypoints, 0.0), stride)
    ys = jnp.arange(h, dtype=jnp.float32)
    xs = jnp.arange(w, dtype=jnp.float32)
    gy = jnp.exp(-0.5 * ((ys - uv[..., 1:2]) / sigma) ** 2)     # [B, K, h]
    gx = jnp.exp(-0.5 * ((xs - uv[..., 0:1]) / sigma) ** 2)     # [B, K, w]
    targets = gy[..., :, None] * gx[..., None, :]
    return targets * labeled[..., None, None], labeled.astype(jnp.float32)
