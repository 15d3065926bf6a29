"""The frames of a video stream, from its demuxed packets (no decoding): what random access
needs to land on frame i exactly.

Frame i is the i-th frame in presentation order, the order a sequential decode returns
(and DeepLabCut's frame extraction numbers). Each packet of the stream carries one frame's
presentation time stamp (pts), so sorting the packets' pts gives every frame's pts: no
arithmetic on an average frame rate, which is wrong for variable frame rates and
edit lists. Key-frame packets, kept in decode order, are where a decoder may start.

`exact` is False where the time stamps cannot place frames (a packet without a pts,
two packets with the same pts): the reader then decodes from the start and counts, which
is always exact, only slower.

The index is built once per video and cached as `.npz` beside the predictions; a cache is
used only while the video's size and modification time are what it records.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from ensemble_jax.data.dataset import DatasetError

__all__ = ["FrameIndex", "build_index", "load_or_build"]

INDEX_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class FrameIndex:
    pts: np.ndarray          # int64 [n]: frame i's presentation time stamp (stream time base)
    key_pts: np.ndarray      # int64 [k]: pts of the key-frame packets, in decode order
    declared: int            # frames the container declares (0: it does not say)
    exact: bool              # time stamps place every frame (else: decode and count)
    size: int                # the video's size in bytes and mtime (ns) when indexed
    mtime_ns: int
    source: str = "packets"  # "packets", or "decode" once a full decode corrected it

    @property
    def n_frames(self) -> int:
        return int(len(self.pts))

    def key_before(self, target_pts: int, back: int = 1) -> int | None:
        """pts of the key frame to start decoding at for a frame with `target_pts`: the
        last key frame in decode order at or before it, then `back` key frames earlier
        (an open GOP's first frames refer to the GOP before). None: from the start."""
        order = np.flatnonzero(self.key_pts <= target_pts)
        if not order.size:
            return None
        j = int(order[-1]) - int(back)
        return None if j <= 0 else int(self.key_pts[j])

    def matches(self, path: str | os.PathLike) -> bool:
        st = Path(path).stat()
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns

    def save(self, path: str | os.PathLike) -> None:
        from ensemble_jax import io as eio
        eio.save_npz(path, format=np.int64(INDEX_FORMAT), pts=self.pts, key_pts=self.key_pts,
                     declared=np.int64(self.declared), exact=np.bool_(self.exact),
                     size=np.int64(self.size), mtime_ns=np.int64(self.mtime_ns),
                     source=np.str_(self.source))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FrameIndex | None":
        """The cached index, or None where the file is missing, damaged or of another
        format (it is then rebuilt: a cache is never trusted over the video)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) != INDEX_FORMAT:
                    return None
                return cls(pts=z["pts"].astype(np.int64), key_pts=z["key_pts"].astype(np.int64),
                           declared=int(z["declared"]), exact=bool(z["exact"]),
                           size=int(z["size"]), mtime_ns=int(z["mtime_ns"]),
                           source=str(z["source"]))
        except (OSError, KeyError, ValueError, EOFError):
            return None

    def with_decoded(self, pts: np.ndarray) -> "FrameIndex":
        """The index as a full sequential decode found it (the decoder may drop or add
        frames that packets alone cannot tell)."""
        pts = np.asarray(pts, np.int64)
        exact = bool(pts.size == np.unique(pts).size and np.all(np.diff(pts) > 0))
        return dataclasses.replace(self, pts=pts, exact=exact, source="decode")


def build_index(path: str | os.PathLike) -> FrameIndex:
    """Demuxes the first video stream of `path` (packets only, no decoding)."""
    import av
    path = Path(path)
    st = path.stat()
    pts, keys, missing = [], [], 0
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            declared = int(s.frames or 0)
            for p in c.demux(s):
                if p.size == 0:            # the flush packet at the end
                    continue
                if p.pts is None:
                    missing += 1
                    continue
                pts.append(int(p.pts))
                if p.is_keyframe:
                    keys.append(int(p.pts))
    except (av.error.FFmpegError, EOFError) as e:
        # a damaged tail: what was demuxed so far is the index (the frame count check
        # then says the video is short)
        if not pts:
            raise DatasetError(f"--video {path}: cannot be demuxed "
                               f"({type(e).__name__}: {e})") from None
    arr = np.sort(np.asarray(pts, np.int64))
    exact = missing == 0 and arr.size > 0 and np.unique(arr).size == arr.size
    return FrameIndex(pts=arr, key_pts=np.asarray(keys, np.int64), declared=declared,
                      exact=bool(exact), size=int(st.st_size), mtime_ns=int(st.st_mtime_ns))


def load_or_build(video: str | os.PathLike, cache: str | os.PathLike | None,
                  built: FrameIndex | None = None) -> FrameIndex:
    """The cached index of `video` at `cache` while it matches the video's size and
    modification time, else `built` (an index already made of it) or a new one, written to
    `cache` when given."""
    if cache is not None and Path(cache).is_file():
        idx = FrameIndex.load(cache)
        if idx is not None and idx.matches(video):
            return idx
    idx = built if built is not None and built.matches(video) else build_index(video)
    if cache is not None:
        idx.save(cache)
    return idx
