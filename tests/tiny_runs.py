"""Tiny run directories for the tests that need one without training."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def untrained_run(out: Path, *, frames: int = 12, size: int = 32, members: int = 3,
                  alive=None, data_seed: int = 1, key: int = 3) -> Path:
    """A run directory as `sweep` writes it, its members at their initial parameters (no
    training: predictions are still a deterministic function of the pixels, which is
    what the video and bad-input tests compare). Synthetic frames, widths (8, 16)."""
    import dataclasses
    import jax
    from ensemble_jax import rundir
    from ensemble_jax.data.synthetic import synthetic_dataset
    from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
    from ensemble_jax.training.config import TrainConfig
    data = synthetic_dataset(frames, image_size=size, seed=data_seed)
    train, test = data.split(0.25, seed=0)
    mc = dataclasses.replace(ModelConfig(), widths=(8, 16), head_width=8)
    model = HeatmapNet(mc, data.n_keypoints)
    params = jax.vmap(lambda k: model.init(k, train.images[:1]))(
        jax.random.split(jax.random.key(key), members))
    kw = {} if alive is None else {"alive": np.asarray(alive, bool)}
    return rundir.write_untrained(Path(out), train, test, mc, TrainConfig(steps=1), params,
                                  strategy="vmap", **kw)
