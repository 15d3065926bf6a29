"""Does bfloat16 compute keep the accuracy of float32? Same members, same subsets, same seed.

Trains one ensemble per compute dtype (`ModelConfig.dtype`; parameters, optimizer state,
loss and targets stay float32) on the embedded synthetic data and reports, side by side:
training images/s, each member's mean test error (px), the ensemble's (confidence-weighted
consensus), and the matmul ceiling of each dtype measured in the same run. A second
float32 run with the next training seed (same subsets) shows how much the errors move by
chance alone: a bfloat16 difference smaller than that is not a loss of accuracy. The answer
decides whether mixed precision may be used for speed on an accelerator (issue 8); on a
CPU bfloat16 is usually emulated and slower, but the accuracy comparison holds anywhere.

    python benchmarks/precision.py                            # 4 members, 400 steps
    python benchmarks/precision.py --members 64 --steps 600   # on a GPU
    python benchmarks/precision.py --quick                    # seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--fraction", type=float, default=0.7, help="subset fraction per member")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-reference-seed", action="store_true",
                   help="skip the float32 run with the next training seed (the noise floor)")
    p.add_argument("--quick", action="store_true", help="2 members, 20 steps, 64 frames")
    p.add_argument("--out", default="benchmarks/out/precision.json")
    args = p.parse_args()
    if args.quick:
        args.members, args.steps, args.frames = 2, 20, 64
    os.environ.setdefault("ENSEMBLE_JAX_CACHE", tempfile.mkdtemp(prefix="ensemble_jax_bench_"))

    import jax
    import jax.numpy as jnp
    import numpy as np
    from ensemble_jax import EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig, io as eio
    from ensemble_jax import synthetic_dataset
    from ensemble_jax.analysis.metrics import mean_error, mean_pose_baseline, pixel_errors
    from ensemble_jax.subsets import random_subsets
    from ensemble_jax.training.result import consensus
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_throughput import matmul_ceiling

    data = synthetic_dataset(args.frames, seed=args.seed)
    train, test = data.split(0.2, seed=args.seed)
    masks = random_subsets(train.n_frames, args.members, args.fraction, seed=args.seed)
    tc = TrainConfig(steps=args.steps, seed=args.seed)
    ec = ExecConfig(strategy=args.strategy)
    rows = {}
    runs = [(name, name, tc) for name in args.dtypes.split(",")]
    if not args.no_reference_seed:
        # Same subsets, another training seed: how far float32 moves by chance alone.
        runs.append((f"float32 seed {args.seed + 1}", "float32",
                     dataclasses.replace(tc, seed=args.seed + 1)))
    for label, name, cfg in runs:
        t0 = time.perf_counter()
        res = EnsembleTrainer(ModelConfig(dtype=name), cfg, ec).fit(train, masks, progress=False)
        wall = time.perf_counter() - t0
        pred = res.predict(test.images)
        err = pixel_errors(pred.keypoints, test.keypoints[None])         # [M, B, K]
        member = mean_error(err, axis=(1, 2))
        ens = consensus(pred.keypoints, pred.confidences)
        rows[label] = {
            "dtype": name, "train_seed": cfg.seed, "strategy": res.strategy, "wall_s": wall,
            "train_images_per_s": res.timing["images_per_s"],
            "member_test_error_px": member.tolist(),
            "member_mean_px": float(member.mean()),
            "ensemble_test_error_px": float(mean_error(pixel_errors(ens, test.keypoints))),
            "final_loss": float(np.nanmean(res.losses[-10:])),
            "matmul_ceiling_flops": matmul_ceiling(jnp.dtype(name)),
        }
        r = rows[label]
        print(f"  {label:>15}: {r['train_images_per_s']:8.1f} img/s ({r['strategy']}), "
              f"members {r['member_mean_px']:.3f} px, ensemble {r['ensemble_test_error_px']:.3f} px,"
              f" loss {r['final_loss']:.4f}", flush=True)
    baseline = mean_pose_baseline(train.keypoints, test.keypoints)
    ref = rows.get("float32")
    print()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__};"
          f" {args.members} members x {args.steps} steps, {train.n_frames} train / {test.n_frames}"
          f" test frames, mean-pose baseline {baseline:.2f} px")
    print(f"{'run':>15} {'img/s':>9} {'members px':>11} {'ensemble px':>12} {'vs f32':>8}"
          f" {'matmul GFLOP/s':>15}")
    for name, r in rows.items():
        vs = r["ensemble_test_error_px"] / ref["ensemble_test_error_px"] if ref else float("nan")
        r["ensemble_error_vs_float32"] = vs
        print(f"{name:>15} {r['train_images_per_s']:9.1f} {r['member_mean_px']:11.3f}"
              f" {r['ensemble_test_error_px']:12.3f} {vs:8.3f}"
              f" {r['matmul_ceiling_flops'] / 1e9:15.1f}")
    eio.write_json(args.out, {
        "benchmark": "precision", "date": time.strftime("%Y-%m-%d"),
        "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
        "jax": jax.__version__, "python": platform.python_version(),
        "members": args.members, "steps": args.steps, "frames": args.frames,
        "fraction": args.fraction, "baseline_px": baseline, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
