"""Shared fixtures: the real labeled data in ../shared/data, and a tiny PNG writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data`; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found, skipping real-data test")
    return SHARED_DATA


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
