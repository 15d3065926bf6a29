"""TensorFlow Datasets (TFDS) without TensorFlow: pack a `KeypointDataset`, read it back.

`write_tfds` builds a TFDS dataset directory (`<data_dir>/<name>/<version>/`) with a
`tfds.core.GeneratorBasedBuilder` in the `array_record` file format, one example per
frame:

    image          Tensor uint8 [H, W, C], encoding="zlib"
    keypoints      Tensor float32 [K, 2] (training pixels, NaN = missing)
    frame_id       Text
    index          int64 (position in the dataset; records are stored in this order,
                   `disable_shuffling=True`, so split slices like 'train[:10]' are frames 0-9)
    letterbox      Tensor float32 [3] (scale, dx, dy)
    original_size  Tensor int32 [2] (width, height)
    noise_mask     Tensor bool [K]

and metadata (`metadata.json`) with the bodyparts, whether a noise mask exists and the
source, so `read_tfds` returns the identical dataset. Reading goes through
`builder.as_data_source()` (random access over array_record), which needs no TensorFlow;
`as_dataset()` would. Only `Tensor`/`Text` features are written: TFDS's `Image` feature
needs TensorFlow to *encode* arrays (it can decode with Pillow, so foreign datasets with
`Image` features read fine).

`read_tfds` also reads other TFDS datasets prepared as array_record, given a mapping of
feature names (`image_key`, `keypoints_key`, optional `frame_id_key`): keypoints
`[K, 2]` are (x, y) pixels, `[K, 3]` are (x, y, visibility) with visibility 0 -> NaN.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.images import images_to_common_size
from ensemble_jax.data.letterbox import parse_image_size

__all__ = ["write_tfds", "read_tfds", "find_tfds_build", "is_tfds_build", "FORMAT"]

FORMAT = "ensemble_jax.keypoints/1"
_NAME = re.compile(r"^[A-Za-z]\w*$")
_FULL_NAME = re.compile(r"^(?P<name>[A-Za-z]\w*)(/(?P<config>[\w+\-.]+))?"
                        r"(:(?P<version>\d+\.\d+\.\d+))?$")
_CHUNK = 256


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Turns TFDS's progress bars off for the duration (restores the previous state)."""
    try:
        from tensorflow_datasets.core.utils import tqdm_utils
        before = getattr(tqdm_utils, "_active", True)
        tqdm_utils.display_progress_bar(False)
    except Exception:  # pragma: no cover - private API moved
        yield
        return
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(before)


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover
        raise DatasetError(f"TFDS support needs tensorflow-datasets and array_record "
                           f"(pip install tensorflow-datasets array_record): {e}") from None
    return tfds


def _make_builder_class(name: str, version: str):
    tfds = _import_tfds()

    class KeypointBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(version)
        RELEASE_NOTES = {version: "Written by ensemble_jax.data.tfds_io.write_tfds."}

        # TFDS looks for a checksums file beside the builder's code; for a class defined
        # in a package (not __main__) that lookup needs the `importlib_resources`
        # backport on Python >= 3.9 (tfds 4.9.10), which is not a dependency. There is
        # nothing to download, so there is no code path to look in.
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            return None

        def __init__(self, *, dataset: KeypointDataset, **kwargs):
            self._ds = dataset
            super().__init__(**kwargs)

        def _info(self):
            ds = self._ds
            h, w, c = ds.image_shape
            k = ds.n_keypoints
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(h, w, c), dtype=np.uint8,
                                              encoding="zlib"),
                "keypoints": tfds.features.Tensor(shape=(k, 2), dtype=np.float32),
                "frame_id": tfds.features.Text(),
                "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                "letterbox": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
                "noise_mask": tfds.features.Tensor(shape=(k,), dtype=np.bool_),
            })
            metadata = tfds.core.MetadataDict({
                "format": FORMAT,
                "bodyparts": list(ds.bodyparts),
                "has_noise_mask": ds.noise_mask is not None,
                "source": ds.source,
                "n_frames": ds.n_frames,
            })
            return tfds.core.DatasetInfo(
                builder=self, features=features, metadata=metadata,
                disable_shuffling=True,   # records in frame order: 'train[:10]' = first 10
                description=(f"Keypoint dataset written by ensemble_jax: {ds.n_frames} "
                             f"frames, {k} bodyparts {list(ds.bodyparts)}."))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            ds = self._ds
            noise = (ds.noise_mask if ds.noise_mask is not None
                     else np.zeros((ds.n_frames, ds.n_keypoints), bool))
            for i in range(ds.n_frames):
                yield i, {
                    "image": ds.images[i],
                    "keypoints": ds.keypoints[i],
                    "frame_id": ds.frame_ids[i],
                    "index": i,
                    "letterbox": ds.letterbox[i],
                    "original_size": ds.original_sizes[i],
                    "noise_mask": noise[i],
                }

    KeypointBuilder.name = name
    return KeypointBuilder


def write_tfds(dataset: KeypointDataset, data_dir: str | os.PathLike,
               name: str = "keypoints", *, version: str = "1.0.0",
               overwrite: bool = False) -> Path:
    """Packs `dataset` into the TFDS directory `<data_dir>/<name>/<version>/` (one split,
    "train", holding every frame) and returns that directory.

    The build happens in a temporary folder inside `data_dir` and is moved into place
    when complete, so a reader never sees a half-written dataset. An existing build is
    an error unless `overwrite=True`.
    """
    if not isinstance(dataset, KeypointDataset):
        raise DatasetError(f"write_tfds expects a KeypointDataset, got {type(dataset).__name__}")
    if not _NAME.match(name or ""):
        raise DatasetError(f"TFDS dataset name {name!r} must start with a letter and hold "
                           f"only letters, digits and '_'")
    if not re.match(r"^\d+\.\d+\.\d+$", version):
        raise DatasetError(f"version must look like 1.0.0, got {version!r}")
    data_dir = Path(data_dir)
    final = data_dir / name / version
    if final.exists() and not overwrite:
        raise DatasetError(f"{final}: a TFDS build already exists; pass overwrite=True")
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=data_dir))
    try:
        cls = _make_builder_class(name, version)
        builder = cls(dataset=dataset, data_dir=str(tmp), file_format="array_record")
        with _quiet():
            builder.download_and_prepare()
        built = Path(builder.data_dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if final.exists():
            old = final.with_name(f".{version}.old.{os.getpid()}")
            os.replace(final, old)
        os.replace(built, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------ read
def _version_key(p: Path) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in p.name.split("."))
    except ValueError:
        return (-1,)


def is_tfds_build(path: str | os.PathLike) -> bool:
    """Whether `path` is (or holds, one or two levels down) a prepared TFDS build."""
    try:
        return find_tfds_build(path) is not None
    except DatasetError:
        return True  # several builds: still TFDS


def find_tfds_build(path: str | os.PathLike) -> Path | None:
    """The build directory (the one holding dataset_info.json) at or below `path`:
    `path` itself, `path/<version>`, or `path/<name or config>/<version>` (the highest
    version). Several different datasets below `path` are an error."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "dataset_info.json").is_file():
        return p
    for depth in ("*", "*/*"):
        found = [f.parent for f in p.glob(f"{depth}/dataset_info.json")
                 if not f.parent.name.startswith(".")
                 and not any(part.startswith(".") for part in f.relative_to(p).parts)]
        if found:
            groups = {f.parent for f in found}
            if len(groups) > 1:
                raise DatasetError(f"{p}: holds several TFDS datasets "
                                   f"{sorted(str(g.relative_to(p)) for g in groups)}; pass one")
            return max(found, key=_version_key)
    return None


def _default_data_dir() -> Path:
    env = os.environ.get("TFDS_DATA_DIR")
    return Path(env) if env else Path.home() / "tensorflow_datasets"


def _from_directory(tfds, d: Path):
    """builder_from_directory, with a damaged or missing metadata file named."""
    d = Path(d)
    for f in ("dataset_info.json", "features.json"):
        if not (d / f).is_file():
            raise DatasetError(f"{d / f}: missing; {d} is not a complete TFDS build (write "
                               f"it again with write_tfds or download_and_prepare)")
        try:
            json.loads((d / f).read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{d / f}: damaged TFDS metadata ({type(e).__name__}: "
                               f"{str(e)[:200]})") from None
    try:
        with _quiet():
            return tfds.builder_from_directory(str(d))
    except Exception as e:   # ParseError, ValueError ...: name the build, not a traceback
        raise DatasetError(f"{d}: cannot open this TFDS build ({type(e).__name__}: "
                           f"{str(e)[:300]})") from None


def _open_builder(name_or_dir, data_dir):
    tfds = _import_tfds()
    p = Path(name_or_dir)
    if p.is_dir():
        d = find_tfds_build(p)
        if d is None:
            raise DatasetError(f"{p}: no TFDS build found (no dataset_info.json at or "
                               f"below it)")
        return _from_directory(tfds, d)
    name = str(name_or_dir)
    m = _FULL_NAME.match(name)
    if not m:
        raise DatasetError(f"TFDS dataset {name!r} not found: it is neither a folder nor a "
                           f"valid TFDS name ('name', 'name/config', 'name:1.0.0')")
    base = Path(data_dir) if data_dir is not None else _default_data_dir()
    folder = base / m["name"]
    if m["config"]:
        folder = folder / m["config"]
    if m["version"]:
        folder = folder / m["version"]
    try:
        d = find_tfds_build(folder)
    except DatasetError:
        d = None
    if d is not None:
        return _from_directory(tfds, d)
    if m["version"] and folder.parent.is_dir():
        have = sorted(p.name for p in folder.parent.iterdir() if p.is_dir()
                      and (p / "dataset_info.json").is_file())
        raise DatasetError(f"TFDS dataset {name!r}: no version folder {folder} (versions "
                           f"there: {', '.join(have) or 'none'})")
    try:
        with _quiet():
            builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except Exception as e:  # DatasetNotFoundError lists every registered name: keep it short
        raise DatasetError(
            f"TFDS dataset {name!r} not found (looked in {folder} and the TFDS registry: "
            f"{type(e).__name__}); write it with write_tfds or pass its folder") from None
    if not (Path(builder.data_dir) / "dataset_info.json").is_file():
        raise DatasetError(
            f"TFDS dataset {name!r} is registered but not prepared in {builder.data_dir}; "
            f"prepare it with download_and_prepare(file_format='array_record')")
    return builder


def _data_source(builder, split: str, label: str):
    splits = dict(builder.info.splits)
    base = split.split("[", 1)[0]
    if base not in splits:
        raise DatasetError(f"TFDS dataset {label}: no split {split!r} (splits: {sorted(splits)})")
    try:
        return builder.as_data_source(split=split)
    except (NotImplementedError, RuntimeError, ValueError) as e:
        raise DatasetError(f"TFDS dataset {label}: cannot open split {split!r} for random "
                           f"access ({type(e).__name__}: {str(e)[:300]}); it must be "
                           f"prepared with file_format='array_record'") from None


def _read_all(source) -> list[dict]:
    n = len(source)
    out: list[dict] = []
    for a in range(0, n, _CHUNK):
        idx = list(range(a, min(n, a + _CHUNK)))
        out.extend(source.__getitems__(idx) if hasattr(source, "__getitems__")
                   else [source[i] for i in idx])
    return out


def _text(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        v = v.item()
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)
    return str(v)


def read_tfds(name_or_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
              split: str = "train", image_key: str = "image",
              keypoints_key: str = "keypoints", bodyparts: Sequence[str] | None = None,
              image_size=None, frame_id_key: str = "frame_id") -> KeypointDataset:
    """Reads a TFDS dataset (array_record) into a `KeypointDataset`, without TensorFlow.

    Args:
      name_or_dir: a build folder (or a folder above one), or a dataset name
        ('name', 'name/config', 'name:1.0.0') looked up in `data_dir` (default:
        $TFDS_DATA_DIR or ~/tensorflow_datasets) and then in the TFDS registry.
      split: the split to read (slices like 'train[:100]' work).
      image_key, keypoints_key, frame_id_key: feature names of a foreign dataset.
      bodyparts: keypoint names of a foreign dataset (default: its metadata's
        'bodyparts' or 'keypoint_names', else kp0, kp1, ...).
      image_size: None keeps the stored size (a foreign dataset's images must then share
        one size); int or (H, W) letterboxes to that size (composing the transforms).
    """
    builder = _open_builder(name_or_dir, data_dir)
    label = f"{name_or_dir!s} ({builder.data_dir})"
    meta = dict(builder.info.metadata or {})
    source = _data_source(builder, split, label)
    try:
        with _quiet():
            items = _read_all(source)
    except Exception as e:   # a truncated or damaged array_record file
        files = sorted(Path(builder.data_dir).glob(f"*-{split.split('[', 1)[0]}.array_record*"))
        raise DatasetError(
            f"TFDS dataset {label}: cannot read split {split!r} from "
            f"{', '.join(str(f) for f in files) or builder.data_dir} (damaged or truncated? "
            f"{type(e).__name__}: {str(e)[:200]})") from None
    if not items:
        raise DatasetError(f"TFDS dataset {label}: split {split!r} holds zero frames")
    if meta.get("format") == FORMAT:
        return _own(items, meta, label, image_size)
    return _foreign(builder, items, meta, label, split, image_key, keypoints_key,
                    frame_id_key, bodyparts, image_size)


def _own(items: list[dict], meta: dict, label: str, image_size) -> KeypointDataset:
    items = sorted(items, key=lambda d: int(d["index"]))
    images = np.stack([np.asarray(d["image"], np.uint8) for d in items])
    keypoints = np.stack([np.asarray(d["keypoints"], np.float32) for d in items])
    letterbox = np.stack([np.asarray(d["letterbox"], np.float32) for d in items])
    sizes = np.stack([np.asarray(d["original_size"], np.int32) for d in items])
    noise = (np.stack([np.asarray(d["noise_mask"], bool) for d in items])
             if meta.get("has_noise_mask") else None)
    from ensemble_jax.data.auto_size import AutoImageSize
    # auto: from the stored frames (upsampling them past their stored size adds nothing)
    hw = (image_size.choose([(images.shape[2], images.shape[1])])
          if isinstance(image_size, AutoImageSize) else parse_image_size(image_size))
    if hw is not None and hw != images.shape[1:3]:
        images, lb2, _ = images_to_common_size(list(images), hw)
        s2, off2 = lb2[:, :1], lb2[:, 1:]
        keypoints = (s2[:, None] * keypoints + off2[:, None]).astype(np.float32)
        letterbox = np.concatenate([letterbox[:, :1] * s2,
                                    letterbox[:, 1:] * s2 + off2], axis=1).astype(np.float32)
    return KeypointDataset(images=images, keypoints=keypoints,
                           bodyparts=list(meta["bodyparts"]),
                           frame_ids=[_text(d["frame_id"]) for d in items],
                           noise_mask=noise, letterbox=letterbox, original_sizes=sizes,
                           source=str(meta.get("source") or label))


def _foreign(builder, items, meta, label, split, image_key, keypoints_key, frame_id_key,
             bodyparts, image_size) -> KeypointDataset:
    keys = sorted(items[0])
    for what, key in (("image_key", image_key), ("keypoints_key", keypoints_key)):
        if key not in items[0]:
            raise DatasetError(f"TFDS dataset {label}: no feature {key!r} ({what}); "
                               f"features: {keys}")
    arrays = []
    for i, d in enumerate(items):
        img = np.asarray(d[image_key])
        if img.dtype != np.uint8 or img.ndim not in (2, 3):
            raise DatasetError(f"TFDS dataset {label}, example {i}, key {image_key!r}: "
                               f"expected a uint8 image, got {img.dtype} {img.shape}")
        arrays.append(img)
    kps = []
    for i, d in enumerate(items):
        kp = np.asarray(d[keypoints_key], np.float64)
        if kp.ndim != 2 or kp.shape[1] not in (2, 3):
            raise DatasetError(f"TFDS dataset {label}, example {i}, key {keypoints_key!r}: "
                               f"expected [K, 2] (x, y) or [K, 3] (x, y, v), got {kp.shape}")
        if kp.shape[1] == 3:
            kp = np.where(kp[:, 2:3] == 0, np.nan, kp[:, :2])
        kps.append(kp)
    if len({k.shape for k in kps}) != 1:
        raise DatasetError(f"TFDS dataset {label}, key {keypoints_key!r}: examples have "
                           f"different numbers of keypoints")
    xy = np.stack(kps)
    k = xy.shape[1]
    names = list(bodyparts) if bodyparts is not None else list(
        meta.get("bodyparts") or meta.get("keypoint_names") or [f"kp{j}" for j in range(k)])
    if len(names) != k:
        raise DatasetError(f"TFDS dataset {label}: {len(names)} bodyparts for {k} keypoints "
                           f"in {keypoints_key!r}")
    if frame_id_key in items[0]:
        frame_ids = [_text(d[frame_id_key]) for d in items]
    else:
        frame_ids = [f"{split}/{i}" for i in range(len(items))]
    images, letterbox, sizes = images_to_common_size(
        arrays, image_size, names=[f"{label} example {i}" for i in range(len(items))])
    scale, off = letterbox[:, None, :1].astype(np.float64), letterbox[:, None, 1:]
    keypoints = (scale * xy + off).astype(np.float32)
    return KeypointDataset(images=images, keypoints=keypoints, bodyparts=names,
                           frame_ids=frame_ids, letterbox=letterbox, original_sizes=sizes,
                           source=label)
