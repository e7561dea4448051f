"""The documentation's command lines parse: every ``srrecnn`` line in a fenced block of
README.md and docs/*.md is parsed by the real parser (not run), and every ``-m NAME``
that is not a path is a shipped model's name. Output listings are fenced as ``text``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from srrecnn_jax import catalog
from srrecnn_jax.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: Shell variables the examples use, and what they stand for here.
VARIABLES = {"SLURM_ARRAY_TASK_ID": "0", "D": "data/thick"}
PREFIXES = ("srrecnn ", ".venv/bin/srrecnn ", "srun srrecnn ")


def command_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, command)`` of each srrecnn command in a fenced block that is not
    ``text``, continuation lines joined."""
    found, fence, pending = [], None, None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence is None or fence == "text":
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.rstrip("\\").strip())
            if not line.endswith("\\"):
                found.append(pending)
                pending = None
            continue
        if line.startswith(PREFIXES):
            if line.endswith("\\"):
                pending = (number, line.rstrip("\\").strip())
            else:
                found.append((number, line))
    return found


def arguments(command: str) -> list[str]:
    """The arguments after ``srrecnn``, shell variables and ``$(...)`` substituted, a
    trailing comment dropped."""
    command = re.sub(r"\$\((?:[^()]|\([^()]*\))*\)", "SUBSTITUTED", command)
    for name, value in VARIABLES.items():
        command = command.replace("${" + name + "}", value).replace("$" + name, value)
    words = shlex.split(command, comments=True)
    return words[words.index(next(w for w in words if w.endswith("srrecnn"))) + 1:]


CASES = [(path, number, command) for path in DOCS for number, command in command_lines(path)]


def test_the_docs_have_command_lines_to_check():
    assert len(CASES) >= 20
    assert {path.name for path, _, _ in CASES} >= {"README.md", "cli.md", "batch.md"}


@pytest.mark.parametrize(("path", "number", "command"), CASES,
                         ids=[f"{p.name}:{n}" for p, n, _ in CASES])
def test_a_documented_command_line_parses(path, number, command, capsys):
    args = arguments(command)
    try:
        build_parser().parse_args(args)
    except SystemExit as e:
        if e.code:  # --help or --version exit 0
            pytest.fail(f"{path.name}:{number}: {command}\n{capsys.readouterr().err}")


@pytest.mark.parametrize(("path", "number", "command"), CASES,
                         ids=[f"{p.name}:{n}" for p, n, _ in CASES])
def test_a_documented_model_name_is_shipped(path, number, command):
    args = arguments(command)
    names = set(catalog.names()) | {"default"}
    for flag, value in zip(args, args[1:]):
        if flag in ("-m", "--model", "--init") and not (
                "/" in value or Path(value).suffix or value.isupper()):
            assert value in names, f"{path.name}:{number}: {value}"


def test_the_readmes_test_command_is_the_one_ci_runs():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = next(line for line in ci if "pytest" in line)
    assert command in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
