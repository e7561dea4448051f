"""The ``srrecnn`` command: parse arguments, call one library function, report.

Bad input ends in one line on stderr (``srrecnn: error: ...``) and a non-zero
exit; ``--debug`` shows the traceback instead. Library errors name a file or a
parameter; ``common.error_line`` shows a parameter as the option that sets it.
Ctrl-C or SIGTERM where no command handles it (``sr`` with ``-o``, ``convert``, ...)
ends in ``srrecnn: interrupted`` and exit status 130 (SIGTERM too, as in batch mode and
training), with nothing left at ``-o/--output`` that the run made: a signal received at
any time before the command returns, even one whose ``KeyboardInterrupt`` was lost in
native code or a finalizer, and even after the output was renamed into place.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax import __version__
from srrecnn_jax.cli import bids, common, sr, tools, train
from srrecnn_jax.errors import SrrecnnError


def build_parser() -> argparse.ArgumentParser:
    parser = common.Parser(prog="srrecnn",
                           description="SRReCNN3D brain MRI super-resolution in JAX.")
    parser.add_argument("--version", action="version", version=f"srrecnn-jax {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=common.Parser)
    sr.add_to(commands)
    bids.add_to(commands)
    tools.add_to(commands)
    train.add_to(commands)
    return parser


#: Set by the process's SIGINT and SIGTERM handler (``_on_interrupt``): the run was
#: interrupted, whether or not its ``KeyboardInterrupt`` reached ``main``.
_interrupted = threading.Event()


def _on_interrupt(signum, frame) -> None:
    """SIGINT and SIGTERM: note the interrupt, then stop the run where it is."""
    _interrupted.set()
    raise KeyboardInterrupt


def _handle_interrupts() -> None:
    """Stop the run on SIGINT and SIGTERM (``_on_interrupt``), and make the interrupt reach
    ``main`` even when it lands in a garbage-collection callback or a finalizer (JAX runs
    one at every collection): a ``KeyboardInterrupt`` raised there is printed as
    "Exception ignored" and lost, and the run would go on. Instead the signal is sent
    again a moment later; should that come too late, ``main`` still sees the flag."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
            again.daemon = True
            again.start()
            return
        previous(unraisable)

    sys.unraisablehook = hook
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _on_interrupt)


def _outputs(args: argparse.Namespace) -> dict[Path, tuple[int, int] | None]:
    """The ``-o/--output`` paths of a command, each with its identity before the run
    (``_identity``), so that an interrupted run removes only what it made."""
    outputs = getattr(args, "output", None)
    paths = outputs if isinstance(outputs, list) else [outputs] if outputs else []
    return {Path(p): _identity(Path(p)) for p in paths}


def _identity(path: Path) -> tuple[int, int] | None:
    """Device and inode of ``path`` (a file or folder put in place by a rename has new
    ones), or None if nothing is there."""
    try:
        status = os.lstat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _remove_made(outputs: dict[Path, tuple[int, int] | None]) -> None:
    """Remove each output that is not what was there before the run (the run made it)."""
    for path, before in outputs.items():
        if _identity(path) not in (None, before):
            try:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            except OSError:
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``srrecnn`` console script; returns the exit status."""
    if argv is None:  # the process's own command line (not a call from Python)
        _handle_interrupts()
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given, for provenance
    common.configure_jax()
    if not args.debug:  # one line per error: no library warnings on stderr
        import logging

        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's warnings
    outputs = _outputs(args)
    try:
        status = args.run(args)
        if not _interrupted.is_set():
            return status
        # The interrupt's KeyboardInterrupt was lost (swallowed in native code, or raised
        # in a finalizer and sent again too late): the run went on to the end.
        raise KeyboardInterrupt
    except SrrecnnError as e:
        if args.debug:
            raise
        print(f"srrecnn: error: {common.error_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # temporary outputs are removed on the way up here
        if argv is None:  # a second Ctrl-C or SIGTERM changes nothing
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _remove_made(outputs)  # an output renamed into place before the interrupt was seen
        print("srrecnn: interrupted", file=sys.stderr)
        if argv is None:  # the process's own command line: end the process now
            sys.stdout.flush()
            sys.stderr.flush()
            # The interpreter's teardown with XLA's threads still running the computation
            # that Ctrl-C cut short can crash (a segmentation fault, exit 139): skip it.
            os._exit(130)
        return 130
