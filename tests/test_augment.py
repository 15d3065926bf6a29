"""Augmentation inside the member step: labels follow the pixels exactly, flips exchange
the declared pairs, labels leaving the frame become missing, padding stays padding, and a
member's augmentations are its own (alone == in the ensemble, same seed same result)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ensemble_jax import EnsembleTrainer, ExecConfig, ModelConfig, TrainConfig, synthetic_dataset
from ensemble_jax.subsets import random_subsets
from ensemble_jax.training import augment as A
import numpy_twins as twins

GEOMETRY = A.AugmentConfig(enabled=True, rotation_prob=1.0, brightness=0.0, contrast=0.0,
                           noise_std=0.0, blur_prob=0.0)


def dots(h, w, points, sigma=2.0):
    """One Gaussian dot per channel: float [H, W, K] with keypoint k's dot in channel k."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([np.exp(-0.5 * ((xs - x) ** 2 + (ys - y) ** 2) / sigma ** 2)
                     for x, y in points], -1)


def peak(channel):
    """Sub-pixel peak: intensity centroid of the 5x5 window around the maximum."""
    y, x = np.unravel_index(np.argmax(channel), channel.shape)
    y0, x0 = max(y - 2, 0), max(x - 2, 0)
    win = channel[y0:y + 3, x0:x + 3]
    yy, xx = np.mgrid[y0:y0 + win.shape[0], x0:x0 + win.shape[1]]
    return np.array([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])


def test_dot_peak_lands_on_transformed_label():
    h, w = 48, 64      # not square: an x/y mix-up cannot pass
    pts = [(20.3, 14.7), (40.0, 30.2), (31.5, 24.0)]
    img = dots(h, w, pts)[None].repeat(16, 0) * 0.9 + 0.05   # no zero pixels: no padding
    kp = np.tile(np.array(pts, np.float32), (16, 1, 1))
    out, kp2 = A.augment_batch(jax.random.key(7), jnp.asarray(img, jnp.float32),
                               jnp.asarray(kp), GEOMETRY)
    out, kp2 = np.asarray(out), np.asarray(kp2)
    checked = 0
    for b in range(16):
        for k in range(3):
            x, y = kp2[b, k]
            if np.isnan(x) or not (4 <= x <= w - 5 and 4 <= y <= h - 5):
                continue
            np.testing.assert_allclose(peak(out[b, :, :, k]), kp2[b, k], atol=0.5)
            checked += 1
    assert checked >= 30     # most labels stayed inside: the check is not vacuous
    assert np.abs(kp2[np.isfinite(kp2)] - kp[np.isfinite(kp2)]).max() > 3  # labels did move


def test_warp_matches_numpy_twin():
    rng = np.random.default_rng(0)
    img = np.zeros((2, 12, 16, 1), np.float32)
    img[:, 2:10, 1:15] = rng.uniform(0.1, 1, (2, 8, 14, 1))        # letterboxed content
    a, t, _ = A.draw_affine(jax.random.key(1), 2, (12, 16), GEOMETRY)
    out, _ = A.warp_images(jnp.asarray(img), a, t)
    ref = twins.affine_warp(img, np.asarray(a), np.asarray(t))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_photometric_pass_matches_numpy_twin():
    # blur on some frames and not others (a branch per frame), contrast about the
    # source content's mean, brightness, noise, clipping, padding kept at 0.
    rng = np.random.default_rng(1)
    img = np.zeros((6, 12, 16, 3), np.float32)
    img[:, 2:10, 1:15] = rng.uniform(0.1, 1, (6, 8, 14, 3))
    cfg = dataclasses.replace(A.AugmentConfig(enabled=True), blur_prob=0.5, contrast=0.3,
                              brightness=0.2, noise_std=0.05)
    key = jax.random.key(5)
    a, t, _ = A.draw_affine(jax.random.key(2), 6, (12, 16), cfg)
    out = np.asarray(A.warp_photometric(key, jnp.asarray(img), a, t, cfg))
    k_frame, k_noise = jax.random.split(key)                 # the function's own draws
    u = np.asarray(jax.random.uniform(k_frame, (6, 3)))
    noise = cfg.noise_std * np.asarray(jax.random.normal(k_noise, (6, 12, 16, 1)))
    assert 0 < (u[:, 0] < 0.5).sum() < 6                      # both branches are checked
    ref = twins.photometric_warp(img, np.asarray(a), np.asarray(t), u, noise,
                                 cfg.blur_prob, cfg.contrast, cfg.brightness)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_flip_exchanges_declared_pairs():
    cfg = dataclasses.replace(GEOMETRY, rotation_deg=0.0, scale_min=1.0, scale_max=1.0,
                              translate=0.0, flip_pairs=(("leftear", "rightear"),),
                              flip_prob=1.0).resolve(["snout", "leftear", "rightear"])
    assert cfg.flip_perm == (0, 2, 1)
    h, w = 32, 40
    pts = [(20.0, 5.0), (12.0, 10.0), (28.0, 11.0)]
    img = dots(h, w, pts)[None] * 0.9 + 0.05
    out, kp2 = A.augment_batch(jax.random.key(0), jnp.asarray(img, jnp.float32),
                               jnp.asarray([pts], jnp.float32), cfg)
    kp2 = np.asarray(kp2)[0]
    # The image is mirrored; the label called 'leftear' is now where the mirrored right ear is.
    np.testing.assert_allclose(kp2[0], [w - 1 - 20.0, 5.0], atol=1e-4)
    np.testing.assert_allclose(kp2[1], [w - 1 - 28.0, 11.0], atol=1e-4)
    np.testing.assert_allclose(kp2[2], [w - 1 - 12.0, 10.0], atol=1e-4)
    # The pixels of channel 2 (the right ear's dot) sit at the new 'leftear' label.
    np.testing.assert_allclose(peak(np.asarray(out)[0, :, :, 2]), kp2[1], atol=0.5)
    with pytest.raises(ValueError, match="unknown bodypart 'nose'"):
        dataclasses.replace(cfg, flip_pairs=(("nose", "leftear"),)).resolve(["leftear"])


def test_label_leaving_the_frame_becomes_missing():
    cfg = dataclasses.replace(GEOMETRY, rotation_prob=0.0, scale_min=1.25, scale_max=1.25,
                              translate=0.0)
    # Scaling by 1.25 about the centre pushes the corner out, keeps the centre.
    kp = jnp.asarray([[[0.0, 0.0], [15.5, 15.5], [np.nan, np.nan]]], jnp.float32)
    _, kp2 = A.augment_batch(jax.random.key(0), jnp.ones((1, 32, 32, 1)) * 0.5, kp, cfg)
    kp2 = np.asarray(kp2)[0]
    assert np.isnan(kp2[0]).all() and np.isnan(kp2[2]).all()
    np.testing.assert_allclose(kp2[1], [15.5, 15.5], atol=1e-5)


def test_letterbox_padding_stays_padding():
    img = np.zeros((8, 32, 32, 3), np.uint8)
    img[:, 8:24] = np.random.default_rng(0).integers(40, 200, (8, 16, 32, 3))  # content rows
    cfg = dataclasses.replace(A.AugmentConfig(enabled=True), brightness=0.3, noise_std=0.05)
    out, _ = A.augment_batch(jax.random.key(3), jnp.asarray(img), jnp.zeros((8, 1, 2)), cfg)
    a, t, _ = A.draw_affine(jax.random.split(jax.random.key(3))[0], 8, (32, 32), cfg)
    ones = np.where(img.max(-1, keepdims=True) > 0, 1.0, 0.0).astype(np.float32)
    _, valid = A.warp_images(jnp.asarray(ones), a, t)
    out, valid = np.asarray(out), np.asarray(valid)
    assert (out[~valid] == 0).all()            # padding and outside-the-frame: exactly 0
    assert (~valid).sum() > 8 * 32 * 16        # at least the padding rows are padding
    assert (out[valid] > 0).mean() > 0.95      # the content is not blanked


def test_off_is_the_identity_of_the_step_and_config_round_trips():
    tc = TrainConfig(augment=A.AugmentConfig(enabled=True, flip_pairs=(("a", "b"),)))
    again = TrainConfig(**{**dataclasses.asdict(tc),
                           "augment": dataclasses.asdict(tc.augment)})
    assert again == tc and hash(again) == hash(tc)
    assert TrainConfig().augment.enabled is False


SMALL = ModelConfig(widths=(8, 16, 32), head_width=16)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(40, image_size=32, seed=3)


def flat(params):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])



def test_member_alone_equals_member_in_ensemble_and_is_reproducible(data):
    masks = random_subsets(data.n_frames, 2, 0.5, seed=1)
    tc = TrainConfig(steps=4, batch_size=4, augment=A.AugmentConfig(enabled=True))
    ec = ExecConfig(chunk_size=2, strategy="unrolled")
    full = EnsembleTrainer(SMALL, tc, ec).fit(data, masks, progress=False)
    again = EnsembleTrainer(SMALL, tc, ec).fit(data, masks, progress=False)
    np.testing.assert_array_equal(flat(again.params), flat(full.params))
    seq = dataclasses.replace(ec, strategy="sequential")
    alone = EnsembleTrainer(SMALL, tc, seq).fit(data, masks[1:2], member_ids=np.array([1]),
                                            progress=False)
    np.testing.assert_array_equal(flat(alone.params), flat(full.member_params(1)))
    # That augmentation is really applied in the step is shown by the image-level tests
    # above; a third compiled fit here would double this test's time on CI.


def test_command_line_defaults_augment_opt_in():
    from ensemble_jax import cli
    parse = lambda *a: cli.sweep_configs(cli.build_parser().parse_args(
        ["sweep", "--out", "x", *a]))[:3]          # (sweep, model, train); exec unused
    _, model, train = parse()
    assert not train.augment.enabled and train.epochs is None and train.schedule == "cosine"
    _, model, train = parse("--data", "somewhere", "--flip-pairs", "leftear:rightear",
                            "--model", "resnet", "--resnet-depth", "34")
    assert train.augment.enabled and train.augment.flip_pairs == (("leftear", "rightear"),)
    assert train.epochs is None and train.schedule == "cosine"     # as given: opt-in
    assert model.encoder == "resnet" and model.resnet_depth == 34
    _, _, train = parse("--data", "somewhere", "--no-augment", "--steps", "50")
    assert not train.augment.enabled and train.epochs is None and train.steps == 50
    _, _, train = parse("--data", "somewhere")
    assert not train.augment.enabled and train.epochs is None
    assert train.member_epochs == 120 and train.steps == 400     # resolved from the data
    _, _, train = parse("--data", "somewhere", "--augment", "--epochs", "200",
                        "--schedule", "warmup_cosine")
    assert train.augment.enabled and train.epochs == 200 and train.schedule == "warmup_cosine"
    assert cli.main(["sweep", "--out", "x", "--steps", "5", "--epochs", "3"]) == 2
    assert cli.main(["sweep", "--out", "x", "--flip-pairs", "leftear"]) == 2


def test_epochs_become_steps_with_warmup_and_flip_indices():
    from ensemble_jax.training.real_data import resolve_train_config
    tc = TrainConfig(epochs=200, batch_size=16, schedule="warmup_cosine",
                     augment=A.AugmentConfig(enabled=True, flip_pairs=(("l", "r"),)))
    out = resolve_train_config(tc, 93, ["r", "n", "l"])
    assert out.steps == 1163 and out.warmup_steps == 58     # ceil(200 * 93 / 16), 5%
    assert out.augment.flip_perm == (2, 1, 0)
    assert resolve_train_config(out, 93, ["r", "n", "l"]) == out   # idempotent (resume)


def test_default_step_count_scales_with_the_members_frames():
    """--data without --steps/--epochs: 400 steps or 120 passes over a member's frames,
    the larger: the projects the label check was validated on keep exactly 400 steps
    (openfield 46.5, mirror-mouse 36 frames per member), a 1,000-frame project's members
    (400 frames each) get 3,000."""
    from ensemble_jax import cli
    from ensemble_jax.training.real_data import resolve_train_config
    parse = lambda *a: cli.sweep_configs(cli.build_parser().parse_args(
        ["sweep", "--out", "x", *a]))[2]
    tc = parse("--data", "somewhere")
    lines = []
    for frames, steps in ((36.0, 400), (46.5, 400), (53.0, 400), (54.0, 405), (400.0, 3000)):
        out = resolve_train_config(tc, 100, [], lines.append, member_frames=frames)
        assert out.steps == steps, frames
        assert resolve_train_config(out, 100, [], member_frames=frames) == out   # resume
    assert "3000 steps (default: the larger of 400 and 120 passes" in lines[-2]
    # a given step count or epoch count, --smoke and synthetic data keep their own
    for args in (("--data", "d", "--steps", "50"), ("--data", "d", "--epochs", "200"),
                 ("--data", "d", "--smoke"), ()):
        assert parse(*args).member_epochs is None, args
    assert resolve_train_config(parse("--data", "d", "--steps", "50"), 100, [],
                                member_frames=400.0).steps == 50


def test_default_step_count_in_a_sweep_reads_the_plan():
    """prepare() resolves the default from the plan's mean member size (bootstrap members
    hold n draws, random ones a fraction), before anything is written."""
    from ensemble_jax.sweep import SweepConfig, prepare
    data = synthetic_dataset(400, image_size=32, seed=0)
    tc = TrainConfig(batch_size=16, member_epochs=120)
    for plan, kw, steps in (("random", {"fraction": 0.5}, 1200), ("bootstrap", {}, 2400)):
        cfg = SweepConfig(plan=plan, n_members=2, test_fraction=0.2, threshold_fraction=0,
                          **kw)
        prep = prepare(cfg, SMALL, tc, dataset=data)
        assert prep.train_cfg.steps == steps, plan       # 120 x (160 or 320) / 16
        assert prep.config["train"]["steps"] == steps
