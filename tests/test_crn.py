"""Common random numbers (training/crn.py): the coherent sampler against its NumPy twin,
and what CRN training must do (identical subsets -> identical members, defaults unchanged)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_twins as twins
from ensemble_jax import EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig, synthetic_dataset
from ensemble_jax.training import crn
from ensemble_jax.training.trainer import member_keys, subset_index, training_keys

TINY = ModelConfig(widths=(4, 8), head_width=4)


def test_frame_positions_distinct_and_spread():
    h = np.asarray(crn.frame_positions(37))
    assert h.shape == (37,)
    np.testing.assert_allclose(np.sort(h), (np.arange(37) + 0.5) / 37, atol=1e-6)


@pytest.mark.parametrize("trial", range(3))
def test_coherent_draw_matches_twin(trial):
    rng = np.random.default_rng(trial)
    n = int(rng.integers(3, 60))
    masks = rng.random((5, n)) < rng.uniform(0.1, 0.9)
    masks[:, rng.integers(n)] = True                     # no empty subset
    index, sizes = subset_index(masks.astype(np.int32))
    index = crn.order_by_position(index, sizes, n)
    h = np.asarray(crn.frame_positions(n))
    draw = jax.jit(crn.coherent_draw, static_argnums=(3, 4))
    for m in range(5):
        key = jax.random.key(100 * trial + m)
        got = np.asarray(draw(key, jnp.asarray(index[m]), jnp.asarray(sizes[m]), n, 32))
        u = np.asarray(jax.random.uniform(key, (32,)))
        want = twins.coherent_draw(h, np.flatnonzero(masks[m]), u)
        np.testing.assert_array_equal(got, want)
        assert masks[m, got].all()                        # only the member's own frames


def test_adding_a_frame_changes_only_the_draws_in_its_arc():
    n, key = 40, jax.random.key(7)
    rng = np.random.default_rng(1)
    base = rng.random(n) < 0.5
    extra = int(np.flatnonzero(~base)[0])
    plus = base.copy()
    plus[extra] = True
    idx, size = subset_index(np.stack([base, plus]).astype(np.int32))
    idx = crn.order_by_position(idx, size, n)
    a, b = (np.asarray(crn.coherent_draw(key, jnp.asarray(idx[i]), jnp.asarray(size[i]), n, 400))
            for i in range(2))
    changed = a != b
    assert (b[changed] == extra).all() and changed.any()
    # Draws that changed are exactly those now landing on the new frame; all others agree.
    assert (changed == (b == extra)).all()


def test_keys_default_unchanged_and_blocks():
    ids = np.arange(5)
    np.testing.assert_array_equal(training_keys(TrainConfig(), ids), member_keys(0, ids))
    with pytest.raises(ValueError, match="crn"):
        training_keys(TrainConfig(), ids, block_ids=np.zeros(5, int))
    k = training_keys(TrainConfig(crn=True), ids, block_ids=np.array([0, 0, 1, 1, 2]))
    assert (k[0] == k[1]).all() and (k[2] == k[3]).all() and not (k[0] == k[2]).all()
    assert not (k[0] == member_keys(0, ids)[0]).all()
    with pytest.raises(ValueError, match="bootstrap"):
        crn.check_counts(np.array([[0, 2, 1]]))


def test_crn_members_identical_iff_same_subset_and_block():
    """Two waves (fit_waves forwards the block ids): member 2 repeats member 0 across waves."""
    from ensemble_jax.training.waves import fit_waves, plan_waves
    data = synthetic_dataset(24, image_size=16, seed=3)
    rng = np.random.default_rng(0)
    a = rng.random(24) < 0.5
    b = a.copy()
    b[int(np.flatnonzero(~a)[0])] = True
    masks = np.stack([a, b, a, a])
    tc = TrainConfig(steps=3, batch_size=4, track_aum=False, crn=True)
    res = fit_waves(EnsembleTrainer(TINY, tc, ExecConfig(chunk_size=3, strategy="sequential")), data, masks, plan_waves(4, members_per_wave=2),
                    progress=False, block_ids=np.array([0, 0, 0, 1]))
    leaves = jax.tree_util.tree_leaves(res.params)
    same = lambda i, j: all(np.array_equal(x[i], x[j]) for x in leaves)
    assert same(0, 2)                      # same block, same subset: the same member
    assert not same(0, 1)                  # one frame more: a different member
    assert not same(0, 3)                  # another block: another init and draws


def test_sweep_crn_flag(tmp_path, capsys):
    from ensemble_jax import cli
    args = cli.build_parser().parse_args(["sweep", "--crn", "--plan", "random",
                                          "--out", str(tmp_path / "a")])
    assert cli.sweep_configs(args)[2].crn
    args = cli.build_parser().parse_args(["sweep", "--out", str(tmp_path / "a")])
    assert not cli.sweep_configs(args)[2].crn                     # default unchanged
    out = tmp_path / "b"
    assert cli.main(["sweep", "--crn", "--plan", "bootstrap", "--out", str(out)]) == 2
    assert "bootstrap" in capsys.readouterr().err and not out.exists()
