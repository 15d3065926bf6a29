"""`ensemble-jax predict`: every alive member of a run on every frame of videos or image
folders, written as DeepLabCut-format CSVs that EKS reads as they are.

Per source (a video, or a folder of images) `<out>/<name>/` holds:

  members/member_<m>.csv  one per alive member (diverged members are left out): the
                          DeepLabCut prediction table (scorer / bodyparts / coords
                          header; x, y in original-image pixels, likelihood = sigmoid of
                          the heatmap peak), indexed by the integer frame index (a
                          video) or the image file name (a folder)
  ensemble.csv            the ensemble: confidence-weighted mean of the alive members'
                          keypoints (as `sweep` scores it), likelihood = their mean
                          confidence; apart from members/ so that
                          `eks singlecam --input-dir <out>/<name>/members` sees members only
  uncertainty.csv         per frame: frame, spread_max, spread_mean (px, original image;
                          RMS distance of the members' predictions to their mean), mpe_max,
                          mpe_mean (nats; multi-peak entropy of each member's scoremap,
                          mean over members), representativeness (mean cosine similarity
                          of the frame's encoder features to the other frames of the same
                          source, mean over members), then spread:<bodypart> and
                          mpe:<bodypart> columns
  features.npy            float32 [frames, D]: per-member centred, unit-length encoder
                          features averaged over the members (what `suggest --by cluster`
                          clusters)
  frames.csv              a video's frames as decoded: frame, pts (stream time base),
                          time_s, crc32 of the decoded RGB pixels (what `suggest` and a
                          resume check their seeks against)
  frame_index.npz         a video's frame index (`video.frame_index`), valid while the
                          video's size and modification time are unchanged
  predict.json            what was run (run directory, members, source, frames, timing);
                          written last: its presence marks a finished source

Frames are decoded on a background thread and letterboxed to the training size exactly as
the training images were (`data.letterbox`); every batch runs all alive members in one
compiled program (`jax.vmap` over the stacked parameters). Memory does not grow with the
video's length: each batch's outputs are appended to raw files in `<out>/<name>/.partial/`
together with a progress record (`progress.json`, written atomically after the batch's
data are on disk). A killed `predict` run again with the same arguments continues after the
last complete batch and writes the same files as an uninterrupted run: the resumed decode
is checked on the last frame done (its time stamp and CRC), and falls back to decoding from
the start where a seek cannot be trusted.

A video that holds fewer frames than its container declares (truncated, damaged) is an
error naming both counts, found from its packets before anything is written and again
after decoding; `allow_short=True` (`--allow-short-video`) predicts the frames it holds
and records the shortfall in predict.json's "warnings".
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ensemble_jax import io as eio
from ensemble_jax.data.dataset import DatasetError
from ensemble_jax.data.export import (MEMBERS_DIR, member_file_name, predictions_header,
                                      predictions_rows)
from ensemble_jax.data.letterbox import to_original
from ensemble_jax.video.reader import batches, open_source
from ensemble_jax import logs

__all__ = ["load_run", "predict_sources", "ensemble_forward", "PREDICT_FORMAT",
           "streaming_representativeness", "read_uncertainty", "source_dir"]

PREDICT_FORMAT = "ensemble_jax.video_predict/1"
PROGRESS = "progress.json"
DONE = "predict.json"
INDEX = "frame_index.npz"
FRAMES = "frames.csv"
CHUNK = 4096              # frames per chunk when the outputs are assembled


def load_run(run_dir: str | os.PathLike):
    """The trained `EnsembleResult` of a finished run directory (`summary.json` present),
    its files checked against the manifest's checksums (RunDirError naming a file that was
    replaced, e.g. another run's params.msgpack). Raises ValueError / FileNotFoundError with
    one line naming what is missing, or when every member failed (training/health.py)."""
    from ensemble_jax import rundir
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"RUN_DIR {run}: not a folder")
    if rundir.failed_sweep(run):
        raise ValueError(f"RUN_DIR {rundir.failed_sweep(run)}")
    for name in ("config.json", "subsets.npy", "data.npz", "params.msgpack", "training.npz"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"RUN_DIR {run}: not a run directory of ensemble-jax "
                                    f"({name} is missing)")
    if not (run / "summary.json").is_file():
        raise FileNotFoundError(f"RUN_DIR {run}: the sweep has not finished (summary.json is "
                                f"missing); finish it with `ensemble-jax sweep --resume` first")
    # parameters, data and settings must be the ones this run's sweep wrote (as `analyze`)
    rundir.verify_files(run, rundir.ANALYZE_INPUTS, rundir.read_manifest(run))
    from ensemble_jax.training import health
    result = rundir.load(run).result
    if not np.asarray(result.alive, bool).any():
        raise ValueError(f"RUN_DIR {run}: every member failed ({health.describe_failed(result)})"
                         f"; nothing to predict with")
    return result


def _run_fingerprint(run: Path) -> dict:
    h = hashlib.sha256()
    with open(run / "params.msgpack", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"run_dir": str(run.resolve()), "params_sha256": h.hexdigest()}


_FORWARDS: dict = {}


def ensemble_forward(result, mode: str | None = None):
    """Jitted (stacked params `[M, ...]`, images uint8 `[B, H, W, C]`) ->
    keypoints `[M, B, K, 2]` (training pixels), confidences `[M, B, K]`,
    mpe `[M, B, K]` (nats), features `[M, B, D]`: all members in one program.

    mode: "vmap" (the members batched into each operation: grouped convolutions, what
    accelerators run best) or "map" (`lax.map`: one member after the other inside the
    program; XLA's CPU convolutions run a member's plain convolution faster than the
    grouped one). Default: "map" on a CPU, "vmap" elsewhere."""
    import jax
    from ensemble_jax.analysis.analyze import mpe_mode
    from ensemble_jax.models.forward import member_body
    mc, k = result.model_config, len(result.bodyparts)
    if mode is None:
        mode = "map" if jax.default_backend() == "cpu" else "vmap"
    if mode not in ("vmap", "map"):
        raise ValueError(f"mode must be 'vmap' or 'map', got {mode!r}")
    key = (mc, k, mode)
    if key not in _FORWARDS:
        # the same member pass (and multi-peak entropy) as `analyze` computes by default
        body = member_body(mc, k, ("keypoints", "confidences", "mpe", "features"), mpe_mode())

        def one(params, x):
            out = body(params, x)
            return out["keypoints"], out["confidences"], out["mpe"], out["features"]

        if mode == "vmap":
            fn = jax.vmap(one, in_axes=(0, None))
        else:   # a loop over the members inside the one program (lax.map = scan)
            fn = lambda params, x: jax.lax.map(lambda p: one(p, x), params)
        _FORWARDS[key] = jax.jit(fn)
    return _FORWARDS[key]


# ------------------------------------------------------------------ partial files
@dataclasses.dataclass
class _Layout:
    m: int          # alive members
    k: int          # keypoints
    d: int          # feature width

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-frame row shape of each raw file (float32 unless `DTYPES` says)."""
        return {"keypoints": (self.m, self.k, 2), "confidences": (self.m, self.k),
                "mpe": (self.m, self.k), "features": (self.m, self.d),
                "letterbox": (3,), "pts": (), "crc": ()}


# video time stamps and pixel CRCs of the decoded frames (-1 / 0 for image folders)
DTYPES = {"pts": np.int64, "crc": np.uint32}


def _dtype(name: str):
    return np.dtype(DTYPES.get(name, np.float32))


def _row_bytes(shape, name: str = "") -> int:
    return int(np.prod(shape)) * _dtype(name).itemsize


def _open_partial(part: Path, layout: _Layout, frames_done: int) -> dict:
    """Raw files truncated to `frames_done` rows (a batch appended after the last progress
    record is dropped), opened for appending."""
    files = {}
    for name, shape in layout.shapes().items():
        path = part / f"{name}.f32"
        path.touch()
        with open(path, "r+b") as f:
            f.truncate(frames_done * _row_bytes(shape, name))
        files[name] = open(path, "ab")
    return files


def _read_rows(part: Path, name: str, shape, lo: int, hi: int) -> np.ndarray:
    rb = _row_bytes(shape, name)
    with open(part / f"{name}.f32", "rb") as f:
        f.seek(lo * rb)
        data = f.read((hi - lo) * rb)
    return np.frombuffer(data, _dtype(name)).reshape((hi - lo,) + tuple(shape))


def read_frames_csv(path: str | os.PathLike) -> dict[int, tuple[int, int]]:
    """frames.csv -> {frame: (pts, crc32)}, what `video.reader.read_frames` checks."""
    import csv
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return {int(r["frame"]): (int(r["pts"]), int(r["crc32"])) for r in rows}
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a frames.csv written by predict ({e})") from None


# ------------------------------------------------------------------ helpers
def _nanmean_last(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    n = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, x, 0.0).sum(-1) / np.maximum(n, 1), np.nan)


def _nanmax_last(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    return np.where(ok.any(-1), np.where(ok, x, -np.inf).max(-1), np.nan)


def _unit_rows(f: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero; non-finite rows become NaN."""
    f = np.asarray(f, np.float64)
    ok = np.isfinite(f).all(-1, keepdims=True)
    f0 = np.where(ok, f, 0.0)
    norm = np.sqrt((f0 * f0).sum(-1, keepdims=True))
    u = np.where(norm > 0, f0 / np.where(norm > 0, norm, 1.0), 0.0)
    return np.where(ok, u, np.nan)


def streaming_representativeness(read_chunk: Callable[[int, int], np.ndarray], n: int,
                                 chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Representativeness of every frame of one source against all its frames, per member,
    reading the features `[frames, M, D]` in chunks (memory O(chunk), not O(frames)).

    Per member the features are centred (mean over the frames) and then the score is the
    `kernels.representativeness` of those rows with the whole source as the pool: the mean
    cosine similarity to every other frame, u_i . (sum_j u_j - u_i) / (n - 1), u = unit
    rows (a zero row has cosine 0 with everything, a non-finite row scores NaN and is out
    of the pool). Returns (representativeness `[n]`, mean over members; cluster features
    `[n, D]`, the members' unit rows averaged)."""
    total, count = None, None
    for lo in range(0, n, chunk):                        # pass 1: per-member mean
        f = read_chunk(lo, min(n, lo + chunk)).astype(np.float64)
        ok = np.isfinite(f).all(-1, keepdims=True)
        s = np.where(ok, f, 0.0).sum(0)
        c = ok.sum(0)
        total = s if total is None else total + s
        count = c if count is None else count + c
    mean = total / np.maximum(count, 1)                 # [M, D]
    pool_sum, pool_n = 0.0, 0
    for lo in range(0, n, chunk):                        # pass 2: sum of unit rows
        u = _unit_rows(read_chunk(lo, min(n, lo + chunk)) - mean)
        ok = np.isfinite(u).all(-1)
        pool_sum = pool_sum + np.where(ok[..., None], u, 0.0).sum(0)   # [M, D]
        pool_n = pool_n + ok.sum(0)                                     # [M]
    rep = np.empty(n, np.float64)
    feats = np.empty((n, mean.shape[-1]), np.float32)
    for lo in range(0, n, chunk):                        # pass 3: scores
        hi = min(n, lo + chunk)
        u = _unit_rows(read_chunk(lo, hi) - mean)        # [c, M, D]
        ok = np.isfinite(u).all(-1)
        self_sq = np.where(ok, (np.nan_to_num(u) ** 2).sum(-1), 0.0)
        others = pool_n - ok                              # pool without the frame itself
        with np.errstate(invalid="ignore", divide="ignore"):
            s = ((np.nan_to_num(u) * pool_sum).sum(-1) - self_sq) / np.maximum(others, 1)
        s = np.where(ok & (others > 0), s, np.nan)       # [c, M]
        rep[lo:hi] = _nanmean_last(s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            feats[lo:hi] = np.nanmean(u, axis=1)
    return rep.astype(np.float32), feats


def source_dir(out: str | os.PathLike, name: str) -> Path:
    return Path(out) / name


def read_uncertainty(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """uncertainty.csv -> columns (frame as str, the rest float64)."""
    import csv
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    cols: dict[str, Any] = {}
    for j, name in enumerate(header):
        vals = [r[j] for r in body]
        cols[name] = (np.array(vals, dtype=object) if name == "frame"
                      else np.array([float(v) if v else np.nan for v in vals]))
    return cols


# ------------------------------------------------------------------ one source
def _assemble(part: Path, dest: Path, source, result, members: np.ndarray, layout: _Layout,
              n: int, scorer: str) -> None:
    """Writes the final files of one source from its raw files, chunk by chunk."""
    from ensemble_jax.training.result import consensus
    from ensemble_jax import kernels
    bps = list(result.bodyparts)
    shapes = layout.shapes()
    ids = [source.frame_id(i) for i in range(n)]
    rep, feats = streaming_representativeness(
        lambda lo, hi: _read_rows(part, "features", shapes["features"], lo, hi), n)
    n_members = result.n_members
    # member files: one pass over the raw file per member keeps one file open at a time
    for mi, m in enumerate(members):
        with eio.atomic_path(dest / MEMBERS_DIR / member_file_name(m, n_members)) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(predictions_header(bps, scorer))
                for lo in range(0, n, CHUNK):
                    hi = min(n, lo + CHUNK)
                    kp = _read_rows(part, "keypoints", shapes["keypoints"], lo, hi)[:, mi]
                    cf = _read_rows(part, "confidences", shapes["confidences"], lo, hi)[:, mi]
                    f.write(predictions_rows(kp, cf, ids[lo:hi]))
    unc_header = (["frame", "spread_max", "spread_mean", "mpe_max", "mpe_mean",
                   "representativeness"] + [f"spread:{b}" for b in bps]
                  + [f"mpe:{b}" for b in bps])
    with eio.atomic_path(dest / "ensemble.csv") as tmp_e, \
            eio.atomic_path(dest / "uncertainty.csv") as tmp_u:
        with open(tmp_e, "w", encoding="utf-8", newline="") as fe, \
                open(tmp_u, "w", encoding="utf-8", newline="") as fu:
            fe.write(predictions_header(bps, scorer))
            fu.write(",".join(unc_header) + "\n")
            for lo in range(0, n, CHUNK):
                hi = min(n, lo + CHUNK)
                kp = np.moveaxis(_read_rows(part, "keypoints", shapes["keypoints"], lo, hi),
                                 1, 0)                                   # [M, c, K, 2]
                cf = np.moveaxis(_read_rows(part, "confidences", shapes["confidences"],
                                            lo, hi), 1, 0)               # [M, c, K]
                mpe = _read_rows(part, "mpe", shapes["mpe"], lo, hi)     # [c, M, K]
                ens = consensus(kp, cf)                                  # [c, K, 2]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    econf = np.nanmean(cf.astype(np.float64), axis=0)
                fe.write(predictions_rows(ens, econf, ids[lo:hi]))
                spread = np.asarray(kernels.ensemble_spread(kp)).astype(np.float64)  # [c, K]
                mpe_kp = _nanmean_last(np.moveaxis(mpe.astype(np.float64), 1, -1))  # [c, K]
                cols = [_nanmax_last(spread), _nanmean_last(spread), _nanmax_last(mpe_kp),
                        _nanmean_last(mpe_kp), rep[lo:hi].astype(np.float64)]
                lines = []
                for i in range(hi - lo):
                    vals = [c[i] for c in cols] + list(spread[i]) + list(mpe_kp[i])
                    lines.append(",".join([str(ids[lo + i])] + [
                        "NaN" if v != v else f"{v:.6g}" for v in map(float, vals)]))
                fu.write("\n".join(lines) + "\n")
    eio.save_npy(dest / "features.npy", feats)
    if source.kind == "video":
        pts = _read_rows(part, "pts", (), 0, n)
        crc = _read_rows(part, "crc", (), 0, n)
        tb = source.time_base
        lines = ["frame,pts,time_s,crc32"] + [
            f"{i},{int(p)},{float(int(p) * tb):.6f},{int(c)}"
            for i, (p, c) in enumerate(zip(pts, crc))]
        eio.write_text(dest / FRAMES, "\n".join(lines) + "\n")


PREFETCH = 2       # batches decoded ahead (`reader.batches`' depth)
# On a CPU the process held 1.16x (1000 frames) and 1.22x (305 frames) the forward pass's
# memory_analysis() per frame, scaled from 8 frames (mirror-mouse, 256 px, 15 members):
# the per-frame estimate is taken this many times there.
CPU_FORWARD_FACTOR = 1.35


def capped_batch_size(result, members: np.ndarray, batch_size: int, n_frames: int | None,
                      memory_budget: int | None = None, name: str = "") -> int:
    """`batch_size`, lowered to the source's frame count (a longer batch is padding) and
    to what the memory budget holds: XLA's `memory_analysis()` of the members' forward
    pass compiled at 8 frames, scaled per frame, plus the host's copies of a batch (the
    decoded frames `PREFETCH + 2` times, the outputs 3 times). On a CPU the budget is the
    process's (`waves.host_memory_budget`, or `memory_budget`) less what it holds now;
    elsewhere the device's free memory (or `memory_budget`) for the forward pass. Logs
    one line when it lowers the batch."""
    import jax
    from ensemble_jax.training import waves
    from ensemble_jax.training.backend import is_accelerator
    want = int(batch_size)
    cap = want if not n_frames or n_frames <= 0 else min(want, int(n_frames))
    h, w, c = result.image_shape
    b0 = max(1, min(8, cap))
    params = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((len(members),) + tuple(x.shape[1:]), x.dtype),
        result.params)
    try:
        ma = ensemble_forward(result).lower(
            params, jax.ShapeDtypeStruct((b0, h, w, c), np.uint8)).compile().memory_analysis()
        device = (int(ma.temp_size_in_bytes) + int(ma.output_size_in_bytes)) / b0 + h * w * c
        out_row = int(ma.output_size_in_bytes) / b0
    except Exception:   # no analysis on this backend: the largest feature maps, guessed
        widths = result.model_config.widths
        device = 3 * 4 * sum((h >> i) * (w >> i) * wd for i, wd in enumerate(widths))
        out_row = 4 * len(members) * 64
    host = (PREFETCH + 2) * h * w * c + 3 * out_row
    accelerator = is_accelerator()
    if accelerator:
        dev_budget = memory_budget
        if dev_budget is None:
            free = waves.device_memory_budget()
            dev_budget = None if free is None else int(free * waves.SAFETY)
        host_budget, source = waves.host_memory_budget()
        source = "--memory-budget" if memory_budget is not None else source
        per_frame = host
        room = None if host_budget is None else host_budget - waves.rss_bytes()
        if dev_budget is not None:
            cap = min(cap, max(1, int(dev_budget // device)))
    else:
        if memory_budget is not None:
            budget, source = memory_budget, "--memory-budget"
        else:
            budget, source = waves.host_memory_budget()
        per_frame = device * CPU_FORWARD_FACTOR + host
        room = None if budget is None else budget - waves.rss_bytes()
    if room is not None:
        if room < per_frame:
            raise ValueError(
                f"predict: the memory budget ({source}) leaves {max(0, room) / 2 ** 20:.1f} "
                f"MiB beside what this process holds; one frame of {len(members)} members "
                f"needs ~{per_frame / 2 ** 20:.1f} MiB; free memory or raise --memory-budget")
        cap = min(cap, max(1, int(room // per_frame)))
    if cap < want:
        by_memory = room is not None and cap < min(want, n_frames or want)
        memory = ("" if room is None else
                  f"~{per_frame / 2 ** 20:.2f} MiB per frame for {len(members)} members, "
                  f"{room / 2 ** 20:.0f} MiB of the memory budget ({source}) beside what "
                  f"the process holds")
        logs.info(f"{name}: --batch-size {want} lowered to {cap} frames ("
                  + (memory if by_memory else f"the source holds {n_frames} frames"
                     + (f"; {memory}" if memory else "")) + ")")
    return cap


def _predict_one(source, dest: Path, result, members: np.ndarray, run_fp: dict, *,
                 batch_size: int, scorer: str, progress: bool,
                 after_batch: Callable[[int], None] | None,
                 allow_short: bool = False, flag: str = "--out",
                 memory_budget: int | None = None) -> dict:
    import jax
    from ensemble_jax.training import waves
    batch_size = capped_batch_size(result, members, batch_size, source.n_frames,
                                   memory_budget, str(source.path))
    done_path = dest / DONE
    want = {"format": PREDICT_FORMAT, "run": run_fp, "source": source.fingerprint(),
            "kind": source.kind, "members": [int(m) for m in members],
            "batch_size": int(batch_size), "scorer": scorer}
    same_as = lambda d: all(d.get(k) == v for k, v in want.items() if k != "batch_size")
    if done_path.is_file():
        done = eio.read_json(done_path, dict)
        if same_as(done):
            logs.info(f"{source.path}: already predicted in {dest} (predict.json); skipped")
            return {**done, "frames_this_call": 0}
        raise ValueError(f"{flag} {dest}: holds finished predictions of another run or source "
                         f"(predict.json differs); choose another {flag}")
    part = dest / ".partial"
    frames_done = 0
    if (part / PROGRESS).is_file():
        prog = eio.read_json(part / PROGRESS, dict)
        if not same_as(prog):
            raise ValueError(f"{flag} {dest}: holds an unfinished predict of another run or "
                             f"source ({part / PROGRESS}); use the same arguments to resume "
                             f"it, or choose another {flag}")
        frames_done = int(prog["frames_done"])
        if int(prog["batch_size"]) != batch_size:   # same batches: the same numbers
            logs.info(f"{source.path}: resuming with the batch size it started with, "
                      f"{prog['batch_size']}")
            batch_size = want["batch_size"] = int(prog["batch_size"])
        logs.info(f"{source.path}: resuming after frame {frames_done - 1} "
                  f"({frames_done} frames done)")
    elif dest.exists() and any(p.name not in (".partial", INDEX) for p in dest.iterdir()):
        raise ValueError(f"{flag} {dest}: exists and holds files that predict did not write; "
                         f"choose another {flag}")
    part.mkdir(parents=True, exist_ok=True)
    anchor = None
    if source.kind == "video":
        source.use_cache(dest / INDEX)
        if frames_done:      # the last frame done: the resumed seek is checked on it
            anchor = (int(_read_rows(part, "pts", (), frames_done - 1, frames_done)[0]),
                      int(_read_rows(part, "crc", (), frames_done - 1, frames_done)[0]))
    params = jax.tree_util.tree_map(lambda x: x[members], result.params)
    fwd = ensemble_forward(result)
    h, w, c = result.image_shape
    d_probe = jax.eval_shape(fwd, params, jax.ShapeDtypeStruct((1, h, w, c), np.uint8))[3]
    layout = _Layout(len(members), len(result.bodyparts), int(d_probe.shape[-1]))
    files = _open_partial(part, layout, frames_done)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=source.n_frames or None, initial=frames_done, unit="frame",
                   desc=source.name, dynamic_ncols=True)
    n = frames_done
    decode_s = device_s = 0.0
    t_start = time.perf_counter()
    try:
        for batch in batches(source, result.image_shape, start=frames_done,
                             batch_size=batch_size, anchor=anchor):
            decode_s += batch.decode_s
            t = time.perf_counter()
            kp, conf, mpe, feat = jax.device_get(fwd(params, batch.images))
            device_s += time.perf_counter() - t
            b = len(batch.indices)
            if batch.indices[0] != n or batch.indices[-1] != n + b - 1:
                raise DatasetError(f"{source.path}: frames out of order while decoding "
                                   f"(expected {n}, got {int(batch.indices[0])})")
            kp_orig = to_original(np.asarray(kp)[:, :b], batch.letterbox[None])  # [M,b,K,2]
            rows = {"keypoints": np.moveaxis(kp_orig, 1, 0),
                    "confidences": np.moveaxis(np.asarray(conf)[:, :b], 1, 0),
                    "mpe": np.moveaxis(np.asarray(mpe)[:, :b], 1, 0),
                    "features": np.moveaxis(np.asarray(feat)[:, :b], 1, 0),
                    "letterbox": batch.letterbox,
                    "pts": batch.pts if batch.pts is not None else np.full(b, -1),
                    "crc": batch.crc if batch.crc is not None else np.zeros(b)}
            for name, arr in rows.items():
                f = files[name]
                f.write(np.ascontiguousarray(arr, _dtype(name)).tobytes())
                f.flush()
                os.fsync(f.fileno())
            n += b
            eio.write_json(part / PROGRESS, {**want, "frames_done": n})
            if bar is not None:
                bar.update(b)
            if after_batch is not None:
                after_batch(n)
    finally:
        for f in files.values():
            f.close()
        if bar is not None:
            bar.close()
    if n == 0:
        raise DatasetError(f"{source.path}: no frames decoded")
    warns = []
    if source.kind == "video":
        source.remember_decoded(_read_rows(part, "pts", (), 0, n))
        short = source.check_complete(n)
        if short and not allow_short:
            raise DatasetError(f"{short}; nothing was written as predictions (pass "
                               f"--allow-short-video to predict the {n} frames it holds)")
        if short:
            warns.append(short)
            logs.warning(f"warning: {short}; predicted the {n} frames it holds")
    _assemble(part, dest, source, result, members, layout, n, scorer)
    wall = time.perf_counter() - t_start
    new = n - frames_done
    info = {**want, "frames": n, "bodyparts": list(result.bodyparts),
            "out_dir": str(dest.resolve()),
            "fps_video": source.fps if source.fps == source.fps else None,
            "frames_declared": getattr(source, "declared", None) or None,
            "warnings": warns,
            "frames_this_call": new, "wall_s": wall, "decode_s": decode_s,
            "device_s": device_s, "frames_per_s": new / wall if wall > 0 else None,
            "peak_rss_bytes": waves.peak_rss_bytes(),
            "files": sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                            if p.is_file() and ".partial" not in p.parts)}
    eio.write_json(done_path, info)
    shutil.rmtree(part, ignore_errors=True)
    return info


@logs.sink
def predict_sources(run_dir: str | os.PathLike, out: str | os.PathLike, *,
                    videos: Sequence[str | os.PathLike] = (),
                    images: Sequence[str | os.PathLike] = (), batch_size: int = 32,
                    progress: bool = True,
                    scorer: str = "ensemble-jax",
                    after_batch: Callable[[int], None] | None = None,
                    result=None, allow_short: bool = False,
                    flag: str = "--out", memory_budget: int | None = None) -> list[dict]:
    """Runs the alive members of `run_dir` on every frame of `videos` / `images` folders
    and writes `<out>/<name>/` per source (see the module doc). Returns each source's
    predict.json. Everything is checked before anything is written; the output folder is
    locked (`runlock`) while this runs. `after_batch(frames_done)` is called after each
    batch is on disk (tests use it to simulate a kill). A video holding fewer frames than
    its container declares is an error unless `allow_short` (then a warning recorded in
    predict.json). `flag`: the option that named `out`, for the messages (suggest passes
    "--predictions")."""
    from ensemble_jax import runlock
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be >= 1")
    if not videos and not images:
        raise ValueError("give at least one --video or --images")
    sources = [open_source(v, "video") for v in videos] + \
              [open_source(d, "images") for d in images]
    for s in sources:          # packets counted before anything is written
        short = s.check_complete() if s.kind == "video" else None
        if short and not allow_short:
            raise DatasetError(f"{short}; pass --allow-short-video to predict the frames "
                               f"it holds")
    names = [s.name for s in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two sources share the name {dup[0]!r} (outputs go to "
                         f"<out>/<name>/); rename one or predict them into different {flag}")
    result = load_run(run_dir) if result is None else result
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{flag} {out}: exists and is a file, not a folder")
    alive = np.asarray(result.alive, bool)
    members = np.flatnonzero(alive)
    if not members.size:
        raise ValueError(f"RUN_DIR {run_dir}: every member failed; nothing to predict with")
    from ensemble_jax.training.health import reason
    for m in np.flatnonzero(~alive):
        logs.warning(f"warning: member {m} {reason(result, m)}; left out")
    run_fp = _run_fingerprint(Path(run_dir))
    out.mkdir(parents=True, exist_ok=True)
    infos = []
    with runlock.locked(out, "predict"):
        for s in sources:
            dest = source_dir(out, s.name)
            for d in (dest, dest / MEMBERS_DIR):   # a killed writer's temporaries
                if d.is_dir():
                    eio.remove_temporaries(d)
            info = _predict_one(s, dest, result, members, run_fp, batch_size=batch_size,
                                scorer=scorer, progress=progress,
                                after_batch=after_batch, allow_short=allow_short,
                                flag=flag, memory_budget=memory_budget)
            infos.append(info)
            if info.get("frames_this_call"):
                logs.info(f"{s.path}: {info['frames']} frames x {len(members)} members -> {dest} "
                          f"({info['frames_per_s']:.1f} frames/s; decode {info['decode_s']:.1f} s "
                          f"on its own thread, device {info['device_s']:.1f} s)")
    return infos


def write_split_csvs(run_dir: str | os.PathLike, result, dataset, predictions,
                     folder: str = "test-predictions") -> list[Path]:
    """The predictions of a run on labeled frames (e.g. its test frames) as DeepLabCut CSVs:
    `<run_dir>/<folder>/members/member_<m>.csv` per alive member and
    `<run_dir>/<folder>/ensemble.csv` (confidence-weighted mean of the alive members, as
    `sweep` scores the ensemble), original-image pixels, indexed by the frame paths."""
    from ensemble_jax.data.export import write_member_predictions
    from ensemble_jax.training.result import consensus
    alive = np.asarray(result.alive, bool)
    kp = dataset.to_original(predictions.keypoints)                    # [M, n, K, 2]
    conf = np.asarray(predictions.confidences)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        econf = np.nanmean(conf[alive].astype(np.float64), axis=0)
    ens = dataset.to_original(consensus(predictions.keypoints[alive], conf[alive]))
    return write_member_predictions(Path(run_dir) / folder, kp, conf, dataset.bodyparts,
                                    list(dataset.frame_ids), alive=alive,
                                    ensemble_keypoints=ens, ensemble_confidences=econf)
