"""--precision and --interpolation: what each costs, and that the CLI passes them through."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, package_file, write

from srrecnn_jax import cli, conv, model, sources
from srrecnn_jax import config as configs
from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.degradation import degrade
from srrecnn_jax.images import to_array
from srrecnn_jax.inference import super_resolve_array
from srrecnn_jax.metrics import psnr

#: The shipped 5-layer, 16-filter x2 model: a real trained model, quick on a CPU.
SHIPPED = REPO / "checkpoints" / "mni_x2" / "model"


@pytest.fixture(scope="module")
def mni_case():
    """A 48^3 crop of the 1 mm MNI T1 around the ventricles, degraded x2, and the
    project's shipped x2 model."""
    path = package_file(*sources.MNI_2009A_T1)
    hr = to_array(sitk.ReadImage(str(path)))[74:122, 92:140, 80:128]
    lr, hr = degrade(hr, (2, 2, 2))
    loaded = load_model(SHIPPED)
    return lr, hr, jax.tree_util.tree_map(jnp.asarray, loaded.params), loaded.config


def test_bf16_costs_under_a_twentieth_of_a_db(mni_case):
    lr, hr, params, cfg = mni_case
    exact = psnr(super_resolve_array(params, cfg, lr, 2, precision="fp32"), hr)
    approx = psnr(super_resolve_array(params, cfg, lr, 2, precision="bf16"), hr)
    assert abs(approx - exact) < 0.05


def test_device_interpolation_matches_scipy_through_the_pipeline(mni_case):
    lr, _, params, cfg = mni_case
    device = super_resolve_array(params, cfg, lr, 2, interpolation="device")
    scipy = super_resolve_array(params, cfg, lr, 2, interpolation="scipy")
    assert np.abs(device - scipy).max() <= 1e-5 * float(scipy.max() - scipy.min())


def test_bf16_keeps_the_first_layer_in_float32():
    """A one-layer network reads the intensities only: bf16 gives the fp32 result exactly,
    while the same convolution in bf16 does not (intensities not representable in 8 bits)."""
    cfg = ModelConfig(kernels=(3,), filters=(1,), residual=False)
    params = model.init(jax.random.PRNGKey(0), cfg)
    x = jnp.asarray(np.random.default_rng(0).random((1, 8, 8, 8, 1)) * 0.9 + 0.05, jnp.float32)
    fp32 = model.apply(params, x, cfg, precision="fp32")
    np.testing.assert_array_equal(model.apply(params, x, cfg, precision="bf16"), fp32)
    rounded = conv.conv3d(x, params["conv1"]["kernel"], "SAME", "bf16")
    assert not np.array_equal(rounded + params["conv1"]["bias"], fp32)


def test_bf16_rounds_the_hidden_layers():
    cfg = configs.tiny()
    params = model.init(jax.random.PRNGKey(0), cfg)
    x = jnp.asarray(np.random.default_rng(0).random((1, 8, 8, 8, 1)), jnp.float32)
    fp32 = model.apply(params, x, cfg, precision="fp32")
    bf16 = model.apply(params, x, cfg, precision="bf16")
    assert 0 < float(jnp.abs(bf16 - fp32).max()) < 1e-2 * float(jnp.abs(fp32).max())


def test_cli_sr_takes_precision_and_interpolation(models, tmp_path, capsys):
    volume = np.random.default_rng(0).random((10, 11, 12)).astype(np.float32) * 100
    source = write(volume, tmp_path / "lr.nii.gz")
    outputs = {}
    for name, extra in (("default", []), ("bf16", ["--precision", "bf16"]),
                        ("scipy", ["--interpolation", "scipy"])):
        out = tmp_path / f"{name}.nii.gz"
        assert cli.main(["sr", str(source), "-o", str(out), "-m", str(models["mono"]),
                         "-s", "2", *extra]) == 0
        outputs[name] = to_array(sitk.ReadImage(str(out)))
    span = float(outputs["default"].max() - outputs["default"].min())
    assert np.abs(outputs["scipy"] - outputs["default"]).max() <= 1e-5 * span
    assert 0 < np.abs(outputs["bf16"] - outputs["default"]).max() <= 1e-2 * span


def test_cli_refuses_an_unknown_precision(models, tmp_path, capsys):
    source = write(np.ones((6, 6, 6), np.float32), tmp_path / "lr.nii.gz")
    with pytest.raises(SystemExit) as stop:
        cli.main(["sr", str(source), "-o", str(tmp_path / "o.nii.gz"), "-m",
                  str(models["mono"]), "-s", "2", "--precision", "fp16"])
    assert stop.value.code != 0
    assert "--precision" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
