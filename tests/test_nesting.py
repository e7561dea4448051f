"""Deeply nested JSON and TOML (a damaged or hostile file) is one error line naming the
file, never a ``RecursionError`` traceback; a manifest line of it is skipped like any
other bad line, so later runs and merges of that folder go on."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from conftest import write

from srrecnn_jax.cli import main
from srrecnn_jax.manifest import read_rows
from srrecnn_jax.structured import parse_json, parse_toml

#: Deeper than Python's parsers can recurse (its limit is 1000 frames).
DEEP = 100_000
NESTED_JSON = "[" * DEEP + "]" * DEEP
NESTED_TOML = "v = " + "[" * DEEP + "]" * DEEP


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("srrecnn: error:"), err
    return err[0]


def test_parsers_turn_recursion_into_a_value_error():
    assert sys.getrecursionlimit() < DEEP
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(NESTED_JSON)
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_toml(NESTED_TOML)


def test_model_config_json_nested_too_deeply_names_the_file(models, tmp_path, capsys):
    folder = shutil.copytree(models["mono"], tmp_path / "model")
    (folder / "config.json").write_text(NESTED_JSON)
    assert main(["info", str(folder)]) == 1
    assert str(folder / "config.json") in error_line(capsys)


@pytest.mark.parametrize("suffix, text", [(".json", NESTED_JSON), (".toml", NESTED_TOML)])
def test_training_config_file_nested_too_deeply_names_the_file(tmp_path, capsys, suffix, text):
    hr = write(np.random.default_rng(0).uniform(0.1, 1, (24, 24, 24)).astype(np.float32),
               tmp_path / "hr.nii.gz")
    config = tmp_path / f"settings{suffix}"
    config.write_text(text)
    assert main(["train", str(hr), "--out-dir", str(tmp_path / "run"),
                 "--config", str(config), "--quiet"]) == 1
    assert str(config) in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_manifest_line_nested_too_deeply_is_skipped(tmp_path):
    manifest = tmp_path / "srrecnn_manifest.jsonl"
    manifest.write_text('{"input": "a", "status": "ok"}\n' + NESTED_JSON + "\n"
                        '{"input": "b", "status": "ok"}\n')
    assert [row["input"] for row in read_rows(manifest)] == ["a", "b"]


def test_a_batch_runs_beside_a_manifest_line_nested_too_deeply(models, tmp_path, capsys):
    """A manifest of an earlier run holding a nested line: the line stays (earlier rows
    are never lost); the run does its work and appends its rows."""
    study = tmp_path / "study"
    study.mkdir()
    write(np.random.default_rng(1).uniform(0.1, 1, (8, 9, 7)).astype(np.float32),
          study / "a.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    earlier = '{"input": "x", "output": "y", "status": "ok"}\n'
    (out / "srrecnn_manifest.jsonl").write_text(earlier + NESTED_JSON + "\n")
    assert main(["sr", str(study), "--out-dir", str(out), "-m", str(models["mono"]),
                 "-s", "2", "--quiet"]) == 0
    assert (out / "a_SR.nii.gz").is_file()
    assert [r["status"] for r in read_rows(out / "srrecnn_manifest.jsonl")] == ["ok", "ok"]
