"""Keypoint-aware augmentation inside the jitted member step (pure JAX).

`augment_batch(key, images, keypoints, cfg)` draws one random affine map (rotation, scale,
translation, optional horizontal flip) and one photometric change (brightness, contrast,
noise, blur) per frame of a batch, warps the images and transforms the labels with the
same map exactly, so a keypoint keeps its place on the animal:

    p' = A (p - c) + c + t        p = (x, y), pixel centres at integers (data/coords.py)
    c = ((W - 1) / 2, (H - 1) / 2), A = s R(theta) F  (F = diag(-1, 1) when flipped)

The image is resampled bilinearly at the inverse map. A label that lands outside the frame
becomes missing (NaN: zero weight in the loss, not counted in AUM); a flip exchanges the
declared left/right pairs. Letterbox padding stays padding: the content rectangle of each
frame (the bounding box of its non-zero pixels; letterboxing pads with zeros) is warped
with the frame, and every output pixel outside it (padding, or outside the source frame)
is set to the padding value 0, after the photometric changes. The blur acts on the source
frame (the camera's blur, before any reframing), contrast scales about the mean of the
source's content, brightness and noise are added to the warped frame; the noise has one
value per pixel shared by its channels (imgaug's AdditiveGaussianNoise default).

Randomness comes only from the `key` given, which the member step derives from the member's
own key and the step index (a stream of its own: `fold_in(member_key, 2)`), so a member's
augmentations do not depend on the other members, the strategy or the sharding.

Default ranges follow DeepLabCut's pose_cfg defaults (TensorFlow engine, documented in
DeepLabCut docs/recipes/pose_cfg_file_breakdown.md): rotation +-25 degrees applied to 40%
of the frames (`rotation: 25`, `rotratio: 0.4`), scale jitter in [0.5, 1.25]
(`scale_jitter_lo/up`), mirror off. Translation (+-10% of the frame) and the photometric
ranges are this package's choices (DeepLabCut crops 400-px windows with max_shift 0.4
instead; we train on the whole letterboxed frame unless
TrainConfig.crop is enabled: then augmentation acts on the windows, training/crop.py).

Shapes: images `[B, H, W, C]` uint8 (or float in [0, 1]); keypoints `[B, K, 2]` (x, y)
training pixels, NaN = unlabeled. Output images float32 in [0, 1].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp

AUM_VIEWS = ("augmented", "clean")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Per-frame random augmentation of the training batches (all off when enabled=False).

    flip_pairs: left/right bodypart name pairs exchanged by a horizontal flip (flips happen
        with probability flip_prob only when pairs are declared: a flip without the pair
        map teaches wrong labels). `resolve(bodyparts)` turns them into `flip_perm`.
    aum_view: what AUM margins are computed on: 'augmented' (the logits of the step's own
        augmented batch, free; the default: on the label-check benchmark it ranked planted
        errors better than 'clean' on 2 of 3 seeds and flagged more precisely, RESULTS.md)
        or 'clean' (one extra forward pass on the un-augmented batch with the same
        parameters, ~+30% step time).
    """
    enabled: bool = False
    rotation_deg: float = 25.0        # DeepLabCut `rotation`
    rotation_prob: float = 0.4        # DeepLabCut `rotratio`
    scale_min: float = 0.5            # DeepLabCut `scale_jitter_lo`
    scale_max: float = 1.25           # DeepLabCut `scale_jitter_up`
    translate: float = 0.1            # fraction of the frame size, uniform +-
    flip_pairs: tuple = ()            # (("leftear", "rightear"), ...)
    flip_prob: float = 0.5
    flip_perm: tuple = ()             # keypoint permutation of a flip (from resolve)
    brightness: float = 0.1           # additive, uniform +-, on [0, 1] intensities
    contrast: float = 0.2             # factor uniform in [1 - c, 1 + c] about the frame mean
    noise_std: float = 0.01           # Gaussian pixel noise
    blur_prob: float = 0.2            # 3x3 binomial blur
    aum_view: str = "augmented"

    def __post_init__(self) -> None:
        pairs = tuple(tuple(str(n) for n in p) for p in self.flip_pairs)
        object.__setattr__(self, "flip_pairs", pairs)
        object.__setattr__(self, "flip_perm", tuple(int(i) for i in self.flip_perm))
        def bad(name, why):
            raise ValueError(f"AugmentConfig.{name}={getattr(self, name)!r}: {why}")
        if any(len(p) != 2 or p[0] == p[1] for p in pairs):
            bad("flip_pairs", "each pair must be two different bodypart names")
        if not 0 < self.scale_min <= self.scale_max:
            bad("scale_min", "need 0 < scale_min <= scale_max")
        for name in ("rotation_prob", "flip_prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "must be a probability in [0, 1]")
        for name in ("rotation_deg", "translate", "brightness", "contrast", "noise_std"):
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        if self.contrast >= 1:
            bad("contrast", "must be < 1 (the factor stays positive)")
        if self.aum_view not in AUM_VIEWS:
            bad("aum_view", f"choose one of {AUM_VIEWS}")

    def resolve(self, bodyparts: Sequence[str]) -> "AugmentConfig":
        """The config with `flip_perm` computed for these bodyparts (ValueError naming an
        unknown or repeated name)."""
        names = [str(b) for b in bodyparts]
        perm = list(range(len(names)))
        seen: set[str] = set()
        for a, b in self.flip_pairs:
            for n in (a, b):
                if n not in names:
                    raise ValueError(f"--flip-pairs: unknown bodypart {n!r}; the data has "
                                     f"{', '.join(names)}")
                if n in seen:
                    raise ValueError(f"--flip-pairs: bodypart {n!r} appears in two pairs")
                seen.add(n)
            i, j = names.index(a), names.index(b)
            perm[i], perm[j] = j, i
        return dataclasses.replace(self, flip_perm=tuple(perm) if self.flip_pairs else ())


def parse_flip_pairs(text: str) -> tuple:
    """'leftear:rightear,lefthand:righthand' -> (('leftear', 'rightear'), ...)."""
    pairs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise ValueError(f"--flip-pairs: expected left:right name pairs separated by "
                             f"commas, got {item!r}")
        pairs.append(tuple(parts))
    return tuple(pairs)


def draw_affine(key: jax.Array, batch: int, hw: tuple[int, int], cfg: AugmentConfig
                ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Per frame: (A float32 [B, 2, 2], t float32 [B, 2], flipped bool [B])."""
    h, w = hw
    # One uniform draw for all of a frame's geometric numbers (each jax.random call is a
    # Threefry loop of its own, with a fixed cost on the CPU).
    u = jax.random.uniform(key, (batch, 6))
    theta = (2.0 * u[:, 0] - 1.0) * (cfg.rotation_deg * math.pi / 180.0)
    theta = jnp.where(u[:, 1] < cfg.rotation_prob, theta, 0.0)
    scale = cfg.scale_min + (cfg.scale_max - cfg.scale_min) * u[:, 2]
    t = (2.0 * u[:, 3:5] - 1.0) * (cfg.translate * jnp.array([w, h], jnp.float32))
    if cfg.flip_perm:
        flipped = u[:, 5] < cfg.flip_prob
    else:
        flipped = jnp.zeros((batch,), bool)
    cos, sin = jnp.cos(theta) * scale, jnp.sin(theta) * scale
    fx = jnp.where(flipped, -1.0, 1.0)
    # A = s R(theta) diag(fx, 1)
    a = jnp.stack([jnp.stack([cos * fx, -sin], -1), jnp.stack([sin * fx, cos], -1)], -2)
    return a.astype(jnp.float32), t, flipped


def transform_keypoints(keypoints: jnp.ndarray, a: jnp.ndarray, t: jnp.ndarray,
                        flipped: jnp.ndarray, hw: tuple[int, int],
                        flip_perm: tuple = ()) -> jnp.ndarray:
    """keypoints [B, K, 2] -> their place in the augmented frames; outside the frame = NaN."""
    h, w = hw
    c = jnp.array([(w - 1) / 2.0, (h - 1) / 2.0], jnp.float32)
    out = jnp.einsum("bij,bkj->bki", a, keypoints - c) + c + t[:, None, :]
    if flip_perm:
        perm = jnp.asarray(flip_perm, jnp.int32)
        out = jnp.where(flipped[:, None, None], out[:, perm], out)
    x, y = out[..., 0], out[..., 1]
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    return jnp.where(inside[..., None], out, jnp.nan)


def content_box(images: jnp.ndarray) -> jnp.ndarray:
    """float32 [B, 4] (x0, y0, x1, y1), inclusive pixel bounds of each frame's non-zero
    pixels: the letterboxed content (an all-zero frame gets an empty box)."""
    nz = jnp.any(images > 0, axis=-1)                 # [B, H, W]
    rows, cols = jnp.any(nz, 2), jnp.any(nz, 1)       # [B, H], [B, W]
    h, w = rows.shape[1], cols.shape[1]
    y0 = jnp.argmax(rows, 1)
    y1 = h - 1 - jnp.argmax(rows[:, ::-1], 1)
    x0 = jnp.argmax(cols, 1)
    x1 = w - 1 - jnp.argmax(cols[:, ::-1], 1)
    box = jnp.stack([x0, y0, x1, y1], -1).astype(jnp.float32)
    empty = ~jnp.any(rows, 1)
    return jnp.where(empty[:, None], jnp.array([1.0, 1.0, 0.0, 0.0]), box)


def warp_images(images: jnp.ndarray, a: jnp.ndarray, t: jnp.ndarray,
                box: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Bilinear warp of images [B, H, W, C] (float) by p' = A (p - c) + c + t; returns
    (warped float32 [B, H, W, C], valid bool [B, H, W]: the output pixel's source lies in
    the frame's content box, `content_box(images)` unless given). Pixels outside it are 0
    (the padding value)."""
    b, h, w, ch = images.shape
    box = content_box(images) if box is None else box
    c = jnp.array([(w - 1) / 2.0, (h - 1) / 2.0], jnp.float32)
    inv = jnp.linalg.inv(a)                                              # [B, 2, 2]
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                          jnp.arange(w, dtype=jnp.float32), indexing="ij")
    grid = jnp.stack([xs, ys], -1).reshape(1, h * w, 2)                  # [1, HW, 2]
    src = jnp.einsum("bij,bpj->bpi", inv, grid - c - t[:, None, :]) + c  # [B, HW, 2]
    sx, sy = src[..., 0], src[..., 1]
    valid = ((sx >= box[:, None, 0] - 0.5) & (sx <= box[:, None, 2] + 0.5)
             & (sy >= box[:, None, 1] - 0.5) & (sy <= box[:, None, 3] + 0.5))
    x0, y0 = jnp.floor(sx), jnp.floor(sy)
    wx, wy = sx - x0, sy - y0
    flat = images.reshape(b, h * w, ch)
    out = jnp.zeros((b, h * w, ch), jnp.float32)
    for dx, dy, wt in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)),
                       (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
        xi, yi = x0 + dx, y0 + dy
        inb = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
        # Whole pixels (all channels) per index: a row gather, not one per channel.
        vals = jax.vmap(lambda f, i: f[i])(flat, idx)                    # [B, HW, C]
        out = out + jnp.where(inb, wt, 0.0)[..., None] * vals
    out = jnp.where(valid[..., None], out, 0.0)
    return out.reshape(b, h, w, ch), valid.reshape(b, h, w)


def box_mask(box: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
    """bool [B, H, W]: the pixels inside each frame's content box [B, 4]."""
    h, w = hw
    ys = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    return ((xs >= box[:, None, None, 0]) & (xs <= box[:, None, None, 2])
            & (ys >= box[:, None, None, 1]) & (ys <= box[:, None, None, 3]))


def blur(images: jnp.ndarray) -> jnp.ndarray:
    """3x3 binomial blur (separable [1, 2, 1] / 4) of [B, H, W, C], edge-replicated."""
    p = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    p = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    return 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]


def warp_photometric(key: jax.Array, images: jnp.ndarray, a: jnp.ndarray, t: jnp.ndarray,
                     cfg: AugmentConfig) -> jnp.ndarray:
    """Warp and photometric change of float frames [B, H, W, C] in [0, 1]; returns float32
    [B, H, W, C], with pixels outside the warped content box at 0 (padding).

    Blur acts on the source frame (the camera's blur, before any reframing) and contrast
    scales about the mean of the source's content, so everything after the warp is one
    elementwise pass. Frames go one at a time (`lax.map`): the loop's output is stored
    once. Measured on the CPU, XLA otherwise fused the whole pass into both readers of the
    augmented batch, the first convolution and its weight gradient's transposed copy,
    computing it twice and the second time as slow strided scalar code."""
    b, h, w, _ = images.shape
    k_frame, k_noise = jax.random.split(key)
    u = jax.random.uniform(k_frame, (b, 3))            # blur, contrast, brightness
    box = content_box(images)
    inside = box_mask(box, (h, w))[..., None].astype(jnp.float32)
    mean = (images * inside).sum((1, 2, 3)) / jnp.maximum(
        inside.sum((1, 2, 3)) * images.shape[-1], 1.0)                    # [B]
    # One noise value per pixel, shared by its channels (imgaug's AdditiveGaussianNoise
    # default, per_channel=False): a third of the random numbers on RGB frames.
    noise = (cfg.noise_std * jax.random.normal(k_noise, (b, h, w, 1)) if cfg.noise_std > 0
             else jnp.zeros((b, 1, 1, 1), jnp.float32))

    def one_frame(args):
        img, a1, t1, box1, u1, mean1, noise1 = args
        x = img[None]
        if cfg.blur_prob > 0:
            # A branch, not a select: a select blurred every frame and used a fifth of
            # them, which was half of the augmentation's time (RESULTS.md). (Under a vmap
            # over members it becomes a select again, as before.)
            x = jax.lax.cond(u1[0] < cfg.blur_prob, blur, lambda v: v, x)
        x, valid = warp_images(x, a1[None], t1[None], box1[None])
        x, valid = x[0], valid[0]
        if cfg.contrast > 0:
            x = (x - mean1) * (1.0 + cfg.contrast * (2.0 * u1[1] - 1.0)) + mean1
        if cfg.brightness > 0:
            x = x + cfg.brightness * (2.0 * u1[2] - 1.0)
        return jnp.clip(x + noise1, 0.0, 1.0) * valid[..., None]

    return jax.lax.map(one_frame, (images, a, t, box, u, mean, noise))


def augment_batch(key: jax.Array, images: jnp.ndarray, keypoints: jnp.ndarray,
                  cfg: AugmentConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(images [B, H, W, C] uint8 or float in [0, 1], keypoints [B, K, 2]) ->
    (augmented images float32 [B, H, W, C] in [0, 1], keypoints [B, K, 2], NaN where
    unlabeled or moved out of the frame)."""
    b, h, w, _ = images.shape
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    k_geo, k_photo = jax.random.split(key)
    a, t, flipped = draw_affine(k_geo, b, (h, w), cfg)
    out = warp_photometric(k_photo, x, a, t, cfg)
    kp = transform_keypoints(keypoints, a, t, flipped, (h, w), cfg.flip_perm)
    return out, kp
