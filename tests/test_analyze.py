"""`analyze`: threshold samples, AUM bookkeeping, ROC-AUC, and a tiny run end to end."""
import itertools
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from ensemble_jax import cli, rundir
from ensemble_jax import io as eio
from ensemble_jax.analysis import aum as aum_lib
from ensemble_jax.analysis.analyze import METRICS, analyze
from ensemble_jax.analysis.threshold import inject_threshold_samples
from ensemble_jax.models.heatmap_net import ModelConfig
from ensemble_jax.sweep import SweepConfig, run_sweep
from ensemble_jax.training.config import ExecConfig, TrainConfig

from report_checks import assert_report_embeds_figures


# ------------------------------------------------------------------ pure pieces
def roc_auc_pairs(scores, positive):
    """Brute force: P(score_pos > score_neg) + P(tie) / 2 over every pair."""
    pos, neg = scores[positive], scores[~positive]
    wins = sum((p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 40).astype(float)          # many ties
    positive = rng.random(40) < 0.3
    positive[:2] = [True, False]
    assert aum_lib.roc_auc(scores, positive) == pytest.approx(roc_auc_pairs(scores, positive))
    assert np.isnan(aum_lib.roc_auc(scores, np.zeros(40, bool)))
    s = scores.copy()
    s[5] = np.nan                                           # non-finite scores are dropped
    keep = np.isfinite(s)
    assert aum_lib.roc_auc(s, positive) == pytest.approx(roc_auc_pairs(s[keep], positive[keep]))


def test_threshold_samples():
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 63, (200, 5, 2)).astype(np.float32)
    kp[rng.random((200, 5)) < 0.3] = np.nan
    kp[:7] = np.nan                                         # unlabeled frames never chosen
    new, mask = inject_threshold_samples(kp, 64, 0.1, seed=3)
    again, mask2 = inject_threshold_samples(kp, (64, 64), 0.1, seed=3)
    np.testing.assert_array_equal(new, again)               # pure function of its inputs
    np.testing.assert_array_equal(mask, mask2)
    labeled_frames = np.isfinite(kp).all(-1).any(1)
    assert mask.sum() == round(0.1 * labeled_frames.sum())
    assert mask.sum(1).max() == 1 and not mask[:7].any()
    assert np.isfinite(kp[mask]).all()                      # only labeled keypoints move
    moved = np.hypot(*(new[mask] - kp[mask]).T)
    assert (moved > 0.15 * 64).all()
    assert ((new[mask] >= 0) & (new[mask] <= 63)).all()
    np.testing.assert_array_equal(new[~mask], kp[~mask])
    other, _ = inject_threshold_samples(kp, 64, 0.1, seed=4)
    assert not np.array_equal(other, new)
    same, none = inject_threshold_samples(kp, 64, 0.0, seed=3)
    assert not none.any()
    np.testing.assert_array_equal(same, kp)
    with pytest.raises(ValueError):
        inject_threshold_samples(kp, 64, 1.0, seed=0)


def test_aum_report():
    m, n, k = 3, 6, 2
    rng = np.random.default_rng(1)
    count = rng.integers(0, 4, (m, n, k)).astype(np.int32)
    count[:, 0, 0] = 0                                      # never seen: NaN
    s = rng.normal(size=(m, n, k)).astype(np.float32) * np.maximum(count, 1)
    alive = np.array([True, True, False])
    s[2] = 1e6                                              # dead member: must not count
    thr = np.zeros((n, k), bool)
    thr[[1, 2, 3], [0, 1, 0]] = True
    rep = aum_lib.aum_report(s, count, alive, thr)
    per = np.where(count > 0, s / np.maximum(count, 1), np.nan)
    np.testing.assert_allclose(rep.member_aum, per, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # the all-NaN (0, 0) entry
        expected = np.nanmean(np.where(count[:2] > 0, per[:2], np.nan), axis=0)
    np.testing.assert_allclose(rep.aum, expected, rtol=1e-5)
    np.testing.assert_array_equal(rep.n_members, (count[:2] > 0).sum(0))
    assert np.isnan(rep.aum[0, 0])
    vals = rep.aum[thr][np.isfinite(rep.aum[thr])]
    assert rep.cut == pytest.approx(np.percentile(vals, 99))
    np.testing.assert_array_equal(rep.flagged, np.isfinite(rep.aum) & (rep.aum < rep.cut))
    assert np.isnan(rep.member_cut[2]) and not rep.member_flagged[2].any()
    fallback = aum_lib.aum_report(s, count, alive, None)
    assert fallback.cut == aum_lib.FALLBACK_CUT and "fallback" in fallback.rule


# ------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("analyze") / "run"
    run_sweep(run,
              SweepConfig(synthetic_frames=60, image_size=32, noise_rate=0.3, plan="random",
                          n_members=3, fraction=0.6, threshold_fraction=0.1, seed=1),
              ModelConfig(widths=(8, 16, 32), head_width=16),
              TrainConfig(steps=30, batch_size=8), ExecConfig(strategy="sequential", chunk_size=30),
              progress=False, log=lambda m: None)
    return run


def test_analyze_outputs(run_dir):
    logs = []
    out = analyze(run_dir, progress=False, log=logs.append)
    run = rundir.load(run_dir)
    train, test, thr = run.train, run.test, run.threshold_mask
    n, t, k = train.n_frames, test.n_frames, train.n_keypoints
    bps = list(train.bodyparts)
    assert thr.shape == (n, k) and thr.sum() == round(0.1 * train.labeled.any(1).sum())

    aum = pd.read_csv(run_dir / "aum.csv")
    assert list(aum.columns) == ["frame", "keypoint", "aum", "n_members", "flagged",
                                 "n_members_flagged", "threshold_sample", "planted_noise"]
    assert len(aum) == train.labeled.sum()
    assert aum.threshold_sample.sum() == thr.sum()
    seen = aum.n_members > 0
    assert np.isfinite(aum.aum[seen]).all() and aum.aum[~seen].isna().all()
    assert set(aum.flagged.unique()) <= {0, 1}
    assert (aum.flagged == (aum.aum < out["aum"]["cut"])).all()

    for name, extra in (("mpe.csv", ["mpe_max", "mpe_mean", "representativeness"]),
                        ("spread.csv", ["spread_max", "spread_mean"])):
        df = pd.read_csv(run_dir / name)
        assert list(df.columns) == ["frame_id", "split"] + bps + extra, name
        assert len(df) == n + t and (df.split == "train").sum() == n
        assert list(df.frame_id) == list(train.frame_ids) + list(test.frame_ids)
        assert np.isfinite(df[bps + extra].to_numpy()).all(), name
    mpe = pd.read_csv(run_dir / "mpe.csv")
    assert (mpe[bps] >= 0).all().all()
    np.testing.assert_allclose(mpe.mpe_max, mpe[bps].max(axis=1), rtol=1e-5)

    z = eio.load_npz(run_dir / "influence.npz")
    assert list(z["train_frame_ids"]) == list(train.frame_ids)
    assert list(z["test_frame_ids"]) == list(test.frame_ids)
    m = len(z["members"])
    assert m == 3
    for metric in METRICS:
        assert z[f"{metric}_effect"].shape == z[f"{metric}_stderr"].shape == (n, t)
        assert z[f"{metric}_values"].shape == (m, t)
        assert z[f"self_{metric}_effect"].shape == (n,)
        assert z[f"self_{metric}_values"].shape == (m, n)
        # every frame of a 3-member, 60% plan is in some subsets and out of others,
        # except the few in all or none: most effects are defined
        assert np.isfinite(z[f"{metric}_effect"]).mean() > 0.5
    assert (z["n_in"] + z["n_out"] == m).all()
    assert z["datamodel_weights"].shape == (n, t) and z["datamodel_bias"].shape == (t,)
    assert np.isfinite(z["datamodel_weights"]).all()
    vals = z["pixel_error_values"]
    assert (vals[np.isfinite(vals)] >= 0).all()
    for name in ("gt_confidence", "gt_probability"):
        v = z[f"{name}_values"]
        assert ((v[np.isfinite(v)] >= 0) & (v[np.isfinite(v)] <= 1)).all()

    js = json.loads((run_dir / "analysis.json").read_text())
    assert js["aum"]["n_threshold_samples"] == thr.sum()
    real = aum[(aum.threshold_sample == 0) & aum.aum.notna()]
    assert js["aum"]["roc_auc_vs_planted_noise"] == pytest.approx(aum_lib.roc_auc(
        -real.aum.to_numpy(), real.planted_noise.to_numpy().astype(bool)))
    assert len(js["aum"]["members"]) == 3 and len(js["mpe"]["top_frames"]) > 0
    inf = js["influence"]
    # random plan: the plain difference of means is valid; 3 members resolve nothing
    assert inf["plan"] == "random" and inf["estimator"] == "difference_of_means"
    assert not inf["resolved"] and not inf["harmful_frames"] and not inf["harmful_pairs"]
    assert inf["members_needed"]["members_needed"] > 3 and "needs about" in inf["not_resolved"]
    p = z["pixel_error_p"][np.isfinite(z["pixel_error_p"])]
    assert p.size and (p > 0.25).all()          # 1 of 3 relabellings ties: p about 1/3
    for png in ("influence_matrix.png", "aum_histogram.png", "top_mpe_frames.png",
                "top_flagged_frames.png"):
        assert (run_dir / png).stat().st_size > 10_000, png
        assert png in js["files"]
    assert not list(run_dir.glob(".*.tmp"))                 # atomic writes left no debris
    assert any(s.startswith("AUM: cut") for s in logs)


def test_report_of_a_run(run_dir):
    """`ensemble-jax report RUN_DIR` on a sweep + analyze folder: every figure embedded."""
    if not (run_dir / "analysis.json").exists():
        analyze(run_dir, progress=False, log=lambda m: None)
    assert cli.main(["report", str(run_dir)]) == 0
    assert_report_embeds_figures(run_dir / "report.html",
                                 ("Suspect frames", "AUM", "Uncertainty against error", "Influence"))


def test_load_result_matches_sweep_predictions(run_dir):
    result = rundir.load(run_dir).result
    test = rundir.load(run_dir).test
    z = eio.load_npz(run_dir / "predictions.npz")
    p = result.predict(test.images)
    np.testing.assert_allclose(test.to_original(p.keypoints), z["test_keypoints"], atol=1e-4)


def test_cli_analyze(run_dir, capsys):
    assert cli.main(["analyze", str(run_dir), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "labels flagged" in printed and "ROC-AUC" in printed
    assert "training frames" in printed
    assert cli.main(["analyze", str(run_dir / "missing")]) == 2


def test_diverged_member_and_run_without_threshold_samples(run_dir, tmp_path):
    run = tmp_path / "old_run"
    shutil.copytree(run_dir, run)
    tr = eio.load_npz(run / "training.npz")
    tr["alive"] = np.array([True, False, True])
    tr["diverged_at"] = np.array([-1, 12, -1], np.int32)
    eio.save_npz(run / "training.npz", **tr)
    data = eio.load_npz(run / "data.npz")
    del data["train_threshold_mask"]                        # a run from before threshold samples
    eio.save_npz(run / "data.npz", **data)
    rundir.RunDir(run).record("training.npz", "data.npz")  # as if its sweep wrote them so
    logs = []
    out = analyze(run, progress=False, log=logs.append)
    assert any("member 1 diverged" in s for s in logs)
    assert out["alive_members"] == [0, 2] and out["diverged_members"] == [1]
    assert "fallback" in out["aum"]["rule"] and out["aum"]["cut"] == aum_lib.FALLBACK_CUT
    z = eio.load_npz(run / "influence.npz")
    assert list(z["members"]) == [0, 2] and z["pixel_error_values"].shape[0] == 2
    aum = pd.read_csv(run / "aum.csv")
    assert (aum.n_members <= 2).all() and aum.threshold_sample.sum() == 0
