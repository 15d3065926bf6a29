"""Label checking at the defaults: settings chosen from the data, realistic threshold
samples, the frame cut and suspected kinds (on constructed heatmaps), Spearman of
uncertainty against error, and the report of one run (sweep + analyze, tiny)."""
from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from ensemble_jax import cli
from ensemble_jax.analysis import suspects as sus
from ensemble_jax.analysis import uncertainty as unc
from ensemble_jax.analysis.threshold import (KIND_CODES, content_boxes,
                                             inject_realistic_threshold_samples,
                                             symmetric_pairs)
from ensemble_jax.data import auto_size
from ensemble_jax.kernels import heatmap_margin

from report_checks import assert_report_embeds_figures


# ------------------------------------------------------------ settings from the data
def test_image_size_from_frames():
    assert auto_size.choose_image_size([(396, 406)], 8) == 256          # capped, x8
    assert auto_size.choose_image_size([(50, 37), (61, 45)], 8) == 64   # longest 61 -> 64
    assert auto_size.choose_image_size([(101, 13)], 16) == 112
    assert auto_size.choose_image_size([(20, 10)], 8) == 32             # at least 32
    assert auto_size.AutoImageSize(8).choose([(640, 480)]) == (256, 256)


def test_stride_and_radius_rule_matches_the_measured_openfield_settings():
    # openfield at 128 px: closest labeled pair ~2.16 training px (measured from its labels)
    assert auto_size.choose_stride(2.16, 8) == 2           # d / 4 < 1, d / 2 >= 1
    assert auto_size.choose_radius(2.16, 2) == 1.0         # RESULTS.md's 0.954 setting
    assert auto_size.choose_stride(7.66, 8) == 4           # synthetic 64 px: the default
    assert auto_size.choose_stride(7.66, 2) == 2           # capped by the network
    assert auto_size.choose_stride(0.5, 8) == 1
    assert auto_size.choose_radius(20.0, 2) == 2.0
    kp = np.array([[[0, 0], [3, 4], [100, 100]],           # closest pair 5
                   [[0, 0], [0, 1], [np.nan, np.nan]],     # 1
                   [[0, 0], [np.nan, np.nan], [np.nan, np.nan]]], np.float32)  # no pair
    assert auto_size.closest_pair_distance(kp) == 3.0      # median of (5, 1)
    ch = auto_size.choose_heatmap_settings(kp, 3)
    assert ch["output_stride"] == 2 and ch["aum_radius"] == 1.0


def test_auto_size_on_odd_coco_frames_and_the_mirror_project(tmp_path, write_png):
    from ensemble_jax.data.load import load_dataset
    images = [{"id": i + 1, "file_name": f"f{i}.png", "width": w, "height": h}
              for i, (w, h) in enumerate([(61, 45), (37, 50), (55, 55)])]
    for im in images:
        write_png(tmp_path / "images" / im["file_name"],
                  np.full((im["height"], im["width"], 3), 90, np.uint8))
    anns = [{"id": 10 + i, "image_id": i + 1, "category_id": 1,
             "keypoints": [5, 6, 2, 20, 30, 2]} for i in range(3)]
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "m", "keypoints": ["a", "b"]}]}))
    d = load_dataset(tmp_path / "ann.json", image_size=auto_size.AutoImageSize(8))
    assert d.image_shape[:2] == (64, 64)                   # longest side 61 -> 64


def test_realistic_threshold_samples():
    rng = np.random.default_rng(0)
    n, k = 60, 4
    kp = rng.uniform(20, 40, (n, k, 2)).astype(np.float32)
    kp[5, 1:] = np.nan                                     # one labeled keypoint only
    kp[7] = np.nan                                         # unlabeled frame: never chosen
    boxes = np.tile([[10.0, 16.0, 53.0, 47.0]], (n, 1))    # content; padding outside
    bps = ["snout", "leftear", "rightear", "tailbase"]
    new, kind = inject_realistic_threshold_samples(kp, boxes, 0.5, 3, bodyparts=bps)
    again, kind2 = inject_realistic_threshold_samples(kp, boxes, 0.5, 3, bodyparts=bps)
    np.testing.assert_array_equal(new, again)
    np.testing.assert_array_equal(kind, kind2)
    frames = (kind > 0).any(1)
    assert frames.sum() == round(0.5 * 59) and not frames[7]
    per_frame = kind.max(1)
    counts = {c: int((per_frame == c).sum()) for c in (1, 2, 3)}
    assert min(counts.values()) >= 8                       # the kinds take turns
    for i in np.flatnonzero(per_frame == KIND_CODES["swap"]):
        (a, b) = np.flatnonzero(kind[i])
        assert (a, b) == (1, 2)                            # the left/right pair by name
        np.testing.assert_array_equal(new[i, [a, b]], kp[i, [b, a]])
    for i in np.flatnonzero(per_frame == KIND_CODES["onto_other"]):
        (a,) = np.flatnonzero(kind[i])
        d = np.hypot(*(kp[i] - kp[i, a]).T)
        d[a] = np.inf
        np.testing.assert_array_equal(new[i, a], kp[i, np.nanargmin(d)])  # nearest other
    for i in np.flatnonzero(per_frame == KIND_CODES["displaced"]):
        (a,) = np.flatnonzero(kind[i])
        x, y = new[i, a]
        assert 10 <= x <= 53 and 16 <= y <= 47              # inside the content
        assert np.hypot(*(new[i, a] - kp[i, a])) > 0.15 * 43
    assert per_frame[5] in (0, KIND_CODES["displaced"])
    untouched = kind == 0
    np.testing.assert_array_equal(new[untouched], kp[untouched])
    assert symmetric_pairs(["paw1LH_top", "paw4RH_top", "nose"]) == [(0, 1)]
    lb = np.array([[0.5, 10.25, 16.25]])                   # scale 0.5, padded
    np.testing.assert_allclose(content_boxes(lb, [[88, 64]]),
                               [[10.25, 16.25, 53.75, 47.75]])


# ------------------------------------------- the cut and the kinds on constructed maps
def _maps(centres, h=24, w=24, amp=6.0, rng=None, noise=0.3, width=1.0):
    """Logit maps [F, K, h, w]: a Gaussian peak (SD `width` px) of `amp` at each centre
    (heatmap px) over -4, plus pixel noise of SD `noise` when `rng` is given."""
    ys, xs = np.mgrid[:h, :w]
    c = np.asarray(centres, np.float64)
    d2 = (xs - c[..., 0, None, None]) ** 2 + (ys - c[..., 1, None, None]) ** 2
    m = -4.0 + (amp + 4.0) * np.exp(-d2 / (2.0 * width ** 2))
    if rng is not None:
        m = m + rng.normal(0, noise, m.shape)
    return m.astype(np.float32)


def _constructed_run(seed=0, n=200, hard_keypoint=False, noise=0.3, width=1.5,
                     memorize=0.0):
    """Heatmaps of a network that learned the true places (peaks a little off, of a
    height that varies from frame to frame, pixel noise `noise`) and, with `memorize` >
    0, also fit each frame's own label a little (a second peak of `memorize` x the height
    at the label, as members do that train on a wrong label); labels with planted ear
    swaps (frames 0-19) and one displaced label (20-39), realistic threshold samples;
    returns (aum from the margin kernel, labels, kinds, planted, truth, an out-of-subset
    prediction = truth + 0.5 px noise: members that did not train on the frame)."""
    rng = np.random.default_rng(seed)
    k = 4
    base = np.array([[12, 6], [9, 11], [15, 11], [12, 19]], np.float64)
    truth = base + rng.normal(0, 1.0, (n, k, 2))
    amp = rng.uniform(3, 7, (n, 1))
    # keypoint 3 optionally hard everywhere (a low peak: low AUM in every frame)
    amps = np.where(np.arange(k) == 3, amp * 0.35, amp) if hard_keypoint else \
        np.repeat(amp, k, 1)
    labels = truth.copy()
    planted = np.full(n, "", object)
    for i in range(0, 20):                                 # swaps of the ears
        labels[i, [1, 2]] = truth[i, [2, 1]]
        planted[i] = "swap"
    for i in range(20, 40):                                # one displaced label
        labels[i, 0] = truth[i, 0] + rng.choice([-1, 1], 2) * rng.uniform(4, 8, 2)
        planted[i] = "displace"
    boxes = np.tile([[0.0, 0.0, 23.0, 23.0]], (n, 1))
    labels_t, kind = inject_realistic_threshold_samples(
        labels, boxes, 0.15, 1, bodyparts=["snout", "leftear", "rightear", "tailbase"],
        min_distance=0.2)
    maps = np.stack([_maps(truth[i] + rng.normal(0, 0.4, (k, 2)), amp=amps[i][:, None, None],
                           rng=rng, noise=noise, width=width) for i in range(n)])
    if memorize > 0:
        maps = np.maximum(maps, np.stack([_maps(labels_t[i], amp=memorize * amps[i][:, None,
                                                                                     None],
                                                width=width) for i in range(n)]))
    aum = np.asarray(heatmap_margin(jnp.asarray(maps), jnp.asarray(labels_t, jnp.float32),
                                    stride=1, radius=1.0))
    pred = truth + rng.normal(0, 0.5, truth.shape)
    return aum, labels_t, kind, planted, truth, pred


def test_swap_aware_score_recalls_realistic_errors_on_constructed_heatmaps():
    """The documented frame score and cut (frame_report with the out-of-subset
    prediction): each planted kind recalled >= 0.7, precision >= 0.8, with one keypoint
    hard in every frame and members that partly fit the wrong labels they train on (so
    the AUM of a swapped pair is only a little low, as measured on openfield): the frame
    AUM alone misses the swaps there, the swap term finds them."""
    aum, labels, kind, planted, truth, pred = _constructed_run(hard_keypoint=True,
                                                               memorize=0.8)
    probe = (kind > 0).any(1)
    rep = sus.frame_report(aum, kind, labels=labels, prediction=pred)
    flagged = rep["flagged"]
    for what in ("swap", "displace"):
        sel = (planted == what) & ~probe
        assert sel.sum() >= 10
        assert flagged[sel].mean() >= 0.7, (what, flagged[sel].mean(), rep["cut"].rule)
    bad = (planted != "") & ~probe
    assert flagged.sum() > 0 and (flagged & bad).sum() / flagged.sum() >= 0.8
    assert rep["summary"]["threshold_frames"]["swap"]["n"] >= 5
    assert rep["summary"]["threshold_frames"]["swap"]["recall_at_cut"] >= 0.7
    # the suspected kinds and corrections
    kinds = sus.swap_aware_kind(labels, pred, rep["terms"])
    for i in np.flatnonzero((planted == "swap") & flagged):
        assert kinds[i]["kind"] == "swap" and {kinds[i]["a"], kinds[i]["b"]} == {1, 2}
        np.testing.assert_allclose(kinds[i]["correction"][[1, 2]], truth[i, [1, 2]])
    for i in np.flatnonzero((planted == "displace") & flagged):
        assert kinds[i]["kind"] == "displaced" and kinds[i]["a"] == 0
        np.testing.assert_allclose(kinds[i]["correction"][0], pred[i, 0])
    old = sus.frame_report(aum, kind)                      # the frame AUM and its cut
    assert old["flagged"][(planted == "swap") & ~probe].mean() < 0.5


def test_swap_gain_and_keypoint_scaling_match_a_loop():
    rng = np.random.default_rng(1)
    n, k = 5, 3
    lab = rng.uniform(0, 20, (n, k, 2))
    pred = lab + rng.normal(0, 1, (n, k, 2))
    lab[0, 2] = np.nan
    sigma = np.array([0.5, 1.0, 2.0])
    g = sus.swap_gain(lab, pred, sigma)
    for i in range(n):
        for a in range(k):
            for b in range(k):
                if a == b or not (np.isfinite(lab[i, a]).all() and np.isfinite(lab[i, b]).all()):
                    assert np.isnan(g[i, a, b])
                    continue
                keep = np.hypot(*(pred[i, a] - lab[i, a])) + np.hypot(*(pred[i, b] - lab[i, b]))
                swap = np.hypot(*(pred[i, a] - lab[i, b])) + np.hypot(*(pred[i, b] - lab[i, a]))
                sep = np.hypot(*(lab[i, a] - lab[i, b]))
                assert g[i, a, b] == pytest.approx((keep - swap) / (sep + sigma[a] + sigma[b]))
                assert abs(g[i, a, b]) < 2
    # an exact swap with a perfect prediction: gain 2 sep / (sep + sigmas)
    l1 = np.array([[[0.0, 0.0], [10.0, 0.0]]])
    g1 = sus.swap_gain(l1, l1[:, ::-1], np.zeros(2))
    assert g1[0, 0, 1] == pytest.approx(2.0) and g1[0, 1, 0] == pytest.approx(2.0)
    # per-keypoint scaling: (aum - median_k) / upper-half SD_k over the real frames
    aum = np.c_[np.linspace(0, 10, 40), np.linspace(-20, -10, 40)]
    real = np.ones(40, bool)
    real[-1] = False
    z = sus.keypoint_aum_z(aum, real)
    for j in range(2):
        col = aum[real, j]
        m = np.median(col)
        sd = (np.percentile(col, 75) - m) / 0.6745
        np.testing.assert_allclose(z[:, j], (aum[:, j] - m) / sd)


def test_score_cut_rule():
    score = np.r_[np.linspace(-1, 1, 50), [-8.0, -6.0, -1.0]]
    probe = np.r_[np.zeros(50, bool), True, True, True]
    fc = sus.score_cut(score, probe)
    assert fc.cut == pytest.approx(-3.0) and "bulk" in fc.rule   # probes' 90th pct -1.5
    fc2 = sus.score_cut(np.r_[score[:50], [-9.0, -8.0, -7.0]], probe)
    assert fc2.cut == pytest.approx(np.percentile([-9.0, -8.0, -7.0], 90))
    assert sus.score_cut(score, np.zeros(53, bool)).cut == -3.0


def test_frame_cut_rule():
    real = np.linspace(2.0, 4.0, 50)
    score = np.r_[real, [-3.0, -2.5, -1.0]]                           # 3 probes
    probe = np.r_[np.zeros(50, bool), [True, True, True]]
    fc = sus.frame_cut(score, probe)
    assert fc.cut == pytest.approx(np.percentile([-3.0, -2.5, -1.0], 90))
    assert fc.real_median == pytest.approx(3.0)
    sd = (np.percentile(real, 75) - 3.0) / 0.6745
    assert fc.real_sd_up == pytest.approx(sd)
    # probes that sit among the real frames: the bound below the bulk wins
    fc2 = sus.frame_cut(np.r_[real, [2.5, 3.5]], np.r_[np.zeros(50, bool), True, True])
    assert fc2.cut == pytest.approx(3.0 - 3 * sd) and "bulk" in fc2.rule
    # errors in the low tail do not move the bound (upper-half SD)
    fc3 = sus.frame_cut(np.r_[real, np.full(8, -20.0)], np.zeros(58, bool))
    assert "no threshold samples" in fc3.rule and fc3.cut > -20
    assert fc3.cut == pytest.approx(np.median(np.r_[real, np.full(8, -20.0)]) - 3 * (
        np.percentile(np.r_[real, np.full(8, -20.0)], 75)
        - np.median(np.r_[real, np.full(8, -20.0)])) / 0.6745)


def test_oob_prediction_uses_the_members_that_left_the_frame_out():
    kp = np.zeros((3, 2, 1, 2))
    kp[0] += 1.0
    kp[1] += 2.0
    kp[2] += 10.0
    masks = np.array([[1, 1], [0, 1], [0, 1]])             # frame 0: members 1, 2 left it out
    out = sus.oob_prediction(kp, masks)
    np.testing.assert_allclose(out[0, 0], [6.0, 6.0])      # median of 2 and 10
    np.testing.assert_allclose(out[1, 0], [2.0, 2.0])      # everyone trained on it: all


# ----------------------------------------------------------------- uncertainty vs error
def test_spearman():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)               # ties
    y = x + rng.normal(0, 2, 40)
    r = unc.spearman(x, y)
    assert r["rho"] == pytest.approx(spearmanr(x, y).statistic)
    assert r["ci95"][0] < r["rho"] < r["ci95"][1] and r["n"] == 40
    assert unc.spearman(np.arange(10.0), -np.arange(10.0))["rho"] == pytest.approx(-1)
    assert unc.spearman([1.0, 2, 3], [1.0, 2, 3])["rho"] is None           # too few
    assert unc.spearman(np.ones(9), np.arange(9.0))["rho"] is None          # constant
    info = unc.uncertainty_vs_error({"good": y, "bad": -y}, x)
    assert info["best"] == "good"
    order = unc.rank_by_mpe(np.array([0.5, 0.9, 0.5, np.nan]), np.array([0.8, 0.1, 0.2, 0.0]))
    assert list(order) == [1, 2, 0, 3]                     # tie 0.5: lower peak value first


# ----------------------------------------------------------------- a run end to end
# Marked slow: a sweep and an analyze through the command line (compiles dominate; ~7 min
# on the shared 2-core machine under load). The report's embedding is also checked in the
# default suite, on test_analyze.py's run (tests/test_analyze.py::test_report_of_a_run).
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("labelcheck") / "run"
    code = cli.main(["sweep", "--out", str(run), "--frames", "60", "--noise-rate", "0.3",
                     "--plan", "random", "--members", "3", "--fraction", "0.6",
                     "--steps", "30", "--batch-size", "8", "--widths", "8,16,32",
                     "--strategy", "sequential", "--quiet", "--cpu-devices", "1"])
    assert code == 0
    assert cli.main(["analyze", str(run), "--quiet"]) == 0
    return run


@pytest.mark.slow
def test_cli_defaults_recorded_and_suspects_written(run_dir, capsys):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["auto"]["output_stride"]["value"] == config["model"]["output_stride"] == 4
    assert config["auto"]["aum_radius"]["value"] == config["train"]["aum_radius"] == 1.0
    assert config["sweep"]["threshold_kinds"] == "realistic"
    aum = pd.read_csv(run_dir / "aum.csv")
    assert "threshold_kind" in aum.columns
    assert set(aum.threshold_kind.dropna()) <= {"swap", "onto_other", "displaced"}
    assert (aum.threshold_kind.notna() == (aum.threshold_sample == 1)).all()
    analysis = json.loads((run_dir / "analysis.json").read_text())
    cut = analysis["aum"]["cut"]                           # labels: the frame-AUM cut
    assert (aum.flagged == (aum.aum < cut)).all()
    s_cut = analysis["suspects"]["cut"]                    # frames: the swap-aware score
    assert s_cut <= -3.0 and "frame score" in analysis["suspects"]["rule"]
    s = pd.read_csv(run_dir / "suspects.csv")
    probe_frames = set(aum.frame[aum.threshold_sample == 1])
    assert not (set(s.frame) & probe_frames)               # probes are not suspects
    assert list(s["rank"]) == list(range(1, len(s) + 1))
    assert (np.diff(s.frame_score) >= 0).all()             # most suspect first
    assert set(s.suspected) <= {"swap", "displaced"}
    assert (s.flagged == (s.frame_score < s_cut)).all()
    assert (s.frame_score <= s.label_z + 1e-4).all() and \
        (s.frame_score <= s.swap_z.fillna(np.inf) + 1e-4).all()
    u = analysis["uncertainty_vs_error"]
    assert set(u["scores"]) == {"mpe_mean", "mpe_max", "spread_mean", "spread_max",
                                "unrepresentativeness"}
    assert 0 < u["n_frames"] <= 12          # test frames with a clean label
    assert analysis["mpe"]["settings"]["normalize"] == "softmax"
    mpe = pd.read_csv(run_dir / "mpe.csv")
    assert mpe.mpe_mean.nunique() > 0.9 * len(mpe)          # softmax MPE: not degenerate


@pytest.mark.slow
def test_report_of_a_run_embeds_every_figure(run_dir):
    assert cli.main(["report", str(run_dir)]) == 0
    assert_report_embeds_figures(run_dir / "report.html",
                                 ("Suspect frames", "AUM", "Uncertainty against error", "Learning"))


@pytest.mark.slow
def test_sweep_without_image_size_on_odd_coco_and_tfds_frames(tmp_path, write_png):
    """`sweep --data` with no --image-size trains on frames of odd sizes: a COCO project
    (61x45, 37x50, 55x55 ... -> 64 px) and a TFDS build stored at 45x61 (-> 64 px)."""
    from ensemble_jax.data.dataset import KeypointDataset
    from ensemble_jax.data.tfds_io import write_tfds
    rng = np.random.default_rng(0)
    sizes = [(61, 45), (37, 50), (55, 55), (43, 39)] * 4
    images, anns = [], []
    for i, (w, h) in enumerate(sizes):
        name = f"f{i}.png"
        write_png(tmp_path / "images" / name, rng.integers(0, 255, (h, w, 3), np.uint8))
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        pts = rng.uniform(3, min(w, h) - 3, (3, 2))
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": 1,
                     "keypoints": [float(v) for p in pts for v in (*p, 2)]})
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "m", "keypoints": ["a", "left_x", "right_x"]}]}))
    n = 16
    ds = KeypointDataset(
        images=rng.integers(0, 255, (n, 45, 61, 3), np.uint8),
        keypoints=rng.uniform(3, 40, (n, 3, 2)).astype(np.float32), bodyparts=["a", "b", "c"],
        frame_ids=[f"f{i}" for i in range(n)], letterbox=np.tile([1.0, 0, 0], (n, 1))
        .astype(np.float32), original_sizes=np.tile([61, 45], (n, 1)).astype(np.int32))
    tfds_dir = write_tfds(ds, tmp_path / "tfds", name="odd")
    for data in (tmp_path / "ann.json", tfds_dir):
        out = tmp_path / f"run_{Path(data).stem}"
        assert cli.main(["sweep", "--smoke", "--data", str(data), "--out", str(out),
                         "--quiet", "--cpu-devices", "1", "--strategy", "sequential",
                         "--test-fraction", "0.25"]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["auto"]["image_size"]["value"] == 64
        z = np.load(out / "data.npz")
        assert z["train_images"].shape[1:3] == (64, 64)
