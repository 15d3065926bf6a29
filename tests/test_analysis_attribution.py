"""The attribution section of `analyze`: the estimator picked per plan, refusals, findings
only at q < 0.05, "not resolved" with the members needed, validation members held out and
scored by LDS. Section tests use simulated member values (no training); one tiny nested
sweep with validation members runs the whole command."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ensemble_jax import cli, subsets
from ensemble_jax import io as eio
from ensemble_jax.analysis import attribution as A
from ensemble_jax.analysis.analyze import analyze, describe
from ensemble_jax.models.heatmap_net import ModelConfig
from ensemble_jax.sweep import SweepConfig, make_plan, run_sweep
from ensemble_jax.training.config import ExecConfig, TrainConfig

FR = (0.1, 0.3, 0.5, 0.7, 0.9)


def _config(plan, masks, fracs, roles=None):
    layout = {"member_seed": list(range(len(fracs))), "member_fraction": list(fracs)}
    if roles is not None:
        layout["member_role"] = roles
    return {"sweep": {"plan": plan}, "layout": layout}


def _values(rng, masks, fracs, T, planted=None):
    """pixel error per member and test frame: subset-size effect + member noise (+ planted
    frames that raise every test error); the other metrics are smooth functions of it."""
    base = 2.0 - np.asarray(fracs)[:, None] + 0.15 * rng.standard_normal((len(fracs), T))
    if planted is not None:
        base += 0.25 * (masks[:, planted] > 0).sum(1, keepdims=True)
    base = base.astype(np.float32)
    return {"pixel_error": base, "gt_confidence": np.exp(-base).astype(np.float32),
            "gt_probability": (0.5 * np.exp(-base)).astype(np.float32)}


def _section(plan, masks, fracs, T=12, planted=None, roles=None, seed=0, **kw):
    rng = np.random.default_rng(seed)
    M, n = masks.shape
    v_te = _values(rng, masks, fracs, T, planted)
    v_tr = _values(rng, masks, fracs, n, planted)
    return A.attribution_section(_config(plan, masks, fracs, roles), masks.astype(np.int32),
                                 np.arange(M), v_te, v_tr, [f"tr{i}" for i in range(n)],
                                 [f"te{t}" for t in range(T)], log=lambda m: None, **kw)


def test_nested_null_is_stratified_and_not_resolved():
    masks = subsets.nested_subsets(40, FR, 6, 0)
    fracs = np.tile(FR, 6)
    arrays, info = _section("nested", masks, fracs)
    assert info["estimator"] == "stratified" and len(info["strata"]) == 5
    assert not info["resolved"] and info["n_frames_resolved"] == 0
    assert "needs about" in info["not_resolved"]
    # the subset-size effect (1 px over the fractions) does not leak into the frame effects
    fe = arrays["frame_pixel_error_effect"]
    assert abs(np.nanmean(fe)) < 3 * np.nanstd(fe) / np.sqrt(np.isfinite(fe).sum())
    lines = "\n".join(A.describe(info))
    assert "not resolved" in lines and "stratified" in lines


def test_planted_frames_are_findings_on_banzhaf():
    masks = subsets.banzhaf_subsets(30, 160, seed=1)
    arrays, info = _section("banzhaf", masks, np.full(160, 0.5), planted=[3, 7])
    assert info["estimator"] == "banzhaf" and info["resolved"]
    found = {r["frame"] for r in info["harmful_frames"]}
    assert found == {"tr3", "tr7"}
    assert all(r["q"] < 0.05 and r["effect"] > 0.15 for r in info["harmful_frames"])


def test_bootstrap_data_oob_and_validation_lds():
    M, V, n = 80, 24, 25
    est = subsets.bootstrap_subsets(n, M, 0)
    val = subsets.bootstrap_subsets(n, V, 9)
    masks = np.concatenate([est, val])
    roles = ["estimation"] * M + ["validation"] * V
    arrays, info = _section("bootstrap", masks, np.ones(M + V), planted=[0, 1, 2],
                            roles=roles, T=8)
    assert list(arrays["members"]) == list(range(M))            # validation held out
    assert list(arrays["validation_members"]) == list(range(M, M + V))
    assert "data_oob" in info and len(info["data_oob"]["top_frames"]) > 0
    lds = info["lds"]["by_metric"]["pixel_error"]
    assert set(lds) >= {"difference_of_means", "ridge", "lasso", "data_oob"}
    # planted frames drive the held-out members' errors: the estimators must rank them
    assert lds["difference_of_means"]["lds"] > 0.5
    lo, hi = lds["difference_of_means"]["ci95"]
    assert lo <= lds["difference_of_means"]["lds"] <= hi


@pytest.mark.parametrize("plan,est", [("nested", "difference_of_means"),
                                      ("nested", "banzhaf"), ("random", "data_oob"),
                                      ("kfold", "difference_of_means")])
def test_invalid_estimator_refused(plan, est):
    with pytest.raises(A.PlanError, match=f"not valid for plan '{plan}'"):
        A.check_estimator(plan, est)
    assert A.check_estimator("nested", None) == "stratified"
    assert A.check_estimator("kfold", "auto") == "none"


def test_validation_members_from_the_same_plan():
    cfg = SweepConfig(plan="nested", n_seeds=2, validation_members=7)
    masks, layout = make_plan(cfg, 50)
    assert masks.shape == (10 + 7, 50)
    roles = np.asarray(layout["member_role"])
    assert (roles[:10] == "estimation").all() and (roles[10:] == "validation").all()
    np.testing.assert_allclose(layout["member_fraction"][10:], np.tile(FR, 2)[:7])
    assert (masks[10:].sum(1) == np.round(np.tile(FR, 2)[:7] * 50)).all()
    # fresh subsets: not copies of the estimation members'
    assert not any((masks[10 + v] == masks[v]).all() for v in range(7))
    with pytest.raises(ValueError, match="validation_members"):
        SweepConfig(plan="kfold", validation_members=3)


def test_cli_refuses_unstratified_estimator_on_nested_run(tmp_path, capsys):
    """Refused from config.json alone, before anything is loaded: exit 2, one line."""
    from ensemble_jax import rundir
    run = tmp_path / "run"
    rundir.RunDir(run).create()          # a run directory of this tool (its manifest)
    for name in ("subsets.npy", "data.npz", "params.msgpack", "training.npz", "summary.json"):
        (run / name).write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"sweep": {"plan": "nested"}}))
    rundir.RunDir(run).record("subsets.npy", "data.npz", "params.msgpack", "training.npz",
                              "summary.json", "config.json")   # as the sweep records them
    assert cli.main(["analyze", str(run), "--quiet", "--estimator",
                     "difference_of_means"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid for plan 'nested'" in err[0] and "subset-size" in err[0]


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("attr") / "run"
    run_sweep(run, SweepConfig(synthetic_frames=48, image_size=32, plan="nested",
                               fractions=(0.3, 0.9), n_seeds=2, validation_members=6,
                               threshold_fraction=0.0, seed=2),
              ModelConfig(widths=(8, 16, 32), head_width=16),
              TrainConfig(steps=20, batch_size=8), ExecConfig(strategy="sequential", chunk_size=20),
              progress=False, log=lambda m: None)
    return run


@pytest.mark.slow
def test_analyze_nested_run_with_validation(nested_run, capsys):
    out = analyze(nested_run, progress=False, log=lambda m: None)
    inf = out["influence"]
    assert inf["estimator"] == "stratified" and inf["n_validation_members"] == 6
    z = eio.load_npz(nested_run / "influence.npz")
    assert list(z["members"]) == [0, 1, 2, 3] and list(z["validation_members"]) == list(
        range(4, 10))
    assert "lds" in inf and "by_metric" in inf["lds"]
    assert (nested_run / "lds.png").stat().st_size > 5_000
    text = describe(out)
    assert "estimator stratified" in text and "LDS on 6 held-out members" in text
    assert "most harmful" not in text
    # the CLI refuses the unstratified estimator on this nested run, exit 2, one line
    assert cli.main(["analyze", str(nested_run), "--quiet",
                     "--estimator", "difference_of_means"]) == 2
    err = capsys.readouterr().err
    assert "not valid for plan 'nested'" in err and "subset-size" in err
    cfg = json.loads((nested_run / "config.json").read_text())
    assert cfg["sweep"]["validation_members"] == 6
