"""``structseg config show``: the full resolved config, every field with its type, default and one line of help."""
from __future__ import annotations

import argparse

from structseg.engine.commands._common import add_set


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    sub.required = True
    show = sub.add_parser("show", help="print the resolved config (YAML, with type, default and help per field)",
                          description="Print the resolved config as YAML that structseg train -c reads back: "
                                      "every field with its value, and in a comment its type, default and help.")
    show.add_argument("-c", "--config", help="YAML config (default: the embedded default)")
    add_set(show)


def run(args: argparse.Namespace) -> int:
    from structseg.engine.config import load_config

    print(describe_config(load_config(args.config, args.overrides)))
    return 0


def describe_config(cfg: object) -> str:
    """YAML of ``cfg`` with a comment per field: ``# <type> (default <value>): <help>``."""
    import dataclasses
    import typing

    import yaml

    from structseg.engine.config_help import HELP
    from structseg.engine.typed import type_name

    def scalar(value: object) -> str:
        return str(yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip())

    lines: list[str] = []

    def walk(obj: object, prefix: str, indent: int) -> None:
        hints = typing.get_type_hints(type(obj), include_extras=True)
        defaults = type(obj)()
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            key = f"{prefix}{f.name}"
            value = getattr(obj, f.name)
            pad = "  " * indent
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:")
                walk(value, key + ".", indent + 1)
                continue
            if key == "loss":
                lines.append(f"{pad}loss:  # {HELP['loss']}")
                for term in value:
                    lines.append(f"{pad}  - {scalar(dataclasses.asdict(term))}")
                lines.append(f"{pad}  # each term: name: {HELP['loss.N.name']}; weight: {HELP['loss.N.weight']}; "
                             f"params: {HELP['loss.N.params']}")
                continue
            note = f"{type_name(hints[f.name])} (default {scalar(getattr(defaults, f.name))}): {HELP.get(key, '')}"
            lines.append(f"{pad}{f.name}: {scalar(value)}  # {note}")

    walk(cfg, "", 0)
    return "\n".join(lines)
