"""CPU cores as JAX devices: the member-parallel layout that pays on a small CPU.

Measured on the 2-core CPU (benchmarks/RESULTS.md): one member's step keeps the cores only
partly busy (the loop runs ~1.45x its one-core speed), and no single XLA program of several
members does better (unrolled 1.01-1.20x the loop, vmap ~0.2x). Splitting the members over
one JAX CPU device per core, each device running the loop on its own block of members
(sharding.py), ran 1.37-1.49x the one-device loop: the two cores then work on two members
at once. Results do not depend on the device count (tests/test_scale_out.py).

JAX fixes the number of CPU devices when its backend starts, so this must run before any
JAX computation: the command line does it first thing; Python API users call
`use_cpu_cores()` right after importing, then pass `mesh=sharding.make_mesh()` to `fit`.
On a machine with an accelerator the CPU devices are not used for training.
"""
from __future__ import annotations

import os

# Past a few devices each one's share of the cores gets too small to run a step well; only
# 2 cores have been measured (2 devices best; 4 devices on 2 cores: 0.9x of 2 devices).
MAX_DEFAULT = 8
ENV = "ENSEMBLE_JAX_CPU_DEVICES"


def _user_set() -> bool:
    return ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
            or bool(os.environ.get("JAX_NUM_CPU_DEVICES")))


def default_count() -> int:
    """ENSEMBLE_JAX_CPU_DEVICES if set, else the cores this process may run on (at most 8)."""
    if os.environ.get(ENV):
        try:
            n = int(os.environ[ENV])
        except ValueError:
            raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected a positive integer")
        if n < 1:
            raise ValueError(f"{ENV}={n}: expected a positive integer")
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(int(cores or 1), MAX_DEFAULT))


def use_cpu_cores(n: int | None = None) -> int | None:
    """Ask JAX for `n` CPU devices (default: `default_count()`). Leaves alone a count the
    user set (XLA_FLAGS=--xla_force_host_platform_device_count, JAX_NUM_CPU_DEVICES) and a
    backend that has already started; starts nothing itself (so `jax.distributed` can
    still be initialised after it). Returns the count it set, or None where it left JAX
    alone."""
    import jax
    if n is not None and n < 1:
        raise ValueError(f"--cpu-devices: expected a positive integer, got {n}")
    if _user_set():
        return None
    want = default_count() if n is None else int(n)
    try:
        jax.config.update("jax_num_cpu_devices", want)
    except RuntimeError:   # backends already initialised: keep what there is
        return None
    return want
