"""The FLOP convention of every suite, and the rates derived from a timing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from srrecnn_jax import interpolation
from srrecnn_jax.config import ModelConfig

#: Stated in the JSON and in the table's header.
CONVENTION = {
    "inference": "2 * k^3 * sum over layers of C_in * C_out FLOP per output voxel "
                 "(multiply-adds of the 3x3x3 convolutions; biases, ReLU and residual not "
                 "counted): 2*27*(C_in*F + (L-2)*F*F + F*1) for L layers of F filters, "
                 "1.78 MFLOP/voxel for 10L-64. Tiled runs count output voxels only (the "
                 "halo's recomputation is not counted).",
    "train": "3 x the forward FLOPs of the batch (forward + backward w.r.t. activations and "
             "w.r.t. weights), i.e. 3 * inference FLOP/voxel * B * P^3; the optimizer update "
             "and the loss are not counted.",
    "interp": "2 * the multiply-adds of the three dense per-axis contractions that the "
              "on-device zoom executes (each axis a (n_out, n_in) matrix, cheapest order); "
              "scipy's own arithmetic differs, so its rate is given in voxels/s only.",
    "units": "TFLOP/s = FLOPs / median seconds / 1e12; fraction_of_ceiling = that rate / "
             "the square-matmul ceiling measured in the same run at the same precision.",
}

RATIO_CONVENTION = ("speed ratio = reference median seconds / JAX median seconds "
                    "(> 1: JAX is faster); the reference is PyTorch for inference and train, "
                    "scipy.ndimage.zoom for interp.")


def network_flops_per_voxel(config: ModelConfig) -> int:
    """Forward FLOPs per output voxel of a same-padded model."""
    total, c_in = 0, config.in_channels
    for k, c_out in zip(config.kernels, config.filters):
        total += 2 * k ** 3 * c_in * c_out
        c_in = c_out
    return total


def train_flops(config: ModelConfig, batch: int, patch: int) -> int:
    return 3 * network_flops_per_voxel(config) * batch * patch ** 3


def zoom_flops(shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """FLOPs of the on-device zoom's three dense per-axis contractions."""
    return 2 * interpolation.zoom_multiply_adds(shape, out_shape)


def rates(median_s: float, voxels: int, flops: int | None,
          ceiling_tflops: float | None) -> dict[str, Any]:
    """voxels/s, TFLOP/s and the fraction of the ceiling for one timing."""
    tflops = None if flops is None else flops / median_s / 1e12
    fraction = (tflops / ceiling_tflops if tflops is not None and ceiling_tflops else None)
    return {"voxels_per_s": voxels / median_s, "tflops": tflops,
            "fraction_of_ceiling": fraction}
