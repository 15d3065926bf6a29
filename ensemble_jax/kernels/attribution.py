"""Attribution estimators that are valid for the plan that drew the subsets, with p-values.

Difference of means (Feldman & Zhang 2020) compares members whose subset holds training
frame i with members whose subset lacks it. It estimates frame i's effect only when holding
i is independent of everything else about a member: random fixed-fraction plans, the
`banzhaf` plan (each frame in with probability 1/2 independently: the difference of means is
then the Banzhaf value by maximum sample reuse, Wang & Jia 2023) and bootstrap plans. On
nested or mixed-fraction plans holding i goes with a larger subset, which lowers every
member's error whatever i is; there the comparison must be made within each subset
fraction (a *stratum*) and the strata combined:

    stratified_influence (one stratum = the plain difference of means)
      within stratum s, for frame i and test value t (centred values, NaN ignored):
        d_s   = mean_in - mean_out                      (c_in, c_out members, N = c_in + c_out)
        h_s   = c_in * c_out / N                        (so Var d_s = sigma_s^2 / h_s)
        v_s   = pooled within-group variance            (SS_in + SS_out) / (N - 2)
        w_s   = h_s / tau_s^2,  tau_s^2 = the stratum's total variance of t (ddof 1; it does
                not depend on i, so the weights are the same under any relabelling of
                members within the stratum, which keeps the permutation null exact)
      effect = sum_s w_s d_s / sum_s w_s                (strata with c_in, c_out >= 1)
      (a stratum of 2 members, one per side, uses tau_s^2 for v_s, with 1 degree of freedom)
      stderr^2 = sum_s lambda_s^2 v_s / h_s,  lambda_s = w_s / sum w
      df     = Welch-Satterthwaite: (sum_s u_s)^2 / sum_s (u_s^2 / df_s), u_s = lambda_s^2 v_s / h_s,
               df_s = N_s - 2
    With one stratum this is the two-sample t statistic (pooled variance, df = N - 2).

    p-values: two-sided t(df) where every group is large enough (`SMALL_GROUP` members on each
    side summed over strata), else a permutation null: values permuted over members within
    each stratum, statistic |effect|, p = (1 + #{|perm| >= |obs|}) / (1 + n_perm).

    bh_qvalues: Benjamini-Hochberg q-values over all finite p-values given.
    data_oob (Kwon & Zou 2023): bootstrap plans; frame i scored by the members that did not
      draw it, on its own labels (mean and standard error over those members).
    members_needed: members that resolve an effect delta at the measured member-to-member
      standard deviation (Feldman & Zhang's bound: Var of the estimate = sigma^2 / (M p (1-p))).

Shapes: masks `[M, n]` (members x training frames, bool or counts > 0 = in), values
`[M, T]` (one per member and test value), strata int `[M]` in [0, S).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

SMALL_GROUP = 5


class Stratified(NamedTuple):
    """effect, stderr, df: `[n, T]`; n_in, n_out: int32 `[n]` (members holding / lacking
    the frame over all strata, before NaN removal)."""
    effect: jnp.ndarray
    stderr: jnp.ndarray
    df: jnp.ndarray
    n_in: jnp.ndarray
    n_out: jnp.ndarray


def _inside(masks):
    return masks if masks.dtype == jnp.bool_ else masks > 0


def _stratum_onehot(strata, n_strata, dtype):
    return (strata[:, None] == jnp.arange(n_strata)[None, :]).astype(dtype)      # [M, S]


@functools.partial(jax.jit, static_argnames=("n_strata",))
def _stratified(masks, values, strata, *, n_strata):
    dtype = values.dtype
    inside = _inside(masks)
    M, n = masks.shape
    A = inside.astype(dtype)                                                   # [M, n]
    G = _stratum_onehot(strata, n_strata, dtype)                               # [M, S]
    valid = ~jnp.isnan(values)
    vf = valid.astype(dtype)
    dot = functools.partial(jnp.matmul, precision=lax.Precision.HIGHEST)
    # Centre each test value by its stratum mean (keeps sums of squares from cancelling).
    N = dot(G.T, vf)                                                           # [S, T]
    xs = jnp.where(valid, values, 0.0)
    mu = dot(G.T, xs) / jnp.maximum(N, 1.0)
    x = jnp.where(valid, values - dot(G, mu), 0.0)                             # [M, T]
    tot_q = dot(G.T, x * x)                                                    # [S, T]
    tau2 = tot_q / jnp.maximum(N - 1.0, 1.0)

    def one(s):                                    # stratum s -> per (i, t) pieces
        g = G[:, s][:, None]                                                   # [M, 1]
        Ag = A * g                                                             # [M, n]
        c_in = dot(Ag.T, vf)                                                   # [n, T]
        s_in = dot(Ag.T, x)
        q_in = dot(Ag.T, x * x)
        Ns = N[s][None, :]
        c_out = Ns - c_in
        s_out = -s_in                                  # stratum sum of centred x is 0
        q_out = tot_q[s][None, :] - q_in
        ok = (c_in > 0) & (c_out > 0) & (Ns >= 2) & (tau2[s][None, :] > 0)
        cin, cout = jnp.maximum(c_in, 1.0), jnp.maximum(c_out, 1.0)
        d = s_in / cin - s_out / cout
        ss = (q_in - s_in * s_in / cin) + (q_out - s_out * s_out / cout)
        # Two members (one per side): no within-group variance; the stratum's total
        # variance (df 1) stands in for it.
        pooled = Ns >= 3
        v = jnp.where(pooled, jnp.maximum(ss, 0.0) / jnp.maximum(Ns - 2.0, 1.0),
                      tau2[s][None, :])
        h = cin * cout / jnp.maximum(Ns, 1.0)
        w = jnp.where(ok, h / jnp.where(tau2[s] > 0, tau2[s], 1.0)[None, :], 0.0)
        return (jnp.where(ok, d, 0.0), jnp.where(ok, v / h, 0.0), w,
                jnp.where(ok & pooled, Ns - 2.0, 1.0))

    d, var_d, w, dfs = lax.map(one, jnp.arange(n_strata))                     # [S, n, T]
    W = w.sum(0)
    lam = w / jnp.where(W > 0, W, 1.0)
    effect = jnp.where(W > 0, (lam * d).sum(0), jnp.nan)
    u = lam * lam * var_d
    var = u.sum(0)
    stderr = jnp.where(W > 0, jnp.sqrt(var), jnp.nan)
    df = jnp.where((W > 0) & (var > 0), var * var / jnp.maximum((u * u / dfs).sum(0), 1e-30),
                   jnp.nan)
    n_in = inside.sum(0, dtype=jnp.int32)
    return Stratified(effect, stderr, df, n_in, M - n_in)


def _check(masks, values, strata):
    chex.assert_rank([masks, values], 2)
    chex.assert_type(values, float)
    chex.assert_equal_shape_prefix([masks, values], 1)
    if strata is None:
        strata = jnp.zeros(masks.shape[0], jnp.int32)
    strata = jnp.asarray(strata, jnp.int32)
    chex.assert_shape(strata, (masks.shape[0],))
    return strata


def stratified_influence(masks: jnp.ndarray, values: jnp.ndarray,
                         strata: jnp.ndarray | None = None, *, n_strata: int = 1
                         ) -> Stratified:
    """Difference of means within strata, inverse-variance combined (module docstring).

    Valid when, within each stratum, holding frame i is independent of everything else
    about a member (random, banzhaf, bootstrap plans: one stratum; nested / mixed-fraction
    plans: one stratum per subset fraction).

    Args:
      masks: `[M, n]` bool or counts (> 0 = in the member's subset).
      values: float `[M, T]`; NaN = missing for that (member, test).
      strata: int `[M]` in [0, n_strata) (None: one stratum).
      n_strata: number of strata (static).

    Returns:
      `Stratified(effect [n, T], stderr [n, T], df [n, T], n_in [n], n_out [n])`; NaN where
      no stratum has both groups.
    """
    strata = _check(masks, values, strata)
    return _stratified(masks, values, strata, n_strata=int(n_strata))


@functools.partial(jax.jit, static_argnames=("n_strata", "n_perm"))
def _perm_pvalues(masks, values, strata, key, *, n_strata, n_perm):
    obs = jnp.abs(_stratified(masks, values, strata, n_strata=n_strata).effect)
    M = masks.shape[0]

    def body(carry, k):
        # A random permutation within each stratum: sort by (stratum, uniform).
        u = jax.random.uniform(k, (M,))
        order = jnp.lexsort((u, strata))                    # members grouped by stratum
        base = jnp.argsort(strata, stable=True)             # the same slots, original order
        perm = jnp.zeros(M, jnp.int32).at[base].set(order.astype(jnp.int32))
        e = _stratified(masks, values[perm], strata, n_strata=n_strata).effect
        return carry + (jnp.abs(e) >= obs * (1 - 1e-6)), None

    ge, _ = lax.scan(body, jnp.zeros(obs.shape, jnp.int32), jax.random.split(key, n_perm))
    return jnp.where(jnp.isnan(obs), jnp.nan, (1.0 + ge) / (1.0 + n_perm))


def permutation_pvalues(masks: jnp.ndarray, values: jnp.ndarray, key: jax.Array,
                        strata: jnp.ndarray | None = None, *, n_strata: int = 1,
                        n_perm: int = 999) -> jnp.ndarray:
    """Permutation p-values `[n, T]` of `stratified_influence`'s effects: the values are
    permuted over members within each stratum (exchangeable under "no frame effect"),
    statistic |effect|; p = (1 + #{|perm| >= |obs|}) / (1 + n_perm), never below
    1 / (1 + n_perm). Same key, same p-values."""
    strata = _check(masks, values, strata)
    return _perm_pvalues(masks, values, strata, key, n_strata=int(n_strata),
                         n_perm=int(n_perm))


@jax.jit
def t_pvalues(effect: jnp.ndarray, stderr: jnp.ndarray, df: jnp.ndarray) -> jnp.ndarray:
    """Two-sided p-values of effect / stderr under Student's t with df degrees of freedom
    (any shape; NaN where any input is NaN or stderr is 0 with effect 0)."""
    t = jnp.abs(effect) / stderr
    x = df / (df + t * t)
    p = jax.scipy.special.betainc(df / 2.0, 0.5, jnp.clip(x, 0.0, 1.0))
    p = jnp.where(jnp.isinf(t), 0.0, p)
    return jnp.where(jnp.isnan(effect) | jnp.isnan(stderr) | jnp.isnan(df) | jnp.isnan(t),
                     jnp.nan, p)


@jax.jit
def bh_qvalues(p: jnp.ndarray) -> jnp.ndarray:
    """Benjamini-Hochberg q-values (same shape as p): over the m finite p-values,
    q_(k) = min_{j >= k} p_(j) m / j, capped at 1; NaN stays NaN."""
    flat = p.ravel()
    ok = ~jnp.isnan(flat)
    m = ok.sum()
    key = jnp.where(ok, flat, jnp.inf)
    order = jnp.argsort(key)
    ps = key[order]
    rank = jnp.arange(1, flat.size + 1, dtype=p.dtype)
    q = jnp.minimum(ps * m / rank, 1.0)
    q = lax.cummin(q, reverse=True)
    out = jnp.zeros_like(flat).at[order].set(q)
    return jnp.where(ok, out, jnp.nan).reshape(p.shape)


class OOB(NamedTuple):
    """score, stderr: `[n]`; n_oob: int32 `[n]` (members that did not draw the frame)."""
    score: jnp.ndarray
    stderr: jnp.ndarray
    n_oob: jnp.ndarray


@jax.jit
def _data_oob(counts, values):
    out = ~_inside(counts) & ~jnp.isnan(values)
    c = out.sum(0)
    x = jnp.where(out, values, 0.0)
    mean = x.sum(0) / jnp.maximum(c, 1)
    var = jnp.where(out, (values - mean) ** 2, 0.0).sum(0) / jnp.maximum(c - 1, 1)
    return OOB(jnp.where(c > 0, mean, jnp.nan),
               jnp.where(c > 1, jnp.sqrt(var / jnp.maximum(c, 1)), jnp.nan),
               (~_inside(counts)).sum(0, dtype=jnp.int32))


def data_oob(counts: jnp.ndarray, values_per_frame: jnp.ndarray) -> OOB:
    """Data-OOB (Kwon & Zou 2023): each training frame's value on its own labels, over
    the members that did not draw it (out of bag).

    Valid on bootstrap plans (every member is out of bag for ~37% of the frames). With the
    pixel error as the value, high = the ensemble cannot predict the label from the other
    frames (hard or mislabeled); with the label's heatmap probability, low = the same.

    Args:
      counts: `[M, n]` bootstrap counts (or bool; > 0 = drawn).
      values_per_frame: float `[M, n]`, member m's value on training frame i; NaN = missing.

    Returns:
      `OOB(score [n], stderr [n], n_oob [n])`: mean and standard error over out-of-bag
      members (NaN where none / fewer than two).
    """
    chex.assert_rank([counts, values_per_frame], 2)
    chex.assert_type(values_per_frame, float)
    chex.assert_equal_shape([counts, values_per_frame])
    return _data_oob(counts, values_per_frame)


def members_needed(delta: float, sigma: float, n_tests: int, p_in: float = 0.5, *,
                   alpha: float = 0.05, power: float = 0.8) -> int:
    """Members M at which an effect `delta` is found with probability `power` at
    family-wise level `alpha` over `n_tests` effects (Bonferroni, the BH threshold when one
    effect is real), given member-to-member standard deviation `sigma` and a fraction
    `p_in` of members holding the frame: the difference of means has standard error
    sigma / sqrt(M p (1 - p)) (Feldman & Zhang 2020), so
    M = ((z_{1 - alpha / (2 n_tests)} + z_{power}) sigma / delta)^2 / (p (1 - p))."""
    from scipy.stats import norm
    if not (delta > 0 and sigma >= 0 and 0 < p_in < 1 and n_tests >= 1):
        raise ValueError(f"members_needed: need delta > 0, sigma >= 0, 0 < p_in < 1, "
                         f"n_tests >= 1; got {delta}, {sigma}, {p_in}, {n_tests}")
    z = norm.isf(alpha / (2 * n_tests)) + norm.ppf(power)
    return int(math.ceil((z * sigma / delta) ** 2 / (p_in * (1 - p_in))))
