"""How a batch runs each job (``Options``): the inference settings, the batch's own,
and the settings that act on each input on its own (``isotropic``, ``adapt``)."""

from __future__ import annotations

import dataclasses

import SimpleITK as sitk

from srrecnn_jax.adapt import thick_axis
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.inference_options import InferenceOptions
from srrecnn_jax.scales import Scale, isotropic_factors, positive_number


@dataclasses.dataclass(frozen=True)
class Options:
    """How to run each job: the inference settings of every job, and the batch's own
    (see ``srrecnn sr --help``): ``bucket`` (pad volumes to a multiple of this many
    voxels, so nearby sizes share one compilation), ``overwrite`` (redo every existing
    output), ``readers`` (reader threads), ``prefetch`` (volumes queued between
    stages) and ``check`` (each input's self-check, ``guardrails.check_scan``, in its row
    beside the noise estimate every row has).

    Per-input settings: ``isotropic`` takes each job's factors from its own header
    (``scales.isotropic_factors`` at ``target_spacing`` mm, default its in-plane
    spacing) instead of ``inference.scale``, which is then not used; ``adapt`` (seconds)
    fine-tunes the model on each job's own scan before its network run (``adapt.adapt``,
    the slice profile's FWHM ``slice_thickness`` mm, default the slice spacing), for that
    job only. A bad combination is a ``SrrecnnError`` naming the setting."""

    inference: InferenceOptions
    bucket: int = 8
    overwrite: bool = False
    readers: int = 2
    prefetch: int = 2
    check: bool = False
    isotropic: bool = False
    target_spacing: float | None = None
    adapt: float | None = None
    slice_thickness: float | None = None

    def __post_init__(self) -> None:
        for name in ("target_spacing", "adapt", "slice_thickness"):
            value = getattr(self, name)
            if value is not None and not positive_number(value):
                raise SrrecnnError(f"must be a positive number, got {value}", name)
        if self.target_spacing is not None and not self.isotropic:
            raise SrrecnnError("applies with isotropic only", "target_spacing")
        if self.slice_thickness is not None and self.adapt is None:
            raise SrrecnnError("applies with adapt only (without it the network runs as "
                               "trained, for one slice profile)", "slice_thickness")
        if self.adapt is not None:
            if self.inference.residual is False:
                raise SrrecnnError("fine-tunes the model as trained, with its residual",
                                   "adapt")
            if not self.isotropic:
                thick_axis(self.inference.scale)  # one thick axis, or every job would fail

    def factors(self, image: sitk.Image) -> Scale:
        """The (x, y, z) zoom factors of a job's input: ``inference.scale``, or with
        ``isotropic`` those of its own header (``SrrecnnError`` naming ``isotropic`` when
        its geometry is ambiguous)."""
        if not self.isotropic:
            return self.inference.scale
        return isotropic_factors(image.GetSize(), image.GetSpacing(), self.target_spacing)

    def resume_facts(self) -> dict:
        """The per-input settings' part of ``resume.job_facts``."""
        return {"isotropic": self.isotropic, "target_spacing": self.target_spacing,
                "adapt": self.adapt, "slice_thickness": self.slice_thickness}
