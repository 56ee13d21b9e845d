"""One self-contained HTML page describing a run (images embedded as base64)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:0.2em} h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.9em} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td.name{text-align:left} pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:0.85em}
figure{display:inline-block;margin:0.5em} img{max-width:100%} .bar{background:#4c9be8;height:0.8em;display:inline-block}
.muted{color:#888}
"""


@dataclass
class ReportContent:
    """Everything the page shows; PNG images are raw bytes."""

    title: str
    config_yaml: str
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None  # SegMetrics.as_dict(...)
    metrics_source: str = ""  # which checkpoint / evaluation the per-class table comes from
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # every eval_*.json of the run
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    samples: list[tuple[str, bytes]] = field(default_factory=list)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(caption: str, png: bytes) -> str:
    cap = html.escape(caption)
    return f'<figure><img src="{data_uri(png)}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def _pct(value: Any) -> str:
    return "&ndash;" if value is None else f"{100 * float(value):.1f}"


def _class_table(metrics: dict[str, Any]) -> str:
    rows = []
    for name, m in metrics.get("per_class", {}).items():
        iou = m.get("iou")
        bar = "" if iou is None else f'<span class="bar" style="width:{100 * iou:.0f}px"></span>'
        rows.append(
            f'<tr><td class="name">{html.escape(name)}</td><td>{_pct(iou)}</td><td style="text-align:left">{bar}</td>'
            f"<td>{_pct(m.get('acc'))}</td><td>{_pct(m.get('dice'))}</td><td>{m.get('pixels', '')}</td></tr>"
        )
    head = "<tr><th>class</th><th>IoU %</th><th></th><th>acc %</th><th>Dice %</th><th>pixels</th></tr>"
    overall = (
        f"<p>mIoU <b>{_pct(metrics.get('miou'))}</b> &middot; pixel acc {_pct(metrics.get('pixel_acc'))}"
        f" &middot; mean acc {_pct(metrics.get('mean_acc'))} &middot; fwIoU {_pct(metrics.get('fwiou'))}</p>"
    )
    return overall + f"<table>{head}{''.join(rows)}</table>"


def _evaluations_table(evaluations: list[dict[str, Any]]) -> str:
    head = ("<tr><th>file</th><th>split</th><th>checkpoint</th><th>test-time inference</th><th>CRF</th>"
            "<th>mIoU %</th><th>pixel acc %</th></tr>")
    rows = []
    for e in evaluations:
        ev, crf = e.get("eval") or {}, e.get("crf") or {}
        tta = f"{ev.get('mode', 'whole')}, scales {ev.get('scales', [1.0])}" + (", flip" if ev.get("flip") else "")
        ckpt = e.get("checkpoint") or {}
        where = f"{ckpt.get('which', '?')} (iteration {ckpt.get('iteration', '?')})" if ckpt else "?"
        rows.append(f'<tr><td class="name">{html.escape(str(e.get("file", "")))}</td>'
                    f"<td>{html.escape(str(e.get('split', '')))}</td><td>{html.escape(where)}</td>"
                    f"<td>{html.escape(tta)}</td><td>{html.escape(str(crf.get('mode', 'none')))}</td>"
                    f"<td>{_pct(e.get('miou'))}</td><td>{_pct(e.get('pixel_acc'))}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def render_report(content: ReportContent) -> str:
    """The HTML text of the report."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(content.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(content.title)}</h1>",
    ]
    if content.summary:
        cells = "".join(
            f'<tr><td class="name">{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>'
            for k, v in content.summary.items()
        )
        parts.append(f"<table>{cells}</table>")
    parts.append("<h2>Per-class IoU</h2>")
    if content.metrics_source:
        parts.append(f'<p class="muted">{html.escape(content.metrics_source)}</p>')
    parts.append(_class_table(content.metrics) if content.metrics else '<p class="muted">no metrics</p>')
    parts.append("<h2>Evaluations</h2>")
    parts.append(_evaluations_table(content.evaluations) if content.evaluations
                 else '<p class="muted">no structseg eval results yet</p>')
    parts.append("<h2>Curves and confusion matrix</h2>")
    parts.append("".join(_img(c, p) for c, p in content.figures) or '<p class="muted">no figures</p>')
    parts.append("<h2>Sample predictions</h2>")
    parts.append("".join(_img(c, p) for c, p in content.samples) or '<p class="muted">no samples</p>')
    parts.append("<h2>Resolved config</h2>")
    parts.append(f"<pre>{html.escape(content.config_yaml)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(content: ReportContent, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(content), encoding="utf-8")
    return path
