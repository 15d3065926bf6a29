"""Settings that depend on the training frames, fixed once the data is loaded (sweep.py):
the step count from an epoch count, the warm-up of the schedule, the flip pairs as
keypoint indices, and an early check of `--init-weights`. Everything is logged.

Step count: `TrainConfig.epochs` (set by the command line for `--data` runs unless
`--steps` is given) becomes steps = ceil(epochs * n_train / batch_size). The default of 200
epochs is DeepLabCut 3's default epoch count for its PyTorch engine; on a 100-frame project
at batch 16 that is ~1,250 steps, on 1,000 frames ~12,500. The learning rate warms up
linearly over the first 5% of the steps, then decays by a cosine to 5% of its peak
('warmup_cosine'): Adam from a fresh head (or a pretrained encoder) with strong
augmentation is less likely to diverge in its first steps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

from ensemble_jax.training.config import TrainConfig

DEFAULT_EPOCHS = 200.0
WARMUP_FRACTION = 0.05


def resolve_train_config(tc: TrainConfig, n_train: int, bodyparts: Sequence[str],
                         log: Callable[[str], None] = lambda m: None) -> TrainConfig:
    """`tc` with steps from epochs, warm-up steps and flip indices resolved (idempotent)."""
    changes: dict = {}
    steps = tc.steps
    if tc.epochs is not None:
        steps = max(1, math.ceil(tc.epochs * n_train / tc.batch_size))
        changes["steps"] = steps
    if tc.schedule == "warmup_cosine" and tc.warmup_steps == 0 and steps > 1:
        changes["warmup_steps"] = min(steps - 1, max(1, round(WARMUP_FRACTION * steps)))
    if tc.augment.enabled and tc.augment.flip_pairs:
        changes["augment"] = tc.augment.resolve(bodyparts)
    out = dataclasses.replace(tc, **changes) if changes else tc
    how = (f"{out.epochs:g} epochs x {n_train} frames / batch {out.batch_size}"
           if out.epochs is not None else "given")
    warm = f", {out.warmup_steps} warm-up steps" if out.schedule == "warmup_cosine" else ""
    log(f"schedule: {out.steps} steps ({how}), {out.schedule} learning rate "
        f"{out.learning_rate:g}{warm} (change with --steps/--epochs/--lr/--schedule)")
    aug = out.augment
    if aug.enabled:
        flips = (", flips exchanging " + ", ".join(f"{a}<->{b}" for a, b in aug.flip_pairs)
                 if aug.flip_pairs else ", no flips (declare pairs with --flip-pairs)")
        log(f"augmentation: rotation +-{aug.rotation_deg:g} deg on {aug.rotation_prob:.0%} "
            f"of frames, scale {aug.scale_min:g}-{aug.scale_max:g}, shift +-"
            f"{aug.translate:.0%}{flips}, brightness/contrast/noise/blur; AUM margins on "
            f"the {aug.aum_view} view (--no-augment turns it off)")
    else:
        log("augmentation: off")
    return out
