"""Ensemble spread and consensus of member keypoint predictions.

A member's prediction for (frame, keypoint) counts only if both coordinates are finite;
other members are ignored there ("NaN-aware").
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

_METHODS = ("weighted_mean", "median")


@jax.jit
def _ensemble_spread(keypoints):
    valid = jnp.isfinite(keypoints).all(-1, keepdims=True)       # [M, F, K, 1]
    count = valid.sum(0)                                          # [F, K, 1]
    c = jnp.maximum(count, 1).astype(keypoints.dtype)
    mean = jnp.where(valid, keypoints, 0.0).sum(0) / c            # [F, K, 2]
    dev = jnp.where(valid, keypoints - mean, 0.0)
    var = (dev * dev).sum(0) / c                                  # ddof = 0
    return jnp.where(count[..., 0] > 0, jnp.sqrt(var.sum(-1)), jnp.nan)


def ensemble_spread(keypoints: jnp.ndarray) -> jnp.ndarray:
    """Spread of the members' 2-D predictions.

    Args:
      keypoints: float `[M, F, K, 2]` member predictions (x, y), NaN = none.

    Returns:
      `[F, K]`: sqrt(var_x + var_y) over the valid members, population variances
      (ddof=0, i.e. the RMS distance to the members' mean); 0 with one valid member, NaN
      with none.
    """
    chex.assert_rank(keypoints, 4)
    chex.assert_axis_dimension(keypoints, -1, 2)
    chex.assert_type(keypoints, float)
    return _ensemble_spread(keypoints)


@functools.partial(jax.jit, static_argnames=("method",))
def _consensus(keypoints, confidences, *, method):
    valid = jnp.isfinite(keypoints).all(-1)                       # [M, F, K]
    if method == "weighted_mean":
        w = jnp.where(valid & jnp.isfinite(confidences), jnp.maximum(confidences, 0.0), 0.0)
        sw = w.sum(0)                                             # [F, K]
        num = (w[..., None] * jnp.where(valid[..., None], keypoints, 0.0)).sum(0)
        return jnp.where((sw > 0)[..., None], num / jnp.where(sw > 0, sw, 1.0)[..., None],
                         jnp.nan)
    kp = jnp.where(valid[..., None], keypoints, jnp.nan)
    return jnp.nanmedian(kp, axis=0)


def consensus(keypoints: jnp.ndarray, confidences: jnp.ndarray | None = None,
              method: str = "weighted_mean") -> jnp.ndarray:
    """One prediction per (frame, keypoint) from the members'.

    Args:
      keypoints: float `[M, F, K, 2]` member predictions, NaN = none.
      confidences: float `[M, F, K]` (e.g. sigmoid heatmap peaks); required for
        "weighted_mean", ignored by "median". Negative confidences count as 0; a NaN
        confidence drops that member.
      method: "weighted_mean" (sum w x / sum w) or "median" (coordinate-wise median of the
        valid members; the mean of the middle two for an even count).

    Returns:
      `[F, K, 2]`; NaN where no member is valid (or all weights are 0).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    chex.assert_rank(keypoints, 4)
    chex.assert_axis_dimension(keypoints, -1, 2)
    chex.assert_type(keypoints, float)
    if method == "weighted_mean":
        if confidences is None:
            raise ValueError("method='weighted_mean' needs confidences")
        chex.assert_shape(confidences, keypoints.shape[:-1])
        chex.assert_type(confidences, float)
    else:
        confidences = jnp.zeros(keypoints.shape[:-1], keypoints.dtype)
    return _consensus(keypoints, confidences, method=method)
