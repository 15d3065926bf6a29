"""Crop training inside the jitted member step (pure JAX): each batch element becomes a
window of its frame, so a network trains at the frame's native resolution at the cost of
the window, not of the whole frame (issue 34, first part; opt-in, `CropConfig.enabled`).

`crop_batch(key, images, keypoints, valid_hw, cfg)` cuts one window of `cfg.size` (h, w)
out of each frame of a batch and moves the labels with it:

- with probability `1 - background_share` the window is centred on the centre of the
  bounding box of the frame's labeled keypoints, shifted by a uniform random amount of up
  to `jitter` times the window size on each axis; otherwise (and when the frame has no
  labeled keypoint) the window is placed uniformly anywhere in the frame, so the network
  also learns the background;
- the window is kept inside the frame's valid area `valid_hw` (frames of different sizes
  are zero-padded, at the bottom and right, to the largest: `valid_hw` is each frame's own
  size). Along an axis where the frame is smaller than the window, the window starts at
  0 and its remainder is padding (value 0);
- offsets are whole pixels, so the window's pixels are the frame's pixels, copied with
  `jax.lax.dynamic_slice` (vmapped over the batch), and a label moves by exactly the
  offset: p' = p - (x0, y0) (pixel centres at integers, data/coords.py). A label that
  falls outside the window (x' outside [-0.5, w - 0.5], same for y) becomes missing (NaN:
  zero weight in the loss, no AUM), as in training/augment.py.

Placement, per frame b and axis (x with width w shown; y likewise), from uniforms u [B, 3]:

    background = u[b, 0] < background_share or no labeled keypoint
    free       = max(W_valid - w, 0)                      (the last start inside the frame)
    centre     = (min x_k + max x_k) / 2 + (2 u[b, 1] - 1) * jitter * w   (labeled k)
    x0         = floor(centre - (w - 1) / 2 + 0.5)        (window centre at x0 + (w-1)/2)
    x0         = floor(u[b, 1] * (free + 1))              if background
    x0         = clip(x0, 0, free)

(u[b, 2] plays u[b, 1]'s part for y.) Randomness comes only from `key`; the member step
derives it from the member's own key and the step index, in a stream of its own
(`fold_in(fold_in(member_key, 3), step)`), so a member's windows do not depend on the
other members, the strategy or the sharding.

Shapes: images `[B, H, W, C]` (any dtype; kept), keypoints `[B, K, 2]` (x, y) pixels of the
padded frame, NaN = unlabeled, valid_hw int `[B, 2]` (height, width) of each frame's own
content. Output: windows `[B, h, w, C]` (same dtype), keypoints `[B, K, 2]` in window
pixels. When the padded frames are smaller than the window, they are padded with zeros to
the window's size first (static shapes).

In the member step the valid size is not passed: it is each frame's content extent,
`valid_hw_from_content` (the bottom-right corner of the bounding box of its non-zero pixels,
the same content box augmentation uses to keep letterbox padding as padding), so the
training set stays one `[n, H, W, C]` array and every strategy runs the step unchanged.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """Random training windows (all off when enabled=False: the step is unchanged).

    size: window (height, width) in pixels; a multiple of the network's input multiple
        (2 ** encoder stages; 32 for ResNet), checked when the step is built.
    background_share: share of windows placed uniformly anywhere in the frame.
    jitter: largest random shift of the window centre around the labeled keypoints' box
        centre, as a fraction of the window size (per axis).
    The defaults are placeholders, not measured: crop training is opt-in.
    """
    enabled: bool = False
    size: tuple = (256, 256)
    background_share: float = 0.2
    jitter: float = 0.25

    def __post_init__(self) -> None:
        size = tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size,) * 2
        object.__setattr__(self, "size", tuple(int(s) for s in size))

        def bad(name, why):
            raise ValueError(f"CropConfig.{name}={getattr(self, name)!r}: {why}")
        if len(self.size) != 2 or min(self.size) < 1 or tuple(size) != self.size:
            bad("size", "must be (height, width), two positive integers")
        if not 0.0 <= self.background_share <= 1.0:
            bad("background_share", "must be a probability in [0, 1]")
        if not self.jitter >= 0:
            bad("jitter", "must be >= 0")

    def check_multiple(self, multiple: int) -> None:
        """ValueError unless the window is a multiple of the network's input multiple."""
        h, w = self.size
        if h % multiple or w % multiple:
            raise ValueError(f"CropConfig.size={self.size}: the window must be a multiple of "
                             f"{multiple} (2 ** number of encoder stages) on both axes")


def valid_hw_from_content(images: jnp.ndarray) -> jnp.ndarray:
    """int32 [B, 2]: (y1 + 1, x1 + 1) of the bounding box of each frame's non-zero pixels
    (all channels zero = padding): the frame's own size when it was zero-padded at the
    bottom and right. An all-zero frame gets (1, 1)."""
    nz = jnp.any(images > 0, axis=-1)                 # [B, H, W]
    rows, cols = jnp.any(nz, 2), jnp.any(nz, 1)       # [B, H], [B, W]
    h, w = rows.shape[1], cols.shape[1]
    y1 = h - jnp.argmax(rows[:, ::-1], 1)             # last non-zero row + 1
    x1 = w - jnp.argmax(cols[:, ::-1], 1)
    empty = ~jnp.any(rows, 1)
    return jnp.where(empty[:, None], 1, jnp.stack([y1, x1], -1)).astype(jnp.int32)


def offsets_from_uniforms(u: jnp.ndarray, keypoints: jnp.ndarray, valid_hw: jnp.ndarray,
                          cfg: CropConfig) -> jnp.ndarray:
    """int32 [B, 2] window starts (y0, x0) from uniforms u [B, 3] (the rule in the module
    docstring)."""
    h, w = cfg.size
    win = jnp.array([w, h], jnp.float32)                              # (x, y) order
    labeled = jnp.isfinite(keypoints).all(-1)                         # [B, K]
    anyl = labeled.any(-1)                                            # [B]
    lo = jnp.where(labeled[..., None], keypoints, jnp.inf).min(1)     # [B, 2] (x, y)
    hi = jnp.where(labeled[..., None], keypoints, -jnp.inf).max(1)
    centre = jnp.where(anyl[:, None], 0.5 * (lo + hi), 0.0)
    shift = (2.0 * u[:, 1:3] - 1.0) * (cfg.jitter * win)
    fg = jnp.floor(centre + shift - (win - 1.0) / 2.0 + 0.5)
    free = jnp.maximum(valid_hw[:, ::-1].astype(jnp.int32) - jnp.array([w, h]), 0)  # (x, y)
    bg = jnp.floor(u[:, 1:3] * (free + 1).astype(jnp.float32))
    background = (u[:, 0] < cfg.background_share) | ~anyl
    start = jnp.where(background[:, None], bg, fg)
    start = jnp.clip(start, 0, free.astype(jnp.float32)).astype(jnp.int32)
    return start[:, ::-1]                                             # (y0, x0)


def draw_offsets(key: jax.Array, keypoints: jnp.ndarray, valid_hw: jnp.ndarray,
                 cfg: CropConfig) -> jnp.ndarray:
    """int32 [B, 2] random window starts (y0, x0) for a batch (one uniform draw [B, 3])."""
    u = jax.random.uniform(key, (keypoints.shape[0], 3))
    return offsets_from_uniforms(u, keypoints, valid_hw, cfg)


def cut_windows(images: jnp.ndarray, keypoints: jnp.ndarray, offsets: jnp.ndarray,
                valid_hw: jnp.ndarray, size: tuple[int, int]
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The windows of `size` starting at `offsets` int [B, 2] (y0, x0): (windows [B, h, w, C],
    same dtype, 0 outside the frame's valid area; keypoints [B, K, 2] in window pixels,
    NaN outside the window)."""
    h, w = size
    b, hp, wp, c = images.shape
    if hp < h or wp < w:                 # padded frames smaller than the window: pad more
        images = jnp.pad(images, ((0, 0), (0, max(h - hp, 0)), (0, max(w - wp, 0)), (0, 0)))
    offsets = offsets.astype(jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    windows = jax.vmap(lambda img, o: jax.lax.dynamic_slice(
        img, (o[0], o[1], zero), (h, w, c)))(images, offsets)
    ys = jnp.arange(h, dtype=jnp.int32)[None, :, None] + offsets[:, 0, None, None]
    xs = jnp.arange(w, dtype=jnp.int32)[None, None, :] + offsets[:, 1, None, None]
    inside = (ys < valid_hw[:, 0, None, None]) & (xs < valid_hw[:, 1, None, None])
    windows = jnp.where(inside[..., None], windows, jnp.zeros((), windows.dtype))
    kp = keypoints - offsets[:, None, ::-1].astype(keypoints.dtype)
    x, y = kp[..., 0], kp[..., 1]
    keep = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    return windows, jnp.where(keep[..., None], kp, jnp.nan)


def crop_batch(key: jax.Array, images: jnp.ndarray, keypoints: jnp.ndarray,
               valid_hw: jnp.ndarray, cfg: CropConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(images [B, H, W, C], keypoints [B, K, 2], valid_hw int [B, 2]) -> (windows
    [B, h, w, C] of `cfg.size`, same dtype; keypoints [B, K, 2] in window pixels, NaN where
    unlabeled or outside the window). Pure and jittable; randomness only from `key`."""
    valid_hw = jnp.minimum(jnp.asarray(valid_hw, jnp.int32),
                           jnp.array(images.shape[1:3], jnp.int32))
    offsets = draw_offsets(key, keypoints, valid_hw, cfg)
    return cut_windows(images, keypoints, offsets, valid_hw, cfg.size)
