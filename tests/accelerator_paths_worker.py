"""Subprocess worker for tests/test_accelerator_paths.py, run with 2 fake CPU devices
(XLA_FLAGS set before jax starts): every strategy through the accelerator paths (rolled
loop programs, forced on the CPU), on one device and sharded over two, against the CPU
path; and `auto`'s probe at the default step count with a compile counter.

    python tests/accelerator_paths_worker.py OUT.json
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ensemble_jax import (EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig,  # noqa: E402
                          synthetic_dataset)
from ensemble_jax.subsets import random_subsets  # noqa: E402
from ensemble_jax.training import backend, sharding, strategies  # noqa: E402
from ensemble_jax.training.step import make_train  # noqa: E402
from ensemble_jax.training.trainer import member_inputs  # noqa: E402

# The smallest network with every part of the real one (encoder stage, skip, head).
TINY = ModelConfig(widths=(4,), head_width=4, output_stride=2)
STRATEGIES = ("sequential", "unrolled", "vmap", "vmap_matmul")
# Small fits on the CPU path (tests/test_accelerator_paths.py shares their programs).
REPEAT = {"steps": 4, "batch_size": 8}
REPEAT_EXEC = ExecConfig(chunk_size=4)
RUN = 6    # steps run of the 400 of the default schedule: one chunk shorter than a program

compiles: collections.Counter = collections.Counter()


def _listen(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
        if "chunk_program" in kw.get("fun_name", ""):
            compiles["chunk_program"] += 1


jax.monitoring.register_event_duration_secs_listener(_listen)


def flat(params):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def summary(res, ref) -> dict:
    return {"params": rel(flat(res.params), flat(ref.params)),
            "losses": rel(res.losses[:RUN], ref.losses[:RUN]),
            "losses_after_run_nan": bool(np.isnan(res.losses[RUN:]).all()),
            "aum_sum": rel(res.aum_sum, ref.aum_sum),
            "aum_count_equal": bool(np.array_equal(res.aum_count, ref.aum_count)),
            "strategy": res.strategy}


def main(out: Path) -> None:
    os.environ["ENSEMBLE_JAX_CACHE"] = tempfile.mkdtemp(prefix="ej_cache_")
    data = synthetic_dataset(16, image_size=16, seed=1)
    masks = random_subsets(data.n_frames, 4, 0.5, seed=1)
    # The default step count and chunk (so the rolled programs are those `auto` probes
    # below), RUN steps run: one chunk shorter than the program's 50.
    tc = TrainConfig(batch_size=4)
    ec = lambda **kw: ExecConfig(**{"members_per_program": 2, **kw})
    t0 = time.perf_counter()
    ref = EnsembleTrainer(TINY, tc, ec(strategy="sequential")).fit(data, masks, progress=False,
                                                               stop_after=RUN)
    report = {"devices": jax.device_count(), "single": {}, "sharded": {},
              "seconds": {"cpu reference": time.perf_counter() - t0}}
    mesh = sharding.make_mesh()
    with backend.accelerator_paths():
        for name in STRATEGIES:
            for where, m in (("single", None), ("sharded", mesh)):
                t0, before = time.perf_counter(), compiles["chunk_program"]
                res = EnsembleTrainer(TINY, tc, ec(strategy=name)).fit(
                    data, masks, progress=False, mesh=m, stop_after=RUN)
                report[where][name] = dict(summary(res, ref),
                                           compiles=compiles["chunk_program"] - before)
                report["seconds"][f"{where} {name}"] = time.perf_counter() - t0
        # auto at the default step count: the probe's share, and no program compiled twice
        # (checkpoints every 30 steps do not match the 50-step chunks; a resume follows).
        t = ec(checkpoint_every=30)
        ck = Path(tempfile.mkdtemp(prefix="ej_ckpt_"))
        t0, before = time.perf_counter(), compiles["chunk_program"]
        logs: list[str] = []
        first = EnsembleTrainer(TINY, tc, t).fit(data, masks, progress=False, checkpoint_dir=ck,
                                             stop_after=70, log=logs.append)
        probe = first.timing["strategy"]
        report["auto"] = {"train_steps": tc.steps, "probe_steps": probe.get("probe_steps"),
                          "candidates": list(probe.get("table", {})),
                          "chosen": probe["chosen"],
                          "compiles_first_fit": compiles["chunk_program"] - before}
        before = compiles["chunk_program"]
        again = EnsembleTrainer(TINY, tc, t).fit(data, masks, progress=False, checkpoint_dir=ck,
                                             resume=True, stop_after=100, log=logs.append)
        report["auto"]["compiles_resume"] = compiles["chunk_program"] - before
        report["auto"]["resumed_steps"] = again.timing["steps_run"]
        report["auto"]["log"] = logs
        report["seconds"]["auto"] = time.perf_counter() - t0
    report["compiles_total"] = compiles["chunk_program"]
    # The specification: every strategy, on either path, sharded or not, computes
    # jax.vmap(make_train(...)) (one scan of the member step per member) to float tolerance.
    m = masks.shape[0]
    spec_states, spec_losses = jax.jit(jax.vmap(
        make_train(TINY, tc, data.images.shape[1:3], data.n_keypoints, n_steps=RUN),
        in_axes=(0, None, None)))(
        member_inputs(masks.astype(np.int32), np.arange(m), tc),
        data.images, data.keypoints)
    spec = SimpleNamespace(params=spec_states.params, aum_sum=np.asarray(spec_states.aum_sum),
                           aum_count=np.asarray(spec_states.aum_count),
                           losses=np.concatenate([np.asarray(spec_losses).T,
                                                  np.full((tc.steps - RUN, m), np.nan)]))
    report["spec"] = {}
    for path, forced in (("accelerator", True), ("cpu", False)):
        with backend.accelerator_paths(forced):
            for name in STRATEGIES:
                for where, mm in (("single", None), ("sharded", mesh)):
                    res = EnsembleTrainer(TINY, tc, ec(strategy=name)).fit(
                        data, masks, progress=False, mesh=mm, stop_after=RUN)
                    report["spec"][f"{path} {where} {name}"] = summary(res, spec)
    out.write_text(json.dumps(report, indent=1))


def repeatability() -> dict:
    """The same small fit twice with deterministic=True and twice without: whether the
    repeats are bit-identical, and how far deterministic mode moves the numbers."""
    data = synthetic_dataset(16, image_size=16, seed=2)
    # batch 8 from subsets of ~8 frames: duplicate frames in most batches (AUM scatter)
    masks = random_subsets(data.n_frames, 2, 0.5, seed=2)
    runs = {}
    for det in (True, False):
        tc = TrainConfig(**REPEAT, deterministic=det)
        runs[det] = [EnsembleTrainer(TINY, tc, dataclasses.replace(REPEAT_EXEC,
                                                                   strategy="sequential")).fit(data, masks, progress=False)
                     for _ in range(2)]

    def same(a, b):
        return bool(np.array_equal(flat(a.params), flat(b.params))
                    and np.array_equal(a.losses, b.losses, equal_nan=True)
                    and np.array_equal(a.aum_sum, b.aum_sum))
    d, n = runs[True], runs[False]
    return {"backend": jax.default_backend(),
            "flags": os.environ.get("XLA_FLAGS", ""),
            "deterministic_repeat_identical": same(*d),
            "default_repeat_identical": same(*n),
            "default_repeat_params": rel(flat(n[1].params), flat(n[0].params)),
            "default_repeat_aum": rel(n[1].aum_sum, n[0].aum_sum),
            "deterministic_vs_default_params": rel(flat(d[0].params), flat(n[0].params)),
            "deterministic_vs_default_aum": rel(d[0].aum_sum, n[0].aum_sum),
            "aum_count_equal": bool(np.array_equal(d[0].aum_count, n[0].aum_count))}


if __name__ == "__main__":
    if sys.argv[1] == "repeatability":
        Path(sys.argv[2]).write_text(json.dumps(repeatability()))
    else:
        main(Path(sys.argv[1]))
