"""Bad input of issue #14 outside the run directory: huge images, damaged TFDS builds,
malformed report sections (damaged run directories: test_rundir_safety.py). Every case
asserts one clear message naming the file (and the entry at fault)."""
from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from ensemble_jax import cli
from ensemble_jax.analysis.report import build_report, write_section
from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.images import image_info, load_image


# ------------------------------------------------------------ defect 5: huge images
def _png_header_only(path: Path, w: int, h: int) -> None:
    """A tiny PNG file that declares a w x h greyscale image (no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 14000, 14000)              # 196 Mpixels, a few bytes on disk
    for fn in (image_info, load_image):
        with pytest.raises(DatasetError, match=r"bomb\.png \(referenced by labels\.csv line "
                                               r"3\) is too large to decode \(196,000,000 "
                                               r"pixels, limit 89,478,485"):
            fn(bomb, context="labels.csv line 3")
    # our own limit (between Pillow's warning and its error), configurable
    monkeypatch.setenv("ENSEMBLE_JAX_MAX_PIXELS", "1000")
    small = tmp_path / "small.png"
    from PIL import Image
    Image.new("L", (40, 30)).save(small)
    with pytest.raises(DatasetError, match=r"small\.png is too large to decode \(40x30 = "
                                           r"1,200 pixels, limit 1,000 pixels\); .* raise "
                                           r"ENSEMBLE_JAX_MAX_PIXELS"):
        image_info(small)
    monkeypatch.setenv("ENSEMBLE_JAX_MAX_PIXELS", "2000")
    assert load_image(small).shape == (30, 40, 1)


# ----------------------------------------------------------- defect 7: TFDS reader
@pytest.fixture(scope="module")
def tfds_build(tmp_path_factory):
    pytest.importorskip("tensorflow_datasets")
    from ensemble_jax import synthetic_dataset
    from ensemble_jax.data.tfds_io import write_tfds
    base = tmp_path_factory.mktemp("tfds")
    return base, Path(write_tfds(synthetic_dataset(6, image_size=16, seed=1), base,
                                 name="toy"))


def _truncate(p: Path) -> None:
    f = sorted(p.glob("*.array_record*"))[0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


TFDS_DAMAGE = {
    "garbage dataset_info.json": (lambda p: (p / "dataset_info.json").write_text("{garbage"),
                                  r"1\.0\.0/dataset_info\.json: damaged TFDS metadata"),
    "truncated array_record": (_truncate, r"cannot read split 'train' from .*"
                                          r"toy-train\.array_record-00000-of-00001 "
                                          r"\(damaged or truncated\?"),
    "missing features.json": (lambda p: (p / "features.json").unlink(),
                              r"1\.0\.0/features\.json: missing; .* not a complete TFDS build"),
}


@pytest.mark.parametrize("case", sorted(TFDS_DAMAGE))
def test_damaged_tfds_build_names_the_file(tfds_build, tmp_path, case):
    from ensemble_jax.data.tfds_io import read_tfds
    base, build = tfds_build
    copy = tmp_path / "tfds"
    shutil.copytree(base, copy)
    p = copy / build.relative_to(base)
    damage, message = TFDS_DAMAGE[case]
    damage(p)
    with pytest.raises(DatasetError, match=message):
        read_tfds(p)


def test_missing_tfds_version_lists_the_versions(tfds_build):
    from ensemble_jax.data.tfds_io import read_tfds
    base, build = tfds_build
    with pytest.raises(DatasetError, match=r"'toy:9\.9\.9': no version folder .*toy/9\.9\.9 "
                                           r"\(versions there: 1\.0\.0\)"):
        read_tfds("toy:9.9.9", data_dir=base)


# ------------------------------------------------------ defect 9: report sections
BAD_SECTIONS = {
    "not an object": ([1, 2], r"has no 'title'"),
    "title not text": ({"title": 3}, r"title: must be text"),
    "paragraphs not a list": ({"title": "t", "paragraphs": "text"},
                              r"paragraphs: must be a list of texts"),
    "table without rows": ({"title": "t", "tables": [{"caption": "c", "columns": ["a"]}]},
                           r"table 0: must be an object with caption, columns and rows"),
    "ragged table": ({"title": "t", "tables": [{"caption": "c", "columns": ["a", "b"],
                                                "rows": [[1, 2], [3]]}]},
                     r"table 0 row 1: must be a list of 2 cells"),
    "figure without file": ({"title": "t", "figures": [{"caption": "c"}]},
                            r"figure 0: must be an object with a 'file' name"),
    "missing figure": ({"title": "t", "figures": [{"file": "nope.png", "caption": "c"}]},
                       r"figure 0: .*nope\.png does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_SECTIONS))
def test_malformed_section_json_is_named(tmp_path, capsys, case):
    sec, message = BAD_SECTIONS[case]
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "section.json").write_text(json.dumps(sec))
    with pytest.raises(ValueError, match=rf"report: .*study/section\.json.*{message}"):
        build_report(tmp_path)
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
    # a well-formed section still builds
    write_section(tmp_path / "study", title="ok", paragraphs=["fine"],
                  tables=[{"caption": "c", "columns": ["a"], "rows": [[np.float64(1.5)]]}])
    assert build_report(tmp_path).is_file()
