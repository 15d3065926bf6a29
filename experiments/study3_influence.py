"""Study 3: which training frames help, which hurt?

Subset influence (`ensemble_jax.kernels.subset_influence`, computed by
`ensemble_jax.analysis.analyze` on the nested sweep shared with studies 1 and 2): for
training frame i and test frame t, the mean of a per-member metric on t over the members
whose subset holds i minus the mean over the members without i, for three metrics:
  pixel_error     mean keypoint error (px, original image; > 0: frame i hurts t)
  gt_confidence   sigmoid of the logit at the label pixel (> 0: frame i helps t)
  gt_probability  softmax of the whole scoremap at the label pixel (> 0: helps)
Then the long tail of the effects, the most harmful and most helpful training frames drawn
with their labels, and for the strongest (train, test) pair the test frame's detections
by the members with and without the training frame.

    python experiments/study3_influence.py [--out runs/studies] [--data PATH] [--quick]

Writes OUT/study3_influence/: numbers.json, train_frames.csv, top_pairs.csv,
influence_matrices.png, long_tail.png, harmful_helpful_frames.png, strong_pair.png,
section.json; OUT/report.html.
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
    args = common.parse_args(__doc__.split("\n")[0], argv)
    common.setup()
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    from ensemble_jax import io as eio
    from ensemble_jax.analysis import figures
    from ensemble_jax.analysis.aum import roc_auc
    from ensemble_jax.analysis.report import write_section
    from ensemble_jax.data.letterbox import to_train

    t0 = time.perf_counter()
    run = common.load_run(common.ensure_sweep(args))
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
        zz = zsc[m][np.isfinite(zsc[m])]
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
            "frac_abs_z_gt_3": float((np.abs(zz) > 3).mean()) if zz.size else float("nan"),
            "frac_abs_z_gt_3_gaussian": 0.0027,
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
    harm_score = -frame_help["pixel_error"]                 # px, > 0: raises test error
    auc_thr = roc_auc(harm_score, thr) if thr.any() else float("nan")
    auc_noise = roc_auc(harm_score, noise) if noise is not None and noise.any() else float("nan")
    order = np.argsort(-np.nan_to_num(harm_score, nan=-np.inf), kind="stable")
    harmful = [int(i) for i in order if np.isfinite(harm_score[i]) and harm_score[i] > 0][:N_SHOW]
    order_h = np.argsort(np.nan_to_num(harm_score, nan=np.inf), kind="stable")
    helpful = [int(i) for i in order_h if np.isfinite(harm_score[i]) and harm_score[i] < 0][:N_SHOW]
    n_distinct_patterns = len({masks[:, i].tobytes() for i in range(n)})

    # ----- strongest pair (pixel error, |z| with both groups >= 2 members)
    zabs = np.where(np.isfinite(zsc["pixel_error"]), np.abs(zsc["pixel_error"]), -1)
    pi, pt = np.unravel_index(int(np.argmax(zabs)), zabs.shape)
    pair = {"train_frame": ids_tr[pi], "test_frame": ids_te[pt], "train_index": int(pi),
            "test_index": int(pt), "effect_px": float(eff["pixel_error"][pi, pt]),
            "stderr_px": float(se["pixel_error"][pi, pt]),
            "z": float(zsc["pixel_error"][pi, pt]),
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
        rows.append([ids_tr[i], float(harm_score[i])] + [float(frame_help[m][i]) for m in METRICS]
                    + [int(masks[:, i].sum()), int(thr[i])]
                    + ([int(noise[i])] if noise is not None else []))
    common.write_csv(out / "train_frames.csv",
                     ["frame", "harm_px"] + [f"help_{m}" for m in METRICS]
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
                  + f"{harm_score[i]:+.2f} px test error"
                  + (" [threshold]" if thr[i] else "")
                  + (" [noise]" if noise is not None and noise[i] else "") for i in sel]
        figures.frame_grid(
            out / "harmful_helpful_frames.png", train.images[sel], train.keypoints[sel],
            p_train_px, titles, list(train.bodyparts), cols=max(len(harmful), len(helpful), 1),
            title="Most harmful (top row) and most helpful (bottom row) training frames\n"
                  "px: mean change of the test error when the frame is in a member's subset "
                  "(+ hurts); [threshold]: label moved on purpose")
        figs.append(("harmful_helpful_frames.png",
                     "The training frames whose presence most raises (harmful) and most lowers "
                     "(helpful) the mean test error, at training resolution, with their labels "
                     "(+) and every member's prediction (x)."))

    # ----- figure: strongest pair, detections with and without the training frame
    try:
        res = run.result
        p = res.predict(test.images[pt:pt + 1], heatmaps=True, members=members.tolist())
        heat = 1 / (1 + np.exp(-p.heatmaps[:, 0]))                      # [M, K, h, w]
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
    fig.suptitle(f"Strongest (train, test) pair: effect {pair['effect_px']:+.2f} px "
                 f"(z = {pair['z']:+.1f}) on the test frame's error", fontsize=11)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8),
               fontsize=9)
    eio.save_figure(out / "strong_pair.png", fig, dpi=110)
    plt.close(fig)
    figs.append(("strong_pair.png",
                 "The (training, test) pair with the largest |effect / standard error| on pixel "
                 "error: the training frame (left) and the test frame's detections by the "
                 "members whose subset holds it (middle) and by those without it (right)."))

    # ----- text
    t = tail["pixel_error"]
    paras = [
        f"{members.size} members, {n} training x {T} test frames; {int(defined.sum())} training "
        f"frames have a defined effect (held by some members and not by others; "
        f"{n_distinct_patterns} distinct membership patterns, frames sharing a pattern get "
        f"identical effects). On pixel error the effects have mean {t['mean']:+.3f} px, "
        f"median |effect| {t['median_abs']:.3f} px and maximum |effect| {t['max_abs']:.2f} px; "
        f"the top 1% of pairs carry {t['top1pct_share_of_abs_effect']:.0%} of the summed "
        f"|effect|, the 99th percentile is {t['p99_over_median_abs']:.1f}x the median "
        f"(excess kurtosis {t['excess_kurtosis']:.1f}; "
        + ("a long tail" if t["excess_kurtosis"] > 1 else "no heavier tail than a Gaussian")
        + f"), and {t['frac_abs_z_gt_3']:.1%} of pairs have |z| > 3 (0.3% expected by chance).",
        "Across training frames (mean effect over test frames, oriented so + = helps) the "
        f"metrics agree with correlations {agree['pixel_error_vs_gt_confidence']:+.2f} "
        f"(pixel error vs confidence at the label), {agree['pixel_error_vs_gt_probability']:+.2f}"
        f" (pixel error vs label probability) and "
        f"{agree['gt_confidence_vs_gt_probability']:+.2f} (confidence vs probability).",
    ]
    if harmful:
        paras.append("Most harmful training frames (mean rise of the test error when held): "
                     + ", ".join(f"{common.short_id(ids_tr[i])} ({harm_score[i]:+.2f} px"
                                 + (", threshold sample" if thr[i] else "") + ")"
                                 for i in harmful) + ".")
    if helpful:
        paras.append("Most helpful: " + ", ".join(
            f"{common.short_id(ids_tr[i])} ({harm_score[i]:+.2f} px"
            + (", threshold sample" if thr[i] else "") + ")" for i in helpful) + ".")
    if np.isfinite(auc_thr):
        paras.append(
            f"The {int(thr.sum())} AUM threshold samples (labels moved on purpose) rank "
            f"{'above' if auc_thr > 0.5 else 'below'} the other frames on harm with ROC-AUC "
            f"{auc_thr:.2f} (0.5 = chance): subset influence on test error "
            + ("does" if auc_thr >= 0.65 else "barely does" if auc_thr > 0.55 else "does not")
            + " single out deliberately mislabeled frames here.")
    if np.isfinite(auc_noise):
        paras.append(f"Against planted label noise the harm score has ROC-AUC {auc_noise:.2f}.")
    paras.append(
        f"Strongest pair: training frame {common.short_id(pair['train_frame'])} on test frame "
        f"{common.short_id(pair['test_frame'])}: the {pair['n_with']} members holding it err by "
        f"{pair['mean_error_with_px']:.2f} px on that frame, the {pair['n_without']} without it "
        f"by {pair['mean_error_without_px']:.2f} px (effect {pair['effect_px']:+.2f} ± "
        f"{pair['stderr_px']:.2f} px, z = {pair['z']:+.1f})"
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
               "threshold_samples_auc": auc_thr, "planted_noise_auc": auc_noise,
               "strong_pair": pair, "effect_shape": list(eff["pixel_error"].shape),
               "wall_s": time.perf_counter() - t0}
    common.write_numbers(out, numbers)
    write_section(out, title="Study 3: which frames help, which hurt", paragraphs=paras,
                  figures=figs, tables=[{
                      "caption": "Tail of the effect distributions",
                      "columns": ["metric", "pairs", "median |effect|", "99th pct |effect|",
                                  "max |effect|", "top 1% share", "excess kurtosis",
                                  "|z| > 3"],
                      "rows": [[m, tail[m]["n_pairs"], tail[m]["median_abs"],
                                tail[m]["p99_abs"], tail[m]["max_abs"],
                                tail[m]["top1pct_share_of_abs_effect"],
                                tail[m]["excess_kurtosis"], tail[m]["frac_abs_z_gt_3"]]
                               for m in METRICS]}],
                  order=30)
    print("\n".join(paras), flush=True)
    common.finish(args)
    print(f"study 3 done in {time.perf_counter() - t0:.0f} s", flush=True)
    return numbers


if __name__ == "__main__":
    main()
