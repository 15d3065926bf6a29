"""SLEAP files in (`--data FILE.slp` / `.pkg.slp`), written here with sleap-io itself.

From the shared DeepLabCut project openfield (116 labeled 640x480 RGB PNG frames, 4
bodyparts) three SLEAP files are written with sleap-io, each labeled with the CSV's own
float64 coordinates:
  openfield.pkg.slp  the frames embedded (sleap-io stores them as PNG: lossless)
  sequence.slp       video-backed by sleap-io's image-sequence backend (`ImageVideo` over
                     the project's PNG files): the very same pixels
  video.slp          video-backed by a media file: the 116 frames encoded losslessly
                     (FFV1 in AVI, with PyAV) and read back through sleap-io's PyAV plugin
Each must read as the DeepLabCut project reads (same bodyparts, labels, pixels, frame order)
and `sweep --smoke --data` on the files must equal the same sweep on the project.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

import sleap_io as sio      # a dependency (pyproject.toml)

from ensemble_jax import cli
from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.dlc import read_dlc_project, read_label_csv
from ensemble_jax.data.load import detect_format, load_dataset
from ensemble_jax.data.sleap import read_sleap

OPENFIELD = "openfield-Pranav-2018-10-30"
CSV = "labeled-data/m4s1/CollectedData_Pranav.csv"


def _labels_from(video, skeleton, xy, frame_idx=None, tracks=()):
    frames = []
    for r in range(len(xy)):
        inst = sio.Instance.from_numpy(np.asarray(xy[r], np.float64), skeleton=skeleton)
        frames.append(sio.LabeledFrame(video=video, frame_idx=r if frame_idx is None
                                       else frame_idx[r], instances=[inst]))
    return sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skeleton],
                      tracks=list(tracks))


def _encode_ffv1(images: np.ndarray, path: Path) -> Path:
    """Lossless AVI (FFV1, bgr0) of RGB frames, with PyAV."""
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=30)
        s.width, s.height, s.pix_fmt = images.shape[2], images.shape[1], "bgr0"
        for im in images:
            for p in s.encode(av.VideoFrame.from_ndarray(im, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def openfield(shared_data, tmp_path_factory):
    """(DLC project path, its KeypointDataset, float64 labels in its frame order, folder
    with the SLEAP files)."""
    root = shared_data / OPENFIELD
    dlc = read_dlc_project(root)
    table = read_label_csv(root / CSV)
    pos = [table.frame_ids.index(f) for f in dlc.frame_ids]
    xy = table.select(list(dlc.bodyparts))[pos]                 # float64, as in the CSV
    out = tmp_path_factory.mktemp("sleap")
    skel = sio.Skeleton(list(dlc.bodyparts))
    seq = sio.Video.from_filename([str(root / f) for f in dlc.frame_ids], grayscale=False)
    labels = _labels_from(seq, skel, xy)
    sio.save_slp(labels, str(out / "sequence.slp"))
    sio.save_slp(labels, str(out / "openfield.pkg.slp"), embed="user")
    avi = _encode_ffv1(dlc.images, out / "recordings" / "m4s1.avi")
    media = sio.Video.from_filename(str(avi), plugin="pyav", grayscale=False)
    sio.save_slp(_labels_from(media, skel, xy), str(out / "video.slp"))   # shape recorded
    media.backend.close()
    return root, dlc, xy, out


def _same(a, b, ids_b=None):
    assert list(a.bodyparts) == list(b.bodyparts)
    assert a.n_frames == b.n_frames
    np.testing.assert_array_equal(a.keypoints, b.keypoints)    # NaN positions equal too
    assert a.images.dtype == b.images.dtype and a.images.shape == b.images.shape
    assert a.images.tobytes() == b.images.tobytes()
    np.testing.assert_array_equal(a.letterbox, b.letterbox)
    np.testing.assert_array_equal(a.original_sizes, b.original_sizes)
    if ids_b is not None:
        assert list(a.frame_ids) == list(ids_b)


def test_sleap_files_read_as_the_deeplabcut_project(openfield):
    root, dlc, xy, out = openfield
    no_prefix = [f.removeprefix("labeled-data/") for f in dlc.frame_ids]
    m4s1 = [f"m4s1/img{i:03d}.png" for i in range(116)]     # 116 frames -> 3 digits
    for name, ids in (("openfield.pkg.slp", no_prefix), ("sequence.slp", no_prefix),
                      ("video.slp", m4s1)):
        assert detect_format(out / name) == "sleap"
        s = load_dataset(out / name)
        _same(s, dlc, ids)
        assert s.image_shape == (480, 640, 3)
        # letterboxed too: the float64 labels go through the same transform
        _same(load_dataset(out / name, image_size=128), load_dataset(root, image_size=128))
        np.testing.assert_allclose(s.original_keypoints(), xy.astype(np.float32))


def _sweep(data: Path, out: Path) -> int:
    return cli.main(["sweep", "--smoke", "--data", str(data), "--out", str(out), "--quiet",
                     "--image-size", "64", "--steps", "6", "--cpu-devices", "1",
                     "--strategy", "sequential"])


# times, and the memory block (budget from the host's free memory, peak RSS): the machine's
_TIMES = ("steps_per_s", "images_per_s", "train_s", "setup_s", "wall_s", "compile_s",
          "memory", "peak_rss_bytes")


def _summary(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in _TIMES and not k.endswith("_s")}


def test_smoke_sweep_on_sleap_files_equals_the_sweep_on_the_project(openfield, tmp_path):
    root, dlc, _, out = openfield
    assert _sweep(root, tmp_path / "dlc") == 0
    ref = np.load(tmp_path / "dlc" / "predictions.npz")
    ref_data = np.load(tmp_path / "dlc" / "data.npz")
    for name in ("openfield.pkg.slp", "video.slp"):
        run = tmp_path / name.replace(".", "_")
        assert _sweep(out / name, run) == 0
        assert _summary(run) == _summary(tmp_path / "dlc")
        z, d = np.load(run / "predictions.npz"), np.load(run / "data.npz")
        for k in ref.files:
            if k.endswith("frame_ids"):
                continue
            np.testing.assert_array_equal(z[k], ref[k], err_msg=f"{name}: {k}")
        for k in ref_data.files:
            if not k.endswith("frame_ids"):
                np.testing.assert_array_equal(d[k], ref_data[k], err_msg=f"{name}: {k}")
        # the same frames in the same split: ids map one to one
        if name == "openfield.pkg.slp":
            for part in ("train", "test"):
                assert [f.removeprefix("labeled-data/") for f in ref[f"{part}_frame_ids"]] \
                    == list(z[f"{part}_frame_ids"])


def test_real_h264_video_frames_are_the_exact_decoder_frames(shared_data, tmp_path):
    """The shared openfield video (x264 4:4:4, the stream whose key frames decode green
    when a seek skips its first packet) behind a .slp labeled out of order: sleap-io's PyAV
    plugin gives the frames our exact reader (`video/reader.py`) decodes."""
    from ensemble_jax.video.reader import VideoSource, read_frames
    mp4 = shared_data / "videos" / "openfield-m3v1.mp4"
    if not mp4.is_file():
        pytest.skip(f"{mp4} not found")
    want = [1200, 7, 2329, 1201]
    video = sio.Video.from_filename(str(mp4), plugin="pyav", grayscale=False)
    skel = sio.Skeleton(["a", "b"])
    xy = np.arange(len(want) * 4, dtype=np.float64).reshape(len(want), 2, 2)
    sio.save_slp(_labels_from(video, skel, xy, frame_idx=want), str(tmp_path / "m3v1.slp"))
    video.backend.close()
    d = load_dataset(tmp_path / "m3v1.slp")
    order = np.argsort(want)
    assert list(d.frame_ids) == [f"openfield-m3v1/img{want[i]:04d}.png" for i in order]
    np.testing.assert_array_equal(d.keypoints, xy[order].astype(np.float32))
    ref = read_frames(VideoSource(mp4), want)
    for r, i in enumerate(order):
        np.testing.assert_array_equal(d.images[r], ref[want[i]], err_msg=f"frame {want[i]}")


# --------------------------------------------------------------------- small files
def _tiny(tmp_path: Path, write_png, n: int = 6):
    """An image-sequence video of n 24x32 grey frames and a 3-node skeleton."""
    rng = np.random.default_rng(0)
    files = [str(write_png(tmp_path / "frames" / f"f{i}.png",
                           rng.integers(0, 255, (24, 32), np.uint8))) for i in range(n)]
    return sio.Video.from_filename(files), sio.Skeleton(["head", "body", "tail"])


def _inst(skel, xy, track=None, predicted=False):
    xy = np.asarray(xy, np.float64)
    if predicted:
        return sio.PredictedInstance.from_numpy(xy, skeleton=skel, point_scores=np.ones(3),
                                                score=1.0, track=track)
    return sio.Instance.from_numpy(xy, skeleton=skel, track=track)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_predicted_instances_are_ignored_and_counted(tmp_path, write_png):
    video, skel = _tiny(tmp_path, write_png)
    a = [[1, 2], [3, 4], [np.nan, np.nan]]
    frames = [
        # a frame with a user instance and a prediction: the user's labels only
        sio.LabeledFrame(video=video, frame_idx=0, instances=[
            _inst(skel, [[9, 9], [9, 9], [9, 9]], predicted=True), _inst(skel, a)]),
        # a frame with predictions only: not a labeled frame
        sio.LabeledFrame(video=video, frame_idx=1, instances=[
            _inst(skel, [[5, 5], [6, 6], [7, 7]], predicted=True)]),
        sio.LabeledFrame(video=video, frame_idx=3, instances=[_inst(skel, [[10, 11], [12, 13],
                                                                           [14, 15]])]),
    ]
    path = tmp_path / "p.slp"
    sio.save_slp(sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skel]), str(path))
    lines = _Lines()
    logger = logging.getLogger("ensemble_jax")
    logger.addHandler(lines)
    try:
        d = load_dataset(path)
    finally:
        logger.removeHandler(lines)
    assert list(d.bodyparts) == ["head", "body", "tail"]
    assert list(d.frame_ids) == ["frames/f0.png", "frames/f3.png"]
    np.testing.assert_array_equal(d.keypoints[0], np.asarray(a, np.float32))   # NaN kept
    np.testing.assert_array_equal(d.keypoints[1], [[10, 11], [12, 13], [14, 15]])
    assert d.images.shape == (2, 24, 32, 1)
    line = [x for x in lines.lines if "SLEAP labels" in x]
    assert len(line) == 1 and "2 predicted instances ignored" in line[0], lines.lines
    # predictions only: nothing to train on, said in one line
    only = tmp_path / "only.slp"
    sio.save_slp(sio.Labels(labeled_frames=[frames[1]], videos=[video], skeletons=[skel]),
                 str(only))
    with pytest.raises(DatasetError, match=r"zero labeled frames.*1 predicted instances "
                                           r"ignored"):
        load_dataset(only)


def test_missing_video_names_it_and_video_root_repoints(openfield, tmp_path):
    root, dlc, _, out = openfield
    here = tmp_path / "project"
    here.mkdir()
    shutil.copy(out / "video.slp", here / "video.slp")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    # the .slp names <out>/recordings/m4s1.avi, which is now in `moved`
    labels = sio.load_slp(str(here / "video.slp"), open_videos=False)
    original = labels.videos[0].filename
    assert not Path(original).is_relative_to(moved)
    shutil.copy(original, moved / "m4s1.avi")
    gone = tmp_path / "gone" / "m4s1.avi"
    labels.videos[0].replace_filename(str(gone), open=False)
    # as a file written elsewhere records it (replace_filename dropped it)
    labels.videos[0].backend_metadata.update(shape=[116, 480, 640, 3], grayscale=False)
    sio.save_slp(labels, str(here / "video.slp"))
    with pytest.raises(DatasetError) as e:
        load_dataset(here / "video.slp")
    msg = str(e.value)
    assert "\n" not in msg and str(gone) in msg and "--video-root" in msg, msg
    rc = cli.main(["sweep", "--data", str(here / "video.slp"), "--out",
                   str(tmp_path / "run"), "--smoke", "--quiet"])
    assert rc == 2
    d = load_dataset(here / "video.slp", video_root=moved)
    _same(d, dlc, [f"m4s1/img{i:03d}.png" for i in range(116)])
    # a video under the same name beside the .slp is found without the flag
    shutil.move(str(moved / "m4s1.avi"), here / "m4s1.avi")
    _same(load_dataset(here / "video.slp"), dlc)


def _two_animals(tmp_path, write_png, tracked: bool):
    video, skel = _tiny(tmp_path, write_png)
    t1, t2 = sio.Track("mouse1"), sio.Track("mouse2")
    small = [[1, 1], [2, 2], [3, 3]]
    big = [[1, 1], [20, 20], [10, 5]]
    frames = [
        sio.LabeledFrame(video=video, frame_idx=0, instances=[
            _inst(skel, small, t1 if tracked else None),
            _inst(skel, big, t2 if tracked else None)]),
        sio.LabeledFrame(video=video, frame_idx=2, instances=[
            _inst(skel, [[4, 4], [5, 5], [6, 6]], t1 if tracked else None)]),
    ]
    path = tmp_path / ("tracked.slp" if tracked else "untracked.slp")
    sio.save_slp(sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skel],
                            tracks=[t1, t2] if tracked else []), str(path))
    return path, np.asarray(small, np.float32), np.asarray(big, np.float32)


def test_two_animals_without_tracks_need_the_individual_flag(tmp_path, write_png, capsys):
    path, small, big = _two_animals(tmp_path, write_png, tracked=False)
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    msg = str(e.value)
    assert "\n" not in msg and "--individual largest|first|TRACK" in msg
    assert "frame index 0" in msg and "2 user-labeled animals" in msg
    # the command line: one error line naming the flag
    rc = cli.main(["sweep", "--data", str(path), "--out", str(tmp_path / "run"), "--smoke",
                   "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len([x for x in err if "error" in x]) == 1
    assert "--individual largest|first|TRACK" in err[-1]
    np.testing.assert_array_equal(load_dataset(path, individual="first").keypoints[0], small)
    np.testing.assert_array_equal(load_dataset(path, individual="largest").keypoints[0], big)
    with pytest.raises(DatasetError, match="no such track"):
        load_dataset(path, individual="mouse1")


def test_tracks_become_keypoints_or_one_track_is_picked(tmp_path, write_png):
    path, small, big = _two_animals(tmp_path, write_png, tracked=True)
    d = load_dataset(path)
    assert list(d.bodyparts) == [f"{t}/{n}" for t in ("mouse1", "mouse2")
                                 for n in ("head", "body", "tail")]
    np.testing.assert_array_equal(d.keypoints[0], np.concatenate([small, big]))
    assert np.isnan(d.keypoints[1, 3:]).all()                     # mouse2 absent in frame 2
    np.testing.assert_array_equal(d.keypoints[1, :3], [[4, 4], [5, 5], [6, 6]])
    one = read_sleap(path, individual="mouse2")
    assert one.n_frames == 1 and list(one.bodyparts) == ["head", "body", "tail"]
    np.testing.assert_array_equal(one.keypoints[0], big)


def test_individual_flag_reaches_the_readers(tmp_path, write_png):
    args = cli.build_parser().parse_args(["sweep", "--out", "o", "--data", "x.json",
                                          "--individual", "largest", "--video-root", "v"])
    sweep = cli.sweep_configs(args)[0]
    assert sweep.individual == "largest" and sweep.video_root == "v"
    # COCO: a second annotation in an image is picked by the flag
    write_png(tmp_path / "images" / "a.png", np.zeros((12, 16, 3), np.uint8))
    doc = {"images": [{"id": 1, "file_name": "a.png"}],
           "categories": [{"id": 1, "name": "m", "keypoints": ["p", "q"]}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "area": 5.0,
                            "keypoints": [1, 1, 2, 2, 2, 2]},
                           {"id": 2, "image_id": 1, "category_id": 1, "area": 50.0,
                            "keypoints": [9, 9, 2, 8, 8, 2]}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="--individual largest|first"):
        load_dataset(tmp_path / "ann.json")
    assert load_dataset(tmp_path / "ann.json", individual="largest").keypoints[0, 0, 0] == 9
    from ensemble_jax.sweep import SweepConfig, load_data         # the sweep's own path
    cfg = SweepConfig(data=str(tmp_path / "ann.json"), individual="largest", image_size=16)
    np.testing.assert_array_equal(load_data(cfg).keypoints[0, 0], [9, 9 + 2])  # 16x16 box
    with pytest.raises(DatasetError, match="individual=first: picks one animal"):
        load_dataset(tmp_path, format="dlc", individual="first")


def test_sleap_io_deeplabcut_reader_agrees_on_openfield(openfield):
    """sleap-io's own DeepLabCut reader on the shared project, measured against ours:
    the same 116 frames and labels, its skeleton in alphabetical node order, and its
    frames grey (one channel, autodetected) where ours keep the PNGs' three channels."""
    root, dlc, xy, _ = openfield
    theirs = sio.load_dlc(str(root / CSV))
    assert len(theirs.labeled_frames) == 116
    nodes = list(theirs.skeleton.node_names)
    assert sorted(nodes) == sorted(dlc.bodyparts) and nodes != list(dlc.bodyparts)
    order = [nodes.index(b) for b in dlc.bodyparts]
    video = theirs.videos[0]
    files = [str(f).replace("\\", "/") for f in video.filename]
    got = {"/".join(files[lf.frame_idx].split("/")[-3:]): lf.instances[0].numpy()[order]
           for lf in theirs.labeled_frames}
    assert sorted(got) == list(dlc.frame_ids)
    np.testing.assert_array_equal(np.stack([got[f] for f in dlc.frame_ids]), xy)
    assert video.shape[-1] == 1 and dlc.image_shape[-1] == 3


def test_damaged_sleap_file_is_one_line(tmp_path):
    for content in (b"", b"not an HDF5 file at all"):
        p = tmp_path / "bad.slp"
        p.write_bytes(content)
        with pytest.raises(DatasetError) as e:
            load_dataset(p)
        assert "\n" not in str(e.value) and "unreadable SLEAP file" in str(e.value)
    with pytest.raises(DatasetError, match="SLEAP file not found"):
        load_dataset(tmp_path / "none.slp", format="sleap")


def test_moved_image_sequence_keeps_its_frame_ids(tmp_path, write_png):
    video, skel = _tiny(tmp_path / "old", write_png, n=3)
    frames = [sio.LabeledFrame(video=video, frame_idx=i, instances=[
        _inst(skel, [[i, 1], [2, 2], [3, 3]])]) for i in (2, 0)]
    (tmp_path / "labels").mkdir()
    path = tmp_path / "labels" / "seq.slp"
    sio.save_slp(sio.Labels(labeled_frames=frames, videos=[video], skeletons=[skel]), str(path))
    before = load_dataset(path)
    assert list(before.frame_ids) == ["frames/f0.png", "frames/f2.png"]
    shutil.move(str(tmp_path / "old" / "frames"), tmp_path / "new" / "frames")
    with pytest.raises(DatasetError, match=r"video not found: .*f0\.png.*--video-root"):
        load_dataset(path)
    for root in (tmp_path / "new", tmp_path / "new" / "frames"):   # DIR/<folder>/<name>, DIR/<name>
        after = load_dataset(path, video_root=root)
        assert list(after.frame_ids) == list(before.frame_ids)
        assert after.images.tobytes() == before.images.tobytes()
        np.testing.assert_array_equal(after.keypoints, before.keypoints)


def test_sleap_io_reads_the_lightning_pose_table_as_we_do(shared_data):
    """sleap-io has no Lightning Pose reader; its DeepLabCut table reader on the shared
    mirror-mouse CollectedData.csv gives our 90 frames and labels (to float32 rounding),
    with one image 'video' per frame, the nodes in alphabetical order and no camera views
    (ours keeps the config's mirrored_column_matches)."""
    mm = shared_data / "lp-mirror-mouse-example"
    ours = load_dataset(mm / "CollectedData.csv")
    theirs = sio.load_dlc(str(mm / "CollectedData.csv"))
    nodes = list(theirs.skeleton.node_names)
    assert len(theirs.labeled_frames) == ours.n_frames == 90 and len(theirs.videos) == 90
    assert sorted(nodes) == sorted(ours.bodyparts) and nodes != list(ours.bodyparts)
    order = [nodes.index(b) for b in ours.bodyparts]
    got = {}
    for lf in theirs.labeled_frames:
        f = str(lf.video.filename[lf.frame_idx]).replace("\\", "/")
        got["/".join(f.split("/")[-2:])] = lf.instances[0].numpy()[order]
    assert sorted(got) == sorted(ours.frame_ids)
    np.testing.assert_allclose(np.stack([got[f] for f in ours.frame_ids]),
                               ours.original_keypoints(), atol=1e-4)
    assert ours.views is not None
