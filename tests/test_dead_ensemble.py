"""Issue 33, points 3 and 4: a member that learned nothing is failed like a diverged one;
a sweep whose members all failed is an error that writes no result; `analyze` leaves failed
members out; `predict` and `suggest` verify the run's checksums before writing anything."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ensemble_jax import cli, rundir
from ensemble_jax import io as eio
from ensemble_jax.training import health
from ensemble_jax.training.config import ExecConfig, TrainConfig

SIZE = 32
# The dead-ensemble repro of issue 33 (openfield at 32 px, --lr 20 --schedule constant),
# on synthetic scenes at the smallest size that still reproduces it
DEAD = ["--frames", "40", "--image-size", str(SIZE), "--plan", "random", "--members", "2",
        "--fraction", "0.5", "--steps", "20", "--widths", "8,16", "--lr", "20",
        "--schedule", "constant", "--strategy", "sequential", "--quiet"]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower()]


# ------------------------------------------------------------ every member learned nothing
def test_dead_ensemble_sweep_is_an_error_and_writes_no_result(tmp_path, video, capsys):
    out = tmp_path / "dead"
    assert cli.main(["sweep", "--out", str(out), *DEAD]) == 2
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("ensemble-jax sweep: error: every member failed (members 0, 1 "
                               "learned nothing (e.g. member 0: its highest confidence"), lines[0]
    assert "no result was written" in lines[0]
    # nothing that looks like a result: no summary, parameters, predictions or CSVs
    for name in ("summary.json", "params.msgpack", "predictions.npz", "test-predictions",
                 "learning_curve.png"):
        assert not (out / name).exists(), name
    # what is kept, for inspection: the training record (losses, why each member failed)
    record = eio.load_npz(out / "training.npz")
    assert not record["alive"].any()
    assert all(str(r).startswith("learned nothing") for r in record["failed_reason"])
    # the readers say the same in one line, and write nothing
    for argv in (["analyze", str(out)],
                 ["predict", str(out), "--video", str(video), "--out", str(tmp_path / "p")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert len(_error_lines(err)) == 1 and "every member failed" in err, err
    assert not (tmp_path / "p").exists()
    assert not (out / "analysis.json").exists()


# ------------------------------------------------------------ some members learned nothing
def test_learned_nothing_rules():
    m, n, k = 4, 6, 3
    conf = np.full((m, n, k), 0.02, np.float32)       # an early healthy member: peaks ~0.02
    conf[1] = 0.0                                     # exploded: confidence 0 everywhere
    conf[2, 3, 1] = np.nan                            # a non-finite prediction
    losses = np.linspace(1.0, 0.5, 10)[:, None].repeat(m, 1).astype(np.float32)
    losses[1:, 3] = 2.0                               # never below its first value
    why = health.learned_nothing([conf[:, :4], conf[:, 4:]], losses)
    assert why[0] == ""
    assert why[1].startswith("learned nothing (its highest confidence") and "0 < 0.001" in why[1]
    assert why[2].startswith("learned nothing (non-finite confidence on 1 of 18")
    assert why[3].startswith("learned nothing (its training loss never went below its first")
    # too few steps to judge the loss; NaN after divergence is ignored
    assert health.learned_nothing([conf[:1]], losses[:3, :1] * 0 + 1) == [""]
    short = np.full((20, 1), np.nan, np.float32)
    short[:6, 0] = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    assert health.learned_nothing([conf[:1]], short) == [""]


def _result(alive, diverged_at, failed_reason=None):
    @dataclasses.dataclass
    class R:   # the fields of EnsembleResult that health reads
        alive: np.ndarray
        diverged_at: np.ndarray
        losses: np.ndarray
        failed_reason: object = None
    m = len(alive)
    return R(np.array(alive), np.array(diverged_at), np.ones((3, m), np.float32), failed_reason)


def test_failure_reasons_mark_failed_and_old_runs():
    from ensemble_jax.training.result import Predictions
    r = _result([True, False, True, True], [-1, 7, -1, -1])
    conf = np.full((4, 5, 2), 0.3, np.float32)
    conf[2] = 0.0
    preds = {"train": Predictions(np.zeros((4, 5, 2, 2)), conf, None)}
    reasons = health.failure_reasons(r, preds, unlabeled=[3])
    assert reasons[0] == "" and reasons[1] == "diverged at step 7"
    assert reasons[2].startswith("learned nothing") and reasons[3] == health.NO_LABELS
    marked = health.mark_failed(r, reasons)
    assert marked.alive.tolist() == [True, False, False, False]
    assert [health.reason(marked, i) for i in range(4)] == reasons
    assert "member 2 learned nothing" in health.describe_failed(marked)
    # a run from before failed_reason: the reason comes from diverged_at
    old = _result([True, False, False], [-1, 4, -1])
    assert [health.reason(old, i) for i in range(3)] == ["", "diverged at step 4",
                                                         health.NO_LABELS]


def test_partially_dead_sweep_warns_and_analyze_leaves_it_out(tmp_path):
    """Member 1 at 10^4 x the learning rate (the repro's lr 20) learns nothing: the sweep
    finishes with a warning naming it, the summary counts the alive members, and `analyze`
    computes AUM and suspects from members 0 and 2 only (no absurd AUM)."""
    from ensemble_jax.analysis.analyze import analyze
    from ensemble_jax.models.heatmap_net import ModelConfig
    from ensemble_jax.sweep import SweepConfig, run_sweep
    cfg = SweepConfig(synthetic_frames=40, image_size=SIZE, plan="random", n_members=3,
                      fraction=0.5, seed=0)
    mc = ModelConfig(widths=(8, 16), head_width=8)
    tc = TrainConfig(steps=20, batch_size=8, schedule="constant")
    logs = []
    summary = run_sweep(tmp_path / "r", cfg, mc, tc,
                        ExecConfig(chunk_size=10, strategy="sequential"), progress=False,
                        log=logs.append, lr_scale=[1.0, 1e4, 1.0])
    assert summary["alive_members"] == 2
    assert [r["member"] for r in summary["failed_members"]] == [1]
    assert summary["failed_members"][0]["reason"].startswith("learned nothing")
    assert summary["diverged_members"] == []
    assert any(w.startswith("1 of 3 members learned nothing") for w in summary["warnings"])
    assert any(m.startswith("warning: member 1 learned nothing") for m in logs), logs
    assert np.isfinite(summary["ensemble_test"]["mean_px"])
    assert list(rundir.load(tmp_path / "r").result.alive) == [True, False, True]
    logs.clear()
    out = analyze(tmp_path / "r", progress=False, log=logs.append, figures_enabled=False)
    assert out["alive_members"] == [0, 2]
    assert out["failed_members"][0]["member"] == 1
    assert any("warning: member 1 learned nothing" in m for m in logs), logs
    aum = [row["aum"] for row in out["aum"]["top_flagged"] if row["aum"] is not None]
    assert aum and all(abs(a) < 100 for a in aum), aum
    assert out["aum"]["members"][1]["rule"] == "failed: excluded"


# ------------------------------------------------------------ predict / suggest checksums
def _untrained(out: Path, key: int, alive=None) -> Path:
    import jax
    from ensemble_jax.data.synthetic import synthetic_dataset
    from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
    out.mkdir(parents=True)
    data = synthetic_dataset(12, image_size=SIZE, seed=1)
    train, test = data.split(0.25, seed=0)
    mc = ModelConfig(widths=(8, 16), head_width=8)
    model = HeatmapNet(mc, data.n_keypoints)
    # shapes only (a trace, no compile), then random values: cheap stand-in parameters
    keys = jax.random.split(jax.random.key(key), 2)
    shapes = jax.eval_shape(jax.vmap(lambda k: model.init(k, train.images[:1])), keys)
    rng = np.random.default_rng(key)
    params = jax.tree_util.tree_map(
        lambda x: (0.1 * rng.standard_normal(x.shape)).astype(x.dtype), shapes)
    return rundir.write_untrained(out, train, test, mc, TrainConfig(steps=1), params,
                                  alive=alive)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from ensemble_jax.video import reader
    d = tmp_path_factory.mktemp("video")
    frames = (np.full((48, 64, 3), 20 * i, np.uint8) for i in range(6))
    return reader.write_video(d / "clip.mp4", frames, fps=25)


def test_foreign_params_are_refused_by_predict_and_suggest(tmp_path, video, capsys):
    run = _untrained(tmp_path / "run", key=3)
    other = _untrained(tmp_path / "other", key=4)
    shutil.copyfile(other / "params.msgpack", run / "params.msgpack")   # another run's
    calls = {"predict": ["predict", str(run), "--video", str(video), "--out",
                         str(tmp_path / "pred"), "--quiet"],
             "suggest": ["suggest", str(run), "--video", str(video), "--budget", "2",
                         "--by", "uniform", "--out", str(tmp_path / "sug"), "--quiet"]}
    for name, argv in calls.items():
        assert cli.main(argv) == 2, name
        err = capsys.readouterr().err
        lines = _error_lines(err)
        assert len(lines) == 1, err
        assert f"ensemble-jax {name}: error: {run / 'params.msgpack'}: parameters do not " \
               f"match this run" in lines[0], lines[0]
    # nothing written: no --out, no predictions in the run directory
    assert not (tmp_path / "pred").exists() and not (tmp_path / "sug").exists()
    assert not (run / "video-predictions").exists()
    # a run directory without the manifest is refused the same way
    (other / rundir.MANIFEST).unlink()
    assert cli.main(["predict", str(other), "--video", str(video), "--out",
                     str(tmp_path / "pred2"), "--quiet"]) == 2
    assert "ensemble-jax-run.json is missing" in capsys.readouterr().err
    assert not (tmp_path / "pred2").exists()


def test_old_run_member_that_learned_nothing_is_left_out_by_predict(tmp_path, video, capsys):
    """A run written before failed_reason existed: a member whose stored predictions have
    confidence 0 everywhere is failed when the run is read; predict names it and goes on
    with the others; with none left it is a one-line error."""
    from ensemble_jax.video.predict import load_run
    run = _untrained(tmp_path / "run", key=5)
    n_tr, n_te = 9, 3
    conf_tr = np.full((2, n_tr, 4), 0.4, np.float32)
    conf_te = np.full((2, n_te, 4), 0.4, np.float32)
    conf_tr[1] = conf_te[1] = 0.0
    eio.save_npz(run / "predictions.npz", train_confidences=conf_tr, test_confidences=conf_te)
    result = load_run(run)
    assert list(result.alive) == [True, False]
    assert health.reason(result, 1).startswith("learned nothing")
    assert cli.main(["predict", str(run), "--video", str(video), "--out",
                     str(tmp_path / "pred"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: member 1 learned nothing" in err and "left out" in err, err
    meta = json.loads((tmp_path / "pred" / "clip" / "predict.json").read_text())
    assert meta["members"] == [0]
    conf_tr[0] = conf_te[0] = 0.0
    eio.save_npz(run / "predictions.npz", train_confidences=conf_tr, test_confidences=conf_te)
    assert cli.main(["predict", str(run), "--video", str(video), "--out",
                     str(tmp_path / "pred3"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and "every member failed (members 0, 1 learned nothing (e.g. " \
        "member 0: its highest confidence" in err, err
    assert not (tmp_path / "pred3").exists()
