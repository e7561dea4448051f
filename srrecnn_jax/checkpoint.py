"""Model folders: an orbax parameter tree plus a human-readable ``config.json``.

Layout of a model folder::

    MODEL/config.json   {"format": ..., "model": ModelConfig, "trained_scales": ...,
                         "trained_spacing": ..., "origin": ...}
    MODEL/params/       orbax StandardCheckpointer tree {"conv1": {"kernel", "bias"}, ...}

``load_model`` also takes a ``.caffemodel`` file (converted on the fly) and a
training run folder (``srrecnn_jax.train``): its ``model/`` folder when the run
has finished, else its latest checkpoint, or one ``checkpoints/<step>`` folder.
A run's checkpoint is read knowing only the ``ModelConfig`` saved beside it
(``RUN_META``), so this module needs nothing of the training code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from srrecnn_jax import model
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.errors import OutputExistsError, SrrecnnError
from srrecnn_jax.files import check_output_file
from srrecnn_jax.scales import positive_number, scale_entry
from srrecnn_jax.structured import parse_json
from srrecnn_jax.writing import atomic_output, write_bytes_atomic

FORMAT = "srrecnn-jax/1"

# The layout of a training run folder (written by srrecnn_jax.train.loop):
#   RUN/train_config.json             the run's settings
#   RUN/checkpoints/<step>/state/     orbax tree {"params", "opt_state", "step"}
#   RUN/checkpoints/<step>/meta/      orbax JSON {"train_config", "model": ModelConfig}
#   RUN/model/                        the final model folder
RUN_CONFIG = "train_config.json"
RUN_CHECKPOINTS = "checkpoints"
RUN_STATE, RUN_META = "state", "meta"
RUN_MODEL = "model"


@dataclasses.dataclass
class LoadedModel:
    """Parameters, architecture and provenance of a model ready for inference."""

    params: dict[str, dict[str, Any]]
    config: ModelConfig
    # Numbers (isotropic) or [x, y, z] lists (see ``scales.untrained_scale``), if known.
    trained_scales: list | None = None
    trained_spacing: float | None = None  # mm, of the HR volumes it learned to produce
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)


def fingerprint(loaded: LoadedModel) -> str:
    """SHA-256 of a model's architecture and parameters (as float32): the same for one
    network in any form (model folder, run folder, ``.caffemodel``), different for any
    other, so that a batch rerun knows whether an output was made by this model."""
    digest = hashlib.sha256(json.dumps(loaded.config.to_dict(), sort_keys=True).encode())
    for layer in sorted(loaded.params):
        for leaf in sorted(loaded.params[layer]):
            array = np.ascontiguousarray(loaded.params[layer][leaf], dtype=np.float32)
            digest.update(f"{layer}/{leaf}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


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


def check_finite(params: dict, name: str) -> None:
    """Refuse parameters with a NaN or infinite entry, naming the first such layer."""
    for layer, leaves in sorted(params.items()):
        for leaf, value in sorted(leaves.items()):
            if not np.all(np.isfinite(np.asarray(value))):
                raise SrrecnnError(f"{name}: parameter {layer}.{leaf} is not finite "
                                   "(NaN or infinity)")


def save_model(directory: str | Path, loaded: LoadedModel, force: bool = False) -> Path:
    """Write a model folder atomically (temporary folder, then rename)."""
    directory = Path(directory).absolute()
    check_params(loaded.params, loaded.config, str(directory))
    check_finite(loaded.params, str(directory))
    if directory.exists() and not force:
        raise OutputExistsError(f"{directory}: already exists")
    import orbax.checkpoint as ocp  # slow import, only where needed

    with atomic_output(directory, replace=force) as tmp:
        tmp.mkdir()
        checkpointer = _local_checkpointer(ocp)
        params = jax.tree_util.tree_map(np.asarray, loaded.params)
        checkpointer.save(tmp / "params", params)
        checkpointer.wait_until_finished()
        meta = {"format": FORMAT, "model": loaded.config.to_dict(),
                "trained_scales": loaded.trained_scales,
                "trained_spacing": loaded.trained_spacing, "origin": loaded.origin}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return directory


#: The keys of a model folder's config.json (all written by ``save_model``).
META_KEYS = ("format", "model", "trained_scales", "trained_spacing", "origin")


def read_meta(config_file: Path) -> tuple[dict[str, Any], ModelConfig]:
    """A model folder's config.json, every key checked (``format``, the ``model`` fields
    and their types, ``trained_scales``, ``trained_spacing``, ``origin``); a problem is
    one ``SrrecnnError`` naming the file and the key. Reads nothing else."""
    def bad(key: str, problem: str) -> SrrecnnError:
        return SrrecnnError(f"{config_file}: invalid model config: {key}: {problem}")

    try:
        meta = parse_json(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SrrecnnError(f"{config_file}: invalid model config, not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SrrecnnError(f"{config_file}: invalid model config: not a JSON object")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise bad(unknown[0], f"unknown key (expected {', '.join(META_KEYS)})")
    if meta.get("format") != FORMAT:
        raise bad("format", f"expected {FORMAT!r}, got {meta.get('format')!r}")
    if "model" not in meta:
        raise bad("model", "missing")
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (ValueError, TypeError) as e:
        raise bad("model", str(e)) from None
    _check_training_facts(meta, bad)
    if not isinstance(meta.get("origin", {}), dict):
        raise bad("origin", f"expected an object, got {meta['origin']!r}")
    return meta, config


def _check_training_facts(meta: dict, bad: Callable[[str, str], SrrecnnError]) -> None:
    """``trained_scales`` and ``trained_spacing`` of a model folder's or a run
    checkpoint's metadata, each absent, null or well formed; ``bad(key, problem)``
    makes the error."""
    scales = meta.get("trained_scales")
    if scales is not None and not (isinstance(scales, list) and scales
                                   and all(map(scale_entry, scales))):
        raise bad("trained_scales", f"expected a list of positive numbers or [x, y, z] "
                  f"lists of them, or null, got {scales!r}")
    spacing = meta.get("trained_spacing")
    if spacing is not None and not positive_number(spacing):
        raise bad("trained_spacing", f"expected a positive number or null, got {spacing!r}")


def _load_folder(directory: Path) -> LoadedModel:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise SrrecnnError(f"{directory}: not a model folder (no config.json)")
    meta, config = read_meta(config_file)  # before orbax, which reports in tracebacks
    if not (directory / "params").is_dir():
        raise SrrecnnError(f"{directory}: not a model folder (no params/)")
    import orbax.checkpoint as ocp

    # NumPy arrays, as a caffemodel and a run checkpoint give: committed device arrays
    # would change the jit signature of the network (in-memory and persistent caches
    # miss), and the second z slab, whose carries come back committed, compiles again.
    target = {layer: {leaf: np.zeros(shape, np.float32) for leaf, shape in leaves.items()}
              for layer, leaves in model.param_shapes(config).items()}
    checkpointer = _local_checkpointer(ocp)
    try:
        # the stored shapes first: a restore into shapes that do not fit fails in
        # orbax's background threads, which print their tracebacks
        stored = checkpointer.metadata((directory / "params").absolute()).item_metadata
        if stored is None:
            raise SrrecnnError(f"{directory}: cannot restore parameters (params/ holds no "
                               "orbax checkpoint)")
        check_params(getattr(stored, "tree", stored), config, str(directory))
        params = checkpointer.restore((directory / "params").absolute(), target)
    except SrrecnnError:
        raise
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged folder
        raise SrrecnnError(f"{directory}: cannot restore parameters ({_first_line(e)})") \
            from None
    check_params(params, config, str(directory))
    check_finite(params, str(directory))
    return LoadedModel(params=params, config=config, trained_scales=meta.get("trained_scales"),
                       trained_spacing=meta.get("trained_spacing"),
                       origin=meta.get("origin", {}))


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of a run's finished checkpoints, in increasing order (reads nothing else,
    creates nothing)."""
    folder = run_dir / RUN_CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isdigit() and (p / RUN_STATE).is_dir() and (p / RUN_META).is_dir())


def _load_training_checkpoint(step_dir: Path) -> LoadedModel:
    """The parameters of one checkpoint of a training run, as NumPy arrays.

    The architecture comes from the checkpoint's JSON ``meta`` item; only the
    ``params`` subtree of the saved state is read (the optimizer state, whose
    structure depends on the solver, is skipped).
    """
    import orbax.checkpoint as ocp

    try:
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
            (step_dir / RUN_META).absolute())
        config = ModelConfig.from_dict(meta["model"])
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a damaged folder
        raise SrrecnnError(f"{step_dir}: unreadable checkpoint metadata ({_first_line(e)})") \
            from None
    _check_training_facts(meta, lambda key, problem: SrrecnnError(
        f"{step_dir}: invalid checkpoint metadata: {key}: {problem}"))
    target = {"params": {layer: {leaf: jax.ShapeDtypeStruct(shape, np.float32)
                                 for leaf, shape in leaves.items()}
                         for layer, leaves in model.param_shapes(config).items()}}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                          target)
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            (step_dir / RUN_STATE).absolute(),
            args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                        partial_restore=True))
    except Exception as e:  # noqa: BLE001
        raise SrrecnnError(f"{step_dir}: cannot restore parameters ({_first_line(e)})") \
            from None
    params = restored["params"]
    check_params(params, config, str(step_dir))
    check_finite(params, str(step_dir))
    origin = {"kind": "srrecnn-jax training checkpoint", "run": str(step_dir.parent.parent),
              "step": int(step_dir.name)}
    return LoadedModel(params=params, config=config, trained_scales=meta.get("trained_scales"),
                       trained_spacing=meta.get("trained_spacing"), origin=origin)


def _load_run(run_dir: Path) -> LoadedModel:
    """A training run: its final model when it has one, else its latest checkpoint."""
    if (run_dir / RUN_MODEL / "config.json").is_file():
        return _load_folder(run_dir / RUN_MODEL)
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise SrrecnnError(f"{run_dir}: training run has no checkpoint and no model yet")
    # A run in progress writes its newest checkpoint and deletes its oldest while we read:
    # the latest one that reads whole is the run's model.
    for step in reversed(steps):
        try:
            return _load_training_checkpoint(run_dir / RUN_CHECKPOINTS / str(step))
        except SrrecnnError as error:
            last_error = error
    raise last_error


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_model(path: str | Path, prototxt: str | Path | None = None) -> LoadedModel:
    """A model folder written by ``save_model``, a training run folder (its final model, or
    its latest checkpoint) or one of its ``checkpoints/<step>`` folders, or a
    ``.caffemodel``. Reading creates and changes nothing."""
    path = Path(path)
    if path.is_dir():
        if prototxt is not None:
            raise SrrecnnError(f"{prototxt}: a deploy prototxt only applies to a .caffemodel",
                               "prototxt")
        if (path / RUN_CONFIG).is_file():
            return _load_run(path)
        if (path / RUN_STATE).is_dir() and (path.parent.parent / RUN_CONFIG).is_file():
            return _load_training_checkpoint(path)
        return _load_folder(path)
    from srrecnn_jax.caffe import load_caffemodel

    caffe = load_caffemodel(path, prototxt)
    check_finite(caffe.params, str(path))
    origin = {"kind": "caffe", **caffe.source, "net_name": caffe.net_name}
    return LoadedModel(params=caffe.params, config=caffe.config,
                       trained_scales=caffe.trained_scales, origin=origin)


def check_model_output(output: Path, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Where a user's command may write a model folder: a path that does not exist, or,
    with ``force``, a model folder of ours and nothing else (``config.json`` of our format
    and ``params/``, no other entry) that is no part of a training run. Never an input,
    nor a folder holding one, nor a training run folder (``train_config.json`` and
    ``checkpoints/``), its ``model/`` or ``checkpoints/``, nor a folder with other files
    (a shipped model's ``model/``, beside its run's settings but no checkpoints, may be
    replaced): ``force`` replaces the whole folder, and would delete them.
    A refusal is a ``SrrecnnError`` naming ``output`` (``OutputExistsError`` without
    ``force``); nothing is touched."""
    output = Path(output)
    target = output.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if target == source or target in source.parents:
            raise SrrecnnError(f"{output}: is the input {source} or holds it; a model is "
                               "never written over its input")
    if not output.exists() and not output.is_symlink():
        return
    if not force:
        raise OutputExistsError(f"{output}: already exists")
    if any((folder / RUN_CONFIG).is_file() and (folder / RUN_CHECKPOINTS).is_dir()
           for folder in (target, target.parent, target.parent.parent)):
        raise SrrecnnError(f"{output}: is a training run folder or part of one; force "
                           "replaces only a model folder of its own")
    if not target.is_dir():
        raise SrrecnnError(f"{output}: exists and is not a model folder; force replaces only "
                           "a model folder")
    entries = sorted(p.name for p in target.iterdir())
    try:
        ours = (parse_json((target / "config.json").read_text(encoding="utf-8"))
                .get("format") == FORMAT)
    except (OSError, ValueError, AttributeError):
        ours = False
    if entries != ["config.json", "params"] or not ours:
        raise SrrecnnError(f"{output}: holds files other than a model folder's "
                           f"({', '.join(entries[:5]) or 'nothing'}); force replaces only "
                           "a model folder, which holds config.json and params/ alone")


def write_model(output: Path, loaded: LoadedModel, force: bool = False,
                inputs: Sequence[Path] = ()) -> Path:
    """``save_model`` for a user's command: the output checked first
    (``check_model_output``), so an existing folder that is not a model folder of ours,
    or an input, is never replaced."""
    check_model_output(output, force, inputs)
    return save_model(output, loaded, force=force)


def convert(caffemodel: Path, output: Path, prototxt: Path | None = None,
            force: bool = False) -> LoadedModel:
    """Convert a ``.caffemodel`` (checked against ``prototxt`` if given) to a model folder."""
    check_model_output(output, force, [caffemodel] + ([prototxt] if prototxt else []))
    if caffemodel.is_dir():
        raise SrrecnnError(f"{caffemodel}: is a folder, expected a .caffemodel file")
    loaded = load_model(caffemodel, prototxt)
    write_model(output, loaded, force, [caffemodel] + ([prototxt] if prototxt else []))
    return loaded


def export_caffe(path: Path, output: Path, force: bool = False) -> LoadedModel:
    """Write a model (any form ``load_model`` reads) as a binary Caffe ``.caffemodel``."""
    from srrecnn_jax.caffe import caffemodel_bytes

    check_output_file(output, force, [path], image=False)
    loaded = load_model(path)
    name = "SRCNN3D" if loaded.config.padding == "edge_valid" else "VDSR3D"
    write_bytes_atomic(output, caffemodel_bytes(loaded.params, loaded.config, name),
                          replace=force)
    return loaded


def describe_model(path: Path, prototxt: Path | None = None) -> dict:
    """Architecture, parameter count, receptive field, trained scales and voxel size, and
    origin of a model."""
    loaded = load_model(path, prototxt)
    config = loaded.config
    return {"model": str(path), "architecture": config.describe(), "config": config.to_dict(),
            "parameters": model.param_count(loaded.params),
            "receptive_field": config.receptive_field,
            "trained_scales": loaded.trained_scales, "trained_spacing": loaded.trained_spacing,
            "origin": loaded.origin}
