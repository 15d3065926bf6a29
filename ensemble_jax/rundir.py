"""Run directories: which folders are ours, and the one place that writes into them.

A run directory is marked as ours by a manifest, `ensemble-jax-run.json`, written FIRST
(before any other file) when a sweep creates the directory. It holds:

  format          manifest format (MANIFEST_FORMAT)
  created         creation time (UTC, ISO 8601) and `created_unix`
  tool            {"name": "ensemble-jax", "version": ...}
  data            fingerprint of the training data as trained on (`data_fingerprint`):
                  frame list, labels and image bytes (SHA-256 of each), counts, bodyparts
  files           the file table: name -> {"sha256", "bytes"} of every file written through
                  `RunDir` (config, subsets, data, parameters, results); `analyze` and
                  `--resume` refuse a file that no longer matches (replaced, copied in from
                  another run, edited)

Rules (README "What happens when"):
- the tool deletes or overwrites nothing in a folder without the manifest, and refuses a
  non-empty foreign folder (`--out ""` is the current directory) with one clear line;
- every setting is validated and the data loaded and checked before anything in the run
  directory changes (`sweep.run_sweep` calls `prepare` only after that);
- a new sweep over a finished run is refused unless `overwrite=True`; then the old run is
  moved aside in one rename (`<out>.old-<UTC time>`), never taken apart file by file.

Every write is atomic (`ensemble_jax.io`: temporary file, fsync, rename).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ensemble_jax import io as eio
from ensemble_jax import runlock
from ensemble_jax import logs

MANIFEST = "ensemble-jax-run.json"
MANIFEST_FORMAT = 1
TOOL = "ensemble-jax"

# The file table: what a run directory holds and who writes it (ARCHITECTURE.md).
FILES = {
    MANIFEST: "sweep: this table, the data fingerprint and file checksums (written first)",
    "config.json": "sweep: every setting needed to reproduce the run",
    "subsets.npy": "sweep: int32 [M, n_train] subset plan",
    "data.npz": "sweep: train/test frames at training resolution, labels, letterbox",
    "checkpoints/": "sweep: orbax checkpoints of the ensemble state (for --resume)",
    "params.msgpack": "sweep: final stacked parameters",
    "training.npz": "sweep: losses, AUM sums/counts, alive, diverged_at, failed_reason",
    "predictions.npz": "sweep: per-member keypoints and confidences",
    "summary.json": "sweep: errors and speed; written last (its absence = unfinished)",
    "learning_curve.png": "sweep: ensemble and member test error per fraction",
    "aum.csv": "analyze", "aum_members.npz": "analyze", "mpe.csv": "analyze",
    "spread.csv": "analyze", "influence.npz": "analyze", "analysis.json": "analyze",
}
# Files of a sweep that `analyze` reads; each must match its checksum in the manifest.
ANALYZE_INPUTS = ("config.json", "subsets.npy", "data.npz", "params.msgpack",
                  "training.npz", "summary.json")
# Entries that do not make a folder "non-empty": a run lock (ours, transient).
_TRANSIENT = (runlock.LOCK_NAME,)


class RunDirError(ValueError):
    """A run directory that may not be written or read as asked (one clear line)."""


# ------------------------------------------------------------------ what a folder is
def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()
                  if p.name not in _TRANSIENT and not p.name.startswith(f"{runlock.LOCK_NAME}."))


def state(path: str | os.PathLike) -> str:
    """"missing", "empty", "ours" (holds the manifest) or "foreign" (anything else).
    Raises NotADirectoryError if `path` is a file."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if not path.is_dir():
        raise NotADirectoryError(f"--out {path}: exists and is a file, not a run directory")
    if (path / MANIFEST).is_file():
        return "ours"
    return "empty" if not _entries(path) else "foreign"


def shown(path: Path) -> str:
    """How a path is named in messages (`--out ""` is the current folder: say which)."""
    return f"{path} ({path.resolve()})" if str(path) in ("", ".") else str(path)


def refuse_foreign(path: Path, flag: str = "--out") -> None:
    names = _entries(path)
    legacy = (path / "config.json").is_file() and (path / "subsets.npy").is_file()
    why = ("it looks like a run directory of an older ensemble-jax without " + MANIFEST
           if legacy else f"it is not an ensemble-jax run directory (no {MANIFEST})")
    raise RunDirError(
        f"{flag} {shown(path)}: folder is not empty ({len(names)} "
        f"{'entry' if len(names) == 1 else 'entries'}, e.g. "
        f"{', '.join(names[:3])}) and {why}; nothing was changed there; choose a new or "
        f"empty folder")


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of run directory `path`; RunDirError naming the file if it is damaged."""
    f = Path(path) / MANIFEST
    try:
        m = json.loads(f.read_text())
    except FileNotFoundError:
        raise RunDirError(f"{Path(path)}: not an ensemble-jax run directory ({MANIFEST} is "
                          f"missing)") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{f}: damaged ({type(e).__name__}: {e}); cannot tell what this "
                          f"run directory holds") from e
    if not isinstance(m, dict) or m.get("tool", {}).get("name") != TOOL \
            or not isinstance(m.get("files", {}), dict):
        raise RunDirError(f"{f}: not a manifest written by {TOOL}")
    if m.get("format") != MANIFEST_FORMAT:
        raise RunDirError(f"{f}: manifest format {m.get('format')!r}, this version reads "
                          f"format {MANIFEST_FORMAT}; use the version that wrote it")
    return m


# ---------------------------------------------------------------------- fingerprints
def _sha(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _array_sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def data_fingerprint(train: Any, test: Any) -> dict:
    """SHA-256 of the frame list, labels and image bytes of the (train, test) split as
    trained on (labels with the AUM threshold samples), plus counts for the messages."""
    ids = json.dumps([list(map(str, train.frame_ids)), list(map(str, test.frame_ids))])
    return {
        "train_frames": int(train.n_frames), "test_frames": int(test.n_frames),
        "bodyparts": [str(b) for b in train.bodyparts],
        "frame_list_sha256": _sha(ids.encode()),
        "labels_sha256": _array_sha(np.asarray(train.keypoints, np.float32),
                                    np.asarray(test.keypoints, np.float32)),
        "images_sha256": _array_sha(np.asarray(train.images), np.asarray(test.images)),
    }


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def describe_data_change(run: Path, old: dict, train: Any, test: Any) -> str:
    """What differs between the data a run was trained on (its manifest fingerprint and
    data.npz) and (train, test): frames added/removed, labels or images changed (naming
    frames where data.npz is readable)."""
    new = data_fingerprint(train, test)
    what = []
    try:
        z = eio.load_npz(run / "data.npz")
    except (OSError, ValueError):
        z = None
    if old.get("bodyparts") != new["bodyparts"]:
        what.append(f"bodyparts {old.get('bodyparts')} -> {new['bodyparts']}")
    if old.get("frame_list_sha256") != new["frame_list_sha256"]:
        if z is not None:
            had = {str(f) for s in ("train", "test") for f in z[f"{s}_frame_ids"]}
            now = {str(f) for d in (train, test) for f in d.frame_ids}
            added, gone = sorted(now - had), sorted(had - now)
            part = []
            if added:
                part.append(f"{len(added)} frame(s) added ({_few(added)})")
            if gone:
                part.append(f"{len(gone)} frame(s) removed ({_few(gone)})")
            what.append("; ".join(part) or "the frames were split differently")
        else:
            what.append(f"frame list ({old.get('train_frames')}+{old.get('test_frames')} "
                        f"-> {new['train_frames']}+{new['test_frames']} train+test frames)")
    else:
        for key, field, arrays in (("labels_sha256", "keypoints", "labels"),
                                   ("images_sha256", "images", "images")):
            if old.get(key) == new[key]:
                continue
            frames = []
            if z is not None:
                for s, d in (("train", train), ("test", test)):
                    a, b = z.get(f"{s}_{field}"), np.asarray(getattr(d, field))
                    if a is None or a.shape != b.shape:
                        continue
                    diff = ~np.all((a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f"
                                   else a == b, axis=tuple(range(1, a.ndim)))
                    frames += [str(d.frame_ids[i]) for i in np.flatnonzero(diff)]
            what.append(f"{arrays} of {len(frames)} frame(s) changed ({_few(frames)})"
                        if frames else f"{arrays} changed")
    return "; ".join(what) or "the data differ"


def check_data(run: Path, manifest: dict, train: Any, test: Any, action: str) -> None:
    """Refuses (RunDirError naming what changed) data that differ from the run's."""
    old = manifest.get("data") or {}
    new = data_fingerprint(train, test)
    keys = ("bodyparts", "frame_list_sha256", "labels_sha256", "images_sha256")
    if any(old.get(k) != new[k] for k in keys):
        raise RunDirError(
            f"{run}: cannot {action}: the training data differ from the data this run was "
            f"trained on ({describe_data_change(run, old, train, test)}); start a new run "
            f"directory (or --overwrite to move this run aside)")


def verify_files(run: Path, names: Iterable[str], manifest: dict | None = None) -> None:
    """Each of `names` must exist and match its checksum in the manifest's file table."""
    manifest = manifest if manifest is not None else read_manifest(run)
    table = manifest.get("files", {})
    for name in names:
        path = run / name
        if not path.is_file():
            continue               # the caller says what a missing file means
        rec = table.get(name)
        if not isinstance(rec, dict) or "sha256" not in rec:
            raise RunDirError(f"{path}: not written by the sweep of this run directory (not "
                              f"in {MANIFEST}); copied in from elsewhere?")
        if sha256_file(path) != rec["sha256"]:
            what = ("parameters" if name == "params.msgpack" else
                    "training data" if name == "data.npz" else "file")
            raise RunDirError(
                f"{path}: {what} do not match this run ({name} changed after the sweep "
                f"wrote it: its SHA-256 differs from the one in {MANIFEST}; replaced, "
                f"edited or copied from another run?); re-run the sweep")


def remove_temporaries(path: Path) -> list[Path]:
    """Deletes the temporaries (`.<name>.<random>.tmp`) that our own writers, killed before
    their rename, left for files of the table; nothing else."""
    gone = []
    for name in FILES:
        for p in Path(path).glob(f".{name.rstrip('/')}.*.tmp"):
            if p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


# -------------------------------------------------------------------------- reading
def failed_sweep(run: str | os.PathLike) -> str | None:
    """Why a run directory without summary.json holds no result, when its sweep ended with
    every member failed (training.npz written, alive all False: sweep._all_failed); None
    otherwise (e.g. a sweep still running or killed)."""
    run = Path(run)
    if (run / "summary.json").exists() or not (run / "training.npz").is_file():
        return None
    try:
        z = eio.load_npz(run / "training.npz")
    except (OSError, ValueError):
        return None
    if "alive" not in z or np.asarray(z["alive"], bool).any():
        return None
    reasons = [str(r) for r in z.get("failed_reason", [])]
    first = next((f"member {m} {r}" for m, r in enumerate(reasons) if r), None)
    return (f"{run}: the sweep ended with every member failed"
            + (f" (e.g. {first})" if first else "") + "; it holds no result (see "
            "training.npz); run a new sweep (e.g. with a lower --lr)")


def load_json(path: str | os.PathLike, need: Iterable[str] = ()) -> dict:
    """A JSON object from a run-directory file; RunDirError naming the file if it is
    unreadable, not an object, or lacks one of `need`."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: damaged ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise RunDirError(f"{path}: damaged (expected a JSON object, got "
                          f"{type(obj).__name__})")
    missing = [k for k in need if k not in obj]
    if missing:
        raise RunDirError(f"{path}: damaged (no {', '.join(repr(k) for k in missing)} entry)")
    return obj


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """An .npy array (never a pickle); RunDirError naming the file if unreadable."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as e:       # EOFError (empty), ValueError (garbage/pickled), OSError
        raise RunDirError(f"{path}: damaged, not a readable .npy array "
                          f"({type(e).__name__})") from e


def load_npz(path: str | os.PathLike, need: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """`io.load_npz` that also names a missing array."""
    z = eio.load_npz(path)
    missing = [k for k in need if k not in z]
    if missing:
        raise RunDirError(f"{path}: damaged (no array {', '.join(missing)})")
    return z


# -------------------------------------------------------------------------- writing
def save_data(path: Path, train: Any, test: Any,
              threshold_mask: np.ndarray | None = None) -> None:
    """data.npz: the train/test frames at training resolution, labels, letterbox, and the
    AUM threshold samples (bool, or int kinds of analysis/threshold.KINDS)."""
    arrays: dict[str, Any] = {"bodyparts": np.array(list(train.bodyparts))}
    if getattr(train, "views", None):      # [V, J] bodypart names: one body point per column
        arrays["view_bodyparts"] = np.array([list(v) for v in train.views])
    if threshold_mask is not None:
        arrays["train_threshold_mask"] = np.asarray(threshold_mask, bool)
        if np.asarray(threshold_mask).dtype != bool:   # kinds (analysis/threshold.KINDS)
            arrays["train_threshold_kind"] = np.asarray(threshold_mask, np.int8)
    for name, d in (("train", train), ("test", test)):
        arrays.update({f"{name}_images": d.images, f"{name}_keypoints": d.keypoints,
                       f"{name}_frame_ids": np.array(d.frame_ids),
                       f"{name}_letterbox": d.letterbox,
                       f"{name}_original_sizes": d.original_sizes})
        if d.noise_mask is not None:
            arrays[f"{name}_noise_mask"] = d.noise_mask
    eio.save_npz(path, **arrays)


def write_untrained(out: Path, train: Any, test: Any, model_config: Any, train_config: Any,
                    params: Any, *, alive: np.ndarray | None = None,
                    strategy: str = "untrained") -> Path:
    """A run directory as `sweep` writes it around given (e.g. freshly initialised)
    stacked parameters [M, ...], every member on every frame, for tests and benchmarks of
    its readers (predict, report), with a manifest recording every file's checksum as a
    sweep's does (`predict` and `suggest` verify them)."""
    import jax
    from flax import serialization
    rd = RunDir(out)
    rd.create(data_fingerprint(train, test))
    m = int(jax.tree_util.tree_leaves(params)[0].shape[0])
    n, k = train.n_frames, train.n_keypoints
    alive = np.ones(m, bool) if alive is None else np.asarray(alive, bool)
    eio.write_json(out / "config.json", {
        "format_version": 1, "model": dataclasses.asdict(model_config),
        "train": dataclasses.asdict(train_config), "members": m})
    eio.save_npy(out / "subsets.npy", np.ones((m, n), np.int32))
    save_data(out / "data.npz", train, test)
    eio.write_bytes(out / "params.msgpack", serialization.to_bytes(params))
    eio.save_npz(out / "training.npz", losses=np.zeros((1, m), np.float32),
                 aum_sum=np.zeros((m, n, k), np.float32),
                 aum_count=np.zeros((m, n, k), np.int32),
                 alive=alive, diverged_at=np.where(alive, -1, 0))
    eio.write_json(out / "summary.json", {"members": m, "strategy": strategy})
    rd.record("config.json", "subsets.npy", "data.npz", "params.msgpack", "training.npz",
              "summary.json")
    return out


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The settings that differ between two configurations (nested dicts, as config.json
    holds them), one 'name (old -> new)' each; [] when they agree. Both are compared in
    their JSON form (tuples as lists, non-finite floats as config.json writes them)."""
    old, new = (eio._finite(json.loads(json.dumps(x, default=eio._json_default)))
                for x in (old, new))
    return sorted(_diff(old, new, prefix))


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')} ({a!r} -> {b!r})"]


def upgrade_config(config: Any) -> Any:
    """config.json as this version writes it: runs from before `ExecConfig` kept its fields
    (strategy, chunk_size, ...) under "train"; they move to "exec", so an older run loads,
    analyses and compares (`sweep --resume`) like a new one. Runs from before crop training
    (training/crop.py) get "train.crop" at its default: off, as they were trained."""
    from ensemble_jax.training.config import EXEC_FIELDS
    from ensemble_jax.training.crop import CropConfig
    train = config.get("train") if isinstance(config, dict) else None
    if not isinstance(train, dict):
        return config
    if "crop" not in train:
        train = dict(train, crop=dataclasses.asdict(CropConfig()))
        config = dict(config, train=train)
    if "exec" in config or not set(EXEC_FIELDS) & set(train):
        return config
    return dict(config, train={k: v for k, v in train.items() if k not in EXEC_FIELDS},
                exec={k: train[k] for k in EXEC_FIELDS if k in train})


def _dataclass_from(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclasses.dataclass
class Run:
    """A run directory as its readers see it (`load`); each part is read on first use."""
    path: Path
    config: dict

    @functools.cached_property
    def summary(self) -> dict:
        """summary.json; {} while the sweep is unfinished."""
        p = self.path / "summary.json"
        return load_json(p) if p.exists() else {}

    @functools.cached_property
    def masks(self) -> np.ndarray:
        """int [M, n_train]: the subset plan (bootstrap counts or 0/1)."""
        masks = load_npy(self.path / "subsets.npy")
        if masks.ndim != 2 or masks.dtype.kind not in "iub":
            raise RunDirError(f"{self.path / 'subsets.npy'}: damaged (expected an integer "
                              f"[members, frames] array, got {masks.dtype} {masks.shape})")
        return masks.astype(np.int64)

    @functools.cached_property
    def training(self) -> dict[str, np.ndarray]:
        return load_npz(self.path / "training.npz", need=(
            "aum_sum", "aum_count", "losses", "alive", "diverged_at"))

    @property
    def alive(self) -> np.ndarray:
        return self.training["alive"].astype(bool)

    @functools.cached_property
    def _data(self) -> dict[str, np.ndarray]:
        return load_npz(self.path / "data.npz", need=["bodyparts"] + [
            f"{s}_{a}" for s in ("train", "test")
            for a in ("images", "keypoints", "frame_ids", "letterbox", "original_sizes")])

    def _split(self, name: str) -> Any:
        from ensemble_jax.data.dataset import KeypointDataset
        z = self._data
        return KeypointDataset(
            images=z[f"{name}_images"], keypoints=z[f"{name}_keypoints"],
            bodyparts=[str(b) for b in z["bodyparts"]],
            frame_ids=[str(f) for f in z[f"{name}_frame_ids"]],
            noise_mask=z.get(f"{name}_noise_mask"), letterbox=z[f"{name}_letterbox"],
            original_sizes=z[f"{name}_original_sizes"], source=str(self.path),
            views=tuple(tuple(str(b) for b in v) for v in z["view_bodyparts"])
            if "view_bodyparts" in z else None)

    @functools.cached_property
    def train(self) -> Any:
        """The KeypointDataset the run was trained on (data.npz)."""
        return self._split("train")

    @functools.cached_property
    def test(self) -> Any:
        """The KeypointDataset it was scored on (data.npz)."""
        return self._split("test")

    @property
    def threshold_mask(self) -> np.ndarray | None:
        """bool [n_train, K]: the AUM threshold samples, None for runs from before them."""
        z = self._data
        return z["train_threshold_mask"].astype(bool) if "train_threshold_mask" in z else None

    @property
    def threshold_kind(self) -> np.ndarray | None:
        """int8 [n_train, K]: each threshold sample's kind (analysis/threshold.KINDS, 0 =
        none), None for runs that recorded no kinds."""
        z = self._data
        return z["train_threshold_kind"].astype(np.int8) if "train_threshold_kind" in z else None

    @functools.cached_property
    def predictions(self) -> dict[str, np.ndarray]:
        return eio.load_npz(self.path / "predictions.npz")

    @property
    def member_fraction(self) -> np.ndarray:
        return np.asarray(self.config["layout"]["member_fraction"], float)

    @property
    def member_seed(self) -> np.ndarray:
        return np.asarray(self.config["layout"]["member_seed"], int)

    @property
    def fractions(self) -> list[float]:
        return sorted(set(float(f) for f in self.member_fraction))

    @property
    def seeds(self) -> list[int]:
        return sorted(set(int(s) for s in self.member_seed))

    def member(self, fraction: float, seed: int) -> int | None:
        hit = np.flatnonzero(np.isclose(self.member_fraction, fraction)
                             & (self.member_seed == seed))
        return int(hit[0]) if hit.size else None

    @functools.cached_property
    def result(self) -> Any:
        """The trained `EnsembleResult` (parameters from params.msgpack, configs from
        config.json, masks, AUM and liveness from subsets.npy and training.npz)."""
        import jax
        import jax.numpy as jnp
        from flax import serialization

        from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
        from ensemble_jax.training.config import TrainConfig
        from ensemble_jax.training.result import EnsembleResult
        run, config = self.path, self.config
        if not {"model", "train"} <= set(config):
            load_json(run / "config.json", need=("model", "train"))   # names what lacks
        try:
            mc = _dataclass_from(ModelConfig, config["model"])
            tc = _dataclass_from(TrainConfig, config["train"])
        except (AttributeError, TypeError, ValueError) as e:
            raise RunDirError(f"{run / 'config.json'}: damaged (model/train settings: "
                              f"{e})") from e
        data = load_npz(run / "data.npz", need=("bodyparts", "train_images"))
        bodyparts = [str(b) for b in data["bodyparts"]]
        image_shape = tuple(int(s) for s in data["train_images"].shape[1:])
        masks, training = self.masks, self.training
        m = int(masks.shape[0])
        model = HeatmapNet(mc, len(bodyparts))
        # Shapes only (eval_shape traces, never compiles): the restore target.
        single = jax.eval_shape(model.init, jax.random.key(0),
                                jax.ShapeDtypeStruct((1,) + image_shape, jnp.uint8))
        target = jax.tree_util.tree_map(lambda x: np.zeros((m,) + tuple(x.shape), x.dtype),
                                        single)
        raw = (run / "params.msgpack").read_bytes()
        try:
            params = serialization.from_bytes(target, raw)
        except Exception as e:
            raise ValueError(f"{run / 'params.msgpack'}: cannot restore parameters for this "
                             f"model and {m} members ({type(e).__name__}: {e})") from e
        shapes = [(np.shape(a), np.shape(b)) for a, b in zip(
            jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(target))]
        bad = [s for s in shapes if s[0] != s[1]]
        if bad:
            raise ValueError(f"{run / 'params.msgpack'}: parameter shapes {bad[0][0]} do not "
                             f"match the model of config.json ({bad[0][1]})")
        result = EnsembleResult(
            model_config=mc, train_config=tc, params=params, masks=masks.astype(np.int32),
            bodyparts=bodyparts, image_shape=image_shape,
            aum_sum=training["aum_sum"], aum_count=training["aum_count"],
            losses=training["losses"], alive=training["alive"].astype(bool),
            diverged_at=training["diverged_at"],
            strategy=str(self.summary.get("strategy", "unknown")), timing={},
            failed_reason=training["failed_reason"].astype(str)
            if "failed_reason" in training else None)
        if result.failed_reason is None:
            result = self._judge_old(result)
        return result

    def _judge_old(self, result: Any) -> Any:
        """A run from before training/health.py recorded no failed_reason: members that
        learned nothing (judged on its predictions.npz and losses) are marked failed now,
        as a new sweep marks them."""
        from ensemble_jax.training import health
        if not (self.path / "predictions.npz").is_file():
            return result
        try:
            p = self.predictions
        except (OSError, ValueError):
            return result
        confs = [p[k] for k in ("train_confidences", "test_confidences") if k in p]
        if not confs or np.asarray(confs[0]).shape[0] != result.n_members:
            return result
        nothing = health.learned_nothing(confs, result.losses)
        if not any(nothing[m] for m in np.flatnonzero(result.alive)):
            return result
        reasons = [health.reason(result, m) or nothing[m] for m in range(result.n_members)]
        return health.mark_failed(result, reasons)


def load(run_dir: str | os.PathLike) -> Run:
    """The one reader of a run directory (analyze, sweep --resume, predict, report and the
    experiments): config.json now, every other part on first use."""
    path = Path(run_dir)
    return Run(path=path, config=upgrade_config(load_json(path / "config.json")))


class RunDir:
    """The one writer of a run directory: atomic writes that record each file's
    checksum in the manifest's file table."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # ---- manifest
    def manifest(self) -> dict:
        return read_manifest(self.path)

    def _write_manifest(self, m: dict) -> None:
        eio.write_json(self.path / MANIFEST, m)

    def create(self, data: dict | None = None) -> dict:
        """Writes a fresh manifest (the first file of a run directory)."""
        from ensemble_jax import __version__
        now = time.time()
        m = {"format": MANIFEST_FORMAT,
             "created": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(
                 timespec="seconds"),
             "created_unix": now, "tool": {"name": TOOL, "version": __version__},
             "data": data or {}, "files": {}}
        self._write_manifest(m)
        return m

    def record(self, *names: str) -> None:
        """Records the current checksum of files already in the directory."""
        m = self.manifest()
        for name in names:
            p = self.path / name
            m["files"][name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        self._write_manifest(m)

    def forget(self, *names: str) -> None:
        m = self.manifest()
        for name in names:
            m["files"].pop(name, None)
        self._write_manifest(m)

    # ---- files
    def write_bytes(self, name: str, data: bytes) -> None:
        eio.write_bytes(self.path / name, data)
        self.record(name)

    def write_json(self, name: str, obj: Any) -> None:
        eio.write_json(self.path / name, obj)
        self.record(name)

    def save_npy(self, name: str, array: np.ndarray) -> None:
        eio.save_npy(self.path / name, array)
        self.record(name)

    def save_npz(self, name: str, **arrays: np.ndarray) -> None:
        eio.save_npz(self.path / name, **arrays)
        self.record(name)

    def save_figure(self, name: str, fig: Any, **kwargs: Any) -> None:
        eio.save_figure(self.path / name, fig, **kwargs)
        self.record(name)

    def remove(self, name: str) -> None:
        """Removes a file of the table (only names of `FILES`: never a user's file)."""
        if name not in FILES:
            raise ValueError(f"{name}: not a run-directory file of {TOOL}")
        p = self.path / name
        if p.is_file():
            p.unlink()
        self.forget(name)


def move_aside(path: Path) -> Path:
    """Renames the run directory `path` to `<path>.old-<UTC time>` in one step (holding its
    lock, so a live sweep or analyze there is not moved). Returns the new path."""
    path = Path(path).resolve()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.old-{stamp}")
    k = 1
    while aside.exists():
        k += 1
        aside = path.with_name(f"{path.name}.old-{stamp}-{k}")
    lock = runlock.acquire(path, "sweep --overwrite")
    try:
        os.rename(path, aside)
    except OSError:
        runlock.release(lock)
        raise
    runlock.release(aside / runlock.LOCK_NAME)
    logs.info(f"{path}: moved the previous run aside to {aside} (--overwrite)")
    return aside


__all__ = ["MANIFEST", "FILES", "RunDir", "RunDirError", "state", "read_manifest",
           "refuse_foreign", "data_fingerprint", "check_data", "verify_files", "move_aside",
           "sha256_file"]
