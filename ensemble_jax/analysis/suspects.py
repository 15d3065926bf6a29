"""Suspect frames: which labeled frames to look at first, what is probably wrong, and the
suggested correction.

Frame score (the documented ranking; lower = more suspect):

  frame AUM   the lowest AUM among the frame's labels (`aum.py`: the label's heatmap
              margin averaged over training and over the alive members that saw it).
              A swapped pair, a label put on another bodypart and a displaced label all
              give a low margin to at least one label of the frame.

Cut (which frames are flagged): the threshold samples (`threshold.py`, kind "realistic")
are frames with one known realistic error each: a swapped left/right (or closest) pair, a
label put on the nearest other keypoint, a label displaced inside the image content. Their
frame AUMs show where realistic errors fall in this very run. With `s_thr` their frame
AUMs and `s_real` those of the other (real) frames:

  cut = min(percentile(s_thr, PROBE_PERCENTILE),  m - K_SD * sd_up)
        m = median(s_real),  sd_up = (percentile(s_real, 75) - m) / 0.6745

The first term flags what looks like the realistic errors (Pleiss et al. use the 99th
percentile of their threshold samples; 90 here, as a few probes per run make the top
one noisy). The second keeps the cut K_SD standard deviations below the bulk of the real
frames: sd_up is estimated from their upper half only, which label errors (they sit in
the low tail) leave alone, so clean frames are rarely flagged whatever the probes say
(for a normal bulk, 0.13% of clean frames fall below m - 3 sd). With no threshold
sample the second term alone is the cut.

Suspected kind of a flagged (or any ranked) frame, from the ensemble's prediction of the
frame (median over the alive members that did not train on it when there are such, else
over all alive members), label l and prediction p per keypoint. For the frame's
lowest-AUM keypoint a and every other labeled keypoint b:

  keep  = |p_a - l_a| + |p_b - l_b|          swap = |p_a - l_b| + |p_b - l_a|

  swap of a and b     when the best b has swap < SWAP_RATIO * keep: the prediction agrees
                      with the exchanged labels; correction: exchange the two labels.
  displaced a         otherwise; correction: put a at the ensemble's prediction p_a.
"""
from __future__ import annotations

import dataclasses

import numpy as np

PROBE_PERCENTILE = 90.0
K_SD = 3.0
SWAP_RATIO = 0.5


@dataclasses.dataclass
class FrameCut:
    cut: float
    rule: str
    probe_term: float | None       # percentile of the threshold-sample frames' AUM
    real_median: float | None
    real_sd_up: float | None       # upper-half standard deviation of the real frames


def frame_aum(aum: np.ndarray) -> np.ndarray:
    """float `[n]`: the lowest finite AUM of each frame's labels (`[n, K]`); NaN if none."""
    a = np.asarray(aum, np.float64)
    ok = np.isfinite(a)
    return np.where(ok.any(1), np.where(ok, a, np.inf).min(1), np.nan)


def frame_cut(score: np.ndarray, probe: np.ndarray, k_sd: float = K_SD,
              percentile: float = PROBE_PERCENTILE) -> FrameCut:
    """The cut of the module doc. score `[n]` frame AUM; probe bool `[n]` True at the
    threshold-sample frames."""
    score = np.asarray(score, np.float64)
    probe = np.asarray(probe, bool)
    real = score[~probe & np.isfinite(score)]
    thr = score[probe & np.isfinite(score)]
    med = sd = None
    tail = np.inf
    if real.size >= 4:
        med = float(np.median(real))
        sd = float((np.percentile(real, 75) - med) / 0.6745)
        tail = med - k_sd * sd
    bulk = (f"median - {k_sd:g} x upper-half SD of the {real.size} real frames "
            f"({tail:.3f})")
    if thr.size:
        pt = float(np.percentile(thr, percentile))
        cut = min(pt, tail)
        which = (f"the threshold samples' {percentile:g}th percentile" if pt <= tail else
                 "the bound below the real frames' bulk")
        rule = (f"frame AUM < min({percentile:g}th percentile of the {thr.size} "
                f"threshold-sample frames ({pt:.3f}), {bulk}) = {cut:.3f}: {which}")
        return FrameCut(float(cut), rule, pt, med, sd)
    if np.isfinite(tail):
        return FrameCut(float(tail), f"frame AUM < {bulk}; no threshold samples", None, med, sd)
    return FrameCut(float("nan"), "too few frames with an AUM: nothing flagged", None, None,
                    None)


def oob_prediction(member_keypoints: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """`[n, K, 2]`: per frame the median over the members whose subset left it out
    (`masks` `[M, n]` > 0 = trained on it) of their predictions `[M, n, K, 2]`; over all
    members for frames every member trained on."""
    kp = np.asarray(member_keypoints, np.float64)
    out_of_bag = ~(np.asarray(masks) > 0)                        # [M, n]
    use = np.where(out_of_bag.any(0)[None], out_of_bag, True)    # [M, n]
    x = np.where(use[:, :, None, None], kp, np.nan)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(x, axis=0)


def suspect_kind(labels: np.ndarray, prediction: np.ndarray, aum: np.ndarray,
                 ratio: float = SWAP_RATIO) -> list[dict]:
    """Per frame (`labels`, `prediction` `[n, K, 2]` same pixels, `aum` `[n, K]`):
    {"kind": "swap" | "displaced" | None, "a": int, "b": int | None, "correction":
    float [K, 2] (the suggested labels)}; kind None when the frame has no AUM."""
    labels = np.asarray(labels, np.float64)
    pred = np.asarray(prediction, np.float64)
    out = []
    for i in range(labels.shape[0]):
        a_row = np.where(np.isfinite(aum[i]), aum[i], np.inf)
        if not np.isfinite(a_row).any():
            out.append({"kind": None, "a": None, "b": None, "correction": labels[i].copy()})
            continue
        a = int(np.argmin(a_row))
        lab = np.isfinite(labels[i]).all(-1) & np.isfinite(pred[i]).all(-1)
        best_b, best = None, np.inf
        d = lambda u, v: float(np.hypot(*(u - v)))
        if lab[a]:
            for b in np.flatnonzero(lab):
                if b == a:
                    continue
                keep = d(pred[i, a], labels[i, a]) + d(pred[i, b], labels[i, b])
                swap = d(pred[i, a], labels[i, b]) + d(pred[i, b], labels[i, a])
                if swap < ratio * keep and swap - keep < best:
                    best_b, best = int(b), swap - keep
        corr = labels[i].copy()
        if best_b is not None:
            corr[a], corr[best_b] = labels[i, best_b], labels[i, a]
            out.append({"kind": "swap", "a": a, "b": best_b, "correction": corr})
        else:
            if np.isfinite(pred[i, a]).all():
                corr[a] = pred[i, a]
            out.append({"kind": "displaced", "a": a, "b": None, "correction": corr})
    return out


def threshold_frames(kind: np.ndarray | None) -> np.ndarray | None:
    """`[n]` kind code of each frame's threshold sample (0 = none) from `[n, K]` kinds."""
    if kind is None:
        return None
    return np.asarray(kind).max(1).astype(np.int8)


def frame_report(aum: np.ndarray, kind: np.ndarray, noise: np.ndarray | None = None
                 ) -> dict:
    """Frame scores, cut and flags of a run with realistic threshold samples.

    aum `[n, K]` ensemble AUM; kind int8 `[n, K]` threshold kinds (`threshold.KINDS`);
    noise bool `[n, K]` planted label noise when known. Returns a dict with "score" [n],
    "probe_kind" [n], "cut" (FrameCut), "flagged" bool [n] (real frames only), and the
    numbers for analysis.json under "summary"."""
    from ensemble_jax.analysis.aum import roc_auc
    from ensemble_jax.analysis.threshold import KINDS
    score = frame_aum(aum)
    pk = threshold_frames(kind)
    probe = pk > 0
    fc = frame_cut(score, probe)
    with np.errstate(invalid="ignore"):
        below = np.isfinite(score) & (score < fc.cut)
    flagged = below & ~probe
    summary: dict = {
        "score": "frame AUM: lowest AUM among the frame's labels (lower = more suspect)",
        "cut": fc.cut if np.isfinite(fc.cut) else None, "rule": fc.rule,
        "n_frames": int((~probe).sum()), "n_flagged": int(flagged.sum()),
        "threshold_frames": {}}
    for code, name in KINDS.items():
        sel = pk == code
        if sel.any():
            s = score[sel]
            summary["threshold_frames"][name] = {
                "n": int(sel.sum()), "median_frame_aum": _f(np.nanmedian(s)),
                "recall_at_cut": _f(below[sel].mean())}
    if noise is not None:
        bad = np.asarray(noise, bool).any(1) & ~probe
        real = ~probe & np.isfinite(score)
        tp = int((flagged & bad).sum())
        summary["planted"] = {
            "n_frames": int(bad.sum()),
            "roc_auc_frames": _f(roc_auc(-score[real], bad[real])),
            "flagged_planted": tp,
            "recall": _f(tp / bad.sum()) if bad.any() else None,
            "precision": _f(tp / flagged.sum()) if flagged.any() else None}
    return {"score": score, "probe_kind": pk, "cut": fc, "flagged": flagged,
            "summary": summary}


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def write_suspects(path, frame_ids, bodyparts, score, flagged, probe_kind, kinds: list[dict],
                   labels_orig, aum, noise=None) -> list[dict]:
    """Writes `suspects.csv` (real frames ranked by frame AUM, lowest first; threshold
    frames left out) and returns its rows as dicts. Coordinates in original pixels."""
    import csv
    import io as _io
    from ensemble_jax import io as eio
    order = [int(i) for i in np.argsort(np.where(np.isfinite(score), score, np.inf),
                                         kind="stable")
             if probe_kind[i] == 0 and np.isfinite(score[i])]
    rows = []
    for rank, i in enumerate(order, 1):
        k = kinds[i]
        a, b = k["a"], k["b"]
        if k["kind"] == "swap":
            what = f"swap of {bodyparts[a]} and {bodyparts[b]}"
        else:
            what = f"displaced {bodyparts[a]}"
        ca = k["correction"][a]
        row = {"rank": rank, "frame": frame_ids[i], "frame_aum": float(score[i]),
               "flagged": int(flagged[i]), "suspected": k["kind"], "description": what,
               "keypoint": bodyparts[a], "other_keypoint": bodyparts[b] if b is not None else "",
               "aum": float(aum[i, a]),
               "label_x": float(labels_orig[i, a, 0]), "label_y": float(labels_orig[i, a, 1]),
               "suggested_x": float(ca[0]), "suggested_y": float(ca[1])}
        if noise is not None:
            row["planted_noise"] = int(np.asarray(noise)[i].any())
        rows.append(row)
    buf = _io.StringIO()
    cols = list(rows[0]) if rows else ["rank", "frame", "frame_aum", "flagged", "suspected",
                                       "description", "keypoint", "other_keypoint", "aum",
                                       "label_x", "label_y", "suggested_x", "suggested_y"]
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (f"{v:.6g}" if isinstance(v, float) else v) for c, v in r.items()})
    eio.write_text(path, buf.getvalue())
    return rows


def gallery(path, images, labels, prediction, corrections, rows, index_of, bodyparts,
            n: int = 8) -> None:
    """The top `n` suspects: each frame with its labels ('+'), the ensemble's prediction
    ('x') and the suggested correction (arrow from the label to it), training pixels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from ensemble_jax import io as eio
    rows = rows[:n]
    if not rows:
        return
    k = len(bodyparts)
    colours = plt.cm.tab10(np.arange(k) % 10)
    cols = min(4, len(rows))
    nr = -(-len(rows) // cols)
    fig, axes = plt.subplots(nr, cols, figsize=(3.4 * cols, 3.6 * nr + 0.9), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        ax.axis("on")
        i = index_of[r["frame"]]
        img = images[i].astype(np.float32) / 255.0
        img = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img
        ax.imshow(0.6 * img + 0.4, interpolation="nearest")
        for j in range(k):
            x, y = labels[i, j]
            if np.isfinite(x):
                ax.plot(x, y, "+", color=colours[j], ms=14, mew=2.5, zorder=4)
            px, py = prediction[i, j]
            if np.isfinite(px):
                ax.plot(px, py, "x", color=colours[j], ms=7, mew=1.8, zorder=3)
            cx, cy = corrections[i][j]
            if np.isfinite(x) and np.isfinite(cx) and np.hypot(cx - x, cy - y) > 0.5:
                ax.annotate("", (cx, cy), (x, y), zorder=5, arrowprops=dict(
                    arrowstyle="->", color="red", lw=1.8))
        h, w = img.shape[:2]
        # Zoomed on the animal: the labels, predictions and corrections, with a margin.
        pts = np.concatenate([labels[i], prediction[i], np.asarray(corrections[i])])
        pts = pts[np.isfinite(pts).all(1)]
        if len(pts):
            c = (pts.min(0) + pts.max(0)) / 2
            half = max(float((pts.max(0) - pts.min(0)).max()) / 2 + 0.08 * max(h, w),
                       0.12 * max(h, w))
            ax.set_xlim(c[0] - half, c[0] + half)
            ax.set_ylim(c[1] + half, c[1] - half)
        else:
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
        flag = "FLAGGED " if r["flagged"] else ""
        ax.set_title(f"#{r['rank']} {flag}{str(r['frame']).split('/')[-1]}\n"
                     f"{r['description']} (frame AUM {r['frame_aum']:.2f})", fontsize=8)
    handles = [Line2D([], [], marker="s", ls="", color=colours[j], ms=7, label=bp)
               for j, bp in enumerate(bodyparts)]
    handles += [Line2D([], [], marker="+", ls="", color="0.3", ms=10, mew=2.5, label="label"),
                Line2D([], [], marker="x", ls="", color="0.3", ms=7, mew=1.8,
                       label="ensemble prediction"),
                Line2D([], [], color="red", lw=1.8, label="suggested correction")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
               fontsize=8, frameon=False)
    fig.suptitle("Suspect frames, lowest frame AUM first", fontsize=11)
    eio.save_figure(path, fig, dpi=110)
    plt.close(fig)


def aum_by_kind(path, aum, kind, noise, cut: float) -> None:
    """Histogram of label AUM: real labels (clean / planted noise when known) and each kind
    of threshold sample, with the cut."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ensemble_jax import io as eio
    from ensemble_jax.analysis.threshold import KINDS
    aum = np.asarray(aum, np.float64)
    ok = np.isfinite(aum)
    kind = np.zeros(aum.shape, np.int8) if kind is None else np.asarray(kind)
    groups = []
    real = ok & (kind == 0)
    if noise is not None:
        nz = np.asarray(noise, bool)
        groups += [("real labels, clean", real & ~nz), ("real labels, planted noise", real & nz)]
    else:
        groups += [("real labels", real)]
    for code, name in KINDS.items():
        groups.append((f"threshold sample: {name}", ok & (kind == code)))
    vals = aum[ok]
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (-1.0, 1.0)
    if np.isfinite(cut):
        lo, hi = min(lo, cut), max(hi, cut)
    bins = np.linspace(lo - 1e-6, hi + 1e-6, 41)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, sel in groups:
        if sel.any():
            ax.hist(aum[sel], bins=bins, alpha=0.55, label=f"{name} ({int(sel.sum())})")
    if np.isfinite(cut):
        ax.axvline(cut, color="k", ls="--", lw=1.5, label=f"cut {cut:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("AUM (mean heatmap margin during training, logits)")
    ax.set_ylabel("labels (log scale)")
    ax.set_title("AUM by kind of label", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    eio.save_figure(path, fig, dpi=110)
    plt.close(fig)
