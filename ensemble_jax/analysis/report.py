"""A self-contained HTML report assembled from study sections.

Each study writes, in its own folder `RUN_DIR/<study>/`, its numbers, its figures (PNG)
and a `section.json` (see `write_section`). `build_report(RUN_DIR)` gathers every
`RUN_DIR/*/section.json` (and `RUN_DIR/section.json`), orders them, embeds the figures as
base64 data URIs and writes `RUN_DIR/report.html` atomically: one file that opens in any
browser with nothing beside it. The text of a section is written by the study from its
computed numbers; this module only lays it out. A section may carry its study's
`conclusion` (the dict its numbers.json states: a "statement" plus the numbers behind it),
shown first, in a box, with those numbers. Only files inside RUN_DIR are embedded (paths
resolved, links followed): a figure whose path leads out of it (an absolute path, `..`
past RUN_DIR, a link to a file elsewhere) is refused with one line naming the section.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Sequence

from ensemble_jax import io as eio

SECTION_FILE = "section.json"


def write_section(folder: str | Path, *, title: str, paragraphs: Sequence[str],
                  figures: Sequence[tuple[str, str]] = (),
                  tables: Sequence[dict[str, Any]] = (), order: int = 100,
                  conclusion: dict[str, Any] | None = None) -> Path:
    """Writes `folder/section.json`.

    paragraphs: the findings, as plain text (computed from the numbers by the caller).
    figures: (file name relative to `folder`, caption) pairs; each file must exist.
    tables: dicts {"caption": str, "columns": [str], "rows": [[value, ...]]}.
    order: sections are sorted by (order, title).
    conclusion: the study's stated conclusion as data, {"statement": str, ...numbers}
        (the same dict as in its numbers.json); the report shows the statement and the
        scalar / short-list entries beside it.
    """
    folder = Path(folder)
    if conclusion is not None and not isinstance(conclusion.get("statement"), str):
        raise ValueError("write_section: conclusion needs a 'statement' text")
    for name, _ in figures:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"write_section: figure {folder / name} does not exist")
    for i, t in enumerate(tables):
        missing = {"caption", "columns", "rows"} - set(t)
        if missing:
            raise ValueError(f"write_section: table {i} lacks {sorted(missing)}")
        for r, row in enumerate(t["rows"]):
            if len(row) != len(t["columns"]):
                raise ValueError(f"write_section: table {i} ({t['caption']!r}) row {r} has "
                                 f"{len(row)} cells for {len(t['columns'])} columns")
    path = folder / SECTION_FILE
    eio.write_json(path, {"title": title, "order": int(order), "paragraphs": list(paragraphs),
                          "figures": [{"file": f, "caption": c} for f, c in figures],
                          "tables": list(tables),
                          **({"conclusion": dict(conclusion)} if conclusion is not None else {})})
    return path


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "&ndash;"
        return f"{v:.4g}"
    return html.escape(str(v))


def _value(v: Any) -> str | None:
    """A conclusion entry as text; None for what does not fit a line (nested dicts)."""
    if isinstance(v, bool) or v is None:
        return "yes" if v is True else ("no" if v is False else "&ndash;")
    if isinstance(v, (int, float, str)):
        return _cell(v)
    if isinstance(v, list) and len(v) <= 6 and all(
            isinstance(x, (int, float, str)) or x is None for x in v):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return None


def _conclusion_html(c: dict) -> str:
    rows = [(k, _value(v)) for k, v in c.items() if k != "statement"]
    items = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{v}</td></tr>"
                    for k, v in rows if v is not None)
    return (f'<div class="conclusion"><p><strong>Conclusion:</strong> '
            f'{html.escape(c["statement"])}</p>'
            + (f"<table>{items}</table>" if items else "") + "</div>")


def _section_html(folder: Path, sec: dict) -> str:
    out = [f"<section><h2>{html.escape(sec['title'])}</h2>"]
    if sec.get("conclusion"):
        out.append(_conclusion_html(sec["conclusion"]))
    for p in sec.get("paragraphs", []):
        out.append(f"<p>{html.escape(p)}</p>")
    for t in sec.get("tables", []):
        out.append(f"<table><caption>{html.escape(t['caption'])}</caption><tr>"
                   + "".join(f"<th>{html.escape(str(c))}</th>" for c in t["columns"]) + "</tr>")
        for row in t["rows"]:
            out.append("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
        out.append("</table>")
    for fig in sec.get("figures", []):
        path = fig["path"]             # resolved inside the report's folder (_check_section)
        data = path.read_bytes()
        if not data:
            raise ValueError(f"report: figure {path} is empty")
        mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
        b64 = base64.b64encode(data).decode("ascii")
        out.append(f'<figure><img alt="{html.escape(fig["caption"])}" '
                   f'src="data:{mime};base64,{b64}"/>'
                   f"<figcaption>{html.escape(fig['caption'])}</figcaption></figure>")
    out.append("</section>")
    return "\n".join(out)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{font-size:.9em;
color:#555}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;
padding:.25em .6em;text-align:right}caption{text-align:left;font-weight:600;padding:.3em 0}
.conclusion{background:#f4f7fb;border-left:4px solid #36c;padding:.3em 1em;margin:1em 0}"""


def inside(root: Path, path: Path) -> Path | None:
    """`path` resolved (links followed) if it lies inside folder `root`, else None: a
    report embeds only files of the folder it reports on, never /etc/... or ../x."""
    real, top = path.resolve(), root.resolve()
    return real if real == top or top in real.parents else None


def _check_section(path: Path, sec: dict, root: Path) -> None:
    """A malformed section.json is named with the entry at fault (not a KeyError later).
    Figures must be files inside `root`, the folder the report is of."""
    def bad(where: str, why: str):
        raise ValueError(f"report: {path}: {where}: {why}")
    if not isinstance(sec["title"], str):
        bad("title", "must be text")
    if not isinstance(sec.get("order", 100), (int, float)) or isinstance(sec.get("order"), bool):
        bad("order", "must be a number")
    paragraphs = sec.get("paragraphs", [])
    if not isinstance(paragraphs, list) or not all(isinstance(x, str) for x in paragraphs):
        bad("paragraphs", "must be a list of texts")
    tables = sec.get("tables", [])
    if not isinstance(tables, list):
        bad("tables", "must be a list")
    for i, t in enumerate(tables):
        if not isinstance(t, dict) or {"caption", "columns", "rows"} - set(t):
            bad(f"table {i}", "must be an object with caption, columns and rows")
        if not isinstance(t["caption"], str):
            bad(f"table {i} caption", "must be text")
        if not isinstance(t["columns"], list) or not isinstance(t["rows"], list):
            bad(f"table {i}", "columns and rows must be lists")
        for r, row in enumerate(t["rows"]):
            if not isinstance(row, list) or len(row) != len(t["columns"]):
                bad(f"table {i} row {r}", f"must be a list of {len(t['columns'])} cells")
    figures = sec.get("figures", [])
    if not isinstance(figures, list):
        bad("figures", "must be a list")
    for i, f in enumerate(figures):
        if not isinstance(f, dict) or not isinstance(f.get("file"), str) \
                or not isinstance(f.get("caption", ""), str):
            bad(f"figure {i}", "must be an object with a 'file' name and a 'caption'")
        f["path"] = inside(root, path.parent / f["file"])
        if f["path"] is None:
            bad(f"figure {i}", f"{f['file']!r} is outside {root}; a report embeds only "
                "files inside the folder it reports on")
        if not f["path"].is_file():
            bad(f"figure {i}", f"{path.parent / f['file']} does not exist")
    c = sec.get("conclusion")
    if c is not None and (not isinstance(c, dict) or not isinstance(c.get("statement"), str)):
        bad("conclusion", "must be an object with a 'statement' text")
    sec.setdefault("paragraphs", [])
    for f in figures:
        f.setdefault("caption", "")


def find_sections(run_dir: str | Path) -> list[tuple[Path, dict]]:
    run_dir = Path(run_dir)
    paths = sorted(run_dir.glob(f"*/{SECTION_FILE}"))
    if (run_dir / SECTION_FILE).is_file():
        paths.insert(0, run_dir / SECTION_FILE)
    sections = []
    for p in paths:
        try:
            sec = eio.read_json(p)
        except OSError as e:
            raise ValueError(f"report: {p} is not a readable section ({e})") from e
        if not isinstance(sec, dict) or "title" not in sec:
            raise ValueError(f"report: {p} has no 'title'")
        _check_section(p, sec, run_dir)
        sections.append((p.parent, sec))
    sections.sort(key=lambda s: (s[1].get("order", 100), s[1]["title"]))
    return sections


def build_report(run_dir: str | Path, *, title: str | None = None) -> Path:
    """Writes RUN_DIR/report.html from every section found; returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotADirectoryError(f"report: {run_dir} is not a directory")
    sections = find_sections(run_dir)
    if not sections:
        from ensemble_jax.analysis.run_report import (build_run_report, is_run_dir,
                                                      unfinished_run)
        if is_run_dir(run_dir):   # a sweep (+ analyze) run directory: a report of that run
            return build_run_report(run_dir, title=title)
        unfinished_run(run_dir)
        raise ValueError(f"report: no {SECTION_FILE} under {run_dir} (run a study first)")
    title = title or f"ensemble-jax report: {run_dir.name}"
    body = "\n".join(_section_html(folder, sec) for folder, sec in sections)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n"
            f"{body}\n</body></html>\n")
    path = run_dir / "report.html"
    eio.write_text(path, page)
    return path
