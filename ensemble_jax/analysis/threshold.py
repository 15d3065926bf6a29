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


# ------------------------------------------------------------ realistic threshold samples
# Kinds of threshold sample, as stored in data.npz (`train_threshold_kind`, int8 [n, K];
# 0 = not a threshold sample) and named in aum.csv (`threshold_kind`).
KINDS = {1: "swap", 2: "onto_other", 3: "displaced", 4: "far"}
KIND_CODES = {v: k for k, v in KINDS.items()}
_REALISTIC = ("swap", "onto_other", "displaced")


def _side_key(name: str) -> str | None:
    """A bodypart name with its side marker (left/right, a standalone L/R, a camel-case
    L/R as in 'paw1LH') and digits replaced, or None when it has no side marker: two
    names with the same key are a left/right pair."""
    import re
    s = re.sub(r"\d+", "", name)
    t = re.sub(r"(?i)left|right", "#", s)
    t = re.sub(r"(?<![A-Za-z])[LlRr](?![a-z])", "#", t)
    t = re.sub(r"(?<=[a-z])[LR](?=[A-Z])", "#", t)
    return t if t != s else None


def symmetric_pairs(bodyparts) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j, of bodyparts that are left/right twins by name
    ('leftear'/'rightear', 'paw1LH_top'/'paw4RH_top', 'l_eye'/'r_eye')."""
    keys = [_side_key(str(b)) for b in bodyparts]
    out = []
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            if keys[i] is not None and keys[i] == keys[j] and \
                    str(bodyparts[i]).lower() != str(bodyparts[j]).lower():
                out.append((i, j))
    return out


def content_boxes(letterbox: np.ndarray, original_sizes: np.ndarray) -> np.ndarray:
    """float32 `[n, 4]` (x0, y0, x1, y1): the training-pixel box each frame's image content
    covers inside its letterbox (padding outside it)."""
    lb = np.asarray(letterbox, np.float64).reshape(-1, 3)
    wh = np.asarray(original_sizes, np.float64).reshape(-1, 2)
    s, dx, dy = lb[:, 0], lb[:, 1], lb[:, 2]
    return np.stack([dx, dy, s * (wh[:, 0] - 1) + dx, s * (wh[:, 1] - 1) + dy],
                    1).astype(np.float32)


def inject_realistic_threshold_samples(keypoints: np.ndarray, boxes: np.ndarray,
                                       fraction: float, seed: int, *,
                                       bodyparts=None, min_distance: float = 0.15
                                       ) -> tuple[np.ndarray, np.ndarray]:
    """Threshold samples shaped like real labeling errors, in `round(fraction * n_labeled
    frames)` frames, the kinds taking turns over the chosen frames (in a seeded order):

      swap        two labeled keypoints of the frame exchanged: a left/right pair by name
                  (`symmetric_pairs`) when the frame has one labeled, else the frame's
                  closest labeled pair. Both labels are threshold samples.
      onto_other  one keypoint put exactly on the label of the frame's nearest other
                  labeled keypoint (a click on the wrong bodypart).
      displaced   one keypoint moved to a uniform place inside the frame's image content
                  (`boxes`, never the letterbox padding) more than `min_distance` x the
                  content's longer side away from its label.
    A frame with a single labeled keypoint gets `displaced`.

    Args:
      keypoints: float `[n, K, 2]` training pixels, NaN = unlabeled.
      boxes: float `[n, 4]` (x0, y0, x1, y1) content box per frame (`content_boxes`).
      fraction: in [0, 1); seed: the sweep seed (same arguments, same samples).

    Returns:
      `(new_keypoints float32 [n, K, 2], kind int8 [n, K])`, kind = `KIND_CODES[name]` at
      the threshold samples, 0 elsewhere.
    """
    kp = np.array(keypoints, dtype=np.float32, copy=True)
    if kp.ndim != 3 or kp.shape[-1] != 2:
        raise ValueError(f"keypoints must be [n, K, 2], got shape {kp.shape}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"threshold fraction must be in [0, 1), got {fraction}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if boxes.shape[0] != kp.shape[0]:
        raise ValueError(f"boxes {boxes.shape} must have one row per frame ({kp.shape[0]})")
    n, k = kp.shape[:2]
    kind = np.zeros((n, k), np.int8)
    labeled = np.isfinite(kp).all(-1)
    frames = np.flatnonzero(labeled.any(1))
    n_pick = int(round(fraction * frames.size))
    if n_pick == 0:
        return kp, kind
    rng = np.random.default_rng([int(seed), _STREAM, 2])
    chosen = rng.choice(frames, size=n_pick, replace=False)     # seeded order = kind order
    pairs = symmetric_pairs(bodyparts) if bodyparts is not None else []
    orig = kp.copy()
    for t, i in enumerate(chosen):
        lab = np.flatnonzero(labeled[i])
        want = _REALISTIC[t % 3] if lab.size >= 2 else "displaced"
        if want in ("swap", "onto_other"):
            d = np.hypot(*(orig[i, lab][:, None] - orig[i, lab][None]).transpose(2, 0, 1))
            d[np.arange(lab.size), np.arange(lab.size)] = np.inf
        if want == "swap":
            ok = [(a, b) for a, b in pairs if labeled[i, a] and labeled[i, b]]
            if ok:
                a, b = ok[int(rng.integers(len(ok)))]
            else:
                ia, ib = np.unravel_index(np.argmin(d), d.shape)
                a, b = int(lab[ia]), int(lab[ib])
            kp[i, a], kp[i, b] = orig[i, b], orig[i, a]
            kind[i, a] = kind[i, b] = KIND_CODES["swap"]
        elif want == "onto_other":
            ia = int(rng.integers(lab.size))
            a, b = int(lab[ia]), int(lab[np.argmin(d[ia])])
            kp[i, a] = orig[i, b]
            kind[i, a] = KIND_CODES["onto_other"]
        else:
            a = int(lab[rng.integers(lab.size)])
            x0, y0, x1, y1 = boxes[i]
            far = min_distance * max(x1 - x0, y1 - y0)
            for _ in range(1000):
                x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
                if np.hypot(x - orig[i, a, 0], y - orig[i, a, 1]) > far:
                    break
            else:   # content box too small around the label: its farthest corner
                c = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]])
                x, y = c[np.argmax(np.hypot(*(c - orig[i, a]).T))]
            kp[i, a] = (x, y)
            kind[i, a] = KIND_CODES["displaced"]
    return kp, kind


def make_threshold_samples(cfg, train) -> tuple[np.ndarray, np.ndarray]:
    """The sweep's threshold samples for SweepConfig `cfg` on the training frames:
    `(keypoints, mask)`; mask is bool `[n, K]` for kinds "far" (`inject_threshold_samples`)
    and int8 kinds `[n, K]` (`KINDS`) for "realistic"."""
    if getattr(cfg, "threshold_kinds", "far") == "realistic":
        return inject_realistic_threshold_samples(
            train.keypoints, content_boxes(train.letterbox, train.original_sizes),
            cfg.threshold_fraction, cfg.seed, bodyparts=list(train.bodyparts))
    return inject_threshold_samples(train.keypoints, train.images.shape[1:3],
                                    cfg.threshold_fraction, cfg.seed)
