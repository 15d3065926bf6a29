"""Study 5: active learning: which pool frames to label next.

A labeled base set and an unlabeled pool. On synthetic data the base set comes from the
default scenes (domain 0) and the pool and the test frames from shifted conditions
(domain 1: dark busy background, light animal, smaller and much more bent poses), so that
labels from the pool are what the model lacks. With `--data` the frames are split at
random: a test set, then per shuffle a base set and a pool.

Per shuffle (a different base set, pool and seed):
  1. an ensemble of `--base-members` members trained on bootstrap resamples of the base
     set scores the pool: MPE (max over keypoints of the multi-peak entropy of the
     sigmoid heatmaps, mean over members), ensemble spread (members' RMS distance to their
     mean, mean over keypoints, px), representativeness (mean cosine similarity of the
     encoder features to the rest of the pool) and encoder features for k-means;
  2. each strategy orders the pool (uniform: random; mpe / spread / representativeness:
     highest first; cluster: k-means clusters of the features visited in turn);
  3. one member per (strategy, budget) is trained on base + the first budget% of the
     order, budgets 0/25/50/75/100% of the pool (0 and 100% are shared by all strategies).
All members of step 3, for every shuffle, are one ensemble fit. Test error is divided by
the same shuffle's budget-0 error (normalised error: 1 = base set only).

    python experiments/study5_active_learning.py [--out runs/studies] [--quick] [--data PATH]
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import common  # noqa: E402

import numpy as np  # noqa: E402

NAME = "study5_active_learning"
BUDGETS = (0.0, 0.25, 0.5, 0.75, 1.0)
LABELS = {"uniform": "uniform (random)", "mpe": "MPE (max over keypoints)",
          "representativeness": "representativeness", "spread": "ensemble spread",
          "cluster": "cluster-balanced (k-means)"}
COLORS = {"uniform": "0.3", "mpe": "tab:red", "representativeness": "tab:green",
          "spread": "tab:blue", "cluster": "tab:purple"}


def _extra(p):
    p.add_argument("--shuffles", type=int, default=3, help="shuffles (3)")
    p.add_argument("--base", type=int, default=None, help="base-set frames (60; --quick 16)")
    p.add_argument("--pool", type=int, default=None, help="pool frames (80; --quick 16)")
    p.add_argument("--test", type=int, default=None, help="test frames (60; --quick 12)")
    p.add_argument("--base-members", type=int, default=3,
                   help="members of the scoring ensemble per shuffle (3)")
    p.add_argument("--clusters", type=int, default=None, help="k-means clusters (5; --quick 3)")
    p.add_argument("--replot", action="store_true", help="redraw figures and the report "
                   "section from OUT/study5_active_learning/numbers.json (no training)")


def configs(args):
    from ensemble_jax.models.heatmap_net import ModelConfig
    from ensemble_jax.training.config import ExecConfig, TrainConfig
    q = args.quick
    cfg = {"shuffles": args.shuffles, "base": args.base or (16 if q else 60),
           "pool": args.pool or (16 if q else 80), "test": args.test or (12 if q else 60),
           "base_members": args.base_members, "clusters": args.clusters or (3 if q else 5),
           "image_size": args.image_size or (32 if q else 64), "budgets": list(BUDGETS),
           "seed": 0 if args.seed is None else args.seed}
    model = ModelConfig(widths=(8, 16, 32), head_width=16)
    train = TrainConfig(steps=args.steps or (40 if q else 200), batch_size=8,
                        learning_rate=3e-3, seed=cfg["seed"])
    return cfg, model, train, ExecConfig(strategy="sequential", chunk_size=40 if q else 100)


def load(args, cfg):
    """(data, base candidates, pool candidates, test indices, description)."""
    rng = np.random.default_rng([cfg["seed"], 5])
    if args.data:
        from ensemble_jax.data.load import load_dataset
        data = load_dataset(args.data, format=args.format, image_size=cfg["image_size"])
        data = data.take(np.flatnonzero(data.labeled.any(1)))
        perm = rng.permutation(data.n_frames)
        n_test = min(cfg["test"], data.n_frames // 4)
        test, rest = np.sort(perm[:n_test]), perm[n_test:]
        return data, rest, rest, test, f"{data.source}: random base / pool / test split"
    from ensemble_jax.data.dataset import concatenate
    from ensemble_jax.data.synthetic import synthetic_dataset
    s = cfg["image_size"]
    n0 = 2 * cfg["base"]
    n1 = cfg["test"] + int(np.ceil(1.5 * cfg["pool"]))
    d0 = synthetic_dataset(n0, image_size=s, seed=cfg["seed"], domain=0)
    d1 = synthetic_dataset(n1, image_size=s, seed=cfg["seed"], domain=1)
    data = concatenate([d0, d1])
    test = np.arange(n0, n0 + cfg["test"])
    return (data, np.arange(n0), np.arange(n0 + cfg["test"], n0 + n1), test,
            "synthetic: base set from domain 0, pool and test frames from domain 1 "
            "(shifted background, colours, body size and poses)")


def pool_scores(result, members, data, pool, cfg, rng):
    from ensemble_jax.analysis import active
    from ensemble_jax.analysis.analyze import member_outputs
    from ensemble_jax.kernels import ensemble_spread, frame_mpe, representativeness
    import jax.numpy as jnp
    outs = member_outputs(result, members, data.images[pool], data.keypoints[pool])
    mpe = np.asarray(frame_mpe(jnp.asarray(outs["mpe"]), "max")).mean(0)         # [P]
    spread = np.nanmean(np.asarray(ensemble_spread(jnp.asarray(outs["keypoints"]))), 1)
    feat = outs["features"].mean(0)                                              # [P, D]
    rep = np.asarray(representativeness(jnp.asarray(feat)))
    orders = {}
    for strat in active.STRATEGIES:
        orders[strat] = active.select_order(strat, n=len(pool), rng=rng, mpe=mpe,
                                            spread=spread, representativeness=rep,
                                            features=feat, n_clusters=cfg["clusters"])
    _, clusters = active.cluster_balanced_order(feat, cfg["clusters"],
                                                np.random.default_rng(0))
    return orders, {"mpe": mpe, "spread": spread, "representativeness": rep,
                    "cluster": clusters}


def replot(args) -> dict:
    """Figures, section and report again from OUT/<study>/numbers.json (no training)."""
    import json
    out = common.study_dir(args, NAME)
    nb = json.loads((out / "numbers.json").read_text())
    nan = lambda v: np.array([[np.nan if x is None else x for x in r] for r in v], float)
    curves = {st: nan(v) for st, v in nb["test_error_px"].items()}
    norm = {st: nan(v) for st, v in nb["normalised_error"].items()}
    figs = figures(out, norm, np.array(nb["labels_added"]), curves, nb["config"])
    write_section(out, nb, figs, curves, norm)
    common.finish(args, print)
    return nb


def main(argv=None) -> dict:
    args = common.parse_args(__doc__.split("\n")[0], argv, extra=_extra)
    common.setup()
    if args.replot:
        return replot(args)
    from ensemble_jax.analysis import active
    from ensemble_jax.training.trainer import EnsembleTrainer
    log = print
    t0 = time.perf_counter()
    out = common.study_dir(args, NAME)
    cfg, model, tc, run = configs(args)
    data, base_cand, pool_cand, test_idx, desc = load(args, cfg)
    test = data.take(test_idx)
    n = data.n_frames
    S, E = cfg["shuffles"], cfg["base_members"]
    log(f"{NAME}: {desc}; {n} frames, base {cfg['base']}, pool {cfg['pool']}, test "
        f"{len(test_idx)}, {S} shuffles")

    # ---------------- per shuffle: base set, pool; one fit of every scoring ensemble
    base_sets, pools, masks1 = [], [], []
    for s in range(S):
        rng = np.random.default_rng([cfg["seed"], s])
        if args.data:
            perm = rng.permutation(base_cand)
            nb = min(cfg["base"], len(perm) // 3)
            b, p = np.sort(perm[:nb]), np.sort(perm[nb:nb + min(cfg["pool"], len(perm) - nb)])
        else:
            b = np.sort(rng.choice(base_cand, cfg["base"], replace=False))
            p = np.sort(rng.choice(pool_cand, min(cfg["pool"], len(pool_cand)), replace=False))
        base_sets.append(b)
        pools.append(p)
        for e in range(E):
            c = np.zeros(n, np.int64)
            np.add.at(c, rng.choice(b, b.size, replace=True), 1)
            masks1.append(c)
    trainer = EnsembleTrainer(model, dataclasses.replace(tc, track_aum=False), run)
    scorer = trainer.fit(data, np.stack(masks1), progress=not args.quiet, log=log)
    t_score_fit = time.perf_counter() - t0

    plan, layout, scores = [], [], []
    for s in range(S):
        rng = np.random.default_rng([cfg["seed"], s, 1])
        orders, sc = pool_scores(scorer, list(range(s * E, (s + 1) * E)), data, pools[s], cfg,
                                 rng)
        scores.append({k: np.asarray(v).tolist() for k, v in sc.items()})
        P = len(pools[s])
        for bi, bud in enumerate(BUDGETS):
            strats = ("shared",) if bud in (0.0, 1.0) else active.STRATEGIES
            for strat in strats:
                order = orders["uniform"] if strat == "shared" else orders[strat]
                take = pools[s][order[:int(round(bud * P))]]
                m = np.zeros(n, bool)
                m[base_sets[s]] = True
                m[take] = True
                plan.append(m)
                layout.append((s, strat, bud, int(take.size)))
    t1 = time.perf_counter()
    member_ids = np.array([1000 + s for s, *_ in layout])   # same init within a shuffle
    res = EnsembleTrainer(model, dataclasses.replace(tc, track_aum=False), run).fit(
        data, np.stack(plan), member_ids=member_ids, progress=not args.quiet, log=log)
    t_fit = time.perf_counter() - t1
    pred = res.predict(test.images)
    err = np.nanmean(common.frame_errors(test.to_original(pred.keypoints),
                                         test.original_keypoints()), 1)   # [M]

    # ---------------- curves: err[strategy][shuffle][budget]
    curves = {st: np.full((S, len(BUDGETS)), np.nan) for st in active.STRATEGIES}
    added = np.zeros((S, len(BUDGETS)), int)
    for m, (s, strat, bud, k) in enumerate(layout):
        bi = BUDGETS.index(bud)
        added[s, bi] = k
        for st in (active.STRATEGIES if strat == "shared" else (strat,)):
            curves[st][s, bi] = err[m]
    norm = {st: c / c[:, :1] for st, c in curves.items()}
    numbers = {"config": cfg, "model": dataclasses.asdict(model),
               "train": dataclasses.asdict(tc), "description": desc,
               "budgets": list(BUDGETS), "labels_added": added.tolist(),
               "test_error_px": {st: c.tolist() for st, c in curves.items()},
               "normalised_error": {st: c.tolist() for st, c in norm.items()},
               "units": "test error: mean Euclidean distance per labeled keypoint, pixels "
                        "of the original images; normalised error: divided by the same "
                        "shuffle's error with the base set only (budget 0)",
               "members": len(layout), "strategy": res.strategy,
               "score_fit_seconds": t_score_fit, "fit_seconds": t_fit}
    summary = {}
    for st in active.STRATEGIES:
        nm = norm[st]
        summary[st] = {
            "mean_normalised": np.nanmean(nm, 0).tolist(),
            "min_normalised": np.nanmin(nm, 0).tolist(),
            "max_normalised": np.nanmax(nm, 0).tolist(),
            "mean_over_partial_budgets": float(np.nanmean(nm[:, 1:-1])),
            "shuffles_better_than_uniform": [int((nm[:, b] < norm["uniform"][:, b]).sum())
                                             for b in range(len(BUDGETS))]}
    numbers["summary"] = summary
    numbers["pool_scores"] = scores
    rows = []
    for st in active.STRATEGIES:
        for s in range(S):
            for bi, bud in enumerate(BUDGETS):
                rows.append([st, s, bud, int(added[s, bi]), float(curves[st][s, bi]),
                             float(norm[st][s, bi])])
    common.write_csv(out / "curves.csv", ["strategy", "shuffle", "budget", "labels_added",
                                          "test_px", "normalised_error"], rows)
    for st in active.STRATEGIES:
        sm = summary[st]
        log(f"  {st:>18}: normalised error at 25/50/75% "
            + " / ".join(f"{v:.3f}" for v in sm["mean_normalised"][1:-1])
            + f" (mean over shuffles); 100%: {sm['mean_normalised'][-1]:.3f}; better than "
              f"uniform in {sm['shuffles_better_than_uniform'][1:-1]} of {S} shuffles")
    base_px = curves["uniform"][:, 0]
    full_px = curves["uniform"][:, -1]
    log(f"  base set only: {np.mean(base_px):.2f} px; base + whole pool: {np.mean(full_px):.2f} px")
    figs = figures(out, norm, added, curves, cfg)
    numbers["seconds"] = time.perf_counter() - t0
    common.write_numbers(out, numbers)
    write_section(out, numbers, figs, curves, norm)
    log(f"{NAME}: done in {numbers['seconds']:.0f} s (scoring ensembles {t_score_fit:.0f} s, "
        f"{len(layout)} members {t_fit:.0f} s) -> {out}")
    common.finish(args, log)
    return numbers


def figures(out, norm, added, curves, cfg):
    import matplotlib.pyplot as plt
    from ensemble_jax import io as eio
    from ensemble_jax.analysis.active import STRATEGIES
    S = added.shape[0]
    x = added.mean(0)
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.2), sharex=True, sharey=True)
    allv = np.concatenate([v.ravel() for v in norm.values()])
    allv = allv[np.isfinite(allv)]
    for ax, st in zip(axes.flat, STRATEGIES):
        for s in range(S):
            ax.plot(added[s], norm[st][s], ["-", "--", ":"][s % 3] + "osD^v"[s % 5],
                    color=COLORS[st], alpha=0.7, lw=1.3, ms=4, label=f"shuffle {s}")
        ax.plot(x, np.nanmean(norm["uniform"], 0), "-", color="0.2", lw=2.5, alpha=0.35,
                label="uniform, mean over shuffles")
        ax.set_title(LABELS[st], fontsize=11)
        ax.grid(alpha=0.3)
        ax.axhline(1.0, color="k", lw=0.6)
    ax = axes.flat[5]
    for st in STRATEGIES:
        ax.fill_between(x, np.nanmin(norm[st], 0), np.nanmax(norm[st], 0), color=COLORS[st],
                        alpha=0.12)
        ax.plot(x, np.nanmean(norm[st], 0), "-o", color=COLORS[st], ms=3, label=st)
    ax.set_title(f"all strategies: mean, band = range over {S} shuffles", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    axes.flat[0].legend(fontsize=8)
    if allv.size:
        pad = 0.05 * (allv.max() - allv.min() + 1e-6)
        axes.flat[0].set_ylim(allv.min() - pad, allv.max() + pad)
    for ax in axes[1]:
        ax.set_xlabel(f"pool frames labeled and added (of {int(added[:, -1].mean())})")
    for ax in axes[:, 0]:
        ax.set_ylabel("normalised test error\n(error / error with base set only)")
    fig.suptitle("Active learning: test error vs labels added (one line per shuffle)")
    fig.tight_layout()
    eio.save_figure(out / "al_curves.png", fig, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for st in STRATEGIES:
        m = np.nanmean(curves[st], 0)
        lo, hi = np.nanmin(curves[st], 0), np.nanmax(curves[st], 0)
        ax.errorbar(x + (STRATEGIES.index(st) - 2) * 0.006 * max(x.max(), 1), m,
                    yerr=[m - lo, hi - m], fmt="-o", ms=3, capsize=3, color=COLORS[st],
                    label=LABELS[st])
    ax.set_xlabel(f"pool frames labeled and added (of {int(added[:, -1].mean())})")
    ax.set_ylabel("test error (px, mean per keypoint)")
    ax.set_title("Test error in pixels (mean, bars = range over shuffles)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    eio.save_figure(out / "al_error_px.png", fig, dpi=110)
    plt.close(fig)
    return [("al_curves.png", "Normalised test error (1 = base set only) against the number "
             "of pool frames labeled, one line per shuffle; thick grey: the mean uniform curve. "
             "Last panel: every strategy's mean, shaded over the shuffles' range."),
            ("al_error_px.png", "The same runs in pixels: mean over shuffles, bars from the "
             "best to the worst shuffle.")]


def write_section(out, nb, figs, curves, norm):
    from ensemble_jax.analysis.active import STRATEGIES
    from ensemble_jax.analysis.report import write_section as ws
    c = nb["config"]
    sm = nb["summary"]
    S = c["shuffles"]
    base_px = np.array(nb["test_error_px"]["uniform"])[:, 0]
    full_px = np.array(nb["test_error_px"]["uniform"])[:, -1]
    pool_n = int(np.mean(np.array(nb["labels_added"])[:, -1]))
    paras = [f"{nb['description']}. Base set {c['base']} frames, pool {pool_n} frames, "
             f"test {c['test']} frames, {S} shuffles; {nb['members']} members trained "
             f"({nb['train']['steps']} steps each) in one ensemble fit.",
             f"The base set alone gives {np.mean(base_px):.2f} px test error (shuffles "
             f"{', '.join(f'{v:.2f}' for v in base_px)}); labelling the whole pool gives "
             f"{np.mean(full_px):.2f} px (normalised {sm['uniform']['mean_normalised'][-1]:.3f})."]
    ranked = sorted(STRATEGIES, key=lambda st: sm[st]["mean_over_partial_budgets"])
    paras.append("Mean normalised error over the 25/50/75% budgets and shuffles, best first: "
                 + "; ".join(f"{st} {sm[st]['mean_over_partial_budgets']:.3f}" for st in ranked)
                 + ".")
    best = ranked[0]
    if best == "uniform":
        paras.append("No strategy beat uniform sampling on average over the partial budgets.")
    else:
        wins = sm[best]["shuffles_better_than_uniform"][1:-1]
        gap = sm["uniform"]["mean_over_partial_budgets"] - sm[best]["mean_over_partial_budgets"]
        paras.append(f"{best} is best, {gap:.3f} below uniform in normalised error; it beat "
                     f"uniform in {wins[0]}, {wins[1]} and {wins[2]} of {S} shuffles at "
                     f"25, 50 and 75% of the pool"
                     + (" (consistent over shuffles)." if min(wins) == S else
                        " (not in every shuffle, so the ranking is not settled)."))
    u = sm["uniform"]["mean_normalised"]
    paras.append(f"With uniform sampling the first quarter of the pool "
                 f"({int(np.mean(np.array(nb['labels_added'])[:, 1]))} frames) takes the "
                 f"normalised error from 1 to {u[1]:.3f}; the other three quarters move it "
                 f"by {u[-1] - u[1]:+.3f} (to {u[-1]:.3f}), "
                 + ("so most of the gain from the shifted domain comes from its first "
                    "labels, and later differences are of the order of the spread between "
                    "shuffles." if abs(u[-1] - u[1]) < 0.5 * (1 - u[1]) else
                    "so labels keep paying off over the whole pool."))
    half = {st: sm[st]["mean_normalised"][2] for st in STRATEGIES}
    paras.append("At half of the pool: " + ", ".join(
        f"{st} {half[st]:.3f} (range {sm[st]['min_normalised'][2]:.3f}-"
        f"{sm[st]['max_normalised'][2]:.3f})" for st in STRATEGIES) + ".")
    paras.append(f"Units: {nb['units']}. Wall time {nb['seconds']:.0f} s.")
    table = {"caption": "Mean normalised test error over shuffles (1 = base set only)",
             "columns": ["strategy"] + [f"{int(b * 100)}%" for b in BUDGETS],
             "rows": [[st] + [float(v) for v in sm[st]["mean_normalised"]] for st in STRATEGIES]}
    ws(out, title="Study 5: active learning", paragraphs=paras, figures=figs,
       tables=[table], order=50)


if __name__ == "__main__":
    main()
