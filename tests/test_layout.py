"""The package's shape: imports follow the pipeline one way, and the library names no flag.

Read from the source with ``ast`` (lazy, function-level imports included), so the
rules hold whatever a test happens to import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "srrecnn_jax"

# Layers, top to bottom: a module may import modules of lower layers only, and of its
# own layer only inside one subpackage (cli/, train/, batch/ each among itself). The
# package's __init__ is the public facade (it imports lazily from below) and is left out.
LAYERS = [
    ["cli.*"],
    ["train.*", "batch.*", "bids.*", "demo", "auto_model"],
    ["jobs", "manifest", "catalog"],
    ["guardrails"],
    ["evaluation", "adapt"],
    ["inference"],
    ["tiling", "checkpoint", "consistency"],
    ["flax_module"],
    ["model", "degradation", "plots"],
    ["conv", "caffe", "images", "writing", "geometry", "interpolation", "metrics", "parallel",
     "locking", "sources", "inference_options", "structured", "adapt_settings"],
    ["gradients"],
    ["winograd", "matmul"],
    ["operands"],
    ["files", "limits", "nifti", "scales"],
    ["config"],
    ["errors"],
]

SUBPACKAGES = ("cli", "train", "batch", "bids")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer_of(name: str) -> int:
    for index, names in enumerate(LAYERS):
        for pattern in names:
            if name == pattern or (pattern.endswith(".*")
                                   and (name + ".").startswith(pattern[:-1])):
                return index
    raise AssertionError(f"srrecnn_jax.{name} is in no layer of LAYERS: add it")


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package-internal modules ``name`` imports (relative to ``srrecnn_jax``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for target in targets:
            if not target.startswith("srrecnn_jax."):
                continue
            target = target[len("srrecnn_jax."):]
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def test_every_import_goes_down_the_layers():
    """No module imports one of a higher layer, nor one of its own layer across
    subpackages: the imports have an order (no loop) that follows the pipeline."""
    found = modules()
    known = set(found) - {""}
    upward = []
    for name, path in sorted(found.items()):
        if name == "":
            continue
        for target in sorted(imports(name, path, known)):
            a, b = layer_of(name), layer_of(target)
            package = name.split(".")[0]
            same_package = package in SUBPACKAGES and target.split(".")[0] == package
            if a > b or (a == b and not same_package):
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_layers_cover_every_module():
    """Each module of the package has its place in LAYERS (a new module must be placed)."""
    for name in modules():
        if name:
            layer_of(name)


FLAG = re.compile(r"(?<![\w-])--?[a-z][\w-]*")


def raised_messages(tree: ast.AST) -> list[tuple[int, str]]:
    """The literal text of every exception raised, and of every ``warn(...)`` call."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            calls = [node.exc]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "warn"):
            calls = [node]
        else:
            continue
        for call in calls:
            for part in ast.walk(call):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    out.append((part.lineno, part.value))
    return out


def test_library_errors_name_no_command_line_flag():
    """Outside cli/, no raised message (nor batch warning) contains an option like
    ``--tile`` or ``-o``: the library names parameters and files, the CLI maps them."""
    found = []
    for name, path in sorted(modules().items()):
        if name == "cli" or name.startswith("cli."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, text in raised_messages(tree):
            if FLAG.search(text):
                found.append(f"{path.name}:{line}: {text!r}")
    assert found == []


def test_flag_scan_finds_a_flag_in_a_raise():
    """The scan above is not vacuous: it sees an option in a raise's f-string."""
    tree = ast.parse('def f(t):\n    raise ValueError(f"--tile: bad {t}")\n')
    assert [FLAG.search(text) is not None for _, text in raised_messages(tree)] == [True]


def test_every_parameter_the_library_names_has_an_option():
    """Each ``parameter`` a library error names is in the CLI's table of options."""
    from srrecnn_jax.cli.common import OPTIONS

    named = set()
    for name, path in modules().items():
        if name.startswith("cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "SrrecnnError" and len(node.args) == 2
                    and isinstance(node.args[1], ast.Constant)):
                named.add(node.args[1].value)
    assert named and named <= set(OPTIONS), sorted(named - set(OPTIONS))


def private_names_used(tree: ast.AST) -> list[tuple[int, str]]:
    """``x._name`` attributes and ``from ... import _name`` in a test module (dunders and
    the test's own helpers aside): behaviour is tested through public names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.startswith("_") and not n.startswith("__")]
    return found


def test_tests_use_no_private_name_of_the_package_or_of_jax():
    tests = Path(__file__).resolve().parent
    used = {f"{path.name}:{line}: {name}"
            for path in sorted(tests.glob("*.py"))
            for line, name in private_names_used(ast.parse(path.read_text(encoding="utf-8")))}
    assert not used, "\n".join(sorted(used))


def test_private_name_scan_finds_an_attribute_and_an_import():
    tree = ast.parse("from srrecnn_jax.caffe import _convolutions\nf._cache_size()\n")
    assert private_names_used(tree) == [(1, "_convolutions"), (2, "_cache_size")]


def test_every_test_the_guarantees_name_exists():
    """``docs/guarantees.md`` names the tests that prove each promise (``FILE::TEST``):
    each such test is defined in that file, so a renamed or deleted test cannot leave a
    promise unproven."""
    guarantees = (PACKAGE.parent / "docs" / "guarantees.md").read_text(encoding="utf-8")
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", guarantees)
    assert len(named) >= 20
    tests = PACKAGE.parent / "tests"
    missing = [f"{file}::{name}" for file, name in named
               if f"def {name}(" not in (tests / file).read_text(encoding="utf-8")]
    assert missing == []


MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def too_long(name: str, text: str) -> list[str]:
    """Module ``name`` (source ``text``) if over ``MAX_MODULE_LINES`` lines, and each of its
    functions (methods and nested functions too) over ``MAX_FUNCTION_LINES``, counted from
    ``def`` to the last line."""
    found = []
    if len(text.splitlines()) > MAX_MODULE_LINES:
        found.append(f"{name}: {len(text.splitlines())} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno}: {node.name}, {lines} lines")
    return found


def test_no_function_or_module_is_too_long():
    """No function of the package is over 80 lines, no module over 500: past those, split
    the code by what its pieces do."""
    found = [line for path in sorted(modules().values())
             for line in too_long(path.relative_to(PACKAGE.parent).as_posix(),
                                  path.read_text(encoding="utf-8"))]
    assert found == [], "\n".join(found)


def test_size_scan_finds_a_long_function_and_a_long_module():
    body = "".join(f"    x = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    assert too_long("m", f"@staticmethod\ndef f():\n{body}") == []
    text = f"@staticmethod\ndef f():\n{body}    x = 0\n"
    assert too_long("m", text) == [f"m:2: f, {MAX_FUNCTION_LINES + 1} lines"]
    assert too_long("m", text * 7)[0] == f"m: {7 * (MAX_FUNCTION_LINES + 2)} lines"
