"""Member-parallel strategies: how M members' steps become XLA programs.

Every strategy runs the same per-member step (`step.make_member_step`) and returns the same
stacked state, so they agree to float tolerance and can be swapped freely:

  vmap        one program; `jax.vmap` over members. Convolutions whose kernels carry the
              member axis lower to grouped convolutions: fast on some GPUs, slow on CPU.
  vmap_matmul the same with the network's convolutions written as matrix products of
              shifted copies (ModelConfig.conv_impl="matmul"): under vmap, batched matrix
              products instead of grouped convolutions (more memory: 9 copies per 3x3).
              The caller passes the member step of that network.
  unrolled    one program per group of `members_per_program` members, traced one after the
              other (no grouped convs); XLA schedules the independent members together.
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
from ensemble_jax.training.backend import path_backend
from ensemble_jax.training.config import STRATEGIES

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


class ChunkRunner:
    """runner(states, inputs, images, keypoints, start_step, n_steps) -> (states, losses
    float32 [n_steps, M]); `states`/`inputs` stacked on [M]. A chunk is a sequence of
    compiled programs of at most `steps_per_program` steps, enqueued without a host sync;
    the losses are fetched once, at the end of the chunk.

    Programs are compiled once per `program_length` (rolled: one length for every chunk;
    straight-line: one per distinct step count) and counted in `compiles`."""

    name: str

    def __init__(self, steps_per_program: int, backend: str | None = None):
        self.steps_per_program = steps_per_program
        self.backend = backend or path_backend()
        self._programs: dict[int, Callable] = {}
        self.compiles = 0        # programs built (each jit-compiled on its first call)

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
            self._programs[length] = self._build(length)
            self.compiles += 1
        return self._programs[length]

    def _build(self, length: int) -> Callable:
        raise NotImplementedError

    def _run(self, states, inputs, images, keypoints, start: int, n_steps: int):
        losses = []
        done = 0
        while done < n_steps:
            n = min(self.steps_per_program, n_steps - done)
            states, loss = self._program(self.program_length(n))(
                states, inputs, images, keypoints, jnp.int32(start + done), jnp.int32(n))
            losses.append((loss, n))
            done += n
        return states, np.concatenate([np.asarray(l)[:n] for l, n in losses])


class VmapRunner(ChunkRunner):
    def __init__(self, member_step: Callable, steps_per_program: int, name: str = "vmap",
                 backend: str | None = None):
        super().__init__(steps_per_program, backend)
        self.member_step, self.name = member_step, name

    def _build(self, length: int) -> Callable:
        return jax.jit(vmapped_steps(self.member_step, length, self.backend))

    def __call__(self, states, inputs, images, keypoints, start, n_steps):
        return self._run(states, inputs, images, keypoints, start, n_steps)


class GroupRunner(ChunkRunner):
    """Members in groups of `group` traced one after the other in one program; the groups
    are run one after the other from Python. group=1 is the sequential reference loop."""

    def __init__(self, member_step: Callable, steps_per_program: int, group: int, name: str,
                 backend: str | None = None):
        super().__init__(steps_per_program, backend)
        self.member_step, self.group, self.name = member_step, group, name
        self._take = jax.jit(lambda tree, idx: tree_map(lambda x: x[idx], tree))
        self._put = jax.jit(lambda tree, sub, idx: tree_map(lambda x, y: x.at[idx].set(y),
                                                            tree, sub))

    def _build(self, length: int) -> Callable:
        return jax.jit(unrolled_steps(self.member_step, self.group, length, self.backend))

    def __call__(self, states, inputs, images, keypoints, start, n_steps):
        m = jax.tree_util.tree_leaves(inputs)[0].shape[0]
        g = self.group
        if g == m:
            return self._run(states, inputs, images, keypoints, start, n_steps)
        all_losses = np.full((n_steps, m), np.nan, np.float32)
        for lo in range(0, m, g):
            keep = min(g, m - lo)
            # A short last group is padded with other members; their results are dropped.
            idx = jnp.asarray((np.arange(g) + lo) % m, jnp.int32)
            out, losses = self._run(self._take(states, idx), self._take(inputs, idx),
                                    images, keypoints, start, n_steps)
            all_losses[:, lo:lo + keep] = losses[:, :keep]
            if keep < g:
                out = tree_map(lambda x: x[:keep], out)
            states = self._put(states, out, idx[:keep])
        return states, all_losses


def group_size(n_members: int, members_per_program: int) -> int:
    """Even groups: 25 members with at most 16 per program -> 2 groups of 13 (1 padded)."""
    n_groups = math.ceil(n_members / max(1, members_per_program))
    return math.ceil(n_members / n_groups)


def make_runner(name: str, member_step: Callable, steps_per_program: int, n_members: int,
                members_per_program: int, backend: str | None = None) -> ChunkRunner:
    if name in VMAP_STRATEGIES:
        return VmapRunner(member_step, steps_per_program, name, backend)
    if name == "unrolled":
        return GroupRunner(member_step, steps_per_program,
                           group_size(n_members, members_per_program), "unrolled", backend)
    if name == "sequential":
        return GroupRunner(member_step, steps_per_program, 1, "sequential", backend)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(ALL)}, auto")


# Every strategy; process 0 tells the others its choice by index in this tuple.
ALL = tuple(s for s in STRATEGIES if s != "auto")
VMAP_STRATEGIES = ("vmap", "vmap_matmul")


def model_config_for(name: str, model_config: ModelConfig) -> ModelConfig:
    """The network a strategy trains: 'vmap_matmul' computes the same network's
    convolutions as matrix products; every other strategy trains `model_config` as given."""
    if name == "vmap_matmul":
        return dataclasses.replace(model_config, conv_impl="matmul")
    return model_config


def candidates(backend: str, n_members: int) -> list[str]:
    """Most promising first (the order only matters for ties)."""
    if n_members == 1:
        return ["sequential"]
    if backend == "cpu":
        return ["unrolled", "sequential", "vmap", "vmap_matmul"]
    return ["vmap", "vmap_matmul", "unrolled", "sequential"]


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


def measure(runner: ChunkRunner, states, inputs, images, keypoints, *, probe_steps: int = 3
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
