"""COCO keypoint annotations (`person_keypoints_*.json` style) plus an image folder.

* Bodyparts: the `keypoints` names of the keypoint category (one category with
  keypoints, or the one chosen with `category=`).
* Coordinates: COCO keypoints are pixel indices (pixel centres at integers, as
  detectron2 reads them), the project's convention, so they are taken as they are.
  Visibility `v = 0` -> NaN; `v = 1` (labeled, occluded) and `v = 2` are labels.
* One animal per frame. An image with several keypoint annotations is refused with a
  message naming the image id, unless `individual=` says which one to keep:
  `"largest"` (largest `area`, else bbox area, else most labeled keypoints; ties: first
  in file order) or `"first"` (first in file order). Crowd annotations (`iscrowd=1`)
  are ignored.
* Frames: images in the JSON's order; images without an annotation are skipped unless
  `keep_unannotated=True` (they become all-NaN frames). Frame ids are `file_name`.
* Images: `image_dir` if given, else the first of the JSON's folder, `images/` beside the
  JSON, and `../images` that holds the file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.dlc import table_to_dataset

__all__ = ["read_coco", "parse_coco"]

_POLICIES = (None, "largest", "first")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _ann_name(i: int, ann: dict) -> str:
    return f"annotations[{i}] (id={ann.get('id')!r}, image_id={ann.get('image_id')!r})"


def parse_coco(json_path: str | os.PathLike, *, individual: str | None = None,
               category: str | int | None = None, keep_unannotated: bool = False
               ) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """Parses the JSON: (bodyparts, file_names, xy float64 [n, K, 2], contexts)."""
    json_path = Path(json_path)
    if individual not in _POLICIES:
        raise DatasetError(f"--individual {individual}: a COCO file has no tracks; use "
                           f"largest or first")
    try:
        raw = json_path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{json_path}: COCO annotation file not found") from None
    except OSError as e:
        raise DatasetError(f"{json_path}: cannot read ({e})") from None
    if not raw.strip():
        raise DatasetError(f"{json_path}: empty file (expected COCO keypoint JSON)")
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{json_path}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_path}, line {e.lineno}, column {e.colno}: invalid JSON "
                           f"({e.msg}; truncated file?)") from None
    except RecursionError:
        raise DatasetError(f"{json_path}: JSON nested too deeply") from None
    try:
        return _parse_doc(json_path, doc, individual, category, keep_unannotated)
    except DatasetError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as e:
        raise DatasetError(f"{json_path}: malformed COCO file ({type(e).__name__}: {e})") from e


def _parse_doc(path: Path, doc: Any, individual, category, keep_unannotated):
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: top level must be an object with keys images, "
                           f"annotations, categories; got {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DatasetError(f"{path}: key {key!r} must be a list, got "
                               f"{type(doc.get(key)).__name__}")
    # ---- category
    cats = []
    for i, c in enumerate(doc["categories"]):
        if not isinstance(c, dict):
            raise DatasetError(f"{path}: categories[{i}] must be an object")
        if c.get("keypoints"):
            cats.append((i, c))
    if category is not None:
        cats = [(i, c) for i, c in cats if c.get("id") == category or c.get("name") == category]
        if not cats:
            raise DatasetError(f"{path}: key 'categories': no keypoint category {category!r}")
    if not cats:
        raise DatasetError(f"{path}: key 'categories': no category with a 'keypoints' list")
    if len(cats) > 1:
        raise DatasetError(f"{path}: key 'categories': several keypoint categories "
                           f"{[c.get('name') for _, c in cats]}; pass category=<name or id>")
    ci, cat = cats[0]
    names = cat["keypoints"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DatasetError(f"{path}: categories[{ci}].keypoints must be a list of names")
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: categories[{ci}].keypoints has duplicate names")
    k = len(names)
    cat_id = cat.get("id")
    # ---- images
    images: dict[Any, int] = {}
    files: list[str] = []
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict):
            raise DatasetError(f"{path}: images[{i}] must be an object")
        if "id" not in im or not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise DatasetError(f"{path}: images[{i}] needs 'id' and 'file_name'")
        iid = im["id"]
        if not isinstance(iid, (int, str)) or isinstance(iid, bool):
            raise DatasetError(f"{path}: images[{i}].id must be an int or string, got {iid!r}")
        if iid in images:
            raise DatasetError(f"{path}: images[{i}]: duplicate image id {iid!r} "
                               f"(also images[{images[iid]}])")
        images[iid] = i
        files.append(im["file_name"].replace("\\", "/"))
    if len(set(files)) != len(files):
        dup = next(f for f in files if files.count(f) > 1)
        raise DatasetError(f"{path}: key 'images': file_name {dup!r} appears twice")
    # ---- annotations
    per_image: dict[int, list[tuple[int, dict, np.ndarray]]] = {}
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            raise DatasetError(f"{path}: annotations[{i}] must be an object")
        if "category_id" in ann and cat_id is not None and ann["category_id"] != cat_id:
            continue
        if ann.get("iscrowd"):
            continue
        iid = ann.get("image_id")
        if not isinstance(iid, (int, str)) or isinstance(iid, bool) or iid not in images:
            raise DatasetError(f"{path}: {_ann_name(i, ann)}: image_id {iid!r} is not an "
                               f"id in 'images' (unknown image)")
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * k:
            got = len(kps) if isinstance(kps, list) else type(kps).__name__
            raise DatasetError(f"{path}: {_ann_name(i, ann)}: 'keypoints' has length {got}, "
                               f"expected 3 x {k} = {3 * k} (x, y, v per keypoint of "
                               f"category {cat.get('name')!r})")
        if not all(_num(v) for v in kps):
            bad = next(j for j, v in enumerate(kps) if not _num(v))
            raise DatasetError(f"{path}: {_ann_name(i, ann)}: keypoints[{bad}] = "
                               f"{kps[bad]!r} is not a number")
        arr = np.asarray(kps, np.float64).reshape(k, 3)
        if np.isinf(arr).any():
            raise DatasetError(f"{path}: {_ann_name(i, ann)}: infinite keypoint coordinate")
        xy = np.where((arr[:, 2:3] == 0), np.nan, arr[:, :2])
        per_image.setdefault(images[iid], []).append((i, ann, xy))
    # ---- one annotation per image
    order = range(len(files)) if keep_unannotated else sorted(per_image)
    out_files, out_xy, contexts = [], [], []
    for idx in order:
        anns = per_image.get(idx, [])
        if len(anns) > 1:
            iid = doc["images"][idx]["id"]
            if individual is None:
                raise DatasetError(
                    f"{path}: image id {iid!r} ({files[idx]}) has {len(anns)} keypoint "
                    f"annotations ({', '.join(f'annotations[{i}]' for i, _, _ in anns)}); "
                    f"one animal per frame is supported: pick one with --individual "
                    f"largest|first")
            if individual == "largest":
                anns = [max(anns, key=_size_of)]
            else:
                anns = anns[:1]
        if anns:
            i, ann, xy = anns[0]
            contexts.append(f"{path}, images[{idx}] / annotations[{i}]")
            out_xy.append(xy)
        else:
            contexts.append(f"{path}, images[{idx}]")
            out_xy.append(np.full((k, 2), np.nan))
        out_files.append(files[idx])
    xy = np.stack(out_xy) if out_xy else np.zeros((0, k, 2))
    if not out_files or np.isnan(xy).all():
        raise DatasetError(f"{path}: zero labeled frames (no annotation with a visible "
                           f"keypoint of category {cat.get('name')!r})")
    return list(names), out_files, xy, contexts


def _size_of(item: tuple[int, dict, np.ndarray]) -> tuple[float, float]:
    _, ann, xy = item
    area = ann.get("area")
    if not (_num(area) and math.isfinite(area)):
        bbox = ann.get("bbox")
        area = (float(bbox[2]) * float(bbox[3]) if isinstance(bbox, list) and len(bbox) == 4
                and all(_num(b) for b in bbox) else 0.0)
    return float(area), float((~np.isnan(xy[:, 0])).sum())


def _resolve(json_path: Path, image_dir, files: Sequence[str], contexts: Sequence[str]
             ) -> Path:
    """The folder the images are relative to (checked on every image)."""
    if image_dir is not None:
        candidates = [Path(image_dir)]
    else:
        here = json_path.parent
        candidates = [here, here / "images", here.parent / "images"]
    for cand in candidates:
        if (cand / files[0]).is_file():
            break
    else:
        raise DatasetError(f"{contexts[0]}: image file {files[0]!r} not found in "
                           f"{[str(c) for c in candidates]} (pass image_dir=)")
    for f, ctx in zip(files, contexts):
        if not (cand / f).is_file():
            raise DatasetError(f"{ctx}: image file not found: {cand / f}")
    return cand


def read_coco(json_path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
              image_size=None, *, individual: str | None = None,
              category: str | int | None = None, keep_unannotated: bool = False
              ) -> KeypointDataset:
    """Reads a COCO keypoints JSON and its images into a `KeypointDataset`.

    Args:
      json_path: the annotation file.
      image_dir: folder the `file_name`s are relative to (default: see module doc).
      image_size: None (all images must share one size), int or `(H, W)`: letterbox size.
      individual: None (refuse images with several annotations), "largest" or "first".
      category: the keypoint category's name or id when the file has several.
      keep_unannotated: keep images without an annotation as all-NaN frames.
    """
    json_path = Path(json_path)
    names, files, xy, contexts = parse_coco(json_path, individual=individual,
                                            category=category,
                                            keep_unannotated=keep_unannotated)
    root = _resolve(json_path, image_dir, files, contexts)
    return table_to_dataset(root, files, xy, contexts, names, image_size, str(json_path))
