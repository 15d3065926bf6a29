"""Never lose a user's files (issue #14): a run directory is ours only with its manifest;
everything is validated before the run directory changes; a finished run is moved aside,
never taken apart; --resume and analyze refuse other data or parameters.

Each test reproduces one defect of the issue (numbered as there). The runs are tiny (16 px
synthetic frames, 4 steps): the bad-argument paths fail before any training."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from ensemble_jax import ExecConfig, ModelConfig, TrainConfig, cli, rundir, synthetic_dataset
from ensemble_jax import io as eio
from ensemble_jax import sweep as sweep_mod
from ensemble_jax.analysis.analyze import analyze
from ensemble_jax.sweep import SweepConfig, run_sweep

SMALL = ModelConfig(widths=(8, 16, 32), head_width=16)
TINY_TC = TrainConfig(steps=4, batch_size=4)
TINY_EC = ExecConfig(chunk_size=4, strategy="sequential")
TINY = SweepConfig(synthetic_frames=24, image_size=32, fractions=(0.5, 1.0), n_seeds=1)
QUIET = dict(progress=False, log=lambda m: None)


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file (and '<dir>' for every folder) below."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished (tiny) run directory made by the sweep; tests copy it before changing it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    run_sweep(run, TINY, SMALL, TINY_TC, TINY_EC, **QUIET)
    assert (run / "summary.json").is_file() and (run / rundir.MANIFEST).is_file()
    return run


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _one_error_line(err: str) -> str:
    """stderr ends with exactly one error line (after at most the data summary line)."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("ensemble-jax sweep: error: "), err
    assert len(lines) <= 2 and "Traceback" not in err, err
    return lines[-1]


def _foreign(folder: Path) -> Path:
    """The files of defect 1: a user's folder that looks a bit like a run directory."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "model.ckpt").write_text("w")
    (folder / "config.json").write_text('{"a": 1}')
    (folder / ".my.backup.tmp").write_text("k")
    return folder


class _Stop(Exception):
    pass


# ------------------------------------------------------------------- defect 1: foreign
def test_foreign_folder_is_refused_untouched(tmp_path, capsys, monkeypatch):
    x = _foreign(tmp_path / "x")
    before = snapshot(x)
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert cli.main(["sweep", "--out", str(x), "--smoke", "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert "folder is not empty" in err and "no ensemble-jax-run.json" in err, err
        assert err.count("\n") == 1, err                               # one line
        assert snapshot(x) == before
    # --out "" is the current directory
    monkeypatch.chdir(x)
    assert cli.main(["sweep", "--out", "", "--smoke", "--quiet"]) == 2
    assert f"({x.resolve()}): folder is not empty" in capsys.readouterr().err
    assert snapshot(x) == before
    # and the API refuses the same way, before loading any data
    monkeypatch.setattr(sweep_mod, "load_data", lambda cfg: pytest.fail("data loaded"))
    with pytest.raises(rundir.RunDirError, match="not an ensemble-jax run directory"):
        run_sweep(x, TINY, SMALL, TINY_TC, TINY_EC, **QUIET)


def test_a_run_of_an_older_version_without_manifest_is_left_alone(finished, tmp_path):
    old = _copy(finished, tmp_path / "old")
    (old / rundir.MANIFEST).unlink()
    before = snapshot(old)
    with pytest.raises(rundir.RunDirError, match="older ensemble-jax without "
                                                 "ensemble-jax-run.json"):
        run_sweep(old, TINY, SMALL, TINY_TC, TINY_EC, overwrite=True, **QUIET)
    with pytest.raises(rundir.RunDirError, match="ensemble-jax-run.json is missing"):
        analyze(old, **QUIET)
    assert snapshot(old) == before


# ------------------------------------------------- defect 2: a finished run, re-run
BAD_FOR_SMOKE = [
    (["--image-size", "60"], "not divisible by 8"),
    (["--devices", "0"], "--devices 0: must be >= 1"),
    (["--members-per-wave", "0"], "--members-per-wave 0: must be >= 1"),
    (["--memory-budget", "1k"], "more than --memory-budget"),
    (["--batch-size", "1000000"], "--batch-size 1000000 at 64x64 pixels: one member needs"),
]


@pytest.mark.parametrize("extra,message", BAD_FOR_SMOKE)
def test_rerun_with_a_bad_setting_changes_nothing(finished, tmp_path, capsys, extra, message):
    run = _copy(finished, tmp_path / "run")
    before = snapshot(run)
    # without --overwrite: refused as a finished run; with it: refused on the setting,
    # before the old run is moved aside
    assert cli.main(["sweep", "--out", str(run), "--smoke", "--quiet", *extra]) == 2
    assert "holds a finished sweep; nothing was changed" in capsys.readouterr().err
    assert cli.main(["sweep", "--out", str(run), "--smoke", "--quiet", "--overwrite",
                     *extra]) == 2
    assert message in capsys.readouterr().err
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]     # nothing moved aside
    analyze(run, figures_enabled=False, **QUIET)                        # still analysable


def test_overwrite_moves_the_finished_run_aside_whole(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    before = snapshot(run)
    logs = []
    run_sweep(run, dataclasses.replace(TINY, seed=1), SMALL, TINY_TC, TINY_EC, overwrite=True,
              progress=False, log=logs.append)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before            # whole, unchanged
    assert any("moved the previous run aside" in m for m in logs)
    new = rundir.read_manifest(run)
    assert json.loads((run / "config.json").read_text())["sweep"]["seed"] == 1
    assert new["created_unix"] > rundir.read_manifest(aside[0])["created_unix"]
    # defect 3 (analyze): parameters copied in from another run are refused, named
    mixed = _copy(run, tmp_path / "mixed")
    shutil.copy(aside[0] / "params.msgpack", mixed / "params.msgpack")
    with pytest.raises(rundir.RunDirError, match=r"params\.msgpack: parameters do not match "
                                                 r"this run"):
        analyze(mixed, **QUIET)
    assert cli.main(["analyze", str(mixed), "--quiet"]) == 2


def test_run_from_before_exec_config_still_loads_compares_and_analyzes(finished, tmp_path):
    """Runs written before ExecConfig kept strategy, chunk_size, ... under config.json's
    "train": they load, compare on --resume and analyse like a new run."""
    run = _copy(finished, tmp_path / "run")
    now = json.loads((run / "config.json").read_text())
    old = {k: v for k, v in now.items() if k != "exec"}
    old["train"] = {**now["train"], **now["exec"]}
    eio.write_json(run / "config.json", old)
    rundir.RunDir(run).record("config.json")
    loaded = rundir.load(run)
    assert loaded.config["train"] == now["train"] and loaded.config["exec"] == now["exec"]
    assert loaded.result.train_config == TINY_TC
    # the only setting named is the one that changed (none from the old layout)
    with pytest.raises(ValueError, match=r"settings that differ: exec\.chunk_size \(4 -> 2\)$"):
        run_sweep(run, TINY, SMALL, TINY_TC, dataclasses.replace(TINY_EC, chunk_size=2),
                  resume=True, **QUIET)
    assert analyze(run, figures_enabled=False, **QUIET)["members"] == 2


# -------------------------------------------------- defect 3: --resume checks the data
def test_resume_refuses_other_data_naming_what_changed(tmp_path, monkeypatch):
    def stop(*a, **k):
        raise _Stop()
    monkeypatch.setattr(sweep_mod.waves, "fit_waves", stop)
    data = synthetic_dataset(24, image_size=32, seed=5)
    run = tmp_path / "run"
    with pytest.raises(_Stop):      # interrupted after the setup, before any step
        run_sweep(run, TINY, SMALL, TINY_TC, TINY_EC, dataset=data, **QUIET)
    before = snapshot(run)
    # one label moved (the frame keeps its place in the split)
    kp = data.keypoints.copy()
    i = int(np.flatnonzero(np.isfinite(kp).all(-1).any(-1))[-1])
    kp[i, np.flatnonzero(np.isfinite(kp[i]).all(-1))[0]] += 2.0
    edited = dataclasses.replace(data, keypoints=kp)
    with pytest.raises(rundir.RunDirError, match=rf"cannot resume: the training data differ "
                                                 rf".*labels of 1 frame\(s\) changed "
                                                 rf"\({data.frame_ids[i]}\)"):
        run_sweep(run, TINY, SMALL, TINY_TC, TINY_EC, dataset=edited, resume=True, **QUIET)
    # a frame added
    from ensemble_jax.data.dataset import concatenate
    extra = dataclasses.replace(synthetic_dataset(1, image_size=32, seed=9),
                                frame_ids=["added_frame"])
    with pytest.raises(rundir.RunDirError, match=r"1 frame\(s\) added \(added_frame\)"):
        run_sweep(run, TINY, SMALL, TINY_TC, TINY_EC, dataset=concatenate([data, extra]),
                  resume=True, **QUIET)
    # a plain sweep of other settings over this interrupted run: refused, untouched
    with pytest.raises(ValueError, match=r"holds an interrupted sweep \(settings that differ: "
                                         r"train\.steps \(4 -> 6\)\); nothing was changed"):
        run_sweep(run, TINY, SMALL, dataclasses.replace(TINY_TC, steps=6), TINY_EC, dataset=data,
                  **QUIET)
    assert snapshot(run) == before
    # the same data: resumed (from step 0: no checkpoint yet)
    with pytest.raises(_Stop):
        run_sweep(run, TINY, SMALL, TINY_TC, TINY_EC, dataset=data, resume=True, **QUIET)
    # --overwrite: the interrupted run is moved aside whole
    with pytest.raises(_Stop):
        run_sweep(run, TINY, SMALL, dataclasses.replace(TINY_TC, steps=6), TINY_EC, dataset=data,
                  overwrite=True, **QUIET)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before


def test_resume_with_nothing_to_resume_is_an_error(tmp_path, capsys):
    assert cli.main(["sweep", "--out", str(tmp_path / "typo"), "--smoke", "--resume"]) == 2
    assert "--resume: nothing to resume in" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    assert cli.main(["sweep", "--out", str(tmp_path / "empty"), "--smoke", "--resume"]) == 2
    assert "the folder is empty" in capsys.readouterr().err
    assert not list((tmp_path / "empty").iterdir())


def test_failed_data_load_leaves_no_out(tmp_path, capsys):
    out = tmp_path / "new"
    assert cli.main(["sweep", "--out", str(out), "--data", str(tmp_path / "nope"),
                     "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------- defect 4: silent nonsense
def _sparse(n=24, labeled=(0, 1, 2, 3, 20, 21, 22, 23), seed=5):
    d = synthetic_dataset(n, image_size=32, seed=seed)
    kp = np.full_like(d.keypoints, np.nan)
    kp[list(labeled)] = d.keypoints[list(labeled)]
    return dataclasses.replace(d, keypoints=kp)


def test_members_without_a_labeled_frame_are_warned_and_excluded(tmp_path):
    data = _sparse()
    train, test = data.split(0.2, seed=0)
    labeled_train = np.isfinite(train.keypoints).all(-1).any(-1)
    cfg = SweepConfig(plan="random", n_members=4, fraction=0.1, seed=0,
                      threshold_fraction=0.0)
    masks, _ = sweep_mod.make_plan(cfg, train.n_frames)
    empty = [m for m in range(4) if not (masks[m] > 0)[labeled_train].any()]
    assert 0 < len(empty) < 4, "the constructed case must have both kinds of member"
    logs = []
    summary = run_sweep(tmp_path / "run", cfg, SMALL, TINY_TC, TINY_EC, dataset=data, progress=False,
                        log=logs.append)
    assert any(m.startswith("warning: ") and "no labeled frame" in m for m in logs)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [e["member"] for e in on_disk["excluded_members"]] == empty
    assert any("no labeled frame" in w for w in on_disk["warnings"])
    assert on_disk["diverged_members"] == []
    for row in on_disk["per_fraction"].values():
        assert not set(row["members"]) & set(empty)
    alive = eio.load_npz(tmp_path / "run" / "training.npz")["alive"]
    assert [m for m in range(4) if not alive[m]] == empty
    # every member without a labeled frame: an error, before anything is written
    test_only = [i for i, f in enumerate(data.frame_ids) if f in set(test.frame_ids)]
    none = _sparse(labeled=test_only)                 # no training frame is labeled
    with pytest.raises(ValueError, match="no member's subset holds a labeled frame"):
        run_sweep(tmp_path / "none", dataclasses.replace(cfg, n_members=2), SMALL, TINY_TC, TINY_EC,
                  dataset=none, **QUIET)
    assert not (tmp_path / "none").exists()


def test_test_split_without_labels_is_an_error(tmp_path):
    data = _sparse()
    _, test = data.split(0.2, seed=0)
    keep = [i for i, f in enumerate(data.frame_ids) if f not in set(test.frame_ids)][:8]
    no_test_labels = _sparse(labeled=keep)
    with pytest.raises(ValueError, match=r"--test-fraction 0\.2: the 5 test frame\(s\) hold "
                                         r"no labeled keypoint"):
        run_sweep(tmp_path / "r", SweepConfig(), SMALL, TINY_TC, TINY_EC, dataset=no_test_labels,
                  **QUIET)
    assert not (tmp_path / "r").exists()


def test_every_member_diverged_is_an_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="every member diverged"):
        run_sweep(tmp_path / "r", TINY, SMALL, TINY_TC, TINY_EC, lr_scale=[1e12, 1e12], **QUIET)
    # no result (issue 33): no summary.json, no parameters; the losses stay for inspection
    assert not (tmp_path / "r" / "summary.json").exists()
    assert not (tmp_path / "r" / "params.msgpack").exists()
    record = eio.load_npz(tmp_path / "r" / "training.npz")
    assert (record["diverged_at"] >= 0).all() and not record["alive"].any()
    assert cli.main(["sweep", "--out", str(tmp_path / "x"), "--smoke", "--lr", "inf"]) == 2
    assert "--lr inf: must be a finite number > 0" in capsys.readouterr().err


def test_devices_and_cpu_devices(tmp_path, capsys):
    assert cli.main(["sweep", "--out", str(tmp_path / "a"), "--smoke", "--devices", "0"]) == 2
    assert "--devices 0: must be >= 1" in capsys.readouterr().err
    assert cli.main(["sweep", "--out", str(tmp_path / "b"), "--smoke", "--devices", "5"]) == 2
    assert "--devices 5: more devices than the 2 member(s)" in capsys.readouterr().err
    assert cli.main(["sweep", "--out", str(tmp_path / "c"), "--smoke",
                     "--cpu-devices", "100"]) == 2
    assert "--cpu-devices 100: this process may run on" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_coordinate_far_outside_the_image_is_refused(tmp_path):
    data = synthetic_dataset(24, image_size=32, seed=5)
    kp = data.keypoints.copy()
    kp[3, 1, 0] = 1e30                       # finite in float32, but no label
    with pytest.raises(ValueError, match=rf"frame {data.frame_ids[3]}, keypoint "
                                         rf"{data.bodyparts[1]}: x = 1e\+30 px"):
        run_sweep(tmp_path / "r", TINY, SMALL, TINY_TC, TINY_EC,
                  dataset=dataclasses.replace(data, keypoints=kp), **QUIET)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------- defect 5: sizes up front
@pytest.mark.parametrize("extra,message", [
    (["--batch-size", "1000000"], "--batch-size 1000000 at 64x64 pixels: one member needs "
                                  "about"),
    (["--steps", "100000000000"], "--steps 100000000000: more than the 2147483647 steps"),
    (["--plan", "random", "--members", "100000000", "--allow-duplicates"],
     "100000000 members x --steps 60 over 96 frames: the run would hold about"),
])
def test_sizes_checked_before_anything(tmp_path, capsys, extra, message):
    out = tmp_path / "r"
    assert cli.main(["sweep", "--out", str(out), "--smoke", "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert _one_error_line(err).endswith(message) or message in _one_error_line(err), err
    assert not out.exists()


# --------------------------------------------------- defect 6: a damaged run directory
def _npz_without(path: Path, key: str) -> bytes:
    z = eio.load_npz(path)
    del z[key]
    eio.save_npz(path, **z)
    return path.read_bytes()


DAMAGE = {
    "empty subsets.npy": ("subsets.npy", lambda p: b"",
                          r"subsets\.npy: damaged, not a readable \.npy array \(EOFError\)"),
    "garbage subsets.npy": ("subsets.npy", lambda p: b"\x93NUMPY garbage" * 20,
                            r"subsets\.npy: damaged, not a readable \.npy array"),
    "garbage config.json": ("config.json", lambda p: b"{not json",
                            r"config\.json: damaged \(JSONDecodeError"),
    "garbage summary.json": ("summary.json", lambda p: b"[1, 2",
                             r"summary\.json: damaged \(JSONDecodeError"),
    "config.json without model": (
        "config.json", lambda p: json.dumps({"train": {}}).encode(),
        r"config\.json: damaged \(no 'model' entry\)"),
    "training.npz without alive": ("training.npz", lambda p: _npz_without(p, "alive"),
                                   r"training\.npz: damaged \(no array alive\)"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_run_directory_names_the_file(finished, tmp_path, capsys, case):
    name, damage, message = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / name).write_bytes(damage(run / name))
    # changed after the sweep wrote it: the checksum names the file
    assert cli.main(["analyze", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{run / name}: " in err and "changed after" in err, err
    # written so by the sweep itself (recorded): the reader names the file and the fault
    rundir.RunDir(run).record(name)
    with pytest.raises(ValueError, match=message):
        analyze(run, **QUIET)
    assert cli.main(["analyze", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(run / name) in err, err


# ----------------------------------------------- defect 10: messages, strict JSON
def test_messages_use_the_flags(tmp_path, capsys):
    assert cli.main(["sweep", "--out", str(tmp_path / "r"), "--smoke", "--frames", "12",
                     "--plan", "random", "--members", "50", "--fraction", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--members 50 distinct subsets" in err and "--allow-duplicates" in err
    assert "allow_duplicates=True" not in err and "n_members" not in err
    assert cli.flag_words("images have 2 sizes; pass image_size=(H, W) (or an int) to "
                          "letterbox") == "images have 2 sizes; pass --image-size N to letterbox"
    assert cli.flag_words("SweepConfig.fraction=2.0: must be in (0, 1]") == \
        "--fraction 2.0: must be in (0, 1]"


def _strict_load(text: str):
    def no(c):
        raise AssertionError(f"non-strict JSON constant {c}")
    return json.loads(text, parse_constant=no)


def test_json_is_strict(tmp_path, finished):
    eio.write_json(tmp_path / "a.json", {"x": float("nan"), "y": [np.float32("inf"), 1.5],
                                         "z": {"w": -np.inf}})
    assert _strict_load((tmp_path / "a.json").read_text()) == {"x": None, "y": [None, 1.5],
                                                               "z": {"w": None}}
    for name in ("summary.json", "config.json", rundir.MANIFEST):
        _strict_load((finished / name).read_text())


# ------------------------------------------------------------ the property-style test
BAD_ARGS = [
    ["--image-size", "60"], ["--devices", "0"], ["--members-per-wave", "0"],
    ["--memory-budget", "1k"], ["--batch-size", "1000000"], ["--steps", "100000000000"],
    ["--lr", "inf"], ["--fractions", "0.5,0.3"], ["--test-fraction", "0"],
    ["--data", "/nonexistent/project"], ["--cpu-devices", "1000"], ["--resume"],
    ["--plan", "random", "--members", "100000000", "--allow-duplicates"],
    ["--fraction", "1.5", "--plan", "random"], ["--devices", "7"],
]
USER_FILES = ["config.json", "summary.json", "data.npz", "params.msgpack", "notes.txt",
              "checkpoints/model.ckpt", "checkpoints/3/x", ".hidden.tmp", ".a.b.c.tmp",
              "sub/deeper/file.bin", ".lock.stale", "subsets.npy"]


def test_random_folders_and_bad_arguments_change_nothing(finished, tmp_path, capsys):
    """For a random selection of pre-existing files in --out (a foreign folder, or a
    finished run with extra files) and a random bad argument (with or without
    --overwrite), the command fails with exit status 2 and the folder's file list and
    checksums are unchanged."""
    rng = random.Random(14)
    for trial in range(16):
        out = tmp_path / f"t{trial}"
        if rng.random() < 0.5:
            out.mkdir()
        else:
            _copy(finished, out)
        for name in rng.sample(USER_FILES, rng.randint(1, 4)):
            p = out / name
            if p.exists() or any(q.is_file() for q in p.parents if q != out and q.exists()):
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(rng.randint(0, 64)))
        before = snapshot(out)
        args = list(rng.choice(BAD_ARGS))
        if "--resume" not in args and rng.random() < 0.5:
            args.append("--overwrite")
        argv = ["sweep", "--out", str(out), "--smoke", "--quiet", *args]
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        _one_error_line(err)
        assert snapshot(out) == before, argv
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            f"t{i}" for i in range(trial + 1))                     # nothing moved aside
