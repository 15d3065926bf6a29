"""The environment of a child Python process in the tests: N fake CPU devices (or the
backend's own count) and this checkout first on the path."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env(n_devices: int | None = None, **extra: str) -> dict:
    """os.environ with XLA's host device count set to `n_devices` (dropped when None),
    JAX_NUM_CPU_DEVICES removed (it would override the flag), the repo on PYTHONPATH, then
    `extra` on top."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if "xla_force_host_platform_device_count" not in f]
    if n_devices:
        flags.append(f"--xla_force_host_platform_device_count={n_devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env
