"""Which code paths run: the CPU's or an accelerator's.

Some branches run only when `jax.default_backend() != "cpu"`: a chunk as one rolled loop
program instead of straight-line steps, the accelerator's strategy order, the wave plan's
device-memory budget, whole-batch peak finding. On a machine without an accelerator they
would never run in a test, so they can be forced on the CPU:

    ENSEMBLE_JAX_FORCE_ACCELERATOR_PATHS=1 python -m pytest ...   # whole process
    with backend.accelerator_paths():  ...                          # a block of code

The forced paths compute the same numbers as the CPU paths (tests/test_accelerator_paths.py);
only their speed differs (XLA:CPU runs convolutions inside loops on a slow path).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

ENV = "ENSEMBLE_JAX_FORCE_ACCELERATOR_PATHS"
_forced: bool | None = None     # set by `accelerator_paths`; None = the environment decides


def forced() -> bool:
    if _forced is not None:
        return _forced
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def path_backend() -> str:
    """jax.default_backend(), or "gpu" when the accelerator paths are forced on a CPU.
    Every branch between CPU-only and accelerator-only code asks this, not jax."""
    import jax
    name = jax.default_backend()
    return "gpu" if name == "cpu" and forced() else name


def is_accelerator() -> bool:
    return path_backend() != "cpu"


@contextlib.contextmanager
def accelerator_paths(on: bool = True) -> Iterator[None]:
    """Within the block, behave as on an accelerator (on=True) or as on this backend."""
    global _forced
    before = _forced
    _forced = on
    try:
        yield
    finally:
        _forced = before
