"""What the ``srrecnn`` commands share: the parser, argument types, the options that stand
for library parameters, ``--distributed``, and running until done or stopped.

Nothing here imports JAX, so ``srrecnn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from srrecnn_jax.errors import OutputExistsError, SrrecnnError

#: The option of each library parameter that errors name (``SrrecnnError.parameter``).
#: A parameter missing here is shown by its own name.
OPTIONS = {
    "scale": "-s/--scale", "tile": "--tile", "order": "--order", "precision": "--precision",
    "interpolation": "--interpolation", "reference": "--reference", "header": "--header",
    "ceiling": "--ceiling", "acquisition": "--acquisition", "consistency": "--consistency",
    "prototxt": "--prototxt", "model": "-m/--model", "init": "--init", "sigma": "--sigma",
    "shave": "--shave", "mask": "--mask", "mode": "--mode", "others": "-i/--other",
    "outputs": "-o/--output", "overrides": "--set", "output_template": "--output-template",
    "reference_pattern": "--reference-pattern", "suffix": "--suffix", "manifest": "--manifest",
    "patch_scales": "--set patch_scales", "max_iter": "--set max_iter", "batch": "--set batch",
    "isotropic": "--isotropic", "target_spacing": "--target-spacing",
    "adapt": "--adapt", "slice_thickness": "--slice-thickness", "auto_model": "--auto-model",
    "save_adapted": "--save-adapted",
    "bids_dir": "BIDS_DIR", "participant_label": "--participant-label",
    "session_label": "--session-label", "bids_filter_file": "--bids-filter-file",
}


def job_error_line(error: str, parameter: str | None) -> str:
    """A batch job's error (``manifest.Record``): the parameter it starts with shown as the
    option that sets it, as ``error_line`` does."""
    if parameter and error.startswith(f"{parameter}: "):
        return f"{OPTIONS.get(parameter, parameter)}: {error[len(parameter) + 2:]}"
    return error


def error_line(error: SrrecnnError) -> str:
    """The one line shown for a library error: its parameter as the option that sets it."""
    text = error.message
    if error.parameter:
        text = f"{OPTIONS.get(error.parameter, error.parameter)}: {text}"
    if isinstance(error, OutputExistsError):
        text += " (use --force to replace it)"
    return text


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def scale(text: str) -> tuple[float, float, float]:
    """A scale argument, parsed and checked by ``scales.parse_scale``."""
    from srrecnn_jax.scales import ScaleError, parse_scale

    try:
        return parse_scale(text)
    except ScaleError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def model(text: str) -> Path:
    """A model argument: a path, or a shipped model's name (``srrecnn models``)."""
    from srrecnn_jax.catalog import locate

    try:
        return locate(text)
    except SrrecnnError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def border(text: str) -> tuple[int, int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not x,y,z integers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or 3 non-negative integers")
    return (values[0], values[1], values[2])


def order(text: str) -> int:
    value = positive_int(text) if text != "0" else 0
    if value > 5:
        raise argparse.ArgumentTypeError(f"spline order must be 0 to 5, got {value}")
    return value


def shard(text: str) -> tuple[int, int]:
    """``I/N`` with 0 <= I < N: share I of N."""
    index, slash, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 0/4)") from None
    if not slash or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= I < N")
    return i, n


def walk_options(parser: argparse.ArgumentParser,
                 command: str = "") -> Iterator[tuple[str, argparse.Action]]:
    """Every argument of ``parser`` and of its subcommands, below it, as ``(command,
    action)``: the subcommands' names joined by spaces (empty for ``parser``'s own)."""
    for action in parser._actions:
        choices = action.choices if isinstance(action.choices, dict) else {}
        if choices and all(isinstance(p, argparse.ArgumentParser) for p in choices.values()):
            for name, sub in choices.items():
                yield from walk_options(sub, f"{command} {name}".strip())
        else:
            yield command, action


def add_renamed(parser, old: str, *flags: str, required: bool = False, **kwargs) -> None:
    """An option ``flags`` (``add_argument``'s ``kwargs``) that replaced the spelling
    ``old``, which is still accepted as a hidden alias (not in ``--help``) for the same
    ``dest``; ``required``: one of them must be given."""
    group = parser.add_mutually_exclusive_group(required=required)
    action = group.add_argument(*flags, **kwargs)
    group.add_argument(old, dest=action.dest, type=kwargs.get("type"),
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_distributed(group, share: str) -> None:
    """--distributed and its explicit coordinator options (sr batch mode, train)."""
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run with jax.distributed (Slurm, Open MPI "
                       "and similar detected, or --coordinator/--num-processes/--process-id);"
                       f" each process {share}")
    group.add_argument("--coordinator", help="HOST:PORT of process 0 (with --distributed)")
    group.add_argument("--num-processes", type=positive_int, help="with --distributed")
    group.add_argument("--process-id", type=int, help="with --distributed")
    group.add_argument("--distributed-timeout", type=positive_float, default=300,
                       metavar="SECONDS", help="with --distributed: how long to wait for "
                       "every process to join before giving up with an error (default 300)")


#: XLA flags the commands run with unless the user's XLA_FLAGS sets them: the CPU
#: scheduler that is not concurrency-optimised keeps fewer activations alive at once.
XLA_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)


def configure_jax() -> None:
    """Before JAX starts: add ``XLA_FLAGS`` the user has not set, and keep compiled
    networks in a persistent cache (``$XDG_CACHE_HOME/srrecnn-jax/xla``, default
    ``~/.cache``) unless ``JAX_COMPILATION_CACHE_DIR`` names one, so that a repeated run
    of a shape skips compiling (every compilation is kept unless
    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise). A cache folder
    that cannot be made is skipped."""
    flags = os.environ.get("XLA_FLAGS", "")
    missing = [f for f in XLA_FLAGS if f.split("=")[0] not in flags]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
    # Every compilation, however quick, is kept (JAX keeps only those over 1 s by
    # default): a warm start then compiles nothing, the zoom's small programs included.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                 ".cache")
        folder = os.path.join(root, "srrecnn-jax", "xla")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            return
        if os.access(folder, os.W_OK):
            os.environ["JAX_COMPILATION_CACHE_DIR"] = folder


def join_processes(args: argparse.Namespace, collectives: bool = True) -> tuple[int, int]:
    """``(process, count)``: joins the multi-process run with ``--distributed``, else (0, 1);
    ``collectives``: whether the processes will run computations together (training)."""
    if args.distributed:
        from srrecnn_jax import parallel

        def fail(message: str) -> None:
            print(f"srrecnn: error: {message}", file=sys.stderr, flush=True)

        return parallel.initialize(args.coordinator, args.num_processes, args.process_id,
                                   collectives, args.distributed_timeout, fail=fail)
    if args.coordinator or args.num_processes or args.process_id is not None:
        raise SrrecnnError("--coordinator/--num-processes/--process-id: need --distributed")
    return 0, 1


@contextlib.contextmanager
def stoppable(total: int, unit: str, quiet: bool,
              notice: str | None = None) -> Iterator[tuple[threading.Event, object]]:
    """A stop event that Ctrl-C and SIGTERM set (printing ``notice`` once), and a progress
    bar on stderr; both handlers are restored and the bar closed on the way out."""
    from tqdm import tqdm

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        if notice and not stop.is_set():
            print(notice, file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=total, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True)
    try:
        yield stop, bar
    finally:
        bar.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
