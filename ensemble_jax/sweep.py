"""A subset sweep end to end: data -> plan -> trained ensemble -> run directory.

The run directory is the contract between stages (see ARCHITECTURE.md):
  config.json        everything needed to reproduce the run
  subsets.npy        int32 [M, n_train] subset plan (counts; 0/1 for in/out plans)
  data.npz           the training/test frames at training resolution + labels + letterbox
                     (+ train_threshold_mask: the AUM threshold samples)
  params.msgpack     final stacked parameters (flax serialization)
  training.npz       losses [steps, M], AUM sums/counts [M, n_train, K], alive, diverged_at
  predictions.npz    per-member keypoints/confidences on train and test frames
                     (original-image pixels) and the labels they are scored against
  summary.json       errors per fraction, ensemble and per member; strategy; speed
  learning_curve.png
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ensemble_jax import io as eio
from ensemble_jax import runlock
from ensemble_jax import subsets as plans
from ensemble_jax.analysis import metrics, plots
from ensemble_jax.analysis.threshold import inject_threshold_samples
from ensemble_jax.data.dataset import KeypointDataset
from ensemble_jax.models.heatmap_net import ModelConfig
from ensemble_jax.training.config import TrainConfig
from ensemble_jax.training.result import EnsembleResult, consensus
from ensemble_jax.training import sharding, waves
from ensemble_jax.training.trainer import EnsembleTrainer

FORMAT_VERSION = 1
PLANS = ("nested", "random", "bootstrap", "kfold", "loo")


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
        if not 0.0 < self.test_fraction < 1.0:
            bad("test_fraction", "must be in (0, 1)")
        if not 0.0 <= self.noise_rate <= 1.0:
            bad("noise_rate", "must be in [0, 1]")
        if self.image_size is not None and (int(self.image_size) != self.image_size
                                            or self.image_size < 1):
            bad("image_size", "must be a positive integer (pixels) or None")
        if self.data is None and self.synthetic_frames < 4:
            bad("synthetic_frames", "must be >= 4 (train and test frames)")
        if not self.pck_radius > 0:
            bad("pck_radius", "must be > 0 (pixels)")


def load_data(cfg: SweepConfig) -> KeypointDataset:
    if cfg.data is None:
        from ensemble_jax.data.synthetic import synthetic_dataset
        return synthetic_dataset(cfg.synthetic_frames, image_size=cfg.image_size or 64,
                                 noise_rate=cfg.noise_rate, seed=cfg.seed)
    from ensemble_jax.data.load import load_dataset
    return load_dataset(cfg.data, format=cfg.format, image_size=cfg.image_size)


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
    elif cfg.plan == "kfold":
        masks = plans.kfold_subsets(n_train, cfg.n_members, cfg.seed)
        seeds, fracs = np.arange(cfg.n_members), masks.mean(1)
    else:
        masks = plans.leave_one_out_subsets(n_train)
        seeds, fracs = np.arange(n_train), masks.mean(1)
    return masks, {"member_seed": seeds.tolist(), "member_fraction": np.round(fracs, 6).tolist()}


def run_sweep(out_dir: str | Path, cfg: SweepConfig, model_cfg: ModelConfig,
              train_cfg: TrainConfig, *, dataset: KeypointDataset | None = None,
              resume: bool = False, progress: bool = True,
              log: Callable[[str], None] = print,
              lr_scale: Sequence[float] | None = None, devices: int | None = None,
              members_per_wave: int | None = None,
              memory_budget: int | None = None) -> dict:
    """Trains the sweep and writes the run directory. Returns the summary.

    Scale-out (results equal a one-device, one-wave, one-process run's):
    devices: devices per process to shard the members over (default: all of them; one
        device trains unsharded). After `jax.distributed.initialize` (see
        `training.sharding.initialize_distributed`) every process runs this same call,
        trains the members on its devices, and only process 0 writes the run directory.
    members_per_wave / memory_budget: train the members in waves (`training.waves`) of at
        most this many members, or as many as fit `memory_budget` bytes per device (default:
        the device's own limit where the backend reports one); the plan is logged first.

    The run directory is locked (`RUN_DIR/.lock`, see `runlock`) while this runs: a second
    sweep or analyze on it is refused. `summary.json` is written last and removed first, so
    a run directory without it is an unfinished sweep (resume it with resume=True).
    resume=False on a directory holding an interrupted run of the same configuration is
    refused (resume it, or delete it); otherwise earlier checkpoints there are removed.
    lr_scale: float [M] multiplying each member's updates (testing member isolation).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: exists and is a file, not a run directory")
    primary = sharding.is_primary()
    if not primary:   # other processes train their members; process 0 alone writes and logs
        log, progress = (lambda msg: None), False
    out.mkdir(parents=True, exist_ok=True)
    with (runlock.locked(out, "sweep", warn=log) if primary else contextlib.nullcontext()):
        if primary:
            eio.remove_temporaries(out)
        scale = {"devices": devices, "members_per_wave": members_per_wave,
                 "memory_budget": memory_budget}
        return _run_sweep_locked(out, cfg, model_cfg, train_cfg, dataset=dataset,
                                 resume=resume, progress=progress, log=log, lr_scale=lr_scale,
                                 scale=scale)


def _run_sweep_locked(out: Path, cfg: SweepConfig, model_cfg: ModelConfig,
                      train_cfg: TrainConfig, *, dataset: KeypointDataset | None,
                      resume: bool, progress: bool, log: Callable[[str], None],
                      lr_scale: Sequence[float] | None, scale: dict | None = None) -> dict:
    primary = sharding.is_primary()
    t0 = time.perf_counter()
    data = dataset if dataset is not None else load_data(cfg)
    train, test = data.split(cfg.test_fraction, seed=cfg.seed)
    # AUM threshold samples: labels moved to a wrong place on purpose (analysis/threshold.py).
    kp, threshold_mask = inject_threshold_samples(
        train.keypoints, train.images.shape[1:3], cfg.threshold_fraction, cfg.seed)
    train = dataclasses.replace(train, keypoints=kp)
    # Steps from epochs, warm-up, flip pairs as indices; encoder weights checked early.
    from ensemble_jax.training.real_data import resolve_train_config
    train_cfg = resolve_train_config(train_cfg, train.n_frames, train.bodyparts, log)
    if model_cfg.init_weights:
        from ensemble_jax.models.pretrained import load_encoder
        load_encoder(str(model_cfg.init_weights), model_cfg.encoder)
    log(f"data: {data.source or 'synthetic'}: {train.n_frames} train / {test.n_frames} test "
        f"frames, {data.n_keypoints} keypoints, images {data.image_shape}; {data.counts()}")
    masks, layout = make_plan(cfg, train.n_frames)
    config = {"format_version": FORMAT_VERSION, "sweep": dataclasses.asdict(cfg),
              "model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg),
              "members": int(masks.shape[0]), "layout": layout}
    if lr_scale is not None:
        lr_scale = np.asarray(lr_scale, np.float32)
        if lr_scale.shape != (masks.shape[0],):
            raise ValueError(f"lr_scale: expected {masks.shape[0]} values (one per member), "
                             f"got shape {lr_scale.shape}")
        config["lr_scale"] = lr_scale.tolist()
    config_path = out / "config.json"
    old = None
    if config_path.exists():
        try:
            old = json.loads(config_path.read_text())
        except ValueError as e:
            raise ValueError(f"{config_path}: unreadable ({e}); not a run directory of this "
                             f"package, or damaged; choose another --out") from e
    diff = (sorted(_diff(old, json.loads(json.dumps(config, default=eio._json_default))))
            if old is not None else [])
    if resume and diff:
        raise ValueError(f"{config_path}: cannot resume with a different configuration; "
                         f"settings that differ: {', '.join(diff)}")
    ckpt_dir = out / "checkpoints"
    if not primary:   # process 0 checks, cleans and writes; the others wait for it
        sharding.barrier("ensemble_jax.sweep.setup")
    elif not resume and ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        if old is not None and not diff and not (out / "summary.json").exists():
            raise ValueError(
                f"{out}: holds an interrupted sweep with this configuration (checkpoints in "
                f"{ckpt_dir}); continue it with --resume (resume=True), or delete the "
                f"directory to start over")
        log(f"{out}: starting over: removing the checkpoints of the previous run there")
        shutil.rmtree(ckpt_dir)
    summary_path = out / "summary.json"
    if primary:
        if summary_path.exists():
            summary_path.unlink()    # written last: its absence marks an unfinished sweep
        eio.write_json(config_path, config)
        eio.save_npy(out / "subsets.npy", masks.astype(np.int32))
        _save_data(out / "data.npz", train, test, threshold_mask)
        sharding.barrier("ensemble_jax.sweep.setup")
    log(f"plan: {cfg.plan}, {masks.shape[0]} members, subset sizes "
        f"{int(masks.sum(1).min())}..{int(masks.sum(1).max())} frames")

    trainer = EnsembleTrainer(model_cfg, train_cfg)
    mesh, plan = scale_out_plan(masks.shape[0], model_cfg, train_cfg, train, **(scale or {}))
    log(plan.describe())
    result = waves.fit_waves(trainer, train, masks, plan, checkpoint_dir=ckpt_dir,
                             resume=resume, progress=progress, log=log, lr_scale=lr_scale,
                             mesh=mesh)
    # Every process predicts its share of the members; process 0 gets them all and writes.
    predictions = {"train": sharding.predict_gathered(result, train.images),
                   "test": sharding.predict_gathered(result, test.images)}
    if not primary:
        sharding.barrier("ensemble_jax.sweep.done")
        return {"members": result.n_members, "process_index": sharding.process_index()}
    summary = write_results(out, result, train, test, layout, cfg.pck_radius,
                            predictions=predictions)
    summary["scale_out"] = {"devices": 1 if mesh is None else sharding.n_shards(mesh),
                            "processes": sharding.process_count(),
                            "waves": [list(w) for w in plan.waves]}
    summary["wall_s"] = time.perf_counter() - t0
    eio.write_json(out / "summary.json", summary)
    log(_describe(summary))
    sharding.barrier("ensemble_jax.sweep.done")
    return summary


def scale_out_plan(n_members: int, model_cfg: ModelConfig, train_cfg: TrainConfig,
                   train: KeypointDataset, *, devices: int | None = None,
                   members_per_wave: int | None = None, memory_budget: int | None = None):
    """(mesh or None, wave plan) for a sweep: a mesh over `devices` per process (all by
    default) when that is more than one device in all; waves from `members_per_wave`, or
    from a per-device memory budget (given, or the device's own limit)."""
    mesh = sharding.make_mesh(devices)
    if sharding.n_shards(mesh) == 1:
        mesh = None
    n_dev = 1 if mesh is None else sharding.n_shards(mesh)
    source = "given"
    if memory_budget is None and members_per_wave is None:
        limit = waves.device_memory_budget()
        if limit:
            memory_budget, source = int(limit * waves.SAFETY), "device limit x 0.8"
    per_member = fixed = None
    if memory_budget is not None and members_per_wave is None:
        per_member = waves.estimate_member_bytes(model_cfg, train_cfg, train)
        fixed = int(train.images.nbytes + train.keypoints.nbytes)
    plan = waves.plan_waves(n_members, n_devices=n_dev, members_per_wave=members_per_wave,
                            memory_budget=memory_budget, per_member_bytes=per_member,
                            fixed_bytes=fixed or 0, budget_source=source)
    return mesh, plan


def write_results(out: Path, result: EnsembleResult, train: KeypointDataset,
                  test: KeypointDataset, layout: dict, pck_radius: float,
                  predictions: dict | None = None) -> dict:
    from flax import serialization
    eio.write_bytes(out / "params.msgpack", serialization.to_bytes(result.params))
    eio.save_npz(out / "training.npz", losses=result.losses, aum_sum=result.aum_sum,
                 aum_count=result.aum_count, alive=result.alive,
                 diverged_at=result.diverged_at)
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
                             for m in np.flatnonzero(~result.alive)],
    }
    member_err = np.array([r.get("test_mean_px", np.nan) for r in ev["members"]])
    if len(per_fraction) > 1:
        plots.learning_curve(out / "learning_curve.png", fracs, seeds, member_err,
                             {float(k): v["ensemble_test_mean_px"] for k, v in per_fraction.items()},
                             ev["mean_pose_baseline_px"])
    return summary


def _save_data(path: Path, train: KeypointDataset, test: KeypointDataset,
               threshold_mask: np.ndarray | None = None) -> None:
    arrays: dict[str, Any] = {"bodyparts": np.array(list(train.bodyparts))}
    if threshold_mask is not None:
        arrays["train_threshold_mask"] = np.asarray(threshold_mask, bool)
    for name, d in (("train", train), ("test", test)):
        arrays.update({f"{name}_images": d.images, f"{name}_keypoints": d.keypoints,
                       f"{name}_frame_ids": np.array(d.frame_ids),
                       f"{name}_letterbox": d.letterbox,
                       f"{name}_original_sizes": d.original_sizes})
        if d.noise_mask is not None:
            arrays[f"{name}_noise_mask"] = d.noise_mask
    eio.save_npz(path, **arrays)


def load_split(run_dir: str | Path) -> tuple[KeypointDataset, KeypointDataset]:
    """The (train, test) frames a run was trained and scored on, from `data.npz`."""
    z = eio.load_npz(Path(run_dir) / "data.npz")
    bp = [str(b) for b in z["bodyparts"]]
    def ds(name):
        return KeypointDataset(
            images=z[f"{name}_images"], keypoints=z[f"{name}_keypoints"], bodyparts=bp,
            frame_ids=[str(f) for f in z[f"{name}_frame_ids"]],
            noise_mask=z.get(f"{name}_noise_mask"), letterbox=z[f"{name}_letterbox"],
            original_sizes=z[f"{name}_original_sizes"], source=str(run_dir))
    return ds("train"), ds("test")


def load_threshold_mask(run_dir: str | Path) -> np.ndarray | None:
    """bool [n_train, K]: the AUM threshold samples of a run (`data.npz`), None if the run
    has none recorded (runs from before threshold samples)."""
    z = eio.load_npz(Path(run_dir) / "data.npz")
    return z["train_threshold_mask"].astype(bool) if "train_threshold_mask" in z else None


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')} ({a!r} -> {b!r})"]


def _describe(summary: dict) -> str:
    lines = [f"trained {summary['members']} members with strategy '{summary['strategy']}' "
             f"at {summary['images_per_s']:.0f} images/s"]
    for f, row in summary["per_fraction"].items():
        lines.append(f"  fraction {float(f):4.2f}: ensemble test error "
                     f"{row['ensemble_test_mean_px']:.2f} px, members "
                     f"{np.mean(row['member_test_mean_px']):.2f} px (mean)")
    lines.append(f"  ensemble (all members): {summary['ensemble_test']['mean_px']:.2f} px; "
                 f"predicting the mean pose: {summary['mean_pose_baseline_px']:.2f} px")
    return "\n".join(lines)
