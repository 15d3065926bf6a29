"""Training throughput of each member-parallel strategy vs the single-member loop.

For each ensemble size N, every strategy trains the same N members (default network,
64x64x3 synthetic frames, batch 16) for a few steps after compiling; the table gives
images/s, model FLOP/s (XLA's own count of one member step) and, in the same run, the
JAX matmul ceiling (float32 and bfloat16) of this device. 'sequential' is the reference
loop: one single-member jitted step per member per step, as when shuffles are trained one
at a time. 'auto' is what `strategy="auto"` picks: the fastest measured.

    python benchmarks/train_throughput.py                 # N = 1, 4, 16, 32, 64
    python benchmarks/train_throughput.py --quick         # N = 1, 4; seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble_jax import io as eio  # noqa: E402
from ensemble_jax import ModelConfig, TrainConfig, synthetic_dataset  # noqa: E402
from ensemble_jax.subsets import random_subsets  # noqa: E402
from ensemble_jax.training import strategies  # noqa: E402
from ensemble_jax.training.trainer import EnsembleTrainer  # noqa: E402


def matmul_ceiling(dtype, n: int = 2048, reps: int = 5) -> float:
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def member_step_flops(setup) -> float:
    st = jax.tree_util.tree_map(lambda x: x[0], setup.states)
    ins = jax.tree_util.tree_map(lambda x: x[0], setup.inputs)
    compiled = jax.jit(setup.member_step).lower(st, ins, jnp.int32(0), setup.images,
                                                setup.keypoints).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="1,4,16,32,64")
    p.add_argument("--strategies", default="sequential,unrolled,vmap")
    p.add_argument("--steps", type=int, default=3, help="timed steps after compiling")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--members-per-program", type=int, default=None,
                   help="'unrolled': members traced into one program (default: TrainConfig's)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/out/train_throughput.json")
    args = p.parse_args()
    members = [1, 4] if args.quick else [int(x) for x in args.members.split(",")]
    names = args.strategies.split(",")
    data = synthetic_dataset(256, image_size=args.image_size, seed=0)
    model_cfg = ModelConfig()
    train_cfg = TrainConfig(batch_size=args.batch_size, steps=1000)
    if args.members_per_program:
        train_cfg = dataclasses.replace(train_cfg, members_per_program=args.members_per_program)
    spp = strategies.default_steps_per_program(jax.default_backend(), train_cfg.chunk_size)
    ceil32 = matmul_ceiling(jnp.float32)
    ceil16 = matmul_ceiling(jnp.bfloat16)
    rows = []
    flops = None
    for n in members:
        masks = random_subsets(data.n_frames, n, 0.5, seed=0, allow_duplicates=True)
        trainer = EnsembleTrainer(model_cfg, train_cfg)
        setup = trainer.setup(data, masks.astype(np.int32), np.arange(n), np.ones(n))
        if flops is None:
            flops = member_step_flops(setup)
        row = {"members": n}
        for name in names:
            if n == 1 and name != "sequential":
                continue  # one member: every strategy is the same program
            runner = strategies.make_runner(name, setup.member_step, spp, n,
                                            train_cfg.members_per_program)
            m = strategies.measure(runner, setup.states, setup.inputs, setup.images,
                                   setup.keypoints, probe_steps=args.steps)
            ips = n * args.batch_size / m["step_s"]
            row[name] = {"images_per_s": ips, "compile_s": m["compile_s"],
                         "model_flops_per_s": flops * n / m["step_s"]}
            print(f"  N={n:3d} {name:>10}: {ips:8.1f} img/s (compile {m['compile_s']:.1f} s)",
                  flush=True)
        measured = {k: v for k, v in row.items() if isinstance(v, dict)}
        best = max(measured, key=lambda k: measured[k]["images_per_s"])
        row["auto"] = {"chosen": best, **measured[best]}
        row["auto_vs_sequential"] = measured[best]["images_per_s"] / measured["sequential"]["images_per_s"]
        rows.append(row)

    print()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"image {args.image_size}x{args.image_size}x3, batch {args.batch_size}, "
          f"{flops / 1e6:.0f} MFLOP per member step, 'unrolled' traces "
          f"{train_cfg.members_per_program} members per program")
    print(f"matmul ceiling: float32 {ceil32 / 1e9:.1f} GFLOP/s, bfloat16 {ceil16 / 1e9:.1f} GFLOP/s")
    head = f"{'N':>4} " + " ".join(f"{n + ' img/s':>17}" for n in names) + \
        f" {'auto':>12} {'auto/seq':>9} {'GFLOP/s':>8} {'% f32 ceil':>10}"
    print(head)
    for r in rows:
        cells = " ".join(f"{r[n]['images_per_s']:17.1f}" if n in r else f"{'-':>17}" for n in names)
        a = r["auto"]
        print(f"{r['members']:4d} {cells} {a['chosen']:>12} {r['auto_vs_sequential']:9.2f} "
              f"{a['model_flops_per_s'] / 1e9:8.2f} {100 * a['model_flops_per_s'] / ceil32:10.1f}")
    result = {
        "benchmark": "train_throughput", "date": time.strftime("%Y-%m-%d"),
        "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
        "jax": jax.__version__, "python": platform.python_version(),
        "image_size": args.image_size, "batch_size": args.batch_size,
        "model": dataclasses.asdict(model_cfg), "flops_per_member_step": flops,
        "matmul_ceiling_flops": {"float32": ceil32, "bfloat16": ceil16},
        "steps_per_program": spp, "members_per_program": train_cfg.members_per_program,
        "rows": rows,
    }
    eio.write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
