"""Crop training inside the member step (training/crop.py): windows and labels equal their
NumPy twin, a dot's target peak lands on its moved label, windows stay in each frame's
valid area (frames of different sizes padded together), a member's windows are its own
(alone == in the ensemble, every strategy), same seed same result, and with crops off the
step is the one it was."""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensemble_jax import EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig, synthetic_dataset
from ensemble_jax import rundir
from ensemble_jax.data.coords import from_heatmap
from ensemble_jax.data.targets import gaussian_targets
from ensemble_jax.subsets import random_subsets
from ensemble_jax.training import crop as C
from ensemble_jax.training.augment import AugmentConfig
from ensemble_jax.training.step import make_member_step, make_train
from ensemble_jax.training.trainer import member_inputs
import numpy_twins as twins
from test_augment import dots, peak

crop_jit = jax.jit(C.crop_batch, static_argnums=4)


def padded_frames(sizes, hw, channels=1, seed=0):
    """Frames of the given (height, width) sizes, content in [1, 255], zero-padded to hw."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(sizes),) + tuple(hw) + (channels,), np.uint8)
    for i, (h, w) in enumerate(sizes):
        out[i, :h, :w] = rng.integers(1, 256, (h, w, channels))
    return out


def test_crop_matches_numpy_twin():
    sizes = [(47, 52), (29, 40), (47, 52), (29, 40), (12, 9), (47, 52)]
    img = padded_frames(sizes, (47, 52), channels=3)
    rng = np.random.default_rng(1)
    kp = np.stack([rng.uniform([-3, -3], [w + 2, h + 2], (5, 2)) for h, w in sizes])
    kp[1, 2:] = np.nan                        # partly labeled
    kp[3] = np.nan                            # nothing labeled: a background window
    kp = kp.astype(np.float32)
    valid = np.array(sizes, np.int32)
    cfg = C.CropConfig(enabled=True, size=(16, 24), background_share=0.3, jitter=0.4)
    key = jax.random.key(4)
    windows, kp2 = crop_jit(key, jnp.asarray(img), jnp.asarray(kp), jnp.asarray(valid), cfg)
    u = np.asarray(jax.random.uniform(key, (len(sizes), 3)))    # crop_batch's one draw
    offsets = twins.crop_offsets(u, kp, valid, cfg.size, cfg.background_share, cfg.jitter)
    np.testing.assert_array_equal(
        np.asarray(C.draw_offsets(key, jnp.asarray(kp), jnp.asarray(valid), cfg)), offsets)
    assert 0 < (u[:, 0] < cfg.background_share).sum() < len(sizes) - 1   # both kinds drawn
    ref_w, ref_kp = twins.crop_windows(img, kp, offsets, valid, cfg.size)
    assert windows.dtype == jnp.uint8 and windows.shape == (len(sizes), 16, 24, 3)
    np.testing.assert_array_equal(np.asarray(windows), ref_w)
    np.testing.assert_allclose(np.asarray(kp2), ref_kp, atol=1e-5)
    assert np.isnan(np.asarray(kp2)).any() and np.isfinite(np.asarray(kp2)).any()
    # any offsets (not only drawn ones): the cut equals the twin's
    offs = np.stack([rng.integers(0, 47 - 16 + 1, 6), rng.integers(0, 52 - 24 + 1, 6)], -1)
    got = C.cut_windows(jnp.asarray(img), jnp.asarray(kp), jnp.asarray(offs),
                        jnp.asarray(valid), cfg.size)
    ref = twins.crop_windows(img, kp, offs, valid, cfg.size)
    np.testing.assert_array_equal(np.asarray(got[0]), ref[0])
    np.testing.assert_allclose(np.asarray(got[1]), ref[1], atol=1e-5)


def test_valid_size_from_content_and_window_larger_than_frames():
    sizes = [(47, 52), (29, 40), (1, 1)]
    img = padded_frames(sizes, (47, 52))
    img[2] = 0                                                  # an all-black frame
    np.testing.assert_array_equal(np.asarray(C.valid_hw_from_content(jnp.asarray(img))),
                                  [[47, 52], [29, 40], [1, 1]])
    # a window larger than the padded frames: start 0, the rest padding (0)
    cfg = C.CropConfig(enabled=True, size=(64, 56))
    kp = jnp.asarray([[[10.0, 10.0]], [[30.0, 20.0]], [[np.nan, np.nan]]])
    win, kp2 = crop_jit(jax.random.key(0), jnp.asarray(img), kp, jnp.asarray(sizes), cfg)
    win = np.asarray(win)
    np.testing.assert_array_equal(win[0, :47, :52], img[0])
    assert (win[0, 47:] == 0).all() and (win[0, :, 52:] == 0).all()
    np.testing.assert_array_equal(win[1, :29, :40], img[1, :29, :40])
    np.testing.assert_allclose(np.asarray(kp2)[:2], np.asarray(kp)[:2])   # offsets 0


def test_dot_peak_and_target_peak_land_on_the_moved_label():
    h, w, stride = 48, 64, 2
    pts = [(20.3, 14.7), (40.0, 30.2), (31.5, 24.0)]
    img = np.asarray(dots(h, w, pts) * 0.9 + 0.05, np.float32)[None].repeat(16, 0)
    kp = np.tile(np.array(pts, np.float32), (16, 1, 1))
    cfg = C.CropConfig(enabled=True, size=(24, 32), background_share=0.25, jitter=0.3)
    win, kp2 = crop_jit(jax.random.key(7), jnp.asarray(img), jnp.asarray(kp),
                        jnp.tile(jnp.array([h, w], jnp.int32), (16, 1)), cfg)
    targets, weights = gaussian_targets(kp2, (24 // stride, 32 // stride), stride, 1.0)
    win, kp2, targets = np.asarray(win), np.asarray(kp2), np.asarray(targets)
    np.testing.assert_array_equal(np.asarray(weights), np.isfinite(kp2).all(-1))
    checked = 0
    for b in range(16):
        for k in range(3):
            x, y = kp2[b, k]
            if np.isnan(x) or not (3 <= x <= 32 - 4 and 3 <= y <= 24 - 4):
                continue
            np.testing.assert_allclose(peak(win[b, :, :, k]), kp2[b, k], atol=0.5)
            # the target heatmap's peak, in window pixels, on the label and the dot
            np.testing.assert_allclose(from_heatmap(peak(targets[b, k]), stride), kp2[b, k],
                                       atol=0.5)
            checked += 1
    assert checked >= 16                       # not vacuous
    moved = np.isfinite(kp2).all(-1)
    assert (np.abs(kp2 - kp)[moved] > 1).any()  # labels did move with the windows
    assert (~moved).any()                      # and some left the window: missing


def test_windows_stay_inside_frames_of_different_sizes():
    """A 47x52 and a 29x40 frame padded together (small analogues of 747x832 and 470x640):
    every window lies in its own frame's valid area; along an axis where the frame is
    smaller than the window it starts at 0 and the rest is padding."""
    sizes = [(47, 52), (29, 40)] * 64
    img = padded_frames(sizes[:2], (47, 52))[np.arange(128) % 2]
    rng = np.random.default_rng(2)
    # labels everywhere, also near and past the edges: windows are pushed back inside
    kp = np.stack([rng.uniform([-5, -5], [w + 5, h + 5], (3, 2)) for h, w in sizes])
    valid = C.valid_hw_from_content(jnp.asarray(img))
    np.testing.assert_array_equal(np.asarray(valid), sizes)
    for size in ((32, 32), (16, 24)):
        cfg = C.CropConfig(enabled=True, size=size, background_share=0.5, jitter=0.5)
        key = jax.random.key(size[1])
        off = np.asarray(C.draw_offsets(key, jnp.asarray(kp, jnp.float32), valid, cfg))
        free = np.maximum(np.array(sizes) - np.array(size), 0)
        assert (off >= 0).all() and (off <= free).all()
        assert len({tuple(o) for o in off[::2]}) > 10          # windows do move
        win, kp2 = crop_jit(key, jnp.asarray(img), jnp.asarray(kp, jnp.float32), valid, cfg)
        win = np.asarray(win)[..., 0]
        for b, (h, w) in enumerate(sizes[:4]):
            y0, x0 = off[b]
            inside = np.zeros(size, bool)
            inside[:max(h - y0, 0), :max(w - x0, 0)] = True
            assert (win[b][inside] > 0).all() and (win[b][~inside] == 0).all()
            if h < size[0]:
                assert y0 == 0 and not inside[h:].any()        # the rest is padding
        ok = np.isfinite(kp2)
        assert (np.asarray(kp2)[ok] >= -0.5).all()


# ------------------------------------------------------------------- inside the step
TINY = ModelConfig(widths=(8, 16), head_width=8)
CROP = C.CropConfig(enabled=True, size=(32, 32), background_share=0.25, jitter=0.3)


@pytest.fixture(scope="module")
def data():
    ds = synthetic_dataset(24, image_size=64, seed=5)
    images = ds.images.copy()
    images[1::3, 44:] = 0          # a third of the frames are 44x64, a third 64x40:
    images[2::3, :, 40:] = 0       # frames of different sizes, zero-padded to 64x64
    return dataclasses.replace(ds, images=images)


def flat(params):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@functools.lru_cache(maxsize=8)
def _spec_program(tc: TrainConfig, hw: tuple, n_keypoints: int, steps: int):
    # compiled once per configuration but the seed (which only feeds the members' keys)
    train = make_train(TINY, tc, hw, n_keypoints, n_steps=steps)
    return jax.jit(jax.vmap(train, in_axes=(0, None, None)))


def spec(data, tc, masks, steps):
    """jax.vmap(make_train) over the members: the specification."""
    program = _spec_program(dataclasses.replace(tc, seed=0), tuple(data.images.shape[1:3]),
                            data.n_keypoints, steps)
    return program(member_inputs(masks.astype(np.int32), np.arange(masks.shape[0]), tc),
                   data.images, data.keypoints)


def test_member_alone_equals_member_in_ensemble_and_same_seed_same_result(data):
    masks = random_subsets(data.n_frames, 3, 0.5, seed=1)
    tc = TrainConfig(steps=3, batch_size=4, crop=CROP)
    states, losses = spec(data, tc, masks, 3)
    again, losses2 = spec(data, tc, masks, 3)
    np.testing.assert_array_equal(flat(again.params), flat(states.params))
    np.testing.assert_array_equal(np.asarray(losses2), np.asarray(losses))
    np.testing.assert_array_equal(np.asarray(again.aum_sum), np.asarray(states.aum_sum))
    # member 1 alone (no vmap, no neighbours)
    train = make_train(TINY, tc, data.images.shape[1:3], data.n_keypoints, n_steps=3)
    inp = member_inputs(masks[1:2].astype(np.int32), np.array([1]), tc)
    alone, alone_losses = jax.jit(train)(jax.tree_util.tree_map(lambda a: a[0], inp),
                                         data.images, data.keypoints)
    one = jax.tree_util.tree_map(lambda a: a[1], states)
    assert rel(flat(alone.params), flat(one.params)) < 1e-5
    np.testing.assert_allclose(np.asarray(alone_losses), np.asarray(losses)[1], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(alone.aum_sum), np.asarray(one.aum_sum), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(alone.aum_count), np.asarray(one.aum_count))
    assert np.asarray(one.aum_count).sum() > 0                 # AUM on the windows
    # another seed: other members (other windows among the rest)
    other, _ = spec(data, dataclasses.replace(tc, seed=1), masks, 3)
    assert not np.array_equal(flat(other.params), flat(states.params))


# slow: the same member step under each batching rule, a compile each on the CPU (as
# tests/test_trainer.py's test_strategies_agree); the default suite keeps the member alone
# against the vmapped specification (test_member_alone_equals_member_in_ensemble_...)
@pytest.mark.parametrize("strategy", [
    pytest.param("unrolled", marks=pytest.mark.slow),
    pytest.param("vmap", marks=pytest.mark.slow),
    pytest.param("vmap_matmul", marks=pytest.mark.slow)])
def test_strategy_computes_the_specification_with_crops_and_augmentation(data, strategy):
    """Crops composed with augmentation (augmentation acts on the windows): the strategy
    computes jax.vmap(make_train), and a member trained alone ('sequential') equals the
    same member in the ensemble bit for bit (as tests/test_augment.py checks)."""
    masks = random_subsets(data.n_frames, 3, 0.5, seed=2)
    tc = TrainConfig(steps=3, batch_size=4, crop=CROP,
                     augment=AugmentConfig(enabled=True, blur_prob=0.0))
    ref, ref_losses = spec(data, tc, masks, 3)
    res = EnsembleTrainer(TINY, tc, ExecConfig(chunk_size=3, strategy=strategy)).fit(
        data, masks, progress=False)
    assert rel(flat(res.params), flat(ref.params)) < 1e-5
    assert rel(res.losses, np.asarray(ref_losses).T) < 1e-5
    assert rel(res.aum_sum, ref.aum_sum) < 1e-4
    np.testing.assert_array_equal(res.aum_count, np.asarray(ref.aum_count))
    if strategy != "unrolled":
        return
    alone = EnsembleTrainer(TINY, tc, ExecConfig(chunk_size=3, strategy="sequential")).fit(
        data, masks[2:3], member_ids=np.array([2]), progress=False)
    np.testing.assert_array_equal(flat(alone.params), flat(res.member_params(2)))


# slow: a child process with 2 fake CPU devices (its own compile of the sharded program)
@pytest.mark.slow
def test_sharded_over_two_devices_computes_the_specification(data, tmp_path):
    """Members sharded over 2 devices (2 each), crops and augmentation on: jax.vmap of
    make_train, as on one device."""
    import subprocess
    import sys
    from child_env import child_env
    code = f"""
import dataclasses, numpy as np, jax
from ensemble_jax import EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig, synthetic_dataset
from ensemble_jax.subsets import random_subsets
from ensemble_jax.training import sharding
from ensemble_jax.training.augment import AugmentConfig
from ensemble_jax.training.crop import CropConfig
ds = synthetic_dataset(24, image_size=64, seed=5)
images = ds.images.copy(); images[1::3, 44:] = 0; images[2::3, :, 40:] = 0
ds = dataclasses.replace(ds, images=images)
tc = TrainConfig(steps=3, batch_size=4, crop=CropConfig(**{dataclasses.asdict(CROP)!r}),
                 augment=AugmentConfig(enabled=True, blur_prob=0.0))
masks = random_subsets(ds.n_frames, 4, 0.5, seed=2)
res = EnsembleTrainer(ModelConfig(widths=(8, 16), head_width=8), tc,
                      ExecConfig(chunk_size=3, strategy="vmap")).fit(
    ds, masks, progress=False, mesh=sharding.make_mesh())
np.savez({str(tmp_path / "r.npz")!r}, params=np.concatenate(
    [np.ravel(x) for x in jax.tree_util.tree_leaves(res.params)]), aum=res.aum_sum)
print(sharding.n_shards(sharding.make_mesh()))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(2), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "2"
    masks = random_subsets(data.n_frames, 4, 0.5, seed=2)
    tc = TrainConfig(steps=3, batch_size=4, crop=CROP,
                     augment=AugmentConfig(enabled=True, blur_prob=0.0))
    ref, _ = spec(data, tc, masks, 3)
    got = np.load(tmp_path / "r.npz")
    assert rel(got["params"], flat(ref.params)) < 1e-5
    assert rel(got["aum"], ref.aum_sum) < 1e-4


def test_off_is_the_step_it_was(data):
    """Crops off: the step's program does not depend on the crop settings at all, and a
    crop the size of the whole frame (offset 0) computes bit for bit what no crop does."""
    from ensemble_jax.models.heatmap_net import HeatmapNet
    from ensemble_jax.training.step import init_member
    tc = TrainConfig(steps=3, batch_size=4)
    model = HeatmapNet(TINY, data.n_keypoints)
    n, k = data.n_frames, data.n_keypoints
    state = jax.eval_shape(lambda key: init_member(model, tc.optimizer(), key,
                                                   jnp.zeros((1, 64, 64, 3), jnp.uint8), n, k),
                           jax.ShapeDtypeStruct((2,), jnp.uint32))
    inp = jax.tree_util.tree_map(lambda a: jnp.asarray(a[0]), member_inputs(
        np.ones((1, n), np.int32), np.array([0]), tc))
    args = (state, inp, jnp.int32(0), jnp.asarray(data.images), jnp.asarray(data.keypoints))
    off = dataclasses.replace(tc, crop=C.CropConfig(enabled=False, size=(8, 8), jitter=2.0))
    progs = [str(jax.make_jaxpr(make_member_step(model, t.optimizer(), t, (16, 16), 4))(*args))
             for t in (tc, off)]
    assert progs[0] == progs[1] and "dynamic_slice" not in progs[0]
    assert TrainConfig(crop=None) == TrainConfig() and not TrainConfig().crop.enabled
    # a whole-frame crop: the same numbers (offsets 0, every pixel in its frame)
    data64 = synthetic_dataset(12, image_size=64, seed=6)      # no padding anywhere
    masks = random_subsets(data64.n_frames, 2, 0.5, seed=3)
    whole = dataclasses.replace(tc, crop=C.CropConfig(enabled=True, size=(64, 64)))
    a, la = spec(data64, tc, masks, 3)
    b, lb = spec(data64, whole, masks, 3)
    np.testing.assert_array_equal(flat(b.params), flat(a.params))
    np.testing.assert_array_equal(np.asarray(lb), np.asarray(la))
    np.testing.assert_array_equal(np.asarray(b.aum_sum), np.asarray(a.aum_sum))


def test_config_round_trips_and_old_runs_load():
    tc = TrainConfig(crop=C.CropConfig(enabled=True, size=(64, 96)))
    as_json = json.loads(json.dumps(dataclasses.asdict(tc)))      # size becomes a list
    again = TrainConfig(**{**as_json, "augment": as_json["augment"]})
    assert again == tc and hash(again) == hash(tc) and again.crop.size == (64, 96)
    # a config.json written before crops: it loads, at crops off, and resumes (no diff)
    new = {"train": dataclasses.asdict(TrainConfig()), "model": {}}
    old = json.loads(json.dumps(new))
    del old["train"]["crop"]
    up = rundir.upgrade_config(old)
    assert rundir.config_diff(up, new) == []
    assert rundir._dataclass_from(TrainConfig, up["train"]) == TrainConfig()
    with pytest.raises(ValueError, match="background_share"):
        C.CropConfig(background_share=1.5)
    with pytest.raises(ValueError, match="multiple of 4"):
        t = TrainConfig(crop=C.CropConfig(enabled=True, size=(30, 32)))
        from ensemble_jax.models.heatmap_net import HeatmapNet
        make_member_step(HeatmapNet(TINY, 2), t.optimizer(), t, (7, 8), 4)


def test_command_line_defaults_leave_crops_off():
    from ensemble_jax import cli
    for args in ((), ("--data", "somewhere"), ("--data", "somewhere", "--augment")):
        train = cli.sweep_configs(cli.build_parser().parse_args(
            ["sweep", "--out", "x", *args]))[2]
        assert train.crop == C.CropConfig() and not train.crop.enabled


@pytest.mark.slow   # end to end; the config round trip is tested above without training
def test_sweep_with_crops_records_them_loads_and_analyzes(tmp_path):
    """End to end through the Python API (no command-line flag yet): a sweep trained on
    windows writes the crop settings to config.json, loads back the same TrainConfig, and
    predicts (and analyses) on whole frames: the network is fully convolutional."""
    from ensemble_jax.analysis.analyze import analyze
    from ensemble_jax.sweep import SweepConfig, run_sweep
    tc = TrainConfig(steps=4, batch_size=4, crop=C.CropConfig(enabled=True, size=(32, 32)))
    quiet = dict(progress=False, log=lambda m: None)
    run = tmp_path / "run"
    run_sweep(run, SweepConfig(synthetic_frames=24, image_size=64, fractions=(0.5, 1.0),
                               n_seeds=1), TINY, tc,
              ExecConfig(chunk_size=4, strategy="sequential"), **quiet)
    saved = json.loads((run / "config.json").read_text())["train"]["crop"]
    assert saved == {"enabled": True, "size": [32, 32], "background_share": 0.2,
                     "jitter": 0.25}
    loaded = rundir.load(run)
    assert loaded.result.train_config == tc
    assert np.asarray(loaded.training["aum_count"]).sum() > 0
    assert analyze(run, figures_enabled=False, **quiet)["members"] == 2
