"""Resuming a batch: what made an output, and whether an existing one can be kept.

Each output's manifest row records the facts that decide its voxels (``job_facts``); a
rerun keeps an existing output only when its latest row records this run's facts and
the file still reads back as written (``redo_reason``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.images import image_size
from srrecnn_jax.inference_options import InferenceOptions
from srrecnn_jax.jobs import Job
from srrecnn_jax.writing import stored_bytes


def source_facts(path: Path | None) -> dict | None:
    """How a rerun tells that an input (or reference) is still the one an output was made
    from: a file's size and modification time; for a folder (DICOM series), its file
    count and a digest of its files' names, sizes and times. None if it cannot be read."""
    if path is None:
        return None
    try:
        if path.is_dir():
            digest, files = hashlib.sha256(), 0
            for entry in sorted(path.iterdir()):
                info = entry.stat()
                digest.update(os.fsencode(entry.name) + f":{info.st_size}:"
                              f"{info.st_mtime_ns}\n".encode())
                files += 1
            return {"files": files, "digest": digest.hexdigest()}
        info = path.stat()
        return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}
    except OSError:
        return None


def job_facts(job: Job, options: InferenceOptions, model: str, *, isotropic: bool = False,
              target_spacing: float | None = None, adapt: float | None = None,
              slice_thickness: float | None = None) -> dict:
    """What decides an output's voxels: its input and reference (``source_facts``), the
    model (``checkpoint.fingerprint``), the scale and the options that change the result
    (not ``tile``, nor the batch's ``bucket`` and ``readers``: they leave it unchanged).
    With ``isotropic`` the scale is each input's own (from its header, which its source
    facts cover): ``scale`` is None, and ``isotropic`` and ``target_spacing`` are
    recorded; with ``adapt`` (fine-tuning on the scan, seconds) the budget and
    ``slice_thickness``; with a data-consistency ``acquisition``, it and its
    ``consistency``. Those six are recorded only when set, so that the facts of
    other outputs are those earlier versions recorded (``_UNRECORDED``).
    Recorded with each output in the manifest; a rerun redoes an output whose facts
    differ."""
    facts = {"input": source_facts(job.input), "reference": source_facts(job.reference),
             "model": model, "scale": None if isotropic else list(options.scale),
             "order": options.order, "residual": options.residual, "header": options.header,
             "precision": options.precision, "interpolation": options.interpolation,
             "exact": options.exact, "ceiling": options.ceiling}
    if isotropic:
        facts |= {"isotropic": True, "target_spacing": target_spacing}
    if adapt is not None:
        facts |= {"adapt": adapt, "slice_thickness": slice_thickness}
    if options.projecting:
        facts |= {"acquisition": options.acquisition, "consistency": options.consistency}
    return json.loads(json.dumps(facts))  # as a manifest row reads back (lists, not tuples)


#: What a fact of None means, where it is not "default".
_NONE = {"scale": "each input's own (isotropic)", "target_spacing": "the in-plane spacing",
         "adapt": "off", "slice_thickness": "the slice spacing",
         "consistency": "the acquisition's default"}


def _shown(value, key: str = "") -> str:
    if value is None and key in _NONE:
        return _NONE[key]
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return ",".join(f"{v:g}" for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return "default" if value is None else str(value)


#: Facts of outputs recorded before the fact was: versions before ``exact`` ran every
#: convolution exactly (Winograd F(2, 3) on CPU), and before ``ceiling`` had none; and
#: the facts recorded only when set (``job_facts``): what an output made without them
#: records by leaving them out.
_UNRECORDED = {"exact": True, "ceiling": None, "isotropic": False, "target_spacing": None,
               "adapt": None, "slice_thickness": None, "acquisition": "none",
               "consistency": None}


def changed_facts(old: dict, new: dict) -> list[str]:
    """What differs between the recorded facts of an output and this run's, in words."""
    changes = []
    keys = list(new) + [k for k in old if k not in new and k in _UNRECORDED]
    for key in keys:
        value = new.get(key, _UNRECORDED.get(key))
        was = old.get(key, _UNRECORDED.get(key))
        if was == value:
            continue
        if key in ("input", "reference"):
            changes.append(f"the {key} changed since" if was else f"no {key} was recorded")
        elif key == "model":
            changes.append(f"made by another model (sha256 {str(was)[:12]}, now "
                           f"{value[:12]})")
        else:
            changes.append(f"{key} was {_shown(was, key)}, now {_shown(value, key)}")
    return changes


def recorded_outputs(rows: Sequence[dict]) -> dict[str, dict]:
    """The latest ``ok`` or ``skipped`` row of each output (by its real path) in manifest
    rows ordered oldest first: what the file there was made from."""
    latest = {}
    for row in rows:
        if row.get("status") in ("ok", "skipped") and row.get("output"):
            latest[os.path.realpath(row["output"])] = row
    return latest


def redo_reason(output: Path, facts: dict, row: dict | None) -> str | None:
    """Why the existing ``output`` cannot be kept, or None: it was made by ``facts``
    (``row``, its latest manifest row, records the same facts) and still reads back as
    written (same bytes on disk, a header with the recorded size)."""
    if row is None or not row.get("job"):
        return "the manifest has no record of how it was made"
    changes = changed_facts(row["job"], facts)
    if changes:
        return "; ".join(changes)
    try:
        size = stored_bytes(output)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if size != row.get("output_bytes"):
        return f"it is {size} bytes, {row.get('output_bytes')} were written (cut short or replaced)"
    try:
        shape = list(image_size(output, "output image"))
    except SrrecnnError:
        return "its header cannot be read"
    if shape != row.get("shape"):
        return f"its header says {_shown(shape)} voxels, {_shown(row.get('shape'))} were written"
    return None
