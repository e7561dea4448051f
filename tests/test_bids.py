"""``srrecnn bids BIDS_DIR OUTPUT_DIR participant|group``: a BIDS App over the batch.

Specification, one behaviour per test, on small BIDS datasets made of real crops of
nibabel's 2 mm T1 (two subjects, the second with a session, T1w and T2w each, and one
corrupt T1w) and tiny random models:

* the participant level writes ``sub-XX/[ses-YY/]anat/<entities>_res-x2_desc-srrecnn_T1w``
  outputs with sidecars (``Sources``, ``Resolution``, the run's facts) and the dataset's
  own files, which the official validator accepts; the group level writes ``index.html``;
* scans are chosen with pybids: labels with or without ``sub-``, sessions, suffixes,
  filter files; a two-channel model pairs each T1w with its T2w by entities;
* a rerun makes nothing new; ``--shard 0/2`` and ``1/2`` equal one process;
* bad input is one ``srrecnn: error:`` line, exit status 1 or 2, and nothing written.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import crop

from srrecnn_jax import cli
from srrecnn_jax.bids import dataset, layout, naming, validator
from srrecnn_jax.degradation import degrade_image, slice_profile

pytest.importorskip("bids")

OUTPUT = "sub-01/anat/sub-01_res-x2_desc-srrecnn_T1w.nii.gz"
SESSION_OUTPUT = "sub-02/ses-1/anat/sub-02_ses-1_res-x2_desc-srrecnn_T1w.nii.gz"
CORRUPT = "sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz"


def make_dataset(root: Path, anatomical: sitk.Image, corrupt: bool = True) -> Path:
    """A raw BIDS dataset of crops of the real T1 (its T2w: another crop)."""
    (root).mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "crops", "BIDSVersion": "1.10.0", "Authors": ["a", "b"]}))
    (root / "README").write_text("Crops of nibabel's anatomical.nii, for tests.\n" * 8)
    for subject, session, lower in (("01", None, (8, 10, 6)), ("02", "1", (10, 12, 8))):
        folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
        folder.mkdir(parents=True)
        stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        sitk.WriteImage(crop(anatomical, lower, (12, 14, 10)), str(folder / f"{stem}_T1w.nii.gz"))
        sitk.WriteImage(crop(anatomical, (lower[0] + 2, *lower[1:]), (12, 14, 10)),
                        str(folder / f"{stem}_T2w.nii.gz"))
    if corrupt:
        (root / CORRUPT).parent.mkdir(parents=True)
        (root / CORRUPT).write_bytes(b"not a NIfTI file")
    return root


def run(*args) -> tuple[int, str]:
    """``srrecnn bids ARGS --quiet`` in-process; (exit status, stderr)."""
    err = StringIO()
    with contextlib.redirect_stdout(StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(["bids", *map(str, args), "--quiet"])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def anatomical_image() -> sitk.Image:
    from conftest import package_file

    return sitk.ReadImage(str(package_file("nibabel", "tests/data/anatomical.nii")))


@pytest.fixture(scope="module")
def made(tmp_path_factory, anatomical_image, models) -> dict:
    """Participant 01, participant sub-02 (with its corrupt scan), then the group level,
    into ``BIDS_DIR/derivatives/srrecnn``."""
    raw = make_dataset(tmp_path_factory.mktemp("bids") / "raw", anatomical_image)
    out = raw / "derivatives" / "srrecnn"
    common = ["-m", models["mono"], "-s", "2", "--skip-bids-validation"]
    first = run(raw, out, "participant", "--participant-label", "01", *common)
    second = run(raw, out, "participant", "--participant-label", "sub-02", *common)
    group = run(raw, out, "group")
    return {"raw": raw, "out": out, "runs": [first, second, group], "common": common}


def manifest_rows(out: Path) -> list[dict]:
    text = (out / "srrecnn_work" / "srrecnn_manifest.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


# --- the participant and group levels -----------------------------------------------------

def test_participant_level_writes_each_subjects_output_with_entities_res_and_desc(made):
    assert made["runs"][0][0] == 0
    assert (made["out"] / OUTPUT).is_file() and (made["out"] / SESSION_OUTPUT).is_file()


def test_a_corrupt_scan_is_one_error_row_and_exit_status_1(made):
    code, err = made["runs"][1]
    assert code == 1
    errors = [r for r in manifest_rows(made["out"]) if r["status"] == "error"]
    assert [Path(r["input"]).name for r in errors] == [Path(CORRUPT).name]
    assert [line for line in err.splitlines() if line.startswith("srrecnn: error:")] \
        and "Traceback" not in err


@pytest.mark.skipif(validator.find() is None, reason="bids-validator-deno is not installed")
def test_the_official_validator_accepts_the_output(made):
    assert validator.errors(made["out"], "derivative", validator.find()) == []


def test_the_sidecar_holds_sources_resolution_and_the_runs_facts(made):
    facts = json.loads((made["out"] / OUTPUT.replace(".nii.gz", ".json")).read_text())
    assert facts["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert list(facts["Resolution"]) == ["x2"]
    assert facts["SrrecnnScale"] == [2, 2, 2] and facts["SrrecnnPrecision"] == "fp32"
    assert facts["SrrecnnAcquisition"] == "none"
    assert len(facts["SrrecnnModelSHA256"]) == 64
    assert facts["SrrecnnInputVoxelSize"] == [2, 2, 2]
    assert all(0.9 < s < 1.0 for s in facts["SrrecnnOutputVoxelSize"])
    assert facts["SrrecnnNoisePercent"] > 0 and facts["SrrecnnSelfCheckPsf"]
    assert isinstance(facts["SrrecnnSelfCheckGainDb"], float)
    assert isinstance(facts["SrrecnnWarnings"], list) and facts["SkullStripped"] is False


def test_the_sidecar_holds_the_manifest_rows_checks(made):
    row = next(r for r in manifest_rows(made["out"])
               if r["status"] == "ok" and r["output"].endswith(Path(OUTPUT).name))
    facts = json.loads((made["out"] / OUTPUT.replace(".nii.gz", ".json")).read_text())
    assert (facts["SrrecnnNoisePercent"], facts["SrrecnnSelfCheckGainDb"],
            facts["SrrecnnFalloff"], facts["SrrecnnWarnings"]) == \
        (row["noise_percent"], row["self_check_gain_db"], row["falloff"], row["warnings"])


def test_dataset_description_is_a_derivatives_one_naming_the_command(made):
    described = json.loads((made["out"] / "dataset_description.json").read_text())
    assert described["DatasetType"] == "derivative"
    assert described["GeneratedBy"][0]["Name"] == "srrecnn-jax"
    # The latest participant run's command (other tests rerun participant 01 on ``made``).
    command = described["GeneratedBy"][0]["Description"]
    assert command.startswith("srrecnn bids ") and " participant --participant-label " in command
    assert described["SourceDatasets"] == [{"URL": "bids:raw:"}]
    assert described["DatasetLinks"] == {"raw": "../.."}


def test_readme_and_citation_cite_pham_2019():
    assert "10.1016/j.compmedimag.2019.101647" in dataset.readme([])
    assert "doi: \"10.1016/j.compmedimag.2019.101647\"" in dataset.citation("0.1.0")


def test_readme_names_the_model_card_of_a_shipped_model():
    assert "checkpoints/mono_x2/README.md" in dataset.readme(["mono-x2"])


def test_the_derivatives_folder_is_not_indexed_as_raw_data(made):
    index = layout.index(made["raw"])
    assert not [f for f in index.get(return_type="filename") if "derivatives" in f]


def test_each_subject_has_a_page_with_its_montages_and_warnings(made):
    page = (made["out"] / "sub-01.html").read_text()
    assert "sub-01/figures/sub-01_res-x2_desc-srrecnn_T1w_montage.png" in page
    assert (made["out"] / "sub-01/figures/sub-01_res-x2_desc-srrecnn_T1w_montage.png").is_file()
    assert "self-check gain" in page and "Warnings" in page


def test_a_subject_page_lists_its_failed_scan(made):
    page = (made["out"] / "sub-02.html").read_text()
    assert Path(CORRUPT).name in page and 'class="error"' in page


def test_the_group_index_lists_every_output_and_the_error(made):
    assert made["runs"][2][0] == 0
    index = (made["out"] / "index.html").read_text()
    assert Path(OUTPUT).name in index and Path(SESSION_OUTPUT).name in index
    assert Path(CORRUPT).name in index and "<script>" in index
    assert (made["out"] / "figures/self_check_gains.png").is_file()


def test_a_rerun_makes_nothing_new(made):
    sidecar = made["out"] / OUTPUT.replace(".nii.gz", ".json")
    before = (sidecar.stat().st_mtime_ns, (made["out"] / OUTPUT).stat().st_mtime_ns)
    code, _ = run(made["raw"], made["out"], "participant", "--participant-label", "01",
                  *made["common"])
    rows = manifest_rows(made["out"])
    assert code == 0 and rows[-1]["status"] == "skipped"
    assert (sidecar.stat().st_mtime_ns, (made["out"] / OUTPUT).stat().st_mtime_ns) == before


# --- thick slices: --isotropic --adapt ---------------------------------------------------------

ISO_OUTPUT = "sub-01/anat/sub-01_res-iso_desc-srrecnn_T1w.nii.gz"


@pytest.fixture(scope="module")
def thick_made(tmp_path_factory, anatomical_image, models) -> dict:
    """A dataset of two thick-slice T1w of different slice spacing (the real T1 degraded
    by 1 x 1 x 4 and by 1 x 1 x 3), through ``--isotropic --adapt 3``."""
    raw = tmp_path_factory.mktemp("thick") / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(
        json.dumps({"Name": "thick", "BIDSVersion": "1.10.0", "Authors": ["a", "b"]}))
    (raw / "README").write_text("Thick slices of nibabel's anatomical.nii, for tests.\n" * 8)
    image = sitk.Cast(anatomical_image, sitk.sitkFloat32)
    for subject, factor in (("01", 4), ("02", 3)):
        folder = raw / f"sub-{subject}" / "anat"
        folder.mkdir(parents=True)
        lr = degrade_image(image, (1, 1, factor), slice_profile((1, 1, factor)))["lr"]
        sitk.WriteImage(lr, str(folder / f"sub-{subject}_T1w.nii.gz"))
    out = tmp_path_factory.mktemp("thick_out") / "srrecnn"
    code, err = run(raw, out, "participant", "-m", models["mono"], "--isotropic",
                    "--adapt", "3", "--skip-bids-validation", "--no-check")
    assert code == 0, err
    return {"raw": raw, "out": out}


def test_isotropic_outputs_are_labelled_iso_with_each_scans_own_factors(thick_made):
    """``res-iso``; the sidecar's scale is the one this scan's header gave (the manifest
    row's), its Resolution says what ``iso`` means, the montage can be drawn."""
    rows = {Path(r["input"]).name: r for r in manifest_rows(thick_made["out"])}
    scales = []
    for subject in ("01", "02"):
        output = thick_made["out"] / ISO_OUTPUT.replace("01", subject)
        facts = json.loads(output.with_name(output.name.replace(".nii.gz", ".json"))
                           .read_text())
        row = rows[f"sub-{subject}_T1w.nii.gz"]
        assert facts["SrrecnnScale"] == row["scale"] and facts["SrrecnnScale"][:2] == [1, 1]
        assert list(facts["Resolution"]) == ["iso"]
        assert facts["Resolution"]["iso"].startswith(
            "isotropic at the source's in-plane voxel size, 2 mm")
        scales.append(facts["SrrecnnScale"][2])
    assert scales[0] > scales[1] > 1


def test_an_adapted_output_s_sidecar_carries_the_fine_tuning_facts(thick_made):
    row = next(r for r in manifest_rows(thick_made["out"])
               if r["input"].endswith("sub-01_T1w.nii.gz"))
    facts = json.loads((thick_made["out"] / ISO_OUTPUT.replace(".nii.gz", ".json"))
                       .read_text())
    adapted = facts["SrrecnnAdapt"]
    assert (adapted["BudgetSeconds"], adapted["Seconds"], adapted["Steps"],
            adapted["Kept"]) == (3, row["adapt"]["seconds"], row["adapt"]["steps"],
                                 row["adapt"]["kept"])
    assert adapted["HeldoutPsnrDb"] == {k.capitalize(): v for k, v in
                                        row["adapt"]["heldout_psnr"].items()}
    assert "after fine-tuning on the scan" in facts["Description"]


@pytest.mark.skipif(validator.find() is None, reason="bids-validator-deno is not installed")
def test_the_official_validator_accepts_isotropic_adapted_outputs(thick_made):
    assert validator.errors(thick_made["out"], "derivative", validator.find()) == []


def test_isotropic_names_the_target_spacing_in_the_label():
    assert naming.isotropic_label(None) == "iso"
    assert naming.isotropic_label(0.8) == "iso0p8mm" and naming.isotropic_label(1.0) == "iso1mm"


# --- choosing the scans ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def index(tmp_path_factory, anatomical_image):
    return layout.index(make_dataset(tmp_path_factory.mktemp("idx") / "raw",
                                     anatomical_image, corrupt=False))


def chosen(sources) -> list[str]:
    return [s.relative for s in sources]


def test_a_participant_label_may_have_its_sub_prefix(index):
    assert chosen(layout.select(index, ["T1w"], ["sub-01"])) == \
        chosen(layout.select(index, ["T1w"], ["01"])) == ["sub-01/anat/sub-01_T1w.nii.gz"]


def test_a_session_label_chooses_that_sessions_scans(index):
    assert chosen(layout.select(index, ["T1w"], sessions=["ses-1"])) == \
        ["sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"]


def test_suffixes_choose_the_scans(index):
    assert chosen(layout.select(index, ["T2w"], ["01"])) == ["sub-01/anat/sub-01_T2w.nii.gz"]


def test_a_filter_file_narrows_a_suffixs_query_by_entities(index, tmp_path):
    (tmp_path / "f.json").write_text(json.dumps({"t1w": {"session": None}}))
    filters = layout.read_filters(tmp_path / "f.json")
    assert chosen(layout.select(index, ["T1w"], filters=filters)) == \
        ["sub-01/anat/sub-01_T1w.nii.gz"]


def test_a_two_channel_model_pairs_each_t1w_with_its_t2w_by_entities(index):
    pairs = {s.relative: s.reference_relative
             for s in layout.select(index, ["T1w"], paired=True)}
    assert pairs == {"sub-01/anat/sub-01_T1w.nii.gz": "sub-01/anat/sub-01_T2w.nii.gz",
                     "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz":
                         "sub-02/ses-1/anat/sub-02_ses-1_T2w.nii.gz"}


def test_the_output_name_follows_the_schemas_entity_order():
    entities = {"subject": "01", "session": "1", "acquisition": "mp", "run": 2,
                "suffix": "T1w", "datatype": "anat", "extension": ".nii.gz"}
    assert str(naming.derivative_path(entities, (2, 2, 2))) == \
        "sub-01/ses-1/anat/sub-01_ses-1_acq-mp_run-2_res-x2_desc-srrecnn_T1w.nii.gz"


def test_a_two_channel_run_names_both_sources(tmp_path, anatomical_image, models):
    raw = make_dataset(tmp_path / "raw", anatomical_image, corrupt=False)
    out = tmp_path / "out"
    code, err = run(raw, out, "participant", "--participant-label", "01", "-m",
                    models["multi"], "-s", "2", "--skip-bids-validation", "--no-check")
    assert code == 0, err
    facts = json.loads((out / OUTPUT.replace(".nii.gz", ".json")).read_text())
    assert facts["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz",
                                "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"]


# --- several processes ----------------------------------------------------------------------

def command(*args) -> list[str]:
    return [sys.executable, "-m", "srrecnn_jax.cli", "bids", *map(str, args), "--quiet"]


def outputs(out: Path) -> dict[str, object]:
    """Each output's voxels and each sidecar's facts, by path below ``out``."""
    found = {}
    for path in sorted(out.glob("sub-*/**/anat/*")):
        key = path.relative_to(out).as_posix()
        found[key] = (json.loads(path.read_text()) if path.suffix == ".json"
                      else sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    return found


@pytest.mark.slow
def test_two_shards_in_two_processes_equal_one_process(tmp_path, anatomical_image, models):
    raw = make_dataset(tmp_path / "raw", anatomical_image, corrupt=False)
    common = ["participant", "-m", models["mono"], "-s", "2", "--skip-bids-validation",
              "--suffix", "T1w", "T2w"]
    subprocess.run(command(raw, tmp_path / "one", *common), check=True)
    shards = [subprocess.Popen(command(raw, tmp_path / "two", *common, "--shard", f"{i}/2"))
              for i in range(2)]
    assert [p.wait() for p in shards] == [0, 0]
    one, two = outputs(tmp_path / "one"), outputs(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) == 8
    for key, value in one.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, two[key]), key
        else:
            assert value == two[key], key


# --- bad input --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean(tmp_path_factory, anatomical_image) -> Path:
    return make_dataset(tmp_path_factory.mktemp("clean") / "raw", anatomical_image,
                        corrupt=False)


def refused(code: int, err: str, out: Path) -> str:
    """The one error line of a refused run that wrote nothing at ``out``."""
    lines = err.strip().splitlines()
    assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("srrecnn: error: "), err
    assert not out.exists()
    return lines[0]


def test_a_folder_that_is_not_a_bids_dataset_is_refused(tmp_path, models):
    (tmp_path / "scans").mkdir()
    line = refused(*run(tmp_path / "scans", tmp_path / "out", "participant", "-m",
                        models["mono"], "-s", "2"), tmp_path / "out")
    assert "not a BIDS dataset" in line


def test_an_unknown_participant_label_is_refused(clean, tmp_path, models):
    line = refused(*run(clean, tmp_path / "out", "participant", "--participant-label", "07",
                        "-m", models["mono"], "-s", "2", "--skip-bids-validation"),
                   tmp_path / "out")
    assert "--participant-label: 07: not in" in line and "01, 02" in line


def test_an_unknown_session_label_is_refused(clean, tmp_path, models):
    line = refused(*run(clean, tmp_path / "out", "participant", "--session-label", "ses-9",
                        "-m", models["mono"], "-s", "2", "--skip-bids-validation"),
                   tmp_path / "out")
    assert "--session-label: 9: not in" in line


def test_a_filter_file_that_is_not_json_is_refused(clean, tmp_path, models):
    (tmp_path / "f.json").write_text("{t1w: session}")
    line = refused(*run(clean, tmp_path / "out", "participant", "--bids-filter-file",
                        tmp_path / "f.json", "-m", models["mono"], "-s", "2",
                        "--skip-bids-validation"), tmp_path / "out")
    assert line.startswith(f"srrecnn: error: --bids-filter-file: {tmp_path / 'f.json'}: "
                           "not JSON")


def test_a_filter_on_an_unknown_entity_is_refused(clean, tmp_path, models):
    (tmp_path / "f.json").write_text(json.dumps({"t1w": {"colour": "blue"}}))
    line = refused(*run(clean, tmp_path / "out", "participant", "--bids-filter-file",
                        tmp_path / "f.json", "-m", models["mono"], "-s", "2",
                        "--skip-bids-validation"), tmp_path / "out")
    assert "--bids-filter-file: query t1w:" in line and "colour" in line


def test_the_input_dataset_as_output_is_refused(clean, models):
    before = sorted(p.relative_to(clean) for p in clean.rglob("*"))
    code, err = run(clean, clean, "participant", "-m", models["mono"], "-s", "2",
                    "--skip-bids-validation")
    assert code == 1 and "is or holds the input dataset" in err
    assert sorted(p.relative_to(clean) for p in clean.rglob("*")) == before


def test_a_subject_folder_as_output_is_refused(clean, models):
    out = clean / "sub-01" / "srrecnn"
    line = refused(*run(clean, out, "participant", "-m", models["mono"], "-s", "2",
                        "--skip-bids-validation"), out)
    assert "inside the input dataset" in line


def test_the_participant_level_needs_a_model(clean, tmp_path):
    line = refused(*run(clean, tmp_path / "out", "participant", "-s", "2"), tmp_path / "out")
    assert "-m/--model: needed at participant level" in line


def test_the_group_level_needs_a_participant_levels_output(clean, tmp_path):
    line = refused(*run(clean, tmp_path / "out", "group"), tmp_path / "out")
    assert "run the participant level first" in line


def test_without_pybids_the_command_says_how_to_install_it(clean, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bids", None)
    line = refused(*run(clean, tmp_path / "out", "group"), tmp_path / "out")
    assert "pip install 'srrecnn-jax[bids]'" in line


@pytest.mark.skipif(validator.find() is None, reason="bids-validator-deno is not installed")
def test_an_input_the_validator_refuses_is_an_error_naming_its_first_error(clean, tmp_path,
                                                                           models):
    raw = tmp_path / "raw"
    shutil.copytree(clean, raw)
    (raw / "sub-01/anat/sub-01_scan.nii.gz").write_bytes(b"x")
    line = refused(*run(raw, tmp_path / "out", "participant", "-m", models["mono"], "-s",
                        "2"), tmp_path / "out")
    assert "the BIDS validator finds" in line and "sub-01_scan.nii.gz" in line
    assert "--skip-bids-validation" in line
