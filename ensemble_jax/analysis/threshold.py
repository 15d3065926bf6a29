"""Threshold samples for AUM (Pleiss et al. 2020), adapted to keypoint heatmaps.

Pleiss et al. relabel a small random fraction of the training set into a fake class, so
that some labels are known to be wrong; the AUM those labels reach is the yardstick for
"this label is mislabeled" (the cut is a high percentile of their AUM). For heatmaps the
fake class is a fake location: in a fraction of the training frames, one randomly chosen
labeled keypoint is moved to a random place in the image that lies more than
`min_distance` (a fraction of the image size) away from its label.

`inject_threshold_samples` is a pure function of (keypoints, image size, fraction, seed):
the same arguments give the same frames, keypoints and places.
"""
from __future__ import annotations

import numpy as np

# Folded into the seed so that the draws here never coincide with other uses of the seed.
_STREAM = 0x7A11


def inject_threshold_samples(keypoints: np.ndarray, image_size: int | tuple[int, int],
                             fraction: float, seed: int, *, min_distance: float = 0.15
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Moves one labeled keypoint in `round(fraction * n_labeled_frames)` frames.

    Args:
      keypoints: float `[n, K, 2]` (x, y) training pixels, NaN = unlabeled.
      image_size: `(height, width)` of the training images, or one int for square images.
      fraction: in [0, 1); the share of frames (among those with at least one label) that
        receive a threshold sample. 0 disables (keypoints returned unchanged).
      seed: the sweep seed; everything drawn here follows from it.
      min_distance: the new place is more than `min_distance * max(height, width)` pixels
        from the label (and inside the image: x in [0, w-1], y in [0, h-1]).

    Returns:
      `(new_keypoints float32 [n, K, 2], mask bool [n, K])`, mask True at the moved labels
      (exactly one per chosen frame).
    """
    kp = np.array(keypoints, dtype=np.float32, copy=True)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints must be [n, K, 2], got shape {kp.shape}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"threshold fraction must be in [0, 1), got {fraction}")
    h, w = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    n, k = kp.shape[:2]
    mask = np.zeros((n, k), bool)
    labeled = np.isfinite(kp).all(-1)
    frames = np.flatnonzero(labeled.any(1))
    n_pick = int(round(fraction * frames.size))
    if n_pick == 0:
        return kp, mask
    rng = np.random.default_rng([int(seed), _STREAM])
    chosen = np.sort(rng.choice(frames, size=n_pick, replace=False))
    far = min_distance * max(h, w)
    for i in chosen:
        j = int(rng.choice(np.flatnonzero(labeled[i])))
        x0, y0 = kp[i, j]
        # Rejection sampling: almost always done in a few tries (most of the image is far
        # from any point); the fallback is the image corner farthest from the label.
        for _ in range(1000):
            x, y = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
            if np.hypot(x - x0, y - y0) > far:
                break
        else:
            corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float32)
            x, y = corners[np.argmax(np.hypot(*(corners - kp[i, j]).T))]
        kp[i, j] = (x, y)
        mask[i, j] = True
    return kp, mask
