"""Reliability: the run-directory lock, damaged and foreign checkpoints, and a diverged
member end to end (sweep -> summary.json -> analyze)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from ensemble_jax import (EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig, cli,
                          synthetic_dataset)
from ensemble_jax import io as eio
from ensemble_jax import runlock
from ensemble_jax.analysis.analyze import analyze
from ensemble_jax.subsets import random_subsets
from ensemble_jax.sweep import SweepConfig, run_sweep
from ensemble_jax.training.checkpoint import Checkpointer

SMALL = ModelConfig(widths=(8, 16, 32), head_width=16)
# The trainer tests' settings (same compiled programs): 20 steps, batch 8, sequential.
TC = (TrainConfig(steps=20, batch_size=8),
      ExecConfig(chunk_size=10, checkpoint_every=10, strategy="sequential"))


def flat(params):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(48, image_size=32, seed=3)


# ------------------------------------------------------------------------------- lock
@pytest.fixture
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield p
    p.kill()
    p.wait()


def _write_lock(run: Path, pid: int, host: str | None = None, start=None) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / ".lock").write_text(json.dumps({
        "pid": pid, "host": host or socket.gethostname(), "command": "sweep",
        "start": start, "since": time.time()}))


def test_lock_is_exclusive_and_released(tmp_path):
    with runlock.locked(tmp_path, "sweep") as path:
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(runlock.RunLockedError, match=rf"in use by pid {os.getpid()} "):
            runlock.acquire(tmp_path, "analyze")
    assert not path.exists()
    assert not list(tmp_path.iterdir())          # no temporaries left either


def test_second_sweep_on_a_locked_run_directory_is_refused(tmp_path, sleeper, capsys):
    run = tmp_path / "run"
    _write_lock(run, sleeper.pid)
    rc = cli.main(["sweep", "--smoke", "--out", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"run directory is in use by pid {sleeper.pid} on host" in err
    assert "cannot write the same run directory at once" in err
    assert (run / ".lock").exists() and not (run / "config.json").exists()
    with pytest.raises(runlock.RunLockedError, match=rf"in use by pid {sleeper.pid}"):
        runlock.acquire(run, "analyze")


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, sleeper):
    sleeper.kill()
    sleeper.wait()                         # its pid is now dead: the lock is stale
    _write_lock(tmp_path, sleeper.pid)
    (tmp_path / ".data.npz.abc123.tmp").write_bytes(b"half written")
    logs = []
    with runlock.locked(tmp_path, "sweep", warn=logs.append):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        assert eio.remove_temporaries(tmp_path) == [tmp_path / ".data.npz.abc123.tmp"]
    assert any(f"taking over a stale lock of pid {sleeper.pid}" in m for m in logs)
    # a reused pid (alive, but started at another time) is stale as well
    _write_lock(tmp_path, os.getpid(), start=-5)
    logs.clear()
    with runlock.locked(tmp_path, "analyze", warn=logs.append):
        pass
    assert any("stale lock" in m for m in logs)


def test_lock_of_another_host_is_refused(tmp_path):
    _write_lock(tmp_path, 1234, host="some-other-node")
    with pytest.raises(runlock.RunLockedError,
                       match=r"in use by pid 1234 on host some-other-node .*delete .*\.lock"):
        runlock.acquire(tmp_path, "sweep")


# ------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def straight(data):
    masks = random_subsets(data.n_frames, 3, 0.5, seed=3)   # test_trainer's shapes
    return masks, EnsembleTrainer(SMALL, *TC).fit(data, masks, progress=False)


def _ckpt_run(data, masks, d: Path):
    """Checkpoints at steps 10 and 20 in `d`, as a killed run would leave them."""
    EnsembleTrainer(SMALL, *TC).fit(data, masks, progress=False, checkpoint_dir=d)
    assert sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) == [10, 20]


def _data_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d")


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(data, straight, tmp_path,
                                                              damage):
    masks, ref = straight
    d = tmp_path / "ckpt"
    _ckpt_run(data, masks, d)
    files = _data_files(d / "20")
    assert files
    for f in files:
        if damage == "delete":
            f.unlink()
        else:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    logs = []
    resumed = EnsembleTrainer(SMALL, *TC).fit(data, masks, progress=False, checkpoint_dir=d,
                                             resume=True, log=logs.append)
    assert any("checkpoint step 20" in m and "damaged" in m for m in logs), logs
    assert any("resumed from step 10" in m for m in logs), logs
    np.testing.assert_array_equal(flat(resumed.params), flat(ref.params))
    np.testing.assert_array_equal(resumed.losses, ref.losses)
    # the damaged step was replaced by a good one
    assert Checkpointer(d, resume=True).latest_step() == 20


def test_no_restorable_checkpoint_is_a_clear_error(data, straight, tmp_path):
    masks, _ = straight
    d = tmp_path / "ckpt"
    _ckpt_run(data, masks, d)
    for step in ("10", "20"):
        for f in _data_files(d / step):
            f.unlink()
    with pytest.raises(ValueError, match=r"no checkpoint could be restored \(step 20: .*; "
                                         r"step 10: .*delete the directory"):
        EnsembleTrainer(SMALL, *TC).fit(data, masks, progress=False, checkpoint_dir=d,
                                       resume=True)


def test_killed_checkpoint_write_is_never_restored(data, straight, tmp_path):
    """A save killed before orbax's final rename leaves `<step>.orbax-checkpoint-tmp-*`:
    it is not a step, and it is cleaned up on the next open."""
    masks, ref = straight
    d = tmp_path / "ckpt"
    _ckpt_run(data, masks, d)
    import shutil
    shutil.copytree(d / "20", d / "30.orbax-checkpoint-tmp-1234567890")
    shutil.rmtree(d / "20")
    logs = []
    resumed = EnsembleTrainer(SMALL, *TC).fit(data, masks, progress=False, checkpoint_dir=d,
                                             resume=True, log=logs.append)
    assert any("resumed from step 10" in m for m in logs), logs
    np.testing.assert_array_equal(flat(resumed.params), flat(ref.params))
    assert not list(d.glob("*orbax-checkpoint-tmp*"))


# ----------------------------------------------------------------- diverged member
def test_diverged_member_in_a_sweep(tmp_path):
    """One member with a huge learning rate: the others are bitwise what they are without
    it; summary.json records it; consensus and analyze exclude it, with warnings."""
    # 48 training frames, 3 members of 24: test_trainer's shapes (cached programs)
    cfg = SweepConfig(synthetic_frames=60, image_size=32, plan="random", n_members=3,
                      fraction=0.5, seed=2)
    tc = (TrainConfig(steps=20, batch_size=8), ExecConfig(chunk_size=10, strategy="sequential"))
    base = run_sweep(tmp_path / "base", cfg, SMALL, *tc, progress=False, log=lambda m: None)
    logs = []
    summary = run_sweep(tmp_path / "div", cfg, SMALL, *tc, progress=False, log=logs.append,
                        lr_scale=[1.0, 1e9, 1.0])
    assert [d["member"] for d in summary["diverged_members"]] == [1]
    assert 0 <= summary["diverged_members"][0]["step"] < 20
    assert any("warning: member 1 diverged" in m and "excluded from consensus" in m
               for m in logs)
    on_disk = json.loads((tmp_path / "div" / "summary.json").read_text())
    assert on_disk["diverged_members"] == summary["diverged_members"]
    for row in on_disk["per_fraction"].values():
        assert 1 not in row["members"]
    # the other members are untouched
    from ensemble_jax import rundir
    a, b = rundir.load(tmp_path / "base").result, rundir.load(tmp_path / "div").result
    assert list(b.alive) == [True, False, True] and a.alive.all()
    for m in (0, 2):
        np.testing.assert_array_equal(flat(b.member_params(m)), flat(a.member_params(m)))
        np.testing.assert_array_equal(b.aum_sum[m], a.aum_sum[m])
    ta = eio.load_npz(tmp_path / "base" / "training.npz")
    tb = eio.load_npz(tmp_path / "div" / "training.npz")
    np.testing.assert_array_equal(ta["losses"][:, [0, 2]], tb["losses"][:, [0, 2]])
    # the consensus of the diverged run is the consensus of the two healthy members
    pa = eio.load_npz(tmp_path / "base" / "predictions.npz")
    pb = eio.load_npz(tmp_path / "div" / "predictions.npz")
    np.testing.assert_array_equal(pa["test_keypoints"][[0, 2]], pb["test_keypoints"][[0, 2]])
    assert np.isfinite(summary["ensemble_test"]["mean_px"])
    # analyze: excluded from AUM, influence, MPE and spread, with a warning
    logs.clear()
    out = analyze(tmp_path / "div", progress=False, log=logs.append, figures_enabled=False)
    assert any("warning: member 1 diverged" in m and "excluded" in m for m in logs)
    assert out["alive_members"] == [0, 2] and out["diverged_members"] == [1]
    z = eio.load_npz(tmp_path / "div" / "influence.npz")
    assert list(z["members"]) == [0, 2]
