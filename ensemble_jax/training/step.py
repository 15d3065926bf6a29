"""The per-member training step: one pure function of one member's state.

Everything member-parallel (vmap, unrolling, sharding) is built on top of this function,
so a member's trajectory depends only on its own key, subset and the shared data.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ensemble_jax.data.targets import gaussian_targets
from ensemble_jax.kernels.margins import heatmap_margin
from ensemble_jax.models.heatmap_net import HeatmapNet
from ensemble_jax.training.augment import augment_batch
from ensemble_jax.training.config import TrainConfig
from ensemble_jax.training.crn import coherent_draw
from ensemble_jax.training.crop import crop_batch, valid_hw_from_content
from ensemble_jax.training.determinism import scatter_add_once


class MemberState(NamedTuple):
    """One member's training state; stacked on a leading [M] axis for the ensemble."""
    params: Any
    opt_state: Any
    aum_sum: jnp.ndarray      # float32 [n, K]  sum of margins while in the batch
    aum_count: jnp.ndarray    # int32   [n, K]  steps the (frame, keypoint) was in the batch
    alive: jnp.ndarray        # bool    []      False once the member diverged
    diverged_at: jnp.ndarray  # int32   []      step of divergence, -1 if none


class MemberInputs(NamedTuple):
    """Per-member constants, stacked on [M]."""
    key: jnp.ndarray          # uint32 [2] raw PRNG key data
    subset_index: jnp.ndarray # int32 [Nmax] frame indices (repeats = bootstrap weight)
    subset_size: jnp.ndarray  # int32 [] valid entries of subset_index
    lr_scale: jnp.ndarray     # float32 [] multiplies this member's updates


def init_member(model: HeatmapNet, tx: optax.GradientTransformation, key: jnp.ndarray,
                sample: jnp.ndarray, n_frames: int, n_keypoints: int) -> MemberState:
    # Stream 1 of the member key initialises; stream 0 (folded with the step) samples.
    params = model.init(jax.random.fold_in(jax.random.wrap_key_data(key), 1), sample)
    if getattr(model.config, "init_weights", None):
        # Same pretrained encoder for every member; the head keeps this member's own init.
        from ensemble_jax.models.pretrained import merge_encoder
        params = merge_encoder(params, model.config)
    return MemberState(
        params=params, opt_state=tx.init(params),
        aum_sum=jnp.zeros((n_frames, n_keypoints), jnp.float32),
        aum_count=jnp.zeros((n_frames, n_keypoints), jnp.int32),
        alive=jnp.asarray(True), diverged_at=jnp.asarray(-1, jnp.int32))


def _tree_finite(tree: Any) -> jnp.ndarray:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_member_step(model: HeatmapNet, tx: optax.GradientTransformation, cfg: TrainConfig,
                     heatmap_hw: tuple[int, int], stride: int) -> Callable:
    """Returns step(state, inputs, step_index, images, keypoints) -> (state, loss).

    images `[n, H, W, C]` (uint8, or float in [0, 1]) and keypoints `[n, K, 2]` are the
    shared training set, resident on device; the member reads only rows of its subset.

    With `cfg.crop.enabled` every batch element is a window `cfg.crop.size` (h, w) of its
    frame (training/crop.py), cut right after the batch is gathered and before any
    augmentation; targets, loss and AUM margins are on the window, so `heatmap_hw` must be
    the window's (h // stride, w // stride) (`member_step_for` passes it). Frames of
    different sizes are zero-padded (bottom, right) to one [H, W]; each frame's own size is
    its content extent (`crop.valid_hw_from_content`), so nothing else is passed.
    """
    def loss_fn(params, x, targets, weights):
        logits = model.apply(params, x)
        bce = optax.sigmoid_binary_cross_entropy(logits, targets).mean((-1, -2))  # [B, K]
        loss = (bce * weights).sum() / jnp.maximum(weights.sum(), 1.0)
        return loss, logits

    aug = cfg.augment
    if aug.enabled and aug.flip_pairs and not aug.flip_perm:
        raise ValueError("AugmentConfig.flip_pairs are not resolved to keypoint indices; "
                         "call AugmentConfig.resolve(bodyparts) first")
    crop = cfg.crop
    if crop.enabled:
        crop.check_multiple(model.config.input_multiple)
        if tuple(heatmap_hw) != (crop.size[0] // stride, crop.size[1] // stride):
            raise ValueError(f"heatmap_hw={tuple(heatmap_hw)}: crop training needs the "
                             f"window's, {(crop.size[0] // stride, crop.size[1] // stride)}")

    def step(state: MemberState, inputs: MemberInputs, step_index, images, keypoints):
        member_key = jax.random.wrap_key_data(inputs.key)
        key = jax.random.fold_in(jax.random.fold_in(member_key, 0), step_index)
        if cfg.crn:   # block-shared key, coherent frame choice (training/crn.py)
            idx = coherent_draw(key, inputs.subset_index, inputs.subset_size,
                                images.shape[0], cfg.batch_size)
        else:
            pos = jax.random.randint(key, (cfg.batch_size,), 0, inputs.subset_size)
            idx = inputs.subset_index[pos]
        x, kp = images[idx], keypoints[idx]
        if crop.enabled:
            # Stream 3 of the member key, folded with the step: the windows are the
            # member's own, like its augmentations (stream 2), which act on the windows.
            x, kp = crop_batch(jax.random.fold_in(jax.random.fold_in(member_key, 3),
                                                  step_index),
                               x, kp, valid_hw_from_content(x), crop)
        clean_x, clean_kp = x, kp
        if aug.enabled:
            # Stream 2 of the member key, folded with the step: a member's augmentations
            # depend on nothing else (not the other members, the strategy or the sharding).
            x, kp = augment_batch(jax.random.fold_in(jax.random.fold_in(member_key, 2),
                                                     step_index), x, kp, aug)
        targets, weights = gaussian_targets(kp, heatmap_hw, stride, cfg.sigma)
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, x, targets, weights)
        margin_logits, margin_kp = logits, kp
        if aug.enabled and cfg.track_aum and aug.aum_view == "clean":
            # AUM on the un-augmented frames, same parameters as the gradient's forward pass.
            margin_logits, margin_kp = model.apply(state.params, clean_x), clean_kp
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree_util.tree_map(lambda u: u * inputs.lr_scale, updates)
        params = optax.apply_updates(state.params, updates)
        # A member whose loss or weights stop being finite is frozen at its last good state.
        ok = state.alive & jnp.isfinite(loss) & _tree_finite(params)
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
        aum_sum, aum_count = state.aum_sum, state.aum_count
        if cfg.track_aum:
            margin = heatmap_margin(jax.lax.stop_gradient(margin_logits), margin_kp, stride=stride,
                                    radius=cfg.aum_radius)                      # [B, K]
            valid = jnp.isfinite(margin) & ok
            contrib = jnp.where(valid, margin, 0.0)
            if cfg.deterministic:   # duplicate frames: one addend each, any scatter order
                aum_sum = scatter_add_once(aum_sum, idx, contrib)
            else:
                aum_sum = aum_sum.at[idx].add(contrib)
            aum_count = aum_count.at[idx].add(valid.astype(jnp.int32))
        new_state = MemberState(
            params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
            aum_sum=aum_sum, aum_count=aum_count, alive=ok,
            diverged_at=jnp.where(state.alive & ~ok, step_index, state.diverged_at).astype(jnp.int32))
        return new_state, jnp.where(state.alive, loss, jnp.nan)

    if not cfg.deterministic:
        return step

    def deterministic_step(*args):
        # Traced under full float32 precision (no TF32), wherever it is traced.
        with jax.default_matmul_precision("highest"):
            return step(*args)
    return deterministic_step


def member_step_for(model_config: Any, train_config: TrainConfig, image_hw: tuple[int, int],
                    n_keypoints: int) -> Callable:
    """`make_member_step` of this network on images `image_hw`, one per configuration but
    the seed (it only feeds the members' keys): fits differing in seed or in execution
    (ExecConfig) share one step, hence their compiled programs."""
    return _member_step(model_config, dataclasses.replace(train_config, seed=0),
                        tuple(image_hw), n_keypoints)


@functools.lru_cache(maxsize=32)
def _member_step(model_config: Any, train_config: TrainConfig, image_hw: tuple[int, int],
                 n_keypoints: int) -> Callable:
    stride = model_config.output_stride
    # With crops the step trains on windows: its heatmaps have the window's shape.
    hw = train_config.crop.size if train_config.crop.enabled else image_hw
    return make_member_step(HeatmapNet(model_config, n_keypoints), train_config.optimizer(),
                            train_config, (hw[0] // stride, hw[1] // stride), stride)


def make_train(model_config: Any, train_config: TrainConfig, image_hw: tuple[int, int],
               n_keypoints: int, n_steps: int | None = None) -> Callable:
    """The whole specification of one member's training as one pure function:

        train(inputs: MemberInputs, images [n, H, W, C], keypoints [n, K, 2])
            -> (MemberState after the steps, losses float32 [steps])

    `init_member` then a `lax.scan` of `make_member_step` over steps 0..n_steps-1 (default
    every step of the schedule). `jax.vmap(train)` over stacked inputs is the whole
    ensemble; every strategy, chunking and sharding of `EnsembleTrainer` computes this
    function (tests/accelerator_paths_worker.py checks each against it), faster.
    With `train_config.crop.enabled` the steps train on windows of `crop.size` cut from
    the frames (training/crop.py); `image_hw` stays the frames' (padded) size."""
    model, tx = HeatmapNet(model_config, n_keypoints), train_config.optimizer()
    member_step = member_step_for(model_config, train_config, tuple(image_hw), n_keypoints)
    steps = train_config.steps if n_steps is None else int(n_steps)

    def train(inputs: MemberInputs, images: jnp.ndarray, keypoints: jnp.ndarray):
        sample = jnp.zeros((1,) + images.shape[1:], jnp.uint8)
        state = init_member(model, tx, inputs.key, sample, images.shape[0], n_keypoints)

        def body(st, step_index):
            return member_step(st, inputs, step_index, images, keypoints)
        return jax.lax.scan(body, state, jnp.arange(steps, dtype=jnp.int32))
    return train
