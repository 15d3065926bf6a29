"""Study 3: which training frames help, which hurt?

A random-plan sweep of its own (OUT/sweep_random: `--members` members, each on a random
50% of the training frames, common random numbers so that members differ only by their
subset; `TrainConfig.crn`), analysed by `ensemble_jax.analysis.analyze` with the estimator
valid for that plan (difference of means, Feldman & Zhang): for training frame i and test
frame t, the mean of a per-member metric on t over the members whose subset holds i minus
the mean over the members without i, for three metrics:
  pixel_error     mean keypoint error (px, original image; > 0: frame i hurts t)
  gt_confidence   sigmoid of the logit at the label pixel (> 0: frame i helps t)
  gt_probability  softmax of the whole scoremap at the label pixel (> 0: helps)
and per training frame the effect on the member's mean test error. Every effect has a
p-value (Welch t, or a permutation null for small groups) and Benjamini-Hochberg q-values
within two families (all pairs; all frames); a finding is q < 0.025 in either family, the
rule `analyze` uses (P(any finding | no effect) <= 0.05). When nothing passes, the study says
"not resolved" and how many members would resolve an effect of 5% of the mean error.

Members: 32 by default, a sweep this 2-core CPU trains in about 10-20 minutes; whether
that resolves anything on the data is measured, not assumed: the analysis reports the
members needed at the measured member-to-member spread (`members_needed`).

    python experiments/study3_influence.py [--out runs/studies] [--data PATH] [--quick]
        [--members N]

Writes OUT/study3_influence/: numbers.json (conclusion: `findings`), train_frames.csv,
top_pairs.csv, influence_matrices.png, long_tail.png, harmful_helpful_frames.png,
strong_pair.png, section.json; OUT/report.html.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "study3_influence"
METRICS = ("pixel_error", "gt_confidence", "gt_probability")
LABEL = {"pixel_error": "pixel error", "gt_confidence": "confidence at the label",
         "gt_probability": "label probability (softmax)"}
UNIT = {"pixel_error": "px", "gt_confidence": "probability", "gt_probability": "probability"}
SIGN = {"pixel_error": -1.0, "gt_confidence": 1.0, "gt_probability": 1.0}   # + = helps
N_SHOW = 4
MEMBERS = 32                 # default random-plan members (--members)
QUICK_MEMBERS = 12
FRACTION = 0.5


def random_sweep_overrides(args) -> dict:
    """The study's own sweep: random plan, crn, `--members` members on 50% subsets."""
    n = args.members if args.members is not None else (QUICK_MEMBERS if args.quick
                                                       else MEMBERS)
    return {"plan": "random", "n_members": int(n), "fraction": FRACTION,
            "train_overrides": {"crn": True}}


def ensure_analysis(run_dir: Path, n_test: int, log=print) -> dict:
    """influence.npz of `analyze`, reused when newer than the trained parameters."""
    import json

    from ensemble_jax import io as eio
    from ensemble_jax.analysis.analyze import analyze
    inf, js, params = (run_dir / "influence.npz", run_dir / "analysis.json",
                       run_dir / "params.msgpack")
    if not (inf.is_file() and js.is_file() and inf.stat().st_mtime >= params.stat().st_mtime):
        t = time.perf_counter()
        # one batch shape for train and test frames: one compile of the member pass
        analyze(run_dir, progress=False, log=log, batch_size=max(1, min(64, n_test)))
        log(f"analysed {run_dir} in {time.perf_counter() - t:.0f} s")
    else:
        log(f"reusing {inf}")
    return eio.load_npz(inf), json.loads(js.read_text())


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--members", type=int, default=None,
                       help=f"random-plan members (default {MEMBERS}, {QUICK_MEMBERS} with "
                            "--quick)")
    args = common.parse_args(__doc__.split("\n")[0], argv, extra=extra)
    common.setup()
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    from ensemble_jax import io as eio
    from ensemble_jax.analysis import figures
    from ensemble_jax.analysis.attribution import N_FAMILIES
    from ensemble_jax.analysis.aum import roc_auc
    from ensemble_jax.analysis.report import write_section
    from ensemble_jax.data.letterbox import to_train

    t0 = time.perf_counter()
    run = common.load_run(common.ensure_sweep(args, "sweep_random",
                                              **random_sweep_overrides(args)))
    out = common.study_dir(args, NAME)
    train, test = run.train, run.test
    z, analysis = ensure_analysis(run.path, test.n_frames)
    members = z["members"].astype(int)
    masks = run.masks[members] > 0
    n, T = masks.shape[1], test.n_frames
    ids_tr = [str(i) for i in z["train_frame_ids"]]
    ids_te = [str(i) for i in z["test_frame_ids"]]
    thr = (run.threshold_mask.any(1) if run.threshold_mask is not None
           else np.zeros(n, bool))
    noise = train.noise_mask.any(1) if train.noise_mask is not None else None

    eff = {m: z[f"{m}_effect"].astype(np.float64) for m in METRICS}
    pv = {m: z[f"{m}_p"].astype(np.float64) for m in METRICS}
    qv = {m: z[f"{m}_q"].astype(np.float64) for m in METRICS}
    inf_info = analysis["influence"]
    level = inf_info["q_level"] / N_FAMILIES          # the finding rule of `analyze`
    se = {m: z[f"{m}_stderr"].astype(np.float64) for m in METRICS}
    with np.errstate(invalid="ignore", divide="ignore"):
        zsc = {m: eff[m] / se[m] for m in METRICS}
    # per training frame: mean effect over test frames, signed so that + = helps
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # rows of NaN: undefined frames
        frame_help = {m: SIGN[m] * np.nanmean(eff[m], 1) for m in METRICS}
    defined = np.isfinite(eff["pixel_error"]).any(1)

    # ----- long tail
    tail = {}
    for m in METRICS:
        v = eff[m][np.isfinite(eff[m])]
        a = np.sort(np.abs(v))[::-1]
        top1 = max(1, int(round(0.01 * a.size))) if a.size else 0
        med = float(np.median(a)) if a.size else float("nan")
        tail[m] = {
            "n_pairs": int(v.size), "mean": float(v.mean()) if v.size else float("nan"),
            "std": float(v.std()) if v.size else float("nan"),
            "median_abs": med, "p99_abs": float(np.percentile(a, 99)) if a.size else float("nan"),
            "max_abs": float(a[0]) if a.size else float("nan"),
            "p99_over_median_abs": float(np.percentile(a, 99) / med) if a.size and med > 0
            else float("nan"),
            "top1pct_share_of_abs_effect": float(a[:top1].sum() / a.sum()) if a.sum() > 0
            else float("nan"),
            "excess_kurtosis": float(((v - v.mean()) ** 4).mean() / v.var() ** 2 - 3)
            if v.size > 3 and v.var() > 0 else float("nan"),
            "frac_p_below_0.05": float((pv[m][np.isfinite(pv[m])] < 0.05).mean())
            if np.isfinite(pv[m]).any() else float("nan"),
            "n_pairs_q_below_level": int((np.nan_to_num(qv[m], nan=1.0) < level).sum()),
            "min_q": float(np.nanmin(qv[m])) if np.isfinite(qv[m]).any() else float("nan"),
        }
    # agreement between metrics (per training frame, signed so + = helps)
    def _corr(a, b):
        ok = np.isfinite(a) & np.isfinite(b)
        return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")
    agree = {"pixel_error_vs_gt_confidence": _corr(frame_help["pixel_error"],
                                                   frame_help["gt_confidence"]),
             "pixel_error_vs_gt_probability": _corr(frame_help["pixel_error"],
                                                    frame_help["gt_probability"]),
             "gt_confidence_vs_gt_probability": _corr(frame_help["gt_confidence"],
                                                      frame_help["gt_probability"])}
    # per frame: effect on the member's mean test error (px, > 0 raises it), its q-value
    harm_score = z["frame_pixel_error_effect"].astype(np.float64)
    harm_q = z["frame_pixel_error_q"].astype(np.float64)
    is_finding = np.nan_to_num(harm_q, nan=1.0) < level
    auc_thr = roc_auc(harm_score, thr) if thr.any() else float("nan")
    auc_thr_p = float("nan")
    if thr.any() and (~thr).any():
        from scipy import stats
        ok = np.isfinite(harm_score)
        if (ok & thr).any() and (ok & ~thr).any():
            auc_thr_p = float(stats.mannwhitneyu(harm_score[ok & thr], harm_score[ok & ~thr],
                                                 alternative="greater").pvalue)
    auc_noise = roc_auc(harm_score, noise) if noise is not None and noise.any() else float("nan")
    order = np.argsort(-np.nan_to_num(harm_score, nan=-np.inf), kind="stable")
    # findings first (q < level), then the largest ranked effects, marked as not findings
    order = np.concatenate([order[is_finding[order]], order[~is_finding[order]]])
    harmful = [int(i) for i in order if np.isfinite(harm_score[i]) and harm_score[i] > 0][:N_SHOW]
    order_h = np.argsort(np.nan_to_num(harm_score, nan=np.inf), kind="stable")
    order_h = np.concatenate([order_h[is_finding[order_h]], order_h[~is_finding[order_h]]])
    helpful = [int(i) for i in order_h if np.isfinite(harm_score[i]) and harm_score[i] < 0][:N_SHOW]
    n_distinct_patterns = len({masks[:, i].tobytes() for i in range(n)})

    # ----- strongest pair (pixel error, |z| with both groups >= 2 members)
    zabs = np.where(np.isfinite(zsc["pixel_error"]), np.abs(zsc["pixel_error"]), -1)
    # strongest pair: smallest p-value (calibrated), ties by |z|
    p_pe = np.where(np.isfinite(pv["pixel_error"]), pv["pixel_error"], 2.0)
    pi, pt = np.unravel_index(int(np.lexsort((-zabs.ravel(), p_pe.ravel()))[0]), zabs.shape)
    pair = {"train_frame": ids_tr[pi], "test_frame": ids_te[pt], "train_index": int(pi),
            "test_index": int(pt), "effect_px": float(eff["pixel_error"][pi, pt]),
            "stderr_px": float(se["pixel_error"][pi, pt]),
            "z": float(zsc["pixel_error"][pi, pt]),
            "p": float(pv["pixel_error"][pi, pt]), "q": float(qv["pixel_error"][pi, pt]),
            "finding": bool(qv["pixel_error"][pi, pt] < level),
            "effect_gt_confidence": float(eff["gt_confidence"][pi, pt]),
            "effect_gt_probability": float(eff["gt_probability"][pi, pt]),
            "train_is_threshold_sample": bool(thr[pi])}
    inside = masks[:, pi]
    vals = z["pixel_error_values"][:, pt].astype(np.float64)
    pair["mean_error_with_px"] = float(np.nanmean(vals[inside]))
    pair["mean_error_without_px"] = float(np.nanmean(vals[~inside]))
    pair["n_with"], pair["n_without"] = int(inside.sum()), int((~inside).sum())

    # ----- files
    rows = []
    for i in range(n):
        rows.append([ids_tr[i], float(harm_score[i]), float(harm_q[i]), int(is_finding[i])]
                    + [float(frame_help[m][i]) for m in METRICS]
                    + [int(masks[:, i].sum()), int(thr[i])]
                    + ([int(noise[i])] if noise is not None else []))
    common.write_csv(out / "train_frames.csv",
                     ["frame", "harm_px", "harm_q", "finding"]
                     + [f"help_{m}" for m in METRICS]
                     + ["members_holding", "threshold_sample"]
                     + (["planted_noise"] if noise is not None else []), rows)
    flat = np.flatnonzero(zabs.ravel() > 0)
    top_idx = flat[np.argsort(-zabs.ravel()[flat], kind="stable")][:50]
    common.write_csv(out / "top_pairs.csv",
                     ["train_frame", "test_frame", "effect_px", "stderr_px", "z",
                      "effect_gt_confidence", "effect_gt_probability"],
                     [[ids_tr[i], ids_te[t], float(eff["pixel_error"][i, t]),
                       float(se["pixel_error"][i, t]), float(zsc["pixel_error"][i, t]),
                       float(eff["gt_confidence"][i, t]), float(eff["gt_probability"][i, t])]
                      for i, t in (np.unravel_index(k, zabs.shape) for k in top_idx)])

    # ----- figure: influence matrices (rows sorted by harm)
    rows_sorted = np.argsort(-np.nan_to_num(harm_score, nan=0.0), kind="stable")
    cols_sorted = np.argsort(-np.nanmean(z["pixel_error_values"], 0), kind="stable")
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), layout="constrained")
    for ax, m in zip(axes, METRICS):
        e = eff[m][rows_sorted][:, cols_sorted]
        fin = np.abs(e[np.isfinite(e)])
        vmax = float(np.percentile(fin, 97)) if fin.size and np.percentile(fin, 97) > 0 else 1.0
        cmap = plt.get_cmap("RdBu_r" if SIGN[m] < 0 else "RdBu").with_extremes(bad="0.8")
        im = ax.imshow(np.ma.masked_invalid(e), aspect="auto", cmap=cmap,
                       interpolation="nearest",
                       norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax))
        cb = fig.colorbar(im, ax=ax, extend="both", shrink=0.9)
        cb.set_label(f"effect ({UNIT[m]}); red = hurts, blue = helps", fontsize=9)
        ax.set_title(f"{LABEL[m]} ({UNIT[m]})", fontsize=10)
        ax.set_xlabel(f"test frame ({T}; hardest first)")
        ax.set_ylabel(f"training frame ({n}; most harmful first)")
    fig.suptitle(f"Subset influence train x test ({members.size} members): mean over members "
                 "holding the training frame minus mean over members without it; grey = "
                 "undefined (frame in every subset or in none)", fontsize=10)
    eio.save_figure(out / "influence_matrices.png", fig, dpi=110)
    plt.close(fig)

    # ----- figure: long tail
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    for ax, m in zip(axes, METRICS):
        v = eff[m][np.isfinite(eff[m])]
        unit = UNIT[m]
        peak = 1.0
        if v.size:
            counts, _, _ = ax.hist(v, bins=80, color="tab:blue", alpha=0.8, label="effects")
            peak = max(1.0, float(counts.max()))
            sd = v.std()
            xs = np.linspace(v.min(), v.max(), 400)
            if sd > 0:
                bw = (v.max() - v.min()) / 80
                g = v.size * bw * np.exp(-0.5 * ((xs - v.mean()) / sd) ** 2) / (
                    sd * np.sqrt(2 * np.pi))
                ax.plot(xs, np.where(g >= 0.5, g, np.nan), "k--", lw=1,
                        label="Gaussian, same mean and s.d.")
        ax.set_yscale("log")
        ax.set_ylim(0.8, 3 * peak)
        ax.set_xlabel(f"effect on {LABEL[m]} ({unit})")
        ax.set_ylabel("(train, test) pairs (count, log scale)")
        t = tail[m]
        ax.set_title(f"{LABEL[m]}: 99th pct |effect| = {t['p99_over_median_abs']:.1f}x "
                     f"median;\nexcess kurtosis {t['excess_kurtosis']:.1f}", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Distribution of the subset-influence effects over all (training, test) "
                 "frame pairs", fontsize=10)
    eio.save_figure(out / "long_tail.png", fig, dpi=110)
    plt.close(fig)

    # ----- figure: most harmful and helpful training frames
    sel = harmful + helpful
    figs = [("influence_matrices.png",
             "Subset-influence matrices (training frames x test frames) for the three metrics; "
             "colours are oriented so that red always means the training frame makes the test "
             "frame worse (higher pixel error, lower confidence or probability at the label)."),
            ("long_tail.png",
             "Histogram of all (training, test) effects per metric on a log count scale, with "
             "a Gaussian of the same mean and s.d. for comparison: the tails are the few "
             "pairs that matter.")]
    if sel:
        pred_tr = run.predictions["train_keypoints"][members][:, sel]
        lb = np.asarray(train.letterbox)[sel]
        p_train_px = np.stack([to_train(k, lb) for k in pred_tr])
        titles = [(f"HARMFUL {common.short_id(ids_tr[i])}\n" if i in harmful else
                   f"HELPFUL {common.short_id(ids_tr[i])}\n")
                  + f"{harm_score[i]:+.2f} px, q {harm_q[i]:.2g}"
                  + (" FINDING" if is_finding[i] else "")
                  + (" [threshold]" if thr[i] else "")
                  + (" [noise]" if noise is not None and noise[i] else "") for i in sel]
        figures.frame_grid(
            out / "harmful_helpful_frames.png", train.images[sel], train.keypoints[sel],
            p_train_px, titles, list(train.bodyparts), cols=max(len(harmful), len(helpful), 1),
            title="Largest harmful (top row) and helpful (bottom row) frame effects, findings "
                  "(q below the rule) first\npx: change of the members' mean test error when "
                  "the frame is in the subset (+ hurts); [threshold]: label moved on purpose")
        figs.append(("harmful_helpful_frames.png",
                     "The training frames whose presence most raises (harmful) and most lowers "
                     "(helpful) the mean test error, at training resolution, with their labels "
                     "(+) and every member's prediction (x)."))

    # ----- figure: strongest pair, detections with and without the training frame
    try:
        res = run.result
        p = res.predict(test.images[pt:pt + 1], heatmaps=True, members=members.tolist())
        # sigmoid as exp(-log(1 + e^-x)): no overflow for the strongly negative logits
        heat = np.exp(-np.logaddexp(0.0, -np.asarray(p.heatmaps[:, 0], np.float64)))  # [M, K, h, w]
    except Exception as e:  # the figure still shows detections without the maps
        print(f"warning: no heatmaps for the strong pair ({type(e).__name__}: {e})")
        p, heat = None, None
    kp_te = (p.keypoints[:, 0] if p is not None else
             to_train(run.predictions["test_keypoints"][members][:, pt], test.letterbox[pt]))
    k = train.n_keypoints
    colours = plt.cm.tab10(np.arange(k) % 10)
    fig, axes = plt.subplots(1, 3, figsize=(14, 5.6), layout="constrained")
    ti = train.images[pi].astype(np.float32) / 255
    axes[0].imshow(0.6 * ti + 0.4)
    for j in range(k):
        axes[0].plot(*train.keypoints[pi, j], "+", color=colours[j], ms=16, mew=3)
    axes[0].set_title(f"training frame {common.short_id(ids_tr[pi])} and its labels (+)"
                      + ("\n(threshold sample: label moved on purpose)" if thr[pi] else ""),
                      fontsize=9)
    img = test.images[pt].astype(np.float32) / 255
    h, w = img.shape[:2]
    for ax, grp, name in ((axes[1], inside, "with"), (axes[2], ~inside, "without")):
        ax.imshow(0.6 * img + 0.4)
        if heat is not None and grp.any():
            hm = heat[grp].mean(0).max(0)                      # [h, w] in [0, 1]
            rgba = np.zeros(hm.shape + (4,))
            rgba[..., 0], rgba[..., 3] = 1.0, 0.6 * np.clip(hm, 0, 1)
            ax.imshow(rgba, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
        for j in range(k):
            ax.plot(kp_te[grp, j, 0], kp_te[grp, j, 1], "x", color=colours[j], ms=8, mew=2,
                    ls="")
            ax.plot(*test.keypoints[pt, j], "+", color=colours[j], ms=16, mew=3)
        mean_e = pair["mean_error_with_px"] if name == "with" else pair["mean_error_without_px"]
        ax.set_title(f"test frame {common.short_id(ids_te[pt])}, {int(grp.sum())} members\n"
                     f"{name} the training frame: mean error {mean_e:.2f} px", fontsize=9)
    for ax in axes:
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xlabel("x (training px)")
        ax.set_ylabel("y (training px)")
    handles = [plt.Line2D([], [], marker="s", ls="", color=colours[j], label=b)
               for j, b in enumerate(train.bodyparts)]
    handles += [plt.Line2D([], [], marker="+", ls="", color="0.3", ms=12, mew=3, label="label"),
                plt.Line2D([], [], marker="x", ls="", color="0.3", ms=8, mew=2,
                           label="member detections"),
                plt.Rectangle((0, 0), 1, 1, color=(1, 0, 0, 0.5),
                              label="scoremap (mean over the group, max over keypoints)")]
    fig.suptitle(f"Smallest-p (train, test) pair: effect {pair['effect_px']:+.2f} px on the "
                 f"test frame's error (p = {pair['p']:.2g}, q = {pair['q']:.2g}, "
                 + ("a finding" if pair["finding"] else "not a finding") + ")", fontsize=11)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8),
               fontsize=9)
    eio.save_figure(out / "strong_pair.png", fig, dpi=110)
    plt.close(fig)
    figs.append(("strong_pair.png",
                 "The (training, test) pair with the smallest p-value on pixel error: the training frame (left) and the test frame's detections by the "
                 "members whose subset holds it (middle) and by those without it (right)."))

    # ----- text
    t = tail["pixel_error"]
    n_fr, n_pr = int(inf_info.get("n_frames_resolved", 0)), int(inf_info.get("n_pairs_resolved", 0))
    need = (inf_info.get("members_needed") or {}).get("members_needed")
    finding = {"resolved": bool(inf_info.get("resolved")), "estimator": inf_info["estimator"],
               "plan": inf_info["plan"], "design": inf_info.get("design"),
               "members": int(members.size), "rule": inf_info["finding_rule"],
               "n_frames_resolved": n_fr, "n_pairs_resolved": n_pr,
               "harmful_frames": inf_info.get("harmful_frames", []),
               "helpful_frames": inf_info.get("helpful_frames", []),
               "harmful_pairs": inf_info.get("harmful_pairs", []),
               "helpful_pairs": inf_info.get("helpful_pairs", []),
               "min_q_frames": inf_info.get("min_q_frames"),
               "min_q_pairs": inf_info.get("min_q_pairs"),
               "members_needed": need,
               "members_needed_basis": inf_info.get("members_needed")}
    if finding["resolved"]:
        n_thr_found = int((is_finding & thr).sum())
        finding["statement"] = (
            f"resolved with {members.size} members: {n_fr} training frame(s) with an effect "
            f"on the mean test error ({len(finding['harmful_frames'])} harmful, "
            f"{len(finding['helpful_frames'])} helpful; {n_thr_found} of them AUM threshold "
            f"samples) and {n_pr} (training, test) pair(s) at q < {level:g}")
    else:
        finding["statement"] = "not resolved: " + inf_info.get("not_resolved", "")
    paras = [
        f"{members.size} members on random {FRACTION:.0%} subsets with common random numbers "
        f"(estimator {inf_info['estimator']}, valid for plan {inf_info['plan']!r}), {n} "
        f"training x {T} test frames. Finding rule: {inf_info['finding_rule']}. "
        f"Conclusion: {finding['statement']}"
        + (f" (smallest q over frames {finding['min_q_frames']:.2g}, over pairs "
           f"{finding['min_q_pairs']:.2g})" if finding["min_q_frames"] is not None and
           finding["min_q_pairs"] is not None else "") + ".",
        f"On pixel error the effects have mean {t['mean']:+.3f} px, median |effect| "
        f"{t['median_abs']:.3f} px and maximum |effect| {t['max_abs']:.2f} px; the top 1% of "
        f"pairs carry {t['top1pct_share_of_abs_effect']:.0%} of the summed |effect| (excess "
        f"kurtosis {t['excess_kurtosis']:.1f}); {t['frac_p_below_0.05']:.1%} of the pairs have "
        f"p < 0.05 (5% expected with no effect, the p-values being calibrated) and "
        f"{t['n_pairs_q_below_level']} pass the finding rule.",
        "Across training frames (mean effect over test frames, oriented so + = helps) the "
        f"metrics agree with correlations {agree['pixel_error_vs_gt_confidence']:+.2f} "
        f"(pixel error vs confidence at the label), {agree['pixel_error_vs_gt_probability']:+.2f}"
        f" (pixel error vs label probability) and "
        f"{agree['gt_confidence_vs_gt_probability']:+.2f} (confidence vs probability).",
    ]
    def _frames(sel):
        return ", ".join(f"{common.short_id(ids_tr[i])} ({harm_score[i]:+.3f} px, q "
                         f"{harm_q[i]:.2g}" + (", threshold sample" if thr[i] else "")
                         + (", FINDING" if is_finding[i] else "") + ")" for i in sel)
    if harmful:
        paras.append("Largest effects on the members' mean test error, harmful side (only "
                     "those marked FINDING pass the rule; the rest are a ranking, not "
                     "findings): " + _frames(harmful) + ".")
    if helpful:
        paras.append("Helpful side: " + _frames(helpful) + ".")
    if np.isfinite(auc_thr):
        paras.append(
            f"The {int(thr.sum())} AUM threshold samples (labels moved on purpose) rank "
            f"{'above' if auc_thr > 0.5 else 'below'} the other frames on the frame effect "
            f"with ROC-AUC {auc_thr:.2f} (0.5 = chance; one-sided Mann-Whitney p = "
            f"{auc_thr_p:.2g}).")
    if np.isfinite(auc_noise):
        paras.append(f"Against planted label noise the frame effect has ROC-AUC "
                     f"{auc_noise:.2f}.")
    paras.append(
        f"Smallest-p pair: training frame {common.short_id(pair['train_frame'])} on test frame "
        f"{common.short_id(pair['test_frame'])}: the {pair['n_with']} members holding it err by "
        f"{pair['mean_error_with_px']:.2f} px on that frame, the {pair['n_without']} without it "
        f"by {pair['mean_error_without_px']:.2f} px (effect {pair['effect_px']:+.2f} ± "
        f"{pair['stderr_px']:.2f} px, p = {pair['p']:.2g}, q = {pair['q']:.2g}: "
        + ("a finding" if pair["finding"] else "not a finding") + ")"
        + ("; the training frame is a threshold sample." if pair["train_is_threshold_sample"]
           else "."))

    numbers = {"run": str(run.path), "members": members, "n_train": n, "n_test": T,
               "units": {"pixel_error": "px (original image)", "gt_confidence": "probability",
                         "gt_probability": "probability"},
               "tail": tail, "metric_agreement": agree,
               "n_defined_train_frames": int(defined.sum()),
               "n_membership_patterns": n_distinct_patterns,
               "harm_px": harm_score, "help": frame_help,
               "most_harmful": [{"frame": ids_tr[i], "harm_px": float(harm_score[i]),
                                 "threshold_sample": bool(thr[i])} for i in harmful],
               "most_helpful": [{"frame": ids_tr[i], "harm_px": float(harm_score[i]),
                                 "threshold_sample": bool(thr[i])} for i in helpful],
               "findings": finding, "threshold_samples_auc": auc_thr,
               "threshold_samples_auc_p": auc_thr_p, "planted_noise_auc": auc_noise,
               "strong_pair": pair, "effect_shape": list(eff["pixel_error"].shape),
               "wall_s": time.perf_counter() - t0}
    common.write_numbers(out, numbers)
    write_section(out, title="Study 3: which frames help, which hurt", paragraphs=paras,
                  figures=figs, tables=[{
                      "caption": "Tail of the effect distributions",
                      "columns": ["metric", "pairs", "median |effect|", "99th pct |effect|",
                                  "max |effect|", "top 1% share", "excess kurtosis",
                                  "p < 0.05", "findings (q)"],
                      "rows": [[m, tail[m]["n_pairs"], tail[m]["median_abs"],
                                tail[m]["p99_abs"], tail[m]["max_abs"],
                                tail[m]["top1pct_share_of_abs_effect"],
                                tail[m]["excess_kurtosis"], tail[m]["frac_p_below_0.05"],
                                tail[m]["n_pairs_q_below_level"]]
                               for m in METRICS]}],
                  order=30, conclusion=finding)
    print("\n".join(paras), flush=True)
    common.finish(args)
    print(f"study 3 done in {time.perf_counter() - t0:.0f} s", flush=True)
    return numbers


if __name__ == "__main__":
    main()
