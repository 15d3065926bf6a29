"""`ensemble-jax suggest`: which video frames to label next, written where DeepLabCut's
labeling GUI finds them.

The videos are predicted first (`video.predict`, resumable; the predictions are kept in
`--predictions`, default `RUN_DIR/video-predictions/`), then every frame is scored:

  mpe                 mpe_max: multi-peak entropy of the worst keypoint, mean over the
                      alive members (nats; several peaks = the networks are unsure)
  spread              spread_max: ensemble spread of the worst keypoint (px, original)
  representativeness  mpe_max x max(representativeness, 0): unsure frames that are also
                      typical of the video (an odd frame nobody will see again scores 0)
  cluster             k-means (k = budget) on the members' encoder features of the
                      eligible frames, then the frame with the highest mpe_max of each
                      cluster (DeepLabCut's active-learning recipe: cover the appearance
                      space, label the hardest frame of each part of it)
  uniform             evenly spaced over the eligible frames (a baseline)

Images are the frames as decoded in order: each is read by time stamp after a seek and
checked against the CRC that `predict` recorded for it (`frames.csv`).

Eligible frames are those more than `min_gap` frames away from every frame of the video
already in the destination folder (an extracted image `img<index>.png` or a row of a
`CollectedData_*` label file); picks are also kept `min_gap` apart while the budget allows.
The budget is shared by all videos (ranked together).

Destination: `--project P` writes `P/labeled-data/<video name>/img<index>.png` (zero-padded
as DeepLabCut's frame extraction names them: as wide as the folder's existing images, else
ceil(log10(frames of the video)) digits) and `suggested.csv` there (`suggested_<n>.csv`
when that exists); `--out D` writes the same into `D/<video name>/`. Existing files are
never written over (an image is created with a hard link that fails if the name exists)
and label files are never opened for writing. Every image written is listed in a
suggested.csv: a write that fails (a full disk) removes the images that call wrote, and
the temporaries a killed run left (`.img<index>.png.<pid>.tmp`) are removed by the next
run. config.yaml is not edited: add a new video to
its `video_sets` (DeepLabCut's `add_new_videos`) so that DeepLabCut merges the folder.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ensemble_jax import io as eio
from ensemble_jax.data.dataset import DatasetError
from ensemble_jax import logs

__all__ = ["suggest_frames", "kmeans", "BY", "labeled_indices", "select"]

BY = ("mpe", "spread", "representativeness", "cluster", "uniform")
_IMG = re.compile(r"^img(\d+)\.(png|jpg|jpeg)$", re.IGNORECASE)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster labels `[n]` of the rows of `x` `[n, D]` (k-means++ start, Lloyd steps,
    NumPy, deterministic for a seed)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    k = min(k, n)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(x[rng.choice(n, p=p)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    labels = np.zeros(n, np.int64)
    for it in range(iters):
        dist = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
        new = dist.argmin(1)
        if it and (new == labels).all():
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(0)
    return labels


def labeled_indices(folder: Path) -> set[int]:
    """Frame indices already present in a labeled-data folder: images `img<index>.*` and
    the rows of its `CollectedData_*.csv` label files (read, never written)."""
    found: set[int] = set()
    if not folder.is_dir():
        return found
    for p in folder.iterdir():
        m = _IMG.match(p.name)
        if m and p.is_file():
            found.add(int(m.group(1)))
    for p in folder.glob("CollectedData_*.csv"):
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise DatasetError(f"{p}: unreadable label file ({e})") from None
        for row in csv.reader(io.StringIO(text)):
            for cell in row[:3]:
                m = _IMG.match(cell.replace("\\", "/").split("/")[-1])
                if m:
                    found.add(int(m.group(1)))
    return found


def _pad_width(folder: Path, n_frames: int) -> int:
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _IMG.match(p.name)
        if m:
            return len(m.group(1))
    return max(1, int(math.ceil(math.log10(max(n_frames, 2)))))


def select(scores: np.ndarray, eligible: np.ndarray, video: np.ndarray, frame: np.ndarray,
           budget: int, by: str, min_gap: int, features: np.ndarray | None = None,
           mpe: np.ndarray | None = None, seed: int = 0) -> tuple[list[int], list[str], bool]:
    """Positions (into the pooled frame arrays) of the picks, a reason for each, and
    whether the pick-to-pick gap had to be dropped to fill the budget."""
    cand = np.flatnonzero(eligible)
    picked: list[int] = []
    reasons: list[str] = []

    def far(i) -> bool:
        return all(video[j] != video[i] or abs(int(frame[j]) - int(frame[i])) > min_gap
                   for j in picked)

    def by_score(order, why) -> None:
        for i in order:
            if len(picked) == budget:
                return
            if i not in picked and far(i):
                picked.append(int(i))
                reasons.append(why(i))

    def ranked(values):
        v = np.where(np.isfinite(values[cand]), values[cand], -np.inf)
        return cand[np.argsort(-v, kind="stable")]

    if by == "uniform":
        pos = np.unique(np.round(np.linspace(0, len(cand) - 1, budget)).astype(int))
        by_score(cand[pos], lambda i: f"evenly spaced over {len(cand)} eligible frames")
    elif by == "cluster":
        labels = kmeans(features[cand], budget, seed=seed)
        sizes = np.bincount(labels, minlength=budget)
        for c in range(budget):
            members = cand[labels == c]
            if not members.size:
                continue
            v = np.where(np.isfinite(mpe[members]), mpe[members], -np.inf)
            for i in members[np.argsort(-v, kind="stable")]:
                if far(i):
                    picked.append(int(i))
                    reasons.append(f"cluster {c} ({sizes[c]} frames): its highest mpe_max")
                    break
        by_score(ranked(mpe), lambda i: "highest mpe_max left (a cluster gave no frame)")
    else:
        name = {"mpe": "mpe_max", "spread": "spread_max",
                "representativeness": "mpe_max x representativeness"}[by]
        order = ranked(scores)
        rank = {int(i): r + 1 for r, i in enumerate(order)}
        by_score(order, lambda i: f"{name} rank {rank[int(i)]} of {len(cand)} eligible")
    relaxed = False
    if len(picked) < budget:          # the gap between picks cannot be kept: fill anyway
        relaxed = True
        for i in ranked(mpe if scores is None else np.where(np.isfinite(scores), scores,
                                                               mpe)):
            if len(picked) == budget:
                break
            if int(i) not in picked:
                picked.append(int(i))
                reasons.append(f"fills the budget (closer than {min_gap} frames to "
                               f"another pick)")
    return picked, reasons, relaxed


def _near(frames: np.ndarray, taken: set[int], gap: int) -> np.ndarray:
    """bool [n]: frames within `gap` of a frame in `taken` (sorted search, O(n log t))."""
    t = np.array(sorted(taken), np.int64)
    if not t.size:
        return np.zeros(len(frames), bool)
    pos = np.searchsorted(t, frames)
    left = np.abs(frames - t[np.clip(pos - 1, 0, len(t) - 1)])
    right = np.abs(t[np.clip(pos, 0, len(t) - 1)] - frames)
    return np.minimum(left, right) <= gap


def _link_new(tmp: Path, dest: Path) -> bool:
    """Moves `tmp` to `dest` only if `dest` does not exist (hard link, then unlink)."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_png_new(path: Path, frame: np.ndarray) -> bool:
    from PIL import Image
    buf = io.BytesIO()
    arr = frame[..., 0] if frame.shape[-1] == 1 else frame
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    if path.exists():
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_synced(tmp, buf.getvalue())
    except BaseException:         # a full disk: leave no temporary behind
        tmp.unlink(missing_ok=True)
        raise
    return _link_new(tmp, path)


_TMP = re.compile(r"^\.img\d+\.png\.(\d+)\.tmp$")


def _writer_gone(pid: int) -> bool:
    """True unless process `pid` (another suggest, maybe still writing) is alive."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:       # alive, someone else's
        return False
    except (ProcessLookupError, OverflowError, ValueError):
        return True
    return False


def _remove_stale_temporaries(folder: Path) -> None:
    """Deletes the `.img<index>.png.<pid>.tmp` files that a killed suggest left in `folder`
    (only that name, and only when that process is gone: a live one is still writing)."""
    for p in folder.iterdir() if folder.is_dir() else []:
        m = _TMP.match(p.name)
        if m and p.is_file() and not p.is_symlink() and _writer_gone(int(m.group(1))):
            p.unlink(missing_ok=True)


def _write_suggestions(dest: Path, images: list[tuple[str, np.ndarray]],
                       rows: list[list], header: list[str]) -> tuple[list[int], Path]:
    """Writes the new images and then their list (suggested[_n].csv); positions of the
    images written (one that exists is left as it is). On a failure (a full disk) the
    images this call wrote are removed again, so that every image of ours is listed in
    a suggested.csv; nothing else is touched."""
    written: list[Path] = []
    kept: list[int] = []
    try:
        for j, (name, frame) in enumerate(images):
            if _write_png_new(dest / name, frame):
                written.append(dest / name)
                kept.append(j)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header] + [rows[j] for j in kept])
        target = _free_name(dest, "suggested")
        eio.write_text(target, buf.getvalue())
    except BaseException as e:
        for p in written:
            p.unlink(missing_ok=True)
        if isinstance(e, OSError):    # one line naming the folder (ENOSPC names no file)
            err = OSError(f"{dest}: could not write the suggested frames ({e.strerror or e}); "
                          f"the images this run wrote there were removed again")
            err.errno = e.errno
            raise err from e
        raise
    return kept, target


def _free_name(folder: Path, stem: str) -> Path:
    p = folder / f"{stem}.csv"
    n = 1
    while p.exists():
        p = folder / f"{stem}_{n}.csv"
        n += 1
    return p


@logs.sink
def suggest_frames(run_dir: str | os.PathLike, videos: Sequence[str | os.PathLike], *,
                   budget: int, by: str = "mpe", project: str | os.PathLike | None = None,
                   out: str | os.PathLike | None = None,
                   predictions: str | os.PathLike | None = None, min_gap: int = 10,
                   batch_size: int = 32, seed: int = 0, progress: bool = True,
                   allow_short: bool = False) -> list[dict]:
    """Scores the frames of `videos`, picks `budget` of them and writes them (see the module
    doc). Every argument is checked before anything is written. Returns one dict per pick
    (video, frame, image path, score, reason)."""
    from ensemble_jax.video.predict import (FRAMES, load_run, predict_sources,
                                            read_frames_csv, read_uncertainty)
    from ensemble_jax.video.reader import VideoSource, read_frames
    if by not in BY:
        raise ValueError(f"--by {by!r}: choose one of {', '.join(BY)}")
    if (project is None) == (out is None):
        raise ValueError("give exactly one of --project DLC_PROJECT or --out DIR")
    if int(budget) != budget or budget < 1:
        raise ValueError(f"--budget {budget}: must be a positive integer")
    if min_gap < 0:
        raise ValueError(f"--min-gap {min_gap}: must be >= 0")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"--seed {seed}: must be a non-negative integer")
    if not videos:
        raise ValueError("give at least one --video")
    sources = [VideoSource(v) for v in videos]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        dup = sorted(n for n in names if names.count(n) > 1)[0]
        raise ValueError(f"two videos share the name {dup!r} (their frames would go to one "
                         f"folder); rename one")
    result = load_run(run_dir)
    if project is not None:
        from ensemble_jax.data.dlc import read_dlc_config
        root = Path(project)
        if root.is_file() and root.suffix in (".yaml", ".yml"):
            root = root.parent
        cfg, bps, _multi = read_dlc_config(root / "config.yaml")
        if list(bps) != list(result.bodyparts):
            raise ValueError(f"--project {root}: its bodyparts {bps} differ from the run's "
                             f"{list(result.bodyparts)}; frames labeled there would not match "
                             f"this ensemble")
        dests = [root / "labeled-data" / n for n in names]
        listed = {Path(str(v)).stem for v in (cfg.get("video_sets") or {})}
        for n in names:
            if n not in listed:
                logs.info(f"note: {n} is not in {root / 'config.yaml'} video_sets; add the video "
                          f"there (deeplabcut.add_new_videos) so that DeepLabCut merges "
                          f"labeled-data/{n}/ (suggest does not edit config.yaml)")
    else:
        if Path(out).exists() and not Path(out).is_dir():
            raise NotADirectoryError(f"--out {out}: exists and is a file, not a folder")
        dests = [Path(out) / n for n in names]
    taken = [labeled_indices(d) for d in dests]
    known = [s.n_frames for s in sources]
    if all(known):
        avail_max = sum(int((~_near(np.arange(n), tk, min_gap)).sum())
                        for n, tk in zip(known, taken))
        if budget > avail_max:
            raise ValueError(f"--budget {budget}: larger than the {avail_max} frames available "
                             f"({sum(known)} in the videos, less those within --min-gap "
                             f"{min_gap} of frames already there)")
    pred_dir = Path(predictions) if predictions is not None else Path(run_dir) / "video-predictions"
    infos = predict_sources(run_dir, pred_dir, videos=videos, batch_size=batch_size,
                            progress=progress, result=result, allow_short=allow_short,
                            flag="--predictions")

    # pooled arrays over all videos
    vid, frm, mpe, spread, rep, feats, elig = [], [], [], [], [], [], []
    for v, (s, info, tk) in enumerate(zip(sources, infos, taken)):
        d = pred_dir / s.name
        u = read_uncertainty(d / "uncertainty.csv")
        n = len(u["frame"])
        f_idx = np.arange(n)
        vid.append(np.full(n, v))
        frm.append(f_idx)
        mpe.append(u["mpe_max"])
        spread.append(u["spread_max"])
        rep.append(u["representativeness"])
        feats.append(np.load(d / "features.npy"))
        elig.append(~_near(f_idx, tk, min_gap))
    vid, frm = np.concatenate(vid), np.concatenate(frm)
    mpe, spread, rep = np.concatenate(mpe), np.concatenate(spread), np.concatenate(rep)
    feats, elig = np.concatenate(feats), np.concatenate(elig)
    n_taken = sum(len(t) for t in taken)
    if budget > int(elig.sum()):
        raise ValueError(f"--budget {budget}: larger than the {int(elig.sum())} frames "
                         f"available ({len(elig)} in the videos, less those within --min-gap "
                         f"{min_gap} of the {n_taken} frames already there)")
    if by == "cluster":
        elig &= np.isfinite(feats).all(1)
    scores = {"mpe": mpe, "spread": spread, "uniform": mpe, "cluster": mpe,
              "representativeness": mpe * np.maximum(np.nan_to_num(rep, nan=0.0), 0.0)}[by]
    picked, reasons, relaxed = select(scores, elig, vid, frm, budget, by, min_gap,
                                      features=np.nan_to_num(feats), mpe=mpe, seed=seed)
    if relaxed:
        logs.info(f"note: {budget} frames {min_gap} frames apart do not fit the eligible frames; "
                  f"the last picks are closer together")
    score_name = {"mpe": "mpe_max", "spread": "spread_max", "uniform": "mpe_max",
                  "cluster": "mpe_max", "representativeness": "mpe_max x representativeness"}[by]

    rows_out: list[dict] = []
    for v, s in enumerate(sources):
        mine = sorted((int(frm[i]), i, reasons[r]) for r, i in enumerate(picked) if vid[i] == v)
        if not mine:
            continue
        dest = dests[v]
        dest.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(dest)
        pad = _pad_width(dest, int(infos[v]["frames"]))
        # each image is checked against the frame as predict decoded it (time stamp, CRC)
        expect = read_frames_csv(pred_dir / s.name / FRAMES)
        frames = read_frames(s, [f for f, _, _ in mine], expect=expect)
        images = [(f"img{f:0{pad}d}.png", frames[f]) for f, _, _ in mine]
        rows = [[f, name, "NaN" if scores[i] != scores[i] else f"{float(scores[i]):.6g}",
                 score_name, by, why] for (f, i, why), (name, _) in zip(mine, images)]
        kept, target = _write_suggestions(
            dest, images, rows, ["frame", "image", "score", "score_name", "by", "reason"])
        for j, ((f, i, why), (name, _)) in enumerate(zip(mine, images)):
            if j not in kept:
                logs.info(f"{dest / name}: exists; left as it is and frame {f} not suggested")
                continue
            rows_out.append({"video": str(s.path), "frame": f, "image": str(dest / name),
                             "score": float(scores[i]), "reason": why})
        logs.info(f"{s.path}: {len(kept)} frames written to {dest} (list: {target.name})")
    return rows_out
