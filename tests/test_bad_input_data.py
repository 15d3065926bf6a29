"""Bad input: every problem is a `DatasetError` naming the file and the row or key.

One test per case, plus hypothesis fuzzing of the CSV and COCO readers (random bytes,
mutations and truncations must give a DatasetError or a valid dataset, never another
exception or a hang).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensemble_jax.data.coco import read_coco
from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.dlc import read_dlc_project
from ensemble_jax.data.lightning_pose import read_lightning_pose
from ensemble_jax.data.load import load_dataset
from ensemble_jax.data.tfds_io import read_tfds

GOOD_CSV = """\
scorer,me,me,me,me
bodyparts,nose,nose,tail,tail
coords,x,y,x,y
labeled-data/v/img0.png,1.5,2.5,3.5,4.5
labeled-data/v/img1.png,5,6,,
labeled-data/v/img2.png,7,8,9,10
"""
GOOD_CONFIG = "Task: t\nscorer: me\nbodyparts:\n- nose\n- tail\n"


def _images(root: Path, write_png, names=("img0.png", "img1.png", "img2.png"), grey=True):
    for i, n in enumerate(names):
        arr = np.full((6, 8), 40 * i, np.uint8) if grey else np.full((6, 8, 3), 9, np.uint8)
        write_png(root / "labeled-data" / "v" / n, arr)


def _dlc(tmp_path: Path, write_png, csv_text=GOOD_CSV, config=GOOD_CONFIG) -> Path:
    root = tmp_path / "proj"
    _images(root, write_png)
    if config is not None:
        (root / "config.yaml").write_text(config)
    (root / "labeled-data/v/CollectedData_me.csv").write_text(csv_text)
    return root


def _lp(tmp_path: Path, write_png, csv_text=GOOD_CSV) -> Path:
    _images(tmp_path, write_png)
    (tmp_path / "CollectedData.csv").write_text(csv_text)
    return tmp_path / "CollectedData.csv"


def test_good_fixture_reads(tmp_path, write_png):
    d = read_dlc_project(_dlc(tmp_path, write_png))
    assert d.n_frames == 3 and d.counts()["missing_labels"] == 1


def test_missing_config_yaml(tmp_path, write_png):
    root = _dlc(tmp_path, write_png, config=None)
    with pytest.raises(DatasetError, match=r"proj/config\.yaml: missing config\.yaml"):
        read_dlc_project(root)


def test_bodypart_in_config_not_in_csv(tmp_path, write_png):
    root = _dlc(tmp_path, write_png, config=GOOD_CONFIG + "- paw\n")
    with pytest.raises(DatasetError,
                       match=r"CollectedData_me\.csv, line 2: bodyparts \['paw'\] are in "
                             r"config\.yaml"):
        read_dlc_project(root)


def test_duplicate_frame_rows(tmp_path, write_png):
    text = GOOD_CSV + "labeled-data/v/img1.png,1,1,1,1\n"
    with pytest.raises(DatasetError, match=r"CollectedData\.csv, line 7: duplicate frame "
                                           r"'labeled-data/v/img1\.png' \(also on line 5\)"):
        read_lightning_pose(_lp(tmp_path, write_png, text))


def test_non_numeric_coordinate(tmp_path, write_png):
    text = GOOD_CSV.replace("7,8,9,10", "7,8,abc,10")
    with pytest.raises(DatasetError, match=r"CollectedData_me\.csv, line 6, column 4 "
                                           r"\(tail x\): non-numeric coordinate 'abc'"):
        read_dlc_project(_dlc(tmp_path, write_png, text))


def test_missing_image_file(tmp_path, write_png):
    csv_path = _lp(tmp_path, write_png)
    (tmp_path / "labeled-data/v/img1.png").unlink()
    with pytest.raises(DatasetError, match=r"image file not found: .*img1\.png \(referenced "
                                           r"by .*CollectedData\.csv, line 5\)"):
        read_lightning_pose(csv_path)


def test_unreadable_image(tmp_path, write_png):
    csv_path = _lp(tmp_path, write_png)
    (tmp_path / "labeled-data/v/img2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage bytes")
    with pytest.raises(DatasetError, match=r"unreadable image .*img2\.png \(referenced by "
                                           r".*CollectedData\.csv, line 6\)"):
        read_lightning_pose(csv_path)


def test_truncated_image(tmp_path, write_png):
    csv_path = _lp(tmp_path, write_png)
    big = tmp_path / "labeled-data/v/img0.png"
    write_png(big, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    big.write_bytes(big.read_bytes()[:300])
    write_png(tmp_path / "labeled-data/v/img1.png", np.zeros((64, 64), np.uint8))
    write_png(tmp_path / "labeled-data/v/img2.png", np.zeros((64, 64), np.uint8))
    with pytest.raises(DatasetError, match=r"img0\.png .*CollectedData\.csv, line 4"):
        read_lightning_pose(csv_path)


def test_broken_header(tmp_path, write_png):
    text = GOOD_CSV.replace("bodyparts,", "bodypart,", 1)
    with pytest.raises(DatasetError, match=r"CollectedData\.csv, line 2: broken header: "
                                           r"expected a row starting with 'bodyparts'"):
        read_lightning_pose(_lp(tmp_path, write_png, text))
    text = GOOD_CSV.replace("coords,x,y,x,y", "coords,x,y,x,z")
    with pytest.raises(DatasetError, match=r"line 3, column 5: broken header"):
        read_lightning_pose(_lp(tmp_path, write_png, text))


def test_empty_csv(tmp_path, write_png):
    with pytest.raises(DatasetError, match=r"CollectedData\.csv: empty file"):
        read_lightning_pose(_lp(tmp_path, write_png, ""))


def test_truncated_csv(tmp_path, write_png):
    text = GOOD_CSV[: GOOD_CSV.index("7,8,9,10") + 3]          # cut inside the last row
    with pytest.raises(DatasetError, match=r"CollectedData\.csv, line 6: row has 3 cells but "
                                           r"the header has 5 \(truncated"):
        read_lightning_pose(_lp(tmp_path, write_png, text))
    text = GOOD_CSV[:30]                                       # cut inside the header
    with pytest.raises(DatasetError, match=r"CollectedData\.csv, line 2: broken header"):
        read_lightning_pose(_lp(tmp_path, write_png, text))


def test_zero_labeled_frames(tmp_path, write_png):
    header_only = "\n".join(GOOD_CSV.splitlines()[:3]) + "\n"
    with pytest.raises(DatasetError, match=r"CollectedData\.csv, line 3: zero labeled frames"):
        read_lightning_pose(_lp(tmp_path, write_png, header_only))
    all_nan = header_only + "labeled-data/v/img0.png,,,,\n"
    with pytest.raises(DatasetError, match=r"CollectedData\.csv: zero labeled frames"):
        read_lightning_pose(_lp(tmp_path, write_png, all_nan))


def test_grey_and_rgb_mixed_works(tmp_path, write_png):
    csv_path = _lp(tmp_path, write_png)
    write_png(tmp_path / "labeled-data/v/img1.png", np.full((6, 8, 3), (10, 20, 30), np.uint8))
    d = read_lightning_pose(csv_path)
    assert d.image_shape == (6, 8, 3)
    assert (d.images[1] == (10, 20, 30)).all() and (d.images[2] == 80).all()


def test_tfds_name_that_does_not_exist(tmp_path):
    with pytest.raises(DatasetError, match=r"TFDS dataset 'mouse_poses_nowhere' not found"):
        read_tfds("mouse_poses_nowhere", data_dir=tmp_path)


def test_h5_only_without_pytables(tmp_path, write_png, monkeypatch):
    root = _dlc(tmp_path, write_png)
    (root / "labeled-data/v/CollectedData_me.csv").unlink()
    (root / "labeled-data/v/CollectedData_me.h5").write_bytes(b"not really hdf5")
    import builtins
    real_import = builtins.__import__

    def no_tables(name, *args, **kwargs):
        if name == "tables" or name.startswith("tables."):
            raise ImportError("No module named 'tables'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tables)
    with pytest.raises(DatasetError, match=r"CollectedData_me\.h5: .*PyTables.*export the "
                                           r"labels to CSV"):
        read_dlc_project(root)


def test_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset format 'nwb'.*'dlc'"):
        load_dataset(tmp_path, format="nwb")


# ------------------------------------------------------------------------------ COCO
def _coco_doc(anns):
    return {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "annotations": anns,
            "categories": [{"id": 1, "name": "m", "keypoints": ["p", "q"]}]}


def _coco(tmp_path, write_png, doc) -> Path:
    for n in ("a.png", "b.png"):
        write_png(tmp_path / n, np.zeros((5, 5), np.uint8))
    (tmp_path / "ann.json").write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return tmp_path / "ann.json"


def test_coco_annotation_with_unknown_image(tmp_path, write_png):
    doc = _coco_doc([{"id": 7, "image_id": 1, "category_id": 1, "keypoints": [1, 1, 2, 2, 2, 2]},
                     {"id": 8, "image_id": 99, "category_id": 1, "keypoints": [1, 1, 2, 2, 2, 2]}])
    with pytest.raises(DatasetError, match=r"ann\.json: annotations\[1\] \(id=8, image_id=99\): "
                                           r"image_id 99 is not an id in 'images'"):
        read_coco(_coco(tmp_path, write_png, doc))


def test_coco_keypoints_of_wrong_length(tmp_path, write_png):
    doc = _coco_doc([{"id": 7, "image_id": 1, "category_id": 1, "keypoints": [1, 1, 2, 2, 2]}])
    with pytest.raises(DatasetError, match=r"ann\.json: annotations\[0\] \(id=7, image_id=1\): "
                                           r"'keypoints' has length 5, expected 3 x 2 = 6"):
        read_coco(_coco(tmp_path, write_png, doc))


def test_coco_truncated_json(tmp_path, write_png):
    text = json.dumps(_coco_doc([]), indent=1)[:-20]
    with pytest.raises(DatasetError, match=r"ann\.json, line \d+, column \d+: invalid JSON"):
        read_coco(_coco(tmp_path, write_png, text))


def test_coco_missing_image(tmp_path, write_png):
    doc = _coco_doc([{"id": 7, "image_id": 2, "category_id": 1, "keypoints": [1, 1, 2, 2, 2, 2]}])
    p = _coco(tmp_path, write_png, doc)
    (tmp_path / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"ann\.json, images\[1\] / annotations\[0\]: image "
                                           r"file 'b\.png' not found"):
        read_coco(p)


# ----------------------------------------------------------------------------- fuzzing
_FUZZ = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


def _outcome(fn, path):
    try:
        d = fn(path)
    except DatasetError as e:
        assert str(e)
        return None
    assert isinstance(d, KeypointDataset)
    return d


@_FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_csv_random_bytes(tmp_path, write_png, data):
    if not (tmp_path / "labeled-data").exists():
        _images(tmp_path, write_png)
    csv_path = tmp_path / "CollectedData.csv"
    csv_path.write_bytes(data)
    if _outcome(read_lightning_pose, csv_path) is None:
        assert "CollectedData.csv" in str(_err(read_lightning_pose, csv_path))


@_FUZZ
@given(cut=st.integers(0, len(GOOD_CSV)), pos=st.integers(0, len(GOOD_CSV) - 1),
       char=st.sampled_from(list(',\n"x.-e \r\x00;')))
def test_fuzz_csv_truncated_and_mutated(tmp_path, write_png, cut, pos, char):
    if not (tmp_path / "labeled-data").exists():
        _images(tmp_path, write_png)
    csv_path = tmp_path / "CollectedData.csv"
    csv_path.write_text(GOOD_CSV[:cut])
    d = _outcome(read_lightning_pose, csv_path)
    if d is not None:               # a cut at (or just before) a line end loses rows only
        assert d.n_frames <= 3
    else:
        assert "CollectedData.csv" in str(_err(read_lightning_pose, csv_path))
    csv_path.write_text(GOOD_CSV[:pos] + char + GOOD_CSV[pos + 1:])
    if _outcome(read_lightning_pose, csv_path) is None:
        assert "CollectedData.csv" in str(_err(read_lightning_pose, csv_path))


def _err(fn, path) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        fn(path)
    return info.value


_GOOD_COCO = json.dumps(_coco_doc(
    [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [1, 1, 2, 3, 3, 0]},
     {"id": 2, "image_id": 2, "category_id": 1, "keypoints": [2, 2, 2, 4, 4, 1]}]))


@_FUZZ
@given(data=st.one_of(
    st.binary(max_size=300),
    st.integers(0, len(_GOOD_COCO)).map(lambda k: _GOOD_COCO[:k].encode()),
    st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=5),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(
                     st.sampled_from(["images", "annotations", "categories", "id", "image_id",
                                      "file_name", "keypoints", "category_id", "name"]), c,
                     max_size=4), max_leaves=12).map(lambda v: json.dumps(v).encode())))
def test_fuzz_coco(tmp_path, write_png, data):
    if not (tmp_path / "a.png").exists():
        _coco(tmp_path, write_png, _GOOD_COCO)
    (tmp_path / "ann.json").write_bytes(data)
    d = _outcome(read_coco, tmp_path / "ann.json")
    if d is None:
        assert re.search(r"ann\.json", str(_err(read_coco, tmp_path / "ann.json")))
