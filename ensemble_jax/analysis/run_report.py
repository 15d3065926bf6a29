"""`ensemble-jax report RUN_DIR` on a run directory written by `sweep` (and `analyze`):
one self-contained `report.html` of that run.

Sections, each from the files the run directory holds (a missing one is said to be
missing, with the command that writes it):
  run            data, members, settings chosen from the data (config.json "auto"),
                 ensemble and member test errors (summary.json)
  learning       learning_curve.png (nested plans), and the members' training loss
                 (training.npz) drawn here
  suspects       suspects.png and the top rows of suspects.csv, the cut and its rule
  AUM            aum_by_kind.png (AUM histogram by threshold-sample kind)
  uncertainty    uncertainty_vs_error.png and the Spearman table
  influence      analysis.json's influence summary and influence_matrix.png when present
Figures are embedded as base64 PNG data URIs: the file opens with nothing beside it.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ensemble_jax import io as eio
from ensemble_jax.analysis.report import _STYLE, inside


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and (p / "summary.json").is_file()


def unfinished_run(path: str | Path) -> None:
    """Raises the one line for a run directory that `sweep` has not finished (its config.json
    or manifest without summary.json, which the sweep writes last); returns otherwise."""
    from ensemble_jax.rundir import MANIFEST
    p = Path(path)
    if (p / "summary.json").is_file() and not (p / "config.json").is_file():
        raise ValueError(f"report: {p / 'config.json'} is missing: not a complete run "
                         f"directory of ensemble-jax")
    if (p / "config.json").is_file() or (p / MANIFEST).is_file():
        raise ValueError(f"report: {p}: the sweep has not finished (summary.json is missing: "
                         f"still running or interrupted); finish it with `ensemble-jax sweep "
                         f"--out {p} --resume` and the arguments it was started with, then "
                         f"report")


class _Named(ValueError):
    """A message that already names its file (passed through by `_damaged`)."""


def _get(obj: Any, path: Path, *keys: str) -> Any:
    """obj[k1][k2]...: an entry the report needs; ValueError naming the file and entry."""
    for i, k in enumerate(keys):
        if not isinstance(obj, dict) or k not in obj:
            raise _Named(f"report: {path}: damaged (no {'.'.join(keys[:i + 1])!r} entry)")
        obj = obj[k]
    return obj


def _num(v: Any, fmt: str = ".2f") -> str:
    """A number as text; a missing one (NaN is stored as null) as n/a."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    return format(v, fmt) if ok else "n/a"


def _damaged(what: str, build: Callable[..., Any], *args: Any) -> Any:
    """build(*args), with an entry of the wrong kind in `what` as one line naming it (the
    files are ours, but a user may have edited or damaged them)."""
    try:
        return build(*args)
    except _Named:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        raise ValueError(f"report: {what}: damaged ({type(e).__name__}: {e})") from None


def _img(data: bytes, alt: str) -> str:
    if not data:
        raise ValueError(f"report: figure {alt!r} is empty")
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"/>'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _file_img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    if inside(path.parent, path) is None:       # a link to a file elsewhere
        raise _Named(f"report: {path} links to a file outside {path.parent}; a report "
                     f"embeds only files inside the folder it reports on")
    data = path.read_bytes()
    if not data:
        raise _Named(f"report: figure {path} is empty")
    return _img(data, alt)


def _table(columns, rows, caption="") -> str:
    out = [f"<table><caption>{html.escape(caption)}</caption><tr>"
           + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(
            f"<td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>"
            for v in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _loss_figure(run: Path) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    z = eio.load_npz(run / "training.npz")
    losses = np.asarray(_get(z, run / "training.npz", "losses"), np.float64)   # [steps, M]
    if losses.ndim != 2 or not losses.size:
        raise ValueError(f"report: {run / 'training.npz'}: damaged (losses of shape "
                         f"{losses.shape}, expected [steps, members])")
    fig, ax = plt.subplots(figsize=(7, 3.8))
    steps = np.arange(1, losses.shape[0] + 1)
    for m in range(losses.shape[1]):
        ax.plot(steps, losses[:, m], lw=0.8, alpha=0.6)
    ax.plot(steps, np.nanmean(losses, 1), "k", lw=2, label="mean over members")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (heatmap BCE)")
    ax.set_title(f"Training loss of the {losses.shape[1]} members", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def build_run_report(run_dir: str | Path, *, title: str | None = None) -> Path:
    run = Path(run_dir)
    config = eio.read_json(run / "config.json", dict)
    summary = eio.read_json(run / "summary.json", dict)
    analysis = (eio.read_json(run / "analysis.json", dict)
                if (run / "analysis.json").is_file() else None)
    parts = [_damaged(f"{run / 'config.json'} or {run / 'summary.json'}", _run_section, run,
                      config, summary)]
    parts.append("<section><h2>Learning</h2>")
    parts.append(_file_img(run / "learning_curve.png", "Test error against subset fraction"))
    parts.append(_img(_loss_figure(run), "Training loss of every member"))
    parts.append("</section>")
    if analysis is None:
        parts.append("<section><h2>Analysis</h2><p>No analysis.json: run "
                     "<code>ensemble-jax analyze RUN_DIR</code> first for suspects, AUM, "
                     "uncertainty and influence.</p></section>")
    else:
        parts += _damaged(f"{run / 'analysis.json'} (run `ensemble-jax analyze {run}` again)",
                          _analysis_sections, run, analysis)
    title = title or f"ensemble-jax run report: {run.name}"
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")
    path = run / "report.html"
    eio.write_text(path, page)
    return path


def _run_section(run: Path, config: dict, summary: dict) -> str:
    cp, sp = run / "config.json", run / "summary.json"
    sw = config.get("sweep") or {}
    parts = [f"<section><h2>Run</h2><p>data: {html.escape(str(sw.get('data') or 'synthetic'))}"
             f"; {_get(summary, sp, 'members')} members, plan "
             f"{html.escape(str(sw.get('plan')))}, {_get(config, cp, 'train', 'steps')} steps "
             f"of batch {_get(config, cp, 'train', 'batch_size')}; output stride "
             f"{_get(config, cp, 'model', 'output_stride')}, AUM radius "
             f"{_get(config, cp, 'train', 'aum_radius')} heatmap px.</p>"]
    auto = config.get("auto") or {}
    if auto:
        parts.append(_table(["setting", "value", "rule"],
                            [[k, v.get("value"), v.get("rule", "")] for k, v in auto.items()],
                            "Settings chosen from the data"))
    et = summary.get("ensemble_test") or {}
    parts.append(f"<p>Ensemble test error {_num(et.get('mean_px'))} px (original "
                 f"pixels); predicting the mean pose "
                 f"{_num(_get(summary, sp, 'mean_pose_baseline_px'))} px.</p></section>")
    return "".join(parts)


def _analysis_sections(run: Path, analysis: dict) -> list[str]:
    parts: list[str] = []
    sus = analysis.get("suspects") or {}
    parts.append("<section><h2>Suspect frames</h2>")
    if sus:
        parts.append(f"<p>{sus['n_flagged']} of {sus['n_frames']} frames flagged. Score: "
                     f"{html.escape(sus['score'])}. Rule: {html.escape(sus['rule'])}.</p>")
        tf = sus.get("threshold_frames", {})
        if tf:
            parts.append(_table(["threshold-sample kind", "frames", "median frame score",
                                 "median frame AUM", "share below the cut"],
                                [[k, v["n"], v.get("median_score", v["median_frame_aum"]),
                                  v["median_frame_aum"], v["recall_at_cut"]]
                                 for k, v in tf.items()],
                                "Known errors planted by the sweep (the calibration)"))
        if sus.get("top"):
            parts.append(_table(
                ["rank", "frame", "frame score", "frame AUM", "flagged", "suspected"],
                [[r["rank"], r["frame"], r.get("frame_score", r["frame_aum"]),
                  r["frame_aum"], r["flagged"], r["description"]]
                 for r in sus["top"]], "Top of suspects.csv"))
    parts.append(_file_img(run / "suspects.png", "Top suspects: label (+), ensemble "
                           "prediction (x), suggested correction (red arrow)"))
    parts.append("</section><section><h2>AUM</h2>")
    parts.append(_file_img(run / "aum_by_kind.png",
                           "AUM histogram by kind of label and threshold sample")
                 or _file_img(run / "aum_histogram.png", "AUM histogram"))
    parts.append("</section>")
    unc = analysis.get("uncertainty_vs_error")
    parts.append("<section><h2>Uncertainty against error</h2>")
    if unc:
        parts.append(_table(
            ["score", "Spearman rho", "95% CI", "test frames"],
            [[k, v["rho"] if v["rho"] is not None else v.get("why", ""),
              "" if not v.get("ci95") else f"{v['ci95'][0]:+.2f}..{v['ci95'][1]:+.2f}",
              v["n"]] for k, v in unc["scores"].items()],
            "Rank correlation of each per-frame score with the ensemble's test error"))
    parts.append(_file_img(run / "uncertainty_vs_error.png",
                           "Per-frame uncertainty against the ensemble's test error"))
    parts.append("</section>")
    inf = analysis.get("influence")
    if inf:
        parts.append("<section><h2>Influence</h2>")
        rows = [[r["frame"], r["score"]] for r in
                (inf.get("top_harmful_train_frames") or [])[:5]
                + (inf.get("top_helpful_train_frames") or [])[:5]]
        if rows:
            parts.append(_table(["training frame", "mean effect on test error"], rows,
                                "Most harmful and most helpful training frames"))
        parts.append(_file_img(run / "influence_matrix.png", "Subset influence matrix"))
        parts.append("</section>")
    return parts
