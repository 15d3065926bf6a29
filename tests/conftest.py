"""Shared fixtures: the real labeled data in ../shared/data, and a tiny PNG writer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data`; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found, skipping real-data test")
    return SHARED_DATA


@pytest.fixture
def run_benchmark(tmp_path):
    """run(script, *args, timeout=900): runs benchmarks/<script> as a user would, with
    `--out` in tmp_path, requires exit 0 and returns the JSON it wrote."""
    def run(script: str, *args: str, timeout: int = 900) -> dict:
        out = tmp_path / f"{Path(script).stem}.json"
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args,
                               "--out", str(out)], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(out.read_text())
    return run


def _write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array, np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def write_png():
    """`write_png(path, uint8 array [h, w] or [h, w, 3])` -> path (folders created)."""
    return _write_png

