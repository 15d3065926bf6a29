"""Data attribution section of `analyze`: the estimator valid for the run's plan, p-values,
Benjamini-Hochberg findings, "not resolved" with the members that would resolve it, and
the linear datamodeling score (LDS) on held-out validation members.

Which estimator is valid for which plan (`VALID`; `analyze --estimator` refuses the rest):

  nested     stratified difference of means (within each subset fraction; the plain
             difference of means mixes in the subset-size effect), ridge and LASSO
             datamodels with one intercept per fraction
  random     difference of means (Feldman & Zhang), ridge, LASSO
  banzhaf    Banzhaf values by maximum sample reuse (= difference of means on the banzhaf
             plan), ridge, LASSO
  bootstrap  difference of means (drawn / not drawn), Data-OOB (own-label values of the
             members that did not draw a frame), ridge, LASSO
  loo        difference of means (one member without each frame: leave-one-out)
  kfold      none per frame (a frame is always left out with its whole fold)

The first of each list is the default. Effects are per (training frame i, test frame t) on
three per-member metrics (pixel_error, gt_confidence, gt_probability), and per frame on the
member's mean test metric ("frame effect"). p-values: Student t with Welch-Satterthwaite
degrees of freedom (`kernels.attribution`), or a permutation null within strata where a
frame has fewer than `SMALL_GROUP` members on a side or fewer than `MIN_DF` degrees of
freedom. q-values are Benjamini-Hochberg within each family (all (train, test) pairs; all
frames' effects on the mean test error). Findings (`findings`) are what passes
q < `Q_LEVEL` / 2 in either family: Bonferroni over the two families, so that under the
global null P(any finding) <= `Q_LEVEL` (BH within a family bounds it by its level);
nothing else is called a finding.

Validation members (`sweep --validation-members V`: layout["member_role"] == "validation")
are excluded from every estimator; each estimator's LDS is scored on them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ensemble_jax import kernels
from ensemble_jax import logs

METRICS = ("pixel_error", "gt_confidence", "gt_probability")
UNITS = {"pixel_error": "px", "gt_confidence": "probability", "gt_probability": "probability"}
Q_LEVEL = 0.05
N_FAMILIES = 2                # pairs and frames: each family's BH runs at Q_LEVEL / 2
SMALL_GROUP = 5
MIN_DF = 4.0
EFFECT_SIZE = 0.05            # stated effect for "members needed": 5% of the mean metric
N_BOOT = 200
SEED = 0

VALID = {
    "nested": ("stratified", "ridge", "lasso"),
    "random": ("difference_of_means", "ridge", "lasso"),
    "banzhaf": ("banzhaf", "ridge", "lasso"),
    "bootstrap": ("difference_of_means", "data_oob", "ridge", "lasso"),
    "loo": ("difference_of_means",),
    "kfold": (),
}
ESTIMATORS = ("stratified", "difference_of_means", "banzhaf", "data_oob", "ridge", "lasso")
WHY_NOT = {
    ("nested", "difference_of_means"):
        "on a nested plan the members that hold a frame are mostly large-subset members, "
        "which err less on every test frame, so the plain difference of means reports the "
        "subset-size effect as a frame effect; use 'stratified'",
    ("nested", "banzhaf"): "Banzhaf values need the banzhaf plan (each frame in with "
                           "probability 1/2); use 'stratified'",
}


class PlanError(ValueError):
    """An estimator asked for a plan it is not valid on; the message says why."""


def plan_of(config: dict) -> str:
    return str(config.get("sweep", {}).get("plan", "random"))


def check_estimator(plan: str, estimator: str | None) -> str:
    """The estimator to use: the plan's default for None/'auto', else `estimator` if
    valid for the plan; PlanError (naming the plan and why) otherwise."""
    valid = VALID.get(plan)
    if valid is None:
        raise PlanError(f"plan {plan!r}: unknown; no attribution estimator is known valid")
    if estimator in (None, "auto"):
        if not valid:
            return "none"
        return valid[0]
    if estimator not in ESTIMATORS:
        raise PlanError(f"--estimator {estimator!r}: unknown; choose one of "
                        f"{', '.join(ESTIMATORS)} (or auto)")
    if estimator not in valid:
        why = WHY_NOT.get((plan, estimator), "")
        raise PlanError(f"--estimator {estimator} is not valid for plan {plan!r}"
                        + (f": {why}" if why else "")
                        + (f"; valid here: {', '.join(valid)}" if valid else
                           "; no per-frame estimator is valid for this plan (a frame is "
                           "always left out with its whole fold); sweep with --plan random, "
                           "banzhaf, bootstrap or nested"))
    return estimator


# ------------------------------------------------------------------ validation members
def add_validation_members(masks: np.ndarray, layout: dict, cfg) -> tuple[np.ndarray, dict]:
    """Appends `cfg.validation_members` members on fresh subsets of the same plan; marks
    every member's role in layout["member_role"] ("estimation" / "validation")."""
    from ensemble_jax import subsets as plans
    V = int(cfg.validation_members)
    vm, vf = plans.validation_subsets(cfg.plan, masks.shape[1], V, cfg.seed,
                                      fractions=cfg.fractions, fraction=cfg.fraction)
    M = masks.shape[0]
    out = np.concatenate([masks.astype(np.int32), vm.astype(np.int32)])
    layout = dict(layout)
    # Integer seeds after the plan's own (nested: one per round of fractions), so the
    # learning curve draws them like the others; member_role says which are held out.
    first = max([int(x) for x in layout["member_seed"]], default=-1) + 1
    per = len(cfg.fractions) if cfg.plan == "nested" else 1
    layout["member_seed"] = list(layout["member_seed"]) + [first + v // per for v in range(V)]
    layout["member_fraction"] = list(layout["member_fraction"]) + np.round(vf, 6).tolist()
    layout["member_role"] = ["estimation"] * M + ["validation"] * V
    return out, layout


def member_roles(config: dict, n_members: int) -> np.ndarray:
    """bool `[M]`: True for validation members (held out from every estimator)."""
    roles = config.get("layout", {}).get("member_role")
    if roles is None:
        return np.zeros(n_members, bool)
    if len(roles) != n_members:
        raise ValueError(f"config.json: layout.member_role has {len(roles)} entries for "
                         f"{n_members} members")
    return np.asarray([r == "validation" for r in roles], bool)


def strata_of(config: dict, members: np.ndarray) -> tuple[np.ndarray, int, list[float]]:
    """(stratum of each member `[len(members)]`, number of strata, their fractions): one
    stratum per subset fraction on nested plans, a single stratum otherwise."""
    members = np.asarray(members, int)
    if plan_of(config) != "nested":
        return np.zeros(members.size, np.int32), 1, []
    fr = np.asarray(config.get("layout", {}).get("member_fraction"), np.float64)[members]
    levels = sorted(set(np.round(fr, 6).tolist()))
    return np.searchsorted(levels, np.round(fr, 6)).astype(np.int32), len(levels), levels


# ---------------------------------------------------------------------------- helpers
def _f(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _nanmean_rows(v: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(1), np.where(ok, v, 0).sum(1) / np.maximum(ok.sum(1), 1),
                        np.nan).astype(np.float32)


def findings(q_pairs: np.ndarray, q_frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the findings among pairs (q_pairs [n, T]) and frames (q_frames [n] or
    [n, 1]): BH q < Q_LEVEL / N_FAMILIES in each family (NaN never a finding)."""
    level = Q_LEVEL / N_FAMILIES
    return (np.flatnonzero(np.nan_to_num(np.ravel(q_pairs), nan=1.0) < level),
            np.flatnonzero(np.nan_to_num(np.ravel(q_frames), nan=1.0) < level))


def pvalues(masks, values, strata, n_strata, key) -> tuple[Any, np.ndarray, np.ndarray]:
    """(Stratified result, p `[n, T]`, bool `[n, T]` where the permutation null was used)."""
    r = kernels.stratified_influence(jnp.asarray(masks), jnp.asarray(values, jnp.float32),
                                     jnp.asarray(strata), n_strata=n_strata)
    p = np.asarray(kernels.t_pvalues(r.effect, r.stderr, r.df), np.float64)
    n_in, n_out = np.asarray(r.n_in), np.asarray(r.n_out)
    small = (np.minimum(n_in, n_out) < SMALL_GROUP)[:, None] | \
        ~(np.asarray(r.df) >= MIN_DF)
    small &= np.isfinite(np.asarray(r.effect))
    if small.any():
        M = masks.shape[0]
        n_perm = 999 if M <= 64 else 199
        pp = np.asarray(kernels.permutation_pvalues(
            jnp.asarray(masks), jnp.asarray(values, jnp.float32), key, jnp.asarray(strata),
            n_strata=n_strata, n_perm=n_perm), np.float64)
        p = np.where(small, pp, p)
    return r, p, small


def _pooled_sd(v: np.ndarray, strata: np.ndarray, n_strata: int) -> float:
    ss, df = 0.0, 0
    for s in range(n_strata):
        x = v[(strata == s) & np.isfinite(v)]
        if x.size > 1:
            ss += float(((x - x.mean()) ** 2).sum())
            df += x.size - 1
    return math.sqrt(ss / df) if df > 0 else float("nan")


def _inclusion_pq(masks: np.ndarray, strata: np.ndarray, n_strata: int) -> float:
    """Mean over frames and strata of f (1 - f), f = fraction of a stratum's members
    holding the frame: the p (1 - p) of Feldman & Zhang's variance bound."""
    vals = []
    for s in range(n_strata):
        g = strata == s
        if g.sum() > 1:
            f = (masks[g] > 0).mean(0)
            vals.append(float((f * (1 - f)).mean()))
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------- section
@logs.sink
def attribution_section(config: dict, masks: np.ndarray, members: np.ndarray,
                        v_te: dict, v_tr: dict, train_ids: list, test_ids: list, *,
                        estimator: str | None = None, noise: np.ndarray | None = None,
                        top: int = 10,
                        figure_path: Path | None = None) -> tuple[dict, dict]:
    """The influence part of `analyze`.

    Args:
      config: config.json (plan, layout); masks: int `[M, n]` of all members; members: alive
      member indices; v_te / v_tr: metric -> float `[len(members), T]` / `[len(members), n]`
      per-member values on test / training frames; noise: bool `[n]` planted label noise.

    Returns:
      (arrays for influence.npz, the "influence" dict of analysis.json).
    """
    plan = plan_of(config)
    est = check_estimator(plan, estimator)
    members = np.asarray(members, int)
    is_val = member_roles(config, masks.shape[0])[members]
    e_idx, v_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    est_members, val_members = members[e_idx], members[v_idx]
    if est_members.size < 2:
        raise ValueError(f"attribution: {est_members.size} alive estimation member(s); "
                         f"nothing to estimate from")
    X = masks[est_members] > 0
    strata, S, levels = strata_of(config, est_members)
    n, T = X.shape[1], next(iter(v_te.values())).shape[1]
    key = jax.random.key(SEED)
    arrays: dict[str, Any] = {
        "train_frame_ids": np.array(train_ids), "test_frame_ids": np.array(test_ids),
        "members": est_members.astype(np.int32), "validation_members":
        val_members.astype(np.int32), "metrics": np.array(METRICS), "strata": strata,
        "estimator": np.array(est), "plan": np.array(plan)}
    info: dict[str, Any] = {
        "plan": plan, "estimator": est, "valid_estimators": list(VALID.get(plan, ())),
        "n_members": int(est_members.size), "n_validation_members": int(val_members.size),
        "strata": ([{"fraction": f, "members": int((strata == s).sum())}
                    for s, f in enumerate(levels)] if S > 1 else None),
        "design": "crn" if (config.get("train") or {}).get("crn") else "independent",
        "q_level": Q_LEVEL, "finding_rule": f"BH q < {Q_LEVEL / N_FAMILIES:g} over pairs or "
        f"over frames (Bonferroni over the {N_FAMILIES} families: P(any finding | no effect) "
        f"<= {Q_LEVEL})", "metric": "pixel_error", "units": "px (original image)",
    }
    if est == "none":
        info["note"] = (f"plan {plan!r}: no per-frame estimator is valid (a frame is always "
                        f"left out with its whole fold); nothing estimated. Sweep with --plan "
                        f"random, banzhaf, bootstrap or nested.")
        logs.info(f"influence: {info['note']}")
        for name in METRICS:
            arrays[f"{name}_values"] = v_te[name][e_idx]
        return arrays, info
    effect_est = est if est in ("stratified", "difference_of_means", "banzhaf") else \
        VALID[plan][0]
    info["effect_estimator"] = effect_est
    info["definition"] = (
        "effect[i, t] = mean test value of frame t over members whose subset holds training "
        "frame i minus the mean over members without it"
        + (", within each subset fraction, combined with inverse-variance weights" if S > 1
           else "") + " (> 0 on pixel_error: frame i hurts frame t)")

    # ---------------- effects, p, q per metric (pairs) and per frame (mean test value)
    for j, name in enumerate(METRICS):
        ve, vt = v_te[name][e_idx], v_tr[name][e_idx]
        r, p, perm = pvalues(X, ve, strata, S, jax.random.fold_in(key, j))
        q = np.asarray(kernels.bh_qvalues(jnp.asarray(p)))
        mean_v = _nanmean_rows(ve)[:, None]
        rf, pf, permf = pvalues(X, mean_v, strata, S, jax.random.fold_in(key, 100 + j))
        qf = np.asarray(kernels.bh_qvalues(jnp.asarray(pf)))
        rs = kernels.stratified_influence(jnp.asarray(X), jnp.asarray(vt, jnp.float32),
                                          jnp.asarray(strata), n_strata=S)
        arrays.update({
            f"{name}_effect": np.asarray(r.effect), f"{name}_stderr": np.asarray(r.stderr),
            f"{name}_df": np.asarray(r.df), f"{name}_p": p.astype(np.float32),
            f"{name}_q": q.astype(np.float32), f"{name}_permutation": perm,
            f"{name}_values": ve,
            f"frame_{name}_effect": np.asarray(rf.effect)[:, 0],
            f"frame_{name}_stderr": np.asarray(rf.stderr)[:, 0],
            f"frame_{name}_p": pf[:, 0].astype(np.float32),
            f"frame_{name}_q": qf[:, 0].astype(np.float32),
            f"self_{name}_effect": np.diagonal(np.asarray(rs.effect)).copy(),
            f"self_{name}_stderr": np.diagonal(np.asarray(rs.stderr)).copy(),
            f"self_{name}_values": vt})
        arrays["n_in"], arrays["n_out"] = np.asarray(r.n_in), np.asarray(r.n_out)

    # ---------------- findings (pixel error), or "not resolved" + members needed
    eff, se = arrays["pixel_error_effect"], arrays["pixel_error_stderr"]
    q, qf = arrays["pixel_error_q"], arrays["frame_pixel_error_q"]
    fe, fse, fp = (arrays["frame_pixel_error_effect"], arrays["frame_pixel_error_stderr"],
                   arrays["frame_pixel_error_p"])

    def frame_rows(sel):
        order = sel[np.argsort(-np.abs(fe[sel]), kind="stable")]
        return [{"frame": train_ids[i], "index": int(i), "effect": _f(fe[i]),
                 "stderr": _f(fse[i]), "p": _f(fp[i]), "q": _f(qf[i])} for i in order[:top]]

    def pair_rows(sel_flat):
        order = sel_flat[np.argsort(-np.abs(eff.ravel()[sel_flat]), kind="stable")]
        out = []
        for idx in order[:top]:
            i, t = np.unravel_index(idx, eff.shape)
            out.append({"train_frame": train_ids[i], "test_frame": test_ids[t],
                        "train_index": int(i), "test_index": int(t), "effect": _f(eff[i, t]),
                        "stderr": _f(se[i, t]), "p": _f(arrays["pixel_error_p"][i, t]),
                        "q": _f(q[i, t])})
        return out
    hit_p, hit_f = findings(q, qf)
    info["harmful_frames"] = frame_rows(hit_f[fe[hit_f] > 0])
    info["helpful_frames"] = frame_rows(hit_f[fe[hit_f] < 0])
    info["n_frames_resolved"] = int(hit_f.size)
    info["n_pairs_resolved"] = int(hit_p.size)
    info["harmful_pairs"] = pair_rows(hit_p[eff.ravel()[hit_p] > 0])
    info["helpful_pairs"] = pair_rows(hit_p[eff.ravel()[hit_p] < 0])
    info["frame_effect"] = "effect on the member's mean test pixel error (px)"
    info["min_q_frames"] = _f(np.nanmin(qf)) if np.isfinite(qf).any() else None
    info["min_q_pairs"] = _f(np.nanmin(q)) if np.isfinite(q).any() else None
    info["permutation_null_pairs_fraction"] = _f(arrays["pixel_error_permutation"].mean())
    mean_err = _nanmean_rows(arrays["pixel_error_values"])
    sigma = _pooled_sd(mean_err, strata, S)
    pq = _inclusion_pq(X, strata, S)
    mu = float(np.nanmean(mean_err))
    delta = EFFECT_SIZE * mu
    need = {"sigma_member_mean_error_px": _f(sigma), "inclusion_p_times_1_minus_p": _f(pq),
            "effect_px": _f(delta), "effect": f"{EFFECT_SIZE:.0%} of the members' mean test "
            f"error ({mu:.3g} px)", "n_tests": int(n), "power": 0.8,
            "alpha": Q_LEVEL / N_FAMILIES,
            "bound": "Var(effect) = sigma^2 / (M p (1 - p)) (Feldman & Zhang 2020); "
                     "Bonferroni over frames"}
    if np.isfinite(sigma) and np.isfinite(pq) and 0 < pq < 0.25 + 1e-9 and delta > 0:
        p_eff = 0.5 - math.sqrt(max(0.25 - pq, 0.0))
        p_eff = min(max(p_eff, 1e-6), 1 - 1e-6)
        need["members_needed"] = kernels.members_needed(delta, sigma, n, p_eff,
                                                        alpha=Q_LEVEL / N_FAMILIES)
    info["members_needed"] = need
    if hit_f.size == 0 and hit_p.size == 0:
        info["resolved"] = False
        info["not_resolved"] = (
            f"no training frame's effect is resolved (BH q < {Q_LEVEL / N_FAMILIES:g} over "
            f"{n} frames and over {n * T} pairs) with {est_members.size} members"
            + (f"; an effect of {delta:.3g} px on the mean test error ({EFFECT_SIZE:.0%}) at "
               f"the measured member-to-member SD {sigma:.3g} px needs about "
               f"{need['members_needed']} members" if "members_needed" in need else ""))
    else:
        info["resolved"] = True
    # Ranked (not findings): the biggest |frame effect|, for a look, with p and q.
    info["largest_frame_effects_not_findings"] = frame_rows(
        np.flatnonzero(np.isfinite(fe)))[:top] if hit_f.size == 0 else []

    # ---------------- Data-OOB (bootstrap plans)
    if "data_oob" in VALID.get(plan, ()):
        oob = kernels.data_oob(jnp.asarray(masks[est_members]),
                               jnp.asarray(v_tr["pixel_error"][e_idx], jnp.float32))
        sc = np.asarray(oob.score)
        arrays.update(data_oob_pixel_error=sc, data_oob_stderr=np.asarray(oob.stderr),
                      data_oob_n=np.asarray(oob.n_oob))
        order = np.argsort(-np.nan_to_num(sc, nan=-np.inf), kind="stable")[:top]
        info["data_oob"] = {
            "definition": "mean pixel error on the frame's own label over members that did "
                          "not draw it (high = hard or mislabeled)",
            "top_frames": [{"frame": train_ids[i], "oob_error_px": _f(sc[i]),
                            "stderr": _f(np.asarray(oob.stderr)[i])} for i in order]}
        if noise is not None and noise.any() and (~noise).any():
            from ensemble_jax.analysis.aum import roc_auc
            ok = np.isfinite(sc)
            info["data_oob"]["roc_auc_vs_planted_noise"] = _f(roc_auc(sc[ok], noise[ok]))

    # ---------------- datamodels (ridge, LASSO), penalties by 5-fold CV over members
    dms = {}
    for kind in ("ridge", "lasso"):
        if kind not in VALID.get(plan, ()):
            continue
        y = v_te["pixel_error"][e_idx]
        if est_members.size >= 4:
            lam, grid, mse = kernels.datamodel_cv(X, y, kind=kind, strata=strata, n_strata=S,
                                                  seed=SEED)
            cv = {"lambda": lam, "grid": grid.tolist(), "cv_mse": mse.tolist(), "folds": 5}
        else:
            lam, cv = 1.0, {"lambda": 1.0, "note": "fewer than 4 members: not cross-validated"}
        w, b = kernels.fit_datamodel(jnp.asarray(X), jnp.asarray(y, jnp.float32), lam,
                                     kind=kind, strata=jnp.asarray(strata), n_strata=S)
        dms[kind] = (np.asarray(w), np.asarray(b))
        info[f"{kind}_datamodel"] = cv
    if "ridge" in dms:
        w, b = dms["ridge"]
        arrays.update(datamodel_weights=w, datamodel_bias=b[0] if S == 1 else b,
                      datamodel_l2=np.float32(info["ridge_datamodel"]["lambda"]))
    if "lasso" in dms:
        w, b = dms["lasso"]
        arrays.update(lasso_weights=w, lasso_bias=b[0] if S == 1 else b,
                      lasso_l1=np.float32(info["lasso_datamodel"]["lambda"]))

    # ---------------- LDS on the validation members
    info["lds"] = _lds(arrays, dms, masks, config, val_members, v_idx, v_te, effect_est,
                       plan, key, figure_path)
    return arrays, info


def _lds(arrays, dms, masks, config, val_members, v_idx, v_te, effect_est, plan, key,
         figure_path) -> dict:
    if val_members.size < 3:
        return {"note": "no validation members (sweep --validation-members V, V >= 3 per "
                        "subset fraction, to score the estimators' LDS)"}
    Xv = masks[val_members] > 0
    vstrata, vS, _ = strata_of(config, val_members)
    per_stratum = np.bincount(vstrata, minlength=vS)
    if per_stratum.max() < 3:
        return {"n_validation_members": int(val_members.size),
                "note": f"{val_members.size} held-out members, fewer than 3 in every subset "
                        f"fraction: LDS (a rank correlation within a fraction) is undefined; "
                        f"use --validation-members >= {3 * vS}"}
    out: dict[str, Any] = {"n_validation_members": int(val_members.size),
                           "definition": "per test frame, Spearman correlation across "
                           "validation members between predicted (sum of the estimator's "
                           "effects of the frames in the member's subset) and actual values, "
                           "within subset fraction, mean over test frames; 95% interval: "
                           "bootstrap over validation members", "by_metric": {}}
    best = None
    for j, name in enumerate(("pixel_error", "gt_probability")):
        actual = v_te[name][v_idx]
        preds = {effect_est: np.asarray(kernels.predict_from_effects(
            jnp.asarray(Xv), jnp.asarray(arrays[f"{name}_effect"])))}
        if name == "pixel_error":
            for kind, (w, b) in dms.items():
                preds[kind] = np.asarray(kernels.predict_from_effects(jnp.asarray(Xv),
                                                                      jnp.asarray(w)))
            if "data_oob_pixel_error" in arrays:
                sc = np.nan_to_num(arrays["data_oob_pixel_error"] -
                                   np.nanmean(arrays["data_oob_pixel_error"]))
                preds["data_oob"] = (Xv.astype(np.float32) @ sc)[:, None].repeat(
                    actual.shape[1], 1)
        rows = {}
        for k, pred in preds.items():
            per = np.asarray(kernels.lds_per_test(jnp.asarray(pred), jnp.asarray(actual),
                                                  jnp.asarray(vstrata), n_strata=vS))
            boot = np.asarray(kernels.lds_bootstrap(
                jnp.asarray(pred), jnp.asarray(actual), jax.random.fold_in(key, 500 + j),
                jnp.asarray(vstrata), n_strata=vS, n_boot=N_BOOT))
            boot = boot[np.isfinite(boot)]
            rows[k] = {"lds": _f(np.nanmean(per)) if np.isfinite(per).any() else None,
                       "ci95": ([_f(np.percentile(boot, 2.5)), _f(np.percentile(boot, 97.5))]
                                if boot.size else None)}
            arrays[f"lds_{k}_{name}"] = per
            if name == "pixel_error" and rows[k]["lds"] is not None and \
                    (best is None or rows[k]["lds"] > best[1]):
                best = (k, rows[k]["lds"], pred, actual)
        out["by_metric"][name] = rows
    if best is not None:
        out["best"] = {"estimator": best[0], "metric": "pixel_error", "lds": best[1]}
        if figure_path is not None:
            lds_figure(figure_path, best[2], best[3], vstrata, best[0], best[1])
            out["figure"] = Path(figure_path).name
    return out


def lds_figure(path, pred: np.ndarray, actual: np.ndarray, strata: np.ndarray,
               name: str, lds: float) -> None:
    """Predicted vs actual test pixel error of the validation members, each standardised
    within its test frame and subset fraction (what the Spearman LDS compares)."""
    from ensemble_jax.analysis import figures
    import matplotlib.pyplot as plt

    def z(x):
        x = np.asarray(x, np.float64).copy()
        for s in np.unique(strata):
            g = strata == s
            mu = np.nanmean(x[g], 0)
            sd = np.nanstd(x[g], 0)
            x[g] = (x[g] - mu) / np.where(sd > 0, sd, np.nan)
        return x
    a, b = z(pred).ravel(), z(actual).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    fig, ax = plt.subplots(figsize=(5.5, 5), layout="constrained")
    ax.scatter(a[ok], b[ok], s=6, alpha=0.35, color="C0", linewidths=0)
    ax.axline((0, 0), slope=1, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel(f"predicted by {name} (z within test frame and fraction)")
    ax.set_ylabel("actual test pixel error of held-out member (z)")
    ax.set_title(f"LDS of {name}: {lds:.3f} (Spearman, mean over test frames)", fontsize=10)
    figures._save(path, fig)


def describe(info: dict, n: int = 3) -> list[str]:
    """Lines for the CLI summary (what `analyze` prints about influence)."""
    est = info.get("estimator")
    lines = [f"influence of training frames: estimator {est} (valid for plan "
             f"{info.get('plan')!r}; {info.get('n_members')} members"
             + (f", {info['n_validation_members']} held out for LDS"
                if info.get("n_validation_members") else "")
             + (", common random numbers" if info.get("design") == "crn" else "") + ")"]
    if est == "none":
        lines.append("  " + info["note"])
        return lines
    if not info.get("resolved"):
        lines.append("  not resolved: " + info["not_resolved"])
    for key, word in (("harmful_frames", "harmful"), ("helpful_frames", "helpful")):
        rows = info.get(key) or []
        if rows:
            lines.append(f"  {word} training frames (q < {info['q_level'] / N_FAMILIES:g}): "
                         + ", ".join(
                f"{r['frame']} ({r['effect']:+.3f} px, q {r['q']:.2g})" for r in rows[:n]))
    if info.get("n_pairs_resolved"):
        lines.append(f"  resolved (training, test) pairs: {info['n_pairs_resolved']}")
    if "data_oob" in info:
        d = info["data_oob"]
        lines.append("  Data-OOB, highest out-of-bag error on own label: " + ", ".join(
            f"{r['frame']} ({r['oob_error_px']:.2f} px)" for r in d["top_frames"][:n]
            if r["oob_error_px"] is not None)
            + (f"; ROC-AUC vs planted noise {d['roc_auc_vs_planted_noise']:.3f}"
               if d.get("roc_auc_vs_planted_noise") is not None else ""))
    lds = info.get("lds", {})
    if "by_metric" in lds:
        for metric, rows in lds["by_metric"].items():
            lines.append(f"  LDS on {lds['n_validation_members']} held-out members "
                         f"({metric}): " + ", ".join(
                             f"{k} {r['lds']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
                             if r["lds"] is not None and r["ci95"] else f"{k} n/a"
                             for k, r in rows.items()))
    elif lds.get("note"):
        lines.append("  LDS: " + lds["note"])
    return lines
