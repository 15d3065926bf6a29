"""One forward pass of ensemble members over frames, for every reader of a trained
ensemble (`EnsembleResult.predict`, `analyze`, `video.predict`): one member body that
returns the outputs asked for, and one loop of members over batches of frames.

Outputs (each `[B, ...]` per member; stacked `[M, F, ...]` by `members_over_frames`):
  keypoints       float32 [B, K, 2]  argmax + subpixel (training pixels)
  confidences     float32 [B, K]     sigmoid of the peak logit
  heatmaps        float32 [B, K, h, w] logits
  features        float32 [B, D]     ReLU'd deepest encoder map, mean over space
  gt_confidence   float32 [B, K]     (needs labels [B, K, 2]; kernels.gt_confidence)
  gt_probability  float32 [B, K]     (needs labels; kernels.gt_probability)
  mpe             float32 [B, K]     multi-peak entropy with `mpe` = (on "logits" or
                                     "sigmoid", threshold, normalize, window, temperature)

Heatmaps leave the function only when asked for, so memory stays O(frames) otherwise.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ensemble_jax.models.decode import decode_heatmaps
from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig

OUTPUTS = ("keypoints", "confidences", "heatmaps", "features", "gt_confidence",
           "gt_probability", "mpe")


def feature_layer(mc: ModelConfig) -> str:
    """Name of the deepest encoder convolution (HeatmapNet creates Conv_0 for the stem,
    then 1 + convs_per_stage convolutions per stage, in order; the ResNet encoder's deepest
    stage is its module 'layer4')."""
    if getattr(mc, "encoder", "small") == "resnet":
        return "layer4"
    return f"Conv_{len(mc.widths) * (1 + mc.convs_per_stage)}"


def member_body(mc: ModelConfig, k: int, outputs: Sequence[str],
                mpe: tuple | None = None) -> Callable:
    """(params of one member, images [B, H, W, C], labels [B, K, 2] or None) -> dict of
    the `outputs` (see the module docstring); pure, not jitted."""
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown forward outputs {sorted(unknown)}; choose from {OUTPUTS}")
    if "mpe" in outputs and mpe is None:
        raise ValueError("the 'mpe' output needs its mode (on, threshold, normalize, window, "
                         "temperature)")
    from ensemble_jax import kernels
    model = HeatmapNet(mc, k)
    stride = mc.output_stride
    layer = feature_layer(mc)

    def body(params, x, labels=None):
        out: dict[str, Any] = {}
        if "features" in outputs:
            logits, state = model.apply(
                params, x, capture_intermediates=lambda mdl, name: mdl.name == layer,
                mutable=["intermediates"])
            inter = state["intermediates"]
            inter = inter["encoder"] if "encoder" in inter else inter   # the ResNet's stages
            feat = inter[layer]["__call__"][0]                          # [B, h, w, C]
            feat = jax.nn.relu(feat.astype(jnp.float32)).mean((1, 2))
        else:
            logits = model.apply(params, x)
        if "keypoints" in outputs or "confidences" in outputs:
            kp, conf = decode_heatmaps(logits, stride)
            out.update({n: v for n, v in (("keypoints", kp), ("confidences", conf))
                        if n in outputs})
        if "features" in outputs:
            out["features"] = feat
        if "heatmaps" in outputs:
            out["heatmaps"] = logits
        if "gt_confidence" in outputs:
            out["gt_confidence"] = kernels.gt_confidence(logits, labels, stride=stride)
        if "gt_probability" in outputs:
            out["gt_probability"] = kernels.gt_probability(logits, labels, stride=stride)
        if "mpe" in outputs:
            on, threshold, normalize, window, temperature = mpe
            out["mpe"] = kernels.multi_peak_entropy(
                logits if on == "logits" else jax.nn.sigmoid(logits), window=window,
                threshold=threshold, normalize=normalize, temperature=temperature)
        return out
    return body


@functools.lru_cache(maxsize=32)
def member_pass(mc: ModelConfig, k: int, outputs: tuple[str, ...],
                mpe: tuple | None = None) -> Callable:
    """`member_body` jitted, one compiled program per (network, outputs, mode)."""
    return jax.jit(member_body(mc, k, outputs, mpe))


def members_over_frames(result: Any, members: Sequence[int], images: np.ndarray,
                        labels: np.ndarray | None = None, *, outputs: Sequence[str],
                        batch_size: int = 64, bar: Any = None, mpe: tuple | None = None
                        ) -> dict[str, np.ndarray]:
    """float32 `[len(members), F, ...]` of each of `outputs` for the members of `result`
    (an EnsembleResult) on images `[F, H, W, C]` (labels `[F, K, 2]` for the gt_*
    outputs), one member at a time in batches of `batch_size` frames (the last one padded:
    one batch shape, one compile); `bar.update(1)` after each member."""
    fn = member_pass(result.model_config, len(result.bodyparts), tuple(outputs), mpe)
    n = images.shape[0]
    bs = max(1, min(batch_size, n))
    per_member = []
    for m in members:
        p = result.member_params(int(m))
        chunks = []
        for lo in range(0, n, bs):
            x = images[lo:lo + bs]
            y = None if labels is None else labels[lo:lo + bs]
            pad = bs - x.shape[0]
            if pad:
                x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
                y = None if y is None else np.concatenate([y, np.repeat(y[-1:], pad, 0)])
            out = jax.device_get(fn(p, x, None if y is None else y.astype(np.float32)))
            chunks.append({k: np.asarray(v)[:bs - pad] for k, v in out.items()})
        per_member.append({k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]})
        if bar is not None:
            bar.update(1)
    return {k: np.stack([d[k] for d in per_member]).astype(np.float32) for k in per_member[0]}
