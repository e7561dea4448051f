"""Batch mode (``srrecnn sr --out-dir``): plan, run, report, resume, survive kills.

Specification, one behaviour per test:

* planning: ``collect_inputs`` expands folders (recursive ``--glob``), ``.txt`` lists,
  single files and DICOM series folders, keeps missing paths (they fail as jobs) and skips
  the output folder and ``.tmp-*`` staging folders; ``plan_jobs`` mirrors the input tree
  below ``--out-dir`` (or follows ``--output-template``) and pairs references; ``shard``
  splits the jobs between processes;
* a run writes every good output, reports every bad input in one ``srrecnn: error:`` line,
  exits 1 if any job failed, and its outputs equal ``SuperResolver.run`` of the same input
  to ``RTOL`` (shape buckets must not change results);
* the manifest (JSONL) has one line per job and run; a rerun appends its rows (each
  names its run), never losing an earlier run's;
* a rerun skips an output only if the manifest records it as made from the same input by
  the same model, scale and result-changing options, and it reads back as written;
  anything else is made again, saying why; SIGKILL and Ctrl-C leave only complete outputs and no
  staging files, and a rerun completes the rest;
* memory is bounded (bounded queues), whatever the number of volumes.

Inputs are tiny (6-20 voxels per axis) and the model is a 3-layer, 4-filter ReCNN.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import crop, package_file

from srrecnn_jax import batch, cli
from srrecnn_jax.batch import pipeline
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.geometry import zoomed_geometry
from srrecnn_jax.images import read_input, to_array, to_image
from srrecnn_jax.inference import SuperResolver
from srrecnn_jax.inference_options import InferenceOptions
from srrecnn_jax.jobs import Job, collect_inputs, plan_jobs, shard
from srrecnn_jax.manifest import Manifest

SCALE = 2
RTOL = 1e-6  # batch output vs SuperResolver.run: |diff| <= RTOL * max|expected|
MANIFEST = "srrecnn_manifest.jsonl"


# --- fixtures and helpers ---------------------------------------------------------------



@pytest.fixture(scope="module")
def resolver(models) -> SuperResolver:
    return SuperResolver.load(models["mono"])


@pytest.fixture(scope="module")
def anatomical_image() -> sitk.Image:
    """nibabel's real 2 mm T1 (33 x 41 x 25, int16), read once for the module."""
    return sitk.ReadImage(str(package_file("nibabel", "tests/data/anatomical.nii")))


def synthetic(size: tuple[int, int, int], seed: int, spacing=(1.0, 1.0, 1.0),
              origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    """An (x, y, z) = ``size`` float32 image of positive random voxels."""
    values = np.random.default_rng(seed).uniform(0.1, 1.0, size).astype(np.float32)
    return to_image(values, spacing, origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))


def save(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def run_cli(*args, quiet: bool = True) -> tuple[int, str, str]:
    """``srrecnn sr ARGS`` in-process; returns (exit status, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    argv = ["sr", *map(str, args)] + (["--quiet"] if quiet else [])
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def command(*args) -> list[str]:
    """The real command line, for a subprocess."""
    return [sys.executable, "-m", "srrecnn_jax.cli", "sr", *map(str, args), "--quiet"]


def manifest(out_dir: Path) -> list[dict]:
    """Every row of the manifest: of all runs into ``out_dir``, in file order."""
    return [json.loads(line) for line in (out_dir / MANIFEST).read_text().splitlines()]


def last_run(out_dir: Path) -> list[dict]:
    """The rows of the latest run (its ``run`` id is the last row's)."""
    rows = manifest(out_dir)
    return [r for r in rows if r["run"] == rows[-1]["run"]]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("srrecnn: error:")]


def tmp_leftovers(folder: Path) -> list[Path]:
    """Every ``.tmp-*`` file or folder anywhere below ``folder``."""
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]


def pixels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def assert_same_result(got: sitk.Image, want: sitk.Image) -> None:
    """Same grid, and voxels equal to ``RTOL`` relative to the largest expected voxel."""
    assert got.GetSize() == want.GetSize()
    np.testing.assert_allclose(got.GetSpacing(), want.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(got.GetOrigin(), want.GetOrigin(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), want.GetDirection(), rtol=0, atol=1e-6)
    a, b = sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want)
    np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * np.abs(b).max())


def write_dicom_series(values: np.ndarray, folder: Path, spacing=(0.9, 1.1, 2.0),
                       origin=(-5.0, 3.0, 10.0)) -> None:
    """An (x, y, z) int16 volume as a DICOM series: one ``.dcm`` file per z slice.

    As SimpleITK's "DICOM series from array" example: one Series Instance UID, and per
    slice its Image Position Patient and Instance Number.
    """
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(values.transpose(2, 1, 0), np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    d = image.GetDirection()
    uid = f"1.2.826.0.1.3680043.2.1125.{zlib.crc32(str(folder).encode())}"
    tags = {"0008|0060": "MR", "0008|103e": "srrecnn test series",
            "0020|000d": uid + ".1", "0020|000e": uid + ".2",
            "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": str(spacing[2])}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        plane.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
        plane.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


# --- collect_inputs ---------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_collect_folder_recursive_glob(tmp_path):
    """A folder is searched recursively with the glob; each input's root is that folder."""
    root = tmp_path / "in"
    a, b, c = (touch(root / "a.nii.gz"), touch(root / "sub" / "b.nii"),
               touch(root / "sub" / "deep" / "c.nii.gz"))
    touch(root / "notes.txt")
    touch(root / "sub" / "d.mha")
    assert collect_inputs([root]) == [(a, root), (b, root), (c, root)]
    assert collect_inputs([root], "*.mha") == [(root / "sub" / "d.mha", root)]


def test_collect_list_file(tmp_path):
    """A .txt list gives one input per line, skipping comments and blank lines, in order."""
    b, a = touch(tmp_path / "x" / "b.nii.gz"), touch(tmp_path / "y" / "a.nii")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scans\n\n{b}\n   \n  {a}  \n# the end\n")
    assert collect_inputs([listing]) == [(b, b.parent), (a, a.parent)]


def test_collect_list_file_relative_paths_are_relative_to_the_list(tmp_path, monkeypatch):
    """Relative lines of a list file name files beside the list, wherever the run starts
    (as ``srrecnn train`` reads its train.txt)."""
    a = touch(tmp_path / "study" / "sub" / "a.nii.gz")
    listing = tmp_path / "study" / "scans.txt"
    listing.write_text("sub/a.nii.gz\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ((found, root),) = collect_inputs([listing])
    assert found.resolve() == a.resolve() and root.resolve() == a.parent.resolve()


def test_collect_single_file(tmp_path):
    """A single file is one input, rooted at its own folder (whatever the glob)."""
    path = touch(tmp_path / "scan.mha")
    assert collect_inputs([path]) == [(path, tmp_path)]


def test_collect_keeps_missing_path(tmp_path):
    """A path that does not exist is kept as an input, so that it fails as a job."""
    missing = tmp_path / "nope.nii.gz"
    good = touch(tmp_path / "good.nii.gz")
    assert collect_inputs([missing, good]) == [(missing, tmp_path), (good, tmp_path)]


def test_collect_excludes_output_folder_and_staging(tmp_path):
    """Files below the output folder (``exclude``) and in ``.tmp-*`` folders are not inputs."""
    root = tmp_path / "in"
    keep = touch(root / "a.nii.gz")
    touch(root / "out" / "a_SR.nii.gz")
    touch(root / ".tmp-srrecnn-host-123" / ".tmp-x" / "b_SR.nii.gz")
    touch(root / "sub" / ".tmp-1234-c.nii.gz" / "c.nii.gz")
    out = (root / "out").resolve()
    assert collect_inputs([root], exclude=lambda p: out in p.resolve().parents) == [
        (keep, root)]


def test_collect_dicom_series_folder(tmp_path):
    """A folder of .dcm files forming a series is one input, rooted at its parent."""
    series = tmp_path / "in" / "sub-01" / "t1_series"
    write_dicom_series(np.full((4, 3, 3), 100), series)
    assert collect_inputs([tmp_path / "in"]) == [(series, tmp_path / "in")]
    assert collect_inputs([series]) == [(series, series.parent)]


# --- plan_jobs and shard ----------------------------------------------------------------


def test_plan_mirrors_tree_with_suffix(tmp_path):
    """Outputs mirror the input's place below its root, with ``_SR`` before the extension."""
    root, out = tmp_path / "in", tmp_path / "out"
    jobs = plan_jobs([(root / "a.nii", root), (root / "s" / "d" / "c.nii.gz", root),
                      (root / "b.mha", root)], out)
    assert [j.output for j in jobs] == [out / "a_SR.nii", out / "s" / "d" / "c_SR.nii.gz",
                                        out / "b_SR.mha"]
    assert all(j.reference is None for j in jobs)


def test_plan_output_template(tmp_path):
    """``--output-template '{dir}/{stem}_x2{ext}'`` names outputs by the template."""
    root, out = tmp_path / "in", tmp_path / "out"
    jobs = plan_jobs([(root / "a.nii.gz", root), (root / "s" / "c.nii", root)], out,
                     template="{dir}/{stem}_x2{ext}")
    assert [j.output for j in jobs] == [out / "a_x2.nii.gz", out / "s" / "c_x2.nii"]


@pytest.mark.parametrize("template", ["{stem.__class__}{ext}", "{stem[0]}{ext}",
                                      "{0}{ext}", "{stem!r}{ext}x{"])
def test_plan_template_reaching_into_objects_is_refused(template, tmp_path):
    """Only the documented fields, plain: attribute access, indexing and positional fields
    are refused before any work (``{stem.__class__}`` used to be accepted)."""
    with pytest.raises(SrrecnnError, match="output_template"):
        plan_jobs([(tmp_path / "a.nii", tmp_path)], tmp_path / "out", template=template)


def test_plan_bad_template_raises(tmp_path):
    """A template with an unknown field is refused, naming the output_template parameter."""
    with pytest.raises(SrrecnnError, match="output_template"):
        plan_jobs([(tmp_path / "a.nii", tmp_path)], tmp_path / "out", template="{name}.nii")


def test_plan_reference_pattern(tmp_path):
    """``T1w:T2w`` pairs ``sub-01_T1w.nii.gz`` with ``sub-01_T2w.nii.gz`` in its folder."""
    t1 = tmp_path / "in" / "sub-01" / "sub-01_T1w.nii.gz"
    (job,) = plan_jobs([(t1, tmp_path / "in")], tmp_path / "out",
                       reference_pattern="T1w:T2w")
    assert job == Job(t1, tmp_path / "out" / "sub-01" / "sub-01_T1w_SR.nii.gz",
                      tmp_path / "in" / "sub-01" / "sub-01_T2w.nii.gz")


@pytest.mark.parametrize("pattern", ["T1w", ":T2w", ""])
def test_plan_bad_reference_pattern_raises(pattern, tmp_path):
    """A pattern that is not OLD:NEW with a non-empty OLD is refused."""
    with pytest.raises(SrrecnnError, match="reference_pattern"):
        plan_jobs([(tmp_path / "a_T1w.nii", tmp_path)], tmp_path / "out",
                  reference_pattern=pattern)


def test_plan_reference_pattern_not_in_name_raises(tmp_path):
    """An input whose name lacks OLD is refused, by name."""
    path = tmp_path / "a_T2w.nii"
    with pytest.raises(SrrecnnError, match="a_T2w.nii"):
        plan_jobs([(path, tmp_path)], tmp_path / "out", reference_pattern="T1w:T2w")


def test_plan_same_output_twice_raises(tmp_path):
    """Two inputs that would write the same output are refused, naming both."""
    x, y = tmp_path / "x" / "t1.nii.gz", tmp_path / "y" / "t1.nii.gz"
    with pytest.raises(SrrecnnError) as info:
        plan_jobs([(x, x.parent), (y, y.parent)], tmp_path / "out")
    assert str(x) in str(info.value) and str(y) in str(info.value)


@pytest.mark.parametrize("template", ["../escaped_{stem}{ext}", "/abs/{stem}{ext}",
                                      "{dir}/../../{stem}{ext}", "{dir}/.."])
def test_plan_output_outside_out_dir_raises(template, tmp_path):
    """A template that puts an output outside --out-dir (or on it) is refused, naming the
    output_template parameter: outputs stay inside the output folder."""
    root = tmp_path / "in"
    with pytest.raises(SrrecnnError, match="outside the output folder") as info:
        plan_jobs([(root / "sub" / "a.nii.gz", root)], tmp_path / "out", template=template)
    assert info.value.parameter == "output_template"


def test_plan_suffix_outside_out_dir_raises(tmp_path):
    """A suffix that climbs out of --out-dir is refused as well, naming the suffix."""
    with pytest.raises(SrrecnnError, match="outside the output folder") as info:
        plan_jobs([(tmp_path / "a.nii.gz", tmp_path)], tmp_path / "out", suffix="/../../x")
    assert info.value.parameter == "suffix"


def test_plan_outputs_equal_after_normalising_raise(tmp_path):
    """``{dir}/../../{stem}{ext}`` maps sub-01/anat/t1 and sub-02/anat/t1 to one file: the
    collision is found on the normalised paths, naming both inputs."""
    root = tmp_path / "in"
    x, y = root / "sub-01" / "anat" / "t1.nii.gz", root / "sub-02" / "anat" / "t1.nii.gz"
    with pytest.raises(SrrecnnError, match="also the output of") as info:
        plan_jobs([(x, root), (y, root)], tmp_path / "out", template="{dir}/../../{stem}{ext}")
    assert str(x) in str(info.value) and str(y) in str(info.value)


def test_plan_normalises_output_paths(tmp_path):
    """An output named through ``..`` inside --out-dir is written (and listed) at its
    normalised path."""
    root, out = tmp_path / "in", tmp_path / "out"
    (job,) = plan_jobs([(root / "sub" / "a.nii.gz", root)], out, template="{dir}/../{stem}{ext}")
    assert job.output == out / "a.nii.gz"


def test_shard_two_processes():
    """Two shards hold every job exactly once, disjoint, whatever the order jobs come in."""
    jobs = [Job(Path(f"/in/{n}.nii"), Path(f"/out/{n}_SR.nii")) for n in "gacfbed"]
    parts = [shard(jobs, i, 2) for i in range(2)]
    assert sorted(len(p) for p in parts) == [3, 4]
    assert sorted(parts[0] + parts[1], key=str) == sorted(jobs, key=str)
    assert not set(parts[0]) & set(parts[1])
    assert [shard(jobs[::-1], i, 2) for i in range(2)] == parts


def test_cli_same_output_twice_fails_before_work(tmp_path, models):
    """Two inputs with one output name end the batch before any work: exit 1, one line."""
    x = save(synthetic((6, 6, 6), 0), tmp_path / "x" / "t1.nii.gz")
    y = save(synthetic((6, 6, 6), 1), tmp_path / "y" / "t1.nii.gz")
    code, out, err = run_cli(x, y, "--out-dir", tmp_path / "out", "-m", models["mono"],
                             "-s", SCALE)
    assert code == 1
    assert len(err.splitlines()) == 1 and len(error_lines(err)) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_cli_output_that_is_its_input_is_refused(overwrite, tmp_path, models):
    """``sr s/a.nii.gz --out-dir s --suffix ''`` would write the result over the scan (or,
    without --overwrite, skip it as done): refused before any work, the scan untouched."""
    scan = save(synthetic((6, 6, 6), 0), tmp_path / "s" / "a.nii.gz")
    before = scan.read_bytes()
    code, _, err = run_cli(scan, "--out-dir", scan.parent, "-m", models["mono"], "-s", SCALE,
                           "--suffix", "", *overwrite)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("srrecnn: error:") and "would replace the input" in line, line
    assert scan.read_bytes() == before
    assert sorted(p.name for p in scan.parent.iterdir()) == ["a.nii.gz"]


def test_cli_output_through_a_symlink_to_its_input_is_refused(tmp_path, models):
    """An --out-dir that is a symbolic link to the input's folder is seen through."""
    scan = save(synthetic((6, 6, 6), 0), tmp_path / "s" / "a.nii.gz")
    before = scan.read_bytes()
    (tmp_path / "link").symlink_to(scan.parent)
    code, _, err = run_cli(scan, "--out-dir", tmp_path / "link", "-m", models["mono"],
                           "-s", SCALE, "--suffix", "", "--overwrite")
    assert code == 1 and "would replace the input" in err, err
    assert scan.read_bytes() == before


def test_cli_manifest_that_is_an_input_is_refused(tmp_path, models):
    """``--manifest s/b.nii.gz`` with b.nii.gz one of the inputs: refused before any work,
    naming the --manifest option; b.nii.gz untouched."""
    src = tmp_path / "s"
    save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    b = save(synthetic((6, 6, 6), 1), src / "b.nii.gz")
    before = b.read_bytes()
    code, _, err = run_cli(src, "--out-dir", tmp_path / "out", "-m", models["mono"],
                           "-s", SCALE, "--manifest", b)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("srrecnn: error: --manifest:") and str(b) in line, line
    assert b.read_bytes() == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shard", [None, "0/2"])
def test_cli_manifest_onto_a_file_that_is_no_manifest_is_refused(tmp_path, models, shard):
    """``--manifest`` at a scan of the study that is not an input of this run: refused
    before any work, naming --manifest, the scan byte for byte as it was (a one-process
    run appended JSON to it, a --shard run's merge rewrote it as JSON rows), no output."""
    src = tmp_path / "s"
    save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    scan = save(synthetic((6, 6, 6), 1), tmp_path / "other" / "b.nii.gz")
    before = scan.read_bytes()
    extra = ["--shard", shard] if shard else []
    code, _, err = run_cli(src, "--out-dir", tmp_path / "out", "-m", models["mono"],
                           "-s", SCALE, "--manifest", scan, *extra)
    assert code == 1
    (line,) = error_lines(err)
    assert line.startswith("srrecnn: error: --manifest:") and "not a manifest" in line, line
    assert scan.read_bytes() == before
    outputs = list((tmp_path / "out").rglob("*.nii*")) if (tmp_path / "out").exists() else []
    assert outputs == []


def test_merge_manifest_onto_a_file_that_is_no_manifest_is_refused(tmp_path, capsys):
    """``merge-manifest OUT --manifest notes.txt`` with a part beside it: one error line,
    notes.txt as it was."""
    out = tmp_path / "out"
    out.mkdir()
    notes = out / "notes.txt"
    notes.write_text("my notes on this study\n")
    (out / "notes.part-00000-of-00002.jsonl").write_text(
        json.dumps({"input": "a", "status": "ok", "time": "1"}) + "\n")
    assert cli.main(["merge-manifest", str(out), "--manifest", str(notes)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "not a manifest" in line and str(notes) in line
    assert notes.read_text() == "my notes on this study\n"


def test_an_existing_manifest_of_ours_with_a_killed_fragment_is_kept_and_appended(
        tmp_path, models):
    """A manifest whose earlier run was killed mid-line is still ours: the run appends."""
    src = tmp_path / "s"
    save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    old = json.dumps({"input": "x", "output": "y", "status": "ok"}) + '\n{"input": "a'
    (out / MANIFEST).write_text(old)
    code, _, err = run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE)
    assert code == 0, err
    assert (out / MANIFEST).read_text().startswith(old)


# --- a mixed batch: real crops, synthetic volumes, bad inputs ---------------------------


GOOD = ["real/t1_a.nii.gz", "real/t1_b.nii", "synth/s1.nii.gz", "synth/deep/s2.nrrd"]
BAD = ["bad/corrupt.nii", "bad/zero.nii.gz", "bad/flat2d.nii"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, models, anatomical_image):
    """One batch over good and bad inputs; sizes off the bucket of 8 to exercise padding."""
    root = tmp_path_factory.mktemp("mixed")
    src, out = root / "in", root / "out"
    t1 = anatomical_image
    save(crop(t1, (8, 10, 6), (9, 11, 7)), src / GOOD[0])
    save(crop(t1, (12, 14, 9), (12, 10, 8)), src / GOOD[1])
    save(synthetic((6, 10, 12), 1, spacing=(1.2, 0.9, 3.0), origin=(-10, 5, 2)), src / GOOD[2])
    save(synthetic((11, 7, 9), 2, spacing=(0.8, 0.8, 1.0)), src / GOOD[3])
    (src / "bad").mkdir()
    (src / BAD[0]).write_bytes(np.random.default_rng(1).bytes(2000))
    save(to_image(np.zeros((8, 8, 8), np.float32), (1, 1, 1), (0, 0, 0),
                     (1, 0, 0, 0, 1, 0, 0, 0, 1)), src / BAD[1])
    save(sitk.Image([8, 8], sitk.sitkFloat32) + 1, src / BAD[2])
    code, stdout, stderr = run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE,
                                   "--glob", "*.n*")
    return {"src": src, "out": out, "code": code, "stdout": stdout, "stderr": stderr}


def sr_name(relative: str) -> str:
    for ext in (".nii.gz", ".nii", ".nrrd"):
        if relative.endswith(ext):
            return relative[:-len(ext)] + "_SR" + ext
    raise ValueError(relative)


def test_mixed_batch_exits_1(mixed):
    """A batch in which some jobs failed exits with status 1."""
    assert mixed["code"] == 1, mixed["stderr"]


def test_mixed_batch_reports_each_bad_input_once(mixed):
    """Each bad input gets exactly one ``srrecnn: error:`` line naming it; no traceback."""
    lines = error_lines(mixed["stderr"])
    assert len(lines) == len(BAD), mixed["stderr"]
    for name in BAD:
        assert sum(str(mixed["src"] / name) in line for line in lines) == 1, (name, lines)
    assert "Traceback" not in mixed["stderr"]


def test_mixed_batch_writes_every_good_output(mixed):
    """Every good input has its output, mirroring the input tree; no output for bad ones."""
    for name in GOOD:
        assert (mixed["out"] / sr_name(name)).is_file(), name
    for name in BAD:
        assert not (mixed["out"] / sr_name(name)).exists(), name


def test_mixed_batch_outputs_equal_single_volume_run(mixed, resolver):
    """Each output equals ``SuperResolver.run`` of its input (bucket padding changes nothing).

    Tolerance: |batch - run| <= 1e-6 * max|run|, same size, spacing, origin and direction.
    """
    for name in GOOD:
        want = resolver.run(sitk.ReadImage(str(mixed["src"] / name)), SCALE, log=lambda m: None)
        got = sitk.ReadImage(str(mixed["out"] / sr_name(name)))
        assert got.GetPixelID() == sitk.sitkFloat32
        assert_same_result(got, want)


def test_mixed_batch_leaves_only_outputs_and_manifest(mixed):
    """The output folder holds the outputs and the manifest, and nothing else (no .tmp-*)."""
    found = sorted(str(p.relative_to(mixed["out"])) for p in mixed["out"].rglob("*")
                   if p.is_file())
    assert found == sorted([MANIFEST] + [sr_name(n) for n in GOOD])
    assert tmp_leftovers(mixed["out"]) == []


# --- the manifest -----------------------------------------------------------------------


def test_manifest_one_line_per_job(mixed):
    """The default manifest OUT_DIR/srrecnn_manifest.jsonl has one JSON line per job."""
    rows = manifest(mixed["out"])
    assert sorted(r["input"] for r in rows) == sorted(str(mixed["src"] / n) for n in GOOD + BAD)
    assert sorted(r["status"] for r in rows) == ["error"] * len(BAD) + ["ok"] * len(GOOD)


def test_manifest_ok_record(mixed):
    """An ok line has the output, its size and spacing, the seconds taken and no error."""
    rows = {r["input"]: r for r in manifest(mixed["out"])}
    for name in GOOD:
        row = rows[str(mixed["src"] / name)]
        image = sitk.ReadImage(str(mixed["out"] / sr_name(name)))
        assert row["status"] == "ok" and row["error"] is None
        assert row["output"] == str(mixed["out"] / sr_name(name))
        assert row["shape"] == list(image.GetSize())
        np.testing.assert_allclose(row["spacing"], image.GetSpacing(), rtol=1e-6)
        assert row["seconds"] > 0


def test_manifest_error_record(mixed):
    """An error line has the planned output, the seconds taken and the error naming the input."""
    rows = {r["input"]: r for r in manifest(mixed["out"])}
    for name in BAD:
        row = rows[str(mixed["src"] / name)]
        assert row["status"] == "error"
        assert row["output"] == str(mixed["out"] / sr_name(name))
        assert str(mixed["src"] / name) in row["error"]
        assert row["shape"] is None and row["seconds"] >= 0


# --- resume -----------------------------------------------------------------------------


@pytest.fixture
def small_batch(tmp_path, models):
    """Three synthetic inputs, already run once into ``out`` (exit 0)."""
    src, out = tmp_path / "in", tmp_path / "out"
    for n, size in enumerate([(6, 7, 8), (8, 8, 8), (9, 6, 7)]):
        save(synthetic(size, n), src / f"v{n}.nii.gz")
    args = [src, "--out-dir", out, "-m", models["mono"], "-s", SCALE]
    assert run_cli(*args)[0] == 0
    outputs = sorted(out.glob("*_SR.nii.gz"))
    assert len(outputs) == 3
    for path in outputs:  # a time no rewrite could produce
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    return {"src": src, "out": out, "args": args, "outputs": outputs}


def test_rerun_skips_complete_outputs(small_batch):
    """The same command again exits 0, marks every job skipped and leaves the files untouched."""
    code, _, err = run_cli(*small_batch["args"])
    assert code == 0, err
    assert [r["status"] for r in last_run(small_batch["out"])] == ["skipped"] * 3
    assert [p.stat().st_mtime_ns for p in small_batch["outputs"]] == [1_000_000_000] * 3


def test_rerun_redoes_only_missing_outputs(small_batch):
    """A deleted output is redone; the others are skipped."""
    small_batch["outputs"][1].unlink()
    assert run_cli(*small_batch["args"])[0] == 0
    status = {Path(r["output"]).name: r["status"] for r in last_run(small_batch["out"])}
    assert status == {"v0_SR.nii.gz": "skipped", "v1_SR.nii.gz": "ok",
                      "v2_SR.nii.gz": "skipped"}
    assert small_batch["outputs"][1].is_file()


def test_overwrite_redoes_outputs(small_batch):
    """With --overwrite every output is written again."""
    assert run_cli(*small_batch["args"], "--overwrite")[0] == 0
    assert [r["status"] for r in last_run(small_batch["out"])] == ["ok"] * 3
    assert all(p.stat().st_mtime_ns != 1_000_000_000 for p in small_batch["outputs"])


def test_rerun_retries_failed_jobs(small_batch):
    """A failed job is tried again on a rerun (it has no output): still exit 1 while it fails."""
    bad = small_batch["src"] / "v3.nii.gz"
    bad.write_bytes(b"not an image")
    code, _, err = run_cli(*small_batch["args"])
    assert code == 1
    (line,) = error_lines(err)
    assert str(bad) in line
    code, _, _ = run_cli(*small_batch["args"])
    assert code == 1
    assert sorted(r["status"] for r in last_run(small_batch["out"])) == ["error"] + [
        "skipped"] * 3


@pytest.mark.parametrize("change, words", [
    (["-s", "3"], "scale was 2,2,2, now 3,3,3"), (["--order", "1"], "order was 3, now 1"),
    (["--no-residual"], "residual was default, now False"),
    (["--header", "original"], "header was consistent, now original"),
    (["--precision", "bf16"], "precision was fp32, now bf16"),
    (["--interpolation", "scipy"], "interpolation was device, now scipy")],
    ids=["scale", "order", "residual", "header", "precision", "interpolation"])
def test_rerun_with_another_option_redoes_outputs(change, words, small_batch):
    """A rerun with another scale, or another option that changes the voxels, makes every
    output again: each row is ok, says why in ``redone``, and a warning names the output."""
    code, _, err = run_cli(*small_batch["args"], *change, quiet=False)
    assert code == 0, err
    rows = last_run(small_batch["out"])
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(r["redone"] == words for r in rows), rows
    for path in small_batch["outputs"]:
        assert f"{path}: exists, but is made again: {words}" in err
        assert path.stat().st_mtime_ns != 1_000_000_000


def test_rerun_with_another_scale_writes_the_new_size(small_batch):
    """After a rerun at scale 3 the outputs are the scale-3 results (3x the input size)."""
    assert run_cli(*small_batch["args"], "-s", 3)[0] == 0
    assert sitk.ReadImage(str(small_batch["outputs"][1])).GetSize() == (24, 24, 24)


def test_rerun_with_options_that_keep_the_voxels_skips(small_batch):
    """--tile, --bucket and --workers do not change the result: the outputs are kept."""
    code, _, err = run_cli(*small_batch["args"], "--tile", 8, "--bucket", 4, "--workers", 1)
    assert code == 0, err
    assert [r["status"] for r in last_run(small_batch["out"])] == ["skipped"] * 3


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """A second tiny one-channel model, its weights drawn from another seed."""
    import jax

    from srrecnn_jax import config, model
    from srrecnn_jax.checkpoint import LoadedModel, save_model

    cfg = config.tiny()
    return save_model(tmp_path_factory.mktemp("other") / "model",
                      LoadedModel(model.init(jax.random.PRNGKey(1), cfg), cfg))


def test_rerun_with_another_model_redoes_outputs(small_batch, other_model):
    """A rerun with another model makes every output again, saying so in its row."""
    assert run_cli(*small_batch["args"], "-m", other_model)[0] == 0
    rows = last_run(small_batch["out"])
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(r["redone"].startswith("made by another model") for r in rows), rows


def test_rerun_after_the_input_changed_redoes_its_output(small_batch):
    """An input replaced since its output was made (another scan under the same name) is
    done again; the others are skipped."""
    save(synthetic((8, 8, 8), 7), small_batch["src"] / "v1.nii.gz")
    assert run_cli(*small_batch["args"])[0] == 0
    rows = {Path(r["output"]).name: r for r in last_run(small_batch["out"])}
    assert rows["v1_SR.nii.gz"]["redone"] == "the input changed since"
    assert [rows[n]["status"] for n in ("v0_SR.nii.gz", "v2_SR.nii.gz")] == ["skipped"] * 2


@pytest.mark.parametrize("keep", [0, 0.5], ids=["empty", "truncated"])
def test_rerun_redoes_an_output_cut_short(keep, small_batch):
    """An output that is now empty or cut in half (a disk that filled, a copy that broke)
    is made again, whole; the others are skipped."""
    path = small_batch["outputs"][1]
    whole = pixels(path)
    os.truncate(path, int(path.stat().st_size * keep))
    code, _, err = run_cli(*small_batch["args"])
    assert code == 0, err
    rows = {Path(r["output"]).name: r for r in last_run(small_batch["out"])}
    assert rows[path.name]["status"] == "ok"
    assert "cut short or replaced" in rows[path.name]["redone"]
    assert [rows[n]["status"] for n in ("v0_SR.nii.gz", "v2_SR.nii.gz")] == ["skipped"] * 2
    np.testing.assert_array_equal(pixels(path), whole)


def test_rerun_redoes_an_output_the_manifest_does_not_know(small_batch):
    """An output file with no manifest row (the manifest was deleted, or the file came
    from elsewhere) is not trusted: it is made again."""
    (small_batch["out"] / MANIFEST).unlink()
    assert run_cli(*small_batch["args"])[0] == 0
    rows = manifest(small_batch["out"])
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert {r["redone"] for r in rows} == {"the manifest has no record of how it was made"}


def test_rerun_keeps_the_rows_of_earlier_runs(small_batch):
    """A rerun appends its rows under a new run id: the first run's rows (shapes, seconds,
    times) are all still there, unchanged, before the rerun's."""
    first = manifest(small_batch["out"])
    assert run_cli(*small_batch["args"])[0] == 0
    rows = manifest(small_batch["out"])
    assert rows[:3] == first
    assert [r["status"] for r in first] == ["ok"] * 3
    assert all(r["shape"] and r["seconds"] > 0 and r["time"] for r in first)
    assert len({r["run"] for r in first}) == 1
    assert [r["status"] for r in rows[3:]] == ["skipped"] * 3
    assert {r["run"] for r in rows[3:]} == {rows[3]["run"]} != {first[0]["run"]}


def test_rerun_progress_bar_counts_skipped(small_batch):
    """The progress bar of a rerun that skips every output reaches 3/3."""
    code, _, err = run_cli(*small_batch["args"], quiet=False)
    assert code == 0
    assert "3/3" in err, err.replace("\r", "\n")


# --- --shard I/N: independent processes (a Slurm job array) ------------------------------


@pytest.fixture
def sharded(tmp_path, models):
    """Five inputs run as --shard 0/2, then --shard 1/2, one after the other (no coordinator:
    each runs alone). The manifest after each."""
    src, out = tmp_path / "in", tmp_path / "out"
    for n in range(5):
        save(synthetic((6, 7, 6), n), src / f"v{n}.nii.gz")
    args = [src, "--out-dir", out, "-m", models["mono"], "-s", SCALE]
    after = []
    for i in range(2):
        code, _, err = run_cli(*args, "--shard", f"{i}/2")
        assert code == 0, err
        after.append(manifest(out))
    return {"src": src, "out": out, "after": after}


def test_shards_cover_every_job_once(sharded):
    """Shard 0 takes inputs 0, 2, 4 and shard 1 inputs 1, 3 of the sorted list: together
    every output is written exactly once, and the merged manifest has one ok row per input
    from the shard that took it."""
    rows = sharded["after"][1]
    assert sorted((Path(r["input"]).name, r["process"]) for r in rows) == [
        ("v0.nii.gz", 0), ("v1.nii.gz", 1), ("v2.nii.gz", 0), ("v3.nii.gz", 1),
        ("v4.nii.gz", 0)]
    assert {r["status"] for r in rows} == {"ok"}
    assert sorted(p.name for p in sharded["out"].glob("*_SR.nii.gz")) == [
        f"v{n}_SR.nii.gz" for n in range(5)]


def test_a_shard_alone_merges_what_exists(sharded):
    """Shard 0 does not wait for shard 1: when it ends, the manifest holds its own rows."""
    assert sorted(Path(r["input"]).name for r in sharded["after"][0]) == [
        "v0.nii.gz", "v2.nii.gz", "v4.nii.gz"]


def test_merge_manifest_rebuilds_the_manifest_from_its_parts(sharded):
    """``srrecnn merge-manifest OUT_DIR`` alone folds the parts into the manifest again
    (here after the manifest was lost): the same rows."""
    (sharded["out"] / MANIFEST).unlink()
    out, err = StringIO(), StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli.main(["merge-manifest", str(sharded["out"])]) == 0
    assert sorted(map(json.dumps, manifest(sharded["out"]))) == sorted(
        map(json.dumps, sharded["after"][1]))


def test_merge_manifest_without_parts_is_one_error_line(tmp_path):
    """A folder with no manifest parts: exit 1, one line naming the folder."""
    err = StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["merge-manifest", str(tmp_path)]) == 1
    (line,) = err.getvalue().splitlines()
    assert line.startswith("srrecnn: error:") and str(tmp_path) in line, line


def test_merge_manifest_is_refused_while_a_run_writes_the_folder(sharded):
    """While a one-process run holds the output folder (here: the test, through its lock
    file), merge-manifest would replace the manifest under the rows that run appends:
    refused, one line naming the folder; the manifest untouched."""
    before = (sharded["out"] / MANIFEST).read_bytes()
    err = StringIO()
    with open(sharded["out"] / ".srrecnn.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.redirect_stderr(err):
            assert cli.main(["merge-manifest", str(sharded["out"])]) == 1
    (line,) = err.getvalue().splitlines()
    assert line.startswith("srrecnn: error:") and str(sharded["out"]) in line, line
    assert (sharded["out"] / MANIFEST).read_bytes() == before


@pytest.mark.parametrize("shard", ["2/2", "1", "a/b", "-1/2"])
def test_bad_shard_is_a_usage_error(shard, tmp_path, models):
    """--shard must be I/N with 0 <= I < N: otherwise exit 2, one line naming --shard."""
    err = StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        cli.main(["sr", str(tmp_path), "--out-dir", str(tmp_path / "out"), "-m",
                  str(models["mono"]), "-s", "2", "--shard", shard])
    assert info.value.code == 2
    (line,) = err.getvalue().splitlines()
    assert "--shard" in line, line


# --- output folder inside the input folder ----------------------------------------------


def test_outputs_inside_input_folder_are_not_inputs(tmp_path, models):
    """With --out-dir inside the searched folder, a rerun does not take outputs as inputs."""
    src = tmp_path / "in"
    save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    args = [src, "--out-dir", src / "sr", "-m", models["mono"], "-s", SCALE]
    assert run_cli(*args)[0] == 0
    code, out, _ = run_cli(*args, "--dry-run")
    assert code == 0
    assert out.splitlines() == [f"{src / 'a.nii.gz'} -> {src / 'sr' / 'a_SR.nii.gz'}"]


# --- kill, Ctrl-C ------------------------------------------------------------------------


def many_volumes(folder: Path, count: int, size: int = 16, ext: str = ".nii.gz") -> list[Path]:
    """``count`` random ``size``^3 volumes ``v00{ext}``, ``v01{ext}``, ..."""
    return [save(synthetic((size, size, size), n), folder / f"v{n:02d}{ext}")
            for n in range(count)]


def start_until_first_output(args: list, out: Path, log: Path) -> subprocess.Popen:
    """Start the real command; return once its first output is in place."""
    with open(log, "w") as stderr:
        proc = subprocess.Popen(command(*args), stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 60
    while not any(out.glob("*_SR.nii.gz")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"no output before exit {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.002)
    return proc


@pytest.mark.slow
def test_sigkill_then_rerun_equals_clean_run(tmp_path, models):
    """SIGKILL mid-batch, then the same command: outputs equal a clean run's, no .tmp-* left.

    Twelve 16^3 volumes, one reader: the run is killed as soon as its first output appears,
    leaving its staging folder behind; the rerun removes it. An output the killed run wrote
    is kept if its manifest row was written too, else made again (nothing vouches for it).
    """
    src, out, clean = tmp_path / "in", tmp_path / "out", tmp_path / "clean"
    inputs = many_volumes(src, 12)
    args = [src, "-m", models["mono"], "-s", SCALE, "--workers", "1"]
    proc = start_until_first_output(args + ["--out-dir", out], out, tmp_path / "log")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_with = len(list(out.glob("*_SR.nii.gz")))
    assert 1 <= killed_with < len(inputs), "the kill did not land mid-batch"
    assert tmp_leftovers(out), "a killed run leaves its staging folder"

    code, _, err = run_cli(*args, "--out-dir", out)
    assert code == 0, err
    kept = [r for r in last_run(out) if r["status"] == "skipped"
            or r["redone"] == "the manifest has no record of how it was made"]
    assert len(kept) == killed_with
    assert run_cli(*args, "--out-dir", clean)[0] == 0

    for path in inputs:
        name = path.name.replace(".nii.gz", "_SR.nii.gz")
        np.testing.assert_array_equal(pixels(out / name), pixels(clean / name))
    assert tmp_leftovers(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_sigint_exits_130_with_complete_outputs(stop, tmp_path, models):
    """Ctrl-C, or SIGTERM (what a cluster's scheduler sends): exit 130, each output present
    is complete and readable, no .tmp-* left, fewer than all written; a rerun completes
    the rest and skips what was done."""
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = many_volumes(src, 16)
    args = [src, "--out-dir", out, "-m", models["mono"], "-s", SCALE, "--workers", "1"]
    proc = start_until_first_output(args, out, tmp_path / "log")
    proc.send_signal(stop)
    assert proc.wait(timeout=60) == 130, (tmp_path / "log").read_text()[-2000:]
    done = sorted(out.glob("*_SR.nii.gz"))
    assert 1 <= len(done) < len(inputs)
    for path in done:
        assert sitk.ReadImage(str(path)).GetSize() == (32, 32, 32)
    assert tmp_leftovers(out) == []
    statuses = [r["status"] for r in manifest(out)]
    assert statuses.count("ok") == len(done)  # and the rest is listed as left to do
    assert statuses.count("not-started") == len(inputs) - len(done) == len(statuses) - len(done)

    code, _, err = run_cli(*args)
    assert code == 0, err
    rows = last_run(out)
    assert sorted(Path(r["output"]) for r in rows if r["status"] == "skipped") == done
    assert sum(r["status"] == "ok" for r in rows) == len(inputs) - len(done)
    assert len(list(out.glob("*_SR.nii.gz"))) == len(inputs)


# --- bounded memory ---------------------------------------------------------------------


def test_memory_bounded_by_queues_not_batch_size(tmp_path, models, monkeypatch):
    """Peak traced memory over 40 volumes < 1.5 x that over 10 volumes + 2 MB.

    20^3 MetaImage inputs (40^3 float32 network inputs, 256 KB each; MetaImage, not NIfTI,
    so the 4 MB reads of the NIfTI length check do not swamp the numbers). The network is
    made 20 ms slower per volume so the readers outrun it on any device: unbounded queues
    would then hold most of the batch. Measured on 2 CPU cores: ~3.5 MB at both counts;
    with unbounded queues (``prefetch`` 10000) ~11 MB over 40 volumes against a limit of
    ~7.5 MB. Compilation is warmed up first.
    """
    run_network = pipeline.run_network

    def slow_network(*args, **kwargs):
        time.sleep(0.02)
        return run_network(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_network", slow_network)
    small = many_volumes(tmp_path / "small", 10, size=20, ext=".mha")
    large = many_volumes(tmp_path / "large", 40, size=20, ext=".mha")
    base = ["-m", models["mono"], "-s", SCALE]
    assert run_cli(small[0], "--out-dir", tmp_path / "warm", *base)[0] == 0

    def peak(folder: Path, out: Path) -> int:
        tracemalloc.start()
        try:
            assert run_cli(folder, "--out-dir", out, "--glob", "*.mha", *base)[0] == 0
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    p10 = peak(small[0].parent, tmp_path / "out10")
    p40 = peak(large[0].parent, tmp_path / "out40")
    assert len(list((tmp_path / "out40").glob("*_SR.mha"))) == 40
    mb = 1 << 20
    assert p40 < 1.5 * p10 + 2 * mb, (
        f"peak {p40 / mb:.2f} MB over 40 volumes vs {p10 / mb:.2f} MB over 10: "
        f"limit {(1.5 * p10 + 2 * mb) / mb:.2f} MB")


# --- DICOM series -----------------------------------------------------------------------


@pytest.fixture
def dicom_series(tmp_path) -> Path:
    """A 7 x 6 x 5 int16 series in ``in/sub-01/t1_series``."""
    values = np.random.default_rng(3).integers(10, 1000, (7, 6, 5))
    folder = tmp_path / "in" / "sub-01" / "t1_series"
    write_dicom_series(values, folder)
    return folder


def test_dicom_series_reads_back_as_written(tmp_path):
    """A series whose file names run against its slice positions reads back as written:
    the same (x, y, z) voxels exactly, slices in Image Position order, the spacing and
    origin of the series (to 1e-6 mm and 1e-4 mm)."""
    values = np.random.default_rng(5).integers(10, 1000, (7, 6, 5))
    folder = tmp_path / "series"
    write_dicom_series(values, folder, spacing=(0.9, 1.1, 2.0), origin=(-5.0, 3.0, 10.0))
    files = sorted(folder.iterdir())
    for k, path in enumerate(files):  # z = 0 becomes the last name, z = 4 the first
        path.rename(folder / f"tmp{len(files) - 1 - k:03d}")
    for path in folder.iterdir():
        path.rename(folder / f"{path.name.replace('tmp', 'slice')}.dcm")
    image = read_input(folder)
    np.testing.assert_array_equal(to_array(image, np.float64), values)
    np.testing.assert_allclose(image.GetSpacing(), (0.9, 1.1, 2.0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), (-5.0, 3.0, 10.0), rtol=0, atol=1e-4)


def test_a_dicom_folder_of_two_series_is_refused_naming_both(tmp_path, models):
    """A folder holding two series (a T1 and a T2 put together): no series is guessed;
    one line naming the folder, the count and both Series Instance UIDs, exit 1, no
    output."""
    folder = tmp_path / "mixed"
    for name, seed in (("t1", 3), ("t2", 4)):
        write_dicom_series(np.random.default_rng(seed).integers(10, 1000, (7, 6, 5)),
                           tmp_path / name)
        for path in (tmp_path / name).iterdir():
            folder.mkdir(exist_ok=True)
            path.rename(folder / f"{name}_{path.name}")
    uids = sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    assert len(uids) == 2
    code, _, err = run_cli(folder, "-o", tmp_path / "out.nii.gz", "-m", models["mono"],
                           "-s", SCALE)
    assert code == 1
    (line,) = error_lines(err)
    assert str(folder) in line and "2 DICOM series" in line, line
    assert all(uid in line for uid in uids), line
    assert not (tmp_path / "out.nii.gz").exists()


def test_dicom_series_gives_the_result_of_the_same_volume_as_nifti(dicom_series, tmp_path,
                                                                     models):
    """``sr FOLDER`` equals ``sr`` of the series' voxels and geometry written as NIfTI:
    same grid, voxels to 1e-6 of the largest."""
    nifti = save(read_input(dicom_series), tmp_path / "series.nii.gz")
    from_series, from_nifti = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    for source, output in ((dicom_series, from_series), (nifti, from_nifti)):
        code, _, err = run_cli(source, "-o", output, "-m", models["mono"], "-s", SCALE)
        assert code == 0, err
    assert_same_result(sitk.ReadImage(str(from_series)), sitk.ReadImage(str(from_nifti)))


def test_dicom_series_single_input(dicom_series, tmp_path, models):
    """``sr FOLDER -o out.nii.gz`` reads the series as one volume: output 2x its size."""
    output = tmp_path / "out.nii.gz"
    code, _, err = run_cli(dicom_series, "-o", output, "-m", models["mono"], "-s", SCALE)
    assert code == 0, err
    assert sitk.ReadImage(str(output)).GetSize() == (14, 12, 10)


def test_dicom_series_batch_named_after_folder(dicom_series, tmp_path, models):
    """Batch mode over a parent folder finds the series and names the output after it;
    the result equals the single-input command's (to 1e-6 relative)."""
    single = tmp_path / "single.nii.gz"
    assert run_cli(dicom_series, "-o", single, "-m", models["mono"], "-s", SCALE)[0] == 0
    code, _, err = run_cli(tmp_path / "in", "--out-dir", tmp_path / "out", "-m",
                           models["mono"], "-s", SCALE)
    assert code == 0, err
    output = tmp_path / "out" / "sub-01" / "t1_series_SR.nii.gz"
    assert [r["output"] for r in manifest(tmp_path / "out")] == [str(output)]
    assert_same_result(sitk.ReadImage(str(output)), sitk.ReadImage(str(single)))
    assert sitk.ReadImage(str(output)).GetSize() == (14, 12, 10)


# --- multimodal pairing -----------------------------------------------------------------


@pytest.fixture
def multimodal(tmp_path, anatomical_image):
    """``sub-01``: T1w crop + T2w on the super-resolved grid; ``sub-02``: T1w, no T2w."""
    src = tmp_path / "in"
    t1 = crop(anatomical_image, (10, 12, 8), (9, 10, 7))
    size = tuple(SCALE * n for n in t1.GetSize())
    geometry = zoomed_geometry(t1, size, (SCALE,) * 3)
    t2 = to_image(np.random.default_rng(4).uniform(5, 50, size).astype(np.float32),
                     *geometry)
    save(t1, src / "sub-01" / "sub-01_T1w.nii.gz")
    save(t2, src / "sub-01" / "sub-01_T2w.nii.gz")
    save(crop(anatomical_image, (12, 12, 9), (8, 8, 8)), src / "sub-02" / "sub-02_T1w.nii.gz")
    return src


def run_multimodal(src: Path, out: Path, models) -> tuple[int, str, str]:
    return run_cli(src, "--out-dir", out, "-m", models["multi"], "-s", SCALE, "--glob",
                   "*_T1w.nii.gz", "--reference-pattern", "T1w:T2w", quiet=False)


def test_multimodal_pairs_reference(multimodal, tmp_path, models):
    """Each T1w is paired with its T2w; the output equals ``SuperResolver.run`` with it as
    reference (to 1e-6 relative), and a reference on the output grid is not resampled."""
    out = tmp_path / "out"
    _, _, err = run_multimodal(multimodal, out, models)
    assert "resampled" not in err, err
    folder = multimodal / "sub-01"
    want = SuperResolver.load(models["multi"]).run(
        sitk.ReadImage(str(folder / "sub-01_T1w.nii.gz")), SCALE,
        reference=sitk.ReadImage(str(folder / "sub-01_T2w.nii.gz")), log=lambda m: None)
    assert_same_result(sitk.ReadImage(str(out / "sub-01" / "sub-01_T1w_SR.nii.gz")), want)
    row = next(r for r in manifest(out) if r["status"] == "ok")
    assert row["reference"] == str(folder / "sub-01_T2w.nii.gz")


def test_multimodal_missing_reference_fails_that_job_only(multimodal, tmp_path, models):
    """A T1w without its T2w fails alone, naming the missing reference; the batch exits 1."""
    out = tmp_path / "out"
    code, _, err = run_multimodal(multimodal, out, models)
    assert code == 1
    (line,) = error_lines(err)
    assert str(multimodal / "sub-02" / "sub-02_T2w.nii.gz") in line
    assert (out / "sub-01" / "sub-01_T1w_SR.nii.gz").is_file()
    assert not (out / "sub-02").exists() or not any((out / "sub-02").iterdir())
    assert sorted(r["status"] for r in manifest(out)) == ["error", "ok"]


# --- --dry-run and --json ----------------------------------------------------------------


def test_dry_run_lists_jobs_and_writes_nothing(tmp_path, models):
    """--dry-run prints ``input -> output`` per job, exits 0 and creates nothing."""
    src, out = tmp_path / "in", tmp_path / "out"
    a = save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    b = save(synthetic((6, 6, 6), 1), src / "sub" / "b.nii")
    before = sorted(tmp_path.rglob("*"))
    code, stdout, _ = run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE,
                              "--dry-run")
    assert code == 0
    assert stdout.splitlines() == [f"{a} -> {out / 'a_SR.nii.gz'}",
                                   f"{b} -> {out / 'sub' / 'b_SR.nii'}"]
    assert sorted(tmp_path.rglob("*")) == before


def test_json_summary(tmp_path, models):
    """--json prints one JSON object on stdout with the ok, skipped and errors counts."""
    src, out = tmp_path / "in", tmp_path / "out"
    save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    save(synthetic((7, 6, 6), 1), src / "b.nii.gz")
    (src / "c.nii").write_bytes(b"not an image")
    args = [src, "--out-dir", out, "-m", models["mono"], "-s", SCALE, "--json"]
    code, stdout, _ = run_cli(*args)
    assert code == 1
    (line,) = stdout.splitlines()
    facts = json.loads(line)
    assert (facts["ok"], facts["skipped"], facts["errors"]) == (2, 0, 1)
    (src / "c.nii").unlink()
    code, stdout, _ = run_cli(*args)
    assert code == 0
    facts = json.loads(stdout)
    assert (facts["ok"], facts["skipped"], facts["errors"]) == (0, 2, 0)


# --- a full disk ------------------------------------------------------------------------


def run_in_thread(function, timeout: float = 60) -> dict:
    """Call ``function()`` in a daemon thread; {"result"} or {"error"}, or fail the test if
    it is still running after ``timeout`` seconds (a hang)."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = function()
        except Exception as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s: the run hangs"
    return outcome


def test_manifest_on_full_disk_stops_the_run_with_one_error(tmp_path, resolver):
    """When the manifest cannot be written (ENOSPC: here /dev/full), the run stops with one
    SrrecnnError naming the manifest, instead of hanging with its writer thread dead.

    Eight volumes: more than the queues hold, so a dead writer would block the devices."""
    src, out = tmp_path / "in", tmp_path / "out"
    many_volumes(src, 8, size=6)
    jobs = plan_jobs(collect_inputs([src]), out)
    full = Manifest(Path("/dev/full"))
    outcome = run_in_thread(lambda: batch.run_batch(resolver, jobs, batch.Options(
        InferenceOptions((SCALE,) * 3)), full, out))
    error = outcome.get("error")
    assert isinstance(error, SrrecnnError), outcome
    assert "/dev/full" in str(error) and "No space left on device" in str(error)
    assert len(str(error).splitlines()) == 1
    assert tmp_leftovers(out) == []


def test_output_that_does_not_read_back_is_a_failed_job(tmp_path, models, monkeypatch):
    """An output cut short without an error (a full disk under a writer that does not
    report it: here a .mha truncated after WriteImage) is a failed job, never "ok"."""
    src, out = tmp_path / "in", tmp_path / "out"
    save(synthetic((6, 6, 6), 0), src / "a.mha")
    write_image = sitk.WriteImage

    def short_write(image, name, *args, **kwargs):
        write_image(image, name, *args, **kwargs)
        os.truncate(name, os.path.getsize(name) // 2)

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    code, _, err = run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE,
                           "--glob", "*.mha")
    assert code == 1
    (line,) = error_lines(err)
    assert str(out / "a_SR.mha") in line and "disk full" in line
    assert [r["status"] for r in manifest(out)] == ["error"]
    assert not (out / "a_SR.mha").exists()


# --- file names that are not UTF-8 ------------------------------------------------------


@pytest.mark.slow
def test_file_name_not_utf8_is_one_failed_job(tmp_path, models):
    """A scan named with a byte that is not UTF-8 (``scan_\\xff.nii.gz``, a Latin-1 name)
    fails alone: one error line naming it (the byte shown as ``\\xff``), an error row in
    the manifest, exit 1; the other scan is written and no staging folder is left. (The
    real command: SimpleITK aborted the whole process on such a name.)"""
    src, out = tmp_path / "in", tmp_path / "out"
    save(synthetic((6, 6, 6), 0), src / "good.nii.gz")
    staged = save(synthetic((6, 6, 6), 1), src / "latin1.nii.gz")
    os.rename(os.fsencode(staged), os.fsencode(src) + b"/scan_\xff.nii.gz")
    proc = subprocess.run(command(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("srrecnn: error:") and "scan_\\xff.nii.gz" in line, line
    assert "not valid UTF-8" in line, line
    assert (out / "good_SR.nii.gz").is_file()
    rows = {os.fsencode(r["input"]): r["status"] for r in manifest(out)}
    assert rows == {os.fsencode(src) + b"/scan_\xff.nii.gz": "error",
                    os.fsencode(src / "good.nii.gz"): "ok"}
    assert tmp_leftovers(out) == []


def test_list_file_not_utf8_is_one_error_line(tmp_path, models):
    """A .txt list that is not UTF-8 text (here Latin-1) ends the batch before any work with
    one line naming the list file; nothing is written."""
    scan = save(synthetic((6, 6, 6), 0), tmp_path / "in" / "a.nii.gz")
    listing = tmp_path / "scans.txt"
    listing.write_bytes(f"{scan}\n".encode() + b"# caf\xe9\n")
    code, _, err = run_cli(listing, "--out-dir", tmp_path / "out", "-m", models["mono"],
                           "-s", SCALE)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("srrecnn: error:") and str(listing) in line, line
    assert "not UTF-8" in line, line
    assert not (tmp_path / "out").exists()


# --- a read-only output folder ----------------------------------------------------------


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run without the capabilities that let root ignore file permissions."""
    if os.geteuid() != 0:
        return argv
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions are not enforced")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *argv]


@pytest.mark.slow
def test_read_only_out_dir_is_one_error_line(tmp_path, models):
    """A read-only --out-dir ends the batch with one `srrecnn: error:` line naming it,
    exit 1, no traceback, nothing written (the real command: permissions are the point)."""
    src, out = tmp_path / "in", tmp_path / "out"
    save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    out.mkdir()
    out.chmod(0o555)
    try:
        proc = subprocess.run(unprivileged(command(src, "--out-dir", out, "-m", models["mono"],
                                                   "-s", SCALE)),
                              capture_output=True, text=True, timeout=120)
    finally:
        out.chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("srrecnn: error:") and str(out) in line, line
    assert list(out.iterdir()) == []


# --- one run at a time per output folder ------------------------------------------------


def test_second_run_into_a_locked_out_dir_is_refused(tmp_path, models):
    """While another run holds OUT_DIR/.srrecnn.lock (here: the test, through its own open
    file), a batch into OUT_DIR is refused with one line naming the folder and the holder;
    it writes nothing."""
    src, out = tmp_path / "in", tmp_path / "out"
    save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    out.mkdir()
    with open(out / ".srrecnn.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"pid {os.getpid()} on testhost\n")
        held.flush()
        code, _, err = run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE)
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("srrecnn: error:") and str(out) in line, line
    assert f"pid {os.getpid()} on testhost" in line
    assert sorted(p.name for p in out.iterdir()) == [".srrecnn.lock"]


def test_a_second_run_of_the_same_share_is_refused_and_another_share_runs(tmp_path, models):
    """While a ``--shard 0/2`` run holds the folder (shared) and its share's lock (here:
    the test, through its own open files), a second ``--shard 0/2`` into the folder is
    refused with one line naming the share and the holder, writing nothing; ``--shard
    1/2`` runs beside it (two 0/2 runs used to write the same outputs, both exit 0)."""
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        save(synthetic((6, 6, 6), i), src / f"a{i}.nii.gz")
    out.mkdir()
    with open(out / ".srrecnn.lock", "a+") as folder, \
            open(out / ".srrecnn-share-00000-of-00002.lock", "a+") as share:
        fcntl.flock(folder, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(share, fcntl.LOCK_EX | fcntl.LOCK_NB)
        share.write(f"pid {os.getpid()} on testhost (process 0 of 2)\n")
        share.flush()
        code, _, err = run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE,
                               "--shard", "0/2")
        assert code == 1
        (line,) = error_lines(err)
        assert "share 0 of 2" in line and f"pid {os.getpid()} on testhost" in line, line
        assert list(out.rglob("*.nii*")) == []
        code, _, err = run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE,
                               "--shard", "1/2")
        assert code == 0, err
        assert len(list(out.rglob("*_SR.nii.gz"))) == 2


def test_lock_is_removed_after_the_run(tmp_path, models):
    """A finished run leaves no lock file behind."""
    src, out = tmp_path / "in", tmp_path / "out"
    save(synthetic((6, 6, 6), 0), src / "a.nii.gz")
    assert run_cli(src, "--out-dir", out, "-m", models["mono"], "-s", SCALE)[0] == 0
    assert not (out / ".srrecnn.lock").exists()


def write_gzip_bomb(path: Path, trailing: int) -> Path:
    """A valid 8^3 float32 NIfTI-1 whose gzip stream goes on with ``trailing`` bytes of
    zeros after the voxels (a few hundred KB on disk; written chunk by chunk)."""
    import nibabel

    tmp = path.with_suffix(".tmp.nii")
    nibabel.save(nibabel.Nifti1Image(np.random.default_rng(0).uniform(
        1, 2, (8, 8, 8)).astype(np.float32), np.eye(4)), tmp)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = bytes(1 << 24)
    with open(path, "wb") as out:
        out.write(packer.compress(tmp.read_bytes()))
        for _ in range(trailing // len(zeros)):
            out.write(packer.compress(zeros))
        out.write(packer.flush())
    tmp.unlink()
    return path


@pytest.mark.slow
def test_gzip_bombs_read_by_four_workers_at_once_keep_memory_bounded(tmp_path, models):
    """Four .nii.gz files that decompress to 512 MB each (a valid 8^3 image, then zeros)
    and one whose header declares 4000^3 voxels, read by ``--workers 4`` at once: the
    bombs are read only as far as their voxels (and super-resolved), the huge one is
    refused from its header, and the run's peak memory stays under 1.5 GB (2 GB of zeros
    would be decompressed otherwise)."""
    import gzip
    import struct

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        write_gzip_bomb(src / f"bomb{i}.nii.gz", 512 << 20)
    header = bytearray(352)
    header[0:4] = struct.pack("<i", 348)
    header[40:56] = struct.pack("<8h", 3, 4000, 4000, 4000, 1, 1, 1, 1)
    header[70:74] = struct.pack("<2h", 16, 32)
    header[76:92] = struct.pack("<4f", 1, 1, 1, 1)
    header[108:112] = struct.pack("<f", 352)
    header[344:348] = b"n+1\0"
    (src / "huge.nii.gz").write_bytes(gzip.compress(bytes(header) + bytes(4096)))
    # The run's own peak: a wrapper process waits for it alone and reports its maxrss.
    measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode;"
               " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", measure,
                             *command(src, "--out-dir", tmp_path / "out", "-m", models["mono"],
                                      "-s", SCALE, "--workers", "4")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr  # the huge one fails as its own job
    (line,) = error_lines(result.stderr)
    assert "huge.nii.gz" in line, line
    assert len(list((tmp_path / "out").glob("bomb*_SR.nii.gz"))) == 4
    peak_kb = int(result.stdout.split()[-1])
    assert peak_kb < 1.5 * 2**20, f"peak {peak_kb / 2**20:.2f} GB"


def test_a_written_row_records_the_inputs_noise_estimate(tmp_path, models):
    """Each ok row carries ``noise_percent``: about 3 (within 20%) for a smooth volume
    with Rician noise of 3% of its maximum, near 0 for the clean one."""
    from srrecnn_jax.degradation import rician_noise

    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij"))
    clean = (0.5 + 0.5 * np.exp(-(grid ** 2).sum(0))).astype(np.float32)
    noisy = rician_noise(clean, 0.03 * float(clean.max()), np.random.default_rng(0))
    src = tmp_path / "in"
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    save(to_image(clean, (1, 1, 1), (0, 0, 0), identity), src / "clean.nii.gz")
    save(to_image(noisy, (1, 1, 1), (0, 0, 0), identity), src / "noisy.nii.gz")
    code, _, err = run_cli(src, "--out-dir", tmp_path / "out", "-m", models["mono"],
                           "-s", SCALE)
    assert code == 0, err
    rows = {Path(r["input"]).name: r for r in manifest(tmp_path / "out")}
    assert rows["clean.nii.gz"]["noise_percent"] < 0.3
    assert abs(rows["noisy.nii.gz"]["noise_percent"] * float(noisy.max()) / 3.0 - 1) < 0.2
