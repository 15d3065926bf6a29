"""A synthetic top-down "animal" keypoint dataset with planted label noise.

Every frame shows a textured background (smooth colour blobs, a gradient and fine
noise), one articulated animal (body ellipse with a random position, heading and size;
a head on a bendable neck; ear flaps; four legs; a curling tail) and up to 16 keypoint
parts drawn as small high-contrast blobs (radius 2.5 px at 64 px, dark outline) whose
colour and shape identify the part, plus the difficulties the ensemble should find:

* **left/right**: `leftear`/`rightear` (and the paw pairs) look identical; which is
  which follows only from the animal's heading (snout and head vs tail). Convention: for
  a heading `(cos t, sin t)` in image coordinates (y down) the animal's left is
  `(sin t, -cos t)` -- a top-down view: an animal facing right has its left side up.
* **distractors**: `n_distractors` exact copies of a (random) part's appearance per
  frame, placed where they touch nothing else (spurious multi-peak correlates).
* **occluders**: each part is, with probability `occlusion_rate`, the target of a flat
  opaque rectangle (one uniform colour, drawn last, no noise) that covers its whole blob.
  A part is hidden -- label NaN -- when the pixel nearest to it is under an occluder.
  Boxes are cut back to spare other parts where possible; parts whose blobs overlap the
  target's are hidden with it, so the hidden fraction is about `occlusion_rate` for
  K <= 8 (0.105-0.13 at 0.1) and higher where parts crowd (K = 16: 0.12 at 64 px, 0.27
  in domain 1, 0.39 at 32 px).
* **planted label noise**: a frame is noisy with probability `noise_rate`; in a noisy
  frame either a visible left/right pair is swapped (when one exists, half the time) or
  one or two visible labels are moved to a random place in the image more than
  `0.15 * image_size` from the truth. `noise_mask` marks the corrupted labels; the image
  always shows the truth (`synthetic_dataset_with_truth` returns the clean labels).
* **domains**: `domain=0` is the default; `domain=1` has a dark bluish, busier, noisier
  background with specks, a light animal, smaller bodies and much more bent/curled poses;
  `domain >= 2` draws other fixed conditions from the domain number.

Coordinates follow `ensemble_jax.data.coords`: pixel centres at integers, x right, y
down. Frame `i` is rendered from its own generator `np.random.default_rng([seed, domain,
i])`, so it does not depend on `n_frames`; its scene (image and true keypoints) does not
depend on `noise_rate`, `occlusion_rate` (except the occluders) or `n_distractors`
(except the distractors). Rendering is batched over frames but elementwise, so frames do
not depend on their batch.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ensemble_jax.data.dataset import KeypointDataset

__all__ = [
    "PART_NAMES", "LEFT_RIGHT_PAIRS", "MAX_KEYPOINTS", "SyntheticFrame",
    "synthetic_frame", "synthetic_dataset", "synthetic_dataset_with_truth",
    "bodyparts_for", "save_contact_sheet",
]

MAX_KEYPOINTS = 16
PART_NAMES = (
    "snout", "leftear", "rightear", "tailbase", "tail1", "tail2",
    "leftforepaw", "rightforepaw", "lefthindpaw", "righthindpaw",
    "neck", "midback", "part12", "part13", "part14", "part15",
)
LEFT_RIGHT_PAIRS = ((1, 2), (6, 7), (8, 9))

# Per-part appearance: RGB colour and blob shape. Left/right partners are identical.
_PART_RGB = np.array([
    (235, 35, 35),    # snout: red
    (255, 225, 30),   # leftear: yellow
    (255, 225, 30),   # rightear: yellow (same as left)
    (60, 140, 255),   # tailbase: blue
    (30, 235, 235),   # tail1: cyan
    (185, 60, 255),   # tail2: purple
    (60, 230, 60),    # leftforepaw: green
    (60, 230, 60),    # rightforepaw
    (255, 140, 20),   # lefthindpaw: orange
    (255, 140, 20),   # righthindpaw
    (255, 255, 255),  # neck: white
    (255, 90, 200),   # midback: pink
    (150, 255, 150),  # part12: mint
    (20, 20, 20),     # part13: black
    (255, 190, 140),  # part14: peach
    (110, 90, 255),   # part15: indigo
], np.float32)
_PART_SHAPE = (
    "disc", "disc", "disc", "square", "ring", "diamond",
    "plus", "plus", "square", "square",
    "ring", "diamond", "disc", "ring", "diamond", "plus",
)
_HALO_RGB = {13: np.array([240, 240, 240], np.float32)}  # light halo for the black part
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def bodyparts_for(n_keypoints: int) -> list[str]:
    """The bodypart names of a K-keypoint synthetic dataset."""
    _check_k(n_keypoints)
    return list(PART_NAMES[:n_keypoints])


def _check_k(k: int) -> None:
    if not 1 <= int(k) <= MAX_KEYPOINTS:
        raise ValueError(f"n_keypoints must be in [1, {MAX_KEYPOINTS}], got {k}")


# ------------------------------------------------------------------------- domains
@dataclasses.dataclass(frozen=True)
class _Domain:
    bg_rgb: tuple[float, float, float]      # mean background colour
    bg_jitter: float                        # per-frame std of the base colour
    n_blobs: int                            # smooth background blobs
    blob_sigma: tuple[float, float]         # blob std, fraction of the image size
    blob_amp: float                         # blob colour amplitude
    gradient: float                         # linear gradient amplitude
    pixel_noise: float                      # fine noise std (grey levels)
    body_rgb: tuple[float, float, float]    # animal fur colour
    size: tuple[float, float]               # body half-length, fraction of image size
    width: tuple[float, float]              # body half-width / half-length
    head_std: float                         # head angle std (degrees)
    tail_std: float                         # tail curl std per segment (degrees)
    leg_std: float                          # leg swing std (degrees)
    specks: int                             # small dark/light specks of texture


_DOMAINS = {
    0: _Domain(bg_rgb=(150, 142, 112), bg_jitter=12, n_blobs=5, blob_sigma=(0.10, 0.30),
               blob_amp=26, gradient=22, pixel_noise=5, body_rgb=(88, 62, 44),
               size=(0.13, 0.17), width=(0.45, 0.58), head_std=18, tail_std=22,
               leg_std=22, specks=0),
    1: _Domain(bg_rgb=(72, 88, 112), bg_jitter=10, n_blobs=12, blob_sigma=(0.04, 0.12),
               blob_amp=34, gradient=30, pixel_noise=9, body_rgb=(168, 160, 150),
               size=(0.10, 0.13), width=(0.50, 0.68), head_std=38, tail_std=48,
               leg_std=40, specks=25),
}


def _domain_params(domain: int) -> _Domain:
    if domain in _DOMAINS:
        return _DOMAINS[domain]
    # Further domains: stable random conditions (depend on the domain only, not the seed).
    r = np.random.default_rng([7919, domain])
    bg = r.uniform(50, 190, 3)
    body = np.where(bg.mean() > 120, r.uniform(40, 100, 3), r.uniform(150, 210, 3))
    lo = r.uniform(0.085, 0.13)
    return _Domain(bg_rgb=tuple(bg), bg_jitter=float(r.uniform(8, 15)),
                   n_blobs=int(r.integers(3, 14)),
                   blob_sigma=(float(r.uniform(0.04, 0.1)), float(r.uniform(0.12, 0.3))),
                   blob_amp=float(r.uniform(20, 40)), gradient=float(r.uniform(15, 35)),
                   pixel_noise=float(r.uniform(4, 10)), body_rgb=tuple(body),
                   size=(lo, lo + 0.035), width=(0.45, 0.65),
                   head_std=float(r.uniform(15, 45)), tail_std=float(r.uniform(20, 55)),
                   leg_std=float(r.uniform(20, 45)), specks=int(r.integers(0, 30)))


# ------------------------------------------------------------------ random draws
# Each frame has its own generator, np.random.default_rng([seed, domain, index]), and
# makes the same four calls in the same order: a block of uniforms and a block of
# normals of fixed layout (background, animal, occluders, label noise, then background
# specks), the fine pixel noise, and finally the distractor draws. Everything but the
# last call has a fixed size, so the scene never depends on n_frames, noise_rate,
# occlusion_rate or n_distractors.
_N_DIS = 48            # candidate positions tried per distractor


def _n_specks(dp: _Domain, s: int) -> int:
    return dp.specks * s * s // 4096


def _n_uniform(dp: _Domain, s: int) -> int:
    return (1 + 3 * dp.n_blobs + 1) + 9 + 6 * MAX_KEYPOINTS + (4 + MAX_KEYPOINTS + 128) \
        + 3 * _n_specks(dp, s)


def _n_normal(dp: _Domain) -> int:
    return (3 + 4 + 4 * dp.n_blobs) + 14 + 3 * MAX_KEYPOINTS


class _Take:
    """Hands out consecutive columns of a [B, N] block of draws."""

    def __init__(self, arr: np.ndarray):
        self.arr, self.i = arr, 0

    def __call__(self, n: int | None = None) -> np.ndarray:
        j = self.i + (1 if n is None else n)
        out = self.arr[:, self.i] if n is None else self.arr[:, self.i:j]
        self.i = j
        return out


# ---------------------------------------------------------------- batched drawing
# Every drawing operation is elementwise on small per-frame windows, so a frame's pixels
# do not depend on which other frames share its batch.
def _clip01(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(x, 0.0, out=x), 1.0, out=x)


class _Window:
    """A P x P window per frame (top-left x0, y0 [B]) with pixel offsets from (cx, cy)."""

    def __init__(self, cx: np.ndarray, cy: np.ndarray, half: float, s: int):
        half = int(math.ceil(half))
        self.p = p = min(2 * half + 1, s)
        self.x0 = np.clip(np.rint(cx).astype(np.int64) - half, 0, s - p)
        self.y0 = np.clip(np.rint(cy).astype(np.int64) - half, 0, s - p)
        ar = np.arange(p)
        xi = (self.x0[:, None] + ar)[:, None, :]                 # [B, 1, P]
        yi = (self.y0[:, None] + ar)[:, :, None]                 # [B, P, 1]
        self.bi = np.arange(len(cx))
        self.dx = (xi - cx[:, None, None]).astype(np.float32)
        self.dy = (yi - cy[:, None, None]).astype(np.float32)

    def paint(self, canvas: np.ndarray, alpha: np.ndarray, rgb: np.ndarray,
              occupied: np.ndarray | None = None) -> None:
        """canvas[B, S, S, 3] <- alpha [B, P, P] of colour rgb ([B, 3] or [B, 3, P, P]);
        marks occupied [B, S, S] where alpha > 0.05."""
        if rgb.ndim == 2:
            rgb = rgb[:, :, None, None]
        view = sliding_window_view(canvas, (self.p, self.p), axis=(1, 2), writeable=True)
        reg = view[self.bi, self.y0, self.x0]                    # [B, 3, P, P]
        reg += alpha[:, None] * (rgb - reg)
        view[self.bi, self.y0, self.x0] = reg
        if occupied is not None:
            view = sliding_window_view(occupied, (self.p, self.p), axis=(1, 2), writeable=True)
            view[self.bi, self.y0, self.x0] |= alpha > 0.05


def _shape_alpha(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "disc":
        return _clip01(r + 0.5 - np.hypot(dx, dy))
    if shape == "square":
        return _clip01(0.85 * r + 0.5 - np.maximum(np.abs(dx), np.abs(dy)))
    if shape == "diamond":
        return _clip01(1.25 * r + 0.5 - (np.abs(dx) + np.abs(dy)))
    if shape == "ring":
        d = np.hypot(dx, dy)
        return _clip01(r + 0.5 - d) * np.clip(d - 0.4 * r + 0.5, 0.25, 1.0)
    if shape == "plus":
        t = 0.42 * r
        ax, ay = np.abs(dx), np.abs(dy)
        a1 = _clip01(r + 0.5 - ax) * _clip01(t + 0.5 - ay)
        a2 = _clip01(r + 0.5 - ay) * _clip01(t + 0.5 - ax)
        return np.maximum(a1, a2)
    raise ValueError(shape)


_SHAPES = ("disc", "square", "diamond", "ring", "plus")
_PART_SHAPE_ID = np.array([_SHAPES.index(sh) for sh in _PART_SHAPE])
_PART_HALO = np.zeros((MAX_KEYPOINTS, 3), np.float32)
_PART_HALO[13] = 240.0                              # a light halo for the black part


def _part_extent(r: float) -> float:
    """Every part blob (halo included) lies within +-extent of its centre on both axes."""
    return 1.25 * r + 1.75


def _part_extents(r: float, halo: bool = True) -> np.ndarray:
    """float [16]: the same per part (by shape), with or without the halo (the shape at
    radius r + 1)."""
    t = r + 1.0 if halo else r
    by_shape = {"disc": t + 0.5, "ring": t + 0.5, "plus": t + 0.5,
                "square": 0.85 * t + 0.5, "diamond": 1.25 * t + 0.5}
    return np.array([by_shape[sh] for sh in _PART_SHAPE])


def _draw_parts(canvas: np.ndarray, x: np.ndarray, y: np.ndarray, part: np.ndarray,
                r: float, occupied: np.ndarray, draw: np.ndarray | None = None) -> None:
    """Part blobs (a dark halo 1 px larger under the coloured shape) at (x, y) [B], the
    appearance of part index part [B]; frames with draw False are left alone."""
    s = canvas.shape[1]
    win = _Window(x, y, _part_extent(r) + 1.0, s)
    shapes = np.unique(part)
    halo = np.zeros(win.dx.shape[:1] + (win.p, win.p), np.float32)
    body = np.zeros_like(halo)
    for sid in np.unique(_PART_SHAPE_ID[shapes]):
        sel = _PART_SHAPE_ID[part] == sid
        name = _SHAPES[sid]
        dx, dy = win.dx[sel], win.dy[sel]
        halo[sel] = _shape_alpha(name, dx, dy, r + 1.0) * 0.8
        body[sel] = _shape_alpha(name, dx, dy, r)
    if draw is not None:
        halo *= draw[:, None, None]
        body *= draw[:, None, None]
    win.paint(canvas, halo, _PART_HALO[part], occupied)
    win.paint(canvas, body, _PART_RGB[part], occupied)


def _segment_alpha(win: _Window, p0: np.ndarray, p1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Coverage of a thick segment from p0 to p1 (complex, window-relative origin at the
    window's (cx, cy)); w = half-width [B]."""
    dx = (p1 - p0).real.astype(np.float32)[:, None, None]
    dy = (p1 - p0).imag.astype(np.float32)[:, None, None]
    ll = np.maximum(dx * dx + dy * dy, 1e-6)
    px = win.dx - p0.real.astype(np.float32)[:, None, None]
    py = win.dy - p0.imag.astype(np.float32)[:, None, None]
    t = _clip01((px * dx + py * dy) / ll)
    dist = np.hypot(px - t * dx, py - t * dy)
    return _clip01(w.astype(np.float32)[:, None, None] + 0.5 - dist)


def _ellipse_q(win: _Window, ux: np.ndarray, uy: np.ndarray, a: np.ndarray,
               b: np.ndarray) -> np.ndarray:
    """Normalised elliptical radius (1 on the outline) of an ellipse centred at the
    window's (cx, cy) with semi-axes a along (ux, uy) and b across."""
    fx, fy = (ux / a).astype(np.float32), (uy / a).astype(np.float32)
    lx, ly = (uy / b).astype(np.float32), (ux / b).astype(np.float32)
    f = win.dx * fx[:, None, None] + win.dy * fy[:, None, None]
    l = win.dx * lx[:, None, None] - win.dy * ly[:, None, None]
    return np.sqrt(f * f + l * l)


def _box_sums(occupied: np.ndarray) -> np.ndarray:
    """Summed-area table [B, S+1, S+1] of a bool mask [B, S, S]."""
    b, s, _ = occupied.shape
    sat = np.zeros((b, s + 1, s + 1), np.int32)
    np.cumsum(occupied, axis=1, dtype=np.int32, out=sat[:, 1:, 1:])
    np.cumsum(sat[:, 1:, 1:], axis=2, out=sat[:, 1:, 1:])
    return sat


def _background(tu: _Take, tn: _Take, s: int, dp: _Domain) -> np.ndarray:
    """float32 [B, s, s, 3]: base colour + linear gradient + smooth colour blobs."""
    nb = dp.n_blobs
    base = np.asarray(dp.bg_rgb, np.float32) + (tn(3) * dp.bg_jitter).astype(np.float32)
    grad_rgb = ((tn() [:, None] + 0.3 * tn(3)) * dp.gradient).astype(np.float32)
    col = ((tn(nb)[:, :, None] + 0.35 * tn(3 * nb).reshape(-1, nb, 3)) * dp.blob_amp)
    col = col.astype(np.float32)
    ang = 2 * np.pi * tu()
    cx = (tu(nb) * 1.2 - 0.1) * s
    cy = (tu(nb) * 1.2 - 0.1) * s
    sig = (dp.blob_sigma[0] + tu(nb) * (dp.blob_sigma[1] - dp.blob_sigma[0])) * s
    ax = np.arange(s, dtype=np.float64)
    ex = np.exp(-0.5 * ((ax - cx[..., None]) / sig[..., None]) ** 2).astype(np.float32)
    ey = np.exp(-0.5 * ((ax - cy[..., None]) / sig[..., None]) ** 2).astype(np.float32)
    g = ((np.cos(ang) / s)[:, None] * (ax - s / 2)).astype(np.float32)     # [B, s] along x
    h = ((np.sin(ang) / s)[:, None] * (ax - s / 2)).astype(np.float32)     # along y
    # the sum of colour blobs, per channel: ey^T diag(col_c) ex
    blobs = ey.transpose(0, 2, 1)[:, None] @ (col.transpose(0, 2, 1)[..., None] * ex[:, None])
    img = np.ascontiguousarray(blobs.transpose(0, 2, 3, 1))          # [B, y, x, c]
    img += (g[:, None, :] + h[:, :, None])[..., None] * grad_rgb[:, None, None, :]
    img += base[:, None, None, :]
    return img


# ------------------------------------------------------------------- the renderer
@dataclasses.dataclass(frozen=True)
class SyntheticFrame:
    """Everything known about one rendered frame (for tests and diagnostics).

    image            uint8 [S, S, C]
    true_keypoints   float32 [K, 2]  where each part really is (also when hidden)
    visible          bool [K]        False = hidden by an occluder (label NaN)
    clean_labels     float32 [K, 2]  true_keypoints with hidden parts NaN
    labels           float32 [K, 2]  clean_labels after planted noise
    noise_mask       bool [K]        which labels were corrupted
    noise_kind       str             '', 'swap' or 'displace'
    distractor_xy    float32 [D, 2]; distractor_part int [D]: whose appearance it copies
    occluder_boxes   int [M, 4]      inclusive pixel bounds (x0, y0, x1, y1), drawn in order
    occluder_colours uint8 [M, C]
    heading          float           radians in image coordinates (0 = facing +x)
    body_length      float           body half-length in pixels
    part_radius      float           blob radius in pixels
    """
    image: np.ndarray
    true_keypoints: np.ndarray
    visible: np.ndarray
    clean_labels: np.ndarray
    labels: np.ndarray
    noise_mask: np.ndarray
    noise_kind: str
    distractor_xy: np.ndarray
    distractor_part: np.ndarray
    occluder_boxes: np.ndarray
    occluder_colours: np.ndarray
    heading: float
    body_length: float
    part_radius: float


def _part_radius(s: int) -> float:
    return max(1.25, 2.5 * s / 64.0)


def _render(indices: range, s: int, k: int, noise_rate: float, seed: int,
            n_distractors: int, occlusion_rate: float, domain: int, channels: int,
            dp: _Domain) -> list[SyntheticFrame]:
    """Renders the frames `indices` (one batch)."""
    nf = len(indices)
    nu, nn = _n_uniform(dp, s), _n_normal(dp)
    U = np.empty((nf, nu))
    N = np.empty((nf, nn))
    fine = np.empty((nf, s, s, 3), np.float32)
    D = np.empty((nf, n_distractors, 1 + 2 * _N_DIS))
    for row, i in enumerate(indices):
        rng = np.random.default_rng([seed, domain, i])
        rng.random(out=U[row])
        rng.standard_normal(out=N[row])
        rng.random(out=fine[row], dtype=np.float32)
        if n_distractors:
            rng.random(out=D[row])
    tu, tn = _Take(U), _Take(N)
    r = _part_radius(s)
    ext = _part_extent(r)

    # ---- background
    img = _background(tu, tn, s, dp)
    gain = (0.9 + 0.2 * tu()).astype(np.float32)

    # ---- the animal, in a local frame: complex z = forward + 1j * left
    a = (dp.size[0] + tu() * (dp.size[1] - dp.size[0])) * s
    b = a * (dp.width[0] + tu() * (dp.width[1] - dp.width[0]))
    heading = 2 * np.pi * tu()
    leg_len = 0.4 + 0.2 * tu(4)
    cxy = tu(2)
    head_ang = np.radians(np.clip(tn(), -2.5, 2.5) * dp.head_std)
    tail0 = np.radians(tn() * dp.tail_std)
    curl = np.radians(tn() * dp.tail_std)
    tail_wig = np.radians(tn(3) * 10.0)
    legs = np.radians(tn(4) * dp.leg_std)
    fur = (np.asarray(dp.body_rgb) + tn(3) * 10.0 + tn()[:, None] * 12.0).astype(np.float32)

    h = np.exp(1j * head_ang)
    neck = 0.8 * a
    snout = neck + a * h
    ear_base = neck + 0.32 * a * h
    lear = ear_base + 0.42 * a * (1j * h)
    rear = ear_base - 0.42 * a * (1j * h)
    tailbase = -0.9 * a + 0j
    seg = 0.7 * a
    d = -np.exp(1j * (tail0 + tail_wig[:, 0]))
    t1 = tailbase + seg * d
    d = d * np.exp(1j * (curl + tail_wig[:, 1]))
    t2 = t1 + seg * d
    d = d * np.exp(1j * (curl + tail_wig[:, 2]))
    t3 = t2 + 0.6 * seg * d
    shoulders = np.stack([0.45 * a + 0.7j * b, 0.45 * a - 0.7j * b,
                          -0.5 * a + 0.7j * b, -0.5 * a - 0.7j * b], 1)
    # left legs point along +1j, right legs along -1j; a positive swing is forward
    out = np.where(np.arange(4) % 2 == 0, 1j * np.exp(-1j * legs), -1j * np.exp(1j * legs))
    paws = shoulders + (leg_len * a[:, None] + 0.25 * b[:, None]) * out
    zero = np.zeros_like(snout)
    parts = np.stack([snout, lear, rear, tailbase, t1, t2, paws[:, 0], paws[:, 1], paws[:, 2],
                      paws[:, 3], neck + zero, zero, -0.45 * a + 0.75j * b, 0.35 * a - 0.75j * b,
                      -0.45 * a - 0.75j * b, 0.35 * a + 0.75j * b], 1)
    head_c, head_a, head_b = neck + 0.5 * a * h, 0.62 * a, 0.42 * a
    ear_r = 0.3 * a

    # extent of everything drawn, to keep the animal (and its blobs) inside a margin
    ring = np.exp(1j * np.linspace(0, 2 * np.pi, 24, endpoint=False))
    outline = np.concatenate([
        a[:, None] * ring.real + 1j * b[:, None] * ring.imag,
        head_c[:, None] + (head_a[:, None] * ring.real + 1j * head_b[:, None] * ring.imag) * h[:, None],
        np.stack([t2, t3], 1), parts,
        lear[:, None] + ear_r[:, None] * ring, rear[:, None] + ear_r[:, None] * ring], 1)
    rot = np.exp(1j * heading)[:, None]
    rel = np.conj(outline) * rot          # local (forward, left) -> image offsets
    margin = ext + 1.0
    lo = np.stack([rel.real.min(1), rel.imag.min(1)], 1) - ext
    hi = np.stack([rel.real.max(1), rel.imag.max(1)], 1) + ext
    avail = (s - 1) - 2 * margin
    scale = np.minimum(1.0, avail / (hi - lo).max(1))
    lo, hi = lo * scale[:, None], hi * scale[:, None]
    centre = margin - lo + cxy * np.maximum(0.0, avail - (hi - lo))
    c0 = centre[:, 0] + 1j * centre[:, 1]

    def world(z: np.ndarray) -> np.ndarray:
        """Local positions [B, ...] -> complex image positions x + 1j y."""
        sh = (-1,) + (1,) * (np.ndim(z) - 1)
        return c0.reshape(sh) + scale.reshape(sh) * np.conj(z) * np.exp(1j * heading).reshape(sh)

    kpw = world(parts)                                     # [B, 16]
    kp_all = np.stack([kpw.real, kpw.imag], -1).astype(np.float32)
    kp = kp_all[:, :k]
    a_s = a * scale

    # ---- draw the animal
    occupied = np.zeros((nf, s, s), bool)
    dark = fur * 0.75
    seg0 = world(np.concatenate([shoulders, np.stack([tailbase + zero, t1, t2], 1)], 1))
    seg1 = world(np.concatenate([paws, np.stack([t1, t2, t3], 1)], 1))
    seg_w = np.concatenate([np.repeat(0.2 * a[:, None], 4, 1),
                            np.stack([0.24 * a, 0.18 * a, 0.12 * a], 1)], 1) * scale[:, None]
    for j in range(seg0.shape[1]):
        mid = 0.5 * (seg0[:, j] + seg1[:, j])
        half = float((np.abs(seg1[:, j] - seg0[:, j]) / 2 + seg_w[:, j]).max()) + 1.5
        win = _Window(mid.real, mid.imag, half, s)
        alpha = _segment_alpha(win, seg0[:, j] - mid, seg1[:, j] - mid, seg_w[:, j])
        win.paint(img, alpha, dark, occupied)
    ew = world(np.stack([lear, rear], 1))
    for j in range(2):
        win = _Window(ew[:, j].real, ew[:, j].imag, float((ear_r * scale).max()) + 1.5, s)
        alpha = _clip01((ear_r * scale).astype(np.float32)[:, None, None] + 0.5
                        - np.hypot(win.dx, win.dy))
        win.paint(img, alpha, dark, occupied)
    u = np.exp(1j * heading)
    win = _Window(c0.real, c0.imag, float(a_s.max()) + 1.5, s)
    q = _ellipse_q(win, u.real, u.imag, a_s, b * scale)
    alpha = _clip01((1 - q) * (b * scale).astype(np.float32)[:, None, None] + 0.5)
    shade = 0.72 + 0.38 * _clip01(1 - q * q)
    win.paint(img, alpha, fur[:, :, None, None] * shade[:, None], occupied)
    hw = world(head_c)
    hu = np.conj(h) * u                                    # head direction in the image
    win = _Window(hw.real, hw.imag, float((head_a * scale).max()) + 1.5, s)
    q = _ellipse_q(win, hu.real, hu.imag, head_a * scale, head_b * scale)
    alpha = _clip01((1 - q) * (head_b * scale).astype(np.float32)[:, None, None] + 0.5)
    shade = 0.8 + 0.35 * _clip01(1 - q * q)
    win.paint(img, alpha, fur[:, :, None, None] * shade[:, None], occupied)
    for j in range(k):
        _draw_parts(img, kp[:, j, 0], kp[:, j, 1], np.full(nf, j), r, occupied)

    # ---- distractors: copies of a part's appearance where nothing else is nearby
    dis_xy = np.full((nf, n_distractors, 2), np.nan, np.float32)
    dis_part = np.full((nf, n_distractors), -1, np.int64)
    gap = int(math.ceil(ext + 2.0))
    for j in range(n_distractors):
        part = np.minimum((D[:, j, 0] * k).astype(np.int64), k - 1)
        cand = margin + D[:, j, 1:].reshape(nf, _N_DIS, 2) * (s - 1 - 2 * margin)
        ci = np.rint(cand).astype(np.int64)
        x0, y0 = np.clip(ci - gap, 0, s).transpose(2, 0, 1)
        x1, y1 = np.clip(ci + gap + 1, 0, s).transpose(2, 0, 1)
        sat = _box_sums(occupied)
        bi = np.arange(nf)[:, None]
        count = sat[bi, y1, x1] - sat[bi, y0, x1] - sat[bi, y1, x0] + sat[bi, y0, x0]
        ok = count == 0
        first = ok.argmax(1)
        placed = ok.any(1)
        xy = cand[np.arange(nf), first].astype(np.float32)
        _draw_parts(img, xy[:, 0], xy[:, 1], part, r, occupied, draw=placed)
        dis_xy[placed, j] = xy[placed]
        dis_part[placed, j] = part[placed]

    # ---- lighting, fine noise, quantisation
    img *= gain[:, None, None, None]
    fine -= np.float32(0.5)
    fine *= np.float32(dp.pixel_noise * math.sqrt(12.0))
    img += fine
    occ_u, occ_half, occ_off = tu(MAX_KEYPOINTS), tu(2 * MAX_KEYPOINTS), tu(2 * MAX_KEYPOINTS)
    occ_grey = 35 + 185 * tu(MAX_KEYPOINTS)
    occ_tint = 14 * tn(3 * MAX_KEYPOINTS).reshape(nf, MAX_KEYPOINTS, 3)
    nz_u, nz_two, nz_swap, nz_pick = tu(), tu(), tu(), tu()
    nz_order = np.argsort(tu(MAX_KEYPOINTS), axis=1, kind="stable")
    nz_xy = tu(128).reshape(nf, 64, 2) * (s - 1)
    n_sp = _n_specks(dp, s)
    sx, sy = (tu(n_sp) * s).astype(np.int64), (tu(n_sp) * s).astype(np.int64)
    sign = np.where(tu(n_sp) < 0.5, -40.0, 40.0).astype(np.float32)
    assert tu.i == nu and tn.i == nn, (tu.i, nu, tn.i, nn)
    if n_sp:    # texture specks are part of the background: under the animal
        spk = np.zeros((nf, s, s), np.float32)
        spk[np.arange(nf)[:, None], sy, sx] = sign
        img += (spk * ~occupied)[..., None]
    if channels == 1:
        img = (img[..., 0:1] * _LUMA[0] + img[..., 1:2] * _LUMA[1]) + img[..., 2:3] * _LUMA[2]
    images = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # ---- occluders (flat opaque rectangles, drawn last) and planted label noise
    exts = np.stack([_part_extents(r)[:k], _part_extents(r, halo=False)[:k]])
    occ_half = occ_half.reshape(nf, MAX_KEYPOINTS, 2) * (0.02 * s) + 0.3
    occ_off = occ_off.reshape(nf, MAX_KEYPOINTS, 2) * 2 - 1
    frames = []
    for row in range(nf):
        frames.append(_finish(
            images[row], kp[row], s, k, exts, channels, occlusion_rate, noise_rate,
            occ_u[row], occ_half[row], occ_off[row], occ_grey[row], occ_tint[row],
            nz_u[row], nz_two[row], nz_swap[row], nz_pick[row], nz_order[row], nz_xy[row],
            dis_xy[row], dis_part[row], float(heading[row]), float(a_s[row]), r))
    return frames


def _occluder_box(kp: np.ndarray, target: int, exts: np.ndarray, lo: np.ndarray,
                  hi: np.ndarray) -> tuple[float, float, float, float]:
    """An occluder box [x0, y0, x1, y1] (continuous; pixels with centres inside are
    covered) from the proposal lo..hi, which covers the target part's whole blob.
    `exts` [2, K]: each part's extent with and without its dark halo. Where the box
    covers the centre of another part it is cut back to leave that part out if it can
    without uncovering the coloured shape of what it must hide; a part too close to the
    target for that is covered whole (the box grows); a part too close only to such a
    neighbour stays under the box (hidden, though a sliver of it may show)."""
    box = [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]

    def core_of(i):
        e = float(exts[1, i])
        return [float(kp[i, 0]) - e, float(kp[i, 1]) - e, float(kp[i, 0]) + e, float(kp[i, 1]) + e]

    def cuts(px, py, core):
        """Feasible cuts leaving (px, py) out but keeping core, as (kept area, side, value)."""
        out = []
        for side, value, ok in ((0, px + 0.51, px + 0.51 <= core[0]),
                                (2, px - 0.51, px - 0.51 >= core[2]),
                                (1, py + 0.51, py + 0.51 <= core[1]),
                                (3, py - 0.51, py - 0.51 >= core[3])):
            if ok:
                trial = list(box)
                trial[side] = value
                out.append(((trial[2] - trial[0]) * (trial[3] - trial[1]), side, value))
        return out

    target_core = core_of(target)
    core = list(target_core)
    covered = np.zeros(len(kp), bool)
    covered[target] = True
    for _ in range(4 * len(kp)):
        x, y = kp[:, 0], kp[:, 1]
        inside = ((x >= box[0] - 0.5) & (x <= box[2] + 0.5)
                  & (y >= box[1] - 0.5) & (y <= box[3] + 0.5) & ~covered)
        if not inside.any():
            break
        i = int(np.flatnonzero(inside)[0])
        px, py = float(x[i]), float(y[i])
        options = cuts(px, py, core)
        if options:
            _, side, value = max(options)
            box[side] = value
        elif not cuts(px, py, target_core):       # overlaps the target: cover it whole
            covered[i] = True
            e = float(exts[0, i])
            ci = [px - e, py - e, px + e, py + e]
            core = [min(core[0], ci[0]), min(core[1], ci[1]),
                    max(core[2], ci[2]), max(core[3], ci[3])]
            box = [min(box[0], core[0]), min(box[1], core[1]),
                   max(box[2], core[2]), max(box[3], core[3])]
        else:                                     # overlaps a covered neighbour only
            covered[i] = True
    return box[0], box[1], box[2], box[3]


def _finish(image, kp, s, k, exts, channels, occlusion_rate, noise_rate, occ_u, occ_half,
            occ_off, occ_grey, occ_tint, nz_u, nz_two, nz_swap, nz_pick, nz_order, nz_xy,
            dis_xy, dis_part, heading, body_length, r) -> SyntheticFrame:
    """Per frame: occluders, visibility and label noise."""
    boxes, colours = [], []
    for j in np.flatnonzero(occ_u[:k] < occlusion_rate):
        half = occ_half[j] + exts[0, j]
        c = kp[j] + occ_off[j] * (half - exts[0, j])
        bx0, by0, bx1, by1 = _occluder_box(kp, j, exts, c - half, c + half)
        ox0, oy0 = max(int(math.ceil(bx0)), 0), max(int(math.ceil(by0)), 0)
        ox1, oy1 = min(int(math.floor(bx1)), s - 1), min(int(math.floor(by1)), s - 1)
        rgb = np.clip(np.rint(occ_grey[j] + occ_tint[j]), 0, 255)
        col = (np.rint(rgb @ _LUMA.astype(np.float64))[None] if channels == 1 else rgb)
        col = col.astype(np.uint8)
        image[oy0:oy1 + 1, ox0:ox1 + 1] = col
        boxes.append((ox0, oy0, ox1, oy1))
        colours.append(col)
    boxes_a = np.array(boxes, np.int64).reshape(-1, 4)
    # a part is hidden when the pixel nearest to it is under an occluder
    px, py = np.rint(kp[:, 0:1]), np.rint(kp[:, 1:2])
    hidden = ((px >= boxes_a[:, 0]) & (px <= boxes_a[:, 2])
              & (py >= boxes_a[:, 1]) & (py <= boxes_a[:, 3])).any(1)
    visible = ~hidden
    clean = np.where(visible[:, None], kp, np.nan).astype(np.float32)

    labels = clean.copy()
    noise = np.zeros(k, bool)
    kind = ""
    if nz_u < noise_rate and visible.any():
        pairs = [p for p in LEFT_RIGHT_PAIRS if p[1] < k and visible[p[0]] and visible[p[1]]]
        if pairs and nz_swap < 0.5:
            i0, i1 = pairs[min(int(nz_pick * len(pairs)), len(pairs) - 1)]
            labels[[i0, i1]] = clean[[i1, i0]]
            noise[[i0, i1]] = True
            kind = "swap"
        else:
            vis = [j for j in nz_order if j < k and visible[j]]
            for j in vis[:2 if nz_two < 0.5 else 1]:
                far = np.hypot(*(nz_xy - clean[j]).T) > 0.15 * s + 0.5
                if far.any():
                    labels[j] = nz_xy[np.argmax(far)]
                    noise[j] = True
                    kind = "displace"
    placed = dis_part >= 0
    return SyntheticFrame(
        image=image, true_keypoints=kp.copy(), visible=visible, clean_labels=clean,
        labels=labels, noise_mask=noise, noise_kind=kind,
        distractor_xy=dis_xy[placed], distractor_part=dis_part[placed],
        occluder_boxes=boxes_a,
        occluder_colours=np.array(colours, np.uint8).reshape(-1, channels),
        heading=heading, body_length=body_length, part_radius=r)


# ------------------------------------------------------------------------ the API
_BATCH = 128


def _check_args(n_frames, image_size, n_keypoints, noise_rate, seed, n_distractors,
                occlusion_rate, domain, channels) -> None:
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    _check_k(n_keypoints)
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate}")
    if not 0.0 <= occlusion_rate <= 1.0:
        raise ValueError(f"occlusion_rate must be in [0, 1], got {occlusion_rate}")
    if seed < 0 or domain < 0:
        raise ValueError(f"seed and domain must be >= 0, got seed={seed}, domain={domain}")
    if n_distractors < 0:
        raise ValueError(f"n_distractors must be >= 0, got {n_distractors}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


def synthetic_frame(index: int, image_size: int = 64, n_keypoints: int = 4,
                    noise_rate: float = 0.0, seed: int = 0, *, n_distractors: int = 2,
                    occlusion_rate: float = 0.1, domain: int = 0,
                    channels: int = 3) -> SyntheticFrame:
    """Frame `index` of `synthetic_dataset(...)` with all of its ground truth."""
    _check_args(index, image_size, n_keypoints, noise_rate, seed, n_distractors,
                occlusion_rate, domain, channels)
    return _render(range(int(index), int(index) + 1), int(image_size), int(n_keypoints),
                   float(noise_rate), int(seed), int(n_distractors), float(occlusion_rate),
                   int(domain), int(channels), _domain_params(int(domain)))[0]


def synthetic_dataset_with_truth(
        n_frames: int, image_size: int = 64, n_keypoints: int = 4, noise_rate: float = 0.0,
        seed: int = 0, *, n_distractors: int = 2, occlusion_rate: float = 0.1,
        domain: int = 0, channels: int = 3,
        hidden_truth: bool = False) -> tuple[KeypointDataset, np.ndarray]:
    """`(dataset, clean_keypoints float32 [n, K, 2])`.

    `dataset.keypoints` are the (possibly corrupted) labels, NaN where a part is hidden by
    an occluder; `dataset.noise_mask[i, k]` marks the corrupted labels. `clean_keypoints`
    are the labels without planted noise (NaN where hidden, so `keypoints == clean`
    wherever `noise_mask` is False); with `hidden_truth=True` they also hold the true
    positions of hidden parts.
    """
    _check_args(n_frames, image_size, n_keypoints, noise_rate, seed, n_distractors,
                occlusion_rate, domain, channels)
    s, k, n = int(image_size), int(n_keypoints), int(n_frames)
    dp = _domain_params(int(domain))
    images = np.empty((n, s, s, channels), np.uint8)
    labels = np.empty((n, k, 2), np.float32)
    clean = np.empty((n, k, 2), np.float32)
    noise = np.zeros((n, k), bool)
    for start in range(0, n, _BATCH):
        idx = range(start, min(n, start + _BATCH))
        frames = _render(idx, s, k, float(noise_rate), int(seed), int(n_distractors),
                         float(occlusion_rate), int(domain), int(channels), dp)
        for i, f in zip(idx, frames):
            images[i] = f.image
            labels[i] = f.labels
            clean[i] = f.true_keypoints if hidden_truth else f.clean_labels
            noise[i] = f.noise_mask
    ds = KeypointDataset(
        images=images, keypoints=labels, bodyparts=bodyparts_for(k),
        frame_ids=[f"synthetic/d{domain}/frame_{i:05d}" for i in range(n)],
        noise_mask=noise,
        source=f"synthetic(seed={seed}, domain={domain}, noise_rate={noise_rate})")
    return ds, clean


def synthetic_dataset(n_frames: int, image_size: int = 64, n_keypoints: int = 4,
                      noise_rate: float = 0.0, seed: int = 0, *, n_distractors: int = 2,
                      occlusion_rate: float = 0.1, domain: int = 0,
                      channels: int = 3) -> KeypointDataset:
    """A synthetic animal-pose dataset; see the module docstring for the scene."""
    ds, _ = synthetic_dataset_with_truth(
        n_frames, image_size, n_keypoints, noise_rate, seed, n_distractors=n_distractors,
        occlusion_rate=occlusion_rate, domain=domain, channels=channels)
    return ds


def save_contact_sheet(dataset: KeypointDataset, path: str, n: int = 16,
                       clean_keypoints: np.ndarray | None = None) -> None:
    """Saves the first `n` frames in a grid with their labels (matplotlib, Agg): a '+'
    per label, red for corrupted labels (`noise_mask`), and -- when `clean_keypoints`
    are given -- a white 'x' at the true position of unlabeled parts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, dataset.n_frames)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    colours = plt.cm.tab20(np.arange(dataset.n_keypoints) % 20)
    noise = dataset.noise_mask
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(dataset.images[i].squeeze(), cmap="gray", vmin=0, vmax=255)
        for j, name in enumerate(dataset.bodyparts):
            x, y = dataset.keypoints[i, j]
            if np.isnan(x):
                if clean_keypoints is not None and not np.isnan(clean_keypoints[i, j, 0]):
                    ax.plot(*clean_keypoints[i, j], "x", color="w", ms=6)
                continue
            bad = noise is not None and noise[i, j]
            ax.plot(x, y, "+", color="r" if bad else colours[j], ms=9, mew=1.5)
            ax.text(x + 1.5, y - 1.5, name, fontsize=6, color="r" if bad else "w")
        ax.set_title(dataset.frame_ids[i], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
