"""`analyze(run_dir)`: turns a run directory into data-quality tables and figures.

Reads only the run directory (`config.json`, `subsets.npy`, `data.npz`, `params.msgpack`,
`training.npz`, `summary.json` when present) and writes into it:

  aum.csv          one row per labeled training (frame, keypoint): frame, keypoint, aum,
                   n_members (alive members that saw it), flagged (aum < cut),
                   n_members_flagged (alive members whose own cut flags it),
                   threshold_sample, planted_noise (only when the data has a noise mask)
  aum_members.npz  per member: aum [M, n, K], cut [M], flagged [M, n, K], alive [M]
  mpe.csv          one row per train and test frame: frame_id, split, one column per
                   keypoint (multi-peak entropy averaged over alive members), mpe_max,
                   mpe_mean, representativeness
  spread.csv       frame_id, split, one column per keypoint (ensemble spread of the alive
                   members' predictions, original-image pixels), spread_max, spread_mean
  influence.npz    influence of every training frame on every test frame for three
                   per-member metrics (pixel_error, gt_confidence, gt_probability), by the
                   estimator valid for the run's plan (analysis/attribution.py):
                   <metric>_effect / _stderr / _df / _p / _q [n, T], <metric>_values
                   [M_est, T]; frame_<metric>_effect / _stderr / _p / _q [n] (on the
                   member's mean test value); self_<metric>_effect / _stderr [n],
                   self_<metric>_values [M_est, n]; n_in, n_out [n]; datamodel_weights
                   [n, T], datamodel_bias ([T], or [fractions, T] on nested plans),
                   datamodel_l2 (ridge, penalty by cross-validation), lasso_*; lds_*;
                   train_frame_ids, test_frame_ids, members (alive estimation members),
                   validation_members (held out for the LDS)
  analysis.json    the AUM cut and rule, counts flagged, ROC-AUC of AUM against planted
                   noise (threshold samples excluded), top influence pairs and frames, top
                   MPE frames, settings
  influence_matrix.png, lds.png (with validation members), aum_histogram.png,
  top_mpe_frames.png, top_flagged_frames.png

Per-member metrics come from one forward pass of each alive member over every frame:
  pixel_error     mean over the frame's labeled keypoints of the Euclidean distance between
                  the decoded prediction and the label, original-image pixels (lower = better)
  gt_confidence   mean over keypoints of sigmoid(logit at the label pixel)   (`kernels`)
  gt_probability  mean over keypoints of the softmax over the whole map at the label pixel
  MPE             `multi_peak_entropy` (Liu & Ferrari 2017) of the logits: every local
                  maximum (3x3) of the map is a peak, p_j = softmax(v_j / MPE_TEMPERATURE)
                  over the peaks' logits, MPE = -sum p_j log p_j (nats); never exactly 0
                  unless a map has a single local maximum. analyze(mpe="sum") keeps the
                  older form: sigmoid(logits), peaks above 0.1, p_j = v_j / sum v.
                  Frames are ranked by MPE, ties broken by the lower mean peak value.
  features        global-average-pooled ReLU output of the deepest encoder convolution
                  (for `representativeness`: mean cosine similarity of a frame's centred
                  features to the test frames, excluding itself, averaged over members)
Diverged members (alive False in training.npz) are excluded from everything, with a
warning.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ensemble_jax import io as eio
from ensemble_jax import rundir
from ensemble_jax import kernels
from ensemble_jax.analysis import aum as aum_lib
from ensemble_jax.analysis import figures, metrics
from ensemble_jax.analysis import suspects as sus
from ensemble_jax.analysis import uncertainty as unc
from ensemble_jax.models.forward import members_over_frames
from ensemble_jax.training import health
from ensemble_jax.training.result import EnsembleResult
from ensemble_jax import logs

METRICS = ("pixel_error", "gt_confidence", "gt_probability")
METRIC_UNITS = {"pixel_error": "px (original image)", "gt_confidence": "probability",
                "gt_probability": "probability"}
MPE_WINDOW = 3
MPE_TEMPERATURE = 1.0     # logits; softmax over the peaks' logits as they are
# mode -> (on, threshold, normalize)
MPE_MODES = {"softmax": ("logits", -np.inf, "softmax"), "sum": ("sigmoid", 0.1, "sum")}
MPE_THRESHOLD = 0.1       # the "sum" form's peak threshold (sigmoid scale)
MPE_NORMALIZE = "softmax"
TOP = 10
FILES = ("aum.csv", "aum_members.npz", "mpe.csv", "spread.csv", "influence.npz",
         "suspects.csv", "suspects.png", "aum_by_kind.png", "uncertainty_vs_error.png",
         "influence_matrix.png", "lds.png", "aum_histogram.png", "top_mpe_frames.png",
         "top_flagged_frames.png")      # in analysis.json's order; figures when written


# ----------------------------------------------------------------- forward pass
def member_outputs(result: EnsembleResult, members, images: np.ndarray, labels: np.ndarray,
                   *, batch_size: int = 64, bar=None, mpe: str = MPE_NORMALIZE
                   ) -> dict[str, np.ndarray]:
    """Stacked `[len(members), F, ...]` per-frame outputs of each member on `images`
    (models/forward.py): keypoints, confidences, features, gt_confidence, gt_probability
    and MPE in mode `mpe`; heatmaps never leave the device."""
    return members_over_frames(result, members, images, labels, outputs=ANALYZE_OUTPUTS,
                               batch_size=batch_size, bar=bar, mpe=mpe_mode(mpe))


def mpe_mode(name: str = MPE_NORMALIZE) -> tuple:
    """models/forward.py's `mpe` argument for MPE mode `name` (MPE_MODES)."""
    return MPE_MODES[name] + (MPE_WINDOW, MPE_TEMPERATURE)


ANALYZE_OUTPUTS = ("keypoints", "confidences", "features", "gt_confidence", "gt_probability",
                   "mpe")


# ---------------------------------------------------------------------- helpers
def _frame_mean(x: np.ndarray, how: str = "mean") -> np.ndarray:
    """Mean (or with how="max" the max) over the last (keypoint) axis of the finite
    entries, float32; NaN where none is finite."""
    x = np.asarray(x, np.float64)
    ok = np.isfinite(x)
    out = (np.where(ok, x, -np.inf).max(-1) if how == "max"
           else np.where(ok, x, 0.0).sum(-1) / np.maximum(ok.sum(-1), 1))
    return np.where(ok.any(-1), out, np.nan).astype(np.float32)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if (isinstance(v, float) and np.isnan(v)) else
                    (f"{v:.6g}" if isinstance(v, float) else v) for v in r])
    eio.write_text(path, buf.getvalue())


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _top_frames(score, ids, n, largest: bool, extra: dict | None = None) -> list[dict]:
    score = np.asarray(score, np.float64)
    ok = np.flatnonzero(np.isfinite(score))
    order = ok[np.argsort(score[ok], kind="stable")]
    order = order[::-1] if largest else order
    out = []
    for i in order[:n]:
        row = {"frame": ids[i], "index": int(i), "score": _f(score[i])}
        for k, v in (extra or {}).items():
            row[k] = _f(v[i]) if np.issubdtype(np.asarray(v).dtype, np.floating) else v[i]
        out.append(row)
    return out


def _largest_tie_share(x: np.ndarray) -> float:
    """The share of the finite entries that the most common single value takes."""
    x = np.asarray(x)[np.isfinite(x)]
    if not x.size:
        return float("nan")
    return float(np.unique(x, return_counts=True)[1].max() / x.size)


# ---------------------------------------------------------------------- analyze
@logs.sink
def analyze(run_dir: str | Path, *, progress: bool = True,
            batch_size: int = 64, top: int = TOP,
            figures_enabled: bool = True, estimator: str | None = None,
            mpe: str = MPE_NORMALIZE) -> dict:
    """Analyses a run directory (see the module docstring); returns analysis.json's dict.

    Holds the run directory's lock (`runlock`) while it runs; every output is written
    atomically, so an analysis killed at any point can simply be run again."""
    from ensemble_jax import runlock
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"{run}: is a file, not a run directory")
    if rundir.failed_sweep(run):
        raise ValueError(rundir.failed_sweep(run))
    for name in ("config.json", "subsets.npy", "data.npz", "params.msgpack", "training.npz"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run}: not a complete run directory ({name} is missing)")
    if not (run / "summary.json").exists():
        raise FileNotFoundError(f"{run}: the sweep that writes this run directory has not "
                                f"finished (summary.json is missing); finish it with "
                                f"`ensemble-jax sweep --resume` first")
    rundir.read_manifest(run)        # not ours (no manifest): refused before any lock file
    with runlock.locked(run, "analyze"):
        # parameters, data and settings must be the ones this run's sweep wrote
        rundir.verify_files(run, rundir.ANALYZE_INPUTS)
        from ensemble_jax.analysis.attribution import check_estimator, plan_of
        try:   # refuse an estimator that is not valid for the plan before any work
            check_estimator(plan_of(rundir.load_json(run / "config.json")), estimator)
        except ValueError as e:
            raise ValueError(f"{run}: {e}") from None
        eio.remove_temporaries(run)
        if mpe not in MPE_MODES:
            raise ValueError(f"mpe={mpe!r}: choose one of {sorted(MPE_MODES)}")
        return _analyze_locked(run, progress=progress, batch_size=batch_size,
                               top=top, figures_enabled=figures_enabled, estimator=estimator,
                               mpe_mode=mpe)


def _analyze_locked(run: Path, *, progress: bool, batch_size: int, top: int,
                    figures_enabled: bool, estimator: str | None = None,
                    mpe_mode: str = MPE_NORMALIZE) -> dict:
    """The driver: each section returns its arrays and its analysis.json summary."""
    t0 = time.perf_counter()
    loaded = rundir.load(run)
    train, test, result = loaded.train, loaded.test, loaded.result
    alive, members = alive_members(run, result, train.n_frames)
    a_aum, aum_info = aum_section(run, train, result, loaded.threshold_mask,
                                  loaded.threshold_kind, alive, top)
    out_tr, out_te = forward_section(result, members, train, test, batch_size=batch_size,
                                     progress=progress, mpe_mode=mpe_mode)
    a_inf, influence_info = influence_section(run, loaded.config, result, members, train,
                                              test, out_tr, out_te, estimator=estimator,
                                              top=top, figures=figures_enabled)
    a_unc, infos = uncertainty_section(run, train, test, out_tr, out_te, top, mpe_mode,
                                       figures=figures_enabled)
    _, suspects_info = sus.section(
        run, train, np.asarray(result.masks)[members], out_tr["keypoints"],
        a_aum["rep"].aum, a_aum["kinds"], a_aum["rep"].cut, top, figures=figures_enabled)
    if figures_enabled:
        figures_section(run, train, test, members, a_aum, a_inf, a_unc, out_tr, out_te,
                        infos["mpe"])
    written = [p for p in FILES if figures_enabled or not p.endswith(".png")]
    written = [p for p in written if p.endswith((".csv", ".npz")) or (run / p).exists()]
    analysis = {
        "run_dir": str(run.resolve()), "members": result.n_members,
        "alive_members": members.tolist(),
        "diverged_members": np.flatnonzero(~alive).tolist(),
        "failed_members": [{"member": int(m), "reason": health.reason(result, int(m))}
                           for m in np.flatnonzero(~alive)],
        "n_train": train.n_frames, "n_test": test.n_frames, "bodyparts": list(train.bodyparts),
        "aum": aum_info, "influence": influence_info,
        **{key: infos[key] for key in ("mpe", "spread", "representativeness")},
        "suspects": suspects_info, "uncertainty_vs_error": infos["uncertainty_vs_error"],
        "files": written + ["analysis.json"], "wall_s": time.perf_counter() - t0,
    }
    eio.write_json(run / "analysis.json", analysis)
    return analysis


def alive_members(run: Path, result: EnsembleResult, n: int) -> tuple:
    """(alive [M] bool, indices of the alive members); warns about each excluded one."""
    masks = np.asarray(result.masks)
    if masks.shape[1] != n:
        raise ValueError(f"{run}: subsets.npy has {masks.shape[1]} frames, data.npz {n}")
    alive = np.asarray(result.alive, bool)
    for m in np.flatnonzero(~alive):
        logs.warning(f"warning: member {m} {health.reason(result, m)}; it is excluded from "
                     "AUM, influence, MPE, spread and suspects")
    members = np.flatnonzero(alive)
    if not members.size:
        raise ValueError(f"{run}: every member failed ({health.describe_failed(result)}); "
                         f"nothing to analyse")
    return alive, members


# ---------------------------------------------------------------------- sections
def aum_section(run: Path, train, result: EnsembleResult, thr, thr_kind, alive, top: int
                ) -> tuple[dict, dict]:
    """AUM per label and per member; writes aum.csv and aum_members.npz. thr / thr_kind:
    the threshold samples [n, K] and their kinds (threshold.KINDS), or None."""
    from ensemble_jax.analysis.threshold import KINDS
    n, k, noise = train.n_frames, train.n_keypoints, train.noise_mask
    rep = aum_lib.aum_report(result.aum_sum, result.aum_count, alive, thr)
    labeled = train.labeled
    thr_mask = np.zeros((n, k), bool) if thr is None else thr
    # Frame-level report (analysis/suspects.py). With realistic threshold samples (kinds
    # recorded) its cut is the run's cut, so aum.csv's flags are the suspects' labels.
    kinds = thr_kind if thr_kind is not None else np.where(thr_mask, 4, 0).astype(np.int8)
    if thr_kind is not None:
        frames = sus.frame_report(rep.aum, kinds, noise)
        rep.cut, rep.rule = frames["cut"].cut, frames["cut"].rule
        with np.errstate(invalid="ignore"):
            rep.flagged = np.isfinite(rep.aum) & (rep.aum < rep.cut)
    rows = []
    for i, j in np.argwhere(labeled):
        row = [train.frame_ids[i], train.bodyparts[j], float(rep.aum[i, j]),
               int(rep.n_members[i, j]), int(rep.flagged[i, j]),
               int(rep.n_members_flagged[i, j]), int(thr_mask[i, j])]
        if thr_kind is not None:
            row.append(KINDS.get(int(thr_kind[i, j]), ""))
        if noise is not None:
            row.append(int(noise[i, j]))
        rows.append(row)
    header = ["frame", "keypoint", "aum", "n_members", "flagged", "n_members_flagged",
              "threshold_sample"] + (["threshold_kind"] if thr_kind is not None else []) \
        + (["planted_noise"] if noise is not None else [])
    _write_csv(run / "aum.csv", header, rows)
    eio.save_npz(run / "aum_members.npz", aum=rep.member_aum, cut=rep.member_cut,
                 flagged=rep.member_flagged, alive=alive)
    real = labeled & ~thr_mask                               # labels that are not probes
    aum_info: dict[str, Any] = {
        "cut": rep.cut, "rule": rep.rule, "percentile": aum_lib.PERCENTILE,
        "units": "logits (heatmap margin: label pixel minus best pixel farther than "
                 f"{result.train_config.aum_radius:g} heatmap px)",
        "n_labels": int(real.sum()), "n_threshold_samples": int(thr_mask.sum()),
        "n_labels_without_aum": int((real & ~np.isfinite(rep.aum)).sum()),
        "n_flagged": int((rep.flagged & real).sum()),
        "n_threshold_samples_flagged": int((rep.flagged & thr_mask).sum()),
    }
    if noise is not None:
        scored = real & np.isfinite(rep.aum)
        planted = noise & real
        aum_info["n_planted_noise"] = int(planted.sum())
        aum_info["roc_auc_vs_planted_noise"] = _f(aum_lib.roc_auc(-rep.aum[scored],
                                                                   planted[scored]))
        tp = int((rep.flagged & planted).sum())
        aum_info["flagged_planted_noise"] = tp
        aum_info["precision"] = _f(tp / aum_info["n_flagged"]) if aum_info["n_flagged"] else None
        aum_info["recall"] = _f(tp / planted.sum()) if planted.any() else None
    per_member = []
    for m in range(result.n_members):
        entry = {"member": m, "alive": bool(alive[m]), "cut": _f(rep.member_cut[m]),
                 "rule": rep.member_rule[m],
                 "n_flagged": int((rep.member_flagged[m] & real).sum())}
        if noise is not None and alive[m]:
            a = rep.member_aum[m]
            sc = real & np.isfinite(a)
            entry["roc_auc_vs_planted_noise"] = _f(aum_lib.roc_auc(-a[sc], noise[sc]))
        per_member.append(entry)
    aum_info["members"] = per_member
    cand = np.argwhere(real & np.isfinite(rep.aum))
    lowest = cand[np.argsort(rep.aum[cand[:, 0], cand[:, 1]], kind="stable")]
    aum_info["top_flagged"] = [
        {"frame": train.frame_ids[i], "keypoint": train.bodyparts[j],
         "aum": _f(rep.aum[i, j]), "flagged": bool(rep.flagged[i, j]),
         **({"planted_noise": bool(noise[i, j])} if noise is not None else {})}
        for i, j in lowest[:top]]
    logs.info(f"AUM: cut {rep.cut:.3f} ({rep.rule}); {aum_info['n_flagged']} of "
              f"{aum_info['n_labels']} labels flagged"
              + (f"; ROC-AUC vs planted noise {aum_info['roc_auc_vs_planted_noise']:.3f}"
           if aum_info.get("roc_auc_vs_planted_noise") is not None else ""))
    return {"rep": rep, "kinds": kinds, "thr_mask": thr_mask, "has_thr": thr is not None,
            "real": real, "lowest": lowest}, aum_info


def forward_section(result: EnsembleResult, members, train, test, *, batch_size: int,
                    progress: bool, mpe_mode: str) -> tuple[dict, dict]:
    """One forward pass of the alive members over the training and the test frames."""
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=2 * members.size, unit="member-pass", desc="analysing members",
                   dynamic_ncols=True)
    outs = tuple(member_outputs(result, members, ds.images, ds.keypoints,
                                batch_size=batch_size, bar=bar, mpe=mpe_mode)
                 for ds in (train, test))
    if bar is not None:
        bar.close()
    return outs


def influence_section(run: Path, config: dict, result: EnsembleResult, members, train, test,
                      out_tr: dict, out_te: dict, *, estimator, top: int, figures: bool
                      ) -> tuple[dict, dict]:
    """Influence of training frames on test frames by the estimator valid for the plan,
    p/q-values, LDS on validation members (analysis/attribution.py); writes influence.npz
    (and lds.png)."""
    from ensemble_jax.analysis import attribution

    def per_frame(out, ds):
        err = metrics.pixel_errors(ds.to_original(out["keypoints"]), ds.original_keypoints())
        return {"pixel_error": _frame_mean(err),
                "gt_confidence": _frame_mean(out["gt_confidence"]),
                "gt_probability": _frame_mean(out["gt_probability"])}
    noise = train.noise_mask
    arrays, info = attribution.attribution_section(
        config, np.asarray(result.masks), members, per_frame(out_te, test),
        per_frame(out_tr, train), list(train.frame_ids), list(test.frame_ids),
        estimator=estimator, noise=None if noise is None else noise.any(1), top=top,
        figure_path=(run / "lds.png") if figures else None)
    eio.save_npz(run / "influence.npz", **arrays)
    return arrays, info


def uncertainty_section(run: Path, train, test, out_tr: dict, out_te: dict, top: int,
                        mpe_mode: str, figures: bool) -> tuple[dict, dict]:
    """MPE, ensemble spread, representativeness and how they follow the ensemble's test
    error (analysis/uncertainty.py); writes mpe.csv and spread.csv."""
    n = train.n_frames
    mpe = np.concatenate([out_tr["mpe"], out_te["mpe"]], axis=1)            # [Ma, F, K]
    mpe_kp = _frame_mean(np.moveaxis(mpe, 0, -1))                              # [F, K]
    mpe_max = np.asarray(kernels.frame_mpe(jnp.asarray(mpe_kp), reduce="max"))
    mpe_mean = np.asarray(kernels.frame_mpe(jnp.asarray(mpe_kp), reduce="mean"))
    feats = np.concatenate([out_tr["features"], out_te["features"]], axis=1)  # [Ma, F, D]
    is_test = np.r_[np.zeros(n, bool), np.ones(test.n_frames, bool)]
    # Features are centred per member (ReLU features are all >= 0, so raw cosines all sit
    # near 1); the cosine of centred features is the correlation across channels.
    rep_m = np.stack([np.asarray(kernels.representativeness(
        jnp.asarray(f - f.mean(0, keepdims=True)), jnp.asarray(is_test))) for f in feats])
    represent = _frame_mean(rep_m.T)                                         # over members
    kp_orig = np.concatenate([train.to_original(out_tr["keypoints"]),
                              test.to_original(out_te["keypoints"])], axis=1)
    spread = np.asarray(kernels.ensemble_spread(jnp.asarray(kp_orig, jnp.float32)))  # [F, K]
    ids_all = list(train.frame_ids) + list(test.frame_ids)
    split = ["train"] * n + ["test"] * test.n_frames
    bps = list(train.bodyparts)
    spread_max, spread_mean = _frame_mean(spread, "max"), _frame_mean(spread)
    for name, per_kp, cols in (
            ("mpe.csv", mpe_kp, {"mpe_max": mpe_max, "mpe_mean": mpe_mean,
                                 "representativeness": represent}),
            ("spread.csv", spread, {"spread_max": spread_max, "spread_mean": spread_mean})):
        _write_csv(run / name, ["frame_id", "split"] + bps + list(cols),
                   [[ids_all[f], split[f]] + [float(v) for v in per_kp[f]]
                    + [float(c[f]) for c in cols.values()] for f in range(len(ids_all))])
    mpe_on, mpe_thr, mpe_norm = MPE_MODES[mpe_mode]
    conf_all = np.concatenate([out_tr["confidences"], out_te["confidences"]], axis=1)
    top_value = _frame_mean(np.nanmean(conf_all, 0))           # tie-break: lower first
    mpe_order = unc.rank_by_mpe(mpe_max, top_value)
    mpe_info = {
        "settings": {"on": mpe_on, "window": MPE_WINDOW,
                     "threshold": _f(mpe_thr) if np.isfinite(mpe_thr) else "none (every "
                     "local maximum)", "normalize": mpe_norm,
                     "temperature": MPE_TEMPERATURE if mpe_norm == "softmax" else None,
                     "members": "mean over alive members", "units": "nats",
                     "ranking": "MPE max over keypoints, descending; ties broken by the "
                                "lower mean peak confidence"},
        "largest_share_of_one_value": _f(_largest_tie_share(mpe_mean)),
        "top_frames": [
            {"frame": ids_all[f], "index": int(f), "score": _f(mpe_max[f]),
             "split": split[f], "mpe_mean": _f(mpe_mean[f])}
            for f in mpe_order[:top] if np.isfinite(mpe_max[f])],
    }
    spread_info = {"units": "px (original image)",
                   "top_frames": _top_frames(spread_max, ids_all, top, largest=True,
                                             extra={"split": np.array(split)})}
    represent_info = {
        "definition": "mean cosine similarity of a frame's encoder features (GAP of the "
                      "deepest encoder conv, centred over all frames) to the test frames "
                      "(itself excluded), mean over alive members",
        "least_representative_test_frames": _top_frames(
            np.where(is_test, represent, np.nan), ids_all, top, largest=False)}
    te = slice(n, None)        # uncertainty vs the ensemble's test error
    t_err, unc_info = unc.section(run, test, out_te, {
        "mpe_mean": mpe_mean[te], "mpe_max": mpe_max[te], "spread_mean": spread_mean[te],
        "spread_max": spread_max[te], "unrepresentativeness": -represent[te]}, figures)
    arrays = {"mpe_max": mpe_max, "test_error": t_err, "ids": ids_all, "split": split}
    return arrays, {"mpe": mpe_info, "spread": spread_info,
                    "representativeness": represent_info, "uncertainty_vs_error": unc_info}


def figures_section(run: Path, train, test, members, a_aum: dict, a_inf: dict, a_unc: dict,
                    out_tr: dict, out_te: dict, mpe_info: dict) -> None:
    """The influence, AUM and frame figures (the label-check and uncertainty sections
    draw their own)."""
    rep, real, noise, labeled = a_aum["rep"], a_aum["real"], train.noise_mask, train.labeled
    bps, split, ids_all = list(train.bodyparts), a_unc["split"], a_unc["ids"]
    if a_inf.get("pixel_error_effect") is not None:
        figures.influence_matrix(run / "influence_matrix.png", a_inf["pixel_error_effect"],
                                 units="px", metric="mean pixel error")
    figures.aum_histogram(run / "aum_histogram.png", np.where(labeled, rep.aum, np.nan),
                          rep.cut, rep.rule, threshold_mask=a_aum["thr_mask"]
                          if a_aum["has_thr"] else None, noise_mask=noise)
    kp_all = np.concatenate([out_tr["keypoints"], out_te["keypoints"]], axis=1)
    images_all = np.concatenate([train.images, test.images])
    labels_all = np.concatenate([train.keypoints, test.keypoints])
    sel = [r["index"] for r in mpe_info["top_frames"][:8]]
    mpe_max = a_unc["mpe_max"]
    if sel:
        figures.frame_grid(
            run / "top_mpe_frames.png", images_all[sel], labels_all[sel], kp_all[:, sel],
            [f"{split[f]} {ids_all[f].split('/')[-1]}\nMPE max {mpe_max[f]:.2f} nats"
             for f in sel], bps,
            title="Frames with the highest multi-peak entropy (worst keypoint, "
                  f"mean over {members.size} members)")
    frames_sel = list(dict.fromkeys(int(i) for i, _ in a_aum["lowest"]))[:8]
    if frames_sel:
        any_flag = bool((rep.flagged & real).any())
        titles = []
        for i in frames_sel:
            j = int(np.nanargmin(np.where(real[i], rep.aum[i], np.nan)))
            tag = " (planted noise)" if noise is not None and noise[i, j] else ""
            titles.append(f"{train.frame_ids[i].split('/')[-1]}\n{bps[j]}: AUM "
                          f"{rep.aum[i, j]:.2f}{tag}")
        figures.frame_grid(
            run / "top_flagged_frames.png", train.images[frames_sel],
            train.keypoints[frames_sel], out_tr["keypoints"][:, frames_sel], titles, bps,
            title=("Training frames with the lowest-AUM labels (flagged: circled red)"
                   if any_flag else "Training frames with the lowest-AUM labels "
                   "(none below the cut)"),
            highlight=(rep.flagged & real)[frames_sel],
            highlight_name=f"flagged (AUM < {rep.cut:.2f})")


def describe(analysis: dict, n: int = 3) -> str:
    """A short findings summary of `analyze`'s result (what the CLI prints)."""
    a = analysis["aum"]
    lines = [f"AUM: {a['n_flagged']} of {a['n_labels']} labels flagged ({a['rule']}, "
             f"cut {a['cut']:.3f})"]
    if a.get("roc_auc_vs_planted_noise") is not None:
        lines.append(f"  planted label noise: {a['n_planted_noise']} labels, ROC-AUC of AUM "
                     f"{a['roc_auc_vs_planted_noise']:.3f}, {a['flagged_planted_noise']} of "
                     f"them flagged")
    for r in a["top_flagged"][:n]:
        if r["flagged"]:
            lines.append(f"  flagged: {r['frame']} {r['keypoint']} (AUM {r['aum']:.2f})")
    from ensemble_jax.analysis.attribution import describe as describe_influence
    lines += describe_influence(analysis["influence"], n)
    sus_info = analysis.get("suspects")
    if sus_info:
        lines.append(f"suspect frames: {sus_info['n_flagged']} of {sus_info['n_frames']} "
                     f"flagged (suspects.csv; {sus_info['rule']})")
        view = (sus_info.get("terms") or {}).get("multiview")
        if view:
            lines.append(f"  swap evidence from the labels' agreement across "
                         f"{len(view['views'])} camera views too (multi-view PCA, "
                         f"{view['pca_components']} components; median residual "
                         f"{view['residual_px_training_median_real'] or float('nan'):.2f} training px)")
        for r in sus_info["top"][:n]:
            lines.append(f"  {'flagged' if r['flagged'] else 'ranked'}: {r['frame']}: "
                         f"{r['description']} (frame score "
                         f"{r.get('frame_score', r['frame_aum']):.2f})")
        for kind, t in sus_info.get("threshold_frames", {}).items():
            lines.append(f"  threshold samples '{kind}': {t['n']} frames, "
                         f"{t['recall_at_cut']:.2f} below the cut")
        pl = sus_info.get("planted")
        if pl:
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
            lines.append(f"  planted noise: {pl['n_frames']} frames, frame ROC-AUC "
                         f"{fmt(pl['roc_auc_frames'])}, recall {fmt(pl['recall'])}, "
                         f"precision {fmt(pl['precision'])}")
    if analysis.get("uncertainty_vs_error"):
        from ensemble_jax.analysis.uncertainty import describe as describe_unc
        lines += describe_unc(analysis["uncertainty_vs_error"])
    top_mpe = analysis["mpe"]["top_frames"][:n]
    if top_mpe:
        lines.append("highest multi-peak entropy: " + ", ".join(
            f"{r['frame']} [{r['split']}] ({r['score']:.2f})" for r in top_mpe))
    if analysis.get("failed_members"):
        lines.append("failed members excluded: " + "; ".join(
            f"member {r['member']} {r['reason']}" for r in analysis["failed_members"]))
    elif analysis["diverged_members"]:
        lines.append(f"diverged members excluded: {analysis['diverged_members']}")
    return "\n".join(lines)
