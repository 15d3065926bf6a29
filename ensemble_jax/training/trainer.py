"""`EnsembleTrainer`: trains M members, each on its own subset, in one compiled program per
chunk of steps. The host only runs between chunks (progress bar, logging, checkpoints)."""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ensemble_jax.data.dataset import DatasetError, KeypointDataset
from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
from ensemble_jax.subsets import validate_masks
from ensemble_jax.training import backend, errors, sharding, strategies
from ensemble_jax.training.checkpoint import Checkpointer
from ensemble_jax.training.config import TrainConfig
from ensemble_jax.training.result import EnsembleResult
from ensemble_jax.training.step import MemberInputs, MemberState, init_member, make_member_step


def member_keys(seed: int, member_ids: np.ndarray) -> np.ndarray:
    """uint32 [M, 2]: member m's key depends only on (seed, m), never on the ensemble size."""
    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(member_ids, jnp.uint32))
    return np.asarray(jax.random.key_data(keys))


def subset_index(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """counts [M, n] -> (index int32 [M, Nmax], size int32 [M]); a frame drawn c times in a
    bootstrap appears c times, so uniform draws over the list reproduce its weight."""
    sizes = counts.sum(1).astype(np.int32)
    index = np.zeros((counts.shape[0], int(sizes.max())), np.int32)
    for m, row in enumerate(counts):
        lst = np.repeat(np.arange(counts.shape[1], dtype=np.int32), row)
        index[m, :lst.size] = lst
    return index, sizes


def member_inputs(counts: np.ndarray, member_ids: np.ndarray, seed: int,
                  lr_scale: np.ndarray | None = None) -> MemberInputs:
    """The stacked per-member constants (host arrays, [M] leading) of members with these
    subsets, ids and learning-rate scales: what `step.make_train`'s train takes."""
    index, sizes = subset_index(counts)
    lr = np.ones(counts.shape[0], np.float32) if lr_scale is None else lr_scale
    return MemberInputs(member_keys(seed, member_ids), index, sizes, np.asarray(lr, np.float32))


@dataclasses.dataclass
class _Setup:
    model: HeatmapNet
    member_step: Callable
    states: MemberState
    inputs: MemberInputs
    images: jax.Array
    keypoints: jax.Array
    mesh: Any = None          # jax.sharding.Mesh when sharded over devices, else None
    n_real: int = 0           # real members (states/inputs may carry padded copies)


class EnsembleTrainer:
    """Usage::

        trainer = EnsembleTrainer(ModelConfig(), TrainConfig(steps=600))
        result = trainer.fit(train_set, nested_subsets(train_set.n_frames, [.1, .5, .9], 3))
        preds = result.predict(test_set.images)
    """

    def __init__(self, model_config: ModelConfig | None = None,
                 train_config: TrainConfig | None = None):
        self.model_config = model_config or ModelConfig()
        self.train_config = train_config or TrainConfig()

    # ------------------------------------------------------------------ set-up
    def _check(self, dataset: Any, masks: Any) -> tuple[np.ndarray, np.ndarray | None]:
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
        return counts, None

    def setup(self, dataset: KeypointDataset, counts: np.ndarray, member_ids: np.ndarray,
              lr_scale: np.ndarray, images: np.ndarray | None = None, mesh: Any = None
              ) -> _Setup:
        """Device-resident state and inputs. With a `mesh` (sharding.make_mesh), members are
        padded to a multiple of the device count and sharded over the `members` axis; the
        shared frames are replicated on every device."""
        mc, tc = self.model_config, self.train_config
        model = HeatmapNet(mc, dataset.n_keypoints)
        tx = tc.optimizer()
        h, w = dataset.images.shape[1:3]
        member_step = _member_step(mc, _step_key(tc), (h, w), dataset.n_keypoints)
        keys = member_keys(tc.seed, member_ids)
        index, sizes = subset_index(counts)
        # One compiled single-member init, called per member (its compile is slow on CPU
        # and would otherwise recur for every ensemble size); values equal a vmapped init.
        init_one = _init_fn(mc, dataclasses.replace(_step_key(tc), deterministic=False),
                            (h, w, dataset.images.shape[3]), dataset.n_frames,
                            dataset.n_keypoints)   # (the init has no matmul to make exact)
        imgs = dataset.images if images is None else images
        m = int(counts.shape[0])
        if mesh is not None:
            pad = sharding.pad_index(m, mesh)
            inputs = sharding.put_members(MemberInputs(
                keys[pad], index[pad], sizes[pad], np.asarray(lr_scale, np.float32)[pad]), mesh)
            host = jax.device_get([init_one(jnp.asarray(k)) for k in keys])
            states = sharding.put_members(
                jax.tree_util.tree_map(lambda *xs: np.stack(xs)[pad], *host), mesh)
            return _Setup(model, member_step, states, inputs,
                          sharding.put_global(imgs, sharding.replicated(mesh)),
                          sharding.put_global(dataset.keypoints, sharding.replicated(mesh)),
                          mesh=mesh, n_real=m)
        inputs = MemberInputs(jnp.asarray(keys), jnp.asarray(index), jnp.asarray(sizes),
                              jnp.asarray(lr_scale, jnp.float32))
        states = _stack([init_one(inputs.key[i]) for i in range(m)])
        # Committed to its device, as the states restored from a checkpoint are: jit
        # keys its compiled programs on that too, so a resume would otherwise compile
        # every chunk program a second time.
        states = jax.device_put(states, jax.tree_util.tree_leaves(states)[0].sharding)
        return _Setup(model, member_step, states, inputs, jnp.asarray(imgs),
                      jnp.asarray(dataset.keypoints), n_real=m)

    def _step_for(self, s: _Setup, name: str) -> Callable:
        """The member step a strategy runs (strategies.model_config_for): the setup's own,
        or that of the same network in another form (same function, same parameters)."""
        mc = strategies.model_config_for(name, self.model_config)
        if mc == self.model_config:
            return s.member_step
        return _member_step(mc, _step_key(self.train_config), tuple(s.images.shape[1:3]),
                            int(s.keypoints.shape[1]))

    def choose_strategy(self, s: _Setup, log: Callable[[str], None]) -> tuple[Any, dict]:
        tc = self.train_config
        m = int(s.inputs.subset_size.shape[0])
        paths = backend.path_backend()
        spp = tc.steps_per_program or strategies.default_steps_per_program(paths, tc.chunk_size)
        if s.mesh is None:
            make = lambda name: _runner(name, self._step_for(s, name), spp, m,
                                        tc.members_per_program, paths)
            local, mesh_facts = m, None
        else:  # the strategy applies inside each device, to its block of members
            make = lambda name: _sharded_runner(name, self._step_for(s, name), spp, m,
                                                tc.members_per_program, s.mesh, paths)
            local = m // sharding.n_shards(s.mesh)
            mesh_facts = (sharding.n_shards(s.mesh), jax.process_count())
        if tc.strategy != "auto":
            return make(tc.strategy), {"chosen": tc.strategy, "how": "fixed by TrainConfig"}
        key = strategies.cache_key(model=dataclasses.asdict(self.model_config), members=m,
                                   images=tuple(s.images.shape), batch=tc.batch_size,
                                   group=tc.members_per_program, aum=tc.track_aum, spp=spp,
                                   **({"mesh": mesh_facts} if mesh_facts else {}))
        names = strategies.candidates(paths, local)
        cached = strategies.load_cached(key)
        # Every process must run the same programs: process 0's cache and choice decide.
        if sharding.agree(1 if cached else 0) and jax.process_count() > 1:
            chosen = strategies.ALL[sharding.agree(
                strategies.ALL.index(cached["chosen"]) if cached else 0)]
            log(f"strategy: {chosen} (process 0's cached measurement)")
            return make(chosen), {"chosen": chosen, "how": "cached"}
        if cached and jax.process_count() == 1:
            log(f"strategy: {cached['chosen']} (cached measurement for this backend and shapes)")
            return make(cached["chosen"]), dict(cached, how="cached")
        timed = strategies.timed_probe_steps(tc.steps, len(names))
        table, runners, failed = {}, {}, {}
        probe_steps = 0

        def attempt(name: str) -> dict | None:
            """One measurement; a candidate that cannot be built, compiled or run (out of
            device memory, a compiler failure) is skipped with its reason."""
            try:
                if name not in runners:
                    runners[name] = make(name)
                return strategies.measure(runners[name], s.states, s.inputs, s.images,
                                          s.keypoints, probe_steps=timed)
            except Exception as e:   # noqa: BLE001 - any failure disqualifies a candidate
                failed[name] = errors.one_line(e)
                kind = "out of memory" if errors.is_resource_error(e) else "failed"
                log(f"strategy probe {name:>11}: skipped, {kind}: {failed[name]}")
                table.pop(name, None)
                return None

        for name in names:
            got = attempt(name)
            if got is None:
                continue
            table[name] = got
            probe_steps += got["steps"]
            log(f"strategy probe {name:>11}: {m * tc.batch_size / got['step_s']:8.0f}"
                f" img/s (compile {got['compile_s']:.1f} s)")
        # A candidate that failed on any process is out everywhere (all run the same one).
        for name, bad in zip(names, sharding.any_process([n in failed for n in names])):
            if bad and name not in failed:
                failed[name] = "failed on another process"
                table.pop(name, None)
        if not table:
            raise strategies.NoStrategyError(
                "strategy auto: every candidate failed (" + "; ".join(
                    f"{k}: {v}" for k, v in failed.items()) + "); lower --batch-size, the "
                "members per wave (--members-per-wave) or --image-size")
        # A second timing of the close contenders (programs already compiled): one short
        # timing on a shared machine can be 20% off, more than the gaps between them.
        fastest = min(t["step_s"] for t in table.values())
        for name in list(table):
            if len(table) > 1 and table[name]["step_s"] < strategies.RETIME_WITHIN * fastest:
                again = attempt(name)
                if again is not None:
                    table[name]["step_s"] = min(table[name]["step_s"], again["step_s"])
                    probe_steps += again["steps"]
        for name in table:
            table[name]["images_per_s"] = m * tc.batch_size / table[name]["step_s"]
        chosen = min(table, key=lambda k: table[k]["step_s"])
        chosen = names[sharding.agree(names.index(chosen))]
        entry = {"chosen": chosen, "table": table, "probe_steps": probe_steps}
        if failed:
            entry["failed"] = failed
        if sharding.is_primary():
            strategies.store_cached(key, entry)
        log(f"strategy: {chosen} (fastest measured on {paths}: " + ", ".join(
            f"{k} {v['images_per_s']:.0f}" for k, v in table.items()) + " img/s"
            + (f"; skipped {', '.join(failed)}" if failed else "") + ")")
        return make(chosen), dict(entry, how="measured")

    # ---------------------------------------------------------------- training
    def fit(self, dataset: KeypointDataset, masks: np.ndarray, *,
            lr_scale: np.ndarray | None = None, member_ids: np.ndarray | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False,
            progress: bool = True, log: Callable[[str], None] | None = None,
            images: np.ndarray | None = None, stop_after: int | None = None,
            mesh: Any = None) -> EnsembleResult:
        """Trains one member per row of `masks` ([M, n] bool, or int bootstrap counts).

        lr_scale: float [M], multiplies each member's updates (default 1).
        member_ids: int [M], the members' identities for their PRNG keys (default 0..M-1);
            a member trained alone with its id and subset gets the same parameters.
        checkpoint_dir / resume: orbax checkpoints every `checkpoint_every` steps; with
            resume=True the latest one is restored and training continues from it.
        images: optional float [n, H, W, C] replacing dataset.images on device (testing).
        stop_after: stop (as if interrupted) once this many steps are done; the schedule
            still assumes `steps`, so a resume continues exactly.
        mesh: a `sharding.make_mesh()` mesh: members are sharded over its devices (and over
            processes after `jax.distributed.initialize`); same results as one device.
            Checkpoints hold only the real members, so a run saved on D devices resumes
            on any other device count.
        """
        log = log or (lambda msg: None)
        tc = self.train_config
        counts, _ = self._check(dataset, masks)
        m = counts.shape[0]
        member_ids = np.arange(m) if member_ids is None else np.asarray(member_ids)
        chex.assert_shape(member_ids, (m,))
        lr_scale = np.ones(m, np.float32) if lr_scale is None else np.asarray(lr_scale, np.float32)
        chex.assert_shape(lr_scale, (m,))
        if images is not None:
            chex.assert_shape(images, dataset.images.shape)
            if not np.isfinite(images[counts.sum(0) > 0]).all():
                raise DatasetError("fit: images of frames inside some subset contain NaN/inf")

        t_setup = time.perf_counter()
        s = self.setup(dataset, counts, member_ids, lr_scale, images, mesh=mesh)
        runner, strategy_info = self.choose_strategy(s, log)
        # The setup's initial states are no longer needed once the probe ran: without this,
        # a third copy of every member's state stays on the device while training.
        states, s.states = s.states, None
        losses = np.full((tc.steps, m), np.nan, np.float32)
        keys = member_keys(tc.seed, member_ids)
        step = 0
        if mesh is None:
            real = lambda st: st
        else:   # checkpoints hold the m real members only, laid out independently of padding
            ck_sharding = sharding.checkpoint_sharding(m, mesh)
            real = lambda st: sharding.first_members(st, m, ck_sharding)
        ckpt = (Checkpointer(checkpoint_dir, resume=resume, log=log)
                if checkpoint_dir is not None else None)
        if ckpt is not None and resume and ckpt.latest_step() is not None:
            step, restored = ckpt.restore_latest({"states": real(states), "losses": losses,
                                                  "member_keys": keys, "masks": counts})
            if not np.array_equal(restored["masks"], counts):
                raise ValueError(f"{checkpoint_dir}: checkpoint subset masks differ from this run's")
            states, losses = restored["states"], np.asarray(restored["losses"])
            if mesh is not None:
                states = sharding.pad_members(states, m, mesh)
            log(f"resumed from step {step} ({ckpt.directory})")
        setup_s = time.perf_counter() - t_setup

        bar = _progress(tc.steps, m, step, progress)
        t_train = time.perf_counter()
        steps_run = 0
        every = tc.checkpoint_every
        end = tc.steps if stop_after is None else min(tc.steps, stop_after)
        while step < end:
            n = min(tc.chunk_size, end - step)
            if every:
                n = min(n, every - step % every)
            states, chunk_losses = runner(states, s.inputs, s.images, s.keypoints, step, n)
            chunk_losses = chunk_losses[:, :m]
            losses[step:step + n] = chunk_losses
            step += n
            steps_run += n
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
        host = sharding.to_host(states)
        if mesh is not None:
            host = jax.tree_util.tree_map(lambda x: np.asarray(x)[:m], host)
        alive = np.asarray(host.alive)
        for i in np.flatnonzero(~alive):
            log(f"warning: member {i} diverged at step {int(host.diverged_at[i])} (non-finite "
                f"loss or weights); it was frozen and is excluded from consensus and influence")
        timing = {"setup_s": setup_s, "train_s": train_s, "steps_run": steps_run,
                  "steps_per_s": steps_run / train_s if train_s > 0 else float("nan"),
                  "images_per_s": steps_run * m * tc.batch_size / train_s if train_s > 0
                  else float("nan"),
                  "strategy": strategy_info}
        return EnsembleResult(
            model_config=self.model_config, train_config=tc, params=host.params, masks=counts,
            bodyparts=list(dataset.bodyparts), image_shape=dataset.image_shape,
            aum_sum=np.asarray(host.aum_sum), aum_count=np.asarray(host.aum_count),
            losses=losses, alive=alive, diverged_at=np.asarray(host.diverged_at),
            strategy=runner.name, timing=timing)


def _step_key(tc: TrainConfig) -> TrainConfig:
    """The settings the compiled step depends on (not the seed, strategy or chunking), so
    fits that differ only in those share compiled programs."""
    return dataclasses.replace(tc, seed=0, strategy="auto", chunk_size=1, checkpoint_every=0,
                               steps_per_program=0, members_per_program=1)


@functools.lru_cache(maxsize=32)
def _member_step(mc: ModelConfig, tc: TrainConfig, image_hw: tuple[int, int], k: int):
    hw = (image_hw[0] // mc.output_stride, image_hw[1] // mc.output_stride)
    return make_member_step(HeatmapNet(mc, k), tc.optimizer(), tc, hw, mc.output_stride)


@functools.lru_cache(maxsize=16)
def _init_fn(mc: ModelConfig, tc: TrainConfig, image_shape: tuple[int, int, int], n: int,
             k: int) -> Callable:
    model = HeatmapNet(mc, k)
    sample = jnp.zeros((1,) + tuple(image_shape), jnp.uint8)
    return jax.jit(lambda key: init_member(model, tc.optimizer(), key, sample, n, k))


_stack = jax.jit(lambda trees: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees))


@functools.lru_cache(maxsize=64)
def _sharded_runner(name: str, member_step: Callable, spp: int, m: int, per_program: int,
                    mesh: Any, paths: str | None = None):
    return sharding.ShardedRunner(name, member_step, spp, m, per_program, mesh,
                                  paths or backend.path_backend())


@functools.lru_cache(maxsize=64)
def _runner(name: str, member_step: Callable, spp: int, m: int, per_program: int,
            paths: str | None = None):
    return strategies.make_runner(name, member_step, spp, m, per_program,
                                  paths or backend.path_backend())


def _progress(total: int, members: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", desc=f"training {members} members",
                dynamic_ncols=True)
