"""Batch-mode options the README promises, each through ``srrecnn sr --out-dir``.

Specification, one behaviour per test: ``--suffix`` names the outputs; ``--manifest PATH``
puts the manifest there (and nowhere else); ``--bucket`` makes volumes of nearby sizes
share one compilation; the warnings (a scale the model was not trained for, direction
cosines that are not orthonormal, very anisotropic voxels) reach stderr and the manifest
row of their volume; ``--json`` prints the summary's facts, each consistent with the
outputs (SIGTERM: see test_batch's Ctrl-C test).

Inputs are tiny random volumes; the model is the shared 3-layer, 4-filter ReCNN.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import SimpleITK as sitk
from test_batch import (
    SCALE,
    manifest,
    run_cli,
    save,
    synthetic,
)

from srrecnn_jax import tiling
from srrecnn_jax.checkpoint import LoadedModel, load_model, save_model


@pytest.fixture
def two_inputs(tmp_path) -> dict[str, Path]:
    """``in/a.nii.gz`` (6^3) and ``in/sub/b.nii`` (7 x 6 x 6)."""
    src = tmp_path / "in"
    return {"src": src, "a": save(synthetic((6, 6, 6), 0), src / "a.nii.gz"),
            "b": save(synthetic((7, 6, 6), 1), src / "sub" / "b.nii")}


def test_suffix_names_every_output(two_inputs, tmp_path, models):
    """``--suffix _x2``: ``a_x2.nii.gz`` and ``sub/b_x2.nii``, and the manifest says so."""
    out = tmp_path / "out"
    code, _, err = run_cli(two_inputs["src"], "--out-dir", out, "-m", models["mono"], "-s",
                           SCALE, "--suffix", "_x2")
    assert code == 0, err
    expected = [out / "a_x2.nii.gz", out / "sub" / "b_x2.nii"]
    assert sorted(p for p in out.rglob("*.nii*")) == expected
    assert sorted(r["output"] for r in manifest(out)) == [str(p) for p in expected]


def test_manifest_path_holds_the_rows(two_inputs, tmp_path, models):
    """``--manifest logs/run.jsonl``: one row per input there, no manifest in --out-dir."""
    out, log = tmp_path / "out", tmp_path / "logs" / "run.jsonl"
    log.parent.mkdir()
    code, _, err = run_cli(two_inputs["src"], "--out-dir", out, "-m", models["mono"], "-s",
                           SCALE, "--manifest", log)
    assert code == 0, err
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["input"] for r in rows) == [str(two_inputs["a"]), str(two_inputs["b"])]
    assert {r["status"] for r in rows} == {"ok"}
    assert not list(out.glob("*.jsonl"))


def test_bucket_gives_nearby_sizes_one_compilation(tmp_path, models):
    """``--bucket 13``: inputs of 9 x 11 x 5 and 10 x 12 x 6 (outputs 18 x 22 x 10 and
    20 x 24 x 12) both pad to 26 x 26 in-plane and the network is compiled for one shape
    (once per device that ran a volume); with ``--bucket 1``, for two. Sizes no other
    test uses, so nothing compiled earlier in the run can hide a compilation."""
    for bucket, shapes in ((13, 1), (1, 2)):
        src, out = tmp_path / f"in{bucket}", tmp_path / f"out{bucket}"
        save(synthetic((9, 11, 5), bucket), src / "a.nii.gz")
        save(synthetic((10, 12, 6), bucket + 1), src / "b.nii.gz")
        before = len(tiling.compiled_shapes())
        code, _, err = run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE,
                               "--bucket", bucket, "--workers", "1")
        assert code == 0, err
        compiled = tiling.compiled_shapes()[before:]
        assert len(set(compiled)) == shapes, compiled


@pytest.fixture(scope="module")
def model_trained_at_x2(models, tmp_path_factory) -> Path:
    """The shared tiny mono model, recorded as trained at scale 2 to produce 0.5 mm
    voxels (from 1 mm inputs)."""
    loaded = load_model(models["mono"])
    folder = tmp_path_factory.mktemp("trained") / "x2"
    return save_model(folder, LoadedModel(loaded.params, loaded.config, trained_scales=[2.0],
                                          trained_spacing=0.5))


def test_warnings_reach_stderr_and_the_manifest(tmp_path, model_trained_at_x2):
    """At scale 3 with a model trained at 2: every row carries the scale warning; a
    sheared header (MetaImage keeps it) and 1 x 1 x 5 mm voxels each warn on their own
    volume's row; stderr has every warning as an ``srrecnn: warning:`` line."""
    src, out = tmp_path / "in", tmp_path / "out"
    sheared = synthetic((6, 6, 6), 0)
    sheared.SetDirection((1, 0, 0, 0.5, 1, 0, 0, 0, 1))
    inputs = {"plain": save(synthetic((6, 6, 6), 1), src / "plain.nii.gz"),
              "sheared": save(sheared, src / "sheared.mha"),
              "thick": save(synthetic((6, 6, 4), 2, spacing=(1.0, 1.0, 5.0)),
                            src / "thick.nii.gz")}
    code, _, err = run_cli(*inputs.values(), "--out-dir", out, "-m", model_trained_at_x2,
                           "-s", "3", quiet=False)
    assert code == 0, err
    rows = {Path(r["input"]).name.split(".")[0]: r["warnings"] for r in manifest(out)}
    scale = "differs from the scale(s) [2] the model was trained for"
    assert all(any(scale in w for w in warnings) for warnings in rows.values()), rows
    assert [w for w in rows["plain"] if scale not in w] == []
    assert any("not orthonormal" in w for w in rows["sheared"]), rows["sheared"]
    assert any("anisotropic" in w for w in rows["thick"]), rows["thick"]
    warned = [line for line in err.splitlines() if line.startswith("srrecnn: warning:")]
    for needle in (scale, f"{inputs['sheared']}: direction cosines are not orthonormal",
                   f"{inputs['thick']}: very anisotropic voxels (1.0, 1.0, 5.0) mm"):
        assert any(needle in line for line in warned), (needle, warned)


def test_a_single_input_at_an_untrained_scale_is_warned_about(tmp_path, model_trained_at_x2):
    """``sr -o`` warns as batch mode does: one ``srrecnn: warning:`` line naming the input
    and the scales the model was trained for, at scale 3 for a model trained at 2; none
    at scale 2."""
    image = save(synthetic((6, 6, 6), 1), tmp_path / "in.nii.gz")
    scale = "differs from the scale(s) [2] the model was trained for"
    for factor, warned in (("3", 1), ("2", 0)):
        out = tmp_path / f"x{factor}.nii.gz"
        code, _, err = run_cli(image, "-o", out, "-m", model_trained_at_x2, "-s", factor,
                               quiet=False)
        assert code == 0, err
        lines = [ln for ln in err.splitlines() if ln.startswith("srrecnn: warning:")]
        assert len(lines) == warned and all(str(image) in ln and scale in ln
                                            for ln in lines), err


def test_json_facts_agree_with_the_outputs(two_inputs, tmp_path, models):
    """``--json``: counts, voxels (the outputs' own), voxels/s = voxels / seconds, the
    device count, utilisation in (0, 1], the manifest path, process 0 of 1."""
    out = tmp_path / "out"
    code, stdout, err = run_cli(two_inputs["src"], "--out-dir", out, "-m", models["mono"],
                                "-s", SCALE, "--json")
    assert code == 0, err
    facts = json.loads(stdout)
    voxels = sum(int(np.prod(sitk.ReadImage(str(p)).GetSize())) for p in out.rglob("*.nii*"))
    assert (facts["ok"], facts["skipped"], facts["errors"]) == (2, 0, 0)
    assert facts["voxels"] == voxels == 12 * 12 * 12 + 14 * 12 * 12
    assert facts["seconds"] > 0
    assert facts["voxels_per_s"] == pytest.approx(voxels / facts["seconds"], rel=1e-9)
    assert facts["devices"] == len(jax.local_devices())
    assert 0 < facts["utilisation"] <= 1
    assert facts["manifest"] == str(out / "srrecnn_manifest.jsonl")
    assert (facts["process"], facts["processes"], facts["interrupted"]) == (0, 1, False)


def test_a_job_refused_for_its_scale_names_the_option(tmp_path, models):
    """One input too thin for ``-s 0.5,2,2`` (2 x 6 x 6 becomes 1 voxel along x) fails alone:
    its stderr line names ``-s/--scale`` (not the library's ``scale``), the manifest row
    keeps the library's words, and the other input is written."""
    src = tmp_path / "in"
    save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    save(synthetic((2, 6, 6), 1), src / "thin.nii.gz")
    out = tmp_path / "out"
    code, _, err = run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", "0.5,2,2")
    assert code == 1
    line = next(line for line in err.splitlines() if "thin.nii.gz" in line)
    assert line.startswith("srrecnn: error: -s/--scale: ") and "fewer than 2" in line
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    assert rows["thin.nii.gz"]["parameter"] == "scale"
    assert rows["thin.nii.gz"]["error"].startswith("scale: ")
    assert rows["a.nii.gz"]["status"] == "ok"
