"""Study 1: does more data hurt?

Nested subsets (10/30/50/70/90% of the training frames, each seed's smaller subset inside
its larger one) under several fixed seeds. For every member: the test error (mean over the
labeled test keypoints, original-image px); per fraction: the ensemble of that fraction's
members (confidence-weighted mean of their keypoints). Wherever a seed's error rises when
frames are added (fraction f -> the next one), the frames added at that step are named,
ranked by their subset influence on the mean test error (all members of the sweep), with
a 95% bootstrap interval of the rise over test frames and whether each added frame is an
AUM threshold sample (a label moved on purpose by the sweep) or planted label noise.

    python experiments/study1_more_data.py [--out runs/studies] [--data PATH] [--quick]

Writes OUT/study1_more_data/: numbers.json, errors.csv, rises.csv, added_frames.csv,
learning_curves.png, rise_frames.png, section.json; OUT/sweep/ (shared with studies 2-3);
OUT/report.html.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "study1_more_data"
N_BOOT = 2000
N_NAME = 5          # frames named in the text per rise


def _bootstrap_rise(err_a, err_b, rng, n_boot=N_BOOT):
    """95% interval of mean(err_b - err_a) over test frames (paired resampling)."""
    import numpy as np
    d = (err_b - err_a)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan"), float("nan")
    idx = rng.integers(0, d.size, (n_boot, d.size))
    means = d[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv=None) -> dict:
    args = common.parse_args(__doc__.split("\n")[0], argv)
    common.setup()
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np

    from ensemble_jax import io as eio
    from ensemble_jax import kernels
    from ensemble_jax.analysis import figures, metrics
    from ensemble_jax.analysis.report import write_section
    from ensemble_jax.training.result import consensus

    t0 = time.perf_counter()
    run = common.load_run(common.ensure_sweep(args))
    out = common.study_dir(args, NAME)
    pred = run.predictions
    test, train = run.test, run.train
    labels_te = pred["test_labels"]                                    # [T, K, 2] original px
    kp_te, conf_te = pred["test_keypoints"], pred["test_confidences"]  # [M, T, K, 2], [M, T, K]
    err_kp = metrics.pixel_errors(kp_te, labels_te[None])              # [M, T, K]
    err_frame = common.frame_errors(kp_te, labels_te)                  # [M, T]
    member_err = np.array([float(metrics.mean_error(err_kp[m])) for m in range(len(kp_te))])
    fracs, seeds, alive = run.fractions, run.seeds, run.alive
    n_train = run.masks.shape[1]
    baseline = run.summary.get("mean_pose_baseline_px")

    # ----- ensemble per fraction (confidence-weighted mean over that fraction's members)
    ens, ens_frame = {}, {}
    for f in fracs:
        sel = np.isclose(run.member_fraction, f) & alive
        if not sel.any():
            continue
        cons = consensus(kp_te[sel], conf_te[sel])
        e = metrics.pixel_errors(cons, labels_te)
        ens[f] = float(metrics.mean_error(e))
        ens_frame[f] = common.frame_errors(cons[None], labels_te)[0]

    # ----- subset influence of each training frame on each member's mean test error
    live = np.flatnonzero(alive)
    inf = kernels.subset_influence(jnp.asarray(run.masks[live] > 0),
                                   jnp.asarray(member_err[live, None], jnp.float32))
    influence = np.asarray(inf.effect)[:, 0]                           # [n] px, > 0 hurts
    thr = run.threshold_mask.any(1) if run.threshold_mask is not None else np.zeros(n_train, bool)
    noise = (train.noise_mask.any(1) if train.noise_mask is not None
             else np.zeros(n_train, bool))
    ids = [str(i) for i in train.frame_ids]

    # ----- rises: per seed and for the ensemble
    rng = np.random.default_rng(0)
    rises, added_rows, curve_rows = [], [], []
    for s in seeds:
        for f in fracs:
            m = run.member(f, s)
            if m is not None:
                curve_rows.append([f, s, m, bool(alive[m]), member_err[m],
                                   int((run.masks[m] > 0).sum())])
        for a, b in zip(fracs[:-1], fracs[1:]):
            ma, mb = run.member(a, s), run.member(b, s)
            if ma is None or mb is None or not (alive[ma] and alive[mb]):
                continue
            delta = member_err[mb] - member_err[ma]
            lo, hi = _bootstrap_rise(err_frame[ma], err_frame[mb], rng)
            added = np.flatnonzero((run.masks[mb] > 0) & ~(run.masks[ma] > 0))
            order = added[np.argsort(-np.nan_to_num(influence[added], nan=-np.inf),
                                     kind="stable")]
            row = {"who": f"seed {s}", "seed": s, "from": a, "to": b,
                   "error_from_px": member_err[ma], "error_to_px": member_err[mb],
                   "change_px": delta, "ci95_px": [lo, hi], "rise": bool(delta > 0),
                   "significant": bool(lo > 0), "n_added": int(added.size),
                   "n_added_threshold_samples": int(thr[added].sum()),
                   "n_added_planted_noise": int(noise[added].sum()),
                   "added_frames_by_influence": [ids[i] for i in order],
                   "added_indices_by_influence": order.tolist()}
            rises.append(row)
            for rank, i in enumerate(order):
                added_rows.append([f"seed {s}", a, b, rank, ids[i], float(influence[i]),
                                   int(thr[i]), int(noise[i])])
    for a, b in zip(fracs[:-1], fracs[1:]):
        if a not in ens or b not in ens:
            continue
        delta = ens[b] - ens[a]
        lo, hi = _bootstrap_rise(ens_frame[a], ens_frame[b], rng)
        ma = np.isclose(run.member_fraction, a) & alive
        mb = np.isclose(run.member_fraction, b) & alive
        # frames the larger fraction's members hold that the smaller fraction's lack
        added = np.flatnonzero((run.masks[mb] > 0).any(0) & ~(run.masks[ma] > 0).all(0)
                               & ((run.masks[mb] > 0).sum(0) > (run.masks[ma] > 0).sum(0)))
        order = added[np.argsort(-np.nan_to_num(influence[added], nan=-np.inf), kind="stable")]
        rises.append({"who": "ensemble", "seed": None, "from": a, "to": b,
                      "error_from_px": ens[a], "error_to_px": ens[b], "change_px": delta,
                      "ci95_px": [lo, hi], "rise": bool(delta > 0), "significant": bool(lo > 0),
                      "n_added": int(added.size),
                      "n_added_threshold_samples": int(thr[added].sum()),
                      "n_added_planted_noise": int(noise[added].sum()),
                      "added_frames_by_influence": [ids[i] for i in order],
                      "added_indices_by_influence": order.tolist()})

    # ----- files
    common.write_csv(out / "errors.csv", ["fraction", "seed", "member", "alive",
                                          "test_mean_px", "subset_frames"], curve_rows)
    common.write_csv(out / "errors_ensemble.csv", ["fraction", "ensemble_test_mean_px"],
                     [[f, e] for f, e in ens.items()])
    common.write_csv(out / "rises.csv",
                     ["who", "from_fraction", "to_fraction", "error_from_px", "error_to_px",
                      "change_px", "ci95_lo_px", "ci95_hi_px", "n_added",
                      "n_added_threshold_samples", "n_added_planted_noise",
                      "top_added_frames_by_influence"],
                     [[r["who"], r["from"], r["to"], r["error_from_px"], r["error_to_px"],
                       r["change_px"], r["ci95_px"][0], r["ci95_px"][1], r["n_added"],
                       r["n_added_threshold_samples"], r["n_added_planted_noise"],
                       " ".join(r["added_frames_by_influence"][:N_NAME])] for r in rises])
    common.write_csv(out / "added_frames.csv",
                     ["who", "from_fraction", "to_fraction", "rank", "frame",
                      "influence_on_test_error_px", "threshold_sample", "planted_noise"],
                     added_rows)

    # ----- figure 1: learning curves
    fig, ax = plt.subplots(figsize=(9.5, 5.2), layout="constrained")
    colours = plt.cm.tab10(np.arange(len(seeds)) % 10)
    for c, s in zip(colours, seeds):
        xs = [f for f in fracs if run.member(f, s) is not None and alive[run.member(f, s)]]
        ys = [member_err[run.member(f, s)] for f in xs]
        ax.plot(np.array(xs) * 100, ys, "o-", color=c, lw=1.3, ms=5, alpha=0.85,
                label=f"member, seed {s}")
    ef = sorted(ens)
    ax.plot(np.array(ef) * 100, [ens[f] for f in ef], "k-s", lw=2.8, ms=7,
            label="ensemble of each fraction\n(confidence-weighted mean)")
    first = True
    for r in rises:
        if r["rise"]:
            ax.plot([r["from"] * 100, r["to"] * 100], [r["error_from_px"], r["error_to_px"]],
                    "-", color="red", lw=9, alpha=0.22, solid_capstyle="round", zorder=0,
                    label="error rises as frames are added" if first else None)
            first = False
    top = max(list(member_err[alive]) + list(ens.values()))
    if baseline is not None and np.isfinite(baseline):
        if baseline <= 2.5 * top:
            ax.axhline(baseline, color="grey", ls="--", lw=1,
                       label=f"predict the mean pose ({baseline:.1f} px)")
            top = max(top, baseline)
        else:   # far above the curves: named, not drawn, so the curves stay readable
            ax.plot([], [], color="grey", ls="--", lw=1,
                    label=f"predict the mean pose: {baseline:.1f} px (off scale)")
    ax.set_xlabel(f"training frames in the subset (% of {n_train})")
    ax.set_ylabel("mean test error (px, original image)")
    ax.set_xticks(np.array(fracs) * 100)
    ax.set_title(f"Test error vs nested subset size: {len(seeds)} seeds, "
                 f"{test.n_frames} test frames")
    ax.set_ylim(0, 1.08 * top)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    eio.save_figure(out / "learning_curves.png", fig, dpi=120)
    plt.close(fig)

    # ----- figure 2: the frames added at the largest member rise
    member_rises = [r for r in rises if r["seed"] is not None and r["rise"]]
    worst = max(member_rises, key=lambda r: r["change_px"]) if member_rises else None
    figs = [("learning_curves.png",
             "Mean test error (px) of every member against its subset size (one line per "
             "seed; each seed's subsets are nested), with the ensemble of each fraction in "
             "black; red bands mark steps where adding frames raised the error.")]
    if worst is not None:
        sel = worst["added_indices_by_influence"][:8]
        mem = [run.member(worst["to"], worst["seed"])]
        p_tr = pred["train_keypoints"][mem][:, sel]
        to_train = lambda kp: _to_train_px(train, sel, kp)
        titles = [f"{common.short_id(ids[i])}\ninfluence {influence[i]:+.2f} px"
                  + (" [threshold sample]" if thr[i] else "")
                  + (" [planted noise]" if noise[i] else "") for i in sel]
        figures.frame_grid(
            out / "rise_frames.png", train.images[sel], train.keypoints[sel],
            to_train(p_tr), titles, list(train.bodyparts),
            title=f"Seed {worst['seed']}: frames added from {worst['from']:.0%} to "
                  f"{worst['to']:.0%} (error {worst['change_px']:+.2f} px), most harmful "
                  f"first (x: the {worst['to']:.0%} member's prediction)")
        figs.append(("rise_frames.png",
                     f"The training frames added to seed {worst['seed']}'s subset between "
                     f"{worst['from']:.0%} and {worst['to']:.0%}, ranked by subset influence "
                     "on the mean test error (px; positive = members holding the frame err "
                     "more), drawn at training resolution with their labels (+)."))

    # ----- text from the numbers
    paras = []
    fr_txt = ", ".join(f"{f:.0%}: {ens[f]:.2f} px" for f in ef)
    best_f = min(ens, key=ens.get) if ens else None
    if ens:
        paras.append(
            f"Ensemble test error by fraction of the {n_train} training frames ({fr_txt}; "
            f"{test.n_frames} test frames, original-image pixels). The lowest ensemble error "
            f"is at {best_f:.0%}; the largest fraction ({ef[-1]:.0%}) is "
            + (f"{ens[ef[-1]] - ens[best_f]:.2f} px worse than that." if best_f != ef[-1]
               else "the best, so more data did not hurt the ensemble overall."))
    n_steps = sum(1 for r in rises if r["seed"] is not None)
    n_up = len(member_rises)
    n_sig = sum(1 for r in member_rises if r["significant"])
    first_err = np.mean([member_err[m] for m in (run.member(fracs[0], s) for s in seeds)
                         if m is not None])
    last_err = np.mean([member_err[m] for m in (run.member(fracs[-1], s) for s in seeds)
                        if m is not None])
    paras.append(
        f"Of {n_steps} seed-wise steps (a seed going to the next fraction), {n_up} raised "
        f"the member's test error and {n_sig} of those rises "
        f"{'has' if n_sig == 1 else 'have'} a 95% bootstrap interval (over test frames) above "
        f"zero. The members' mean error "
        f"{'falls' if last_err < first_err else 'rises'} from {first_err:.2f} px at "
        f"{fracs[0]:.0%} to {last_err:.2f} px at {fracs[-1]:.0%} (mean over seeds).")
    for r in sorted([r for r in rises if r["rise"]], key=lambda r: -r["change_px"]):
        ranked = r["added_indices_by_influence"]
        top = [i for i in ranked[:N_NAME] if np.isfinite(influence[i]) and influence[i] > 0]
        tag = lambda i: (", threshold sample" if thr[i] else "") + (
            ", planted noise" if noise[i] else "")
        if top:
            names = ("Added frames whose presence raises the mean test error most (subset "
                     "influence): " + ", ".join(f"{common.short_id(ids[i])} "
                                                f"({influence[i]:+.3f} px{tag(i)})" for i in top))
        elif ranked and np.isfinite(influence[ranked[0]]):
            i = ranked[0]
            names = (f"No added frame has a positive influence estimate; the least helpful is "
                     f"{common.short_id(ids[i])} ({influence[i]:+.3f} px{tag(i)}), so the rise "
                     f"is not attributable to single frames at this ensemble size")
        else:
            names = "No added frame has a defined influence estimate"
        paras.append(
            f"{r['who'].capitalize()}: {r['from']:.0%} -> {r['to']:.0%} raised the error by "
            f"{r['change_px']:.2f} px (95% interval {r['ci95_px'][0]:+.2f} to "
            f"{r['ci95_px'][1]:+.2f} px) while adding {r['n_added']} frames, of which "
            f"{_n(r['n_added_threshold_samples'], 'is an AUM threshold sample', 'are AUM threshold samples')}"
            f" (labels moved on purpose)"
            + (f" and {_n(r['n_added_planted_noise'], 'carries', 'carry')} planted label noise"
               if noise.any() else "") + f". {names}. All added frames are listed in "
            "added_frames.csv.")
    if not any(r["rise"] for r in rises):
        paras.append("No step raised the error: adding frames never hurt here.")
    frac_in_thr = float(thr.mean())
    paras.append(
        f"Influence is estimated from all {live.size} members (mean test error of members "
        f"holding the frame minus members without it); with few members it is noisy, and "
        f"frames held by the same members share one value "
        f"({len({run.masks[live][:, i].tobytes() for i in range(n_train)})} distinct "
        f"membership patterns among {n_train} frames). "
        f"{frac_in_thr:.0%} of training frames are threshold samples.")

    table = {"caption": "Test error (px) of each seed's member and of each fraction's ensemble",
             "columns": ["fraction"] + [f"seed {s}" for s in seeds] + ["ensemble"],
             "rows": [[f"{f:.0%}"] + [float(member_err[run.member(f, s)])
                                      if run.member(f, s) is not None else float("nan")
                                      for s in seeds] + [ens.get(f, float("nan"))]
                      for f in fracs]}
    rise_table = {"caption": "Steps where the error rose (px)",
                  "columns": ["who", "from", "to", "change (px)", "95% CI low", "95% CI high",
                              "frames added", "threshold samples added"],
                  "rows": [[r["who"], f"{r['from']:.0%}", f"{r['to']:.0%}", r["change_px"],
                            r["ci95_px"][0], r["ci95_px"][1], r["n_added"],
                            r["n_added_threshold_samples"]] for r in rises if r["rise"]]}
    tables = [table] + ([rise_table] if rise_table["rows"] else [])
    numbers = {"run": str(run.path), "n_train": n_train, "n_test": test.n_frames,
               "fractions": fracs, "seeds": seeds, "units": "px (original image)",
               "member_test_error_px": {f"{run.member_fraction[m]:g}/seed{run.member_seed[m]}":
                                        member_err[m] for m in range(len(member_err))},
               "ensemble_test_error_px": {f"{f:g}": e for f, e in ens.items()},
               "mean_pose_baseline_px": baseline, "steps": rises,
               "n_member_steps": n_steps, "n_member_rises": n_up,
               "n_member_rises_significant": n_sig,
               "influence_on_mean_test_error_px": influence,
               "wall_s": time.perf_counter() - t0}
    common.write_numbers(out, numbers)
    write_section(out, title="Study 1: does more data hurt?", paragraphs=paras,
                  figures=figs, tables=tables, order=10)
    print("\n".join(paras), flush=True)
    common.finish(args)
    print(f"study 1 done in {time.perf_counter() - t0:.0f} s", flush=True)
    return numbers


def _n(k: int, one: str, many: str) -> str:
    return f"{k} {one if k == 1 else many}"


def _to_train_px(ds, sel, kp):
    """Original-image keypoints [M, F, K, 2] of frames `sel` -> training-image pixels."""
    import numpy as np
    from ensemble_jax.data.letterbox import to_train
    lb = np.asarray(ds.letterbox)[sel]
    return np.stack([to_train(k, lb) for k in kp])


if __name__ == "__main__":
    main()
