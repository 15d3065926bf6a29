"""Seed studies 4 (AUM cleaning) and 5 (active learning).

Fast: the studies' decision functions on constructed cases, where the right conclusion is
known (planted harm in the flagged frames: dropping them must win; a degenerate arm must
be named and not compared; pool scores built to pick the informative frames must beat
uniform, random ones must leave it "not resolved"); features per member; the report's
rendering of a conclusion. Then the --quick runs of both studies end to end (the staged
trainer included): their numbers.json conclusions agree with their CSVs, and
`ensemble-jax report` on the studies' folder shows each study's figures and conclusion.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from experiments import intervals, study4_aum_cleaning as s4, study5_active_learning as s5  # noqa: E402
from report_checks import assert_report_embeds_figures  # noqa: E402


# ------------------------------------------------------------------ study 4, constructed
def _simulate_arms(stages, arms, reps, n, harmful, rng, harm=1.0, noise=0.02):
    """Member test error = replicate's own level (shared by its arms: paired) + harm x the
    share of the final stage's draws that fall on harmful frames + a little noise."""
    rows = stages[-1][1][:, :n].astype(float)
    share = rows[:, harmful].sum(1) / rows.sum(1)
    level = rng.normal(3.0, 0.3, reps.max() + 1)
    err = level[reps] + harm * share + rng.normal(0, noise, len(arms))
    return {a: err[arms == a] for a in dict.fromkeys(arms)}


def test_study4_dropping_planted_harm_wins_and_threshold_frames_stay_out():
    rng = np.random.default_rng(0)
    n = 40
    harmful = np.zeros(n, bool)
    harmful[:8] = True                                   # flagged frames are the harm
    exclude = np.zeros(n, bool)
    exclude[[20, 33]] = True                             # frames with a threshold sample
    aum = rng.normal(1, 0.2, n)
    aum[harmful] = -3
    stages, arms, reps, degenerate, copied = s4.arm_plan(
        n, harmful, aum, 300, [0.5, 0.75, 1.0], 0.25, 4, exclude=exclude)
    assert degenerate == {} and list(copied) == list(range(8))
    for _, rows in stages:                               # no arm ever draws them
        assert (rows[:, :n][:, exclude] == 0).all()
    final = stages[-1][1]
    plain = final[arms == "plain"][0]
    assert (plain[:n] > 0).sum() == n - 2
    assert (final[arms == "drop"][0][:n] > 0).sum() == n - 2 - 8
    member_err = _simulate_arms(stages, arms, reps, n, harmful, rng)
    c = s4.conclude(member_err, degenerate)
    assert c["best_arm"] == "drop" and c["resolved"] and c["better_than_plain"]
    assert c["interval"][1] < 0 and c["vs_plain_px"] == pytest.approx(-0.2 * 1.0, abs=0.05)
    assert c["statement"].startswith("drop beats plain")
    # no harm anywhere: the same design must not claim a winner
    c0 = s4.conclude(_simulate_arms(stages, arms, reps, n, harmful, rng, harm=0.0,
                                    noise=0.1), degenerate)
    assert not c0["resolved"] and c0["statement"].startswith("not resolved")
    assert c0["interval"][0] < 0 < c0["interval"][1]


def test_study4_degenerate_arms_are_named_and_not_compared():
    n = 12
    aum = np.linspace(2, -2, n)
    # every frame the arms train on is flagged: drop has nothing left
    exclude = np.zeros(n, bool)
    exclude[0] = True
    every = ~exclude
    stages, arms, reps, deg, _ = s4.arm_plan(n, every, aum, 30, [0.5, 1.0], 0.25, 2,
                                             exclude=exclude)
    assert set(deg) == {"drop"} and "drop" not in set(arms) and "no frames" in deg["drop"]
    assert set(arms) == {"plain", "curriculum", "shrink"}
    # nothing flagged: drop and shrink would be plain's data
    stages, arms, reps, deg, copied = s4.arm_plan(n, np.zeros(n, bool), aum, 30,
                                                  [0.5, 1.0], 0.25, 2)
    assert set(deg) == {"drop", "shrink"} and copied.size == 0
    assert set(arms) == {"plain", "curriculum"}
    errs = {"plain": np.array([2.0, 2.1]), "curriculum": np.array([2.2, 2.3])}
    c = s4.conclude(errs, deg)
    assert c["compared_arms"] == ["curriculum"] and set(c["degenerate_arms"]) == {"drop", "shrink"}
    assert "degenerate" in c["statement"] and "drop" in c["statement"]
    # shrink x1 is plain's data: caught by the generic check
    _, arms, _, deg, _ = s4.arm_plan(n, aum < 0, aum, 30, [1.0], 1.0, 2)
    assert deg == {"shrink": "identical to plain in every stage", "curriculum":
                   "identical to plain in every stage"} and set(arms) == {"plain", "drop"}
    # nothing left to compare at all
    c = s4.conclude({"plain": np.array([1.0, 1.1])}, {"drop": "x", "shrink": "y",
                                                       "curriculum": "z"})
    assert c["best_arm"] is None and not c["resolved"]
    assert c["statement"].startswith("not resolved")


# ------------------------------------------------------------------ study 5, constructed
def _simulate_pool(informative_scores: bool, seed: int, shuffles=6, reps=3, P=40):
    """Pools whose first 10 frames are what the test set lacks; MPE scores either point at
    them (plus noise) or are random. Test error: shuffle level - 0.6 x the share of the
    informative frames labeled - 0.05 x the share of the others + member noise."""
    from ensemble_jax.analysis import active
    rng = np.random.default_rng(seed)
    n_base, n = 20, 20 + shuffles * P
    base_sets, pools, orders, info = [], [], [], np.zeros(n, bool)
    for s in range(shuffles):
        pool = np.arange(n_base + s * P, n_base + (s + 1) * P)
        info[pool[:10]] = True
        mpe = (info[pool] + rng.normal(0, 0.3, P)) if informative_scores else rng.random(P)
        r = np.random.default_rng([seed, s])
        orders.append({st: active.select_order(st, n=P, rng=r, mpe=mpe,
                                               spread=r.random(P),
                                               representativeness=r.random(P),
                                               features=r.normal(size=(P, 4)),
                                               n_clusters=3) for st in active.STRATEGIES})
        base_sets.append(np.arange(n_base))
        pools.append(pool)
    budgets = [0.0, 0.25, 0.5, 1.0]
    masks, layout, ids = s5.build_plan(orders, base_sets, pools, budgets, reps, n)
    shuffle_of = np.array([l[0] for l in layout])
    level = rng.normal(5.0, 0.5, shuffles)[shuffle_of]
    other = masks & ~info
    other[:, :n_base] = False
    err = (level * (1 - 0.6 * (masks & info).sum(1) / 10 - 0.05 * other.sum(1) / (P - 10))
           + rng.normal(0, 0.05, len(layout)))
    curves, added = s5.collect(layout, err, shuffles, reps, budgets)
    return curves, added, budgets, masks, layout, ids


def test_study5_informative_scores_beat_uniform_random_ones_do_not():
    curves, added, budgets, masks, layout, ids = _simulate_pool(True, seed=1)
    S, R = 6, 3
    assert len(layout) == S * R * (2 + 5 * 2) and added.tolist() == [[0, 10, 20, 40]] * S
    # replicate r of a shuffle has one id in every cell; budgets nest within a strategy
    for (s, st, b, k, r), i in zip(layout, ids):
        assert i == 1000 + s * R + r
    norm = {st: c / c[:, :, :1] for st, c in curves.items()}
    c = s5.conclude(norm, budgets)
    assert c["best_strategy"] == "mpe" and c["resolved"] and c["better_than_uniform"]
    assert c["interval"][1] < 0 and "mpe" in c["resolved_better"]
    assert c["statement"].startswith("mpe beats uniform")
    # scores that know nothing: no strategy is resolved better than uniform
    curves, *_ = _simulate_pool(False, seed=2)
    c = s5.conclude({st: v / v[:, :, :1] for st, v in curves.items()}, budgets)
    assert not c["resolved"] and c["statement"].startswith("not resolved")
    assert not c["resolved_better"]


def test_study5_features_are_scored_per_member_never_averaged_across_members():
    from ensemble_jax.kernels import representativeness
    import jax.numpy as jnp
    rng = np.random.default_rng(3)
    E, P, D = 3, 25, 6
    feats = np.maximum(rng.normal(size=(E, P, D)) + 2.0, 0).astype(np.float32)   # ReLU-like
    rep, emb = s5.member_feature_scores(feats)
    per = [np.asarray(representativeness(jnp.asarray(f - f.mean(0)))) for f in feats]
    np.testing.assert_allclose(rep, np.mean(per, 0), rtol=1e-4, atol=1e-6)
    # a member's channels carry no order shared with other members: permuting one
    # member's channels changes nothing (averaging features across members would)
    perm = feats.copy()
    perm[1] = perm[1][:, rng.permutation(D)]
    rep2, emb2 = s5.member_feature_scores(perm)
    np.testing.assert_allclose(rep2, rep, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(emb2 @ emb2.T, emb @ emb.T, atol=1e-6)
    avg = lambda f: np.asarray(representativeness(jnp.asarray(f.mean(0) - f.mean((0, 1)))))
    assert np.abs(avg(perm) - avg(feats)).max() > 1e-3
    # centred: uncentred ReLU features would give cosines near 1 for every frame
    assert abs(rep.mean()) < 0.1
    # the embedding's Gram matrix is the members' mean cosine of centred features
    c = feats - feats.mean(1, keepdims=True)
    u = c / np.linalg.norm(c, axis=-1, keepdims=True)
    np.testing.assert_allclose(emb @ emb.T, np.einsum("epd,eqd->pq", u, u) / E, atol=1e-6)


def test_intervals_units_needed():
    iv = intervals.paired_t([-0.05, -0.02, 0.01], 0.05)
    assert iv["interval"][0] < iv["mean"] < iv["interval"][1] and not intervals.resolved(iv)
    need = intervals.units_needed(iv, 0.05)
    from scipy import stats
    half = lambda u: stats.t.ppf(0.975, u - 1) * iv["sd"] / np.sqrt(u)
    assert half(need) < abs(iv["mean"]) <= half(need - 1) * 1.06


def test_report_renders_a_conclusion(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ensemble_jax.analysis.report import build_report, write_section
    d = tmp_path / "study"
    d.mkdir()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(d / "f.png")
    plt.close(fig)
    write_section(d, title="Study X", paragraphs=["text"], figures=[("f.png", "cap")],
                  conclusion={"statement": "drop beats plain by 0.2 px", "best_arm": "drop",
                              "interval": [-0.3, -0.1], "resolved": True,
                              "arms": {"drop": {}}})
    page = build_report(tmp_path).read_text()
    assert "<strong>Conclusion:</strong> drop beats plain by 0.2 px" in page
    assert "<th>best_arm</th><td>drop</td>" in page and "<td>[-0.3, -0.1]</td>" in page
    assert "<th>resolved</th><td>yes</td>" in page and "<th>arms</th>" not in page
    with pytest.raises(ValueError, match="statement"):
        write_section(d, title="Y", paragraphs=[], conclusion={"best_arm": "drop"})
    sec = json.loads((d / "section.json").read_text())
    sec["conclusion"] = {"best": 1}
    (d / "section.json").write_text(json.dumps(sec))
    with pytest.raises(ValueError, match="conclusion"):
        build_report(tmp_path)


def test_selection_orders():
    from ensemble_jax.analysis import active
    rng = np.random.default_rng(0)
    score = np.array([0.1, 3.0, np.nan, 2.0, 2.0])
    order = active.score_order(score, rng)
    assert order[0] == 1 and set(order[1:3]) == {3, 4} and order[-1] == 2
    # two well separated blobs: k-means finds them; the balanced order alternates
    feats = np.concatenate([rng.normal(0, 0.1, (10, 3)), rng.normal(5, 0.1, (6, 3))])
    for std in (True, False):
        order, labels = active.cluster_balanced_order(feats, 2, np.random.default_rng(1),
                                                      standardize=std)
        assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1
        assert labels[0] != labels[10]
        assert sorted(order.tolist()) == list(range(16))
        first = labels[order[:12]]
        assert (first[::2] != first[1::2]).all()      # alternate clusters while both last
    for st in active.STRATEGIES:
        o = active.select_order(st, n=16, rng=np.random.default_rng(2), mpe=feats[:, 0],
                                spread=feats[:, 1], representativeness=feats[:, 2],
                                features=feats, n_clusters=2)
        assert sorted(o.tolist()) == list(range(16))


# ------------------------------------------------------------------ quick runs, end to end
@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    n4 = s4.main(["--quick", "--quiet", "--out", str(out)])
    n5 = s5.main(["--quick", "--quiet", "--out", str(out)])
    return out, n4, n5


def test_study4_quick(quick_out):
    out, returned, _ = quick_out
    d = out / "study4_aum_cleaning"
    nb = json.loads((d / "numbers.json").read_text())
    assert nb["synthetic"] is True and nb["labels"]["planted"] > 0
    # the threshold-sample frames are in no arm; each trained arm's final subset says so
    n_use = nb["n_train"] - nb["threshold_frames_excluded_from_arms"]
    assert nb["threshold_frames_excluded_from_arms"] > 0 and nb["frames_arms_train_on"] == n_use
    arms = nb["arms"]
    assert arms["plain"]["frames_trained_on_final"] == n_use
    if "drop" not in nb["degenerate_arms"]:
        assert arms["drop"]["frames_trained_on_final"] == n_use - nb["n_flagged_frames_in_arms"]
    for arm, why in nb["degenerate_arms"].items():
        assert arms[arm] == {"degenerate": why}
    # numbers.json's conclusion is the one its arms.csv implies
    with open(d / "arms.csv") as f:
        rows = list(csv.DictReader(f))
    per = {}
    for r in rows:
        per.setdefault(r["arm"], []).append(float(r["test_px"]))
    assert set(per) == {a for a in s4.ARMS if a not in nb["degenerate_arms"]}
    assert all(len(v) == nb["config"]["replicates"] == 3 for v in per.values())
    again = s4.conclude(per, nb["degenerate_arms"])
    c = nb["conclusion"]
    assert c["best_arm"] == again["best_arm"] and c["resolved"] == again["resolved"]
    assert c["vs_plain_px"] == pytest.approx(again["vs_plain_px"], abs=1e-4)
    assert c["statement"] == returned["conclusion"]["statement"]
    sec = json.loads((d / "section.json").read_text())
    assert sec["conclusion"]["statement"] == c["statement"]


def test_study5_quick(quick_out):
    out, _, returned = quick_out
    d = out / "study5_active_learning"
    nb = json.loads((d / "numbers.json").read_text())
    from ensemble_jax.analysis.active import STRATEGIES
    S, R, B = nb["config"]["shuffles"], nb["config"]["members_per_cell"], len(nb["budgets"])
    assert R >= 3 and nb["members"] == S * R * (2 + len(STRATEGIES) * (B - 2))
    added = np.array(nb["labels_added"])
    assert added.shape == (S, B) and (np.diff(added, axis=1) > 0).all()
    members = {st: np.array(v, float) for st, v in nb["test_error_px_members"].items()}
    for st in STRATEGIES:
        assert members[st].shape == (S, R, B) and np.isfinite(members[st]).all()
        # budgets 0 and 100% are one set of members shared by every strategy
        np.testing.assert_array_equal(members[st][..., [0, -1]], members["uniform"][..., [0, -1]])
        np.testing.assert_allclose(np.array(nb["normalised_error"][st]),
                                   (members[st] / members[st][..., :1]).mean(1), rtol=1e-6)
    # the conclusion is the one the members' errors imply, and curves.csv holds them
    again = s5.conclude({st: m / m[..., :1] for st, m in members.items()}, nb["budgets"])
    c = nb["conclusion"]
    assert c["best_strategy"] == again["best_strategy"] and c["resolved"] == again["resolved"]
    assert c["interval"] == pytest.approx(again["interval"], abs=1e-6)
    with open(d / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(STRATEGIES) * S * R * B
    r0 = next(r for r in rows if r["strategy"] == "mpe" and r["replicate"] == "2")
    assert float(r0["test_px"]) == pytest.approx(
        members["mpe"][int(r0["shuffle"]), 2, nb["budgets"].index(float(r0["budget"]))], rel=1e-5)
    # --replot redraws from numbers.json alone and reaches the same conclusion
    s5.main(["--replot", "--quiet", "--out", str(out)])
    assert json.loads((d / "numbers.json").read_text())["conclusion"]["statement"] == c["statement"]


def test_report_of_the_studies_folder(quick_out):
    """`ensemble-jax report OUT`: each study's figures embedded and its conclusion shown."""
    import html
    from ensemble_jax import cli
    out, n4, n5 = quick_out
    (out / "report.html").unlink()
    assert cli.main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    figs = [f"{name}/{f['file']}" for name in (s4.NAME, s5.NAME)
            for f in json.loads((out / name / "section.json").read_text())["figures"]]
    assert_report_embeds_figures(out / "report.html",
                                 ("Study 4: AUM for cleaning labels", "Study 5: active learning"),
                                 min_figures=len(figs))
    for nb in (n4, n5):
        assert ("<strong>Conclusion:</strong> " + html.escape(nb["conclusion"]["statement"])
                in page)
    assert page.index("Study 4") < page.index(html.escape(n4["conclusion"]["statement"])) \
        < page.index("Study 5") < page.index(html.escape(n5["conclusion"]["statement"]))


# slow on a 2-core CPU (compiles its own programs); the quick study 4 run above trains
# its arms with the same staged fit. Run with: pytest -m slow
@pytest.mark.slow
def test_fit_staged_switches_subsets():
    from ensemble_jax.data.synthetic import synthetic_dataset
    from ensemble_jax.models.heatmap_net import ModelConfig
    from ensemble_jax.training.config import ExecConfig, TrainConfig
    from ensemble_jax.training.staged import fit_staged
    from ensemble_jax.training.trainer import EnsembleTrainer
    data = synthetic_dataset(10, image_size=32, seed=0)
    first = np.zeros((2, 10), bool)
    first[:, :5] = True
    second = first.copy()
    second[0] = ~first[0]                             # member 0 switches to frames 5..9
    trainer = EnsembleTrainer(ModelConfig(widths=(8, 16, 32), head_width=16),
                              TrainConfig(steps=8, batch_size=4),
                              ExecConfig(strategy="sequential", chunk_size=4))
    res = fit_staged(trainer, data, [(0, first), (4, second)], member_ids=np.array([0, 0]))
    seen = res.aum_count.sum(-1) > 0                  # [M, n] frames drawn at least once
    assert seen[0, :5].any() and seen[0, 5:].any()
    assert not seen[1, 5:].any()
    assert np.isfinite(res.losses).all()
    # the first stage is identical for both members (same id, same subset)
    np.testing.assert_allclose(res.losses[:4, 0], res.losses[:4, 1], rtol=1e-5)
    with pytest.raises(ValueError, match="stage starts"):
        fit_staged(trainer, data, [(1, first)])
