"""SLEAP label files (`.slp`, and `.pkg.slp` with embedded images), read with sleap-io.

* Labels: user-labeled instances only; predicted instances (`PredictedInstance`, what a
  SLEAP model wrote) are ignored and counted in the log line the reader prints. A point
  that is not visible, or a node an instance lacks, is NaN. Coordinates are taken as they
  are (sleap-io's own DeepLabCut and COCO converters move no coordinate either: image
  pixels, pixel centres at integers).
* Bodyparts: the skeleton's node names, in skeleton order. Every user instance must use
  one skeleton.
* Several animals in a frame:
    - `individual=None` (default): a frame holds at most one user instance, or every
      user instance has a track (at most one instance per track and frame); then, as the
      DeepLabCut multi-animal reader does, each (track, node) pair is one keypoint named
      `"<track>/<node>"`, tracks in the file's order. Anything else is refused with one
      line naming the frame and the flag (`--individual largest|first|TRACK`).
    - `"largest"`: the instance whose labeled points span the largest box (ties: more
      labeled points, then the first); `"first"`: the first user instance of the frame;
      any other string: the instance on the track of that name (frames without it are
      left out and counted).
* Frames: only labeled frames with a user instance, ordered by video (the file's video
  order) and frame index. Pixels come from the embedded images of a `.pkg.slp`, else from
  the referenced video through sleap-io's backends: media files (mp4, avi, mov, mkv) with
  its PyAV plugin (PyAV is a dependency already), image sequences with its image reader.
  Channels: as sleap-io reports them for each video (the `grayscale` flag SLEAP stores);
  grey and colour videos mixed become colour.
* Missing videos: looked for under the same file name beside the `.slp`, then under
  `video_root=` (`--video-root DIR`: `DIR/<file name>`, for image sequences also
  `DIR/<folder>/<file name>`); a video found nowhere stops the read with one line naming
  it and the flag.
* Frame ids, stable and meaningful: image sequences `<folder>/<image file name>` (as
  DeepLabCut's `labeled-data/<video>/<image>`, without `labeled-data/`); media videos
  `<video stem>/img<frame index>.png`, zero-padded as DeepLabCut's frame extraction
  names frames (to ceil(log10(frame count)) digits, where the file records the count).
  Embedded frames are named after the video they were taken from (the `.pkg.slp`'s
  source video).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ensemble_jax import logs
from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.images import images_to_common_size
from ensemble_jax.data.letterbox import to_train

__all__ = ["read_sleap", "parse_sleap", "frame_ids"]

_POLICIES = ("largest", "first")
_FLAG = "--individual largest|first|TRACK"


def _sio():
    try:
        import sleap_io
    except ImportError as e:  # a dependency; a broken install still gets one line
        raise DatasetError(f"reading SLEAP files needs sleap-io ('pip install "
                           f"\"sleap-io>=0.9\"'), which is not installed ({e})") from None
    return sleap_io


def _load(path: Path):
    sio = _sio()
    if path.is_dir():
        raise DatasetError(f"{path}: a folder, not a SLEAP .slp file")
    if not path.is_file():
        raise DatasetError(f"{path}: SLEAP file not found")
    try:
        return sio.load_slp(str(path), open_videos=False)
    except Exception as e:  # h5py / KeyError / ValueError / JSON errors of a damaged file
        raise DatasetError(f"{path}: unreadable SLEAP file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _is_predicted(inst) -> bool:
    return type(inst).__name__ == "PredictedInstance"


def _extent(xy: np.ndarray) -> tuple[float, int]:
    ok = ~np.isnan(xy).any(-1)
    if not ok.any():
        return 0.0, 0
    p = xy[ok]
    return float(np.ptp(p[:, 0]) * np.ptp(p[:, 1])), int(ok.sum())


# ------------------------------------------------------------------------ frame ids
def _video_name(v) -> str:
    src = _names(v)
    fn = src.filename
    if isinstance(fn, (list, tuple)):
        return f"{len(fn)} images in {Path(str(fn[0])).parent}" if fn else "no images"
    return Path(str(fn).replace("\\", "/")).name


def _names(v) -> Any:
    """The video that names the frames: the source of embedded frames, else itself."""
    return v.source_video if getattr(v, "source_video", None) is not None else v


def _frame_count(v) -> int | None:
    """The video's frame count as the file records it, else from the video itself when
    it is at hand (a media video located by `_locate`), else None."""
    shape = (v.backend_metadata or {}).get("shape")
    try:
        if shape is not None and int(shape[0]) > 0:
            return int(shape[0])
    except (TypeError, ValueError, IndexError):
        pass
    fn = v.filename
    if isinstance(fn, str) and fn.lower().endswith(_media_exts()) and Path(fn).is_file():
        try:
            _open(v)
            n = v.shape[0] if v.shape is not None else None
            return int(n) if n else None
        except Exception:
            return None
        finally:
            _close(v)
    return None


def _frame_namer(v, k: int, slp: Path, recorded=None):
    """(video label, function frame_idx -> frame id) for video `k`; `recorded`: the file
    name(s) the .slp holds for it, when the video was found elsewhere (ids do not change
    with --video-root)."""
    src = _names(v)
    fn = recorded if recorded is not None and src is v else src.filename
    if isinstance(fn, (list, tuple)):
        files = [str(f).replace("\\", "/") for f in fn]

        def name(i: int) -> str:
            if not 0 <= i < len(files):
                raise DatasetError(f"{slp}: video {k} (an image sequence of {len(files)} "
                                   f"images) has no frame {i}")
            parts = files[i].split("/")
            return "/".join(p for p in parts[-2:] if p)
        label = "/".join(files[0].split("/")[-2:-1]) or f"video{k}"
        return label, name
    fn = str(fn).replace("\\", "/")
    if src is v and fn.lower().endswith((".slp", ".h5", ".hdf5")) and \
            (v.backend_metadata or {}).get("has_embedded_images"):
        stem = f"{Path(slp.name).stem.removesuffix('.pkg')}-video{k}"   # no source recorded
    else:
        base = fn.split("/")[-1]
        stem = base.rsplit(".", 1)[0] if "." in base else base
    n = _frame_count(src)
    width = int(math.ceil(math.log10(n))) if n and n > 1 else 0
    return stem, (lambda i: f"{stem}/img{int(i):0{width}d}.png")


# --------------------------------------------------------------------------- labels
def parse_sleap(path: str | os.PathLike, *, individual: str | None = None):
    """Parses the labels (no pixels): (labels, bodyparts, rows, xy float64 [n, K, 2],
    counts); rows are (video index, frame index) per frame, sorted."""
    path = Path(path)
    if individual is not None and (not isinstance(individual, str) or not individual):
        raise DatasetError(f"individual must be 'largest', 'first' or a track name, got "
                           f"{individual!r}")
    labels = _load(path)
    frames: dict[tuple[int, int], list] = {}
    n_pred = 0
    video_index = {id(v): k for k, v in enumerate(labels.videos)}
    for lf in labels.labeled_frames:
        user = [i for i in lf.instances if not _is_predicted(i)]
        n_pred += len(lf.instances) - len(user)
        if not user:
            continue
        key = (video_index.get(id(lf.video), -1), int(lf.frame_idx))
        if key[0] < 0:
            raise DatasetError(f"{path}: a labeled frame refers to a video that is not in "
                               f"the file's video list")
        frames.setdefault(key, []).extend(user)   # one frame labeled twice: merged
    n_user = sum(len(u) for u in frames.values())
    if not frames:
        raise DatasetError(f"{path}: zero labeled frames (no user-labeled instance; "
                           f"{n_pred} predicted instances ignored)")
    skeletons = list(dict.fromkeys(id(i.skeleton) for u in frames.values() for i in u))
    if len(skeletons) > 1:
        names = [s.name for s in labels.skeletons]
        raise DatasetError(f"{path}: user instances use {len(skeletons)} skeletons "
                           f"({names}); one skeleton per file is supported")
    skeleton = next(iter(frames.values()))[0].skeleton
    nodes = [str(n) for n in skeleton.node_names]
    if not nodes:
        raise DatasetError(f"{path}: the skeleton has no nodes")
    if len(set(nodes)) != len(nodes):
        raise DatasetError(f"{path}: the skeleton has duplicate node names {nodes}")
    keys = sorted(frames)

    def where(r: int) -> str:
        v, i = keys[r]
        return f"{path}, video {v} ({_video_name(labels.videos[v])}), frame index {i}"

    most = max(len(frames[key]) for key in keys)
    tracks: list[str] = []
    skipped = 0
    if individual is None and most > 1:
        untracked = next((r for r, key in enumerate(keys)
                          if any(i.track is None for i in frames[key])), None)
        crowded = next((r for r, key in enumerate(keys) if len(frames[key]) > 1), 0)
        if untracked is not None:
            n = len(frames[keys[crowded]])
            raise DatasetError(
                f"{where(crowded)}: {n} user-labeled animals and not every instance has "
                f"a track; pick one animal per frame with {_FLAG}")
        used = {id(i.track): i.track for key in keys for i in frames[key]}
        order = [t for t in labels.tracks if id(t) in used]         # the file's order,
        order += [t for k, t in used.items() if k not in {id(o) for o in order}]  # then any
        tracks = [str(t.name) for t in order]
        if len(set(tracks)) != len(tracks):
            dup = sorted({t for t in tracks if tracks.count(t) > 1})
            raise DatasetError(f"{path}: several tracks share the name(s) {dup}; rename "
                               f"them or pick one animal per frame with {_FLAG}")
        slot = {id(t): j for j, t in enumerate(order)}
        xy = np.full((len(keys), len(order) * len(nodes), 2), np.nan)
        for r, key in enumerate(keys):
            seen: set[int] = set()
            for inst in frames[key]:
                j = slot[id(inst.track)]
                if j in seen:
                    raise DatasetError(f"{where(r)}: two user instances on track "
                                       f"{tracks[j]!r}; pick one with {_FLAG}")
                seen.add(j)
                xy[r, j * len(nodes):(j + 1) * len(nodes)] = inst.numpy()
        bodyparts = [f"{t}/{n}" for t in tracks for n in nodes]
    else:
        known = {str(t.name) for t in labels.tracks}
        if individual not in (None, *_POLICIES) and individual not in known:
            raise DatasetError(
                f"{path}: --individual {individual}: no such track (tracks: "
                f"{sorted(known) or 'none'}); use largest, first or a track name")
        xy_rows, keep = [], []
        for r, key in enumerate(keys):
            insts = frames[key]
            if individual in (None, "first"):
                pick = insts[0]
            elif individual == "largest":
                sizes = [_extent(i.numpy()) for i in insts]
                pick = insts[max(range(len(insts)), key=lambda j: (sizes[j], -j))]
            else:
                on = [i for i in insts if i.track is not None and
                      str(i.track.name) == individual]
                if not on:
                    skipped += 1
                    continue
                if len(on) > 1:
                    raise DatasetError(f"{where(r)}: two user instances on track "
                                       f"{individual!r}")
                pick = on[0]
            xy_rows.append(pick.numpy())
            keep.append(r)
        if not keep:
            raise DatasetError(f"{path}: zero labeled frames on track {individual!r}")
        xy = np.stack(xy_rows).astype(np.float64)
        keys = [keys[r] for r in keep]
        bodyparts = nodes
    xy = np.asarray(xy, np.float64)
    if np.isnan(xy).all():
        raise DatasetError(f"{path}: zero labeled frames (every user-labeled point is "
                           f"missing or not visible)")
    counts = {"frames": len(keys), "user_instances": n_user, "predicted_ignored": n_pred,
              "tracks": len(tracks), "frames_without_track": skipped}
    return labels, bodyparts, keys, xy, counts


def frame_ids(labels, keys: Sequence[tuple[int, int]], path: Path,
              recorded: dict | None = None) -> list[str]:
    """One id per (video index, frame index) (see the module doc); the same name from
    two videos gets the video's index in front. `recorded`: {video index: the file
    name(s) the .slp holds} for videos found elsewhere."""
    recorded = recorded or {}
    namers = {k: _frame_namer(labels.videos[k], k, path, recorded.get(k))[1]
              for k in sorted({v for v, _ in keys})}
    ids = [namers[v](i) for v, i in keys]
    if len(set(ids)) != len(ids):
        clash = {f for f in ids if ids.count(f) > 1}
        ids = [f"video{v}/{f}" if f in clash else f for (v, _), f in zip(keys, ids)]
    return ids


# --------------------------------------------------------------------------- pixels
def _media_exts() -> tuple[str, ...]:
    from sleap_io.io.video_reading import MediaVideo
    return tuple("." + e for e in MediaVideo.EXTS)


def _exists(fn) -> bool:
    return Path(fn).is_file()


def _repoint(v, new) -> None:
    """`v.replace_filename(new)` keeping what the file records of the video (frame count,
    grayscale, fps): it is the same video found elsewhere, and sleap-io would otherwise
    guess the channels again from the first frame."""
    kept = {key: v.backend_metadata[key] for key in ("shape", "grayscale", "fps")
            if key in (v.backend_metadata or {})}
    v.replace_filename(new, open=False)
    v.backend_metadata.update(kept)


def _locate(v, k: int, slp: Path, video_root, used: Sequence[int]) -> None:
    """Points video `k` at an existing file (beside the .slp, or under video_root), or
    raises the one line naming it."""
    fn = v.filename
    embedded = (v.backend_metadata or {}).get("has_embedded_images") or (
        isinstance(fn, str) and fn.lower().endswith((".slp", ".h5", ".hdf5"))
        and getattr(v, "source_video", None) is not None)
    if isinstance(fn, (list, tuple)):
        files = [str(f) for f in fn]
        need = sorted({i for i in used if 0 <= i < len(files)})
        if all(_exists(files[i]) for i in need):
            return
        roots = [slp.parent] + ([Path(video_root)] if video_root else [])
        new = list(files)
        for i in need:
            if _exists(new[i]):
                continue
            p = Path(str(files[i]).replace("\\", "/"))
            for root in roots:
                for cand in (root / p.parent.name / p.name, root / p.name):
                    if cand.is_file():
                        new[i] = str(cand)
                        break
                else:
                    continue
                break
            else:
                raise _missing(slp, k, files[i], video_root, len(used))
        _repoint(v, new)
        return
    if not isinstance(fn, str):
        raise DatasetError(f"{slp}: video {k}: unsupported video reference {fn!r}")
    if _exists(fn):
        return
    if embedded:
        raise DatasetError(f"{slp}: video {k}: embedded images not found in {fn}")
    name = Path(fn.replace("\\", "/")).name
    for root in [slp.parent] + ([Path(video_root)] if video_root else []):
        cand = root / name
        if cand.is_file():
            _repoint(v, str(cand))
            return
    raise _missing(slp, k, fn, video_root, len(used))


def _missing(slp: Path, k: int, fn: str, video_root, n: int) -> DatasetError:
    name = Path(str(fn).replace("\\", "/")).name
    tail = (f"not beside the .slp nor under --video-root {video_root}" if video_root else
            f"pass --video-root DIR, a folder holding {name}")
    return DatasetError(f"{slp}: video not found: {fn} (video {k}, {n} labeled frames); "
                        f"{tail}")


def _open(v) -> None:
    """Opens `v` with sleap-io: media files through its PyAV plugin."""
    fn = v.filename
    if isinstance(fn, str) and fn.lower().endswith(_media_exts()):
        v.open(plugin="pyav")
    else:
        v.open()


def _close(v) -> None:
    """Closes `v`'s reader (not `Video.close`, which asks a media file for its frame rate
    through an FFmpeg subprocess)."""
    backend, v.backend = v.backend, None
    if backend is not None:
        try:
            backend.close()
        except Exception:
            pass


def _read_frames(v, k: int, slp: Path, frame_idx: Sequence[int]) -> list[np.ndarray]:
    fn = v.filename
    try:
        _open(v)
    except Exception as e:
        raise DatasetError(f"{slp}: video {k} ({fn if isinstance(fn, str) else fn[0]}): "
                           f"cannot be opened ({type(e).__name__}: {e})") from None
    out = []
    try:
        for i in frame_idx:
            try:
                a = np.asarray(v[int(i)])
            except Exception as e:
                name = fn if isinstance(fn, str) else fn[int(i)] if 0 <= i < len(fn) else fn[0]
                raise DatasetError(f"{slp}: video {k} ({name}): frame {i} cannot be read "
                                   f"({type(e).__name__}: {e})") from None
            if a.dtype != np.uint8:
                raise DatasetError(f"{slp}: video {k}: frame {i} is {a.dtype}, not 8-bit")
            out.append(a)
    finally:
        _close(v)
    return out


def read_sleap(path: str | os.PathLike, image_size=None, *, individual: str | None = None,
               video_root: str | os.PathLike | None = None) -> KeypointDataset:
    """Reads a SLEAP `.slp` / `.pkg.slp` into a `KeypointDataset` (see the module doc).

    Args:
      path: the labels file.
      image_size: None (all frames must share one size), int or `(H, W)`: letterbox size.
      individual: None, "largest", "first" or a track name: which animal of a frame with
        several user instances (None: tracks become keypoints, else refused).
      video_root: a folder where videos that moved are found by file name.
    """
    path = Path(path)
    labels, bodyparts, keys, xy, counts = parse_sleap(path, individual=individual)
    by_video: dict[int, list[int]] = {}
    for r, (k, i) in enumerate(keys):
        by_video.setdefault(k, []).append(r)
    recorded = {k: labels.videos[k].filename for k in by_video}
    for k, rows in by_video.items():
        _locate(labels.videos[k], k, path, video_root, [keys[r][1] for r in rows])
    ids = frame_ids(labels, keys, path, recorded)
    arrays: list[np.ndarray | None] = [None] * len(keys)
    for k, rows in by_video.items():
        v = labels.videos[k]
        for r, a in zip(rows, _read_frames(v, k, path, [keys[r][1] for r in rows])):
            arrays[r] = a
    images, letterbox, sizes = images_to_common_size(arrays, image_size, ids)
    line = (f"{path}: SLEAP labels: {counts['frames']} frames with user labels "
            f"({counts['user_instances']} user instances); {counts['predicted_ignored']} "
            f"predicted instances ignored")
    if counts["tracks"]:
        line += f"; {counts['tracks']} tracks as keypoints <track>/<node>"
    if counts["frames_without_track"]:
        line += (f"; {counts['frames_without_track']} frames without track "
                 f"{individual!r} left out")
    logs.info(line)
    return KeypointDataset(images=images, keypoints=to_train(xy, letterbox),
                           bodyparts=bodyparts, frame_ids=ids, letterbox=letterbox,
                           original_sizes=sizes, source=str(path))
