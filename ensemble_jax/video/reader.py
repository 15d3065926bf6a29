"""Frames from videos (PyAV, whose wheels bring their own FFmpeg) and image folders.

A *source* is one video or one folder of images; its frames are numbered 0, 1, 2, ... in
presentation order (a video: the order a sequential decode returns them, as DeepLabCut's
frame extraction numbers them) or file-name order (a folder, numbers compared as numbers:
`img2.png` before `img10.png`). `batches(source, ...)` yields them letterboxed to the
training size, in batches of a fixed size, decoded on a background thread (`prefetch`)
so that decoding runs beside the device work.

Random access (a resumed `predict`, `suggest`'s images) is frame-exact for every video
PyAV opens: `frame_index` lists every frame's time stamp from the demuxed packets; the
reader seeks to a key frame before the wanted frame, decodes forward and takes frames by
time stamp, never by arithmetic on an average rate (`VideoSource` says how). `predict`
records each frame's time stamp and a CRC of its pixels; a seek is checked against them,
and where it cannot be trusted the reader decodes from the start, which is always exact.

Channels: frames are converted to what the run was trained on: RGB, or grey with
Pillow's `convert("L")` (ITU-R 601-2 luma), as the training images were.
"""
from __future__ import annotations

import dataclasses
import os
import queue
import re
import threading
import time
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.images import IMAGE_SUFFIXES, load_image
from ensemble_jax.data.letterbox import letterbox_image
from ensemble_jax.video.frame_index import FrameIndex, load_or_build
from ensemble_jax import logs

__all__ = ["VideoSource", "ImageFolderSource", "open_source", "Batch", "batches",
           "prefetch", "write_video", "read_frames", "to_channels", "VIDEO_SUFFIXES",
           "Decoded", "frame_crc"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv",
                  ".flv", ".mj2", ".h264", ".ts")


def to_channels(frame: np.ndarray, channels: int) -> np.ndarray:
    """uint8 `[h, w, 1|3]` -> `[h, w, channels]`: grey repeated into RGB, or RGB to grey
    by Pillow's `convert("L")` (the conversion the training images went through)."""
    c = frame.shape[-1]
    if c == channels:
        return frame
    if channels == 3:
        return np.repeat(frame, 3, axis=-1)
    from PIL import Image
    return np.asarray(Image.fromarray(frame).convert("L"))[..., None]


def _natural_key(p: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


class _Missed(Exception):
    """A seek did not land where the time stamps said (or decoded other pixels than an
    earlier decode): the reader falls back to decoding from the start."""


@dataclasses.dataclass
class Decoded:
    index: int                   # frame number, presentation order from 0
    pts: int | None              # presentation time stamp (stream time base)
    rgb: np.ndarray              # uint8 [h, w, 3]


def frame_crc(rgb: np.ndarray) -> int:
    """CRC-32 of a decoded frame's bytes: what `predict` records per frame, so that a later
    seek (a resume, `suggest`'s images) can prove it decoded the same pixels."""
    return zlib.crc32(np.ascontiguousarray(rgb, np.uint8).data) & 0xFFFFFFFF


class VideoSource:
    """One video file. Frames are numbered in presentation order from 0, as a sequential
    decode returns them. `n_frames` is what the container declares, else what its packets
    count (`frame_index`); `declared` is the container's own count (0: it does not say).

    Random access (`decoded(start)`, `read_frames`) seeks to a key frame one GOP before the
    wanted frame (an open GOP's first frames refer to the one before), primes the decoder
    with the stream's first packet (some decoders take stream-wide settings from it: FFmpeg
    reads the x264 version from its SEI and decodes old x264 4:4:4 streams differently
    without it, green frames), decodes forward and takes frames by time stamp. A seek that
    does not land, or decodes other pixels than a CRC recorded earlier, falls back to
    decoding from the start, which is always exact."""
    kind = "video"

    def __init__(self, path: str | os.PathLike, index_cache: str | os.PathLike | None = None):
        import av
        self.path = Path(path)
        self.name = self.path.stem
        self.index_cache = index_cache
        self._index = None
        if not self.path.is_file():
            raise DatasetError(f"--video {self.path}: file not found")
        try:
            with av.open(str(self.path)) as c:
                if not c.streams.video:
                    raise DatasetError(f"--video {self.path}: holds no video stream")
                s = c.streams.video[0]
                self.declared = int(s.frames or 0)
                self.fps = float(s.average_rate) if s.average_rate else float("nan")
                self.time_base = s.time_base or Fraction(1, 1)
                first_packet = next((p for p in c.demux(s) if p.size), None)
                self._prime = None
                if first_packet is not None and first_packet.is_keyframe:
                    self._prime = (bytes(first_packet), first_packet.pts, first_packet.dts)
            with av.open(str(self.path)) as c:
                first = next(c.decode(c.streams.video[0]), None)
        except DatasetError:
            raise
        except Exception as e:   # av.error.InvalidDataError, EOFError, ...
            raise DatasetError(f"--video {self.path}: not a readable video "
                               f"({type(e).__name__}: {e})") from None
        if first is None:
            raise DatasetError(f"--video {self.path}: holds no decodable frame")
        self.width, self.height = int(first.width), int(first.height)
        self.n_frames = self.declared

    @property
    def index(self) -> FrameIndex:
        """The stream's frame index (packets' time stamps), built on first use, cached at
        `index_cache` when set."""
        if self._index is None:
            self._index = load_or_build(self.path, self.index_cache)
            if not self.n_frames:
                self.n_frames = self._index.n_frames
        return self._index

    def use_cache(self, path: str | os.PathLike) -> None:
        """Keeps the index at `path`: a valid cached one is used (it may hold a full
        decode's corrections), else the current one is written there."""
        self.index_cache = Path(path)
        self._index = load_or_build(self.path, path, built=self._index)

    def remember_decoded(self, pts: Sequence[int]) -> None:
        """A full sequential decode's time stamps: they become the index where the
        packets disagree (a decoder may drop or add frames), and the cache is updated."""
        idx = self.index
        pts = np.asarray(pts, np.int64)
        if np.array_equal(pts, idx.pts):
            return
        self._index = idx.with_decoded(pts)
        if self.index_cache is not None:
            self._index.save(self.index_cache)

    def check_complete(self, n: int | None = None) -> str | None:
        """None, or a line saying that the video holds fewer frames than its container
        declares (`n` decoded; default: the packets counted)."""
        n = self.index.n_frames if n is None else int(n)
        if self.declared and n < self.declared:
            return (f"--video {self.path}: holds {n} frames, its container declares "
                    f"{self.declared} (truncated or damaged)")
        return None

    def fingerprint(self) -> dict:
        st = self.path.stat()
        return {"path": str(self.path.resolve()), "bytes": st.st_size,
                "mtime_ns": st.st_mtime_ns}

    def frame_id(self, i: int) -> int:
        return int(i)

    def frames(self, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(index, uint8 RGB `[h, w, 3]`) from frame `start` on."""
        for d in self.decoded(start):
            yield d.index, d.rgb

    def decoded(self, start: int = 0, anchor: tuple[int, int] | None = None
                ) -> Iterator[Decoded]:
        """The frames from `start` on. `anchor`: (pts, crc) of frame `start - 1` as an
        earlier decode saw it; a seek is then checked on that frame's pixels."""
        import av
        try:
            if start > 0 and self.index.exact:
                if anchor is not None:
                    a_i, a_pts, a_crc = start - 1, int(anchor[0]), int(anchor[1])
                elif start < self.index.n_frames:
                    a_i, a_pts, a_crc = start, int(self.index.pts[start]), None
                else:
                    return                                   # past the last frame
                try:
                    it = self._located(a_i, a_pts, a_crc)
                    first = next(it)                         # the check happens here
                except _Missed as e:
                    logs.info(f"note: {self.path}: {e}; decoding from the first frame "
                              f"instead (exact, slower)")
                else:
                    if a_i == start:
                        yield first
                    yield from it
                    return
            yield from self._sequential(start)
        except (av.error.FFmpegError, EOFError) as e:
            raise DatasetError(f"--video {self.path}: decoding failed "
                               f"({type(e).__name__}: {e})") from None

    def _sequential(self, start: int) -> Iterator[Decoded]:
        import av
        with av.open(str(self.path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for i, frame in enumerate(c.decode(s)):
                if i >= start:
                    yield Decoded(i, frame.pts, frame.to_ndarray(format="rgb24"))

    def _located(self, a_i: int, a_pts: int, a_crc: int | None) -> Iterator[Decoded]:
        """Frame `a_i` (time stamp `a_pts`) and the frames after it, decoded after a seek.
        Raises _Missed before yielding anything where the seek cannot be trusted."""
        import av
        key = self.index.key_before(a_pts)
        with av.open(str(self.path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            cc = s.codec_context
            packets = c.demux(s)
            landed = None
            if key is not None:
                c.seek(key, stream=s, backward=True, any_frame=False)
                first = next((p for p in packets if p.size), None)
                if first is None or not first.is_keyframe or first.pts is None \
                        or first.pts > a_pts:
                    raise _Missed(f"a seek to frame {a_i} did not land on a key frame "
                                  f"before it")
                landed = int(first.pts)
                if self._prime is not None:
                    data, pts, dts = self._prime
                    prime = av.Packet(data)
                    prime.pts, prime.dts, prime.time_base = pts, dts, s.time_base
                    for _ in cc.decode(prime):
                        pass
                pending = cc.decode(first)
            else:
                pending = []
            found = False
            last = None

            def frames_out():
                yield from pending
                for p in packets:
                    yield from cc.decode(p)      # the empty packet at the end flushes
            i = a_i
            for frame in frames_out():
                pts = frame.pts
                if not found:
                    if pts is None:
                        raise _Missed(f"frame {a_i}: the decoder gave no time stamp")
                    # before the anchor, or an open GOP's leading frames (refer to frames
                    # before the key frame the seek landed on): not ours
                    if pts < a_pts or (landed is not None and pts < landed):
                        continue
                    if pts > a_pts:
                        raise _Missed(f"no decoded frame has frame {a_i}'s time stamp {a_pts}")
                    rgb = frame.to_ndarray(format="rgb24")
                    if a_crc is not None and frame_crc(rgb) != a_crc:
                        raise _Missed(f"frame {a_i} decoded after a seek differs from its "
                                      f"sequential decode")
                    found, last = True, pts
                    yield Decoded(i, pts, rgb)
                    continue
                if pts is None or pts <= last:
                    raise DatasetError(f"--video {self.path}: frames out of time order "
                                       f"after frame {i} (time stamp {pts} after {last})")
                i += 1
                last = pts
                yield Decoded(i, pts, frame.to_ndarray(format="rgb24"))
            if not found:
                raise _Missed(f"frame {a_i} (time stamp {a_pts}) was not decoded")


class ImageFolderSource:
    """A folder of images (PNG/JPEG/...; not recursive), in natural file-name order."""
    kind = "images"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = self.path.name
        if not self.path.is_dir():
            raise DatasetError(f"--images {self.path}: folder not found")
        self.files = sorted((p for p in self.path.iterdir()
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                            key=_natural_key)
        if not self.files:
            raise DatasetError(f"--images {self.path}: no images (looked for "
                               f"{', '.join(IMAGE_SUFFIXES)})")
        self.n_frames = len(self.files)
        self.fps = float("nan")

    def fingerprint(self) -> dict:
        return {"path": str(self.path.resolve()),
                "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in self.files]}

    def frame_id(self, i: int) -> str:
        return self.files[i].name

    def frames(self, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        for i in range(start, self.n_frames):
            yield i, load_image(self.files[i], context=f"--images {self.path}")


def open_source(path: str | os.PathLike, kind: str):
    """A `VideoSource` (kind "video") or `ImageFolderSource` (kind "images")."""
    return VideoSource(path) if kind == "video" else ImageFolderSource(path)


@dataclasses.dataclass
class Batch:
    indices: np.ndarray          # int64 [b] frame indices (b <= batch size at the end)
    images: np.ndarray           # uint8 [B, H, W, C] letterboxed, padded to the batch size
    letterbox: np.ndarray        # float32 [b, 3] (scale, dx, dy) per frame
    decode_s: float              # seconds spent decoding + letterboxing this batch
    pts: np.ndarray | None = None    # int64 [b] video time stamps (None: image folder)
    crc: np.ndarray | None = None    # uint32 [b] `frame_crc` of each decoded frame


def _decoded(source, start: int, anchor) -> Iterator[Decoded]:
    if isinstance(source, VideoSource):
        yield from source.decoded(start, anchor)
    else:
        for i, img in source.frames(start):
            yield Decoded(i, None, img)


def _batches(source, start: int, batch_size: int, image_shape: Sequence[int],
             anchor=None) -> Iterator[Batch]:
    h, w, c = (int(v) for v in image_shape)
    video = isinstance(source, VideoSource)
    idx, imgs, lbs, pts, crc = [], [], [], [], []
    t = time.perf_counter()

    def batch(x) -> Batch:
        return Batch(np.array(idx, np.int64), x, np.stack(lbs), time.perf_counter() - t,
                     np.array(pts, np.int64) if video else None,
                     np.array(crc, np.uint32) if video else None)
    for d in _decoded(source, start, anchor):
        img, lb = letterbox_image(to_channels(d.rgb, c), (h, w))
        idx.append(d.index)
        imgs.append(img)
        lbs.append(lb.as_array())
        if video:
            pts.append(d.pts if d.pts is not None else -1)
            crc.append(frame_crc(d.rgb))
        if len(idx) == batch_size:
            yield batch(np.stack(imgs))
            idx, imgs, lbs, pts, crc = [], [], [], [], []
            t = time.perf_counter()
    if idx:
        pad = batch_size - len(idx)
        yield batch(np.stack(imgs + [imgs[-1]] * pad))   # one batch shape: one program


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Runs `items` on a background thread, `depth` items ahead; re-raises its errors
    here. Closing the returned generator stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in items:
                if not put(x):
                    return
        except BaseException as e:   # handed to the consumer, raised there
            put(_Failed(e))
            return
        put(_DONE)

    thread = threading.Thread(target=work, name="ensemble-jax-decode", daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is _DONE:
                return
            if isinstance(x, _Failed):
                raise x.error
            yield x
    finally:
        stop.set()
        thread.join(timeout=10)


def batches(source, image_shape: Sequence[int], *, start: int = 0, batch_size: int = 32,
            depth: int = 2, anchor: tuple[int, int] | None = None) -> Iterator[Batch]:
    """Letterboxed batches of `source` from frame `start` on, decoded `depth` batches
    ahead on a background thread. `anchor`: (pts, crc) of frame `start - 1` as recorded
    earlier (a video's seek is checked on it)."""
    return prefetch(_batches(source, start, batch_size, image_shape, anchor), depth)


def read_frames(source, indices: Sequence[int],
                expect: dict[int, tuple[int, int]] | None = None) -> dict[int, np.ndarray]:
    """The original frames (uint8 RGB for a video; as stored for images) at `indices`.
    `expect`: {frame: (pts, crc)} as `predict` recorded them; every frame read is checked
    against them (a mismatch after a seek falls back to decoding from the start; one that
    remains is an error: the video is not the one predicted)."""
    want = sorted(set(int(i) for i in indices))
    if not want:
        return {}
    if isinstance(source, ImageFolderSource):
        return {i: load_image(source.files[i]) for i in want}
    out: dict[int, np.ndarray] = {}
    idx = source.index
    if idx.exact:
        try:
            _read_by_seeking(source, want, expect, out)
        except _Missed as e:
            logs.info(f"note: {source.path}: {e}; decoding from the first frame instead "
                      f"(exact, slower)")
            out.clear()
    if len(out) < len(want):        # one pass from the start: always exact
        rest = [i for i in want if i not in out]
        for d in source._sequential(rest[0]):
            if d.index in rest:
                if expect and d.index in expect and frame_crc(d.rgb) != expect[d.index][1]:
                    raise DatasetError(f"--video {source.path}: frame {d.index} decodes to "
                                       f"other pixels than when it was predicted (the video "
                                       f"changed?)")
                out[d.index] = d.rgb
            if d.index >= rest[-1]:
                break
    missing = [i for i in want if i not in out]
    if missing:
        raise DatasetError(f"{source.path}: frames {missing[:5]} could not be read (the "
                           f"video holds fewer frames)")
    return out


def _read_by_seeking(source: VideoSource, want: list[int], expect, out: dict) -> None:
    """One seek per run of nearby wanted frames, decoding forward through each run."""
    idx = source.index
    pos = 0
    while pos < len(want):
        i0 = want[pos]
        if expect and i0 in expect:
            pts, crc = int(expect[i0][0]), int(expect[i0][1])
        elif i0 < idx.n_frames:
            pts, crc = int(idx.pts[i0]), None
        else:
            return                                        # past the end: reported missing
        it = source._located(i0, pts, crc)
        try:
            for d in it:
                if d.index != want[pos]:
                    continue
                if expect and d.index in expect and frame_crc(d.rgb) != expect[d.index][1]:
                    raise _Missed(f"frame {d.index} decoded after a seek differs from its "
                                  f"sequential decode")
                out[d.index] = d.rgb
                pos += 1
                if pos == len(want) or want[pos] - d.index > 300:   # far: seek again
                    break
            else:
                return                                    # the video ended
        finally:
            it.close()


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: int = 30,
                codec: str = "libx264", crf: int | None = 18) -> Path:
    """Writes uint8 RGB frames `[h, w, 3]` (even sizes for libx264) as a video, through a
    temporary file renamed at the end. Used by the tests and the README example."""
    import av
    from ensemble_jax.io import atomic_path
    path = Path(path)
    with atomic_path(path) as tmp:
        fmt = {"mkv": "matroska", "m4v": "mp4", "": "mp4"}.get(path.suffix.lstrip(".").lower(),
                                                               path.suffix.lstrip(".").lower())
        with av.open(str(tmp), mode="w", format=fmt) as c:
            s = None
            for frame in frames:
                frame = np.ascontiguousarray(to_channels(np.asarray(frame, np.uint8), 3))
                if s is None:
                    s = c.add_stream(codec, rate=fps)
                    s.width, s.height = frame.shape[1], frame.shape[0]
                    s.pix_fmt = "yuv420p"
                    if crf is not None and codec == "libx264":
                        s.options = {"crf": str(crf)}
                for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    c.mux(packet)
            if s is None:
                raise DatasetError(f"write_video {path}: no frames")
            for packet in s.encode():
                c.mux(packet)
    return path
