"""The `clipmc` command: one entry point, subcommands registered by each package.

Each package owns its commands (`model/cli.py`, `export/cli.py`, `gallery/cli.py`, ...) through a
`register(subparsers)` function; heavy imports happen inside the commands, so `clipmc --help` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import import_module

# Packages whose `register` adds subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "clipmc.model.cli",
    "clipmc.model.cli_data",
    "clipmc.model.cli_calibrate",
    "clipmc.model.cli_pretrain",
    "clipmc.export.cli",
    "clipmc.gallery.cli",
    "clipmc.service.commands",
)

log = logging.getLogger("clipmc")


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipmc", description="CLIP-MC visible-infrared person re-identification")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a missing dependency inside the module is a real error
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # force: the handler writes to the sys.stderr of *this* call. Without it a second main() in one
    # process (tests, notebooks) keeps the first call's stream, which may be closed by then.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except (CLIError, ValueError, FileNotFoundError, RuntimeError) as exc:
        # Errors that name the problem (CheckpointError, DatasetError, GalleryError, ...): one line.
        log.debug("command failed", exc_info=True)
        print(f"clipmc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
