"""One entry point for every labeled-data format: `load_dataset(path)`.

Format detection from what `path` is:
  folder with config.yaml (or the config.yaml itself)    -> "dlc"
  folder holding a TFDS build (dataset_info.json at or
  one/two levels below it)                               -> "tfds"
  folder holding CollectedData.csv, or a .csv file       -> "lightning-pose"
  .json file                                             -> "coco"
  .slp file (also .pkg.slp)                              -> "sleap"
  a path that does not exist but is a valid TFDS name
  ('name', 'name/config', 'name:1.0.0')                  -> "tfds" (looked up by name)
`format=` forces one of these.
"""
from __future__ import annotations

import os
from pathlib import Path

from ensemble_jax.data.dataset import DatasetError, KeypointDataset

__all__ = ["load_dataset", "detect_format", "FORMATS"]

FORMATS = ("dlc", "lightning-pose", "coco", "tfds", "sleap")
_ALIASES = {"deeplabcut": "dlc", "lightning_pose": "lightning-pose", "lp": "lightning-pose",
            "lightningpose": "lightning-pose", "tensorflow-datasets": "tfds",
            "slp": "sleap"}


def _normalise(fmt: str) -> str:
    f = str(fmt).strip().lower()
    f = _ALIASES.get(f, f)
    if f not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; choose one of {list(FORMATS)}")
    return f


def detect_format(path: str | os.PathLike) -> str:
    """The format `load_dataset` would read `path` as (see the module doc)."""
    from ensemble_jax.data.tfds_io import _FULL_NAME, is_tfds_build

    p = Path(path)
    if p.is_dir():
        if (p / "config.yaml").is_file():
            return "dlc"
        if is_tfds_build(p):
            return "tfds"
        if (p / "CollectedData.csv").is_file():
            return "lightning-pose"
        raise DatasetError(
            f"{p}: cannot tell the dataset format: no config.yaml (DeepLabCut), no "
            f"CollectedData.csv (Lightning Pose), no TFDS build (dataset_info.json); pass "
            f"format= one of {list(FORMATS)}")
    if p.is_file():
        suffix = p.suffix.lower()
        if p.name in ("config.yaml", "config.yml") or suffix in (".yaml", ".yml"):
            return "dlc"
        if suffix == ".csv":
            return "lightning-pose"
        if suffix == ".json":
            return "coco"
        if suffix == ".slp":
            return "sleap"
        raise DatasetError(f"{p}: cannot tell the dataset format from the suffix "
                           f"{suffix!r}; pass format= one of {list(FORMATS)}")
    if _FULL_NAME.match(str(path)):
        return "tfds"
    raise DatasetError(f"{p}: no such file or folder (and not a TFDS dataset name)")


def load_dataset(path: str | os.PathLike, *, format: str | None = None, image_size=None,
                 individual: str | None = None, video_root: str | os.PathLike | None = None,
                 **kwargs) -> KeypointDataset:
    """Reads labeled frames in any supported format into a `KeypointDataset`.

    Args:
      path: a DeepLabCut project folder, a Lightning Pose CSV, a COCO JSON, a SLEAP .slp
        (or .pkg.slp), a TFDS build folder or a TFDS dataset name.
      format: force one of "dlc", "lightning-pose", "coco", "tfds", "sleap".
      image_size: None (images must share one size), int or (H, W): letterbox size.
      individual: SLEAP and COCO files: which animal of a frame with several
        ("largest", "first", or for SLEAP a track name); None: SLEAP tracks become
        keypoints, else such frames are refused.
      video_root: SLEAP files: a folder where moved videos are found by file name.
      **kwargs: passed to the reader (`read_dlc_project(scorer=)`,
        `read_lightning_pose(image_root=)`, `read_coco(image_dir=, category=,
        keep_unannotated=)`, `read_tfds(data_dir=, split=, image_key=, ...)`).
    """
    fmt = _normalise(format) if format is not None else detect_format(path)
    if individual is not None:
        if fmt not in ("sleap", "coco"):
            raise DatasetError(
                f"individual={individual}: picks one animal per frame in SLEAP and COCO "
                f"files; a {fmt} dataset has no such choice (a DeepLabCut multi-animal "
                f"project keeps every individual as its own keypoints)")
        kwargs["individual"] = individual
    if video_root is not None:
        if fmt != "sleap":
            raise DatasetError(f"video_root={video_root}: repoints the videos of a SLEAP "
                               f"file; a {fmt} dataset has none")
        kwargs["video_root"] = video_root
    try:
        if fmt == "dlc":
            from ensemble_jax.data.dlc import read_dlc_project
            return read_dlc_project(path, image_size, **kwargs)
        if fmt == "lightning-pose":
            from ensemble_jax.data.lightning_pose import read_lightning_pose
            return read_lightning_pose(path, image_size, **kwargs)
        if fmt == "coco":
            from ensemble_jax.data.coco import read_coco
            return read_coco(path, image_size=image_size, **kwargs)
        if fmt == "sleap":
            from ensemble_jax.data.sleap import read_sleap
            return read_sleap(path, image_size, **kwargs)
        from ensemble_jax.data.tfds_io import read_tfds
        return read_tfds(path, image_size=image_size, **kwargs)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise DatasetError(f"format {fmt!r}: {e}") from None
        raise
