"""Does label checking work at the command-line defaults? Planted errors, found or not.

For each planting seed, a copy of a project is written to a temporary folder with errors
planted in its label file (images are linked, the original project is never touched), and
the command line a user would run is run on it, with only `--data`, `--image-size` (or
none), `--plan random --members 4` and `--steps`:

    ensemble-jax sweep --data COPY [--image-size S] --plan random --members 4 --steps N \
        --out RUN --quiet
    ensemble-jax analyze RUN --quiet

Then `suspects.csv` (training frames ranked by the documented frame score, the swap-aware
score of `analysis/suspects.py`, with the flags of the cut; the sweep's own
threshold-sample frames are not in it) is scored against the planted frames that landed
in the training split:

  ROC-AUC     of -frame score against the planted frames (goal >= 0.95); also of its
              two terms and of the plain frame AUM (lowest label AUM), for comparison
  recall      planted frames flagged / planted frames (goal >= 0.5)
  precision   planted frames flagged / frames flagged (goal >= 0.8; n/a when none flagged)

Cases:
  openfield   ../shared/data/openfield-Pranav-2018-10-30, left and right ear exchanged in
              10% of the frames
  mirror      ../shared/data/lp-mirror-mouse-example, the left/right keypoint pair (by
              name) with the most frames labeled on both sides exchanged in 10% of frames;
              the project's config YAML is copied too, so its camera views
              (`mirrored_column_matches`) are read as a user's sweep reads them
  synthetic   the embedded scenes with `--noise-rate 0.1` (half of the noisy frames a
              left/right swap, half one or two displaced labels); recall per kind

    python benchmarks/label_check.py --case openfield --seeds 0,1,2 --steps 400 --image-size 128
    python benchmarks/label_check.py --quick          # tiny: checks the pipeline only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
CASES = {"openfield": SHARED / "openfield-Pranav-2018-10-30",
         "mirror": SHARED / "lp-mirror-mouse-example", "synthetic": None}


def _read_label_csv(path: Path):
    import pandas as pd
    return pd.read_csv(path, header=[0, 1, 2], index_col=0)


def _swap_in_table(df, a: str, b: str, rows) -> None:
    scorer = df.columns.get_level_values(0)[0]
    for c in ("x", "y"):
        ca, cb = (scorer, a, c), (scorer, b, c)
        va, vb = df.loc[rows, ca].to_numpy().copy(), df.loc[rows, cb].to_numpy().copy()
        df.loc[rows, ca], df.loc[rows, cb] = vb, va


def plant(case: str, dest: Path, seed: int, fraction: float = 0.1) -> tuple[Path, dict]:
    """Writes the planted copy; returns (data path for --data, {"pair": (a, b),
    "rows": [index strings of the label table]})."""
    from ensemble_jax.analysis.threshold import symmetric_pairs
    src = CASES[case]
    rng = np.random.default_rng([seed, 16])
    if case == "openfield":
        shutil.copy(src / "config.yaml", dest / "config.yaml")
        csvs = sorted((src / "labeled-data").glob("*/CollectedData_*.csv"))
        (csv,) = csvs
        video = csv.parent.name
        vdir = dest / "labeled-data" / video
        vdir.mkdir(parents=True)
        for f in csv.parent.iterdir():
            if f.suffix.lower() == ".png":
                os.symlink(f, vdir / f.name)
        df = _read_label_csv(csv)
        pair = ("leftear", "rightear")
        scorer = df.columns.get_level_values(0)[0]
        ok = df[(scorer, pair[0], "x")].notna() & df[(scorer, pair[1], "x")].notna()
        rows = list(rng.choice(df.index[ok], size=int(round(fraction * len(df))),
                               replace=False))
        _swap_in_table(df, *pair, rows)
        df.to_csv(vdir / csv.name)
        return dest, {"pair": pair, "rows": [str(r) for r in rows]}
    if case == "mirror":
        os.symlink(src / "labeled-data", dest / "labeled-data")
        for cfg in src.glob("config*.yaml"):      # the project's camera views, as a user has
            shutil.copy(cfg, dest / cfg.name)
        df = _read_label_csv(src / "CollectedData.csv")
        scorer = df.columns.get_level_values(0)[0]
        bps = list(dict.fromkeys(df.columns.get_level_values(1)))
        best = None
        for i, j in symmetric_pairs(bps):
            ok = df[(scorer, bps[i], "x")].notna() & df[(scorer, bps[j], "x")].notna()
            if best is None or ok.sum() > best[2].sum():
                best = (bps[i], bps[j], ok)
        a, b, ok = best
        rows = list(rng.choice(df.index[ok], size=int(round(fraction * len(df))),
                               replace=False))
        _swap_in_table(df, a, b, rows)
        df.to_csv(dest / "CollectedData.csv")
        return dest / "CollectedData.csv", {"pair": (a, b), "rows": [str(r) for r in rows]}
    raise ValueError(case)


def _differing_frames(case: str, data: Path, info: dict) -> set[str]:
    """The planted frames: those whose labels differ from the original project's."""
    from ensemble_jax.data.load import load_dataset
    new, old = load_dataset(data, image_size=32), load_dataset(CASES[case], image_size=32)
    assert list(new.frame_ids) == list(old.frame_ids)
    differ = ~np.isclose(new.keypoints, old.keypoints, equal_nan=True).all((1, 2))
    planted = {f for f, d in zip(new.frame_ids, differ) if d}
    assert len(planted) == len(info["rows"]), (len(planted), len(info["rows"]))
    return planted


def planted_frames(case: str, seed: int) -> set[str]:
    """Frame ids that `plant(case, ..., seed)` changes (a real case)."""
    with tempfile.TemporaryDirectory() as tmp:
        data, info = plant(case, Path(tmp), seed)
        return _differing_frames(case, data, info)


def _cli(*args: str, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        proc = subprocess.run([sys.executable, "-m", "ensemble_jax.cli", *args], cwd=ROOT,
                              stdout=fh, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode:
        raise SystemExit(f"ensemble-jax {' '.join(args)} failed (exit {proc.returncode}); "
                         f"see {log}")
    return time.perf_counter() - t0


def _score(run: Path, planted_ids: set[str]) -> dict:
    import pandas as pd
    from ensemble_jax.analysis.aum import roc_auc
    sus = pd.read_csv(run / "suspects.csv")
    bad = sus.frame.astype(str).isin(planted_ids).to_numpy()
    flagged = sus.flagged.to_numpy().astype(bool)
    tp = int((bad & flagged).sum())
    analysis = json.loads((run / "analysis.json").read_text())
    config = json.loads((run / "config.json").read_text())
    unc = analysis.get("uncertainty_vs_error", {})
    mpe = pd.read_csv(run / "mpe.csv")
    score = sus.frame_score if "frame_score" in sus else sus.frame_aum
    by = {}
    if "frame_score" in sus:    # which term flagged the planted frames
        cut = analysis["suspects"]["cut"]
        by = {"swap_term": int((bad & flagged & (sus.swap_z < cut)).sum()),
              "label_term": int((bad & flagged & (sus.label_z < cut)).sum())}
    return {
        "train_frames_scored": int(len(sus)), "planted_in_train": int(bad.sum()),
        "roc_auc": roc_auc(-score.to_numpy(), bad), "flagged": int(flagged.sum()),
        "roc_auc_frame_aum": roc_auc(-sus.frame_aum.to_numpy(), bad),
        "roc_auc_label_term": roc_auc(-sus.label_z.to_numpy(), bad) if "label_z" in sus
        else None,
        "roc_auc_swap_term": roc_auc(-sus.swap_z.fillna(np.inf).to_numpy(), bad)
        if "swap_z" in sus else None,
        "planted_flagged_by": by,
        "flagged_planted": tp, "recall": tp / bad.sum() if bad.any() else None,
        "precision": tp / flagged.sum() if flagged.any() else None,
        "suspected_kind_of_flagged_planted": sus[bad & flagged].suspected.value_counts()
        .to_dict(),
        "cut": analysis["suspects"]["cut"], "rule": analysis["suspects"]["rule"],
        "threshold_frames": analysis["suspects"].get("threshold_frames"),
        "image_size": int(np.load(run / "data.npz")["train_images"].shape[1]),
        "output_stride": config["model"]["output_stride"],
        "aum_radius": config["train"]["aum_radius"], "auto": config.get("auto"),
        "spearman": {k: v.get("rho") for k, v in unc.get("scores", {}).items()},
        "spearman_ci95": {k: v.get("ci95") for k, v in unc.get("scores", {}).items()},
        "test_frames": unc.get("n_frames"),
        "mpe_largest_tie_share_all_frames": analysis["mpe"].get("largest_share_of_one_value"),
        "mpe_distinct_values": int(mpe.mpe_mean.nunique()), "mpe_frames": int(len(mpe)),
        "ensemble_test_px": json.loads((run / "summary.json").read_text())
        ["ensemble_test"]["mean_px"],
    }, sus, bad


AUGMENT_FLAGS = {"default": [], "off": ["--no-augment"],
                 "augmented": ["--augment", "--aum-view", "augmented"],
                 "clean": ["--augment", "--aum-view", "clean"]}


def run_case(case: str, seed: int, steps: int, image_size: int | None, work: Path,
             keep: bool, strategy: str | None = None, reuse: bool = False,
             augment: str = "default") -> dict:
    tag = "" if augment == "default" else f"-{augment}"
    log = work / f"{case}-{seed}{tag}.log"
    run = work / f"{case}-{seed}{tag}-run"
    common = ["--plan", "random", "--members", "4", "--steps", str(steps), "--quiet",
              *AUGMENT_FLAGS[augment]]
    if image_size:
        common += ["--image-size", str(image_size)]
    if strategy:
        common += ["--strategy", strategy]
    t0 = time.perf_counter()
    if case == "synthetic":
        from ensemble_jax.data.synthetic import synthetic_frame
        t_sweep = 0.0 if reuse and (run / "summary.json").exists() else _cli(
            "sweep", "--out", str(run), "--noise-rate", "0.1", "--seed", str(seed), *common,
            log=log)
        t_an = _cli("analyze", str(run), "--quiet", log=log)
        row, sus, bad = _score(run, set())
        z = np.load(run / "data.npz")
        ids = [str(f) for f in z["train_frame_ids"]]
        kind = {f: synthetic_frame(int(f.split("_")[-1]), 64, 4, 0.1, seed).noise_kind
                for f in ids}
        planted = {f for f, k in kind.items() if k}
        row, sus, bad = _score(run, planted)
        flagged = sus.flagged.to_numpy().astype(bool)
        kinds = sus.frame.map(kind).to_numpy()
        row["per_kind"] = {}
        for k in ("swap", "displace"):
            sel = kinds == k
            row["per_kind"][k] = {"n": int(sel.sum()),
                                  "recall": float(flagged[sel].mean()) if sel.any() else None}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            data, info = plant(case, Path(tmp), seed)
            planted = _differing_frames(case, data, info)
            t_sweep = 0.0 if reuse and (run / "summary.json").exists() else _cli(
                "sweep", "--data", str(data), "--out", str(run), *common, log=log)
            t_an = _cli("analyze", str(run), "--quiet", log=log)
        row, sus, bad = _score(run, planted)
        row["pair"] = list(info["pair"])
        row["planted_frames"] = len(planted)
    row.update(case=case, seed=seed, steps=steps, augment=augment, sweep_s=t_sweep,
               analyze_s=t_an, wall_s=time.perf_counter() - t0)
    if not keep:
        shutil.rmtree(run, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="openfield", choices=sorted(CASES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--image-size", type=int, default=None,
                   help="passed to the sweep (default: none, the sweep chooses)")
    p.add_argument("--strategy", default=None,
                   help="passed to the sweep (speed only: every strategy trains the same "
                        "function; default: the sweep's auto, which times them first)")
    p.add_argument("--reuse", action="store_true",
                   help="with --work: keep a finished sweep found there, run analyze again")
    p.add_argument("--augment", default="default", choices=sorted(AUGMENT_FLAGS),
                   help="augmentation of the sweep: the command line's default (no flag), "
                        "off, or on with AUM margins on the augmented or the clean frames")
    p.add_argument("--quick", action="store_true", help="synthetic, 1 seed, 40 steps")
    p.add_argument("--work", default=None, help="keep the run directories here")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/out/label_check_"
                                               "<case>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.case, args.seeds, args.steps = "synthetic", "0", 40
    if CASES[args.case] is not None and not CASES[args.case].exists():
        print(f"{CASES[args.case]}: not found (the shared real data); nothing to measure")
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="label_check_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    print(f"label check, case {args.case}: --plan random --members 4 --steps {args.steps}"
          + (f" --image-size {args.image_size}" if args.image_size else " (image size: auto)")
          + "".join(" " + f for f in AUGMENT_FLAGS[args.augment]),
          flush=True)
    print(f"{'seed':>4} {'size':>5} {'stride':>6} {'radius':>6} {'planted':>7} {'ROC-AUC':>8} "
          f"{'flagged':>7} {'recall':>7} {'precision':>9} {'rho MPE':>8} {'best rho':>22} "
          f"{'test px':>8} {'wall s':>7}", flush=True)
    for seed in seeds:
        r = run_case(args.case, seed, args.steps, args.image_size, work, keep=bool(args.work),
                     strategy=args.strategy, reuse=args.reuse, augment=args.augment)
        rows.append(r)
        sp = r["spearman"]
        ok = {k: v for k, v in sp.items() if v is not None}
        b = max(ok, key=ok.get) if ok else None
        best = f"{fmt(ok[b])} ({b})" if b else "n/a"
        print(f"{seed:>4} {r['image_size']:>5} {r['output_stride']:>6} {r['aum_radius']:>6} "
              f"{r['planted_in_train']:>7} {fmt(r['roc_auc']):>8} {r['flagged']:>7} "
              f"{fmt(r['recall']):>7} {fmt(r['precision']):>9} {fmt(sp.get('mpe_mean')):>8} "
              f"{best:>22} {r['ensemble_test_px']:>8.2f} "
              f"{r['wall_s']:>7.0f}", flush=True)
        if r.get("roc_auc_swap_term") is not None:
            print(f"      ROC-AUC of the plain frame AUM {fmt(r['roc_auc_frame_aum'])}, label "
                  f"term {fmt(r['roc_auc_label_term'])}, swap term "
                  f"{fmt(r['roc_auc_swap_term'])}; planted frames flagged by the swap term "
                  f"{r['planted_flagged_by']['swap_term']}, by the label term "
                  f"{r['planted_flagged_by']['label_term']}", flush=True)
        if "per_kind" in r:
            print("      recall per kind: " + ", ".join(
                f"{k} {fmt(v['recall'])} (n={v['n']})" for k, v in r["per_kind"].items()),
                flush=True)
    aucs = [r["roc_auc"] for r in rows if r["roc_auc"] is not None]
    print(f"mean ROC-AUC over {len(aucs)} seeds: {np.mean(aucs):.3f} "
          f"(min {np.min(aucs):.3f}, max {np.max(aucs):.3f})")
    import jax
    out = Path(args.out or ROOT / "benchmarks" / "out" / f"label_check_{args.case}.json")
    from ensemble_jax import io as eio
    out.parent.mkdir(parents=True, exist_ok=True)
    eio.write_json(out, {"backend": jax.default_backend(), "machine": platform.machine(),
                         "cpu_count": os.cpu_count(), "case": args.case, "steps": args.steps,
                         "augment": args.augment,
                         "image_size_flag": args.image_size, "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
