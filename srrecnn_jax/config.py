"""Model configuration: the architecture of an SRReCNN3D / SRCNN3D network."""

from __future__ import annotations

import dataclasses
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
        if len(self.kernels) != len(self.filters) or not self.kernels:
            raise ValueError("kernels and filters need one entry per layer")
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ValueError(f"kernel sizes must be odd and positive: {self.kernels}")
        if any(f < 1 for f in self.filters):
            raise ValueError(f"filters must be positive: {self.filters}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {self.in_channels}")
        if self.padding not in ("same", "edge_valid"):
            raise ValueError(f"unknown padding scheme {self.padding!r}")

    @property
    def layers(self) -> int:
        return len(self.kernels)

    @property
    def out_channels(self) -> int:
        return self.filters[-1]

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
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        d = dict(d)
        d["kernels"], d["filters"] = tuple(d["kernels"]), tuple(d["filters"])
        return cls(**d)

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
