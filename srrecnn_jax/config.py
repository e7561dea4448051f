"""Model configuration: the architecture of an SRReCNN3D / SRCNN3D network."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any, Literal

Padding = Literal["same", "edge_valid"]

#: Arithmetic of the convolutions (see ``conv``): ``fp32`` float32 products and sums;
#: ``tf32`` XLA's default float32 precision (TF32 tensor-core products on recent NVIDIA
#: GPUs, the same as fp32 on CPU); ``bf16`` bfloat16 operands with float32 sums, the
#: first layer kept float32.
PRECISIONS = ("fp32", "tf32", "bf16")
#: Where the cubic-spline zoom runs: ``device`` (three per-axis matrix products in JAX,
#: on the GPU when there is one; equal to scipy to float32 rounding) or ``scipy`` (the
#: original's ``scipy.ndimage.zoom``, on the host).
INTERPOLATIONS = ("device", "scipy")
#: How an input was acquired, for the data-consistency projection of the network's
#: output (``consistency.project``): ``none`` leaves the output as the network made it.
ACQUISITIONS = ("none", "kspace", "gaussian", "slice_profile")
#: The projection's ``lam`` when none is given, per acquisition: chosen on the real
#: scans' training slabs (``sources.REAL_HELD_OUT`` left out, Colin27 never seen), x2,
#: ``real-x2``, noise 0 to 3 % of the maximum. ``kspace`` 0.3: +0.26 dB over the
#: network alone on average over the 12 scan x noise cells (+1.0 on the stroke T2
#: without noise, -0.6 on the contrast-enhanced T1 at 3 %). ``gaussian`` 1.0: the
#: Gaussian's inverse amplifies noise, so only a noise-free input gains from a small
#: ``lam`` (+1.5 dB at 0.001 there, -8 dB at 3 % noise); 1.0 is level with the network
#: alone on average. ``slice_profile`` 1.0 (``thick-slice`` at 1x1x2, 4 and 4.4 along z
#: and y, 17 cells): +0.15 to +0.77 dB over the network alone without noise (0 gives
#: +0.23 to +1.2 there); at 1x1x4 with noise, +0.02 to +0.20 at 1 %, -0.08 to +0.07 at
#: 2 %, -0.21 to -0.06 at 3 % (0 gives down to -0.71 at 3 %).
DEFAULT_LAMBDA = {"kspace": 0.3, "gaussian": 1.0, "slice_profile": 1.0}
PADDINGS = ("same", "edge_valid")

#: The largest architecture accepted, wherever it comes from (a caffemodel, a model or
#: training run folder, training settings): at most ``MAX_LAYERS`` convolutions with at
#: most ``MAX_FILTERS`` channels in or out and kernels of at most ``MAX_KERNEL``^3, and
#: at most ``MAX_PARAMETERS`` parameters in all. The published models have 3 to 10
#: layers of at most 64 filters and kernels of at most 9^3; far beyond the limits,
#: compiling the network alone takes minutes to hours and its parameters and
#: activations outgrow memory.
MAX_LAYERS = 100
MAX_FILTERS = 1024
MAX_KERNEL = 15
MAX_PARAMETERS = 2**27


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a chain of 3-D convolutions with ReLU between them.

    Attributes:
      kernels: kernel edge per layer (cubic kernels), e.g. (3,) * 10.
      filters: output channels per layer; the last is the number of output
        channels (1 for every published model).
      in_channels: input channels: 1 (monomodal) or 2 (``[interp, ref]``).
      residual: add the interpolated input (channel 0) to the network output.
      padding: ``"same"`` zero-pads every layer by (k - 1) / 2 (SRReCNN3D);
        ``"edge_valid"`` edge-replicates the input by the receptive radius and
        runs valid convolutions (the original SRCNN3D GPU path).
    """

    kernels: tuple[int, ...]
    filters: tuple[int, ...]
    in_channels: int = 1
    residual: bool = True
    padding: Padding = "same"

    def __post_init__(self) -> None:
        """Check every field's type and range (``ValueError`` naming the field), and
        normalise ``kernels`` and ``filters`` to tuples of ints."""
        for name in ("kernels", "filters"):
            values = getattr(self, name)
            if not isinstance(values, tuple | list) or not all(map(_is_int, values)):
                raise ValueError(f"{name} must be a list of whole numbers, got {values!r}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        if not _is_int(self.in_channels):
            raise ValueError(f"in_channels must be a whole number, got {self.in_channels!r}")
        object.__setattr__(self, "in_channels", int(self.in_channels))
        if not isinstance(self.residual, bool):
            raise ValueError(f"residual must be true or false, got {self.residual!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, "
                             f"got {self.padding!r}")
        if len(self.kernels) != len(self.filters) or not self.kernels:
            raise ValueError("kernels and filters need one entry per layer")
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ValueError(f"kernel sizes must be odd and positive: {list(self.kernels)}")
        if any(f < 1 for f in self.filters):
            raise ValueError(f"filters must be positive: {list(self.filters)}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {self.in_channels}")
        self._check_limits()

    def _check_limits(self) -> None:
        """Refuse an architecture beyond ``MAX_LAYERS``, ``MAX_KERNEL``, ``MAX_FILTERS`` or
        ``MAX_PARAMETERS``."""
        if self.layers > MAX_LAYERS:
            raise ValueError(f"layers: {self.layers} convolutions, more than the "
                             f"{MAX_LAYERS} supported")
        if max(self.kernels) > MAX_KERNEL:
            raise ValueError(f"kernels: a {max(self.kernels)}^3 kernel, larger than the "
                             f"{MAX_KERNEL}^3 supported")
        widest = max(max(self.filters), self.in_channels)
        if widest > MAX_FILTERS:
            raise ValueError(f"filters: {widest} channels, more than the {MAX_FILTERS} "
                             "supported")
        if self.parameters > MAX_PARAMETERS:
            raise ValueError(f"filters: {self.parameters:,} parameters, more than the "
                             f"{MAX_PARAMETERS:,} supported")

    @property
    def layers(self) -> int:
        return len(self.kernels)

    @property
    def out_channels(self) -> int:
        return self.filters[-1]

    @property
    def parameters(self) -> int:
        """Number of parameters: the kernels and biases of every layer."""
        channels = (self.in_channels,) + self.filters[:-1]
        return sum(k ** 3 * c * f + f for k, c, f in zip(self.kernels, channels, self.filters))

    @property
    def receptive_radius(self) -> int:
        """Voxels on each side of an output voxel that can influence it."""
        return sum((k - 1) // 2 for k in self.kernels)

    @property
    def receptive_field(self) -> int:
        return 2 * self.receptive_radius + 1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kernels"], d["filters"] = list(self.kernels), list(self.filters)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """The form ``to_dict`` writes: ``kernels`` and ``filters`` lists required, the
        other fields optional; unknown keys and values of the wrong type (a float or
        bool ``filters``, a string ``residual``) raise ``ValueError`` naming the key."""
        if not isinstance(d, Mapping):
            raise ValueError(f"expected a table of {', '.join(cls.field_names())}, "
                             f"got {d!r}")
        unknown = sorted(map(str, set(d) - set(cls.field_names())))
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        missing = [name for name in ("kernels", "filters") if name not in d]
        if missing:
            raise ValueError(f"missing model config keys: {missing}")
        return cls(**d)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def describe(self) -> str:
        """One line such as ``10 layers 3^3 x 64 filters, 1 -> 1 channels``."""
        ks = sorted(set(self.kernels))
        if len(ks) == 1 and len(set(self.filters[:-1])) <= 1:
            hidden = self.filters[0] if self.layers > 1 else self.out_channels
            body = f"{self.layers} layers {ks[0]}^3 x {hidden} filters"
        else:
            body = " -> ".join(f"{k}^3x{f}" for k, f in zip(self.kernels, self.filters))
        return (f"{body}, {self.in_channels} -> {self.out_channels} channels, "
                f"padding {self.padding}, residual {'on' if self.residual else 'off'}")


def _is_int(value: Any) -> bool:
    """A whole number: an int (or NumPy integer), not a bool or a float."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def recnn(layers: int = 10, filters: int = 64, kernel: int = 3, in_channels: int = 1,
          residual: bool = True) -> ModelConfig:
    """SRReCNN3D: ``layers`` same-padded k^3 convolutions, the last with one output."""
    return ModelConfig(kernels=(kernel,) * layers, filters=(filters,) * (layers - 1) + (1,),
                       in_channels=in_channels, residual=residual, padding="same")


def srcnn3d() -> ModelConfig:
    """The original SRCNN3D: 9^3 x 64 -> 1^3 x 32 -> 5^3 x 1, edge-padded, no residual."""
    return ModelConfig(kernels=(9, 1, 5), filters=(64, 32, 1), in_channels=1,
                       residual=False, padding="edge_valid")


def tiny(in_channels: int = 1) -> ModelConfig:
    """A 3-layer, 4-filter ReCNN for tests."""
    return recnn(layers=3, filters=4, kernel=3, in_channels=in_channels)
