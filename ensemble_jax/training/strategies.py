"""Member-parallel strategies: how M members' steps become XLA programs.

Every strategy runs the same per-member step (`step.make_member_step`) and returns the same
stacked state, so they agree to float tolerance and can be swapped freely:

  vmap        one program; `jax.vmap` over members. Convolutions whose kernels carry the
              member axis lower to grouped convolutions: fast on some GPUs, slow on CPU.
  vmap_matmul the same with the network's convolutions written as matrix products of
              shifted copies (ModelConfig.conv_impl="matmul"): under vmap, batched matrix
              products instead of grouped convolutions (more memory: 9 copies per 3x3).
              The caller passes the member step of that network.
  unrolled    one program per group of `ExecConfig.members_per_program` members, traced in
              turn (no grouped convs); XLA schedules the independent members together.
  sequential  the reference loop: one single-member program, called for each member.

A chunk is a run of compiled programs of at most `steps_per_program` steps (on
accelerators one rolled loop whose step count is a run-time argument, so one program
serves every chunk length; on CPU one straight-line step, see
`default_steps_per_program`), enqueued without host syncs; `auto`'s probe runs the very
programs the training then reuses and never compiles one twice.
`auto` times a few steps of each candidate on the current backend (the close contenders
twice, best timing counts; at most 8% of the training steps at the defaults), skips a candidate
that fails to build, compile or run (out of memory, say) with a one-line reason, and
caches the winner per backend and shapes in ~/.cache/ensemble_jax/strategies.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ensemble_jax import io as eio
from ensemble_jax.models.heatmap_net import ModelConfig
from ensemble_jax.training import errors, sharding
from ensemble_jax.training.backend import path_backend
from ensemble_jax.training.config import STRATEGIES
from ensemble_jax import logs

tree_map = jax.tree_util.tree_map


def default_steps_per_program(backend: str, chunk_size: int) -> int:
    """XLA:CPU runs convolutions inside a while loop on a slow path (jax#12868: ~10x here),
    so on CPU a program holds one straight-line step and the host enqueues them
    asynchronously; accelerators get the whole chunk as one rolled loop."""
    return 1 if backend == "cpu" else chunk_size


def rolled(backend: str) -> bool:
    """Whether programs are rolled loops with a run-time step count (accelerators) or
    straight-line steps of a fixed count (CPU)."""
    return backend != "cpu"


def _loop_steps(stepper: Callable, carry: Any, start, n, length: int, backend: str):
    """(carry, losses [length, ...]). Rolled: a loop of `n` steps (n <= length, a run-time
    value), so one compiled program serves every chunk length up to `length` (a short last
    chunk, a checkpoint boundary, a 1-step probe); rows past n stay NaN. Straight-line:
    exactly `length` steps, n ignored."""
    if rolled(backend):
        loss_like = jax.eval_shape(stepper, carry, start)[1]
        losses = jnp.full((length,) + loss_like.shape, jnp.nan, loss_like.dtype)

        def body(i, val):
            c, ls = val
            c, loss = stepper(c, start + i)
            return c, jax.lax.dynamic_update_index_in_dim(ls, loss, i, 0)
        return jax.lax.fori_loop(0, jnp.minimum(n, length), body, (carry, losses))
    # Straight-line steps: even a trip-count-1 loop keeps the slow while-loop path on CPU.
    losses = []
    for i in range(length):
        carry, loss = stepper(carry, start + i)
        losses.append(loss)
    return carry, jnp.stack(losses)


def vmapped_steps(member_step: Callable, length: int, backend: str) -> Callable:
    """(states, inputs, images, keypoints, start, n) -> (states, losses [length, M]):
    every member stacked on axis 0 stepped (`_loop_steps`) by one vmapped step."""
    vstep = jax.vmap(member_step, in_axes=(0, 0, None, None, None))

    def chunk_program(states, inputs, images, keypoints, start, n):
        return _loop_steps(lambda st, s: vstep(st, inputs, s, images, keypoints),
                           states, start, n, length, backend)
    return chunk_program


def unrolled_steps(member_step: Callable, group: int, length: int, backend: str) -> Callable:
    """Like `vmapped_steps` for `group` members stacked on axis 0, but each member's step
    traced on its own, one after the other (no grouped convolutions)."""
    def chunk_program(states, inputs, images, keypoints, start, n):
        members = tuple(tree_map(lambda x: x[g], states) for g in range(group))
        ins = [tree_map(lambda x: x[g], inputs) for g in range(group)]

        def stepper(ms, s):
            outs = [member_step(ms[g], ins[g], s, images, keypoints) for g in range(group)]
            return tuple(o[0] for o in outs), jnp.stack([o[1] for o in outs])

        ms, losses = _loop_steps(stepper, members, start, n, length, backend)
        return tree_map(lambda *xs: jnp.stack(xs), *ms), losses
    return chunk_program


@dataclasses.dataclass(frozen=True)
class Strategy:
    """What a strategy is, as data: how a device's `local` members are grouped into one
    program (`group`), how a group's members are traced in it (`traced`: one vmapped step
    or each member's step one after the other), and the network form it trains
    (`conv_impl`, None = as configured)."""
    name: str
    grouping: str               # "all": every local member; "program": members_per_program;
                                # "one": a single member
    traced: str                 # "vmap" | "unrolled"
    conv_impl: str | None = None

    def group(self, local: int, members_per_program: int) -> int:
        if self.grouping == "all":
            return local
        if self.grouping == "one":
            return 1
        return group_size(local, members_per_program)

    def body(self, member_step: Callable, group: int, length: int, backend: str) -> Callable:
        if self.traced == "vmap":
            return vmapped_steps(member_step, length, backend)
        return unrolled_steps(member_step, group, length, backend)

    def model_config(self, model_config: ModelConfig) -> ModelConfig:
        """The network it trains: the same function (same parameters) in its form."""
        if self.conv_impl is None:
            return model_config
        return dataclasses.replace(model_config, conv_impl=self.conv_impl)


# Every strategy. Process 0 tells the others its choice by index in ALL (this order).
REGISTRY = {s.name: s for s in (
    Strategy("vmap", "all", "vmap"),
    Strategy("vmap_matmul", "all", "vmap", conv_impl="matmul"),
    Strategy("unrolled", "program", "unrolled"),
    Strategy("sequential", "one", "unrolled"),
)}
ALL = tuple(REGISTRY)
assert ALL == tuple(s for s in STRATEGIES if s != "auto")


def get(name: str) -> Strategy:
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(ALL)}, auto")
    return REGISTRY[name]


def group_size(n_members: int, members_per_program: int) -> int:
    """Even groups: 25 members with at most 16 per program -> 2 groups of 13 (1 padded)."""
    n_groups = math.ceil(n_members / max(1, members_per_program))
    return math.ceil(n_members / n_groups)


def candidates(backend: str, n_members: int) -> list[str]:
    """Most promising first (the order only matters for ties)."""
    if n_members == 1:
        return ["sequential"]
    if backend == "cpu":
        return ["unrolled", "sequential", "vmap", "vmap_matmul"]
    return ["vmap", "vmap_matmul", "unrolled", "sequential"]


class Runner:
    """runner(states, inputs, images, keypoints, start_step, n_steps) -> (states, losses
    float32 [n_steps, M]) for `strategy` over members stacked on [M] (with a `mesh`: M
    padded to a multiple of its devices, device d holding the block [d*L, (d+1)*L)).

    Each device's L local members run in groups of G (`Strategy.group`); the host takes a
    group out of the states, enqueues its programs of at most `steps_per_program` steps
    without a sync, and puts it back (a last group that would run past L wraps around and
    its extra members are not written back). With G = L the states go straight in. One
    device and several run the same code: with a mesh every piece is a `jax.shard_map`
    over the `members` axis. Losses are fetched once, at the end of the chunk.

    Programs are compiled once per `program_length` (rolled: one length for every chunk;
    straight-line: one per distinct step count) and counted in `compiles`."""

    def __init__(self, strategy: Strategy, member_step: Callable, steps_per_program: int,
                 n_members: int, members_per_program: int, mesh: Any = None,
                 backend: str | None = None):
        self.strategy, self.name, self.member_step = strategy, strategy.name, member_step
        self.steps_per_program = steps_per_program
        self.backend = backend or path_backend()
        self.mesh, self.n_members = mesh, n_members
        self.devices = 1 if mesh is None else int(mesh.devices.size)
        if n_members % self.devices:
            raise ValueError(f"{n_members} members do not divide over {self.devices} devices "
                             "(pad them with sharding.pad_members)")
        self.local = n_members // self.devices
        self.group = strategy.group(self.local, members_per_program)
        self._programs: dict[int, Callable] = {}
        self.compiles = 0        # programs built (each jit-compiled on its first call)
        g, local = self.group, self.local

        def take(tree, lo):
            idx = (lo + jnp.arange(g)) % local
            return tree_map(lambda x: x[idx], tree)

        def put(tree, sub, lo):
            idx = (lo + jnp.arange(g)) % local
            keep = jnp.arange(g) < (local - lo)

            def one(x, y):
                k = keep.reshape((g,) + (1,) * (y.ndim - 1))
                return x.at[idx].set(jnp.where(k, y, x[idx]))
            return tree_map(one, tree, sub)
        self._take = self._compile(take, 1, 1)
        self._put = self._compile(put, 2, 1)

    def _compile(self, f: Callable, n_member_args: int, n_shared_args: int,
                 losses_out: bool = False) -> Callable:
        """jit(f); with a mesh, f runs on each device's block (shard_map over `members`)."""
        if self.mesh is None:
            return jax.jit(f)
        from jax.sharding import PartitionSpec as P
        axis = self.mesh.axis_names[0]
        out = (P(axis), P(None, axis)) if losses_out else P(axis)
        return jax.jit(jax.shard_map(
            f, mesh=self.mesh, in_specs=(P(axis),) * n_member_args + (P(),) * n_shared_args,
            out_specs=out, check_vma=False))

    def program_length(self, n_steps: int) -> int:
        """The compiled length that runs `n_steps` (<= steps_per_program) steps."""
        return self.steps_per_program if rolled(self.backend) else n_steps

    def probe_steps(self, timed: int) -> tuple[int, int]:
        """(warm-up steps, timed steps) for `measure`: rolled, 1 step compiles the program
        and `timed` steps time it; straight-line, whole programs of the length training
        runs, so the probe compiles nothing training will not reuse."""
        if rolled(self.backend):
            return 1, timed
        spp = self.steps_per_program
        return spp, spp * max(1, math.ceil(timed / spp))

    def _program(self, length: int) -> Callable:
        if length not in self._programs:
            chunk_program = self.strategy.body(self.member_step, self.group, length,
                                               self.backend)
            self._programs[length] = self._compile(chunk_program, 2, 4, losses_out=True)
            self.compiles += 1
        return self._programs[length]

    def __call__(self, states, inputs, images, keypoints, start: int, n_steps: int):
        g, local, d = self.group, self.local, self.devices
        pieces = []   # (lo, step offset, steps, losses [program length, d*g])
        for lo in range(0, local, g):
            whole = g == local
            st = states if whole else self._take(states, jnp.int32(lo))
            ins = inputs if whole else self._take(inputs, jnp.int32(lo))
            done = 0
            while done < n_steps:
                n = min(self.steps_per_program, n_steps - done)
                st, loss = self._program(self.program_length(n))(
                    st, ins, images, keypoints, jnp.int32(start + done), jnp.int32(n))
                pieces.append((lo, done, n, loss))
                done += n
            states = st if whole else self._put(states, st, jnp.int32(lo))
        fetched = sharding.to_host([p[3] for p in pieces])
        out = np.full((n_steps, self.n_members), np.nan, np.float32)
        for (lo, off, n, _), loss in zip(pieces, fetched):
            loss = np.asarray(loss)[:n].reshape(n, d, g)
            keep = min(g, local - lo)
            for j in range(keep):
                out[off:off + n, np.arange(d) * local + lo + j] = loss[:, :, j]
        return states, out


class NoStrategyError(ValueError):
    """Every candidate of `auto` failed to build, compile or run (one line per reason)."""


# `auto` times again every candidate within this factor of the fastest first timing.
RETIME_WITHIN = 1.3


def _cache_path() -> Path:
    root = os.environ.get("ENSEMBLE_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ensemble_jax")
    return Path(root) / "strategies.json"


def cache_key(**facts: Any) -> str:
    dev = jax.devices()[0]
    facts = dict(facts, backend=jax.default_backend(), paths=path_backend(),
                 device=dev.device_kind,
                 n_devices=jax.local_device_count(), jax=jax.__version__)
    blob = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load_cached(key: str) -> dict | None:
    try:
        return json.loads(_cache_path().read_text()).get(key)
    except (OSError, ValueError):
        return None


def store_cached(key: str, entry: dict) -> None:
    path = _cache_path()
    try:
        table = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        table = {}
    table[key] = entry
    try:
        eio.write_json(path, table)
    except OSError:
        pass  # a read-only home is no reason to fail a run


def measure(runner: Runner, states, inputs, images, keypoints, *, probe_steps: int = 3
            ) -> dict:
    """Compiles the program training will run (`runner.probe_steps`: one step of the rolled
    loop, or whole straight-line programs), then times `probe_steps` steps of it. Results
    are discarded: the functions are pure, so the probe leaves the training state
    untouched. "steps" in the result counts every ensemble step the probe ran."""
    warm, timed = runner.probe_steps(probe_steps)
    t0 = time.perf_counter()
    out, _ = runner(states, inputs, images, keypoints, 0, warm)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    del out
    t0 = time.perf_counter()
    out, _ = runner(states, inputs, images, keypoints, 0, timed)
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - t0) / timed
    return {"compile_s": compile_s, "step_s": step_s, "steps": warm + timed}


def timed_probe_steps(train_steps: int, n_candidates: int, most: int = 3) -> int:
    """Timed steps per candidate so that the whole probe (1 warm-up + the timed steps per
    measurement; the close contenders measured twice) stays within 10% of `train_steps`:
    3 at the defaults (400 steps, 4 candidates: at most 4 x 2 x (1 + 3) = 32 probe steps,
    8%); 1 for short runs, where no probe can be a small share."""
    per = (train_steps // 10) // max(1, n_candidates)
    return int(max(1, min(most, per // 2 - 1)))


def autotune(make: Callable[[str], Runner], names: list[str], cache_facts: dict,
             probe: tuple, train_steps: int, images_per_step: int,
             over_budget: Callable[[str], str | None] | None = None
             ) -> tuple[Runner, dict]:
    """strategy='auto': the fastest of `names` (runners built by `make`), measured on the
    `probe` arguments (states, inputs, images, keypoints; left untouched) or taken from
    the cache under `cache_facts`. `over_budget(name)`: why a candidate's estimated peak
    does not fit the memory budget (it is skipped without being compiled), or None.
    Returns (runner, what was measured and how)."""
    paths = path_backend()
    key = cache_key(**cache_facts)
    cached = load_cached(key)
    too_big = {name: over_budget(name) for name in names} if over_budget else {}
    too_big = {name: why for name, why in too_big.items() if why}
    if cached and cached.get("chosen") in too_big:
        cached = None      # measured without a budget: measure again within this one
    # Every process must run the same programs: process 0's cache and choice decide.
    if sharding.agree(1 if cached else 0):
        chosen = ALL[sharding.agree(ALL.index(cached["chosen"]) if cached else 0)]
        logs.info(f"strategy: {chosen} (cached measurement for this backend and shapes"
                  + (", process 0's)" if jax.process_count() > 1 else ")"))
        return make(chosen), dict(cached or {}, chosen=chosen, how="cached")
    timed = timed_probe_steps(train_steps, len(names))
    table, runners, failed = {}, {}, {}
    probe_steps = 0

    def attempt(name: str) -> dict | None:
        """One measurement; a candidate that cannot be built, compiled or run (out of
        device memory, a compiler failure) is skipped with its reason."""
        if name in too_big:
            failed[name] = too_big[name]
            logs.info(f"strategy probe {name:>11}: skipped, {too_big[name]}")
            return None
        try:
            if name not in runners:
                runners[name] = make(name)
            return measure(runners[name], *probe, probe_steps=timed)
        except Exception as e:   # noqa: BLE001 - any failure disqualifies a candidate
            failed[name] = errors.one_line(e)
            kind = "out of memory" if errors.is_resource_error(e) else "failed"
            logs.info(f"strategy probe {name:>11}: skipped, {kind}: {failed[name]}")
            table.pop(name, None)
            return None

    for name in names:
        got = attempt(name)
        if got is None:
            continue
        table[name] = got
        probe_steps += got["steps"]
        logs.info(f"strategy probe {name:>11}: {images_per_step / got['step_s']:8.0f}"
                  f" img/s (compile {got['compile_s']:.1f} s)")
    # A candidate that failed on any process is out everywhere (all run the same one).
    for name, bad in zip(names, sharding.any_process([n in failed for n in names])):
        if bad and name not in failed:
            failed[name] = "failed on another process"
            table.pop(name, None)
    if not table:
        raise NoStrategyError(
            "strategy auto: every candidate failed (" + "; ".join(
                f"{k}: {v}" for k, v in failed.items()) + "); lower --batch-size, the "
            "members per wave (--members-per-wave) or --image-size"
            + (", or raise --memory-budget" if too_big else ""))
    # A second timing of the close contenders (programs already compiled): one short
    # timing on a shared machine can be 20% off, more than the gaps between them.
    fastest = min(t["step_s"] for t in table.values())
    for name in list(table):
        if len(table) > 1 and table[name]["step_s"] < RETIME_WITHIN * fastest:
            again = attempt(name)
            if again is not None:
                table[name]["step_s"] = min(table[name]["step_s"], again["step_s"])
                probe_steps += again["steps"]
    for name in table:
        table[name]["images_per_s"] = images_per_step / table[name]["step_s"]
    chosen = min(table, key=lambda k: table[k]["step_s"])
    chosen = names[sharding.agree(names.index(chosen))]
    entry = {"chosen": chosen, "table": table, "probe_steps": probe_steps}
    if failed:
        entry["failed"] = failed
    if sharding.is_primary():
        store_cached(key, entry)
    logs.info(f"strategy: {chosen} (fastest measured on {paths}: " + ", ".join(
              f"{k} {v['images_per_s']:.0f}" for k, v in table.items()) + " img/s"
              + (f"; skipped {', '.join(failed)}" if failed else "") + ")")
    return make(chosen), dict(entry, how="measured")
