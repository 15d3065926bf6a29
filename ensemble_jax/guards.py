"""Checks a sweep makes before it writes anything: arguments, labels, resources.

Each raises ValueError with one line naming the argument (as the command-line flag, with
the Python name where they differ) and what would fix it. `sweep.prepare` calls them in
order: scale arguments and training settings, then the data's labels, then the resources
the plan needs (before the plan itself is built, so an absurd member count cannot eat the
memory first).
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ensemble_jax import logs

# Coordinates further than this many image sizes outside the image are not labels.
COORD_SLACK = 10.0
# int32 step counters and schedules: no more steps than this.
MAX_STEPS = 2 ** 31 - 1


def _gib(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def host_memory_bytes() -> int | None:
    """Memory available to this process now (Linux MemAvailable), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_scale_arguments(devices: int | None = None, members_per_wave: int | None = None,
                          memory_budget: int | None = None) -> None:
    if devices is not None and devices < 1:
        raise ValueError(f"--devices {devices}: must be >= 1 (leave it out to use every "
                         f"device)")
    if members_per_wave is not None and members_per_wave < 1:
        raise ValueError(f"--members-per-wave {members_per_wave}: must be >= 1")
    if memory_budget is not None and memory_budget < 1:
        raise ValueError(f"--memory-budget {memory_budget}: must be a positive size such "
                         f"as 800M or 12G")


def check_train_config(tc: Any, ec: Any) -> None:
    """The train (TrainConfig) and execution (ExecConfig) settings, in command-line words."""
    if not math.isfinite(float(tc.learning_rate)):
        raise ValueError(f"--lr {tc.learning_rate}: must be a finite number > 0")
    if tc.steps > MAX_STEPS:
        raise ValueError(f"--steps {tc.steps}: more than the {MAX_STEPS} steps the step "
                         f"counters hold")
    if ec.checkpoint_every > tc.steps:
        raise ValueError(f"--checkpoint-every {ec.checkpoint_every}: more than --steps "
                         f"{tc.steps}; no checkpoint would be written before the end")


def check_labels(data: Any) -> None:
    """Label coordinates must be finite and near their image (a typo such as 1e39 is not
    a label; it would make every error and the mean-pose baseline infinite)."""
    orig = np.asarray(data.original_keypoints(), np.float64)
    sizes = np.asarray(data.original_sizes, np.float64)             # [n, 2] (w, h)
    lo = -COORD_SLACK * sizes[:, None, :]
    hi = (1 + COORD_SLACK) * sizes[:, None, :]
    bad = ~np.isnan(orig) & ((orig < lo) | (orig > hi) | ~np.isfinite(orig))
    if bad.any():
        i, k, c = np.argwhere(bad)[0]
        raw = np.asarray(data.keypoints, np.float64)[i, k, c]
        w, h = sizes[i]
        raise ValueError(
            f"{data.source or 'data'}: frame {data.frame_ids[i]}, keypoint "
            f"{data.bodyparts[k]}: {'xy'[c]} = {orig[i, k, c]:.6g} px (training pixels "
            f"{raw:.6g}) lies far outside its {int(w)}x{int(h)} image ({int(bad.sum())} such "
            f"coordinate(s)); fix the label or mark it unlabeled (empty/NaN)")


def check_image_size(model_cfg: Any, train: Any) -> None:
    """The training images must divide by 2 ** encoder stages (as the trainer requires);
    checked here so that no estimate or write happens before."""
    mult = model_cfg.input_multiple
    h, w = train.image_shape[:2]
    if h % mult or w % mult:
        raise ValueError(
            f"--image-size: training images of {h}x{w} pixels are not divisible by {mult} "
            f"(2 ** number of encoder stages); use a multiple of {mult}, e.g. --image-size "
            f"{max(mult, (max(h, w) // mult) * mult)}")


def check_test_labels(test: Any, test_fraction: float) -> None:
    if not np.isfinite(np.asarray(test.keypoints)).all(-1).any():
        raise ValueError(
            f"--test-fraction {test_fraction:g}: the {test.n_frames} test frame(s) hold no "
            f"labeled keypoint, so no test error can be measured; raise --test-fraction, "
            f"change --seed or label more frames")


def planned_members(cfg: Any, n_train: int) -> int:
    if cfg.plan == "nested":
        return len(cfg.fractions) * int(cfg.n_seeds)
    if cfg.plan == "loo":
        return int(n_train)
    return int(cfg.n_members)


def check_resources(n_members: int, model_cfg: Any, train_cfg: Any, train: Any,
                    scale: dict) -> None:
    """One member's training step must fit one device's budget (the memory budget, the
    device's limit, or on a CPU this host's available memory); the host must hold the
    plan, the loss record and every member's final state."""
    from ensemble_jax.training import waves
    from ensemble_jax.training.backend import is_accelerator
    host = host_memory_bytes()
    per_member = waves.estimate_member_bytes(model_cfg, train_cfg, train, measure=False)
    fixed = int(train.images.nbytes + train.keypoints.nbytes)
    fixed_what = "of frames"
    budget, source = scale.get("memory_budget"), "--memory-budget"
    on_cpu = not is_accelerator()
    if on_cpu:   # the host's memory is the device's: the budget is the whole process's
        fixed += waves.rss_bytes()
        fixed_what = "this process holds already: Python, JAX and the frames"
    if budget is None:
        limit = None if on_cpu else waves.device_memory_budget()
        if limit:
            budget, source = int(limit * waves.SAFETY), "the device's memory x 0.8"
        elif on_cpu:
            budget, source = waves.host_memory_budget()[0], "this host's available memory"
        else:
            budget, source = host, "this host's available memory"
    h, w, _ = train.image_shape
    if budget and fixed + per_member > budget:
        raise ValueError(
            f"--batch-size {train_cfg.batch_size} at {h}x{w} pixels: one member needs about "
            f"{_gib(per_member)} to train (plus {_gib(fixed)} {fixed_what}), more than "
            f"{source} ({_gib(budget)}); lower --batch-size or --image-size"
            + (", or raise --memory-budget" if source == "--memory-budget" else ""))
    n, k = train.n_frames, train.n_keypoints
    need = (4 * train_cfg.steps * n_members            # losses [steps, M] float32
            + n_members * n * (4 + 8 * k)              # plan + AUM sums/counts
            + n_members * per_member // 2)             # final states (params, moments)
    if host and need > host:
        raise ValueError(
            f"{n_members} members x --steps {train_cfg.steps} over {n} frames: the run "
            f"would hold about {_gib(need)} in host memory (loss record, subset plan, AUM "
            f"sums and every member's state), more than the {_gib(host)} available; lower "
            f"--steps or --members")


def members_without_labels(masks: np.ndarray, train: Any, threshold_mask: np.ndarray | None
                           ) -> tuple[list[str], list[int]]:
    """Members whose subset holds no labeled keypoint never learn (loss 0): all of them ->
    error; some -> (warnings, member indices) to log, record and exclude downstream."""
    labeled = np.isfinite(np.asarray(train.keypoints)).all(-1)        # [n, K]
    if threshold_mask is not None:
        labeled = labeled & ~np.asarray(threshold_mask, bool)          # planted, not labels
    per_frame = labeled.any(-1)                                        # [n]
    counts = (np.asarray(masks) > 0) @ per_frame.astype(np.int64)      # [M]
    empty = np.flatnonzero(counts == 0).tolist()
    if len(empty) == len(counts):
        raise ValueError(
            f"no member's subset holds a labeled frame ({int(per_frame.sum())} of "
            f"{len(per_frame)} training frames are labeled); raise --fraction/--fractions "
            f"or label more frames")
    if not empty:
        return [], []
    msg = (f"{len(empty)} of {len(counts)} members have no labeled frame in their subset "
           f"(members {empty[:10]}{' ...' if len(empty) > 10 else ''}); they cannot learn "
           f"and are excluded from the ensemble, the errors and the analysis; raise "
           f"--fraction or label more frames")
    logs.warning(f"warning: {msg}")
    return [msg], empty


def devices_for(n_members: int, devices: int | None) -> int | None:
    """Devices per process to use: never more than there are members per process (a device
    without a member of its own would train padded copies)."""
    import jax
    local = jax.local_device_count()
    per_process = -(-n_members // jax.process_count())
    if devices is not None:
        if devices > per_process and devices > 1:
            raise ValueError(f"--devices {devices}: more devices than the {per_process} "
                             f"member(s) each process trains; use at most {per_process}")
        return devices
    if local > per_process:
        logs.info(f"{n_members} member(s): using {per_process} of the {local} devices (one "
                  f"member each)")
        return per_process
    return None
