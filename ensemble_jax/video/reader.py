"""Frames from videos (PyAV, whose wheels bring their own FFmpeg) and image folders.

A *source* is one video or one folder of images; its frames are numbered 0, 1, 2, ... in
decoding order (a video) or file-name order (a folder, numbers compared as numbers:
`img2.png` before `img10.png`). `batches(source, ...)` yields them letterboxed to the
training size, in batches of a fixed size, decoded on a background thread (`prefetch`)
so that decoding runs beside the device work.

Seeking (to resume a killed `predict`): a video is seeked to the key frame before the
wanted frame and decoded forward; each decoded frame's index is its presentation time
times the average frame rate. Where a container gives no usable time stamps (or the
index found disagrees), the reader decodes from the start and counts instead, which is
always exact.

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
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.images import IMAGE_SUFFIXES, load_image
from ensemble_jax.data.letterbox import letterbox_image

__all__ = ["VideoSource", "ImageFolderSource", "open_source", "Batch", "batches",
           "prefetch", "write_video", "read_frames", "to_channels", "VIDEO_SUFFIXES"]

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


class VideoSource:
    """One video file. `n_frames` is what the container says (0 where it does not say);
    the frames themselves are counted while decoding."""
    kind = "video"

    def __init__(self, path: str | os.PathLike):
        import av
        self.path = Path(path)
        self.name = self.path.stem
        if not self.path.is_file():
            raise DatasetError(f"--video {self.path}: file not found")
        try:
            with av.open(str(self.path)) as c:
                if not c.streams.video:
                    raise DatasetError(f"--video {self.path}: holds no video stream")
                s = c.streams.video[0]
                self.n_frames = int(s.frames or 0)
                self.fps = float(s.average_rate) if s.average_rate else float("nan")
                first = next(c.decode(s), None)
        except DatasetError:
            raise
        except Exception as e:   # av.error.InvalidDataError, EOFError, ...
            raise DatasetError(f"--video {self.path}: not a readable video "
                               f"({type(e).__name__}: {e})") from None
        if first is None:
            raise DatasetError(f"--video {self.path}: holds no decodable frame")
        self.width, self.height = int(first.width), int(first.height)

    def fingerprint(self) -> dict:
        st = self.path.stat()
        return {"path": str(self.path.resolve()), "bytes": st.st_size,
                "mtime_ns": st.st_mtime_ns}

    def frame_id(self, i: int) -> int:
        return int(i)

    def frames(self, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(index, uint8 RGB `[h, w, 3]`) from frame `start` on."""
        import av
        try:
            if start > 0:
                found = yield from self._seeked(start)
                if found:
                    return
            with av.open(str(self.path)) as c:   # count from the first frame
                s = c.streams.video[0]
                s.thread_type = "AUTO"
                for i, frame in enumerate(c.decode(s)):
                    if i >= start:
                        yield i, frame.to_ndarray(format="rgb24")
        except DatasetError:
            raise
        except (av.error.FFmpegError, EOFError) as e:
            raise DatasetError(f"--video {self.path}: decoding failed "
                               f"({type(e).__name__}: {e})") from None

    def _seeked(self, start: int):
        """Yields the frames from `start` on after a seek and returns True, or yields
        nothing and returns False where the time stamps do not place frame `start`."""
        import av
        with av.open(str(self.path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            rate, tb = s.average_rate, s.time_base
            if not rate or not tb:
                return False
            t0 = s.start_time or 0
            c.seek(t0 + int(Fraction(start) / Fraction(rate) / Fraction(tb)), stream=s,
                   backward=True, any_frame=False)
            frames = c.decode(s)
            for frame in frames:
                if frame.pts is None:
                    return False
                i = int(round(float((frame.pts - t0) * Fraction(tb) * Fraction(rate))))
                if i > start:       # landed past it: time stamps not trustworthy
                    return False
                if i == start:
                    yield i, frame.to_ndarray(format="rgb24")
                    for j, f in enumerate(frames, start + 1):
                        yield j, f.to_ndarray(format="rgb24")
                    return True
            return True             # the video ends before `start`: no frames


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


def _batches(source, start: int, batch_size: int, image_shape: Sequence[int]
             ) -> Iterator[Batch]:
    h, w, c = (int(v) for v in image_shape)
    idx, imgs, lbs = [], [], []
    t = time.perf_counter()
    for i, frame in source.frames(start):
        img, lb = letterbox_image(to_channels(frame, c), (h, w))
        idx.append(i)
        imgs.append(img)
        lbs.append(lb.as_array())
        if len(idx) == batch_size:
            yield Batch(np.array(idx, np.int64), np.stack(imgs), np.stack(lbs),
                        time.perf_counter() - t)
            idx, imgs, lbs = [], [], []
            t = time.perf_counter()
    if idx:
        pad = batch_size - len(idx)
        x = np.stack(imgs + [imgs[-1]] * pad)   # one batch shape: one compiled program
        yield Batch(np.array(idx, np.int64), x, np.stack(lbs), time.perf_counter() - t)


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
            depth: int = 2) -> Iterator[Batch]:
    """Letterboxed batches of `source` from frame `start` on, decoded `depth` batches
    ahead on a background thread."""
    return prefetch(_batches(source, start, batch_size, image_shape), depth)


def read_frames(source, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """The original frames (uint8 RGB for a video; as stored for images) at `indices`."""
    want = sorted(set(int(i) for i in indices))
    out: dict[int, np.ndarray] = {}
    if not want:
        return out
    if isinstance(source, ImageFolderSource):
        return {i: load_image(source.files[i]) for i in want}
    # one forward pass per run of nearby frames; seek for the far ones
    pos = 0
    while pos < len(want):
        it = source.frames(want[pos])
        for i, frame in it:
            if i == want[pos]:
                out[i] = frame
                pos += 1
                if pos == len(want):
                    break
                if want[pos] - i > 300:       # far ahead: seek rather than decode through
                    break
        else:
            break
        it.close()
    missing = [i for i in want if i not in out]
    if missing:
        raise DatasetError(f"{source.path}: frames {missing[:5]} could not be read (the "
                           f"video holds fewer frames)")
    return out


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
