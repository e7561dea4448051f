"""The CPU default (Winograd F(4, 3)) stays within 3e-5 of the output range of exact
arithmetic on real brains, through whole networks, as ``srrecnn sr`` runs them (z slabs).

The reference is the independent float64 NumPy network of ``benchmarks/reference.py``.
``exact`` (F(2, 3)) is held to float32 rounding: 2e-6 of the range.
"""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import MONO

from benchmarks.reference import reference_network
from srrecnn_jax.caffe import load_caffemodel
from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.degradation import degrade
from srrecnn_jax.images import to_array
from srrecnn_jax.interpolation import zoom
from srrecnn_jax.tiling import run_network

SHIPPED = Path(__file__).parent.parent / "checkpoints" / "mni_x2" / "model"
#: Of the output range: the project's bound for an algorithm that is not exact.
BOUND = {"auto": 3e-5, "exact": 2e-6}


@pytest.fixture
def brain(mni_t1_path: Path) -> np.ndarray:
    """A 30 x 34 x 24 crop of the MNI T1 around the ventricles, degraded x2 by the
    observation model and zoomed back (the network's input), (x, y, z) in [0, 1]."""
    hr = to_array(sitk.ReadImage(str(mni_t1_path))).astype(np.float32)
    hr = hr[84:114, 100:134, 86:110] / hr.max()
    lr, hr = degrade(hr, (2, 2, 2))
    return zoom(lr, [a / b for a, b in zip(hr.shape, lr.shape)], 3).astype(np.float32)


def _error(params, config, volume: np.ndarray, algorithm: str) -> float:
    y = run_network(params, config, volume[..., None], algorithm=algorithm)
    exact = reference_network({n: {k: np.asarray(v, np.float64) for k, v in layer.items()}
                               for n, layer in params.items()},
                              volume[..., None].astype(np.float64), False) + volume
    return float(np.abs(y - exact).max() / (exact.max() - exact.min()))


@pytest.mark.parametrize("algorithm", ["auto", "exact"])
def test_shipped_model_on_a_real_brain(brain, algorithm):
    loaded = load_model(SHIPPED)
    assert _error(loaded.params, loaded.config, brain, algorithm) < BOUND[algorithm]


@pytest.mark.parametrize("algorithm", ["auto", "exact"])
def test_original_weights_on_a_real_brain(brain, caffe_dir, algorithm):
    loaded = load_caffemodel(caffe_dir / MONO)
    assert _error(loaded.params, loaded.config, brain, algorithm) < BOUND[algorithm]
