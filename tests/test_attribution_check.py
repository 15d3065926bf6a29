"""benchmarks/attribution_check.py runs end to end (quick mode) and writes what
RESULTS.md quotes."""
import math

import pytest


@pytest.mark.slow
def test_attribution_check_quick(run_benchmark):
    data = run_benchmark("attribution_check.py", "--quick", "--steps", "10")
    assert data["members"] == [8, 16] and data["validation"] == 6
    keys = {(r["members"], r["output"], r["estimator"]) for r in data["lds"]}
    assert len(keys) == 2 * 3 * 3
    for r in data["lds"]:
        assert math.isnan(r["lds"]) or -1.0 <= r["lds"] <= 1.0
    re = data["retrain"]
    assert set(re["arms"]) == {"harmful", "random", "low_aum"}
    for arm in re["arms"].values():
        assert len(arm["change_px_per_seed"]) == re["seeds"] == 2
    assert 0 <= re["harmful_beats_random_seeds"] <= 2
    assert data["design"] == "crn"                    # common random numbers by default
    assert len(re["harmful_minus_random"]["per_seed_px"]) == 2
