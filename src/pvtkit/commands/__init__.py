"""The `pvtkit` subcommands, one module each; every module has `register(subparsers)`.

`pvtkit.cli` builds the parser from the modules named in `COMMANDS`, in that order.
"""

COMMANDS = (
    "classify",
    "segment",
    "depth",
    "detect",
    "features",
    "info",
    "attention",
    "train",
    "eval",
    "doctor",
    "convert",
    "export",
    "serve",
)
