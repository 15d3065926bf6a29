"""Representativeness: how typical a frame is of the unlabeled pool (cosine similarity).

    score[i] = mean over j in pool, j != i, of cos(f_i, f_j)

Because cosine similarity is linear in the normalised features, the sum over the pool is
one dot product with the pool's summed unit vectors:

    sum_{j in pool, j != i} cos(f_i, f_j) = u_i . (sum_{j in pool} u_j) - [i in pool] |u_i|^2

so the default path is O(N D) and never forms any N x N block. `block_size=int` computes
the same quantity the literal way, blocks of `[block_size, N]` similarities at a time
(bounded memory, O(N^2 D)); it exists to cross-check the identity and as the place to add
a nonlinearity (e.g. a kernel on the similarity) if one is ever wanted.

Conventions: rows with any non-finite feature get score NaN and are left out of every
pool; an all-zero row has cosine 0 with everything (as in scikit-learn) and does count in
the pool; a frame whose pool (without itself) is empty gets NaN.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from jax import lax


def _inverse_norms(features):
    """-> (ok `[N]` all-finite rows, f `[N, D]` with bad rows zeroed, inv `[N]` = 1/|f_i|,
    0 for zero or bad rows). Unit rows are u_i = inv_i * f_i, never materialised here."""
    ok = jnp.isfinite(features).all(-1)
    f = jnp.where(ok[:, None], features, 0.0)
    sq = (f * f).sum(-1)
    inv = jnp.where(sq > 0, lax.rsqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    return ok, f, inv


@functools.partial(jax.jit, static_argnames=("block_size",))
def _representativeness(features, pool_mask, *, block_size):
    N = features.shape[0]
    ok, f, inv = _inverse_norms(features)
    pool = pool_mask & ok
    w = jnp.where(pool, inv, 0.0)                                     # pool rows' 1/|f|
    dot = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)
    if block_size is None:
        # u_i . sum_{j in pool} u_j  =  inv_i * (f_i . (w @ f)); minus |u_i|^2 = 1 (or 0
        # for a zero row) when i itself is in the pool.
        total = inv * dot(f, dot(w, f)) - jnp.where(pool & (inv > 0), 1.0, 0.0)
    else:
        u = f * inv[:, None]
        up = f * w[:, None]                                           # pool rows only
        col = lax.broadcasted_iota(jnp.int32, (block_size, N), 1)

        def body(i, out):
            start = jnp.minimum(i * block_size, N - block_size)
            rows = lax.dynamic_slice_in_dim(u, start, block_size, axis=0)
            sim = dot(rows, up.T)                                   # [b, N]
            row = start + lax.broadcasted_iota(jnp.int32, (block_size, N), 0)
            s = jnp.where(col == row, 0.0, sim).sum(-1)
            return lax.dynamic_update_slice_in_dim(out, s, start, axis=0)

        n_blocks = -(-N // block_size)
        total = lax.fori_loop(0, n_blocks, body, jnp.zeros((N,), f.dtype))
    count = pool.sum() - pool.astype(jnp.int32)
    return jnp.where(ok & (count > 0), total / jnp.maximum(count, 1), jnp.nan)


def representativeness(features: jnp.ndarray, pool_mask: jnp.ndarray | None = None, *,
                       block_size: int | None = None) -> jnp.ndarray:
    """Mean cosine similarity of each frame to the pool (see module docstring).

    Args:
      features: float `[N, D]` (e.g. pooled backbone features per frame).
      pool_mask: bool `[N]`, True for frames in the unlabeled pool; None = all frames.
      block_size: None (default, exact O(N D) identity) or rows per block (static) for the
        literal blocked pairwise computation, `[block_size, N]` similarities at a time.

    Returns:
      `[N]` scores in [-1, 1]; NaN for non-finite rows and frames with an empty pool.
    """
    chex.assert_rank(features, 2)
    chex.assert_type(features, float)
    N = features.shape[0]
    if pool_mask is None:
        pool_mask = jnp.ones((N,), bool)
    chex.assert_shape(pool_mask, (N,))
    chex.assert_type(pool_mask, bool)
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        block_size = int(min(block_size, max(N, 1)))
    if N == 0:
        return jnp.zeros((0,), features.dtype)
    return _representativeness(features, pool_mask, block_size=block_size)
