"""Each output's JSON sidecar, from its manifest row: BIDS's ``Sources``, ``Resolution``,
``SkullStripped`` and ``Description``, and the run's facts as ``Srrecnn*`` fields."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax.bids.naming import bids_uri, isotropic_label, resolution_label
from srrecnn_jax.writing import write_text_atomic

#: The manifest row's facts a sidecar carries, and their names there.
CHECKS = {"noise_percent": "SrrecnnNoisePercent", "self_check_gain_db": "SrrecnnSelfCheckGainDb",
          "self_check_psf": "SrrecnnSelfCheckPsf", "falloff": "SrrecnnFalloff"}


def sidecar_path(output: Path) -> Path:
    """``x.nii.gz`` -> ``x.json``."""
    name = output.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return output.with_name(name[:-len(ext)] + ".json")
    return output.with_suffix(".json")


def made_rows(rows: Sequence[dict]) -> dict[str, dict]:
    """For each output (its real path), the manifest row of the run that wrote it as it is
    now: the latest ``ok`` row whose job facts equal those of the output's latest row
    (a skipped rerun records no checks of its own). Outputs whose latest row is an error,
    or has no matching ``ok`` row, are left out."""
    latest: dict[str, dict] = {}
    written: dict[str, list[dict]] = {}
    for row in rows:  # oldest first (``manifest.history``)
        key = os.path.realpath(row.get("output", ""))
        latest[key] = row
        if row.get("status") == "ok":
            written.setdefault(key, []).append(row)
    made = {}
    for key, row in latest.items():
        if row.get("status") not in ("ok", "skipped"):
            continue
        match = [r for r in written.get(key, []) if r.get("job") == row.get("job")]
        if match:
            made[key] = match[-1]
    return made


def _voxel(spacing: Sequence[float] | None) -> list[float] | None:
    return None if spacing is None else [round(float(s), 6) for s in spacing]


def _finer(scale: Sequence[float]) -> str:
    if len(set(scale)) == 1:
        return f"{scale[0]:g} times finer along each axis"
    return f"{', '.join(f'{s:g}' for s in scale)} times finer along x, y, z"


def _resolution(job: dict, scale: Sequence[float], input_spacing: Sequence[float],
                output_spacing: Sequence[float] | None) -> dict:
    """``Resolution``: what the output's ``res-`` label means. A scale's label
    (``resolution_label``) is how much finer the output is; an isotropic run's
    (``isotropic_label``: factors from each source's header) is its voxel size, with
    this output's factors."""
    voxels = "x".join(f"{s:g}" for s in output_spacing or [])
    finer = (f"{_finer(scale)} than the source: voxels of {voxels} mm from "
             f"{'x'.join(f'{s:g}' for s in _voxel(input_spacing))} mm")
    if not job.get("isotropic"):
        return {resolution_label(scale): finer}
    target = job.get("target_spacing")
    size = (f"{target:g} mm" if target is not None
            else f"the source's in-plane voxel size, {min(_voxel(input_spacing)):g} mm")
    return {isotropic_label(target): f"isotropic at {size} (factors from the source's "
                                     f"header): {finer}"}


def _adapt(job: dict, row: dict) -> dict:
    """With fine-tuning on the scan, its budget and the row's facts (``SrrecnnAdapt``)."""
    if job.get("adapt") is None:
        return {}
    facts = {"BudgetSeconds": job["adapt"], "SliceThicknessMm": job.get("slice_thickness")}
    done = row.get("adapt") or {}
    names = {"seconds": "Seconds", "steps": "Steps", "best_step": "BestStep", "kept": "Kept",
             "fwhm_voxels": "FwhmVoxels"}
    facts |= {name: done.get(key) for key, name in names.items()}
    psnr = done.get("heldout_psnr") or {}
    facts["HeldoutPsnrDb"] = {k.capitalize(): psnr.get(k) for k in ("spline", "start",
                                                                     "adapted")}
    return {"SrrecnnAdapt": facts}


def sidecar(row: dict, source: str, reference: str | None, input_spacing: Sequence[float],
            model: str, version: str, skull_stripped: bool = False) -> dict:
    """The sidecar of the output that ``row`` (a manifest row, see ``made_rows``) records;
    ``source`` and ``reference``: the input's and reference's paths in the raw dataset;
    ``input_spacing``: the input's voxel size (mm); ``model``: the model's name. The
    scale is the one the row records using (``--isotropic``: this input's own)."""
    job = row.get("job") or {}
    scale = row.get("scale") or job.get("scale") or [1, 1, 1]
    output_spacing = _voxel(row.get("spacing"))
    factors = "x".join(f"{s:g}" for s in scale)
    sources = [bids_uri(source)] + ([bids_uri(reference)] if reference else [])
    adapted = _adapt(job, row)
    tuned = ""
    if adapted:
        kept = adapted["SrrecnnAdapt"]["Kept"]
        tuned = (" after fine-tuning on the scan ("
                 + ("adapted weights used" if kept else "not better: the model as trained")
                 + ")")
    facts = {
        "Description": f"Super-resolved by SRReCNN3D (srrecnn-jax {version}, model {model}) "
                       f"at {factors}" + (" with the T2w as second channel" if reference
                                         else "") + tuned,
        "Sources": sources,
        "Resolution": _resolution(job, scale, input_spacing, output_spacing),
        "SkullStripped": skull_stripped,
        "SrrecnnModel": model, "SrrecnnModelSHA256": job.get("model"),
        "SrrecnnScale": scale, "SrrecnnPrecision": job.get("precision"),
        "SrrecnnCeiling": job.get("ceiling"), "SrrecnnInterpolationOrder": job.get("order"),
        "SrrecnnAcquisition": job.get("acquisition", "none"),
        "SrrecnnVersion": version,
        "SrrecnnInputVoxelSize": _voxel(input_spacing),
        "SrrecnnOutputVoxelSize": output_spacing,
        "SrrecnnOutputShape": row.get("shape"),
    }
    facts |= adapted
    facts |= {name: row.get(key) for key, name in CHECKS.items()}
    facts["SrrecnnWarnings"] = list(row.get("warnings") or [])
    return facts


def write_sidecar(path: Path, facts: dict) -> bool:
    """Write ``facts`` to ``path`` atomically unless it holds them already (a rerun leaves
    it untouched); True if written."""
    text = json.dumps(facts, indent=2, ensure_ascii=False) + "\n"
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    write_text_atomic(path, text)
    return True
