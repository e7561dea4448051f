"""The input dataset: pybids' index of it, and the scans a run takes (``Source``)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.structured import parse_json

#: The anatomical suffixes a run may take.
SUFFIXES = ("T1w", "T2w", "FLAIR", "PD")
#: The suffix of a two-channel model's second channel (its reference).
REFERENCE_SUFFIX = "T2w"
#: Image extensions taken (pybids' ``extension`` values).
EXTENSIONS = [".nii", ".nii.gz"]
#: Entities the input and its reference must share when the input has them.
PAIRED_ENTITIES = ("subject", "session", "run")
#: Folders of a raw dataset that hold no raw data (never indexed).
NOT_RAW = re.compile(r"^/(code|derivatives|models|sourcedata|stimuli)(/|$)")


@dataclasses.dataclass(frozen=True)
class Source:
    """One scan to super-resolve: its path, its path relative to the dataset, its BIDS
    entities (pybids' names), its reference (a two-channel model's T2w) and whether its
    metadata says it is skull-stripped."""

    path: Path
    relative: str
    entities: dict[str, Any]
    reference: Path | None = None
    reference_relative: str | None = None
    skull_stripped: bool = False


def strip_label(label: str, prefix: str) -> str:
    """A participant or session label given with or without its prefix (``sub-01``, ``01``)."""
    return label[len(prefix):] if label.startswith(prefix) else label


def check_dataset(bids_dir: Path) -> None:
    """Refuse a folder that is not a BIDS dataset (no ``dataset_description.json``)."""
    if not bids_dir.is_dir():
        raise SrrecnnError(f"{bids_dir}: no such folder", "bids_dir")
    if not (bids_dir / "dataset_description.json").is_file():
        raise SrrecnnError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)",
                           "bids_dir")


def index(bids_dir: Path, skip: Sequence[Path] = ()):
    """pybids' ``BIDSLayout`` of the raw dataset, unvalidated (the official validator does
    that), leaving out ``derivatives/`` and the other folders of no raw data, and the
    folders ``skip`` (the output, when it lies inside)."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    check_dataset(bids_dir)
    root = os.path.realpath(bids_dir)
    ignore: list = [NOT_RAW, re.compile(r"/\.")]
    for folder in skip:
        inside = os.path.realpath(folder)
        if os.path.commonpath([root, inside]) == root and inside != root:
            ignore.append(os.path.relpath(inside, root))
    try:
        return BIDSLayout(str(bids_dir), validate=False, derivatives=False,
                          indexer=BIDSLayoutIndexer(validate=False, ignore=ignore))
    except Exception as e:  # noqa: BLE001 - pybids raises many kinds on a bad dataset
        raise SrrecnnError(f"{bids_dir}: cannot index the dataset ({type(e).__name__}: "
                           f"{e})", "bids_dir") from None


def read_filters(path: Path) -> dict[str, dict[str, Any]]:
    """A filter file in fMRIPrep's format: ``{"t1w": {"acquisition": "mprage", ...}}``, one
    pybids query per suffix (lower case); ``null`` stands for an entity that must be
    absent and ``"*"`` for one that must be present."""
    try:
        filters = parse_json(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SrrecnnError(f"{path}: cannot read ({e.strerror or e})", "bids_filter_file") \
            from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SrrecnnError(f"{path}: not JSON ({e})", "bids_filter_file") from None
    known = {s.lower() for s in SUFFIXES}
    if not isinstance(filters, dict) or not all(isinstance(q, dict) for q in filters.values()):
        raise SrrecnnError(f"{path}: must be a JSON object of queries, e.g. "
                           '{"t1w": {"acquisition": "mprage"}}', "bids_filter_file")
    unknown = sorted(set(filters) - known)
    if unknown:
        raise SrrecnnError(f"{path}: unknown quer{'ies' if len(unknown) > 1 else 'y'} "
                           f"{', '.join(unknown)} (known: {', '.join(sorted(known))})",
                           "bids_filter_file")
    return filters


def _query(filters: dict[str, dict[str, Any]], suffix: str) -> dict[str, Any]:
    """pybids' query of one suffix: anatomical NIfTI images, with the filter file's
    entities for it (``null`` and ``"*"`` as pybids' ``Query.NONE`` and ``Query.ANY``)."""
    from bids.layout import Query

    query: dict[str, Any] = {"datatype": "anat", "suffix": suffix, "extension": EXTENSIONS}
    for entity, value in filters.get(suffix.lower(), {}).items():
        query[entity] = Query.NONE if value is None else Query.ANY if value == "*" else value
    return query


def check_labels(layout, participants: Sequence[str], sessions: Sequence[str]) -> None:
    """Refuse participant or session labels that the dataset does not have."""
    for labels, have, kind, parameter in (
            (participants, layout.get_subjects(), "participant", "participant_label"),
            (sessions, layout.get_sessions(), "session", "session_label")):
        missing = [label for label in labels if label not in have]
        if missing:
            raise SrrecnnError(f"{', '.join(missing)}: not in {layout.root} ({kind}s: "
                               f"{', '.join(sorted(have)) or 'none'})", parameter)


def select(layout, suffixes: Sequence[str], participants: Sequence[str] = (),
           sessions: Sequence[str] = (), filters: dict[str, dict[str, Any]] | None = None,
           paired: bool = False) -> list[Source]:
    """The scans of ``suffixes`` (of the ``participants`` and ``sessions`` given, all if
    none), each pybids query narrowed by ``filters``; with ``paired`` (a two-channel
    model), each with its ``REFERENCE_SUFFIX`` scan (``pair``)."""
    participants = [strip_label(p, "sub-") for p in participants]
    sessions = [strip_label(s, "ses-") for s in sessions]
    check_labels(layout, participants, sessions)
    filters = filters or {}
    narrow: dict[str, Any] = {}
    if participants:
        narrow["subject"] = participants
    if sessions:
        narrow["session"] = sessions
    found = []
    for suffix in suffixes:
        try:
            files = layout.get(**_query(filters, suffix), **narrow)
        except (ValueError, TypeError) as e:
            raise SrrecnnError(f"query {suffix.lower()}: {e}", "bids_filter_file") from None
        found += [_source(layout, f, filters if paired else None) for f in files]
    return sorted(found, key=lambda s: s.relative)


def _source(layout, file, filters: dict[str, dict[str, Any]] | None) -> Source:
    """A pybids file as a ``Source``; with ``filters``, paired with its reference."""
    path = Path(file.path)
    entities = {k: v for k, v in file.get_entities().items()}
    metadata = file.get_metadata()
    reference = pair(layout, file, filters) if filters is not None else None
    return Source(path, Path(file.relpath).as_posix(), entities, reference,
                  None if reference is None else
                  Path(os.path.relpath(reference, layout.root)).as_posix(),
                  bool(metadata.get("SkullStripped", False)))


def pair(layout, file, filters: dict[str, dict[str, Any]]) -> Path | None:
    """The ``REFERENCE_SUFFIX`` scan of the same subject, session and run as ``file`` (an
    entity the input lacks must be absent from it too), preferring one of the same
    acquisition; None if there is none. Several equally good candidates are an error
    that names them: the filter file chooses."""
    from bids.layout import Query

    entities = file.get_entities()
    query = _query(filters, REFERENCE_SUFFIX)
    for entity in PAIRED_ENTITIES:
        query[entity] = entities.get(entity, Query.NONE)
    candidates = layout.get(**query)
    if len(candidates) > 1 and "acquisition" in entities:
        same = [c for c in candidates if c.get_entities().get("acquisition")
                == entities["acquisition"]]
        candidates = same or candidates
    if len(candidates) > 1:
        names = ", ".join(sorted(Path(c.path).name for c in candidates))
        raise SrrecnnError(f"{file.path}: several {REFERENCE_SUFFIX} scans could be its "
                           f"reference ({names}); choose one with a "
                           f"{REFERENCE_SUFFIX.lower()} query", "bids_filter_file")
    return Path(candidates[0].path) if candidates else None
