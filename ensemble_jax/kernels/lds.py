"""Linear datamodeling score (LDS; Park et al. 2023, TRAK): does an attribution predict
what retraining on another subset does?

For held-out members j (trained on subsets no estimator saw) and a test value t:

    predicted[j, t] = sum_{i in S_j} effect[i, t]       (+ a baseline, constant within a
                                                          stratum, which ranks ignore)
    lds[t] = Spearman correlation over members j of predicted[j, t] and actual[j, t]

computed within each stratum (subset fraction) and averaged over strata weighted by their
members (strata with fewer than 3 valid members are skipped), so on nested plans the LDS
does not reward the subset-size effect every estimator gets for free. Ranks are average
ranks (ties share them); members whose actual value is NaN are left out for that t.

Shapes: predicted, actual `[V, T]`; strata int `[V]` in [0, S); effect `[n, T]`.
"""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp


@jax.jit
def predict_from_effects(masks: jnp.ndarray, effect: jnp.ndarray) -> jnp.ndarray:
    """`[V, n]` masks (> 0 = in) x `[n, T]` effects (NaN counted as 0) -> `[V, T]`."""
    X = (masks if masks.dtype == jnp.bool_ else masks > 0).astype(jnp.float32)
    e = jnp.where(jnp.isnan(effect), 0.0, effect).astype(jnp.float32)
    return jnp.matmul(X, e, precision=jax.lax.Precision.HIGHEST)


def _ranks(x, valid, same):
    """Average ranks of x [V] among valid members of the same stratum."""
    less = (x[None, :] < x[:, None]) & valid[None, :] & same            # [j, k]: x_k < x_j
    eq = (x[None, :] == x[:, None]) & valid[None, :] & same
    return 1.0 + less.sum(1) + 0.5 * (eq.sum(1) - 1.0)


def _lds_one(pred, act, strata, n_strata):
    """Spearman per test for one [V] column pair -> scalar (NaN if no stratum qualifies)."""
    valid = ~jnp.isnan(act) & ~jnp.isnan(pred)
    same = strata[:, None] == strata[None, :]
    rp = _ranks(jnp.where(valid, pred, 0.0), valid, same)
    ra = _ranks(jnp.where(valid, act, 0.0), valid, same)
    G = (strata[:, None] == jnp.arange(n_strata)[None, :]) & valid[:, None]   # [V, S]
    Gf = G.astype(jnp.float32)
    cnt = Gf.sum(0)
    mp = (Gf * rp[:, None]).sum(0) / jnp.maximum(cnt, 1)
    ma = (Gf * ra[:, None]).sum(0) / jnp.maximum(cnt, 1)
    dp = Gf * (rp[:, None] - mp)
    da = Gf * (ra[:, None] - ma)
    cov = (dp * da).sum(0)
    den = jnp.sqrt((dp * dp).sum(0) * (da * da).sum(0))
    ok = (cnt >= 3) & (den > 0)
    rho = jnp.where(ok, cov / jnp.where(den > 0, den, 1.0), 0.0)
    w = jnp.where(ok, cnt, 0.0)
    return jnp.where(w.sum() > 0, (w * rho).sum() / jnp.maximum(w.sum(), 1.0), jnp.nan)


@functools.partial(jax.jit, static_argnames=("n_strata",))
def _lds(pred, act, strata, *, n_strata):
    return jax.vmap(lambda p, a: _lds_one(p, a, strata, n_strata), in_axes=(1, 1))(pred, act)


def lds_per_test(predicted: jnp.ndarray, actual: jnp.ndarray,
                 strata: jnp.ndarray | None = None, *, n_strata: int = 1) -> jnp.ndarray:
    """Spearman correlation `[T]` across members between predicted and actual values of each
    test, within strata, averaged over strata by their valid members (module docstring).

    Args:
      predicted, actual: float `[V, T]`; NaN in actual = missing.
      strata: int `[V]` in [0, n_strata) (None: one stratum); n_strata static.
    Returns:
      float32 `[T]`, NaN where no stratum has 3 valid members with non-constant values.
    """
    chex.assert_rank([predicted, actual], 2)
    chex.assert_equal_shape([predicted, actual])
    if strata is None:
        strata = jnp.zeros(predicted.shape[0], jnp.int32)
    strata = jnp.asarray(strata, jnp.int32)
    chex.assert_shape(strata, (predicted.shape[0],))
    return _lds(jnp.asarray(predicted, jnp.float32), jnp.asarray(actual, jnp.float32),
                strata, n_strata=int(n_strata))


@functools.partial(jax.jit, static_argnames=("n_strata", "n_boot"))
def _lds_boot(pred, act, strata, key, *, n_strata, n_boot):
    V = pred.shape[0]

    def one(k):
        idx = jax.random.randint(k, (V,), 0, V)
        per = _lds(pred[idx], act[idx], strata[idx], n_strata=n_strata)
        return jnp.nanmean(per)

    return jax.lax.map(one, jax.random.split(key, n_boot))


def lds_bootstrap(predicted: jnp.ndarray, actual: jnp.ndarray, key: jax.Array,
                  strata: jnp.ndarray | None = None, *, n_strata: int = 1,
                  n_boot: int = 200) -> jnp.ndarray:
    """Mean LDS over tests for `n_boot` resamples of the members (with replacement):
    float32 `[n_boot]`, for a percentile interval. Same key, same resamples."""
    if strata is None:
        strata = jnp.zeros(predicted.shape[0], jnp.int32)
    chex.assert_equal_shape([predicted, actual])
    return _lds_boot(jnp.asarray(predicted, jnp.float32), jnp.asarray(actual, jnp.float32),
                     jnp.asarray(strata, jnp.int32), key, n_strata=int(n_strata),
                     n_boot=int(n_boot))
