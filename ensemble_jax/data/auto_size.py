"""Settings chosen from the data when the user does not set them (the command line's
defaults): the letterboxed training size, the heatmap resolution (output stride) and the
AUM competitor radius.

Rules (each choice is printed by `sweep` and recorded in `config.json` under "auto"):

  image size     the longest side over all frames, capped at `MAX_IMAGE_SIZE` (memory and
                 time grow with its square), rounded up to a multiple of what the network
                 needs (2 ** encoder stages); one square size, every frame letterboxed to it.
  closest pair   d = median over the training frames of the smallest distance between two
                 labeled keypoints of one frame, in training pixels (the pair a heatmap must
                 keep apart: left and right ears, neighbouring paws).
  output stride  the largest power of two s <= min(MAX_STRIDE, 2 ** stages) with d / s >= 1:
                 the closest keypoints land on different heatmap pixels.
  AUM radius     clip(d / (2 s), 1, 2) heatmap pixels: the margin's competitor must lie
                 farther than the radius, and half the closest-pair distance keeps a
                 neighbouring keypoint (the place a swapped label points to) a competitor.

Measured on openfield at 128 px (benchmarks/RESULTS.md): stride 4 and radius 2 (d / s =
0.54) ranked swapped ears at ROC-AUC 0.79; stride 2 and radius 1 (d / s = 1.08) at 0.95.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

MAX_IMAGE_SIZE = 256
MIN_IMAGE_SIZE = 32
MAX_STRIDE = 4
MIN_RADIUS, MAX_RADIUS = 1.0, 2.0


@dataclasses.dataclass(frozen=True)
class AutoImageSize:
    """Pass as `image_size` to the readers: the size is chosen from the frame sizes."""
    multiple: int = 8
    cap: int = MAX_IMAGE_SIZE

    def choose(self, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """sizes: (width, height) of every frame -> square (H, W) training size."""
        return (choose_image_size(sizes, self.multiple, self.cap),) * 2


def choose_image_size(sizes: Sequence[tuple[int, int]], multiple: int = 8,
                      cap: int = MAX_IMAGE_SIZE) -> int:
    """The square training size for frames of `sizes` ((w, h) pairs): see the module doc."""
    sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
    if not sizes.size:
        raise ValueError("choose_image_size: no frames")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    longest = int(sizes.max())
    target = max(MIN_IMAGE_SIZE, min(cap, longest))
    return int(math.ceil(target / multiple) * multiple)


def closest_pair_distance(keypoints: np.ndarray) -> float:
    """Median over frames of the smallest distance between two labeled keypoints of one
    frame (same units as `keypoints` `[n, K, 2]`, NaN = unlabeled); NaN when no frame has
    two labeled keypoints."""
    kp = np.asarray(keypoints, np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints must be [n, K, 2], got {kp.shape}")
    k = kp.shape[1]
    if k < 2:
        return float("nan")
    d = np.hypot(*(kp[:, :, None] - kp[:, None, :]).transpose(3, 0, 1, 2))
    d[:, np.arange(k), np.arange(k)] = np.nan
    d = d.reshape(len(kp), -1)
    ok = np.isfinite(d).any(1)
    if not ok.any():
        return float("nan")
    return float(np.median(np.nanmin(d[ok], 1)))


def choose_stride(d_train: float, max_stride: int) -> int:
    """Largest power of two s <= max_stride with d_train / s >= 1 (1 if none)."""
    s = 1
    while s * 2 <= max_stride and d_train / (s * 2) >= 1.0:
        s *= 2
    return s


def choose_radius(d_train: float, stride: int) -> float:
    """clip(d / (2 stride), 1, 2) heatmap pixels, rounded to 0.5."""
    r = d_train / (2.0 * stride) if np.isfinite(d_train) else MAX_RADIUS
    return float(min(MAX_RADIUS, max(MIN_RADIUS, round(r * 2) / 2)))


def choose_heatmap_settings(keypoints: np.ndarray, n_stages: int) -> dict:
    """{"closest_pair_px", "output_stride", "aum_radius"} for training keypoints `[n, K, 2]`
    (training pixels) and a network of `n_stages` encoder stages."""
    d = closest_pair_distance(keypoints)
    max_s = min(MAX_STRIDE, 2 ** int(n_stages))
    stride = choose_stride(d, max_s) if np.isfinite(d) else max_s
    return {"closest_pair_px": None if not np.isfinite(d) else round(d, 3),
            "output_stride": int(stride), "aum_radius": choose_radius(d, stride)}


def resolve_auto(sweep_cfg, model_cfg, train_cfg, train, log=print):
    """`(model_cfg, train_cfg, auto)`: the configs with `sweep_cfg.output_stride` /
    `aum_radius` applied ("auto": chosen from `train`'s labels; a number: as given; None:
    the configs' own values), and a dict saying what was chosen and why (for config.json;
    empty when nothing was chosen). Logs one line per choice."""
    auto: dict = {}
    if sweep_cfg.image_size == "auto" and sweep_cfg.data is not None:
        sizes = np.asarray(train.original_sizes)
        auto["image_size"] = {
            "value": int(train.images.shape[1]),
            "rule": f"longest frame side ({int(sizes.max())} px) capped at "
                    f"{MAX_IMAGE_SIZE}, rounded up to a multiple of "
                    f"{model_cfg.input_multiple}; frames letterboxed"}
        log(f"image size (auto): {train.images.shape[1]}x{train.images.shape[2]} "
            f"({auto['image_size']['rule']}; --image-size sets it)")
    want_s, want_r = sweep_cfg.output_stride, sweep_cfg.aum_radius
    if "auto" in (want_s, want_r):
        ch = choose_heatmap_settings(train.keypoints, len(model_cfg.widths))
        d = ch["closest_pair_px"]
        if want_s == "auto":
            want_s = ch["output_stride"]
            auto["output_stride"] = {
                "value": want_s, "closest_pair_px": d,
                "rule": "largest power of two <= 4 with closest-pair distance / stride >= 1 "
                        "(closest pair: median over training frames of the smallest "
                        "distance between two labeled keypoints, training px)"}
        stride = int(want_s) if want_s is not None else model_cfg.output_stride
        if want_r == "auto":
            want_r = choose_radius(d if d is not None else float("nan"), stride)
            auto["aum_radius"] = {"value": want_r, "closest_pair_px": d,
                                  "rule": "clip(closest-pair distance / (2 stride), 1, 2) "
                                          "heatmap px, rounded to 0.5"}
        log(f"heatmap (auto where not set): closest labeled pair {d} training px -> output "
            f"stride {stride}, AUM radius {want_r if want_r is not None else train_cfg.aum_radius}"
            f" heatmap px (--output-stride, --aum-radius set them)")
    if want_s is not None:
        model_cfg = dataclasses.replace(model_cfg, output_stride=int(want_s))
    if want_r is not None:
        train_cfg = dataclasses.replace(train_cfg, aum_radius=float(want_r))
    return model_cfg, train_cfg, auto
