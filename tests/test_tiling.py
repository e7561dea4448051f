"""Tiled inference equals whole-volume inference, borders included.

Tiny models with random, non-zero biases, so that padding mistakes at the
volume borders change the result. Tolerance: 1e-5 of the output's range.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srrecnn_jax import config as configs
from srrecnn_jax import inference, model, tiling
from srrecnn_jax.checkpoint import LoadedModel, load_model, save_model
from srrecnn_jax.config import ModelConfig

TOLERANCE = 1e-5


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    params = model.init(jax.random.PRNGKey(seed), cfg)
    rng = np.random.default_rng(seed)
    return {name: {"kernel": np.asarray(layer["kernel"]),
                   "bias": rng.normal(0, 0.3, layer["bias"].shape).astype(np.float32)}
            for name, layer in params.items()}


SAME = configs.tiny()
EDGE_VALID = ModelConfig(kernels=(5, 1, 3), filters=(6, 4, 1), residual=False,
                         padding="edge_valid")
MULTI = configs.tiny(in_channels=2)
# Hidden layers wide enough for the CPU's Winograd layers (conv.winograd_applies), which
# the slabs run with a zero x and y border kept between layers (conv.relu_layer_slab).
WIDE = configs.recnn(layers=4, filters=8)


def lr_volume(shape, seed=1) -> np.ndarray:
    """A smooth positive volume, like an MR image (x, y, z)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(0, 3, n) for n in shape), indexing="ij")
    return (100 + 50 * np.sin(grid[0]) * np.cos(grid[1]) + 20 * grid[2]
            + rng.normal(0, 5, shape)).astype(np.float32)


def assert_close(tiled: np.ndarray, whole: np.ndarray) -> None:
    span = whole.max() - whole.min()
    assert np.abs(tiled - whole).max() <= TOLERANCE * span


@pytest.mark.parametrize("scale", [(2, 2, 2), (3, 3, 3), (2.5, 2.5, 2.5), (2, 2, 2.5),
                                   (1, 1, 2)])
@pytest.mark.parametrize("cfg", [SAME, EDGE_VALID], ids=["same", "edge_valid"])
def test_tiled_equals_whole_volume(cfg, scale):
    """Odd sizes, tiles that do not divide the volume, every scale of the issue."""
    params = random_params(cfg)
    lr = lr_volume((7, 6, 5))
    whole = inference.super_resolve_array(params, cfg, lr, scale)
    tiled = inference.super_resolve_array(params, cfg, lr, scale, tile=5)
    assert_close(tiled, whole)


def test_tiled_multimodal_equals_whole_volume():
    """Two input channels ([interp, reference]) tile the same way."""
    params = random_params(MULTI)
    lr = lr_volume((6, 7, 5))
    reference = lr_volume((12, 14, 10), seed=2)
    whole = inference.super_resolve_array(params, MULTI, lr, (2, 2, 2), reference)
    tiled = inference.super_resolve_array(params, MULTI, lr, (2, 2, 2), reference, tile=4)
    assert_close(tiled, whole)


@pytest.mark.parametrize("tile", [1, 3, 8, 100])
def test_any_tile_size_gives_the_whole_result(tile):
    """From one-voxel tiles to a tile larger than the volume."""
    params = random_params(SAME)
    volume = lr_volume((9, 8, 7))[..., None] / 200
    whole = tiling.run_network(params, SAME, volume)
    assert_close(tiling.run_network(params, SAME, volume, tile=tile), whole)


def test_border_needs_per_layer_zero_padding():
    """Zero-padding the input once is not the same network: the tiles must do better."""
    params = random_params(SAME)
    volume = lr_volume((9, 8, 7))[..., None] / 200
    r = SAME.receptive_radius
    padded = np.pad(volume, [(r, r)] * 3 + [(0, 0)])
    once = np.asarray(model.forward(params, padded[None], "VALID"))[0, ..., 0] + volume[..., 0]
    whole = tiling.run_network(params, SAME, volume)
    assert np.abs(once - whole).max() > 100 * TOLERANCE * (whole.max() - whole.min())


def new_compilations(run) -> list[tuple[int, ...]]:
    """The network input shapes compiled while ``run()`` runs, from an empty cache."""
    jax.clear_caches()
    before = len(tiling.compiled_shapes())
    run()
    return tiling.compiled_shapes()[before:]


def test_tiles_compile_once():
    """All tiles of a run share one shape (tile plus halo): a single compilation."""
    params = random_params(SAME, seed=3)
    volume = lr_volume((11, 10, 9))[..., None] / 200
    r = SAME.receptive_radius
    shapes = new_compilations(lambda: tiling.run_network(params, SAME, volume, tile=4))
    assert shapes == [(1, 4 + 2 * r, 4 + 2 * r, 4 + 2 * r, 1)]  # 3 x 3 x 3 tiles


def test_volume_with_no_room_for_a_slab_is_tiled(monkeypatch):
    """With no tile given and a budget below three planes, exact tiles of MIN_TILE."""
    params = random_params(SAME)
    volume = lr_volume((20, 18, 17))[..., None] / 200
    whole = whole_volume(params, SAME, volume)
    r = SAME.receptive_radius
    budget = 1000 * tiling.bytes_per_voxel_channel() * max(SAME.filters)
    monkeypatch.setattr(tiling, "memory_budget", lambda: budget)
    shapes = new_compilations(lambda: assert_close(tiling.run_network(params, SAME, volume,
                                                                      residual=False),
                                                   whole))
    edge = tiling.MIN_TILE + 2 * r
    assert shapes == [(1, edge, edge, edge, 1)]


def whole_volume(params, cfg, volume):
    """The network without residual on the whole volume at once (model.apply)."""
    y = model.apply(params, jnp.asarray(volume)[None], dataclasses.replace(cfg, residual=False))
    return np.asarray(y)[0, ..., 0]


@pytest.mark.parametrize("planes", [1, 3, 4, 30])
@pytest.mark.parametrize("cfg", [SAME, EDGE_VALID, MULTI, WIDE],
                         ids=["same", "edge_valid", "multi", "wide"])
def test_z_slabs_give_the_whole_volume_result(cfg, planes):
    """Slabs thinner than a kernel, not dividing the depth, or deeper than the volume."""
    params = random_params(cfg)
    volume = np.stack([lr_volume((9, 8, 11), seed=s) for s in range(cfg.in_channels)], -1) / 200
    assert_close(tiling.run_slabs(params, cfg, volume, planes), whole_volume(params, cfg, volume))


@pytest.mark.parametrize("cfg", [SAME, WIDE], ids=["same", "wide"])
def test_z_slabs_with_an_in_plane_bucket_give_the_whole_volume_result(cfg):
    params = random_params(cfg)
    volume = lr_volume((9, 8, 11))[..., None] / 200
    assert_close(tiling.run_slabs(params, cfg, volume, 4, bucket=8),
                 whole_volume(params, cfg, volume))


def test_volumes_of_any_depth_share_one_slab_compilation():
    """The slab shape depends on the in-plane bucket only."""
    params = random_params(SAME, seed=5)

    def run():
        for shape in [(9, 8, 5), (12, 11, 23), (16, 16, 40)]:
            tiling.run_slabs(params, SAME, lr_volume(shape)[..., None] / 200, 6, bucket=16)

    assert new_compilations(run) == [(1, 16, 16, 6, 1)]


def test_a_model_folder_shares_the_slab_compilation_of_its_parameters(tmp_path, caplog):
    """A model folder loads as NumPy arrays, as a caffemodel does: its volume, three slabs
    deep, runs on the compilations the same parameters in memory made, one per distinct
    layer (device arrays changed the call's signature: more compilations)."""
    params = random_params(SAME, seed=6)
    loaded = load_model(save_model(tmp_path / "m", LoadedModel(params, SAME))).params
    volume = lr_volume((9, 8, 14))[..., None] / 200
    jax.clear_caches()

    def compiled() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("Compiling") and "_slab_layer" in r.getMessage()]

    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        expected = tiling.run_slabs(params, SAME, volume, 6)
        first = compiled()
        np.testing.assert_array_equal(tiling.run_slabs(loaded, SAME, volume, 6), expected)
    assert len(first) == 3  # the first, hidden and last layers of the tiny model
    assert compiled() == first


def test_plan_on_cpu_is_slabs_of_slab_planes_or_fewer_when_memory_is_short():
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU plan")
    cfg = configs.recnn()
    per_plane = (200 + 20) * (240 + 20) * tiling.bytes_per_voxel_channel() * 64
    assert tiling.plan(cfg, (200, 240, 190), budget=1 << 40) == ("slabs", tiling.SLAB_PLANES)
    assert tiling.plan(cfg, (200, 240, 190), budget=7 * per_plane) == ("slabs", 5)


def test_plan_spreads_a_single_volumes_depth_evenly_over_its_slabs():
    """170 planes and a receptive radius of 10 stream 180 planes: 12 slabs of 15, not 16
    (whose last would be mostly empty); in a bucket the slab shape stays fixed."""
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU plan")
    cfg = configs.recnn()
    assert tiling.plan(cfg, (200, 240, 170), budget=1 << 40) == ("slabs", 15)
    assert tiling.plan(cfg, (200, 240, 170), bucket=8, budget=1 << 40) == \
        ("slabs", tiling.SLAB_PLANES)


def test_plan_on_an_accelerator_runs_what_fits_whole(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cfg = configs.recnn()
    per_voxel = tiling.bytes_per_voxel_channel() * 64
    assert tiling.plan(cfg, (100, 100, 100), budget=120 ** 3 * per_voxel) == ("whole", None)
    assert tiling.plan(cfg, (100, 100, 100), budget=119 ** 3 * per_voxel)[0] == "slabs"


def test_memory_budget_on_cpu_is_half_the_available_host_memory(monkeypatch):
    if jax.local_devices()[0].memory_stats():
        pytest.skip("the device reports its own memory: the accelerator rule applies")
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert tiling.memory_budget() == 1000 * 4096 // 2


def test_auto_tile_is_none_when_the_volume_fits():
    assert tiling.auto_tile(SAME, (50, 50, 50), budget=1 << 30) is None


def test_auto_tile_fits_the_budget():
    """The chosen tile plus its halo fits the budget (or is the 16-voxel minimum)."""
    cfg = configs.recnn()
    budget = 2 << 30
    edge = tiling.auto_tile(cfg, (400, 400, 400), budget=budget)
    per_voxel = tiling.bytes_per_voxel_channel() * 64
    assert edge is not None and (edge + 2 * cfg.receptive_radius) ** 3 * per_voxel <= budget


@pytest.mark.parametrize("cfg", [SAME, EDGE_VALID], ids=["same", "edge_valid"])
def test_padding_to_a_bucket_leaves_the_result_unchanged(cfg):
    """A whole volume padded to a multiple of 16 voxels gives the unpadded result."""
    params = random_params(cfg)
    volume = lr_volume((9, 8, 7))[..., None] / 200
    exact = tiling.run_network(params, cfg, volume)
    assert_close(tiling.run_network(params, cfg, volume, bucket=16), exact)


def test_volumes_in_one_bucket_share_one_compilation():
    """Whatever ran before, and whether or not a volume fills its bucket exactly."""
    params = random_params(SAME, seed=4)

    def run():
        for shape in [(9, 8, 7), (12, 11, 10), (16, 16, 16)]:
            tiling.run_network(params, SAME, lr_volume(shape)[..., None] / 200, bucket=16)

    assert len(new_compilations(run)) == 1


def test_tiles_spread_over_devices_give_the_whole_result():
    """Tiles dispatched round robin to every local device (2 forced CPU devices here)."""
    if len(jax.local_devices()) < 2:
        pytest.skip("needs two local devices (tests/conftest.py forces two CPU devices)")
    params = random_params(SAME)
    volume = lr_volume((11, 9, 8))[..., None] / 200
    whole = tiling.run_network(params, SAME, volume)
    spread = tiling.run_network(params, SAME, volume, tile=4, devices=jax.local_devices())
    assert_close(spread, whole)
