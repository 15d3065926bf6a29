"""Does AUM find swapped ears in a real DeepLabCut project?

On `../shared/data/openfield-Pranav-2018-10-30` (116 frames, 640x480, snout / leftear /
rightear / tailbase), the left and right ear labels of a seeded 10% of the frames are
swapped in memory (the project on disk is not touched). A small ensemble is trained on the
frames with AUM threshold samples (`run_sweep`), then `analyze` ranks every label by AUM;
the table gives the ROC-AUC of -AUM against the swapped labels (over all labels, and over
ear labels only), with the cut's precision and recall.

Ears sit ~20 px apart in the original frames: the training resolution and output stride
must keep them a few heatmap pixels apart, and the AUM competitor radius below that
distance, or the margin cannot tell the two ears apart.

    python benchmarks/aum_openfield.py              # 160 px, stride 2 (minutes on 2 cores)
    python benchmarks/aum_openfield.py --quick      # tiny: checks the pipeline only
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jax  # noqa: E402

from ensemble_jax import io as eio  # noqa: E402
from ensemble_jax.analysis.analyze import analyze  # noqa: E402
from ensemble_jax.data.load import load_dataset  # noqa: E402
from ensemble_jax.training.config import STRATEGIES  # noqa: E402
from ensemble_jax.models.heatmap_net import ModelConfig  # noqa: E402
from ensemble_jax.sweep import SweepConfig, run_sweep  # noqa: E402
from ensemble_jax.training.config import ExecConfig, TrainConfig  # noqa: E402
from ensemble_jax.training.augment import AugmentConfig  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / \
    "openfield-Pranav-2018-10-30"


def swap_ears(keypoints: np.ndarray, bodyparts: list[str], fraction: float, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Swaps leftear/rightear in round(fraction * n) frames; returns (keypoints, noise
    mask bool [n, K] marking both ears of the swapped frames)."""
    try:
        left, right = bodyparts.index("leftear"), bodyparts.index("rightear")
    except ValueError:
        raise SystemExit(f"--data: bodyparts {bodyparts} have no 'leftear'/'rightear' pair")
    n = keypoints.shape[0]
    rng = np.random.default_rng(seed)
    frames = np.sort(rng.choice(n, size=int(round(fraction * n)), replace=False))
    kp = keypoints.copy()
    kp[frames, left], kp[frames, right] = keypoints[frames, right], keypoints[frames, left]
    mask = np.zeros(keypoints.shape[:2], bool)
    mask[frames, left] = mask[frames, right] = True
    return kp, mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--radius", type=float, default=1.5, help="AUM radius, heatmap pixels")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--fraction", type=float, default=0.8)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--swap-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="auto", choices=STRATEGIES)
    p.add_argument("--augment", choices=["off", "augmented", "clean"], default="off",
                   help="train with on-device augmentation, AUM margins on the augmented "
                        "batch or on the clean frames (training/augment.py)")
    p.add_argument("--out", default="benchmarks/out/aum_openfield.json")
    p.add_argument("--run-dir", default=None,
                   help="keep the run directory here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.members, args.steps, args.strategy = 64, 2, 20, "sequential"
    if not Path(args.data).exists():
        print(f"{args.data}: not found (the shared real data); nothing to measure")
        return 0

    t0 = time.perf_counter()
    data = load_dataset(args.data, image_size=args.image_size)
    kp, swapped = swap_ears(data.keypoints, list(data.bodyparts), args.swap_fraction,
                            args.seed)
    data = dataclasses.replace(data, keypoints=kp, noise_mask=swapped)
    sweep = SweepConfig(data=args.data, image_size=args.image_size, test_fraction=0.05,
                        plan="random", n_members=args.members, fraction=args.fraction,
                        threshold_fraction=0.05, seed=args.seed)
    model = ModelConfig(widths=(16, 32, 64), head_width=32, output_stride=args.stride)
    train = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=3e-3,
                        aum_radius=args.radius, seed=args.seed,
                        augment=AugmentConfig(enabled=args.augment != "off",
                                              aum_view="clean" if args.augment == "clean"
                                              else "augmented"))
    with tempfile.TemporaryDirectory() as tmp:
        if args.run_dir:
            tmp = args.run_dir
        run_sweep(tmp, sweep, model, train,
                  ExecConfig(chunk_size=100, strategy=args.strategy), dataset=data, progress=not args.quick,
                  log=lambda m: None)
        t_train = time.perf_counter() - t0
        a = analyze(tmp, progress=False, log=lambda m: None)["aum"]
        import pandas as pd
        from ensemble_jax.analysis.aum import roc_auc
        df = pd.read_csv(Path(tmp) / "aum.csv")
    real = df[(df.threshold_sample == 0) & df.aum.notna()]
    ears = real[real.keypoint.isin(["leftear", "rightear"])]
    auc_ears = roc_auc(-ears.aum.to_numpy(), ears.planted_noise.to_numpy().astype(bool))
    row = {
        "data": str(args.data), "image_size": args.image_size, "output_stride": args.stride,
        "aum_radius_heatmap_px": args.radius, "members": args.members,
        "fraction": args.fraction, "steps": args.steps, "batch_size": args.batch_size,
        "swapped_frames": int(swapped.any(1).sum()),
        "swapped_labels_scored": int(a["n_planted_noise"]),
        "roc_auc_all_labels": a["roc_auc_vs_planted_noise"], "roc_auc_ear_labels": auc_ears,
        "cut": a["cut"], "rule": a.get("rule"), "flagged": a["n_flagged"],
        "flagged_swapped": a["flagged_planted_noise"], "precision": a.get("precision"),
        "recall": a.get("recall"), "wall_s": time.perf_counter() - t0, "train_s": t_train,
    }
    print(f"AUM vs swapped ears on {Path(args.data).name} "
          f"({row['swapped_frames']} of {data.n_frames} frames swapped; "
          f"{args.image_size} px, stride {args.stride}, radius {args.radius} hm px, "
          f"{args.members} members x {args.steps} steps)")
    print(f"{'ROC-AUC (all labels)':>24} {'ROC-AUC (ears)':>15} {'flagged':>8} "
          f"{'precision':>10} {'recall':>8} {'wall s':>8}")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    print(f"{fmt(row['roc_auc_all_labels']):>24} {fmt(auc_ears):>15} {row['flagged']:>8} "
          f"{fmt(row['precision']):>10} {fmt(row['recall']):>8} {row['wall_s']:>8.0f}")
    eio.write_json(args.out, {"device": jax.devices()[0].device_kind,
                              "backend": jax.default_backend(), "jax": jax.__version__,
                              "machine": platform.machine(), "cpu_count": __import__("os").cpu_count(),
                              "quick": args.quick, "augment": args.augment, "result": row})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
