"""Accelerator readiness (issue 22), on the CPU: the paths only a GPU runs, forced here
(`training/backend.py`), must compute what the CPU paths compute; `auto` survives a
candidate that runs out of memory; a restore that runs out of memory deletes nothing; the
probe is a small share of training and compiles no program twice; the wave budget honours
the memory in use; deterministic mode repeats bit for bit; device_check.sh runs without
site hooks. Also issue 14 item 8: a failed checkpoint write is one line, not hundreds."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_twins as T
from child_env import child_env
from ensemble_jax import logs as ej_logs
from ensemble_jax import EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig, synthetic_dataset
from ensemble_jax.subsets import random_subsets
from ensemble_jax.training import backend, determinism, errors, strategies, waves
from ensemble_jax.training import trainer as trainer_mod
from ensemble_jax.training.checkpoint import (Checkpointer, CheckpointRestoreError,
                                              CheckpointWriteError, is_damage)

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("accelerator_paths_worker.py")
sys.path.insert(0, str(WORKER.parent))
import accelerator_paths_worker as W  # noqa: E402

TINY = W.TINY


_env = child_env    # N fake CPU devices, this checkout on the path


# ------------------------------------------------------------- forced accelerator paths
def test_backend_override(monkeypatch):
    assert jax.default_backend() == "cpu"
    monkeypatch.delenv(backend.ENV, raising=False)
    assert backend.path_backend() == "cpu" and not backend.is_accelerator()
    with backend.accelerator_paths():
        assert backend.path_backend() == "gpu"
        assert strategies.default_steps_per_program(backend.path_backend(), 50) == 50
        with backend.accelerator_paths(False):
            assert backend.path_backend() == "cpu"
    monkeypatch.setenv(backend.ENV, "1")
    assert backend.is_accelerator()


@pytest.fixture(scope="module")
def forced(tmp_path_factory):
    """The worker's report: every strategy on the rolled-loop path, on one and on two
    (fake) devices, against the CPU path; `auto` at the default step count."""
    out = tmp_path_factory.mktemp("accelerator") / "report.json"
    proc = subprocess.run([sys.executable, str(WORKER), str(out)], cwd=ROOT,
                          env=_env(2, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("where", ["single", "sharded"])
@pytest.mark.parametrize("name", W.STRATEGIES)
def test_every_strategy_on_the_accelerator_path_equals_the_cpu_path(forced, where, name):
    assert forced["devices"] == 2
    r = forced[where][name]
    assert r["strategy"] == name
    # float32 reassociation inside the loop body only (measured: <= 1.1e-8 params)
    assert r["params"] < 1e-6, r
    assert r["losses"] < 1e-6, r
    assert r["aum_sum"] < 1e-5 and r["aum_count_equal"], r
    assert r["losses_after_run_nan"]       # steps never run are not reported as run
    # one rolled program of 50 steps ran the 6-step chunk: compiled once, nothing else
    assert r["compiles"] == 1, r


def test_every_strategy_equals_the_specification(forced):
    """step.make_train vmapped over members is the whole ensemble: every strategy on both
    paths, on one device and sharded over two (4 members: 2 per device), computes it."""
    spec = forced["spec"]
    assert len(spec) == 2 * 2 * len(W.STRATEGIES)
    for where, r in spec.items():
        assert r["params"] < 1e-5 and r["losses"] < 1e-5, (where, r)
        assert r["aum_sum"] < 1e-4 and r["aum_count_equal"], (where, r)


def test_auto_probe_is_a_small_share_and_compiles_no_program_twice(forced):
    a = forced["auto"]
    assert a["candidates"] == ["vmap", "vmap_matmul", "unrolled", "sequential"]
    assert a["train_steps"] == TrainConfig().steps
    assert 0 < a["probe_steps"] <= 0.1 * a["train_steps"], a
    # The probe ran the programs the strategy runs above compiled (one per strategy and
    # layout, plus the CPU reference's): checkpoints every 30 steps against 50-step
    # chunks, a 70-step stop and a resume compiled nothing more.
    assert a["compiles_first_fit"] == 0 and a["compiles_resume"] == 0, a
    assert forced["compiles_total"] == 1 + 2 * len(W.STRATEGIES)
    assert a["resumed_steps"] == 30
    assert any("resumed from step 70" in m for m in a["log"]), a["log"]


class _CountingRunner(strategies.Runner):
    """Records the step counts `measure` asks for; runs nothing."""

    def __init__(self, spp, paths):
        super().__init__(strategies.get("sequential"), None, spp, 1, 1, backend=paths)
        self.name, self.calls = "fake", []

    def __call__(self, states, inputs, images, keypoints, start, n_steps):
        self.calls.append(n_steps)
        return states, np.zeros((n_steps, 1), np.float32)


def test_measure_runs_the_steps_asked_for():
    # rolled (accelerators): 1 warm-up step compiles the program, then exactly the timed
    # steps (before: a whole 50-step program twice, whatever was asked)
    r = _CountingRunner(50, "gpu")
    got = strategies.measure(r, jnp.zeros(1), None, None, None, probe_steps=10)
    assert r.calls == [1, 10] and got["steps"] == 11
    # straight-line (CPU): whole programs of the length training runs
    r = _CountingRunner(1, "cpu")
    assert strategies.measure(r, jnp.zeros(1), None, None, None)["steps"] == 4
    assert r.calls == [1, 3]
    r = _CountingRunner(4, "cpu")
    strategies.measure(r, jnp.zeros(1), None, None, None, probe_steps=3)
    assert r.calls == [4, 4]


def test_probe_budget_at_the_defaults():
    tc = TrainConfig()
    n = len(strategies.candidates("gpu", 16))
    timed = strategies.timed_probe_steps(tc.steps, n)
    worst = 2 * n * (1 + timed)                  # every candidate measured twice
    assert timed == 3 and worst <= 0.1 * tc.steps
    assert strategies.timed_probe_steps(60, 4) == 1   # a short run: as little as can be


# ------------------------------------------------------------------ auto survives OOM
@pytest.fixture
def tiny_data():
    data = synthetic_dataset(16, image_size=16, seed=1)
    return data, random_subsets(data.n_frames, 3, 0.5, seed=1)


OOM = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.31GiB."


def _failing_build(monkeypatch, failing, when):
    """The runners of the strategies in `failing` raise when their program is built
    (when='build') or when it runs (when='run'); the others are untouched (and keep the
    programs they compiled before)."""
    original = strategies.Runner._program

    def program(self, length):
        if self.name in failing:
            if when == "build":
                raise jax.errors.JaxRuntimeError(OOM)

            def run(*args):
                raise jax.errors.JaxRuntimeError(OOM + "\n" + "allocator detail\n" * 50)
            return run
        return original(self, length)
    monkeypatch.setattr(strategies.Runner, "_program", program)


@pytest.mark.parametrize("when", ["build", "run"])
def test_auto_skips_a_candidate_that_runs_out_of_memory(tiny_data, monkeypatch, tmp_path,
                                                        when):
    data, masks = tiny_data
    monkeypatch.setenv("ENSEMBLE_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(strategies, "candidates", lambda paths, n: ["vmap_matmul", "sequential"])
    _failing_build(monkeypatch, {"vmap_matmul"}, when)
    setups = []
    original_setup = EnsembleTrainer.setup
    monkeypatch.setattr(EnsembleTrainer, "setup",
                        lambda self, *a, **k: setups.append(original_setup(self, *a, **k))
                        or setups[-1])
    logs = []
    tc = TrainConfig(**W.REPEAT)     # the programs of test_deterministic_training_...
    res = EnsembleTrainer(TINY, tc, W.REPEAT_EXEC).fit(data, masks, progress=False,
                                                       log=logs.append)
    assert res.strategy == "sequential"
    skipped = [m for m in logs if m.startswith("strategy probe vmap_matmul")]
    assert len(skipped) == 1 and "\n" not in skipped[0], logs
    assert "skipped, out of memory" in skipped[0] and "RESOURCE_EXHAUSTED" in skipped[0]
    assert "skipped vmap_matmul" in logs[-1]
    assert np.isfinite(res.losses).all()
    # the same members as a run that never tried vmap_matmul
    ref = EnsembleTrainer(TINY, tc, ExecConfig(chunk_size=4, strategy="sequential")).fit(
        data, masks, progress=False)
    np.testing.assert_array_equal(W.flat(res.params), W.flat(ref.params))
    # the cache says why vmap_matmul was skipped
    table = json.loads((tmp_path / "strategies.json").read_text())
    (entry,) = table.values()
    assert entry["chosen"] == "sequential" and "vmap_matmul" in entry["failed"]
    assert "RESOURCE_EXHAUSTED" in entry["failed"]["vmap_matmul"]
    # fit dropped the setup's initial states once the probe was done (no third copy)
    assert setups[0].states is None


def test_auto_with_every_candidate_failing_is_one_clear_error(tiny_data, monkeypatch,
                                                              tmp_path):
    data, masks = tiny_data
    monkeypatch.setenv("ENSEMBLE_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(strategies, "candidates", lambda paths, n: ["vmap", "vmap_matmul"])
    _failing_build(monkeypatch, {"vmap", "vmap_matmul"}, "build")
    with pytest.raises(strategies.NoStrategyError,
                       match=r"every candidate failed \(vmap: JaxRuntimeError: RESOURCE_EXH"
                             r".*; vmap_matmul: .*\); lower --batch-size") as e:
        EnsembleTrainer(TINY, TrainConfig(**W.REPEAT), W.REPEAT_EXEC).fit(data, masks,
                                                                          progress=False)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    assert not (tmp_path / "strategies.json").exists()


# ------------------------------------------------------------- restore: damage vs OOM
TREE = {"a": np.arange(3000, dtype=np.float32), "b": {"c": np.ones((10, 10), np.int32)}}


def _two_steps(d: Path) -> Checkpointer:
    c = Checkpointer(d, resume=False)
    c.save(1, TREE)
    c.save(2, jax.tree_util.tree_map(lambda x: x + 1, TREE))
    c.close()
    return Checkpointer(d, resume=True)


def _digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("exc, kind", [
    (jax.errors.JaxRuntimeError(OOM), "ran out of memory"),
    (MemoryError(), "ran out of memory"),
    (RuntimeError("INTERNAL: the driver went away"), "does not show damage"),
])
def test_restore_that_is_not_damage_deletes_nothing(tmp_path, monkeypatch, exc, kind):
    c = _two_steps(tmp_path / "ck")
    before = _digest(tmp_path / "ck")
    original = Checkpointer.restore

    def restore(self, step, like):
        if step == 2:
            raise exc
        return original(self, step, like)
    monkeypatch.setattr(Checkpointer, "restore", restore)
    logs = []
    with pytest.raises(CheckpointRestoreError,
                       match=rf"restoring checkpoint step 2 .*{kind} .*no checkpoint was "
                             rf"deleted") as e, ej_logs.to(logs.append):
        c.restore_latest(TREE)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    assert sorted(c.manager.all_steps()) == [1, 2]
    assert _digest(tmp_path / "ck") == before
    assert not any("deleted" in m for m in logs)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax, late
def test_restore_of_damaged_files_falls_back_and_deletes_them(tmp_path):
    c = _two_steps(tmp_path / "ck")
    data_files = [p for p in (tmp_path / "ck" / "2").rglob("*")
                  if p.is_file() and p.parent.name == "d"]
    assert data_files
    for f in data_files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    logs = []
    with ej_logs.to(logs.append):
        step, tree = c.restore_latest(TREE)
    assert step == 1
    np.testing.assert_array_equal(tree["a"], TREE["a"])
    assert sorted(c.manager.all_steps()) == [1]
    assert any("damaged" in m and "step 2" in m for m in logs), logs


@pytest.mark.parametrize("msg, damage", [
    # tensorstore's words for the damage of tests/test_reliability.py and friends
    ('NOT_FOUND: Error opening "zarr" driver: Error reading "a/.zarray"', True),
    ("OUT_OF_RANGE: Requested byte range [0, 289) is not valid for value of size 144", True),
    ("DATA_LOSS: Error decoding b-tree node", True),
    ("FAILED_PRECONDITION: Truncated Zstd-compressed stream; at byte 0", True),
    ("Structure mismatch: Target path ('b', 'd') not found in metadata_tree", False),
    (OOM, False),
])
def test_damage_classification(msg, damage):
    assert is_damage(ValueError(msg)) is damage
    assert is_damage(FileNotFoundError("_METADATA does not exist"))
    assert not is_damage(MemoryError())
    assert not is_damage(PermissionError(errno.EACCES, "Permission denied"))


def test_resource_error_classification():
    assert errors.is_resource_error(jax.errors.JaxRuntimeError(OOM))
    assert errors.is_resource_error(OSError(errno.ENOSPC, "No space left on device"))
    assert not errors.is_resource_error(ValueError("NOT_FOUND: a/.zarray"))
    long = ValueError('OUT_OF_RANGE: x [tensorstore_spec=\'{"a": 1}\']\nmore\nlines')
    assert errors.one_line(long) == "ValueError: OUT_OF_RANGE: x"


# ------------------------------------------------------ checkpoint write failure (#14.8)
_NOISY_SAVE = r"""
import errno, logging, sys, threading, traceback
import numpy as np
from ensemble_jax.training.checkpoint import Checkpointer, CheckpointWriteError
c = Checkpointer(sys.argv[1], resume=False)
c.save(1, {"a": np.arange(10.0)})

def noisy_save(step, args=None):
    # what orbax does on a full disk: every background thread logs its traceback
    def worker():
        for _ in range(12):
            try:
                raise ValueError("RESOURCE_EXHAUSTED: Failed to write: No space left on device "
                                 "[os_error_code='28']")
            except ValueError:
                logging.getLogger("absl").error("_SignalingThread.run() raised", exc_info=True)
                logging.getLogger("asyncio").error("Task exception was never retrieved",
                                                   exc_info=True)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    raise OSError(errno.ENOSPC, "No space left on device")
c.manager.save = noisy_save
try:
    c.save(2, {"a": np.arange(10.0)})
except CheckpointWriteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def test_a_failed_checkpoint_write_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _NOISY_SAVE, str(tmp_path / "ck")],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert str(tmp_path / "ck") in lines[0]
    assert "could not write step 2: no space left on device" in lines[0]
    assert "the last complete checkpoint is step 1" in lines[0]


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_line(tmp_path):
    """The real thing: a 200 KiB tmpfs (needs root; skipped where mount is refused)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        code = ("import sys, numpy as np\n"
                "from ensemble_jax.training.checkpoint import Checkpointer, CheckpointWriteError\n"
                "c = Checkpointer(sys.argv[1], resume=False)\n"
                "try:\n"
                "    [c.save(s, {'a': np.arange(30000, dtype=np.float32) + s}) for s in range(1, 9)]\n"
                "except CheckpointWriteError as e:\n"
                "    print(f'error: {e}', file=sys.stderr); sys.exit(2)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(mnt / "ck")], env=_env(),
                              capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no space left on device" in lines[0], proc.stderr[-3000:]


# ------------------------------------------------------------------ wave memory budget
class _Device:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


GIB = 2 ** 30


def test_memory_budget_honours_bytes_in_use():
    dev = _Device({"bytes_limit": int(105.75 * GIB), "bytes_in_use": int(98.7 * GIB)})
    free = int(105.75 * GIB) - int(98.7 * GIB)
    assert waves.device_memory_budget(dev) == free
    budget, source, warning = waves.default_memory_budget(dev)
    assert budget == int(free * waves.SAFETY) and warning is None
    assert "free device memory" in source
    # 40 members of 1 GiB: the whole limit would take them in one wave, the free memory
    # (5.64 GiB) in waves of 5
    plan = waves.plan_waves(40, memory_budget=budget, per_member_bytes=GIB,
                            budget_source=source)
    assert plan.members_per_wave == 5 and len(plan.waves) == 8


@pytest.mark.parametrize("stats", [None, {}, {"bytes_in_use": 5}])
def test_no_memory_statistics_on_an_accelerator_warns_and_plans_conservatively(stats):
    with backend.accelerator_paths():
        budget, source, warning = waves.default_memory_budget(_Device(stats))
    assert budget == waves.UNREPORTED_DEFAULT and source == "default"
    assert "reports no memory statistics" in warning and "--memory-budget" in warning
    plan = waves.plan_waves(64, memory_budget=budget, per_member_bytes=GIB // 4,
                            budget_source=source, warning=warning)
    assert len(plan.waves) > 1            # not "all in one wave"
    assert "warning: the device reports no memory statistics" in plan.describe()
    # a CPU plans with the host's memory (issue 33): what the process holds + the
    # available memory x SAFETY, for the whole process
    budget, source, warning = waves.default_memory_budget(_Device(stats))
    assert budget and budget > waves.rss_bytes() and "host memory" in source
    assert warning is None


# ------------------------------------------------------------------------ determinism
def test_duplicate_addends_make_the_scatter_order_free():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 5, 16)                       # a batch with replacement
    vals = (rng.standard_normal((16, 3)) * 10.0 ** rng.integers(-3, 8, (16, 1))
            ).astype(np.float32)
    target = rng.standard_normal((5, 3)).astype(np.float32)
    add = np.asarray(determinism.duplicate_addends(jnp.asarray(idx), jnp.asarray(vals)))
    np.testing.assert_allclose(add, T.scatter_add_once_addends(idx, vals), rtol=1e-6,
                               atol=1e-6 * np.abs(vals).max())
    # at most one non-zero addend per index ...
    for i in np.unique(idx):
        assert np.count_nonzero(np.any(add[idx == i] != 0, axis=1)) <= 1
    # ... so every order of applying them gives the same bits; the raw values do not
    orders = [rng.permutation(16) for _ in range(30)]
    combined = {T.scatter_in_order(target, idx, add, o).tobytes() for o in orders}
    raw = {T.scatter_in_order(target, idx, vals, o).tobytes() for o in orders}
    assert len(combined) == 1 and len(raw) > 1
    # and the jitted scatter equals the combined sums applied in batch order
    got = np.asarray(determinism.scatter_add_once(jnp.asarray(target), jnp.asarray(idx),
                                                  jnp.asarray(vals)))
    np.testing.assert_array_equal(got, T.scatter_in_order(target, idx, add, range(16)))


def test_deterministic_training_repeats_bit_for_bit(tmp_path):
    """Exact where deterministic, tolerance-bounded otherwise; on a GPU the run happens in
    a process with the XLA flag set before its backend starts."""
    if jax.default_backend() == "cpu" or "xla_gpu_deterministic_ops" in os.environ.get(
            "XLA_FLAGS", ""):
        r = W.repeatability()
    else:
        out = tmp_path / "repeat.json"
        proc = subprocess.run(
            [sys.executable, str(WORKER), "repeatability", str(out)], cwd=ROOT,
            env=_env(XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " "
                                + determinism.XLA_FLAG).strip()),
            capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        r = json.loads(out.read_text())
    assert r["deterministic_repeat_identical"], r
    # without deterministic mode a GPU may differ run to run, within float32 tolerance
    assert r["default_repeat_params"] < 1e-4 and r["default_repeat_aum"] < 1e-4, r
    # deterministic mode changes the summation order of duplicate frames, nothing else
    assert r["deterministic_vs_default_params"] < 1e-5, r
    assert r["deterministic_vs_default_aum"] < 1e-5 and r["aum_count_equal"], r
    if r["backend"] == "cpu":
        assert r["default_repeat_identical"]


def test_deterministic_flag_reaches_xla_and_the_config():
    code = ("import os\n"
            "from ensemble_jax.training import determinism as d\n"
            "assert d.request_xla_flags() is None\n"
            "assert d.XLA_FLAG in os.environ['XLA_FLAGS']\n"
            "d.set_highest_precision()\n"
            "import jax, jax.numpy as jnp\n"
            "jnp.ones(3).block_until_ready()\n"   # the backend accepts the flag
            "assert jax.config.jax_default_matmul_precision == 'highest'\n"
            "os.environ['XLA_FLAGS'] = ''\n"
            "print(d.request_xla_flags())\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend already started" in proc.stdout
    from ensemble_jax import cli
    parse = lambda *a: cli.sweep_configs(cli.build_parser().parse_args(["sweep", "--out", "x", *a]))
    assert parse("--deterministic")[2].deterministic is True
    assert parse()[2].deterministic is False


# --------------------------------------------------------------------- device_check.sh
def _site_packages() -> str:
    return str(Path(np.__file__).resolve().parents[1])


def test_env_check_runs_without_site_hooks():
    env = _env(PYTHONPATH=_site_packages())
    # the old pattern fails in these conditions (Python 3.12 always; -S on any version)
    old = subprocess.run([sys.executable, "-S", "-c", "import importlib; importlib.util"],
                         env=env, capture_output=True, text=True)
    assert old.returncode != 0 and "has no attribute 'util'" in old.stderr
    proc = subprocess.run([sys.executable, "-S", str(ROOT / "benchmarks" / "env_check.py")],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^python \d+\.\d+.* \| missing: ", proc.stdout, re.M), proc.stdout
    assert re.search(r"^jax \S+ \| backend cpu", proc.stdout, re.M), proc.stdout


def test_device_check_limits_fit_one_device_call():
    text = (ROOT / "benchmarks" / "device_check.sh").read_text()
    full = text[text.index("\nelse\n"):text.index("\nfi\n", text.index("\nelse\n"))]
    limits = [int(x) for x in re.findall(r"^\s*(?:step|peer) (?:\w+ )?(\d+) ", full, re.M)]
    env_limit = int(re.search(r"^step environment (\d+) ", text, re.M).group(1))
    smi = int(re.search(r"timeout (\d+) nvidia-smi", text).group(1))
    assert len(limits) == 4
    assert env_limit + smi + sum(limits) <= 540
    assert "import importlib\n" not in text and "importlib.util" in text


@pytest.mark.slow
def test_device_check_quick_without_site_hooks(tmp_path):
    """QUICK=1 device_check.sh with every Python started as `python -S` (no site hooks)."""
    env = _env(QUICK="1", OUT=str(tmp_path / "out"), PYTHON=f"{sys.executable} -S",
               PYTHONPATH=_site_packages())
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh")], env=env,
                          capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "missing: nothing" in proc.stdout or "missing: torch" in proc.stdout
    for name in ("throughput", "kernels", "precision"):
        assert re.search(rf"=== {name}: exit 0 after \d+ s", proc.stdout), proc.stdout[-5000:]
        assert (tmp_path / "out" / f"{'train_throughput' if name == 'throughput' else name}"
                ".json").exists()


# ------------------------------------------------------------------------ scaling.py
def test_scaling_does_not_report_devices_it_does_not_have():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scaling
    one_gpu = ["gpu0"]
    for d in (2, 4, 8):
        devices, why = scaling.devices_for(d, "gpu", one_gpu)
        assert devices is None and f"D={d}: skipped, this machine has 1 gpu device(s)" == why
    assert scaling.devices_for(1, "gpu", one_gpu) == (["gpu0"], None)
    assert scaling.devices_for(2, "cpu", ["c0", "c1", "c2"]) == (["c0", "c1"], None)
