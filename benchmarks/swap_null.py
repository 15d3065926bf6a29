"""Per-pair null for the swap term, measured against the documented (global) one.

The documented swap term (`analysis/suspects.py`) takes a frame's largest swap gain over
its labeled pairs and scales it by the bulk of that maximum over the real frames (one
null for every pair). The alternative measured here gives each pair (a, b) its own null:

    z[i, a, b] = (g[i, a, b] - median_ab) / max(SD_ab, floor)

median and lower-half SD of the pair's gains over the real frames (pairs with fewer than 8
frames: the pooled values of all pairs), then the frame's largest z over its pairs,
corrected for the number of pairs compared either empirically (scaled by the bulk of that
maximum over the real frames, as the documented term) or by Sidak (each z read as a
normal tail, p_frame = 1 - (1 - p_min)^pairs, back to a normal quantile). A third form
keeps the common scale and only shifts each pair by its median: g - max(0, median_ab -
median over pairs of median_ab) (pairs the members usually confuse are pulled down).
The last forms keep the global null but take the gain of each out-of-subset member's own
prediction, then the minimum, mean or median over those members, instead of the gain of
their median prediction.

Everything else as documented (label term, Stouffer joint, cut = min(90th percentile of the
threshold-sample frames, -3)); scored against the planted frames of saved
`benchmarks/label_check.py --work DIR` runs (nothing is trained or written):

    python benchmarks/swap_null.py --work DIR [--runs mirror-0,mirror-1,openfield-0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MIN_PAIR_FRAMES = 8


def run_inputs(run: Path, case: str, seed: int) -> dict:
    """What the frame score needs, from the files of a finished sweep + analyze (original
    pixels: the gains are ratios of distances, so the letterbox scale drops out)."""
    from ensemble_jax import rundir
    from ensemble_jax.analysis import aum as aum_lib
    from ensemble_jax.analysis import suspects as sus
    r = rundir.load(run)
    alive = r.alive
    members = np.flatnonzero(alive)
    rep = aum_lib.aum_report(r.training["aum_sum"], r.training["aum_count"], alive,
                             r.threshold_mask)
    kind = sus.threshold_frames(r.threshold_kind)
    pred = sus.oob_prediction(r.predictions["train_keypoints"][members],
                              r.masks[members])
    ids = [str(f) for f in r.train.frame_ids]
    if case == "synthetic":
        bad = r.train.noise_mask.any(1)
    else:
        import label_check
        planted = label_check.planted_frames(case, seed)
        bad = np.array([f in planted for f in ids])
    return {"aum": rep.aum, "probe": kind > 0, "labels": r.train.original_keypoints(),
            "pred": pred, "bad": bad & ~(kind > 0),
            "member_kp": r.predictions["train_keypoints"][members],
            "masks": r.masks[members]}


def member_swap_z(x: dict, sigma: np.ndarray, real: np.ndarray, how: str) -> np.ndarray:
    """`[n]` swap term from the gains of each out-of-subset member's own prediction,
    reduced over those members by `how` (min, mean or median); global null."""
    import warnings
    from ensemble_jax.analysis import suspects as sus
    g = np.stack([sus.swap_gain(x["labels"], kp, sigma) for kp in x["member_kp"]])
    oob = ~(x["masks"] > 0)                                    # [M, n]
    use = np.where(oob.any(0)[None], oob, True)
    g = np.where(use[:, :, None, None], g, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g = {"min": np.nanmin, "mean": np.nanmean, "median": np.nanmedian}[how](g, 0)
    ok = np.isfinite(g)
    top = np.where(ok.any((1, 2)), np.where(ok, g, -np.inf).max((1, 2)), np.nan)
    m, s = sus._bulk(top[real], "high")
    return -(top - m) / s


def pair_swap_z(g: np.ndarray, real: np.ndarray, form: str, floor: float = 0.25
                ) -> np.ndarray:
    """`[n]` swap term (robust SDs, lower = more suspect) with a per-pair null; g `[n, K,
    K]` swap gains, real bool `[n]`."""
    from scipy.stats import norm
    from ensemble_jax.analysis import suspects as sus
    k = g.shape[1]
    iu = np.triu_indices(k, 1)
    gp = g[:, iu[0], iu[1]]                                   # [n, pairs]
    ok = np.isfinite(gp)
    pooled_m, pooled_sd = sus._bulk(gp[real][ok[real]], "high")
    med = np.full(gp.shape[1], pooled_m)
    sd = np.full(gp.shape[1], pooled_sd)
    for p in range(gp.shape[1]):
        col = gp[real, p]
        col = col[np.isfinite(col)]
        if col.size >= MIN_PAIR_FRAMES:
            med[p], sd[p] = sus._bulk(col, "high")
    if form == "shift":
        z = gp - np.maximum(0.0, med - np.median(med))
    else:
        z = (gp - med) / np.maximum(sd, floor)
    top = np.where(ok.any(1), np.where(ok, z, -np.inf).max(1), np.nan)
    if form == "sidak":
        pairs = ok.sum(1)
        p_frame = -np.expm1(pairs * np.log1p(-norm.sf(top)))
        return norm.ppf(np.clip(p_frame, 1e-300, 1.0))
    m, s = sus._bulk(top[real], "high")
    return -(top - m) / s


def evaluate(x: dict, form: str, floor: float) -> dict:
    from ensemble_jax.analysis import suspects as sus
    from ensemble_jax.analysis.aum import roc_auc
    probe, bad = x["probe"], x["bad"]
    t = sus.swap_aware_scores(x["aum"], x["labels"], x["pred"], ~probe)
    if form == "global":
        sz = t["swap_z"]
    elif form.startswith("member-"):
        sz = member_swap_z(x, t["sigma"], ~probe, form.split("-")[1])
    else:
        sz = pair_swap_z(t["gain"], ~probe, form, floor)
    lz = t["label_z"]
    score = np.where(np.isfinite(sz), np.fmin(np.fmin(lz, sz), (lz + sz) / np.sqrt(2)), lz)
    score = np.where(np.isfinite(sus.frame_aum(x["aum"])), score, np.nan)
    cut = sus.score_cut(score, probe).cut
    real = ~probe & np.isfinite(score)
    flagged = real & (score < cut)
    tp = int((flagged & bad).sum())
    return {"roc_auc": roc_auc(-score[real], bad[real]),
            "roc_auc_swap_term": roc_auc(-np.where(np.isfinite(sz), sz, np.inf)[real],
                                         bad[real]),
            "cut": cut, "flagged": int(flagged.sum()), "planted": int((bad & real).sum()),
            "tp": tp, "precision": tp / flagged.sum() if flagged.any() else float("nan")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="a label_check.py --work folder")
    p.add_argument("--runs", default=",".join(f"{c}-{i}" for c in ("openfield", "synthetic",
                                                                     "mirror")
                                              for i in range(3)),
                   help="CASE-SEED names of the runs in --work")
    p.add_argument("--floors", default="0.1,0.25,0.5")
    args = p.parse_args(argv)
    forms = [("global", None)] + [(f, float(fl)) for f in ("empirical", "sidak")
                                  for fl in args.floors.split(",")] + [("shift", None)] + [
        (f"member-{h}", None) for h in ("min", "mean", "median")]
    print(f"{'run':<12} {'swap null':<18} {'ROC-AUC':>7} {'(swap)':>7} {'cut':>6} "
          f"{'flagged':>7} {'recall':>9} {'precision':>9}")
    for name in args.runs.split(","):
        case, seed = name.rsplit("-", 1)
        run = Path(args.work) / f"{name}-run"
        if not (run / "analysis.json").exists():
            print(f"{run}: no finished sweep + analyze there; skipped")
            continue
        x = run_inputs(run, case, int(seed))
        for form, floor in forms:
            e = evaluate(x, form, floor or 0.0)
            label = form if floor is None else f"pair {form} {floor:g}"
            print(f"{name:<12} {label:<18} {e['roc_auc']:7.3f} {e['roc_auc_swap_term']:7.3f} "
                  f"{e['cut']:6.2f} {e['flagged']:7d} {e['tp']:>3}/{e['planted']:<3} "
                  f"{e['tp'] / max(e['planted'], 1):.2f} {e['precision']:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
