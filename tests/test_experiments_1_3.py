"""Seed studies 1-3 (`experiments/`).

The studies' decision functions on constructed member errors (exact, fast): study 1 must
find a rise planted between 70% and 90% (frames with wrong labels added there) and must not
call one when there is none, also when each seed's retraining noise is shared by all of its
test frames (an interval over test frames alone would call rises there); study 2's
within-fraction PCA removes a planted subset-size effect. Then one --quick end-to-end run
of the three studies on one shared output folder: each states its conclusion as data in
numbers.json, and the assembled report embeds every figure."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from report_checks import assert_report_embeds_figures

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FRACTIONS = [0.1, 0.3, 0.5, 0.7, 0.9]
STUDIES = {
    "study1_more_data": ["numbers.json", "errors.csv", "steps.csv", "added_frames.csv",
                         "learning_curves.png", "step_changes.png", "section.json"],
    "study2_correlated_errors": ["numbers.json", "frame_errors.csv", "correlation.csv",
                                 "pca.csv", "pca.png", "correlation.png", "traces.png",
                                 "section.json"],
    "study3_influence": ["numbers.json", "train_frames.csv", "top_pairs.csv",
                         "influence_matrices.png", "long_tail.png", "strong_pair.png",
                         "section.json"],
}


def _load(name: str):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _errors(rng, *, planted=0.0, seeds=4, frames=80, seed_sd=0.15, frame_sd=0.4):
    """[F, S, T] per-frame test errors: a falling learning curve, each seed's own level
    (retraining noise, shared by all its test frames and varying by fraction), per-frame
    difficulty shared by every member, per-member noise; `planted` px added at 90% (the
    frames added between 70% and 90% carry wrong labels)."""
    curve = np.array([3.0, 2.2, 1.8, 1.6, 1.55])
    curve[-1] += planted
    difficulty = rng.gamma(2.0, 0.5, frames)
    seed_level = rng.normal(0, seed_sd, (len(FRACTIONS), seeds, 1))
    noise = rng.normal(0, frame_sd, (len(FRACTIONS), seeds, frames))
    return np.maximum(curve[:, None, None] + difficulty + seed_level + noise, 0.0)


# ----------------------------------------------------------------- study 1's decision
def test_study1_finds_a_planted_rise():
    s1 = _load("study1_more_data")
    err = _errors(np.random.default_rng(1), planted=0.6)
    steps = s1.step_changes(err, FRACTIONS)
    by = {(r["from"], r["to"]): r for r in steps}
    r = by[(0.7, 0.9)]
    assert r["rise"] and r["resolved"] and r["ci_familywise_px"][0] > 0
    assert abs(r["delta_px"] - 0.55) < 0.25                  # planted +0.6, curve -0.05
    assert not any(by[k]["rise"] for k in by if k != (0.7, 0.9))
    c = s1.conclusion(steps)
    assert c["resolved"] and (c["from"], c["to"]) == (0.7, 0.9)
    assert c["interval"][0] > 0 and c["delta_px"] == r["delta_px"]


def test_study1_no_effect_no_rise():
    s1 = _load("study1_more_data")
    err = _errors(np.random.default_rng(2), planted=0.0)
    steps = s1.step_changes(err, FRACTIONS)
    assert not any(r["rise"] for r in steps)
    c = s1.conclusion(steps)
    assert c["resolved"] is False and c["statement"].startswith("no rise resolved")


def test_study1_intervals_include_retraining_noise():
    """No effect anywhere, but each seed's level at each fraction moves with its training
    (the part a test-frame bootstrap cannot see): over 200 draws the family-wise rule calls
    a rise in at most a few; a test-frame-only interval would call many."""
    s1 = _load("study1_more_data")
    rng = np.random.default_rng(3)
    calls, naive = 0, 0
    for _ in range(200):
        err = _errors(rng, seeds=3, seed_sd=0.3, frame_sd=0.3)
        flat = err - np.array([3.0, 2.2, 1.8, 1.6, 1.55])[:, None, None]  # flat curve
        steps = s1.step_changes(flat, FRACTIONS, n_boot=50)
        calls += any(r["rise"] for r in steps)
        naive += any(max(p["ci95_test_frames"][0] for p in r["per_seed"]) > 0
                     for r in steps)
    assert calls <= 10, calls                      # family-wise level 0.025 (one-sided)
    assert naive >= 3 * max(calls, 10), naive      # what ignoring retraining would do


def test_study1_one_seed_is_not_resolved():
    s1 = _load("study1_more_data")
    err = _errors(np.random.default_rng(4), planted=2.0, seeds=1)
    steps = s1.step_changes(err, FRACTIONS)
    assert all(not r["resolved"] and "one paired seed" in r["note"] for r in steps)
    assert s1.conclusion(steps)["resolved"] is False


def test_study1_equal_epochs_steps():
    s1 = _load("study1_more_data")
    steps = s1.epochs_steps(400, FRACTIONS)
    assert steps[-1] == 400 and steps == sorted(steps)
    per_frame = np.array(steps) / np.array(FRACTIONS)        # passes per subset frame
    assert np.ptp(per_frame) / per_frame.mean() < 0.02


# ----------------------------------------------------------------- study 2's PCA
def test_study2_within_fraction_pca_removes_subset_size():
    s2 = _load("study2_correlated_errors")
    rng = np.random.default_rng(5)
    fr = np.repeat([0.3, 0.6, 0.9], 4)
    T = 60
    size_pattern = rng.normal(0, 1, T)                # what more data changes
    member_pattern = rng.normal(0, 1, T)              # what differs between seeds
    E = (5 - 4 * fr[:, None] * size_pattern[None] * 0.8
         + rng.normal(0, 1, len(fr))[:, None] * member_pattern[None] * 0.3
         + rng.normal(0, 0.05, (len(fr), T)))
    ratio, scores, comps = s2.pca_explained(E)
    assert abs(np.corrcoef(scores[:, 0], fr)[0, 1]) > 0.95   # across all: PC1 = size
    within, pooled = s2.pca_within_fractions(E, fr)
    assert pooled["max_components"] == len(fr) - 3
    r, _, v = s2.pca_explained(E - np.stack([E[fr == f].mean(0) for f in fr]))
    assert abs(np.corrcoef(v[0], member_pattern)[0, 1]) > 0.9  # pooled PC1 = seed pattern
    assert pooled["first"] > 0.9
    for w in within.values():
        assert w["members"] == 4 and w["max_components"] == 3 and w["first"] > 0.8
        assert not w["first_two_trivial"]
    # the stated conclusion: subset size resolved as PC1's driver here, not without it
    from scipy import stats
    r_fr, p_fr = stats.pearsonr(scores[:, 0], fr)
    c = s2.conclusion(np.cumsum(ratio), pooled, r_fr, p_fr, 0.5)
    assert c["subset_size_drives_pc1"]["resolved"] and "is resolved" in c["statement"]
    E0 = 5 + rng.normal(0, 1, len(fr))[:, None] * member_pattern[None]   # no size effect
    ratio0, scores0, _ = s2.pca_explained(E0)
    r0, p0 = stats.pearsonr(scores0[:, 0], fr)
    c0 = s2.conclusion(np.cumsum(ratio0), s2.pca_within_fractions(E0, fr)[1], r0, p0, 0.5)
    assert c0["subset_size_drives_pc1"]["resolved"] == (p0 < 0.05)
    assert "not resolved" in c0["statement"] or p0 < 0.05


# ----------------------------------------------------------------- end to end (--quick)
@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    argv = ["--out", str(out), "--quick", "--quiet"]
    numbers, sweep_mtimes = {}, []
    for name in STUDIES:
        numbers[name] = _load(name).main(argv)
        sweep_mtimes.append((out / "sweep" / "summary.json").stat().st_mtime_ns)
    return out, numbers, sweep_mtimes


def test_outputs_and_pairing(studies):
    out, _, mtimes = studies
    assert len(set(mtimes)) == 1, "a study retrained the shared sweep instead of reusing it"
    cfg = json.loads((out / "sweep" / "config.json").read_text())
    assert cfg["sweep"]["plan"] == "nested" and cfg["train"]["crn"] is True
    # one crn block per nested seed: a seed's members share init and draws
    assert cfg["crn_block_ids"] == [int(s) for s in cfg["layout"]["member_seed"]]
    rcfg = json.loads((out / "sweep_random" / "config.json").read_text())
    assert rcfg["sweep"]["plan"] == "random" and rcfg["train"]["crn"] is True
    for name, files in STUDIES.items():
        for f in files:
            p = out / name / f
            assert p.is_file() and p.stat().st_size > 0, p
        for csv_path in (out / name).glob("*.csv"):
            rows = list(csv.reader(csv_path.open()))
            assert len(rows) >= 2 and all(len(r) == len(rows[0]) for r in rows), csv_path


def test_study1_states_its_conclusion(studies):
    out = studies[0]
    n1 = json.loads((out / "study1_more_data" / "numbers.json").read_text())
    fr, seeds = n1["fractions"], n1["seeds"]
    assert len(fr) == 3 and len(seeds) == 2 and n1["budget"] == "steps"
    assert all(math.isfinite(v) for v in n1["member_test_error_px"].values())
    steps = n1["steps"]
    assert len(steps) == len(fr) - 1
    err = {k: v for k, v in n1["member_test_error_px"].items()}
    for r in steps:   # the step's change is the mean of the seeds' own changes
        own = [err[f"{r['to']:g}/seed{s}"] - err[f"{r['from']:g}/seed{s}"] for s in r["seeds"]]
        assert r["delta_px"] == pytest.approx(np.mean(own), abs=1e-6)
        lo, hi = r["ci_familywise_px"]
        assert lo <= r["ci95_px"][0] <= r["delta_px"] <= r["ci95_px"][1] <= hi
        assert r["rise"] == (lo > 0) and r["fall"] == (hi < 0)
        assert all(n > 0 for n in r["n_added_per_seed"])    # nested: frames are added
    c = n1["more_data_hurts"]
    assert c["resolved"] == any(r["rise"] for r in steps)
    assert c["statement"] and c["budget"] == "steps"


def test_study2_states_pc1_vs_fraction(studies):
    out = studies[0]
    n2 = json.loads((out / "study2_correlated_errors" / "numbers.json").read_text())
    m = len(n2["members"])
    c = np.asarray(n2["correlation_matrix"], float)
    np.testing.assert_allclose(np.diag(c), 1.0, atol=1e-6)
    scores = np.asarray(n2["pca_scores"], float)
    fr = np.array([float(x.split("%")[0]) / 100 for x in n2["member_names"]])
    assert n2["pc1_vs_fraction_corr"] == pytest.approx(np.corrcoef(scores[:, 0], fr)[0, 1],
                                                       abs=1e-6)
    assert n2["pca_pooled_within_fraction"]["max_components"] == m - 3
    assert set(n2["pca_within_fraction"]) == {"0.3", "0.6", "0.9"}
    text = " ".join(json.loads((out / "study2_correlated_errors" / "section.json")
                               .read_text())["paragraphs"])
    assert "pc1_vs_fraction_corr" in text
    c = n2["conclusion"]
    assert c["pc1_vs_fraction_corr"] == pytest.approx(n2["pc1_vs_fraction_corr"])
    assert c["subset_size_drives_pc1"]["resolved"] == (n2["pc1_vs_fraction_p"] < 0.05)


def test_study3_uses_the_valid_estimator_and_rule(studies):
    out = studies[0]
    n3 = json.loads((out / "study3_influence" / "numbers.json").read_text())
    a = json.loads((out / "sweep_random" / "analysis.json").read_text())["influence"]
    f = n3["findings"]
    assert f["estimator"] == a["estimator"] == "difference_of_means" and f["plan"] == "random"
    assert f["resolved"] == a["resolved"]
    assert f["n_frames_resolved"] == a["n_frames_resolved"]
    z = np.load(out / "sweep_random" / "influence.npz")
    q = np.nan_to_num(z["frame_pixel_error_q"], nan=1.0)
    qp = np.nan_to_num(z["pixel_error_q"], nan=1.0)
    assert f["resolved"] == bool((q < 0.025).any() or (qp < 0.025).any())
    if not f["resolved"]:
        assert f["statement"].startswith("not resolved") and f["members_needed"] > 0
    rows = list(csv.DictReader((out / "study3_influence" / "train_frames.csv").open()))
    assert sum(int(r["finding"]) for r in rows) == int((q < 0.025).sum())
    pair = n3["strong_pair"]
    assert pair["p"] == pytest.approx(float(np.nanmin(z["pixel_error_p"])), rel=1e-5)
    assert pair["effect_px"] == pytest.approx(pair["mean_error_with_px"]
                                              - pair["mean_error_without_px"], abs=1e-3)


def test_report_embeds_every_figure(studies):
    out = studies[0]
    n_figs = sum(len(json.loads((out / name / "section.json").read_text())["figures"])
                 for name in STUDIES)
    assert_report_embeds_figures(out / "report.html", ("Study 1", "Study 2", "Study 3"),
                                 min_figures=n_figs)
    html = (out / "report.html").read_text()
    n1 = json.loads((out / "study1_more_data" / "numbers.json").read_text())
    n3 = json.loads((out / "study3_influence" / "numbers.json").read_text())
    import html as _html   # each study's stated conclusion is in the report
    for statement in (n1["more_data_hurts"]["statement"], n3["findings"]["statement"]):
        assert _html.escape(statement[:60]) in html or statement[:60] in html


@pytest.mark.slow
def test_study1_equal_epochs_pairs_with_the_shared_sweep(studies):
    """--budget epochs trains one sweep per fraction on the same nested subsets, seeds and
    crn blocks, proportionally fewer steps for smaller fractions; the largest fraction keeps
    the shared sweep's steps and so reuses its members. That they are the same training:
    a fresh folder trains the largest fraction itself and gets the same errors."""
    out = studies[0]
    fresh = _load("study1_more_data").main(["--out", str(out / "fresh"), "--quick", "--quiet",
                                            "--budget", "epochs"])
    assert fresh["runs"]["0.9"] == str(out / "fresh" / "study1_epochs_f0.9")
    n = _load("study1_more_data").main(["--out", str(out), "--quick", "--quiet",
                                        "--budget", "epochs"])
    assert n["budget"] == "epochs" and n["steps_per_fraction"] == [20, 40, 60]
    assert n["runs"]["0.9"] == str(out / "sweep")     # reused: same members (checked below)
    assert (out / "study1_epochs_f0.3").is_dir() and not (out / "study1_epochs_f0.9").exists()
    shared = json.loads((out / "study1_more_data" / "numbers.json").read_text())
    for s in n["seeds"]:
        for f in n["fractions"]:
            assert fresh["member_test_error_px"][f"{f:g}/seed{s}"] == pytest.approx(
                n["member_test_error_px"][f"{f:g}/seed{s}"], abs=1e-5)
        assert fresh["member_test_error_px"][f"0.9/seed{s}"] == pytest.approx(
            shared["member_test_error_px"][f"0.9/seed{s}"], abs=1e-5)
    ep = n["epochs_per_member"]
    vals = [ep[f"{f:g}/seed{s}"] for f in n["fractions"] for s in n["seeds"]]
    assert max(vals) / min(vals) < 1.1
    assert "resolved" in n["more_data_hurts"]
