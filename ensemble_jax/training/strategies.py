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

A chunk is a run of compiled programs, each `steps_per_program` steps long (a rolled
`lax.scan` on accelerators; one straight-line step on CPU, see
`default_steps_per_program`), enqueued without host syncs; `auto`'s probe runs the very
programs the training then reuses.
`auto` times a few steps of each candidate on the current backend (the close contenders
twice, best timing counts) and caches the winner per backend and shapes in
~/.cache/ensemble_jax/strategies.json.
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
from ensemble_jax.training.config import STRATEGIES

tree_map = jax.tree_util.tree_map


def default_steps_per_program(backend: str, chunk_size: int) -> int:
    """XLA:CPU runs convolutions inside a while loop on a slow path (jax#12868: ~10x here),
    so on CPU a program holds one straight-line step and the host enqueues them
    asynchronously; accelerators get the whole chunk as one rolled `lax.scan`."""
    return 1 if backend == "cpu" else chunk_size


def _scan_steps(stepper: Callable, carry: Any, start, length: int, backend: str):
    if backend != "cpu":
        return jax.lax.scan(lambda c, i: stepper(c, start + i), carry,
                            jnp.arange(length, dtype=jnp.int32))
    # Straight-line steps: even a trip-count-1 scan keeps the slow while-loop path on CPU.
    losses = []
    for i in range(length):
        carry, loss = stepper(carry, start + i)
        losses.append(loss)
    return carry, jnp.stack(losses)


def vmapped_steps(member_step: Callable, length: int, backend: str) -> Callable:
    """(states, inputs, images, keypoints, start) -> (states, losses [length, M]): every
    member stacked on axis 0 stepped `length` times by one vmapped step."""
    vstep = jax.vmap(member_step, in_axes=(0, 0, None, None, None))

    def program(states, inputs, images, keypoints, start):
        return _scan_steps(lambda st, s: vstep(st, inputs, s, images, keypoints),
                           states, start, length, backend)
    return program


def unrolled_steps(member_step: Callable, group: int, length: int, backend: str) -> Callable:
    """Like `vmapped_steps` for `group` members stacked on axis 0, but each member's step
    traced on its own, one after the other (no grouped convolutions)."""
    def program(states, inputs, images, keypoints, start):
        members = tuple(tree_map(lambda x: x[g], states) for g in range(group))
        ins = [tree_map(lambda x: x[g], inputs) for g in range(group)]

        def stepper(ms, s):
            outs = [member_step(ms[g], ins[g], s, images, keypoints) for g in range(group)]
            return tuple(o[0] for o in outs), jnp.stack([o[1] for o in outs])

        ms, losses = _scan_steps(stepper, members, start, length, backend)
        return tree_map(lambda *xs: jnp.stack(xs), *ms), losses
    return program


class ChunkRunner:
    """runner(states, inputs, images, keypoints, start_step, n_steps) -> (states, losses
    float32 [n_steps, M]); `states`/`inputs` stacked on [M]. A chunk is a sequence of
    compiled programs of `steps_per_program` steps, enqueued without a host sync; the
    losses are fetched once, at the end of the chunk."""

    name: str

    def __init__(self, steps_per_program: int):
        self.steps_per_program = steps_per_program
        self.backend = jax.default_backend()
        self._programs: dict[int, Callable] = {}

    def _program(self, length: int) -> Callable:
        if length not in self._programs:
            self._programs[length] = self._build(length)
        return self._programs[length]

    def _build(self, length: int) -> Callable:
        raise NotImplementedError

    def _run(self, states, inputs, images, keypoints, start: int, n_steps: int):
        losses = []
        done = 0
        while done < n_steps:
            length = min(self.steps_per_program, n_steps - done)
            states, loss = self._program(length)(states, inputs, images, keypoints,
                                                 jnp.int32(start + done))
            losses.append(loss)
            done += length
        return states, np.concatenate([np.asarray(l) for l in losses])


class VmapRunner(ChunkRunner):
    def __init__(self, member_step: Callable, steps_per_program: int, name: str = "vmap"):
        super().__init__(steps_per_program)
        self.member_step, self.name = member_step, name

    def _build(self, length: int) -> Callable:
        return jax.jit(vmapped_steps(self.member_step, length, self.backend))

    def __call__(self, states, inputs, images, keypoints, start, n_steps):
        return self._run(states, inputs, images, keypoints, start, n_steps)


class GroupRunner(ChunkRunner):
    """Members in groups of `group` traced one after the other in one program; the groups
    are run one after the other from Python. group=1 is the sequential reference loop."""

    def __init__(self, member_step: Callable, steps_per_program: int, group: int, name: str):
        super().__init__(steps_per_program)
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
                members_per_program: int) -> ChunkRunner:
    if name in VMAP_STRATEGIES:
        return VmapRunner(member_step, steps_per_program, name)
    if name == "unrolled":
        return GroupRunner(member_step, steps_per_program,
                           group_size(n_members, members_per_program), "unrolled")
    if name == "sequential":
        return GroupRunner(member_step, steps_per_program, 1, "sequential")
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


# `auto` times again every candidate within this factor of the fastest first timing.
RETIME_WITHIN = 1.3


def _cache_path() -> Path:
    root = os.environ.get("ENSEMBLE_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ensemble_jax")
    return Path(root) / "strategies.json"


def cache_key(**facts: Any) -> str:
    dev = jax.devices()[0]
    facts = dict(facts, backend=jax.default_backend(), device=dev.device_kind,
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
    """Compiles and runs one program, then times another. Results are discarded: the
    functions are pure, so the probe leaves the real training state untouched."""
    probe_steps = max(probe_steps, runner.steps_per_program)
    t0 = time.perf_counter()
    out, _ = runner(states, inputs, images, keypoints, 0, runner.steps_per_program)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out, _ = runner(states, inputs, images, keypoints, 0, probe_steps)
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - t0) / probe_steps
    return {"compile_s": compile_s, "step_s": step_s}
