"""The ``srrecnn`` command: parse arguments, call one library function, report.

Bad input ends in one line on stderr (``srrecnn: error: ...``) and a non-zero
exit; ``--debug`` shows the traceback instead. Library errors name a file or a
parameter; ``common.error_line`` shows a parameter as the option that sets it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from srrecnn_jax import __version__
from srrecnn_jax.cli import common, sr, tools, train
from srrecnn_jax.errors import SrrecnnError


def build_parser() -> argparse.ArgumentParser:
    parser = common.Parser(prog="srrecnn",
                           description="SRReCNN3D brain MRI super-resolution in JAX.")
    parser.add_argument("--version", action="version", version=f"srrecnn-jax {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=common.Parser)
    sr.add_to(commands)
    tools.add_to(commands)
    train.add_to(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``srrecnn`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    common.configure_jax()
    if not args.debug:  # one line per error: no library warnings on stderr
        import logging

        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's warnings
    try:
        return args.run(args)
    except SrrecnnError as e:
        if args.debug:
            raise
        print(f"srrecnn: error: {common.error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("srrecnn: interrupted", file=sys.stderr)
        return 130
