"""Issue 33, point 6: damaged or hostile input gives one clear line naming the file or the
flag (exit 2, no traceback), or is handled: `report` on damaged JSON, figures outside the
reported folder and unfinished runs; `suggest` on a full disk; unreadable JSON; flags named
as typed (`--predictions`, `--seed`, `--widths`, `--resume`).

The run directory for `predict`/`suggest` is built without training (members with their
initial parameters, as in test_video.py) and shared by the module; the run directories
for `report` are plain files written here (no JAX)."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_runs import untrained_run

from ensemble_jax import cli
from ensemble_jax import io as eio
from ensemble_jax.analysis.report import build_report
from ensemble_jax.video import reader, suggest
from ensemble_jax.video.predict import predict_sources

SIZE = 32
N_FRAMES = 24


def _cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Exit code and the stderr lines of `ensemble-jax ARGV`."""
    rc = cli.main(list(argv))
    return rc, capsys.readouterr().err.strip().splitlines()


def _one_error(capsys, *argv: str) -> str:
    """Runs ARGV, asserts exit 2 and one `ensemble-jax <cmd>: error:` line (no traceback);
    returns that line."""
    rc, lines = _cli(capsys, *argv)
    assert rc == 2, lines
    assert not any("Traceback" in ln for ln in lines), lines
    errors = [ln for ln in lines if ln.startswith(f"ensemble-jax {argv[0]}: error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    return errors[0]


# --------------------------------------------------------------- a run to report on
def _report_run(root: Path) -> Path:
    """The files `report` reads of a finished sweep (+ analyze), written by hand."""
    root.mkdir(parents=True)
    eio.write_json(root / "config.json", {
        "sweep": {"data": None, "plan": "random"}, "model": {"output_stride": 4},
        "train": {"steps": 3, "batch_size": 2, "aum_radius": 2.0}})
    eio.write_json(root / "summary.json", {"members": 2, "mean_pose_baseline_px": 7.5,
                                           "ensemble_test": {"mean_px": float("nan")}})
    eio.save_npz(root / "training.npz", losses=np.ones((3, 2), np.float32))
    eio.write_json(root / "analysis.json", {})
    return root


def test_a_well_formed_run_reports_and_nan_is_shown_as_na(tmp_path):
    path = build_report(_report_run(tmp_path / "run"))
    assert "Ensemble test error n/a px" in path.read_text()


DAMAGED = {   # file -> (its text, what the error line says)
    "summary {}": ("summary.json", "{}", r"summary\.json: damaged \(no 'members' entry\)"),
    "config {}": ("config.json", "{}", r"config\.json: damaged \(no 'train' entry\)"),
    "summary a list": ("summary.json", "[1, 2]", r"summary\.json: damaged \(expected a "
                       r"JSON object, got list\)"),
    "analysis [1]": ("analysis.json", "[1]", r"analysis\.json: damaged \(expected a JSON "
                     r"object, got list\)"),
    "analysis of wrong kinds": ("analysis.json", '{"suspects": {"n_flagged": 1}}',
                                r"analysis\.json \(run `ensemble-jax analyze .*` again\): "
                                r"damaged \(KeyError"),
    "config truncated": ("config.json", '{"train": {"st', r"config\.json: not readable JSON"),
    "analysis not UTF-8": ("analysis.json", b"\xff\xfe{", r"analysis\.json: not readable "
                           r"JSON"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_report_on_damaged_run_json_is_one_line_naming_the_file(tmp_path, capsys, case):
    name, text, message = DAMAGED[case]
    run = _report_run(tmp_path / "run")
    (run / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    line = _one_error(capsys, "report", str(run))
    assert re.search(message, line), line
    assert str(run / name) in line
    assert not (run / "report.html").exists()


def test_report_on_a_numeric_table_caption_names_the_section(tmp_path, capsys):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "section.json").write_text(json.dumps(
        {"title": "t", "tables": [{"caption": 3, "columns": ["a"], "rows": [[1]]}]}))
    line = _one_error(capsys, "report", str(tmp_path))
    assert "study/section.json: table 0 caption: must be text" in line


def test_report_on_unreadable_section_json_names_it(tmp_path, capsys):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "section.json").write_text('{"title": ')
    line = _one_error(capsys, "report", str(tmp_path))
    assert "study/section.json: not readable JSON" in line


# ---------------------------------------------- a report embeds only its folder's files
def _section_with_figure(folder: Path, file: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "section.json").write_text(json.dumps(
        {"title": "t", "figures": [{"file": file, "caption": "c"}]}))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_report_never_embeds_a_file_outside_its_folder(tmp_path, capsys, how):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET-BYTES")
    root = tmp_path / "reported"
    study = root / "study"
    if how == "symlink":
        study.mkdir(parents=True)
        (study / "fig.png").symlink_to(secret)
    name = {"absolute": str(secret), "dotdot": "../../secret.png", "symlink": "fig.png"}[how]
    _section_with_figure(study, name)
    line = _one_error(capsys, "report", str(root))
    assert "figure 0" in line and "outside" in line and "section.json" in line
    assert not (root / "report.html").exists()


def test_report_embeds_a_figure_of_another_study_inside_the_folder(tmp_path):
    from base64 import b64encode
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "fig.png").write_bytes(b"PNGDATA")
    _section_with_figure(tmp_path / "b", "../a/fig.png")
    page = build_report(tmp_path).read_text()
    assert b64encode(b"PNGDATA").decode() in page


def test_run_report_refuses_a_figure_linking_outside(tmp_path, capsys):
    run = _report_run(tmp_path / "run")
    (tmp_path / "secret").write_bytes(b"SECRET-BYTES")
    (run / "suspects.png").symlink_to(tmp_path / "secret")
    line = _one_error(capsys, "report", str(run))
    assert "suspects.png links to a file outside" in line


# ---------------------------------------------------------------- unfinished runs
def test_report_on_an_unfinished_sweep_says_how_to_finish_it(tmp_path, capsys):
    run = _report_run(tmp_path / "run")
    (run / "summary.json").unlink()
    line = _one_error(capsys, "report", str(run))
    assert "the sweep has not finished" in line and "--resume" in line
    assert "run a study first" not in line
    (run / "summary.json").write_text("{}")
    (run / "config.json").unlink()
    assert "config.json is missing" in _one_error(capsys, "report", str(run))


def test_report_on_an_empty_folder_still_asks_for_a_study(tmp_path, capsys):
    assert "run a study first" in _one_error(capsys, "report", str(tmp_path))


# --------------------------------------------------------------------- read_json
def test_read_json_names_the_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match=r"x\.json: not readable JSON \(JSONDecodeError"):
        eio.read_json(bad)
    bad.write_text("[1]")
    assert eio.read_json(bad) == [1]
    with pytest.raises(ValueError, match=r"x\.json: damaged \(expected a JSON object"):
        eio.read_json(bad, dict)
    with pytest.raises(FileNotFoundError):
        eio.read_json(tmp_path / "missing.json")


# ------------------------------------------------------ a run and a video to predict
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as `sweep` writes it (2 members with their initial parameters)."""
    return untrained_run(tmp_path_factory.mktemp("run"), frames=8, size=SIZE, members=2)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("video")
    frames = (np.full((48, 64, 3), 20 + 8 * i, np.uint8) for i in range(N_FRAMES))
    return reader.write_video(d / "walk.mp4", frames, fps=25)


@pytest.fixture(scope="module")
def predictions(run_dir, video, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pred")
    predict_sources(run_dir, out, videos=[video], batch_size=8, progress=False,
                    log=lambda m: None)
    return out


@pytest.mark.parametrize("damage", ["[1, 2]", "{not json"])
def test_damaged_predict_json_is_one_line_naming_it(run_dir, video, predictions, tmp_path,
                                                   capsys, damage):
    pred = tmp_path / "pred"
    shutil.copytree(predictions, pred)
    (pred / "walk" / "predict.json").write_text(damage)
    line = _one_error(capsys, "predict", str(run_dir), "--video", str(video), "--out",
                      str(pred), "--quiet")
    assert str(pred / "walk" / "predict.json") in line
    line = _one_error(capsys, "suggest", str(run_dir), "--video", str(video), "--budget", "2",
                      "--out", str(tmp_path / "s"), "--predictions", str(pred), "--quiet")
    assert str(pred / "walk" / "predict.json") in line


def test_damaged_progress_json_of_an_unfinished_predict_is_named(run_dir, video, tmp_path,
                                                                 capsys):
    part = tmp_path / "pred" / "walk" / ".partial"
    part.mkdir(parents=True)
    (part / "progress.json").write_text('{"frames_done": ')
    line = _one_error(capsys, "predict", str(run_dir), "--video", str(video), "--out",
                      str(tmp_path / "pred"), "--quiet")
    assert f"{part / 'progress.json'}: not readable JSON" in line


def test_suggest_names_predictions_not_out(run_dir, video, tmp_path, capsys):
    pred = tmp_path / "pred"
    (pred / "walk").mkdir(parents=True)
    (pred / "walk" / "notes.txt").write_text("not predict's")
    line = _one_error(capsys, "suggest", str(run_dir), "--video", str(video), "--budget", "2",
                      "--out", str(tmp_path / "s"), "--predictions", str(pred), "--quiet")
    assert f"--predictions {pred / 'walk'}: exists and holds files" in line
    assert "--out" not in line
    as_file = tmp_path / "a_file"
    as_file.write_text("x")
    line = _one_error(capsys, "suggest", str(run_dir), "--video", str(video), "--budget", "2",
                      "--out", str(tmp_path / "s"), "--predictions", str(as_file), "--quiet")
    assert f"--predictions {as_file}: exists and is a file" in line
    # predict itself still names --out
    line = _one_error(capsys, "predict", str(run_dir), "--video", str(video), "--out",
                      str(pred), "--quiet")
    assert f"--out {pred / 'walk'}: exists and holds files" in line


# ------------------------------------------------------------ suggest on a full disk
def _full_disk_after(monkeypatch, n_ok: int) -> None:
    """The PNG writer writes `n_ok` files, then half of the next and fails with ENOSPC."""
    real, calls = suggest._write_synced, []

    def write(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) > n_ok:
            Path(path).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)
    monkeypatch.setattr(suggest, "_write_synced", write)


def test_suggest_on_a_full_disk_leaves_no_unlisted_image_or_temporary(
        run_dir, video, predictions, tmp_path, capsys, monkeypatch):
    dest = tmp_path / "s"
    mine = dest / "walk"
    mine.mkdir(parents=True)
    (mine / "img00.png").write_bytes(b"not ours")               # a user's file: kept
    stale = mine / ".img46.png.999999999.tmp"                      # a killed run's: removed
    stale.write_bytes(b"half")
    foreign = mine / ".img46.png.tmp"                              # not our pattern: kept
    foreign.write_bytes(b"x")
    argv = ("suggest", str(run_dir), "--video", str(video), "--budget", "3", "--by",
            "uniform", "--min-gap", "1", "--out", str(dest), "--predictions",
            str(predictions), "--quiet")
    _full_disk_after(monkeypatch, 2)
    line = _one_error(capsys, *argv)
    assert str(mine) in line and "could not write" in line
    assert sorted(p.name for p in mine.iterdir()) == [".img46.png.tmp", "img00.png"]
    assert (mine / "img00.png").read_bytes() == b"not ours"
    # the CSV fails too (after every image): the images go again
    monkeypatch.undo()
    def no_space(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(suggest, "eio", SimpleNamespace(write_text=no_space))
    _one_error(capsys, *argv)
    assert sorted(p.name for p in mine.iterdir()) == [".img46.png.tmp", "img00.png"]
    # with space again: every image written is listed
    monkeypatch.undo()
    rc, _ = _cli(capsys, *argv)
    assert rc == 0
    import pandas as pd
    listed = set(pd.read_csv(mine / "suggested.csv")["image"])
    assert len(listed) == 3
    assert {p.name for p in mine.glob("img*.png")} == listed | {"img00.png"}
    assert not any(p.name.endswith(".tmp") and p.name != ".img46.png.tmp"
                   for p in mine.iterdir())


def test_suggest_keeps_a_live_writers_temporary(tmp_path):
    live = tmp_path / f".img03.png.{os.getppid()}.tmp"
    live.write_bytes(b"being written")
    dead = tmp_path / ".img04.png.999999999.tmp"
    dead.write_bytes(b"left by a kill")
    suggest._remove_stale_temporaries(tmp_path)
    assert live.exists() and not dead.exists()


# ------------------------------------------------------------- flags named as typed
@pytest.mark.parametrize("argv, message", [
    (("--seed", "-1"), "--seed -1: must be a non-negative integer"),
    (("--widths", "0,8"), "--widths must be positive integers"),
    (("--output-stride", "3"), "--output-stride 3: must be a power of two"),
    (("--aum-radius", "-1"), "--aum-radius -1.0: must be >= 0"),
    (("--threshold-fraction", "2"), "--threshold-fraction 2.0: must be in [0, 1)"),
    (("--epochs", "-1"), "--epochs -1.0: must be > 0"),
    (("--validation-members", "-1"), "--validation-members -1: must be"),
    (("--resnet-width", "0", "--model", "resnet"), "--resnet-width must be positive"),
    (("--num-processes", "0"), "--num-processes 0: must be >= 1"),
    (("--process-id", "-1"), "--process-id -1: must be in"),
])
def test_sweep_flags_are_named_as_typed(tmp_path, capsys, argv, message):
    line = _one_error(capsys, "sweep", "--out", str(tmp_path / "o"), "--smoke", "--quiet",
                      *argv)
    assert message in line and "Config" not in line
    assert not re.search(r"[a-z_]=", line), line             # no `name=value` of the API
    assert not (tmp_path / "o").exists()


def test_suggest_seed_is_named(run_dir, video, tmp_path, capsys):
    line = _one_error(capsys, "suggest", str(run_dir), "--video", str(video), "--budget", "2",
                      "--out", str(tmp_path / "s"), "--seed", "-1", "--quiet")
    assert "--seed -1: must be a non-negative integer" in line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("api, typed", [
    ("x; continue it with --resume (resume=True), or --overwrite",
     "x; continue it with --resume, or --overwrite"),
    ("resume from them (--resume / resume=True) or delete", "resume from them (--resume) "
                                                            "or delete"),
    ("ModelConfig.widths must be positive integers, got (0,)",
     "--widths must be positive integers, got (0,)"),
    ("SweepConfig.validation_members=-1: bad", "--validation-members -1: bad"),
    ("TrainConfig.member_epochs needs a count", "TrainConfig.member_epochs needs a count"),
])
def test_flag_words_say_flags_not_api_names(api, typed):
    assert cli.flag_words(api) == typed
