"""What every benchmark script shares: paths, the common options, the machine description, JSON and tables.

Results are only comparable with the machine they were measured on, so every result file carries the same
description of it (:func:`machine`), written the same way (:func:`write_json`). Scripts run as
``python benchmarks/X.py`` and import this module as ``from _harness import ...`` (the script's folder is on
``sys.path``). torch and structseg are imported only where needed, so ``--help`` stays fast and scripts that put
``src/`` on ``sys.path`` themselves can import this first.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# honours STRUCTSEG_CAMVID, as structseg.data.default_root does
CAMVID = Path(os.environ.get("STRUCTSEG_CAMVID", ROOT.parent / "shared" / "datasets" / "camvid"))


def parser(doc: str, *, out: Path | None = None, threads: bool = False,
           camvid: bool = False) -> argparse.ArgumentParser:
    """An argument parser for a script whose module docstring is ``doc``, with the common options.

    The docstring's first paragraph is the description and the rest (usage lines, details) the epilog, kept as
    written. ``out``: default of ``--out`` (a file, or a folder when it has no suffix); ``threads``: add
    ``--threads`` (see :func:`apply_threads`); ``camvid``: add ``--root``, the CamVid folder (default
    :data:`CAMVID`).
    """
    head, _, rest = doc.strip().partition("\n\n")
    p = argparse.ArgumentParser(description=head, epilog=rest or None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if camvid:
        p.add_argument("--root", type=Path, default=CAMVID, help="CamVid root (default: %(default)s)")
    if threads:
        p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    if out is not None:
        what = "output JSON file" if out.suffix else "output folder"
        p.add_argument("--out", type=Path, default=out, help=f"{what} (default: %(default)s)")
    return p


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's intra-op thread count from ``--threads``, when given (before anything is timed)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo; ``platform``'s coarser answer where that file has none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """The machine a result was measured on: CPU model, native bf16 (which decides the fast path), cores, torch
    and its thread count now, Python, platform, and the CUDA device (None without one)."""
    import torch

    from structseg.models.fastpath import cpu_has_native_bf16

    return {
        "cpu": cpu_name(),
        "native_bf16": cpu_has_native_bf16(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` to ``path`` (folders created, indent 2, odd values as ``str``) with a ``"machine"``
    entry from :func:`machine` unless it has one; returns ``path``."""
    path = Path(path)
    data = dict(payload) if "machine" in payload else {**payload, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


class _Cells(string.Formatter):
    """``str.format`` that shows a missing value (None) as ``-`` whatever the field's format."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return "-" if value is None else super().format_field(value, format_spec)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], *, left: int = 1) -> None:
    """Print ``rows`` as a plain fixed-width table under a ruled heading line.

    ``columns`` are ``(heading, template)`` pairs; a template is ``str.format`` text over a row's keys, e.g.
    ``"{method}"``, ``"{miou:.1%}"``, ``"{speedup:.2f}x"`` (None shows as ``-``). Each column is as wide as its
    widest cell; the first ``left`` columns are left-aligned, the others right-aligned.
    """
    cells_of = _Cells()
    cells = [[cells_of.format(template, **row) for _, template in columns] for row in rows]
    widths = [max([len(heading), *(len(line[i]) for line in cells)]) for i, (heading, _) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return " ".join(v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    heading = line([h for h, _ in columns])
    print(heading)
    print("-" * len(heading))
    for values in cells:
        print(line(values))
