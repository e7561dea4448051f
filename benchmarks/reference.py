"""An independent float64 reference of the network: NumPy shifted tensordots.

Cross-correlation as Caffe and Lasagne compute it, sharing no code with the
package's model, so that agreement with it checks the package (the parity
tests) and the networks timed here (``float64_max_rel_diff`` of small cases,
checked in CI where PyTorch is absent). Arrays are (x, y, z, channels).
"""

from __future__ import annotations

import numpy as np


def correlate_layer(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Valid 3-D cross-correlation of (X, Y, Z, Cin) with (k, k, k, Cin, Cout), float64."""
    k = kernel.shape[0]
    out_shape = tuple(n - k + 1 for n in x.shape[:3])
    out = np.zeros(out_shape + (kernel.shape[4],))
    for dx in range(k):
        for dy in range(k):
            for dz in range(k):
                window = x[dx:dx + out_shape[0], dy:dy + out_shape[1], dz:dz + out_shape[2]]
                out += np.tensordot(window, kernel[dx, dy, dz], axes=([3], [0]))
    return out + bias


def reference_network(params: dict, x: np.ndarray, edge_padded: bool) -> np.ndarray:
    """ReLU between layers; 'same' zero padding per layer, or SRCNN3D's edge pad + valid."""
    names = sorted(params, key=lambda n: int(n[4:]))
    if edge_padded:
        r = sum((params[n]["kernel"].shape[0] - 1) // 2 for n in names)
        x = np.pad(x, [(r, r)] * 3 + [(0, 0)], mode="edge")
    for i, name in enumerate(names):
        kernel = params[name]["kernel"].astype(np.float64)
        if not edge_padded:
            p = (kernel.shape[0] - 1) // 2
            x = np.pad(x, [(p, p)] * 3 + [(0, 0)])
        x = correlate_layer(x, kernel, params[name]["bias"].astype(np.float64))
        if i < len(names) - 1:
            x = np.maximum(x, 0)
    return x[..., 0]
