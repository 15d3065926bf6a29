"""`EnsembleResult`: trained members plus everything needed to evaluate and analyse them."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import chex
import jax
import numpy as np

from ensemble_jax.analysis import metrics
from ensemble_jax.data.dataset import KeypointDataset
from ensemble_jax.models.forward import members_over_frames
from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
from ensemble_jax.training.config import TrainConfig


class Predictions(NamedTuple):
    keypoints: np.ndarray            # float32 [M, B, K, 2]  (x, y) training pixels
    confidences: np.ndarray          # float32 [M, B, K]
    heatmaps: np.ndarray | None      # float32 [M, B, K, h, w] logits, when asked for


@dataclasses.dataclass
class EnsembleResult:
    model_config: ModelConfig
    train_config: TrainConfig
    params: Any                      # pytree, leaves stacked on [M]
    masks: np.ndarray                # int32 [M, n] subset counts (bool plans -> 0/1)
    bodyparts: Sequence[str]
    image_shape: tuple[int, int, int]
    aum_sum: np.ndarray              # float32 [M, n, K]
    aum_count: np.ndarray            # int32 [M, n, K]
    losses: np.ndarray               # float32 [steps, M] (NaN after divergence)
    alive: np.ndarray                # bool [M]
    diverged_at: np.ndarray          # int32 [M], -1 = never
    strategy: str
    timing: dict
    # str [M]: why each member failed ("" = alive; training/health.py); None for runs from
    # before it (then `health.reason` derives it from diverged_at)
    failed_reason: Any = None

    @property
    def n_members(self) -> int:
        return int(self.masks.shape[0])

    def model(self) -> HeatmapNet:
        return HeatmapNet(self.model_config, len(self.bodyparts))

    def member_params(self, m: int) -> Any:
        return jax.tree_util.tree_map(lambda x: x[m], self.params)

    def aum(self) -> np.ndarray:
        """float32 [M, n, K]: mean margin over the steps each label was in the batch."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.aum_count > 0, self.aum_sum / np.maximum(self.aum_count, 1),
                            np.nan).astype(np.float32)

    def predict(self, images: np.ndarray, *, batch_size: int = 64, heatmaps: bool = False,
                members: Sequence[int] | None = None, progress: bool = False) -> Predictions:
        """Runs members on `images` uint8 `[B, H, W, C]`."""
        images = np.asarray(images)
        chex.assert_rank(images, 4)
        if images.shape[1:] != tuple(self.image_shape):
            raise ValueError(f"predict: images have shape {images.shape[1:]}, the ensemble was "
                             f"trained on {tuple(self.image_shape)}")
        members = list(range(self.n_members)) if members is None else list(members)
        out = members_over_frames(
            self, members, images, batch_size=batch_size,
            outputs=("keypoints", "confidences") + (("heatmaps",) if heatmaps else ()))
        return Predictions(out["keypoints"], out["confidences"], out.get("heatmaps"))

    def evaluate(self, train: KeypointDataset, test: KeypointDataset | None = None, *,
                 pck_radius: float = 5.0, predictions: dict | None = None) -> dict:
        """Errors in original-image pixels: per member in/out of its subset and on test."""
        preds = predictions or {}
        out: dict = {"members": []}
        p_train = preds.get("train") or self.predict(train.images)
        err_train = metrics.pixel_errors(train.to_original(p_train.keypoints),
                                         train.original_keypoints())          # [M, n, K]
        inside = self.masks > 0
        for m in range(self.n_members):
            row = {"member": m, "alive": bool(self.alive[m]),
                   "train_in_mean_px": float(metrics.mean_error(err_train[m][inside[m]])),
                   "train_out_mean_px": float(metrics.mean_error(err_train[m][~inside[m]]))
                   if (~inside[m]).any() else None}
            out["members"].append(row)
        if test is not None:
            p_test = preds.get("test") or self.predict(test.images)
            err_test = metrics.pixel_errors(test.to_original(p_test.keypoints),
                                            test.original_keypoints())        # [M, t, K]
            for m, row in enumerate(out["members"]):
                row["test_mean_px"] = float(metrics.mean_error(err_test[m]))
                row["test_rmse_px"] = float(metrics.rmse(err_test[m]))
            alive = self.alive
            cons = consensus(p_test.keypoints[alive], p_test.confidences[alive])
            cons_err = metrics.pixel_errors(test.to_original(cons), test.original_keypoints())
            out["ensemble_test"] = metrics.error_report(cons_err, self.bodyparts, pck_radius)
            out["mean_pose_baseline_px"] = metrics.mean_pose_baseline(
                train.original_keypoints(), test.original_keypoints())
        return out


def consensus(keypoints: np.ndarray, confidences: np.ndarray, method: str = "weighted_mean"
              ) -> np.ndarray:
    """Ensemble consensus `[B, K, 2]` from member predictions `[M, B, K, 2]` (NumPy in and
    out); the kernel `ensemble_jax.kernels.consensus` does the work."""
    from ensemble_jax.kernels.spread import consensus as consensus_kernel
    return np.asarray(consensus_kernel(np.asarray(keypoints, np.float32),
                                       np.asarray(confidences, np.float32), method))
