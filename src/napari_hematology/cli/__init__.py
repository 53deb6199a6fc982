"""The ``napari-hematology`` command line.

Each module in this package that defines ``register(subparsers)`` adds its subcommands; a subcommand sets
``func`` (taking the parsed arguments) with ``parser.set_defaults``. Errors meant for the user
(:class:`~napari_hematology.core.errors.HematologyError`) are printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from napari_hematology import __version__
from napari_hematology.core.errors import Cancelled, HematologyError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand of this package."""
    parser = argparse.ArgumentParser(
        prog="napari-hematology",
        description="Blast detection, mutation prediction, label review, expression and cytometry "
        "models for hematology. Run 'napari-hematology COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"napari-hematology {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        result = args.func(args)
    except Cancelled:
        print("napari-hematology: cancelled.", file=sys.stderr)
        return 130
    except HematologyError as error:
        message = " ".join(str(error).split())
        print(f"napari-hematology: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("napari-hematology: interrupted.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
