"""The two training configs, kept apart so that compiled programs key on what they compute:

  TrainConfig  what each member's training computes (steps, batch, optimiser, targets,
               AUM, augmentation, crops, seed): the same TrainConfig gives the same members.
  ExecConfig   how that computation is run, never what it gives (to float tolerance):
               the strategy, the chunk of steps between host visits, steps and members
               per compiled program, the checkpoint cadence.

    EnsembleTrainer(ModelConfig(), TrainConfig(steps=600), ExecConfig(strategy="vmap"))
    run_sweep(out, SweepConfig(), ModelConfig(), TrainConfig(), ExecConfig())

A run directory's config.json holds them under "train" and "exec" (`rundir.upgrade_config`
reads older runs, which kept the execution fields under "train")."""
from __future__ import annotations

import dataclasses

import optax

from ensemble_jax.training.augment import AugmentConfig
from ensemble_jax.training.crop import CropConfig

STRATEGIES = ("auto", "vmap", "vmap_matmul", "unrolled", "sequential")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def _coerce(cls, value, what: str):
    """A `cls` config from itself, a dict (config.json; unknown keys dropped) or None (its
    defaults: off)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in names})
    raise ValueError(f"{what}: expected a {cls.__name__} or a dict, got {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How each member is trained. All members share it; each has its own PRNG stream.

    Minibatches are drawn uniformly *with replacement* from the member's own subset at every
    step (bootstrap counts weight the draw), so a batch larger than the smallest subset is
    allowed: it simply repeats frames.
    """
    steps: int = 400
    batch_size: int = 16
    learning_rate: float = 2e-3
    schedule: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip_norm: float | None = None        # per member: each member's own gradient norm
    sigma: float = 1.0                    # target Gaussian std, in heatmap pixels
    seed: int = 0                         # feeds the members' keys only (not the step)
    track_aum: bool = True
    aum_radius: float = 2.0               # heatmap pixels; competitor must lie farther
    deterministic: bool = False           # bit-reproducible on GPUs too (training/determinism.py)
    augment: AugmentConfig = AugmentConfig()  # training/augment.py; off unless enabled
    epochs: float | None = None           # when set, a sweep sets steps from it and the
                                          # training frames (training/real_data.py)
    member_epochs: float | None = None    # when set, a sweep trains at least this many passes
                                          # over a member's frames (steps = max(steps, ..));
                                          # the default for --data runs (training/real_data.py)
    crn: bool = False                     # common random numbers: members of a block share
                                          # init and draws, coherent sampler (training/crn.py)
    crop: CropConfig = CropConfig()       # training/crop.py: windows of the frames; off
                                          # unless enabled

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", _coerce(AugmentConfig, self.augment, "augment"))
        object.__setattr__(self, "crop", _coerce(CropConfig, self.crop, "crop"))

        def bad(name, why):
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")
        if int(self.steps) != self.steps or self.steps < 1:
            bad("steps", "must be a positive integer")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            bad("batch_size", "must be a positive integer")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if int(self.seed) != self.seed or self.seed < 0:   # PRNG keys take no negative seed
            bad("seed", "must be a non-negative integer")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"unknown schedule; choose one of {SCHEDULES}")
        if not self.sigma > 0:
            bad("sigma", "must be > 0")
        if self.clip_norm is not None and not self.clip_norm > 0:
            bad("clip_norm", "must be > 0 or None")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            if self.warmup_steps:
                bad("warmup_steps", f"must be in [0, steps={self.steps})")
        if self.epochs is not None and not self.epochs > 0:
            bad("epochs", "must be > 0 or None")
        if self.member_epochs is not None and not self.member_epochs > 0:
            bad("member_epochs", "must be > 0 or None")

    def optimizer(self) -> optax.GradientTransformation:
        """Adam(W) with the schedule. Clipping acts on one member's gradient tree: the
        optimizer is applied inside the per-member step, so it never sees other members."""
        if self.schedule == "constant":
            lr = optax.constant_schedule(self.learning_rate)
        elif self.schedule == "cosine":
            lr = optax.cosine_decay_schedule(self.learning_rate, self.steps, alpha=0.05)
        else:
            lr = optax.warmup_cosine_decay_schedule(
                0.0, self.learning_rate, max(self.warmup_steps, 1), self.steps,
                end_value=0.05 * self.learning_rate)
        parts = []
        if self.clip_norm is not None:
            parts.append(optax.clip_by_global_norm(self.clip_norm))
        parts.append(optax.adamw(lr, weight_decay=self.weight_decay) if self.weight_decay
                     else optax.adam(lr))
        return optax.chain(*parts)


@dataclasses.dataclass(frozen=True)
class ExecConfig:
    """How the members' training is executed (see the module docstring); any value trains
    the same members, so compiled steps never key on it."""
    strategy: str = "auto"                # training/strategies.py; 'auto' measures them
    chunk_size: int = 50                  # steps between host visits (progress, checkpoints)
    steps_per_program: int = 0            # steps per compiled program; 0 = per backend
    members_per_program: int = 4          # 'unrolled': members traced into one program (compile
                                          # time grows with it; 2 cores gain little past 4)
    checkpoint_every: int = 0             # steps; 0 = only at the end (when a dir is given)

    def __post_init__(self) -> None:
        def bad(name, why):
            raise ValueError(f"ExecConfig.{name}={getattr(self, name)!r}: {why}")
        if self.strategy not in STRATEGIES:
            bad("strategy", f"unknown strategy; choose one of {STRATEGIES}")
        for name, least in (("chunk_size", 1), ("members_per_program", 1),
                            ("checkpoint_every", 0), ("steps_per_program", 0)):
            if getattr(self, name) < least:
                bad(name, f"must be >= {least}")


EXEC_FIELDS = tuple(f.name for f in dataclasses.fields(ExecConfig))
