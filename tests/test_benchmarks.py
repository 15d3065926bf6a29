"""benchmarks/train_throughput.py runs end to end and writes what RESULTS.md quotes."""
import math

import pytest

from ensemble_jax.training import strategies


@pytest.mark.slow
def test_train_throughput_quick(run_benchmark):
    data = run_benchmark("train_throughput.py", "--quick", "--steps", "1", "--rounds", "2")
    rows = {r["members"]: r for r in data["rows"]}
    assert set(rows) == {1, 4}
    four = rows[4]
    for col in ("sequential", "unrolled/g4", "vmap", "vmap_matmul"):
        assert len(four[col]["step_s_rounds"]) == 2 and four[col]["images_per_s"] > 0, col
    # 'auto' is the trainer's own probe choice, and its figure is that strategy's row.
    candidates = set(strategies.candidates(data["backend"], 4))
    assert four["auto"]["chosen"] in candidates
    assert set(four["auto"]["probe"]) == candidates
    assert math.isclose(four["auto_vs_sequential"] * four["sequential"]["images_per_s"],
                        four["auto"]["images_per_s"], rel_tol=1e-9)
    assert four["best_vs_sequential"] >= four["auto_vs_sequential"] - 1e-9
    if data["backend"] == "cpu":
        assert data["headroom"]["one_core_images_per_s"] > 0
        assert data["headroom"]["bound_vs_sequential"] > 0


@pytest.mark.slow
def test_precision_quick(run_benchmark):
    rows = run_benchmark("precision.py", "--quick")["rows"]
    assert set(rows) == {"float32", "bfloat16", "float32 seed 1"}
    for r in rows.values():
        assert len(r["member_test_error_px"]) == 2 and r["ensemble_test_error_px"] > 0
        assert r["train_images_per_s"] > 0 and r["matmul_ceiling_flops"] > 0
    assert rows["float32"]["ensemble_error_vs_float32"] == 1.0
