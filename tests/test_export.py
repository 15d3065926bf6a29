"""Writers: prediction CSVs read back with pandas; DLC shuffle export/import round trips."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.dlc import read_label_csv
from ensemble_jax.data.export import (dlc_sorted_order, export_dlc_shuffles,
                                      import_dlc_shuffles, write_member_predictions,
                                      write_predictions_csv)

BODYPARTS = ["snout", "leftear", "tailbase"]


def _preds(rng, f=5, k=3):
    kp = (rng.random((f, k, 2)) * 500).astype(np.float32)
    conf = rng.random((f, k)).astype(np.float32)
    kp[1, 2] = np.nan
    conf[1, 2] = np.nan
    return kp, conf


def _read(path):
    return pd.read_csv(path, header=[0, 1, 2], index_col=0)


def test_predictions_csv_round_trip_with_pandas(tmp_path):
    rng = np.random.default_rng(0)
    kp, conf = _preds(rng)
    ids = [f"labeled-data/v/img{i}.png" for i in range(5)]
    p = write_predictions_csv(tmp_path / "pred.csv", kp, conf, BODYPARTS, ids)
    df = _read(p)
    assert list(df.index) == ids
    assert list(df.columns.names) == [None, None, None] or df.columns.nlevels == 3
    assert set(df.columns.get_level_values(0)) == {"ensemble-jax"}
    assert list(df.columns.get_level_values(2)[:3]) == ["x", "y", "likelihood"]
    sub = df["ensemble-jax"]
    for k, bp in enumerate(BODYPARTS):
        np.testing.assert_array_equal(sub[bp]["x"].to_numpy(), kp[:, k, 0].astype(np.float64))
        np.testing.assert_array_equal(sub[bp]["y"].to_numpy(), kp[:, k, 1].astype(np.float64))
        np.testing.assert_array_equal(sub[bp]["likelihood"].to_numpy(),
                                      conf[:, k].astype(np.float64))
    # our own DLC-table reader reads it as well (likelihood columns dropped)
    t = read_label_csv(p)
    np.testing.assert_array_equal(t.xy, kp.astype(np.float64))


def test_predictions_shape_errors(tmp_path):
    kp, conf = _preds(np.random.default_rng(1))
    with pytest.raises(DatasetError, match="confidences"):
        write_predictions_csv(tmp_path / "x.csv", kp, conf[:, :2], BODYPARTS, list("abcde"))
    with pytest.raises(DatasetError, match="frame_ids"):
        write_predictions_csv(tmp_path / "x.csv", kp, conf, BODYPARTS, list("abc"))
    assert not (tmp_path / "x.csv").exists()


def test_member_predictions_and_ensemble(tmp_path):
    rng = np.random.default_rng(2)
    m, f, k = 3, 4, 3
    kp = (rng.random((m, f, k, 2)) * 100).astype(np.float32)
    conf = rng.random((m, f, k)).astype(np.float32)
    ids = [str(i) for i in range(f)]
    paths = write_member_predictions(tmp_path / "preds", kp, conf, BODYPARTS, ids)
    assert [p.relative_to(tmp_path / "preds").as_posix() for p in paths] == [
        "members/member_000.csv", "members/member_001.csv", "members/member_002.csv",
        "ensemble.csv"]
    for i in range(m):
        df = _read(paths[i])["ensemble-jax"]
        np.testing.assert_array_equal(df["leftear"]["y"].to_numpy(), kp[i, :, 1, 1])
    ens = _read(paths[-1])["ensemble-jax"]
    np.testing.assert_allclose(ens["snout"]["x"].to_numpy(), np.median(kp[:, :, 0, 0], 0),
                               rtol=1e-6)
    np.testing.assert_allclose(ens["snout"]["likelihood"].to_numpy(),
                               conf[:, :, 0].astype(np.float64).mean(0), rtol=1e-6)


def test_dlc_sorted_order_is_lexicographic():
    ids = ["labeled-data/v/img2.png", "labeled-data/v/img10.png", "labeled-data/v/img1.png"]
    assert [ids[i] for i in dlc_sorted_order(ids)] == [
        "labeled-data/v/img1.png", "labeled-data/v/img10.png", "labeled-data/v/img2.png"]


def test_shuffle_round_trip_bool(tmp_path):
    ids = [f"labeled-data/v/img{i}.png" for i in range(12)]
    rng = np.random.default_rng(3)
    masks = rng.random((11, 12)) < 0.6
    paths = export_dlc_shuffles(masks, ids, tmp_path / "sh")
    assert [p.name for p in paths][:3] == ["shuffle_0.json", "shuffle_1.json", "shuffle_2.json"]
    doc = json.loads(paths[0].read_text())
    assert doc["frame_ids_sorted"] == sorted(ids)
    assert doc["frame_ids_sorted"][2] == "labeled-data/v/img10.png"     # img10 < img2
    sorted_ids = doc["frame_ids_sorted"]
    assert {sorted_ids[j] for j in doc["train_indices"]} == {
        ids[i] for i in np.flatnonzero(masks[0])}
    assert sorted(doc["train_indices"] + doc["test_indices"]) == list(range(12))
    back = import_dlc_shuffles(tmp_path / "sh", ids)      # shuffle_10 after shuffle_9
    assert back.dtype == np.bool_
    np.testing.assert_array_equal(back, masks)
    # the caller's frame order may differ from the export's
    perm = rng.permutation(12)
    np.testing.assert_array_equal(import_dlc_shuffles(paths, [ids[i] for i in perm]),
                                  masks[:, perm])


def test_shuffle_round_trip_bootstrap_counts(tmp_path):
    ids = [f"f{i}" for i in range(7)]
    masks = np.random.default_rng(4).multinomial(7, [1 / 7] * 7, size=4).astype(np.int64)
    export_dlc_shuffles(masks, ids, tmp_path)
    back = import_dlc_shuffles(tmp_path, ids)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, masks)


def test_shuffle_wrong_dataset_is_refused(tmp_path):
    ids = ["a", "b", "c"]
    export_dlc_shuffles(np.array([[True, False, True]]), ids, tmp_path)
    with pytest.raises(DatasetError, match=r"shuffle_0\.json.*frame_ids_sorted"):
        import_dlc_shuffles(tmp_path, ["a", "b", "x"])


def test_import_dlc_documentation_pickle(tmp_path):
    ids = ["labeled-data/v/img2.png", "labeled-data/v/img10.png", "labeled-data/v/img1.png"]
    # sorted: img1 (pos 0), img10 (pos 1), img2 (pos 2)
    with open(tmp_path / "Documentation_data-t_95shuffle1.pickle", "wb") as f:
        pickle.dump([[], np.array([0, 2]), np.array([1]), 0.95], f)
    masks = import_dlc_shuffles(tmp_path, ids)
    np.testing.assert_array_equal(masks, [[True, False, True]])


def _eks_style_load(csv_dir):
    """EKS's loading path (eks.utils.format_data / load_pose_data, 4.x) rebuilt with pandas:
    every *.csv of --input-dir is one member, read with header=[0, 1, 2], index_col=0;
    the three column levels are scorer / bodyparts / coords; per bodypart x, y,
    likelihood; the members are stacked into one array [members, frames, 3 * K]."""
    frames = []
    for path in sorted(csv_dir.glob("*.csv")):
        df = pd.read_csv(path, header=[0, 1, 2], index_col=0)
        df.columns.names = ["scorer", "bodyparts", "coords"]
        assert set(df.columns.get_level_values("coords")) == {"x", "y", "likelihood"}
        frames.append(df)
    bps = list(dict.fromkeys(frames[0].columns.get_level_values("bodyparts")))
    arr = np.empty((len(frames), len(frames[0]), 3 * len(bps)))
    for i, df in enumerate(frames):
        for j, bp in enumerate(bps):
            sub = df.xs(bp, level="bodyparts", axis=1).droplevel("scorer", axis=1)
            arr[i, :, 3 * j:3 * j + 3] = sub[["x", "y", "likelihood"]].to_numpy()
    return frames, bps, arr


def test_member_files_load_the_eks_way_with_nan_rows(tmp_path):
    """The EKS failure of issue #20: a member whose first frame is all NaN lost that row
    to pandas' header parsing (empty cells), so its table had 79 rows beside 80; and
    ensemble.csv sat in the members' folder as one more member. Diverged members are
    left out."""
    rng = np.random.default_rng(5)
    m, f, k = 4, 80, 3
    kp = (rng.random((m, f, k, 2)) * 300).astype(np.float32)
    conf = rng.random((m, f, k)).astype(np.float32)
    kp[1, 0] = np.nan                       # member 1 lost every keypoint on frame 0
    conf[1, 0] = np.nan
    kp[2, 5, 1] = np.nan                    # partly NaN keypoints
    conf[2, 5, 1] = np.nan
    kp[0, 7, 2, 0] = np.nan                 # only x missing
    alive = np.array([True, True, True, False])
    out = tmp_path / "video"
    paths = write_member_predictions(out, kp, conf, BODYPARTS, list(range(f)), alive=alive)
    assert (out / "ensemble.csv") in paths and not (out / "members" / "ensemble.csv").exists()
    frames, bps, arr = _eks_style_load(out / "members")
    assert bps == BODYPARTS
    assert arr.shape == (3, f, 3 * k)          # 3 alive members, every frame kept
    for df in frames:
        assert list(df.index) == list(range(f))              # integer frame indices
        assert df.index.dtype.kind == "i"
    np.testing.assert_array_equal(np.isnan(arr[1, 0]), True)          # the all-NaN row
    np.testing.assert_array_equal(np.isnan(arr[2, 5, 3:6]), True)     # partly NaN row
    assert not np.isnan(arr[2, 5, [0, 1, 2, 6, 7, 8]]).any()
    assert np.isnan(arr[0, 7, 6]) and not np.isnan(arr[0, 7, 7])
    want = np.concatenate([kp[:3], conf[:3, ..., None]], -1).reshape(3, f, 3 * k)
    np.testing.assert_array_equal(arr, want.astype(np.float64))
    assert sorted(p.name for p in (out / "members").glob("*.csv")) == [
        "member_000.csv", "member_001.csv", "member_002.csv"]       # diverged 3 left out
