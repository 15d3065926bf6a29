"""Linear datamodels (Ilyas et al. 2022): predict a member's test value from its subset.

For every test value t at once, fit

    values[:, t] ~ bias[t] + masks @ weights[:, t]

by ridge regression, minimising  ||y - b - X w||^2 + l2 * ||w||^2  (unscaled sum of squares;
the intercept is not penalised). X (the masks as 0/1 floats) and y are centred by their
member means, then

    primal (n <= M):  w = (Xc^T Xc + l2 I_n)^-1 Xc^T yc          an n x n system
    dual   (M <  n):  w = Xc^T (Xc Xc^T + l2 I_M)^-1 yc          an M x M system
    bias = mean(y) - mean(X) @ w

whichever system is smaller (both give the same w). Solved by Cholesky, matmuls at
`Precision.HIGHEST`, in the values' dtype (float32 by default: fine for l2 well above
eps * M * n; enable x64 for nearly unregularised fits).

NaN values: each NaN in values[:, t] is replaced by that column's mean over its non-NaN
members before fitting (mean imputation). An imputed member contributes no signal, which
shrinks that test's weights towards 0 in proportion to the fraction missing. A column with
no value at all gets weights 0 and bias NaN.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_factor, cho_solve


@jax.jit
def _ridge(masks, values, l2):
    dtype = values.dtype
    inside = masks if masks.dtype == jnp.bool_ else masks > 0
    X = inside.astype(dtype)                                      # [M, n]
    M, n = X.shape
    x_mean = X.mean(0)
    Xc = X - x_mean
    valid = ~jnp.isnan(values)
    count = valid.sum(0)
    y_mean = jnp.where(count > 0,
                       jnp.where(valid, values, 0.0).sum(0) / jnp.maximum(count, 1), jnp.nan)
    yc = jnp.where(valid, values - y_mean, 0.0)                   # imputed entries -> 0
    dot = lambda a, b: jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    if M < n:
        K = dot(Xc, Xc.T) + l2 * jnp.eye(M, dtype=dtype)
        alpha = cho_solve(cho_factor(K, lower=True), yc)         # [M, T]
        weights = dot(Xc.T, alpha)
    else:
        G = dot(Xc.T, Xc) + l2 * jnp.eye(n, dtype=dtype)
        weights = cho_solve(cho_factor(G, lower=True), dot(Xc.T, yc))
    bias = y_mean - dot(x_mean, weights)
    return weights, bias


def ridge_datamodel(masks: jnp.ndarray, values: jnp.ndarray, *, l2: float = 1e-2
                    ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Ridge-regression datamodel for all test values at once (see module docstring).

    Args:
      masks: `[M, n]` bool or counts (> 0 = frame in the member's subset).
      values: float `[M, T]`; NaN entries are mean-imputed per column.
      l2: ridge penalty (> 0; may be traced).

    Returns:
      (weights `[n, T]`, bias `[T]`) in values' dtype.
    """
    chex.assert_rank([masks, values], 2)
    chex.assert_type(values, float)
    chex.assert_equal_shape_prefix([masks, values], 1)
    if isinstance(l2, (int, float)) and not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    return _ridge(masks, values, jnp.asarray(l2, values.dtype))
