"""Bad input to the engine (plans, configs, trainer, run directories, checkpoints, saved
arrays) and fuzzing of the DeepLabCut and Lightning Pose CSV readers. Every case asserts the
message: it must name the argument, file, row or key. (The readers' own cases are in
test_bad_input_data.py.)"""
from __future__ import annotations

import json
import signal
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ensemble_jax import (EnsembleTrainer, ExecConfig, KeypointDataset, ModelConfig,
                          TrainConfig, cli,
                          synthetic_dataset)
from ensemble_jax import io as eio
from ensemble_jax import rundir
from ensemble_jax import sweep as sweep_mod
from ensemble_jax.analysis.analyze import analyze
from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.dlc import read_dlc_project
from ensemble_jax.data.lightning_pose import read_lightning_pose
from ensemble_jax.subsets import (SubsetError, kfold_subsets, random_subsets,
                                  validate_masks)
from ensemble_jax.sweep import SweepConfig, make_plan, run_sweep
from ensemble_jax.training.checkpoint import CHECKPOINT_FORMAT, FORMAT_FILE, Checkpointer

SMALL = ModelConfig(widths=(8, 16, 32), head_width=16)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(24, image_size=32, seed=5)


# ------------------------------------------------------------------- plans, configs
@pytest.mark.parametrize("fraction", [0.0, -0.2, 1.5, float("nan")])
def test_subset_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match=r"SweepConfig\.fraction=.*: the subset fraction "
                                         r"must be in \(0, 1\]"):
        SweepConfig(plan="random", fraction=fraction)
    with pytest.raises(SubsetError, match=r"fraction must be in \(0, 1\], got"):
        random_subsets(10, 2, fraction)


def test_nested_fractions_outside_0_1_or_not_increasing():
    with pytest.raises(ValueError, match=r"SweepConfig\.fractions=\(0\.0, 0\.5\): every "
                                         r"subset fraction must be in \(0, 1\]"):
        SweepConfig(fractions=(0.0, 0.5))
    with pytest.raises(ValueError, match=r"SweepConfig\.fractions=\(0\.5, 0\.3\): must be "
                                         r"strictly increasing"):
        SweepConfig(fractions=(0.5, 0.3))


def test_more_members_than_distinct_subsets():
    with pytest.raises(SubsetError, match=r"n_members=50 distinct subsets of 1 out of 10 "
                                          r"frames do not exist \(only 10\); lower n_members "
                                          r"or pass allow_duplicates=True \(sweep: "
                                          r"--allow-duplicates\)"):
        random_subsets(10, 50, 0.1)
    cfg = SweepConfig(plan="random", n_members=50, fraction=0.1)
    with pytest.raises(SubsetError, match=r"n_members=50 distinct subsets"):
        make_plan(cfg, 10)
    # allowed explicitly: duplicates are drawn
    masks, _ = make_plan(SweepConfig(plan="random", n_members=50, fraction=0.1,
                                     allow_duplicates=True), 10)
    assert masks.shape == (50, 10) and (masks.sum(1) == 1).all()
    args = cli.build_parser().parse_args(["sweep", "--out", "r", "--plan", "random",
                                          "--allow-duplicates"])
    assert cli.sweep_configs(args)[0].allow_duplicates
    with pytest.raises(SubsetError, match=r"n_folds must be in \[2, n_frames=5\], got 8"):
        kfold_subsets(5, 8)


def test_empty_subset(data):
    masks = np.ones((3, data.n_frames), bool)
    masks[1] = False
    with pytest.raises(SubsetError, match=r"masks: member\(s\) \[1\] have an empty subset"):
        validate_masks(masks, data.n_frames)
    with pytest.raises(SubsetError, match=r"member\(s\) \[1\] have an empty subset"):
        EnsembleTrainer(SMALL, TrainConfig(steps=2)).fit(data, masks, progress=False)


def test_masks_of_the_wrong_shape_or_type(data):
    with pytest.raises(SubsetError, match=rf"masks must be \[members, n_frames="
                                          rf"{data.n_frames}\], got shape \(2, 5\)"):
        EnsembleTrainer(SMALL).fit(data, np.ones((2, 5), bool), progress=False)
    with pytest.raises(SubsetError, match=r"masks: negative counts"):
        validate_masks(-np.ones((2, 4), np.int32), 4)
    with pytest.raises(SubsetError, match=r"masks must be bool or integer counts, got float"):
        validate_masks(np.ones((2, 4)), 4)


def test_image_size_not_divisible_by_the_stride():
    d = synthetic_dataset(8, image_size=36, seed=0)
    with pytest.raises(DatasetError, match=r"image size 36x36 is not divisible by 8 .*"
                                           r"--image-size 32"):
        EnsembleTrainer(SMALL, TrainConfig(steps=2)).fit(d, np.ones((1, 8), bool),
                                                         progress=False)


def test_unknown_strategy_plan_and_schedule():
    with pytest.raises(ValueError, match=r"ExecConfig\.strategy='pmap': unknown strategy; "
                                         r"choose one of \('auto', 'vmap'"):
        ExecConfig(strategy="pmap")
    with pytest.raises(ValueError, match=r"plan='jackknife': unknown plan; choose one of"):
        SweepConfig(plan="jackknife")
    with pytest.raises(ValueError, match=r"TrainConfig\.schedule='linear': unknown schedule"):
        TrainConfig(schedule="linear")


def test_execution_flags_set_the_exec_config_and_are_named_as_flags():
    parse = lambda *a: cli.sweep_configs(cli.build_parser().parse_args(["sweep", "--out", "r",
                                                                        *a]))
    assert parse("--smoke")[3] == ExecConfig(chunk_size=20)            # the smoke preset's
    _, _, train, run = parse("--strategy", "unrolled", "--chunk-size", "7",
                             "--checkpoint-every", "14", "--steps", "28")
    assert run == ExecConfig(strategy="unrolled", chunk_size=7, checkpoint_every=14)
    assert train == TrainConfig(steps=28)                   # nothing of it in TrainConfig
    with pytest.raises(ValueError) as e:
        ExecConfig(chunk_size=0)
    assert cli.flag_words(str(e.value)) == "--chunk-size 0: must be >= 1"


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, r"TrainConfig\.steps=0: must be a positive integer"),
    ({"batch_size": 0}, r"TrainConfig\.batch_size=0: must be a positive integer"),
    ({"learning_rate": -1.0}, r"TrainConfig\.learning_rate=-1\.0: must be > 0"),
    ({"warmup_steps": 500, "steps": 100}, r"TrainConfig\.warmup_steps=500: must be in"),
    ({"checkpoint_every": -1}, r"ExecConfig\.checkpoint_every=-1: must be >= 0"),
])
def test_bad_train_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        (ExecConfig if "checkpoint_every" in kwargs else TrainConfig)(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"output_stride": 3}, r"output_stride must be a power of two, got 3"),
    ({"output_stride": 16, "widths": (8, 16)}, r"output_stride=16 needs at least 4 encoder "
                                               r"stages, widths has 2"),
    ({"widths": ()}, r"ModelConfig\.widths must be positive integers"),
    ({"dtype": "float16"}, r"ModelConfig\.dtype must be 'float32' or 'bfloat16'"),
])
def test_bad_model_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"test_fraction": 1.0}, r"SweepConfig\.test_fraction=1\.0: must be in \(0, 1\)"),
    ({"n_seeds": 0}, r"SweepConfig\.n_seeds=0: must be a positive integer"),
    ({"n_members": 0}, r"SweepConfig\.n_members=0: must be a positive integer"),
    ({"noise_rate": 2.0}, r"SweepConfig\.noise_rate=2\.0: must be in \[0, 1\]"),
    ({"image_size": -32}, r"SweepConfig\.image_size=-32: must be a positive integer"),
    ({"threshold_fraction": 1.0}, r"threshold_fraction=1\.0: must be in \[0, 1\)"),
])
def test_bad_sweep_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig(**kwargs)


# --------------------------------------------------------------------- trainer inputs
def test_nan_images(data):
    masks = np.ones((2, data.n_frames), bool)
    masks[0, 3] = False
    images = data.images.astype(np.float32) / 255
    images[3] = np.nan              # outside member 0's subset, inside member 1's
    with pytest.raises(DatasetError, match=r"images of frames inside some subset contain "
                                           r"NaN/inf"):
        EnsembleTrainer(SMALL, TrainConfig(steps=2)).fit(data, masks, images=images,
                                                         progress=False)
    with pytest.raises(DatasetError, match=r"images .*must be uint8, got float32"):
        KeypointDataset(images, data.keypoints, data.bodyparts, data.frame_ids,
                        source="frames.npz")


def test_dataset_without_any_label(data):
    empty = KeypointDataset(data.images, np.full_like(data.keypoints, np.nan),
                            data.bodyparts, data.frame_ids)
    with pytest.raises(DatasetError, match=r"fit: the dataset has no labeled keypoint"):
        EnsembleTrainer(SMALL, TrainConfig(steps=2)).fit(
            empty, np.ones((1, data.n_frames), bool), progress=False)


def test_lr_scale_of_the_wrong_length(tmp_path):
    cfg = SweepConfig(synthetic_frames=20, image_size=32, plan="random", n_members=3)
    with pytest.raises(ValueError, match=r"lr_scale: expected 3 values \(one per member\), "
                                         r"got shape \(2,\)"):
        run_sweep(tmp_path / "run", cfg, SMALL, TrainConfig(steps=2), lr_scale=[1.0, 2.0],
                  progress=False, log=lambda m: None)
    assert not (tmp_path / "run" / ".lock").exists()      # released on the error


def test_batch_larger_than_the_smallest_subset_samples_with_replacement():
    """Documented behaviour (TrainConfig): minibatches are drawn with replacement from the
    member's subset, so a batch of 8 from a 2-frame subset simply repeats frames."""
    assert "with replacement" in TrainConfig.__doc__
    # test_trainer's data and settings: its compiled programs are reused from the cache
    data = synthetic_dataset(48, image_size=32, seed=3)
    masks = np.zeros((3, data.n_frames), bool)
    masks[0, :2] = True
    masks[1, :24] = True
    masks[2, 24:] = True
    res = EnsembleTrainer(SMALL, TrainConfig(steps=20, batch_size=8),
                          ExecConfig(chunk_size=10, strategy="sequential")).fit(data, masks, progress=False)
    assert res.alive.all() and np.isfinite(res.losses).all()
    assert (res.aum_count[0][2:] == 0).all()          # never read outside its 2 frames


# ------------------------------------------------------------ run directories, files
def test_run_directory_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "run"
    f.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=r"--out .*run: exists and is a file, not a "
                                                 r"run directory"):
        run_sweep(f, SweepConfig(), SMALL, TrainConfig(), progress=False)
    with pytest.raises(NotADirectoryError, match=r"run: is a file, not a run directory"):
        analyze(f)
    assert cli.main(["analyze", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


class _Stop(Exception):
    pass


def _stop_before_training(monkeypatch):
    def stop(*a, **k):
        raise _Stop()
    monkeypatch.setattr(sweep_mod.waves, "fit_waves", stop)


def test_resume_with_a_different_configuration(tmp_path, monkeypatch):
    _stop_before_training(monkeypatch)
    cfg = SweepConfig(synthetic_frames=20, image_size=32, fractions=(0.5, 1.0), n_seeds=1)
    run = tmp_path / "run"
    with pytest.raises(_Stop):
        run_sweep(run, cfg, SMALL, TrainConfig(steps=12), progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match=r"config\.json: cannot resume with a different "
                                         r"configuration; settings that differ: "
                                         r"train\.learning_rate \(0\.002 -> 0\.01\), "
                                         r"train\.steps \(12 -> 14\)"):
        run_sweep(run, cfg, SMALL, TrainConfig(steps=14, learning_rate=0.01), resume=True,
                  progress=False, log=lambda m: None)
    # the same configuration without --resume, over checkpoints of an interrupted run
    (run / "checkpoints" / "4").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds an interrupted sweep with this "
                                         r"configuration .*continue it with --resume"):
        run_sweep(run, cfg, SMALL, TrainConfig(steps=12), progress=False, log=lambda m: None)
    assert (run / "checkpoints" / "4").is_dir()                 # nothing was deleted


def test_analyze_an_unfinished_or_incomplete_run(tmp_path, monkeypatch):
    _stop_before_training(monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(_Stop):
        run_sweep(run, SweepConfig(synthetic_frames=20, image_size=32), SMALL,
                  TrainConfig(steps=12), progress=False, log=lambda m: None)
    with pytest.raises(FileNotFoundError, match=r"not a complete run directory "
                                                r"\(params\.msgpack is missing\)"):
        analyze(run)
    for name in ("params.msgpack", "training.npz"):
        (run / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"has not finished \(summary\.json is "
                                                r"missing\); finish it with .*--resume"):
        analyze(run)


def test_corrupt_npz(tmp_path):
    good = tmp_path / "good.npz"
    eio.save_npz(good, a=np.arange(1000.0))
    bad = tmp_path / "training.npz"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"training\.npz: not a readable \.npz file"):
        eio.load_npz(bad)
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"training\.npz: not a readable \.npz file"):
        eio.load_npz(bad)


def test_analyze_a_run_with_a_corrupt_data_npz(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "summary.json"):
        (run / name).write_text("{}")
    np.save(run / "subsets.npy", np.ones((2, 4), np.int32))
    for name in ("data.npz", "params.msgpack", "training.npz"):
        (run / name).write_bytes(b"PK\x03\x04 truncated")
    # a run directory of this tool (manifest) whose sweep wrote these damaged files
    rd = rundir.RunDir(run)
    rd.create()
    rd.record("config.json", "summary.json", "subsets.npy", "data.npz", "params.msgpack",
              "training.npz")
    with pytest.raises(ValueError, match=r"run/data\.npz: not a readable \.npz file"):
        analyze(run, progress=False, log=lambda m: None)
    assert not (run / ".lock").exists()


# --------------------------------------------------------------------------- checkpoints
def _checkpoints(d: Path) -> None:
    c = Checkpointer(d)
    c.save(2, {"a": np.arange(3.0)})
    c.close()


def test_checkpoint_from_another_version(tmp_path):
    d = tmp_path / "checkpoints"
    _checkpoints(d)
    found = json.loads((d / FORMAT_FILE).read_text())
    assert found["checkpoint_format"] == CHECKPOINT_FORMAT
    (d / FORMAT_FILE).write_text(json.dumps({"checkpoint_format": CHECKPOINT_FORMAT + 1,
                                             "package_version": "0.0.1"}))
    with pytest.raises(ValueError, match=rf"checkpoints from another version cannot be "
                                         rf"resumed: checkpoint_format {CHECKPOINT_FORMAT + 1} "
                                         rf"\(this is {CHECKPOINT_FORMAT}\); package_version "
                                         rf"'0\.0\.1' \(this is '"):
        Checkpointer(d, resume=True)
    (d / FORMAT_FILE).unlink()
    with pytest.raises(ValueError, match=r"format\.json: missing; these checkpoints were "
                                         r"written by another version"):
        Checkpointer(d, resume=True)


def test_fresh_training_over_existing_checkpoints_is_refused(tmp_path):
    d = tmp_path / "checkpoints"
    _checkpoints(d)
    with pytest.raises(ValueError, match=r"already holds checkpoints \(steps \[2\]\) of an "
                                         r"earlier run; resume from them"):
        Checkpointer(d, resume=False)


# ------------------------------------------------------------------------------ fuzzing
GOOD_CSV = """\
scorer,me,me,me,me
bodyparts,nose,nose,tail,tail
coords,x,y,x,y
labeled-data/v/img0.png,1.5,2.5,3.5,4.5
labeled-data/v/img1.png,5,6,,
labeled-data/v/img2.png,7,8,9,10
"""
# A deadline per example (hypothesis) and a hard alarm: a hang fails instead of blocking.
_FUZZ = settings(max_examples=60, deadline=timedelta(seconds=5),
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


class _Hang(Exception):
    pass


def _read_or_error(fn, path: Path, name: str):
    def alarm(*_):
        raise _Hang(f"{fn.__name__} took more than 10 s on {path}")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    try:
        d = fn(path)
    except (DatasetError, ValueError) as e:
        assert name in str(e), f"message does not name {name}: {e}"
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert isinstance(d, KeypointDataset)
    return d


def _dlc_project(root: Path, write_png) -> Path:
    if not (root / "config.yaml").exists():
        for i in range(3):
            write_png(root / "labeled-data" / "v" / f"img{i}.png",
                      np.full((6, 8), 40 * i, np.uint8))
        (root / "config.yaml").write_text("Task: t\nscorer: me\nbodyparts:\n- nose\n- tail\n")
    return root / "labeled-data" / "v" / "CollectedData_me.csv"


@_FUZZ
@given(data=st.one_of(st.binary(max_size=400),
                      st.integers(0, len(GOOD_CSV)).map(lambda k: GOOD_CSV[:k].encode())))
def test_fuzz_dlc_csv(tmp_path, write_png, data):
    csv_path = _dlc_project(tmp_path / "proj", write_png)
    csv_path.write_bytes(data)
    _read_or_error(read_dlc_project, tmp_path / "proj", "CollectedData_me.csv")


@_FUZZ
@given(cut=st.integers(0, len(GOOD_CSV)), junk=st.binary(max_size=40))
def test_fuzz_lightning_pose_truncated_then_junk(tmp_path, write_png, cut, junk):
    csv_path = _dlc_project(tmp_path, write_png).parent.parent.parent / "CollectedData.csv"
    csv_path.write_bytes(GOOD_CSV[:cut].encode() + junk)
    _read_or_error(read_lightning_pose, csv_path, "CollectedData.csv")
