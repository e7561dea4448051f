"""Super-resolution inference: the original pipeline on arrays and on images.

Pipeline (as the original ``demo_*SRReCNN3D.py``): normalise by the maximum,
cubic-spline zoom, network (``tiling``: whole volume or exact tiles),
residual, de-normalise, clamp at the input minimum (and, unlike the release, at
``ceiling`` times its maximum: ``InferenceOptions``). Arrays are (x, y, z); the
network sees ``(X, Y, Z, C)`` volumes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
import SimpleITK as sitk

from srrecnn_jax import model
from srrecnn_jax.checkpoint import LoadedModel, load_model
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.consistency import project
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.files import check_output_file, writable_folder
from srrecnn_jax.geometry import resample_onto, same_grid, zoomed_geometry
from srrecnn_jax.images import check_image, check_values, read_input, to_array, to_image
from srrecnn_jax.inference_options import InferenceOptions
from srrecnn_jax.interpolation import zoom, zoom_device, zoomed_shape
from srrecnn_jax.limits import size_problem, size_text
from srrecnn_jax.scales import slice_axes, untrained_scale_note
from srrecnn_jax.tiling import run_network
from srrecnn_jax.writing import write_image_atomic


@dataclasses.dataclass
class Prepared:
    """A volume ready for the network, and what it takes to finish it.

    Attributes:
      volume: ``(X, Y, Z, C)`` float32 network input: ``[zoom(lr / top), ref / ref.max()]``.
      low, top: the input's minimum and maximum (de-normalisation and clamp).
      geometry: spacing, origin and direction of the output image, or None
        for arrays.
      name: the input's name, for errors about the result.
      axes: when not None, ``volume``'s axes are the input's in this order (two swapped,
        see ``scales.slice_axes``), and the network output is put back before finishing.
      ceiling: the output's upper clamp, or None (``InferenceOptions.ceiling``).
      lr: ``lr / top`` (x, y, z), kept for the data-consistency projection when
        ``acquisition`` is not ``"none"``, else None.
      acquisition, consistency: the projection's (``InferenceOptions``).
      clipped: set by ``finish_array``: how many output voxels the ceiling clipped.
    """

    volume: np.ndarray
    low: float
    top: float
    geometry: tuple | None = None
    name: str = "input"
    axes: tuple[int, int, int] | None = None
    ceiling: float | None = None
    lr: np.ndarray | None = None
    acquisition: str = "none"
    consistency: float | None = None
    clipped: int = 0


def prepare_array(config: ModelConfig, lr: np.ndarray,
                  options: InferenceOptions | float | str | Sequence[float],
                  reference: np.ndarray | None = None, **settings) -> Prepared:
    """Normalise by the maximum and zoom; stack the normalised reference as channel 1.

    ``options``: an ``InferenceOptions``, or a scale with ``settings`` (its fields; the
    zoom uses ``scale``, ``order`` and ``interpolation``).
    """
    lr = np.asarray(lr, np.float32)
    if lr.ndim != 3:
        raise SrrecnnError(f"input: array is {lr.ndim}-D, expected 3-D (x, y, z)")
    _check_channels(config, reference is not None)
    options = InferenceOptions.of(options, **settings)
    scale, order = options.scale, options.order
    output_shape(lr.shape, scale, config.in_channels,
                 projecting=options.projecting)
    check_values(lr, "input")
    low, top = float(lr.min()), float(lr.max())
    if options.interpolation == "device":
        interp = np.asarray(zoom_device(lr / np.float32(top), scale, order))
    else:
        interp = zoom(lr / np.float32(top), scale, order)
    channels = [interp]
    if reference is not None:
        reference = np.asarray(reference, np.float32)
        if reference.shape != interp.shape:
            raise SrrecnnError(f"reference: shape {reference.shape} is not the zoomed input's "
                               f"{interp.shape}")
        check_values(reference, "reference")
        channels.append(reference / np.float32(reference.max()))
    kept = lr / np.float32(top) if options.projecting else None
    return Prepared(np.stack(channels, axis=-1), low, top, ceiling=options.ceiling, lr=kept,
                    acquisition=options.acquisition, consistency=options.consistency)


#: Bytes of memory per output voxel besides the network's own (tiled) work: the network
#: input (float32 per channel), its output, the finished array and the output image;
#: with a data-consistency projection, its volumes of work (``consistency.project``: the
#: correction, the sum, and the halved and quartered volumes between them).
def _bytes_per_output_voxel(channels: int, projecting: bool = False) -> int:
    return 4 * (channels + 4 + (3 if projecting else 0))


def output_shape(size: Sequence[int], factors: Sequence[float], channels: int,
                 name: str = "input", projecting: bool = False) -> tuple[int, ...]:
    """The zoomed size ``round(n * s)`` of an input of ``size`` voxels (x, y, z) by
    ``factors``, refused (``SrrecnnError`` naming ``scale``) before any work when it has
    fewer than 2 voxels along an axis, more than ``limits.MAX_VOXELS`` voxels, or needs more
    memory than this machine has (``channels``: the network's input channels;
    ``projecting``: with a data-consistency projection, which needs more)."""
    extent = [float(n) * s for n, s in zip(size, factors)]
    described = (f"{name} of {size_text(size)} voxels scaled by {tuple(factors)} gives "
                 f"{size_text(extent)} voxels")
    problem = size_problem(float(np.prod(extent)),
                           _bytes_per_output_voxel(channels, projecting))
    if problem:
        raise SrrecnnError(f"{described}, {problem}", "scale")
    shape = zoomed_shape(size, factors)
    if min(shape) < 2:
        raise SrrecnnError(f"{described}: fewer than 2 along an axis", "scale")
    return shape


def finish_array(prepared: Prepared, y: np.ndarray) -> np.ndarray:
    """Project the network output onto the input's measurements (``consistency.project``,
    when ``prepared.acquisition`` asks), de-normalise it and clamp it at the input
    minimum and at ``prepared.ceiling`` times its maximum (the count of voxels clipped
    there goes to ``prepared.clipped``).

    A result with a NaN or infinite voxel (a model that overflows on this input)
    is an error, never an output.
    """
    if prepared.axes is not None:  # a swap of two axes is its own inverse
        y = y.transpose(prepared.axes)
    if prepared.lr is not None:
        y = project(y, prepared.lr, prepared.acquisition, prepared.consistency)
    out = np.maximum(y * np.float32(prepared.top), np.float32(prepared.low))
    if prepared.ceiling is not None:
        top = np.float32(prepared.ceiling * prepared.top)
        prepared.clipped = int(np.count_nonzero(out > top))
        if prepared.clipped:
            out = np.minimum(out, top, out=out)
    if not np.all(np.isfinite(out)):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise SrrecnnError(f"{prepared.name}: the super-resolved image has {bad} non-finite "
                           "voxels (NaN or infinity): the model overflows on this input")
    return out


def super_resolve_array(params: model.Params, config: ModelConfig, lr: np.ndarray,
                        scale: InferenceOptions | float | str | Sequence[float],
                        reference: np.ndarray | None = None, **settings) -> np.ndarray:
    """The original pipeline on arrays.

    Args:
      params, config: the model.
      lr: ``(x, y, z)`` low-resolution volume.
      scale: one factor, or per-axis factors (x, y, z); or ``InferenceOptions``.
      reference: ``(x', y', z')`` second-modality volume on the zoomed grid
        (required by, and only allowed for, 2-channel models).
      settings: the other fields of ``InferenceOptions``: ``order`` of the zoom (0-5),
        ``tile`` edge and ``precision`` (see ``run_network``), ``residual`` (override
        ``config.residual``), ``interpolation`` (where the zoom runs), ``exact``
        (convolutions exact to float32 rounding, ``algorithm="exact"`` of ``run_network``;
        slower on CPU, instead of the fastest algorithm), ``ceiling``. ``header`` has no
        effect.

    Returns:
      ``(round(x*s), ...)`` float32: ``clip(mx * (net(i) + i), mn, c * mx)`` with
      ``i = zoom(lr / mx)``, ``mn, mx`` the input's minimum and maximum, ``c`` the
      ``ceiling`` (none when None: the release).
    """
    options = InferenceOptions.of(scale, **settings)
    prepared = prepare_array(config, lr, options, reference)
    return finish_array(prepared, run_network(params, config, prepared.volume, options.tile,
                                              options.residual, precision=options.precision,
                                              algorithm=conv_algorithm(options.exact)))


#: The share of output voxels clipped at the ceiling above which ``clipped_note`` warns: a
#: few isolated voxels (3 of Colin27's 7 million with ``real-x2``) are not worth a warning.
CLIPPED_WARN_SHARE = 1e-4


def clipped_note(prepared: Prepared) -> str | None:
    """A warning when the ceiling clipped more than ``CLIPPED_WARN_SHARE`` of the output
    voxels: the model over-sharpens this scan (a point spread or noise it was not trained
    for), so its output is suspect."""
    share = prepared.clipped / max(1, np.prod(prepared.volume.shape[:3]))
    if share <= CLIPPED_WARN_SHARE:
        return None
    return (f"{prepared.name}: {prepared.clipped} output voxels ({100 * share:.2g}%) were "
            f"above {prepared.ceiling:g}x the input's maximum and were clipped there: the "
            "model over-sharpens this scan; compare with a spline zoom")


def conv_algorithm(exact: bool) -> str:
    """The ``algorithm`` of ``run_network`` for ``exact``: ``exact`` (float32 rounding) or
    ``auto`` (fastest, on CPU within 3e-5 of the output range of exact arithmetic)."""
    return "exact" if exact else "auto"


def _check_channels(config: ModelConfig, has_reference: bool) -> None:
    if config.in_channels == 2 and not has_reference:
        raise SrrecnnError("this model is multimodal (2 input channels: the "
                           "interpolated image and a reference); give a reference image",
                           "reference")
    if config.in_channels == 1 and has_reference:
        raise SrrecnnError("this model is monomodal (1 input channel); "
                           "it takes no reference image", "reference")
    if config.in_channels > 2:
        raise SrrecnnError(f"model takes {config.in_channels} input channels; only 1 or 2 "
                           "are supported")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class SuperResolver:
    """A loaded model that super-resolves SimpleITK images.

    >>> sr = SuperResolver.load("SRReCNN3D_10Layers_IsoScalex2.caffemodel")
    >>> out = sr.run(sitk.ReadImage("lr.nii.gz"), scale=2)
    """

    def __init__(self, loaded: LoadedModel):
        self.model = loaded

    @classmethod
    def load(cls, path: str | Path, prototxt: str | Path | None = None) -> SuperResolver:
        """From a model folder or a ``.caffemodel`` file (converted on the fly)."""
        return cls(load_model(path, prototxt))

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def prepare(self, image: sitk.Image,
                options: InferenceOptions | float | str | Sequence[float],
                reference: sitk.Image | None = None, *, input_name: str = "input",
                reference_name: str = "reference", log: Callable[[str], None] = _stderr,
                **settings) -> Prepared:
        """Check, normalise and zoom ``image``; put ``reference`` on the output grid.

        ``options``: an ``InferenceOptions``, or a scale with ``settings`` (its fields;
        ``scale``, ``order``, ``header`` and ``interpolation`` are used here). A
        thick-slice model asked for slices along another axis gets the volume with that
        axis swapped into its own slice axis (``scales.slice_axes``); ``finish`` swaps
        back."""
        check_image(image, input_name)
        _check_channels(self.config, reference is not None)
        options = InferenceOptions.of(options, **settings)
        factors = options.scale
        out_size = output_shape(image.GetSize(), factors, self.config.in_channels, input_name,
                                projecting=options.projecting)
        lr = to_array(image)
        check_values(lr, input_name)
        geometry = zoomed_geometry(image, out_size, factors, options.header)
        ref = None
        if reference is not None:
            check_image(reference, reference_name)
            if not same_grid(reference, out_size, *geometry):
                reference, covered = resample_onto(reference, out_size, *geometry,
                                                   name=reference_name)
                log(f"{reference_name}: not on the super-resolved grid; resampled onto it in "
                    f"physical space (linear), covering {100 * covered:.1f}% of it")
            ref = to_array(reference)
            check_values(ref, reference_name)
        prepared = prepare_array(self.config, lr, options, ref)
        prepared.geometry, prepared.name = geometry, input_name
        axes = slice_axes(self.model.trained_scales, factors)
        if axes is not None:
            prepared.volume = np.ascontiguousarray(prepared.volume.transpose(axes + (3,)))
            prepared.axes = axes
        return prepared

    def finish(self, prepared: Prepared, y: np.ndarray) -> sitk.Image:
        """The network output as a float32 image on the output grid."""
        return to_image(finish_array(prepared, y), *prepared.geometry)

    def run(self, image: sitk.Image, scale: InferenceOptions | float | str | Sequence[float],
            reference: sitk.Image | None = None, *, input_name: str = "input",
            reference_name: str = "reference", log: Callable[[str], None] = _stderr,
            **settings) -> sitk.Image:
        """Super-resolve ``image`` by ``scale`` (one factor or x, y, z factors).

        ``settings`` are the other fields of ``InferenceOptions`` (``order``, ``tile``,
        ``residual``, ``header``, ``precision``, ``interpolation``, ``exact``,
        ``ceiling``); or
        ``scale`` is ``InferenceOptions`` itself. ``header="consistent"`` keeps the
        physical position of the first and last voxel centres (what the zoom computes);
        ``"original"`` writes the original release's ``spacing / scale``. A reference
        that is not on the output grid is resampled onto it in physical space (linear),
        with a note to ``log``. Returns a float32 image.
        """
        options = InferenceOptions.of(scale, **settings)
        prepared = self.prepare(image, options, reference, input_name=input_name,
                                reference_name=reference_name, log=log)
        y = run_network(self.model.params, self.config, prepared.volume, options.tile,
                        options.residual, devices=jax.local_devices(),
                        precision=options.precision, algorithm=conv_algorithm(options.exact))
        result = self.finish(prepared, y)
        note = clipped_note(prepared)
        if note:
            log(note)
        return result


def super_resolve_file(source: Path, output: Path, model: str | Path | LoadedModel,
                       scale: InferenceOptions | float | str | Sequence[float],
                       reference: Path | None = None, *, prototxt: Path | None = None,
                       force: bool = False, log: Callable[[str], None] = _stderr,
                       warn: Callable[[str], None] | None = None,
                       image: sitk.Image | None = None, **settings) -> sitk.Image:
    """Super-resolve one image file (or DICOM series folder) into ``output``.

    The output is checked (format, not an input, ``force`` to replace) and the
    inputs read before the model is loaded; missing folders above ``output`` are
    created, and it is written under a temporary name and moved into place, without
    ``force`` only if the name is still free (another run may have taken it meanwhile:
    ``OutputExistsError``). ``scale`` and ``settings`` as ``SuperResolver.run``; a scale
    the model was not trained for goes to ``warn`` (default ``log``). ``model``: a path
    as ``load_model`` takes, or a model already loaded (``adapt``); ``image``: ``source``
    already read by the caller (its checks), so that it is not read twice. Returns the
    image.
    """
    options = InferenceOptions.of(scale, **settings)
    inputs = [source] + ([reference] if reference else [])
    check_output_file(output, force, inputs, make_folder=True)
    image = read_input(source, "input image") if image is None else image
    output_shape(image.GetSize(), options.scale, 2 if reference else 1, str(source),
                 projecting=options.projecting)
    ref = read_input(reference, "reference image") if reference else None
    resolver = (SuperResolver(model) if isinstance(model, LoadedModel)
                else SuperResolver.load(model, prototxt))
    note = untrained_scale_note(resolver.model.trained_scales, options.scale)
    if note:
        (warn or log)(note)
    result = resolver.run(image, options, ref, input_name=str(source),
                          reference_name=str(reference), log=log)
    writable_folder(output.parent)
    write_image_atomic(result, output, replace=force)
    return result
