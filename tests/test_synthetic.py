"""Tests for the synthetic animal-pose dataset (`ensemble_jax.data.synthetic`)."""
from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from ensemble_jax.data.dataset import KeypointDataset
from ensemble_jax.data.synthetic import (
    LEFT_RIGHT_PAIRS, PART_NAMES, _PART_RGB, save_contact_sheet, synthetic_dataset,
    synthetic_dataset_with_truth, synthetic_frame)


@functools.lru_cache(maxsize=None)
def _data(n=300, size=64, k=4, noise=0.0, seed=0, n_distractors=2, occlusion=0.1,
          domain=0, channels=3, hidden_truth=False):
    return synthetic_dataset_with_truth(
        n, size, k, noise, seed, n_distractors=n_distractors, occlusion_rate=occlusion,
        domain=domain, channels=channels, hidden_truth=hidden_truth)


def _same(a: KeypointDataset, b: KeypointDataset) -> bool:
    return (np.array_equal(a.images, b.images)
            and np.array_equal(a.keypoints, b.keypoints, equal_nan=True)
            and np.array_equal(a.noise_mask, b.noise_mask)
            and list(a.frame_ids) == list(b.frame_ids))


# ------------------------------------------------------------------ basic contract
def test_shapes_dtypes_and_names():
    ds, clean = _data(n=20)
    assert isinstance(ds, KeypointDataset)
    assert ds.images.shape == (20, 64, 64, 3) and ds.images.dtype == np.uint8
    assert ds.keypoints.shape == (20, 4, 2) and ds.keypoints.dtype == np.float32
    assert clean.shape == (20, 4, 2) and clean.dtype == np.float32
    assert ds.noise_mask.shape == (20, 4) and ds.noise_mask.dtype == np.bool_
    assert list(ds.bodyparts) == ["snout", "leftear", "rightear", "tailbase"]
    assert ds.frame_ids[12] == "synthetic/d0/frame_00012"
    assert np.all(ds.letterbox == np.array([1, 0, 0], np.float32))
    gray = synthetic_dataset(3, channels=1, domain=1)
    assert gray.images.shape == (3, 64, 64, 1)
    assert gray.frame_ids[2] == "synthetic/d1/frame_00002"
    assert synthetic_dataset(0).n_frames == 0
    assert list(synthetic_dataset(1, n_keypoints=16).bodyparts) == list(PART_NAMES)
    assert len(set(PART_NAMES)) == 16


@pytest.mark.parametrize("size", [32, 64, 96])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_sizes_and_keypoint_counts(size, k):
    ds, truth = synthetic_dataset_with_truth(16, size, k, noise_rate=0.3, hidden_truth=True)
    assert ds.images.shape == (16, size, size, 3)
    assert ds.keypoints.shape == (16, k, 2) and len(ds.bodyparts) == k
    # every part (hidden ones too) lies inside the image, with room for its blob
    assert not np.isnan(truth).any()
    r = max(1.25, 2.5 * size / 64)
    assert truth.min() >= r and truth.max() <= size - 1 - r
    lab = ds.labeled
    assert lab.mean() > 0.7
    assert ds.keypoints[lab].min() >= 0 and ds.keypoints[lab].max() <= size - 1


def test_sixteen_keypoints_and_bad_arguments():
    ds = synthetic_dataset(8, 96, 16, noise_rate=0.5)
    assert ds.keypoints.shape == (8, 16, 2)
    for bad in [dict(n_keypoints=0), dict(n_keypoints=17), dict(noise_rate=1.5),
                dict(occlusion_rate=-0.1), dict(seed=-1), dict(domain=-1), dict(channels=2),
                dict(n_distractors=-1), dict(image_size=8)]:
        with pytest.raises(ValueError):
            synthetic_dataset(2, **bad)


def test_deterministic():
    a = synthetic_dataset(40, noise_rate=0.2, seed=3)
    b = synthetic_dataset(40, noise_rate=0.2, seed=3)
    assert _same(a, b)
    c = synthetic_dataset(40, noise_rate=0.2, seed=4)
    assert not np.array_equal(a.images, c.images)


def test_frames_do_not_depend_on_n_frames():
    short, _ = _data(n=100)
    long, _ = _data(n=300)              # spans several internal batches
    assert _same(short, long.take(np.arange(100)))
    f = synthetic_frame(217)
    assert np.array_equal(f.image, long.images[217])
    assert np.array_equal(f.labels, long.keypoints[217], equal_nan=True)


def test_scene_does_not_depend_on_noise_rate():
    clean_ds, clean = _data(noise=0.0)
    noisy_ds, noisy_clean = _data(noise=0.3)
    assert np.array_equal(clean_ds.images, noisy_ds.images)
    assert np.array_equal(clean, noisy_clean, equal_nan=True)


# -------------------------------------------------------------------- label noise
def test_no_noise_at_zero_rate():
    ds, clean = _data(noise=0.0)
    assert not ds.noise_mask.any()
    assert np.array_equal(ds.keypoints, clean, equal_nan=True)


@pytest.mark.parametrize("k, n", [(4, 1000), (8, 600)])
def test_planted_noise(k, n):
    size = 64
    ds, clean = _data(n=n, k=k, noise=0.1)
    mask = ds.noise_mask
    per_frame = mask.sum(1)
    assert 0.07 <= (per_frame > 0).mean() <= 0.13
    assert set(np.unique(per_frame)) <= {0, 1, 2}
    # untouched labels equal the clean ones; only labeled parts are corrupted
    assert np.array_equal(ds.keypoints[~mask], clean[~mask], equal_nan=True)
    assert not np.isnan(clean[mask]).any() and not np.isnan(ds.keypoints[mask]).any()
    kinds = set()
    for i, j in zip(*np.nonzero(mask)):
        err = np.hypot(*(ds.keypoints[i, j] - clean[i, j]))
        partner = [b if a == j else a for a, b in LEFT_RIGHT_PAIRS if j in (a, b)]
        swapped = (len(partner) == 1 and partner[0] < k and mask[i, partner[0]]
                   and np.array_equal(ds.keypoints[i, j], clean[i, partner[0]])
                   and np.array_equal(ds.keypoints[i, partner[0]], clean[i, j]))
        assert err > 0.15 * size or swapped, (i, j, err)
        kinds.add("swap" if swapped else "displace")
        assert 0 <= ds.keypoints[i, j].min() and ds.keypoints[i, j].max() <= size - 1
    assert kinds == {"swap", "displace"}


# -------------------------------------------------------------------- occlusions
def test_occluded_labels_are_nan_and_really_covered():
    n, rate = 120, 0.3
    ds, truth = _data(n=n, occlusion=rate, hidden_truth=True)
    hidden = ~ds.labeled
    assert 0.2 < hidden.mean() < 0.5
    assert not np.isnan(truth).any()
    checked = 0
    for i in np.flatnonzero(hidden.any(1))[:40]:
        f = synthetic_frame(int(i), occlusion_rate=rate)
        assert np.array_equal(f.image, ds.images[i])
        assert len(f.occluder_boxes) > 0
        for j in np.flatnonzero(hidden[i]):
            x, y = np.rint(truth[i, j]).astype(int)
            # the colour of the last occluder drawn over the part's centre pixel
            over = [m for m, (x0, y0, x1, y1) in enumerate(f.occluder_boxes)
                    if x0 <= x <= x1 and y0 <= y <= y1]
            assert over, (i, j)
            assert np.array_equal(ds.images[i, y, x], f.occluder_colours[over[-1]])
            checked += 1
        for j in np.flatnonzero(~hidden[i]):    # visible parts' centres are not covered
            x, y = np.rint(truth[i, j]).astype(int)
            assert not any(x0 <= x <= x1 and y0 <= y <= y1
                           for x0, y0, x1, y1 in f.occluder_boxes)
    assert checked > 10


def test_occlusion_rate():
    none, _ = _data(occlusion=0.0)
    assert none.labeled.all()
    ds, _ = _data(n=1000, k=4, noise=0.1)      # shared with test_planted_noise
    assert 0.07 < (~ds.labeled).mean() < 0.14


def test_occluded_part_is_visible_without_the_occluder():
    rate = 0.3
    occ, truth = _data(n=120, occlusion=rate, hidden_truth=True)
    free, _ = _data(n=120, occlusion=0.0)
    hidden = ~occ.labeled
    for i, j in list(zip(*np.nonzero(hidden)))[:30]:
        x, y = np.rint(truth[i, j]).astype(int)
        if j in (0, 1, 2, 3):   # solid shapes: the centre pixel shows the part's colour
            assert np.abs(free.images[i, y, x].astype(float) - _PART_RGB[j]).max() < 50


# -------------------------------------------------------------------- distractors
def test_distractors_present_and_away_from_the_animal():
    with_d, truth = _data(n=60, n_distractors=2, occlusion=0.0, hidden_truth=True)
    without, _ = _data(n=60, n_distractors=0, occlusion=0.0)
    # the animal and labels do not move; distractors only add pixels
    assert np.array_equal(with_d.keypoints, without.keypoints, equal_nan=True)
    differs = (with_d.images != without.images).any(axis=(1, 2, 3))
    assert differs.mean() > 0.95
    n_found = 0
    for i in range(20):
        f = synthetic_frame(i, occlusion_rate=0.0)
        assert len(f.distractor_xy) == len(f.distractor_part) <= 2
        n_found += len(f.distractor_xy)
        changed = np.argwhere((with_d.images[i] != without.images[i]).any(-1))[:, ::-1]
        for (x, y), part in zip(f.distractor_xy, f.distractor_part):
            # it looks like the part it copies (all K = 4 parts are solid shapes)
            xi, yi = int(round(x)), int(round(y))
            assert np.abs(with_d.images[i, yi, xi].astype(float) - _PART_RGB[part]).max() < 50
            # and it is well away from every true keypoint
            assert np.hypot(*(truth[i] - [x, y]).T).min() > 2 * f.part_radius + 2
        # every changed pixel belongs to a distractor blob
        if len(changed):
            d = np.hypot(*(changed[:, None, :] - f.distractor_xy[None]).transpose(2, 0, 1))
            assert d.min(1).max() <= 1.25 * f.part_radius + 2.5
    assert n_found >= 36


# ------------------------------------------------------------------- left / right
def test_left_ear_is_on_the_animals_left():
    ds, truth = _data(n=300, hidden_truth=True)
    snout, lear, rear = truth[:, 0], truth[:, 1], truth[:, 2]
    v = snout - (lear + rear) / 2                          # head direction
    left = np.stack([v[:, 1], -v[:, 0]], 1)                # (sin t, -cos t) for heading t
    assert ((lear - rear) * left).sum(1).min() > 0
    # ... and the two ears look alike: same colour, same shape
    assert np.array_equal(_PART_RGB[1], _PART_RGB[2])


# ------------------------------------------------------------------------ domains
def test_domain_shift():
    d0, t0 = _data(n=300, domain=0, hidden_truth=True)
    d1, t1 = _data(n=300, domain=1, hidden_truth=True)
    assert abs(d0.images.mean() - d1.images.mean()) > 20          # background palette
    # fine texture: mean absolute difference between neighbouring pixels
    tex = [np.abs(np.diff(d.images.astype(np.float32), axis=2)).mean() for d in (d0, d1)]
    assert tex[1] > 1.3 * tex[0]
    # smaller animals: snout-to-tailbase distance
    length = [np.median(np.hypot(*(t[:, 0] - t[:, 3]).T)) for t in (t0, t1)]
    assert length[1] < 0.85 * length[0]
    # more bent heads: angle between head direction and body axis
    def bend(t):
        head = t[:, 0] - (t[:, 1] + t[:, 2]) / 2
        body = (t[:, 1] + t[:, 2]) / 2 - t[:, 3]
        cos = (head * body).sum(1) / np.hypot(*head.T) / np.hypot(*body.T)
        return np.degrees(np.arccos(np.clip(cos, -1, 1))).mean()
    assert bend(t1) > 1.3 * bend(t0)
    d2 = synthetic_dataset(20, domain=2)
    assert not np.array_equal(d2.images, d0.images[:20])


# --------------------------------------------------------------------- speed, plot
def test_generation_speed():
    synthetic_dataset(10)
    t = time.perf_counter()
    ds = synthetic_dataset(2000, 64, 4, noise_rate=0.1)
    elapsed = time.perf_counter() - t
    assert ds.n_frames == 2000
    assert elapsed < 5.0, f"2000 frames took {elapsed:.2f} s"


def test_contact_sheet(tmp_path):
    ds, truth = _data(n=20, noise=0.3, occlusion=0.3, hidden_truth=True)
    path = tmp_path / "sheet.png"
    save_contact_sheet(ds, str(path), n=16, clean_keypoints=truth)
    assert path.stat().st_size > 10_000
