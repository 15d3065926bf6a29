"""Kill and resume: a smoke sweep (and its `analyze`) killed with SIGKILL at random moments
and resumed each time ends with the same files as an uninterrupted run, bitwise.

The commands run as separate processes, exactly as a user runs them. Kill moments are drawn
(seeded): while training is left, a random moment (0-1.5 s) after a randomly chosen later
checkpoint is committed, so kills land in training chunks and checkpoint writes whatever
the machine's speed; otherwise a random moment of the stage's measured duration (result
writing, `analyze`, start-up). The quick variant (3 kills) is in the default suite; the
20-kill one is marked slow.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ensemble_jax import io as eio

# A tiny smoke sweep: 2 members, 32 training frames of 32x32, 12 steps, a checkpoint every
# 2 steps (6 checkpoint writes to be killed in). A fixed strategy: 'auto' may pick another
# one between runs, and strategies agree only to float tolerance.
SWEEP = ["sweep", "--smoke", "--frames", "40", "--image-size", "32",
         "--checkpoint-every", "2", "--chunk-size", "2", "--strategy", "unrolled", "--quiet"]
# summary.json entries that measure time or the machine's memory (the budget read from the
# host's free memory, the peak RSS): they legitimately differ between runs
TIMING_KEYS = {"steps_per_s", "images_per_s", "train_s", "setup_s", "wall_s",
               "strategy_choice", "memory", "peak_rss_bytes"}


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env["JAX_PLATFORMS"] = "cpu"           # bitwise equality is promised on the CPU
    return env


def _start(args: list[str], log_path: Path) -> subprocess.Popen:
    f = open(log_path, "wb")
    p = subprocess.Popen([sys.executable, "-m", "ensemble_jax.cli", *args], stdout=f,
                         stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    f.close()
    return p


def _stage_args(stage: int, out: Path, resume: bool, steps: int) -> list[str]:
    if stage == 0:
        return (SWEEP + ["--steps", str(steps), "--out", str(out)]
                + (["--resume"] if resume else []))
    return ["analyze", str(out), "--quiet"]


def _run_to_end(args: list[str], log_path: Path, timeout: float = 900) -> float:
    t0 = time.perf_counter()
    p = _start(args, log_path)
    rc = p.wait(timeout=timeout)
    assert rc == 0, f"{args[0]} failed (rc {rc}):\n{log_path.read_text()[-3000:]}"
    return time.perf_counter() - t0


def _reference(root: Path, steps: int):
    """An uninterrupted sweep + analyze, and how long each stage took."""
    out = root / "run"
    t_sweep = _run_to_end(_stage_args(0, out, False, steps), root / "sweep.log")
    t_analyze = _run_to_end(_stage_args(1, out, False, steps), root / "analyze.log")
    print(f"uninterrupted: sweep {t_sweep:.1f} s, analyze {t_analyze:.1f} s")
    return out, (t_sweep, t_analyze), steps


def _kill_and_resume(out: Path, logs: Path, durations, targets: list[str],
                     rng: random.Random, steps: int) -> list[str]:
    """Kills one process per entry of `targets` ('sweep' or 'analyze') at a random moment
    of that stage and goes on: `sweep --resume` after every kill (a plain `sweep` the very
    first time), `analyze` again after an analyze kill (a sweep is first resumed to its end
    when an analyze kill comes up). Finally runs `sweep --resume` and `analyze` to the end.
    Returns what happened, one line per launch."""
    events: list[str] = []
    launches = 0
    state = {"started": False, "swept": False}
    durations = list(durations)

    def launch(stage: int) -> tuple[subprocess.Popen, Path, list[str]]:
        nonlocal launches
        launches += 1
        args = _stage_args(stage, out, resume=state["started"], steps=steps)
        state["started"] = True
        log_path = logs / f"launch{launches:02d}_{args[0]}.log"
        return _start(args, log_path), log_path, args

    kills = 0
    for target in targets:
        stage = 0 if target == "sweep" else 1
        if stage == 1 and not state["swept"]:
            p, log_path, args = launch(0)
            assert p.wait(timeout=900) == 0, log_path.read_text()[-3000:]
            state["swept"] = True
        while True:
            assert launches < 4 * len(targets) + 10, "the kills keep missing: " + str(events)
            done = _latest_step(out)
            t0 = time.perf_counter()
            if stage == 0 and done < steps - 1:
                # Training left: kill once a later checkpoint is committed, plus a moment
                # (lands in the next training chunk or checkpoint write), whatever the speed.
                target = min(steps - 1, done + rng.randint(1, 6))
                extra = rng.uniform(0.0, 1.5)
                p, log_path, args = launch(stage)
                rc = _wait_for_step(p, out, target, extra)
                what = f"at checkpoint >= {target} (+{extra:.1f} s)"
            else:
                # Over the stage's measured duration, start-up (imports) mostly skipped.
                delay = rng.uniform(0.35 if stage == 0 else 0.5, 1.0) * durations[stage]
                p, log_path, args = launch(stage)
                try:
                    rc = p.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    rc = None
                what = f"after {delay:.1f} s"
            if rc is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                kills += 1
                lines = log_path.read_text(errors="replace").strip().splitlines()
                events.append(f"kill {kills}: {args[0]} {what}, {time.perf_counter() - t0:.1f}"
                              f" s in (checkpoints then: {_latest_step(out)}; last output: "
                              f"{(lines or [''])[-1][:80]!r})")
                state["swept"] = False if stage == 0 else state["swept"]
                break
            assert rc == 0, f"{args[0]} failed (rc {rc}):\n{log_path.read_text()[-3000:]}"
            events.append(f"{args[0]} finished before its kill {what}; again")
            # The reference run may have paid for compiling; time this one instead.
            durations[stage] = time.perf_counter() - t0
            if stage == 0:
                state["swept"] = True
    for st in (0, 1):
        _run_to_end(_stage_args(st, out, resume=True, steps=steps), logs / f"final_{st}.log")
    return events


def _latest_step(out: Path) -> int:
    """The newest committed checkpoint step of a (one-wave) run directory, 0 if none."""
    d = out / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []
    return max(steps, default=0)


def _wait_for_step(p: subprocess.Popen, out: Path, target: int, extra: float) -> int | None:
    """Waits until checkpoint `target` (or later) exists, then `extra` seconds more; returns
    the exit status if the process ended first, else None (still running: kill it)."""
    while _latest_step(out) < target:
        if p.poll() is not None:
            return p.returncode
        time.sleep(0.02)
    try:
        return p.wait(timeout=extra)
    except subprocess.TimeoutExpired:
        return None


def _load_json(path: Path, drop: set[str]) -> dict:
    d = json.loads(path.read_text())
    return {k: v for k, v in d.items() if k not in drop}


def _assert_same_run(ref: Path, got: Path) -> None:
    ref_files = sorted(p.name for p in ref.iterdir() if p.is_file())
    got_files = sorted(p.name for p in got.iterdir() if p.is_file())
    assert got_files == ref_files, "the run directories hold different files"
    assert not [f for f in got_files if f.endswith(".tmp") or f.startswith(".lock")]
    for name in ref_files:
        a, b = ref / name, got / name
        if name.endswith(".npz"):
            za, zb = eio.load_npz(a), eio.load_npz(b)
            assert sorted(za) == sorted(zb), name
            for k in za:
                assert za[k].dtype == zb[k].dtype and za[k].shape == zb[k].shape, (name, k)
                assert za[k].tobytes() == zb[k].tobytes(), f"{name}[{k}] differs"
        elif name == "summary.json":
            assert _load_json(a, TIMING_KEYS) == _load_json(b, TIMING_KEYS), name
        elif name == "analysis.json":
            assert _load_json(a, {"wall_s", "run_dir"}) == _load_json(b, {"wall_s", "run_dir"})
        elif name == "ensemble-jax-run.json":   # the manifest: same data, same file table;
            ma, mb = json.loads(a.read_text()), json.loads(b.read_text())   # created differs
            assert ma["data"] == mb["data"] and sorted(ma["files"]) == sorted(mb["files"])
            for f in ma["files"]:
                if f != "summary.json":       # (holds timings)
                    assert ma["files"][f] == mb["files"][f], f"{name}: {f} differs"
        else:   # params.msgpack, config.json, subsets.npy, csv, png
            assert a.read_bytes() == b.read_bytes(), f"{name} differs"


def _check(reference, tmp_path, targets: list[str], seed: int) -> None:
    ref, durations, steps = reference
    out = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    t0 = time.perf_counter()
    events = _kill_and_resume(out, logs, durations, targets, random.Random(seed), steps)
    print("\n".join(events))
    print(f"{len(targets)} kills and resumes: {time.perf_counter() - t0:.1f} s")
    assert sum(e.startswith("kill") for e in events) == len(targets)
    _assert_same_run(ref, out)


def test_kill_and_resume_quick(tmp_path_factory, tmp_path):
    """3 kills: during training, during analyze, and during a resumed sweep (12 steps)."""
    reference = _reference(tmp_path_factory.mktemp("kill_ref"), steps=12)
    _check(reference, tmp_path, ["sweep", "analyze", "sweep"], seed=7)


@pytest.mark.slow
def test_kill_and_resume_20_times(tmp_path_factory, tmp_path):
    """20 kills over a 40-step sweep (20 checkpoint writes): the sweep kills come first and
    each lets training advance only a few checkpoints, so that most of them land in
    training and checkpoint writes; then sweep and analyze kills alternate at random."""
    reference = _reference(tmp_path_factory.mktemp("kill_ref"), steps=40)
    rng = random.Random(2024)
    targets = ["sweep"] * 10 + [rng.choice(["sweep", "analyze"]) for _ in range(10)]
    _check(reference, tmp_path, targets, seed=2024)
