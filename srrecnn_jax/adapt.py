"""Self-supervised fine-tuning of a thick-slice model on the scan it will super-resolve.

A thick-slice scan has fine voxels along its two in-plane axes. Degraded along one of
them by the slice profile, with the same blur, crop and spline sampling as the training
data (``degradation.degrade``), the scan gives a pair whose truth is the scan itself;
with the degraded axis put where the network has its slice axis, the pair is an example
of the very task, with this scan's contrast, noise and anatomy (the idea of SMORE and
ECLARE). ``adapt`` fine-tunes the last layers on random patches of both in-plane pairs
for a wall-clock budget, and keeps the result only if it beats the starting model on
held-out slices.

Choices, for a 2-core CPU: only the last ``layers`` layers learn; the earlier ones are
frozen, and their features are computed once for a fixed pool of patches, so a step runs
the last layers alone (``AdaptSettings.renew_every`` renews the pool as training goes on:
more held-out gain, but not more through-plane gain). Patches are run with SAME padding
of their own, as in training.
The held-out slices are the last ``heldout`` fraction of the longer in-plane axis: no
training patch covers them (the degraded input there still carries a few voxels of blur
from the slices before them, and they may serve as context).

Arrays are (x, y, z); the network sees channels-last ``(X, Y, Z, C)`` volumes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from srrecnn_jax import model
from srrecnn_jax.adapt_settings import RENEW, AdaptSettings
from srrecnn_jax.checkpoint import LoadedModel, fingerprint
from srrecnn_jax.config import ModelConfig
from srrecnn_jax.degradation import FWHM_PER_SIGMA, degrade
from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.inference import conv_algorithm, prepare_array
from srrecnn_jax.metrics import psnr
from srrecnn_jax.scales import slice_axes
from srrecnn_jax.tiling import run_network


@dataclasses.dataclass
class Pair:
    """One self-supervised pair, in the axis order the network sees it.

    Attributes:
      volume: ``(X, Y, Z, 1)`` float32 network input: the scan degraded along
        ``degraded``, divided by its maximum and spline-zoomed back
        (``inference.prepare_array``).
      target: ``(X, Y, Z)`` float32: the scan, cropped to a multiple of the factor along
        ``degraded`` as ``degrade`` crops it, divided by the same maximum.
      top: that maximum (``target * top`` is the scan).
      axes: axis i of ``volume`` and ``target`` is scan axis ``axes[i]``.
      degraded: the scan axis degraded.
    """

    volume: np.ndarray
    target: np.ndarray
    top: float
    axes: tuple[int, int, int]
    degraded: int


@dataclasses.dataclass
class AdaptResult:
    """What ``adapt`` did.

    Attributes:
      model: the model to run: the adapted one when ``kept``, else the start.
      adapted: the adapted model (the start's parameters with its last layers
        fine-tuned), kept or not; its ``origin`` records the start and the numbers.
      kept: whether the adapted model beat the start on the held-out pairs (PSNR) by
        ``AdaptSettings.keep_margin_db`` at least.
      seconds, steps: wall time of the whole adaptation and updates made.
      heldout_psnr: ``{"spline", "start", "adapted"}`` in dB, normalised intensities
        (adapted: the best held-out check's).
      fwhm: the slice profile's FWHM in in-plane voxels.
      best_step: the step whose weights ``adapted`` holds (the best held-out check).
    """

    model: LoadedModel
    adapted: LoadedModel
    kept: bool
    seconds: float
    steps: int
    heldout_psnr: dict[str, float]
    fwhm: float
    best_step: int = 0

    def facts(self) -> dict:
        """The JSON summary: seconds, steps, the best check's step, held-out PSNRs, kept."""
        return {"seconds": round(self.seconds, 3), "steps": self.steps,
                "best_step": self.best_step,
                "heldout_psnr": {k: round(v, 3) for k, v in self.heldout_psnr.items()},
                "kept": self.kept, "fwhm_voxels": round(self.fwhm, 4)}


def thick_axis(factors: Sequence[float]) -> int:
    """The scan axis whose slices the ``factors`` (x, y, z) resolve: the one of largest
    factor, which must be above 1 and the only one that far from 1 (one thick axis)."""
    t = int(np.argmax(factors))
    others = [f for i, f in enumerate(factors) if i != t]
    if not factors[t] > 1 or max(others) * 1.2 > factors[t] or min(others) < 1 / 1.2:
        raise SrrecnnError(f"fine-tuning on the scan needs thick slices along one axis "
                           f"(one factor above 1, the others near 1), got {tuple(factors)}",
                           "scale")
    return t


def slice_fwhm(spacing: Sequence[float], factors: Sequence[float],
               thickness: float | None = None) -> float:
    """The slice profile's FWHM in in-plane voxels: the slice ``thickness`` in mm (default
    the thick axis's spacing: contiguous slices) over the mean in-plane spacing."""
    t = thick_axis(factors)
    inplane = [s for i, s in enumerate(spacing) if i != t]
    thickness = float(spacing[t]) if thickness is None else float(thickness)
    if not (math.isfinite(thickness) and thickness > 0):
        raise SrrecnnError(f"must be a positive number, got {thickness}", "slice_thickness")
    return thickness / float(np.mean(inplane))


def make_pairs(config: ModelConfig, lr: np.ndarray, factors: Sequence[float],
               trained_scales: list | None = None, fwhm: float | None = None,
               order: int = 3, interpolation: str = "device") -> list[Pair]:
    """The two self-supervised pairs of the (x, y, z) scan ``lr`` that ``factors`` will
    zoom along its thick axis t (``thick_axis``), by s = ``factors[t]``.

    For each in-plane axis a: ``degrade(lr, s along a, slice_profile)`` with a Gaussian of
    ``fwhm`` voxels (default s) along a, zoomed back and normalised as inference does
    (``prepare_array``). The network sees the scan with its axes in the order of
    ``slice_axes(trained_scales, factors)`` (t where the model has its slice axis); a
    pair has a and t exchanged in that order, so that the degraded axis lies where the
    thick one does at inference, and t, coarse in input and target alike, where a does."""
    lr = np.asarray(lr, np.float32)
    t = thick_axis(factors)
    s = float(factors[t])
    fwhm = s if fwhm is None else float(fwhm)
    seen = slice_axes(trained_scales, factors) or (0, 1, 2)
    pairs = []
    for a in (i for i in range(3) if i != t):
        scale, sigma = [1.0] * 3, [0.0] * 3
        scale[a], sigma[a] = s, fwhm / FWHM_PER_SIGMA
        low, truth = degrade(lr, scale, sigma, order)
        if low.shape[a] < 2:
            raise SrrecnnError(f"the scan's {lr.shape[a]} voxels along axis {'xyz'[a]} "
                               f"leave {low.shape[a]} after a degradation by {s:g}: too few "
                               "to fine-tune on", "scale")
        back = [c / n for c, n in zip(truth.shape, low.shape)]
        prepared = prepare_array(config, low, back, order=order, interpolation=interpolation)
        axes = tuple(a if p == t else t if p == a else p for p in seen)
        pairs.append(Pair(np.ascontiguousarray(prepared.volume.transpose(axes + (3,))),
                          np.ascontiguousarray((truth / np.float32(prepared.top))
                                               .transpose(axes)),
                          prepared.top, axes, a))
    return pairs


def heldout_axis(pairs: Sequence[Pair]) -> int:
    """The scan axis whose far end is held out: the longer in-plane axis (the later one
    on a tie), so that the held-out part takes the least from training."""
    inplane = [p.degraded for p in pairs]
    lengths = {a: max(p.target.shape[p.axes.index(a)] for p in pairs) for a in inplane}
    return max(inplane, key=lambda a: (lengths[a], a))


def split(pairs: Sequence[Pair], fraction: float) -> tuple[int, int]:
    """``(h, cut)``: the held-out scan axis and the first held-out index along it; every
    pair's slices from ``cut`` on along h are held out, none trained on."""
    h = heldout_axis(pairs)
    length = min(p.target.shape[p.axes.index(h)] for p in pairs)
    cut = min(length - 1, max(1, int(math.floor(length * (1 - fraction)))))
    return h, cut


def heldout_psnr(params: model.Params, config: ModelConfig, pairs: Sequence[Pair], h: int,
                 cut: int, residual: bool | None = None) -> tuple[float, float]:
    """``(spline, network)`` PSNR (dB, peak 1: normalised intensities) over every pair's
    slices from ``cut`` on along scan axis ``h``. The network runs on those slices and
    its receptive radius before them, as it would on the whole volume."""
    spline, network, truth = [], [], []
    r = config.receptive_radius
    for pair in pairs:
        p = pair.axes.index(h)
        lo = max(0, cut - r)
        slab = np.take(pair.volume, range(lo, pair.volume.shape[p]), axis=p)
        out = run_network(params, config, slab, residual=residual,
                          algorithm=conv_algorithm(False))
        network.append(np.take(out, range(cut - lo, out.shape[p]), axis=p).ravel())
        spline.append(np.take(pair.volume[..., 0], range(cut, pair.volume.shape[p]),
                              axis=p).ravel())
        truth.append(np.take(pair.target, range(cut, pair.target.shape[p]), axis=p).ravel())
    truth_all = np.concatenate(truth)
    return (float(psnr(np.concatenate(spline), truth_all, peak=1.0)),
            float(psnr(np.concatenate(network), truth_all, peak=1.0)))


def patch_shape(pairs: Sequence[Pair], h: int, cut: int, edge: int) -> tuple[int, int, int]:
    """The patch shape: ``edge`` along each axis, or less where a pair's training part
    (before ``cut`` along scan axis h) is shorter."""
    shape = []
    for i in range(3):
        shape.append(min([edge] + [cut if pair.axes[i] == h else pair.volume.shape[i]
                                   for pair in pairs]))
    return tuple(shape)


#: Tries at drawing a patch of foreground (``draw_patches``) before one is taken as it is.
DRAW_TRIES = 20


def draw_patches(pairs: Sequence[Pair], h: int, cut: int, shape: Sequence[int], count: int,
                 rng: np.random.Generator, floor: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random patches of ``shape`` from the training part of the pairs (a pair
    drawn at random for each): inputs ``(N, *shape, 1)`` and labels ``(N, *shape, 1)``.
    A patch whose target's mean is below ``floor`` (targets are divided by the scan's
    maximum) is drawn again, up to ``DRAW_TRIES`` times: air teaches nothing."""
    inputs, labels = [], []
    for _ in range(count):
        for _ in range(DRAW_TRIES):
            pair = pairs[rng.integers(len(pairs))]
            corner = []
            for i, n in enumerate(shape):
                extent = cut if pair.axes[i] == h else pair.volume.shape[i]
                corner.append(int(rng.integers(extent - n + 1)))
            where = tuple(slice(c, c + n) for c, n in zip(corner, shape))
            if pair.target[where].mean() >= floor:
                break
        inputs.append(pair.volume[where])
        labels.append(pair.target[where][..., None])
    return np.stack(inputs), np.stack(labels)


def split_params(params: model.Params, layers: int) -> tuple[model.Params, model.Params]:
    """``(frozen, trained)``: the first layers, and the last ``layers`` (all of them when
    the model has fewer)."""
    names = sorted(params, key=lambda n: int(n[4:]))
    k = max(1, min(layers, len(names)))
    frozen = {n: params[n] for n in names[:-k]}
    trained = {n: jax.tree_util.tree_map(jnp.asarray, params[n]) for n in names[-k:]}
    return frozen, trained


@jax.jit
def _frozen_features(frozen: model.Params, x: jax.Array) -> jax.Array:
    """The frozen layers on ``(B, X, Y, Z, C)`` patches (SAME padding), ReLU after each."""
    return jax.nn.relu(model.forward(frozen, x, "SAME"))


def features(frozen: model.Params, inputs: np.ndarray, chunk: int = 8,
             deadline: float = math.inf) -> jax.Array:
    """The input of the first trained layer for each patch: the inputs themselves when
    nothing is frozen. ``(N, X, Y, Z, C_in)`` -> ``(M, X, Y, Z, F)``, M = N unless
    ``deadline`` (``time.perf_counter``) passed first: then the first chunks done (at
    least one)."""
    if not frozen:
        return jnp.asarray(inputs)
    done = []
    for i in range(0, len(inputs), chunk):
        if done and time.perf_counter() >= deadline:
            break
        done.append(_frozen_features(frozen, jnp.asarray(inputs[i:i + chunk]))
                    .block_until_ready())
    return jnp.concatenate(done)


def make_step(learning_rate: float, residual: bool, algorithm: str = "exact"
              ) -> tuple[optax.GradientTransformation, Callable]:
    """Adam, and its jit-compiled step ``(trained, opt_state, feats, base, label, index)
    -> (trained, opt_state, loss)``: the mean squared error of the trained layers (plus
    ``base``, the interpolated input, when ``residual``) on the pool items ``index``.
    ``algorithm`` of the convolutions (``conv.ALGORITHMS``), as the train step's."""
    optimizer = optax.adam(learning_rate)

    def loss(trained, feats, base, label):
        y = model.forward(trained, feats, "SAME", algorithm=algorithm, differentiable=True)
        if residual:
            y = y + base
        return jnp.mean(jnp.square(y - label))

    @jax.jit
    def step(trained, opt_state, feats, base, label, index):
        value, grads = jax.value_and_grad(loss)(trained, feats[index], base[index],
                                                label[index])
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state, value

    return optimizer, step


def check_adaptable(loaded: LoadedModel) -> None:
    """Fine-tuning here takes monomodal models of SAME padding (the ReCNN family)."""
    if loaded.config.in_channels != 1 or loaded.config.padding != "same":
        raise SrrecnnError("fine-tuning on the scan takes monomodal models with same "
                           "padding (one input channel, like thick-slice)", "model")


def adapt(loaded: LoadedModel, lr: np.ndarray, factors: Sequence[float],
          fwhm: float | None = None, settings: AdaptSettings | None = None,
          order: int = 3, interpolation: str = "device",
          residual: bool | None = None, stop: Callable[[], bool] | None = None
          ) -> AdaptResult:
    """Fine-tune ``loaded`` on the (x, y, z) scan ``lr`` that ``factors`` will zoom along
    its thick axis (``make_pairs``; ``fwhm`` of the slice profile in in-plane voxels,
    default the factor), within ``settings.seconds`` of wall time, compilation included:
    a step is not started when the last one's duration would take it past the budget
    less the time the final held-out evaluation needs. Returns the model to use (the
    adapted one only if it beat the start on the held-out slices by
    ``settings.keep_margin_db``) and the numbers. ``stop``, asked before each step,
    ends the fine-tuning early when it returns True (a batch run's Ctrl-C): the result
    is then that of the steps made, and not to be used for an output."""
    start = time.perf_counter()
    settings = settings or AdaptSettings()
    deadline = start + settings.seconds
    check_adaptable(loaded)
    config = loaded.config
    residual = config.residual if residual is None else residual
    pairs = make_pairs(config, lr, factors, loaded.trained_scales, fwhm, order, interpolation)
    fwhm = float(factors[thick_axis(factors)]) if fwhm is None else float(fwhm)
    h, cut = split(pairs, settings.heldout)
    before = time.perf_counter()
    spline_db, start_db = heldout_psnr(loaded.params, config, pairs, h, cut, residual)
    evaluation = time.perf_counter() - before

    def validate(trained: model.Params) -> float:
        full = {**loaded.params, **jax.tree_util.tree_map(np.asarray, trained)}
        return heldout_psnr(full, config, pairs, h, cut, residual)[1]

    best = BestCheck(start_db, split_params(loaded.params, settings.layers)[1], 0,
                     validate, max(settings.check_every, 4 * evaluation), evaluation)
    steps = _train(loaded.params, pairs, h, cut, settings, residual, deadline - evaluation,
                   best, stop or (lambda: False))
    params = {**loaded.params, **jax.tree_util.tree_map(np.asarray, best.trained)}
    kept = best.step > 0 and best.db >= start_db + settings.keep_margin_db
    numbers = {"spline": spline_db, "start": start_db, "adapted": best.db}
    seconds = time.perf_counter() - start
    origin = {"kind": "adapted", "start": fingerprint(loaded), "start_origin": loaded.origin,
              "steps": steps, "best_step": best.step, "layers": len(best.trained),
              "heldout_psnr": numbers, "kept": kept}
    adapted = dataclasses.replace(loaded, params=params, origin=origin)
    return AdaptResult(adapted if kept else loaded, adapted, kept, seconds, steps, numbers,
                       fwhm, best.step)


@dataclasses.dataclass
class BestCheck:
    """The best held-out check of a fine-tuning run so far: its PSNR ``db``, trained
    layers and step (the start: step 0); ``validate`` (trained layers -> held-out PSNR)
    runs every ``interval`` seconds of training and takes about ``cost`` seconds;
    ``checked``: the step last validated."""

    db: float
    trained: model.Params
    step: int
    validate: Callable[[model.Params], float]
    interval: float
    cost: float
    last: float = dataclasses.field(default_factory=time.perf_counter)
    checked: int = 0

    def check(self, trained: model.Params, step: int) -> None:
        """Validate ``trained`` (after ``step`` steps); keep it if it is the best."""
        db = self.validate(trained)
        self.last, self.checked = time.perf_counter(), step
        if db > self.db:
            self.db, self.trained, self.step = db, trained, step

    def due(self, deadline: float) -> bool:
        """Whether a check is due now and ends before ``deadline`` (which leaves time for
        the final check after it)."""
        now = time.perf_counter()
        return now - self.last >= self.interval and now + self.cost <= deadline


def _train(params: model.Params, pairs: Sequence[Pair], h: int, cut: int,
           settings: AdaptSettings, residual: bool, deadline: float, best: BestCheck,
           stop: Callable[[], bool]) -> int:
    """The fine-tuning loop: as many steps as fit before ``deadline``
    (``time.perf_counter``), less the final held-out check, which runs after them; the
    steps made. ``best`` holds the best checked weights. A non-finite loss ends it, and
    so does ``stop()`` returning True (then without a last check)."""
    frozen, trained = split_params(params, settings.layers)
    if settings.learning_rate == 0 or time.perf_counter() >= deadline or stop():
        return 0
    rng = np.random.default_rng(settings.seed)
    shape = patch_shape(pairs, h, cut, settings.patch)
    inputs, labels = draw_patches(pairs, h, cut, shape, settings.pool, rng,
                                  settings.foreground)
    before = time.perf_counter()
    feats = features(frozen, inputs, deadline=deadline)
    pool = len(feats)
    # Until a step has run, guess one as the pool's forward pass per batch, three times
    # (backward), compilation aside.
    estimate = 3 * (time.perf_counter() - before) * settings.batch / pool
    base, label = jnp.asarray(inputs[:pool, ..., :1]), jnp.asarray(labels[:pool])
    optimizer, step = make_step(settings.learning_rate, residual, settings.algorithm)
    opt_state = optimizer.init(trained)
    batch = min(settings.batch, pool)
    index = jnp.asarray(rng.choice(pool, batch, replace=False))
    step = _compile_before(step.lower(trained, opt_state, feats, base, label, index),
                           deadline)
    if step is None:
        return 0
    steps, best.last = 0, time.perf_counter()
    limit = settings.max_steps or math.inf
    while steps < limit and time.perf_counter() + estimate <= deadline:
        if stop():
            return steps
        began = time.perf_counter()
        updated, opt_state, value = step(trained, opt_state, feats, base, label, index)
        index = jnp.asarray(rng.choice(pool, batch, replace=False))
        if not np.isfinite(float(value)):
            break
        trained, steps = updated, steps + 1
        if settings.renew_every and steps % settings.renew_every == 0:
            renewal = steps // settings.renew_every - 1
            feats, base, label = _renew((feats, base, label), renewal, frozen,
                                        draw_patches(pairs, h, cut, shape, min(RENEW, pool), rng,
                                                     settings.foreground))
        estimate = time.perf_counter() - began
        if best.due(deadline):
            best.check(trained, steps)
    if steps > best.checked:
        best.check(trained, steps)
    return steps


def _renew(pool: tuple, renewal: int, frozen: model.Params, drawn: tuple) -> tuple:
    """The pool ``(feats, base, label)`` with its oldest patches, those of ``renewal``
    (0, 1, ...) taken in turn, replaced by the ``drawn`` ``(inputs, labels)``, their
    frozen features computed now."""
    feats, base, label = pool
    inputs, labels = drawn
    count = len(inputs)
    slots = jnp.asarray((renewal * count + np.arange(count)) % feats.shape[0])
    return (feats.at[slots].set(features(frozen, inputs)),
            base.at[slots].set(inputs[..., :1]), label.at[slots].set(labels))


def _compile_before(lowered, deadline: float):
    """``lowered.compile()``, or None when it is not done by ``deadline``
    (``time.perf_counter``): the compilation then goes on in a background thread, which
    cannot be stopped, and its result is dropped. Compiling the differentiated network
    can take longer than a small budget."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(lowered.compile)
    pool.shutdown(wait=False)
    try:
        return future.result(timeout=max(0.0, deadline - time.perf_counter()))
    except concurrent.futures.TimeoutError:
        return None
