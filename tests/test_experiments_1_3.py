"""Seed studies 1-3 (`experiments/`) in --quick mode on one shared output folder: the
sweep is trained once and reused; every study writes finite numbers of the right shape,
its CSVs and figures, and the assembled report.html embeds every figure as a PNG."""
from __future__ import annotations

import base64
import csv
import importlib.util
import json
import math
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STUDIES = {
    "study1_more_data": ["numbers.json", "errors.csv", "rises.csv", "added_frames.csv",
                         "learning_curves.png", "section.json"],
    "study2_correlated_errors": ["numbers.json", "frame_errors.csv", "correlation.csv",
                                 "pca.csv", "pca.png", "correlation.png", "traces.png",
                                 "section.json"],
    "study3_influence": ["numbers.json", "train_frames.csv", "top_pairs.csv",
                         "influence_matrices.png", "long_tail.png", "strong_pair.png",
                         "section.json"],
}


def _load(name: str):
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    argv = ["--out", str(out), "--quick", "--quiet"]
    numbers, sweep_mtimes = {}, []
    for name in STUDIES:
        numbers[name] = _load(name).main(argv)
        sweep_mtimes.append((out / "sweep" / "summary.json").stat().st_mtime_ns)
    return out, numbers, sweep_mtimes


def _finite(x) -> bool:
    a = np.asarray(x, dtype=float)
    return a.size > 0 and bool(np.isfinite(a).all())


def test_one_sweep_is_shared(studies):
    out, _, mtimes = studies
    assert len(set(mtimes)) == 1, "studies 2 and 3 retrained the sweep instead of reusing it"
    cfg = json.loads((out / "sweep" / "config.json").read_text())
    assert cfg["sweep"]["plan"] == "nested"


def test_outputs_exist(studies):
    out = studies[0]
    for name, files in STUDIES.items():
        for f in files:
            p = out / name / f
            assert p.is_file() and p.stat().st_size > 0, p
        for csv_path in (out / name).glob("*.csv"):
            rows = list(csv.reader(csv_path.open()))
            assert len(rows) >= 2, f"{csv_path} has no data rows"
            assert all(len(r) == len(rows[0]) for r in rows), csv_path
        # numbers.json is what the study returned, JSON-clean
        json.loads((out / name / "numbers.json").read_text())


def test_study1_numbers(studies):
    out, numbers, _ = studies
    n1 = json.loads((out / "study1_more_data" / "numbers.json").read_text())
    fr, seeds = n1["fractions"], n1["seeds"]
    assert len(fr) >= 2 and len(seeds) >= 2
    assert len(n1["member_test_error_px"]) == len(fr) * len(seeds)
    assert _finite(list(n1["member_test_error_px"].values()))
    assert len(n1["ensemble_test_error_px"]) == len(fr)
    assert _finite(list(n1["ensemble_test_error_px"].values()))
    assert len(n1["influence_on_mean_test_error_px"]) == n1["n_train"]
    steps = n1["steps"]
    assert len(steps) == (len(fr) - 1) * (len(seeds) + 1)     # per seed + the ensemble
    for s in steps:
        assert math.isfinite(s["change_px"])
        assert s["rise"] == (s["change_px"] > 0)
        assert s["n_added"] == len(s["added_frames_by_influence"])
        if s["seed"] is not None:
            assert s["n_added"] > 0                          # nested: frames are added
    if any(s["rise"] for s in steps):
        assert (out / "study1_more_data" / "rise_frames.png").is_file()


def test_study2_numbers(studies):
    out = studies[0]
    n2 = json.loads((out / "study2_correlated_errors" / "numbers.json").read_text())
    m = len(n2["members"])
    c = np.asarray(n2["correlation_matrix"], float)
    assert c.shape == (m, m) and _finite(c)
    np.testing.assert_allclose(c, c.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(c), 1.0, atol=1e-6)
    ratio = np.asarray(n2["pca_explained_variance_ratio"], float)
    assert 1 <= ratio.size <= m - 1 and _finite(ratio)
    assert np.all(np.diff(ratio) <= 1e-9) and abs(ratio.sum() - 1) < 1e-6
    assert 0 < n2["pca_first_two"] <= 1 + 1e-9
    e = np.asarray(n2["member_errors"], float)
    assert e.shape == (m, n2["n_test_frames_used"]) and _finite(e) and (e >= 0).all()


def test_study3_numbers(studies):
    out = studies[0]
    n3 = json.loads((out / "study3_influence" / "numbers.json").read_text())
    n, t = n3["n_train"], n3["n_test"]
    assert n3["effect_shape"] == [n, t]
    z = np.load(out / "sweep" / "influence.npz")
    for m in ("pixel_error", "gt_confidence", "gt_probability"):
        assert z[f"{m}_effect"].shape == (n, t)
        assert np.isfinite(z[f"{m}_effect"]).any()
        tail = n3["tail"][m]
        assert _finite([tail["median_abs"], tail["p99_abs"], tail["max_abs"]])
        assert len(n3["help"][m]) == n
    assert len(n3["harm_px"]) == n
    pair = n3["strong_pair"]
    assert _finite([pair["effect_px"], pair["z"], pair["mean_error_with_px"],
                    pair["mean_error_without_px"]])
    assert pair["n_with"] >= 1 and pair["n_without"] >= 1
    assert abs(pair["effect_px"] - float(z["pixel_error_effect"][pair["train_index"],
                                                                 pair["test_index"]])) < 1e-5
    if str(z["estimator"]) != "stratified":   # nested plans compare within fractions
        assert abs(pair["effect_px"] - (pair["mean_error_with_px"]
                                       - pair["mean_error_without_px"])) < 1e-3


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))


def test_report_embeds_every_figure(studies):
    out = studies[0]
    html = (out / "report.html").read_text()
    parser = _Imgs()
    parser.feed(html)
    n_figs = sum(len(json.loads((out / name / "section.json").read_text())["figures"])
                 for name in STUDIES)
    assert len(parser.srcs) >= n_figs >= 7
    prefix = "data:image/png;base64,"
    for src in parser.srcs:
        assert src.startswith(prefix), src[:40]
        data = base64.b64decode(src[len(prefix):], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    for title in ("Study 1", "Study 2", "Study 3"):
        assert title in html
    assert "<img" in html and "src=\"runs" not in html   # nothing linked from outside
