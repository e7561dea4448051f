"""``srrecnn bids BIDS_DIR OUTPUT_DIR participant|group``: a BIDS App. The participant
level super-resolves the chosen anatomical scans with the batch pipeline into a
BIDS-Derivatives dataset (sidecars, dataset files, QC pages); the group level writes the
report of every output (``index.html``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from srrecnn_jax.cli import common, sr_adapt
from srrecnn_jax.cli.sr import _add_inference
from srrecnn_jax.errors import SrrecnnError

LEVELS = ("participant", "group")
SUFFIXES = ("T1w", "T2w", "FLAIR", "PD")  # as srrecnn_jax.bids.layout.SUFFIXES
WORK = "srrecnn_work"


def add_to(commands) -> None:
    p = commands.add_parser("bids", help="super-resolve a BIDS dataset into a "
                            "BIDS-Derivatives dataset (a BIDS App)",
                            description="A BIDS App: super-resolve the anatomical scans of a "
                            "raw BIDS dataset (indexed with pybids) into a BIDS-Derivatives "
                            "dataset that the official validator accepts, with a JSON "
                            "sidecar per output and a QC page per subject (participant "
                            "level), and a table of every output (group level). Runs the "
                            "batch pipeline: resumable, a manifest, --shard.")
    p.add_argument("bids_dir", type=Path, metavar="BIDS_DIR", help="the raw BIDS dataset")
    p.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR",
                   help="the derivative dataset to write (e.g. BIDS_DIR/derivatives/srrecnn)"
                   "; not the input dataset nor a folder of it other than derivatives/")
    p.add_argument("analysis_level", choices=LEVELS,
                   help="participant: super-resolve and write each subject's outputs and "
                   "page; group: write index.html over every output")
    _add_selection(p.add_argument_group("what to process"))
    p.add_argument("-m", "--model", type=common.model,
                   help="as in `srrecnn sr` (participant level); a two-channel model (e.g. "
                   "multi-x2) takes each T1w with the T2w of the same subject, session "
                   "and run as its second channel")
    _add_inference(p)
    sr_adapt.add_options(p.add_argument_group("fine-tuning on each scan (--adapt)"), save=False)
    _add_run(p.add_argument_group("the run"))
    p.set_defaults(run=run)


def _add_selection(g) -> None:
    g.add_argument("--participant-label", nargs="+", default=[], metavar="LABEL",
                   help="the subjects to process, with or without sub- (default: all)")
    g.add_argument("--session-label", nargs="+", default=[], metavar="LABEL",
                   help="the sessions to process, with or without ses- (default: all)")
    g.add_argument("--suffix", nargs="+", choices=SUFFIXES, default=["T1w"],
                   help="the scans to super-resolve, by BIDS suffix (default T1w)")
    g.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                   help="JSON in fMRIPrep's format narrowing each suffix's pybids query, "
                   'e.g. {"t1w": {"acquisition": "mprage", "run": 1}, "t2w": {...}} (null: '
                   'the entity must be absent; "*": present)')


def _add_run(g) -> None:
    g.add_argument("--work-dir", type=Path, metavar="DIR",
                   help=f"where the batch manifest goes (default OUTPUT_DIR/{WORK}, which "
                   ".bidsignore lists)")
    g.add_argument("--skip-bids-validation", action="store_true",
                   help="do not run the BIDS validator (bids-validator-deno) on the input")
    g.add_argument("--shard", type=common.shard, metavar="I/N",
                   help="take share I of N (0 <= I < N) of the sorted scans, as `sr --shard`"
                   " (independent processes); run the group level once all have ended")
    g.add_argument("--force", action="store_true",
                   help="redo every output (otherwise an output the manifest records as "
                   "made by the same job is kept)")
    g.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="estimate each input's noise and predict by a self-check whether the "
                   "model beats cubic spline on it, into its sidecar (default: on)")
    g.add_argument("--workers", type=common.positive_int, default=2,
                   help="threads reading and interpolating ahead of the device (default 2)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or warnings")


def _needs_pybids() -> None:
    try:
        import bids  # noqa: F401
    except ImportError:
        raise SrrecnnError("pybids is not installed: pip install 'srrecnn-jax[bids]'") \
            from None


def _check_places(args: argparse.Namespace) -> None:
    """Refuse an output folder that is the input dataset, a folder of it other than
    ``derivatives/``, or one that holds it; and a work folder inside the input."""
    raw = os.path.realpath(args.bids_dir)
    for path, name in ((args.output_dir, "OUTPUT_DIR"), (args.work_dir, "--work-dir")):
        where = os.path.realpath(path)
        if os.path.commonpath([raw, where]) == where:
            raise SrrecnnError(f"{name}: {path} is or holds the input dataset {args.bids_dir}")
        inside = os.path.relpath(where, raw)
        if not inside.startswith("..") and inside.split(os.sep)[0] != "derivatives":
            raise SrrecnnError(f"{name}: {path} is inside the input dataset; write below "
                               f"{Path(args.bids_dir) / 'derivatives'} or elsewhere")


def run(args: argparse.Namespace) -> int:
    _needs_pybids()
    from srrecnn_jax.bids.layout import check_dataset

    check_dataset(args.bids_dir)
    args.work_dir = args.work_dir or args.output_dir / WORK
    _check_places(args)
    from srrecnn_jax.cli import bids_run

    if args.analysis_level == "group":
        return bids_run.group(args)
    return bids_run.participant(args)
