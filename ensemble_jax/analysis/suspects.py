"""Suspect frames: which labeled frames to look at first, what is probably wrong, and the
suggested correction.

Frame score (the documented ranking, `frame_report` with the out-of-subset prediction;
lower = more suspect; `swap_aware_scores`):

  label term  the frame's lowest label AUM (`aum.py`: the label's heatmap margin averaged
              over training and over the alive members that saw it), in robust SDs from
              the real frames' bulk: low for a displaced label or one on another bodypart.
  swap term   the largest swap gain over the frame's labeled pairs (`swap_gain`): how much
              better the prediction of the members that did NOT train on the frame fits the
              two labels exchanged, in robust SDs from the bulk. Members that train on a
              swapped pair partly learn it, so its AUM is only a little low (openfield's
              ears); the members that left the frame out predict the true places.
  joint       (label term + swap term) / sqrt(2) (Stouffer): a swap lowers both.
  score       min(label term, swap term, joint).

Projects that declare camera views (Lightning Pose's `mirrored_column_matches`,
`analysis/multiview.py`) add a second, independent piece of evidence for the same
hypothesis "a and b are exchanged": the multi-view gain gv (how much better the labels of
the other views agree with the two labels exchanged; needs only the labels). Per pair both
gains are put in robust SDs of their own frame maxima over the real frames and summed
(Stouffer, / sqrt(2)); the swap term is then built from the largest pair evidence as
before. A clean frame whose members exchange two paws (their own confusion) gets a
strongly negative gv, a planted swap a positive one. Projects without views score exactly
as before.

Cut (`score_cut`): the threshold samples (`threshold.py`, kind "realistic") are frames with
one known realistic error each: a swapped left/right (or closest) pair, a label put on the
nearest other keypoint, a label displaced inside the image content. Their scores show
where realistic errors fall in this very run:

  cut = min(percentile(threshold-sample frames' scores, PROBE_PERCENTILE), -K_SD)

The first term flags what looks like the realistic errors (Pleiss et al. use the 99th
percentile of their threshold samples; 90 here, as a few probes per run make the top one
noisy); the second keeps the cut K_SD robust SDs below the bulk of the real frames (for a
normal bulk 0.13% of clean frames per term).

Without a prediction (`frame_report(aum, kind)`) the score is the plain frame AUM (the
lowest label AUM) with `frame_cut`: min(percentile of the threshold frames' AUM, median -
K_SD x upper-half SD of the real frames); analyze uses that cut for the label flags of
aum.csv.

Suspected kind (`swap_aware_kind`): "swap of a and b" when the best pair's gain exceeds
G_SWAP (correction: exchange the two labels), else "displaced a" for the label farthest
from the out-of-subset prediction in units of its keypoint's typical error (correction:
the prediction).
"""
from __future__ import annotations

import dataclasses

import numpy as np

PROBE_PERCENTILE = 90.0
K_SD = 3.0


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


# ------------------------------------------------------- the swap-aware frame score
MIN_SD = 0.05          # floor of a robust SD (same units as the values), against ties
G_SWAP = 0.5           # a frame's suspected kind is a swap when its best pair's gain is above
LABEL_SCALING = "frame"  # label term: lowest raw label AUM ("frame") or per-keypoint z
MIN_PER_KEYPOINT = 8   # fewer real labels of a keypoint: its AUM is scaled with all labels'


def _bulk(x: np.ndarray, tail: str) -> tuple[float, float]:
    """(median, SD) of `x` (finite values), the SD from the half away from `tail` ("low":
    errors sit low, SD from the upper quartile; "high": from the lower quartile), so that
    the errors being looked for do not widen it; floored at MIN_SD."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if x.size < 4:
        return float("nan"), float("nan")
    m = float(np.median(x))
    q = np.percentile(x, 75) - m if tail == "low" else m - np.percentile(x, 25)
    return m, max(float(q) / 0.6745, MIN_SD)


def keypoint_aum_z(aum: np.ndarray, real: np.ndarray) -> np.ndarray:
    """float `[n, K]`: each label's AUM in robust SDs of its own keypoint's AUM over the
    real frames (`real` bool `[n]`): (aum - median_k) / upper-half SD_k. A keypoint that
    is hard in every frame (occluded, at an image edge) has a low AUM everywhere; scaled by
    its own spread it is suspect only when low for that keypoint."""
    a = np.asarray(aum, np.float64)
    real = np.asarray(real, bool)
    z = np.full(a.shape, np.nan)
    m_all, sd_all = _bulk(a[real], "low")
    for j in range(a.shape[1]):
        col = a[real, j]
        m, sd = _bulk(col, "low") if np.isfinite(col).sum() >= MIN_PER_KEYPOINT else \
            (m_all, sd_all)
        z[:, j] = (a[:, j] - m) / sd
    return z


def swap_gain(labels: np.ndarray, prediction: np.ndarray, sigma: np.ndarray
              ) -> np.ndarray:
    """float `[n, K, K]` (NaN on the diagonal and where a label or prediction is
    missing): how much better the prediction fits keypoints a and b exchanged,

        g[i, a, b] = (keep - swap) / (|l_a - l_b| + sigma_a + sigma_b)
        keep = |p_a - l_a| + |p_b - l_b|,   swap = |p_a - l_b| + |p_b - l_a|

    labels, prediction `[n, K, 2]` (same pixels), sigma `[K]` the prediction's typical
    error per keypoint (same pixels). By the triangle inequality |keep - swap| <= 2 |l_a -
    l_b|, so g lies in (-2, 2): near -2 for a clean, well-separated pair the prediction
    found, near +2 for an exchanged one; sigma pulls pairs closer than the prediction's own
    error towards 0 (no evidence either way)."""
    lab = np.asarray(labels, np.float64)
    p = np.asarray(prediction, np.float64)
    sg = np.asarray(sigma, np.float64)
    d = lambda u, v: np.linalg.norm(u - v, axis=-1)
    la, lb = lab[:, :, None], lab[:, None, :]
    pa, pb = p[:, :, None], p[:, None, :]
    keep = d(pa, la) + d(pb, lb)
    swap = d(pa, lb) + d(pb, la)
    with np.errstate(invalid="ignore", divide="ignore"):   # the diagonal: 0 / 0
        g = (keep - swap) / (d(la, lb) + sg[:, None] + sg[None, :])
    k = lab.shape[1]
    g[:, np.arange(k), np.arange(k)] = np.nan
    return g


def _max_over_pairs(x: np.ndarray) -> np.ndarray:
    """[n, K, K] -> [n]: each frame's largest finite pair value (NaN when it has none)."""
    ok = np.isfinite(x)
    return np.where(ok.any((1, 2)), np.where(ok, x, -np.inf).max((1, 2)), np.nan)


def swap_aware_scores(aum: np.ndarray, labels: np.ndarray, prediction: np.ndarray,
                      real: np.ndarray, label_scaling: str | None = None,
                      multiview: dict | None = None) -> dict:
    """The documented frame score (lower = more suspect), in robust SDs from the bulk of
    the real frames (`real` bool `[n]`: the frames that are not threshold samples;
    median and half-SD from the side away from the errors, `_bulk`):

      label term  label_z_i = (L_i - median L) / SD_up(L), L_i = the frame's lowest label
                  AUM (`label_scaling` "frame") or lowest `keypoint_aum_z` (each label's
                  AUM scaled by its own keypoint's spread, "keypoint")
      swap term   swap_z_i = -(S_i - median S) / SD_low(S), S_i = max_{a != b} g[i, a, b]
                  (`swap_gain` of the out-of-subset prediction, sigma_k = median
                  |p_k - l_k| over the real frames)
      joint       (label_z_i + swap_z_i) / sqrt(2)   (Stouffer: a swap lowers both)
      score_i = min(label_z_i, swap_z_i, joint_i)

    With `multiview` (`multiview.check`: camera views declared) S_i is the largest pair
    evidence instead: e[i, a, b] = sum of the available z / sqrt(their number), over
    zm = (g[i, a, b] - median Sm) / SD_low(Sm) (Sm_i = max over pairs of g, the members)
    and zv = (gv[i, a, b] - median Sv) / SD_low(Sv) (Sv_i = max over pairs of the
    multi-view gain gv, defined for pairs of one view that both have matches). Without
    views e = zm, and swap_z is the same as above.

    A frame without a finite AUM gets NaN (not ranked); one with fewer than two
    predicted labels gets its label term. Returns score, label_z, swap_z, joint_z,
    "swap_gain" [n], "aum_z" [n, K], "gain" [n, K, K], "sigma" [K], "label_bulk",
    "swap_bulk"."""
    label_scaling = label_scaling or LABEL_SCALING
    aum = np.asarray(aum, np.float64)
    lab = np.asarray(labels, np.float64)
    pred = np.asarray(prediction, np.float64)
    real = np.asarray(real, bool)
    z = keypoint_aum_z(aum, real)
    if label_scaling == "keypoint":
        lterm = frame_aum(z)          # the lowest finite value per frame, as for the AUM
    elif label_scaling == "frame":
        lterm = frame_aum(aum)
    else:
        raise ValueError(f"label_scaling {label_scaling!r}: 'frame' or 'keypoint'")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        resid = np.linalg.norm(pred - lab, axis=-1)                     # [n, K]
        sigma = np.nanmedian(np.where(real[:, None], resid, np.nan), 0)
        fallback = np.nanmedian(resid) if np.isfinite(resid).any() else 1.0
    sigma = np.where(np.isfinite(sigma), sigma, fallback)
    g = swap_gain(lab, pred, sigma)
    sterm = _max_over_pairs(g)
    member_bulk = view_bulk = None
    if multiview is not None:
        gv = multiview["gain"]
        member_bulk = _bulk(sterm[real], "high")
        view_bulk = _bulk(_max_over_pairs(gv)[real], "high")
        zm = (g - member_bulk[0]) / member_bulk[1]
        zv = (gv - view_bulk[0]) / view_bulk[1]
        both = np.isfinite(zm) & np.isfinite(zv)
        e = np.where(both, (np.nan_to_num(zm) + np.nan_to_num(zv)) / np.sqrt(2.0),
                     np.where(np.isfinite(zm), zm, zv))
        sterm = _max_over_pairs(e)
    lm, lsd = _bulk(lterm[real], "low")
    sm, ssd = _bulk(sterm[real], "high")
    label_z = (lterm - lm) / lsd
    swap_z = -(sterm - sm) / ssd
    joint = (label_z + swap_z) / np.sqrt(2.0)
    score = np.where(np.isfinite(swap_z), np.fmin(np.fmin(label_z, swap_z), joint), label_z)
    score = np.where(np.isfinite(lterm), score, np.nan)
    return {"score": score, "label_z": label_z, "swap_z": swap_z, "joint_z": joint,
            "swap_gain": sterm, "aum_z": z, "gain": g, "sigma": sigma,
            "label_bulk": (lm, lsd), "swap_bulk": (sm, ssd), "label_scaling": label_scaling,
            "multiview": multiview, "member_gain_bulk": member_bulk,
            "view_gain_bulk": view_bulk}


def swap_aware_kind(labels: np.ndarray, prediction: np.ndarray, sc: dict,
                    g_swap: float = G_SWAP) -> list[dict]:
    """Suspected kind per frame from `swap_aware_scores` `sc`: "swap" of the pair with the
    largest gain when it exceeds g_swap (the exchanged labels fit the out-of-subset
    prediction clearly better; with camera views the pair's gain is the mean of the
    members' and the multi-view gain; correction: exchange them), else "displaced" at the
    label farthest from the prediction in units of its keypoint's sigma (correction: the
    prediction)."""
    labels = np.asarray(labels, np.float64)
    pred = np.asarray(prediction, np.float64)
    out = []
    for i in range(labels.shape[0]):
        zi = sc["aum_z"][i]
        if not np.isfinite(zi).any():
            out.append({"kind": None, "a": None, "b": None, "correction": labels[i].copy()})
            continue
        gi = sc["gain"][i]
        if sc.get("multiview") is not None:    # both pieces of evidence, same units
            gv = sc["multiview"]["gain"][i]
            gi = np.where(np.isfinite(gv) & np.isfinite(gi), (gi + gv) / 2.0, gi)
        corr = labels[i].copy()
        if np.isfinite(gi).any() and np.nanmax(gi) > g_swap:
            a, b = (int(v) for v in np.unravel_index(np.nanargmax(gi), gi.shape))
            a, b = min(a, b), max(a, b)
            corr[a], corr[b] = labels[i, b], labels[i, a]
            out.append({"kind": "swap", "a": a, "b": b, "correction": corr})
            continue
        # the label farthest from the prediction in units of its keypoint's typical
        # error; the lowest scaled AUM where nothing is predicted
        r = np.linalg.norm(pred[i] - labels[i], axis=-1) / sc["sigma"]
        r = np.where(np.isfinite(zi), r, np.nan)
        a = int(np.nanargmax(r)) if np.isfinite(r).any() else int(np.nanargmin(zi))
        if np.isfinite(pred[i, a]).all():
            corr[a] = pred[i, a]
        out.append({"kind": "displaced", "a": a, "b": None, "correction": corr})
    return out


def threshold_frames(kind: np.ndarray | None) -> np.ndarray | None:
    """`[n]` kind code of each frame's threshold sample (0 = none) from `[n, K]` kinds."""
    if kind is None:
        return None
    return np.asarray(kind).max(1).astype(np.int8)


def score_cut(score: np.ndarray, probe: np.ndarray, k_sd: float = K_SD,
              percentile: float = PROBE_PERCENTILE) -> FrameCut:
    """The cut on the swap-aware frame score (already in robust SDs below the real frames'
    bulk): min(`percentile` of the threshold-sample frames' scores, -k_sd)."""
    score = np.asarray(score, np.float64)
    probe = np.asarray(probe, bool)
    thr = score[probe & np.isfinite(score)]
    bulk = f"-{k_sd:g} (robust SDs below the real frames' bulk)"
    if thr.size:
        pt = float(np.percentile(thr, percentile))
        cut = min(pt, -k_sd)
        which = (f"the threshold samples' {percentile:g}th percentile" if pt <= -k_sd else
                 "the bound below the real frames' bulk")
        rule = (f"frame score < min({percentile:g}th percentile of the {thr.size} "
                f"threshold-sample frames ({pt:.3f}), {bulk}) = {cut:.3f}: {which}")
        return FrameCut(float(cut), rule, pt, 0.0, 1.0)
    return FrameCut(-float(k_sd), f"frame score < {bulk}; no threshold samples", None,
                    0.0, 1.0)


def frame_report(aum: np.ndarray, kind: np.ndarray, noise: np.ndarray | None = None,
                 labels: np.ndarray | None = None, prediction: np.ndarray | None = None,
                 bodyparts=None, views=None) -> dict:
    """Frame scores, cut and flags of a run with realistic threshold samples.

    aum `[n, K]` ensemble AUM; kind int8 `[n, K]` threshold kinds (`threshold.KINDS`);
    noise bool `[n, K]` planted label noise when known. With `labels` and `prediction`
    (`[n, K, 2]`, the out-of-subset prediction, same pixels) the score is the swap-aware
    frame score (`swap_aware_scores`, cut `score_cut`); without, the frame AUM (cut
    `frame_cut`). `views` (`KeypointDataset.views`, with `bodyparts`) adds the multi-view
    swap evidence (`multiview.check`, fit on the real frames). Returns a dict with "score"
    [n], "frame_aum" [n], "probe_kind" [n],
    "cut" (FrameCut), "flagged" bool [n] (real frames only), "terms" (the swap-aware
    parts or None), and the numbers for analysis.json under "summary"."""
    from ensemble_jax.analysis.aum import roc_auc
    from ensemble_jax.analysis.threshold import KINDS
    fa = frame_aum(aum)
    pk = threshold_frames(kind)
    probe = pk > 0
    terms = None
    if labels is not None and prediction is not None:
        from ensemble_jax.analysis import multiview as mv_lib
        mv = mv_lib.check(labels, bodyparts, views, ~probe) if views else None
        terms = swap_aware_scores(aum, labels, prediction, ~probe, multiview=mv)
        score = terms["score"]
        fc = score_cut(score, probe)
        what = ("swap-aware frame score (lower = more suspect): min of the label term (the "
                "frame's lowest label AUM" + (", each label scaled by its own keypoint's "
                "AUM over the real frames" if terms["label_scaling"] == "keypoint" else "")
                + "), the swap term (how much better the out-of-subset prediction fits two "
                "labels exchanged" + (", summed per pair with the multi-view gain: how "
                "much better the labels of the other camera views agree with them "
                "exchanged" if mv is not None else "") + ") and their Stouffer sum, in "
                "robust SDs from the real frames' bulk")
    else:
        score = fa
        fc = frame_cut(score, probe)
        what = "frame AUM: lowest AUM among the frame's labels (lower = more suspect)"
    with np.errstate(invalid="ignore"):
        below = np.isfinite(score) & (score < fc.cut)
    flagged = below & ~probe
    summary: dict = {
        "score": what, "cut": fc.cut if np.isfinite(fc.cut) else None, "rule": fc.rule,
        "n_frames": int((~probe).sum()), "n_flagged": int(flagged.sum()),
        "threshold_frames": {}}
    if terms is not None:
        summary["terms"] = {
            "label_term_bulk": {"median": _f(terms["label_bulk"][0]),
                                "sd_upper_half": _f(terms["label_bulk"][1])},
            "label_scaling": terms["label_scaling"],
            "swap_term_bulk": {"median": _f(terms["swap_bulk"][0]),
                               "sd_lower_half": _f(terms["swap_bulk"][1])},
            "sigma_px_training": [_f(v) for v in terms["sigma"]],
            "n_flagged_by_swap_term": int((flagged & (terms["swap_z"] < fc.cut)).sum()),
            "n_flagged_by_label_term": int((flagged & (terms["label_z"] < fc.cut)).sum()),
            "n_flagged_by_joint_term": int((flagged & (terms["joint_z"] < fc.cut)).sum())}
        if mv is not None:
            r = mv["residual"]
            summary["terms"]["multiview"] = {
                "views": [list(v) for v in views],
                "pca_components": int(mv["pca"]["components"].shape[0]),
                "pca_rows_fit": mv["pca"]["n_rows"],
                "pca_rows_dropped": mv["pca"].get("n_rows_dropped"),
                "pca_variance_kept": _f(mv["pca"]["explained"]),
                "residual_px_training_median_real": _f(np.nanmedian(r[~probe])),
                "residual_px_training_p95_real": _f(np.nanpercentile(r[~probe], 95)),
                "member_gain_bulk": {"median": _f(terms["member_gain_bulk"][0]),
                                     "sd_lower_half": _f(terms["member_gain_bulk"][1])},
                "view_gain_bulk": {"median": _f(terms["view_gain_bulk"][0]),
                                   "sd_lower_half": _f(terms["view_gain_bulk"][1])}}
    for code, name in KINDS.items():
        sel = pk == code
        if sel.any():
            s = score[sel]
            summary["threshold_frames"][name] = {
                "n": int(sel.sum()), "median_score": _f(np.nanmedian(s)),
                "median_frame_aum": _f(np.nanmedian(fa[sel])),
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
    return {"score": score, "frame_aum": fa, "probe_kind": pk, "cut": fc,
            "flagged": flagged, "terms": terms, "summary": summary}


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def write_suspects(path, frame_ids, bodyparts, score, flagged, probe_kind, kinds: list[dict],
                   labels_orig, aum, noise=None, frame_aum_values=None, terms=None
                   ) -> list[dict]:
    """Writes `suspects.csv` (real frames ranked by `score`, lowest first; threshold
    frames left out) and returns its rows as dicts. Coordinates in original pixels.
    With `terms` (`swap_aware_scores`) the columns frame_score, label_z and swap_z are
    written too; frame_aum is `frame_aum_values` (default: `score`)."""
    fa = score if frame_aum_values is None else frame_aum_values
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
        row = {"rank": rank, "frame": frame_ids[i]}
        if terms is not None:
            row.update(frame_score=float(score[i]), label_z=float(terms["label_z"][i]),
                       swap_z=float(terms["swap_z"][i]))
        row.update({
            "frame_aum": float(fa[i]), "flagged": int(flagged[i]), "suspected": k["kind"],
            "description": what, "keypoint": bodyparts[a],
            "other_keypoint": bodyparts[b] if b is not None else "", "aum": float(aum[i, a]),
            "label_x": float(labels_orig[i, a, 0]), "label_y": float(labels_orig[i, a, 1]),
            "suggested_x": float(ca[0]), "suggested_y": float(ca[1])})
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
                     f"{r['description']} (score {r.get('frame_score', r['frame_aum']):.2f})",
                     fontsize=8)
    handles = [Line2D([], [], marker="s", ls="", color=colours[j], ms=7, label=bp)
               for j, bp in enumerate(bodyparts)]
    handles += [Line2D([], [], marker="+", ls="", color="0.3", ms=10, mew=2.5, label="label"),
                Line2D([], [], marker="x", ls="", color="0.3", ms=7, mew=1.8,
                       label="ensemble prediction"),
                Line2D([], [], color="red", lw=1.8, label="suggested correction")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
               fontsize=8, frameon=False)
    fig.suptitle("Suspect frames, most suspect first", fontsize=11)
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


def section(run, train, masks: np.ndarray, member_keypoints: np.ndarray, aum: np.ndarray,
            kind: np.ndarray, cut: float, top: int, figures: bool) -> tuple[dict, dict]:
    """`analyze`'s label-check section: suspect frames from AUM `[n, K]` and the
    out-of-subset prediction of the alive members (`member_keypoints [Ma, n, K, 2]`,
    `masks [Ma, n]`); writes suspects.csv (and suspects.png, aum_by_kind.png)."""
    pred = oob_prediction(member_keypoints, masks)                      # training px
    frames = frame_report(aum, kind, train.noise_mask, labels=train.keypoints,
                          prediction=pred, bodyparts=list(train.bodyparts),
                          views=getattr(train, "views", None))
    kinds = swap_aware_kind(train.keypoints, pred, frames["terms"])
    corrections = np.stack([kd["correction"] for kd in kinds]) if kinds else \
        np.zeros((0, train.n_keypoints, 2))
    bps = list(train.bodyparts)
    rows = write_suspects(
        run / "suspects.csv", list(train.frame_ids), bps, frames["score"], frames["flagged"],
        frames["probe_kind"], [dict(kd, correction=c) for kd, c in
                               zip(kinds, train.to_original(corrections))],
        train.original_keypoints(), aum, train.noise_mask, frames["frame_aum"],
        frames["terms"])
    info = dict(frames["summary"])
    info["prediction"] = ("median over the alive members that did not train on "
                          "the frame (all alive members if every one did)")
    info["top"] = rows[:top]
    if figures:
        gallery(run / "suspects.png", train.images, train.keypoints, pred, list(corrections),
                rows, {f: i for i, f in enumerate(train.frame_ids)}, bps)
        aum_by_kind(run / "aum_by_kind.png", np.where(train.labeled, aum, np.nan), kind,
                    train.noise_mask, cut)
    return {"prediction": pred, "corrections": corrections, "rows": rows}, info
