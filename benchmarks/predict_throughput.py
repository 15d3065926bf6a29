"""Throughput of `ensemble-jax predict` on a video: frames/s for an ensemble, with the
decoding time and the device time shown apart, and the process's peak memory.

A synthetic 640x480 video (a bright animal walking over a textured floor) of `--frames`
frames is written with PyAV (H.264, not timed), and a run directory of `--members`
members of the default network at `--image-size` is built with initial parameters (the
cost of a forward pass does not depend on the weights; building it skips training).
Then `predict_sources` runs once to compile (on a short clip) and once timed on the
video.

  decode_s   seconds the background thread spent decoding + letterboxing (beside the
             device work, not in series with it)
  device_s   seconds the main thread waited for the compiled all-members forward pass
  wall_s     the whole predict call, including writing the CSVs at the end
  overhead   wall_s / device_s - 1: how much longer the call took than the device work
             alone; an upper bound on what decoding costs (it also holds writing the
             CSVs); the acceptance asks decoding not to slow predict by more than 20%
  peak RSS   the process's resident memory, sampled every 20 ms during the timed call
             (`/proc/self/status`), and its growth over the baseline before the call

    python benchmarks/predict_throughput.py                  # 16 members, 1,000 frames
    python benchmarks/predict_throughput.py --frames 250     # memory vs video length
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _PeakRSS:
    def __init__(self):
        self.peak = _rss_mib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mib())


def _frames(n: int, h: int = 480, w: int = 640):
    rng = np.random.default_rng(0)
    floor = (rng.random((h, w, 1)) * 60 + 60).astype(np.uint8).repeat(3, -1)
    for i in range(n):
        img = floor.copy()
        x = 40 + (i * 3) % (w - 140)
        y = 200 + int(60 * np.sin(i / 25))
        img[y:y + 50, x:x + 90] = 230
        img[y + 15:y + 35, x + 80:x + 110] = 150
        yield img


def build_run(out: Path, members: int, image_size: int) -> Path:
    import jax
    from ensemble_jax import rundir
    from ensemble_jax.data.synthetic import synthetic_dataset
    from ensemble_jax.models.heatmap_net import HeatmapNet, ModelConfig
    from ensemble_jax.training.config import TrainConfig
    data = synthetic_dataset(8, image_size=image_size, seed=0)
    train, test = data.split(0.25, seed=0)
    mc = ModelConfig()
    model = HeatmapNet(mc, data.n_keypoints)
    params = jax.vmap(lambda k: model.init(k, train.images[:1]))(
        jax.random.split(jax.random.key(0), members))
    return rundir.write_untrained(out, train, test, mc, TrainConfig(), params,
                                  strategy="benchmark")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="benchmarks/out/predict_throughput.json")
    args = p.parse_args()

    import jax
    from ensemble_jax import io as eio
    from ensemble_jax.video.predict import predict_sources
    from ensemble_jax.video.reader import VideoSource, write_video

    tmp = Path(tempfile.mkdtemp(prefix="predict_throughput_"))
    run = build_run(tmp / "run", args.members, args.image_size)
    video = write_video(tmp / "video.mp4", _frames(args.frames), fps=30)
    warm = write_video(tmp / "warm.mp4", _frames(args.batch_size), fps=30)
    t = time.perf_counter()
    list(VideoSource(video).frames())
    decode_only = time.perf_counter() - t            # decoding alone, no letterbox, no device
    predict_sources(run, tmp / "warm_out", videos=[warm], batch_size=args.batch_size,
                    progress=False, log=lambda m: None)          # compiles
    base = _rss_mib()
    with _PeakRSS() as mem:
        info = predict_sources(run, tmp / "pred", videos=[video], batch_size=args.batch_size,
                               progress=False, log=lambda m: None)[0]
    loop_s = info["wall_s"]
    result = {
        "members": args.members, "frames": info["frames"], "video": "640x480 H.264",
        "image_size": args.image_size, "batch_size": args.batch_size,
        "frames_per_s": info["frames"] / loop_s,
        "member_frames_per_s": info["frames"] * args.members / loop_s,
        "wall_s": loop_s, "decode_s": info["decode_s"], "device_s": info["device_s"],
        "decode_only_s": decode_only,
        "decode_overhead": loop_s / max(info["device_s"], 1e-9) - 1.0,
        "rss_baseline_mib": base, "rss_peak_mib": mem.peak, "rss_growth_mib": mem.peak - base,
        "backend": jax.default_backend(), "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
    }
    eio.write_json(args.out, result)
    print(f"{args.members} members, {info['frames']} frames 640x480 -> {args.image_size} px: "
          f"{result['frames_per_s']:.1f} frames/s ({result['member_frames_per_s']:.0f} "
          f"member-frames/s); wall {loop_s:.1f} s = device {info['device_s']:.1f} s + rest; "
          f"decode {info['decode_s']:.1f} s on its own thread (decoding alone "
          f"{decode_only:.1f} s); wall over device time - 1 = "
          f"{100 * result['decode_overhead']:.0f}%; peak RSS {mem.peak:.0f} MiB "
          f"(+{mem.peak - base:.0f} MiB over {base:.0f} MiB before the call)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
