"""Frame-exact video reading (issue #33): random access equals the sequential decode byte
for byte on H.264 with B-frames and open GOPs, on variable frame rates, and on a clip of
the real openfield video (x264 4:4:4, whose key frames decode green without the stream's
first packet); a killed `predict` resumed at random points writes identical files; a
truncated video is refused with one line; `suggest` writes exactly the frames decoded in
order."""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from tiny_runs import untrained_run
from PIL import Image

from ensemble_jax.cli import main
from ensemble_jax.video import reader
from ensemble_jax.video.frame_index import FrameIndex, build_index
from ensemble_jax.video.predict import FRAMES, INDEX, predict_sources, read_frames_csv
from ensemble_jax.video.suggest import suggest_frames

SIZE = 32
OPENFIELD_VIDEO = "videos/openfield-m3v1.mp4"


def _scene(i: int, h: int = 96, w: int = 128) -> np.ndarray:
    """Textured noise (so every frame codes differently) with a moving block."""
    img = np.random.default_rng(i).integers(60, 124, (h, w, 3)).astype(np.uint8)
    x = 6 + (i * 3) % (w - 20)
    img[30:50, x:x + 16] = 230
    return img


def _encode(path: Path, n: int, params: str, pts: list[int] | None = None,
            faststart: bool = False) -> Path:
    """H.264 through PyAV's libx264; `pts` in milliseconds gives variable frame rates."""
    with av.open(str(path), "w", format="mp4",
                 options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        s.options = {"x264-params": params, "crf": "30"}
        if pts is not None:
            s.codec_context.time_base = s.time_base = Fraction(1, 1000)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(_scene(i), format="rgb24")
            if pts is not None:
                f.pts, f.time_base = int(pts[i]), Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _openfield_clip(shared_data: Path, dst: Path, packets: int = 420) -> Path:
    """The first packets of the real video, remuxed without re-encoding (3 GOPs)."""
    with av.open(str(shared_data / OPENFIELD_VIDEO)) as i, av.open(str(dst), "w") as o:
        si = i.streams.video[0]
        so = o.add_stream_from_template(si)
        for k, p in enumerate(i.demux(si)):
            if p.dts is None or k >= packets:
                continue
            p.stream = so
            o.mux(p)
    return dst


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    vfr = np.cumsum(np.random.default_rng(0).integers(20, 80, 96))
    return {
        "bframes": _encode(d / "bframes.mp4", 120, "keyint=20:min-keyint=20:scenecut=0:"
                           "open-gop=1:bframes=3:b-pyramid=normal"),
        "vfr": _encode(d / "vfr.mp4", 96, "keyint=16:bframes=2", pts=list(vfr - vfr[0])),
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as `sweep` writes it (untrained members: predictions are still a
    deterministic function of the pixels, all that these tests compare)."""
    return untrained_run(tmp_path_factory.mktemp("run"), size=SIZE, members=2,
                         data_seed=2, key=5)


def _sequential(path: Path) -> list[reader.Decoded]:
    return list(reader.VideoSource(path)._sequential(0))


def _assert_random_access_exact(path: Path, frames: list[int], starts: list[int]) -> None:
    src = reader.VideoSource(path)
    seq = _sequential(path)
    assert src.index.exact and src.index.n_frames == len(seq)
    np.testing.assert_array_equal(src.index.pts, [d.pts for d in seq])
    for i in frames:                                   # one seek per frame
        got = reader.read_frames(src, [i])[i]
        assert np.array_equal(got, seq[i].rgb), f"{path.name}: frame {i}"
    for st in starts:                                  # seek, then decode on
        got = list(src.decoded(st))
        assert [d.index for d in got] == list(range(st, len(seq)))
        assert all(np.array_equal(d.rgb, seq[d.index].rgb) for d in got), st


@pytest.mark.parametrize("kind", ["bframes", "vfr"])
def test_every_frame_by_random_access_equals_the_sequential_decode(videos, kind):
    n = reader.VideoSource(videos[kind]).index.n_frames
    _assert_random_access_exact(videos[kind], list(range(n)), [1, 19, 20, 21, n // 2, n - 1])


def test_variable_frame_rate_is_numbered_by_time_stamps_not_rate(videos):
    """The average rate x time puts VFR frames at the wrong index (the old reader's 2-frame
    shift); time stamps from the packets do not."""
    src = reader.VideoSource(videos["vfr"])
    pts = src.index.pts
    naive = np.round(pts * float(src.time_base) * src.fps).astype(int)
    assert (naive != np.arange(len(pts))).any()          # the rate arithmetic is wrong here
    assert [d.index for d in src.decoded(47)][0] == 47


def test_openfield_clip_needs_the_first_packet_and_reads_exactly(shared_data, tmp_path):
    clip = _openfield_clip(shared_data, tmp_path / "m3v1-clip.mp4")
    seq = _sequential(clip)
    src = reader.VideoSource(clip)
    # frames of the third GOP: a seek lands on the second key frame (one GOP back)
    k2 = int(np.flatnonzero(src.index.pts == src.index.key_pts[2])[0])
    # without the stream's first packet the decoder decodes these frames green
    bare = reader.VideoSource(clip)
    bare._prime = None
    got = next(bare._located(k2 + 3, int(seq[k2 + 3].pts), None))
    assert not np.array_equal(got.rgb, seq[k2 + 3].rgb)
    # ... and a seek checked against the recorded CRC notices it and decodes from the start
    a = seq[k2 + 10]
    rest = list(bare.decoded(k2 + 11, anchor=(a.pts, reader.frame_crc(a.rgb))))
    assert rest[0].index == k2 + 11 and np.array_equal(rest[0].rgb, seq[k2 + 11].rgb)
    _assert_random_access_exact(clip, [1, k2 - 1, k2, k2 + 1, k2 + 30, len(seq) - 1],
                                [k2 + 11])


def _predict(run_dir, video, out, log=lambda m: None, **kw):
    return predict_sources(run_dir, out, videos=[video], batch_size=8, progress=False,
                           log=log, **kw)


class Killed(Exception):
    pass


def _kill_and_resume(run_dir, video, out, points) -> None:
    """Kills `predict` after the batch that reaches each point, resuming each time; every
    resume must seek (a fallback to decoding from the start would hide a broken seek)."""
    said: list[str] = []
    for p in sorted(points):
        def kill(done, p=p):
            if done >= p:
                raise Killed
        with pytest.raises(Killed):
            _predict(run_dir, video, out, log=said.append, after_batch=kill)
    _predict(run_dir, video, out, log=said.append)
    assert sum("resuming after frame" in m for m in said) == len(points)
    assert not [m for m in said if "instead" in m], said


def _same_files(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for p in files:
        if p.name not in ("predict.json", INDEX):
            assert (a / p).read_bytes() == (b / p).read_bytes(), p


@pytest.mark.parametrize("kind", ["bframes", "vfr"])
def test_predict_killed_at_five_random_points_resumes_to_identical_files(run_dir, videos,
                                                                         tmp_path, kind):
    video = videos[kind]
    n = reader.VideoSource(video).index.n_frames
    whole = _predict(run_dir, video, tmp_path / "whole")[0]
    points = np.random.default_rng(len(kind)).choice(np.arange(8, n, 8), 5, replace=False)
    _kill_and_resume(run_dir, video, tmp_path / "killed", points)
    _same_files(tmp_path / "whole" / video.stem, tmp_path / "killed" / video.stem)
    assert whole["frames"] == n
    rows = read_frames_csv(tmp_path / "killed" / video.stem / FRAMES)
    seq = _sequential(video)
    assert [rows[i][0] for i in range(n)] == [d.pts for d in seq]
    assert [rows[i][1] for i in range(n)] == [reader.frame_crc(d.rgb) for d in seq]


def test_truncated_video_is_one_line_and_nothing_written(run_dir, tmp_path, capsys):
    full = _encode(tmp_path / "full.mp4", 48, "keyint=12:bframes=2", faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    out = tmp_path / "pred"
    rc = main(["predict", str(run_dir), "--video", str(cut), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert str(cut) in err[0] and "48" in err[0] and "--allow-short-video" in err[0]
    assert not out.exists()
    # asked for: the frames it holds, the shortfall recorded
    rc = main(["predict", str(run_dir), "--video", str(cut), "--out", str(out), "--quiet",
               "--allow-short-video"])
    info = json.loads((out / "cut" / "predict.json").read_text())
    n = len(_sequential(cut))
    assert rc == 0 and info["frames"] == n < 48 and info["frames_declared"] == 48
    assert any("48" in w for w in info["warnings"])


def test_frame_index_cached_and_rebuilt_when_the_video_changes(videos, tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(videos["bframes"].read_bytes())
    cache = tmp_path / "index.npz"
    src = reader.VideoSource(video)
    src.use_cache(cache)
    first = FrameIndex.load(cache)
    assert first is not None and first.matches(video)
    np.testing.assert_array_equal(first.pts, build_index(video).pts)
    os.utime(video, ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    assert not first.matches(video)                  # touched: the cache no longer holds
    src2 = reader.VideoSource(video)
    src2.use_cache(cache)
    assert FrameIndex.load(cache).mtime_ns == video.stat().st_mtime_ns
    cache.write_bytes(b"not an npz")                 # damaged: rebuilt, not trusted
    reader.VideoSource(video).use_cache(cache)
    assert FrameIndex.load(cache) is not None


def test_suggest_writes_the_frames_decoded_in_order(run_dir, videos, tmp_path):
    video = videos["bframes"]
    seq = _sequential(video)
    rows = suggest_frames(run_dir, [video], budget=5, by="uniform", out=tmp_path / "s",
                          predictions=tmp_path / "p", min_gap=2, progress=False,
                          log=lambda m: None)
    assert len(rows) == 5
    for r in rows:
        png = np.asarray(Image.open(r["image"]).convert("RGB"))
        assert np.array_equal(png, seq[r["frame"]].rgb), r["frame"]


@pytest.mark.slow
def test_openfield_video_predict_resume_and_suggest_are_exact(shared_data, run_dir,
                                                              tmp_path):
    """The real video, all 2,330 frames: predict killed at 3 points and resumed equals an
    uninterrupted run byte for byte, and suggest's PNGs equal the frames decoded in order."""
    video = shared_data / OPENFIELD_VIDEO
    whole = tmp_path / "whole"
    _predict(run_dir, video, whole)
    _kill_and_resume(run_dir, video, tmp_path / "killed", [704, 1208, 2008])
    _same_files(whole / video.stem, tmp_path / "killed" / video.stem)
    rows = suggest_frames(run_dir, [video], budget=6, by="uniform", out=tmp_path / "s",
                          predictions=whole, progress=False, log=lambda m: None)
    want = {r["frame"]: r["image"] for r in rows}
    assert len(want) == 6
    for d in reader.VideoSource(video)._sequential(0):
        if d.index in want:
            png = np.asarray(Image.open(want[d.index]).convert("RGB"))
            assert np.array_equal(png, d.rgb), d.index
