"""The settings of one super-resolution, checked once when made: what ``srrecnn sr``
passes for a single file and for each job of a batch, and what the Python API builds
from its keywords (``SuperResolver.run(image, 2, tile=64)``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from srrecnn_jax.config import ACQUISITIONS, INTERPOLATIONS, PRECISIONS
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.scales import Scale, parse_scale

#: Output geometry (``geometry.zoomed_geometry``): ``consistent`` keeps the first and
#: last voxel centres where the zoom puts them; ``original`` writes ``spacing / scale``
#: as the original release did.
HEADERS = ("consistent", "original")

#: The output's default ceiling, as a multiple of the input's maximum. Above it a voxel is
#: the network over-sharpening a bright structure of a scan it was not trained for (the
#: 2 mm nibabel T1: 2.5x), not anatomy; on the held-out real scans clipping there never
#: lowered PSNR (docs/differences.md).
CEILING = 1.2


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How to super-resolve an image; a bad setting is a ``SrrecnnError`` naming it.

    Attributes:
      scale: (x, y, z) zoom factors; one number, ``"2,2,2.5"`` text or three numbers
        are taken and kept as the checked triple (``scales.parse_scale``).
      order: spline order of the zoom, 0 to 5.
      tile: tile edge in output voxels (exact: equals the whole-volume result), or None
        to let ``tiling.plan`` choose z slabs, the whole volume or tiles by memory.
      residual: add the interpolated image to the network output; None: the model's
        own ``residual``.
      header: output geometry, one of ``HEADERS``.
      precision: arithmetic of the convolutions, one of ``config.PRECISIONS``.
      interpolation: where the zoom runs, one of ``config.INTERPOLATIONS``.
      exact: convolutions exact to float32 rounding (``inference.conv_algorithm``) instead
        of the fastest algorithm (on CPU within 3e-5 of the output range).
      ceiling: clip the output at this multiple (>= 1) of the input's maximum; None: the
        release's range (clamped at the input's minimum only).
      acquisition: how the input was acquired, for the data-consistency projection of the
        network's output (``consistency.project``), one of ``config.ACQUISITIONS``:
        ``"none"`` (the release: no projection), ``"kspace"`` (a scanner's), ``"gaussian"``
        (the release's simulation).
      consistency: the projection's regularisation ``lam`` (>= 0; 0 exact); None: the
        acquisition's default (``consistency.DEFAULT_LAMBDA``).
    """

    scale: Scale
    order: int = 3
    tile: int | None = None
    residual: bool | None = None
    header: str = "consistent"
    precision: str = "fp32"
    interpolation: str = "device"
    exact: bool = False
    ceiling: float | None = CEILING
    acquisition: str = "none"
    consistency: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", parse_scale(self.scale))
        if not 0 <= self.order <= 5:
            raise SrrecnnError(f"spline order must be 0 to 5, got {self.order}", "order")
        if self.tile is not None and self.tile < 1:
            raise SrrecnnError(f"must be a positive number of voxels, got {self.tile}", "tile")
        if self.header not in HEADERS:
            raise SrrecnnError(f"must be one of {', '.join(HEADERS)}, not {self.header!r}",
                               "header")
        if self.precision not in PRECISIONS:
            raise SrrecnnError(f"precision must be one of {', '.join(PRECISIONS)}, "
                               f"not {self.precision!r}", "precision")
        if self.interpolation not in INTERPOLATIONS:
            raise SrrecnnError(f"must be one of {', '.join(INTERPOLATIONS)}, "
                               f"not {self.interpolation!r}", "interpolation")
        if self.ceiling is not None and not self.ceiling >= 1:  # NaN too
            raise SrrecnnError(f"must be at least 1 (a multiple of the input's maximum), "
                               f"got {self.ceiling}", "ceiling")
        if self.acquisition not in ACQUISITIONS:
            raise SrrecnnError(f"must be one of {', '.join(ACQUISITIONS)}, "
                               f"not {self.acquisition!r}", "acquisition")
        if self.consistency is not None and not self.consistency >= 0:  # NaN too
            raise SrrecnnError(f"must be 0 or more, got {self.consistency}", "consistency")
        if self.consistency is not None and self.acquisition == "none":
            raise SrrecnnError("sets the projection of an acquisition: give the acquisition "
                               "too, or it changes nothing", "consistency")

    @property
    def projecting(self) -> bool:
        """Whether the output is projected onto the input's acquisition
        (``consistency.project``), which needs more memory."""
        return self.acquisition != "none"

    @classmethod
    def of(cls, scale: InferenceOptions | float | str | Sequence[float],
           **settings) -> InferenceOptions:
        """Options from a scale and keyword settings (the fields above), or ``scale``
        itself when it is options already, ``settings`` replacing its fields: how every
        entry point of the Python API turns its arguments into options."""
        if isinstance(scale, cls):
            return dataclasses.replace(scale, **settings) if settings else scale
        return cls(scale, **settings)
