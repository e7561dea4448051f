"""Names in the derivative dataset: each output's path from its source's entities plus
``res-`` and ``desc-`` in the order the BIDS schema gives (``bidsschematools``, which
pybids ships with), its ``res-`` label, and BIDS URIs of the raw files."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

#: The ``desc-`` label of every output.
DESC = "srrecnn"
#: The name the raw dataset has in ``DatasetLinks`` and in BIDS URIs.
RAW = "raw"


@functools.cache
def entity_order() -> tuple[tuple[str, str], ...]:
    """``(name, key)`` of every filename entity in the schema's order, e.g.
    ``("acquisition", "acq")``, ``("resolution", "res")``."""
    from bidsschematools import schema

    loaded = schema.load_schema()
    return tuple((name, loaded.objects.entities[name].name) for name in loaded.rules.entities)


def resolution_label(scale: Sequence[float]) -> str:
    """The ``res-`` label of a scale: ``x2`` for 2 along every axis, ``x1x1x4`` for
    ``1,1,4``; a decimal point is written ``p`` (``x2p5``)."""
    factors = [f"{s:g}".replace(".", "p") for s in scale]
    return f"x{factors[0]}" if len(set(factors)) == 1 else "".join(f"x{f}" for f in factors)


def isotropic_label(target: float | None = None) -> str:
    """The ``res-`` label of outputs made isotropic (each source's factors from its own
    header): ``iso`` at each source's in-plane spacing, ``iso0p8mm`` at a ``target`` of
    0.8 mm."""
    if target is None:
        return "iso"
    millimetres = f"{round(float(target), 4):f}".rstrip("0").rstrip(".")  # never 1e-05
    return f"iso{millimetres.replace('.', 'p')}mm"


def derivative_path(entities: dict[str, Any], resolution: Sequence[float] | str,
                    extension: str = ".nii.gz") -> PurePosixPath:
    """``sub-XX/[ses-YY/]anat/<entities>_res-<label>_desc-srrecnn_<suffix><extension>``:
    the source's filename entities (pybids' names) with ``resolution`` (a scale, whose
    label ``resolution_label`` gives, or the label itself) and ``description`` added, in
    the schema's order."""
    label = resolution if isinstance(resolution, str) else resolution_label(resolution)
    named = {**entities, "resolution": label, "description": DESC}
    parts = [f"{key}-{named[name]}" for name, key in entity_order() if name in named]
    folder = PurePosixPath(f"sub-{entities['subject']}")
    if "session" in entities:
        folder /= f"ses-{entities['session']}"
    return folder / "anat" / ("_".join(parts + [str(entities["suffix"])]) + extension)


def bids_uri(relative: str, dataset: str = RAW) -> str:
    """A BIDS URI of a file of ``dataset``: ``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``."""
    return f"bids:{dataset}:{relative}"
