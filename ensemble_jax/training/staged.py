"""Staged subsets: members whose subset changes at given steps (curricula), in one fit.

`fit_staged(trainer, dataset, stages)` is `trainer.fit(dataset, stages=stages)`: member m
draws its minibatches from `stages[s][1][m]` during the steps `[start_s, start_{s+1})`.
Members whose rows do not change simply train on a fixed subset, so a curriculum and its
baselines can share one ensemble (one set of compiled programs): only the subset index
fed to the compiled programs changes between stages (same shape, nothing recompiles).
No checkpoints: a staged fit is short and is rerun from scratch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ensemble_jax.data.dataset import KeypointDataset
from ensemble_jax.training.result import EnsembleResult
from ensemble_jax.training.trainer import EnsembleTrainer
from ensemble_jax import logs


@logs.sink
def fit_staged(trainer: EnsembleTrainer, dataset: KeypointDataset,
               stages: Sequence[tuple[int, np.ndarray]], *,
               member_ids: np.ndarray | None = None, progress: bool = False) -> EnsembleResult:
    """Trains M members whose subsets change at the given steps (see `EnsembleTrainer.fit`).

    stages: `[(start_step, masks [M, n] bool or int counts), ...]`, the first starting at
        0, starts strictly increasing and below `train_config.steps`.
    member_ids: int [M] identities for the members' PRNG keys (default 0..M-1); members
        with the same id start from the same weights (paired comparisons).
    Returns an `EnsembleResult` whose `masks` are the last stage's.
    """
    return trainer.fit(dataset, stages=stages, member_ids=member_ids, progress=progress)
