"""`KeypointDataset`: the one container every reader returns and the trainer consumes.

Shapes (n frames, K keypoints, images H x W x C):
  images      uint8   [n, H, W, C]   training-resolution pixels (C = 1 or 3)
  keypoints   float32 [n, K, 2]      (x, y) in training pixels, pixel centres at integers;
                                     NaN = not labeled
  bodyparts   list[str] of length K
  frame_ids   list[str] of length n  (e.g. 'labeled-data/m4s1/img0003.png')
  noise_mask  bool    [n, K] | None  which labels were deliberately corrupted
  letterbox   float32 [n, 3]         (scale, dx, dy): x_train = scale * x_orig + dx, same
                                     for y; identity for data already at training size
  original_sizes int32 [n, 2]        (width, height) of each original image
  views       tuple of V tuples of J bodypart names | None: the same J body points seen in
                                     V camera views (Lightning Pose's
                                     `mirrored_column_matches`); None = one view
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


class DatasetError(ValueError):
    """Raised for malformed datasets; the message names the field, file or row."""


@dataclasses.dataclass(frozen=True, eq=False)
class KeypointDataset:
    images: np.ndarray
    keypoints: np.ndarray
    bodyparts: Sequence[str]
    frame_ids: Sequence[str]
    noise_mask: np.ndarray | None = None
    letterbox: np.ndarray | None = None
    original_sizes: np.ndarray | None = None
    source: str = ""
    views: tuple | None = None

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        kps = np.asarray(self.keypoints)
        src = f" ({self.source})" if self.source else ""
        if images.ndim == 3:  # grayscale without channel axis
            images = images[..., None]
        if images.ndim != 4:
            raise DatasetError(f"images{src} must be [n, H, W, C], got shape {images.shape}")
        if images.dtype != np.uint8:
            raise DatasetError(f"images{src} must be uint8, got {images.dtype}")
        if images.shape[-1] not in (1, 3):
            raise DatasetError(f"images{src} must have 1 or 3 channels, got {images.shape[-1]}")
        n, h, w, _ = images.shape
        if kps.ndim != 3 or kps.shape[0] != n or kps.shape[2] != 2:
            raise DatasetError(
                f"keypoints{src} must be [n={n}, K, 2], got shape {kps.shape}")
        if not np.issubdtype(kps.dtype, np.floating):
            raise DatasetError(f"keypoints{src} must be floating point, got {kps.dtype}")
        kps = kps.astype(np.float32)
        if np.isinf(kps).any():
            bad = np.argwhere(np.isinf(kps))[0]
            raise DatasetError(
                f"keypoints{src}: infinite coordinate at frame {bad[0]} "
                f"({list(self.frame_ids)[bad[0]] if len(self.frame_ids) == n else '?'}), "
                f"keypoint {bad[1]}; use NaN for unlabeled points")
        # A keypoint is labeled only if both coordinates are; half-NaN becomes NaN.
        half = np.isnan(kps).any(-1)
        kps = np.where(half[..., None], np.nan, kps).astype(np.float32)
        k = kps.shape[1]
        bodyparts = [str(b) for b in self.bodyparts]
        if len(bodyparts) != k:
            raise DatasetError(f"bodyparts{src}: {len(bodyparts)} names for K={k} keypoints")
        if len(set(bodyparts)) != k:
            dup = sorted({b for b in bodyparts if bodyparts.count(b) > 1})
            raise DatasetError(f"bodyparts{src}: duplicate names {dup}")
        frame_ids = [str(f) for f in self.frame_ids]
        if len(frame_ids) != n:
            raise DatasetError(f"frame_ids{src}: {len(frame_ids)} ids for n={n} frames")
        if len(set(frame_ids)) != n:
            seen: dict[str, int] = {}
            for i, f in enumerate(frame_ids):
                if f in seen:
                    raise DatasetError(
                        f"frame_ids{src}: duplicate frame {f!r} (rows {seen[f]} and {i})")
                seen[f] = i
        noise = self.noise_mask
        if noise is not None:
            noise = np.asarray(noise)
            if noise.shape != (n, k) or noise.dtype != np.bool_:
                raise DatasetError(
                    f"noise_mask{src} must be bool [{n}, {k}], got {noise.dtype} {noise.shape}")
        lb = self.letterbox
        if lb is None:
            lb = np.tile(np.array([1.0, 0.0, 0.0], np.float32), (n, 1))
        lb = np.asarray(lb, np.float32)
        if lb.shape != (n, 3) or not np.isfinite(lb).all() or (lb[:, 0] <= 0).any():
            raise DatasetError(f"letterbox{src} must be finite [n, 3] with scale > 0")
        sizes = self.original_sizes
        if sizes is None:
            sizes = np.tile(np.array([w, h], np.int32), (n, 1))
        sizes = np.asarray(sizes, np.int32)
        if sizes.shape != (n, 2):
            raise DatasetError(f"original_sizes{src} must be [n, 2], got {sizes.shape}")
        views = self.views
        if views is not None:
            views = tuple(tuple(str(b) for b in v) for v in views)
            unknown = sorted({b for v in views for b in v} - set(bodyparts))
            if len(views) < 2 or len({len(v) for v in views}) != 1 or not views[0] or unknown:
                raise DatasetError(
                    f"views{src}: need >= 2 views of the same number of bodyparts"
                    + (f"; not bodyparts: {unknown}" if unknown else f", got {views}"))
        for name, value in [("images", images), ("keypoints", kps), ("bodyparts", bodyparts),
                            ("frame_ids", frame_ids), ("noise_mask", noise),
                            ("letterbox", lb), ("original_sizes", sizes), ("views", views)]:
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------------- properties
    @property
    def n_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_keypoints(self) -> int:
        return int(self.keypoints.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def labeled(self) -> np.ndarray:
        """bool [n, K]: which keypoints carry a label."""
        return ~np.isnan(self.keypoints[..., 0])

    def counts(self) -> dict[str, int]:
        """Label statistics worth printing before a run (outside-image points are allowed)."""
        h, w = self.images.shape[1:3]
        lab = self.labeled
        x, y = self.keypoints[..., 0], self.keypoints[..., 1]
        with np.errstate(invalid="ignore"):
            outside = lab & ((x < -0.5) | (y < -0.5) | (x > w - 0.5) | (y > h - 0.5))
        return {
            "frames": self.n_frames,
            "keypoints": self.n_keypoints,
            "labels": int(lab.sum()),
            "missing_labels": int((~lab).sum()),
            "unlabeled_frames": int((~lab.any(1)).sum()),
            "outside_image": int(outside.sum()),
            "noisy_labels": int(self.noise_mask.sum()) if self.noise_mask is not None else 0,
        }

    # ---------------------------------------------------------------- operations
    def take(self, index: np.ndarray | Sequence[int]) -> "KeypointDataset":
        """The frames at `index` (ints or a bool mask), all per-frame fields kept aligned."""
        idx = np.asarray(index)
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        return dataclasses.replace(
            self,
            images=self.images[idx],
            keypoints=self.keypoints[idx],
            frame_ids=[self.frame_ids[i] for i in idx],
            noise_mask=None if self.noise_mask is None else self.noise_mask[idx],
            letterbox=self.letterbox[idx],
            original_sizes=self.original_sizes[idx],
        )

    def split(self, test_fraction: float, seed: int = 0) -> tuple["KeypointDataset", "KeypointDataset"]:
        """A reproducible random (train, test) split of the frames."""
        if not 0.0 < test_fraction < 1.0:
            raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n = self.n_frames
        n_test = max(1, int(round(test_fraction * n)))
        if n_test >= n:
            raise DatasetError(f"test_fraction={test_fraction} leaves no training frame of {n}")
        perm = np.random.default_rng(seed).permutation(n)
        return self.take(np.sort(perm[n_test:])), self.take(np.sort(perm[:n_test]))

    def to_original(self, xy: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
        """Maps training-pixel coordinates `[..., n, K, 2]` back to each original image."""
        lb = self.letterbox if frames is None else self.letterbox[np.asarray(frames)]
        scale, off = lb[:, None, :1], lb[:, None, 1:]
        return (np.asarray(xy, np.float32) - off) / scale

    def original_keypoints(self) -> np.ndarray:
        """float32 [n, K, 2]: labels in the original images' pixels."""
        return self.to_original(self.keypoints)


def concatenate(datasets: Sequence[KeypointDataset]) -> KeypointDataset:
    """Stacks datasets with the same bodyparts and image shape."""
    if not datasets:
        raise DatasetError("concatenate: no datasets given")
    first = datasets[0]
    for d in datasets[1:]:
        if list(d.bodyparts) != list(first.bodyparts):
            raise DatasetError(f"concatenate: bodyparts differ ({d.bodyparts} vs {first.bodyparts})")
        if d.image_shape != first.image_shape:
            raise DatasetError(f"concatenate: image shapes differ ({d.image_shape} vs {first.image_shape})")
    has_noise = any(d.noise_mask is not None for d in datasets)
    return KeypointDataset(
        images=np.concatenate([d.images for d in datasets]),
        keypoints=np.concatenate([d.keypoints for d in datasets]),
        bodyparts=first.bodyparts,
        frame_ids=[f for d in datasets for f in d.frame_ids],
        noise_mask=np.concatenate([
            d.noise_mask if d.noise_mask is not None else np.zeros((d.n_frames, d.n_keypoints), bool)
            for d in datasets]) if has_noise else None,
        letterbox=np.concatenate([d.letterbox for d in datasets]),
        original_sizes=np.concatenate([d.original_sizes for d in datasets]),
        source=first.source, views=first.views,
    )
