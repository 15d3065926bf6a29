"""Multi-view consistency of the labels (analysis/multiview.py) and the Lightning Pose
config's view matches (data/lightning_pose.py)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from ensemble_jax.analysis import multiview as mv
from ensemble_jax.analysis import suspects as sus
from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.lightning_pose import (find_config, read_lightning_pose,
                                              read_view_matches)
import numpy_twins as twins

MIRROR = "lp-mirror-mouse-example"
# Two views of 4 body points (a mirror: side view (x, height), bottom view (x, lateral)),
# plus one keypoint seen in one view only.
BODY = ["LF", "RF", "LH", "RH"]
BPS = [f"{b}_top" for b in BODY] + [f"{b}_bot" for b in BODY] + ["obs_top"]
VIEWS = (tuple(BPS[:4]), tuple(BPS[4:8]))
SWAPPED, CONFUSED = 5, 7          # a planted swap; a clean frame the members get wrong


def _two_view_case(n=60, seed=0):
    """Labels [n, 9, 2] from 3D points through two linear cameras (+0.3 px noise), with
    LF/RF exchanged in the bottom view of frame SWAPPED; member predictions (3 px off the
    true places, half the frames with a pair partly confused), with LF/RF exchanged in
    the bottom view of the clean frame CONFUSED."""
    rng = np.random.default_rng(seed)
    body_x = rng.uniform(60, 200, n)
    offs = np.array([[25, -12, 8], [5, 12, 8], [-30, -12, 6], [-45, 12, 6]])  # x, lat, h
    pts = (body_x[:, None, None] * [1, 0, 0] + offs[None]
           + rng.normal(0, [4, 6, 10], (n, 4, 3)))
    pts[:, :, 1] += 120                                          # lateral -> bottom rows
    top = np.stack([pts[..., 0], 60 - pts[..., 2]], -1)          # side view, upper half
    bot = np.stack([pts[..., 0], pts[..., 1]], -1)               # bottom view, lower half
    obs = np.stack([np.full(n, 230.0), np.full(n, 40.0)], -1)[:, None]
    truth = np.concatenate([top, bot, obs], 1)                   # [n, 9, 2]
    for f in (SWAPPED, CONFUSED):     # the two front paws well apart along x
        truth[f, [0, 4], 0] += 20
        truth[f, [1, 5], 0] -= 20
    labels = truth + rng.normal(0, 0.3, truth.shape)
    labels[SWAPPED, [4, 5]] = labels[SWAPPED, [5, 4]]
    pred = truth + rng.normal(0, 3.0, truth.shape)
    # members half-confuse a pair in many frames (as on the real project, where the largest
    # member gain of a clean frame has median ~0.3 and SD ~0.45 of its range (-2, 2))
    for f in rng.choice(n, n // 2, replace=False):
        a, b = rng.choice(8, 2, replace=False)
        u = rng.uniform(0, 0.8)
        pa, pb = pred[f, a].copy(), pred[f, b].copy()
        pred[f, a], pred[f, b] = pa + u * (truth[f, b] - pa), pb + u * (truth[f, a] - pb)
    pred[[SWAPPED, CONFUSED]] = truth[[SWAPPED, CONFUSED]] + rng.normal(0, 3.0, (2, 9, 2))
    pred[CONFUSED, [4, 5]] = pred[CONFUSED, [5, 4]]
    aum = rng.normal(2.0, 0.3, (n, len(BPS)))
    return labels, pred, aum


def test_residual_matches_numpy_twin():
    labels, _, _ = _two_view_case()
    labels[3, 6] = np.nan                                      # one view unlabeled
    fit = np.ones(len(labels), bool)
    fit[SWAPPED] = False
    cols = mv.view_columns(BPS, VIEWS)
    pca = mv.fit_pca(labels, cols, fit)
    got = mv.residual(labels, cols, pca)
    want = twins.multiview_residual(labels, cols, fit, n_components=3)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.isnan(got[3, 2]) and np.isfinite(got[3, [0, 1, 3]]).all()
    # two linear views of 3D points: the labels agree to their noise, the swap does not
    assert np.nanmedian(got) < 1.0 and got[SWAPPED, :2].min() > 10


def test_view_gain_signs():
    labels, _, _ = _two_view_case()
    cols = mv.view_columns(BPS, VIEWS)
    chk = mv.check(labels, BPS, VIEWS, np.ones(len(labels), bool))
    g = chk["gain"]
    assert g[SWAPPED, 4, 5] > 1.0 and g[SWAPPED, 5, 4] == g[SWAPPED, 4, 5]
    assert g[CONFUSED, 4, 5] < -1.0          # exchanging would break the views' agreement
    assert np.isnan(g[:, 0, 4]).all() and np.isnan(g[:, 8]).all()   # other views, unmatched
    assert (np.abs(g[np.isfinite(g)]) < 2).all()
    assert cols.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_views_separate_a_swap_from_the_members_confusion():
    labels, pred, aum = _two_view_case()
    real = np.ones(len(labels), bool)
    # members only: the planted swap and the clean frame the members exchange look alike
    plain = sus.swap_aware_scores(aum, labels, pred, real)
    assert plain["score"][SWAPPED] < -3 and plain["score"][CONFUSED] < -3
    chk = mv.check(labels, BPS, VIEWS, real)
    both = sus.swap_aware_scores(aum, labels, pred, real, multiview=chk)
    assert both["score"][SWAPPED] < -3 < both["score"][CONFUSED]
    assert np.argmin(both["score"]) == SWAPPED
    kinds = sus.swap_aware_kind(labels, pred, both)
    assert (kinds[SWAPPED]["kind"], kinds[SWAPPED]["a"], kinds[SWAPPED]["b"]) == ("swap", 4, 5)
    assert kinds[CONFUSED]["kind"] != "swap"
    # frame_report with the views: the same scores; without: exactly the old ones
    kind = np.zeros(aum.shape, np.int8)
    rep = sus.frame_report(aum, kind, labels=labels, prediction=pred, bodyparts=BPS,
                           views=VIEWS)
    np.testing.assert_array_equal(rep["score"], both["score"])
    assert rep["summary"]["terms"]["multiview"]["pca_components"] == 3
    old = sus.frame_report(aum, kind, labels=labels, prediction=pred)
    np.testing.assert_array_equal(old["score"], plain["score"])


def test_lp_config_views_of_the_shared_project(shared_data):
    from ensemble_jax.data.dlc import read_label_csv
    project = shared_data / MIRROR
    cfg = find_config(project)
    assert cfg is not None and cfg.name == "config_mirror-mouse-example.yaml"
    names = read_label_csv(project / "CollectedData.csv").names
    views = read_view_matches(cfg, names)
    assert [len(v) for v in views] == [7, 7]
    assert views[0][1] == "paw2LF_top" and views[1][1] == "paw2LF_bot"
    with pytest.raises(DatasetError, match="keypoint_names"):
        read_view_matches(cfg, names[::-1])


def _lp_copy(shared_data, tmp_path, edit):
    project = shared_data / MIRROR
    shutil.copy(project / "CollectedData.csv", tmp_path / "CollectedData.csv")
    text = (project / "config_mirror-mouse-example.yaml").read_text()
    (tmp_path / "config_mirror-mouse-example.yaml").write_text(edit(text))
    return tmp_path


def test_lp_reader_refuses_a_mismatched_config(shared_data, tmp_path, capsys):
    from ensemble_jax import cli
    data = _lp_copy(shared_data, tmp_path,
                    lambda t: t.replace("    - paw1LH_top\n    - paw2LF_top\n",
                                        "    - paw2LF_top\n    - paw1LH_top\n"))
    with pytest.raises(DatasetError, match="config_mirror-mouse-example.yaml.*keypoint_names"):
        read_lightning_pose(data)
    out = tmp_path / "run"
    assert cli.main(["sweep", "--data", str(data), "--out", str(out), "--smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("config_mirror-mouse-example.yaml" in line for line in err)
    assert not out.exists()
    (tmp_path / "b").mkdir()
    bad = _lp_copy(shared_data, tmp_path / "b",
                   lambda t: t.replace("[8, 9, 10, 11, 12, 13, 14]", "[8, 9, 10, 99]"))
    with pytest.raises(DatasetError, match="mirrored_column_matches"):
        read_lightning_pose(bad)
    # a config that declares no matches: no views, as before
    plain = tmp_path / "config_plain.yaml"
    plain.write_text("data:\n  csv_file: CollectedData.csv\n")
    assert read_view_matches(plain, ["a", "b"]) is None
