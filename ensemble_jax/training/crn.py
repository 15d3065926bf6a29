"""Common random numbers (CRN): members whose training differs only by their subset.

With `TrainConfig.crn`, a member's PRNG key is its *block's* key, not its own: every member
of a block starts from the same initial weights (stream 1), draws the same augmentations
(stream 2) and the same per-step uniforms (stream 0). Those uniforms pick frames with the
*coherent sampler*: every training frame i owns a fixed position h_i on the circle [0, 1)
(`frame_positions`, the same for every member and seed), and a uniform u selects the first
frame of the member's own subset at or after u (wrapping round). Two members of one block
whose subsets differ by one frame therefore draw the same frames except for the draws
that land in that frame's arc, so a member's outputs become a much smoother function of
its subset than with independent keys, where initialisation and batch order dominate the
member-to-member differences (benchmarks/attribution_check.py measures the effect on LDS).

Blocks: `block_ids` int [M] (default: all 0, one block). Members of different blocks are
independent draws of the training noise; estimators comparing members across blocks
should stratify by block (kernels.stratified_influence `strata`). Pairing members by
block (e.g. one block per nested seed) is what makes within-block comparisons paired.

Each frame's weight in a member's draws is the length of its arc (from the previous
subset frame's position to its own), not uniform: in expectation over the shared random
positions every subset frame is equally likely, but not within one run. Bootstrap counts
(a frame repeated) cannot be expressed this way: `check_counts` refuses them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_POSITION_KEY = 0x63726E   # fixed: positions are shared by every member, block and seed
_BLOCK_TAG = 0x626C6B      # block keys live in their own stream, apart from member keys


def frame_positions(n_frames: int) -> jnp.ndarray:
    """float32 [n]: frame i's fixed position on the circle, (pi(i) + 0.5) / n for a fixed
    random permutation pi (distinct positions, evenly spread: no ties)."""
    perm = jax.random.permutation(jax.random.key(_POSITION_KEY), n_frames)
    return (perm.astype(jnp.float32) + 0.5) / n_frames


def block_keys(seed: int, block_ids: np.ndarray) -> np.ndarray:
    """uint32 [M, 2]: the key shared by every member of a block (depends on seed, block)."""
    base = jax.random.fold_in(jax.random.key(seed), _BLOCK_TAG)
    keys = jax.vmap(lambda b: jax.random.fold_in(base, b))(jnp.asarray(block_ids, jnp.uint32))
    return np.asarray(jax.random.key_data(keys))


def check_counts(counts: np.ndarray) -> None:
    if np.asarray(counts).max(initial=0) > 1:
        raise ValueError("TrainConfig.crn: the coherent sampler weights each frame by its "
                         "arc, so bootstrap counts (a frame drawn twice) are not supported; "
                         "use a plan without repeats (random, banzhaf, nested)")


def order_by_position(index: np.ndarray, sizes: np.ndarray, n_frames: int) -> np.ndarray:
    """index int32 [M, Nmax] (valid entries first) -> the same rows, valid entries sorted by
    their frames' positions (what `coherent_draw` searches)."""
    h = np.asarray(frame_positions(n_frames))
    out = index.copy()
    for m, s in enumerate(np.asarray(sizes)):
        row = index[m, :s]
        out[m, :s] = row[np.argsort(h[row], kind="stable")]
    return out


def coherent_draw(key: jax.Array, subset_index: jnp.ndarray, subset_size: jnp.ndarray,
                  n_frames: int, batch: int) -> jnp.ndarray:
    """int32 [batch] frame indices for one member and step.

    key: the step's (block-shared) key. subset_index int32 [Nmax]: the member's frames,
    valid entries first and sorted by `frame_positions` (`order_by_position`);
    subset_size int32 []: its valid entries. n_frames: the training set size.
    """
    h = frame_positions(n_frames)
    valid = jnp.arange(subset_index.shape[0]) < subset_size
    hs = jnp.where(valid, h[subset_index], 2.0)              # sorted; padding past the end
    u = jax.random.uniform(key, (batch,))
    pos = jnp.searchsorted(hs, u, side="left")
    pos = jnp.where(pos >= subset_size, 0, pos)               # past the last: wrap round
    return subset_index[pos]
