"""Keypoint error metrics, NaN-aware (NumPy; these run once per evaluation, not per step).

pred `[..., F, K, 2]`, truth `[F, K, 2]`; NaN truth = unlabeled, excluded everywhere.
"""
from __future__ import annotations

import numpy as np


def pixel_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Euclidean distance `[..., F, K]` in pixels; NaN where the label is NaN."""
    return np.sqrt(((np.asarray(pred, np.float64) - truth) ** 2).sum(-1))


def mean_error(err: np.ndarray, axis=None) -> np.ndarray:
    """Mean Euclidean error (what DeepLabCut calls 'RMSE')."""
    with np.errstate(invalid="ignore"):
        return np.nanmean(err, axis=axis) if np.isfinite(err).any() else np.nan


def rmse(err: np.ndarray, axis=None) -> np.ndarray:
    """True root-mean-square of the Euclidean errors."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.nanmean(err ** 2, axis=axis)) if np.isfinite(err).any() else np.nan


def pck(err: np.ndarray, radius: float, axis=None) -> np.ndarray:
    """Fraction of labeled keypoints within `radius` pixels."""
    valid = np.isfinite(err)
    hit = (np.where(valid, err, np.inf) <= radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hit.sum(axis=axis) / valid.sum(axis=axis)


def error_report(err: np.ndarray, bodyparts, pck_radius: float) -> dict:
    """Summary of errors `[F, K]`: overall and per keypoint."""
    return {
        "mean_px": float(mean_error(err)),
        "rmse_px": float(rmse(err)),
        f"pck@{pck_radius:g}px": float(pck(err, pck_radius)),
        "per_keypoint_mean_px": {b: float(mean_error(err[:, k])) for k, b in enumerate(bodyparts)},
        "n_labels": int(np.isfinite(err).sum()),
    }


def mean_pose_baseline(train_keypoints: np.ndarray, test_keypoints: np.ndarray) -> float:
    """Mean error of always predicting the mean training pose (the 'no learning' floor)."""
    mean_pose = np.nanmean(train_keypoints, axis=0)
    return float(mean_error(pixel_errors(mean_pose[None], test_keypoints)))
