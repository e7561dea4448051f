"""The benchmark command: ``python -m benchmarks run`` (smoke sizes; timings not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", "run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def has_zoom_device() -> bool:
    from srrecnn_jax import interpolation

    return hasattr(interpolation, "zoom_device")


@pytest.fixture(scope="module")
def smoke_all(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """``run --suite all --smoke`` (with PyTorch when installed), once for the tests that
    read it: the finished process and its JSON."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = bench("--suite", "all", "--smoke", "--json", str(out))
    assert result.returncode == 0, result.stderr
    return result, json.loads(out.read_text())


@pytest.mark.slow
def test_smoke_run_of_every_suite_writes_json_and_a_table(smoke_all):
    result, data = smoke_all

    for key in ("command", "date_utc", "machine", "versions", "devices", "flop_convention",
                "ceilings", "cases"):
        assert key in data
    assert "2*27*(C_in*F + (L-2)*F*F + F*1)" in data["flop_convention"]["inference"]
    assert "3 x the forward FLOPs" in data["flop_convention"]["train"]
    assert data["ceilings"]["fp32"]["tflops"] > 0
    assert data["failed"] == []

    cases = data["cases"]
    assert {c["suite"] for c in cases} == {"inference", "train", "interp"}
    for case in cases:
        jax_side = case["jax"]
        assert jax_side["voxels_per_s"] > 0, case["name"]
        assert jax_side["tflops"] > 0, case["name"]
        assert jax_side["fraction_of_ceiling"] > 0, case["name"]
        assert jax_side["repeats"] >= 2, case["name"]
        assert jax_side["min_s"] <= jax_side["median_s"] <= jax_side["max_s"]
        if case["suite"] == "inference":  # rates follow from the median time
            assert jax_side["voxels_per_s"] == pytest.approx(
                case["output_voxels"] / jax_side["median_s"], rel=1e-9)
            assert jax_side["tflops"] == pytest.approx(
                case["flops"] / jax_side["median_s"] / 1e12, rel=1e-9)
            ceiling = data["ceilings"][case["precision"]]["tflops"]
            assert jax_side["fraction_of_ceiling"] == pytest.approx(
                jax_side["tflops"] / ceiling, rel=1e-9)
        assert jax_side["memory"]["bytes"] > 0
        torch_side = case["torch"]  # timed, or null with a reason (no PyTorch in CI)
        assert torch_side.get("skipped") or torch_side["timing"]["median_s"] > 0
        assert case["name"] in result.stdout, "the table names every case"

    (interp,) = [c for c in cases if c["suite"] == "interp"]
    assert interp["scipy"]["voxels_per_s"] > 0
    if has_zoom_device():
        assert interp["max_rel_diff"] <= 1e-5

    infer = [c for c in cases if c["suite"] == "inference" and not c["tile"]][0]
    assert infer["flops"] == infer["flop_per_output_voxel"] * infer["output_voxels"]
    # 3 layers of 8 filters: 2 * 27 * (1*8 + 8*8 + 8*1) flops per output voxel.
    assert infer["flop_per_output_voxel"] == 2 * 27 * (8 + 64 + 8)


@pytest.mark.slow
def test_timed_networks_agree_with_a_float64_reference(smoke_all):
    """What the benchmark times is the right network, with or without PyTorch (the float64
    comparison does not use it; CI has none): every smoke inference case (whole and
    tiled) within 1e-5 of the output range in fp32, 1e-2 in bf16, of an independent
    float64 NumPy network."""
    cases = [c for c in smoke_all[1]["cases"] if c["suite"] == "inference"]
    assert {c["precision"] for c in cases} == {"fp32", "bf16"} and any(c["tile"] for c in cases)
    for case in cases:
        limit = 1e-5 if case["precision"] == "fp32" else 1e-2
        assert case["float64_max_rel_diff"] <= limit, case["name"]


@pytest.mark.slow
def test_torch_reference_agrees_with_jax(smoke_all):
    """Where PyTorch is installed: every whole-volume fp32 inference case agrees with it."""
    pytest.importorskip("torch")
    cases = [c for c in smoke_all[1]["cases"] if c["suite"] == "inference" and not c["tile"]
             and c["precision"] == "fp32"]
    assert cases
    for case in cases:
        assert case["torch"]["agreement_max_rel_diff"] < 1e-4
        assert case["speed_ratio"] > 0
        assert case["torch"]["memory_format"] in ("contiguous", "channels_last_3d")
        # The ratio comes from runs taken in turns with PyTorch, as many as PyTorch's.
        assert case["jax"]["timed"] == "in turns with PyTorch"
        assert len(case["jax"]["seconds"]) == len(case["torch"]["timing"]["seconds"])
        assert case["speed_ratio"] == pytest.approx(
            case["torch"]["timing"]["median_s"] / case["jax"]["median_s"])
        assert case["jax"]["alone"]["median_s"] > 0


def test_alternating_measurement_takes_the_calls_in_turns():
    from benchmarks.timing import measure_alternating

    log = []
    calls = {name: (lambda name=name: log.append(name), lambda out: out) for name in "ab"}
    timed = measure_alternating(calls, repeats=3)
    assert log == ["a", "b", "a", "b", "a", "b"]
    assert [len(timed[n].seconds) for n in "ab"] == [3, 3]


@pytest.mark.slow
def test_unknown_suite_is_a_one_line_error():
    result = bench("--suite", "bogus")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bogus" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_without_torch_the_torch_columns_give_a_reason(tmp_path):
    out = tmp_path / "bench.json"
    result = bench("--suite", "interp", "--smoke", "--no-torch", "--json", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["options"]["torch_skipped"] == "disabled with --no-torch"
    assert [c["name"] for c in data["cases"]] == ["interp_20_x2"]


@pytest.mark.slow
def test_whole_brain_smoke_runs_both_pipelines_and_records_start_up(tmp_path):
    """``python -m benchmarks.whole_brain --smoke``: a 16^3 MNI crop through ``srrecnn sr``
    (and the PyTorch script when installed), output 16^3 and finite, the two agreeing to
    1e-4 of the range, start-up measured cold and warm; timings not checked."""
    out = tmp_path / "whole.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.whole_brain", "--smoke",
                             "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["output_shape"] == [16, 16, 16] and data["output_finite"]
    assert data["startup_32cube_launch_to_output"]["cold_s"] > 0
    assert data["startup_32cube_launch_to_output"]["warm_s"] > 0
    ours = data["runs"]["srrecnn"]
    assert len(ours["seconds"]) == 1 and ours["peak_rss_gib"] > 0
    if "torch" in data["runs"]:
        assert data["agreement_max_rel_diff"] < 1e-4
        assert data["time_ratio"] == pytest.approx(
            ours["median_s"] / data["runs"]["torch"]["median_s"], rel=1e-9)
    else:
        assert data["time_ratio"] is None and data["agreement_max_rel_diff"] is None
