"""Training throughput of each member-parallel strategy vs the single-member loop.

For each ensemble size N, every strategy trains the same N members (default network,
64x64x3 synthetic frames, batch 16) for `--steps` steps after compiling; the table gives
images/s, model FLOP/s (XLA's own count of one member step) and, in the same run, the
JAX matmul ceiling (float32 and bfloat16) of this device.

  sequential   the reference loop: one single-member jitted step per member per step, as
               when shuffles are trained one at a time.
  unrolled/gG  one program steps G members traced one after the other (--groups).
  vmap         one program, `jax.vmap` over members (grouped convolutions).
  vmap_matmul  the same, the convolutions written as matrix products (batched matmuls).
  cores/S      on a CPU with several cores: the members split over one JAX CPU device
               per core (training/cpu_cores.py), each device running strategy S on its
               own block, as `ensemble-jax sweep` trains on a CPU.
  auto         what `EnsembleTrainer` with strategy="auto" picks, by its own probe
               (run with an empty strategy cache), reusing the programs compiled above,
               in the layout the command line uses (over the cores where there are
               several); its images/s are this run's measurement of the strategy it picked.

Parallel headroom (CPU only): the same loop, pinned to one core in a subprocess. If
spreading members over C cores kept each core as efficient as the one-core run, the
best any member-parallel strategy could reach is C x (one-core img/s); the table prints
that bound as a ratio to the loop. A member's own step already uses several cores, so on
a small CPU the bound can be well under C.

    python benchmarks/train_throughput.py                       # N = 1, 4, 16, 32, 64
    python benchmarks/train_throughput.py --members 16 --groups 4,8,16 --steps 10
    python benchmarks/train_throughput.py --quick               # N = 1, 4; seconds

Augmentation's share of the step (`--augment-share`): the same members and strategy timed
with on-device augmentation (training/augment.py, the real-data default) and without, in
interleaved rounds; share = 1 - (step time without) / (step time with).

    python benchmarks/train_throughput.py --augment-share --members 4 --image-size 128
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def matmul_ceiling(dtype, n: int = 2048, reps: int = 5) -> float:
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def member_step_flops(setup) -> float:
    import jax
    import jax.numpy as jnp
    st = jax.tree_util.tree_map(lambda x: x[0], setup.states)
    ins = jax.tree_util.tree_map(lambda x: x[0], setup.inputs)
    compiled = jax.jit(setup.member_step).lower(st, ins, jnp.int32(0), setup.images,
                                                setup.keypoints).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def build(n: int, args, mesh=None, augment: bool = False):
    import numpy as np
    from ensemble_jax import ModelConfig, TrainConfig, synthetic_dataset
    from ensemble_jax.subsets import random_subsets
    from ensemble_jax.training.augment import AugmentConfig
    from ensemble_jax.training.trainer import EnsembleTrainer
    data = synthetic_dataset(256, image_size=args.image_size, seed=0)
    mc = ModelConfig(encoder=getattr(args, "model", "small"))
    trainer = EnsembleTrainer(mc, TrainConfig(batch_size=args.batch_size, steps=1000,
                                              augment=AugmentConfig(enabled=augment)))
    masks = random_subsets(data.n_frames, n, 0.5, seed=0, allow_duplicates=True)
    return trainer, trainer.setup(data, masks.astype(np.int32), np.arange(n), np.ones(n),
                                  mesh=mesh)


def one_core_loop(args) -> float | None:
    """img/s of the sequential loop (4 members) in a subprocess pinned to CPU 0."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cmd = [sys.executable, __file__, "--one-core-worker", "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--rounds", str(args.rounds), "--image-size", str(args.image_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def one_core_worker(args) -> None:
    os.sched_setaffinity(0, {0})   # before jax starts its thread pools
    from ensemble_jax.training import strategies
    trainer, s = build(4, args)
    runner = trainer.runner(s, "sequential", 1)
    best = min(strategies.measure(runner, s.states, s.inputs, s.images, s.keypoints,
                                  probe_steps=args.steps)["step_s"] for _ in range(args.rounds))
    print(4 * args.batch_size / best)


def augment_share(args) -> None:
    """Step time with and without augmentation, same members and strategy, interleaved."""
    import jax
    from ensemble_jax import io as eio
    from ensemble_jax.training import strategies
    backend = jax.default_backend()
    spp = strategies.default_steps_per_program(backend, 50)
    name = args.strategies.split(",")[0]
    rows = []
    for n in [int(x) for x in args.members.split(",")]:
        cols = {}
        for aug in (False, True):
            trainer, s = build(n, args, augment=aug)
            runner = trainer.runner(s, name, 4)
            t0 = time.perf_counter()
            jax.block_until_ready(runner(s.states, s.inputs, s.images, s.keypoints, 0, spp)[0])
            cols[aug] = (runner, s, [], time.perf_counter() - t0)
        for _ in range(args.rounds):
            for aug, (runner, s, times, _) in cols.items():
                t0 = time.perf_counter()
                out, _ = runner(s.states, s.inputs, s.images, s.keypoints, spp, args.steps)
                jax.block_until_ready(out)
                times.append((time.perf_counter() - t0) / args.steps)
        off, on = min(cols[False][2]), min(cols[True][2])
        row = {"members": n, "strategy": name, "step_s_off": off, "step_s_on": on,
               "rounds_off": cols[False][2], "rounds_on": cols[True][2],
               "augment_share": 1 - off / on}
        rows.append(row)
        print(f"N={n:3d} {name}: {n * args.batch_size / off:7.1f} img/s without, "
              f"{n * args.batch_size / on:7.1f} img/s with augmentation: share of the step "
              f"{100 * row['augment_share']:.1f}% (best of {args.rounds} rounds; rounds off "
              f"{', '.join(f'{t * 1e3:.0f}' for t in cols[False][2])} ms, on "
              f"{', '.join(f'{t * 1e3:.0f}' for t in cols[True][2])} ms)", flush=True)
    out = Path(args.out).with_name("augment_share.json")
    eio.write_json(out, {"benchmark": "augment_share", "date": time.strftime("%Y-%m-%d"),
                         "device": jax.devices()[0].device_kind, "backend": backend,
                         "model": args.model, "image_size": args.image_size,
                         "batch_size": args.batch_size, "steps": args.steps, "rows": rows})
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="1,4,16,32,64")
    p.add_argument("--strategies", default="sequential,unrolled,vmap,vmap_matmul")
    p.add_argument("--groups", default=None,
                   help="comma list of members per 'unrolled' program (default: ExecConfig's)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved timing rounds per strategy (best round counts)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--no-headroom", action="store_true", help="skip the one-core run")
    p.add_argument("--cores-strategies", default="sequential,unrolled",
                   help="strategies timed with the members split over the CPU's cores")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="benchmarks/out/train_throughput.json")
    p.add_argument("--one-core-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--augment-share", action="store_true",
                   help="time the first of --strategies with and without augmentation")
    p.add_argument("--model", choices=["small", "resnet"], default="small")
    args = p.parse_args()
    if args.one_core_worker:
        return one_core_worker(args)
    if args.augment_share:
        return augment_share(args)
    # The trainer's 'auto' must measure here, not read a choice cached by earlier runs.
    os.environ["ENSEMBLE_JAX_CACHE"] = tempfile.mkdtemp(prefix="ensemble_jax_bench_")
    from ensemble_jax.training.cpu_cores import use_cpu_cores
    use_cpu_cores()   # as the command line does, before JAX starts

    import jax
    import jax.numpy as jnp
    from ensemble_jax import io as eio
    from ensemble_jax import ExecConfig
    from ensemble_jax.training import sharding, strategies
    from ensemble_jax.training.backend import path_backend

    members = [1, 4] if args.quick else [int(x) for x in args.members.split(",")]
    names = args.strategies.split(",")
    default_group = ExecConfig().members_per_program
    groups = [int(g) for g in args.groups.split(",")] if args.groups else [default_group]
    backend = jax.default_backend()
    spp = strategies.default_steps_per_program(path_backend(), ExecConfig().chunk_size)
    ceil32 = matmul_ceiling(jnp.float32)
    ceil16 = matmul_ceiling(jnp.bfloat16)
    headroom = None
    if backend == "cpu" and not args.no_headroom:
        headroom = {"one_core_images_per_s": one_core_loop(args), "cores": os.cpu_count()}
        print(f"  one-core loop: {headroom['one_core_images_per_s']:.1f} img/s", flush=True)
    # Several CPU devices = the CPU's cores as devices (cpu_cores.py); the plain columns
    # run on the first device only.
    mesh = sharding.make_mesh() if backend == "cpu" and jax.local_device_count() > 1 else None
    rows, flops = [], None
    for n in members:
        trainer, setup = build(n, args)
        if flops is None:
            flops = member_step_flops(setup)
        row = {"members": n}
        runners, setups = {}, {}

        def add_column(col, runner, s):
            """Compile `runner` (a warm-up of the timed rounds' step count, so it compiles
            the very programs they run and no more steps) and register it for them."""
            runners[col], setups[col] = runner, s
            t0 = time.perf_counter()
            jax.block_until_ready(runner(s.states, s.inputs, s.images, s.keypoints, 0,
                                         args.steps)[0])
            row[col] = {"compile_s": time.perf_counter() - t0, "step_s_rounds": []}
            print(f"  N={n:3d} {col:>12}: compiled in {row[col]['compile_s']:.1f} s", flush=True)

        for name in names:
            for g in (groups if name == "unrolled" else [None]):
                if n == 1 and name != "sequential":
                    continue  # one member: every strategy is the same program
                if g is not None and g > n:
                    continue
                col = name if g is None else f"unrolled/g{g}"
                # The trainer's own runner cache: 'auto' below reuses these programs.
                add_column(col, trainer.runner(setup, name,
                                               g if g is not None else default_group),
                           setup)
        setup_cores = None
        if mesh is not None and n > 1:
            _, setup_cores = build(n, args, mesh)
            for name in args.cores_strategies.split(","):
                # The trainer's own cache again: 'auto' over the cores reuses these.
                add_column(f"cores/{name}", trainer.runner(setup_cores, name, default_group),
                           setup_cores)
        columns = list(runners)
        # Interleaved rounds: a drift of the shared machine hits every strategy alike;
        # each strategy's best round is its throughput.
        for rnd in range(args.rounds):
            for col in columns:
                s = setups[col]
                t0 = time.perf_counter()
                out, _ = runners[col](s.states, s.inputs, s.images, s.keypoints, spp, args.steps)
                jax.block_until_ready(out)
                row[col]["step_s_rounds"].append((time.perf_counter() - t0) / args.steps)
        for col in columns:
            step_s = min(row[col]["step_s_rounds"])
            row[col].update(images_per_s=n * args.batch_size / step_s,
                            model_flops_per_s=flops * n / step_s)
            print(f"  N={n:3d} {col:>12}: {row[col]['images_per_s']:8.1f} img/s "
                  f"(rounds: {', '.join(f'{n * args.batch_size / t:.0f}' for t in row[col]['step_s_rounds'])})",
                  flush=True)
        _, info = trainer.choose_strategy(setup_cores or setup)
        chosen = info["chosen"]
        if setup_cores is not None:
            col = f"cores/{chosen}"
            if col not in row:   # a strategy not timed over the cores above: time it now
                r = trainer.runner(setup_cores, chosen, default_group)
                best_s = min(strategies.measure(r, setup_cores.states, setup_cores.inputs,
                                                setup_cores.images, setup_cores.keypoints,
                                                probe_steps=args.steps)["step_s"]
                             for _ in range(args.rounds))
                row[col] = {"step_s_rounds": [best_s],
                            "images_per_s": n * args.batch_size / best_s,
                            "model_flops_per_s": flops * n / best_s}
        else:
            col = chosen if chosen != "unrolled" else f"unrolled/g{default_group}"
        if col not in row:   # e.g. N=1 where only 'sequential' was measured
            col = "sequential"
        row["auto"] = {"chosen": chosen, "probe": info.get("table"), **row[col]}
        row["auto_vs_sequential"] = row[col]["images_per_s"] / row["sequential"]["images_per_s"]
        best = max(columns, key=lambda c: row[c]["images_per_s"])
        row["best"] = {"column": best, **row[best]}
        row["best_vs_sequential"] = row[best]["images_per_s"] / row["sequential"]["images_per_s"]
        rows.append(row)

    print()
    print(f"device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}, "
          f"image {args.image_size}x{args.image_size}x3, batch {args.batch_size}, "
          f"{flops / 1e6:.0f} MFLOP per member step, best of {args.rounds} interleaved rounds of "
          f"{args.steps} steps")
    print(f"matmul ceiling: float32 {ceil32 / 1e9:.1f} GFLOP/s, bfloat16 {ceil16 / 1e9:.1f} GFLOP/s")
    cols = [c for c in dict.fromkeys(c for r in rows for c in r
                                     if isinstance(r[c], dict) and c not in ("auto", "best"))]
    print(f"{'N':>4} " + " ".join(f"{c:>16}" for c in cols) +
          f" {'auto picks':>11} {'auto/seq':>9} {'best/seq':>9} {'GFLOP/s':>8} {'% f32 ceil':>10}")
    for r in rows:
        cells = " ".join(f"{r[c]['images_per_s']:16.1f}" if c in r else f"{'-':>16}" for c in cols)
        a = r["auto"]
        print(f"{r['members']:4d} {cells} {a['chosen']:>11} {r['auto_vs_sequential']:9.2f} "
              f"{r['best_vs_sequential']:9.2f} {a['model_flops_per_s'] / 1e9:8.2f} "
              f"{100 * a['model_flops_per_s'] / ceil32:10.1f}")
    if headroom and headroom["one_core_images_per_s"]:
        seq = [r["sequential"]["images_per_s"] for r in rows if r["members"] > 1]
        if seq:
            bound = headroom["cores"] * headroom["one_core_images_per_s"] / (sum(seq) / len(seq))
            headroom["bound_vs_sequential"] = bound
            print(f"parallel headroom: the loop on 1 core {headroom['one_core_images_per_s']:.1f} "
                  f"img/s; {headroom['cores']} cores at that efficiency would be at most "
                  f"{bound:.2f}x the loop")
    result = {
        "benchmark": "train_throughput", "date": time.strftime("%Y-%m-%d"),
        "device": jax.devices()[0].device_kind, "backend": backend,
        "jax": jax.__version__, "python": platform.python_version(),
        "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
        "rounds": args.rounds,
        "flops_per_member_step": flops,
        "matmul_ceiling_flops": {"float32": ceil32, "bfloat16": ceil16},
        "steps_per_program": spp, "groups": groups, "headroom": headroom,
        "cpu_devices": jax.local_device_count() if mesh is not None else 1, "rows": rows,
    }
    eio.write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
