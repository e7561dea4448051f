"""``srrecnn sr`` on bad input: one line on stderr, a non-zero exit, nothing written.

Every failing call below changes one thing in a known-good call (``good``, checked by
``test_good_call_succeeds``) and must end with:

* exit status 1 for bad input, 2 for an argparse usage error;
* stderr (file descriptor 2, so C libraries are heard too) exactly one line that
  starts with ``srrecnn``, contains ``error`` and names the offending file or option;
* no traceback;
* the output's folder exactly as it was: no output, no temporary file.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from srrecnn_jax import cli, inference
from srrecnn_jax.errors import SrrecnnError

LR_SIZE = (8, 7, 6)  # SimpleITK (x, y, z) size of the good input


# --- fixtures and helpers ---------------------------------------------------------------



def lr_image(values: np.ndarray | None = None) -> sitk.Image:
    """An (x, y, z) = ``LR_SIZE`` float32 image, positive random voxels unless given."""
    if values is None:
        values = np.random.default_rng(0).uniform(0.1, 1.0, LR_SIZE[::-1])
    image = sitk.GetImageFromArray(np.asarray(values, np.float32))
    image.SetSpacing((1.2, 0.9, 3.0))
    image.SetOrigin((-10.0, 5.0, 2.0))
    return image


@pytest.fixture
def in_dir(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    return tmp_path / "in"


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


@pytest.fixture
def lr_path(in_dir: Path) -> Path:
    path = in_dir / "lr.nii.gz"
    sitk.WriteImage(lr_image(), str(path))
    return path


@pytest.fixture
def good(lr_path: Path, out_dir: Path, models: dict[str, Path]) -> dict[str, str]:
    """The options of a good call, as a dict so that a test can change one."""
    return {"input": str(lr_path), "-o": str(out_dir / "out.nii.gz"),
            "-m": str(models["mono"]), "-s": "2"}


def argv(options: dict[str, str | None], *extra: str) -> list[str]:
    """``sr INPUT -o ... -m ... -s ... EXTRA`` from ``options`` (a None value drops it)."""
    args = ["sr", options["input"]]
    for key, value in options.items():
        if key != "input" and value is not None:
            args += [key, value]
    return args + list(extra)


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def expect_error(args: list[str], capfd, folder: Path, status: int = 1) -> str:
    """Run ``main(args)``; check the failure contract; return the one stderr line."""
    before = listing(folder)
    capfd.readouterr()
    if status == 2:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
        code = exit_info.value.code
    else:
        code = cli.main(args)
    captured = capfd.readouterr()
    assert code == status, captured.err
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("srrecnn") and "error" in lines[0], lines[0]
    assert listing(folder) == before, "the output folder changed"
    assert captured.out == ""
    return lines[0]


# --- the baseline -----------------------------------------------------------------------


def test_good_call_succeeds(good, out_dir, capfd):
    """The unchanged good call exits 0, reports one line and writes only its output."""
    capfd.readouterr()
    assert cli.main(argv(good)) == 0
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and "error" not in err
    assert listing(out_dir) == ["out.nii.gz"]
    assert sitk.ReadImage(good["-o"]).GetSize() == tuple(2 * n for n in LR_SIZE)


# --- the input image --------------------------------------------------------------------


def test_missing_input(good, in_dir, out_dir, capfd):
    """An input that does not exist is named."""
    missing = str(in_dir / "nope.nii.gz")
    line = expect_error(argv({**good, "input": missing}), capfd, out_dir)
    assert missing in line


def _random_bytes(path: Path, lr_path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(2000))


def _header_cut(path: Path, lr_path: Path) -> None:
    path.write_bytes(lr_path.read_bytes()[:100])


def _data_cut_gz(path: Path, lr_path: Path) -> None:
    raw = lr_path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])


def _data_cut_nii(path: Path, lr_path: Path) -> None:
    raw = gzip.decompress(lr_path.read_bytes())
    path.write_bytes(raw[:len(raw) - 200])



@pytest.mark.parametrize("name, make", [
    ("random.nii", _random_bytes),
    ("header_cut.nii.gz", _header_cut),
    ("data_cut.nii.gz", _data_cut_gz),
    ("data_cut.nii", _data_cut_nii),
])
def test_corrupt_input(name, make, good, lr_path, in_dir, out_dir, capfd):
    """Random bytes and truncated files (header or voxel data cut short) are refused by name."""
    path = in_dir / name
    make(path, lr_path)
    line = expect_error(argv({**good, "input": str(path)}), capfd, out_dir)
    assert str(path) in line


def _join_series() -> sitk.Image:
    return sitk.JoinSeries([lr_image(), lr_image()])


@pytest.mark.parametrize("name, make", [
    ("2d.nii", lambda: sitk.Image([8, 8], sitk.sitkFloat32) + 1),
    ("one_slice.nii", lambda: sitk.Image([8, 8, 1], sitk.sitkFloat32) + 1),
    ("4d_image.nii.gz", lambda: sitk.Image([6, 6, 6, 2], sitk.sitkFloat32)),
    ("4d_series.nii.gz", _join_series),
    ("vector.nrrd", lambda: sitk.Image([6, 6, 6], sitk.sitkVectorFloat32, 3)),
])
def test_input_not_scalar_3d(name, make, good, in_dir, out_dir, capfd):
    """2-D, single-slice, 4-D and multi-component images are refused by name."""
    path = in_dir / name
    sitk.WriteImage(make(), str(path))
    line = expect_error(argv({**good, "input": str(path)}), capfd, out_dir)
    assert str(path) in line


def _with(value: float) -> np.ndarray:
    values = np.random.default_rng(0).uniform(0.1, 1.0, LR_SIZE[::-1])
    values[1, 2, 3] = value
    return values


@pytest.mark.parametrize("name, values", [
    ("zero.nii.gz", np.zeros(LR_SIZE[::-1])),
    ("negative.nii.gz", -np.random.default_rng(0).uniform(0.1, 1.0, LR_SIZE[::-1])),
    ("nan.nrrd", _with(np.nan)),
    ("inf.mha", _with(np.inf)),
    ("minus_inf.nrrd", _with(-np.inf)),
    ("nan.nii.gz", _with(np.nan)),
    ("inf.nii", _with(np.inf)),
])
def test_input_values_unusable(name, values, good, in_dir, out_dir, capfd):
    """All-zero, all-negative and non-finite images fail: NaN/inf kept by NRRD/MetaImage,
    and in NIfTI, which SimpleITK reads as 0 (found on the raw data: ``test_nifti.py``)."""
    path = in_dir / name
    sitk.WriteImage(lr_image(values), str(path))
    line = expect_error(argv({**good, "input": str(path)}), capfd, out_dir)
    assert str(path) in line


# --- options ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["0", "-2", "abc", "2,2", "2,2,2,2", "nan", "inf", "2,0,2"])
def test_bad_scale(scale, good, out_dir, capfd):
    """A scale that is not one or three finite positive numbers is a usage error (2)."""
    line = expect_error(argv({**good, "-s": scale}), capfd, out_dir, status=2)
    assert "--scale" in line


def test_scale_too_small_for_input(good, out_dir, capfd):
    """A scale that leaves fewer than two output voxels along an axis names --scale."""
    line = expect_error(argv({**good, "-s": "0.1"}), capfd, out_dir)
    assert "--scale" in line


@pytest.mark.parametrize("option, value", [
    ("--tile", "0"), ("--tile", "abc"), ("--tile", "-3"),
    ("--order", "7"), ("--order", "-1"), ("--order", "2.5"),
    ("--header", "sideways"),
])
def test_bad_option_value(option, value, good, out_dir, capfd):
    """--tile below 1 or not an integer, --order outside 0-5, an unknown --header: usage."""
    line = expect_error(argv(good, option, value), capfd, out_dir, status=2)
    assert option in line


# --- the model --------------------------------------------------------------------------


def _no_file(path: Path, lr_path: Path) -> None:
    pass


def _truncated_caffemodel(path: Path, lr_path: Path) -> None:
    # field 100 (LayerParameter), length-delimited, says 255 bytes follow; 10 do
    path.write_bytes(b"\xa2\x06\xff\x01" + b"x" * 10)


def _nifti(path: Path, lr_path: Path) -> None:
    sitk.WriteImage(lr_image(), str(path))


def _text(path: Path, lr_path: Path) -> None:
    path.write_text("name: \"not a model\"\nlayer { type: \"Convolution\" }\n")


def _empty_folder(path: Path, lr_path: Path) -> None:
    path.mkdir()


def _bad_config_json(path: Path, lr_path: Path) -> None:
    path.mkdir()
    (path / "config.json").write_text("{not json")


@pytest.mark.parametrize("name, make", [
    ("missing.caffemodel", _no_file),
    ("truncated.caffemodel", _truncated_caffemodel),
    ("image.nii", _nifti),
    ("notes.txt", _text),
    ("empty_folder", _empty_folder),
    ("bad_config", _bad_config_json),
])
def test_bad_model(name, make, good, lr_path, in_dir, out_dir, capfd):
    """A missing, truncated or foreign model file, or a folder without a model, is named."""
    path = in_dir / name
    make(path, lr_path)
    line = expect_error(argv({**good, "-m": str(path)}), capfd, out_dir)
    assert str(path) in line


def test_model_folder_without_params(good, models, tmp_path, out_dir, capfd):
    """A model folder whose parameters were deleted is named, in one line."""
    path = tmp_path / "damaged"
    path.mkdir()
    shutil.copy(models["mono"] / "config.json", path / "config.json")
    line = expect_error(argv({**good, "-m": str(path)}), capfd, out_dir)
    assert str(path) in line


# --- the reference ----------------------------------------------------------------------


def test_multimodal_model_needs_reference(good, models, out_dir, capfd):
    """A 2-channel model without --reference names --reference."""
    line = expect_error(argv({**good, "-m": str(models["multi"])}), capfd, out_dir)
    assert "--reference" in line


def test_monomodal_model_takes_no_reference(good, lr_path, out_dir, capfd):
    """A 1-channel model given a --reference names --reference."""
    line = expect_error(argv({**good, "-r": str(lr_path)}), capfd, out_dir)
    assert "--reference" in line



@pytest.mark.slow
def test_reference_without_overlap(good, models, in_dir, out_dir):
    """A same-size reference 1000 mm away from the input (no physical overlap) is named.

    Real command in a subprocess, with a large output grid (336 x 336 x 300 voxels, over
    32 MiB) so that the check is exercised where it matters; it fails before any zoom.
    """
    reference = lr_image()
    reference.SetOrigin(tuple(o + 1000.0 for o in reference.GetOrigin()))
    path = in_dir / "far.nii.gz"
    sitk.WriteImage(reference, str(path))
    args = argv({**good, "-m": str(models["multi"]), "-r": str(path), "-s": "42,48,50"})
    result = subprocess.run([sys.executable, "-m", "srrecnn_jax.cli"] + args,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr[-500:]}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("srrecnn") and "error" in lines[0] and str(path) in lines[0]
    assert listing(out_dir) == []


# --- the output -------------------------------------------------------------------------


def test_output_unknown_extension(good, out_dir, capfd):
    """An output name with no image extension (out.xyz) is named."""
    output = str(out_dir / "out.xyz")
    line = expect_error(argv({**good, "-o": output}), capfd, out_dir)
    assert output in line


def test_output_exists_without_force(good, out_dir, capfd):
    """An existing output is named and left byte for byte as it was without --force."""
    output = out_dir / "out.nii.gz"
    output.write_bytes(b"precious")
    line = expect_error(argv(good), capfd, out_dir)
    assert str(output) in line
    assert output.read_bytes() == b"precious"


def test_force_replaces_existing_output(good, out_dir, capfd):
    """With --force an existing output is replaced by the image, and nothing else is left."""
    output = out_dir / "out.nii.gz"
    output.write_bytes(b"old")
    assert cli.main(argv(good, "--force")) == 0
    assert listing(out_dir) == ["out.nii.gz"]
    assert sitk.ReadImage(str(output)).GetSize() == tuple(2 * n for n in LR_SIZE)


def test_output_is_input(good, lr_path, in_dir, capfd):
    """An output that is the input file is refused, and the input is left unchanged."""
    before = lr_path.read_bytes()
    line = expect_error(argv({**good, "-o": str(lr_path)}, "--force"), capfd, in_dir)
    assert str(lr_path) in line
    assert lr_path.read_bytes() == before


def test_output_folder_missing_is_created(good, out_dir):
    """``sr IN -o new/sub/out.nii.gz``: the missing folders are made and the output written,
    as batch mode makes its --out-dir and the folders below it."""
    output = out_dir / "new" / "sub" / "out.nii.gz"
    assert cli.main(argv({**good, "-o": str(output)})) == 0
    assert listing(output.parent) == ["out.nii.gz"]
    assert sitk.ReadImage(str(output)).GetSize() == tuple(2 * n for n in LR_SIZE)


def test_output_folder_that_cannot_be_made(good, out_dir, capfd):
    """An output below a file (its folder cannot be made) is named, refused before any
    work, and nothing is made."""
    (out_dir / "file").write_bytes(b"")
    output = str(out_dir / "file" / "sub" / "out.nii.gz")
    line = expect_error(argv({**good, "-o": output}), capfd, out_dir)
    assert output in line and "cannot create folder" in line



@pytest.mark.parametrize("suffix", [
    ".NII",
    ".nii.GZ",
    ".MHA",
])
def test_output_name_accepted_is_written_or_refused_early(suffix, good, out_dir, capfd,
                                                          monkeypatch):
    """An output name is either written, or refused before the model is even read."""
    loads = []

    def load_model(*args, **kwargs):
        loads.append(args)
        return original(*args, **kwargs)

    original = inference.load_model
    monkeypatch.setattr(inference, "load_model", load_model)
    output = out_dir / f"out{suffix}"
    capfd.readouterr()
    code = cli.main(argv({**good, "-o": str(output)}))
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1, err
    if code == 0:
        assert listing(out_dir) == [output.name]
        assert sitk.ReadImage(str(output)).GetSize() == tuple(2 * n for n in LR_SIZE)
    else:
        assert loads == [], "refused only after the work was done"
        assert listing(out_dir) == []


# --- atomic writes ----------------------------------------------------------------------


def test_failed_write_leaves_nothing(good, out_dir, capfd, monkeypatch):
    """A write that fails half-way leaves neither output nor temporary file; one error line."""
    written = []

    def write_half(image, path, *args, **kwargs):
        Path(path).write_bytes(b"\x5c\x01\x00\x00 partial")
        written.append(path)
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(sitk, "WriteImage", write_half)
    line = expect_error(argv(good), capfd, out_dir)
    assert good["-o"] in line
    assert len(written) == 1 and out_dir in Path(written[0]).parents  # staged beside it



@pytest.mark.parametrize("suffix", [
    ".nii", ".nii.gz", ".nrrd", ".mha",
    ".mhd",
    ".nhdr",
    ".hdr",
])
def test_successful_write_leaves_only_output(suffix, good, out_dir):
    """Every accepted format ends as the output's own files, readable, no temporary names."""
    output = out_dir / f"out{suffix}"
    assert cli.main(argv({**good, "-o": str(output)})) == 0
    names = listing(out_dir)
    assert all(name.startswith("out.") for name in names), names
    image = sitk.ReadImage(str(output))
    assert image.GetSize() == tuple(2 * n for n in LR_SIZE)


# --- --debug and the real command -------------------------------------------------------


def test_debug_raises(good, in_dir):
    """--debug lets the error propagate (traceback) instead of printing one line."""
    missing = str(in_dir / "nope.nii.gz")
    with pytest.raises(SrrecnnError, match="nope.nii.gz"):
        cli.main(["--debug"] + argv({**good, "input": missing}))


def _commands() -> list[list[str]]:
    commands = [[sys.executable, "-m", "srrecnn_jax.cli"]]
    script = shutil.which("srrecnn", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if script:
        commands.append([script])
    return commands


@pytest.mark.parametrize("command", _commands(), ids=lambda c: Path(c[-1]).name)
@pytest.mark.slow
def test_subprocess_missing_input(command, good, in_dir, out_dir):
    """The real command (module and console script): exit 1, one stderr line, no traceback."""
    missing = str(in_dir / "nope.nii.gz")
    result = subprocess.run(command + argv({**good, "input": missing}), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("srrecnn") and "error" in lines[0] and missing in lines[0]
    assert result.stdout == ""
    assert listing(out_dir) == []


def test_every_option_of_every_subcommand_has_help():
    """Each argument of each subcommand (positional or option) has a help text, unless
    hidden (an old spelling kept as an alias)."""
    import argparse

    from srrecnn_jax.cli import common
    from srrecnn_jax.cli.main import build_parser

    found = [(command, action) for command, action in common.walk_options(build_parser())]
    assert {"train", "make-patches", "demo", "convert"} <= {c for c, _ in found}
    bare = [f"{command or 'srrecnn'}: {'/'.join(action.option_strings) or action.dest}"
            for command, action in found
            if action.help is not argparse.SUPPRESS and not (action.help or "").strip()]
    assert bare == []


@pytest.mark.parametrize("command, old, new, dest", [
    (["train", "data.h5"], "--out", "--out-dir", "out_dir"),
    (["demo"], "--out", "--out-dir", "out_dir"),
])
def test_renamed_option_keeps_its_old_spelling_out_of_the_help(command, old, new, dest, capsys):
    """``train --out`` and ``demo --out`` became ``--out-dir`` (a folder the command
    fills); the old spelling still works and is not shown in ``--help``."""
    from srrecnn_jax.cli.main import build_parser

    for flag in (old, new):
        args = build_parser().parse_args([*command, flag, "folder"])
        assert getattr(args, dest) == Path("folder")
    with pytest.raises(SystemExit):
        build_parser().parse_args([command[0], "--help"])
    shown = capsys.readouterr().out
    assert new in shown and f"{old} " not in shown and f"{old}," not in shown
