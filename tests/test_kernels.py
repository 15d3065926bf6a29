"""Every kernel in ensemble_jax.kernels against its loop twin in tests/numpy_twins.py."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ensemble_jax.kernels as K

try:
    import numpy_twins as tw
except ImportError:  # tests/ became a package
    from tests import numpy_twins as tw

SETTINGS = settings(max_examples=8, deadline=None, database=None, derandomize=True)
close = lambda a, b, **kw: np.testing.assert_allclose(np.asarray(a, np.float64), b, **kw)


def _rng(seed):
    return np.random.default_rng(seed)


def _heatmaps(rng, shape, kind, nan_maps=False):
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "ties":                      # plateaus and equal peaks
        x = rng.integers(0, 3, shape).astype(float) * 0.5
    else:                                     # positive, for normalize="sum"
        x = rng.uniform(0.0, 2.0, shape)
    x = x.astype(np.float32)
    if nan_maps and x.ndim > 2:
        flat = x.reshape(-1, *shape[-2:])
        flat[0, 0, 0] = np.nan                # one NaN pixel in the first map
        if flat.shape[0] > 2:
            flat[2] = np.nan                  # an all-NaN map
    return x


# ----------------------------------------------------------------------------- peaks
MAP_SHAPES = [(5, 5), (2, 7, 6), (3, 2, 4, 9), (1, 1, 1, 6, 1)]


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(MAP_SHAPES),
       window=st.sampled_from([1, 3, 5]), threshold=st.sampled_from([0.0, 0.4, -10.0]),
       kind=st.sampled_from(["normal", "ties"]), nans=st.booleans())
def test_find_peaks_matches_twin(seed, shape, window, threshold, kind, nans):
    x = _heatmaps(_rng(seed), shape, kind, nans)
    got = np.asarray(K.find_peaks(jnp.asarray(x), window=window, threshold=threshold))
    assert got.dtype == bool and got.shape == shape
    np.testing.assert_array_equal(got, tw.find_peaks(x, window, threshold))


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(MAP_SHAPES),
       window=st.sampled_from([1, 3, 5]), normalize=st.sampled_from(["softmax", "sum"]),
       threshold=st.sampled_from([0.0, 0.8]), kind=st.sampled_from(["normal", "ties", "pos"]),
       nans=st.booleans())
def test_multi_peak_entropy_matches_twin(seed, shape, window, normalize, threshold, kind,
                                         nans):
    x = _heatmaps(_rng(seed), shape, kind, nans)
    got = K.multi_peak_entropy(jnp.asarray(x), window=window, threshold=threshold,
                               normalize=normalize)
    assert got.shape == shape[:-2] and got.dtype == jnp.float32
    close(got, tw.multi_peak_entropy(x, window, threshold, normalize), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(seed=st.integers(0, 2**31), shape=st.sampled_from(MAP_SHAPES),
       temperature=st.sampled_from([0.25, 1.0, 3.0]),
       threshold=st.sampled_from([-np.inf, 0.0]), nans=st.booleans())
def test_mpe_temperature_matches_twin(seed, shape, temperature, threshold, nans):
    x = _heatmaps(_rng(seed), shape, "normal", nans)
    got = K.multi_peak_entropy(jnp.asarray(x), threshold=threshold, temperature=temperature)
    close(got, tw.multi_peak_entropy(x, 3, threshold, "softmax", temperature),
          rtol=1e-5, atol=1e-5)


def test_mpe_temperature_known_values():
    two = np.full((1, 9, 9), -10.0, np.float32)
    two[0, 2, 2], two[0, 6, 6] = 3.0, 1.0      # two peaks above the threshold, 3 and 1
    for t in (0.5, 1.0, 2.0):
        got = np.asarray(K.multi_peak_entropy(jnp.asarray(two), threshold=-5.0, temperature=t))
        p = np.exp(np.array([3.0, 1.0]) / t)
        p /= p.sum()
        close(got, [-(p * np.log(p)).sum()], rtol=1e-4)
    # Higher temperature -> closer to uniform over the two peaks -> larger entropy.
    h = [float(K.multi_peak_entropy(jnp.asarray(two), threshold=-5.0, temperature=t)[0])
         for t in (0.5, 1.0, 2.0, 100.0)]
    assert h == sorted(h) and abs(h[-1] - np.log(2)) < 1e-3
    with pytest.raises(ValueError):
        K.multi_peak_entropy(jnp.asarray(two), temperature=0.0)


def test_mpe_fewer_than_two_peaks_and_known_values():
    one = np.zeros((7, 7), np.float32)
    one[3, 3] = 2.0                                             # exactly one peak
    none = np.full((7, 7), -1.0, np.float32)                    # nothing above threshold
    two = np.zeros((7, 7), np.float32)
    two[1, 1] = two[5, 5] = 3.0                                 # two equal peaks
    three = np.zeros((7, 7), np.float32)
    three[0, 0], three[3, 3], three[6, 6] = 1.0, 2.0, 3.0
    x = jnp.asarray(np.stack([one, none, two, three]))
    sm = np.asarray(K.multi_peak_entropy(x, threshold=0.5))
    sm_ref = -sum(p * math.log(p) for p in np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum())
    close(sm, [0.0, 0.0, math.log(2), sm_ref], rtol=1e-6, atol=1e-7)
    sm_sum = np.asarray(K.multi_peak_entropy(x, threshold=0.5, normalize="sum"))
    p = np.array([1.0, 2.0, 3.0]) / 6
    close(sm_sum, [0.0, 0.0, math.log(2), -(p * np.log(p)).sum()], rtol=1e-6, atol=1e-7)
    # A flat map is one plateau: every pixel is a peak, MPE = log(#pixels) under softmax.
    flat = jnp.ones((1, 4, 4), jnp.float32)
    close(K.multi_peak_entropy(flat), [math.log(16)], rtol=1e-6)


def test_mpe_softmax_is_stable_for_large_logits():
    x = np.zeros((2, 8, 8), np.float32)
    x[:, 1, 1], x[:, 6, 6] = 1000.0, 999.0
    x[1] -= 2000.0                                               # very negative, threshold off
    got = np.asarray(K.multi_peak_entropy(jnp.asarray(x), threshold=-1e9))
    assert np.isfinite(got).all()
    p = 1 / (1 + np.exp(-1.0))
    # Map 0: peaks 1000, 999, and the 0-plateau far from them counts too.
    close(got[1], tw.multi_peak_entropy(x[1:], 3, -1e9)[0], rtol=1e-5)
    close(got[0], tw.multi_peak_entropy(x[:1], 3, -1e9)[0], rtol=1e-5)
    assert got[0] > 0 and abs(got[0] + p * math.log(p) + (1 - p) * math.log(1 - p)) < 1e-3


def test_mpe_blocked_equals_unblocked_and_slices():
    x = jnp.asarray(_heatmaps(_rng(0), (3, 5, 4, 8, 8), "normal", nan_maps=True))
    full = K.multi_peak_entropy(x, block_maps=None)
    for bm in (7, 1000):                                         # 7: the last block overlaps
        np.testing.assert_array_equal(K.multi_peak_entropy(x, block_maps=bm), full)
    # Chunk-friendly: slicing any leading axis gives the same numbers.
    np.testing.assert_array_equal(
        jnp.concatenate([K.multi_peak_entropy(x[:, :2]), K.multi_peak_entropy(x[:, 2:])], 1),
        full)


def test_mpe_nan_and_empty():
    x = np.zeros((2, 5, 5), np.float32)
    x[0, 2, 2] = np.nan
    got = np.asarray(K.multi_peak_entropy(jnp.asarray(x)))
    assert np.isnan(got[0]) and got[1] == 0.0
    assert K.multi_peak_entropy(jnp.zeros((0, 3, 5, 5))).shape == (0, 3)


def test_peaks_argument_checks():
    x = jnp.zeros((4, 4))
    with pytest.raises(ValueError):
        K.find_peaks(x, window=2)
    with pytest.raises(ValueError):
        K.multi_peak_entropy(x, normalize="l1")
    with pytest.raises(ValueError):
        K.multi_peak_entropy(x, normalize="sum", threshold=-1.0)
    with pytest.raises(AssertionError):
        K.multi_peak_entropy(jnp.zeros((4,)))
    with pytest.raises(AssertionError):
        K.multi_peak_entropy(jnp.zeros((4, 4), jnp.int32))


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_frame_mpe(reduce):
    x = _rng(1).uniform(0, 2, (4, 6, 5)).astype(np.float32)
    x[0, 0, 1] = np.nan
    x[1, 2, :] = np.nan                                          # every keypoint missing
    got = K.frame_mpe(jnp.asarray(x), reduce=reduce)
    assert got.shape == (4, 6)
    want = tw.frame_mpe(x, reduce)
    assert np.isnan(want[1, 2])
    close(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------- margins
def _labels(rng, lead, h, w, stride):
    xy = np.stack([rng.uniform(-stride, (w + 1) * stride, lead),
                   rng.uniform(-stride, (h + 1) * stride, lead)], -1).astype(np.float32)
    drop = rng.random(lead) < 0.2
    xy[drop, rng.integers(0, 2)] = np.nan                        # half- or fully-NaN labels
    return xy


@SETTINGS
@given(seed=st.integers(0, 2**31),
       shape=st.sampled_from([(3, 6, 7), (2, 4, 5, 5), (2, 2, 3, 9, 4)]),
       stride=st.sampled_from([1, 2, 4, 8]), radius=st.sampled_from([0.0, 1.0, 1.5, 2.0, 50.0]))
def test_margins_match_twin(seed, shape, stride, radius):
    rng = _rng(seed)
    *lead, h, w = shape
    hm = rng.standard_normal(shape).astype(np.float32) * 3
    kp = _labels(rng, tuple(lead), h, w, stride)
    got = K.heatmap_margin(jnp.asarray(hm), jnp.asarray(kp), stride=stride, radius=radius)
    assert got.shape == tuple(lead)
    want = tw.heatmap_margin(hm, kp, stride, radius)
    close(got, want, rtol=1e-6, atol=1e-6)
    if radius == 50.0:
        assert np.isnan(want).all()                              # no competitor anywhere
    close(K.gt_probability(jnp.asarray(hm), jnp.asarray(kp), stride=stride),
          tw.gt_probability(hm, kp, stride), rtol=1e-5, atol=1e-7)
    close(K.gt_confidence(jnp.asarray(hm), jnp.asarray(kp), stride=stride),
          tw.gt_confidence(hm, kp, stride), rtol=1e-6, atol=1e-7)


def test_margin_coordinate_convention():
    stride, h, w = 4, 6, 8
    hm = np.zeros((1, h, w), np.float32)
    hm[0, 2, 5] = 5.0                                            # label pixel (row 2, col 5)
    hm[0, 2, 7] = 1.0                                            # 2 px away
    hm[0, 5, 0] = 3.0                                            # far away
    # Pixel centre of output (col 5, row 2) is at input x = 5*4 + 1.5, y = 2*4 + 1.5.
    kp = np.array([[5 * 4 + 1.5 + 1.4, 2 * 4 + 1.5 - 1.9]], np.float32)
    m = K.heatmap_margin(jnp.asarray(hm), jnp.asarray(kp), stride=stride, radius=1.0)
    close(m, [5.0 - 3.0])                                        # max(1 at 2 px, 3 far away)
    m2 = K.heatmap_margin(jnp.asarray(hm), jnp.asarray(kp), stride=stride, radius=2.5)
    close(m2, [5.0 - 3.0])
    hm[0, 2, 7] = 4.0
    close(K.heatmap_margin(jnp.asarray(hm), jnp.asarray(kp), stride=stride, radius=1.0), [1.0])
    close(K.heatmap_margin(jnp.asarray(hm), jnp.asarray(kp), stride=stride, radius=2.0), [2.0])
    close(K.gt_confidence(jnp.asarray(hm), jnp.asarray(kp), stride=stride),
          [1 / (1 + math.exp(-5.0))], rtol=1e-6)


def test_margin_inside_jit_and_vmap():
    """As the training step calls it: jitted, vmapped over members, with NaN labels."""
    rng = _rng(3)
    hm = jnp.asarray(rng.standard_normal((3, 2, 4, 8, 8)).astype(np.float32))
    kp = _labels(rng, (3, 2, 4), 8, 8, 4)
    f = jax.jit(jax.vmap(lambda a, b: K.heatmap_margin(a, b, stride=4, radius=2.0)))
    close(f(hm, jnp.asarray(kp)), tw.heatmap_margin(np.asarray(hm), kp, 4, 2.0), rtol=1e-6,
          atol=1e-6)
    with pytest.raises(AssertionError):
        K.heatmap_margin(hm, jnp.asarray(kp[..., :1]), stride=4, radius=2.0)


# ----------------------------------------------------------------------------- influence
def _masks(rng, M, n, kind):
    m = rng.random((M, n)) < 0.5
    m[:, 0] = True                                               # frame 0 in every member
    if n > 1:
        m[:, 1] = False                                          # frame 1 in none
    if kind == "counts":                                         # bootstrap-style counts
        return (m * rng.integers(1, 3, (M, n))).astype(np.int32)
    return m


@SETTINGS
@given(seed=st.integers(0, 2**31), M=st.sampled_from([2, 12]), n=st.sampled_from([3, 13]),
       T=st.sampled_from([1, 4]), kind=st.sampled_from(["bool", "counts"]),
       nan_frac=st.sampled_from([0.0, 0.3]), block=st.sampled_from([None, 4]))
def test_subset_influence_matches_twin(seed, M, n, T, kind, nan_frac, block):
    rng = _rng(seed)
    masks = _masks(rng, M, n, kind)
    values = (rng.standard_normal((M, T)) + 5).astype(np.float32)
    values[rng.random((M, T)) < nan_frac] = np.nan
    if T > 1:
        values[:, -1] = np.nan                                   # a test with no values
    got = K.subset_influence(jnp.asarray(masks), jnp.asarray(values), block_size=block)
    assert got.effect.shape == got.stderr.shape == (n, T)
    e, s, n_in, n_out = tw.subset_influence(masks, values)
    assert np.isnan(e[0]).all() and np.isnan(e[1]).all()         # empty out / in group
    np.testing.assert_array_equal(got.n_in, n_in)
    np.testing.assert_array_equal(got.n_out, n_out)
    close(got.effect, e, rtol=1e-4, atol=1e-5)
    close(got.stderr, s, rtol=1e-4, atol=1e-5)


def test_subset_influence_cancellation():
    """Large offsets and a tiny out-group: centring keeps float32 close to float64."""
    rng = _rng(7)
    M, n, T = 400, 6, 3
    masks = rng.random((M, n)) < 0.5
    masks[:397, 5] = True                                        # out-group of 3 members
    masks[397:, 5] = False
    values = (1e4 + 1e-2 * rng.standard_normal((M, T))).astype(np.float32)
    got = K.subset_influence(jnp.asarray(masks), jnp.asarray(values))
    e, s, _, _ = tw.subset_influence(masks, values)
    close(got.effect, e, rtol=2e-3, atol=1e-6)
    close(got.stderr, s, rtol=2e-3)


def test_subset_influence_blocks_agree():
    rng = _rng(8)
    masks = rng.random((30, 101)) < 0.4
    values = rng.standard_normal((30, 9)).astype(np.float32)
    values[0, 0] = np.nan
    full = K.subset_influence(jnp.asarray(masks), jnp.asarray(values), block_size=None)
    for b in (7, 100):                                           # 7: overlapping last block
        part = K.subset_influence(jnp.asarray(masks), jnp.asarray(values), block_size=b)
        np.testing.assert_allclose(part.effect, full.effect, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(part.stderr, full.stderr, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(seed=st.integers(0, 2**31), M=st.sampled_from([1, 10]), n=st.sampled_from([2, 9]),
       kind=st.sampled_from(["bool", "counts"]), nan_frac=st.sampled_from([0.0, 0.4]))
def test_self_influence_matches_twin(seed, M, n, kind, nan_frac):
    rng = _rng(seed)
    masks = _masks(rng, M, n, kind)
    values = rng.standard_normal((M, n)).astype(np.float32)
    values[rng.random((M, n)) < nan_frac] = np.nan
    got = K.self_influence(jnp.asarray(masks), jnp.asarray(values))
    e, s, n_in, n_out = tw.self_influence(masks, values)
    np.testing.assert_array_equal(got.n_in, n_in)
    np.testing.assert_array_equal(got.n_out, n_out)
    close(got.effect, e, rtol=1e-5, atol=1e-6)
    close(got.stderr, s, rtol=1e-5, atol=1e-6)


def test_self_influence_is_the_diagonal():
    rng = _rng(5)
    masks = rng.random((10, 9)) < 0.5
    values = rng.standard_normal((10, 9)).astype(np.float32)
    values[0, 0] = np.nan
    got = K.self_influence(jnp.asarray(masks), jnp.asarray(values))
    full = K.subset_influence(jnp.asarray(masks), jnp.asarray(values))
    close(got.effect, np.diagonal(np.asarray(full.effect)), rtol=1e-5, atol=1e-6)
    close(got.stderr, np.diagonal(np.asarray(full.stderr)), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- datamodel
@pytest.mark.parametrize("M,n", [(40, 12), (9, 25), (16, 16)])   # primal, dual, square
@pytest.mark.parametrize("l2", [0.1, 1.0])
def test_ridge_datamodel_matches_twin(M, n, l2):
    rng = _rng(M * n)
    masks = rng.random((M, n)) < 0.5
    w_true = rng.standard_normal((n, 4))
    values = (masks @ w_true + 0.1 * rng.standard_normal((M, 4)) + 3).astype(np.float32)
    values[rng.random((M, 4)) < 0.1] = np.nan
    values[:, 3] = np.nan                                        # a test with no values
    w, b = K.ridge_datamodel(jnp.asarray(masks), jnp.asarray(values), l2=l2)
    assert w.shape == (n, 4) and b.shape == (4,)
    w_ref, b_ref = tw.ridge_datamodel(masks, values, l2)
    close(w, w_ref, rtol=1e-3, atol=1e-3)
    close(b[:3], b_ref[:3], rtol=1e-3, atol=1e-3)
    assert np.isnan(b[3]) and np.all(np.asarray(w[:, 3]) == 0)


def test_ridge_datamodel_counts_and_checks():
    rng = _rng(2)
    counts = rng.integers(0, 3, (20, 8)).astype(np.int32)
    values = rng.standard_normal((20, 2)).astype(np.float32)
    w, b = K.ridge_datamodel(jnp.asarray(counts), jnp.asarray(values), l2=0.5)
    w_ref, b_ref = tw.ridge_datamodel(counts, values, 0.5)
    close(w, w_ref, rtol=1e-3, atol=1e-4)
    close(b, b_ref, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError):
        K.ridge_datamodel(jnp.asarray(counts), jnp.asarray(values), l2=0.0)


# ----------------------------------------------------------------------------- representativeness
@SETTINGS
@given(seed=st.integers(0, 2**31), N=st.sampled_from([1, 2, 7, 20]), D=st.sampled_from([1, 5]),
       pool=st.sampled_from(["all", "some", "none"]), bad=st.booleans(),
       block=st.sampled_from([None, 3, 64]))
def test_representativeness_matches_twin(seed, N, D, pool, bad, block):
    rng = _rng(seed)
    f = rng.standard_normal((N, D)).astype(np.float32)
    if bad and N > 2:
        f[0] = np.nan                                            # non-finite row
        f[1] = 0.0                                               # zero row
    mask = {"all": np.ones(N, bool), "some": rng.random(N) < 0.5, "none": np.zeros(N, bool)}[pool]
    got = K.representativeness(jnp.asarray(f), None if pool == "all" else jnp.asarray(mask),
                               block_size=block)
    assert got.shape == (N,)
    close(got, tw.representativeness(f, mask), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- spread
@SETTINGS
@given(seed=st.integers(0, 2**31), M=st.sampled_from([1, 2, 5]), F=st.just(4),
       Kp=st.sampled_from([1, 3]), nan_frac=st.sampled_from([0.0, 0.3, 1.0]))
def test_spread_and_consensus_match_twin(seed, M, F, Kp, nan_frac):
    rng = _rng(seed)
    kp = (rng.standard_normal((M, F, Kp, 2)) * 5 + 100).astype(np.float32)
    kp[rng.random((M, F, Kp)) < nan_frac, rng.integers(0, 2)] = np.nan
    conf = rng.uniform(-0.2, 1.0, (M, F, Kp)).astype(np.float32)    # some negatives -> 0
    conf[rng.random((M, F, Kp)) < 0.1] = np.nan
    close(K.ensemble_spread(jnp.asarray(kp)), tw.ensemble_spread(kp), rtol=1e-4, atol=1e-4)
    close(K.consensus(jnp.asarray(kp), jnp.asarray(conf)),
          tw.consensus(kp, conf, "weighted_mean"), rtol=1e-5, atol=1e-4)
    close(K.consensus(jnp.asarray(kp), method="median"), tw.consensus(kp, None, "median"),
          rtol=1e-6, atol=1e-4)


def test_spread_checks():
    with pytest.raises(AssertionError):
        K.ensemble_spread(jnp.zeros((2, 3, 4, 3)))
    with pytest.raises(ValueError):
        K.consensus(jnp.zeros((2, 3, 4, 2)))                     # weighted_mean needs weights
    with pytest.raises(ValueError):
        K.consensus(jnp.zeros((2, 3, 4, 2)), method="mode")


# ----------------------------------------------------------------------------- benchmark
@pytest.mark.slow   # ~30-60 s on CI; the same equality/kernels are covered by faster tests
def test_benchmark_quick(run_benchmark):
    data = run_benchmark("kernels.py", "--quick", timeout=300)
    assert data["rows"], data
    for row in data["rows"]:
        for key in ("jax_s", "numpy_s", "speedup", "max_abs_diff"):
            assert math.isfinite(row[key]), (row["kernel"], key, row[key])
        assert row["max_abs_diff"] <= row["tolerance"], row
