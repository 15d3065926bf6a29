"""Accuracy on real projects through the command line: augmentation on/off, small/ResNet.

For each dataset x variant x seed, runs `ensemble-jax sweep` as a user would (augmentation as the
variant says; without --steps, 200 epochs with a warm-up cosine schedule) with the README's openfield setting
(random plan, `--members` members on 90% of the training frames each, 10% test frames,
batch 8, letterboxed to `--image-size`) and a stated step count, then reads the run's
summary.json: the ensemble's mean test error in ORIGINAL pixels, the members' errors, the
mean-pose baseline, and the wall time. `--seed` changes the train/test split, the subsets
and the member keys, so the interval over seeds covers all three.

Variants: small (the default encoder) and resnet (ResNet-18, width `--resnet-width`), each
with --augment and --no-augment. An interval is mean +- t(0.975, n-1) * sd / sqrt(n) over
seeds; with one seed it is "not resolved" (run more seeds).

    python benchmarks/accuracy.py                                    # full: 2 datasets, 3 seeds
    python benchmarks/accuracy.py --datasets openfield --seeds 0 --steps 200 --members 1 \\
        --variants small-aug,small-noaug                             # reduced (shared CPU)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {"openfield": DATA / "openfield-Pranav-2018-10-30",
            "lp-mirror-mouse": DATA / "lp-mirror-mouse-example"}
VARIANTS = {"small-aug": ["--model", "small", "--augment"],
            "small-noaug": ["--model", "small", "--no-augment"],
            "resnet-aug": ["--model", "resnet", "--augment"],
            "resnet-noaug": ["--model", "resnet", "--no-augment"]}
# t(0.975, df) for small df: the 95% interval over a handful of seeds.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262}


def interval(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "n": n, "half_width": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "n": n, "sd": sd,
            "half_width": T975.get(n - 1, 1.96) * sd / math.sqrt(n)}


def fmt(iv: dict) -> str:
    if iv["half_width"] is None:
        return f"{iv['mean']:.2f} (1 seed: not resolved)"
    return f"{iv['mean']:.2f} +- {iv['half_width']:.2f}"


def augmentation_effect(runs: list[dict], datasets: list[str], variants: list[str]) -> list[dict]:
    """Per dataset and encoder with both variants: augmented minus plain ensemble error,
    paired by seed (same split, subsets and member keys), with its t interval."""
    out = []
    for name in datasets:
        for enc in ("small", "resnet"):
            if f"{enc}-aug" not in variants or f"{enc}-noaug" not in variants:
                continue
            by = {(r["variant"], r["seed"]): r["ensemble_test_px"] for r in runs
                  if r["dataset"] == DATASETS[name].name}
            seeds = sorted(s for (v, s) in by if v == f"{enc}-aug" and (f"{enc}-noaug", s) in by)
            if seeds:
                diffs = [by[(f"{enc}-aug", s)] - by[(f"{enc}-noaug", s)] for s in seeds]
                out.append({"dataset": name, "encoder": enc, "seeds": seeds,
                            "aug_minus_noaug_px": interval(diffs)})
    return out


def run_one(data: Path, variant: str, seed: int, args, workdir: Path) -> dict:
    out = workdir / f"{data.name}-{variant}-s{seed}"
    cmd = [sys.executable, "-m", "ensemble_jax.cli", "sweep", "--out", str(out),
           "--data", str(data), "--image-size", str(args.image_size), "--plan", "random",
           "--members", str(args.members), "--fraction", "0.9", "--test-fraction", "0.1",
           "--batch-size", str(args.batch_size), "--seed", str(seed), "--quiet",
           *VARIANTS[variant]]
    # a stated step count, or DeepLabCut 3's 200 epochs with a warm-up (both opt-in flags)
    cmd += (["--steps", str(args.steps)] if args.steps else
            ["--epochs", "200", "--schedule", "warmup_cosine"])
    if variant.startswith("resnet"):
        cmd += ["--resnet-width", str(args.resnet_width)]
    if args.strategy:
        cmd += ["--strategy", args.strategy]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    members = [m["test_mean_px"] for m in summary["members_detail"] if "test_mean_px" in m]
    return {"dataset": data.name, "variant": variant, "seed": seed,
            "ensemble_test_px": summary["ensemble_test"]["mean_px"],
            "member_test_px": members,
            "mean_pose_baseline_px": summary["mean_pose_baseline_px"],
            "steps": config["train"]["steps"], "train_s": summary["train_s"],
            "wall_s": wall, "images_per_s": summary["images_per_s"],
            "command": " ".join(cmd[1:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="openfield,lp-mirror-mouse")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=0,
                   help="steps per member (default 0: --epochs 200 --schedule warmup_cosine)")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resnet-width", type=int, default=64)
    p.add_argument("--strategy", default=None)
    p.add_argument("--out", default="benchmarks/out/accuracy.json")
    p.add_argument("--keep-runs", default=None, help="folder to keep the run directories in")
    args = p.parse_args()
    unknown = [d for d in args.datasets.split(",") if d not in DATASETS]
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown or bad:
        raise SystemExit(f"unknown dataset(s) {unknown} / variant(s) {bad}; choose from "
                         f"{list(DATASETS)} / {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = Path(args.keep_runs or tempfile.mkdtemp(prefix="ensemble_jax_accuracy_"))
    runs = []
    for name in args.datasets.split(","):
        for seed in seeds:        # seed outermost: a partial run still holds paired variants
            for variant in args.variants.split(","):
                r = run_one(DATASETS[name], variant, seed, args, workdir)
                runs.append(r)
                print(f"{name:>16} {variant:>13} seed {seed}: ensemble {r['ensemble_test_px']:.2f} px"
                      f" (members {', '.join(f'{m:.2f}' for m in r['member_test_px'])}; mean pose "
                      f"{r['mean_pose_baseline_px']:.1f}), {r['steps']} steps, train "
                      f"{r['train_s']:.0f} s, wall {r['wall_s']:.0f} s", flush=True)
                _write(Path(args.out), {"benchmark": "accuracy", "partial": True, "runs": runs})
    table = []
    print()
    print(f"{'dataset':>16} {'variant':>13} {'steps':>6} {'ensemble test px (95% CI)':>32} "
          f"{'member px':>10} {'mean pose':>9} {'wall s':>7}")
    for name in args.datasets.split(","):
        for variant in args.variants.split(","):
            rs = [r for r in runs if r["dataset"] == DATASETS[name].name and r["variant"] == variant]
            ens = interval([r["ensemble_test_px"] for r in rs])
            mem = [m for r in rs for m in r["member_test_px"]]
            row = {"dataset": name, "variant": variant, "steps": rs[0]["steps"],
                   "ensemble_test_px": ens, "member_test_px_mean": sum(mem) / len(mem),
                   "mean_pose_baseline_px": sum(r["mean_pose_baseline_px"] for r in rs) / len(rs),
                   "wall_s_mean": sum(r["wall_s"] for r in rs) / len(rs)}
            table.append(row)
            print(f"{name:>16} {variant:>13} {row['steps']:6d} {fmt(ens):>32} "
                  f"{row['member_test_px_mean']:10.2f} {row['mean_pose_baseline_px']:9.1f} "
                  f"{row['wall_s_mean']:7.0f}")
    paired = augmentation_effect(runs, args.datasets.split(","), args.variants.split(","))
    for row in paired:
        print(f"{row['dataset']:>16} {row['encoder']:>6}: augmentation changes the ensemble's "
              f"test error by {fmt(row['aug_minus_noaug_px'])} px (paired over seeds "
              f"{row['seeds']})")
    import jax
    result = {"benchmark": "accuracy", "date": time.strftime("%Y-%m-%d %H:%M"),
              "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
              "python": platform.python_version(), "jax": jax.__version__,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep_runs")},
              "units": "pixels of the original images", "table": table,
              "augmentation_effect": paired, "runs": runs}
    _write(Path(args.out), result)
    print(f"wrote {args.out}")


def _write(out: Path, result: dict) -> None:
    """Temp file, then rename: a killed benchmark leaves the last complete JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)


if __name__ == "__main__":
    main()
