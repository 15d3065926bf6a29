"""Attribution kernels against their NumPy twins, and the calibration the estimators must
have: uniform p-values and almost no findings under a null with no frame effect (random
plan, and nested plan with a subset-size effect only), planted effects found."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import ensemble_jax.kernels as K
from ensemble_jax import subsets

try:
    import numpy_twins as tw
except ImportError:  # tests/ became a package
    from tests import numpy_twins as tw

SETTINGS = settings(max_examples=10, deadline=None, database=None, derandomize=True)
close = lambda a, b, **kw: np.testing.assert_allclose(np.asarray(a, np.float64), b, **kw)
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


# ----------------------------------------------------------------------------- twins
@SETTINGS
@given(seed=st.integers(0, 2**31), M=st.sampled_from([3, 8, 40]), n=st.sampled_from([2, 11]),
       T=st.sampled_from([1, 5]), S=st.sampled_from([1, 3]), nan_frac=st.sampled_from([0, 0.2]),
       counts=st.booleans())
def test_stratified_influence_matches_twin(seed, M, n, T, S, nan_frac, counts):
    rng = np.random.default_rng(seed)
    masks = rng.random((M, n)) < 0.5
    masks[:, 0] = True                                           # in every member: NaN
    if counts:
        masks = (masks * rng.integers(1, 3, (M, n))).astype(np.int32)
    strata = rng.integers(0, S, M).astype(np.int32)
    values = (rng.standard_normal((M, T)) + 3 * strata[:, None]).astype(np.float32)
    values[rng.random((M, T)) < nan_frac] = np.nan
    got = K.stratified_influence(jnp.asarray(masks), jnp.asarray(values), jnp.asarray(strata),
                                 n_strata=S)
    e, s, d = tw.stratified_influence(masks, values, strata, S)
    assert got.effect.shape == (n, T) and np.isnan(np.asarray(got.effect)[0]).all()
    close(got.effect, e, rtol=1e-4, atol=1e-5)
    close(got.stderr, s, rtol=1e-4, atol=1e-5)
    close(got.df, d, rtol=1e-3, atol=1e-4)
    p = K.t_pvalues(got.effect, got.stderr, got.df)
    close(p, tw.t_pvalues(e, s, d), rtol=1e-3, atol=1e-5)


def test_one_stratum_is_the_difference_of_means():
    rng = np.random.default_rng(1)
    masks = rng.random((30, 7)) < 0.5
    values = rng.standard_normal((30, 4)).astype(np.float32)
    a = K.stratified_influence(jnp.asarray(masks), jnp.asarray(values))
    b = K.subset_influence(jnp.asarray(masks), jnp.asarray(values))
    close(a.effect, np.asarray(b.effect), rtol=1e-5, atol=1e-6)
    # pooled two-sample t: scipy's equal-variance t-test gives the same p-value
    for i in range(3):
        ref = stats.ttest_ind(values[masks[:, i], 0], values[~masks[:, i], 0]).pvalue
        p = K.t_pvalues(a.effect[i, 0], a.stderr[i, 0], a.df[i, 0])
        assert abs(float(p) - ref) < 1e-4


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from([(7,), (3, 5), (40, 9)]),
       nan_frac=st.sampled_from([0.0, 0.3]))
def test_bh_qvalues_matches_twin(seed, shape, nan_frac):
    rng = np.random.default_rng(seed)
    p = rng.random(shape) ** 3
    p[rng.random(shape) < nan_frac] = np.nan
    p.ravel()[0] = p.ravel()[-1]                                 # a tie
    close(K.bh_qvalues(jnp.asarray(p, jnp.float32)), tw.bh_qvalues(p), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(seed=st.integers(0, 2**31), M=st.sampled_from([2, 9, 50]), n=st.sampled_from([1, 6]),
       nan_frac=st.sampled_from([0.0, 0.3]))
def test_data_oob_matches_twin(seed, M, n, nan_frac):
    rng = np.random.default_rng(seed)
    counts = subsets.bootstrap_subsets(n, M, seed % 1000) if n > 1 else \
        rng.integers(0, 2, (M, n)).astype(np.int32)
    values = rng.standard_normal((M, n)).astype(np.float32)
    values[rng.random((M, n)) < nan_frac] = np.nan
    got = K.data_oob(jnp.asarray(counts), jnp.asarray(values))
    s, e, c = tw.data_oob(counts, values)
    close(got.score, s, rtol=1e-5, atol=1e-6)
    close(got.stderr, e, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got.n_oob, c)


@SETTINGS
@given(seed=st.integers(0, 2**31), V=st.sampled_from([3, 12, 64]), T=st.sampled_from([1, 6]),
       S=st.sampled_from([1, 2]), ties=st.booleans())
def test_lds_matches_twin(seed, V, T, S, ties):
    rng = np.random.default_rng(seed)
    pred = rng.standard_normal((V, T))
    act = pred + rng.standard_normal((V, T))
    if ties:
        pred = np.round(pred)
    act[rng.random((V, T)) < 0.1] = np.nan
    strata = rng.integers(0, S, V)
    got = K.lds_per_test(jnp.asarray(pred), jnp.asarray(act), jnp.asarray(strata), n_strata=S)
    close(got, tw.lds_per_test(pred, act, strata, S), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("M,n,S", [(40, 12, 1), (15, 30, 3), (24, 24, 2)])
def test_ridge_with_strata_matches_twin(M, n, S):
    rng = np.random.default_rng(M * n)
    masks = rng.random((M, n)) < 0.5
    strata = np.arange(M) % S
    values = (masks @ rng.standard_normal((n, 3)) + 5 * strata[:, None]
              + 0.1 * rng.standard_normal((M, 3))).astype(np.float32)
    values[0, 0] = np.nan
    w, b = K.fit_datamodel(jnp.asarray(masks), jnp.asarray(values), 0.7, kind="ridge",
                           strata=jnp.asarray(strata), n_strata=S)
    w_ref, b_ref = tw.fit_datamodel(masks, values, 0.7, "ridge", strata, S)
    close(w, w_ref, rtol=2e-3, atol=2e-3)
    close(b, b_ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("M,n,S,lam", [(60, 10, 1, 2.0), (20, 30, 2, 0.5)])
def test_lasso_matches_twin(M, n, S, lam):
    rng = np.random.default_rng(M + n)
    masks = rng.random((M, n)) < 0.5
    strata = np.arange(M) % S
    w_true = np.where(rng.random((n, 2)) < 0.3, rng.standard_normal((n, 2)) * 2, 0.0)
    values = (masks @ w_true + 0.2 * rng.standard_normal((M, 2))).astype(np.float32)
    w, b = K.fit_datamodel(jnp.asarray(masks), jnp.asarray(values), lam, kind="lasso",
                           strata=jnp.asarray(strata), n_strata=S, iters=3000)
    w_ref, b_ref = tw.fit_datamodel(masks, values, lam, "lasso", strata, S)
    close(w, w_ref, atol=5e-3)
    close(b, b_ref, atol=5e-3)
    assert (np.asarray(w) == 0).mean() > 0.2                     # L1: exact zeros


def test_datamodel_cv_picks_a_penalty_that_predicts():
    rng = np.random.default_rng(3)
    masks = rng.random((80, 20)) < 0.5
    w_true = np.zeros((20, 2))
    w_true[:3] = [[1.0, -1.0], [0.5, 0.5], [-2.0, 0.0]]
    values = (masks @ w_true + 0.3 * rng.standard_normal((80, 2))).astype(np.float32)
    for kind in ("ridge", "lasso"):
        lam, grid, mse = K.datamodel_cv(masks, values, kind=kind, seed=0)
        assert lam in grid and np.isfinite(mse).all()
        assert mse.min() < 0.5 * mse.max()                       # the grid spans good and bad
        w, _ = K.fit_datamodel(jnp.asarray(masks), jnp.asarray(values), lam, kind=kind)
        assert np.corrcoef(np.asarray(w).ravel(), w_true.ravel())[0, 1] > 0.9


# ----------------------------------------------------------------------------- calibration
def _nested_null(rng, n, seeds, T, seed):
    masks = subsets.nested_subsets(n, FRACTIONS, seeds, seed)
    strata = np.tile(np.arange(len(FRACTIONS)), seeds)
    size_effect = 2.0 - 1.0 * np.asarray(FRACTIONS)[strata]      # bigger subset, lower error
    values = size_effect[:, None] + 0.2 * rng.standard_normal((masks.shape[0], T))
    return masks, values.astype(np.float32), strata


def _random_null(rng, n, M, T, seed):
    masks = subsets.random_subsets(n, M, 0.5, seed)
    return masks, (1.0 + 0.2 * rng.standard_normal((M, T))).astype(np.float32), \
        np.zeros(M, np.int32)


def _pvalues(masks, values, strata, S):
    r = K.stratified_influence(jnp.asarray(masks), jnp.asarray(values), jnp.asarray(strata),
                               n_strata=S)
    return r, np.asarray(K.t_pvalues(r.effect, r.stderr, r.df))


def _null_draw(rng, plan, d, n=60, T=30):
    """One null draw -> (pair p [n, T], pair q, frame q [n, 1], frame effects, masks)."""
    S = len(FRACTIONS) if plan == "nested" else 1
    if plan == "nested":
        masks, values, strata = _nested_null(rng, n, 8, T, d)
    else:
        masks, values, strata = _random_null(rng, n, 40, T, d)
    r, p = _pvalues(masks, values, strata, S)
    rf, pf = _pvalues(masks, values.mean(1, keepdims=True), strata, S)
    return (p, np.asarray(K.bh_qvalues(jnp.asarray(p))),
            np.asarray(K.bh_qvalues(jnp.asarray(pf))), np.asarray(rf.effect))


@pytest.mark.parametrize("plan", ["random", "nested"])
def test_null_pvalues_uniform_and_few_findings(plan):
    """20 null draws: one p-value per (draw, test column) at a random frame (columns are
    independent given the plan), KS against uniform at 1%; `analyze`'s finding rule (BH
    within pairs and within frames, each at 0.025: one family-wise rule) finds anything in
    at most 2 draws. Measured with `null_finding_rate` over 1,000 other draws of each null
    (seeds 1000-1199 and 5000-5799): any finding in 4.2% (random) and 3.1% (nested) of
    draws, against 8.8% and 6.8% for two separate BH lists at 0.05. At 4.2% per draw, 3 or
    more of 20 happens with probability 5%: the bound this acceptance allows."""
    from ensemble_jax.analysis.attribution import findings
    rng = np.random.default_rng(11)
    n, T = 60, 30
    picked, with_any, mean_effects = [], 0, []
    for d in range(20):
        p, q, qf, fe = _null_draw(rng, plan, d, n, T)
        i = rng.integers(0, n, T)
        col = p[i, np.arange(T)]
        picked.extend(col[np.isfinite(col)].tolist())
        hit_p, hit_f = findings(q, qf)
        with_any += bool(hit_p.size or hit_f.size)
        mean_effects.append(np.nanmean(fe))
    assert len(picked) > 500
    assert stats.kstest(picked, "uniform").pvalue > 0.01
    assert with_any <= 2
    if plan == "nested":
        # the size effect (1 px from 10% to 90%) is not mistaken for a frame effect
        me = np.asarray(mean_effects)
        assert abs(me.mean()) < 3 * me.std(ddof=1) / np.sqrt(me.size)


def null_finding_rate(plan, draws=200, seed=1000):
    """Fraction of null draws with any finding under analyze's rule, and the fractions with
    a pair finding / a frame finding at plain BH q < 0.05 (the old, two-list rule)."""
    from ensemble_jax.analysis.attribution import findings
    rng = np.random.default_rng(seed)
    rule = old_p = old_f = old_any = 0
    for d in range(draws):
        _, q, qf, _ = _null_draw(rng, plan, seed + d)
        hit_p, hit_f = findings(q, qf)
        rule += bool(hit_p.size or hit_f.size)
        a, b = bool((q < 0.05).any()), bool((qf < 0.05).any())
        old_p, old_f, old_any = old_p + a, old_f + b, old_any + (a or b)
    return {"rule": rule / draws, "old_pairs": old_p / draws, "old_frames": old_f / draws,
            "old_either": old_any / draws}


def test_nested_null_unstratified_is_biased_stratified_is_not():
    rng = np.random.default_rng(5)
    masks, values, strata = _nested_null(rng, 80, 3, 40, 0)       # the default nested plan
    plain = np.nanmean(np.asarray(K.subset_influence(jnp.asarray(masks),
                                                     jnp.asarray(values)).effect))
    strat = np.nanmean(np.asarray(K.stratified_influence(
        jnp.asarray(masks), jnp.asarray(values), jnp.asarray(strata), n_strata=5).effect))
    assert plain < -0.2                                          # the size effect leaks in
    assert abs(strat) < 0.03


def test_permutation_null_small_groups_is_valid_and_resolves_nothing():
    """4 members (the real-data case): permutation p-values never fall below what 4
    members allow, and nothing passes BH."""
    rng = np.random.default_rng(2)
    masks = subsets.random_subsets(50, 4, 0.8, 0)
    values = rng.standard_normal((4, 20)).astype(np.float32)
    p = np.asarray(K.permutation_pvalues(jnp.asarray(masks), jnp.asarray(values),
                                         jax.random.key(0), n_perm=199))
    ok = np.isfinite(p)
    assert ok.any() and (p[ok] >= 0.2).all()    # 4 members, 1 out: |effect| ties in 1 of 4
    assert not (np.asarray(K.bh_qvalues(jnp.asarray(p))) < 0.05).any()
    p2 = K.permutation_pvalues(jnp.asarray(masks), jnp.asarray(values), jax.random.key(0),
                               n_perm=199)
    np.testing.assert_array_equal(p, np.asarray(p2))             # same key, same p-values


def test_permutation_null_is_superuniform_on_nested_small_strata():
    rng = np.random.default_rng(4)
    ps = []
    for d in range(6):
        masks, values, strata = _nested_null(rng, 30, 3, 10, d)
        p = np.asarray(K.permutation_pvalues(jnp.asarray(masks), jnp.asarray(values),
                                             jax.random.key(d), jnp.asarray(strata),
                                             n_strata=5, n_perm=199))
        ps.extend(p[np.isfinite(p)].tolist())
    ps = np.asarray(ps)
    for a in (0.05, 0.2, 0.5):
        assert (ps <= a).mean() <= a + 0.03


def test_planted_effects_are_found():
    """Frames 0-2 raise test column 0's error by 0.3 (4 SD of the member noise is 0.2 ...):
    on 200 members of a random plan, BH over pairs finds exactly those (i, 0) pairs."""
    rng = np.random.default_rng(9)
    n, M, T = 40, 200, 8
    masks = subsets.random_subsets(n, M, 0.5, 1)
    values = 1.0 + 0.2 * rng.standard_normal((M, T))
    values[:, 0] += 0.3 * masks[:, :3].sum(1)
    r, p = _pvalues(masks, values.astype(np.float32), np.zeros(M, np.int32), 1)
    q = np.asarray(K.bh_qvalues(jnp.asarray(p)))
    found = set(map(tuple, np.argwhere(q < 0.05)))
    assert {(0, 0), (1, 0), (2, 0)} <= found
    assert len(found - {(0, 0), (1, 0), (2, 0)}) <= 1
    close(np.asarray(r.effect)[:3, 0], [0.3, 0.3, 0.3], atol=0.12)


def test_banzhaf_plan_and_members_needed():
    m = subsets.banzhaf_subsets(100, 400, seed=0)
    assert m.shape == (400, 100) and m.dtype == bool and m.sum(1).min() > 0
    assert abs(m.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(m, subsets.banzhaf_subsets(100, 400, seed=0))
    # at the computed M, a planted effect of delta is found in most simulated draws
    delta, sigma, n = 0.1, 0.2, 20
    M = K.members_needed(delta, sigma, n)
    rng = np.random.default_rng(0)
    hits = 0
    for d in range(20):
        masks = subsets.banzhaf_subsets(n, M, seed=d)
        v = (sigma * rng.standard_normal((M, 1)) + delta * masks[:, :1]).astype(np.float32)
        r, p = _pvalues(masks, v, np.zeros(M, np.int32), 1)
        hits += bool(np.asarray(K.bh_qvalues(jnp.asarray(p)))[0, 0] < 0.05)
    assert hits >= 10            # designed for power 0.8 (measured 0.73 over 100 draws)
    assert K.members_needed(delta / 2, sigma, n) > 3.5 * M       # 1 / delta^2


def test_permutation_pvalues_match_exact_enumeration():
    """Twin: all 720 relabellings of 6 members (NumPy loops) give the exact permutation
    p-value; 1999 random permutations land within Monte Carlo error of it."""
    import itertools
    rng = np.random.default_rng(8)
    masks = rng.random((6, 5)) < 0.5
    masks[0, :], masks[1, :] = True, False
    values = rng.standard_normal((6, 2)).astype(np.float32)
    got = np.asarray(K.permutation_pvalues(jnp.asarray(masks), jnp.asarray(values),
                                           jax.random.key(3), n_perm=1999))
    obs, _, _ = tw.stratified_influence(masks, values)
    perms = list(itertools.permutations(range(6)))
    for i in range(5):
        for t in range(2):
            if not np.isfinite(obs[i, t]):
                assert np.isnan(got[i, t])
                continue
            ge = 0
            for p in perms:
                v = values[list(p), t]
                d = v[masks[:, i]].mean() - v[~masks[:, i]].mean()
                ge += abs(d) >= abs(obs[i, t]) * (1 - 1e-6)
            exact = ge / len(perms)
            assert abs(got[i, t] - exact) < 0.035, (i, t, got[i, t], exact)


def test_predict_from_effects_and_lds_bootstrap():
    rng = np.random.default_rng(6)
    masks = rng.random((30, 9)) < 0.5
    eff = rng.standard_normal((9, 4))
    eff[0, 0] = np.nan                                           # undefined effect counts 0
    pred = np.asarray(K.predict_from_effects(jnp.asarray(masks), jnp.asarray(eff)))
    close(pred, masks.astype(float) @ np.nan_to_num(eff), rtol=1e-5, atol=1e-5)
    actual = pred + 0.5 * rng.standard_normal(pred.shape)
    per = np.asarray(K.lds_per_test(jnp.asarray(pred), jnp.asarray(actual)))
    boot = np.asarray(K.lds_bootstrap(jnp.asarray(pred), jnp.asarray(actual),
                                      jax.random.key(0), n_boot=100))
    assert boot.shape == (100,) and np.isfinite(boot).all()
    assert np.percentile(boot, 2.5) < per.mean() < np.percentile(boot, 97.5)
    np.testing.assert_array_equal(boot, np.asarray(K.lds_bootstrap(
        jnp.asarray(pred), jnp.asarray(actual), jax.random.key(0), n_boot=100)))
