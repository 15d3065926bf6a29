import numpy as np
import pytest

from ensemble_jax import subsets as S


def test_nested_subsets_nest_and_reproduce():
    fr = [0.1, 0.3, 0.5, 0.7, 0.9]
    m = S.nested_subsets(100, fr, n_seeds=3, seed=4)
    assert m.shape == (15, 100) and m.dtype == bool
    seeds, fracs = S.nested_layout(fr, 3)
    for s in range(3):
        rows = m[seeds == s]
        assert [r.sum() for r in rows] == [10, 30, 50, 70, 90]
        for small, big in zip(rows[:-1], rows[1:]):
            assert not (small & ~big).any(), "a smaller subset must lie inside the larger"
    assert not np.array_equal(m[0], m[5]), "different seeds draw different subsets"
    np.testing.assert_array_equal(m, S.nested_subsets(100, fr, 3, seed=4))


def test_random_subsets_distinct_and_sized():
    m = S.random_subsets(20, 30, 0.5, seed=1)
    assert (m.sum(1) == 10).all()
    assert len({r.tobytes() for r in m}) == 30
    np.testing.assert_array_equal(m, S.random_subsets(20, 30, 0.5, seed=1))


def test_random_subsets_refuses_impossible_distinct_plan():
    with pytest.raises(S.SubsetError, match="distinct subsets"):
        S.random_subsets(4, 7, 0.25, seed=0)   # only 4 subsets of size 1 exist
    assert S.random_subsets(4, 7, 0.25, seed=0, allow_duplicates=True).shape == (7, 4)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_fraction_outside_range_is_refused(bad):
    with pytest.raises(S.SubsetError, match="fraction"):
        S.random_subsets(10, 2, bad)


def test_bootstrap_kfold_loo():
    b = S.bootstrap_subsets(50, 8, seed=2)
    assert b.dtype == np.int32 and (b.sum(1) == 50).all() and (b > 1).any()
    k = S.kfold_subsets(23, 5, seed=0)
    assert k.shape == (5, 23)
    assert ((~k).sum(0) == 1).all(), "each frame is held out by exactly one fold"
    loo = S.leave_one_out_subsets(6)
    assert (np.diag(loo) == False).all() and loo.sum() == 30  # noqa: E712


def test_validate_masks_rejects_empty_subset_and_bad_shapes():
    m = np.ones((3, 10), bool)
    m[1] = False
    with pytest.raises(S.SubsetError, match=r"member\(s\) \[1\] have an empty subset"):
        S.validate_masks(m, 10)
    with pytest.raises(S.SubsetError, match="n_frames=11"):
        S.validate_masks(np.ones((3, 10), bool), 11)
