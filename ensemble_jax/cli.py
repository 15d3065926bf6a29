"""`ensemble-jax sweep | analyze | report`: argument parsing and printing only; every
action is a call into the Python API."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path

from ensemble_jax.training.config import STRATEGIES


def _enable_compile_cache() -> None:
    """Reuse compiled XLA programs across runs (the strategy probes compile several)."""
    import jax
    path = os.environ.get("ENSEMBLE_JAX_XLA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ensemble_jax", "xla")
    try:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(
            os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1.0)))
    except Exception:  # an unknown option on some jax version is no reason to stop
        pass


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _bytes(text: str) -> int:
    units = {"k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 800M or 12G, "
                                         f"got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemble-jax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="train a subset ensemble and write a run directory")
    s.add_argument("--out", required=True, help="run directory to write")
    s.add_argument("--data", default=None, help="DeepLabCut project folder, Lightning Pose "
                   "CSV, COCO JSON, SLEAP .slp / .pkg.slp or TFDS name (default: embedded "
                   "synthetic scenes)")
    s.add_argument("--format", choices=["dlc", "lightning-pose", "coco", "tfds", "sleap"],
                   default=None)
    s.add_argument("--individual", default=None, metavar="largest|first|TRACK",
                   help="SLEAP and COCO files with several animals in a frame: keep the "
                        "largest, the first, or (SLEAP) the one on track TRACK (default: "
                        "SLEAP tracks become keypoints <track>/<node>; otherwise such "
                        "frames are refused)")
    s.add_argument("--video-root", default=None, metavar="DIR",
                   help="SLEAP files: a folder where videos that moved are found by file "
                        "name")
    s.add_argument("--image-size", type=int, default=None,
                   help="training resolution (letterboxed square); must divide by 2**stages "
                        "(default with --data: the longest frame side, at most 256, rounded "
                        "up to a multiple of 2**stages; printed)")
    s.add_argument("--output-stride", type=int, default=None,
                   help="heatmap resolution = image / stride, a power of two (default: "
                        "chosen from the closest labeled keypoints; printed)")
    s.add_argument("--aum-radius", type=float, default=None,
                   help="AUM margin competitor radius, heatmap pixels (default: chosen from "
                        "the closest labeled keypoints; printed)")
    s.add_argument("--threshold-kinds", choices=["realistic", "far"], default="realistic",
                   help="AUM threshold samples: swapped pairs, labels on another keypoint "
                        "and displacements inside the image (realistic), or labels moved far "
                        "away (far)")
    s.add_argument("--threshold-fraction", type=float, default=None,
                   help="share of training frames given one threshold sample (default 0.1 "
                        "with realistic kinds, 0.05 with far)")
    s.add_argument("--smoke", action="store_true", help="a tiny run (seconds) to check a setup")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    s.add_argument("--overwrite", action="store_true",
                   help="--out holds a run of this tool: move it aside (renamed to "
                        "OUT.old-<time>) and start a new one; a folder of other files is "
                        "never touched")
    s.add_argument("--plan", choices=["nested", "random", "bootstrap", "kfold", "loo",
                                      "banzhaf"], default="nested")
    s.add_argument("--fractions", type=_floats, default=None, help="e.g. 0.1,0.3,0.5,0.7,0.9")
    s.add_argument("--seeds", type=int, default=None, help="nested plan: seeds per fraction")
    s.add_argument("--members", type=int, default=None,
                   help="random/bootstrap/banzhaf/kfold members")
    s.add_argument("--validation-members", type=int, default=None, metavar="V",
                   help="V extra members on fresh subsets of the same plan, held out from "
                        "every estimator; `analyze` scores each estimator's LDS on them")
    s.add_argument("--crn", action="store_true",
                   help="common random numbers: every member starts from the same weights and "
                        "draws its minibatches coherently from its own subset, so members "
                        "differ by their subsets only (sharper influence/LDS; not with "
                        "--plan bootstrap); see README")
    s.add_argument("--fraction", type=float, default=None, help="random plan: subset fraction")
    s.add_argument("--allow-duplicates", action="store_true", default=None,
                   help="random plan: members may draw the same subset (needed when asking "
                        "for more members than there are distinct subsets)")
    s.add_argument("--frames", type=int, default=None, help="synthetic frames (train + test)")
    s.add_argument("--noise-rate", type=float, default=None, help="synthetic planted label noise")
    s.add_argument("--test-fraction", type=float, default=None)
    s.add_argument("--steps", type=int, default=None,
                   help="steps per member (default 400; with --data, 400 or 120 passes over "
                        "a member's frames at the batch size, the larger; printed)")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--lr", type=float, default=None)
    s.add_argument("--widths", type=_ints, default=None, help="encoder widths, e.g. 16,32,64")
    s.add_argument("--strategy", choices=STRATEGIES, default=None)
    s.add_argument("--chunk-size", type=int, default=None)
    s.add_argument("--checkpoint-every", type=int, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--deterministic", action="store_true",
                   help="bit-identical results run to run on GPUs too (XLA deterministic "
                        "ops, full float32 matmuls, order-free AUM sums; slower); see README")
    acc = s.add_argument_group("accuracy on real projects (augmentation, encoder, schedule)")
    acc.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                     help="augment training frames on device (default: off, the label "
                          "check's setting; on when --flip-pairs is given; for accuracy "
                          "use it with --epochs 200, README)")
    acc.add_argument("--flip-pairs", default=None, metavar="L:R,...",
                     help="horizontal flips exchanging these left/right bodyparts, e.g. "
                          "leftear:rightear (default: no flips)")
    acc.add_argument("--aum-view", choices=["augmented", "clean"], default=None,
                     help="AUM margins on the augmented batch (default: free, and it "
                          "checked labels better) or on the clean frames (one extra forward "
                          "pass)")
    acc.add_argument("--model", choices=["small", "resnet"], default=None,
                     help="encoder: small (default, fast) or a ResNet-18/34")
    acc.add_argument("--resnet-depth", type=int, choices=[18, 34], default=None)
    acc.add_argument("--resnet-width", type=int, default=None,
                     help="ResNet base width (64 = torchvision's; needed for its weights)")
    acc.add_argument("--init-weights", default=None, metavar="PATH",
                     help="encoder weights: Flax .msgpack or torchvision ResNet .pt/.pth")
    acc.add_argument("--epochs", type=float, default=None,
                     help="steps = epochs x training frames / batch (instead of --steps; "
                          "DeepLabCut 3 trains 200)")
    acc.add_argument("--schedule", choices=["constant", "cosine", "warmup_cosine"], default=None,
                     help="learning-rate schedule (default cosine; warmup_cosine warms up "
                          "over the first 5%% of the steps)")
    g = s.add_argument_group("several devices and hosts (results equal a one-device run's)")
    g.add_argument("--devices", type=int, default=None, metavar="N",
                   help="devices per process to shard the members over (default: all)")
    g.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="on a CPU: JAX devices to make of its cores, each training its own "
                        "block of members (default: one per core, at most 8, or "
                        "ENSEMBLE_JAX_CPU_DEVICES; 1 = one device; ignored when XLA_FLAGS "
                        "or JAX_NUM_CPU_DEVICES sets a count)")
    g.add_argument("--members-per-wave", type=int, default=None, metavar="W",
                   help="train the members in waves of at most W (default: as many as fit "
                        "the memory budget)")
    g.add_argument("--memory-budget", type=_bytes, default=None, metavar="BYTES",
                   help="memory for the wave plan, e.g. 12G or 800M: per device on an "
                        "accelerator (default: its free memory x 0.8); on a CPU the whole "
                        "process's peak (default: what it holds + the host's available "
                        "memory x 0.8, cgroup limits included)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="multi-host: process 0's address (or JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, default=None,
                   help="multi-host: number of processes (or JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None,
                   help="multi-host: this process's index (or JAX_PROCESS_ID)")

    a = sub.add_parser("analyze", help="AUM, influence, MPE and spread of a run directory")
    a.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `sweep`")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.add_argument("--estimator", default="auto",
                   choices=["auto", "stratified", "difference_of_means", "banzhaf",
                            "data_oob", "ridge", "lasso"],
                   help="influence estimator (default auto: the one valid for the run's plan; "
                        "one that is not valid for the plan is refused)")
    a.add_argument("--mpe", choices=["softmax", "sum"], default="softmax",
                   help="multi-peak entropy: softmax over the peaks' logits (Liu & Ferrari, "
                        "default) or the older sum-normalised sigmoid peaks")

    pr = sub.add_parser("predict", help="every alive member and the ensemble on every frame "
                        "of videos or image folders: DeepLabCut-format CSVs (EKS-ready)")
    pr.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `sweep`")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", nargs="+", metavar="PATH", help="video files")
    src.add_argument("--images", nargs="+", metavar="DIR", help="folders of images")
    pr.add_argument("--out", required=True, help="output folder: <out>/<video name>/")
    pr.add_argument("--batch-size", type=int, default=32,
                    help="frames per batch (default 32; lowered to what the memory budget "
                         "holds, with a line saying so)")
    pr.add_argument("--memory-budget", type=_bytes, default=None, metavar="BYTES",
                    help="memory the batches may use, e.g. 4G (default: on a CPU the host's "
                         "available memory x 0.8, else the device's free memory x 0.8)")
    pr.add_argument("--allow-short-video", action="store_true",
                    help="predict a video that holds fewer frames than its container "
                         "declares (truncated): a warning recorded in predict.json instead "
                         "of an error")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")

    sg = sub.add_parser("suggest", help="pick video frames to label next and write them "
                        "into a DeepLabCut project (or a folder)")
    sg.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `sweep`")
    sg.add_argument("--video", nargs="+", required=True, metavar="PATH")
    sg.add_argument("--budget", type=int, required=True, metavar="N",
                    help="frames to suggest, over all videos")
    sg.add_argument("--by", default="mpe", help="mpe | spread | representativeness | "
                    "cluster | uniform (default mpe)")
    dst = sg.add_mutually_exclusive_group(required=True)
    dst.add_argument("--project", metavar="DLC_PROJECT",
                     help="write PNGs into DLC_PROJECT/labeled-data/<video name>/")
    dst.add_argument("--out", metavar="DIR", help="write PNGs into DIR/<video name>/")
    sg.add_argument("--min-gap", type=int, default=10, metavar="FRAMES",
                    help="leave out frames this close to frames already extracted or "
                         "labeled, and keep picks this far apart (default 10)")
    sg.add_argument("--predictions", default=None, metavar="DIR",
                    help="where the video predictions are kept (default "
                         "RUN_DIR/video-predictions; reused and resumed)")
    sg.add_argument("--batch-size", type=int, default=32)
    sg.add_argument("--allow-short-video", action="store_true",
                    help="as for predict: use the frames a truncated video holds")
    sg.add_argument("--seed", type=int, default=0, help="k-means start (--by cluster)")
    sg.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser("report", help="write RUN_DIR/report.html: of a sweep + analyze run "
                       "directory, or assembled from the studies' sections")
    r.add_argument("run_dir", metavar="RUN_DIR",
                   help="run directory (sweep + analyze) or folder holding study sections")
    r.add_argument("--title", default=None)
    return p


def sweep_configs(args: argparse.Namespace):
    """(SweepConfig, ModelConfig, TrainConfig, ExecConfig) of the sweep's arguments."""
    from ensemble_jax.presets import execution, preset
    name = "smoke" if args.smoke else "default"
    sweep, model, train = preset(name)
    def pick(**kw):
        return {k: v for k, v in kw.items() if v is not None}
    sweep = dataclasses.replace(sweep, **pick(
        data=args.data, format=args.format, image_size=args.image_size, plan=args.plan,
        individual=getattr(args, "individual", None),
        video_root=getattr(args, "video_root", None),
        fractions=args.fractions, n_seeds=args.seeds, n_members=args.members,
        fraction=args.fraction, synthetic_frames=args.frames, noise_rate=args.noise_rate,
        test_fraction=args.test_fraction, seed=args.seed,
        allow_duplicates=getattr(args, "allow_duplicates", None),
        validation_members=getattr(args, "validation_members", None)))
    # Data-driven defaults (data/auto_size.py), recorded in config.json under "auto".
    sweep = dataclasses.replace(
        sweep, image_size=sweep.image_size or ("auto" if sweep.data is not None else None),
        output_stride=args.output_stride if args.output_stride is not None else "auto",
        aum_radius=args.aum_radius if args.aum_radius is not None else "auto",
        threshold_kinds=args.threshold_kinds,
        threshold_fraction=args.threshold_fraction if args.threshold_fraction is not None
        else (0.1 if args.threshold_kinds == "realistic" else sweep.threshold_fraction))
    model = dataclasses.replace(model, **pick(
        widths=args.widths, encoder=getattr(args, "model", None),
        resnet_depth=getattr(args, "resnet_depth", None),
        resnet_width=getattr(args, "resnet_width", None),
        init_weights=getattr(args, "init_weights", None)))
    train = _accuracy_options(args, train)
    train = dataclasses.replace(train, **pick(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        deterministic=True if getattr(args, "deterministic", False) else None))
    run = dataclasses.replace(execution(name), **pick(
        strategy=args.strategy, chunk_size=args.chunk_size,
        checkpoint_every=args.checkpoint_every))
    if getattr(args, "crn", False):      # training/crn.py; recorded in config.json's train
        if sweep.plan == "bootstrap":
            raise ValueError("--crn: the coherent sampler cannot weight bootstrap counts; "
                             "use --plan random, banzhaf or nested")
        train = dataclasses.replace(train, crn=True)
    return sweep, model, train, run


def _accuracy_options(args: argparse.Namespace, train):
    """Augmentation, schedule and epochs, as given. Augmentation is opt-in (`--augment`, or
    implied by `--flip-pairs`) because the defaults are the label check's settings: on
    openfield at the defaults it lowered the label check's precision on all three seeds
    (1.00/0.89/0.90 -> 0.67/0.73/0.71 with AUM on the augmented view, below the 0.8 goal;
    benchmarks/RESULTS.md), while for accuracy at 200 epochs it helps (README). `--epochs`
    sets the step count from the training frames; without it or `--steps`, a `--data` run
    trains 400 steps or 120 passes over a member's frames, the larger (training/real_data.py)."""
    from ensemble_jax.training.augment import AugmentConfig, parse_flip_pairs
    augment = getattr(args, "augment", None)
    flips = getattr(args, "flip_pairs", None)
    aug = AugmentConfig(enabled=bool(flips) if augment is None else augment)
    if flips:
        aug = dataclasses.replace(aug, flip_pairs=parse_flip_pairs(flips))
    if getattr(args, "aum_view", None):
        aug = dataclasses.replace(aug, aum_view=args.aum_view)
    epochs = getattr(args, "epochs", None)
    if epochs is not None and args.steps is not None:
        raise ValueError("--epochs and --steps both set the step count; give one of them")
    kw = {"augment": aug, "epochs": epochs}
    if getattr(args, "data", None) and epochs is None and args.steps is None \
            and not getattr(args, "smoke", False):
        # a real project without a step count: 400 steps, or more passes for larger
        # members (training/real_data.py: 400 steps on the projects it was validated on)
        from ensemble_jax.training.real_data import MEMBER_EPOCHS
        kw["member_epochs"] = MEMBER_EPOCHS
    if getattr(args, "schedule", None):
        kw["schedule"] = args.schedule
    return dataclasses.replace(train, **kw)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sweep":
        if args.deterministic:   # XLA reads its flags when the backend starts
            from ensemble_jax.training import determinism
            late = determinism.request_xla_flags()
            if late:
                print(f"ensemble-jax sweep: warning: {late}", file=sys.stderr)
            determinism.set_highest_precision()
        try:   # before any JAX computation (cpu_cores.py says why)
            from ensemble_jax.training.cpu_cores import use_cpu_cores
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else (os.cpu_count() or 1)
            if args.cpu_devices is not None and args.cpu_devices > cores:
                raise ValueError(f"--cpu-devices {args.cpu_devices}: this process may run on "
                                 f"{cores} core(s); more CPU devices than cores only train "
                                 f"padded copies; use at most {cores}")
            use_cpu_cores(args.cpu_devices)
        except ValueError as e:
            print(f"ensemble-jax sweep: error: {e}", file=sys.stderr)
            return 2
    _enable_compile_cache()
    from ensemble_jax import logs
    logs.configure()      # every message to stderr, once (process 0)
    log = logs.info
    try:
        if args.command == "sweep":
            from ensemble_jax.training.sharding import initialize_distributed
            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
            from ensemble_jax.sweep import run_sweep
            run_sweep(args.out, *sweep_configs(args), resume=args.resume,
                      overwrite=args.overwrite,
                      progress=not args.quiet, devices=args.devices,
                      members_per_wave=args.members_per_wave,
                      memory_budget=args.memory_budget)
            log(f"wrote {Path(args.out).resolve()}")
        elif args.command == "analyze":
            from ensemble_jax.analysis.analyze import analyze, describe
            result = analyze(args.run_dir, progress=not args.quiet,
                             estimator=args.estimator, mpe=args.mpe)
            print(describe(result), flush=True)
            log(f"wrote {', '.join(result['files'])} in {Path(args.run_dir).resolve()}")
        elif args.command == "predict":
            from ensemble_jax.video.predict import predict_sources
            infos = predict_sources(args.run_dir, args.out, videos=args.video or (),
                                    images=args.images or (), batch_size=args.batch_size,
                                    progress=not args.quiet,
                                    allow_short=args.allow_short_video,
                                    memory_budget=args.memory_budget)
            for info in infos:
                print(f"{info['source']['path']}: {info['frames']} frames, "
                      f"{len(info['members'])} members -> "
                      f"{info['out_dir']}", flush=True)
        elif args.command == "suggest":
            from ensemble_jax.video.suggest import suggest_frames
            rows = suggest_frames(args.run_dir, args.video, budget=args.budget, by=args.by,
                                  project=args.project, out=args.out,
                                  predictions=args.predictions, min_gap=args.min_gap,
                                  batch_size=args.batch_size, seed=args.seed,
                                  progress=not args.quiet,
                                  allow_short=args.allow_short_video)
            for r in rows:
                print(f"{r['image']}: frame {r['frame']}, score {r['score']:.4g} "
                      f"({r['reason']})", flush=True)
        elif args.command == "report":
            from ensemble_jax.analysis.report import build_report
            print(build_report(args.run_dir, title=args.title), flush=True)
        return 0
    except (ValueError, OSError, TypeError) as e:
        print(f"ensemble-jax {args.command}: error: {flag_words(str(e))}", file=sys.stderr,
              flush=True)
        return 2
    except Exception as e:   # out of memory (host or device): one line, not a traceback
        from ensemble_jax.training import errors
        if not errors.is_resource_error(e):
            raise
        print(f"ensemble-jax {args.command}: error: out of memory: {errors.one_line(e)}; "
              f"lower --memory-budget (or --batch-size), or free memory", file=sys.stderr,
              flush=True)
        return 2


# Python argument names in messages -> the flags a command-line user typed.
_FLAGS = {"n_members": "--members", "n_seeds": "--seeds", "fractions": "--fractions",
          "fraction": "--fraction", "allow_duplicates": "--allow-duplicates",
          "image_size": "--image-size", "test_fraction": "--test-fraction",
          "synthetic_frames": "--frames", "noise_rate": "--noise-rate", "steps": "--steps",
          "batch_size": "--batch-size", "learning_rate": "--lr", "widths": "--widths",
          "strategy": "--strategy", "chunk_size": "--chunk-size", "seed": "--seed",
          "checkpoint_every": "--checkpoint-every", "plan": "--plan",
          "output_stride": "--output-stride", "aum_radius": "--aum-radius",
          "threshold_fraction": "--threshold-fraction", "epochs": "--epochs",
          "validation_members": "--validation-members", "resnet_width": "--resnet-width",
          "resnet_depth": "--resnet-depth", "schedule": "--schedule", "crn": "--crn",
          "resume": "--resume", "overwrite": "--overwrite", "individual": "--individual",
          "video_root": "--video-root"}
_NAMES = "|".join(sorted(_FLAGS, key=len, reverse=True))
_CONFIG = r"(?:SweepConfig|TrainConfig|ExecConfig|ModelConfig)\."
_API_WORD = re.compile(r"\b(?:%s)?(%s)=(\S*)" % (_CONFIG, _NAMES))
_CONFIG_FIELD = re.compile(r"\b%s(%s)\b" % (_CONFIG, _NAMES))   # `ModelConfig.widths must`
_SWITCHES = ("allow_duplicates", "resume", "overwrite", "crn")          # flags without a value


def flag_words(message: str) -> str:
    """`allow_duplicates=True` -> `--allow-duplicates`, `SweepConfig.n_members=0` ->
    `--members 0`, `image_size=(H, W)` -> `--image-size N`, `ModelConfig.widths must` ->
    `--widths must`, `--resume (resume=True)` -> `--resume`: the words of the command
    line."""
    def sub(m: re.Match) -> str:
        flag, value = _FLAGS[m.group(1)], m.group(2)
        if value.rstrip(",;:") == "True" or m.group(1) in _SWITCHES:
            return flag + value[len(value.rstrip(",;:)")):] if value else flag
        return f"{flag} {value}" if value else flag
    for api, flag in (("image_size=(H, W) (or an int)", "--image-size N"),
                      ("image_size=(H, W)", "--image-size N"),
                      ("lower n_members", "lower --members"),
                      ("--resume / resume=True", "--resume"),
                      ("--resume (resume=True)", "--resume")):
        message = message.replace(api, flag)
    message = _API_WORD.sub(sub, message)
    message = _CONFIG_FIELD.sub(lambda m: _FLAGS[m.group(1)], message)
    return message.replace(" (sweep: --allow-duplicates)", "")


if __name__ == "__main__":
    sys.exit(main())
