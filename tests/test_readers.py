"""Readers: DeepLabCut, Lightning Pose, COCO, format detection, letterboxing.

Real data (../shared/data) is checked against the CSVs read independently with pandas.
Synthetic projects are written with pandas too, so reader and writer are independent.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble_jax.data.coco import read_coco
from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.dlc import dlc_sort_key, read_dlc_project, read_label_csv
from ensemble_jax.data.images import load_image
from ensemble_jax.data.letterbox import (letterbox_image, letterbox_params, to_original,
                                         to_train)
from ensemble_jax.data.lightning_pose import read_lightning_pose
from ensemble_jax.data.load import detect_format, load_dataset

OPENFIELD = "openfield-Pranav-2018-10-30"
MIRROR = "lp-mirror-mouse-example"


def _pandas_xy(csv_path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(frame ids, bodyparts, xy [n, K, 2]) read with pandas, independently of our parser."""
    df = pd.read_csv(csv_path, header=[0, 1, 2], index_col=0)
    df.columns = df.columns.droplevel(0)                  # scorer
    bps = list(dict.fromkeys(df.columns.get_level_values(0)))
    x = df.xs("x", level=1, axis=1)[bps].to_numpy(np.float64)
    y = df.xs("y", level=1, axis=1)[bps].to_numpy(np.float64)
    return [str(i) for i in df.index], bps, np.stack([x, y], -1)


# ------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def openfield(shared_data):
    return read_dlc_project(shared_data / OPENFIELD)


def test_openfield_matches_csv(shared_data, openfield):
    d = openfield
    csv_path = shared_data / OPENFIELD / "labeled-data/m4s1/CollectedData_Pranav.csv"
    ids, bps, xy = _pandas_xy(csv_path)
    assert d.n_frames == 116 and len(ids) == 116
    assert list(d.bodyparts) == ["snout", "leftear", "rightear", "tailbase"] == bps
    assert d.image_shape == (480, 640, 3)
    assert int(np.isnan(d.keypoints).sum()) == 0
    c = d.counts()
    assert c["labels"] == 464 and c["missing_labels"] == 0 and c["unlabeled_frames"] == 0
    # DeepLabCut's merged-table order: lexicographic on the path
    assert list(d.frame_ids) == sorted(ids)
    pos = [ids.index(f) for f in d.frame_ids]
    np.testing.assert_array_equal(d.keypoints, xy[pos].astype(np.float32))
    np.testing.assert_array_equal(d.letterbox, np.tile([1.0, 0.0, 0.0], (116, 1)))
    np.testing.assert_array_equal(d.original_sizes, np.tile([640, 480], (116, 1)))
    from PIL import Image
    ref = np.asarray(Image.open(shared_data / OPENFIELD / d.frame_ids[7]).convert("RGB"))
    np.testing.assert_array_equal(d.images[7], ref)


def test_openfield_downscaled_maps_back(shared_data, openfield):
    small = read_dlc_project(shared_data / OPENFIELD / "config.yaml", image_size=(240, 320))
    assert small.image_shape == (240, 320, 3)
    np.testing.assert_allclose(small.letterbox[0], [0.5, -0.25, -0.25])
    np.testing.assert_allclose(small.original_keypoints(), openfield.keypoints, atol=1e-4,
                               rtol=0)
    np.testing.assert_allclose(small.keypoints, 0.5 * openfield.keypoints - 0.25, atol=1e-4)


def test_mirror_mouse_matches_csv(shared_data):
    csv_path = shared_data / MIRROR / "CollectedData.csv"
    d = read_lightning_pose(csv_path)
    ids, bps, xy = _pandas_xy(csv_path)
    assert d.n_frames == 90 and list(d.frame_ids) == ids          # CSV order kept
    assert d.n_keypoints == 17 and list(d.bodyparts) == bps
    assert d.image_shape == (406, 396, 1)                          # grey stays 1 channel
    # 134 of the 90 x 17 = 1530 *keypoints* are missing, i.e. 268 NaN coordinates
    assert d.counts()["missing_labels"] == 134
    assert int(np.isnan(d.keypoints).sum()) == 268
    np.testing.assert_array_equal(np.isnan(d.keypoints), np.isnan(xy))
    np.testing.assert_array_equal(d.keypoints, xy.astype(np.float32))
    assert not {"labeled-data/img00.png", "labeled-data/img91.png"} & set(d.frame_ids)


def test_mirror_mouse_letterboxed_to_square(shared_data):
    csv_path = shared_data / MIRROR / "CollectedData.csv"
    _, _, xy = _pandas_xy(csv_path)
    d = load_dataset(shared_data / MIRROR / "CollectedData.csv", image_size=128)
    assert d.image_shape == (128, 128, 1)
    s = 128 / 406                              # height limits: 406 rows -> 128
    new_w = int(np.floor(396 * s + 1e-6))
    pad_x = (128 - new_w) // 2
    np.testing.assert_allclose(d.letterbox[0], [s, 0.5 * s - 0.5 + pad_x, 0.5 * s - 0.5],
                               rtol=1e-6)
    np.testing.assert_allclose(d.original_keypoints(), xy, atol=1e-4, rtol=0)
    assert (d.images[:, :, :pad_x] == 0).all()          # centred padding on the left


def test_load_dataset_detects_formats(shared_data, tmp_path):
    assert detect_format(shared_data / OPENFIELD) == "dlc"
    assert detect_format(shared_data / OPENFIELD / "config.yaml") == "dlc"
    assert detect_format(shared_data / MIRROR / "CollectedData.csv") == "lightning-pose"
    assert detect_format(shared_data / MIRROR) == "lightning-pose"
    (tmp_path / "a.json").write_text("{}")
    assert detect_format(tmp_path / "a.json") == "coco"
    assert detect_format("some_tfds_name") == "tfds"
    with pytest.raises(DatasetError, match="one of"):
        load_dataset(shared_data / MIRROR, format="nwb")
    (tmp_path / "a.pkg.slp").write_bytes(b"")
    assert detect_format(tmp_path / "a.pkg.slp") == "sleap"        # tests/test_sleap.py
    with pytest.raises(DatasetError, match="a folder, not a SLEAP"):
        load_dataset(shared_data / MIRROR, format="sleap")
    with pytest.raises(DatasetError, match="cannot tell"):
        detect_format(tmp_path)
    d = load_dataset(shared_data / MIRROR, format="lightning-pose", image_size=(64, 64))
    assert d.n_frames == 90


# ----------------------------------------------------------------- synthetic projects
def _frames(tmp: Path, write_png, video: str, names, size=(12, 10), value=90):
    for n in names:
        write_png(tmp / "labeled-data" / video / n, np.full((size[1], size[0]), value, np.uint8))


def _config(root: Path, bodyparts=None, multi=None, scorer="me"):
    import yaml
    cfg = {"Task": "t", "scorer": scorer, "video_sets": {"/nowhere/v1.avi": {"crop": "0, 1"}}}
    if multi:
        cfg.update(multianimalproject=True, individuals=multi[0],
                   multianimalbodyparts=multi[1], uniquebodyparts=multi[2],
                   bodyparts="MULTI!")
    else:
        cfg.update(multianimalproject=None, bodyparts=bodyparts)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))


def _dlc_frame(index, bodyparts, values, scorer="me", individuals=None, likelihood=False):
    coords = ["x", "y"] + (["likelihood"] if likelihood else [])
    if individuals is None:
        cols = pd.MultiIndex.from_product([[scorer], bodyparts, coords],
                                          names=["scorer", "bodyparts", "coords"])
    else:
        cols = pd.MultiIndex.from_tuples(
            [(scorer, ind, bp, c) for ind, bps in individuals for bp in bps for c in coords],
            names=["scorer", "individuals", "bodyparts", "coords"])
    return pd.DataFrame(np.asarray(values, np.float64), index=index, columns=cols)


def test_dlc_three_column_index_sorting_and_likelihood(tmp_path, write_png):
    root = tmp_path / "proj"
    _config(root, ["a", "b"])
    names = ["img2.png", "img10.png", "img1.png"]
    _frames(root, write_png, "v1", names)
    _frames(root, write_png, "v0", ["img5.png"])
    idx = pd.MultiIndex.from_tuples([("labeled-data", "v1", n) for n in names])
    vals = [[1, 2, .9, 3, 4, .8], [5, 6, .7, np.nan, np.nan, .1], [7, 8, .5, 9, 1, .4]]
    _dlc_frame(idx, ["a", "b"], vals, likelihood=True).to_csv(
        root / "labeled-data/v1/CollectedData_me.csv")
    df0 = _dlc_frame(["labeled-data/v0/img5.png"], ["b", "a"], [[1.5, 2.5, 3.5, 4.5]])
    df0.to_csv(root / "labeled-data/v0/CollectedData_me.csv")      # other column order
    (root / "labeled-data/v1_labeled").mkdir()                      # check_labels output
    d = read_dlc_project(root)
    assert list(d.frame_ids) == ["labeled-data/v0/img5.png", "labeled-data/v1/img1.png",
                                 "labeled-data/v1/img10.png", "labeled-data/v1/img2.png"]
    assert list(d.bodyparts) == ["a", "b"]
    np.testing.assert_array_equal(d.keypoints[0], [[3.5, 4.5], [1.5, 2.5]])
    np.testing.assert_array_equal(d.keypoints[1], [[7, 8], [9, 1]])
    np.testing.assert_array_equal(d.keypoints[2], [[5, 6], [np.nan, np.nan]])
    np.testing.assert_array_equal(d.keypoints[3], [[1, 2], [3, 4]])
    assert d.image_shape == (10, 12, 1)


def test_dlc_sort_key_matches_pandas_multiindex_sort():
    ids = ["labeled-data/m4s1-b/img1.png", "labeled-data/m4s1/img10.png",
           "labeled-data/m4s1/img2.png", "labeled-data/m4s1_c/img0.png"]
    idx = pd.MultiIndex.from_tuples([tuple(i.split("/")) for i in ids])
    pandas_order = ["/".join(t) for t in pd.DataFrame(index=idx, data={"v": 0}).sort_index().index]
    assert sorted(ids, key=dlc_sort_key) == pandas_order


def test_dlc_multi_animal_flattened(tmp_path, write_png):
    root = tmp_path / "ma"
    _config(root, multi=(["mus1", "mus2"], ["nose", "tail"], ["lamp"]))
    _frames(root, write_png, "v", ["f0.png", "f1.png"])
    inds = [("mus1", ["nose", "tail"]), ("mus2", ["nose", "tail"]), ("single", ["lamp"])]
    vals = np.arange(20, dtype=float).reshape(2, 10)
    vals[1, 2:4] = np.nan
    _dlc_frame(["labeled-data/v/f0.png", "labeled-data/v/f1.png"], None, vals,
               individuals=inds).to_csv(root / "labeled-data/v/CollectedData_me.csv")
    d = read_dlc_project(root)
    assert list(d.bodyparts) == ["mus1/nose", "mus1/tail", "mus2/nose", "mus2/tail",
                                 "single/lamp"]
    np.testing.assert_array_equal(d.keypoints[0].reshape(-1), vals[0])
    assert np.isnan(d.keypoints[1, 1]).all() and d.counts()["missing_labels"] == 1


def test_dlc_all_nan_frame_kept_and_counted(tmp_path, write_png):
    root = tmp_path / "p"
    _config(root, ["a"])
    _frames(root, write_png, "v", ["x0.png", "x1.png"])
    _dlc_frame(["labeled-data/v/x0.png", "labeled-data/v/x1.png"], ["a"],
               [[np.nan, np.nan], [2, 3]]).to_csv(root / "labeled-data/v/CollectedData_me.csv")
    d = read_dlc_project(root)
    assert d.n_frames == 2 and d.counts()["unlabeled_frames"] == 1


def test_dlc_h5_only(tmp_path, write_png, shared_data):
    """An .h5-only folder reads through pandas+PyTables, or says to export a CSV."""
    root = tmp_path / "h5proj"
    src = shared_data / OPENFIELD
    root.mkdir()
    (root / "config.yaml").write_bytes((src / "config.yaml").read_bytes())
    vid = root / "labeled-data" / "m4s1"
    vid.mkdir(parents=True)
    (vid / "CollectedData_Pranav.h5").write_bytes(
        (src / "labeled-data/m4s1/CollectedData_Pranav.h5").read_bytes())
    for p in sorted((src / "labeled-data/m4s1").glob("*.png"))[:116]:
        (vid / p.name).symlink_to(p)
    try:
        import tables  # noqa: F401
    except ImportError:
        with pytest.raises(DatasetError, match=r"CollectedData_Pranav\.h5.*PyTables.*CSV"):
            read_dlc_project(root, image_size=(48, 64))
    else:
        d = read_dlc_project(root, image_size=(48, 64))
        _, _, xy = _pandas_xy(src / "labeled-data/m4s1/CollectedData_Pranav.csv")
        np.testing.assert_allclose(d.original_keypoints(), xy, atol=1e-3)


def test_label_csv_index_names_row_and_quoted(tmp_path):
    df = _dlc_frame(pd.Index(["labeled-data/v/a.png"], name="frame"), ["p", "q"],
                    [[1, 2, 3, 4]])
    df.to_csv(tmp_path / "c.csv")
    t = read_label_csv(tmp_path / "c.csv")
    assert t.frame_ids == ["labeled-data/v/a.png"] and t.names == ["p", "q"]
    np.testing.assert_array_equal(t.xy[0], [[1, 2], [3, 4]])


# ------------------------------------------------------------------------------ COCO
def _coco(tmp: Path, write_png, anns, images=None, sub="images"):
    images = images or [{"id": 1, "file_name": "a.png", "width": 16, "height": 12},
                        {"id": 2, "file_name": "b.png", "width": 16, "height": 12}]
    for im in images:
        write_png(tmp / sub / im["file_name"], np.full((12, 16, 3), 50, np.uint8))
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "mouse", "keypoints": ["nose", "ear", "tail"]}]}
    (tmp / "ann.json").write_text(json.dumps(doc))
    return tmp / "ann.json"


def test_coco_visibility_and_order(tmp_path, write_png):
    anns = [{"id": 10, "image_id": 2, "category_id": 1, "keypoints": [1, 2, 2, 0, 0, 0, 5, 6, 1]},
            {"id": 11, "image_id": 1, "category_id": 1, "keypoints": [3, 4, 2, 7, 8, 2, 0, 0, 0]}]
    p = _coco(tmp_path, write_png, anns)
    d = read_coco(p)                                       # images/ beside the JSON
    assert list(d.bodyparts) == ["nose", "ear", "tail"]
    assert list(d.frame_ids) == ["a.png", "b.png"]         # JSON image order
    np.testing.assert_array_equal(d.keypoints[0], [[3, 4], [7, 8], [np.nan, np.nan]])
    np.testing.assert_array_equal(d.keypoints[1], [[1, 2], [np.nan, np.nan], [5, 6]])
    assert d.image_shape == (12, 16, 3)
    assert load_dataset(p).n_frames == 2


def test_coco_several_annotations_policy(tmp_path, write_png):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "area": 5.0,
             "keypoints": [1, 1, 2, 1, 1, 2, 1, 1, 2]},
            {"id": 2, "image_id": 1, "category_id": 1, "area": 50.0,
             "keypoints": [9, 9, 2, 9, 9, 2, 9, 9, 2]}]
    p = _coco(tmp_path, write_png, anns)
    with pytest.raises(DatasetError, match=r"ann\.json.*image id 1 .*2 keypoint annotations"):
        read_coco(p)
    assert read_coco(p, individual="largest").keypoints[0, 0, 0] == 9
    assert read_coco(p, individual="first").keypoints[0, 0, 0] == 1
    d = read_coco(p, individual="first", keep_unannotated=True, image_dir=tmp_path / "images")
    assert d.n_frames == 2 and d.counts()["unlabeled_frames"] == 1


# ------------------------------------------------------------------------- letterbox
def test_letterbox_pixel_centres_exact_upscale():
    img = np.zeros((4, 4, 1), np.uint8)
    out, lb = letterbox_image(img, (8, 8))
    assert lb.scale == 2.0 and lb.dx == 0.5 and lb.dy == 0.5
    # centre of original pixel 0 lies between output pixels 0 and 1; last maps to 6.5
    np.testing.assert_allclose(to_train(np.array([[0.0, 3.0]]), lb.as_array()), [[0.5, 6.5]])
    lb2 = letterbox_params(orig_w=20, orig_h=10, out_h=10, out_w=10)
    assert (lb2.scale, lb2.new_w, lb2.new_h, lb2.pad_x, lb2.pad_y) == (0.5, 10, 5, 0, 2)
    assert lb2.dy == 0.5 * 0.5 - 0.5 + 2


def _blob(h, w, cx, cy, channels):
    yy, xx = np.mgrid[0:h, 0:w]
    g = 250 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 2.0 ** 2))
    g = np.round(g).astype(np.uint8)
    return np.repeat(g[..., None], channels, -1) if channels > 1 else g


def _centroid(img):
    img = img.astype(np.float64).sum(-1)
    img = np.where(img > 0.05 * img.max(), img, 0)
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    return np.array([(xx * img).sum() / img.sum(), (yy * img).sum() / img.sum()])


def test_letterbox_two_sizes_feature_lands_on_keypoint(tmp_path, write_png):
    """Two image sizes (grey and RGB mixed) letterboxed to 48x48: labels map back to the
    original pixels to 1e-4, and a drawn blob lands where the transformed label says."""
    root = tmp_path / "lp"
    specs = {"labeled-data/wide.png": (80, 40, 30.0, 17.0, 1),   # w, h, cx, cy, channels
             "labeled-data/tall.png": (36, 60, 11.0, 40.0, 3)}
    rows = []
    for name, (w, h, cx, cy, ch) in specs.items():
        write_png(root / name, _blob(h, w, cx, cy, ch))
        rows.append([cx, cy])
    _dlc_frame(list(specs), ["spot"], rows).to_csv(root / "CollectedData.csv")
    with pytest.raises(DatasetError, match="image_size"):
        read_lightning_pose(root / "CollectedData.csv")
    d = read_lightning_pose(root / "CollectedData.csv", image_size=(48, 48))
    assert d.image_shape == (48, 48, 3)                       # grey + RGB -> RGB
    np.testing.assert_array_equal(d.original_sizes, [[80, 40], [36, 60]])
    np.testing.assert_allclose(d.original_keypoints()[:, 0], rows, atol=1e-4, rtol=0)
    np.testing.assert_allclose(to_original(d.keypoints, d.letterbox)[:, 0], rows, atol=1e-4)
    for i in range(2):
        np.testing.assert_allclose(_centroid(d.images[i]), d.keypoints[i, 0], atol=0.1)
    # the wide image is scaled by 48/80 = 0.6 and padded top/bottom by (48 - 24) / 2
    np.testing.assert_allclose(d.letterbox[0], [0.6, 0.5 * 0.6 - 0.5, 0.5 * 0.6 - 0.5 + 12],
                               rtol=1e-6)


def test_grey_and_rgb_mixed_converted(tmp_path, write_png):
    root = tmp_path / "mix"
    write_png(root / "g.png", np.full((6, 8), 77, np.uint8))
    write_png(root / "c.png", np.dstack([np.full((6, 8), v, np.uint8) for v in (1, 2, 3)]))
    _dlc_frame(["g.png", "c.png"], ["k"], [[1, 1], [2, 2]]).to_csv(root / "CollectedData.csv")
    d = read_lightning_pose(root / "CollectedData.csv")
    assert d.image_shape == (6, 8, 3)
    assert (d.images[0] == 77).all() and (d.images[1] == [1, 2, 3]).all()
    assert load_image(root / "g.png").shape == (6, 8, 1)
    assert isinstance(d, KeypointDataset)
