"""The CPU's cores as JAX devices (training/cpu_cores.py): what the command line sets up
before JAX starts, what it leaves alone, and that the layout does not change results."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ensemble_jax.training import cpu_cores

ROOT = Path(__file__).resolve().parents[1]


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", cpu_cores.ENV)}
    env["JAX_PLATFORMS"] = "cpu"
    env.update(extra)
    return env


def _py(code: str, **env) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=_clean_env(**env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


CODE = ("from ensemble_jax.training.cpu_cores import use_cpu_cores; import jax, sys; "
        "n = use_cpu_cores({arg}); print(n, len(jax.devices()))")


def test_sets_the_device_count_before_jax_starts():
    assert _py(CODE.format(arg=3)) == "3 3"


def test_default_is_the_cores_or_the_environment_variable():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    want = min(cores, cpu_cores.MAX_DEFAULT)
    assert _py(CODE.format(arg="")) == f"{want} {want}"
    assert _py(CODE.format(arg=""), ENSEMBLE_JAX_CPU_DEVICES="3") == "3 3"


def test_leaves_a_user_set_count_and_a_started_backend_alone():
    assert _py(CODE.format(arg=3), XLA_FLAGS="--xla_force_host_platform_device_count=2") == "None 2"
    assert _py(CODE.format(arg=3), JAX_NUM_CPU_DEVICES="2") == "None 2"
    started = ("import jax; jax.numpy.zeros(1).block_until_ready(); "
               + CODE.format(arg=3))
    assert _py(started) == "None 1"


def test_bad_counts_are_refused_with_their_name(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="--cpu-devices"):
        cpu_cores.use_cpu_cores(0)
    monkeypatch.setenv(cpu_cores.ENV, "two")
    with pytest.raises(ValueError, match=cpu_cores.ENV):
        cpu_cores.default_count()
    proc = subprocess.run([sys.executable, "-m", "ensemble_jax.cli", "sweep", "--smoke",
                           "--out", str(tmp_path / "r"), "--cpu-devices", "0"],
                          capture_output=True, text=True, timeout=300, env=_clean_env())
    assert proc.returncode == 2 and "--cpu-devices" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow   # ~30-60 s on CI; the same equality/kernels are covered by faster tests
def test_sweep_over_the_cores_matches_one_device(tmp_path):
    """The command line's default layout on a CPU (members split over one device per core)
    trains the same members as one device."""
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"d{n}"
        proc = subprocess.run([sys.executable, "-m", "ensemble_jax.cli", "sweep", "--smoke",
                               "--out", str(out), "--quiet", "--cpu-devices", str(n)],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path,
                              env=_clean_env())
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["scale_out"]["devices"] == n
        runs[n] = np.load(out / "predictions.npz")
    for key in runs[1].files:
        a, b = runs[1][key], runs[2][key]
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-3, err_msg=key)
        else:
            np.testing.assert_array_equal(b, a, err_msg=key)
