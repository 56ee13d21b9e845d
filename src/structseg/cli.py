"""Command-line entry point: ``structseg <command> ...``.

Each command lives in its own module exposing ``configure(parser)`` and
``run(args) -> int``. Those modules keep heavy imports (torch, matplotlib)
inside ``run`` so that ``structseg --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("structseg.data.commands", "inspect a data set: stats, preview, check"),
    "models": ("structseg.engine.commands.models", "list models, backbones and their ImageNet weights"),
    "config": ("structseg.engine.commands.config", "show the resolved config with every field's type and help"),
    "train": ("structseg.engine.commands.train", "train a model from a YAML config"),
    "eval": ("structseg.engine.commands.evaluate", "evaluate a trained run or checkpoint"),
    "predict": ("structseg.engine.commands.predict", "write colored masks and overlays for images"),
    "compare": ("structseg.engine.commands.compare", "image | truth | model 1 | model 2 ... figure"),
    "report": ("structseg.engine.commands.report", "one self-contained HTML report of a run"),
    "crf": ("structseg.engine.commands.crf", "tune the dense CRF's parameters of a run on its training images"),
    "export": ("structseg.engine.commands.export", "export a trained model to ONNX / TorchScript"),
    "classic": ("structseg.classic.commands", "unsupervised segmentation: k-means, mean-shift, normalized cuts"),
    "instance": ("structseg.instance.commands", "Mask R-CNN instance segmentation: train, eval, predict"),
}


def build_parser() -> argparse.ArgumentParser:
    from structseg import __version__

    parser = argparse.ArgumentParser(
        prog="structseg",
        description="Semantic segmentation: data, models, training, evaluation, structured prediction.",
    )
    parser.add_argument("--version", action="version", version=f"structseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)
        p.set_defaults(_module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing errors get one clear line, not a traceback
        line = user_error(exc)
        if line is None:
            raise
        print(f"structseg {args.command}: error: {line}", file=sys.stderr)
        return 2


def user_error(exc: BaseException) -> str | None:
    """The one line a user should read for ``exc``, or None for a bug (which keeps its traceback).

    structseg's own errors give their message; file-system errors (missing, unwritable, a file where a folder
    belongs, disk full, ...) name the path and the cause. An error raised in a DataLoader worker comes back
    wrapped with the worker's traceback: its original message is what is shown, as without workers."""
    from structseg.errors import StructsegError

    if isinstance(exc, StructsegError):
        text = str(exc)
        if "Original Traceback" in text:  # torch.utils.data re-raise: "... <module>.<Error>: <message>"
            last = text.rstrip().splitlines()[-1]
            text = last.split(": ", 1)[1] if ": " in last else last
        return text
    if isinstance(exc, OSError) and (exc.filename or exc.strerror):
        where = f"{exc.filename}: " if exc.filename else ""
        also = f" (and {exc.filename2})" if exc.filename2 else ""
        return f"{where}{exc.strerror or exc}{also}"
    return None


if __name__ == "__main__":
    sys.exit(main())
