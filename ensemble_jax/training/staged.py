"""Staged subsets (curricula): `fit_staged(trainer, dataset, stages)` is
`trainer.fit(dataset, stages=stages)`. Members whose rows do not change train on a fixed
subset, so a curriculum and its baselines share one ensemble; only the subset index fed to
the compiled programs changes between stages (same shape, nothing recompiles)."""
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
    """M members whose subsets change at the given steps (`EnsembleTrainer.fit`'s `stages`
    and `member_ids`: members with the same id start from the same weights)."""
    return trainer.fit(dataset, stages=stages, member_ids=member_ids, progress=progress)
