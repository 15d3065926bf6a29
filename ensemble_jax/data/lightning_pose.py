"""Lightning Pose label files: one `CollectedData.csv` for the whole dataset.

Same table as DeepLabCut (3 header rows scorer / bodyparts / coords, see
`ensemble_jax.data.dlc`), with image paths relative to the CSV's folder. Bodyparts keep
the CSV's column order; frames keep the CSV's row order (as Lightning Pose does).
A multi-animal (4-row) header is accepted and flattened to `"individual/bodypart"`.

Camera views: a Lightning Pose project with several views in one frame (a mirror) declares
in its config YAML which columns are the same body point seen in each view,
`data.mirrored_column_matches` (lists of keypoint indices, one list per view; Lightning Pose
uses them for its multi-view PCA loss). The reader looks for exactly one `config*.yaml`
next to the CSV (none or several: no views; `config=` names one) and keeps the matches as
`KeypointDataset.views` (by bodypart name), checking that `data.keypoint_names`, when given,
are the CSV's bodyparts in the CSV's order. Label checking uses them
(`analysis/multiview.py`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.dlc import _check_labeled, read_label_csv, table_to_dataset

__all__ = ["read_lightning_pose", "read_view_matches", "find_config"]


def find_config(folder: Path) -> Path | None:
    """The one `config*.yaml` (or .yml) in `folder`; None when there is none or several."""
    found = sorted(p for p in Path(folder).glob("config*.y*ml") if p.is_file()
                   and p.suffix in (".yaml", ".yml"))
    return found[0] if len(found) == 1 else None


def read_view_matches(config_path: str | os.PathLike, bodyparts) -> tuple | None:
    """`data.mirrored_column_matches` of a Lightning Pose config YAML as views of bodypart
    names (V tuples of J names, matched by position), None when the config declares none.
    Raises DatasetError naming the file for a config that cannot be read, whose
    `data.keypoint_names` are not `bodyparts` (the CSV's, same order), or whose matches are
    not V >= 2 equal-length lists of distinct valid indices."""
    import yaml
    path = Path(config_path)
    if not path.is_file():
        raise DatasetError(f"{path}: Lightning Pose config not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a readable YAML file ({str(e).splitlines()[0]})") \
            from None
    data = cfg.get("data") if isinstance(cfg, dict) else None
    if not isinstance(data, dict) or not data.get("mirrored_column_matches"):
        return None
    bodyparts = [str(b) for b in bodyparts]
    names = data.get("keypoint_names")
    if names is not None:
        names = [str(b) for b in names] if isinstance(names, list) else names
        if names != bodyparts:
            raise DatasetError(
                f"{path}: data.keypoint_names {names} are not the label file's bodyparts "
                f"{bodyparts} (same names, same order): its mirrored_column_matches would "
                f"point at the wrong columns")
    matches = data["mirrored_column_matches"]
    k = len(bodyparts)
    ok = (isinstance(matches, list) and len(matches) >= 2
          and all(isinstance(v, list) and v for v in matches)
          and len({len(v) for v in matches}) == 1
          and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < k
                  for v in matches for i in v))
    flat = [i for v in matches for i in v] if ok else []
    if not ok or len(set(flat)) != len(flat):
        raise DatasetError(
            f"{path}: data.mirrored_column_matches must be >= 2 lists of the same length "
            f"of distinct keypoint indices in 0..{k - 1}, got {matches}")
    return tuple(tuple(bodyparts[i] for i in v) for v in matches)


def read_lightning_pose(csv_path: str | os.PathLike, image_size=None, *,
                        image_root: str | os.PathLike | None = None,
                        config: str | os.PathLike | bool | None = None) -> KeypointDataset:
    """Reads a Lightning Pose `CollectedData.csv` (or a folder holding one).

    Args:
      csv_path: the CSV, or the folder that holds `CollectedData.csv`.
      image_size: None (all images must share one size), int or `(H, W)`: letterbox size.
      image_root: folder the image paths are relative to (default: the CSV's folder).
      config: the project's config YAML for its camera views (`read_view_matches`); None:
        the one `config*.yaml` next to the CSV if there is exactly one; False: no views.
    """
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        csv_path = csv_path / "CollectedData.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: label file not found")
    table = read_label_csv(csv_path)
    _check_labeled(table.frame_ids, table.xy, str(csv_path))
    # Views first: a config that contradicts the CSV is refused before images are read.
    if config is None:
        config = find_config(csv_path.parent)
    views = read_view_matches(config, table.names) if config else None
    root = Path(image_root) if image_root is not None else csv_path.parent
    contexts = [table.where(i) for i in range(len(table.frame_ids))]
    ds = table_to_dataset(root, table.frame_ids, table.xy, contexts, table.names,
                          image_size, str(csv_path))
    return dataclasses.replace(ds, views=views) if views else ds
