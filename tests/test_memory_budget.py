"""Memory bounded on the CPU (issue 33, point 5): the host's memory is the device memory.

The budget reader on fake /proc/meminfo and cgroup files; a sweep whose budget holds two
members trains in waves and equals the one-wave run; `auto`'s probe skips candidates over
the budget; `predict`'s batch is capped (and says so) and writes the same CSVs; a budget
that cannot hold one member is one error line."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ensemble_jax import ExecConfig, ModelConfig, TrainConfig, cli
from ensemble_jax.sweep import SweepConfig, prepare, run_sweep
from ensemble_jax.training import waves

GIB = 2 ** 30
SMALL = ModelConfig(widths=(8, 16, 32), head_width=16)
TINY_TC = TrainConfig(steps=4, batch_size=4)
TINY_EC = ExecConfig(chunk_size=2, strategy="sequential")
TINY = SweepConfig(synthetic_frames=24, image_size=32, fractions=(0.25, 0.5, 0.75, 1.0),
                   n_seeds=1)
RSS = 200 * 2 ** 20        # what the process "holds" in the tests that fix it


# ------------------------------------------------------------------ the budget reader
def _meminfo(tmp_path: Path, avail_kib: int | None) -> Path:
    p = tmp_path / "meminfo"
    lines = ["MemTotal:       24000000 kB", "MemFree:         1000000 kB"]
    if avail_kib is not None:
        lines.append(f"MemAvailable:   {avail_kib} kB")
    p.write_text("\n".join(lines) + "\n")
    return p


def test_host_available_reads_meminfo_and_the_lower_cgroup_limit(tmp_path):
    mi = _meminfo(tmp_path, 8 * 2 ** 20)                       # 8 GiB available
    none = tmp_path / "no-cgroup"
    assert waves.host_available_bytes(mi, none) == (8 * GIB, "MemAvailable")
    # cgroup v2: a limit of 4 GiB with 1 GiB used leaves 3 GiB, lower than MemAvailable
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{4 * GIB}\n")
    (v2 / "memory.current").write_text(f"{GIB}\n")
    assert waves.host_available_bytes(mi, v2) == (3 * GIB, "cgroup memory.max - usage")
    (v2 / "memory.max").write_text("max\n")                    # no limit: MemAvailable
    assert waves.host_available_bytes(mi, v2) == (8 * GIB, "MemAvailable")
    # cgroup v1: limit_in_bytes and usage_in_bytes; the page-rounded 2**63 is no limit
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{2 * GIB}\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{GIB // 2}\n")
    assert waves.host_available_bytes(mi, v1) == (3 * GIB // 2,
                                                  "cgroup memory.limit_in_bytes - usage")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert waves.host_available_bytes(mi, v1) == (8 * GIB, "MemAvailable")
    # only the cgroup says something; nothing readable at all
    (v2 / "memory.max").write_text(f"{4 * GIB}\n")
    assert waves.host_available_bytes(_meminfo(tmp_path, None), v2)[0] == 3 * GIB
    assert waves.host_available_bytes(tmp_path / "nope", none) == (None, "unknown")


def test_cpu_budget_is_what_the_process_holds_plus_the_available_memory(tmp_path,
                                                                        monkeypatch):
    mi = _meminfo(tmp_path, 10 * 2 ** 20)
    monkeypatch.setattr(waves, "rss_bytes", lambda: RSS)
    budget, source = waves.host_memory_budget(mi, tmp_path / "none")
    assert budget == RSS + int(10 * GIB * waves.SAFETY)
    assert "MemAvailable" in source and "200.0 MiB" in source
    # a CPU without --memory-budget plans with it (it used to get one wave, no budget)
    budget, source, warning = waves.default_memory_budget()
    assert budget and budget > RSS and "host memory" in source and warning is None


def test_peak_rss_is_measured():
    peak = waves.peak_rss_bytes()
    assert 10 * 2 ** 20 < peak < 64 * GIB and waves.rss_bytes() <= peak * 1.01


# ---------------------------------------------------------------------------- waves
def _plan_facts(monkeypatch):
    """(per-member bytes, bytes held before training) of TINY, with the process's resident
    set fixed at RSS so the plan does not depend on what this pytest process holds."""
    monkeypatch.setattr(waves, "rss_bytes", lambda: RSS)
    prep = prepare(TINY, SMALL, TINY_TC, TINY_EC, scale={"memory_budget": 64 * GIB})
    plan = prep.plan
    assert plan.host and len(plan.waves) == 1 and plan.cost is not None
    assert plan.fixed_bytes > RSS and plan.per_member_bytes > 2 * plan.cost.state_bytes
    return plan.per_member_bytes, plan.fixed_bytes, prep.masks.shape[0]


def test_a_small_budget_trains_in_waves_equal_to_one_wave(tmp_path, monkeypatch):
    per_member, fixed, m = _plan_facts(monkeypatch)
    assert m == 4
    lines: list[str] = []
    one = run_sweep(tmp_path / "one", TINY, SMALL, TINY_TC, TINY_EC, progress=False,
                    memory_budget=64 * GIB, log=lines.append)
    assert one["scale_out"]["waves"] == [[0, 4]]
    budget = fixed + 2 * per_member + per_member // 2          # two members per wave
    lines.clear()
    two = run_sweep(tmp_path / "two", TINY, SMALL, TINY_TC, TINY_EC, progress=False,
                    memory_budget=budget, log=lines.append)
    assert two["scale_out"]["waves"] == [[0, 2], [2, 4]]
    text = "\n".join(lines)
    assert "wave plan: 4 members in 2 waves of at most 2" in text
    assert "for this process (--memory-budget)" in text and "per member" in text
    assert "memory: peak resident" in text
    a, b = (np.load(tmp_path / r / "training.npz") for r in ("one", "two"))
    for key in ("losses", "aum_sum", "aum_count", "alive"):
        np.testing.assert_array_equal(a[key], b[key])
    assert (tmp_path / "one" / "params.msgpack").read_bytes() == \
        (tmp_path / "two" / "params.msgpack").read_bytes()
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["peak_rss_bytes"] == summary["memory"]["peak_rss_bytes"] > 0
    assert summary["memory"]["budget_bytes"] == budget
    assert summary["memory"]["budget_for"] == "process"
    assert summary["ensemble_test"] == one["ensemble_test"]


def test_probe_skips_candidates_whose_estimated_peak_is_over_the_budget(monkeypatch,
                                                                         tmp_path):
    from ensemble_jax import EnsembleTrainer, synthetic_dataset
    from ensemble_jax.subsets import random_subsets
    monkeypatch.setenv("ENSEMBLE_JAX_CACHE", str(tmp_path / "cache"))
    d = synthetic_dataset(16, image_size=32, seed=0)
    masks = random_subsets(d.n_frames, 4, 0.5, seed=0)
    mc = ModelConfig(widths=(8, 16), head_width=8)
    cost = waves.member_cost(mc, TINY_TC, d)
    assert cost.measured and cost.temp_bytes["vmap_matmul"] > cost.temp_bytes["vmap"]
    fixed = 10 ** 6
    # room for every member's state and temporaries, not for a vmapped step's: the
    # vmapped candidates are skipped
    budget = fixed + 4 * 2 * cost.state_bytes + cost.temp_bytes["sequential"] * 4 * 1.5
    plan = waves.plan_waves(4, memory_budget=int(budget),
                            per_member_bytes=cost.per_member(host=True),
                            fixed_bytes=fixed, host=True, cost=cost,
                            budget_source="--memory-budget")
    assert plan.waves == ((0, 4),)
    for name in ("sequential", "unrolled"):
        assert plan.over_budget(name, 4, 4) is None
    for name in ("vmap", "vmap_matmul"):
        assert "over the memory budget" in plan.over_budget(name, 4, 4)
    lines: list[str] = []
    tc = dataclasses.replace(TINY_TC, steps=2)
    res = waves.fit_waves(EnsembleTrainer(mc, tc, ExecConfig(chunk_size=2)), d, masks,
                          plan, progress=False, log=lines.append)
    assert res.strategy in ("sequential", "unrolled")
    skipped = [ln for ln in lines if "skipped, estimated peak" in ln]
    assert len(skipped) == 2 and "vmap" in skipped[0] and "vmap_matmul" in skipped[1], lines
    assert any(ln.startswith("memory: estimated peak of each candidate for these 4 members")
               for ln in lines), lines


def test_a_budget_that_cannot_hold_one_member_is_one_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="cannot hold one member") as e:
        waves.plan_waves(4, memory_budget=100, per_member_bytes=60, fixed_bytes=50,
                         host=True)
    assert "for this process" in str(e.value) and "\n" not in str(e.value)
    out = tmp_path / "run"
    assert cli.main(["sweep", "--out", str(out), "--smoke", "--quiet",
                     "--memory-budget", "20M"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ensemble-jax sweep: error: ")
    assert "more than --memory-budget" in err[-1] and "this process holds" in err[-1]
    assert not any("Traceback" in ln for ln in err)
    assert not out.exists()


# -------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def run_and_video(tmp_path_factory):
    import jax
    from ensemble_jax import rundir
    from ensemble_jax.data.synthetic import synthetic_dataset
    from ensemble_jax.models.heatmap_net import HeatmapNet
    from ensemble_jax.video import reader
    out = tmp_path_factory.mktemp("run")
    data = synthetic_dataset(12, image_size=32, seed=1)
    train, test = data.split(0.25, seed=0)
    mc = dataclasses.replace(ModelConfig(), widths=(8, 16), head_width=8)
    params = jax.vmap(lambda k: HeatmapNet(mc, data.n_keypoints).init(k, train.images[:1]))(
        jax.random.split(jax.random.key(3), 2))
    run = rundir.write_untrained(out, train, test, mc, TrainConfig(steps=1), params,
                                 alive=np.array([True, True]), strategy="vmap")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(23)]
    video = reader.write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames)
    return run, video


def _same_outputs(a: Path, b: Path) -> None:
    """The member and ensemble CSVs byte for byte; uncertainty.csv to 1e-4 (its multi-peak
    entropy, a sum over the heatmap, moves in the 6th digit with the batch's shape)."""
    import pandas as pd
    csvs = lambda f: {str(p.relative_to(f)): p.read_bytes() for p in sorted(f.rglob("*.csv"))
                      if p.name != "uncertainty.csv"}
    assert csvs(a) == csvs(b) and len(csvs(a)) == 4   # 2 members, the ensemble, frames.csv
    ua, ub = (pd.read_csv(f / "uncertainty.csv") for f in (a, b))
    assert list(ua.columns) == list(ub.columns)
    np.testing.assert_allclose(ua.to_numpy(float), ub.to_numpy(float), rtol=1e-4, atol=1e-6)


def test_predict_caps_a_huge_batch_and_writes_the_same_csvs(run_and_video, tmp_path,
                                                           monkeypatch):
    from ensemble_jax.video.predict import predict_sources
    run, video = run_and_video
    small = predict_sources(run, tmp_path / "small", videos=[video], batch_size=4,
                            progress=False, log=lambda m: None)[0]
    assert small["batch_size"] == 4 and small["peak_rss_bytes"] > 0
    lines: list[str] = []
    huge = predict_sources(run, tmp_path / "huge", videos=[video], batch_size=100_000_000,
                           progress=False, log=lines.append)[0]
    assert huge["batch_size"] == 23                       # the video's frames
    assert any("--batch-size 100000000 lowered to 23" in ln for ln in lines), lines
    _same_outputs(tmp_path / "small" / "clip", tmp_path / "huge" / "clip")
    # a budget that holds a few frames beside what the process holds: capped by memory
    from ensemble_jax.video import predict as pred_mod
    monkeypatch.setattr(waves, "rss_bytes", lambda: RSS)
    lines.clear()
    from ensemble_jax import logs
    with logs.to(lines.append):
        capped = pred_mod.capped_batch_size(load(run), np.array([0, 1]), 100_000_000, 23,
                                            RSS + 300_000, "clip")
    assert 1 <= capped < 23
    assert f"lowered to {capped} frames" in lines[0] and "MiB per frame" in lines[0]
    lines.clear()
    got = predict_sources(run, tmp_path / "mem", videos=[video], batch_size=100_000_000,
                          progress=False, log=lines.append,
                          memory_budget=RSS + 300_000)[0]
    assert got["batch_size"] == capped
    _same_outputs(tmp_path / "small" / "clip", tmp_path / "mem" / "clip")


def load(run):
    from ensemble_jax.video.predict import load_run
    return load_run(run)


def test_predict_budget_below_one_frame_is_one_line(run_and_video, tmp_path, capsys):
    run, video = run_and_video
    assert cli.main(["predict", str(run), "--video", str(video), "--out",
                     str(tmp_path / "p"), "--quiet", "--memory-budget", "1k"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ensemble-jax predict: error: predict: the "
                                               "memory budget (--memory-budget)"), err
