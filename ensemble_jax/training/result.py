"""`EnsembleResult`: trained members plus everything needed to evaluate and analyse them."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ensemble_jax.analysis import metrics
from ensemble_jax.data.dataset import KeypointDataset
from ensemble_jax.models.decode import decode_heatmaps
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
        stride = self.model_config.output_stride
        model = self.model()

        def one(params, x):
            logits = model.apply(params, x)
            kp, conf = decode_heatmaps(logits, stride)
            return kp, conf, logits

        fn = _jit_cache(model, stride, heatmaps, one)
        n = images.shape[0]
        bs = max(1, min(batch_size, n))
        kps, confs, hms = [], [], []
        for m in members:
            p = self.member_params(m)
            k_m, c_m, h_m = [], [], []
            for lo in range(0, n, bs):
                x = images[lo:lo + bs]
                pad = bs - x.shape[0]
                if pad:  # keep one batch shape: one compile
                    x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
                k, c, h = fn(p, x)
                k_m.append(np.asarray(k)[:bs - pad])
                c_m.append(np.asarray(c)[:bs - pad])
                if heatmaps:
                    h_m.append(np.asarray(h)[:bs - pad])
            kps.append(np.concatenate(k_m))
            confs.append(np.concatenate(c_m))
            if heatmaps:
                hms.append(np.concatenate(h_m))
        return Predictions(np.stack(kps).astype(np.float32), np.stack(confs).astype(np.float32),
                           np.stack(hms).astype(np.float32) if heatmaps else None)

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


_JITS: dict = {}


def _jit_cache(model, stride, heatmaps, fn):
    key = (model.config, model.n_keypoints, stride, heatmaps)
    if key not in _JITS:
        _JITS[key] = jax.jit(fn if heatmaps else (lambda p, x: fn(p, x)[:2] + (None,)))
    return _JITS[key]
