"""The ``srrecnn`` command: parse arguments, call one library function, report.

Bad input ends in one line on stderr (``srrecnn: error: ...``) and a non-zero
exit; ``--debug`` shows the traceback instead. Library errors name a file or a
parameter; ``common.error_line`` shows a parameter as the option that sets it.
Ctrl-C where no command handles it (``sr`` with ``-o``, ``convert``, ...) ends
in ``srrecnn: interrupted`` and exit status 130, with no partial output.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
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


def _keep_interrupts() -> None:
    """Make Ctrl-C reach ``main`` even when it lands in a garbage-collection callback or a
    finalizer (JAX runs one at every collection): a ``KeyboardInterrupt`` raised there is
    printed as "Exception ignored" and lost, and the run would go on. Instead the signal
    is sent again a moment later."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
            again.daemon = True
            again.start()
            return
        previous(unraisable)

    sys.unraisablehook = hook


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``srrecnn`` console script; returns the exit status."""
    if argv is None:  # the process's own command line (not a call from Python)
        _keep_interrupts()
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
    except KeyboardInterrupt:  # temporary outputs are removed on the way up here
        if argv is None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C changes nothing
        print("srrecnn: interrupted", file=sys.stderr)
        if argv is None:  # the process's own command line: end the process now
            sys.stdout.flush()
            sys.stderr.flush()
            # The interpreter's teardown with XLA's threads still running the computation
            # that Ctrl-C cut short can crash (a segmentation fault, exit 139): skip it.
            os._exit(130)
        return 130
