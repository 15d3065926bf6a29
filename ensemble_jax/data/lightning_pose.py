"""Lightning Pose label files: one `CollectedData.csv` for the whole dataset.

Same table as DeepLabCut (3 header rows scorer / bodyparts / coords, see
`ensemble_jax.data.dlc`), with image paths relative to the CSV's folder. Bodyparts keep
the CSV's column order; frames keep the CSV's row order (as Lightning Pose does).
A multi-animal (4-row) header is accepted and flattened to `"individual/bodypart"`.
"""
from __future__ import annotations

import os
from pathlib import Path

from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.dlc import _check_labeled, read_label_csv, table_to_dataset

__all__ = ["read_lightning_pose"]


def read_lightning_pose(csv_path: str | os.PathLike, image_size=None, *,
                        image_root: str | os.PathLike | None = None) -> KeypointDataset:
    """Reads a Lightning Pose `CollectedData.csv` (or a folder holding one).

    Args:
      csv_path: the CSV, or the folder that holds `CollectedData.csv`.
      image_size: None (all images must share one size), int or `(H, W)`: letterbox size.
      image_root: folder the image paths are relative to (default: the CSV's folder).
    """
    csv_path = Path(csv_path)
    if csv_path.is_dir():
        csv_path = csv_path / "CollectedData.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: label file not found")
    table = read_label_csv(csv_path)
    _check_labeled(table.frame_ids, table.xy, str(csv_path))
    root = Path(image_root) if image_root is not None else csv_path.parent
    contexts = [table.where(i) for i in range(len(table.frame_ids))]
    return table_to_dataset(root, table.frame_ids, table.xy, contexts, table.names,
                            image_size, str(csv_path))
