"""The command line as a user runs it: a separate process, its exit code, its files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ensemble_jax import cli


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ensemble_jax.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_smoke_sweep_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "smoke"
    proc = _run("sweep", "--smoke", "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "subsets.npy", "data.npz", "params.msgpack", "training.npz",
                 "predictions.npz", "summary.json", "learning_curve.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    summary = json.loads((out / "summary.json").read_text())
    masks = np.load(out / "subsets.npy")
    assert summary["members"] == masks.shape[0] == 2
    assert set(summary["per_fraction"]) == {"0.3", "0.9"}
    for row in summary["per_fraction"].values():
        assert np.isfinite(row["ensemble_test_mean_px"])
    assert summary["ensemble_test"]["mean_px"] < summary["mean_pose_baseline_px"]
    assert "ensemble test error" in proc.stderr
    print(f"smoke sweep wall time (in-process measure): {summary['wall_s']:.1f} s")


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert cli.main(["sweep", "--out", str(tmp_path / "afile"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "afile" in err and "file" in err
    proc = _run("sweep", "--out", str(tmp_path / "r"), "--fractions", "0.1,x", cwd=tmp_path)
    assert proc.returncode == 2 and "--fractions" in proc.stderr
