"""Training settings: the model, the optimizer, the schedule and the loop, checked up front.

``TrainConfig`` holds a ``ModelConfig`` (any architecture: ReCNN, SRCNN3D),
an ``OptimizerConfig`` and a ``ScheduleConfig``; defaults are the original's
(pipeline doc §4). Settings are written flat, by name (every name is unique
across the parts): ``learning_rate = 1e-4``, ``max_iter = 900``. The
architecture is a ``model`` table (``ModelConfig`` fields) or the ReCNN
shorthand ``layers``, ``filters``, ``kernel``, ``in_channels``, ``residual``;
the on-the-fly augmentations are an ``augment`` table (``AugmentConfig``
fields; ``augment.noise = [0.01, 0.03]`` as a ``key=value`` override).
A scale (``patch_scales`` entries, ``validation_scale``) is a number s, the
isotropic (s, s, s), or three numbers ``[sx, sy, sz]``: ``patch_scales = [2, 3]``
is two isotropic scales, ``patch_scales = [[1, 1, 4]]`` one thick-slice scale;
a ``patch_scales_by_file`` table (file-name glob -> scales) overrides them per image.
Sources, later ones winning: defaults (or the ``--init`` model's
architecture), a Caffe solver, a TOML/JSON file, ``key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from srrecnn_jax.config import ModelConfig, recnn
from srrecnn_jax.degradation import KSPACE_WINDOWS
from srrecnn_jax.errors import SrrecnnError


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Adam or momentum SGD, with Caffe's weight decay and bias learning-rate multiplier."""

    solver: str = "adam"  # adam | sgd
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    momentum: float = 0.9
    weight_decay: float = 0.0
    bias_lr_mult: float = 0.1

    def __post_init__(self) -> None:
        if self.solver not in ("adam", "sgd"):
            raise ValueError(f"solver must be adam or sgd, not {self.solver!r}")
        _check_finite(self, "learning_rate", "beta1", "beta2", "epsilon", "momentum",
                      "weight_decay", "bias_lr_mult")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        for name in ("beta1", "beta2", "momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {self.epsilon}")
        for name in ("weight_decay", "bias_lr_mult"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Caffe's "multistep": ``learning_rate * gamma^k`` from the k-th of ``steps`` on
    (iterations count from 0); ``max_iter`` updates in all."""

    max_iter: int = 20000
    steps: tuple[int, ...] = (10000,)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.max_iter < 0:
            raise ValueError(f"max_iter must be >= 0, got {self.max_iter}")
        if any(s < 0 for s in self.steps) or list(self.steps) != sorted(self.steps):
            raise ValueError(f"steps must be increasing and >= 0, got {list(self.steps)}")
        _check_finite(self, "gamma")
        if not self.gamma > 0:
            raise ValueError(f"gamma must be positive, got {self.gamma}")


#: A scale setting: one number s for the isotropic (s, s, s), or (x, y, z) factors.
Scale = float | tuple[float, float, float]

#: The blur of the observation model: the original's Gaussian of ``sigma`` 1 voxel along
#: every axis, or thick slices (``degradation.slice_profile``).
BLURS = ("gaussian", "slice_profile")


def scale_axes(scale: Scale) -> tuple[float, float, float]:
    """The (x, y, z) factors of a scale setting: a number s is (s, s, s)."""
    return (float(scale),) * 3 if isinstance(scale, int | float) else tuple(map(float, scale))


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random changes to each on-the-fly training patch, drawn from the sample's own
    generator; all off by default (the original trained on the observation model alone).
    What each models: ``train/augment.py``.

    ``gamma = [lo, hi]``: HR contrast, intensity^g with g log-uniform in [lo, hi]
    (label and input). ``bias_field = b``: smooth multiplicative field, polynomial
    coefficients uniform in [-b, b] (label and input). ``noise = [lo, hi]``: Rician
    noise of sigma uniform in [lo, hi] (intensity range 1) on the LR image (input only).
    ``hr_noise = [lo, hi]``: the same on the HR image before the degradation (label and
    input: the noise of the 1 mm scan itself).
    ``blur_jitter = j``: each blur sigma times uniform [1 - j, 1 + j] (input only).
    ``kspace = p``: with probability p a patch's point spread is a k-space box apodised by
    a window drawn from ``kspace_windows`` (``degradation.KSPACE_WINDOWS``) instead of the
    Gaussian, magnitude image (input only).
    ``flips``: random flips along each axis; ``permute``: random axis order (both;
    isotropic ``patch_scales`` only).
    """

    gamma: tuple[float, float] = (1.0, 1.0)
    bias_field: float = 0.0
    noise: tuple[float, float] = (0.0, 0.0)
    blur_jitter: float = 0.0
    flips: bool = False
    permute: bool = False
    hr_noise: tuple[float, float] = (0.0, 0.0)
    kspace: float = 0.0
    kspace_windows: tuple[str, ...] = ("none",)

    def __post_init__(self) -> None:
        _check_finite(self, "gamma", "bias_field", "noise", "hr_noise", "blur_jitter",
                      "kspace", prefix="augment.")
        if not 0 <= self.kspace <= 1:
            raise ValueError(f"augment.kspace must be in [0, 1] (a probability), got "
                             f"{self.kspace}")
        windows = self.kspace_windows
        if (not isinstance(windows, tuple | list) or not windows
                or any(w not in KSPACE_WINDOWS for w in windows)):
            raise ValueError(f"augment.kspace_windows must be a non-empty list of "
                             f"{', '.join(KSPACE_WINDOWS)}, got {windows!r}")
        object.__setattr__(self, "kspace_windows", tuple(windows))
        for name in ("gamma", "noise", "hr_noise"):
            values = getattr(self, name)
            if len(values) != 2 or not values[0] <= values[1]:
                raise ValueError(f"augment.{name} must be [lo, hi] with lo <= hi, got "
                                 f"{list(values)}")
        if not self.gamma[0] > 0:
            raise ValueError(f"augment.gamma must be positive, got {list(self.gamma)}")
        for name in ("noise", "hr_noise"):
            values = getattr(self, name)
            if not (0 <= values[0] and values[1] <= 1):
                raise ValueError(f"augment.{name} must be in [0, 1] (of the intensity range), "
                                 f"got {list(values)}")
        if not self.bias_field >= 0:
            raise ValueError(f"augment.bias_field must be >= 0, got {self.bias_field}")
        if not 0 <= self.blur_jitter < 1:
            raise ValueError(f"augment.blur_jitter must be in [0, 1), got {self.blur_jitter}")

    @property
    def per_patch(self) -> bool:
        """Whether patches must be degraded one by one: an augmentation acts before or
        inside the observation model (gamma, bias field, noises, blur jitter)."""
        return (self.gamma != (1.0, 1.0) or self.bias_field > 0 or self.noise != (0.0, 0.0)
                or self.hr_noise != (0.0, 0.0) or self.blur_jitter > 0 or self.kspace > 0)

    @property
    def active(self) -> bool:
        """Whether any augmentation is on."""
        return self.per_patch or self.flips or self.permute


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on."""

    model: ModelConfig = dataclasses.field(default_factory=recnn)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    batch: int = 64
    # The gradient is summed over micro-batches of this many patches (0: 16 on CPU when
    # that divides the batch, else the whole batch): the same step, less memory, and
    # on CPU faster (a batch of 64 21^3 patches leaves the cache).
    micro_batch: int = 0
    loss: str = "euclidean"  # euclidean: sum of squares / (2 batch) | mean
    seed: int = 0
    checkpoint_every: int = 1000
    keep: int = 3
    log_every: int = 100
    validate_every: int = 1000
    validation_scale: Scale = 2.0
    patch: int = 21  # on-the-fly patches from images (no HDF5)
    patch_scales: tuple[Scale, ...] = (2.0,)
    # Training images whose file name matches a glob use that glob's scales instead of
    # patch_scales (the first match wins): ((glob, scales), ...); in TOML a table,
    # [patch_scales_by_file] "*_3mm.nii.gz" = [[1, 1, 4], [1, 1, 5]].
    patch_scales_by_file: tuple[tuple[str, tuple[Scale, ...]], ...] = ()
    blur: str = "gaussian"  # of the observation model (patches, validation): BLURS
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.loss not in ("euclidean", "mean"):
            raise ValueError(f"loss must be euclidean or mean, not {self.loss!r}")
        for name in ("batch", "checkpoint_every", "log_every", "validate_every", "keep",
                     "patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch < 0 or (self.micro_batch and self.batch % self.micro_batch):
            raise ValueError(f"micro_batch must divide batch ({self.batch}) or be 0, got "
                             f"{self.micro_batch}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2^32), got {self.seed}")
        _check_finite(self, "validation_scale", "patch_scales")
        if not self.patch_scales:
            raise ValueError("patch_scales needs at least one scale")
        named = [("validation_scale", self.validation_scale), ("patch_scales", self.patch_scales)]
        for glob, scales in self.patch_scales_by_file:
            if not scales:
                raise ValueError(f"patch_scales_by_file[{glob!r}] needs at least one scale")
            named.append((f"patch_scales_by_file[{glob!r}]", scales))
        for name, values in named:
            if not all(1 <= v <= _FLOAT32_MAX for v in _numbers(values)):
                raise ValueError(f"{name} must be at least 1 along every axis (how many times "
                                 f"coarser the LR is), got {_plain(values)}")
        if self.blur not in BLURS:
            raise ValueError(f"blur must be {' or '.join(BLURS)}, not {self.blur!r}")
        anisotropic = [s for s in self.all_patch_scales if len(set(scale_axes(s))) > 1]
        if self.augment.permute and anisotropic:
            raise ValueError("augment.permute needs isotropic patch_scales (permuting the axes "
                             f"would move the thick axis), got {_plain(anisotropic)}")

    @property
    def all_patch_scales(self) -> tuple[Scale, ...]:
        """``patch_scales`` and every ``patch_scales_by_file`` scale, each once."""
        found: list[Scale] = []
        for scale in self.patch_scales + sum((s for _, s in self.patch_scales_by_file), ()):
            found += [] if scale in found else [scale]
        return tuple(found)

    def scales_for(self, paths: Sequence[Path]) -> list[tuple[Scale, ...] | None]:
        """The patch scales of each training image: those of the first
        ``patch_scales_by_file`` glob its file name matches, else None (``patch_scales``).
        A glob matching none of ``paths`` is an error (a typo would train at the others)."""
        for glob, _ in self.patch_scales_by_file:
            if not any(fnmatch.fnmatchcase(p.name, glob) for p in paths):
                raise SrrecnnError(f"patch_scales_by_file: {glob!r} matches none of the "
                                   f"training images ({', '.join(p.name for p in paths)})")
        return [next((scales for glob, scales in self.patch_scales_by_file
                      if fnmatch.fnmatchcase(p.name, glob)), None) for p in paths]

    def to_dict(self) -> dict[str, Any]:
        """Flat settings plus a ``model`` table (the form ``config_from`` reads)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in _PARTS}
        values["patch_scales_by_file"] = dict(self.patch_scales_by_file)
        for part in ("optimizer", "schedule"):
            values |= dataclasses.asdict(getattr(self, part))
        values["augment"] = dataclasses.asdict(self.augment)
        return {"model": self.model.to_dict(), **_plain(values)}


_PARTS = ("model", "optimizer", "schedule", "augment")


def _plain(value: Any) -> Any:
    """Tuples as lists, nested ones too (the JSON and TOML form of a setting)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _numbers(value: Any) -> list:
    """Every number in a setting, nested tuples flattened."""
    return [n for v in value for n in _numbers(v)] if isinstance(value, tuple) else [value]

#: The largest float32: every number setting must stay finite as float32 on the device.
_FLOAT32_MAX = 3.4028234663852886e38


def _check_finite(settings: Any, *names: str, prefix: str = "") -> None:
    """``ValueError`` naming the first of ``names`` (after ``prefix``) with a NaN, an
    infinity or a value too large for float32 (a learning rate of 1e39 is infinite on
    the device)."""
    for name in names:
        for v in _numbers(getattr(settings, name)):
            if not abs(v) <= _FLOAT32_MAX:
                raise ValueError(f"{prefix}{name} must be a finite float32 number, got {v}")


#: The ReCNN shorthand for the architecture.
MODEL_KEYS = ("layers", "filters", "kernel", "in_channels", "residual")


def _types(cls) -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name not in _PARTS}


#: Each flat setting: the part that holds it (None: TrainConfig itself) and its type.
SETTINGS: dict[str, tuple[str | None, str]] = {
    **{k: ("optimizer", t) for k, t in _types(OptimizerConfig).items()},
    **{k: ("schedule", t) for k, t in _types(ScheduleConfig).items()},
    **{k: (None, t) for k, t in _types(TrainConfig).items()},
}
_SHORTHAND_TYPES = {"layers": "int", "filters": "int", "kernel": "int", "in_channels": "int",
                    "residual": "bool"}


def _checked(name: str, value: Any, kind: str) -> Any:
    """``value`` if it is of the setting's type (ints for int, numbers for float ...)."""
    def scalar(v: Any, k: str) -> Any:
        if k == "int" and isinstance(v, int) and not isinstance(v, bool):
            return v
        if k == "float" and isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        if k == "bool" and isinstance(v, bool):
            return v
        if k == "str" and isinstance(v, str):
            return v
        what = {"int": "an integer", "float": "a number", "bool": "true or false",
                "str": "a word"}[k]
        raise SrrecnnError(f"training setting {name}: expected {what}, got {v!r}")

    def scale(v: Any) -> Any:
        if isinstance(v, list | tuple):
            if len(v) != 3:
                raise SrrecnnError(f"training setting {name}: expected a number or three "
                                   f"[x, y, z], got {v!r}")
            return tuple(scalar(f, "float") for f in v)
        return scalar(v, "float")

    if kind == "Scale":
        return scale(value)
    if kind == "tuple[tuple[str, tuple[Scale, ...]], ...]":  # a table glob -> scales
        if not isinstance(value, Mapping):
            raise SrrecnnError(f"training setting {name}: expected a table of file-name "
                               f"globs and their scales, got {value!r}")
        return tuple((str(glob), _checked(f"{name}[{glob!r}]", scales, "tuple[Scale, ...]"))
                     for glob, scales in value.items())
    if kind == "tuple[Scale, ...]":  # a bare number is one scale; [2, 3] two isotropic ones
        return tuple(scale(v) for v in (value if isinstance(value, list | tuple) else [value]))
    if kind.startswith("tuple"):
        inner = "int" if "int" in kind else "str" if "str" in kind else "float"
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(scalar(v, inner) for v in items)
    return scalar(value, kind)


def config_from(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default ``TrainConfig()``) with the flat ``values`` set; every value is
    checked for its type and range, and unknown keys are an error. Augmentations are an
    ``augment`` table, or ``augment.NAME`` keys (overrides; they win over the table)."""
    base = base or TrainConfig()
    unknown = sorted(set(values) - set(SETTINGS) - set(MODEL_KEYS) - {"model", "augment"}
                     - {f"augment.{k}" for k in _AUGMENT_TYPES})
    if unknown:
        raise SrrecnnError(f"unknown training setting(s): {', '.join(unknown)}")
    try:
        model = _model_from(values, base.model)
        parts: dict[str, dict[str, Any]] = {"optimizer": {}, "schedule": {}, "": {}}
        for key, value in values.items():
            if key in SETTINGS:
                part, kind = SETTINGS[key]
                parts[part or ""][key] = _checked(key, value, kind)
        return dataclasses.replace(
            base, model=model,
            optimizer=dataclasses.replace(base.optimizer, **parts["optimizer"]),
            schedule=dataclasses.replace(base.schedule, **parts["schedule"]),
            augment=dataclasses.replace(base.augment, **_augment_from(values)), **parts[""])
    except (TypeError, ValueError) as e:
        raise SrrecnnError(f"training settings: {e}") from None


_AUGMENT_TYPES = _types(AugmentConfig)


def _augment_from(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``augment`` table's settings, then the ``augment.NAME`` keys, type-checked."""
    table = values.get("augment", {})
    if not isinstance(table, Mapping):
        raise SrrecnnError("training setting augment: expected a table of AugmentConfig "
                           f"fields ({', '.join(_AUGMENT_TYPES)})")
    table = dict(table) | {k.removeprefix("augment."): v for k, v in values.items()
                           if k.startswith("augment.")}
    unknown = sorted(set(table) - set(_AUGMENT_TYPES))
    if unknown:
        raise SrrecnnError(f"unknown training setting(s): "
                           f"{', '.join('augment.' + k for k in unknown)}")
    return {k: _checked(f"augment.{k}", v, _AUGMENT_TYPES[k]) for k, v in table.items()}


def _model_from(values: Mapping[str, Any], model: ModelConfig) -> ModelConfig:
    """The architecture: a ``model`` table, then the shorthand keys applied to it."""
    if "model" in values:
        if not isinstance(values["model"], Mapping):
            raise SrrecnnError("training setting model: expected a table of ModelConfig "
                               "fields")
        model = ModelConfig.from_dict(dict(values["model"]))
    short = {k: _checked(k, values[k], _SHORTHAND_TYPES[k]) for k in MODEL_KEYS if k in values}
    if {"layers", "filters", "kernel"} & short.keys():
        hidden = model.filters[0] if model.layers > 1 else 64
        model = recnn(short.get("layers", model.layers), short.get("filters", hidden),
                      short.get("kernel", model.kernels[0]), model.in_channels, model.residual)
    extra = {k: short[k] for k in ("in_channels", "residual") if k in short}
    return dataclasses.replace(model, **extra) if extra else model
