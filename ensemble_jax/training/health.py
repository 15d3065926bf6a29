"""Which members of a trained ensemble are usable: the one place that decides it.

A member is *failed* (alive False in training.npz, excluded from the consensus, `analyze`,
`predict` and `suggest`, with its reason in training.npz `failed_reason` and summary.json
`failed_members`) when it

  - diverged: a non-finite loss or weight during training (detected by the training step,
    `diverged_at` = the step);
  - had no labeled frame in its subset (it trained on nothing);
  - learned nothing, after training (`learned_nothing`):
      * a non-finite confidence on a training or test frame, or
      * its highest confidence (sigmoid of the heatmap peak) over every keypoint of every
        training and test frame is below PEAK_CONFIDENCE_MIN: it predicts "no keypoint
        anywhere", so its keypoints are the argmax of a flat map (a corner of the image), or
      * its training loss never went below its first value (no step improved on the
        initial network).

Thresholds: the heatmap head starts with a bias of -4 (confidence ~0.018), and training
pulls the background down and the labeled peaks up. Measured (issue 33) on openfield at
32 px, 4 members, default learning rate: the highest confidence per member is 0.020-0.027
after 1 step, 0.017-0.021 after 5, 0.016-0.021 after 15, 0.018-0.040 after 30 and
0.12-0.81 after 60; on the synthetic smoke run 0.78-0.81. The repro of issue 33 (lr 20,
constant) ends with confidence exactly 0 (and 1e-9 for a member at lr x 1e4 on synthetic
scenes). PEAK_CONFIDENCE_MIN = 1e-3 (a logit below -6.9 on every pixel of every frame and
keypoint) is 16x below the lowest healthy peak measured. The loss rule needs at least
MIN_LOSS_STEPS recorded steps, so that a run of a few steps is not judged on batch noise;
healthy members were below their first loss after 5 steps (0.0375-0.041 against
0.041-0.043).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

PEAK_CONFIDENCE_MIN = 1e-3
MIN_LOSS_STEPS = 5
NO_LABELS = "had no labeled frame in its subset"

__all__ = ["PEAK_CONFIDENCE_MIN", "MIN_LOSS_STEPS", "learned_nothing", "failure_reasons",
           "mark_failed", "reason", "describe_failed", "DeadEnsembleError"]


class DeadEnsembleError(ValueError):
    """Every member of a sweep failed: there is no result (one clear line)."""


def learned_nothing(confidences: Sequence[np.ndarray], losses: np.ndarray | None
                    ) -> list[str]:
    """Per member, why it learned nothing ("" = it learned something).

    confidences: arrays `[M, frames, K]` (e.g. the training and the test predictions);
    losses: `[steps, M]` (NaN where not run / after divergence) or None."""
    confs = [np.asarray(c, np.float64) for c in confidences if np.asarray(c).size]
    m = confs[0].shape[0] if confs else (np.asarray(losses).shape[1] if losses is not None
                                         else 0)
    out = []
    for i in range(m):
        c = np.concatenate([x[i].ravel() for x in confs]) if confs else np.zeros(0)
        if c.size and not np.isfinite(c).all():
            out.append(f"learned nothing (non-finite confidence on "
                       f"{int((~np.isfinite(c)).sum())} of {c.size} frame keypoints)")
            continue
        if c.size and c.max() < PEAK_CONFIDENCE_MIN:
            out.append(f"learned nothing (its highest confidence over {c.size} training and "
                       f"test frame keypoints is {c.max():.3g} < {PEAK_CONFIDENCE_MIN:g})")
            continue
        if losses is not None:
            li = np.asarray(losses, np.float64)[:, i]
            li = li[np.isfinite(li)]
            if li.size >= MIN_LOSS_STEPS and li[1:].min() >= li[0]:
                out.append(f"learned nothing (its training loss never went below its first "
                           f"value {li[0]:.4g} in {li.size} steps)")
                continue
        out.append("")
    return out


def failure_reasons(result: Any, predictions: dict | None = None,
                    unlabeled: Sequence[int] = ()) -> list[str]:
    """Per member of an `EnsembleResult`, why it failed ("" = healthy): diverged, no labeled
    frame, or learned nothing on `predictions` ({"train"/"test": Predictions})."""
    alive = np.asarray(result.alive, bool)
    div = np.asarray(result.diverged_at)
    confs = [p.confidences for p in (predictions or {}).values() if p is not None]
    nothing = learned_nothing(confs, result.losses) if confs else [""] * len(alive)
    bad = set(int(u) for u in unlabeled)
    reasons = []
    for i in range(len(alive)):
        if i in bad:
            reasons.append(NO_LABELS)
        elif div[i] >= 0:
            reasons.append(f"diverged at step {int(div[i])}")
        elif not alive[i]:
            reasons.append(reason(result, i) or "failed")
        else:
            reasons.append(nothing[i])
    return reasons


def mark_failed(result: Any, reasons: Sequence[str]) -> Any:
    """The result with alive False and `failed_reason` set for each member with a reason."""
    failed = np.array([bool(r) for r in reasons])
    alive = np.asarray(result.alive, bool) & ~failed
    return dataclasses.replace(result, alive=alive,
                               failed_reason=np.array([str(r) for r in reasons]))


def reason(result: Any, m: int) -> str:
    """Why member `m` is not alive ("" if it is), also for runs from before
    `failed_reason` (diverged at step N, else no labeled frame)."""
    if bool(np.asarray(result.alive, bool)[m]):
        return ""
    fr = getattr(result, "failed_reason", None)
    if fr is not None and len(fr) > m and str(fr[m]):
        return str(fr[m])
    d = int(np.asarray(result.diverged_at)[m])
    return f"diverged at step {d}" if d >= 0 else NO_LABELS


def _kind(r: str) -> tuple[str, str]:
    """('learned nothing', 'its highest ...') from a reason: its kind and its detail."""
    for kind in ("diverged", "learned nothing"):
        if r.startswith(kind):
            detail = r[len(kind):].strip()
            if detail.startswith("(") and detail.endswith(")"):
                detail = detail[1:-1]
            return kind, detail
    return r, ""


def describe_failed(result: Any) -> str:
    """The failed members grouped by kind, in one line: 'member 1 diverged at step 3;
    members 0, 2 learned nothing (e.g. member 0: its highest confidence ...)'."""
    alive = np.asarray(result.alive, bool)
    groups: dict[str, list[int]] = {}
    for m in np.flatnonzero(~alive):
        groups.setdefault(_kind(reason(result, int(m)))[0], []).append(int(m))
    parts = []
    for kind, ms in groups.items():
        if len(ms) == 1:
            parts.append(f"member {ms[0]} {reason(result, ms[0])}")
            continue
        detail = _kind(reason(result, ms[0]))[1]
        parts.append(f"members {', '.join(map(str, ms))} {kind}"
                     + (f" (e.g. member {ms[0]}: {detail})" if detail else ""))
    return "; ".join(parts)
