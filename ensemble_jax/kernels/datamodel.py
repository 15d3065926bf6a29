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

import functools

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


# --------------------------------------------------------------- strata, LASSO and CV
# Linear datamodels on any plan: X and y are centred within each stratum (subset fraction),
# i.e. each stratum has its own intercept. On nested plans a subset-size effect is then an
# intercept per fraction, not a spurious equal weight on every frame.
#
#   ridge:  min ||yc - Xc w||^2 + lam ||w||^2            (as `ridge_datamodel`)
#   lasso:  min 0.5 ||yc - Xc w||^2 + lam ||w||_1        (FISTA, `LASSO_ITERS` steps from 0,
#           step 1 / L, L = largest eigenvalue of Xc^T Xc by power iteration)
# Returns weights [n, T] and a bias per stratum [S, T]: prediction for a member of stratum s
# with subset x [n] is bias[s] + x @ weights.
LASSO_ITERS = 1000


def _stratum_centre(X, y, valid, strata, n_strata):
    G = (strata[:, None] == jnp.arange(n_strata)[None, :]).astype(X.dtype)   # [M, S]
    dot = lambda a, b: jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    cnt = G.sum(0)
    x_mean = dot(G.T, X) / jnp.maximum(cnt, 1.0)[:, None]                        # [S, n]
    vf = valid.astype(X.dtype)
    yc_cnt = dot(G.T, vf)                                                        # [S, T]
    y_mean = dot(G.T, jnp.where(valid, y, 0.0)) / jnp.maximum(yc_cnt, 1.0)
    y_mean = jnp.where(yc_cnt > 0, y_mean, jnp.nan)
    Xc = X - dot(G, x_mean)
    yc = jnp.where(valid, y - dot(G, jnp.nan_to_num(y_mean)), 0.0)
    return Xc, yc, x_mean, y_mean


@functools.partial(jax.jit, static_argnames=("n_strata", "kind", "iters"))
def _fit(masks, values, strata, lam, *, n_strata, kind, iters):
    dtype = values.dtype
    inside = masks if masks.dtype == jnp.bool_ else masks > 0
    X = inside.astype(dtype)
    M, n = X.shape
    valid = ~jnp.isnan(values)
    Xc, yc, x_mean, y_mean = _stratum_centre(X, values, valid, strata, n_strata)
    dot = lambda a, b: jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    if kind == "ridge":
        if M < n:
            K = dot(Xc, Xc.T) + lam * jnp.eye(M, dtype=dtype)
            w = dot(Xc.T, cho_solve(cho_factor(K, lower=True), yc))
        else:
            Gm = dot(Xc.T, Xc) + lam * jnp.eye(n, dtype=dtype)
            w = cho_solve(cho_factor(Gm, lower=True), dot(Xc.T, yc))
    else:
        K = dot(Xc, Xc.T) if M < n else dot(Xc.T, Xc)

        def power(_, v):
            v = dot(K, v)
            return v / jnp.maximum(jnp.linalg.norm(v), 1e-30)
        v = lax.fori_loop(0, 100, power, jnp.ones(K.shape[0], dtype) / K.shape[0] ** 0.5)
        L = jnp.maximum(v @ dot(K, v), 1e-12) * 1.01
        Xty = dot(Xc.T, yc)

        def grad(w):
            return dot(Xc.T, dot(Xc, w)) - Xty

        def step(_, carry):
            w, z, tk = carry
            w_new = z - grad(z) / L
            w_new = jnp.sign(w_new) * jnp.maximum(jnp.abs(w_new) - lam / L, 0.0)
            t_new = (1.0 + jnp.sqrt(1.0 + 4.0 * tk * tk)) / 2.0
            z = w_new + ((tk - 1.0) / t_new) * (w_new - w)
            return w_new, z, t_new
        w0 = jnp.zeros((n, values.shape[1]), dtype)
        w, _, _ = lax.fori_loop(0, iters, step, (w0, w0, jnp.asarray(1.0, dtype)))
    bias = y_mean - dot(x_mean, w)                                               # [S, T]
    return w, bias


def fit_datamodel(masks: jnp.ndarray, values: jnp.ndarray, lam: float, *,
                  kind: str = "ridge", strata: jnp.ndarray | None = None,
                  n_strata: int = 1, iters: int = LASSO_ITERS
                  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Ridge or LASSO datamodel of every test value, with an intercept per stratum.

    Args:
      masks: `[M, n]` bool or counts (> 0 = in); values: float `[M, T]` (NaN entries are
        imputed by their stratum's mean, i.e. carry no signal).
      lam: penalty (> 0): ridge lam ||w||^2 on the sum of squares, LASSO lam ||w||_1 on
        half the sum of squares.
      kind: "ridge" or "lasso"; strata: int `[M]` in [0, n_strata) (None: one stratum).
      iters: FISTA steps (LASSO only; static).

    Returns:
      (weights `[n, T]`, bias `[n_strata, T]`; NaN bias where a stratum has no value).
    """
    chex.assert_rank([masks, values], 2)
    chex.assert_type(values, float)
    chex.assert_equal_shape_prefix([masks, values], 1)
    if kind not in ("ridge", "lasso"):
        raise ValueError(f"kind must be 'ridge' or 'lasso', got {kind!r}")
    if isinstance(lam, (int, float)) and not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    if strata is None:
        strata = jnp.zeros(masks.shape[0], jnp.int32)
    return _fit(masks, values, jnp.asarray(strata, jnp.int32), jnp.asarray(lam, values.dtype),
                n_strata=int(n_strata), kind=kind, iters=int(iters))


def predict_datamodel(masks: jnp.ndarray, weights: jnp.ndarray, bias: jnp.ndarray,
                      strata: jnp.ndarray | None = None) -> jnp.ndarray:
    """`[V, n]` masks -> `[V, T]` predictions bias[strata] + masks @ weights."""
    X = (masks if masks.dtype == jnp.bool_ else masks > 0).astype(weights.dtype)
    if strata is None:
        strata = jnp.zeros(X.shape[0], jnp.int32)
    return bias[jnp.asarray(strata)] + jnp.matmul(X, weights, precision=lax.Precision.HIGHEST)


def lambda_grid(masks, values, kind: str, n_grid: int = 8, strata=None, n_strata: int = 1):
    """Penalties to try: LASSO from lam_max = max |Xc^T yc| (all weights 0) down 1000x;
    ridge M p (1 - p) x 10^[-2 .. 2] (the scale of Xc^T Xc's diagonal). NumPy `[n_grid]`."""
    import numpy as np
    X = (np.asarray(masks) > 0).astype(np.float64)
    M = X.shape[0]
    if kind == "lasso":
        if strata is None:
            strata = np.zeros(M, int)
        y = np.asarray(values, np.float64)
        Xc, yc = X.copy(), np.nan_to_num(y.copy())
        for s in range(n_strata):
            g = np.asarray(strata) == s
            if g.any():
                Xc[g] -= X[g].mean(0)
                ys = y[g]
                mu = np.nanmean(np.where(np.isnan(ys), np.nan, ys), 0) if np.isfinite(ys).any() \
                    else np.zeros(y.shape[1])
                yc[g] = np.where(np.isnan(ys), 0.0, ys - np.nan_to_num(mu))
        lam_max = float(np.abs(Xc.T @ yc).max()) or 1.0
        return lam_max * np.logspace(0, -3, n_grid)
    p = X.mean()
    return max(M * p * (1 - p), 1e-3) * np.logspace(-2, 2, n_grid)


def datamodel_cv(masks, values, *, kind: str = "ridge", strata=None, n_strata: int = 1,
                 grid=None, n_folds: int = 5, seed: int = 0, iters: int = LASSO_ITERS):
    """K-fold cross-validation over members: for each penalty in `grid` (default
    `lambda_grid`), fit on K-1 folds, predict the held-out members, mean squared error over
    held-out (member, test) pairs. Returns (best penalty, grid [G], cv_mse [G]); folds are
    a seeded random split of the members (same seed, same answer)."""
    import numpy as np
    masks = np.asarray(masks)
    values = np.asarray(values, np.float32)
    M = masks.shape[0]
    if M < 2 * n_folds:
        n_folds = max(2, M // 2)
    if M < 4:
        raise ValueError(f"datamodel_cv: needs at least 4 members, got {M}")
    if strata is None:
        strata = np.zeros(M, np.int32)
    strata = np.asarray(strata, np.int32)
    if grid is None:
        grid = lambda_grid(masks, values, kind, strata=strata, n_strata=n_strata)
    grid = np.asarray(grid, np.float64)
    fold = np.random.default_rng(seed).permutation(M) % n_folds
    sse = np.zeros(grid.size)
    cnt = 0
    for k in range(n_folds):
        tr, te = fold != k, fold == k
        held = 0
        for g, lam in enumerate(grid):
            w, b = fit_datamodel(jnp.asarray(masks[tr]), jnp.asarray(values[tr]), float(lam),
                                 kind=kind, strata=jnp.asarray(strata[tr]),
                                 n_strata=n_strata, iters=iters)
            pred = np.asarray(predict_datamodel(jnp.asarray(masks[te]), w, b,
                                                jnp.asarray(strata[te])))
            err = (pred - values[te]) ** 2
            ok = np.isfinite(err)
            sse[g] += err[ok].sum()
            held = int(ok.sum())
        cnt += held
    mse = sse / max(cnt, 1)
    return float(grid[int(np.argmin(mse))]), grid, mse
