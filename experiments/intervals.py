"""Paired comparisons of the seed studies 4 and 5: a t interval over independent replicates.

The unit of replication is what is retrained independently: a paired replicate (study 4:
the arms of one replicate start from the same weights) or a shuffle (study 5: one base
set, pool and scoring ensemble). Each unit gives one paired difference d_u (arm or
strategy minus its baseline, averaged over test frames, and in study 5 over members and
budgets); the interval is mean(d) +- t_{1 - alpha/2, U - 1} * sd(d) / sqrt(U), so it holds
the retraining variance but is conditional on the fixed test frames. With k comparisons
against one baseline, alpha = 0.05 / k (Bonferroni): the chance that any interval of the
family misses its true difference is at most 5%.
"""
from __future__ import annotations

import math

import numpy as np

FAMILY_ALPHA = 0.05


def paired_t(d, alpha: float = FAMILY_ALPHA) -> dict:
    """{"mean", "interval": [lo, hi], "sd", "n", "level"} of paired differences `d` [U]
    (NaNs dropped); interval NaN with fewer than 2 units."""
    from scipy import stats
    d = np.asarray(d, np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "interval": [float("nan")] * 2, "sd": float("nan"), "n": n,
                "level": 1 - alpha}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "interval": [mean - half, mean + half], "sd": sd, "n": n,
            "level": 1 - alpha}


def resolved(iv: dict) -> bool:
    """True when the interval excludes 0 (a difference is resolved)."""
    lo, hi = iv["interval"]
    return bool(math.isfinite(lo) and math.isfinite(hi) and (hi < 0 or lo > 0))


def units_needed(iv: dict, alpha: float = FAMILY_ALPHA, limit: int = 100_000) -> int | None:
    """The fewest units whose t interval at the measured SD would be narrower than |mean|
    (t_{1-alpha/2, U-1} sd / sqrt(U) < |mean|); None when mean or SD are not finite or
    more than `limit` would be needed."""
    from scipy import stats
    m, sd = abs(iv["mean"]), iv["sd"]
    if not (math.isfinite(m) and math.isfinite(sd)) or m == 0:
        return None
    z = float(stats.norm.ppf(1 - alpha / 2))
    u = max(2, int(math.ceil((z * sd / m) ** 2)))      # normal approximation, then t
    while u <= limit and float(stats.t.ppf(1 - alpha / 2, u - 1)) * sd / math.sqrt(u) >= m:
        u += max(1, u // 20)
    return u if u <= limit else None


def best_vs_baseline(best: str, iv: dict, need: int | None, *, baseline: str, kind: str,
                     units: str, span_units: str, n_text: str) -> str:
    """One sentence on the best of several arms against their baseline: resolved better,
    resolved worse (so none is better), or not resolved with the units that would resolve
    it. iv: `paired_t` of best minus baseline (lower is better); units: after a
    difference (" px", " in normalised error"); span_units: after the interval."""
    diff, level = iv["mean"], iv["level"]
    lo, hi = iv["interval"]
    span = f"{lo:+.3f} to {hi:+.3f}{span_units}" if math.isfinite(lo) else "no interval"
    if resolved(iv) and hi < 0:
        return (f"{best} beats {baseline} by {-diff:.3f}{units} ({level:.1%} interval "
                f"{span}, {n_text}).")
    if resolved(iv):
        return (f"no {kind} beats {baseline}: even the best, {best}, is worse by "
                f"{diff:.3f}{units} ({level:.1%} interval {span}).")
    return (f"not resolved: the best {kind}, {best}, is {diff:+.3f}{units} against {baseline}, "
            f"{level:.1%} interval {span} includes 0 ({n_text}"
            + (f"; about {need} would resolve a difference of this size at the measured "
               f"spread" if need else "") + ").")
