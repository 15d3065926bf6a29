"""JAX kernels vs vectorised NumPy, measured in the same run, float32 for both.

    python benchmarks/kernels.py            # full sizes (several minutes on 2 CPU cores)
    python benchmarks/kernels.py --quick    # small sizes, a smoke run (seconds)

JAX times: jitted, after a warm-up call, `block_until_ready`, best of --repeats.
NumPy times: the strongest fair vectorised NumPy we could write for the same definition
(BLAS matmuls, cache-sized blocks, in-place maxima, sparse work where it pays) - NOT the
loop twins of tests/numpy_twins.py. Both run on the same inputs; max_abs_diff compares them.
Prints a table and writes JSON (atomically) to --out.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import ensemble_jax.kernels as K  # noqa: E402
from ensemble_jax.io import write_json  # noqa: E402


# ============================================================================ NumPy twins
def np_mpe(x, window=3, threshold=0.0, normalize="softmax", block_maps=256):
    """[..., H, W] -> [...]; blocks of maps, separable in-place max, sparse entropy."""
    *lead, H, W = x.shape
    flat = x.reshape(-1, H, W)
    B = flat.shape[0]
    r = window // 2
    out = np.empty(B, np.float32)
    padw = np.full((block_maps, H, W + 2 * r), -np.inf, np.float32)
    padh = np.full((block_maps, H + 2 * r, W), -np.inf, np.float32)
    for s in range(0, B, block_maps):
        c = flat[s:s + block_maps]
        b = c.shape[0]
        bad = np.isnan(c).any((1, 2))
        if bad.any():
            c = np.where(np.isnan(c), np.float32(-np.inf), c)
        pw, ph = padw[:b], padh[:b]
        pw[:, :, r:r + W] = c
        m = ph[:, r:r + H]
        np.copyto(m, pw[:, :, 0:W])
        for k in range(1, window):
            np.maximum(m, pw[:, :, k:k + W], out=m)
        lm = ph[:, 0:H].copy()
        for k in range(1, window):
            np.maximum(lm, ph[:, k:k + H], out=lm)
        peaks = c >= lm
        peaks &= c > threshold
        bi, yi, xi = np.nonzero(peaks)
        v = c[bi, yi, xi].astype(np.float32)
        count = np.bincount(bi, minlength=b)
        if normalize == "softmax":
            d = v - c.max((1, 2))[bi]
            e = np.exp(d)
            z = np.bincount(bi, e, minlength=b)
            sd = np.bincount(bi, e * d, minlength=b)
            with np.errstate(divide="ignore", invalid="ignore"):
                h = np.log(z) - sd / z
        else:
            tot = np.bincount(bi, v, minlength=b)
            vl = np.bincount(bi, v * np.log(v), minlength=b)
            with np.errstate(divide="ignore", invalid="ignore"):
                h = np.log(tot) - vl / tot
        h = np.where(count >= 2, np.maximum(h, 0.0), 0.0)
        out[s:s + b] = np.where(bad, np.nan, h)
    return out.reshape(lead)


def np_margin(hm, kp, stride, radius):
    *lead, h, w = hm.shape
    labeled = np.isfinite(kp).all(-1)
    uv = (np.where(labeled[..., None], kp, 0) - (stride - 1) / 2.0) / stride
    col = np.clip(np.round(uv[..., 0]), 0, w - 1).astype(np.int32)
    row = np.clip(np.round(uv[..., 1]), 0, h - 1).astype(np.int32)
    flat = hm.reshape(*lead, h * w)
    value = np.take_along_axis(flat, (row * w + col)[..., None], -1)[..., 0]
    d2 = ((np.arange(h)[:, None] - row[..., None, None]) ** 2
          + (np.arange(w)[None, :] - col[..., None, None]) ** 2)
    far = d2 > radius ** 2
    comp = np.where(far, hm, np.float32(-np.inf)).max((-2, -1))
    return np.where(labeled & far.any((-2, -1)), value - comp, np.nan).astype(np.float32)


def np_influence(masks, values):
    inside = masks > 0
    M, n = masks.shape
    T = values.shape[1]
    valid = ~np.isnan(values)
    count = valid.sum(0)
    x = np.where(valid, values - np.where(valid, values, 0).sum(0) / np.maximum(count, 1), 0)
    x = x.astype(np.float32)
    A = inside.T.astype(np.float32)
    sq = A @ np.concatenate([x, x * x], 1)
    s_in, q_in = sq[:, :T], sq[:, T:]
    c_in = A @ valid.astype(np.float32) if not valid.all() else \
        np.broadcast_to(inside.sum(0)[:, None].astype(np.float32), (n, T))
    c_out = count.astype(np.float32) - c_in
    s_out = x.sum(0) - s_in
    q_out = (x * x).sum(0) - q_in
    with np.errstate(divide="ignore", invalid="ignore"):
        m_in, m_out = s_in / c_in, s_out / c_out
        v_in = np.maximum(q_in - s_in * m_in, 0) / (c_in - 1)
        v_out = np.maximum(q_out - s_out * m_out, 0) / (c_out - 1)
        effect = np.where((c_in > 0) & (c_out > 0), m_in - m_out, np.nan)
        se = np.where((c_in > 1) & (c_out > 1), np.sqrt(v_in / c_in + v_out / c_out), np.nan)
    return effect, se


def np_representativeness(f, pool, block_size=None):
    ok = np.isfinite(f).all(-1)
    f = np.where(ok[:, None], f, np.float32(0))
    sq = np.einsum("nd,nd->n", f, f)
    with np.errstate(divide="ignore"):
        inv = np.where(sq > 0, 1 / np.sqrt(sq), 0).astype(np.float32)
    pool = pool & ok
    w = np.where(pool, inv, np.float32(0))
    N = len(f)
    if block_size is None:
        total = inv * (f @ (w @ f)) - (pool & (inv > 0))
    else:
        u, up = f * inv[:, None], f * w[:, None]
        total = np.empty(N, np.float32)
        for s in range(0, N, block_size):
            sim = u[s:s + block_size] @ up.T
            idx = np.arange(s, min(s + block_size, N))
            sim[idx - s, idx] = 0.0
            total[s:s + block_size] = sim.sum(-1)
    count = pool.sum() - pool
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok & (count > 0), total / count, np.nan)


# ============================================================================ timing
def best_of(fn, repeats):
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def jax_time(fn, args, repeats):
    out = jax.block_until_ready(fn(*args))                      # warm-up / compile
    return best_of(lambda: jax.block_until_ready(fn(*args)), repeats), out


def max_abs_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return math.inf
    ok = ~np.isnan(a)
    return float(np.abs(a[ok] - b[ok]).max()) if ok.any() else 0.0


# ============================================================================ cases
@jax.jit
def _blobs(noise, centre, amp):
    """noise `[..., H, W]`, centre `[..., 2, 2]` (x, y), amp `[..., 2]` -> sigmoid of two
    Gaussian blobs on a -6 background plus noise, float32 in (0, 1)."""
    H, W = noise.shape[-2:]
    ys = jnp.arange(H, dtype=jnp.float32)[:, None]
    xs = jnp.arange(W, dtype=jnp.float32)[None, :]
    logit = -6.0 + noise
    for j in range(2):
        cx = centre[..., j, 0, None, None]
        cy = centre[..., j, 1, None, None]
        logit += amp[..., j, None, None] * jnp.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 8.0)
    return jax.nn.sigmoid(logit)


def _synthetic_heatmaps(seed, shape):
    """Heatmaps like a network's: one strong blob, a weaker second one, noise (numpy RNG;
    jax.random's first compile costs seconds here)."""
    *lead, H, W = shape
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape, np.float32) * np.float32(0.4)
    centre = rng.uniform(0, 1, (*lead, 2, 2)).astype(np.float32) * np.float32([W, H])
    amp = np.stack([np.full(lead, 9.0, np.float32),
                    9.0 * rng.uniform(0, 1, lead).astype(np.float32)], -1)
    return _blobs(noise, centre, amp)


def bench_mpe(args, rows):
    M, F, Kp, H, W = (4, 20, 4, 32, 32) if args.quick else (64, 1000, 8, 64, 64)
    chunk = 10 if args.quick else 50
    np_frames = 2 if args.quick else 5
    threshold = 0.1
    x = _synthetic_heatmaps(0, (M, chunk, Kp, H, W))
    f = jax.jit(lambda a: K.multi_peak_entropy(a, threshold=threshold))
    jax.block_until_ready(f(x))
    n_chunks = F // chunk
    best = math.inf
    for _ in range(max(1, args.repeats - 1)):                   # the whole run, chunk by chunk
        t = time.perf_counter()
        for _ in range(n_chunks):
            out = jax.block_until_ready(f(x))
        best = min(best, time.perf_counter() - t)
    xs = np.asarray(x[:, :np_frames])
    t_np_slice = best_of(lambda: np_mpe(xs, threshold=threshold), max(1, args.repeats - 1))
    scale = F / np_frames
    diff = max_abs_diff(np.asarray(out)[:, :np_frames], np_mpe(xs, threshold=threshold))
    rows.append(dict(kernel="multi_peak_entropy", size=f"[{M},{F},{Kp},{H},{W}]",
                     jax_s=best, numpy_s=t_np_slice * scale, max_abs_diff=diff, tolerance=1e-4,
                     note=(f"JAX: {n_chunks} chunks of {chunk} frames (one synthetic chunk "
                           f"reused); NumPy timed on {np_frames} frames x{scale:g}; "
                           f"softmax, threshold={threshold}")))


def bench_influence(args, rows):
    M, n, T = (64, 500, 100) if args.quick else (1024, 10_000, 2_000)
    rng = np.random.default_rng(1)
    masks = rng.random((M, n)) < 0.5
    values = rng.standard_normal((M, T)).astype(np.float32)
    values[rng.random((M, T)) < 0.01] = np.nan                  # a few missing predictions
    jm, jv = jnp.asarray(masks), jnp.asarray(values)
    t_jax, out = jax_time(lambda a, b: K.subset_influence(a, b), (jm, jv), args.repeats)
    t_np = best_of(lambda: np_influence(masks, values), max(1, args.repeats - 1))
    e_np, s_np = np_influence(masks, values)
    diff = max(max_abs_diff(out.effect, e_np), max_abs_diff(out.stderr, s_np))
    rows.append(dict(kernel="subset_influence", size=f"M={M} n={n} T={T}", jax_s=t_jax,
                     numpy_s=t_np, max_abs_diff=diff, tolerance=1e-3,
                     note="1% NaN values (3 matmuls); NumPy on OpenBLAS, same threads"))


def bench_margins(args, rows):
    B, Kp, h, w, stride = (64, 4, 32, 32, 4) if args.quick else (1024, 8, 64, 64, 4)
    rng = np.random.default_rng(2)
    hm = rng.standard_normal((B, Kp, h, w)).astype(np.float32)
    kp = rng.uniform(0, w * stride, (B, Kp, 2)).astype(np.float32)
    kp[rng.random((B, Kp)) < 0.1] = np.nan
    jh, jk = jnp.asarray(hm), jnp.asarray(kp)
    t_jax, out = jax_time(lambda a, b: K.heatmap_margin(a, b, stride=stride, radius=2.0),
                          (jh, jk), args.repeats)
    t_np = best_of(lambda: np_margin(hm, kp, stride, 2.0), args.repeats)
    diff = max_abs_diff(out, np_margin(hm, kp, stride, 2.0))
    rows.append(dict(kernel="heatmap_margin", size=f"[{B},{Kp},{h},{w}]", jax_s=t_jax,
                     numpy_s=t_np, max_abs_diff=diff, tolerance=1e-5,
                     note="radius 2, 10% unlabeled"))


def bench_representativeness(args, rows):
    N, D = (500, 32) if args.quick else (20_000, 256)
    block = 128 if args.quick else 1024
    rng = np.random.default_rng(3)
    f = rng.standard_normal((N, D)).astype(np.float32) + 0.3
    pool = rng.random(N) < 0.7
    jf, jp = jnp.asarray(f), jnp.asarray(pool)
    for bs, label in ((None, "O(N D) identity"), (block, f"blocked pairwise, {block} rows")):
        t_jax, out = jax_time(lambda a, b: K.representativeness(a, b, block_size=bs),
                              (jf, jp), args.repeats)
        t_np = best_of(lambda: np_representativeness(f, pool, bs), args.repeats)
        diff = max_abs_diff(out, np_representativeness(f, pool, bs))
        rows.append(dict(kernel="representativeness" + ("" if bs is None else " (blocked)"),
                         size=f"N={N} D={D}", jax_s=t_jax, numpy_s=t_np, max_abs_diff=diff,
                         tolerance=1e-4, note=label + " in both"))


def bench_aum_tracking(args, rows):
    """Train-step time of the default network with and without AUM tracking (the margin is
    computed from the step's own forward pass; tracking adds it and two scatter-adds)."""
    from ensemble_jax import ModelConfig, TrainConfig, synthetic_dataset
    from ensemble_jax.training import strategies
    from ensemble_jax.training.trainer import EnsembleTrainer
    n_members = 2 if args.quick else 4
    data = synthetic_dataset(64 if args.quick else 256, image_size=32 if args.quick else 64,
                             seed=0)
    model = ModelConfig(widths=(8, 16, 32), head_width=16) if args.quick else ModelConfig()
    masks = np.ones((n_members, data.n_frames), np.int32)
    setups = {}
    for track in (False, True):
        tc = TrainConfig(batch_size=16, steps=1000, track_aum=track)
        trainer = EnsembleTrainer(model, tc)
        st = trainer.setup(data, masks, np.arange(n_members), np.ones(n_members))
        setups[track] = (trainer.runner(st, "sequential", 1), st)
    # Interleaved repeats, so that a drift of the shared machine hits both sides alike.
    times = {False: math.inf, True: math.inf}
    for _ in range(args.repeats):
        for track, (runner, st) in setups.items():
            m = strategies.measure(runner, st.states, st.inputs, st.images, st.keypoints,
                                   probe_steps=3 if args.quick else 10)
            times[track] = min(times[track], m["step_s"])
    rows.append(dict(kernel="AUM tracking in train step", size=f"{n_members} members, batch 16",
                     jax_s=times[True], numpy_s=times[False], max_abs_diff=0.0, tolerance=0.0,
                     note=f"'JAX s' = step with tracking, 'NumPy s' = without; cost "
                          f"{100 * (times[True] / times[False] - 1):+.1f}% (goal < 5%)"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "kernels.json"))
    p.add_argument("--repeats", type=int, default=None, help="best of N (default 3; quick 1)")
    p.add_argument("--only", nargs="*", default=None,
                   choices=["mpe", "influence", "margins", "representativeness", "aum_tracking"])
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    cases = dict(mpe=bench_mpe, influence=bench_influence, margins=bench_margins,
                 representativeness=bench_representativeness,
                 aum_tracking=bench_aum_tracking)
    rows = []
    for name, fn in cases.items():
        if args.only is None or name in args.only:
            t = time.perf_counter()
            fn(args, rows)
            print(f"  ({name}: {time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)
    for r in rows:
        r["speedup"] = r["numpy_s"] / r["jax_s"]
    head = f"{'kernel':<30} {'size':<22} {'JAX s':>9} {'NumPy s':>9} {'speed-up':>9} {'max|diff|':>10}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['kernel']:<30} {r['size']:<22} {r['jax_s']:>9.4f} {r['numpy_s']:>9.4f} "
              f"{r['speedup']:>8.1f}x {r['max_abs_diff']:>10.2e}  {r['note']}")
    meta = dict(quick=args.quick, repeats=args.repeats, dtype="float32",
                jax=jax.__version__, numpy=np.__version__, backend=jax.default_backend(),
                device=str(jax.devices()[0]), cpu_count=os.cpu_count(),
                machine=platform.machine(), python=platform.python_version())
    write_json(args.out, dict(meta=meta, rows=rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
