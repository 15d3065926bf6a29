"""A subset sweep end to end: data -> plan -> trained ensemble -> run directory.

The run directory is the contract between stages (see ARCHITECTURE.md; `rundir` owns it):
  ensemble-jax-run.json  the manifest, written first: marks the folder as ours; data
                     fingerprint and the SHA-256 of every file below (`rundir`)
  config.json        everything needed to reproduce the run
  subsets.npy        int32 [M, n_train] subset plan (counts; 0/1 for in/out plans)
  data.npz           the training/test frames at training resolution + labels + letterbox
                     (+ train_threshold_mask: the AUM threshold samples)
  params.msgpack     final stacked parameters (flax serialization)
  training.npz       losses [steps, M], AUM sums/counts [M, n_train, K], alive, diverged_at,
                     failed_reason (training/health.py)
  predictions.npz    per-member keypoints/confidences on train and test frames
                     (original-image pixels) and the labels they are scored against
  test-predictions/  the test frames' predictions as DeepLabCut CSVs: members/member_<m>.csv
                     per alive member, ensemble.csv (`eks singlecam --input-dir` on members/)
  summary.json       errors per fraction, ensemble and per member; strategy; speed
  learning_curve.png
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from ensemble_jax import io as eio
from ensemble_jax import rundir, runlock
from ensemble_jax import subsets as plans
from ensemble_jax.analysis import metrics, plots
from ensemble_jax.analysis.threshold import make_threshold_samples
from ensemble_jax.data.auto_size import resolve_auto
from ensemble_jax.data.dataset import KeypointDataset
from ensemble_jax.models.heatmap_net import ModelConfig
from ensemble_jax.training.config import ExecConfig, TrainConfig
from ensemble_jax.training.result import EnsembleResult, consensus
from ensemble_jax.training import health, sharding, waves
from ensemble_jax.training.trainer import EnsembleTrainer
from ensemble_jax import logs

FORMAT_VERSION = 1
PLANS = ("nested", "random", "bootstrap", "kfold", "loo", "banzhaf")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    data: str | None = None           # None = embedded synthetic scenes
    format: str | None = None
    image_size: int | None = None
    synthetic_frames: int = 400       # train + test, synthetic data only
    noise_rate: float = 0.0           # synthetic planted label noise
    test_fraction: float = 0.2
    plan: str = "nested"
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9)
    n_seeds: int = 3
    n_members: int = 16               # random / bootstrap plans
    fraction: float = 0.5             # random plan
    seed: int = 0
    pck_radius: float = 5.0
    threshold_fraction: float = 0.05  # AUM threshold samples (training frames); 0 = none
    allow_duplicates: bool = False    # random plan: members may share a subset
    validation_members: int = 0       # extra held-out members for LDS (analysis/attribution)
    # Chosen from the data when "auto" (the command line's default; data/auto_size.py);
    # None keeps the ModelConfig / TrainConfig value; a number overrides it.
    output_stride: int | str | None = None
    aum_radius: float | str | None = None
    # AUM threshold samples: "far" (one label moved far away) or "realistic" (swapped
    # pairs, a label put on another keypoint, a displacement inside the image content;
    # analysis/threshold.py). The command line uses "realistic".
    threshold_kinds: str = "far"
    individual: str | None = None     # SLEAP / COCO: which animal of a crowded frame
    video_root: str | None = None     # SLEAP: where moved videos are found by file name

    def __post_init__(self) -> None:
        def bad(name, why):
            raise ValueError(f"SweepConfig.{name}={getattr(self, name)!r}: {why}")
        if self.plan not in PLANS:
            raise ValueError(f"plan={self.plan!r}: unknown plan; choose one of {PLANS}")
        try:
            object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        except (TypeError, ValueError):
            bad("fractions", "must be a sequence of numbers in (0, 1]")
        if not 0.0 <= self.threshold_fraction < 1.0:
            raise ValueError(f"threshold_fraction={self.threshold_fraction}: must be in [0, 1)")
        if self.plan == "nested":
            if not self.fractions:
                bad("fractions", "must not be empty")
            if any(not 0.0 < f <= 1.0 for f in self.fractions):
                bad("fractions", "every subset fraction must be in (0, 1]")
            if list(self.fractions) != sorted(set(self.fractions)):
                bad("fractions", "must be strictly increasing (nested subsets)")
        if not 0.0 < self.fraction <= 1.0:
            bad("fraction", "the subset fraction must be in (0, 1]")
        if int(self.n_seeds) != self.n_seeds or self.n_seeds < 1:
            bad("n_seeds", "must be a positive integer")
        if int(self.n_members) != self.n_members or self.n_members < 1:
            bad("n_members", "must be a positive integer")
        if int(self.seed) != self.seed or self.seed < 0:
            bad("seed", "must be a non-negative integer")
        if int(self.validation_members) != self.validation_members or \
                self.validation_members < 0:
            bad("validation_members", "must be a non-negative integer")
        if self.validation_members and self.plan in ("kfold", "loo"):
            bad("validation_members", f"plan {self.plan!r} has no distribution to draw fresh "
                "subsets from; use nested, random, banzhaf or bootstrap")
        if not 0.0 < self.test_fraction < 1.0:
            bad("test_fraction", "must be in (0, 1)")
        if not 0.0 <= self.noise_rate <= 1.0:
            bad("noise_rate", "must be in [0, 1]")
        if self.image_size not in (None, "auto") and (
                isinstance(self.image_size, str) or int(self.image_size) != self.image_size
                or self.image_size < 1):
            bad("image_size", "must be a positive integer (pixels), 'auto' or None")
        if self.output_stride not in (None, "auto") and (
                isinstance(self.output_stride, str) or self.output_stride < 1
                or int(self.output_stride) & (int(self.output_stride) - 1)):
            bad("output_stride", "must be a power of two, 'auto' or None")
        if self.aum_radius not in (None, "auto") and (
                isinstance(self.aum_radius, str) or not self.aum_radius >= 0):
            bad("aum_radius", "must be >= 0 (heatmap pixels), 'auto' or None")
        if self.threshold_kinds not in ("far", "realistic"):
            bad("threshold_kinds", "must be 'far' or 'realistic'")
        if self.data is None and self.synthetic_frames < 4:
            bad("synthetic_frames", "must be >= 4 (train and test frames)")
        if not self.pck_radius > 0:
            bad("pck_radius", "must be > 0 (pixels)")


def load_data(cfg: SweepConfig, multiple: int = 8) -> KeypointDataset:
    """The frames of `cfg`; image_size "auto" picks a size that divides by `multiple`."""
    size = cfg.image_size
    if cfg.data is None:
        from ensemble_jax.data.synthetic import synthetic_dataset
        return synthetic_dataset(cfg.synthetic_frames,
                                 image_size=64 if size in (None, "auto") else size,
                                 noise_rate=cfg.noise_rate, seed=cfg.seed)
    from ensemble_jax.data.auto_size import AutoImageSize
    from ensemble_jax.data.load import load_dataset
    return load_dataset(cfg.data, format=cfg.format,
                        image_size=AutoImageSize(multiple) if size == "auto" else size,
                        individual=cfg.individual, video_root=cfg.video_root)


def mean_member_frames(cfg: SweepConfig, n_train: int) -> float:
    """A member's mean number of training frames (draws, for bootstrap) under the plan,
    from the plan's sizes alone: known before the plan is built and its size checked."""
    n = int(n_train)
    if cfg.plan == "nested":
        return float(np.mean([plans._subset_size(n, f) for f in cfg.fractions]))
    if cfg.plan == "random":
        return float(plans._subset_size(n, cfg.fraction))
    if cfg.plan == "bootstrap":
        return float(n)
    if cfg.plan == "banzhaf":
        return n / 2.0                                  # each frame in with probability 1/2
    if cfg.plan == "kfold":
        return n - n / float(cfg.n_members)
    return float(n - 1)                                 # loo


def make_plan(cfg: SweepConfig, n_train: int) -> tuple[np.ndarray, dict]:
    """Masks [M, n_train] and a description of each member (fraction, seed)."""
    if cfg.plan == "nested":
        masks = plans.nested_subsets(n_train, cfg.fractions, cfg.n_seeds, cfg.seed)
        seeds, fracs = plans.nested_layout(cfg.fractions, cfg.n_seeds)
    elif cfg.plan == "random":
        masks = plans.random_subsets(n_train, cfg.n_members, cfg.fraction, cfg.seed,
                                     allow_duplicates=cfg.allow_duplicates)
        seeds, fracs = np.arange(cfg.n_members), np.full(cfg.n_members, cfg.fraction)
    elif cfg.plan == "bootstrap":
        masks = plans.bootstrap_subsets(n_train, cfg.n_members, cfg.seed)
        seeds, fracs = np.arange(cfg.n_members), np.ones(cfg.n_members)
    elif cfg.plan == "banzhaf":
        masks = plans.banzhaf_subsets(n_train, cfg.n_members, cfg.seed)
        seeds, fracs = np.arange(cfg.n_members), masks.mean(1)
    elif cfg.plan == "kfold":
        masks = plans.kfold_subsets(n_train, cfg.n_members, cfg.seed)
        seeds, fracs = np.arange(cfg.n_members), masks.mean(1)
    else:
        masks = plans.leave_one_out_subsets(n_train)
        seeds, fracs = np.arange(n_train), masks.mean(1)
    layout = {"member_seed": seeds.tolist(), "member_fraction": np.round(fracs, 6).tolist()}
    if cfg.validation_members:   # held out from every estimator (analysis/attribution.py)
        from ensemble_jax.analysis.attribution import add_validation_members
        masks, layout = add_validation_members(masks, layout, cfg)
    return masks, layout


@logs.sink
def run_sweep(out_dir: str | Path, cfg: SweepConfig, model_cfg: ModelConfig,
              train_cfg: TrainConfig, exec_cfg: ExecConfig | None = None, *, dataset: KeypointDataset | None = None,
              resume: bool = False, overwrite: bool = False, progress: bool = True,
              lr_scale: Sequence[float] | None = None, devices: int | None = None,
              members_per_wave: int | None = None,
              memory_budget: int | None = None) -> dict:
    """Trains the sweep and writes the run directory. Returns the summary.

    exec_cfg: how the training runs (strategy, chunks, checkpoint cadence; default
        `ExecConfig()`), recorded in config.json's "exec" and compared on resume.

    Scale-out (results equal a one-device, one-wave, one-process run's):
    devices: devices per process to shard the members over (default: all of them, at most
        one per member; one device trains unsharded). After `jax.distributed.initialize`
        (see `training.sharding.initialize_distributed`) every process runs this same call,
        trains the members on its devices, and only process 0 writes the run directory.
    members_per_wave / memory_budget: train the members in waves (`training.waves`) of at
        most this many members, or as many as fit `memory_budget` bytes per device (default:
        the device's own limit where the backend reports one); the plan is logged first.

    Run-directory safety (`rundir`): every setting is validated and the data loaded and
    checked before anything in `out_dir` changes. A folder that is not empty and holds no
    `ensemble-jax-run.json` is refused untouched. Over a finished run (or an interrupted one
    with other settings) a new sweep is refused unless overwrite=True, which first moves
    the old run aside in one rename (`<out>.old-<time>`). resume=True needs a run of the
    same settings and the same data there (else refused, naming what changed); a plain
    sweep over an interrupted run of the same settings is refused too (resume it).

    The run directory is locked (`RUN_DIR/.lock`, see `runlock`) while this writes: a
    second sweep or analyze on it is refused. `summary.json` is written last and removed
    first, so a run directory without it is an unfinished sweep.
    lr_scale: float [M] multiplying each member's updates (testing member isolation).
    """
    out = Path(out_dir)
    primary = sharding.is_primary()
    if not primary:   # other processes train their members; process 0 alone writes and logs
        progress = False
    if primary:       # cheap refusals first, before loading anything
        _check_target(out, rundir.state(out), resume=resume, overwrite=overwrite)
    scale = {"devices": devices, "members_per_wave": members_per_wave,
             "memory_budget": memory_budget}
    prep = prepare(cfg, model_cfg, train_cfg, exec_cfg, dataset=dataset, lr_scale=lr_scale,
                   scale=scale)
    if not primary:   # process 0 checks and writes; the others wait for it
        sharding.barrier("ensemble_jax.sweep.setup")
        return _train_and_write(out, prep, resume=resume, progress=progress)
    if overwrite and rundir.state(out) == "ours":
        rundir.move_aside(out)
    out.mkdir(parents=True, exist_ok=True)
    with runlock.locked(out, "sweep"):
        rd = _open_for_sweep(out, prep, resume=resume, overwrite=overwrite)
        sharding.barrier("ensemble_jax.sweep.setup")
        return _train_and_write(out, prep, resume=resume, progress=progress, rd=rd)


@dataclasses.dataclass
class Prepared:
    """A sweep's validated inputs: everything decided before the run directory changes."""
    train: KeypointDataset
    test: KeypointDataset
    threshold_mask: np.ndarray
    masks: np.ndarray
    layout: dict
    config: dict
    fingerprint: dict
    mesh: Any
    plan: Any
    lr_scale: np.ndarray | None
    warnings: list
    unlabeled_members: list
    t0: float
    model_cfg: ModelConfig        # with the settings chosen from the data (data/auto_size.py)
    train_cfg: TrainConfig
    exec_cfg: ExecConfig


def _check_target(out: Path, state: str, *, resume: bool, overwrite: bool) -> None:
    """Refusals that need no data: a foreign folder, nothing to resume, a finished run."""
    if state == "foreign":
        rundir.refuse_foreign(out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite: choose one (continue the run there, or "
                         "move it aside and start a new one)")
    if resume and state in ("missing", "empty"):
        raise ValueError(f"--resume: nothing to resume in {rundir.shown(out)} ("
                         f"{'no such folder' if state == 'missing' else 'the folder is empty'}"
                         f"); check --out, or drop --resume to start a new sweep")
    if state == "ours":
        rundir.read_manifest(out)          # a damaged manifest is named now
        if not resume and not overwrite and (out / "summary.json").exists():
            raise ValueError(
                f"--out {out}: holds a finished sweep; nothing was changed. Choose another "
                f"--out, or add --overwrite to move that run aside (renamed to "
                f"{out.name}.old-<time>) and start a new one")


def prepare(cfg: SweepConfig, model_cfg: ModelConfig, train_cfg: TrainConfig,
            exec_cfg: ExecConfig | None = None, *,
            dataset: KeypointDataset | None = None, lr_scale: Sequence[float] | None = None,
            scale: dict | None = None) -> Prepared:
    """Loads and checks the data, the plan and the resources (`guards`); writes nothing."""
    from ensemble_jax import guards
    t0 = time.perf_counter()
    scale = dict(scale or {})
    exec_cfg = exec_cfg or ExecConfig()
    guards.check_scale_arguments(**scale)
    guards.check_train_config(train_cfg, exec_cfg)
    data = dataset if dataset is not None else load_data(cfg, model_cfg.input_multiple)
    guards.check_labels(data)
    train, test = data.split(cfg.test_fraction, seed=cfg.seed)
    guards.check_test_labels(test, cfg.test_fraction)
    # Settings chosen from the data are printed once the resources are checked, so a
    # refusal stays the one line after the data line.
    chosen: list[str] = []
    logs.info(f"data: {data.source or 'synthetic'}: {train.n_frames} train / {test.n_frames} test "
              f"frames, {data.n_keypoints} keypoints, images {data.image_shape}; {data.counts()}")
    if getattr(data, "views", None):
        logs.info(f"camera views (the project's mirrored_column_matches): {len(data.views)} "
                  f"views of {len(data.views[0])} body points; label checking uses them")
    # Steps (given, from epochs, or from the passes over a member's frames), warm-up, flip
    # pairs as indices; encoder weights checked early.
    from ensemble_jax.training.real_data import resolve_train_config
    train_cfg = resolve_train_config(train_cfg, train.n_frames, train.bodyparts,
                                     chosen.append,
                                     member_frames=mean_member_frames(cfg, train.n_frames))
    if model_cfg.init_weights:
        from ensemble_jax.models.pretrained import load_encoder
        load_encoder(str(model_cfg.init_weights), model_cfg.encoder)
    # Heatmap settings chosen from the (clean) labels where asked (data/auto_size.py).
    model_cfg, train_cfg, auto = resolve_auto(cfg, model_cfg, train_cfg, train,
                                              chosen.append)
    # AUM threshold samples: labels moved to a wrong place on purpose (analysis/threshold.py).
    kp, threshold_mask = make_threshold_samples(cfg, train)
    train = dataclasses.replace(train, keypoints=kp)
    guards.check_image_size(model_cfg, train)
    n_members = guards.planned_members(cfg, train.n_frames)
    guards.check_resources(n_members, model_cfg, train_cfg, train, scale)
    for line in chosen:
        logs.info(line)
    masks, layout = make_plan(cfg, train.n_frames)      # after the sizes are checked
    warnings, unlabeled = guards.members_without_labels(masks, train, threshold_mask)
    config = {"format_version": FORMAT_VERSION, "sweep": dataclasses.asdict(cfg),
              "model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
              "exec": dataclasses.asdict(exec_cfg), "members": int(masks.shape[0]), "layout": layout}
    if auto:
        config["auto"] = auto
    if train_cfg.crn and cfg.plan == "nested":
        # one crn block per nested seed: a seed's members share init and draws across
        # fractions, so a seed-wise step isolates the added frames (training/crn.py)
        config["crn_block_ids"] = [int(s) for s in layout["member_seed"]]
    if lr_scale is not None:
        lr_scale = np.asarray(lr_scale, np.float32)
        if lr_scale.shape != (masks.shape[0],):
            raise ValueError(f"lr_scale: expected {masks.shape[0]} values (one per member), "
                             f"got shape {lr_scale.shape}")
        config["lr_scale"] = lr_scale.tolist()
    scale["devices"] = guards.devices_for(masks.shape[0], scale.get("devices"))
    mesh, plan = scale_out_plan(masks.shape[0], model_cfg, train_cfg, train,
                                strategy=exec_cfg.strategy, **scale)
    return Prepared(train=train, test=test, threshold_mask=threshold_mask, masks=masks,
                    layout=layout, config=config,
                    fingerprint=rundir.data_fingerprint(train, test), mesh=mesh, plan=plan,
                    lr_scale=lr_scale, warnings=warnings, unlabeled_members=unlabeled, t0=t0,
                    model_cfg=model_cfg, train_cfg=train_cfg, exec_cfg=exec_cfg)


def _open_for_sweep(out: Path, prep: Prepared, *, resume: bool, overwrite: bool
                    ) -> "rundir.RunDir":
    """Under the lock: decides whether this sweep may write `out` (raising if not), writes
    the manifest first when the directory is new, then config, plan and data."""
    state = rundir.state(out)
    _check_target(out, state, resume=resume, overwrite=overwrite and state != "ours")
    rd = rundir.RunDir(out)
    config_path = out / "config.json"
    ckpt_dir = out / "checkpoints"
    if state == "ours":
        manifest = rundir.read_manifest(out)
        old = _read_config(config_path)      # older runs: exec fields under "train"
        diff = rundir.config_diff(old, prep.config) if old is not None else []
        has_ckpt = ckpt_dir.is_dir() and any(ckpt_dir.iterdir())
        if resume:
            if diff:
                raise ValueError(f"{config_path}: cannot resume with a different "
                                 f"configuration; settings that differ: {', '.join(diff)}")
            if manifest.get("data"):
                rundir.check_data(out, manifest, prep.train, prep.test, "resume")
            rundir.verify_files(out, ("config.json", "subsets.npy", "data.npz"), manifest)
            if not has_ckpt:
                logs.info(f"{out}: no checkpoint yet; the interrupted sweep starts again at step 0")
        else:
            same_data = manifest.get("data") == prep.fingerprint
            if has_ckpt and old is not None and not diff and same_data:
                raise ValueError(
                    f"{out}: holds an interrupted sweep with this configuration (checkpoints "
                    f"in {ckpt_dir}); continue it with --resume (resume=True), or "
                    f"--overwrite to move it aside and start over")
            if has_ckpt or diff or not same_data:
                what = (f"settings that differ: {', '.join(diff)}" if diff else
                        "other training data" if not same_data else "its checkpoints")
                raise ValueError(
                    f"--out {out}: holds an interrupted sweep ({what}); nothing was changed. "
                    f"Continue it with --resume, choose another --out, or add --overwrite "
                    f"to move it aside and start a new one")
            # an interrupted sweep of these settings and data that saved no checkpoint:
            # starting it again rewrites only its own files with the same content
        rundir.remove_temporaries(out)       # leftovers of our own killed writers
        if "summary.json" in manifest.get("files", {}) or (out / "summary.json").exists():
            rd.remove("summary.json")    # written last: its absence marks an unfinished sweep
    else:
        rd.create(prep.fingerprint)      # the manifest first: from now on the folder is ours
    rd.write_json("config.json", prep.config)
    rd.save_npy("subsets.npy", prep.masks.astype(np.int32))
    rundir.save_data(out / "data.npz", prep.train, prep.test, prep.threshold_mask)
    rd.record("data.npz")
    return rd


def _read_config(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); damaged; choose another --out or "
                         f"--overwrite to move this run aside") from e
    if not isinstance(old, dict):
        raise ValueError(f"{path}: not a configuration (a JSON object); damaged")
    return rundir.upgrade_config(old)


def _train_and_write(out: Path, prep: Prepared, *, resume: bool, progress: bool,
                     rd: "rundir.RunDir | None" = None) -> dict:
    primary = rd is not None
    masks, train, test = prep.masks, prep.train, prep.test
    logs.info(f"plan: {prep.config['sweep']['plan']}, {masks.shape[0]} members, subset sizes "
              f"{int(masks.sum(1).min())}..{int(masks.sum(1).max())} frames")
    trainer = EnsembleTrainer(prep.model_cfg, prep.train_cfg, prep.exec_cfg)
    logs.info(prep.plan.describe())
    result = waves.fit_waves(trainer, train, masks, prep.plan,
                             checkpoint_dir=out / "checkpoints", resume=resume,
                             progress=progress, lr_scale=prep.lr_scale,
                             mesh=prep.mesh, block_ids=prep.config.get("crn_block_ids"))
    # Every process predicts its share of the members; process 0 gets them all and writes.
    predictions = {"train": sharding.predict_gathered(result, train.images),
                   "test": sharding.predict_gathered(result, test.images)}
    # Failed members (diverged, no labeled frame, learned nothing: training/health.py) are
    # excluded like diverged ones; every process decides the same from the same predictions.
    diverged = np.asarray(result.diverged_at) >= 0
    result = health.mark_failed(result, health.failure_reasons(
        result, predictions, prep.unlabeled_members))
    alive = np.asarray(result.alive, bool)
    if primary and alive.any():    # else the one error line of _all_failed says it
        for m in np.flatnonzero(~alive & ~diverged):   # the trainer named diverged ones
            logs.warning(f"warning: member {m} {result.failed_reason[m]}; it is excluded from "
                         f"consensus, analyze and predict")
    if not alive.any():
        _all_failed(out, result, rd)
    if not primary:
        sharding.barrier("ensemble_jax.sweep.done")
        return {"members": result.n_members, "process_index": jax.process_index()}
    summary = write_results(out, result, train, test, prep.layout,
                            prep.config["sweep"]["pck_radius"], predictions=predictions)
    rd.record(*[n for n in ("params.msgpack", "training.npz", "predictions.npz",
                            "learning_curve.png") if (out / n).exists()])
    summary["scale_out"] = {"devices": 1 if prep.mesh is None else sharding.n_shards(prep.mesh),
                            "processes": jax.process_count(),
                            "waves": [list(w) for w in prep.plan.waves]}
    summary["excluded_members"] = [{"member": int(m), "reason": "no labeled frame in its subset"}
                                   for m in prep.unlabeled_members]
    summary["warnings"] = list(prep.warnings)
    n_div = len(summary["diverged_members"])
    if n_div:
        summary["warnings"].append(f"{n_div} of {result.n_members} members diverged and are "
                                   f"excluded (diverged_members)")
    n_nothing = sum(1 for r in summary["failed_members"] if r["reason"].startswith("learned"))
    if n_nothing:
        summary["warnings"].append(f"{n_nothing} of {result.n_members} members learned nothing "
                                   f"and are excluded (failed_members)")
    summary["wall_s"] = time.perf_counter() - prep.t0
    plan = prep.plan
    # the process's measured peak resident memory, beside what the plan assumed
    summary["peak_rss_bytes"] = waves.peak_rss_bytes()
    summary["memory"] = {"budget_bytes": plan.budget_bytes, "budget_source": plan.budget_source,
                         "budget_for": "process" if plan.host else "device",
                         "per_member_bytes": plan.per_member_bytes,
                         "fixed_bytes": plan.fixed_bytes,
                         "peak_rss_bytes": summary["peak_rss_bytes"]}
    rd.write_json("summary.json", summary)
    logs.info(_describe(summary))
    logs.info(f"memory: peak resident {summary['peak_rss_bytes'] / 2 ** 20:.1f} MiB"
              + (f" (budget {plan.budget_bytes / 2 ** 20:.1f} MiB "
                 f"{'for the process' if plan.host else 'per device'})"
                 if plan.budget_bytes else ""))
    sharding.barrier("ensemble_jax.sweep.done")
    return summary


def _all_failed(out: Path, result: EnsembleResult, rd: "rundir.RunDir | None") -> None:
    """Every member failed: no result is written (no parameters, predictions or
    summary.json, so `analyze`, `predict` and `report` see an unfinished run), only
    training.npz (losses, alive, diverged_at, failed_reason) beside the checkpoints, for
    inspection; raises DeadEnsembleError (one line)."""
    if rd is not None:
        rd.save_npz("training.npz", losses=result.losses, aum_sum=result.aum_sum,
                    aum_count=result.aum_count, alive=result.alive,
                    diverged_at=result.diverged_at, failed_reason=result.failed_reason)
    sharding.barrier("ensemble_jax.sweep.done")
    div = np.asarray(result.diverged_at)
    head = (f"every member diverged (the first at step {int(div[div >= 0].min())})"
            if (div >= 0).all() else
            f"every member failed ({health.describe_failed(result)})")
    raise health.DeadEnsembleError(
        f"{head}; no result was written to {out} (no summary.json; losses in "
        f"training.npz, checkpoints kept for inspection): lower --lr, check the labels")


def scale_out_plan(n_members: int, model_cfg: ModelConfig, train_cfg: TrainConfig,
                   train: KeypointDataset, *, devices: int | None = None,
                   members_per_wave: int | None = None, memory_budget: int | None = None,
                   strategy: str = "auto"):
    """(mesh or None, wave plan) for a sweep: a mesh over `devices` per process (all by
    default) when that is more than one device in all; waves from `members_per_wave`, or
    from a per-device memory budget (given, or the device's own limit)."""
    mesh = sharding.make_mesh(devices)
    if sharding.n_shards(mesh) == 1:
        mesh = None
    n_dev = 1 if mesh is None else sharding.n_shards(mesh)
    from ensemble_jax.training.backend import is_accelerator
    host = not is_accelerator()     # a CPU: the host's memory, shared by its devices
    source, warning = "--memory-budget", None
    if memory_budget is None and members_per_wave is None:
        memory_budget, source, warning = waves.default_memory_budget()
    per_member = fixed = cost = None
    if memory_budget is not None and members_per_wave is None:
        cost = waves.member_cost(model_cfg, train_cfg, train, measure=False)
        # XLA's own figure costs a compile (~1 min at 256 px): only where the activations'
        # estimate, with a wide margin, comes anywhere near the budget
        rough = n_members * max(cost.candidate_peak(nm, 1, 1, host=host)
                                for nm in cost.temp_bytes)
        if rough * waves.ROUGH_MARGIN + int(train.images.nbytes) * n_dev > memory_budget:
            cost = waves.member_cost(model_cfg, train_cfg, train)
        if host:
            per_member = cost.per_member(strategy, host=True)
            # what the process holds now (Python, JAX, the data) and will grow by (compiled
            # programs, caches) + each device's copy of the frames + every member's final
            # parameters gathered on the host
            fixed = (waves.rss_bytes() + waves.CPU_RUNTIME_SLACK
                     + n_dev * int(train.images.nbytes + train.keypoints.nbytes)
                     + n_members * cost.state_bytes // 3)
        else:
            per_member = waves.estimate_member_bytes(model_cfg, train_cfg, train,
                                                     strategy=strategy)
            fixed = int(train.images.nbytes + train.keypoints.nbytes)
    plan = waves.plan_waves(n_members, n_devices=n_dev, members_per_wave=members_per_wave,
                            memory_budget=memory_budget, per_member_bytes=per_member,
                            fixed_bytes=fixed or 0, budget_source=source,
                            warning=warning, host=host, cost=cost)
    return mesh, plan


def write_results(out: Path, result: EnsembleResult, train: KeypointDataset,
                  test: KeypointDataset, layout: dict, pck_radius: float,
                  predictions: dict | None = None) -> dict:
    from flax import serialization
    eio.write_bytes(out / "params.msgpack", serialization.to_bytes(result.params))
    eio.save_npz(out / "training.npz", losses=result.losses, aum_sum=result.aum_sum,
                 aum_count=result.aum_count, alive=result.alive,
                 diverged_at=result.diverged_at,
                 **({} if result.failed_reason is None else
                    {"failed_reason": np.asarray(result.failed_reason, str)}))
    if predictions is not None:   # e.g. gathered from every process
        p_train, p_test = predictions["train"], predictions["test"]
    else:
        p_train, p_test = result.predict(train.images), result.predict(test.images)
    eio.save_npz(
        out / "predictions.npz",
        train_keypoints=train.to_original(p_train.keypoints), train_confidences=p_train.confidences,
        test_keypoints=test.to_original(p_test.keypoints), test_confidences=p_test.confidences,
        train_labels=train.original_keypoints(), test_labels=test.original_keypoints(),
        train_frame_ids=np.array(train.frame_ids), test_frame_ids=np.array(test.frame_ids),
        bodyparts=np.array(list(train.bodyparts)))
    if result.alive.any():   # test frames as DeepLabCut CSVs, EKS-ready (video/predict.py)
        from ensemble_jax.video.predict import write_split_csvs
        write_split_csvs(out, result, test, p_test)
    ev = result.evaluate(train, test, pck_radius=pck_radius,
                         predictions={"train": p_train, "test": p_test})
    fracs = np.asarray(layout["member_fraction"])
    seeds = np.asarray(layout["member_seed"])
    per_fraction = {}
    test_kp = p_test.keypoints
    for f in np.unique(fracs):
        sel = (fracs == f) & result.alive
        if not sel.any():
            continue
        cons = consensus(test_kp[sel], p_test.confidences[sel])
        err = metrics.pixel_errors(test.to_original(cons), test.original_keypoints())
        per_fraction[f"{f:g}"] = {
            "ensemble_test_mean_px": float(metrics.mean_error(err)),
            "ensemble_test_rmse_px": float(metrics.rmse(err)),
            "member_test_mean_px": [ev["members"][m]["test_mean_px"] for m in np.flatnonzero(sel)],
            "members": np.flatnonzero(sel).tolist(),
        }
    summary = {
        "members": result.n_members, "strategy": result.strategy,
        "strategy_choice": result.timing["strategy"],
        "steps_per_s": result.timing["steps_per_s"], "images_per_s": result.timing["images_per_s"],
        "train_s": result.timing["train_s"], "setup_s": result.timing["setup_s"],
        "units": "pixels of the original images",
        "mean_pose_baseline_px": ev["mean_pose_baseline_px"],
        "ensemble_test": ev["ensemble_test"], "per_fraction": per_fraction,
        "members_detail": ev["members"],
        "diverged_members": [{"member": int(m), "step": int(result.diverged_at[m])}
                             for m in np.flatnonzero(~np.asarray(result.alive, bool)
                                                     & (np.asarray(result.diverged_at) >= 0))],
        "alive_members": int(np.asarray(result.alive, bool).sum()),
        "failed_members": [{"member": int(m), "reason": health.reason(result, int(m))}
                           for m in np.flatnonzero(~np.asarray(result.alive, bool))],
    }
    member_err = np.array([r.get("test_mean_px", np.nan) for r in ev["members"]])
    if len(per_fraction) > 1:
        plots.learning_curve(out / "learning_curve.png", fracs, seeds, member_err,
                             {float(k): v["ensemble_test_mean_px"] for k, v in per_fraction.items()},
                             ev["mean_pose_baseline_px"])
    return summary


def _describe(summary: dict) -> str:
    lines = [f"trained {summary['members']} members with strategy '{summary['strategy']}' "
             f"at {summary['images_per_s']:.0f} images/s"]
    for f, row in summary["per_fraction"].items():
        lines.append(f"  fraction {float(f):4.2f}: ensemble test error "
                     f"{row['ensemble_test_mean_px']:.2f} px, members "
                     f"{np.mean(row['member_test_mean_px']):.2f} px (mean)")
    lines.append(f"  ensemble (all members): {summary['ensemble_test']['mean_px']:.2f} px; "
                 f"predicting the mean pose: {summary['mean_pose_baseline_px']:.2f} px")
    if summary.get("failed_members"):
        lines.append(f"  alive members: {summary['alive_members']} of {summary['members']} "
                     f"(failed: " + ", ".join(str(r["member"]) for r in
                                              summary["failed_members"]) + ")")
    return "\n".join(lines)
