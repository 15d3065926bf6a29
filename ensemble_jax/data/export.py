"""Writers: prediction tables for DeepLabCut / Lightning Pose / EKS, and DLC shuffles.

Predictions (`write_predictions_csv`, `write_member_predictions`) use the table that
DeepLabCut and Lightning Pose write for predictions: 3 header rows

    scorer,    <scorer>, <scorer>, <scorer>,   ...
    bodyparts, snout,    snout,    snout,      ...
    coords,    x,        y,        likelihood, ...

then one row per frame whose first cell is the frame id (an image path for labeled
frames, the integer frame index for video frames, as DeepLabCut and Lightning Pose
write). `pandas.read_csv(path, header=[0, 1, 2], index_col=0)` reads it (as the Ensemble
Kalman Smoother, EKS, does). Numbers are written with full float precision (a float32
value reads back exactly). NaN is written `NaN`, not as an empty cell: pandas takes a
first data row whose cells are all empty for the row of index names and drops it (a
member that lost every keypoint on frame 0 would lose that frame, and EKS fails with
"could not broadcast input array from shape (80,) into shape (79,)"). Coordinates are
written as given: convert training pixels to original pixels first
(`KeypointDataset.to_original`).

`write_member_predictions` lays a folder out for `eks singlecam --input-dir`, which takes
every `*.csv` of the folder as one member: the members go to `<dir>/members/` (diverged
members left out), the ensemble to `<dir>/ensemble.csv`, beside the members' folder.

Shuffles (`export_dlc_shuffles` / `import_dlc_shuffles`): DeepLabCut refers to training
and test frames by their position in its merged label table, which is sorted by
`dlc.dlc_sort_key` (lexicographic on the frame path: `img10.png` < `img2.png`). One
JSON per member, `shuffle_<m>.json`:

    {"format": "ensemble_jax.dlc_shuffle/1", "member": m, "n_frames": n,
     "mask_dtype": "bool" | "int64",
     "train_indices": [...],   # sorted positions; a frame drawn c times appears c times
     "test_indices": [...],    # sorted positions of frames with mask 0
     "frame_ids_sorted": [...]}

`import_dlc_shuffles` maps the positions back to the caller's frame order (checking the
frame ids) and also reads DeepLabCut's own `Documentation_data-*shuffle<k>.pickle`
files (list `[data, trainIndices, testIndices, trainFraction]`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.dlc import dlc_sort_key
from ensemble_jax.io import write_json, write_text

__all__ = ["write_predictions_csv", "write_member_predictions", "member_file_name",
           "predictions_header", "predictions_rows", "MEMBERS_DIR", "dlc_sorted_order",
           "export_dlc_shuffles", "import_dlc_shuffles", "SHUFFLE_FORMAT"]

SHUFFLE_FORMAT = "ensemble_jax.dlc_shuffle/1"


MEMBERS_DIR = "members"


def _cell(v: float) -> str:
    v = float(v)
    return "NaN" if v != v else repr(v)


def _frame_id(f) -> str:
    return str(int(f)) if isinstance(f, (int, np.integer)) else str(f)


def predictions_header(bodyparts: Sequence[str], scorer: str = "ensemble-jax") -> str:
    """The three header rows (scorer / bodyparts / coords) of a prediction table."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    k = len(bodyparts)
    w.writerow(["scorer"] + [scorer] * (3 * k))
    w.writerow(["bodyparts"] + [str(b) for b in bodyparts for _ in range(3)])
    w.writerow(["coords"] + ["x", "y", "likelihood"] * k)
    return buf.getvalue()


def predictions_rows(keypoints: np.ndarray, confidences: np.ndarray,
                     frame_ids: Sequence) -> str:
    """Data rows for keypoints `[F, K, 2]` and confidences `[F, K]` (shapes checked by the
    caller), one per frame; ints in `frame_ids` are written as integers."""
    kp = np.asarray(keypoints, np.float64)
    conf = np.asarray(confidences, np.float64)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for i in range(kp.shape[0]):
        row = [_frame_id(frame_ids[i])]
        for j in range(kp.shape[1]):
            row += [_cell(kp[i, j, 0]), _cell(kp[i, j, 1]), _cell(conf[i, j])]
        w.writerow(row)
    return buf.getvalue()


def _predictions_text(keypoints, confidences, bodyparts, frame_ids, scorer) -> str:
    kp = np.asarray(keypoints)
    conf = np.asarray(confidences)
    bodyparts = [str(b) for b in bodyparts]
    frame_ids = list(frame_ids)
    if kp.ndim != 3 or kp.shape[2] != 2:
        raise DatasetError(f"keypoints must be [frames, K, 2], got shape {kp.shape}")
    f, k = kp.shape[:2]
    if conf.shape != (f, k):
        raise DatasetError(f"confidences must be [frames={f}, K={k}], got shape {conf.shape}")
    if len(bodyparts) != k:
        raise DatasetError(f"bodyparts: {len(bodyparts)} names for K={k} keypoints")
    if len(set(bodyparts)) != k:
        raise DatasetError(f"bodyparts: duplicate names in {bodyparts}")
    if len(frame_ids) != f:
        raise DatasetError(f"frame_ids: {len(frame_ids)} ids for {f} frames")
    return predictions_header(bodyparts, scorer) + predictions_rows(kp, conf, frame_ids)


def write_predictions_csv(path: str | os.PathLike, keypoints: np.ndarray,
                          confidences: np.ndarray, bodyparts: Sequence[str],
                          frame_ids: Sequence[str], scorer: str = "ensemble-jax") -> Path:
    """Writes predictions `[F, K, 2]` and confidences `[F, K]` as a DLC-style CSV
    (atomically) and returns the path."""
    path = Path(path)
    write_text(path, _predictions_text(keypoints, confidences, bodyparts, frame_ids, scorer))
    return path


def write_member_predictions(out_dir: str | os.PathLike, keypoints: np.ndarray,
                             confidences: np.ndarray, bodyparts: Sequence[str],
                             frame_ids: Sequence[str], *, scorer: str = "ensemble-jax",
                             ensemble_keypoints: np.ndarray | None = None,
                             ensemble_confidences: np.ndarray | None = None,
                             ensemble_name: str | None = "ensemble.csv",
                             alive: np.ndarray | None = None,
                             members_dir: str = MEMBERS_DIR) -> list[Path]:
    """One CSV per member (`<out_dir>/members/member_000.csv`, ...) plus the ensemble
    file `<out_dir>/ensemble.csv`, apart from the members so that
    `eks singlecam --input-dir <out_dir>/members` sees the members only.

    Args:
      keypoints: `[M, F, K, 2]`; confidences: `[M, F, K]`.
      ensemble_keypoints / ensemble_confidences: the ensemble's `[F, K, 2]` / `[F, K]`;
        default: the per-coordinate median of the written members (NaN-aware) and their
        mean confidence. `ensemble_name=None` writes no ensemble file.
      alive: bool `[M]`; members with False (diverged) are left out (the others keep
        their member number in the file name). Default: all members.
      frame_ids: image paths, or ints (video frame indices; written as integers).

    Returns the paths written (members first, then the ensemble file).
    """
    kp = np.asarray(keypoints)
    conf = np.asarray(confidences)
    if kp.ndim != 4 or kp.shape[-1] != 2:
        raise DatasetError(f"keypoints must be [members, frames, K, 2], got shape {kp.shape}")
    if conf.shape != kp.shape[:3]:
        raise DatasetError(f"confidences must be {list(kp.shape[:3])} [members, frames, K], "
                           f"got {list(conf.shape)}")
    m = kp.shape[0]
    keep = np.ones(m, bool) if alive is None else np.asarray(alive, bool)
    if keep.shape != (m,):
        raise DatasetError(f"alive must be [members={m}] bools, got shape {keep.shape}")
    if not keep.any():
        raise DatasetError("every member diverged (alive is all False): nothing to write")
    out_dir = Path(out_dir)
    paths = []
    for i in np.flatnonzero(keep):
        paths.append(write_predictions_csv(out_dir / members_dir / member_file_name(i, m),
                                           kp[i], conf[i], bodyparts, frame_ids, scorer))
    if ensemble_name:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
            ekp = (np.nanmedian(kp[keep].astype(np.float64), axis=0)
                   if ensemble_keypoints is None else np.asarray(ensemble_keypoints))
            econf = (np.nanmean(conf[keep].astype(np.float64), axis=0)
                     if ensemble_confidences is None else np.asarray(ensemble_confidences))
        paths.append(write_predictions_csv(out_dir / ensemble_name, ekp, econf, bodyparts,
                                           frame_ids, scorer))
    return paths


def member_file_name(member: int, n_members: int) -> str:
    """`member_007.csv`: the member's number in the run, zero-padded (at least 3 digits)."""
    return f"member_{int(member):0{max(3, len(str(n_members - 1)))}d}.csv"


# -------------------------------------------------------------------------- shuffles
def dlc_sorted_order(frame_ids: Sequence[str]) -> np.ndarray:
    """int64 [n]: `order[j]` is the index (in `frame_ids`) of the frame at position j of
    DeepLabCut's sorted merged table."""
    ids = [str(f) for f in frame_ids]
    if len(set(ids)) != len(ids):
        dup = next(f for f in ids if ids.count(f) > 1)
        raise DatasetError(f"frame_ids: duplicate frame {dup!r}")
    return np.array(sorted(range(len(ids)), key=lambda i: dlc_sort_key(ids[i])), np.int64)


def export_dlc_shuffles(masks: np.ndarray, frame_ids: Sequence[str],
                        out_dir: str | os.PathLike, *, prefix: str = "shuffle_") -> list[Path]:
    """Writes `shuffle_<m>.json` per member (see the module doc) and returns the paths.

    `masks` is `[M, n]`: bool (in/out) or non-negative int counts (bootstrap draws).
    """
    masks = np.asarray(masks)
    frame_ids = [str(f) for f in frame_ids]
    if masks.ndim != 2 or masks.shape[1] != len(frame_ids):
        raise DatasetError(f"masks must be [members, n_frames={len(frame_ids)}], got shape "
                           f"{masks.shape}")
    if masks.dtype != np.bool_:
        if not np.issubdtype(masks.dtype, np.integer) or (masks < 0).any():
            raise DatasetError(f"masks must be bool or non-negative ints, got {masks.dtype}")
    order = dlc_sorted_order(frame_ids)
    sorted_ids = [frame_ids[i] for i in order]
    out_dir = Path(out_dir)
    paths = []
    for m, row in enumerate(masks):
        counts = row[order].astype(np.int64)
        train = np.repeat(np.arange(len(counts)), counts)
        test = np.flatnonzero(counts == 0)
        path = out_dir / f"{prefix}{m}.json"
        write_json(path, {
            "format": SHUFFLE_FORMAT,
            "member": m,
            "n_frames": len(frame_ids),
            "mask_dtype": "bool" if masks.dtype == np.bool_ else "int64",
            "train_indices": train.tolist(),
            "test_indices": test.tolist(),
            "frame_ids_sorted": sorted_ids,
        })
        paths.append(path)
    return paths


def _natural_key(p: Path) -> tuple:
    nums = re.findall(r"\d+", p.stem)
    return (int(nums[-1]) if nums else -1, p.name)


def _shuffle_files(dir_or_files) -> list[Path]:
    if isinstance(dir_or_files, (str, os.PathLike)):
        p = Path(dir_or_files)
        if p.is_dir():
            files = sorted(p.glob("shuffle_*.json"), key=_natural_key)
            if not files:
                files = sorted(p.glob("Documentation_data-*.pickle"), key=_natural_key)
            if not files:
                raise DatasetError(f"{p}: no shuffle_*.json or Documentation_data-*.pickle "
                                   f"files")
            return files
        return [p]
    return [Path(f) for f in dir_or_files]


def _load_shuffle(path: Path, n: int, sorted_ids: list[str]
                  ) -> tuple[np.ndarray, np.ndarray, str | None]:
    if not path.is_file():
        raise DatasetError(f"{path}: shuffle file not found")
    if path.suffix == ".pickle":
        # DeepLabCut's Documentation_data pickle: [data, trainIndices, testIndices, frac].
        # Unpickling runs code from the file: only read files you trust.
        try:
            with open(path, "rb") as f:
                doc = pickle.load(f)
            train, test = doc[1], doc[2]
        except Exception as e:
            raise DatasetError(f"{path}: not a DeepLabCut Documentation_data pickle "
                               f"([data, trainIndices, testIndices, trainFraction]): "
                               f"{type(e).__name__}: {e}") from None
        dtype = None
    else:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(doc, dict) or "train_indices" not in doc:
            raise DatasetError(f"{path}: key 'train_indices' missing")
        train, test = doc["train_indices"], doc.get("test_indices", [])
        dtype = doc.get("mask_dtype")
        stored = doc.get("frame_ids_sorted")
        if stored is not None and list(stored) != sorted_ids:
            if len(stored) != len(sorted_ids):
                raise DatasetError(f"{path}: key 'frame_ids_sorted' holds {len(stored)} "
                                   f"frames, the dataset has {len(sorted_ids)}")
            j = next(j for j, (a, b) in enumerate(zip(stored, sorted_ids)) if a != b)
            raise DatasetError(f"{path}: key 'frame_ids_sorted'[{j}] is {stored[j]!r} but "
                               f"the dataset's sorted frame {j} is {sorted_ids[j]!r}: the "
                               f"shuffle belongs to another dataset")
    arrays = []
    for key, vals in (("train_indices", train), ("test_indices", test)):
        try:
            a = np.asarray(vals if vals is not None else [], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: key {key!r} must be a list of integers") from None
        if a.size and ((a != np.round(a)).any() or a.min() < 0 or a.max() >= n):
            bad = a[(a != np.round(a)) | (a < 0) | (a >= n)][0]
            raise DatasetError(f"{path}: key {key!r} holds {bad!r}, not a position in "
                               f"0..{n - 1}")
        arrays.append(a.astype(np.int64))
    train, test = arrays
    both = np.intersect1d(train, test)
    if both.size:
        raise DatasetError(f"{path}: position {int(both[0])} ({sorted_ids[both[0]]!r}) is in "
                           f"both 'train_indices' and 'test_indices'")
    return train, test, dtype


def import_dlc_shuffles(dir_or_files: str | os.PathLike | Sequence[str | os.PathLike],
                        frame_ids: Sequence[str]) -> np.ndarray:
    """Masks `[M, n]` (in the order of `frame_ids`) from shuffle files.

    `dir_or_files`: a folder (its `shuffle_*.json`, by member number, else its
    `Documentation_data-*.pickle`, by shuffle number) or a list of files. Returns bool
    masks, or int64 counts if any file holds a frame more than once in its train set.
    """
    frame_ids = [str(f) for f in frame_ids]
    order = dlc_sorted_order(frame_ids)
    sorted_ids = [frame_ids[i] for i in order]
    n = len(frame_ids)
    rows, as_int = [], False
    for path in _shuffle_files(dir_or_files):
        train, _test, dtype = _load_shuffle(path, n, sorted_ids)
        counts_sorted = np.bincount(train, minlength=n)
        row = np.zeros(n, np.int64)
        row[order] = counts_sorted
        as_int |= dtype == "int64" or (dtype is None and row.max(initial=0) > 1)
        rows.append(row)
    masks = np.stack(rows)
    return masks if as_int else masks.astype(bool)
