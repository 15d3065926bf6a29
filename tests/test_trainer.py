"""The trainer's contract: strategies agree, members are independent, a member never reads
a frame outside its subset, and resuming is exact."""
import dataclasses

import jax
import numpy as np
import pytest

from ensemble_jax import EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig, synthetic_dataset
from ensemble_jax.subsets import random_subsets
from ensemble_jax.training import strategies

SMALL = ModelConfig(widths=(8, 16, 32), head_width=16)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(48, image_size=32, seed=3)


def flat(params):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def fit(data, masks, **kw):
    ec = ExecConfig(**{"chunk_size": 10, **kw})
    return EnsembleTrainer(SMALL, TrainConfig(steps=20, batch_size=8), ec).fit(
        data, masks, progress=False)


# slow: test_accelerator_paths::test_every_strategy_equals_the_specification checks every
# strategy (one device and sharded) against step.make_train in the default suite
@pytest.mark.slow
def test_strategies_agree(data):
    masks = random_subsets(data.n_frames, 4, 0.5, seed=0)
    names = ("sequential", "unrolled", "vmap", "vmap_matmul")
    results = {s: fit(data, masks, strategy=s) for s in names}
    ref = flat(results["sequential"].params)
    for name in names[1:]:
        d = rel(flat(results[name].params), ref)
        print(f"{name} vs sequential: relative parameter difference {d:.2e}")
        assert d < 1e-4, name
        np.testing.assert_allclose(results[name].losses, results["sequential"].losses,
                                   rtol=1e-3)


def test_auto_measures_every_candidate_then_reuses_its_choice(data, tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_JAX_CACHE", str(tmp_path))   # an empty strategy cache
    masks = random_subsets(data.n_frames, 4, 0.5, seed=0)
    first = fit(data, masks, strategy="auto")
    info = first.timing["strategy"]
    print({k: round(v["images_per_s"]) for k, v in info["table"].items()}, "->", info["chosen"])
    assert info["how"] == "measured"
    assert set(info["table"]) == set(strategies.candidates(jax.default_backend(), 4))
    assert info["chosen"] == min(info["table"], key=lambda k: info["table"][k]["step_s"])
    assert first.strategy == info["chosen"]
    assert (tmp_path / "strategies.json").exists()
    second = fit(data, masks, strategy="auto")
    assert second.timing["strategy"]["how"] == "cached"
    assert second.strategy == first.strategy
    np.testing.assert_array_equal(flat(second.params), flat(first.params))


def test_member_does_not_depend_on_neighbours(data):
    masks = random_subsets(data.n_frames, 3, 0.5, seed=1)
    full = fit(data, masks, strategy="unrolled")
    alone = EnsembleTrainer(SMALL, TrainConfig(steps=20, batch_size=8),
                            ExecConfig(chunk_size=10, strategy="sequential")).fit(
        data, masks[2:3], member_ids=np.array([2]), progress=False)
    np.testing.assert_array_equal(flat(alone.params), flat(full.member_params(2)))


def test_member_never_reads_outside_its_subset(data):
    masks = random_subsets(data.n_frames, 3, 0.4, seed=2)
    masks[:, 0] = False   # frame 0 is in no subset: poisoned below
    images = data.images.astype(np.float32) / 255.0
    inside_any = masks.any(0)
    poisoned = images.copy()
    poisoned[~inside_any] = np.nan
    for m in range(3):   # every member reads only its own rows: poison per member too
        res = EnsembleTrainer(SMALL, TrainConfig(steps=10, batch_size=8),
                              ExecConfig(strategy="vmap")).fit(
            data, masks[m:m + 1], member_ids=np.array([m]), progress=False,
            images=np.where(masks[m][:, None, None, None], images, np.nan).astype(np.float32))
        assert np.isfinite(flat(res.params)).all(), f"member {m} read a poisoned frame"
        assert res.alive.all()


def test_resume_after_checkpoint_matches_uninterrupted(data, tmp_path):
    masks = random_subsets(data.n_frames, 2, 0.5, seed=3)
    tc = TrainConfig(steps=12, batch_size=8)
    ec = ExecConfig(chunk_size=4, checkpoint_every=4, strategy="sequential")
    straight = EnsembleTrainer(SMALL, tc, ec).fit(data, masks, progress=False)
    # Train only to step 8 (as if killed there), then resume to 12.
    d = tmp_path / "ckpt"
    EnsembleTrainer(SMALL, dataclasses.replace(tc, steps=12), ec).fit(
        data, masks, progress=False, checkpoint_dir=d, stop_after=8)
    resumed = EnsembleTrainer(SMALL, tc, ec).fit(data, masks, progress=False,
                                             checkpoint_dir=d, resume=True)
    np.testing.assert_array_equal(flat(resumed.params), flat(straight.params))
    np.testing.assert_array_equal(resumed.losses, straight.losses)
    np.testing.assert_array_equal(resumed.aum_sum, straight.aum_sum)


def test_diverging_member_is_isolated(data):
    masks = random_subsets(data.n_frames, 3, 0.5, seed=4)
    base = fit(data, masks, strategy="sequential")
    lr = np.array([1.0, 1e9, 1.0], np.float32)
    res = EnsembleTrainer(SMALL, TrainConfig(steps=20, batch_size=8),
                          ExecConfig(chunk_size=10, strategy="sequential")).fit(
        data, masks, lr_scale=lr, progress=False)
    assert list(res.alive) == [True, False, True]
    assert res.diverged_at[1] >= 0
    for m in (0, 2):
        np.testing.assert_array_equal(flat(res.member_params(m)), flat(base.member_params(m)))
