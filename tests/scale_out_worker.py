"""Subprocess worker for tests/test_scale_out.py: runs with XLA_FLAGS set to fake CPU
devices before jax is imported (the pytest process already has jax with one device).

    python tests/scale_out_worker.py sharded OUT_DIR N_MEMBERS
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble_jax import (EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig,  # noqa: E402
                          synthetic_dataset)
from ensemble_jax.subsets import random_subsets  # noqa: E402
from ensemble_jax.training import sharding  # noqa: E402

SMALL = ModelConfig(widths=(8, 16, 32), head_width=16)


def data():
    return synthetic_dataset(48, image_size=32, seed=3)


def config(**kw):
    # steps/batch/chunk as in tests/test_trainer.py: the same compiled member step and
    # init (in one pytest session, or through a persistent compilation cache)
    # -> (TrainConfig, ExecConfig) for EnsembleTrainer(SMALL, *config(...))
    return TrainConfig(steps=20, batch_size=8), ExecConfig(**{
        "chunk_size": 10, "checkpoint_every": 10, "strategy": "unrolled",
        "members_per_program": 2, **kw})


def flat(params):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])


def sharded(out: Path, m: int) -> None:
    """Sharded fit over every (fake) device; a checkpoint saved at step 10 of 20 on them."""
    d = data()
    masks = random_subsets(d.n_frames, m, 0.5, seed=0)
    mesh = sharding.make_mesh()
    tc = config()
    full = EnsembleTrainer(SMALL, *tc).fit(d, masks, progress=False, mesh=mesh)
    EnsembleTrainer(SMALL, *tc).fit(d, masks, progress=False, mesh=mesh,
                                   checkpoint_dir=out / "ckpt", stop_after=10)
    pred = full.predict(d.images[:8])
    np.savez(out / "sharded.npz", params=flat(full.params), losses=full.losses,
             aum_sum=full.aum_sum, aum_count=full.aum_count, keypoints=pred.keypoints,
             confidences=pred.confidences)
    (out / "info.json").write_text(json.dumps({
        "devices": sharding.n_shards(mesh), "strategy": full.strategy,
        "local_members": -(-m // sharding.n_shards(mesh))}))


if __name__ == "__main__":
    {"sharded": sharded}[sys.argv[1]](Path(sys.argv[2]), int(sys.argv[3]))
