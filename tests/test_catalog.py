"""Shipped models by name: ``-m NAME`` in every command that takes a model, and
``srrecnn models``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from srrecnn_jax import catalog, cli, model
from srrecnn_jax.checkpoint import LoadedModel, save_model
from srrecnn_jax.config import recnn
from srrecnn_jax.errors import SrrecnnError

MNI_X2 = catalog.CHECKPOINTS / "mni_x2" / "model"


@pytest.fixture
def shelf(tmp_path: Path) -> Path:
    """A checkpoints folder with one tiny model ``tiny_x3`` (card, model trained at 3 to
    produce 1 mm voxels) and a Colin27 table with its rows and spline's."""
    config = recnn(layers=2, filters=2)
    (tmp_path / "tiny_x3").mkdir()
    save_model(tmp_path / "tiny_x3" / "model",
               LoadedModel(model.init(jax.random.key(0), config), config, trained_scales=[3.0],
                           trained_spacing=1.0))
    (tmp_path / "tiny_x3" / catalog.CARD).write_text(json.dumps(
        {"task": "monomodal x3", "data": "MNI 2009a"}))
    (tmp_path / "no_card" / "model").mkdir(parents=True)
    rows = [{"condition": "x3", "region": "crop", "method": "cubic spline", "psnr": 30.3},
            {"condition": "x3", "region": "crop", "method": "tiny_x3", "psnr": 31.5},
            {"condition": "x3", "region": "whole", "method": "tiny_x3", "psnr": 40.0}]
    (tmp_path / catalog.COLIN27_SCORES).parent.mkdir()
    (tmp_path / catalog.COLIN27_SCORES).write_text(json.dumps({"rows": rows}))
    return tmp_path


def test_a_model_folder_with_a_card_is_shipped_under_its_dashed_name(shelf):
    assert catalog.names(shelf) == ["tiny-x3"]


def test_description_holds_card_trained_scales_and_colin27_crop_scores(shelf):
    (tiny,) = catalog.shipped(shelf)
    assert (tiny.task, tiny.data, tiny.trained_scales) == ("monomodal x3", "MNI 2009a", (3.0,))
    assert tiny.path == shelf / "tiny_x3" / "model"
    assert (tiny.scored_on, tiny.psnr) == ("Colin27 crop", {"x3": (31.5, 30.3)})


def test_a_card_naming_its_own_score_table_is_scored_from_it(shelf):
    """A multimodal model's card points at the held-out pair's table and region."""
    card = shelf / "tiny_x3" / catalog.CARD
    card.write_text(json.dumps({"task": "multimodal x3", "data": "a pair", "metrics": {
        "table": "pair.json", "region": "head", "on": "held-out pair slab"}}))
    rows = [{"condition": "x3", "region": "head", "method": "cubic spline", "psnr": 33.0},
            {"condition": "x3", "region": "head", "method": "tiny_x3", "psnr": 36.5},
            {"condition": "x3", "region": "crop", "method": "tiny_x3", "psnr": 1.0}]
    (shelf / "pair.json").write_text(json.dumps({"rows": rows}))
    (tiny,) = catalog.shipped(shelf)
    assert (tiny.scored_on, tiny.psnr) == ("held-out pair slab", {"x3": (36.5, 33.0)})


def test_description_holds_the_gains_by_acquisition_mean_and_least(shelf):
    """From evaluate_real.py's table: per condition, the mean and the least gain over the
    scans that scored the model; other methods' rows ignored."""
    rows = [{"scan": s, "condition": "k-space 1%", "method": m, "psnr": 30.0, "gain_db": g}
            for s, m, g in (("a", "tiny_x3", 1.0), ("b", "tiny_x3", -0.5),
                            ("a", "other", 9.0))]
    rows.append({"scan": "a", "condition": "k-space 1%", "method": "cubic spline",
                 "psnr": 29.0})
    (shelf / catalog.REAL_SCORES).write_text(json.dumps({"rows": rows}))
    (tiny,) = catalog.shipped(shelf)
    assert tiny.acquisitions == {"k-space 1%": (0.25, -0.5)}


def test_no_acquisition_table_means_no_gains(shelf):
    (tiny,) = catalog.shipped(shelf)
    assert tiny.acquisitions == {}


def test_description_holds_the_trained_voxel_size(shelf):
    (tiny,) = catalog.shipped(shelf)
    assert tiny.trained_spacing == 1.0


def test_a_name_locates_the_model_folder(shelf):
    assert catalog.locate("tiny-x3", shelf) == shelf / "tiny_x3" / "model"


def test_an_existing_path_wins_over_a_name(shelf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-x3").mkdir()
    assert catalog.locate("tiny-x3", shelf) == Path("tiny-x3")


def test_a_path_that_does_not_exist_is_returned_for_loading_to_report(shelf):
    assert catalog.locate("runs/nope", shelf) == Path("runs/nope")
    assert catalog.locate("nope.caffemodel", shelf) == Path("nope.caffemodel")


def test_an_unknown_name_is_an_error_listing_the_names(shelf):
    with pytest.raises(SrrecnnError, match=r"nosuch: .*names: default, tiny-x3"):
        catalog.locate("nosuch", shelf)


@pytest.mark.skipif(not MNI_X2.is_dir(), reason="checkpoints/ is not beside the package")
def test_default_is_the_shipped_real_x2_model():
    assert catalog.DEFAULT == "real-x2"
    assert catalog.locate("default") == catalog.CHECKPOINTS / "real_x2" / "model"
    assert catalog.locate("mni-x2") == MNI_X2


@pytest.mark.skipif(not MNI_X2.is_dir(), reason="checkpoints/ is not beside the package")
def test_info_takes_a_shipped_models_name(capsys):
    assert cli.main(["info", "mni-x2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trained_scales"] == [2.0]


@pytest.mark.skipif(not MNI_X2.is_dir(), reason="checkpoints/ is not beside the package")
def test_models_lists_the_shipped_models_with_the_default_marked(capsys):
    assert cli.main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["real-x2"]["default"] is True and listed["mono-x2"]["default"] is False
    assert listed["mni-x2"]["trained_scales"] == [2.0]


@pytest.mark.skipif(not MNI_X2.is_dir(), reason="checkpoints/ is not beside the package")
def test_shipped_models_record_the_1mm_voxels_they_were_trained_on(capsys):
    """Those trained on 1 mm templates record it, so the sr warning about far-off voxel
    sizes works; mono-x2, mono-x2-robust, multiscale, thick-slice and real-x2, trained on
    the templates at 1, 1.5 and 2 mm (real-x2 also on a 1.6 mm scan), record none."""
    assert cli.main(["models", "--json"]) == 0
    spacing = {m["name"]: m["trained_spacing"] for m in json.loads(capsys.readouterr().out)}
    for name in ("mono-x2", "mono-x2-robust", "multiscale", "thick-slice", "real-x2"):
        assert spacing.pop(name) is None, name
    assert spacing and all(value == 1.0 for value in spacing.values())


def test_sr_with_an_unknown_model_name_is_one_line_naming_the_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sr", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nii.gz"),
                  "-m", "nosuch", "-s", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "-m/--model" in err and "nosuch" in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_parsing_a_model_argument_does_not_import_jax():
    """``-m`` is resolved while the command line is parsed, before the CLI configures JAX
    (its compilation cache): importing JAX there would leave the cache off."""
    code = ("import sys; from srrecnn_jax.cli import common; common.model('default'); "
            "common.model('runs/x'); sys.exit('jax' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


SHIPPED_FILES = {"README.md", "card.json", "config.toml", "train_config.json", "metrics.jsonl",
                 "model"}
CARD_SECTIONS = ["## What it does", "## Intended input", "## Training data",
                 "## Training procedure", "## Evaluation", "## Limitations",
                 "## Licence and citation"]


@pytest.mark.skipif(not MNI_X2.is_dir(), reason="checkpoints/ is not beside the package")
def test_every_shipped_folder_holds_the_same_files():
    for name in catalog.names():
        folder = catalog.locate(name).parent
        assert {p.name for p in folder.iterdir()} == SHIPPED_FILES, name


@pytest.mark.skipif(not MNI_X2.is_dir(), reason="checkpoints/ is not beside the package")
def test_every_card_has_its_keys_scales_and_scores_from_the_tables():
    for name in catalog.names():
        card = json.loads((catalog.locate(name).parent / catalog.CARD).read_text())
        assert tuple(card) == catalog.CARD_KEYS, name
        assert catalog.check_card(name) == [], name


def test_a_card_with_scores_other_than_its_table_is_reported(shelf):
    card = shelf / "tiny_x3" / catalog.CARD
    card.write_text(json.dumps({
        "name": "tiny-x3", "version": "0.1.0", "task": "x3", "data": "MNI", "scales": [3.0],
        "spacing_mm": [1.0], "training_data": [{"name": "MNI", "licence": "permissive"}],
        "metrics": {"on": "Colin27 crop", "table": catalog.COLIN27_SCORES, "region": "crop",
                    "psnr_db": {"x3": {"model": 31.5, "spline": 30.3}}},
        "sha256": "0" * 64, "licence": "CeCILL-B"}))
    assert catalog.check_card("tiny-x3", shelf) == []
    card.write_text(card.read_text().replace("31.5", "32.5"))
    assert [p.split(":")[0] for p in catalog.check_card("tiny-x3", shelf)] == ["metrics"]


@pytest.mark.skipif(not MNI_X2.is_dir(), reason="checkpoints/ is not beside the package")
def test_every_cards_sha256_is_its_models_fingerprint():
    from srrecnn_jax.checkpoint import fingerprint, load_model

    for name in catalog.names():
        card = json.loads((catalog.locate(name).parent / catalog.CARD).read_text())
        assert card["sha256"] == fingerprint(load_model(catalog.locate(name))), name


@pytest.mark.skipif(not MNI_X2.is_dir(), reason="checkpoints/ is not beside the package")
def test_every_model_readme_has_the_card_sections_in_order_and_is_short():
    for name in catalog.names():
        text = (catalog.locate(name).parent / "README.md").read_text(encoding="utf-8")
        headings = [line for line in text.splitlines() if line.startswith("## ")]
        assert headings == CARD_SECTIONS, name
        assert len(text.splitlines()) < 80, name
