"""DeepLabCut projects and DeepLabCut-style label tables (also used by Lightning Pose).

A label table (`CollectedData_<scorer>.csv`) has 3 header rows `scorer` / `bodyparts` /
`coords` (multi-animal projects: 4 rows `scorer` / `individuals` / `bodyparts` /
`coords`), then one row per labeled frame whose row index is either one column with the
image path (`labeled-data/<video>/<img>.png`) or three columns (`labeled-data`, `<video>`,
`<img>.png`). Coordinates are image pixels with pixel centres at integers (what the
DeepLabCut labeling GUI stores); an empty cell is a missing label (NaN). `likelihood`
columns, which appear in machine-labeled tables, are dropped.

Policies:
* Bodyparts follow the order in `config.yaml`; extra columns in a CSV that the config
  does not name are ignored (as DeepLabCut's `merge_annotateddatasets` does).
* Multi-animal projects: every (individual, bodypart) pair becomes one keypoint named
  `"<individual>/<bodypart>"`, individuals in config order, each with the
  `multianimalbodyparts`, then the `uniquebodyparts` under the individual `single`
  (`"single/<bodypart>"`), the column order of DeepLabCut's own table. Identity is
  therefore fixed by the label columns: the network learns K = n_individuals x
  n_bodyparts (+ unique) heatmaps.
* Frames are sorted as DeepLabCut sorts its merged table (`sort_index` on the
  MultiIndex `(labeled-data, video, image)`): by the tuple of path components of the
  frame id, which is lexicographic string order on the path (`img10.png` < `img2.png`),
  except that a video folder sorts before any longer folder name that starts with it.
  `dlc_sort_key` is that key; `export.export_dlc_shuffles` uses the same one.
* A frame whose labels are all empty is kept (it counts in
  `KeypointDataset.counts()["unlabeled_frames"]`); a project with no labeled frame at all
  is an error.

The CSV is parsed with the stdlib `csv` module; `.h5` label files (only read when no CSV
exists) need pandas with PyTables.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.images import load_images
from ensemble_jax.data.letterbox import to_train

__all__ = ["LabelTable", "read_label_csv", "read_label_h5", "read_dlc_config",
           "read_dlc_project", "dlc_sort_key", "table_to_dataset"]

_LEVELS = ("scorer", "individuals", "bodyparts", "coords")


def dlc_sort_key(frame_id: str) -> tuple[str, ...]:
    """The order of DeepLabCut's merged label table: by path components."""
    return tuple(str(frame_id).replace("\\", "/").split("/"))


@dataclasses.dataclass
class LabelTable:
    """One parsed label table: `xy[i, k]` is keypoint `names[k]` in frame `frame_ids[i]`."""
    path: Path
    frame_ids: list[str]
    rows: list[str]            # where each frame came from, e.g. "line 5" or "row 3"
    names: list[str]           # keypoint names in header order ("bp" or "individual/bp")
    xy: np.ndarray             # float64 [n, K, 2], NaN = missing
    header_where: str          # where the bodyparts header is ("line 2", "key ...")
    multi_animal: bool = False

    def where(self, i: int) -> str:
        return f"{self.path}, {self.rows[i]}"

    def select(self, names: Sequence[str], what: str = "config.yaml") -> np.ndarray:
        """xy `[n, len(names), 2]` in the order of `names`; missing names are an error."""
        index = {n: k for k, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise DatasetError(
                f"{self.path}, {self.header_where}: bodyparts {missing} are in {what} but "
                f"not in the label file's header (it has {self.names})")
        return self.xy[:, [index[n] for n in names]]


# ----------------------------------------------------------------------------- CSV
def _first_label(cells: Sequence[str]) -> str:
    for c in cells[:3]:
        if c.strip():
            return c.strip().lower()
    return ""


def _leading_blank(cells: Sequence[str]) -> int:
    """Number of index columns in a header row: the label cell plus blanks after it."""
    j = 1
    while j < len(cells) and not cells[j].strip():
        j += 1
    return j


def _strip_trailing(cells: list[str]) -> list[str]:
    end = len(cells)
    while end > 0 and not cells[end - 1].strip():
        end -= 1
    return cells[:end]


def read_label_csv(path: str | os.PathLike) -> LabelTable:
    """Parses a DeepLabCut / Lightning Pose label CSV with the stdlib `csv` module.

    Every problem raises `DatasetError` naming the file and the 1-based line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: label file not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read label file ({e})") from e
    if not raw.strip():
        raise DatasetError(
            f"{path}: empty file (expected a label CSV with header rows "
            f"scorer / bodyparts / coords and one row per labeled frame)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}, line {line}: not UTF-8 text ({e.reason})") from None
    rows: list[tuple[int, list[str]]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((reader.line_num, cells))
    except csv.Error as e:
        raise DatasetError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None
    try:
        return _parse_rows(path, rows)
    except DatasetError:
        raise
    except (ValueError, IndexError, KeyError, TypeError) as e:  # defensive: never crash
        raise DatasetError(f"{path}: malformed label CSV ({type(e).__name__}: {e})") from e


def _parse_rows(path: Path, rows: list[tuple[int, list[str]]]) -> LabelTable:
    if not rows:
        raise DatasetError(f"{path}: empty file (no rows)")
    # ---- header rows
    header: dict[str, tuple[int, list[str]]] = {}
    i = 0
    for level in _LEVELS:
        if i >= len(rows):
            break
        line, cells = rows[i]
        label = _first_label(cells)
        if label == level:
            header[level] = (line, cells)
            i += 1
        elif level in ("scorer", "bodyparts", "coords"):
            seen = "/".join(header) or "nothing"
            raise DatasetError(
                f"{path}, line {line}: broken header: expected a row starting with "
                f"'{level}' (after {seen}), got {cells[:4]!r}; a label CSV starts with the "
                f"rows scorer / bodyparts / coords (multi-animal: scorer / individuals / "
                f"bodyparts / coords)")
    if "coords" not in header:
        line = rows[-1][0]
        raise DatasetError(
            f"{path}, line {line}: broken header: the file ends before the 'coords' "
            f"header row (truncated file?)")
    coords_line, coords = header["coords"]
    coords = _strip_trailing(list(coords))
    n_index = _leading_blank(coords)
    ncols = len(coords)
    if ncols <= n_index:
        raise DatasetError(f"{path}, line {coords_line}: broken header: no coordinate columns")
    for level, (line, cells) in header.items():
        cells = _strip_trailing(list(cells))
        if len(cells) != ncols:
            raise DatasetError(
                f"{path}, line {line}: broken header: the '{level}' row has {len(cells)} "
                f"cells, the 'coords' row (line {coords_line}) has {ncols}")
        if level != "scorer" and _leading_blank(cells) != n_index:
            raise DatasetError(
                f"{path}, line {line}: broken header: the '{level}' row has "
                f"{_leading_blank(cells)} index columns, the 'coords' row has {n_index}")
    multi = "individuals" in header
    bp_line, bp_cells = header["bodyparts"]
    ind_cells = header["individuals"][1] if multi else None
    # ---- columns
    cols: dict[str, dict[str, int]] = {}
    for j in range(n_index, ncols):
        coord = coords[j].strip().lower()
        if coord == "likelihood":
            continue
        if coord not in ("x", "y"):
            raise DatasetError(
                f"{path}, line {coords_line}, column {j + 1}: broken header: coordinate "
                f"{coords[j]!r} is not x, y or likelihood")
        bp = bp_cells[j].strip()
        if not bp:
            raise DatasetError(
                f"{path}, line {bp_line}, column {j + 1}: broken header: empty bodypart name")
        if multi:
            ind = ind_cells[j].strip()  # type: ignore[index]
            if not ind:
                raise DatasetError(f"{path}, line {header['individuals'][0]}, column {j + 1}: "
                                   f"broken header: empty individual name")
            bp = f"{ind}/{bp}"
        entry = cols.setdefault(bp, {})
        if coord in entry:
            raise DatasetError(
                f"{path}, line {coords_line}, column {j + 1}: broken header: a second "
                f"'{coord}' column for {bp!r} (first in column {entry[coord] + 1})")
        entry[coord] = j
    if not cols:
        raise DatasetError(f"{path}, line {coords_line}: broken header: no x/y columns")
    for bp, entry in cols.items():
        if set(entry) != {"x", "y"}:
            lack = ({"x", "y"} - set(entry)).pop()
            raise DatasetError(f"{path}, line {coords_line}: broken header: bodypart {bp!r} "
                               f"has no '{lack}' column")
    names = list(cols)
    jx = np.array([cols[b]["x"] for b in names])
    jy = np.array([cols[b]["y"] for b in names])
    # ---- data rows
    data = rows[i:]
    if data:  # a row of index names (pandas writes one when the index is named)
        line, cells = data[0]
        if not any(c.strip() for c in cells[n_index:]) and not any(
                ("." in c or "/" in c or "\\" in c) for c in cells[:n_index]):
            data = data[1:]
    if not data:
        raise DatasetError(f"{path}, line {coords_line}: zero labeled frames (the header is "
                           f"followed by no data rows)")
    frame_ids: list[str] = []
    where: list[str] = []
    seen: dict[str, int] = {}
    xy = np.full((len(data), len(names), 2), np.nan)
    for r, (line, cells) in enumerate(data):
        if len(cells) < ncols:
            raise DatasetError(
                f"{path}, line {line}: row has {len(cells)} cells but the header has "
                f"{ncols} (truncated file or broken row?)")
        if any(c.strip() for c in cells[ncols:]):
            raise DatasetError(
                f"{path}, line {line}: row has {len(_strip_trailing(list(cells)))} cells but "
                f"the header has {ncols}")
        index = [c.strip() for c in cells[:n_index]]
        if not all(index):
            raise DatasetError(f"{path}, line {line}: empty image path in the row index "
                               f"{cells[:n_index]!r}")
        frame = "/".join(index).replace("\\", "/")
        if frame in seen:
            raise DatasetError(f"{path}, line {line}: duplicate frame {frame!r} (also on "
                               f"line {seen[frame]})")
        seen[frame] = line
        frame_ids.append(frame)
        where.append(f"line {line}")
        for k, name in enumerate(names):
            for c, j in ((0, jx[k]), (1, jy[k])):
                s = cells[j].strip()
                if not s:
                    continue
                try:
                    v = float(s)
                except ValueError:
                    raise DatasetError(
                        f"{path}, line {line}, column {j + 1} ({name} {'xy'[c]}): "
                        f"non-numeric coordinate {s!r}") from None
                if math.isinf(v):
                    raise DatasetError(
                        f"{path}, line {line}, column {j + 1} ({name} {'xy'[c]}): infinite "
                        f"coordinate {s!r}; leave the cell empty for a missing label")
                xy[r, k, c] = v
    return LabelTable(path, frame_ids, where, names, xy, f"line {bp_line}", multi)


# ------------------------------------------------------------------------------ H5
def read_label_h5(path: str | os.PathLike, key: str = "df_with_missing") -> LabelTable:
    """Reads a DeepLabCut `.h5` label table (needs pandas with PyTables)."""
    path = Path(path)
    hint = (f"export the labels to CSV instead (with PyTables installed: "
            f"pandas.read_hdf('{path.name}', '{key}').to_csv('{path.stem}.csv'), or let "
            f"DeepLabCut save the labels again, which writes the CSV twin)")
    try:
        import pandas as pd
    except ImportError:
        raise DatasetError(f"{path}: reading .h5 label files needs pandas and PyTables, "
                           f"which are not installed; {hint}") from None
    try:
        df = pd.read_hdf(path, key)
    except ImportError as e:
        raise DatasetError(f"{path}: reading .h5 label files needs PyTables "
                           f"('pip install tables'), which is not installed ({e}); "
                           f"{hint}") from None
    except KeyError as e:
        raise DatasetError(f"{path}: no key {key!r} in the .h5 file ({e})") from None
    except Exception as e:  # HDF5ExtError, OSError, ValueError, ...
        raise DatasetError(f"{path}: unreadable .h5 label file ({type(e).__name__}: {e})") from e
    cols = df.columns
    if getattr(cols, "nlevels", 1) < 3:
        raise DatasetError(f"{path}, key {key!r}: columns must have the levels "
                           f"scorer/bodyparts/coords, got {list(cols.names)}")
    level_names = [str(n) for n in cols.names]
    lev = {n: i for i, n in enumerate(level_names)}
    if "coords" not in lev or "bodyparts" not in lev:
        lev = {"coords": cols.nlevels - 1, "bodyparts": cols.nlevels - 2}
        if cols.nlevels == 4:
            lev["individuals"] = 1
    multi = "individuals" in lev
    entries: dict[str, dict[str, int]] = {}
    for j, tup in enumerate(cols):
        coord = str(tup[lev["coords"]]).lower()
        if coord not in ("x", "y"):
            continue
        bp = str(tup[lev["bodyparts"]])
        if multi:
            bp = f"{tup[lev['individuals']]}/{bp}"
        entries.setdefault(bp, {})[coord] = j
    names = [b for b, e in entries.items() if set(e) == {"x", "y"}]
    if not names:
        raise DatasetError(f"{path}, key {key!r}: no x/y columns")
    values = df.to_numpy(dtype=np.float64, na_value=np.nan)
    xy = np.stack([values[:, [entries[b]["x"] for b in names]],
                   values[:, [entries[b]["y"] for b in names]]], axis=-1)
    frame_ids = []
    for idx in df.index:
        parts = idx if isinstance(idx, tuple) else (idx,)
        frame_ids.append("/".join(str(p) for p in parts).replace("\\", "/"))
    if len(set(frame_ids)) != len(frame_ids):
        dup = next(f for f in frame_ids if frame_ids.count(f) > 1)
        raise DatasetError(f"{path}, key {key!r}: duplicate frame {dup!r}")
    if not frame_ids:
        raise DatasetError(f"{path}, key {key!r}: zero labeled frames")
    rows = [f"key {key!r} row {i + 1}" for i in range(len(frame_ids))]
    return LabelTable(path, frame_ids, rows, names, xy, f"key {key!r} (bodyparts level)", multi)


# --------------------------------------------------------------------------- config
def read_dlc_config(config_path: str | os.PathLike) -> tuple[dict, list[str], bool]:
    """(config dict, keypoint names in project order, is multi-animal) of a config.yaml."""
    import yaml

    config_path = Path(config_path)
    if not config_path.is_file():
        raise DatasetError(f"{config_path}: missing config.yaml (not a DeepLabCut project "
                           f"folder: it needs config.yaml and labeled-data/)")
    try:
        cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise DatasetError(f"{config_path}{where}: invalid YAML ({e})") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DatasetError(f"{config_path}: unreadable ({e})") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{config_path}: expected a mapping of keys, got {type(cfg).__name__}")

    def str_list(key: str, required: bool = True) -> list[str]:
        val = cfg.get(key)
        if val is None and not required:
            return []
        if not isinstance(val, list) or not all(isinstance(v, (str, int)) for v in val):
            raise DatasetError(f"{config_path}: key {key!r} must be a list of names, got {val!r}")
        if required and not val:
            raise DatasetError(f"{config_path}: key {key!r} is empty")
        return [str(v) for v in val]

    if cfg.get("multianimalproject"):
        individuals = str_list("individuals")
        multi_bps = str_list("multianimalbodyparts")
        unique_bps = str_list("uniquebodyparts", required=False)
        names = [f"{ind}/{bp}" for ind in individuals for bp in multi_bps]
        names += [f"single/{bp}" for bp in unique_bps]
        return cfg, names, True
    return cfg, str_list("bodyparts"), False


def _label_file(folder: Path, scorer: str | None) -> Path | None:
    for suffix in (".csv", ".h5"):
        if scorer:
            own = folder / f"CollectedData_{scorer}{suffix}"
            if own.is_file():
                return own
        found = sorted(folder.glob(f"CollectedData_*{suffix}"))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DatasetError(
                f"{folder}: several label files {[f.name for f in found]} and none matches "
                f"the scorer {scorer!r} of config.yaml; keep one or set the scorer")
    return None


def _project_frame_id(raw: str, video: str) -> str:
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if "labeled-data" in parts:
        at = len(parts) - 1 - parts[::-1].index("labeled-data")
        return "/".join(parts[at:])
    return "/".join(["labeled-data", video, *parts[-1:]])


def table_to_dataset(root: Path, frame_ids: Sequence[str], xy: np.ndarray,
                     contexts: Sequence[str], bodyparts: Sequence[str], image_size,
                     source: str) -> KeypointDataset:
    """Loads the images `root / frame_id` and builds the dataset (keypoints letterboxed)."""
    images, letterbox, sizes = load_images([root / f for f in frame_ids], image_size,
                                           contexts)
    keypoints = to_train(xy, letterbox)
    return KeypointDataset(images=images, keypoints=keypoints, bodyparts=list(bodyparts),
                           frame_ids=list(frame_ids), letterbox=letterbox,
                           original_sizes=sizes, source=source)


def _check_labeled(frame_ids: Sequence[str], xy: np.ndarray, where: str) -> None:
    if len(frame_ids) == 0 or np.isnan(xy).all():
        raise DatasetError(f"{where}: zero labeled frames ({len(frame_ids)} rows, none with "
                           f"a label)")


def read_dlc_project(path: str | os.PathLike, image_size=None, *,
                     scorer: str | None = None) -> KeypointDataset:
    """Reads a DeepLabCut project folder (or its config.yaml) into a `KeypointDataset`.

    Reads every `labeled-data/<video>/CollectedData_<scorer>.csv` (`.h5`, key
    `df_with_missing`, where no CSV exists; needs PyTables). Folders ending in `_labeled`
    (made by `check_labels`) and folders without a label file are skipped.

    Args:
      path: the project folder or its `config.yaml`.
      image_size: None (all images must share one size), int or `(H, W)`: letterbox size.
      scorer: which `CollectedData_<scorer>` to read where a folder holds several;
        default: the `scorer` of config.yaml.
    """
    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        config_path, root = path, path.parent
    else:
        config_path, root = path / "config.yaml", path
    if not root.is_dir():
        raise DatasetError(f"{root}: DeepLabCut project folder not found")
    cfg, names, _multi = read_dlc_config(config_path)
    scorer = scorer or (str(cfg["scorer"]) if cfg.get("scorer") else None)
    labeled = root / "labeled-data"
    if not labeled.is_dir():
        raise DatasetError(f"{labeled}: folder not found (a DeepLabCut project keeps its "
                           f"labeled frames in labeled-data/<video>/)")
    tables: list[tuple[str, LabelTable]] = []
    for folder in sorted(p for p in labeled.iterdir() if p.is_dir()):
        if folder.name.endswith("_labeled"):
            continue
        f = _label_file(folder, scorer)
        if f is None:
            continue
        table = read_label_csv(f) if f.suffix == ".csv" else read_label_h5(f)
        tables.append((folder.name, table))
    if not tables:
        raise DatasetError(f"{labeled}: zero labeled frames (no labeled-data/<video>/"
                           f"CollectedData_*.csv or .h5 found)")
    frame_ids: list[str] = []
    contexts: list[str] = []
    blocks = []
    seen: dict[str, str] = {}
    for video, table in tables:
        blocks.append(table.select(names, what=f"{config_path.name} ({config_path})"))
        for i, raw in enumerate(table.frame_ids):
            fid = _project_frame_id(raw, video)
            if fid in seen:
                raise DatasetError(f"{table.where(i)}: duplicate frame {fid!r} (also at "
                                   f"{seen[fid]})")
            seen[fid] = table.where(i)
            frame_ids.append(fid)
            contexts.append(table.where(i))
    xy = np.concatenate(blocks)
    order = sorted(range(len(frame_ids)), key=lambda i: dlc_sort_key(frame_ids[i]))
    frame_ids = [frame_ids[i] for i in order]
    contexts = [contexts[i] for i in order]
    xy = xy[order]
    _check_labeled(frame_ids, xy, str(labeled))
    return table_to_dataset(root, frame_ids, xy, contexts, names, image_size, str(root))
