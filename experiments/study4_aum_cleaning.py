"""Study 4: AUM for cleaning labels.

1. Detection: an ensemble is trained on every training frame, with AUM threshold samples
   (5% of the frames get one label moved far away on purpose). Labels whose ensemble AUM
   falls below the 99th percentile of the threshold samples' AUM are flagged; a frame is
   flagged when any of its (real) labels is. On synthetic data the flags are scored
   against the planted label noise: precision and recall per label and per frame, and the
   ROC-AUC of -AUM.
2. Cleaning: four arms retrained from the same initial weights (paired replicates), all
   as members of one ensemble fit. The frames that carry a threshold sample are left out
   of every arm: their moved label only calibrates the cut, and the true label at that
   keypoint was never scored, so no arm may train on them:
     plain       every frame
     drop        without the flagged frames
     curriculum  frames ordered by frame AUM (lowest label AUM of the frame), highest
                 first: the top 50% for the first third of the steps, the top 75% for the
                 second, all frames for the last third
     shrink      flagged labels get a target of `--shrink` times the Gaussian (the rest of
                 the heatmap stays 0). Exact in expectation without touching the trainer:
                 the binary cross-entropy is linear in the target, so a flagged frame is
                 drawn with weight s as itself and with weight 1 - s as a copy whose
                 flagged labels lie far outside the image (an all-zero target).
   Test error is measured against the true (clean) test labels on synthetic data.
   An arm whose data would equal plain's (nothing flagged: drop and shrink) or that would
   have no frames (every frame flagged: drop) is degenerate: it is named, with the reason,
   in numbers.json and on stdout, and neither trained nor compared.
3. Conclusion (numbers.json "conclusion", `conclude`): per compared arm a paired t
   interval over replicates of (arm - plain) test error, Bonferroni over the compared arms
   (experiments/intervals.py); the best arm, its difference, interval and whether it is
   resolved (interval excludes 0), else "not resolved" and how many replicates would be.

    python experiments/study4_aum_cleaning.py [--out runs/studies] [--quick] [--data PATH]
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import common, intervals  # noqa: E402

import numpy as np  # noqa: E402

NAME = "study4_aum_cleaning"
ARMS = ("plain", "drop", "curriculum", "shrink")
FAR = -1000.0          # a label this far outside the image has an all-zero target


def _extra(p):
    p.add_argument("--noise-rate", type=float, default=0.2,
                   help="synthetic planted label noise: share of frames corrupted (0.2)")
    p.add_argument("--frames", type=int, default=None, help="synthetic frames (train + test)")
    p.add_argument("--replicates", type=int, default=None,
                   help="paired replicates per arm (default 8; --quick 3)")
    p.add_argument("--shrink", type=float, default=0.25,
                   help="target scale of flagged labels in the 'shrink' arm (0.25)")


def configs(args):
    from ensemble_jax.models.heatmap_net import ModelConfig
    from ensemble_jax.training.config import ExecConfig, TrainConfig
    q = args.quick
    cfg = {
        "frames": args.frames or (96 if q else 300),
        "image_size": args.image_size or (32 if q else 64),
        "noise_rate": args.noise_rate, "test_fraction": 0.2,
        "threshold_fraction": 0.05, "detect_members": 2 if q else 3,
        "replicates": args.replicates or (3 if q else 8), "shrink": args.shrink,
        "seed": 2 if args.seed is None else args.seed,
        "curriculum_fractions": [0.5, 0.75, 1.0],
    }
    model = ModelConfig(widths=(8, 16, 32), head_width=16)
    train = TrainConfig(steps=args.steps or (60 if q else 600), batch_size=8,
                        learning_rate=3e-3, seed=cfg["seed"])
    return cfg, model, train, ExecConfig(strategy="sequential", chunk_size=60 if q else 100)


def load(args, cfg):
    """(train, test, test truth [t, K, 2], train truth [n, K, 2] or None for real data),
    truths in training pixels (real data: the labels)."""
    if args.data:
        from ensemble_jax.data.load import load_dataset
        data = load_dataset(args.data, format=args.format, image_size=cfg["image_size"])
        train, test = data.split(cfg["test_fraction"], seed=cfg["seed"])
        return train, test, test.keypoints, None
    from ensemble_jax.data.synthetic import synthetic_dataset_with_truth
    data, clean = synthetic_dataset_with_truth(cfg["frames"], image_size=cfg["image_size"],
                                               noise_rate=cfg["noise_rate"], seed=cfg["seed"])
    n_test = max(1, int(round(cfg["test_fraction"] * data.n_frames)))
    perm = np.random.default_rng(cfg["seed"]).permutation(data.n_frames)
    tr, te = np.sort(perm[n_test:]), np.sort(perm[:n_test])
    return data.take(tr), data.take(te), clean[te], clean[tr]


def swapped_labels(labels: np.ndarray, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """bool [n, K]: planted noise that is a left/right swap (the label sits on the partner's
    true position); the rest of the planted noise is displaced labels."""
    from ensemble_jax.data.synthetic import LEFT_RIGHT_PAIRS
    out = np.zeros(noise.shape, bool)
    k = noise.shape[1]
    for a, b in LEFT_RIGHT_PAIRS:
        if b < k:
            with np.errstate(invalid="ignore"):
                sw = (noise[:, a] & noise[:, b]
                      & np.isclose(labels[:, a], clean[:, b]).all(-1)
                      & np.isclose(labels[:, b], clean[:, a]).all(-1))
            out[:, a] |= sw
            out[:, b] |= sw
    return out


def precision_recall(flag: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((flag & truth).sum())
    nf, nt = int(flag.sum()), int(truth.sum())
    return {"flagged": nf, "planted": nt, "true_positives": tp,
            "precision": tp / nf if nf else float("nan"),
            "recall": tp / nt if nt else float("nan")}


def pr_curve(score: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall when flagging the top-j scores, j = 1..N."""
    order = np.argsort(-score, kind="stable")
    tp = np.cumsum(truth[order])
    j = np.arange(1, tp.size + 1)
    return tp / j, tp / max(int(truth.sum()), 1)


def arm_plan(n: int, flagged_frames: np.ndarray, frame_aum: np.ndarray, steps: int,
             fractions, shrink: float, replicates: int, exclude: np.ndarray | None = None):
    """The retraining arms as one staged fit.

    exclude: bool [n], frames no arm trains on (the frames that carry a threshold sample:
        their moved label calibrates the cut and their true label there was never scored).
    Returns (stages [(start, counts [M, n + n_copies])], arms [M] str, replicates [M] int,
    degenerate {arm: reason}, copied frames [n_copies] int). Columns n.. are zero-target
    copies of the flagged frames the arms train on. Counts are on a scale of `scale` per
    frame so that the shrink arm can weight a flagged frame s : 1 - s. An arm whose data
    would equal plain's in every stage, or that would have no frames, is degenerate: it is
    named with the reason and not trained (so it is never compared as if it differed).
    """
    scale = 4 if abs(shrink * 4 - round(shrink * 4)) < 1e-9 else 100
    use = np.ones(n, bool) if exclude is None else ~np.asarray(exclude, bool)
    n_use = int(use.sum())
    fl = np.flatnonzero(np.asarray(flagged_frames, bool) & use)
    width = n + fl.size
    base = np.zeros(width, np.int64)
    base[:n][use] = scale
    drop = base.copy()
    drop[fl] = 0
    shr = base.copy()
    shr[fl] = int(round(shrink * scale))
    shr[n + np.arange(fl.size)] = scale - shr[fl]
    # curriculum: the usable frames by frame AUM, highest first (NaN = never seen: last)
    key = np.where(np.isfinite(frame_aum), frame_aum, -np.inf)
    usable = np.flatnonzero(use)
    order = usable[np.argsort(-key[usable], kind="stable")]
    starts = [int(round(steps * i / len(fractions))) for i in range(len(fractions))]
    rows = {"plain": [base] * len(fractions), "drop": [drop] * len(fractions),
            "shrink": [shr] * len(fractions), "curriculum": []}
    for f in fractions:
        cur = np.zeros(width, np.int64)
        cur[order[:max(1, int(round(f * n_use)))]] = scale
        rows["curriculum"].append(cur)
    degenerate = {}
    if fl.size == 0:
        for arm in ("drop", "shrink"):
            degenerate[arm] = (f"nothing flagged among the {n_use} frames the arms train on: "
                               f"{arm} would train on exactly plain's data")
    elif fl.size == n_use:
        degenerate["drop"] = (f"every one of the {n_use} frames the arms train on is "
                              f"flagged: drop would have no frames")
    for arm in ARMS[1:]:
        if arm not in degenerate and all(np.array_equal(r, base) for r in rows[arm]):
            degenerate[arm] = "identical to plain in every stage"
    trained = [a for a in ARMS if a not in degenerate]
    stages = []
    for k in range(len(fractions)):
        stage_rows, arms, reps = [], [], []
        for r in range(replicates):
            for arm in trained:
                stage_rows.append(rows[arm][k])
                arms.append(arm)
                reps.append(r)
        stages.append((starts[k], np.stack(stage_rows)))
    return stages, np.array(arms), np.array(reps), degenerate, fl


def conclude(member_err: dict, degenerate: dict, alpha: float = intervals.FAMILY_ALPHA
             ) -> dict:
    """The study's conclusion from the members' test errors.

    member_err: {arm: [R] test error (px) of replicate r}, replicate r of every arm started
        from the same weights (paired); must hold "plain".
    degenerate: {arm: reason} of arms not trained (never compared).
    Each compared arm gets a paired t interval over replicates of (arm - plain), Bonferroni
    over the compared arms (experiments/intervals.py). best_arm: the compared arm of lowest
    mean difference; resolved: its interval excludes 0.
    """
    plain = np.asarray(member_err["plain"], np.float64)
    compared = [a for a in ARMS[1:] if a in member_err and a not in degenerate]
    a = alpha / max(len(compared), 1)
    per = {}
    for arm in compared:
        iv = intervals.paired_t(np.asarray(member_err[arm], np.float64) - plain, a)
        per[arm] = {"vs_plain_px": iv["mean"], "interval": iv["interval"],
                    "resolved": intervals.resolved(iv), "replicates": iv["n"],
                    "replicates_needed": intervals.units_needed(iv, a)}
    level = 1 - a
    method = (f"paired t interval over replicates (same initial weights) of arm minus "
              f"plain test error, {level:.2%} per arm (Bonferroni over {len(compared)} "
              f"compared arm{'s' if len(compared) != 1 else ''}: 95% for the family); "
              f"conditional on the test frames")
    out = {"best_arm": None, "vs_plain_px": None, "interval": [None, None],
           "resolved": False, "better_than_plain": False, "level": level,
           "method": method, "compared_arms": compared,
           "degenerate_arms": dict(degenerate), "arms": per}
    if not compared:
        out["statement"] = ("not resolved: no cleaning arm differs from plain in its data ("
                            + "; ".join(f"{k}: {v}" for k, v in degenerate.items())
                            + "), so there is nothing to compare.")
        return out
    best = min(compared, key=lambda x: per[x]["vs_plain_px"])
    b = per[best]
    lo, hi = b["interval"]
    out.update(best_arm=best, vs_plain_px=b["vs_plain_px"], interval=[lo, hi],
               resolved=b["resolved"], better_than_plain=bool(b["resolved"] and hi < 0))
    st = intervals.best_vs_baseline(
        best, {"mean": b["vs_plain_px"], "interval": [lo, hi], "level": level},
        b["replicates_needed"], baseline="plain", kind="arm", units=" px", span_units=" px",
        n_text=f"{b['replicates']} paired replicates")
    worse = [x for x in compared if per[x]["resolved"] and per[x]["vs_plain_px"] > 0
             and x != best]
    if worse:
        st += " Resolved worse than plain: " + ", ".join(
            f"{x} {per[x]['vs_plain_px']:+.3f} px" for x in worse) + "."
    if degenerate:
        st += " Not compared (degenerate): " + "; ".join(
            f"{k}: {v}" for k, v in degenerate.items()) + "."
    out["statement"] = st
    return out


def main(argv=None) -> dict:
    args = common.parse_args(__doc__.split("\n")[0], argv, extra=_extra)
    common.setup()
    from ensemble_jax.analysis import aum as aum_lib
    from ensemble_jax.analysis.threshold import inject_threshold_samples
    from ensemble_jax.data.dataset import KeypointDataset
    from ensemble_jax.training.result import consensus
    from ensemble_jax.training.staged import fit_staged
    from ensemble_jax.training.trainer import EnsembleTrainer
    log = print
    t0 = time.perf_counter()
    out = common.study_dir(args, NAME)
    cfg, model, tc, run = configs(args)
    train, test, truth, train_truth = load(args, cfg)
    synthetic = train_truth is not None
    n, k = train.n_frames, train.n_keypoints
    log(f"{NAME}: {n} train / {test.n_frames} test frames, {k} keypoints, images "
        f"{train.image_shape}; {'synthetic, noise rate ' + str(cfg['noise_rate']) if synthetic else train.source}")

    # ---------------- 1. detection
    kp_thr, thr = inject_threshold_samples(train.keypoints, train.images.shape[1:3],
                                           cfg["threshold_fraction"], cfg["seed"])
    det_train = dataclasses.replace(train, keypoints=kp_thr)
    trainer = EnsembleTrainer(model, tc, run)
    det = trainer.fit(det_train, np.ones((cfg["detect_members"], n), bool),
                      progress=not args.quiet, log=log)
    t_det = time.perf_counter() - t0
    rep = aum_lib.aum_report(det.aum_sum, det.aum_count, det.alive, thr)
    real = train.labeled & ~thr
    scored = real & np.isfinite(rep.aum)
    flag_kp = rep.flagged & real
    with np.errstate(invalid="ignore"):
        frame_aum = np.where(scored.any(1), np.where(scored, rep.aum, np.inf).min(1), np.nan)
    flag_frame = flag_kp.any(1)
    numbers: dict = {"config": cfg, "model": dataclasses.asdict(model),
                     "train": dataclasses.asdict(tc), "synthetic": synthetic,
                     "n_train": n, "n_test": test.n_frames, "n_keypoints": k,
                     "aum_cut": rep.cut, "aum_rule": rep.rule,
                     "n_labels": int(real.sum()), "n_threshold_samples": int(thr.sum()),
                     "n_flagged_labels": int(flag_kp.sum()),
                     "n_flagged_frames": int(flag_frame.sum()),
                     "detect_seconds": t_det}
    noise = train.noise_mask if synthetic else None
    if noise is not None:
        planted = noise & real
        numbers["labels"] = precision_recall(flag_kp, planted)
        numbers["frames"] = precision_recall(flag_frame, planted.any(1))
        numbers["roc_auc_labels"] = aum_lib.roc_auc(-rep.aum[scored], planted[scored])
        swap = swapped_labels(train.keypoints, train_truth, planted)
        numbers["recall_by_kind"] = {
            "left_right_swap": precision_recall(flag_kp & swap, planted & swap),
            "displaced": precision_recall(flag_kp & ~swap, planted & ~swap)}
        numbers["median_aum"] = {
            "clean": float(np.nanmedian(rep.aum[scored & ~planted])),
            "left_right_swap": float(np.nanmedian(rep.aum[scored & swap])) if (scored & swap).any() else float("nan"),
            "displaced": float(np.nanmedian(rep.aum[scored & planted & ~swap])) if (scored & planted & ~swap).any() else float("nan"),
            "threshold_samples": float(np.nanmedian(rep.aum[thr & np.isfinite(rep.aum)])) if (thr & np.isfinite(rep.aum)).any() else float("nan")}
        numbers["roc_auc_frames"] = aum_lib.roc_auc(-frame_aum[np.isfinite(frame_aum)],
                                                    planted.any(1)[np.isfinite(frame_aum)])
        log(f"AUM cut {rep.cut:.3f}: flagged {flag_kp.sum()} labels / {flag_frame.sum()} frames; "
            f"labels precision {numbers['labels']['precision']:.3f} recall "
            f"{numbers['labels']['recall']:.3f}; frames precision "
            f"{numbers['frames']['precision']:.3f} recall {numbers['frames']['recall']:.3f}; "
            f"ROC-AUC (labels) {numbers['roc_auc_labels']:.3f}; recall of displaced labels "
            f"{numbers['recall_by_kind']['displaced']['recall']:.3f}, of left/right swaps "
            f"{numbers['recall_by_kind']['left_right_swap']['recall']:.3f}")
    else:
        log(f"AUM cut {rep.cut:.3f}: flagged {flag_kp.sum()} labels / {flag_frame.sum()} frames")
    rows = []
    for i in range(n):
        for j in range(k):
            if train.labeled[i, j]:
                rows.append([train.frame_ids[i], train.bodyparts[j], float(rep.aum[i, j]),
                             int(thr[i, j]), int(flag_kp[i, j])]
                            + ([int(noise[i, j])] if noise is not None else []))
    common.write_csv(out / "aum_labels.csv", ["frame", "keypoint", "aum", "threshold_sample",
                                              "flagged"]
                     + (["planted_noise"] if noise is not None else []), rows)

    # ---------------- 2. retraining arms, one staged ensemble fit
    # Frames holding a threshold sample calibrate the cut only: no arm trains on them.
    excluded = thr.any(1)
    stages, arms, reps, degenerate, fl = arm_plan(
        n, flag_frame, frame_aum, tc.steps, cfg["curriculum_fractions"], cfg["shrink"],
        cfg["replicates"], exclude=excluded)
    numbers["threshold_frames_excluded_from_arms"] = int(excluded.sum())
    numbers["frames_arms_train_on"] = int((~excluded).sum())
    numbers["n_flagged_frames_in_arms"] = int(fl.size)
    numbers["degenerate_arms"] = degenerate
    for arm, why in degenerate.items():
        log(f"  {arm}: degenerate, not trained or compared: {why}")
    copies = train.keypoints[fl].copy()
    copies[flag_kp[fl]] = FAR
    big = KeypointDataset(
        images=np.concatenate([train.images, train.images[fl]]),
        keypoints=np.concatenate([train.keypoints, copies]), bodyparts=train.bodyparts,
        frame_ids=list(train.frame_ids) + [f"{train.frame_ids[i]}#zero-target" for i in fl],
        source=train.source)
    trained = [a for a in ARMS if a not in degenerate]
    t1 = time.perf_counter()
    res = fit_staged(EnsembleTrainer(model, tc, run), big, stages, member_ids=100 + reps,
                     progress=not args.quiet, log=log)
    t_arms = time.perf_counter() - t1
    pred = res.predict(test.images)
    err = common.frame_errors(test.to_original(pred.keypoints),
                              test.to_original(truth))                   # [M, t]
    member_err = np.nanmean(err, 1)                                     # [M]
    per_arm = {}
    for arm in trained:
        sel = np.flatnonzero((arms == arm) & res.alive)
        cons = consensus(pred.keypoints[sel], pred.confidences[sel])
        cerr = common.frame_errors(test.to_original(cons)[None], test.to_original(truth))[0]
        per_arm[arm] = {
            "member_test_px": [float(member_err[m]) for m in np.flatnonzero(arms == arm)],
            "mean_member_test_px": float(np.nanmean(member_err[sel])),
            "ensemble_test_px": float(np.nanmean(cerr)),
            "frames_trained_on_final": int((stages[-1][1][sel[0], :n] > 0).sum()),
        }
    plain = np.array(per_arm["plain"]["member_test_px"])
    for arm in trained:
        d = np.array(per_arm[arm]["member_test_px"]) - plain
        per_arm[arm]["paired_diff_vs_plain_px"] = d.tolist()
        per_arm[arm]["mean_diff_vs_plain_px"] = float(np.mean(d))
        per_arm[arm]["replicates_better_than_plain"] = int((d < 0).sum())
    for arm, why in degenerate.items():
        per_arm[arm] = {"degenerate": why}
    numbers["arms"] = per_arm
    numbers["conclusion"] = conclude({a: per_arm[a]["member_test_px"] for a in trained},
                                     degenerate)
    numbers["arms_seconds"] = t_arms
    numbers["strategy"] = res.strategy
    numbers["units"] = "test error: mean Euclidean distance per labeled keypoint, pixels " \
                       "of the original images, against the true (clean) test labels" \
        if synthetic else "test error: mean Euclidean distance per labeled keypoint, " \
                          "pixels of the original images, against the test labels"
    common.write_csv(out / "arms.csv", ["arm", "replicate", "test_px", "diff_vs_plain_px"],
                     [[arms[m], int(reps[m]), float(member_err[m]),
                       float(member_err[m] - plain[reps[m]])] for m in range(len(arms))])
    for arm in trained:
        a = per_arm[arm]
        log(f"  {arm:>10}: members {a['mean_member_test_px']:.2f} px "
            f"({' '.join(f'{v:.2f}' for v in a['member_test_px'])}), ensemble "
            f"{a['ensemble_test_px']:.2f} px, vs plain {a['mean_diff_vs_plain_px']:+.2f} px "
            f"({a['replicates_better_than_plain']}/{len(a['member_test_px'])} replicates better)")
    log(f"conclusion: {numbers['conclusion']['statement']}")

    figs = figures(out, rep, real, thr, noise, frame_aum, per_arm, cfg)
    numbers["seconds"] = time.perf_counter() - t0
    common.write_numbers(out, numbers)
    write_section(out, numbers, figs, synthetic)
    log(f"{NAME}: done in {numbers['seconds']:.0f} s (detection {t_det:.0f} s, arms "
        f"{t_arms:.0f} s) -> {out}")
    common.finish(args, log)
    return numbers


def figures(out, rep, real, thr, noise, frame_aum, per_arm, cfg):
    import matplotlib.pyplot as plt
    from ensemble_jax import io as eio
    figs = []
    # AUM histogram
    fig, ax = plt.subplots(figsize=(7, 4.2))
    a = rep.aum
    groups = [("threshold samples (moved on purpose)", thr & np.isfinite(a), "tab:gray")]
    if noise is not None:
        groups = [("clean labels", real & ~noise & np.isfinite(a), "tab:blue"),
                  ("planted noise", real & noise & np.isfinite(a), "tab:red")] + groups
    else:
        groups = [("labels", real & np.isfinite(a), "tab:blue")] + groups
    vals = a[np.isfinite(a)]
    bins = np.linspace(vals.min(), vals.max(), 40) if vals.size else 10
    for name, m, c in groups:
        if m.any():
            ax.hist(a[m], bins=bins, alpha=0.6, color=c, label=f"{name} (n={int(m.sum())})")
    ax.axvline(rep.cut, color="k", ls="--", label=f"cut {rep.cut:.2f}")
    ax.set_yscale("log")
    ax.set_xlabel("ensemble AUM (mean heatmap margin, logits)")
    ax.set_ylabel("labels (log scale)")
    ax.set_title("AUM of training labels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    eio.save_figure(out / "aum_histogram.png", fig, dpi=110)
    plt.close(fig)
    figs.append(("aum_histogram.png", "Ensemble AUM of every training label; labels left of "
                 "the dashed cut (99th percentile of the threshold samples' AUM) are flagged."))
    if noise is not None:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        sc = real & np.isfinite(a)
        p, r = pr_curve(-a[sc], (noise & real)[sc])
        ax.plot(r, p, color="tab:blue", label="labels ranked by AUM")
        fa = np.isfinite(frame_aum)
        pf, rf = pr_curve(-frame_aum[fa], (noise & real).any(1)[fa])
        ax.plot(rf, pf, color="tab:orange", label="frames ranked by lowest label AUM")
        fl = rep.flagged & real
        pl = precision_recall(fl, noise & real)
        pfr = precision_recall(fl.any(1), (noise & real).any(1))
        ax.plot(pl["recall"], pl["precision"], "o", color="tab:blue", ms=8,
                label=f"labels at the cut (P {pl['precision']:.2f}, R {pl['recall']:.2f})")
        ax.plot(pfr["recall"], pfr["precision"], "s", color="tab:orange", ms=8,
                label=f"frames at the cut (P {pfr['precision']:.2f}, R {pfr['recall']:.2f})")
        ax.set_xlabel("recall (share of planted-noise labels / frames found)")
        ax.set_ylabel("precision (share of flags that are planted noise)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_title("Recovering the planted label noise")
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        eio.save_figure(out / "noise_recovery_pr.png", fig, dpi=110)
        plt.close(fig)
        figs.append(("noise_recovery_pr.png", "Precision against recall of the planted label "
                     "noise when flagging the lowest-AUM labels (blue) or frames (orange); "
                     "markers: the threshold-sample cut."))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    shown = [a for a in ARMS if "member_test_px" in per_arm[a]]      # trained arms
    xs = np.arange(len(shown))
    n_rep = len(per_arm["plain"]["member_test_px"])
    for r in range(n_rep):
        ax.plot(xs, [per_arm[arm]["member_test_px"][r] for arm in shown], "-o", color="0.6",
                lw=1, ms=4, label="one replicate (same initial weights)" if r == 0 else None)
    ax.plot(xs, [per_arm[arm]["mean_member_test_px"] for arm in shown], "D", color="k", ms=8,
            label="mean over replicates")
    ax.plot(xs, [per_arm[arm]["ensemble_test_px"] for arm in shown], "*", color="tab:red",
            ms=12, label="ensemble of the replicates")
    names = {"plain": "plain\n(all frames)", "drop": "drop\n(without flagged)",
             "curriculum": "curriculum\n(AUM-ordered)",
             "shrink": f"shrink\n(target x{cfg['shrink']:g})"}
    ax.set_xticks(xs)
    ax.set_xticklabels([names[a] for a in shown])
    ax.set_ylabel("test error (px, mean per keypoint)")
    ax.set_title("Retraining with AUM cleaning")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    eio.save_figure(out / "cleaning_test_error.png", fig, dpi=110)
    plt.close(fig)
    figs.append(("cleaning_test_error.png", "Test error of each retraining arm; grey lines "
                 "join the members that started from the same weights (paired replicates)."))
    return figs


def write_section(out, nb, figs, synthetic):
    from ensemble_jax.analysis.report import write_section as ws
    paras = []
    c = nb["config"]
    src = (f"synthetic scenes ({nb['n_train']} training frames, {c['noise_rate']:.0%} of the "
           f"frames with planted label noise)" if synthetic else f"the project's "
           f"{nb['n_train']} training frames")
    paras.append(f"An ensemble of {c['detect_members']} members was trained on {src} with "
                 f"{nb['n_threshold_samples']} threshold samples. The AUM cut "
                 f"({nb['aum_rule']}) is {nb['aum_cut']:.3f}; it flags "
                 f"{nb['n_flagged_labels']} of {nb['n_labels']} labels in "
                 f"{nb['n_flagged_frames']} of {nb['n_train']} frames.")
    if synthetic:
        L, F = nb["labels"], nb["frames"]
        paras.append(
            f"Against the planted noise ({L['planted']} corrupted labels in {F['planted']} "
            f"frames): label-level precision {L['precision']:.2f} and recall "
            f"{L['recall']:.2f}; frame-level precision {F['precision']:.2f} and recall "
            f"{F['recall']:.2f}. Ranking labels by AUM separates corrupted from clean labels "
            f"with ROC-AUC {nb['roc_auc_labels']:.3f} (frames: {nb['roc_auc_frames']:.3f}).")
        kinds, med = nb["recall_by_kind"], nb["median_aum"]
        sw, dp = kinds["left_right_swap"], kinds["displaced"]
        paras.append(
            f"By kind of noise: {dp['true_positives']} of {dp['planted']} displaced labels "
            f"are flagged (recall {dp['recall']:.2f}) and {sw['true_positives']} of "
            f"{sw['planted']} left/right-swapped labels (recall {sw['recall']:.2f}). Median "
            f"AUM: clean labels {med['clean']:.2f}, displaced {med['displaced']:.2f}, swapped "
            f"{med['left_right_swap']:.2f}, threshold samples {med['threshold_samples']:.2f} "
            f"(logits): the cut, set by labels moved far away, sits "
            + ("below" if med['left_right_swap'] > nb['aum_cut'] else "above")
            + " the typical swapped label.")
    arms = nb["arms"]
    p = arms["plain"]
    shown = [a for a in ARMS if "member_test_px" in arms[a]]
    n_rep = len(p["member_test_px"])
    paras.append(f"The {nb['threshold_frames_excluded_from_arms']} frames holding a threshold "
                 f"sample calibrate the cut only: no retrained arm trains on them, so every "
                 f"arm draws from (at most) the other {nb['frames_arms_train_on']} frames, "
                 f"{nb['n_flagged_frames_in_arms']} of them flagged.")
    txt = [f"{a} {arms[a]['mean_member_test_px']:.2f} px ({arms[a]['mean_diff_vs_plain_px']:+.2f} "
           f"px vs plain, better in {arms[a]['replicates_better_than_plain']}/{n_rep} replicates)"
           for a in shown if a != "plain"]
    paras.append(f"Retrained with {n_rep} paired replicates per arm ({nb['train']['steps']} "
                 f"steps each), the plain run reaches {p['mean_member_test_px']:.2f} px mean "
                 f"test error per member" + ("; " + "; ".join(txt) if txt else "") + ".")
    for a, why in nb["degenerate_arms"].items():
        paras.append(f"Arm {a} is degenerate and was neither trained nor compared: {why}.")
    paras.append(f"Interval: {nb['conclusion']['method']}. Ensembles of the replicates: " + ", ".join(
        f"{a} {arms[a]['ensemble_test_px']:.2f} px" for a in shown) + ".")
    paras.append(f"Units: {nb['units']}. Wall time {nb['seconds']:.0f} s (detection "
                 f"{nb['detect_seconds']:.0f} s, arms {nb['arms_seconds']:.0f} s).")
    tables = [{"caption": "Test error per arm (px)",
               "columns": ["arm", "frames in final subset", "mean member", "ensemble",
                           "paired diff vs plain", "replicates better"],
               "rows": [[a, arms[a]["frames_trained_on_final"], arms[a]["mean_member_test_px"],
                         arms[a]["ensemble_test_px"], arms[a]["mean_diff_vs_plain_px"],
                         f"{arms[a]['replicates_better_than_plain']}/{n_rep}"] for a in shown]}]
    if synthetic:
        tables.insert(0, {"caption": "Flags against planted noise",
                          "columns": ["level", "flagged", "planted", "true positives",
                                      "precision", "recall"],
                          "rows": [[lv, nb[lv]["flagged"], nb[lv]["planted"],
                                    nb[lv]["true_positives"], nb[lv]["precision"],
                                    nb[lv]["recall"]] for lv in ("labels", "frames")]})
    ws(out, title="Study 4: AUM for cleaning labels", paragraphs=paras, figures=figs,
       tables=tables, order=40, conclusion=nb["conclusion"])


if __name__ == "__main__":
    main()
