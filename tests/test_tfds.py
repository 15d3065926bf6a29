"""TFDS pack / read round trips, without TensorFlow."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.data.load import load_dataset
from ensemble_jax.data.tfds_io import read_tfds, write_tfds

REPO = Path(__file__).resolve().parents[1]


def _toy(n=6, k=3, h=10, w=14, c=3, seed=0) -> KeypointDataset:
    rng = np.random.default_rng(seed)
    kp = (rng.random((n, k, 2)) * [w, h]).astype(np.float32)
    kp[1, 2] = np.nan
    kp[4] = np.nan                                      # an all-NaN frame
    lb = np.column_stack([rng.uniform(0.3, 2.0, n), rng.normal(size=n), rng.normal(size=n)])
    return KeypointDataset(
        images=rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), keypoints=kp,
        bodyparts=[f"part{j}" for j in range(k)],
        frame_ids=[f"labeled-data/vid/img{i}.png" for i in range(n)][::-1],
        noise_mask=rng.random((n, k)) < 0.3, letterbox=lb.astype(np.float32),
        original_sizes=rng.integers(5, 900, (n, 2)).astype(np.int32), source="toy")


def _assert_same(a: KeypointDataset, b: KeypointDataset) -> None:
    for field in ("images", "keypoints", "letterbox", "original_sizes"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    assert list(a.bodyparts) == list(b.bodyparts)
    assert list(a.frame_ids) == list(b.frame_ids)
    if a.noise_mask is None:
        assert b.noise_mask is None
    else:
        np.testing.assert_array_equal(a.noise_mask, b.noise_mask)


_SCRIPT = textwrap.dedent("""
    import importlib.util, sys
    tf_installed = importlib.util.find_spec("tensorflow") is not None
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_tfds import _toy, _assert_same
    from ensemble_jax.data.tfds_io import read_tfds, write_tfds
    ds = _toy()
    grey = _toy(c=1, seed=1)
    path = write_tfds(ds, {out!r}, name="toy")
    write_tfds(grey, {out!r}, name="toy_grey")
    _assert_same(ds, read_tfds(path))
    _assert_same(ds, read_tfds("toy", data_dir={out!r}))
    _assert_same(grey, read_tfds({out!r} + "/toy_grey"))
    if not tf_installed:  # where TF exists TFDS may use it on its own; here it cannot
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    print("TF installed:", tf_installed)
    print("ROUND TRIP OK")
""")


def test_round_trip_without_tensorflow(tmp_path):
    """Runs in a fresh interpreter; with TensorFlow absent (as in this project's
    environment) the round trip proves nothing needs it, and no TF module gets loaded."""
    script = _SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path / "tfds"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "ROUND TRIP OK" in res.stdout


def test_round_trip_real_data_and_resize(shared_data, tmp_path):
    ds = load_dataset(shared_data / "lp-mirror-mouse-example", image_size=(64, 64))
    path = write_tfds(ds, tmp_path, name="mirror")
    assert path == tmp_path / "mirror" / "1.0.0"
    back = load_dataset(path)                          # detected as TFDS
    _assert_same(ds, back)
    # records are stored in frame order, so a split slice is a prefix of the frames
    assert list(read_tfds(path, split="train[:5]").frame_ids) == list(ds.frame_ids[:5])
    # reading at another size composes the letterbox transforms exactly
    small = read_tfds(tmp_path, image_size=(32, 32))
    assert small.image_shape == (32, 32, 1)
    np.testing.assert_allclose(small.original_keypoints(), ds.original_keypoints(), atol=1e-4)
    with pytest.raises(DatasetError, match="already exists"):
        write_tfds(ds, tmp_path, name="mirror")
    write_tfds(ds.take([0, 1]), tmp_path, name="mirror", overwrite=True)
    assert read_tfds(path).n_frames == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]   # no temp leftovers


def test_unknown_name_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="'no_such_keypoints_xyz' not found"):
        read_tfds("no_such_keypoints_xyz", data_dir=tmp_path)
    with pytest.raises(DatasetError, match="no_such_keypoints_xyz"):
        load_dataset("no_such_keypoints_xyz", data_dir=tmp_path)


def test_bad_split_and_bad_name(tmp_path):
    write_tfds(_toy(), tmp_path, name="toy")
    with pytest.raises(DatasetError, match=r"no split 'test'.*train"):
        read_tfds("toy", data_dir=tmp_path, split="test")
    with pytest.raises(DatasetError, match="must start with a letter"):
        write_tfds(_toy(), tmp_path, name="1bad-name")


def test_foreign_dataset_with_image_feature(tmp_path):
    """A dataset written by someone else: Image feature (PNG bytes, two sizes),
    keypoints (x, y, visibility), names in metadata; read with a feature mapping."""
    import tensorflow_datasets as tfds
    from PIL import Image

    sizes = [(20, 10), (12, 16)]                       # (w, h)

    def png(w, h, v):
        buf = io.BytesIO()
        Image.fromarray(np.full((h, w, 3), v, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    class ForeignPoses(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("2.0.0")

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            return None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "img": tfds.features.Image(shape=(None, None, 3)),
                    "pts": tfds.features.Tensor(shape=(2, 3), dtype=np.float32)}),
                metadata=tfds.core.MetadataDict({"keypoint_names": ["head", "tail"]}))

        def _split_generators(self, dl_manager):
            return {"validation": self._generate_examples()}

        def _generate_examples(self):
            for i, (w, h) in enumerate(sizes):
                yield i, {"img": png(w, h, 100 + i),
                          "pts": np.array([[1, 2, 2], [3, 4, 0]], np.float32) * (i + 1)}

    builder = ForeignPoses(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    with pytest.raises(DatasetError, match="no feature 'image'"):
        read_tfds("foreign_poses", data_dir=tmp_path, split="validation")
    with pytest.raises(DatasetError, match="image_size"):
        read_tfds("foreign_poses", data_dir=tmp_path, split="validation", image_key="img",
                  keypoints_key="pts")
    d = read_tfds("foreign_poses", data_dir=tmp_path, split="validation", image_key="img",
                  keypoints_key="pts", image_size=16)
    assert list(d.bodyparts) == ["head", "tail"] and d.image_shape == (16, 16, 3)
    order = np.argsort(d.original_sizes[:, 0])[::-1]   # data-source order is the file's
    orig = d.original_keypoints()[order]
    np.testing.assert_allclose(orig[:, 0], [[1, 2], [2, 4]], atol=1e-5)
    assert np.isnan(orig[:, 1]).all()                   # visibility 0 -> NaN
