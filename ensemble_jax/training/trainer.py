"""`EnsembleTrainer`: trains M members, each on its own subset, in one compiled program per
chunk of steps. The host only runs between chunks (progress bar, logging, checkpoints)."""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
from ensemble_jax.subsets import SubsetError, validate_masks
from ensemble_jax.training import backend, crn, sharding, strategies
from ensemble_jax.training.checkpoint import Checkpointer
from ensemble_jax.training.config import ExecConfig, TrainConfig
from ensemble_jax.training.result import EnsembleResult
from ensemble_jax.training.step import MemberInputs, MemberState, init_member, member_step_for
from ensemble_jax import logs


def member_keys(seed: int, member_ids: np.ndarray) -> np.ndarray:
    """uint32 [M, 2]: member m's key depends only on (seed, m), never on the ensemble size."""
    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(member_ids, jnp.uint32))
    return np.asarray(jax.random.key_data(keys))


def training_keys(tc: TrainConfig, member_ids: np.ndarray,
                  block_ids: np.ndarray | None = None) -> np.ndarray:
    """uint32 [M, 2]: each member's own key, or with `tc.crn` its block's (training/crn.py;
    default: one block)."""
    if not tc.crn:
        if block_ids is not None:
            raise ValueError("block_ids need TrainConfig(crn=True)")
        return member_keys(tc.seed, member_ids)
    blocks = np.zeros(len(member_ids), np.int64) if block_ids is None else np.asarray(block_ids)
    chex.assert_shape(blocks, (len(member_ids),))
    return crn.block_keys(tc.seed, blocks)


def subset_index(counts: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """counts [M, n] -> (index int32 [M, width], size int32 [M]); a frame drawn c times in a
    bootstrap appears c times, so uniform draws over the list reproduce its weight. width
    defaults to the largest subset (stages pass a common one: same shapes, no recompile)."""
    sizes = counts.sum(1).astype(np.int32)
    index = np.zeros((counts.shape[0], int(sizes.max()) if width is None else width), np.int32)
    for m, row in enumerate(counts):
        lst = np.repeat(np.arange(counts.shape[1], dtype=np.int32), row)
        index[m, :lst.size] = lst
    return index, sizes


def member_inputs(counts: np.ndarray, member_ids: np.ndarray, tc: TrainConfig,
                  lr_scale: np.ndarray | None = None, width: int | None = None,
                  block_ids: np.ndarray | None = None) -> MemberInputs:
    """The stacked per-member constants (host arrays, [M] leading) of members with these
    subsets, ids and learning-rate scales: what `step.make_train`'s train takes."""
    index, sizes = subset_index(counts, width)
    if tc.crn:   # the coherent sampler searches each subset in its frames' circle order
        crn.check_counts(counts)
        index = crn.order_by_position(index, sizes, counts.shape[1])
    lr = np.ones(counts.shape[0], np.float32) if lr_scale is None else lr_scale
    return MemberInputs(training_keys(tc, member_ids, block_ids), index, sizes,
                        np.asarray(lr, np.float32))


@dataclasses.dataclass
class _Setup:
    member_step: Callable
    states: MemberState       # [M] stacked; with a mesh padded to whole device blocks
    inputs: MemberInputs
    images: jax.Array
    keypoints: jax.Array
    mesh: Any = None          # jax.sharding.Mesh when sharded over devices, else None


def _check_stages(stages: Sequence[tuple[int, Any]], steps: int) -> list[int]:
    if not stages:
        raise ValueError("fit: no stages")
    starts = [int(s) for s, _ in stages]
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= steps:
        raise ValueError(f"fit: stage starts {starts} must begin at 0, increase, and "
                         f"stay below steps={steps}")
    return starts


class EnsembleTrainer:
    """Usage::

        trainer = EnsembleTrainer(ModelConfig(), TrainConfig(steps=600), ExecConfig())
        result = trainer.fit(train_set, nested_subsets(train_set.n_frames, [.1, .5, .9], 3))
        preds = result.predict(test_set.images)

    What it computes is `jax.vmap(step.make_train(...))` over the members' inputs, fixed by
    the model and train configs; what `exec_config` adds is speed (a strategy, chunks of
    compiled steps, sharding) and the host's side (progress, checkpoints, resume).
    """

    def __init__(self, model_config: ModelConfig | None = None,
                 train_config: TrainConfig | None = None,
                 exec_config: ExecConfig | None = None):
        self.model_config = model_config or ModelConfig()
        self.train_config = train_config or TrainConfig()
        self.exec_config = exec_config or ExecConfig()
        # a `waves.WavePlan` with a memory budget: `auto` skips candidates over it
        self.memory_plan = None

    # ------------------------------------------------------------------ set-up
    def _check(self, dataset: Any, masks: Any) -> np.ndarray:
        if not isinstance(dataset, KeypointDataset):
            raise TypeError(f"fit: dataset must be a KeypointDataset, got {type(dataset).__name__}")
        counts = validate_masks(masks, dataset.n_frames)
        mult = self.model_config.input_multiple
        h, w = dataset.images.shape[1:3]
        if h % mult or w % mult:
            raise DatasetError(
                f"image size {h}x{w} is not divisible by {mult} (2 ** number of encoder stages, "
                f"output_stride={self.model_config.output_stride}); resize or letterbox to a "
                f"multiple of {mult} (e.g. --image-size {max(mult, (max(h, w) // mult) * mult)})")
        if not dataset.labeled.any():
            raise DatasetError("fit: the dataset has no labeled keypoint at all")
        return counts

    def setup(self, dataset: KeypointDataset, counts: np.ndarray, member_ids: np.ndarray,
              lr_scale: np.ndarray, images: np.ndarray | None = None, mesh: Any = None,
              width: int | None = None, block_ids: np.ndarray | None = None) -> _Setup:
        mc, tc = self.model_config, self.train_config
        h, w = dataset.images.shape[1:3]
        member_step = member_step_for(mc, tc, (h, w), dataset.n_keypoints)
        host_inputs = member_inputs(counts, member_ids, tc, lr_scale, width, block_ids)
        # One compiled single-member init, called per member (its compile is slow on CPU
        # and would otherwise recur for every ensemble size); values equal a vmapped init.
        # (keyed without the seed, which only feeds the keys, and without `deterministic`:
        # the init has no matmul to make exact)
        init_one = _init_fn(mc, dataclasses.replace(tc, seed=0, deterministic=False),
                            (h, w, dataset.images.shape[3]), dataset.n_frames,
                            dataset.n_keypoints)
        states = _stack(_init_each(init_one, host_inputs.key))
        shared = [dataset.images if images is None else images, dataset.keypoints]
        shared = ([jnp.asarray(x) for x in shared] if mesh is None else
                  [sharding.put_global(x, sharding.replicated(mesh)) for x in shared])
        return _Setup(member_step, _place(states, mesh), _place(host_inputs, mesh), *shared,
                      mesh=mesh)

    def runner(self, s: _Setup, name: str, members_per_program: int | None = None
               ) -> strategies.Runner:
        """The (cached) runner of strategy `name` for this setup's members and devices; it
        trains `Strategy.model_config` of this network (the same function and parameters)."""
        strategy = strategies.get(name)
        step = member_step_for(strategy.model_config(self.model_config), self.train_config,
                               tuple(s.images.shape[1:3]), int(s.keypoints.shape[1]))
        return _runner(strategy, step, self._steps_per_program(),
                       int(s.inputs.subset_size.shape[0]),
                       members_per_program or self.exec_config.members_per_program, s.mesh,
                       backend.path_backend())

    def _steps_per_program(self) -> int:
        ec = self.exec_config
        return ec.steps_per_program or strategies.default_steps_per_program(
            backend.path_backend(), ec.chunk_size)

    def choose_strategy(self, s: _Setup) -> tuple[Any, dict]:
        """The runner of the configured strategy, or `strategies.autotune`'s for 'auto'."""
        tc, ec = self.train_config, self.exec_config
        if ec.strategy != "auto":
            return self.runner(s, ec.strategy), {"chosen": ec.strategy,
                                                 "how": "fixed by ExecConfig"}
        m = int(s.inputs.subset_size.shape[0])
        facts = dict(model=dataclasses.asdict(self.model_config), members=m,
                     images=tuple(s.images.shape), batch=tc.batch_size,
                     group=ec.members_per_program, aum=tc.track_aum,
                     spp=self._steps_per_program())
        local = m
        if s.mesh is not None:   # the strategy applies inside each device, to its block
            local = m // sharding.n_shards(s.mesh)
            facts["mesh"] = (sharding.n_shards(s.mesh), jax.process_count())
        plan = getattr(self, "memory_plan", None)   # set by waves.fit_waves
        over = None
        if plan is not None and plan.cost is not None:
            over = lambda name: plan.over_budget(name, m, ec.members_per_program)
            names = strategies.candidates(backend.path_backend(), local)
            logs.info("memory: estimated peak of each candidate for these "
                      f"{m} members: " + ", ".join(
                          f"{n} {plan.candidate_peak(n, m, ec.members_per_program) / 2 ** 20:.0f}"
                          for n in names) + f" MiB (budget {plan.budget_bytes / 2 ** 20:.0f} MiB)")
        return strategies.autotune(
            lambda name: self.runner(s, name),
            strategies.candidates(backend.path_backend(), local), facts,
            (s.states, s.inputs, s.images, s.keypoints), tc.steps, m * tc.batch_size,
            over_budget=over)

    # ---------------------------------------------------------------- training
    @logs.sink
    def fit(self, dataset: KeypointDataset, masks: np.ndarray | None = None, *,
            stages: Sequence[tuple[int, np.ndarray]] | None = None,
            lr_scale: np.ndarray | None = None, member_ids: np.ndarray | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False,
            progress: bool = True, images: np.ndarray | None = None,
            stop_after: int | None = None, mesh: Any = None,
            block_ids: np.ndarray | None = None) -> EnsembleResult:
        """Trains one member per row of `masks` ([M, n] bool, or int bootstrap counts).

        stages: instead of masks, `[(start_step, masks [M, n]), ...]` (starts from 0,
            increasing, below `steps`): member m draws from `stages[s][1][m]` during steps
            [start_s, start_{s+1}) (curricula; no checkpoints). The result's masks are the
            last stage's.
        lr_scale: float [M], multiplies each member's updates (default 1).
        member_ids: int [M], the members' identities for their PRNG keys (default 0..M-1);
            a member trained alone with its id and subset gets the same parameters.
        checkpoint_dir / resume: orbax checkpoints every `ExecConfig.checkpoint_every`
            steps; with resume=True the latest one is restored and training continues.
        images: optional float [n, H, W, C] replacing dataset.images on device (testing).
        stop_after: stop (as if interrupted) once this many steps are done; the schedule
            still assumes `steps`, so a resume continues exactly.
        mesh: a `sharding.make_mesh()` mesh: members are sharded over its devices (and over
            processes after `jax.distributed.initialize`); same results as one device.
            Checkpoints hold only the real members, so a run saved on D devices resumes
            on any other device count.
        block_ids: int [M], with TrainConfig(crn=True) only: members of a block share their
            key (init, draws); default one block (training/crn.py).
        """
        tc, ec = self.train_config, self.exec_config
        if (masks is None) == (stages is None):
            raise ValueError("fit: give either masks or stages")
        staged = stages is not None
        stages = [(0, masks)] if stages is None else list(stages)
        starts = _check_stages(stages, tc.steps)
        if staged and checkpoint_dir is not None:
            raise ValueError("fit: a staged fit takes no checkpoint_dir (it is short and "
                             "rerun from scratch)")
        all_counts = [self._check(dataset, mk) for _, mk in stages]
        counts = all_counts[0]
        m = counts.shape[0]
        if any(c.shape != counts.shape for c in all_counts):
            raise SubsetError("fit: every stage needs masks of the same shape [M, n]")
        member_ids = np.arange(m) if member_ids is None else np.asarray(member_ids)
        chex.assert_shape(member_ids, (m,))
        lr_scale = np.ones(m, np.float32) if lr_scale is None else np.asarray(lr_scale, np.float32)
        chex.assert_shape(lr_scale, (m,))
        if images is not None:
            chex.assert_shape(images, dataset.images.shape)
            if not np.isfinite(images[sum(all_counts).sum(0) > 0]).all():
                raise DatasetError("fit: images of frames inside some subset contain NaN/inf")

        t_setup = time.perf_counter()
        width = int(max(c.sum(1).max() for c in all_counts)) if staged else None
        s = self.setup(dataset, counts, member_ids, lr_scale, images, mesh=mesh, width=width,
                       block_ids=block_ids)
        runner, strategy_info = self.choose_strategy(s)
        stage_inputs = [s.inputs] + [_place(member_inputs(
            c, member_ids, tc, lr_scale, width, block_ids), mesh) for c in all_counts[1:]]
        # The setup's initial states are no longer needed once the probe ran: without this,
        # a third copy of every member's state stays on the device while training.
        states, s.states = s.states, None
        losses = np.full((tc.steps, m), np.nan, np.float32)
        keys = training_keys(tc, member_ids, block_ids)
        step = 0
        # checkpoints hold the m real members only, laid out independently of padding
        real = (lambda st: st) if mesh is None else functools.partial(
            sharding.first_members, m=m, sharding=sharding.checkpoint_sharding(m, mesh))
        ckpt = (Checkpointer(checkpoint_dir, resume=resume)
                if checkpoint_dir is not None else None)
        if ckpt is not None and resume and ckpt.latest_step() is not None:
            step, restored = ckpt.restore_latest({"states": real(states), "losses": losses,
                                                  "member_keys": keys, "masks": counts})
            if not np.array_equal(restored["masks"], counts):
                raise ValueError(f"{checkpoint_dir}: checkpoint subset masks differ from this run's")
            states, losses = restored["states"], np.asarray(restored["losses"])
            if mesh is not None:
                states = sharding.pad_members(states, m, mesh)
            logs.info(f"resumed from step {step} ({ckpt.directory})")
        setup_s = time.perf_counter() - t_setup

        bar = _progress(tc.steps, m, step, progress)
        t_train, first = time.perf_counter(), step
        every = ec.checkpoint_every
        end = tc.steps if stop_after is None else min(tc.steps, stop_after)
        bounds = starts[1:] + [tc.steps]
        while step < end:
            k = int(np.searchsorted(starts, step, side="right")) - 1     # the stage of step
            n = min(ec.chunk_size, end - step, bounds[k] - step)
            if every:
                n = min(n, every - step % every)
            states, chunk_losses = runner(states, stage_inputs[k], s.images, s.keypoints,
                                          step, n)
            losses[step:step + n] = chunk_losses = chunk_losses[:, :m]
            step += n
            if ckpt is not None and ((every and step % every == 0) or step == end):
                ckpt.save(step, {"states": real(states), "losses": losses,
                                 "member_keys": keys, "masks": counts})
            if bar is not None:
                alive = int(np.asarray(sharding.to_host(states.alive))[:m].sum())
                bar.set_postfix(loss=f"{np.nanmean(chunk_losses[-1]):.4f}",
                                alive=f"{alive}/{m}", refresh=False)
                bar.update(n)
        jax.block_until_ready(states)
        train_s = time.perf_counter() - t_train
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
        host = jax.tree_util.tree_map(lambda x: np.asarray(x)[:m], sharding.to_host(states))
        alive = host.alive
        for i in np.flatnonzero(~alive):
            logs.warning(f"warning: member {i} diverged at step {int(host.diverged_at[i])} "
                         "(non-finite loss or weights); it was frozen and is excluded from "
                         "consensus and influence")
        timing = speed(setup_s, train_s, step - first, (step - first) * m * tc.batch_size,
                       strategy_info)
        if staged:
            timing["stage_starts"] = starts
        return EnsembleResult(
            model_config=self.model_config, train_config=tc, params=host.params,
            masks=all_counts[-1], bodyparts=list(dataset.bodyparts),
            image_shape=dataset.image_shape, aum_sum=host.aum_sum, aum_count=host.aum_count,
            losses=losses, alive=alive, diverged_at=host.diverged_at, strategy=runner.name,
            timing=timing)


def speed(setup_s: float, train_s: float, steps: int, images: int, strategy: dict) -> dict:
    """A fit's timing: setup and training seconds, ensemble steps and images per second."""
    per_s = lambda x: x / train_s if train_s > 0 else float("nan")
    return {"setup_s": setup_s, "train_s": train_s, "steps_run": steps,
            "steps_per_s": per_s(steps), "images_per_s": per_s(images), "strategy": strategy}


def _place(tree: Any, mesh: Any) -> Any:
    """A stacked [M, ...] tree on the device(s). One device: committed to it, as states
    restored from a checkpoint are (jit keys its programs on that too, so a resume would
    otherwise compile every chunk program a second time). A mesh: padded once, cyclically,
    to whole device blocks (`sharding.pad_index`) and sharded over its devices."""
    if mesh is None:
        return jax.device_put(tree, jax.local_devices()[0])
    pad = sharding.pad_index(int(jax.tree_util.tree_leaves(tree)[0].shape[0]), mesh)
    return sharding.put_members(jax.tree_util.tree_map(lambda x: np.asarray(x)[pad], tree),
                                mesh)


@functools.lru_cache(maxsize=16)
def _init_fn(mc: ModelConfig, tc: TrainConfig, image_shape: tuple[int, int, int], n: int,
             k: int) -> Callable:
    model = HeatmapNet(mc, k)
    sample = jnp.zeros((1,) + tuple(image_shape), jnp.uint8)
    return jax.jit(lambda key: init_member(model, tc.optimizer(), key, sample, n, k))


def _init_each(init_one: Callable, keys: np.ndarray) -> list:
    """One initial state per member; members sharing a key (crn blocks) share one init."""
    done: dict[bytes, Any] = {}
    for k in np.asarray(keys):
        if k.tobytes() not in done:
            done[k.tobytes()] = init_one(jnp.asarray(k))
    return [done[k.tobytes()] for k in np.asarray(keys)]


_stack = jax.jit(lambda trees: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees))


# One Runner (and its compiled programs) per strategy, step, program length, members,
# group size, mesh and backend paths.
_runner = functools.lru_cache(maxsize=64)(strategies.Runner)


def _progress(total: int, members: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", desc=f"training {members} members",
                dynamic_ncols=True)
