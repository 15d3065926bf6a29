"""Shared plumbing of the seed studies in `experiments/` (stable API; studies import it).

Every study script is `python experiments/studyN_*.py [--out OUT] [--data PATH]
[--image-size S] [--quick] [--seed N] [--steps N]` and writes into `OUT/<study>/`:
`numbers.json` (+ CSVs), PNG figures and a `section.json` (`report.write_section`), then
rebuilds `OUT/report.html` (`finish(args)`).

API (kept stable; new arguments are keyword-only with defaults):

  parse_args(description, argv=None, *, extra=None) -> argparse.Namespace
      --out (default runs/studies), --data, --format, --image-size (with --data default
      128, 64 with --quick), --quick, --seed, --steps, --seeds, --quiet. `extra(parser)` may add a study's own options.
  sweep_configs(args, *, plan="nested", fractions=None, n_seeds=None, **sweep_overrides)
      -> (SweepConfig, ModelConfig, TrainConfig): the defaults of `ensemble-jax sweep`
      (15 members: fractions 0.1..0.9 x 3 seeds, 400 steps), or with --quick a tiny run
      (120 synthetic 32x32 frames, widths (8, 16, 32), 60 steps, fractions 0.3/0.6/0.9 x
      2 seeds, strategy 'sequential').
  ensure_sweep(args, name="sweep", *, log=print, **config_overrides) -> Path
      OUT/<name>, a complete run directory of `ensemble_jax.sweep.run_sweep`: reused when its
      summary.json exists and its config.json matches the configuration asked for,
      resumed when it is an unfinished sweep of that configuration, trained anew otherwise. config_overrides go to `sweep_configs`.
  load_run(run_dir) -> Run: config, summary, masks [M, n] (int), member_fraction [M],
      member_seed [M], alive [M] (bool), predictions (dict of predictions.npz arrays),
      train, test (KeypointDataset from data.npz), threshold_mask [n, K] or None.
  study_dir(args, name) -> Path               OUT/<name>, created
  frame_errors(pred_kp [M, F, K, 2], labels [F, K, 2]) -> [M, F] mean px over labeled kps
  write_csv(path, header, rows)               atomic CSV
  write_numbers(folder, numbers) -> Path      folder/numbers.json (NaN -> null)
  finish(args, log=print) -> Path             build_report(OUT); returns report.html
  setup()                                     Agg backend + JAX persistent compile cache
  short_id(frame_id) -> str                   last path component of a frame id
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from ensemble_jax import rundir

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python experiments/x.py` from anywhere
    sys.path.insert(0, str(REPO))

DEFAULT_OUT = "runs/studies"
DATA_IMAGE_SIZE = 128            # --data without --image-size
# Studies 1-2's shared nested sweep: common random numbers with one block per nested seed
# (sweep.py: config.json crn_block_ids), so a seed's members pair across fractions.
PAIRED_NESTED = {"train_overrides": {"crn": True}}


def setup() -> None:
    """Headless matplotlib and a persistent XLA compile cache (env vars win)."""
    import matplotlib
    matplotlib.use("Agg")
    import jax
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get(
        "ENSEMBLE_JAX_XLA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                  "ensemble_jax", "xla")
    try:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(
            os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0.5)))
    except Exception:
        pass


def parse_args(description: str, argv: Sequence[str] | None = None, *,
               extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"output folder shared by the studies (default {DEFAULT_OUT}); the "
                        "sweep goes to OUT/sweep, this study to OUT/<study>, the report to "
                        "OUT/report.html")
    p.add_argument("--data", default=None, help="a labeled project (DeepLabCut folder, "
                   "Lightning Pose CSV, COCO JSON, TFDS); default: embedded synthetic scenes")
    p.add_argument("--format", default=None, choices=["dlc", "lightning-pose", "coco", "tfds"])
    p.add_argument("--image-size", type=int, default=None,
                   help="letterboxed training resolution (square, divisible by 2**stages)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (seconds to a minute) that exercises every output")
    p.add_argument("--seed", type=int, default=None, help="data split / subset / init seed")
    p.add_argument("--steps", type=int, default=None, help="training steps per member")
    p.add_argument("--seeds", type=int, default=None,
                   help="nested seeds of the shared sweep (default 3, 2 with --quick)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    args.out = str(Path(args.out))
    return args


def sweep_configs(args: argparse.Namespace, *, plan: str = "nested",
                  fractions: Sequence[float] | None = None, n_seeds: int | None = None,
                  model_overrides: dict | None = None, train_overrides: dict | None = None,
                  **sweep_overrides: Any):
    """(SweepConfig, ModelConfig, TrainConfig) for the studies' arguments."""
    from ensemble_jax.presets import preset
    sweep, model, train = preset("quick" if args.quick else "default",
                                 real_data=bool(args.data))
    kw: dict[str, Any] = {"plan": plan, "data": args.data, "format": args.format}
    if args.image_size is not None:
        kw["image_size"] = int(args.image_size)
    elif args.data and not args.quick:
        kw["image_size"] = DATA_IMAGE_SIZE
    if fractions is not None:
        kw["fractions"] = tuple(fractions)
    if n_seeds is not None:
        kw["n_seeds"] = int(n_seeds)
    elif getattr(args, "seeds", None) is not None:
        kw["n_seeds"] = int(args.seeds)
    if args.seed is not None:
        kw["seed"] = int(args.seed)
    kw.update(sweep_overrides)
    sweep = dataclasses.replace(sweep, **kw)
    tkw: dict[str, Any] = {}
    if args.steps is not None:
        tkw["steps"] = int(args.steps)
    if args.seed is not None:
        tkw["seed"] = int(args.seed)
    tkw.update(train_overrides or {})
    train = dataclasses.replace(train, **tkw)
    model = dataclasses.replace(model, **(model_overrides or {}))
    return sweep, model, train


def _config_dict(sweep, model, train) -> dict:
    from ensemble_jax import io as eio
    d = {"sweep": dataclasses.asdict(sweep), "model": dataclasses.asdict(model),
         "train": dataclasses.asdict(train)}
    return json.loads(json.dumps(d, default=eio._json_default))


def ensure_sweep(args: argparse.Namespace, name: str = "sweep", *,
                 log: Callable[[str], None] = print, **config_overrides: Any) -> Path:
    """OUT/<name>: reused if complete with the same configuration, else trained."""
    from ensemble_jax import rundir
    from ensemble_jax.sweep import run_sweep
    sweep, model, train = sweep_configs(args, **config_overrides)
    run = Path(args.out) / name
    want = _config_dict(sweep, model, train)
    cfg_path, summary_path = run / "config.json", run / "summary.json"
    resume = False
    if cfg_path.is_file():
        try:
            have = rundir.upgrade_config(json.loads(cfg_path.read_text()))
        except (OSError, json.JSONDecodeError):
            have = None
        same = have is not None and not rundir.config_diff({k: have.get(k) for k in want},
                                                           want)
        if same and summary_path.is_file() and (run / "predictions.npz").is_file():
            log(f"reusing the trained sweep in {run} (same configuration)")
            return run
        if same:
            resume = True
            log(f"{run}: an unfinished sweep with this configuration; resuming it")
        else:
            log(f"{run}: holds a sweep with another configuration; training anew")
    t0 = time.perf_counter()
    # a sweep of another configuration there is moved aside (OUT/<name>.old-<time>)
    from ensemble_jax.presets import execution
    run_sweep(run, sweep, model, train, execution("quick" if args.quick else "default"),
              resume=resume,
              overwrite=cfg_path.is_file() and not resume,
              progress=not getattr(args, "quiet", False), log=log)
    log(f"trained the sweep in {time.perf_counter() - t0:.0f} s -> {run}")
    return run


def load_run(run_dir: str | Path) -> "rundir.Run":
    """`rundir.load`: config, summary, masks, layout, alive, predictions, train/test."""
    from ensemble_jax import rundir
    return rundir.load(run_dir)


def study_dir(args: argparse.Namespace, name: str) -> Path:
    d = Path(args.out) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def frame_errors(pred_kp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[M, F] mean over the labeled keypoints of the Euclidean error (px); NaN if none."""
    err = np.linalg.norm(np.asarray(pred_kp, np.float64) - np.asarray(labels, np.float64)[None],
                         axis=-1)                                    # [M, F, K]
    ok = np.isfinite(err)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok.any(-1), np.where(ok, err, 0).sum(-1) / np.maximum(ok.sum(-1), 1),
                        np.nan)


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_numbers(folder: str | Path, numbers: dict) -> Path:
    from ensemble_jax import io as eio
    path = Path(folder) / "numbers.json"
    eio.write_text(path, json.dumps(_clean(numbers), indent=1) + "\n")
    return path


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from ensemble_jax import io as eio
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(["" if isinstance(v, float) and not math.isfinite(v) else
                    (f"{v:.6g}" if isinstance(v, (float, np.floating)) else v) for v in r])
    eio.write_text(path, buf.getvalue())


def finish(args: argparse.Namespace, log: Callable[[str], None] = print) -> Path:
    from ensemble_jax.analysis.report import build_report
    path = build_report(args.out)
    log(f"report: {Path(path).resolve()}")
    return path


def short_id(frame_id: str) -> str:
    return str(frame_id).replace("\\", "/").split("/")[-1]
