"""The named presets of a sweep, in one place: the command line (`sweep --smoke`) and the
seed studies (`experiments/ --quick`) start from these (SweepConfig, ModelConfig,
TrainConfig) triples and the `execution` ExecConfig of the same name; their own flags then
override single settings.

  default  the dataclasses' defaults (15 members: fractions 0.1..0.9 x 3 seeds, 400 steps)
  smoke    seconds: 120 synthetic frames, a small network, fractions 0.3/0.9 x 1 seed,
           60 steps (executed in chunks of 20)
  quick    the studies' tiny run: 120 synthetic 32x32 frames (64 px letterboxed real
           data), the small network, fractions 0.3/0.6/0.9 x 2 seeds, 60 steps
           (executed in chunks of 20 by strategy 'sequential')
"""
from __future__ import annotations

import dataclasses
from typing import Any

SMALL_NETWORK = {"widths": (8, 16, 32), "head_width": 16}
QUICK_FRACTIONS = (0.3, 0.6, 0.9)
QUICK_SEEDS = 2
QUICK_FRAMES = 120
QUICK_STEPS = 60
QUICK_IMAGE_SIZE = 32
QUICK_DATA_IMAGE_SIZE = 64       # quick on real data: letterboxed training resolution
NAMES = ("default", "smoke", "quick")


def preset(name: str, *, real_data: bool = False) -> tuple[Any, Any, Any]:
    """(SweepConfig, ModelConfig, TrainConfig) of preset `name` (see the module docstring);
    real_data: the run reads a labeled project (changes 'quick''s image size)."""
    from ensemble_jax.models.heatmap_net import ModelConfig
    from ensemble_jax.sweep import SweepConfig
    from ensemble_jax.training.config import TrainConfig
    _check(name)
    sweep, model, train = SweepConfig(), ModelConfig(), TrainConfig()
    if name == "smoke":
        sweep = dataclasses.replace(sweep, synthetic_frames=120, fractions=(0.3, 0.9), n_seeds=1)
        model = dataclasses.replace(model, **SMALL_NETWORK)
        train = dataclasses.replace(train, steps=60)
    elif name == "quick":
        sweep = dataclasses.replace(sweep, synthetic_frames=QUICK_FRAMES,
                                    fractions=QUICK_FRACTIONS, n_seeds=QUICK_SEEDS,
                                    image_size=QUICK_DATA_IMAGE_SIZE if real_data
                                    else QUICK_IMAGE_SIZE)
        model = dataclasses.replace(model, **SMALL_NETWORK)
        train = dataclasses.replace(train, steps=QUICK_STEPS)
    return sweep, model, train


def execution(name: str) -> Any:
    """The ExecConfig of preset `name` (how its training runs; see the module docstring)."""
    from ensemble_jax.training.config import ExecConfig
    _check(name)
    return {"default": ExecConfig(), "smoke": ExecConfig(chunk_size=20),
            "quick": ExecConfig(chunk_size=20, strategy="sequential")}[name]


def _check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(NAMES)}")
