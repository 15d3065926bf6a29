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
gets a conservative default with a warning in the plan.

On a CPU the host's memory is the device memory, and the budget is the whole process's:
what it holds now (its resident set: Python, JAX, the loaded data) plus the host's
available memory (`/proc/meminfo` MemAvailable, or the cgroup's limit minus its usage
where that is lower) times SAFETY; `--memory-budget` sets it instead. The plan then
subtracts what the process holds when it plans (`fixed`) and gives each wave the rest;
the strategy probe skips a candidate whose estimated peak exceeds it
(`candidate_peak_bytes`). The process's measured peak (`peak_rss_bytes`) is recorded in
summary.json to compare with the estimate.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import resource
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
    # True on a CPU: the budget and the fixed bytes are the whole process's (its devices
    # share the host's memory), not one device's
    host: bool = False
    cost: MemberCost | None = None        # for the strategy probe's estimates

    def candidate_peak(self, strategy: str, wave_members: int, members_per_program: int
                       ) -> int | None:
        """Estimated peak bytes (the process's on a CPU, else one device's) of a wave of
        `wave_members` trained by `strategy`; None without a budget and a cost."""
        if self.cost is None or not self.budget_bytes:
            return None
        local = math.ceil(wave_members / self.n_devices)
        one = self.cost.candidate_peak(strategy, local, members_per_program, self.host)
        return int(self.fixed_bytes or 0) + one * (self.n_devices if self.host else 1)

    def over_budget(self, strategy: str, wave_members: int, members_per_program: int
                    ) -> str | None:
        """Why `strategy` cannot train this wave within the budget, or None if it can."""
        peak = self.candidate_peak(strategy, wave_members, members_per_program)
        if peak is None or peak <= self.budget_bytes:
            return None
        return (f"estimated peak {_mib(peak)} is over the memory budget "
                f"{_mib(self.budget_bytes)}")

    @property
    def members_per_wave(self) -> int:
        return max(hi - lo for lo, hi in self.waves)

    def describe(self) -> str:
        n = len(self.waves)
        lines = [f"wave plan: {self.n_members} members in {n} wave{'s' * (n != 1)} of at most "
                 f"{self.members_per_wave} on {self.n_devices} device(s)"]
        if self.budget_bytes and self.host:
            lines.append(f"  memory: budget {_mib(self.budget_bytes)} for this process "
                         f"({self.budget_source}); ~{_mib(self.per_member_bytes)} per member"
                         f"{'' if self.cost is None or self.cost.measured else ' (estimated without compiling)'}"
                         f", {_mib(self.fixed_bytes)} held before training (the process "
                         f"and its data)")
        elif self.budget_bytes:
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


# ---------------------------------------------------------------- host memory (CPU)
NO_LIMIT = 2 ** 60     # cgroup "max" / v1's page-rounded 2**63: no limit


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return NO_LIMIT
    try:
        return int(text)
    except ValueError:
        return None


def host_available_bytes(meminfo: str | os.PathLike = "/proc/meminfo",
                         cgroup: str | os.PathLike = "/sys/fs/cgroup"
                         ) -> tuple[int | None, str]:
    """(bytes this process may still allocate on the host, where that number comes from):
    MemAvailable, or the cgroup's limit minus its usage (v2 memory.max - memory.current,
    v1 memory/memory.limit_in_bytes - memory.usage_in_bytes) where that is lower; (None,
    "unknown") where neither can be read."""
    found: list[tuple[int, str]] = []
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * 1024, "MemAvailable"))
                    break
    except (OSError, ValueError, IndexError):
        pass
    root = Path(cgroup)
    for limit_file, usage_file, name in (
            ("memory.max", "memory.current", "cgroup memory.max"),
            ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes",
             "cgroup memory.limit_in_bytes")):
        limit, usage = _read_int(root / limit_file), _read_int(root / usage_file)
        if limit is not None and limit < NO_LIMIT:
            found.append((max(0, limit - (usage or 0)), f"{name} - usage"))
            break
    if not found:
        return None, "unknown"
    return min(found)


def rss_bytes() -> int:
    """This process's resident set now (Linux /proc/self/statm), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set so far (getrusage's ru_maxrss: KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def host_memory_budget(meminfo: str | os.PathLike = "/proc/meminfo",
                       cgroup: str | os.PathLike = "/sys/fs/cgroup"
                       ) -> tuple[int | None, str]:
    """(the whole process's budget on a CPU, its source): what it holds now plus the host's
    available memory times SAFETY; (None, "unknown") where the host says nothing."""
    avail, where = host_available_bytes(meminfo, cgroup)
    if avail is None:
        return None, "unknown"
    now = rss_bytes()
    return (now + int(avail * SAFETY),
            f"host memory: this process's {_mib(now)} + {SAFETY} x {_mib(avail)} "
            f"available ({where})")


def default_memory_budget(device: Any = None) -> tuple[int | None, str, str | None]:
    """(per-device budget or None, its source, a warning or None) for a plan without
    --memory-budget: the free memory times SAFETY; on an accelerator that reports no
    statistics, UNREPORTED_DEFAULT with a warning; on a CPU, the process's host budget
    (`host_memory_budget`, for all its devices together)."""
    from ensemble_jax.training.backend import is_accelerator
    free = device_memory_budget(device)
    if free is not None:     # a device that reports its memory (a CPU reports none)
        return int(free * SAFETY), f"free device memory x {SAFETY}", None
    if not is_accelerator():
        budget, source = host_memory_budget()
        return budget, source, None
    return (UNREPORTED_DEFAULT, "default", (
        f"the device reports no memory statistics (e.g. XLA_PYTHON_CLIENT_ALLOCATOR="
        f"platform); planning for {_mib(UNREPORTED_DEFAULT)} per device; set "
        f"--memory-budget to the device's free memory to use more of it"))


# A vmapped step of L members on XLA:CPU held 1.75x L single-member steps' temporaries:
# mirror-mouse at 256 px, 15 members on 2 CPU devices (8 per device), the single-member
# step's memory_analysis() temp 314 MiB: 'vmap' peaked at 9.2 GB of resident memory
# (8 x 2 x 314 MiB = 4.9 GiB predicted without the factor); 'vmap_matmul' (827 MiB per
# member) at 14.5 GB. The unrolled and sequential programs stayed under L x temp.
CPU_VMAP_FACTOR = 1.75
# The unrolled programs of 6 members (3 per device) peaked at 1.17x their temporaries
# (2.2 GB over what the process held before training, 6 x 314 MiB predicted): every
# temporary count on a CPU is taken CPU_STEP_FACTOR times where no larger factor applies.
CPU_STEP_FACTOR = 1.25
# What a CPU process grows by once it plans (the probe's compiled programs, JAX's caches,
# the allocator's slack): 254 MiB measured there; counted with the bytes held before
# training.
CPU_RUNTIME_SLACK = 384 * 2 ** 20
# A plan uses the activations' estimate (no compile) when it times this many is still
# under the budget; XLA's memory_analysis() of the step otherwise. The estimate was 1.01x
# to 1.10x XLA's figure (3.4x to 3.7x for vmap_matmul) for the default network on
# synthetic 32 px, openfield 128 px and mirror-mouse 256 px frames: 8x leaves wide room.
ROUGH_MARGIN = 8


@dataclasses.dataclass(frozen=True)
class MemberCost:
    """What one member costs while it trains: its state (params, Adam moments, AUM sums and
    counts) and the temporaries of one member step per strategy, in the network form that
    strategy trains (XLA's `memory_analysis()` of the compiled step, or an estimate from
    the activations when `measured` is False)."""
    state_bytes: int
    temp_bytes: dict            # strategy name -> bytes
    measured: bool

    def per_member(self, strategy: str = "auto", host: bool = False) -> int:
        """A wave member: its state twice (a step writes a new one while the old is live)
        plus one step's temporaries (a vmapped program holds every member's at once;
        x CPU_STEP_FACTOR on a CPU). For 'auto', the network's own form: a candidate that
        needs more (vmap_matmul's shifted copies, a vmapped step on a CPU) is left out by
        the probe where it does not fit (`candidate_peak`)."""
        name = "unrolled" if strategy == "auto" else strategy
        temp = self.temp_bytes.get(name, max(self.temp_bytes.values()))
        if host:
            temp = int(temp * _cpu_factor(name))
        return 2 * self.state_bytes + temp

    def candidate_peak(self, strategy: str, local: int, members_per_program: int,
                       host: bool = False) -> int:
        """One device's bytes for `local` members trained by `strategy`: every member's
        state twice, plus the temporaries of the programs that may run at once. On an
        accelerator one program (its group of members) at a time. On a CPU (host=True)
        the groups' programs are independent and the CPU client may run them together,
        so every local member's temporaries count; a vmapped program holds
        CPU_VMAP_FACTOR times the single-member step's (measured, see there)."""
        s = strategies.get(strategy)
        group = s.group(local, members_per_program)
        if not host:
            return 2 * self.state_bytes * local + group * self.temp_bytes[strategy]
        return 2 * self.state_bytes * local + int(local * self.temp_bytes[strategy]
                                                  * _cpu_factor(strategy))


def _cpu_factor(strategy: str) -> float:
    """How many times its single-member step's temporaries one member holds on a CPU."""
    return CPU_VMAP_FACTOR if strategies.get(strategy).traced == "vmap" else CPU_STEP_FACTOR


def member_cost(model_config: ModelConfig, train_config: TrainConfig,
                dataset: KeypointDataset, *, measure: bool = True) -> MemberCost:
    """`MemberCost` of one member of this network and batch on `dataset`'s frames."""
    return _member_cost(model_config, train_config, tuple(dataset.image_shape),
                        int(dataset.n_keypoints), int(dataset.n_frames), measure)


@functools.lru_cache(maxsize=16)
def _member_cost(model_config: ModelConfig, train_config: TrainConfig,
                 image_shape: tuple, k: int, n: int, measure: bool) -> MemberCost:
    from ensemble_jax.training.step import member_step_for
    h, w, c = image_shape
    model = HeatmapNet(model_config, k)
    tx = train_config.optimizer()
    sample = jax.ShapeDtypeStruct((1, h, w, c), jnp.uint8)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    state = jax.eval_shape(lambda kk, x: init_member(model, tx, kk, x, n, k), key, sample)
    state_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                      for x in jax.tree_util.tree_leaves(state))
    temps: dict = {}
    if measure:
        # A strategy may train the network in another form ('vmap_matmul': convolutions
        # over kh*kw shifted copies of their input): one compile per form.
        args = (state, MemberInputs(key, jax.ShapeDtypeStruct((n,), jnp.int32),
                                    jax.ShapeDtypeStruct((), jnp.int32),
                                    jax.ShapeDtypeStruct((), jnp.float32)),
                jax.ShapeDtypeStruct((), jnp.int32),
                jax.ShapeDtypeStruct((n, h, w, c), jnp.uint8),
                jax.ShapeDtypeStruct((n, k, 2), jnp.float32))
        by_form: dict = {}
        try:
            for name in strategies.ALL:
                mc = strategies.get(name).model_config(model_config)
                if mc not in by_form:
                    by_form[mc] = int(jax.jit(member_step_for(mc, train_config, (h, w), k))
                                      .lower(*args).compile().memory_analysis()
                                      .temp_size_in_bytes)
                temps[name] = by_form[mc]
        except Exception:
            temps = {}
    if not temps:   # activations: each stage's feature maps (halved), forward + backward
        if train_config.crop.enabled:          # on the training windows
            h, w = train_config.crop.size
        act = sum(3 * 4 * train_config.batch_size * (h >> i) * (w >> i) * width
                  for i, width in enumerate(model_config.widths))
        # 'vmap_matmul' holds kh*kw shifted copies of each convolution's input
        temps = {name: act * (9 if strategies.get(name).conv_impl == "matmul" else 1)
                 for name in strategies.ALL}
        return MemberCost(state_bytes, temps, False)
    return MemberCost(state_bytes, temps, True)


def estimate_member_bytes(model_config: ModelConfig, train_config: TrainConfig,
                          dataset: KeypointDataset, *, measure: bool = True,
                          strategy: str = "auto") -> int:
    """Device bytes one member needs while training `strategy` (see the module docstring);
    for 'auto' the largest form any candidate trains (accelerators' plans)."""
    cost = member_cost(model_config, train_config, dataset, measure=measure)
    if not cost.measured:   # the network's own form (a quick check before any compile)
        return cost.per_member("auto" if strategy == "auto" else strategy)
    names = strategies.ALL if strategy == "auto" else (strategy,)
    return 2 * cost.state_bytes + max(cost.temp_bytes[nm] for nm in names)


def plan_waves(n_members: int, *, n_devices: int = 1, members_per_wave: int | None = None,
               memory_budget: int | None = None, per_member_bytes: int | None = None,
               fixed_bytes: int = 0, budget_source: str = "given",
               warning: str | None = None, host: bool = False,
               cost: MemberCost | None = None) -> WavePlan:
    """Member ranges per wave. `members_per_wave` wins; else a per-device `memory_budget`
    with `per_member_bytes`; else one wave. Waves are a multiple of the device count
    where possible (no padding) and as even as possible. host=True (a CPU): the budget
    and `fixed_bytes` are the process's, shared by all its devices."""
    if n_members < 1:
        raise ValueError("plan_waves: no members")
    if members_per_wave is not None:
        if members_per_wave < 1:
            raise ValueError(f"--members-per-wave {members_per_wave}: must be >= 1")
        cap = members_per_wave
    elif memory_budget is not None and per_member_bytes:
        room = memory_budget - fixed_bytes
        # on a CPU the devices share the budget, and a wave is padded to whole device
        # blocks: every device trains as many members as the fullest one
        per_device = room // (per_member_bytes * (n_devices if host else 1))
        if per_device < 1:
            where = ("for this process" if host else "per device")
            beside = ("what the process holds before training (Python, JAX and the data)"
                      if host else "the shared frames")
            each = (f"one member on each of its {n_devices} CPU devices"
                    if host and n_devices > 1 else "one member")
            raise ValueError(
                f"memory budget {_mib(memory_budget)} {where} cannot hold {each} "
                f"(~{_mib(per_member_bytes)} each) next to {beside} ({_mib(fixed_bytes)}); "
                "raise --memory-budget, lower --batch-size or --image-size"
                + (" or --cpu-devices" if host and n_devices > 1 else ""))
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
                    warning if memory_budget and members_per_wave is None else None,
                    host=host, cost=cost)


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
    # the probe of `auto` skips candidates whose estimated peak exceeds the plan's budget
    trainer.memory_plan = plan if plan.cost is not None else None
    for i, (lo, hi) in enumerate(plan.waves):
        if len(plan.waves) > 1:
            logs.info(f"wave {i + 1}/{len(plan.waves)}: members {lo}..{hi - 1}")
        results.append(trainer.fit(
            dataset, np.asarray(masks)[lo:hi], lr_scale=lrs[lo:hi], member_ids=ids[lo:hi],
            checkpoint_dir=wave_checkpoint_dir(checkpoint_dir, plan, lo, hi), resume=resume,
            progress=progress, mesh=mesh, stop_after=stop_after,
            **({} if block_ids is None else {"block_ids": np.asarray(block_ids)[lo:hi]})))
    return merge_results(results)
