"""Waves: when the members do not fit in device memory, train them in slices ("waves") one
after another and merge the results.

Member m's key depends only on (seed, m) and members never talk to each other, so a wave
trained with its global `member_ids` gives its members exactly the parameters, losses and
AUM sums they get in a one-wave run; merging is concatenation along the member axis.

Memory model (per device): every member costs its training state (params, Adam moments,
AUM sums/counts; twice, since a step writes a new state while the old one is live) plus
the temporary buffers of one member step at the batch size (XLA's own
`memory_analysis()` of the compiled step, or an estimate from the activations); the shared
frames are replicated on every device. The budget is `--memory-budget` bytes, or what the
device reports free (`memory_stats()`: `bytes_limit - bytes_in_use`) times a safety
factor. An accelerator that reports nothing (e.g. `XLA_PYTHON_CLIENT_ALLOCATOR=platform`)
gets a conservative default with a warning in the plan; a CPU (host memory) gets one wave.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ensemble_jax.data.dataset import KeypointDataset
from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
from ensemble_jax.training import strategies
from ensemble_jax.training.config import TrainConfig
from ensemble_jax.training.result import EnsembleResult
from ensemble_jax.training.step import MemberInputs, init_member
from ensemble_jax import logs

SAFETY = 0.8      # fraction of the free device memory the plan may use
# Per-device budget when an accelerator reports no memory statistics: the free memory of a
# small (8 GiB) GPU with room to spare; --memory-budget overrides it.
UNREPORTED_DEFAULT = 4 * 2 ** 30


@dataclasses.dataclass(frozen=True)
class WavePlan:
    waves: tuple[tuple[int, int], ...]   # [lo, hi) member ranges, in order
    n_members: int
    n_devices: int
    per_member_bytes: int | None = None
    fixed_bytes: int | None = None
    budget_bytes: int | None = None       # per device
    budget_source: str = "none"
    warning: str | None = None

    @property
    def members_per_wave(self) -> int:
        return max(hi - lo for lo, hi in self.waves)

    def describe(self) -> str:
        n = len(self.waves)
        lines = [f"wave plan: {self.n_members} members in {n} wave{'s' * (n != 1)} of at most "
                 f"{self.members_per_wave} on {self.n_devices} device(s)"]
        if self.budget_bytes:
            lines.append(f"  memory: budget {_mib(self.budget_bytes)} per device "
                         f"({self.budget_source}); ~{_mib(self.per_member_bytes)} per member, "
                         f"{_mib(self.fixed_bytes)} shared frames")
        if self.warning:
            lines.append(f"  warning: {self.warning}")
        for i, (lo, hi) in enumerate(self.waves):
            lines.append(f"  wave {i + 1}/{n}: members {lo}..{hi - 1} ({hi - lo})")
        return "\n".join(lines)


def _mib(b: int | None) -> str:
    return "?" if b is None else f"{b / 2 ** 20:.1f} MiB"


def device_memory_budget(device: Any = None) -> int | None:
    """Bytes free on one device by its own statistics (`bytes_limit - bytes_in_use`), or
    None where the backend reports none (the CPU; some allocators)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:   # not every backend implements it
        return None
    limit = stats.get("bytes_limit")
    if not limit:
        return None
    return max(0, int(limit) - int(stats.get("bytes_in_use") or 0))


def default_memory_budget(device: Any = None) -> tuple[int | None, str, str | None]:
    """(per-device budget or None, its source, a warning or None) for a plan without
    --memory-budget: the free memory times SAFETY; on an accelerator that reports no
    statistics, UNREPORTED_DEFAULT with a warning; on a CPU, None (one wave)."""
    free = device_memory_budget(device)
    if free is not None:
        return int(free * SAFETY), f"free device memory x {SAFETY}", None
    from ensemble_jax.training.backend import is_accelerator
    if not is_accelerator():
        return None, "none", None
    return (UNREPORTED_DEFAULT, "default", (
        f"the device reports no memory statistics (e.g. XLA_PYTHON_CLIENT_ALLOCATOR="
        f"platform); planning for {_mib(UNREPORTED_DEFAULT)} per device; set "
        f"--memory-budget to the device's free memory to use more of it"))


def estimate_member_bytes(model_config: ModelConfig, train_config: TrainConfig,
                          dataset: KeypointDataset, *, measure: bool = True,
                          strategy: str = "auto") -> int:
    """Device bytes one member needs while training `strategy` (see the module docstring)."""
    from ensemble_jax.training.step import member_step_for
    h, w, c = dataset.image_shape
    k, n = dataset.n_keypoints, dataset.n_frames
    model = HeatmapNet(model_config, k)
    tx = train_config.optimizer()
    sample = jax.ShapeDtypeStruct((1, h, w, c), jnp.uint8)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    state = jax.eval_shape(lambda kk, x: init_member(model, tx, kk, x, n, k), key, sample)
    state_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                      for x in jax.tree_util.tree_leaves(state))
    temp = None
    if measure:
        # A strategy may train the network in another form ('vmap_matmul': convolutions
        # over kh*kw shifted copies of their input): size the waves for the largest form
        # among those the strategy (or 'auto', any of them) can run.
        names = strategies.ALL if strategy == "auto" else (strategy,)
        configs = {strategies.get(name).model_config(model_config) for name in names}
        args = (state, MemberInputs(key, jax.ShapeDtypeStruct((n,), jnp.int32),
                                    jax.ShapeDtypeStruct((), jnp.int32),
                                    jax.ShapeDtypeStruct((), jnp.float32)),
                jax.ShapeDtypeStruct((), jnp.int32),
                jax.ShapeDtypeStruct((n, h, w, c), jnp.uint8),
                jax.ShapeDtypeStruct((n, k, 2), jnp.float32))
        try:
            temp = max(int(jax.jit(member_step_for(mc, train_config, (h, w), k)).lower(*args)
                           .compile().memory_analysis().temp_size_in_bytes) for mc in configs)
        except Exception:
            temp = None
    if temp is None:   # activations: each stage's feature maps (halved), forward + backward
        if train_config.crop.enabled:          # on the training windows
            h, w = train_config.crop.size
        temp = sum(3 * 4 * train_config.batch_size * (h >> i) * (w >> i) * width
                   for i, width in enumerate(model_config.widths))
    return 2 * state_bytes + temp


def plan_waves(n_members: int, *, n_devices: int = 1, members_per_wave: int | None = None,
               memory_budget: int | None = None, per_member_bytes: int | None = None,
               fixed_bytes: int = 0, budget_source: str = "given",
               warning: str | None = None) -> WavePlan:
    """Member ranges per wave. `members_per_wave` wins; else a per-device `memory_budget`
    with `per_member_bytes`; else one wave. Waves are a multiple of the device count
    where possible (no padding) and as even as possible."""
    if n_members < 1:
        raise ValueError("plan_waves: no members")
    if members_per_wave is not None:
        if members_per_wave < 1:
            raise ValueError(f"--members-per-wave {members_per_wave}: must be >= 1")
        cap = members_per_wave
    elif memory_budget is not None and per_member_bytes:
        room = memory_budget - fixed_bytes
        per_device = room // per_member_bytes
        if per_device < 1:
            raise ValueError(
                f"memory budget {_mib(memory_budget)} per device cannot hold one member "
                f"(~{_mib(per_member_bytes)}) next to the shared frames ({_mib(fixed_bytes)}); "
                "raise --memory-budget, lower --batch-size or --image-size")
        cap = int(per_device) * n_devices
    else:
        cap = n_members
    cap = max(1, min(cap, n_members))
    n_waves = math.ceil(n_members / cap)
    size = math.ceil(n_members / n_waves)
    if size % n_devices and size > n_devices:   # round to whole device blocks if it fits
        rounded = (size // n_devices + 1) * n_devices
        if rounded <= cap:
            size = rounded
    waves, lo = [], 0
    while lo < n_members:
        waves.append((lo, min(n_members, lo + size)))
        lo += size
    return WavePlan(tuple(waves), n_members, n_devices, per_member_bytes, fixed_bytes,
                    memory_budget, budget_source if memory_budget else "none",
                    warning if memory_budget and members_per_wave is None else None)


def merge_results(results: list[EnsembleResult]) -> EnsembleResult:
    """Concatenates wave results along the member axis."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    cat = lambda attr, axis=0: np.concatenate([getattr(r, attr) for r in results], axis)
    params = jax.tree_util.tree_map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]),
                                    *[r.params for r in results])
    from ensemble_jax.training.trainer import speed
    total = lambda key: sum(r.timing[key] for r in results)
    member_steps = sum(r.timing["steps_run"] * r.n_members for r in results)
    timing = dict(speed(total("setup_s"), total("train_s"),
                        max(r.timing["steps_run"] for r in results),
                        member_steps * first.train_config.batch_size, first.timing["strategy"]),
                  waves=[{"members": r.n_members, "train_s": r.timing["train_s"],
                          "strategy": r.strategy} for r in results])
    return dataclasses.replace(
        first, params=params, masks=cat("masks"), aum_sum=cat("aum_sum"),
        aum_count=cat("aum_count"), losses=cat("losses", 1), alive=cat("alive"),
        diverged_at=cat("diverged_at"), timing=timing)


def wave_checkpoint_dir(root: str | Path | None, plan: WavePlan, lo: int, hi: int
                        ) -> Path | None:
    """One wave: `root` itself (as an unwaved run); several: `root/members-LO-HI`, so a
    different plan on resume never mistakes another wave's checkpoint for its own."""
    if root is None:
        return None
    return Path(root) if len(plan.waves) == 1 else Path(root) / f"members-{lo:05d}-{hi:05d}"


@logs.sink
def fit_waves(trainer: Any, dataset: KeypointDataset, masks: np.ndarray, plan: WavePlan, *,
              lr_scale: np.ndarray | None = None, member_ids: np.ndarray | None = None,
              checkpoint_dir: str | Path | None = None, resume: bool = False,
              progress: bool = True, mesh: Any = None, stop_after: int | None = None,
              block_ids: np.ndarray | None = None) -> EnsembleResult:
    """`trainer.fit` wave by wave, with the members' global ids (and crn block ids); the
    merged result equals a one-wave run's."""
    m = int(np.asarray(masks).shape[0])
    if plan.n_members != m:
        raise ValueError(f"fit_waves: plan is for {plan.n_members} members, masks have {m}")
    ids = np.arange(m) if member_ids is None else np.asarray(member_ids)
    lrs = np.ones(m, np.float32) if lr_scale is None else np.asarray(lr_scale, np.float32)
    results = []
    for i, (lo, hi) in enumerate(plan.waves):
        if len(plan.waves) > 1:
            logs.info(f"wave {i + 1}/{len(plan.waves)}: members {lo}..{hi - 1}")
        results.append(trainer.fit(
            dataset, np.asarray(masks)[lo:hi], lr_scale=lrs[lo:hi], member_ids=ids[lo:hi],
            checkpoint_dir=wave_checkpoint_dir(checkpoint_dir, plan, lo, hi), resume=resume,
            progress=progress, mesh=mesh, stop_after=stop_after,
            **({} if block_ids is None else {"block_ids": np.asarray(block_ids)[lo:hi]})))
    return merge_results(results)
