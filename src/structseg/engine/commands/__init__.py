"""One module per ``structseg`` command: ``configure(parser)`` and ``run(args) -> int``."""
