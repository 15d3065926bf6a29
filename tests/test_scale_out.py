"""Scale-out (issue 5): sharding over a device mesh, multi-process, waves, and checkpoints
that move between device counts. Runs that need several devices run in a subprocess with
`--xla_force_host_platform_device_count` set before jax starts."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from ensemble_jax import EnsembleTrainer, TrainConfig
from ensemble_jax.subsets import random_subsets
from ensemble_jax.training import waves

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("scale_out_worker.py")
sys.path.insert(0, str(WORKER.parent))
import scale_out_worker as W  # noqa: E402
from child_env import child_env  # noqa: E402


def _env(n_devices: int | None) -> dict:
    return child_env(n_devices, JAX_PLATFORMS="cpu")


def _run(args, n_devices=None, timeout=900):
    proc = subprocess.run([sys.executable, *map(str, args)], env=_env(n_devices), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-30))


# ------------------------------------------------------------------------- plans
def test_wave_plan():
    p = waves.plan_waves(16, members_per_wave=4)
    assert p.waves == ((0, 4), (4, 8), (8, 12), (12, 16))
    assert "4 waves" in p.describe()
    # 10 members, waves of <= 4 -> 3 even waves, no member lost or repeated
    p = waves.plan_waves(10, members_per_wave=4)
    assert [hi - lo for lo, hi in p.waves] == [4, 4, 2]
    # budget: 8 devices, 100 B per device after frames, 30 B per member -> 3 per device
    p = waves.plan_waves(100, n_devices=8, memory_budget=120, per_member_bytes=30,
                         fixed_bytes=20)
    assert p.members_per_wave <= 24 and p.members_per_wave % 8 == 0
    assert p.waves[-1][1] == 100 and "budget" in p.describe()
    assert waves.plan_waves(5).waves == ((0, 5),)
    with pytest.raises(ValueError, match="cannot hold one member"):
        waves.plan_waves(4, memory_budget=10, per_member_bytes=30)


def test_member_bytes_and_budget_flag():
    from ensemble_jax.cli import _bytes, build_parser
    d = W.data()
    b = waves.estimate_member_bytes(W.SMALL, TrainConfig(batch_size=8), d, measure=False)
    assert 100_000 < b < 50_000_000     # params + 2 Adam moments + AUM + activations
    plan = waves.plan_waves(16, memory_budget=d.images.nbytes + 4 * b, per_member_bytes=b,
                            fixed_bytes=d.images.nbytes)
    assert len(plan.waves) == 4
    assert _bytes("12G") == 12 * 2 ** 30 and _bytes("800MiB") == 800 * 2 ** 20
    args = build_parser().parse_args(["sweep", "--out", "x", "--devices", "2",
                                      "--members-per-wave", "8", "--memory-budget", "1g"])
    assert (args.devices, args.members_per_wave, args.memory_budget) == (2, 8, 2 ** 30)


# ------------------------------------------------------------------- sharded run
@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """16 members sharded over 8 fake CPU devices (subprocess), checkpoint at step 10."""
    out = tmp_path_factory.mktemp("sharded8")
    _run([WORKER, "sharded", out, 16], n_devices=8)
    return out


@pytest.fixture(scope="module")
def single_run():
    d = W.data()
    masks = random_subsets(d.n_frames, 16, 0.5, seed=0)
    res = EnsembleTrainer(W.SMALL, *W.config(strategy="sequential")).fit(d, masks,
                                                                        progress=False)
    return d, masks, res


def test_sharded_8_devices_equals_single_device(sharded_run, single_run):
    info = json.loads((sharded_run / "info.json").read_text())
    assert info["devices"] == 8 and info["local_members"] == 2
    d, _, ref = single_run
    got = np.load(sharded_run / "sharded.npz")
    pred = ref.predict(d.images[:8])
    r = rel(got["params"], W.flat(ref.params))
    print(f"sharded (8 fake devices, unrolled per device) vs one device (sequential): "
          f"relative parameter difference {r:.2e}")
    assert r < 1e-5
    np.testing.assert_allclose(got["losses"], ref.losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["aum_sum"], ref.aum_sum, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["aum_count"], ref.aum_count)
    assert rel(got["keypoints"], pred.keypoints) < 1e-5
    assert rel(got["confidences"], pred.confidences) < 1e-5


def test_checkpoint_saved_on_8_devices_restores_on_1(sharded_run, single_run):
    d, masks, ref = single_run
    resumed = EnsembleTrainer(W.SMALL, *W.config(strategy="sequential")).fit(
        d, masks, progress=False, checkpoint_dir=sharded_run / "ckpt", resume=True)
    assert jax.device_count() == 1
    assert resumed.timing["steps_run"] == 10         # restored step 10, trained 11..20
    assert rel(W.flat(resumed.params), W.flat(ref.params)) < 1e-5
    np.testing.assert_allclose(resumed.losses, ref.losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(resumed.aum_count, ref.aum_count)


# ------------------------------------------------------------------------- waves
def test_four_waves_equal_one_wave(single_run):
    d, masks, ref = single_run
    trainer = EnsembleTrainer(W.SMALL, *W.config(strategy="sequential", checkpoint_every=0))
    plan = waves.plan_waves(16, members_per_wave=4)
    assert len(plan.waves) == 4
    res = waves.fit_waves(trainer, d, masks, plan, progress=False)
    np.testing.assert_array_equal(W.flat(res.params), W.flat(ref.params))
    np.testing.assert_array_equal(res.losses, ref.losses)
    np.testing.assert_array_equal(res.aum_sum, ref.aum_sum)
    np.testing.assert_array_equal(res.alive, ref.alive)
    np.testing.assert_array_equal(res.masks, ref.masks)
    assert len(res.timing["waves"]) == 4


# --------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SWEEP = ["-m", "ensemble_jax.cli", "sweep", "--smoke", "--frames", "40", "--image-size", "32",
         "--steps", "4", "--chunk-size", "2", "--plan", "random", "--members", "4",
         "--fraction", "0.5", "--strategy", "sequential", "--quiet"]


def _compare_run_dirs(a: Path, b: Path, rtol=1e-5) -> None:
    for name in ("training.npz", "predictions.npz"):
        za, zb = np.load(a / name), np.load(b / name)
        assert sorted(za.files) == sorted(zb.files), name
        for k in za.files:
            if za[k].dtype.kind in "fc":
                np.testing.assert_allclose(za[k], zb[k], rtol=rtol, atol=1e-4,
                                           err_msg=f"{name}:{k}")
            else:
                np.testing.assert_array_equal(za[k], zb[k], err_msg=f"{name}:{k}")
    np.testing.assert_array_equal(np.load(a / "subsets.npy"), np.load(b / "subsets.npy"))
    assert (a / "params.msgpack").stat().st_size == (b / "params.msgpack").stat().st_size


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """Two processes on 127.0.0.1 (jax.distributed + gloo CPU collectives) run one sweep
    together: each trains 2 of the 4 members; process 0 writes the run directory."""
    assert jax.config.jax_cpu_collectives_implementation == "gloo"
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, *SWEEP, "--out", tmp_path / "two", "--coordinator",
         f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        env=_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=1500) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-5000:]
    assert "on 2 device(s)" in outs[0][1]
    _run([*SWEEP, "--out", tmp_path / "one"], n_devices=1)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["scale_out"]["processes"] == 2 and summary["scale_out"]["devices"] == 2
    _compare_run_dirs(tmp_path / "two", tmp_path / "one")


@pytest.mark.slow
def test_sweep_in_waves_on_8_devices_equals_plain_sweep(tmp_path):
    """The CLI end to end: 4 waves over 8 fake devices (13 members: padding) vs one wave
    on one device."""
    args = [a if a != "4" or i != SWEEP.index("--members") + 1 else "13"
            for i, a in enumerate(SWEEP)]
    _run([*args, "--out", tmp_path / "waves", "--members-per-wave", "4"], n_devices=8)
    _run([*args, "--out", tmp_path / "plain", "--devices", "1"], n_devices=8)
    summary = json.loads((tmp_path / "waves" / "summary.json").read_text())
    assert len(summary["scale_out"]["waves"]) == 4 and summary["scale_out"]["devices"] == 8
    _compare_run_dirs(tmp_path / "waves", tmp_path / "plain")


# slow: test_accelerator_paths::test_every_strategy_equals_the_specification runs
# vmap_matmul sharded over two devices against step.make_train in the default suite
@pytest.mark.slow
def test_vmap_matmul_sharded_matches_single_device_loop(tmp_path):
    """The 'vmap_matmul' program (its own network form) on 2 devices = the loop on one."""
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(WORKER.parent)!r})
import scale_out_worker as W
from ensemble_jax import EnsembleTrainer
from ensemble_jax.subsets import random_subsets
from ensemble_jax.training import sharding
d = W.data()
masks = random_subsets(d.n_frames, 4, 0.5, seed=0)
res = EnsembleTrainer(W.SMALL, *W.config(strategy="vmap_matmul", checkpoint_every=0)).fit(
    d, masks, progress=False, mesh=sharding.make_mesh())
np.save({str(tmp_path / "p.npy")!r}, W.flat(res.params))
print(res.strategy, sharding.n_shards(sharding.make_mesh()))
"""
    proc = _run(["-c", code], n_devices=2)
    assert proc.stdout.split()[-2:] == ["vmap_matmul", "2"]
    d = W.data()
    masks = random_subsets(d.n_frames, 4, 0.5, seed=0)
    ref = EnsembleTrainer(W.SMALL, *W.config(strategy="sequential", checkpoint_every=0)).fit(
        d, masks, progress=False)
    assert rel(np.load(tmp_path / "p.npy"), W.flat(ref.params)) < 1e-4
