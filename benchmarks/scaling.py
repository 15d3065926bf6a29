"""Scale-out: members trained per second vs number of devices.

For each device count D, a fresh process (so that `--xla_force_host_platform_device_count`
can be set on CPU before jax starts) shards N members over a mesh of D devices
(`ensemble_jax.training.sharding`), compiles, then times `--steps` training steps. The table
gives member-steps/s (members x steps / s), images/s, and the largest relative parameter
difference against the D=1 run (correctness: it must stay ~1e-6).

On CPU the devices are *fake* (`--xla_force_host_platform_device_count`): they share the
same cores, so the speed columns say nothing about real scaling; the output says so.
On a machine with several GPUs the same script measures real devices (D up to the count).

    python benchmarks/scaling.py                 # D = 1, 2, 4, 8; 16 members
    python benchmarks/scaling.py --quick         # D = 1, 2; 4 members, 2 timed steps
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ensemble_jax.training.config import STRATEGIES  # noqa: E402  (no JAX backend starts)


def devices_for(d: int, backend: str, local_devices: list) -> tuple[list | None, str | None]:
    """(the devices of a D-device row, None) or (None, why the row cannot be measured).
    On CPU the parent made D fake devices; elsewhere only real ones count, and a machine
    with fewer than D must not report a D-device row (jax.local_devices()[:D] would
    silently give fewer)."""
    if d < 1:
        return None, f"D={d}: not a device count"
    if len(local_devices) < d:
        return None, (f"D={d}: skipped, this machine has {len(local_devices)} {backend} "
                      f"device(s)")
    return list(local_devices[:d]), None


def worker(args) -> None:
    import jax
    import numpy as np
    from ensemble_jax import (EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig,
                              synthetic_dataset)
    from ensemble_jax.subsets import random_subsets
    from ensemble_jax.training import sharding

    d = int(args.worker)
    data = synthetic_dataset(64, image_size=args.image_size, seed=0)
    masks = random_subsets(data.n_frames, args.members, 0.5, seed=0)
    model = ModelConfig(widths=tuple(args.widths), head_width=args.widths[0] * 2)
    backend = jax.default_backend()
    devices, why = devices_for(d, backend, jax.local_devices())
    if devices is None:
        print(json.dumps({"devices": d, "backend": backend, "skipped": why}))
        return
    mesh = sharding.make_mesh(devices=devices) if d > 1 else None
    tc = TrainConfig(steps=args.steps + 1, batch_size=args.batch_size, schedule="constant")
    trainer = EnsembleTrainer(model, tc, ExecConfig(chunk_size=1, strategy=args.strategy))
    # Compile + 1 step, then the timed steps: fit() reports its own train_s, but the
    # first chunk includes compilation, so time a second fit that reuses the programs.
    t0 = time.perf_counter()
    trainer.fit(data, masks, progress=False, mesh=mesh, stop_after=1)
    compile_s = time.perf_counter() - t0
    res = trainer.fit(data, masks, progress=False, mesh=mesh)
    # steps_run includes one step already compiled; train_s covers all of them
    train_s = res.timing["train_s"]
    steps = res.timing["steps_run"]
    flat = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(res.params)])
    np.save(args.params_out, flat)
    print(json.dumps({
        "devices": d, "backend": backend, "device_kind": jax.devices()[0].device_kind,
        "fake_devices": backend == "cpu" and d > 1, "members": args.members,
        "strategy": res.strategy, "steps": steps, "train_s": train_s,
        "member_steps_per_s": args.members * steps / train_s,
        "images_per_s": args.members * steps * args.batch_size / train_s,
        "setup_and_compile_s": compile_s}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default=None, help="comma-separated device counts")
    p.add_argument("--members", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--widths", default="8,16,32")
    p.add_argument("--strategy", default="unrolled",
                   choices=STRATEGIES)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/out/scaling.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--params-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.widths = [int(w) for w in str(args.widths).split(",")]
    if args.members is None:
        args.members = 4 if args.quick else 16
    if args.steps is None:
        args.steps = 2 if args.quick else 5
    if args.worker:
        return worker(args)

    import numpy as np
    from ensemble_jax import io as eio
    counts = [int(x) for x in (args.devices or ("1,2" if args.quick else "1,2,4,8")).split(",")]
    rows, skipped, ref = [], [], None
    tmp = ROOT / "benchmarks" / "out"
    tmp.mkdir(parents=True, exist_ok=True)
    for d in counts:
        env = dict(os.environ)
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={d}"])
        params_out = tmp / f".scaling_params_{d}.npy"
        cmd = [sys.executable, __file__, "--worker", str(d), "--params-out", str(params_out),
               "--members", str(args.members), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
               "--widths", ",".join(map(str, args.widths)), "--strategy", args.strategy]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"D={d}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        if row.get("skipped"):
            print(row["skipped"], flush=True)
            skipped.append(row)
            continue
        flat = np.load(params_out)
        params_out.unlink()
        ref = flat if ref is None else ref
        row["rel_param_diff_vs_first"] = float(np.linalg.norm(flat - ref) / np.linalg.norm(ref))
        rows.append(row)
        print(f"D={d:2d} done: {row['member_steps_per_s']:.1f} member-steps/s", flush=True)
    fake = any(r["fake_devices"] for r in rows)
    print()
    if fake:
        print("NOTE: fake CPU devices (--xla_force_host_platform_device_count) share the same "
              f"{os.cpu_count()} cores: these rows show correctness only, not scaling.")
    if not rows:
        print("no device count could be measured")
    print(f"{'devices':>7} {'backend':>8} {'members':>7} {'strategy':>10} "
          f"{'member-steps/s':>15} {'images/s':>9} {'compile s':>9} {'rel diff vs D=' + str(counts[0]):>16}")
    for r in rows:
        print(f"{r['devices']:7d} {r['backend']:>8} {r['members']:7d} {r['strategy']:>10} "
              f"{r['member_steps_per_s']:15.2f} {r['images_per_s']:9.1f} "
              f"{r['setup_and_compile_s']:9.1f} {r['rel_param_diff_vs_first']:16.2e}")
    result = {"benchmark": "scaling", "fake_cpu_devices": fake,
              "note": ("fake CPU devices share the host's cores: correctness only, not speed"
                       if fake else "real devices"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "python": platform.python_version()},
              "settings": {k: v for k, v in vars(args).items()
                           if k not in ("worker", "params_out")},
              "rows": rows, "skipped": skipped}
    eio.write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
