"""Do the per-frame uncertainty scores track the ensemble's actual error?

`analyze` scores every frame without labels (multi-peak entropy, ensemble spread,
representativeness); a score is only useful for choosing frames to label if frames with a
high score are the ones the ensemble gets wrong. On the test frames (whose labels the
members never trained on) this module gives, for each score, the Spearman rank
correlation with the ensemble's error:

  ensemble error   mean over the frame's labeled keypoints of the distance between the
                   ensemble's consensus prediction and the label, original pixels (labels
                   known to be wrong, the planted noise of synthetic data, left out).
  Spearman rho     Pearson correlation of the ranks (ties share their mean rank), with
                   an approximate 95% interval tanh(atanh(rho) +- 1.96 / sqrt(n - 3))
                   (Fisher; with a dozen test frames the interval is wide, and says so).
Scores are oriented so that higher = more uncertain: MPE, spread, and 1 -
representativeness (a frame unlike the others is expected to be predicted worse).
"""
from __future__ import annotations

import math

import numpy as np

MIN_FRAMES = 5   # fewer test frames than this: "not resolved"


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, tied values sharing their mean rank."""
    x = np.asarray(x, np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    s = x[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> dict:
    """{"rho", "ci95": [lo, hi], "n"} over the pairs where both are finite; rho None
    (with "why") when fewer than MIN_FRAMES pairs or either side is constant."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman: sizes differ ({x.size} vs {y.size})")
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < MIN_FRAMES:
        return {"rho": None, "ci95": None, "n": n,
                "why": f"not resolved: {n} frames (needs >= {MIN_FRAMES}; more test frames "
                       f"would resolve it)"}
    rx, ry = rankdata(x[ok]), rankdata(y[ok])
    if rx.std() == 0 or ry.std() == 0:
        return {"rho": None, "ci95": None, "n": n,
                "why": "not resolved: the score or the error is the same on every frame"}
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if n > 3 and abs(rho) < 1:
        z, se = math.atanh(rho), 1.96 / math.sqrt(n - 3)
        ci = [math.tanh(z - se), math.tanh(z + se)]
    else:
        ci = [rho, rho]
    return {"rho": rho, "ci95": ci, "n": n}


def frame_error(consensus_xy: np.ndarray, labels_xy: np.ndarray) -> np.ndarray:
    """float `[F]`: mean over labeled keypoints of |consensus - label| (`[F, K, 2]`, same
    pixels); NaN for a frame with no label."""
    d = np.hypot(*(np.asarray(consensus_xy, np.float64)
                   - np.asarray(labels_xy, np.float64)).transpose(2, 0, 1))
    ok = np.isfinite(d)
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(1), np.where(ok, d, 0).sum(1) / np.maximum(ok.sum(1), 1),
                        np.nan)


def uncertainty_vs_error(scores: dict[str, np.ndarray], error: np.ndarray) -> dict:
    """Spearman of each score `[T]` (higher = more uncertain) with the error `[T]`; adds
    "best": the score with the highest rho (None when none is resolved)."""
    out: dict = {"scores": {}, "n_frames": int(np.isfinite(error).sum())}
    for name, s in scores.items():
        out["scores"][name] = spearman(s, error)
    resolved = {k: v["rho"] for k, v in out["scores"].items() if v["rho"] is not None}
    out["best"] = max(resolved, key=resolved.get) if resolved else None
    return out


def rank_by_mpe(mpe: np.ndarray, top_value: np.ndarray) -> np.ndarray:
    """Frame indices, most uncertain first: by MPE (descending); ties broken by the peak
    value (the lower the ensemble's top heatmap value, the more uncertain). NaN MPE last."""
    mpe = np.asarray(mpe, np.float64)
    tv = np.asarray(top_value, np.float64)
    key_mpe = np.where(np.isfinite(mpe), -mpe, np.inf)
    key_tv = np.where(np.isfinite(tv), tv, np.inf)
    return np.lexsort((key_tv, key_mpe))


def describe(info: dict) -> list[str]:
    """Lines for the CLI's summary."""
    lines = [f"uncertainty vs ensemble test error (Spearman, {info['n_frames']} test frames):"]
    for name, r in info["scores"].items():
        if r["rho"] is None:
            lines.append(f"  {name}: {r['why']}")
        else:
            lines.append(f"  {name}: rho {r['rho']:+.2f} (95% CI {r['ci95'][0]:+.2f} to "
                         f"{r['ci95'][1]:+.2f})")
    return lines


def scatter(path, scores: dict[str, np.ndarray], error: np.ndarray, info: dict) -> None:
    """One panel per score: score (x) against the ensemble's test error (y), with rho."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ensemble_jax import io as eio
    keys = {"MPE": "mpe_mean", "spread": "spread_mean", "represent": "unrepresentativeness"}
    fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.8), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items()):
        ok = np.isfinite(s) & np.isfinite(error)
        ax.plot(np.asarray(s)[ok], np.asarray(error)[ok], "o", ms=4, alpha=0.7)
        key = next((v for k, v in keys.items() if name.startswith(k) or k in name), None)
        r = info["scores"].get(key, {}) if key else {}
        rho = (f"Spearman {r['rho']:+.2f} (95% CI {r['ci95'][0]:+.2f}..{r['ci95'][1]:+.2f})"
               if r.get("rho") is not None else r.get("why", ""))
        ax.set_title(f"{rho}\n{int(ok.sum())} test frames", fontsize=9)
        ax.set_xlabel(name)
        ax.set_ylabel("ensemble error (px, original image)")
        ax.grid(alpha=0.3)
    fig.suptitle("Uncertainty scores against the ensemble's actual test error", fontsize=10)
    fig.tight_layout()
    eio.save_figure(path, fig, dpi=110)
    plt.close(fig)


def section(run, test, out_te: dict, scores: dict[str, np.ndarray], figures: bool
            ) -> tuple[np.ndarray, dict]:
    """`analyze`'s check of the test frames' scores (`[T]` each) against the ensemble's
    error there; returns the error `[T]` and its summary (and writes
    uncertainty_vs_error.png)."""
    from ensemble_jax.training.result import consensus
    t_cons = consensus(out_te["keypoints"], out_te["confidences"])
    t_lab = test.original_keypoints()
    if test.noise_mask is not None:   # a label known to be wrong measures no model error
        t_lab = np.where(np.asarray(test.noise_mask, bool)[..., None], np.nan, t_lab)
    t_err = frame_error(test.to_original(t_cons), t_lab)
    info = uncertainty_vs_error(scores, t_err)
    info["error"] = ("ensemble consensus error per test frame, mean over labeled "
                     "keypoints, px (original image)" + (
                         "; labels marked as planted noise left out"
                         if test.noise_mask is not None else ""))
    if figures:
        scatter(run / "uncertainty_vs_error.png", {
            "MPE (mean over keypoints, nats)": scores["mpe_mean"],
            "ensemble spread (mean, px)": scores["spread_mean"],
            "1 - representativeness": 1 + scores["unrepresentativeness"]}, t_err, info)
    return t_err, info
