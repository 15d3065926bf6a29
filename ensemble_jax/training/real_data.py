"""Settings that depend on the training frames, fixed once the data is loaded (sweep.py):
the step count, the warm-up of the schedule, the flip pairs as keypoint indices, and an
early check of `--init-weights`. Everything is logged.

Step count, three ways:
- `--steps N`: as given.
- `--epochs E` (`TrainConfig.epochs`): steps = ceil(E * n_train / batch_size), passes over
  all training frames. DeepLabCut 3 trains 200 epochs; the accuracy runs use that
  (benchmarks/accuracy.py): on a 100-frame project at batch 16 ~1,250 steps.
- the default for `--data` runs (`TrainConfig.member_epochs`, set by the command line when
  neither is given): steps = max(400, ceil(120 * F / batch_size)), F a member's mean
  number of training frames. The label check was validated at 400 steps on openfield
  (46.5 frames per member: 138 passes) and mirror-mouse (36: 178 passes); 120 passes keep
  exactly 400 steps there and up to 53 frames per member, and stop a larger project's
  members from getting a few passes only (400 frames per member at 400 steps would be 16
  passes; this default gives 3,000 steps).
With 'warmup_cosine' the learning rate warms up linearly over the first 5% of the steps,
then decays by a cosine to 5% of its peak: Adam from a fresh head (or a pretrained
encoder) with strong augmentation is less likely to diverge in its first steps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

from ensemble_jax.training.config import TrainConfig

MEMBER_EPOCHS = 120.0       # the --data default: passes over each member's frames
WARMUP_FRACTION = 0.05


def resolve_train_config(tc: TrainConfig, n_train: int, bodyparts: Sequence[str],
                         log: Callable[[str], None] = lambda m: None, *,
                         member_frames: float | None = None) -> TrainConfig:
    """`tc` with steps from epochs (or from the passes over a member's `member_frames`,
    its mean number of training frames), warm-up steps and flip indices resolved
    (idempotent: a resumed run resolves to the same config)."""
    changes: dict = {}
    steps = tc.steps
    how = "given"
    if tc.epochs is not None:
        steps = max(1, math.ceil(tc.epochs * n_train / tc.batch_size))
        changes["steps"] = steps
        how = f"{tc.epochs:g} epochs x {n_train} frames / batch {tc.batch_size}"
    elif tc.member_epochs is not None:
        if member_frames is None:
            raise ValueError("TrainConfig.member_epochs needs the members' frame count")
        passes = math.ceil(tc.member_epochs * member_frames / tc.batch_size)
        steps = max(tc.steps, passes)
        changes["steps"] = steps
        how = (f"default: the larger of {tc.steps} and {tc.member_epochs:g} passes over a "
               f"member's {member_frames:.1f} frames at batch {tc.batch_size} = {passes}")
    if tc.schedule == "warmup_cosine" and tc.warmup_steps == 0 and steps > 1:
        changes["warmup_steps"] = min(steps - 1, max(1, round(WARMUP_FRACTION * steps)))
    if tc.augment.enabled and tc.augment.flip_pairs:
        changes["augment"] = tc.augment.resolve(bodyparts)
    out = dataclasses.replace(tc, **changes) if changes else tc
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
