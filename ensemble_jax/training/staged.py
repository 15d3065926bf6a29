"""Staged subsets: members whose subset changes at given steps (curricula), in one fit.

`fit_staged(trainer, dataset, stages)` trains like `EnsembleTrainer.fit`, but member m
draws its minibatches from `stages[s][1][m]` during the steps `[start_s, start_{s+1})`.
Members whose rows do not change simply train on a fixed subset, so a curriculum and its
baselines can share one ensemble (one set of compiled programs). It uses the trainer's
own set-up, strategy choice and per-member step; only the subset index fed to the
compiled programs changes between stages (same shape, so nothing recompiles).
No checkpoints: a staged fit is short and is rerun from scratch.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ensemble_jax.data.dataset import KeypointDataset
from ensemble_jax.subsets import SubsetError, validate_masks
from ensemble_jax.training.result import EnsembleResult
from ensemble_jax.training.trainer import EnsembleTrainer, _progress


def _index(counts: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """counts [M, n] -> (index int32 [M, width], size int32 [M]) as `subset_index`, padded
    to a fixed width so that every stage feeds the same shapes."""
    sizes = counts.sum(1).astype(np.int32)
    index = np.zeros((counts.shape[0], width), np.int32)
    for m, row in enumerate(counts):
        lst = np.repeat(np.arange(counts.shape[1], dtype=np.int32), row)
        index[m, :lst.size] = lst
    return index, sizes


def fit_staged(trainer: EnsembleTrainer, dataset: KeypointDataset,
               stages: Sequence[tuple[int, np.ndarray]], *,
               member_ids: np.ndarray | None = None, progress: bool = False,
               log: Callable[[str], None] | None = None) -> EnsembleResult:
    """Trains M members whose subsets change at the given steps.

    stages: `[(start_step, masks [M, n] bool or int counts), ...]`, the first starting at
        0, starts strictly increasing and below `train_config.steps`.
    member_ids: int [M] identities for the members' PRNG keys (default 0..M-1); members
        with the same id start from the same weights (paired comparisons).
    Returns an `EnsembleResult` whose `masks` are the last stage's.
    """
    log = log or (lambda msg: None)
    tc = trainer.train_config
    if not stages:
        raise ValueError("fit_staged: no stages")
    starts = [int(s) for s, _ in stages]
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= tc.steps:
        raise ValueError(f"fit_staged: stage starts {starts} must begin at 0, increase, and "
                         f"stay below steps={tc.steps}")
    counts = [trainer._check(dataset, m)[0] for _, m in stages]
    m = counts[0].shape[0]
    if any(c.shape != counts[0].shape for c in counts):
        raise SubsetError("fit_staged: every stage needs masks of the same shape [M, n]")
    member_ids = np.arange(m) if member_ids is None else np.asarray(member_ids)
    width = int(max(c.sum(1).max() for c in counts))

    t_setup = time.perf_counter()
    s = trainer.setup(dataset, counts[0], member_ids, np.ones(m, np.float32))
    runner, strategy_info = trainer.choose_strategy(s, log)
    inputs = []
    for c in counts:
        idx, size = _index(validate_masks(c, dataset.n_frames), width)
        inputs.append(s.inputs._replace(subset_index=jnp.asarray(idx),
                                        subset_size=jnp.asarray(size)))
    setup_s = time.perf_counter() - t_setup

    states, s.states = s.states, None     # no extra copy of the states while training
    losses = np.full((tc.steps, m), np.nan, np.float32)
    bounds = starts + [tc.steps]
    bar = _progress(tc.steps, m, 0, progress)
    t_train = time.perf_counter()
    step = 0
    for k in range(len(stages)):
        while step < bounds[k + 1]:
            n = min(tc.chunk_size, bounds[k + 1] - step)
            states, chunk = runner(states, inputs[k], s.images, s.keypoints, step, n)
            losses[step:step + n] = chunk
            step += n
            if bar is not None:
                bar.update(n)
    jax.block_until_ready(states)
    train_s = time.perf_counter() - t_train
    if bar is not None:
        bar.close()
    host = jax.device_get(states)
    alive = np.asarray(host.alive)
    for i in np.flatnonzero(~alive):
        log(f"warning: member {i} diverged at step {int(host.diverged_at[i])}")
    timing = {"setup_s": setup_s, "train_s": train_s, "steps_run": tc.steps,
              "steps_per_s": tc.steps / train_s if train_s > 0 else float("nan"),
              "images_per_s": tc.steps * m * tc.batch_size / train_s if train_s > 0
              else float("nan"), "strategy": strategy_info, "stage_starts": starts}
    return EnsembleResult(
        model_config=trainer.model_config, train_config=tc, params=host.params,
        masks=counts[-1], bodyparts=list(dataset.bodyparts), image_shape=dataset.image_shape,
        aum_sum=np.asarray(host.aum_sum), aum_count=np.asarray(host.aum_count),
        losses=losses, alive=alive, diverged_at=np.asarray(host.diverged_at),
        strategy=runner.name, timing=timing)
