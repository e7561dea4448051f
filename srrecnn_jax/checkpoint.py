"""Model checkpoints: an orbax parameter tree plus a human-readable ``config.json``.

Layout of a model folder::

    MODEL/config.json   {"format": ..., "model": ModelConfig, "trained_scales": ..., "origin": ...}
    MODEL/params/       orbax StandardCheckpointer tree {"conv1": {"kernel", "bias"}, ...}

``load_model`` also takes a ``.caffemodel`` file and converts it on the fly.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from srrecnn_jax import model
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.errors import SrrecnnError

FORMAT = "srrecnn-jax/1"


@dataclasses.dataclass
class LoadedModel:
    """Parameters, architecture and provenance of a model ready for inference."""

    params: dict[str, dict[str, Any]]
    config: ModelConfig
    trained_scales: list[float] | None = None
    trained_spacing: float | None = None  # mm, of the training inputs' LR grid, if known
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)


def check_params(params: dict, config: ModelConfig, name: str) -> None:
    """Fail listing every missing, extra or mis-shaped parameter."""
    expected = model.param_shapes(config)
    problems = []
    for layer in sorted(set(expected) | set(params)):
        if layer not in params:
            problems.append(f"missing {layer}")
        elif layer not in expected:
            problems.append(f"extra {layer}")
        else:
            for leaf in sorted(set(expected[layer]) | set(params[layer])):
                want, got = expected[layer].get(leaf), params[layer].get(leaf)
                got_shape = None if got is None else tuple(np.shape(got))
                if want != got_shape:
                    problems.append(f"{layer}.{leaf}: {got_shape} != expected {want}")
    if problems:
        raise SrrecnnError(f"{name}: parameters do not fit the config: {'; '.join(problems)}")


def _local_checkpointer(ocp):
    """A checkpointer for this process alone: a model folder is read and written by one
    process, so it must not wait for the others of a multi-process run."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def save_model(directory: str | Path, loaded: LoadedModel, force: bool = False) -> Path:
    """Write a model folder atomically (temporary folder, then rename)."""
    directory = Path(directory).absolute()
    check_params(loaded.params, loaded.config, str(directory))
    if directory.exists() and not force:
        raise SrrecnnError(f"{directory}: already exists (use --force to replace it)")
    if not directory.parent.is_dir():
        raise SrrecnnError(f"{directory}: parent folder does not exist")
    import orbax.checkpoint as ocp  # slow import, only where needed

    tmp = directory.with_name(f".tmp-{secrets.token_hex(4)}-{directory.name}")
    try:
        tmp.mkdir()
        checkpointer = _local_checkpointer(ocp)
        params = jax.tree_util.tree_map(np.asarray, loaded.params)
        checkpointer.save(tmp / "params", params)
        checkpointer.wait_until_finished()
        meta = {"format": FORMAT, "model": loaded.config.to_dict(),
                "trained_scales": loaded.trained_scales,
                "trained_spacing": loaded.trained_spacing, "origin": loaded.origin}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def _load_folder(directory: Path) -> LoadedModel:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise SrrecnnError(f"{directory}: not a model folder (no config.json)")
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
        config = ModelConfig.from_dict(meta["model"])
    except (ValueError, KeyError, TypeError) as e:
        raise SrrecnnError(f"{config_file}: invalid model config ({e})") from None
    import orbax.checkpoint as ocp

    device = jax.local_devices()[0]
    target = {layer: {leaf: jax.ShapeDtypeStruct(shape, np.float32,
                                                 sharding=jax.sharding.SingleDeviceSharding(device))
                      for leaf, shape in leaves.items()}
              for layer, leaves in model.param_shapes(config).items()}
    try:
        params = _local_checkpointer(ocp).restore((directory / "params").absolute(), target)
    except Exception as e:  # orbax raises many types for a damaged folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SrrecnnError(f"{directory}: cannot restore parameters ({first})") from None
    check_params(params, config, str(directory))
    return LoadedModel(params=params, config=config, trained_scales=meta.get("trained_scales"),
                       trained_spacing=meta.get("trained_spacing"),
                       origin=meta.get("origin", {}))


def _load_training_checkpoint(run_dir: Path, step: int | None) -> LoadedModel:
    """The parameters of a training run's checkpoint (``step``, or the latest)."""
    from srrecnn_jax.trainer import restore_state

    state, config = restore_state(run_dir, step)
    params = jax.tree_util.tree_map(np.asarray, jax.device_get(state["params"]))
    origin = {"kind": "srrecnn-jax training checkpoint", "run": str(run_dir),
              "step": int(state["step"])}
    return LoadedModel(params=params, config=config.model_config(), origin=origin)


def load_model(path: str | Path, prototxt: str | Path | None = None) -> LoadedModel:
    """A model folder written by ``save_model``, a training run folder (its latest
    checkpoint) or one of its ``checkpoints/<step>`` folders, or a ``.caffemodel``."""
    path = Path(path)
    if path.is_dir():
        if prototxt is not None:
            raise SrrecnnError(f"{prototxt}: --prototxt only applies to a .caffemodel")
        if (path / "train_config.json").is_file():  # a training run: its latest checkpoint
            return _load_training_checkpoint(path, None)
        if (path / "state").is_dir() and (path.parent.parent / "train_config.json").is_file():
            return _load_training_checkpoint(path.parent.parent, int(path.name))
        return _load_folder(path)
    from srrecnn_jax.caffe import load_caffemodel

    caffe = load_caffemodel(path, prototxt)
    origin = {"kind": "caffe", **caffe.source, "net_name": caffe.net_name}
    return LoadedModel(params=caffe.params, config=caffe.config,
                       trained_scales=caffe.trained_scales, origin=origin)
