"""What the device machine has: Python, the package's imports, jax and its devices, flax
and PyTorch. The first step of benchmarks/device_check.sh; exit 1 if jax is missing.

Written to run under any Python >= 3.11 and with `python -S` (no site hooks): it imports
`importlib.util` itself (under 3.12, or without site, `import importlib` alone does not
make `importlib.util` available)."""
import importlib.util
import platform
import sys

NEEDED = ("jax", "flax", "optax", "orbax.checkpoint", "chex", "numpy", "matplotlib", "tqdm",
          "torch")


def main() -> int:
    missing = [m for m in NEEDED if importlib.util.find_spec(m.split(".")[0]) is None]
    print("python", platform.python_version(), "| missing:", ", ".join(missing) or "nothing",
          flush=True)
    if "jax" in missing:
        return 1
    import jax
    print("jax", jax.__version__, "| backend", jax.default_backend(), "|", jax.devices(),
          flush=True)
    for name in ("flax", "torch"):
        try:
            mod = __import__(name)
            extra = (f" | cuda {mod.cuda.is_available()}" if name == "torch" else "")
            print(f"{name} {mod.__version__}{extra}", flush=True)
        except ImportError as e:
            print(f"{name}: not importable ({e})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
