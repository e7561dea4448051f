"""The Python API: SuperResolver for images, super_resolve_array for arrays."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import crop

import srrecnn_jax
from srrecnn_jax import config as configs
from srrecnn_jax import model
from srrecnn_jax.checkpoint import LoadedModel, load_model, save_model
from srrecnn_jax.cli import main
from srrecnn_jax.images import to_array, to_image
from srrecnn_jax.inference import SuperResolver, super_resolve_array


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    cfg = configs.tiny()
    params = model.init(jax.random.PRNGKey(0), cfg)
    params["conv3"]["bias"] = params["conv3"]["bias"] + 0.05
    return save_model(tmp_path_factory.mktemp("m") / "tiny", LoadedModel(params, cfg))


def test_package_exports_the_api():
    assert srrecnn_jax.SuperResolver is SuperResolver
    assert srrecnn_jax.super_resolve_array is super_resolve_array


def test_run_returns_the_same_image_as_the_cli(tiny_model, anatomical, tmp_path):
    lr = crop(anatomical, (5, 5, 5), (9, 8, 7))
    sitk.WriteImage(lr, str(tmp_path / "lr.nii.gz"))
    assert main(["sr", str(tmp_path / "lr.nii.gz"), "-o", str(tmp_path / "sr.nii.gz"),
                 "-m", str(tiny_model), "-s", "2,2,2.5"]) == 0
    from_cli = sitk.ReadImage(str(tmp_path / "sr.nii.gz"))
    from_api = SuperResolver.load(tiny_model).run(lr, (2, 2, 2.5))
    assert from_api.GetPixelID() == sitk.sitkFloat32
    assert from_api.GetSize() == from_cli.GetSize() == (18, 16, 18)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_api),
                                  sitk.GetArrayFromImage(from_cli))


def test_output_scales_with_the_input(tiny_model):
    """Normalisation by the maximum makes the pipeline homogeneous: f(c x) = c f(x)."""
    loaded = load_model(tiny_model)
    x = np.random.default_rng(0).uniform(10, 100, (6, 5, 4)).astype(np.float32)
    y = super_resolve_array(loaded.params, loaded.config, x, (2, 2, 2))
    y7 = super_resolve_array(loaded.params, loaded.config, 7 * x, (2, 2, 2))
    np.testing.assert_allclose(y7, 7 * y, rtol=1e-5)


def test_output_is_clamped_at_the_input_minimum(tiny_model):
    loaded = load_model(tiny_model)
    x = np.random.default_rng(1).uniform(-50, 100, (6, 5, 4)).astype(np.float32)
    y = super_resolve_array(loaded.params, loaded.config, x, (2, 2, 2))
    assert y.min() == np.float32(x.min())


def test_no_residual_drops_the_interpolated_image(tiny_model):
    loaded = load_model(tiny_model)
    x = np.random.default_rng(2).uniform(10, 100, (6, 5, 4)).astype(np.float32)
    with_residual = super_resolve_array(loaded.params, loaded.config, x, 2)
    without = super_resolve_array(loaded.params, loaded.config, x, 2, residual=False)
    assert not np.allclose(with_residual, without)


def test_array_input_must_be_finite(tiny_model):
    loaded = load_model(tiny_model)
    x = np.ones((5, 5, 5), np.float32)
    x[2, 2, 2] = np.nan
    with pytest.raises(srrecnn_jax.SrrecnnError, match="non-finite"):
        super_resolve_array(loaded.params, loaded.config, x, 2)


def test_images_round_trip_in_x_y_z_order():
    """to_array gives (x, y, z): SimpleITK index (i, j, k) is array[i, j, k]."""
    image = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    image.SetPixel((3, 1, 2), 9.0)
    array = to_array(image)
    assert array.shape == (4, 5, 6) and array[3, 1, 2] == 9.0
    back = to_image(array, image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    assert back.GetPixel((3, 1, 2)) == 9.0
