"""Area under the margin (AUM, Pleiss et al. 2020) for keypoint labels, and its cut.

The training step adds, every time a (frame, keypoint) label is in a member's batch, the
heatmap margin of that label (logit at the label pixel minus the best logit farther than
`aum_radius` heatmap pixels) to `aum_sum`, and 1 to `aum_count` ([M, n_train, K] in
`training.npz`). Here:

  member AUM     aum_m[m, i, k] = aum_sum / aum_count       (NaN where count == 0)
  ensemble AUM   aum[i, k] = mean of aum_m over the alive members that saw the label
  cut            99th percentile of the ensemble AUM of the threshold samples (labels moved
                 to a wrong place on purpose, see `threshold.py`); a label is flagged when
                 its AUM is below the cut. Per member the same, with that member's own
                 threshold samples.
  fallback       with no threshold sample seen by any alive member, a label is flagged when
                 its AUM is < 0: on average over training the network put more evidence
                 somewhere far away than at the label.

A low AUM means "the network disagreed with this label while fitting it", the mark of a
wrong label; the threshold samples calibrate how low wrong labels go in this very run.
"""
from __future__ import annotations

import dataclasses

import numpy as np

PERCENTILE = 99.0
FALLBACK_CUT = 0.0


def member_aum(aum_sum: np.ndarray, aum_count: np.ndarray) -> np.ndarray:
    """float32 `[M, n, K]`: mean margin over the steps the label was in the batch; NaN
    where it never was."""
    aum_sum, aum_count = np.asarray(aum_sum), np.asarray(aum_count)
    if aum_sum.shape != aum_count.shape or aum_sum.ndim != 3:
        raise ValueError(f"aum_sum {aum_sum.shape} and aum_count {aum_count.shape} must "
                         f"both be [M, n, K]")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(aum_count > 0, aum_sum / np.maximum(aum_count, 1),
                        np.nan).astype(np.float32)


def ensemble_aum(aum_m: np.ndarray, alive: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`(aum [n, K], n_members int [n, K])`: mean over the alive members that saw each
    label (NaN where none did) and how many did."""
    aum_m = np.asarray(aum_m, np.float64)
    if alive is not None:
        aum_m = aum_m[np.asarray(alive, bool)]
    seen = np.isfinite(aum_m)
    n = seen.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.where(seen, aum_m, 0.0).sum(0) / np.maximum(n, 1), np.nan)
    return mean.astype(np.float32), n.astype(np.int32)


def threshold_cut(aum: np.ndarray, threshold_mask: np.ndarray | None,
                  percentile: float = PERCENTILE) -> tuple[float, str]:
    """`(cut, rule)`: the `percentile` of the threshold samples' AUM, or the fallback
    `FALLBACK_CUT` (with a rule saying so) when no threshold sample has an AUM."""
    if threshold_mask is not None:
        vals = np.asarray(aum)[np.asarray(threshold_mask, bool)]
        vals = vals[np.isfinite(vals)]
        if vals.size:
            return (float(np.percentile(vals, percentile)),
                    f"aum < {percentile:g}th percentile of the {vals.size} threshold samples' AUM")
    return FALLBACK_CUT, (f"aum < {FALLBACK_CUT:g} (fallback: no threshold sample with an AUM "
                          f"in this run)")


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of `scores` (higher = more likely positive) for bool labels `positive`.

    Mann-Whitney: AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with R_pos the
    sum of the positives' ranks among all scores, tied scores sharing their mean rank (so
    a tie counts 1/2). Non-finite scores are dropped. NaN when either class is empty.
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(positive, bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in size")
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # mean rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    r_pos = ranks[y].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclasses.dataclass
class AumReport:
    aum: np.ndarray              # float32 [n, K] ensemble AUM (NaN: never seen / unlabeled)
    n_members: np.ndarray        # int32 [n, K] alive members that saw the label
    flagged: np.ndarray          # bool [n, K] aum < cut
    cut: float
    rule: str
    member_aum: np.ndarray       # float32 [M, n, K] (all members; dead ones too)
    member_cut: np.ndarray       # float32 [M] (NaN for dead members)
    member_rule: list            # str per member
    member_flagged: np.ndarray   # bool [M, n, K]
    alive: np.ndarray            # bool [M]

    @property
    def n_members_flagged(self) -> np.ndarray:
        """int32 [n, K]: alive members whose own cut flags the label."""
        return (self.member_flagged & self.alive[:, None, None]).sum(0).astype(np.int32)


def aum_report(aum_sum: np.ndarray, aum_count: np.ndarray, alive: np.ndarray | None = None,
               threshold_mask: np.ndarray | None = None,
               percentile: float = PERCENTILE) -> AumReport:
    """Ensemble and per-member AUM, cuts and flags (see the module docstring).

    Args:
      aum_sum, aum_count: `[M, n, K]` from `training.npz`.
      alive: bool `[M]`; failed members (diverged, learned nothing: training/health.py)
        are left out of the ensemble AUM.
      threshold_mask: bool `[n, K]`, True at threshold samples; None = no threshold samples.
    """
    aum_m = member_aum(aum_sum, aum_count)
    m = aum_m.shape[0]
    alive = np.ones(m, bool) if alive is None else np.asarray(alive, bool)
    if alive.shape != (m,):
        raise ValueError(f"alive must be [M={m}], got {alive.shape}")
    if threshold_mask is not None and np.asarray(threshold_mask).shape != aum_m.shape[1:]:
        raise ValueError(f"threshold_mask must be {aum_m.shape[1:]}, got "
                         f"{np.asarray(threshold_mask).shape}")
    aum, n_members = ensemble_aum(aum_m, alive)
    cut, rule = threshold_cut(aum, threshold_mask, percentile)
    with np.errstate(invalid="ignore"):
        flagged = np.isfinite(aum) & (aum < cut)
    member_cut = np.full(m, np.nan, np.float32)
    member_rule = []
    member_flagged = np.zeros(aum_m.shape, bool)
    for i in range(m):
        if not alive[i]:
            member_rule.append("failed: excluded")
            continue
        c, r = threshold_cut(aum_m[i], threshold_mask, percentile)
        member_cut[i] = c
        member_rule.append(r)
        with np.errstate(invalid="ignore"):
            member_flagged[i] = np.isfinite(aum_m[i]) & (aum_m[i] < c)
    return AumReport(aum=aum, n_members=n_members, flagged=flagged, cut=cut, rule=rule,
                     member_aum=aum_m, member_cut=member_cut, member_rule=member_rule,
                     member_flagged=member_flagged, alive=alive)
