"""Shared fixtures: real scans from installed packages, the original weights from ../shared."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

# Two CPU devices, set before JAX starts, so multi-device code runs without a GPU.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from srrecnn_jax import sources
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.images import to_image

REPO = Path(__file__).resolve().parents[1]
SHARED_CAFFE = sources.RELEASE_DIR
MONO = sources.RELEASE[1]["file"]
MULTI = sources.RELEASE[2]["file"]
SRCNN = "SRCNN3D_iter_470000.caffemodel"


def package_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package; skip the test if absent."""
    try:
        return sources.package_data(package, relative)
    except SrrecnnError as e:
        pytest.skip(str(e))


@pytest.fixture
def caffe_dir() -> Path:
    """The original release's weights (../shared/caffe); skip when absent (a user's clone)."""
    if not (SHARED_CAFFE / MONO).is_file():
        pytest.skip("../shared/caffe (original weights) is not available")
    return SHARED_CAFFE


@pytest.fixture
def anatomical_path() -> Path:
    """nibabel's real 2 mm T1 (33 x 41 x 25, int16)."""
    return package_file("nibabel", "tests/data/anatomical.nii")


@pytest.fixture
def anatomical(anatomical_path: Path) -> sitk.Image:
    return sitk.ReadImage(str(anatomical_path))


@pytest.fixture
def mni_t1_path() -> Path:
    """nilearn's MNI ICBM152 2009a T1 at 1 mm (197 x 233 x 189, uint8)."""
    return package_file(*sources.MNI_2009A_T1)


def checkpoints_script(name: str):
    """A script of ``checkpoints/scripts/`` (``evaluate``, ``export``) imported as a module."""
    path = REPO / "checkpoints" / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crop(image: sitk.Image, lower: tuple[int, int, int], size: tuple[int, int, int]) -> sitk.Image:
    """A sub-volume (x, y, z index ranges) keeping its physical position."""
    return image[lower[0]:lower[0] + size[0], lower[1]:lower[1] + size[1],
                 lower[2]:lower[2] + size[2]]


def write(image_or_array, path: Path, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Write an image, or an (x, y, z) array with identity direction, to ``path``."""
    if isinstance(image_or_array, np.ndarray):
        image_or_array = to_image(image_or_array, spacing, (0.0, 0.0, 0.0),
                                     (1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(image_or_array, str(path))
    return path


def small_residual(params: dict) -> dict:
    """``params`` with the last layer scaled down by 100: like a trained residual network,
    the output stays near the interpolated input (He-initialised, a random network
    overshoots the input's maximum many times, and the output's ceiling would clip and
    warn on every run)."""
    last = params[f"conv{len(params)}"]
    last["kernel"], last["bias"] = last["kernel"] / 100, last["bias"] / 100
    return params


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random models saved once: ``mono`` (1 channel) and ``multi`` (2 channels), with
    a small residual (``small_residual``)."""
    import jax

    from srrecnn_jax import config, model
    from srrecnn_jax.checkpoint import LoadedModel, save_model

    root = tmp_path_factory.mktemp("models")
    folders = {}
    for name, channels in (("mono", 1), ("multi", 2)):
        cfg = config.tiny(in_channels=channels)
        params = small_residual(model.init(jax.random.PRNGKey(0), cfg))
        folders[name] = save_model(root / name, LoadedModel(params, cfg))
    return folders

_CACHE: list[str] = []


def pytest_configure(config) -> None:
    """One compilation cache for the whole test run, inherited by the xdist workers and
    every subprocess the tests start (fresh interpreters would otherwise compile the
    same tiny networks again). Set before any test module imports JAX (the workers start
    after this, with this environment); a user's own cache is kept.

    JAX writes a cache entry in place, unlocked, unless the cache has a size limit: a
    process reading an entry another one is writing gets it truncated (JAX warns on
    stderr and compiles again). With a limit (never reached here) JAX holds a file lock
    (the filelock package) around every read and write of the cache."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        _CACHE.append(tempfile.mkdtemp(prefix="srrecnn-jax-cache-"))
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE[0]
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
        if importlib.util.find_spec("filelock") is not None:
            os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(64 << 30))


def pytest_unconfigure(config) -> None:
    for folder in _CACHE:
        shutil.rmtree(folder, ignore_errors=True)


def same_conv_float64(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """SAME 3x3x3 correlation in float64: the sum over taps of shifted inputs times taps."""
    b, nx, ny, nz, _ = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, nx, ny, nz, w.shape[4]))
    for i, j, k in np.ndindex(3, 3, 3):
        out += padded[:, i:i + nx, j:j + ny, k:k + nz] @ w[i, j, k].astype(np.float64)
    return out


@pytest.fixture
def blob_scan(tmp_path) -> Path:
    """A 20 x 22 x 18 (x, y, z) Gaussian blob with a ripple along x, as a NIfTI file: a
    small smooth scan for the self-check (``sr --check``, ``--auto-model``)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in (20, 22, 18)],
                                indexing="ij"))
    values = np.exp(-(grid ** 2).sum(0)) * (1 + 0.2 * np.sin(5 * grid[0]))
    return write(values.astype(np.float32), tmp_path / "scan.nii.gz")
