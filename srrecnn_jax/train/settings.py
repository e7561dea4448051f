"""Where training settings come from: TOML/JSON files, ``key=value`` overrides, a Caffe
``solver.prototxt``, and a run folder's saved ``train_config.json``; ``resolve`` combines
them (later sources win) into one checked ``TrainConfig`` before anything is written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srrecnn_jax.caffe import parse_prototxt
from srrecnn_jax.checkpoint import RUN_CONFIG
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.structured import parse_json, parse_toml
from srrecnn_jax.train.config import SETTINGS, TrainConfig, config_from


def file_values(path: Path) -> dict[str, Any]:
    """The settings in a TOML or JSON file."""
    try:
        text = path.read_text(encoding="utf-8")
        values = parse_json(text) if path.suffix == ".json" else parse_toml(text)
    except FileNotFoundError:
        raise SrrecnnError(f"{path}: no such config file") from None
    except (OSError, ValueError) as e:
        raise SrrecnnError(f"{path}: not a valid config file ({e})") from None
    if not isinstance(values, dict):
        raise SrrecnnError(f"{path}: not a table of settings")
    return values


def load_config_file(path: Path, base: TrainConfig | None = None) -> TrainConfig:
    """A TOML or JSON file of settings applied to ``base``."""
    return config_from(file_values(path), base)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as TOML (``lr=1e-4``, ``steps=[100, 200]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SrrecnnError(f"{text!r} is not key=value", "overrides")
    try:
        parsed = parse_toml(f"v = {value}")["v"]
    except ValueError:  # tomllib.TOMLDecodeError, or nesting too deep
        parsed = value  # a bare word, e.g. solver=sgd
    return key.strip(), parsed


def solver_values(path: Path) -> dict[str, Any]:
    """Settings from a Caffe ``solver.prototxt`` (type, base_lr, momentum(2), delta, ...)."""
    try:
        solver = parse_prototxt(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SrrecnnError(f"{path}: no such solver file") from None
    except (OSError, ValueError, IndexError) as e:
        raise SrrecnnError(f"{path}: not a readable solver prototxt ({e})") from None

    def last(key: str, default: Any = None) -> Any:
        return solver.get(key, [default])[-1]

    kind = str(last("type", last("solver_type", "SGD"))).lower()
    if kind not in ("adam", "sgd"):
        raise SrrecnnError(f"{path}: solver type {kind!r} is not supported (Adam or SGD)")
    policy = str(last("lr_policy", "fixed"))
    values: dict[str, Any] = {"solver": kind}
    if policy == "multistep":
        values["steps"] = [int(s) for s in solver.get("stepvalue", [])]
    elif policy == "fixed":
        values["steps"] = []
    else:
        raise SrrecnnError(f"{path}: lr_policy {policy!r} is not supported (fixed, multistep)")
    mapping = {"base_lr": "learning_rate", "gamma": "gamma", "weight_decay": "weight_decay",
               "max_iter": "max_iter", "snapshot": "checkpoint_every", "display": "log_every",
               "delta": "epsilon"}
    for caffe_key, ours in mapping.items():
        if caffe_key in ("snapshot", "display") and not last(caffe_key):
            continue  # 0 means "never" in Caffe: keep our default interval
        if caffe_key in solver:
            values[ours] = (int if SETTINGS[ours][1] == "int" else float)(last(caffe_key))
    if "momentum" in solver:
        values["beta1" if kind == "adam" else "momentum"] = float(last("momentum"))
    if "momentum2" in solver:
        values["beta2"] = float(last("momentum2"))
    return values


def from_caffe_solver(path: Path, base: TrainConfig | None = None) -> TrainConfig:
    """A Caffe solver's settings applied to ``base``."""
    return config_from(solver_values(path), base)


def read_run_config(run_dir: Path) -> TrainConfig:
    """The settings saved in a run folder."""
    path = run_dir / RUN_CONFIG
    try:
        values = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SrrecnnError(f"{run_dir}: not a training run (no {RUN_CONFIG})") from None
    except ValueError as e:
        raise SrrecnnError(f"{path}: invalid ({e})") from None
    try:
        return config_from(values)
    except SrrecnnError as e:
        raise SrrecnnError(f"{path}: {e}") from None


def resolve(run_dir: Path, config_file: Path | None = None, caffe_solver: Path | None = None,
            overrides: Sequence[str] = (), init: ModelConfig | None = None) -> TrainConfig:
    """The settings of a run, before anything is written.

    A rerun with no new settings resumes with the saved ones. Otherwise:
    defaults (with ``init``'s architecture when fine-tuning), then the Caffe
    solver, the settings file, and the ``key=value`` overrides.
    """
    if (run_dir / RUN_CONFIG).exists() and not (config_file or caffe_solver or overrides):
        return read_run_config(run_dir)
    values: dict[str, Any] = {}
    if caffe_solver:
        values |= solver_values(caffe_solver)
    if config_file:
        values |= file_values(config_file)
    values |= dict(map(parse_override, overrides))
    return config_from(values, TrainConfig() if init is None else TrainConfig(model=init))
