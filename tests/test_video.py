"""From labels to video and back (issue #20): the video reader, `predict` (per-member and
ensemble DeepLabCut CSVs that EKS reads, resume after a kill) and `suggest` (never writes
over an image or a label file, skips frames already labeled), and their bad input.

The run directory is built without training (members with their initial parameters: the
files are the ones `sweep` writes, so `load_result` reads them) to keep the file fast;
`test_cli_smoke_sweep_predict_suggest` (slow) runs the real commands on a trained run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_runs import untrained_run

from ensemble_jax import rundir
from ensemble_jax.cli import main
from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.letterbox import letterbox_image, to_original
from ensemble_jax.video import reader
from ensemble_jax.video.predict import (load_run, predict_sources, read_uncertainty,
                                        streaming_representativeness)
from ensemble_jax.video.suggest import kmeans, labeled_indices, suggest_frames

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
BODYPARTS = ["snout", "leftear", "rightear", "tailbase"]
N_FRAMES = 40


def _mark(img: np.ndarray, i: int) -> np.ndarray:
    """Writes frame index i as 8 bright/dark blocks along the top row (survives H.264)."""
    img = img.copy()
    for b in range(8):
        img[0:4, b * 5:b * 5 + 4] = 255 if (i >> b) & 1 else 0
    return img


def _index_of(frame: np.ndarray) -> int:
    return sum(1 << b for b in range(8) if frame[0:4, b * 5:b * 5 + 4].mean() > 127)


def _scene(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A bright 'animal' (a blob with a darker head) walking right across the floor."""
    img = np.full((h, w, 3), 40, np.uint8)
    x, y = 6 + (i * 2) % (w - 20), 20 + int(6 * np.sin(i / 5))
    img[y:y + 8, x:x + 12] = 220
    img[y + 2:y + 6, x + 10:x + 14] = 120
    return _mark(img, i)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as `sweep` writes it, 3 members, member 2 diverged."""
    return untrained_run(tmp_path_factory.mktemp("run"), alive=[True, True, False])


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("video")
    return reader.write_video(d / "walk.mp4", (_scene(i) for i in range(N_FRAMES)), fps=25)


@pytest.fixture(scope="module")
def predicted(run_dir, video, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pred")
    predict_sources(run_dir, out, videos=[video], batch_size=16, progress=False,
                    log=lambda m: None)
    return out / "walk"


# ------------------------------------------------------------------------ reader
def test_reader_counts_orders_and_seeks_frames(video):
    src = reader.VideoSource(video)
    assert (src.width, src.height) == (64, 48)
    idx = [i for i, f in src.frames() if _index_of(f) == i]
    assert idx == list(range(N_FRAMES))                      # every frame, in order
    for start in (1, 17, 33, N_FRAMES - 1):                  # seek lands on that frame
        got = list(src.frames(start))
        assert [i for i, _ in got] == list(range(start, N_FRAMES))
        assert [_index_of(f) for _, f in got] == list(range(start, N_FRAMES))
    full = dict(src.frames())
    for i, f in src.frames(21):                              # and decodes identical pixels
        np.testing.assert_array_equal(f, full[i])
    picked = reader.read_frames(src, [30, 2, 31])
    assert {i: _index_of(f) for i, f in picked.items()} == {2: 2, 30: 30, 31: 31}


def test_batches_letterbox_pad_and_prefetch(video):
    src = reader.VideoSource(video)
    got = list(reader.batches(src, (SIZE, SIZE, 3), start=5, batch_size=16))
    assert [b.indices.tolist() for b in got] == [list(range(5, 21)), list(range(21, 37)),
                                                 list(range(37, 40))]
    assert all(b.images.shape == (16, SIZE, SIZE, 3) for b in got)   # last one padded
    frame5 = dict(src.frames(5))[5]
    want, lb = letterbox_image(frame5, (SIZE, SIZE))
    np.testing.assert_array_equal(got[0].images[0], want)
    np.testing.assert_allclose(got[0].letterbox[0], lb.as_array())
    grey = next(iter(reader.batches(src, (SIZE, SIZE, 1), batch_size=4)))
    assert grey.images.shape == (4, SIZE, SIZE, 1)                   # converted, fine


def test_prefetch_reraises_the_decoder_error():
    def items():
        yield 1
        raise DatasetError("broken at 2")
    it = reader.prefetch(items())
    assert next(it) == 1
    with pytest.raises(DatasetError, match="broken at 2"):
        next(it)


# ------------------------------------------------------------------------ predict
def test_predictions_equal_ensemble_result_predict(run_dir, video, predicted):
    result = load_run(run_dir)
    src = reader.VideoSource(video)
    frames = [f for _, f in src.frames()]
    x = np.stack([letterbox_image(f, (SIZE, SIZE))[0] for f in frames])
    lb = np.stack([letterbox_image(f, (SIZE, SIZE))[1].as_array() for f in frames])
    ref = result.predict(x, members=[0, 1])
    members = sorted((predicted / "members").glob("*.csv"))
    assert [p.name for p in members] == ["member_000.csv", "member_001.csv"]  # 2 diverged
    for m, path in enumerate(members):
        df = pd.read_csv(path, header=[0, 1, 2], index_col=0)
        assert list(df.index) == list(range(N_FRAMES)) and df.index.dtype.kind == "i"
        sub = df["ensemble-jax"]
        want = to_original(ref.keypoints[m], lb)
        for j, bp in enumerate(BODYPARTS):
            np.testing.assert_allclose(sub[bp]["x"], want[:, j, 0], atol=1e-3)
            np.testing.assert_allclose(sub[bp]["y"], want[:, j, 1], atol=1e-3)
            np.testing.assert_allclose(sub[bp]["likelihood"], ref.confidences[m][:, j],
                                       atol=1e-5)
    info = json.loads((predicted / "predict.json").read_text())
    assert info["frames"] == N_FRAMES and info["members"] == [0, 1]
    assert not (predicted / ".partial").exists()


def test_forward_modes_agree(run_dir):
    """vmap (accelerators) and lax.map (the CPU default) run the same members."""
    import jax
    from ensemble_jax.video.predict import ensemble_forward
    result = load_run(run_dir)
    x = np.stack([letterbox_image(_scene(i), (SIZE, SIZE))[0] for i in (0, 9, 18, 27)])
    a = jax.device_get(ensemble_forward(result, "vmap")(result.params, x))
    b = jax.device_get(ensemble_forward(result, "map")(result.params, x))
    ref = result.predict(x)
    np.testing.assert_allclose(a[0], ref.keypoints, atol=1e-3)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, atol=1e-3, rtol=1e-4)


def test_csv_header_as_deeplabcut_writes_it(predicted):
    lines = (predicted / "ensemble.csv").read_text().splitlines()
    assert lines[0].split(",") == ["scorer"] + ["ensemble-jax"] * 12
    assert lines[1].split(",") == ["bodyparts"] + [b for b in BODYPARTS for _ in range(3)]
    assert lines[2].split(",") == ["coords"] + ["x", "y", "likelihood"] * 4
    assert [ln.split(",")[0] for ln in lines[3:]] == [str(i) for i in range(N_FRAMES)]
    df = pd.read_csv(predicted / "ensemble.csv", header=[0, 1, 2], index_col=0)
    df.columns.names = ["scorer", "bodyparts", "coords"]         # as EKS names them
    assert df.shape == (N_FRAMES, 12) and np.isfinite(df.to_numpy()).all()


def test_uncertainty_columns_agree_with_the_member_files(predicted):
    u = read_uncertainty(predicted / "uncertainty.csv")
    kp = np.stack([pd.read_csv(p, header=[0, 1, 2], index_col=0).to_numpy().reshape(
        N_FRAMES, 4, 3)[..., :2] for p in sorted((predicted / "members").glob("*.csv"))])
    mean = kp.mean(0)
    spread = np.sqrt(((kp - mean) ** 2).sum(-1).mean(0))           # [F, K] RMS distance
    np.testing.assert_allclose(u["spread_max"], spread.max(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(u["spread:snout"], spread[:, 0], rtol=1e-4, atol=1e-4)
    assert np.isfinite(u["mpe_max"]).all() and (u["mpe_max"] >= u["mpe_mean"] - 1e-9).all()
    assert np.isfinite(u["representativeness"]).all()
    feats = np.load(predicted / "features.npy")
    assert feats.shape[0] == N_FRAMES


def test_streaming_representativeness_equals_the_kernel():
    import jax.numpy as jnp
    from ensemble_jax import kernels
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 2, 6)).astype(np.float32) + 1.0     # [frames, M, D]
    f[7, 1] = np.nan                                             # a bad row: NaN, left out
    rep, _ = streaming_representativeness(lambda lo, hi: f[lo:hi], 50, chunk=8)
    per_m = []
    for m in range(2):
        x = f[:, m].astype(np.float64)
        ok = np.isfinite(x).all(1)
        x = x - x[ok].mean(0)
        per_m.append(np.asarray(kernels.representativeness(jnp.asarray(x, jnp.float32))))
    want = np.nanmean(np.stack(per_m), 0)
    np.testing.assert_allclose(rep, want, atol=1e-5)
    assert np.isfinite(rep[7])                     # member 0 still scores frame 7


def test_killed_predict_resumes_to_identical_files(run_dir, video, predicted, tmp_path):
    class Killed(Exception):
        pass

    def kill_after_two(frames_done):
        if frames_done >= 32:
            raise Killed
    out = tmp_path / "pred"
    with pytest.raises(Killed):
        predict_sources(run_dir, out, videos=[video], batch_size=16, progress=False,
                        log=lambda m: None, after_batch=kill_after_two)
    part = out / "walk" / ".partial"
    assert json.loads((part / "progress.json").read_text())["frames_done"] == 32
    assert not (out / "walk" / "ensemble.csv").exists()      # nothing final half-written
    # a batch appended after the last progress record (killed mid-batch) is dropped
    with open(part / "keypoints.f32", "ab") as f:
        f.write(b"\0" * 1000)
    logs = []
    predict_sources(run_dir, out, videos=[video], batch_size=8, progress=False,
                    log=logs.append)
    assert any("resuming after frame 31" in m for m in logs)
    for p in sorted(q.relative_to(predicted) for q in predicted.rglob("*") if q.is_file()):
        if p.name == "predict.json":
            continue
        assert (out / "walk" / p).read_bytes() == (predicted / p).read_bytes(), p


def test_image_folder_of_other_sizes_and_channels(run_dir, tmp_path, write_png):
    folder = tmp_path / "frames"
    write_png(folder / "img10.png", _scene(10)[..., 0])                # grey, converted
    write_png(folder / "img2.png", _scene(2))
    write_png(folder / "img3.png", np.zeros((30, 90, 3), np.uint8))    # other size
    (folder / "notes.txt").write_text("not an image")
    predict_sources(run_dir, tmp_path / "out", images=[folder], batch_size=16, progress=False,
                    log=lambda m: None)
    df = pd.read_csv(tmp_path / "out" / "frames" / "ensemble.csv", header=[0, 1, 2],
                     index_col=0)
    assert list(df.index) == ["img2.png", "img3.png", "img10.png"]     # natural order


# ------------------------------------------------------------------------ suggest
def _project(root: Path, bodyparts=BODYPARTS) -> Path:
    (root / "labeled-data" / "walk").mkdir(parents=True)
    (root / "config.yaml").write_text(
        "scorer: me\nbodyparts:\n" + "".join(f"- {b}\n" for b in bodyparts)
        + "video_sets:\n  /videos/walk.mp4:\n    crop: 0, 64, 0, 48\n")
    return root


def test_suggest_never_overwrites_and_skips_labeled_frames(run_dir, video, predicted,
                                                           tmp_path):
    proj = _project(tmp_path / "proj")
    folder = proj / "labeled-data" / "walk"
    label = folder / "CollectedData_me.csv"
    label.write_text("scorer,me,me\nbodyparts,snout,snout\ncoords,x,y\n"
                     "labeled-data/walk/img05.png,1,2\n")
    old_img = folder / "img30.png"
    old_img.write_bytes(b"not mine")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    rows = suggest_frames(run_dir, [video], budget=3, by="mpe", project=proj,
                          predictions=predicted.parent, min_gap=3, progress=False,
                          log=lambda m: None)
    frames = sorted(r["frame"] for r in rows)
    assert len(frames) == 3
    assert all(abs(f - 5) > 3 and abs(f - 30) > 3 for f in frames)    # near labeled: skipped
    assert all(abs(a - b) > 3 for a in frames for b in frames if a != b)
    for name, (data, mtime) in before.items():                        # untouched
        assert (folder / name).read_bytes() == data
        assert (folder / name).stat().st_mtime_ns == mtime
    names = {f"img{f:02d}.png" for f in frames}                       # DLC: 2 digits, like
    assert names <= {p.name for p in folder.iterdir()}               # the folder's images
    from PIL import Image
    for f in frames:
        img = np.asarray(Image.open(folder / f"img{f:02d}.png"))
        assert img.shape == (48, 64, 3) and _index_of(img) == f       # the right frame
    sug = pd.read_csv(folder / "suggested.csv")
    assert sorted(sug["frame"]) == frames and set(sug["by"]) == {"mpe"}
    u = read_uncertainty(predicted / "uncertainty.csv")
    eligible = [i for i in range(N_FRAMES) if abs(i - 5) > 3 and abs(i - 30) > 3]
    assert max(sug["score"]) == pytest.approx(max(u["mpe_max"][eligible]), rel=1e-5)
    # a second round sees the first round's images as labeled: new frames only, new list
    rows2 = suggest_frames(run_dir, [video], budget=2, by="uniform", project=proj,
                           predictions=predicted.parent, min_gap=3, progress=False,
                           log=lambda m: None)
    assert all(abs(r["frame"] - f) > 3 for r in rows2 for f in frames + [5, 30])
    assert (folder / "suggested_1.csv").exists()
    assert label.read_bytes() == before["CollectedData_me.csv"][0]


@pytest.mark.parametrize("by", ["spread", "representativeness", "cluster"])
def test_suggest_other_scores_into_a_folder(run_dir, video, predicted, tmp_path, by):
    rows = suggest_frames(run_dir, [video], budget=4, by=by, out=tmp_path / "s",
                          predictions=predicted.parent, min_gap=2, progress=False,
                          log=lambda m: None)
    assert len({r["frame"] for r in rows}) == 4
    assert len(list((tmp_path / "s" / "walk").glob("img*.png"))) == 4


def test_kmeans_separates_clear_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.1, size=(20, 2)) for c in (0, 5, 10)])
    lab = kmeans(x, 3, seed=0)
    assert len(set(lab[:20])) == len(set(lab[20:40])) == len(set(lab[40:])) == 1
    assert len(set(lab)) == 3


def test_labeled_indices_reads_images_and_label_rows(tmp_path):
    (tmp_path / "img0007.png").write_bytes(b"")
    (tmp_path / "CollectedData_x.csv").write_text(
        "scorer,x\nbodyparts,a\ncoords,x\nlabeled-data/v/img0012.png,1\n")
    assert labeled_indices(tmp_path) == {7, 12}


# ------------------------------------------------------------------------ bad input
def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_bad_input_one_line_exit_2_nothing_written(run_dir, video, predicted, tmp_path,
                                                   capsys):
    out = tmp_path / "out"
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    no_summary = tmp_path / "unfinished"
    shutil.copytree(run_dir, no_summary)
    (no_summary / "summary.json").unlink()
    cases = [
        (("predict", str(run_dir), "--video", str(tmp_path / "missing.mp4"), "--out",
          str(out)), "missing.mp4: file not found"),
        (("predict", str(run_dir), "--video", str(corrupt), "--out", str(out)),
         "not a readable video"),
        (("predict", str(run_dir), "--images", str(empty), "--out", str(out)), "no images"),
        (("predict", str(no_summary), "--video", str(video), "--out", str(out)),
         "summary.json is missing"),
        (("suggest", str(run_dir), "--video", str(video), "--budget", "41", "--out",
          str(out)), "--budget 41: larger than the 40 frames available"),
    ]
    other = _project(tmp_path / "other", bodyparts=["nose", "tail"])
    cases.append((("suggest", str(run_dir), "--video", str(video), "--budget", "2",
                   "--project", str(other), "--predictions", str(predicted.parent)),
                  "bodyparts ['nose', 'tail'] differ from the run's"))
    for argv, msg in cases:
        rc, line = _cli(capsys, *argv, "--quiet")
        assert rc == 2, (argv, line)
        assert msg in line and line.startswith("ensemble-jax"), (msg, line)
    assert not out.exists()
    assert sorted(p.name for p in (other / "labeled-data" / "walk").iterdir()) == []


@pytest.mark.slow
def test_cli_smoke_sweep_predict_suggest(tmp_path, video):
    """The commands a user runs, on a trained (smoke) run: sweep, predict, suggest."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    def run(*args):
        p = subprocess.run([sys.executable, "-m", "ensemble_jax.cli", *args],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        return p
    run("sweep", "--smoke", "--out", "run", "--quiet")
    run("predict", "run", "--video", str(video), "--out", "pred", "--quiet")
    members = sorted((tmp_path / "pred" / "walk" / "members").glob("*.csv"))
    assert len(members) == 2
    run("suggest", "run", "--video", str(video), "--budget", "3", "--by", "cluster",
        "--out", "sug", "--predictions", "pred", "--quiet")
    assert len(list((tmp_path / "sug" / "walk").glob("img*.png"))) == 3
    # the sweep wrote its test frames as DeepLabCut CSVs too
    assert (tmp_path / "run" / "test-predictions" / "ensemble.csv").exists()


def test_sweep_writes_test_frames_as_dlc_csvs(run_dir, tmp_path):
    """What `sweep` adds beside predictions.npz: alive members + the ensemble it scores."""
    from ensemble_jax.training.result import consensus
    from ensemble_jax.video.predict import write_split_csvs
    result = load_run(run_dir)
    test = rundir.load(run_dir).test
    p = result.predict(test.images)
    paths = write_split_csvs(tmp_path, result, test, p)
    assert [q.relative_to(tmp_path / "test-predictions").as_posix() for q in paths] == [
        "members/member_000.csv", "members/member_001.csv", "ensemble.csv"]
    m1 = pd.read_csv(paths[1], header=[0, 1, 2], index_col=0)["ensemble-jax"]
    assert list(m1.index) == list(test.frame_ids)
    np.testing.assert_allclose(m1["tailbase"]["y"], test.to_original(p.keypoints)[1][:, 3, 1],
                               rtol=1e-6)
    ens = pd.read_csv(paths[2], header=[0, 1, 2], index_col=0)["ensemble-jax"]
    want = test.to_original(consensus(p.keypoints[:2], p.confidences[:2]))
    np.testing.assert_allclose(ens["snout"]["x"], want[:, 0, 0], rtol=1e-6)


@pytest.mark.slow
def test_predict_throughput_benchmark_runs(run_benchmark):
    r = run_benchmark("predict_throughput.py", "--members", "2", "--frames", "40",
                      "--image-size", "64", "--batch-size", "16")
    assert r["frames"] == 40 and r["members"] == 2
    assert 0 < r["device_s"] <= r["wall_s"] and r["decode_s"] > 0
    assert r["frames_per_s"] == pytest.approx(40 / r["wall_s"])
    assert r["rss_peak_mib"] >= r["rss_baseline_mib"] > 0


@pytest.mark.slow
def test_sigkilled_predict_resumes_to_identical_files(run_dir, tmp_path):
    """A real SIGKILL (no exception handler runs, the lock is left behind): running the
    same command again takes over the stale lock, continues, and writes the same files."""
    import signal
    import time
    vid = reader.write_video(tmp_path / "long.mp4", (_scene(i) for i in range(200)), fps=25)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ensemble_jax.cli", "predict", str(run_dir), "--video",
           str(vid), "--batch-size", "8", "--quiet", "--out"]
    ref = subprocess.run(cmd + [str(tmp_path / "ref")], env=env, capture_output=True,
                         text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    prog = tmp_path / "got" / "long" / ".partial" / "progress.json"
    p = subprocess.Popen(cmd + [str(tmp_path / "got")], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    while p.poll() is None and done < 24:
        time.sleep(0.05)
        try:
            done = json.loads(prog.read_text())["frames_done"]
        except (OSError, ValueError):
            pass
    assert p.poll() is None, "predict finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert (tmp_path / "got" / ".lock").exists()                 # left behind by the kill
    again = subprocess.run(cmd + [str(tmp_path / "got")], env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming after frame" in again.stderr
    a, b = tmp_path / "ref" / "long", tmp_path / "got" / "long"
    files = sorted(q.relative_to(a) for q in a.rglob("*") if q.is_file())
    assert files == sorted(q.relative_to(b) for q in b.rglob("*") if q.is_file())
    for f in files:
        if f.name != "predict.json":
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
