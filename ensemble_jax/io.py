"""Atomic file writes: every file in a run directory appears whole or not at all.

Each writer writes to a temporary file in the destination folder, flushes and fsyncs it,
then renames it over the destination (rename is atomic on POSIX within one filesystem).
A kill at any moment leaves either the old file or the new one, never a half-written one.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files (`.<name>.<random>.tmp`) that a writer killed before its
    rename left in `directory` (not recursive). Call it only while holding the directory's
    lock (`runlock`), so that no live writer's temporary is removed. Returns what it removed."""
    removed = []
    for p in Path(directory).glob(".*.tmp"):
        if p.is_file() and p.name.count(".") >= 3:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success renames it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)   # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON: NaN and +-Infinity (which strict readers reject) are written as null."""
    plain = json.loads(json.dumps(obj, default=_json_default, allow_nan=True))
    write_text(path, json.dumps(_finite(plain), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, expect: type | None = None) -> Any:
    """The parsed JSON of `path`; ValueError naming the file when it cannot be read or
    parsed, or (with `expect`, e.g. dict) holds another kind of value. A missing file
    raises FileNotFoundError as it is: callers say what is missing and why."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as e:   # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path}: not readable JSON ({type(e).__name__}: {e})") from None
    if expect is not None and not isinstance(obj, expect):
        kind = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise ValueError(f"{path}: damaged (expected {kind}, got {type(obj).__name__})")
    return obj


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write_bytes(path, buf.getvalue())


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes(path, buf.getvalue())


def save_figure(path: str | os.PathLike, fig: Any, **kwargs: Any) -> None:
    """Saves a matplotlib figure atomically (format from the suffix)."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Loads an .npz whole, turning a corrupt or truncated file into a clear error."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError ...
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
