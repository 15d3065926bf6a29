"""Seed studies 4 (AUM cleaning) and 5 (active learning): the --quick runs write finite
numbers of the right shape, figures, sections and a report whose every <img> is embedded;
plus the library pieces they rest on (staged subsets, selection orders)."""
from __future__ import annotations

import base64
import csv
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _check_report(out: Path, expected_figures: set[str]) -> None:
    page = (out / "report.html").read_text()
    imgs = re.findall(r"<img[^>]*>", page)
    assert len(imgs) >= len(expected_figures)
    for tag in imgs:
        m = re.search(r'src="data:image/png;base64,([^"]+)"', tag)
        assert m, f"image not embedded: {tag[:80]}"
        data = base64.b64decode(m.group(1))
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    for name in expected_figures:
        assert (out / name).stat().st_size > 1000


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    from experiments import study4_aum_cleaning, study5_active_learning
    n4 = study4_aum_cleaning.main(["--quick", "--quiet", "--out", str(out)])
    n5 = study5_active_learning.main(["--quick", "--quiet", "--out", str(out)])
    return out, n4, n5


# slow on a 2-core CPU (several compiles); run with: pytest -m slow
@pytest.mark.slow
def test_study4_quick(quick_out):
    out, returned, _ = quick_out
    d = out / "study4_aum_cleaning"
    nb = json.loads((d / "numbers.json").read_text())
    assert nb["synthetic"] is True
    for level in ("labels", "frames"):
        assert nb[level]["planted"] > 0
        assert 0 <= nb[level]["recall"] <= 1
        p = nb[level]["precision"]
        assert p is None if nb[level]["flagged"] == 0 else 0 <= p <= 1
    assert 0 <= nb["roc_auc_labels"] <= 1 and _finite(nb["aum_cut"])
    reps = nb["config"]["replicates"]
    for arm in ("plain", "drop", "curriculum", "shrink"):
        a = nb["arms"][arm]
        assert len(a["member_test_px"]) == reps and all(_finite(v) for v in a["member_test_px"])
        assert _finite(a["ensemble_test_px"]) and _finite(a["mean_diff_vs_plain_px"])
    assert nb["arms"]["drop"]["frames_trained_on_final"] == nb["n_train"] - nb["n_flagged_frames"]
    with open(d / "arms.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * reps
    with open(d / "aum_labels.csv") as f:
        labels = list(csv.DictReader(f))
    assert sum(int(r["flagged"]) for r in labels) == nb["n_flagged_labels"]
    sec = json.loads((d / "section.json").read_text())
    assert sec["paragraphs"] and "precision" in " ".join(sec["paragraphs"])
    _check_report(out, {f"study4_aum_cleaning/{f['file']}" for f in sec["figures"]})


# slow on a 2-core CPU (several compiles); run with: pytest -m slow
@pytest.mark.slow
def test_study5_quick(quick_out):
    out, _, returned = quick_out
    d = out / "study5_active_learning"
    nb = json.loads((d / "numbers.json").read_text())
    from ensemble_jax.analysis.active import STRATEGIES
    s, b = nb["config"]["shuffles"], len(nb["budgets"])
    assert nb["budgets"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    added = np.array(nb["labels_added"])
    assert added.shape == (s, b) and (np.diff(added, axis=1) > 0).all()
    for st in STRATEGIES:
        err = np.array(nb["test_error_px"][st], float)
        norm = np.array(nb["normalised_error"][st], float)
        assert err.shape == norm.shape == (s, b) and np.isfinite(err).all()
        np.testing.assert_allclose(norm[:, 0], 1.0)
        np.testing.assert_allclose(norm, err / err[:, :1], rtol=1e-6)
    # budgets 0 and 100% are shared by every strategy
    ref = np.array(nb["test_error_px"]["uniform"])
    for st in STRATEGIES:
        np.testing.assert_allclose(np.array(nb["test_error_px"][st])[:, [0, -1]], ref[:, [0, -1]])
    assert nb["members"] == s * (2 + len(STRATEGIES) * (b - 2))
    with open(d / "curves.csv") as f:
        assert len(list(csv.DictReader(f))) == len(STRATEGIES) * s * b
    sec = json.loads((d / "section.json").read_text())
    _check_report(out, {f"study5_active_learning/{f['file']}" for f in sec["figures"]})


def test_selection_orders():
    from ensemble_jax.analysis import active
    rng = np.random.default_rng(0)
    score = np.array([0.1, 3.0, np.nan, 2.0, 2.0])
    order = active.score_order(score, rng)
    assert order[0] == 1 and set(order[1:3]) == {3, 4} and order[-1] == 2
    # two well separated blobs: k-means finds them; the balanced order alternates
    feats = np.concatenate([rng.normal(0, 0.1, (10, 3)), rng.normal(5, 0.1, (6, 3))])
    order, labels = active.cluster_balanced_order(feats, 2, np.random.default_rng(1))
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]
    assert sorted(order.tolist()) == list(range(16))
    first = labels[order[:12]]
    assert (first[::2] != first[1::2]).all()          # alternate clusters while both last
    for st in active.STRATEGIES:
        o = active.select_order(st, n=16, rng=np.random.default_rng(2), mpe=feats[:, 0],
                                spread=feats[:, 1], representativeness=feats[:, 2],
                                features=feats, n_clusters=2)
        assert sorted(o.tolist()) == list(range(16))


# slow on a 2-core CPU (several compiles); run with: pytest -m slow
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
