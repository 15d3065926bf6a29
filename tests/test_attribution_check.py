"""benchmarks/attribution_check.py runs end to end (quick mode) and writes what
RESULTS.md quotes."""
import math

import pytest


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_attribution_check_quick(run_benchmark):
    data = run_benchmark("attribution_check.py", "--quick", "--steps", "10")
    assert data["members"] == [8, 16] and data["validation"] == 6
    keys = {(r["members"], r["output"], r["estimator"]) for r in data["lds"]}
    assert len(keys) == 2 * 3 * 3
    # (was: -1 <= lds <= 1, which a mean of Spearman correlations always is) every member
    # count gets a finite LDS from some estimator; an interval, where there is one, is ordered
    for m in (8, 16):
        rows = [r for r in data["lds"] if r["members"] == m and _finite(r["lds"])]
        assert rows
        assert all(r["ci95"][0] <= r["ci95"][1] for r in rows if _finite(r["ci95"][0])
                   and _finite(r["ci95"][1]))
    re = data["retrain"]
    assert set(re["arms"]) == {"harmful", "random", "low_aum"}
    for arm in re["arms"].values():
        assert len(arm["change_px_per_seed"]) == re["seeds"] == 2
    per_seed = re["harmful_minus_random"]["per_seed_px"]
    assert re["harmful_beats_random_seeds"] == sum(d < 0 for d in per_seed)
    assert data["design"] == "crn"                    # common random numbers by default
    assert len(re["harmful_minus_random"]["per_seed_px"]) == 2
