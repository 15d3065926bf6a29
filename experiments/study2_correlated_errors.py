"""Study 2: are the members' errors correlated?

For every member of the nested sweep (shared with studies 1 and 3): its error vector over
the test frames (per frame, mean over the labeled keypoints of the Euclidean distance to
the label, original-image px). Then, across members:
  * PCA of the [members x test frames] error matrix (each member one sample, frames
    centred over members): variance explained per component (the original study saw about
    80% in the first two);
  * the member-by-member Pearson correlation of the error vectors, split into pairs that
    share a seed (nested subsets) or a fraction and pairs that share neither;
  * error traces over the test frames for the members of each fraction;
  * PCA within each fraction, and pooled within fractions (each member minus its fraction's
    mean), with the correlation of across-all PC1 scores with the fraction
    (`pc1_vs_fraction_corr`): how much of the across-all structure is subset size.
The sweep is study 1's paired one (common random numbers, one block per seed), so pairs
that share a seed also share initial weights and minibatch draws.

    python experiments/study2_correlated_errors.py [--out runs/studies] [--data PATH] [--quick]

Writes OUT/study2_correlated_errors/: numbers.json, frame_errors.csv, correlation.csv,
pca.csv, pca.png, correlation.png, traces.png, section.json; OUT/report.html.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "study2_correlated_errors"


def pca_explained(x):
    """x [samples, features] (no NaN) -> (explained variance ratio [r], scores [samples, r],
    components [r, features]) of the column-centred matrix."""
    import numpy as np
    xc = x - x.mean(0, keepdims=True)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    flip = np.where(vt.sum(1) < 0, -1.0, 1.0)      # sign: a positive score = more error
    u, vt = u * flip[None], vt * flip[:, None]
    var = s ** 2
    total = var.sum()
    r = int((s > 1e-9 * max(s.max(initial=0), 1e-30)).sum())
    ratio = var[:r] / total if total > 0 else np.zeros(r)
    return ratio, u[:, :r] * s[:r], vt[:r]


def pca_within_fractions(E, fr):
    """PCA of the members of each fraction alone, and pooled: every member's error vector
    minus its fraction's mean vector (the subset-size effect removed), PCA across all.
    Returns ({fraction: record}, pooled record). A fraction with m members has at most
    m - 1 components: with 3 members the first two always explain 100%."""
    import numpy as np
    within = {}
    for f in sorted(set(np.round(fr, 6).tolist())):
        sel = np.isclose(fr, f)
        m = int(sel.sum())
        rec = {"members": m, "max_components": max(m - 1, 0)}
        if m >= 2:
            r, _, _ = pca_explained(E[sel])
            rec.update(explained=r, first=float(r[0]) if r.size else float("nan"),
                       first_two=float(r[:2].sum()) if r.size else float("nan"),
                       first_two_trivial=bool(m <= 3))
        within[f"{f:g}"] = rec
    centred = E.copy()
    for f in set(np.round(fr, 6).tolist()):
        sel = np.isclose(fr, f)
        centred[sel] -= E[sel].mean(0, keepdims=True)
    n_f = len(set(np.round(fr, 6).tolist()))
    r, _, _ = pca_explained(centred)
    pooled = {"members": int(E.shape[0]), "fractions": n_f,
              "max_components": int(E.shape[0] - n_f), "explained": r,
              "first": float(r[0]) if r.size else float("nan"),
              "first_two": float(r[:2].sum()) if r.size else float("nan"),
              "definition": "each member's per-frame errors minus its fraction's mean, "
                            "then PCA across all members"}
    return within, pooled


def conclusion(cum, pooled: dict, pc1_fraction_corr: float, pc1_fraction_p: float,
               mean_corr: float, alpha: float = 0.05) -> dict:
    """Study 2's stated conclusion as data: how much of the members' per-frame errors two
    components share across all members and with each fraction's mean removed, and whether
    subset size is resolved as a driver of PC1 (Pearson test at `alpha`)."""
    import numpy as np
    first_two = float(cum[1]) if len(cum) > 1 else float("nan")
    pooled_two = float(pooled.get("first_two", float("nan")))
    resolved = bool(np.isfinite(pc1_fraction_p) and pc1_fraction_p < alpha)
    drives = "resolved" if resolved else "not resolved"
    statement = (
        f"The first two components explain {first_two:.0%} of the members' per-frame test "
        f"errors across all members and {pooled_two:.0%} with each fraction's mean removed "
        f"(mean pairwise correlation {mean_corr:.2f}): members' errors are "
        f"{'strongly ' if pooled_two >= 0.8 else ''}correlated. An association of PC1 with "
        f"subset fraction is {drives} (r = {pc1_fraction_corr:+.2f}, p = {pc1_fraction_p:.2g}).")
    return {"statement": statement, "pca_first_two": first_two,
            "pooled_within_fraction_first_two": pooled_two,
            "mean_pairwise_correlation": float(mean_corr),
            "pc1_vs_fraction_corr": float(pc1_fraction_corr),
            "pc1_vs_fraction_p": float(pc1_fraction_p),
            "subset_size_drives_pc1": {"resolved": resolved, "alpha": alpha}}


def main(argv=None) -> dict:
    args = common.parse_args(__doc__.split("\n")[0], argv)
    common.setup()
    import matplotlib.pyplot as plt
    import numpy as np

    from ensemble_jax import io as eio
    from ensemble_jax.analysis.report import write_section

    t0 = time.perf_counter()
    run = common.load_run(common.ensure_sweep(args, **common.PAIRED_NESTED))
    out = common.study_dir(args, NAME)
    pred = run.predictions
    labels = pred["test_labels"]
    live = np.flatnonzero(run.alive)
    # members ordered by fraction, then seed
    live = live[np.lexsort((run.member_seed[live], run.member_fraction[live]))]
    err = common.frame_errors(pred["test_keypoints"][live], labels)        # [M, T]
    ok = np.isfinite(err).all(0)                                            # frames all scored
    E = err[:, ok]
    test_ids = [str(i) for i in pred["test_frame_ids"]]
    ids_ok = [i for i, k in zip(test_ids, ok) if k]
    fr, sd = run.member_fraction[live], run.member_seed[live]
    names = [f"{f:.0%} s{s}" for f, s in zip(fr, sd)]
    M, T = E.shape

    # ----- PCA across members
    ratio, scores, comps = pca_explained(E)
    cum = np.cumsum(ratio)
    n_for_80 = int(np.searchsorted(cum, 0.8) + 1) if cum.size else 0
    # keypoint-level vectors [M, T*K] as a check
    ekp = np.linalg.norm(pred["test_keypoints"][live] - labels[None], axis=-1)  # [M, T, K]
    okk = np.isfinite(ekp).all(0).ravel()
    ratio_kp, _, _ = pca_explained(ekp.reshape(M, -1)[:, okk])
    # how much of the variance is shared frame difficulty: the uncentred first component
    u_s = np.linalg.svd(E, compute_uv=False)
    uncentred_first = float(u_s[0] ** 2 / (u_s ** 2).sum()) if u_s.size else float("nan")
    pc1_fraction_corr = (float(np.corrcoef(scores[:, 0], fr)[0, 1])
                         if scores.shape[1] and np.std(fr) > 0 else float("nan"))
    pc1_mean_err_corr = (float(np.corrcoef(scores[:, 0], E.mean(1))[0, 1])
                         if scores.shape[1] else float("nan"))
    top_load = np.argsort(-np.abs(comps[0]))[:5] if comps.shape[0] else np.array([], int)
    within, pooled = pca_within_fractions(E, fr)
    min_m = min(w["members"] for w in within.values())
    from scipy import stats
    pc1_fraction_p = (float(stats.pearsonr(scores[:, 0], fr)[1])
                      if scores.shape[1] and np.std(fr) > 0 and M > 2 else float("nan"))

    # ----- correlation
    C = np.corrcoef(E)
    iu = np.triu_indices(M, 1)
    same_seed = (sd[:, None] == sd[None, :])[iu]
    same_frac = np.isclose(fr[:, None], fr[None, :])[iu]
    cvals = C[iu]
    def mean_or_nan(sel):
        return float(np.mean(cvals[sel])) if sel.any() else float("nan")
    corr = {"mean_all_pairs": mean_or_nan(np.ones_like(cvals, bool)),
            "min": float(cvals.min()) if cvals.size else float("nan"),
            "max": float(cvals.max()) if cvals.size else float("nan"),
            "mean_same_seed": mean_or_nan(same_seed & ~same_frac),
            "mean_same_fraction": mean_or_nan(same_frac & ~same_seed),
            "mean_neither": mean_or_nan(~same_seed & ~same_frac),
            "n_pairs": int(cvals.size)}
    # each member against the mean of the others (shared difficulty)
    loo = np.array([np.corrcoef(E[m], np.delete(E, m, 0).mean(0))[0, 1] for m in range(M)])

    # ----- files
    common.write_csv(out / "frame_errors.csv", ["test_frame"] + names,
                     [[test_ids[t]] + [float(v) for v in err[:, t]] for t in range(err.shape[1])])
    common.write_csv(out / "correlation.csv", ["member"] + names,
                     [[names[i]] + [float(v) for v in C[i]] for i in range(M)])
    common.write_csv(out / "pca.csv", ["component", "explained_variance_ratio", "cumulative",
                                       "explained_keypoint_level"],
                     [[i + 1, float(ratio[i]), float(cum[i]),
                       float(ratio_kp[i]) if i < ratio_kp.size else float("nan")]
                      for i in range(ratio.size)])

    # ----- figures
    seeds = sorted(set(sd.tolist()))
    fracs = sorted(set(fr.tolist()))
    s_col = {s: c for s, c in zip(seeds, plt.cm.tab10(np.arange(len(seeds)) % 10))}
    f_col = {f: c for f, c in zip(fracs, plt.cm.viridis(np.linspace(0.05, 0.9, len(fracs))))}
    markers = "osD^vP*X"

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    k = np.arange(1, ratio.size + 1)
    a1.bar(k, ratio * 100, color="tab:blue", alpha=0.7, label="per component")
    a1.plot(k, cum * 100, "k-o", ms=4, label="cumulative")
    if ratio_kp.size:
        kk = np.arange(1, ratio_kp.size + 1)
        a1.plot(kk, np.cumsum(ratio_kp) * 100, "--", color="tab:orange", ms=3,
                label="cumulative, keypoint-level errors")
    if np.size(pooled["explained"]):
        kp_ = np.arange(1, np.size(pooled["explained"]) + 1)
        a1.plot(kp_, np.cumsum(pooled["explained"]) * 100, "-s", color="tab:green", ms=3,
                label="cumulative, within fractions (fraction means removed)")
    a1.axhline(80, color="grey", ls=":", lw=1, label="80%")
    a1.set_xlabel("principal component (across members)")
    a1.set_ylabel("variance of test-frame errors explained (%)")
    a1.set_title(f"PCA of {M} members' error vectors over {T} test frames")
    a1.set_ylim(0, 105)
    a1.set_xticks(k if k.size <= 20 else k[::2])
    a1.legend(fontsize=8, loc="center right")
    a1.grid(alpha=0.3)
    if scores.shape[1] >= 2:
        for i in range(M):
            a2.scatter(scores[i, 0], scores[i, 1], color=f_col[fr[i]], s=70,
                       marker=markers[seeds.index(sd[i]) % len(markers)], edgecolor="k")
        for f in fracs:
            a2.scatter([], [], color=f_col[f], s=60, edgecolor="k", label=f"{f:.0%} of frames")
        for j, s in enumerate(seeds):
            a2.scatter([], [], color="white", edgecolor="k", s=60,
                       marker=markers[j % len(markers)], label=f"seed {s}")
        a2.set_xlabel(f"PC1 score (px; {ratio[0]:.0%} of variance)")
        a2.set_ylabel(f"PC2 score (px; {ratio[1]:.0%} of variance)")
        a2.legend(fontsize=8, loc="best", ncol=2)
        a2.grid(alpha=0.3)
        a2.set_title("Members in the first two components")
    else:
        a2.axis("off")
    eio.save_figure(out / "pca.png", fig, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * M + 3), max(5.5, 0.42 * M + 2)),
                           layout="constrained")
    im = ax.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks(range(M), names, rotation=90, fontsize=8)
    ax.set_yticks(range(M), names, fontsize=8)
    for i in range(M):
        for j in range(M):
            if M <= 20:
                ax.text(j, i, f"{C[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(C[i, j]) > 0.6 else "black")
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label("Pearson correlation of per-frame test errors")
    ax.set_title(f"Member-by-member error correlation ({T} test frames)\n"
                 f"members labelled by subset fraction and seed (s); mean off-diagonal "
                 f"{corr['mean_all_pairs']:.2f}", fontsize=10)
    eio.save_figure(out / "correlation.png", fig, dpi=120)
    plt.close(fig)

    order = np.argsort(-E.mean(0), kind="stable")           # hardest test frames first
    nf = len(fracs)
    fig, axes = plt.subplots(nf, 1, figsize=(11, 1.9 * nf + 1.2), sharex=True, sharey=True,
                             layout="constrained", squeeze=False)
    ymax = float(np.percentile(E, 99.5)) * 1.1 if E.size else 1.0
    for ax, f in zip(axes[:, 0], fracs):
        for i in np.flatnonzero(np.isclose(fr, f)):
            ax.plot(np.arange(T), E[i, order], "-", lw=1.1, color=s_col[sd[i]], alpha=0.85,
                    label=f"seed {sd[i]}")
        ax.plot(np.arange(T), E.mean(0)[order], "k--", lw=1, label="mean of all members")
        ax.set_ylabel("error (px)")
        ax.set_title(f"members trained on {f:.0%} of the training frames", fontsize=9,
                     loc="left")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, ymax)
    axes[0, 0].legend(fontsize=8, ncol=len(seeds) + 1, loc="upper right")
    axes[-1, 0].set_xlabel("test frame, sorted by the mean error over all members "
                           "(hardest first)")
    fig.suptitle("Per-frame test error of every member (mean over keypoints, px; y clipped "
                 "at the 99.5th percentile)", fontsize=10)
    eio.save_figure(out / "traces.png", fig, dpi=120)
    plt.close(fig)

    # ----- text
    paras = []
    if ratio.size >= 2:
        paras.append(
            f"PCA of the {M} members' error vectors over {T} test frames: the first "
            f"component explains {ratio[0]:.0%} of the variance across members and the first "
            f"two {cum[1]:.0%} ({'more' if cum[1] > 0.8 else 'less'} than the ~80% of the "
            f"original study); {n_for_80} of {ratio.size} components reach 80%. On "
            f"keypoint-level error vectors the first two explain "
            f"{np.sum(ratio_kp[:2]):.0%}.")
    elif ratio.size == 1:
        paras.append(f"With {M} members only one principal component exists.")
    paras.append(
        f"Members' errors are {'positively' if corr['mean_all_pairs'] > 0 else 'not positively'}"
        f" correlated: the mean pairwise Pearson correlation is {corr['mean_all_pairs']:.2f} "
        f"(range {corr['min']:.2f} to {corr['max']:.2f}, {corr['n_pairs']} pairs); pairs that "
        f"share a seed (nested subsets) average {corr['mean_same_seed']:.2f}, pairs that share "
        f"a fraction {corr['mean_same_fraction']:.2f}, pairs that share neither "
        f"{corr['mean_neither']:.2f}. Each member's errors correlate with the mean of the "
        f"others at {np.mean(loo):.2f} on average (min {np.min(loo):.2f})"
        + (": largely the same test frames are hard for every member." if np.mean(loo) >= 0.5
           else ": which test frames are hard differs much between members."))
    if scores.shape[1]:
        paras.append(
            f"PC1 scores correlate with the members' mean test error at "
            f"{pc1_mean_err_corr:+.2f} and with their subset fraction at "
            f"{pc1_fraction_corr:+.2f}; the test frames with the largest PC1 loadings are "
            + ", ".join(f"{common.short_id(ids_ok[t])} (mean error {E[:, t].mean():.1f} px)"
                        for t in top_load) + ".")
    if scores.shape[1]:
        paras.append(
            f"Subset size and PC1: across all members PC1 correlates with the fraction at "
            f"{pc1_fraction_corr:+.2f} (pc1_vs_fraction_corr; p = {pc1_fraction_p:.2g} over "
            f"{M} members, Pearson t test): "
            + ("subset size drives much of PC1, so the across-all shares mix the subset-size "
               "effect into the correlation structure" if abs(pc1_fraction_corr) >= 0.5 and
               pc1_fraction_p < 0.05 else "no strong association of PC1 with subset size is "
               "resolved" if pc1_fraction_p >= 0.05 else "a moderate association")
            + f". With each fraction's mean removed (pooled within-fraction PCA, "
            f"{pooled['max_components']} components) the first component explains "
            f"{pooled['first']:.0%} and the first two {pooled['first_two']:.0%}. Within each "
            f"fraction alone: "
            + ", ".join(f"{float(f):.0%}: PC1 {w['first']:.0%}" for f, w in within.items()
                        if "first" in w)
            + (f" (with {min_m} members per fraction at most {min_m - 1} components exist, "
               "so the first two explain 100% by construction there; a within-fraction "
               "comparison with the ~80% of the original study needs more seeds per "
               "fraction)" if min_m <= 3 else "") + ".")
    paras.append(
        f"Without centring, a single component (the shared per-frame difficulty profile) "
        f"holds {uncentred_first:.0%} of the members' summed squared errors.")

    concl = conclusion(cum, pooled, pc1_fraction_corr, pc1_fraction_p, corr["mean_all_pairs"])
    numbers = {"run": str(run.path), "members": live, "member_names": names,
               "conclusion": concl,
               "n_test_frames_used": T, "n_test_frames": int(err.shape[1]),
               "units": "px (original image), per frame mean over labeled keypoints",
               "pca_explained_variance_ratio": ratio, "pca_cumulative": cum,
               "pca_first_two": float(cum[1]) if cum.size > 1 else float("nan"),
               "components_for_80pct": n_for_80,
               "pca_keypoint_level_explained": ratio_kp,
               "uncentred_first_component": uncentred_first,
               "pca_scores": scores, "pc1_vs_fraction_corr": pc1_fraction_corr,
               "pc1_vs_fraction_p": pc1_fraction_p,
               "pca_within_fraction": within, "pca_pooled_within_fraction": pooled,
               "pc1_vs_mean_error_corr": pc1_mean_err_corr,
               "pc1_top_loading_frames": [ids_ok[t] for t in top_load],
               "correlation": corr, "correlation_matrix": C,
               "corr_with_mean_of_others": loo, "member_errors": E,
               "wall_s": time.perf_counter() - t0}
    common.write_numbers(out, numbers)
    write_section(out, title="Study 2: correlated errors", paragraphs=paras, conclusion=concl,
                  figures=[
        ("pca.png", "Left: variance of the members' per-frame test errors explained by each "
                    "principal component across members (bars) and cumulatively (line; green: "
                    "with each fraction's mean removed). "
                    "Right: each member's scores on PC1 and PC2 (px), coloured by subset "
                    "fraction, shaped by seed."),
        ("correlation.png", "Pearson correlation between members' per-frame test-error "
                            "vectors, members ordered by fraction then seed."),
        ("traces.png", "Per-frame test error (px) of each member, one panel per subset "
                       "fraction, test frames sorted by the mean error over all members; "
                       "the dashed line is that mean.")],
        tables=[{"caption": "Variance explained by the first components (%)",
                 "columns": ["component", "explained (%)", "cumulative (%)"],
                 "rows": [[i + 1, 100 * float(ratio[i]), 100 * float(cum[i])]
                          for i in range(min(5, ratio.size))]}],
        order=20)
    print("\n".join(paras), flush=True)
    common.finish(args)
    print(f"study 2 done in {time.perf_counter() - t0:.0f} s", flush=True)
    return numbers


if __name__ == "__main__":
    main()
