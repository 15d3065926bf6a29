"""Can the attribution estimates be trusted? LDS against members, and retraining.

On synthetic scenes with planted label noise (displaced / swapped labels), an ensemble of
`--members` (largest size) estimation members plus `--validation` held-out members is
trained on random subsets of one plan (random 50% by default, or banzhaf). `--design crn`
(the default) trains every member with common random numbers (`sweep --crn`,
training/crn.py: one shared initialisation and coherent minibatch draws, so members
differ by their subsets only); `--design independent` gives each member its own key (the
sweep's default), where initialisation and batch order dominate what a member's subset
explains. Held-out members come from the same design. Then:

(a) LDS (linear datamodeling score, `kernels.lds`) of each estimator, fitted on the first
    M estimation members for each M in `--members`, scored on the held-out members, for
    three per-member outputs of each test frame: the pixel error (against the clean test
    labels), the label's heatmap probability (softmax over the map at the label pixel),
    and its log (a margin-like, smoother output). Estimators: difference of means
    (Feldman-Zhang; = Banzhaf/MSR on the banzhaf plan), ridge and LASSO datamodels with
    5-fold-CV penalties. 95% intervals: bootstrap over held-out members.
(b) Counterfactual retraining: the k most harmful training frames by the best estimator
    (highest LDS at the largest M; harm = its effect on the mean test output, signed so
    that + raises the error), k random frames, and the k lowest-AUM frames (ensemble AUM,
    worst label of a frame) are removed; fresh members with new seeds are trained on
    all frames and on each reduced set, `--retrain-members` per arm, for each of
    `--retrain-seeds` seeds. Reported: change in mean member test error against the
    all-frames arm of the same seed (paired), mean and 95% t-interval over seeds, and in
    how many seeds removing the harmful frames beat removing random ones.

    python benchmarks/attribution_check.py --quick          # pipeline check (a minute)
    python benchmarks/attribution_check.py                  # 64/128/256 members (~1 h here)
    python benchmarks/attribution_check.py --members 64,128,256,1024 --validation 64 \
        --retrain-members 4 --strategy sequential                     # full size

Writes JSON (`--out`), a table on stdout and `<out>.png` (LDS against members).
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ensemble_jax import io as eio  # noqa: E402
from ensemble_jax import kernels  # noqa: E402
from ensemble_jax import subsets as plans  # noqa: E402
from ensemble_jax.analysis import aum as aum_lib  # noqa: E402
from ensemble_jax.analysis import metrics  # noqa: E402
from ensemble_jax.analysis.analyze import member_outputs  # noqa: E402
from ensemble_jax.data.synthetic import synthetic_dataset_with_truth  # noqa: E402
from ensemble_jax.models.heatmap_net import ModelConfig  # noqa: E402
from ensemble_jax.training.config import STRATEGIES, ExecConfig, TrainConfig  # noqa: E402
from ensemble_jax.training.trainer import EnsembleTrainer  # noqa: E402
from ensemble_jax.training.waves import fit_waves, plan_waves  # noqa: E402

OUTPUTS = ("pixel_error", "gt_probability", "log_gt_probability")
ERROR_LIKE = {"pixel_error": 1.0, "gt_probability": -1.0, "log_gt_probability": -1.0}


def _ints(t):
    return [int(x) for x in t.split(",") if x.strip()]


def _mean_kp(x):
    x = np.asarray(x, np.float64)
    ok = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(-1), np.where(ok, x, 0).sum(-1) / np.maximum(ok.sum(-1), 1),
                        np.nan).astype(np.float32)


def member_values(result, members, ds, truth):
    """output -> float32 [len(members), frames], scored against `truth` labels."""
    out = member_outputs(result, members, ds.images, truth)
    err = metrics.pixel_errors(out["keypoints"], truth)
    prob = _mean_kp(out["gt_probability"])
    return {"pixel_error": _mean_kp(err), "gt_probability": prob,
            "log_gt_probability": _mean_kp(np.log(np.maximum(out["gt_probability"], 1e-12)))}


def t_interval(x):
    x = np.asarray(x, np.float64)
    from scipy import stats
    m = float(x.mean())
    if x.size < 2:
        return m, [None, None]
    h = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, [m - h, m + h]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--members", type=_ints, default=None, help="estimation sizes, e.g. 64,256")
    p.add_argument("--validation", type=int, default=None, help="held-out members")
    p.add_argument("--plan", choices=["random", "banzhaf"], default="random")
    p.add_argument("--design", choices=["independent", "crn"], default="crn",
                   help="independent: each member its own key (the sweep default); crn: "
                   "common random numbers, every member shares init and draws, coherent "
                   "sampler (TrainConfig.crn, training/crn.py)")
    p.add_argument("--frames", type=int, default=None, help="synthetic frames (train + test)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--noise-rate", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--strategy", default="auto", choices=STRATEGIES)
    p.add_argument("--members-per-wave", type=int, default=256,
                   help="members trained per fit (waves: same results, smaller programs)")
    p.add_argument("--k", type=int, default=None, help="frames removed per arm")
    p.add_argument("--retrain-seeds", type=int, default=5)
    p.add_argument("--retrain-members", type=int, default=None, help="members per arm/seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out/attribution_check.json")
    a = p.parse_args(argv)
    q = a.quick
    sizes = a.members or ([8, 16] if q else [64, 128, 256])
    V = a.validation or (6 if q else 48)
    frames = a.frames or (60 if q else 150)
    steps = a.steps or (30 if q else 200)
    R = a.retrain_members or (1 if q else 2)
    S = 2 if q and a.retrain_seeds == 5 else a.retrain_seeds
    if min(sizes) < 4 or V < 3 or S < 0:
        p.error("--members must be >= 4, --validation >= 3, --retrain-seeds >= 0 (0: no "
                "retraining)")
    crn = a.design == "crn"
    t0 = time.perf_counter()

    data, clean = synthetic_dataset_with_truth(frames, image_size=a.image_size,
                                               noise_rate=a.noise_rate, seed=a.seed)
    n_test = max(1, int(round(0.2 * frames)))
    perm = np.random.default_rng(a.seed).permutation(frames)
    tr, te = np.sort(perm[n_test:]), np.sort(perm[:n_test])
    train, test, test_truth = data.take(tr), data.take(te), clean[te]
    n = train.n_frames
    k = a.k or max(1, int(round(0.1 * n)))
    noise = train.noise_mask.any(1)
    mc = ModelConfig(widths=(8, 16, 32), head_width=16)
    tc = TrainConfig(steps=steps, batch_size=a.batch_size, learning_rate=a.lr,
                     seed=a.seed, crn=crn)
    ec = ExecConfig(strategy=a.strategy, chunk_size=min(steps, 100))
    M = max(sizes)
    draw = (lambda m, s: plans.random_subsets(n, m, 0.5, s, allow_duplicates=True)) \
        if a.plan == "random" else (lambda m, s: plans.banzhaf_subsets(n, m, s))
    est_masks = draw(M, a.seed)
    val_masks, _ = plans.validation_subsets(a.plan, n, V, a.seed, fraction=0.5)
    masks = np.concatenate([est_masks, val_masks]).astype(bool)
    print(f"data: {n} train / {test.n_frames} test synthetic frames at {a.image_size} px, "
          f"{int(noise.sum())} frames with planted label noise; {M} + {V} members, plan "
          f"{a.plan}, design {a.design}, {steps} steps of batch {a.batch_size}", file=sys.stderr, flush=True)
    t_train = time.perf_counter()
    result = fit_waves(EnsembleTrainer(mc, tc, ec), train, masks,
                       plan_waves(len(masks), members_per_wave=a.members_per_wave),
                       progress=not q)
    train_s = time.perf_counter() - t_train
    vals = member_values(result, np.arange(M + V), test, test_truth)
    est, val = np.arange(M), np.arange(M, M + V)
    key = jax.random.key(a.seed)

    # ---------------- (a) LDS vs members
    rows, effects_at_max = [], {}
    for m in sizes:
        X = est_masks[:m]
        for out in OUTPUTS:
            y = vals[out][est[:m]]
            eff = {"difference_of_means": np.asarray(kernels.stratified_influence(
                jnp.asarray(X), jnp.asarray(y)).effect)}
            for kind in ("ridge", "lasso"):
                lam, _, _ = kernels.datamodel_cv(X, y, kind=kind, seed=a.seed)
                w, _ = kernels.fit_datamodel(jnp.asarray(X), jnp.asarray(y), lam, kind=kind)
                eff[kind] = np.asarray(w)
            for name, e in eff.items():
                pred = kernels.predict_from_effects(jnp.asarray(val_masks), jnp.asarray(e))
                act = jnp.asarray(vals[out][val])
                per = np.asarray(kernels.lds_per_test(pred, act))
                boot = np.asarray(kernels.lds_bootstrap(pred, act, jax.random.fold_in(key, m),
                                                        n_boot=200))
                boot = boot[np.isfinite(boot)]
                # NaN: the prediction does not vary (e.g. every LASSO weight is 0)
                lds = float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")
                row = {"members": m, "output": out, "estimator": name, "lds": lds,
                       "ci95": ([float(np.percentile(boot, 2.5)),
                                 float(np.percentile(boot, 97.5))] if boot.size else
                                [float("nan"), float("nan")])}
                rows.append(row)
                print(f"  M={m:5d} {out:18s} {name:20s} LDS {row['lds']:+.3f} "
                      f"[{row['ci95'][0]:+.3f}, {row['ci95'][1]:+.3f}]", file=sys.stderr,
                      flush=True)
                if m == M:
                    effects_at_max[(out, name)] = e
    best = max((r for r in rows if r["members"] == M and math.isfinite(r["lds"])),
               key=lambda r: r["lds"], default=None)
    if best is None:
        raise SystemExit(f"no estimator has a defined LDS at {M} members")

    # ---------------- (b) counterfactual retraining
    retrain, retrain_s = (_retrain(a, best, effects_at_max, result, est, n, k, noise, S, R,
                                   train, test, test_truth, mc, crn, steps)
                          if S else (None, 0.0))

    # ---------------- outputs
    res = {"benchmark": "attribution_check", "quick": q, "plan": a.plan, "design": a.design,
           "frames": {"train": n, "test": test.n_frames, "planted_noise_frames":
                      int(noise.sum())},
           "image_size": a.image_size, "network": {"widths": list(mc.widths),
                                                   "head_width": mc.head_width},
           "steps": steps, "batch_size": a.batch_size, "members": sizes, "validation": V,
           "lds": rows, "retrain": retrain, "train_s": train_s, "retrain_s": retrain_s,
           "wall_s": time.perf_counter() - t0, "backend": jax.default_backend(),
           "machine": platform.platform(), "cpu_count": __import__("os").cpu_count()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    eio.write_json(out, res)
    _figure(out.with_suffix(".png"), rows, sizes, a.design)
    print(f"\nLDS on {V} held-out members (design {a.design}; Spearman, mean over "
          f"{test.n_frames} test frames; 95% bootstrap interval)")
    print(f"{'members':>8} {'output':18s} " + " ".join(f"{e:>26s}" for e in
                                                     ("difference_of_means", "ridge", "lasso")))
    for m in sizes:
        for o in OUTPUTS:
            cells = []
            for e in ("difference_of_means", "ridge", "lasso"):
                r = next(r for r in rows if (r["members"], r["output"], r["estimator"])
                         == (m, o, e))
                cells.append(f"{r['lds']:+.3f} [{r['ci95'][0]:+.2f},{r['ci95'][1]:+.2f}]")
            print(f"{m:8d} {o:18s} " + " ".join(f"{c:>26s}" for c in cells))
    print(f"\nbest at {M} members: {best['estimator']} on {best['output']} "
          f"(LDS {best['lds']:.3f})")
    if retrain is not None:
        _print_retrain(retrain)
    print(f"wrote {out} ({res['wall_s']:.0f} s; training {train_s:.0f} s + {retrain_s:.0f} s)")
    return 0


def _retrain(a, best, effects_at_max, result, est, n, k, noise, S, R, train, test,
             test_truth, mc, crn, steps):
    """Counterfactual retraining; with crn every arm of seed s, member r shares block
    s * R + r (same init and draws): the arms' differences are paired comparisons."""
    e = effects_at_max[(best["output"], best["estimator"])]
    harm = ERROR_LIKE[best["output"]] * np.nanmean(e, 1)          # + = raises test error
    harmful = np.argsort(-np.nan_to_num(harm, nan=-np.inf), kind="stable")[:k]
    rep = aum_lib.aum_report(result.aum_sum[est], result.aum_count[est])
    frame_aum = np.where(np.isfinite(rep.aum), rep.aum, np.inf).min(1)
    low_aum = np.argsort(frame_aum, kind="stable")[:k]
    arms = ["all", "harmful", "random", "low_aum"]
    rng = np.random.default_rng(a.seed + 17)
    rmasks, arm_of, seed_of, block_of = [], [], [], []
    for s in range(S):
        rand = rng.choice(n, k, replace=False)
        for arm, drop in zip(arms, [np.array([], int), harmful, rand, low_aum]):
            row = np.ones(n, bool)
            row[drop] = False
            for r in range(R):
                block_of.append(s * R + r)
                rmasks.append(row)
                arm_of.append(arm)
                seed_of.append(s)
    rmasks = np.asarray(rmasks)
    rtc = TrainConfig(steps=steps, batch_size=a.batch_size, learning_rate=a.lr,
                      seed=a.seed + 1000, crn=crn)
    ec = ExecConfig(strategy=a.strategy, chunk_size=min(steps, 100))
    t_re = time.perf_counter()
    rres = EnsembleTrainer(mc, rtc, ec).fit(train, rmasks, progress=not a.quick,
                                        block_ids=np.asarray(block_of) if crn else None)
    retrain_s = time.perf_counter() - t_re
    rerr = np.nanmean(member_values(rres, np.arange(len(rmasks)), test,
                                    test_truth)["pixel_error"], 1)
    arm_of, seed_of = np.asarray(arm_of), np.asarray(seed_of)
    per_seed = {arm: np.array([rerr[(arm_of == arm) & (seed_of == s)].mean()
                               for s in range(S)]) for arm in arms}
    retrain = {"k": k, "seeds": S, "members_per_arm": R, "best_estimator": best,
               "planted_noise_in_removed": {
                   "harmful": int(noise[harmful].sum()), "low_aum": int(noise[low_aum].sum()),
                   "random_expected": float(k * noise.mean())},
               "test_error_all_frames_px": per_seed["all"].tolist(), "arms": {}}
    for arm in arms[1:]:
        d = per_seed[arm] - per_seed["all"]
        mean, ci = t_interval(d)
        retrain["arms"][arm] = {"change_px_per_seed": d.tolist(), "mean_change_px": mean,
                                "ci95": ci}
    beats = int((per_seed["harmful"] < per_seed["random"]).sum())
    retrain["harmful_beats_random_seeds"] = beats
    hm, hci = t_interval(per_seed["harmful"] - per_seed["random"])
    retrain["harmful_minus_random"] = {
        "per_seed_px": (per_seed["harmful"] - per_seed["random"]).tolist(), "mean_px": hm,
        "ci95": hci}

    return retrain, retrain_s


def _print_retrain(retrain):
    S, R, k = retrain["seeds"], retrain["members_per_arm"], retrain["k"]
    print(f"retraining without k={k} frames ({S} seeds x {R} members per arm; change in mean "
          f"member test error vs all frames, px, 95% t-interval over seeds):")
    for arm, r in retrain["arms"].items():
        ci = r["ci95"]
        print(f"  {arm:8s} {r['mean_change_px']:+.4f}"
              + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci[0] is not None else ""))
    d = retrain["harmful_minus_random"]
    print("  harmful minus random, per seed (px): " + ", ".join(f"{x:+.3f}" for x in
                                                              d["per_seed_px"])
          + f"; mean {d['mean_px']:+.3f}" + (f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                                             if d["ci95"][0] is not None else ""))
    print(f"  removing the harmful frames beat removing random ones in "
          f"{retrain['harmful_beats_random_seeds']} of {S} seeds; planted-noise frames removed: "
          f"harmful {retrain['planted_noise_in_removed']['harmful']}, lowest AUM "
          f"{retrain['planted_noise_in_removed']['low_aum']}, random "
          f"{retrain['planted_noise_in_removed']['random_expected']:.1f} expected")


def _figure(path, rows, sizes, design):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(OUTPUTS), figsize=(4.2 * len(OUTPUTS), 3.6),
                             sharey=True, layout="constrained")
    for ax, o in zip(axes, OUTPUTS):
        for j, e in enumerate(("difference_of_means", "ridge", "lasso")):
            rr = [r for r in rows if r["output"] == o and r["estimator"] == e]
            x = [r["members"] for r in rr]
            y = [r["lds"] for r in rr]
            lo = [r["lds"] - r["ci95"][0] for r in rr]
            hi = [r["ci95"][1] - r["lds"] for r in rr]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=e, color=f"C{j}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(f"output: {o}", fontsize=10)
        ax.set_xlabel("estimation members")
    axes[0].set_ylabel(f"LDS on held-out members ({design})")
    axes[0].legend(fontsize=8)
    eio.save_figure(path, fig, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
