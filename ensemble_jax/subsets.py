"""Subset plans: which training frames each ensemble member sees.

Every plan returns masks `[members, n_frames]`: bool for in/out plans, int counts for the
bootstrap (a frame drawn twice is sampled twice as often). Every plan is a pure function of
its arguments and seed, and the masks are saved with each run (`subsets.npy`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class SubsetError(ValueError):
    """A plan that cannot be drawn as asked; the message names the argument."""


def _check_n(n_frames: int) -> None:
    if int(n_frames) != n_frames or n_frames < 1:
        raise SubsetError(f"n_frames must be a positive integer, got {n_frames!r}")


def _check_fraction(fraction: float, name: str = "fraction") -> None:
    if not (0.0 < float(fraction) <= 1.0):
        raise SubsetError(f"{name} must be in (0, 1], got {fraction!r}")


def _subset_size(n_frames: int, fraction: float) -> int:
    return max(1, int(round(fraction * n_frames)))


def _n_subsets(n: int, k: int) -> float:
    from math import comb
    return float(comb(n, k))


def random_subsets(n_frames: int, n_members: int, fraction: float, seed: int = 0, *,
                   allow_duplicates: bool = False) -> np.ndarray:
    """`n_members` random subsets of `round(fraction * n_frames)` frames each.

    Members are distinct subsets unless `allow_duplicates=True`; asking for more members
    than there are distinct subsets of that size is refused.
    """
    _check_n(n_frames)
    _check_fraction(fraction)
    if n_members < 1:
        raise SubsetError(f"n_members must be >= 1, got {n_members}")
    size = _subset_size(n_frames, fraction)
    if not allow_duplicates and n_members > _n_subsets(n_frames, size):
        raise SubsetError(
            f"n_members={n_members} distinct subsets of {size} out of {n_frames} frames do not "
            f"exist (only {int(_n_subsets(n_frames, size))}); lower n_members or pass "
            f"allow_duplicates=True (sweep: --allow-duplicates)")
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_members, n_frames), bool)
    seen: set[bytes] = set()
    m = 0
    while m < n_members:
        row = np.zeros(n_frames, bool)
        row[rng.choice(n_frames, size, replace=False)] = True
        key = np.packbits(row).tobytes()
        if allow_duplicates or key not in seen:
            seen.add(key)
            masks[m] = row
            m += 1
    return masks


def nested_subsets(n_frames: int, fractions: Sequence[float], n_seeds: int, seed: int = 0
                   ) -> np.ndarray:
    """Nested subsets: for each seed one random order of the frames, and each fraction takes
    a prefix of it, so the 10% subset lies inside the 30% subset and so on.

    Returns bool `[n_seeds * len(fractions), n_frames]`, seed-major: member
    `s * len(fractions) + f` is seed s at fraction f (see `nested_layout`).
    """
    _check_n(n_frames)
    fractions = [float(f) for f in fractions]
    if not fractions:
        raise SubsetError("fractions must not be empty")
    for f in fractions:
        _check_fraction(f, "fractions")
    if sorted(fractions) != fractions or len(set(fractions)) != len(fractions):
        raise SubsetError(f"fractions must be strictly increasing, got {fractions}")
    if n_seeds < 1:
        raise SubsetError(f"n_seeds must be >= 1, got {n_seeds}")
    masks = np.zeros((n_seeds * len(fractions), n_frames), bool)
    for s in range(n_seeds):
        order = np.random.default_rng([seed, s]).permutation(n_frames)
        for j, f in enumerate(fractions):
            masks[s * len(fractions) + j, order[:_subset_size(n_frames, f)]] = True
    return masks


def nested_layout(fractions: Sequence[float], n_seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """(seed_of_member [M], fraction_of_member [M]) for `nested_subsets`' member order."""
    fr = np.asarray(fractions, np.float64)
    return np.repeat(np.arange(n_seeds), len(fr)), np.tile(fr, n_seeds)


def banzhaf_subsets(n_frames: int, n_members: int, seed: int = 0) -> np.ndarray:
    """Banzhaf plan (Wang & Jia 2023, maximum sample reuse): every frame is in every
    member's subset independently with probability 1/2 (an empty draw is redrawn). bool
    `[n_members, n_frames]`. The difference of means over members then estimates each
    frame's Banzhaf value, with every member used for every frame."""
    _check_n(n_frames)
    if n_members < 1:
        raise SubsetError(f"n_members must be >= 1, got {n_members}")
    rng = np.random.default_rng(seed)
    masks = rng.random((n_members, n_frames)) < 0.5
    for m in np.flatnonzero(~masks.any(1)):
        while not masks[m].any():
            masks[m] = rng.random(n_frames) < 0.5
    return masks


def bootstrap_subsets(n_frames: int, n_members: int, seed: int = 0, *,
                      fraction: float = 1.0) -> np.ndarray:
    """Bootstrap resamples: int32 counts `[n_members, n_frames]`, each row summing to
    `round(fraction * n_frames)` draws with replacement."""
    _check_n(n_frames)
    _check_fraction(fraction)
    if n_members < 1:
        raise SubsetError(f"n_members must be >= 1, got {n_members}")
    rng = np.random.default_rng(seed)
    size = _subset_size(n_frames, fraction)
    counts = np.zeros((n_members, n_frames), np.int32)
    for m in range(n_members):
        np.add.at(counts[m], rng.integers(0, n_frames, size), 1)
    return counts


def kfold_subsets(n_frames: int, n_folds: int, seed: int = 0) -> np.ndarray:
    """K-fold cross-validation: member k trains on every fold but fold k. bool [K, n]."""
    _check_n(n_frames)
    if not 2 <= n_folds <= n_frames:
        raise SubsetError(f"n_folds must be in [2, n_frames={n_frames}], got {n_folds}")
    order = np.random.default_rng(seed).permutation(n_frames)
    fold = np.empty(n_frames, np.int64)
    fold[order] = np.arange(n_frames) % n_folds
    return fold[None, :] != np.arange(n_folds)[:, None]


def leave_one_out_subsets(n_frames: int) -> np.ndarray:
    """Member i trains on every frame but frame i. bool [n, n]."""
    _check_n(n_frames)
    if n_frames < 2:
        raise SubsetError("leave_one_out_subsets needs at least 2 frames")
    return ~np.eye(n_frames, dtype=bool)


def validation_subsets(plan: str, n_frames: int, n_members: int, seed: int = 0, *,
                       fractions: Sequence[float] = (), fraction: float = 0.5
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Held-out members for checking attributions (LDS): `n_members` fresh subsets from the
    same distribution as `plan`, from a seed stream the plan itself never uses. nested: new
    seeds, the same fractions, cycled (member v has fractions[v % F]). Returns (masks
    `[n_members, n_frames]` (bool, or int counts for bootstrap), fraction of each `[V]`)."""
    if n_members < 1:
        raise SubsetError(f"validation members must be >= 1, got {n_members}")
    vseed = int(seed) + 1_000_003
    if plan == "nested":
        F = len(fractions)
        m = nested_subsets(n_frames, fractions, -(-n_members // F), vseed)[:n_members]
        return m, np.tile(np.asarray(fractions, np.float64), -(-n_members // F))[:n_members]
    if plan == "random":
        return (random_subsets(n_frames, n_members, fraction, vseed, allow_duplicates=True),
                np.full(n_members, float(fraction)))
    if plan == "banzhaf":
        m = banzhaf_subsets(n_frames, n_members, vseed)
        return m, m.mean(1)
    if plan == "bootstrap":
        return bootstrap_subsets(n_frames, n_members, vseed), np.ones(n_members)
    raise SubsetError(f"validation members: plan {plan!r} has no distribution to draw fresh "
                      f"subsets from (use nested, random, banzhaf or bootstrap)")


def validate_masks(masks: np.ndarray, n_frames: int) -> np.ndarray:
    """Checks a user-supplied plan: `[M, n_frames]` bool or non-negative int counts, and no
    member with an empty subset. Returns int32 counts."""
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[1] != n_frames:
        raise SubsetError(f"masks must be [members, n_frames={n_frames}], got shape {masks.shape}")
    if masks.shape[0] < 1:
        raise SubsetError("masks: no members")
    if masks.dtype == np.bool_:
        counts = masks.astype(np.int32)
    elif np.issubdtype(masks.dtype, np.integer):
        if (masks < 0).any():
            raise SubsetError("masks: negative counts")
        counts = masks.astype(np.int32)
    else:
        raise SubsetError(f"masks must be bool or integer counts, got {masks.dtype}")
    empty = np.flatnonzero(counts.sum(1) == 0)
    if empty.size:
        raise SubsetError(f"masks: member(s) {empty[:10].tolist()} have an empty subset")
    return counts
