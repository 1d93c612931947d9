"""The tables, plot and HTML report of an `indomain evaluate` run (:func:`write_outputs`).

``results.csv``, ``results.json`` (every MetricResult), ``results.md`` (table plus the metric protocol),
``plot.png`` (controllability on x, fidelity on y, one series per method, points labelled w_d/w_c),
``settings.json`` and a self-contained ``report.html`` (command line, table, protocol, plot, sample grids, settings).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import MetricResult
from .outputs import to_json, write_record
from .numerics import is_finite_number

if TYPE_CHECKING:
    from .evaluate import EvalConfig, EvalResult

__all__ = ["LOWER_IS_BETTER", "plot_results", "write_outputs", "write_report"]

LOWER_IS_BETTER = {"fid", "kid", "kid_std"}


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def _axes(rows: Sequence[dict[str, Any]], x: str | None, y: str | None) -> tuple[str, str | None]:
    """Default plot columns: controllability on x, fidelity on y (see EvalConfig.plot_x/plot_y)."""
    metric_cols = [c for c in _columns(rows) if c not in {"method", "w_d", "w_c", "setting", "n_generated", "images"}
                   and not c.endswith("_std")]
    scorer_cols = [c for c in metric_cols if c not in {"fid", "kid", "clip_score"}]
    if x is None:
        x = "clip_score" if "clip_score" in metric_cols else (scorer_cols[0] if scorer_cols else "w_d")
    if y is None:
        y = next((c for c in ["fid", "kid", *scorer_cols] if c in metric_cols and c != x), None)
    return x, y


def _label(column: str) -> str:
    names = {"fid": "FID", "kid": "KID", "clip_score": "CLIP score", "w_d": "domain weight w_d", "w_c": "control weight w_c"}
    arrow = " (lower is better)" if column in LOWER_IS_BETTER else ""
    return names.get(column, column) + arrow


def new_plot(figsize: tuple[float, float] = (6.4, 4.8)) -> tuple[Any, Any]:
    """A figure and its axes for a trade-off plot: the one home of how indomain draws plots (evaluate, tune, the
    emoji world's benchmark). The object API with the Agg canvas: no pyplot, so no global backend or figure state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def label_weights(ax: Any, points: Sequence[dict[str, Any]], x: str, y: str, fontsize: int = 7) -> None:
    """Each point labelled ``w_d/w_c``, the weights that made it."""
    for r in points:
        ax.annotate(f"{r['w_d']:g}/{r['w_c']:g}", (r[x], r[y]), textcoords="offset points", xytext=(4, 4),
                    fontsize=fontsize)


def save_plot(fig: Any, ax: Any, path: str | os.PathLike, *, xlabel: str, ylabel: str, title: str,
              legend_size: int = 8) -> Path:
    """Axis labels, title, grid and legend, then the PNG at ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_results(rows: Sequence[dict[str, Any]], path: str | os.PathLike, x: str | None = None,
                 y: str | None = None) -> Path | None:
    """Scatter-and-line plot of ``y`` (fidelity) against ``x`` (controllability), one series per method, each point
    labelled ``w_d/w_c``. Returns None (writes nothing) when no fidelity column exists."""
    x, y = _axes(rows, x, y)
    if y is None:
        return None
    fig, ax = new_plot()
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r for r in rows if r["method"] == method and is_finite_number(r.get(x))
                         and is_finite_number(r.get(y))), key=lambda r: r[x])
        ax.plot([r[x] for r in points], [r[y] for r in points], marker="o", linewidth=1, label=method)
        label_weights(ax, points, x, y)
    ax.locator_params(axis="x", nbins=6)
    return save_plot(fig, ax, path, xlabel=_label(x), ylabel=_label(y), title="points labelled w_d/w_c")


def _markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _protocol_lines(result: EvalResult) -> list[str]:
    """How each metric was measured (shared by all settings apart from N generated)."""
    seen: dict[str, MetricResult] = {}
    for per_setting in result.metrics.values():
        for name, res in per_setting.items():
            seen.setdefault(name, res)
    return [
        f"{name}: {r.library} {r.library_version}; extractor {r.extractor} ({r.feature_dim}-d); "
        f"resize {r.resize_mode}; preprocess: {r.preprocess}; resolution {r.resolution}; "
        f"N real {r.n_real}; N generated {r.n_generated}; params {to_json(r.params)}"
        for name, r in seen.items()
    ]


def write_outputs(result: EvalResult, config: EvalConfig, record: dict[str, Any]) -> None:
    """results.csv/.json/.md, plot.png, settings.json and report.html into ``result.out``."""
    out, rows = result.out, result.rows
    columns = _columns(rows)
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    metrics = {s: {k: r.to_dict() for k, r in m.items()} for s, m in result.metrics.items()}
    (out / "results.json").write_text(to_json({"rows": rows, "metrics": metrics}, indent=2) + "\n")
    protocol = _protocol_lines(result)
    md = _markdown_table(rows, columns) + "".join(f"\n- {line}" for line in protocol) + ("\n" if protocol else "")
    (out / "results.md").write_text(md)
    plot = plot_results(rows, out / "plot.png", config.plot_x, config.plot_y)
    settings_file = write_record(out / "settings.json", record)
    write_report(result, columns, plot, protocol, json.loads(settings_file.read_text()))


def write_report(result: EvalResult, columns: Sequence[str], plot: Path | None, protocol: Sequence[str],
                 record: dict[str, Any]) -> Path:
    """A self-contained report.html: command, settings, table, plot and one sample grid per setting."""
    out = result.out
    grids = "".join(
        f"<figure><img src='{_data_uri(out / 'grids' / (row['setting'] + '.png'))}' alt='{html.escape(row['setting'])}'>"
        f"<figcaption>{html.escape(row['setting'])}</figcaption></figure>"
        for row in result.rows
    )
    plot_html = f"<img src='{_data_uri(plot)}' alt='plot'>" if plot else "<p>No fidelity metric: no plot.</p>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>indomain evaluate: {html.escape(out.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
pre {{ background: #f4f4f4; padding: 1em; overflow-x: auto; }} figure {{ display: inline-block; margin: 0.5em; }}
figure img {{ image-rendering: pixelated; max-width: 360px; }} figcaption {{ font-size: 0.8em; }}
</style></head><body>
<h1>Evaluation: {html.escape(out.name)}</h1>
<h2>Command</h2><pre>{html.escape(shlex.join(sys.argv))}</pre>
<h2>Results</h2>{_html_table(result.rows, columns)}
<h3>Metric protocol</h3><ul>{"".join(f"<li>{html.escape(line)}</li>" for line in protocol) or "<li>no metric</li>"}</ul>
<p>FID/KID values are comparable only when library, extractor, resize mode, resolution and N all match.</p>
<h2>Fidelity vs controllability</h2>{plot_html}
<h2>Samples (first images of each setting)</h2>{grids}
<h2>Settings</h2><pre>{html.escape(to_json(record, indent=2))}</pre>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
