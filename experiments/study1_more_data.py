"""Study 1: does more data hurt?

Nested subsets (10/30/50/70/90% of the training frames; each seed's smaller subset inside
its larger one) under several seeds, trained with common random numbers and one block per
seed (`TrainConfig.crn`, `sweep.py`'s `crn_block_ids`): a seed's members at every fraction
start from the same weights and share their per-step uniforms and coherent sampler, so
they draw the same minibatches except where an added frame's arc is hit. A seed-wise step
(fraction a -> b) then isolates the frames added at that step instead of mixing in
initialisation noise.

Budget (`--budget`): `steps` (default) gives every member the same number of steps (the
shared sweep OUT/sweep, also used by study 2): small subsets are seen for many more
epochs. `epochs` gives every member the same number of passes over its own subset: the
largest fraction's members get `--steps`, a fraction f's members steps x f / f_max; the
trainer runs one step count per fit, so each fraction is its own sweep
(OUT/study1_epochs_f<f>, the same nested subsets, seeds and crn blocks).

Decision (`step_changes`, `conclusion`): for each step a -> b and each seed s, the per-test-
frame change d[s, t] = err_b[s, t] - err_a[s, t] (px, mean over the frame's labeled
keypoints). The step's change is the mean over seeds and test frames; its standard error
adds the seed-to-seed (retraining) variance of the seed means and the test-frame variance
of the seed-averaged changes (conservative: their shared noise is counted twice), with a
Student t quantile on seeds - 1 degrees of freedom (Welch-Satterthwaite degrees of freedom
would be narrower but, with 3 seeds, called rises under no effect in 13 of 200 simulated
draws against the 2.5% intended; tests/test_experiments_1_3.py checks the calibration). A rise (or fall) is resolved when the
family-wise interval (level 0.05 / number of steps, Bonferroni) excludes 0; nothing else is
called one. Per-seed changes get test-frame bootstrap intervals (that one trained pair;
they say nothing about retraining).

    python experiments/study1_more_data.py [--out runs/studies] [--data PATH] [--quick]
        [--budget steps|epochs]

Writes OUT/study1_more_data/: numbers.json (conclusion: `more_data_hurts`), errors.csv,
steps.csv, added_frames.csv, learning_curves.png, step_changes.png, section.json;
OUT/report.html. With --budget epochs the study folder is OUT/study1_more_data_epochs.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "study1_more_data"
ALPHA = 0.05
N_BOOT = 2000


# ----------------------------------------------------------------------------- decision
def step_changes(err, fractions, alpha=ALPHA, n_boot=N_BOOT, seed=0):
    """err float [F, S, T]: per-test-frame error (px) of seed s's member at fraction f (NaN:
    missing member or unscored frame). Returns one record per consecutive step a -> b:
    delta_px (mean over paired seeds and test frames), per-seed changes, se parts, the 95%
    and the family-wise (alpha / steps, Bonferroni) t intervals, resolved rise / fall."""
    import numpy as np
    from scipy import stats
    err = np.asarray(err, np.float64)
    F, S, T = err.shape
    n_steps = max(F - 1, 1)
    rng = np.random.default_rng(seed)
    out = []
    for j in range(F - 1):
        a, b = err[j], err[j + 1]                                  # [S, T]
        pair = np.isfinite(a).any(1) & np.isfinite(b).any(1)       # seeds with both members
        d = (b - a)[pair]                                          # [S', T]
        cols = np.isfinite(d).all(0) if d.size else np.zeros(T, bool)
        d = d[:, cols]
        s_n, t_n = d.shape
        rec = {"from": float(fractions[j]), "to": float(fractions[j + 1]),
               "seeds": np.flatnonzero(pair).tolist(), "n_seeds": int(s_n),
               "n_test_frames": int(t_n)}
        if s_n == 0 or t_n == 0:
            rec.update(delta_px=float("nan"), resolved=False, note="no paired members")
            out.append(rec)
            continue
        per_seed = d.mean(1)                                       # [S']
        delta = float(per_seed.mean())
        se_frames = float(d.mean(0).std(ddof=1) / math.sqrt(t_n)) if t_n > 1 else float("nan")
        seed_rows = []
        for k, s in enumerate(rec["seeds"]):
            boot = d[k][rng.integers(0, t_n, (n_boot, t_n))].mean(1)
            seed_rows.append({"seed": int(s), "delta_px": float(per_seed[k]),
                              "ci95_test_frames": [float(np.percentile(boot, 2.5)),
                                                   float(np.percentile(boot, 97.5))]})
        rec.update(delta_px=delta, per_seed=seed_rows, se_test_frames_px=se_frames)
        if s_n < 2:
            rec.update(se_seeds_px=float("nan"), se_px=float("nan"),
                       ci95_px=[float("nan")] * 2, ci_familywise_px=[float("nan")] * 2,
                       resolved=False, rise=False, fall=False,
                       note="one paired seed: retraining variance cannot be estimated; "
                            "train >= 2 seeds (more for a narrower interval)")
            out.append(rec)
            continue
        se_seeds = float(per_seed.std(ddof=1) / math.sqrt(s_n))
        se = math.sqrt(se_seeds ** 2 + (se_frames if np.isfinite(se_frames) else 0.0) ** 2)
        q95 = float(stats.t.ppf(1 - alpha / 2, s_n - 1))
        qfw = float(stats.t.ppf(1 - alpha / (2 * n_steps), s_n - 1))
        lo, hi = delta - qfw * se, delta + qfw * se
        rec.update(se_seeds_px=se_seeds, se_px=se, df=s_n - 1,
                   ci95_px=[delta - q95 * se, delta + q95 * se], ci_familywise_px=[lo, hi],
                   familywise_level=alpha / n_steps, rise=bool(lo > 0), fall=bool(hi < 0),
                   resolved=bool(lo > 0 or hi < 0))
        out.append(rec)
    return out


def conclusion(steps, budget="steps"):
    """The study's stated answer as data: the resolved rise with the largest lower bound,
    or an explicit "no rise resolved" record (with the largest change and the seeds that
    would resolve a rise of its size at the measured spread)."""
    import numpy as np
    rises = [r for r in steps if r.get("rise")]
    if rises:
        r = max(rises, key=lambda r: r["ci_familywise_px"][0])
        return {"resolved": True, "seed": None, "seeds": r["seeds"], "budget": budget,
                "from": r["from"], "to": r["to"], "delta_px": r["delta_px"],
                "interval": r["ci_familywise_px"], "interval_95": r["ci95_px"],
                "statement": f"more data hurts: {r['from']:.0%} -> {r['to']:.0%} raises the "
                             f"test error by {r['delta_px']:+.3f} px (family-wise interval "
                             f"{r['ci_familywise_px'][0]:+.3f} to "
                             f"{r['ci_familywise_px'][1]:+.3f} px, {r['n_seeds']} paired seeds)"}
    ok = [r for r in steps if np.isfinite(r.get("delta_px", np.nan))]
    rec = {"resolved": False, "seed": None, "budget": budget,
           "statement": "no rise resolved: no step's family-wise interval lies above 0"}
    if ok:
        r = max(ok, key=lambda r: r["delta_px"])
        rec.update({"from": r["from"], "to": r["to"], "delta_px": r["delta_px"],
                    "interval": r.get("ci_familywise_px"), "seeds": r["seeds"]})
        if r["delta_px"] > 0 and np.isfinite(r.get("se_px", np.nan)):
            # seeds that would resolve a rise of this size with 80% power: the seed part of
            # the variance shrinks with seeds, the test-frame part does not
            from scipy import stats
            z = float(stats.norm.ppf(1 - ALPHA / (2 * max(len(steps), 1))) + stats.norm.ppf(0.8))
            room = (r["delta_px"] / z) ** 2 - r["se_test_frames_px"] ** 2
            if room > 0:
                need = math.ceil(r["n_seeds"] * r["se_seeds_px"] ** 2 / room)
                rec["seeds_needed_for_largest_rise"] = int(max(need, r["n_seeds"] + 1))
                more = (f"about {rec['seeds_needed_for_largest_rise']} paired seeds would "
                        f"resolve a rise of that size (80% power)")
            else:
                more = ("the test-frame variance alone exceeds it: more test frames, not "
                        "seeds, would be needed to resolve a rise of that size")
            rec["what_would_resolve"] = more
            rec["statement"] += (f"; the largest change, {r['from']:.0%} -> {r['to']:.0%}, is "
                                 f"{r['delta_px']:+.3f} px (family-wise interval "
                                 f"{r['ci_familywise_px'][0]:+.3f} to "
                                 f"{r['ci_familywise_px'][1]:+.3f}); {more}")
        else:
            rec["statement"] += ("; no step raised the mean error (largest change "
                                 f"{r['delta_px']:+.3f} px)")
    return rec


# ----------------------------------------------------------------------------- data
def epochs_steps(base_steps, fractions):
    """Equal epochs: steps per fraction, the largest fraction keeping `base_steps`."""
    top = max(fractions)
    return [max(1, int(round(base_steps * f / top))) for f in fractions]


def _collect(args, log=print):
    """(runs by fraction, fractions, seeds, steps per fraction, base Run). With budget
    steps one shared run holds every fraction; with epochs one run per fraction."""
    sweep, _, train = common.sweep_configs(args, **common.PAIRED_NESTED)
    fracs = list(sweep.fractions)
    if args.budget == "steps":
        run = common.load_run(common.ensure_sweep(args, log=log, **common.PAIRED_NESTED))
        return {f: run for f in run.fractions}, run.fractions, run.seeds, \
            [train.steps] * len(run.fractions), run
    runs = {}
    steps = epochs_steps(train.steps, fracs)
    shared = _finished_shared_sweep(args)
    for f, n in zip(fracs, steps):
        if shared is not None and n == train.steps:
            # the largest fraction keeps the shared sweep's steps: same subsets, seeds,
            # crn blocks and steps, so its members are the shared sweep's (tests check it)
            runs[f] = shared
            log(f"fraction {f:g}: {n} steps, the shared sweep's members ({shared.path})")
            continue
        d = common.ensure_sweep(args, f"study1_epochs_f{f:g}", log=log, fractions=(f,),
                                train_overrides={"crn": True, "steps": n})
        runs[f] = common.load_run(d)
    base = runs[fracs[-1]]
    return runs, fracs, sorted({int(s) for r in runs.values() for s in r.seeds}), steps, base


def _finished_shared_sweep(args):
    """OUT/sweep as a Run when it is finished with the configuration studies 1-2 ask for."""
    import json
    from ensemble_jax import rundir
    run = Path(args.out) / "sweep"
    if not ((run / "summary.json").is_file() and (run / "config.json").is_file()):
        return None
    want = common._config_dict(*common.sweep_configs(args, **common.PAIRED_NESTED))
    try:
        have = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if rundir.config_diff({k: have.get(k) for k in want}, want):
        return None
    return common.load_run(run)


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--budget", choices=["steps", "epochs"], default="steps",
                       help="steps: every member the same steps (shared sweep); epochs: the "
                            "same passes over its own subset (one sweep per fraction)")
    args = common.parse_args(__doc__.split("\n")[0], argv, extra=extra)
    common.setup()
    import matplotlib.pyplot as plt
    import numpy as np

    from ensemble_jax import io as eio
    from ensemble_jax.analysis.report import write_section
    from ensemble_jax.training.result import consensus

    t0 = time.perf_counter()
    runs, fracs, seeds, steps_f, base = _collect(args)
    out = common.study_dir(args, NAME if args.budget == "steps" else NAME + "_epochs")
    test, train = base.test, base.train
    labels_te = base.predictions["test_labels"]                        # [T, K, 2] orig px
    F, S, T, n_train = len(fracs), len(seeds), test.n_frames, base.masks.shape[1]
    batch = int(base.config["train"]["batch_size"])
    err = np.full((F, S, T), np.nan)
    member_mask = np.zeros((F, S, n_train), bool)
    alive = np.zeros((F, S), bool)
    ens, ens_ci = {}, {}
    rng = np.random.default_rng(0)
    for j, f in enumerate(fracs):
        run = runs[f]
        kp, conf = run.predictions["test_keypoints"], run.predictions["test_confidences"]
        for k, s in enumerate(seeds):
            m = run.member(f, s)
            if m is None:
                continue
            member_mask[j, k] = run.masks[m] > 0
            if run.alive[m]:
                alive[j, k] = True
                err[j, k] = common.frame_errors(kp[m:m + 1], labels_te)[0]
        sel = np.isclose(run.member_fraction, f) & run.alive
        if sel.any():   # descriptive: the fraction's ensemble, test-frame bootstrap only
            cons = consensus(kp[sel], conf[sel])
            ef = common.frame_errors(cons[None], labels_te)[0]
            ef = ef[np.isfinite(ef)]
            ens[f] = float(ef.mean())
            boot = ef[rng.integers(0, ef.size, (N_BOOT, ef.size))].mean(1)
            ens_ci[f] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    with np.errstate(invalid="ignore"):
        member_err = np.where(alive, np.nanmean(np.where(np.isfinite(err), err, np.nan), 2),
                              np.nan)                                   # [F, S]
    sizes = member_mask.sum(2)                                          # [F, S]
    epochs = np.array(steps_f)[:, None] * batch / np.maximum(sizes, 1)

    steps = step_changes(err, fracs)
    concl = conclusion(steps, args.budget)
    thr = base.threshold_mask.any(1) if base.threshold_mask is not None else \
        np.zeros(n_train, bool)
    noise = (train.noise_mask.any(1) if train.noise_mask is not None
             else np.zeros(n_train, bool))
    ids = [str(i) for i in train.frame_ids]
    added_rows = []
    for j, r in enumerate(steps):
        n_add, n_thr, n_noise = [], [], []
        for k, s in enumerate(seeds):
            added = np.flatnonzero(member_mask[j + 1, k] & ~member_mask[j, k])
            n_add.append(int(added.size))
            n_thr.append(int(thr[added].sum()))
            n_noise.append(int(noise[added].sum()))
            added_rows += [[s, r["from"], r["to"], ids[i], int(thr[i]), int(noise[i])]
                           for i in added]
        r.update(n_added_per_seed=n_add, n_added_threshold_samples_per_seed=n_thr,
                 n_added_planted_noise_per_seed=n_noise)

    # ----- files
    common.write_csv(out / "errors.csv",
                     ["fraction", "seed", "alive", "test_mean_px", "subset_frames", "steps",
                      "epochs"],
                     [[f, s, bool(alive[j, k]), float(member_err[j, k]), int(sizes[j, k]),
                       steps_f[j], float(epochs[j, k])]
                      for j, f in enumerate(fracs) for k, s in enumerate(seeds)])
    common.write_csv(out / "steps.csv",
                     ["from_fraction", "to_fraction", "n_seeds", "change_px", "se_px",
                      "ci95_lo_px", "ci95_hi_px", "ci_fw_lo_px", "ci_fw_hi_px", "rise",
                      "fall"] + [f"seed{s}_change_px" for s in seeds],
                     [[r["from"], r["to"], r["n_seeds"], r["delta_px"],
                       r.get("se_px", float("nan")),
                       *(r.get("ci95_px") or [float("nan")] * 2),
                       *(r.get("ci_familywise_px") or [float("nan")] * 2),
                       bool(r.get("rise")), bool(r.get("fall"))]
                      + [next((p["delta_px"] for p in r.get("per_seed", [])
                               if p["seed"] == s), float("nan")) for s in seeds]
                      for r in steps])
    common.write_csv(out / "added_frames.csv",
                     ["seed", "from_fraction", "to_fraction", "frame", "threshold_sample",
                      "planted_noise"], added_rows)

    # ----- figure 1: paired learning curves
    fig, ax = plt.subplots(figsize=(9.5, 5.2), layout="constrained")
    colours = plt.cm.tab10(np.arange(S) % 10)
    xs = np.array(fracs) * 100
    for k, s in enumerate(seeds):
        ax.plot(xs, member_err[:, k], "o-", color=colours[k], lw=1.2, ms=5, alpha=0.8,
                label=f"seed {s} (members paired: crn block {s})")
    with np.errstate(invalid="ignore"):
        mean_curve = np.nanmean(member_err, 1)
    ax.plot(xs, mean_curve, "k-", lw=2.4, label="mean over seeds")
    ef = sorted(ens)
    ax.errorbar(np.array(ef) * 100, [ens[f] for f in ef],
                yerr=np.abs(np.array([ens_ci[f] for f in ef]).T - [ens[f] for f in ef]),
                fmt="s--", color="0.35", ms=6, capsize=3,
                label="ensemble of each fraction (95% CI, test frames)")
    for r in steps:
        if r.get("rise"):
            j = fracs.index(r["to"])
            ax.axvspan(r["from"] * 100, r["to"] * 100, color="red", alpha=0.12,
                       label="resolved rise (family-wise)")
    ax.set_xlabel(f"training frames in the subset (% of {n_train}); budget: equal "
                  + ("steps" if args.budget == "steps" else "epochs")
                  + f" ({', '.join(str(n) for n in steps_f)} steps)")
    ax.set_ylabel("mean test error (px, original image)")
    ax.set_xticks(xs)
    ax.set_ylim(0, None)
    ax.grid(alpha=0.3)
    ax.set_title(f"Test error vs nested subset size: {S} paired seeds, {T} test frames")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    eio.save_figure(out / "learning_curves.png", fig, dpi=120)
    plt.close(fig)

    # ----- figure 2: each step's change with its intervals
    fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
    for i, r in enumerate(steps):
        if not np.isfinite(r["delta_px"]):
            continue
        fw, c95 = r.get("ci_familywise_px"), r.get("ci95_px")
        if fw and np.isfinite(fw[0]):
            ax.plot([i, i], fw, "-", color="tab:blue", lw=2, alpha=0.5,
                    label="family-wise interval" if i == 0 else None)
            ax.plot([i, i], c95, "-", color="tab:blue", lw=6, alpha=0.6,
                    label="95% interval" if i == 0 else None)
        ax.plot(i, r["delta_px"], "o", color="k", ms=7,
                label="mean over seeds and test frames" if i == 0 else None)
        for p in r.get("per_seed", []):
            ax.plot(i + 0.15, p["delta_px"], "x", color=colours[seeds.index(p["seed"])],
                    ms=7, label=f"seed {p['seed']}" if i == 0 else None)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks(range(len(steps)), [f"{r['from']:.0%}->{r['to']:.0%}" for r in steps])
    ax.set_ylabel("change of the test error (px); > 0: adding frames hurt")
    ax.set_title("Seed-wise change at each step (paired seeds; intervals include "
                 "retraining and test-frame variance)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    eio.save_figure(out / "step_changes.png", fig, dpi=120)
    plt.close(fig)

    # ----- text from the numbers
    budget_txt = ("equal steps ({} per member)".format(steps_f[0]) if args.budget == "steps"
                  else "equal epochs ({:.1f} passes over its subset per member; steps {})"
                  .format(float(np.nanmean(epochs)), "/".join(map(str, steps_f))))
    paras = [
        f"{S} seeds x {F} nested fractions of {n_train} training frames, {T} test frames, "
        f"budget {budget_txt}. A seed's members share initial weights and minibatch draws "
        "(common random numbers, one block per seed), so each seed-wise step isolates the "
        "frames it adds. Members' mean test error (mean over seeds): "
        + ", ".join(f"{f:.0%}: {e:.2f} px" for f, e in zip(fracs, mean_curve)) + ".",
        "Steps (change of the mean test error, mean over paired seeds; family-wise interval "
        f"at {ALPHA:g} / {max(F - 1, 1)} with retraining and test-frame variance): "
        + "; ".join(f"{r['from']:.0%}->{r['to']:.0%} {r['delta_px']:+.3f} px"
                    + (f" [{r['ci_familywise_px'][0]:+.3f}, {r['ci_familywise_px'][1]:+.3f}]"
                       if r.get("ci_familywise_px") and np.isfinite(r["ci_familywise_px"][0])
                       else " [no interval: " + r.get("note", "") + "]")
                    + (" rise" if r.get("rise") else " fall" if r.get("fall") else
                       " not resolved") for r in steps) + ".",
        "Conclusion: " + concl["statement"] + ".",
    ]
    if ens:
        paras.append("Ensemble of each fraction (confidence-weighted mean of its members; "
                     "interval over test frames only): " + ", ".join(
                         f"{f:.0%}: {ens[f]:.2f} px [{ens_ci[f][0]:.2f}, {ens_ci[f][1]:.2f}]"
                         for f in ef) + ".")
    if thr.any():
        paras.append(f"{thr.mean():.0%} of the training frames are AUM threshold samples "
                     "(labels moved on purpose); each step's added frames and how many of "
                     "them are threshold samples are in added_frames.csv.")
    table = {"caption": "Members' test error (px) by fraction and seed",
             "columns": ["fraction", "steps"] + [f"seed {s}" for s in seeds] + ["mean"],
             "rows": [[f"{f:.0%}", steps_f[j]] + [float(v) for v in member_err[j]]
                      + [float(mean_curve[j])] for j, f in enumerate(fracs)]}
    step_table = {"caption": "Seed-wise steps: change of the test error (px)",
                  "columns": ["step", "seeds", "change", "95% low", "95% high",
                              "family-wise low", "family-wise high", "resolved"],
                  "rows": [[f"{r['from']:.0%}->{r['to']:.0%}", r["n_seeds"], r["delta_px"],
                            *(r.get("ci95_px") or [float("nan")] * 2),
                            *(r.get("ci_familywise_px") or [float("nan")] * 2),
                            "rise" if r.get("rise") else "fall" if r.get("fall") else "no"]
                           for r in steps]}
    numbers = {"run": str(base.path), "runs": {f"{f:g}": str(runs[f].path) for f in fracs},
               "budget": args.budget, "steps_per_fraction": steps_f,
               "epochs_per_member": {f"{f:g}/seed{s}": float(epochs[j, k])
                                     for j, f in enumerate(fracs) for k, s in enumerate(seeds)},
               "n_train": n_train, "n_test": T, "fractions": fracs, "seeds": seeds,
               "units": "px (original image); member error = mean over test frames of the "
                        "frame's mean labeled-keypoint error",
               "pairing": "crn, one block per seed (config.json crn_block_ids)",
               "interval_method": "Student t on seeds - 1 df; se^2 = var(seed means) / seeds "
                                  "+ var(seed-averaged per-frame changes) / test frames "
                                  "(retraining + test-frame sampling; conservative); "
                                  "family-wise: Bonferroni over the steps",
               "member_test_error_px": {f"{f:g}/seed{s}": float(member_err[j, k])
                                        for j, f in enumerate(fracs)
                                        for k, s in enumerate(seeds)},
               "mean_over_seeds_px": {f"{f:g}": float(e) for f, e in zip(fracs, mean_curve)},
               "ensemble_test_error_px": {f"{f:g}": e for f, e in ens.items()},
               "ensemble_ci95_test_frames_px": {f"{f:g}": c for f, c in ens_ci.items()},
               "mean_pose_baseline_px": base.summary.get("mean_pose_baseline_px"),
               "steps": steps, "more_data_hurts": concl,
               "n_steps_resolved_rise": sum(bool(r.get("rise")) for r in steps),
               "n_steps_resolved_fall": sum(bool(r.get("fall")) for r in steps),
               "wall_s": time.perf_counter() - t0}
    common.write_numbers(out, numbers)
    write_section(out, title="Study 1: does more data hurt?"
                  + (" (equal epochs)" if args.budget == "epochs" else ""),
                  paragraphs=paras, figures=[
                      ("learning_curves.png",
                       "Mean test error (px) of every member against its subset size, one "
                       "line per seed (a seed's members are nested and share initial weights "
                       "and draws), the mean over seeds in black and each fraction's "
                       "ensemble in grey."),
                      ("step_changes.png",
                       "Change of the test error at each step (mean over paired seeds and "
                       "test frames, black) with its 95% and family-wise intervals and each "
                       "seed's own change (x).")],
                  tables=[table, step_table], order=10 if args.budget == "steps" else 11,
                  conclusion=concl)
    print("\n".join(paras), flush=True)
    common.finish(args)
    print(f"study 1 done in {time.perf_counter() - t0:.0f} s", flush=True)
    return numbers


if __name__ == "__main__":
    main()
