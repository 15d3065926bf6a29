"""Reproducible results on accelerators (`--deterministic`, TrainConfig.deterministic).

On a CPU every program here is deterministic: the same seed gives the same bits. On GPUs
three things break that, and deterministic mode addresses each:

- XLA's GPU scatter-add applies duplicate indices in no fixed order (atomics); the AUM
  sums scatter a batch drawn with replacement. `scatter_add_once` first combines the
  duplicates in a fixed order, so every index receives exactly one non-zero addend and the
  order of the scatter no longer matters.
- float32 convolutions and matrix products run in TF32 by default on recent NVIDIA GPUs:
  the member step is traced with `jax.default_matmul_precision("highest")` (full float32).
- cuDNN / cuBLAS may pick algorithms that accumulate in a run-dependent order:
  `XLA_FLAGS=--xla_gpu_deterministic_ops=true` (set by `request_xla_flags` before the
  backend starts) makes XLA choose deterministic ones.

What this guarantees: the same command on the same machine, software and device count
gives bit-identical parameters, losses and AUM sums. It does not make a GPU's numbers equal
a CPU's, nor one GPU model's equal another's (different kernels), and it costs speed.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

XLA_FLAG = "--xla_gpu_deterministic_ops=true"


def backend_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except Exception:   # a private API: assume the worst
        return True


def request_xla_flags() -> str | None:
    """Adds XLA_FLAG to XLA_FLAGS if the backend has not started (it reads them once).
    Returns a warning when it is too late and the flag is not already set, else None."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" in flags:
        return None
    if backend_started():
        return (f"deterministic: the JAX backend already started, so {XLA_FLAG} cannot be "
                f"applied; set XLA_FLAGS={XLA_FLAG} before starting Python")
    os.environ["XLA_FLAGS"] = (flags + " " + XLA_FLAG).strip()
    return None


def set_highest_precision() -> None:
    """Full float32 matrix products and convolutions everywhere in this process (training
    traces its step under the same setting already; this covers prediction too)."""
    jax.config.update("jax_default_matmul_precision", "highest")


def duplicate_addends(idx: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
    """values [B, ...] with duplicate indices combined: position j holds the sum of the
    values of every position with index idx[j] if j is that index's first position, else
    exactly 0. Adding these with a scatter gives each index one non-zero addend, so the
    result does not depend on the order in which the scatter applies them."""
    b = idx.shape[0]
    same = idx[:, None] == idx[None, :]                                  # [B, B]
    earlier = jnp.arange(b)[None, :] < jnp.arange(b)[:, None]            # i < j at [j, i]
    first = ~jnp.any(same & earlier, axis=1)                             # [B]
    mask = same.reshape(same.shape + (1,) * (values.ndim - 1))
    # A fixed-shape reduction over the batch (no scatter, no atomics).
    totals = jnp.sum(jnp.where(mask, values[None], jnp.zeros_like(values[None])), axis=1)
    first = first.reshape((b,) + (1,) * (values.ndim - 1))
    return jnp.where(first, totals, jnp.zeros_like(totals))


def scatter_add_once(target: jnp.ndarray, idx: jnp.ndarray, values: jnp.ndarray
                     ) -> jnp.ndarray:
    """`target.at[idx].add(values)` that does not depend on the order in which the scatter
    applies its updates (`duplicate_addends`).

    target [n, ...], idx int [B], values [B, ...] -> [n, ...]."""
    return target.at[idx].add(duplicate_addends(idx, values))
