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
     mean, mean over keypoints, px), representativeness and clusters from the encoder
     features. Features are never averaged across members (independently trained members'
     channels do not correspond): each member's features are centred per channel over the
     pool; representativeness (mean cosine similarity to the rest of the pool) is computed
     per member and averaged over members; k-means runs on the members' centred,
     unit-normalised features side by side, whose dot product is the members' mean cosine;
  2. each strategy orders the pool (uniform: random; mpe / spread / representativeness:
     highest first; cluster: k-means clusters of the features visited in turn);
  3. `--members-per-cell` members per (strategy, budget) are trained on base + the first
     budget% of the order, budgets `--budgets` of the pool (0 and 100% are shared by all
     strategies); replicate r of a shuffle starts from the same weights in every cell.
All members of step 3, for every shuffle, are one ensemble fit. Test error is divided by
the same shuffle's and replicate's budget-0 error (normalised error: 1 = base set only).

Conclusion (numbers.json "conclusion", `conclude`): per shuffle, the difference of a
strategy's normalised error from uniform's, averaged over replicates and partial budgets;
a t interval over shuffles (the unit that is redrawn: base set, pool, scoring ensemble,
orders), Bonferroni over the 4 strategies compared with uniform (experiments/intervals.py).
"not resolved" when the best strategy's interval includes 0.

    python experiments/study5_active_learning.py [--out runs/studies] [--quick] [--data PATH]
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments import common, intervals  # noqa: E402

import numpy as np  # noqa: E402

NAME = "study5_active_learning"
BUDGETS = (0.0, 0.25, 0.5, 1.0)
LABELS = {"uniform": "uniform (random)", "mpe": "MPE (max over keypoints)",
          "representativeness": "representativeness", "spread": "ensemble spread",
          "cluster": "cluster-balanced (k-means)"}
COLORS = {"uniform": "0.3", "mpe": "tab:red", "representativeness": "tab:green",
          "spread": "tab:blue", "cluster": "tab:purple"}


def _extra(p):
    p.add_argument("--shuffles", type=int, default=None, help="shuffles (4; --quick 3)")
    p.add_argument("--members-per-cell", type=int, default=3,
                   help="members per (shuffle, strategy, budget), paired across cells (3)")
    p.add_argument("--budgets", type=float, nargs="+", default=None,
                   help="shares of the pool labeled, first 0, last 1 (0 0.25 0.5 1)")
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
    budgets = [float(x) for x in (args.budgets or BUDGETS)]
    if len(budgets) < 3 or budgets[0] != 0 or budgets[-1] != 1 or \
            any(y <= x for x, y in zip(budgets, budgets[1:])):
        raise SystemExit(f"--budgets {' '.join(map(str, budgets))}: need increasing shares "
                         f"from 0 to 1 with at least one in between")
    if args.members_per_cell < 1 or (args.shuffles is not None and args.shuffles < 2):
        raise SystemExit("--members-per-cell must be >= 1 and --shuffles >= 2 (an interval "
                         "over shuffles needs two)")
    cfg = {"shuffles": args.shuffles or (3 if q else 4),
           "members_per_cell": args.members_per_cell,
           "base": args.base or (16 if q else 60),
           "pool": args.pool or (16 if q else 80), "test": args.test or (12 if q else 60),
           "base_members": args.base_members, "clusters": args.clusters or (3 if q else 5),
           "image_size": args.image_size or (32 if q else 64), "budgets": budgets,
           "seed": 0 if args.seed is None else args.seed}
    model = ModelConfig(widths=(8, 16, 32), head_width=16)
    # execution settings (ExecConfig: strategy, chunk_size) are set here only
    train = TrainConfig(steps=args.steps or (40 if q else 200), batch_size=8,
                        learning_rate=3e-3, seed=cfg["seed"], track_aum=False)
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


def member_feature_scores(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Representativeness and a clustering embedding from per-member encoder features.

    features: [E, P, D], member e's pooled encoder features of the P pool frames (channels
    of different members do not correspond, so they are never averaged across members).
    Returns (representativeness [P]: per member, the mean cosine similarity of a frame's
    centred features to the rest of the pool, averaged over members; embedding [P, E*D]:
    each member's centred features scaled to unit length per frame, side by side, divided
    by sqrt(E), so that embedding @ embedding.T is the members' mean cosine similarity).
    """
    import jax.numpy as jnp
    from ensemble_jax.kernels import representativeness
    f = np.asarray(features, np.float64)
    f = f - f.mean(1, keepdims=True)                 # centre per member and channel
    rep = np.mean([np.asarray(representativeness(jnp.asarray(fm, jnp.float32)))
                   for fm in f], axis=0)
    norm = np.linalg.norm(f, axis=-1, keepdims=True)
    unit = np.where(norm > 0, f / np.where(norm > 0, norm, 1.0), 0.0)
    emb = np.concatenate(list(unit), axis=-1) / np.sqrt(f.shape[0])
    return rep, emb


def pool_scores(result, members, data, pool, cfg, rng):
    from ensemble_jax.analysis import active
    from ensemble_jax.analysis.analyze import member_outputs
    from ensemble_jax.kernels import ensemble_spread, frame_mpe
    import jax.numpy as jnp
    outs = member_outputs(result, members, data.images[pool], data.keypoints[pool])
    mpe = np.asarray(frame_mpe(jnp.asarray(outs["mpe"]), "max")).mean(0)         # [P]
    spread = np.nanmean(np.asarray(ensemble_spread(jnp.asarray(outs["keypoints"]))), 1)
    rep, emb = member_feature_scores(outs["features"])                          # [P], [P, E*D]
    orders = {}
    for strat in active.STRATEGIES:
        orders[strat] = active.select_order(strat, n=len(pool), rng=rng, mpe=mpe,
                                            spread=spread, representativeness=rep,
                                            features=emb, n_clusters=cfg["clusters"],
                                            standardize=False)
    _, clusters = active.cluster_balanced_order(emb, cfg["clusters"],
                                                np.random.default_rng(0), standardize=False)
    return orders, {"mpe": mpe, "spread": spread, "representativeness": rep,
                    "cluster": clusters}


def build_plan(orders: list[dict], base_sets: list, pools: list, budgets, replicates: int,
               n: int):
    """The members of step 3: (masks bool [M, n], layout [(shuffle, strategy or 'shared',
    budget, frames added, replicate)], member_ids [M]). Replicate r of shuffle s has id
    1000 + s * replicates + r in every cell (same initial weights: paired)."""
    from ensemble_jax.analysis.active import STRATEGIES
    masks, layout, ids = [], [], []
    for s, (orders_s, base, pool) in enumerate(zip(orders, base_sets, pools)):
        P = len(pool)
        for bud in budgets:
            strats = ("shared",) if bud in (0.0, 1.0) else STRATEGIES
            for strat in strats:
                order = orders_s["uniform"] if strat == "shared" else orders_s[strat]
                take = np.asarray(pool)[order[:int(round(bud * P))]]
                for r in range(replicates):
                    m = np.zeros(n, bool)
                    m[base] = True
                    m[take] = True
                    masks.append(m)
                    layout.append((s, strat, float(bud), int(take.size), r))
                    ids.append(1000 + s * replicates + r)
    return np.stack(masks), layout, np.array(ids)


def collect(layout, err, shuffles: int, replicates: int, budgets):
    """Member test errors [M] -> (curves {strategy: [S, R, B]}, frames added [S, B]); the
    shared budgets 0 and 1 are copied into every strategy."""
    from ensemble_jax.analysis.active import STRATEGIES
    budgets = list(budgets)
    curves = {st: np.full((shuffles, replicates, len(budgets)), np.nan) for st in STRATEGIES}
    added = np.zeros((shuffles, len(budgets)), int)
    for m, (s, strat, bud, k, r) in enumerate(layout):
        bi = budgets.index(bud)
        added[s, bi] = k
        for st in (STRATEGIES if strat == "shared" else (strat,)):
            curves[st][s, r, bi] = err[m]
    return curves, added


def conclude(norm: dict, budgets, alpha: float = intervals.FAMILY_ALPHA) -> dict:
    """The study's conclusion from normalised errors {strategy: [S, R, B]} (B budgets,
    the first 0 and the last 1, both shared).

    Per shuffle s: d_s = mean over replicates and partial budgets of (strategy - uniform).
    Each non-uniform strategy gets a t interval over shuffles, Bonferroni over the 4;
    best_strategy: lowest mean difference; resolved: its interval excludes 0.
    """
    from ensemble_jax.analysis.active import STRATEGIES
    part = slice(1, len(budgets) - 1)
    u = np.asarray(norm["uniform"], np.float64)
    compared = [st for st in STRATEGIES if st != "uniform"]
    a = alpha / len(compared)
    per = {}
    for st in compared:
        d = np.nanmean((np.asarray(norm[st], np.float64) - u)[:, :, part], axis=(1, 2))
        iv = intervals.paired_t(d, a)
        per[st] = {"vs_uniform": iv["mean"], "interval": iv["interval"],
                   "resolved": intervals.resolved(iv), "per_shuffle": d.tolist(),
                   "shuffles_needed": intervals.units_needed(iv, a)}
    best = min(compared, key=lambda st: per[st]["vs_uniform"])
    b = per[best]
    lo, hi = b["interval"]
    level = 1 - a
    S = u.shape[0]
    out = {"best_strategy": best, "vs_uniform": b["vs_uniform"], "interval": [lo, hi],
           "resolved": b["resolved"], "better_than_uniform": bool(b["resolved"] and hi < 0),
           "level": level, "units": "normalised test error (1 = base set only), mean over "
                                    "the partial budgets",
           "method": (f"t interval over {S} shuffles of the per-shuffle difference from "
                      f"uniform (mean over replicates and the partial budgets), {level:.2%} "
                      f"per strategy (Bonferroni over {len(compared)}: 95% for the family); "
                      f"conditional on the test frames"),
           "strategies": per,
           "resolved_better": [st for st in compared if per[st]["resolved"]
                               and per[st]["vs_uniform"] < 0],
           "resolved_worse": [st for st in compared if per[st]["resolved"]
                              and per[st]["vs_uniform"] > 0]}
    st = intervals.best_vs_baseline(
        best, {"mean": b["vs_uniform"], "interval": [lo, hi], "level": level},
        b["shuffles_needed"], baseline="uniform", kind="strategy",
        units=" in normalised error", span_units="", n_text=f"{S} shuffles")
    others = [x for x in out["resolved_better"] + out["resolved_worse"] if x != best]
    if others:
        st += " Also resolved: " + ", ".join(
            f"{x} {per[x]['vs_uniform']:+.3f}" for x in others) + "."
    out["statement"] = st
    return out


def replot(args) -> dict:
    """Figures, section and report again from OUT/<study>/numbers.json (no training)."""
    import json
    out = common.study_dir(args, NAME)
    nb = json.loads((out / "numbers.json").read_text())
    nan = lambda v: np.array([[np.nan if x is None else x for x in r] for r in v], float)
    curves = {st: nan(v) for st, v in nb["test_error_px"].items()}
    norm = {st: nan(v) for st, v in nb["normalised_error"].items()}
    members = {st: np.array(v, float) for st, v in nb["test_error_px_members"].items()}
    nb["conclusion"] = conclude({st: c / c[:, :, :1] for st, c in members.items()},
                                nb["budgets"])
    common.write_numbers(out, nb)
    figs = figures(out, norm, np.array(nb["labels_added"]), curves, nb["config"],
                   nb["conclusion"])
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
    trainer = EnsembleTrainer(model, tc, run)
    scorer = trainer.fit(data, np.stack(masks1), progress=not args.quiet, log=log)
    t_score_fit = time.perf_counter() - t0

    orders, scores = [], []
    for s in range(S):
        rng = np.random.default_rng([cfg["seed"], s, 1])
        o, sc = pool_scores(scorer, list(range(s * E, (s + 1) * E)), data, pools[s], cfg, rng)
        orders.append(o)
        scores.append({k: np.asarray(v).tolist() for k, v in sc.items()})
    R, budgets = cfg["members_per_cell"], cfg["budgets"]
    plan, layout, member_ids = build_plan(orders, base_sets, pools, budgets, R, n)
    t1 = time.perf_counter()
    res = EnsembleTrainer(model, tc, run).fit(data, plan, member_ids=member_ids,
                                              progress=not args.quiet, log=log)
    t_fit = time.perf_counter() - t1
    pred = res.predict(test.images)
    err = np.nanmean(common.frame_errors(test.to_original(pred.keypoints),
                                         test.original_keypoints()), 1)   # [M]
    err = np.where(res.alive, err, np.nan)

    # ---------------- curves: [strategy][shuffle, replicate, budget]
    members, added = collect(layout, err, S, R, budgets)
    norm_m = {st: c / c[:, :, :1] for st, c in members.items()}   # paired by replicate
    curves = {st: np.nanmean(c, 1) for st, c in members.items()}   # [S, B]
    norm = {st: np.nanmean(c, 1) for st, c in norm_m.items()}
    conclusion = conclude(norm_m, budgets)
    numbers = {"config": cfg, "model": dataclasses.asdict(model),
               "train": dataclasses.asdict(tc), "description": desc,
               "budgets": list(budgets), "labels_added": added.tolist(),
               "test_error_px": {st: c.tolist() for st, c in curves.items()},
               "normalised_error": {st: c.tolist() for st, c in norm.items()},
               "test_error_px_members": {st: c.tolist() for st, c in members.items()},
               "units": "test error: mean Euclidean distance per labeled keypoint, pixels "
                        "of the original images (test_error_px: mean over the members of a "
                        "cell); normalised error: divided by the same shuffle's and "
                        "replicate's error with the base set only (budget 0), then averaged "
                        "over replicates",
               "members": len(layout), "strategy": res.strategy,
               "score_fit_seconds": t_score_fit, "fit_seconds": t_fit,
               "conclusion": conclusion}
    summary = {}
    for st in active.STRATEGIES:
        nm = norm[st]
        summary[st] = {
            "mean_normalised": np.nanmean(nm, 0).tolist(),
            "min_normalised": np.nanmin(nm, 0).tolist(),
            "max_normalised": np.nanmax(nm, 0).tolist(),
            "mean_over_partial_budgets": float(np.nanmean(nm[:, 1:-1])),
            "shuffles_better_than_uniform": [int((nm[:, b] < norm["uniform"][:, b]).sum())
                                             for b in range(len(budgets))]}
    numbers["summary"] = summary
    numbers["pool_scores"] = scores
    rows = []
    for st in active.STRATEGIES:
        for s in range(S):
            for r in range(R):
                for bi, bud in enumerate(budgets):
                    rows.append([st, s, r, bud, int(added[s, bi]), float(members[st][s, r, bi]),
                                 float(norm_m[st][s, r, bi])])
    common.write_csv(out / "curves.csv", ["strategy", "shuffle", "replicate", "budget",
                                          "labels_added", "test_px", "normalised_error"], rows)
    pct = "/".join(f"{b:.0%}" for b in budgets[1:-1])
    for st in active.STRATEGIES:
        sm = summary[st]
        log(f"  {st:>18}: normalised error at {pct} "
            + " / ".join(f"{v:.3f}" for v in sm["mean_normalised"][1:-1])
            + f" (mean over shuffles); 100%: {sm['mean_normalised'][-1]:.3f}; better than "
              f"uniform in {sm['shuffles_better_than_uniform'][1:-1]} of {S} shuffles")
    base_px = curves["uniform"][:, 0]
    full_px = curves["uniform"][:, -1]
    log(f"  base set only: {np.mean(base_px):.2f} px; base + whole pool: {np.mean(full_px):.2f} px")
    log(f"conclusion: {conclusion['statement']}")
    figs = figures(out, norm, added, curves, cfg, conclusion)
    numbers["seconds"] = time.perf_counter() - t0
    common.write_numbers(out, numbers)
    write_section(out, numbers, figs, curves, norm)
    log(f"{NAME}: done in {numbers['seconds']:.0f} s (scoring ensembles {t_score_fit:.0f} s, "
        f"{len(layout)} members {t_fit:.0f} s) -> {out}")
    common.finish(args, log)
    return numbers


def figures(out, norm, added, curves, cfg, conclusion):
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
    # the conclusion: each strategy's per-shuffle difference from uniform, with its interval
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    per = conclusion["strategies"]
    names = list(per)
    for i, st in enumerate(names):
        d = np.array([np.nan if v is None else v for v in per[st]["per_shuffle"]], float)
        ax.plot(d, np.full(d.size, i) + np.linspace(-0.12, 0.12, d.size), "o",
                color=COLORS[st], alpha=0.5, ms=4, label="one shuffle" if i == 0 else None)
        lo, hi = [np.nan if v is None else v for v in per[st]["interval"]]
        ax.plot([lo, hi], [i, i], "-", color=COLORS[st], lw=2.5)
        ax.plot(per[st]["vs_uniform"], i, "D", color="k", ms=6,
                label="mean over shuffles" if i == 0 else None)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([LABELS[st] for st in names])
    ax.set_xlabel("normalised error minus uniform's (mean over partial budgets; < 0: better)")
    ax.set_title(f"Strategies against uniform: {conclusion['level']:.1%} intervals over shuffles",
                 fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)
    fig.tight_layout()
    eio.save_figure(out / "al_vs_uniform.png", fig, dpi=110)
    plt.close(fig)
    return [("al_vs_uniform.png", "Each strategy's difference from uniform sampling in "
             "normalised error (mean over the partial budgets and the members of a cell): "
             "dots one shuffle, diamond the mean, bar the interval of the conclusion "
             "(t over shuffles, Bonferroni over the strategies). A bar that crosses 0 is "
             "not resolved."),
            ("al_curves.png", "Normalised test error (1 = base set only) against the number "
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
    budgets = nb["budgets"]
    base_px = np.array(nb["test_error_px"]["uniform"])[:, 0]
    full_px = np.array(nb["test_error_px"]["uniform"])[:, -1]
    added = np.array(nb["labels_added"])
    pool_n = int(np.mean(added[:, -1]))
    pct = ", ".join(f"{b:.0%}" for b in budgets[1:-1])
    paras = [f"{nb['description']}. Base set {c['base']} frames, pool {pool_n} frames, "
             f"test {c['test']} frames, {S} shuffles, {c['members_per_cell']} members per "
             f"(shuffle, strategy, budget) paired by initial weights; {nb['members']} members "
             f"trained ({nb['train']['steps']} steps each) in one ensemble fit. Scores come "
             f"from {c['base_members']} bootstrap members per shuffle; encoder features are "
             f"centred per member and channel, representativeness is averaged over members "
             f"and k-means runs on the members' unit features side by side (never on "
             f"features averaged across members).",
             f"The base set alone gives {np.mean(base_px):.2f} px test error (shuffles "
             f"{', '.join(f'{v:.2f}' for v in base_px)}); labelling the whole pool gives "
             f"{np.mean(full_px):.2f} px (normalised {sm['uniform']['mean_normalised'][-1]:.3f})."]
    ranked = sorted(STRATEGIES, key=lambda st: sm[st]["mean_over_partial_budgets"])
    paras.append(f"Mean normalised error over the {pct} budgets and shuffles, best first: "
                 + "; ".join(f"{st} {sm[st]['mean_over_partial_budgets']:.3f}" for st in ranked)
                 + ". Shuffles (of " + str(S) + ") in which each strategy beat uniform at "
                 + pct + ": " + "; ".join(
                     f"{st} {sm[st]['shuffles_better_than_uniform'][1:-1]}"
                     for st in STRATEGIES if st != "uniform") + ".")
    u = sm["uniform"]["mean_normalised"]
    paras.append(f"With uniform sampling the first {budgets[1]:.0%} of the pool "
                 f"({int(np.mean(added[:, 1]))} frames) takes the normalised error from 1 to "
                 f"{u[1]:.3f}; the rest of the pool moves it by {u[-1] - u[1]:+.3f} (to "
                 f"{u[-1]:.3f}).")
    paras.append(f"Interval: {nb['conclusion']['method']}.")
    paras.append(f"Units: {nb['units']}. Wall time {nb['seconds']:.0f} s.")
    table = {"caption": "Mean normalised test error over shuffles (1 = base set only)",
             "columns": ["strategy"] + [f"{b:.0%}" for b in budgets],
             "rows": [[st] + [float(v) for v in sm[st]["mean_normalised"]] for st in STRATEGIES]}
    per = nb["conclusion"]["strategies"]
    t2 = {"caption": "Difference from uniform (normalised error, mean over partial budgets)",
          "columns": ["strategy", "mean", "interval low", "interval high", "resolved"],
          "rows": [[st] + [float("nan") if v is None else float(v) for v in
                           (per[st]["vs_uniform"], *per[st]["interval"])]
                   + ["yes" if per[st]["resolved"] else "no"]
                   for st in per]}
    ws(out, title="Study 5: active learning", paragraphs=paras, figures=figs,
       tables=[table, t2], order=50, conclusion=nb["conclusion"])


if __name__ == "__main__":
    main()
