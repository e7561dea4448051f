"""How ``adapt.adapt`` fine-tunes a model on one scan: its settings, checked when made.

Apart from ``adapt`` so that the command line can read the default budget without
loading JAX.
"""

from __future__ import annotations

import dataclasses

from srrecnn_jax.errors import SrrecnnError

#: The default budget of ``srrecnn sr --adapt``, in seconds.
DEFAULT_SECONDS = 600.0
#: Patches replaced in the pool at each renewal (``AdaptSettings.renew_every``).
RENEW = 8


@dataclasses.dataclass(frozen=True)
class AdaptSettings:
    """How ``adapt`` fine-tunes.

    Attributes:
      seconds: wall-clock budget of the whole adaptation (pairs, features, compilation,
        steps and both held-out evaluations).
      layers: how many last layers learn (all of them when the model has fewer).
      patch: patch edge in voxels (shorter along an axis the pairs are shorter on).
      pool: patches whose frozen features are computed once and drawn from (fewer when
        computing them reaches the budget).
      batch: patches per step.
      learning_rate: Adam's step size (0: nothing changes, the start is kept).
      heldout: fraction of the longer in-plane axis held out, at its far end.
      seed: of the patch positions and of the batches.
      algorithm: of the trained layers' convolutions (``conv.ALGORITHMS``): ``exact``
        (the train step's: fast gradients on CPU, slower to compile) or ``xla`` (compiles
        in about a second on CPU; slower steps for 64 filters).
      check_every: seconds of fine-tuning between held-out checks (at least four times
        one check's duration); the weights of the best check are the result. Without
        renewal a pool of patches is learnt by heart in time: the held-out gain
        (in-plane pairs, no truth needed) was 0.22 dB after 112 steps and 0.001 dB after
        885 on one scan.
      keep_margin_db: how far (dB) the adapted weights must beat the start on the
        held-out pairs to be kept. The held-out pairs are in-plane, the task
        through-plane: on the CE-T1's training slab at 1x1x4 a held-out gain of 0.06 dB
        (7 steps) came with a through-plane loss of 0.04 dB, gains of 0.2 dB and more
        with through-plane gains; Colin27 was not used to set it.
      renew_every: steps between renewals of the pool: every ``renew_every`` steps, its
        ``RENEW`` oldest patches are replaced by new random ones (their frozen features
        computed then), so that the pool is not learnt by heart; 0 (the default): one
        pool throughout. Every 8 steps costs about 15% of the steps. It raises the
        held-out (in-plane) gain on every scan tried, not the through-plane one: on real
        training slabs at 1x1x4, 300 s, through-plane PSNR over the start, one pool ->
        renewed every 8 steps: CE-T1 +0.51 -> +0.99 dB, stroke T2 +0.26 -> +0.26, 1.6 mm
        T1 head (inside its mask) +0.02 -> -0.03; on Colin27's crop (evaluation, 600 s)
        +0.48 -> +0.00, with the held-out gain +0.24 -> +0.32. The in-plane pairs hold
        the thick axis at its own coarse spacing, where the scan has a fine one: the
        longer the last layers learn them, the more they learn that geometry. Pairs on
        the output grid instead (the thick axis spline-zoomed first) made 3 times fewer
        steps for no more: +0.79 and +0.05 on the CE-T1 and the head.
      foreground: a patch whose target's mean is below this fraction of the scan's
        maximum is drawn again (``adapt.draw_patches``), so that the air around a head
        does not fill the pool; 0 (the default): patches from anywhere. On the real
        training slabs at 1x1x4, 300 s, through-plane gain of the adapted model over
        the start inside the head mask, 0 -> 0.1: 1.6 mm T1 head +0.05 -> +0.07 dB,
        stroke T2 +0.24 -> +0.19, CE-T1 +0.75 -> +0.00 (its held-out slab is mostly
        air, which a model fine-tuned on tissue alone restores less well, so nothing
        was kept).
      max_steps: the most steps made (0: as many as the budget allows); a run of fixed
        steps gives the same weights on any machine that finishes them in the budget.
    """

    seconds: float = DEFAULT_SECONDS
    layers: int = 3
    patch: int = 21
    pool: int = 48
    batch: int = 4
    learning_rate: float = 1e-4
    heldout: float = 0.2
    seed: int = 0
    algorithm: str = "exact"
    check_every: float = 60.0
    keep_margin_db: float = 0.1
    renew_every: int = 0
    max_steps: int = 0
    foreground: float = 0.0

    def __post_init__(self) -> None:
        least = {"renew_every": 0, "max_steps": 0, "layers": 1, "patch": 1, "pool": 1,
                 "batch": 1, "learning_rate": 0, "check_every": 0}
        for name, low in least.items():
            value = getattr(self, name)
            whole = name not in ("learning_rate", "check_every")
            if not ((isinstance(value, int) or not whole) and value >= low):  # NaN too
                raise SrrecnnError(f"AdaptSettings.{name} must be "
                                   f"{'a whole number, ' if whole else ''}{low} or more, "
                                   f"got {value!r}")
        if not self.seconds > 0:
            raise SrrecnnError(f"must be a budget above 0 seconds, got {self.seconds!r}",
                               "adapt")
        if not 0 <= self.foreground < 1:
            raise SrrecnnError(f"AdaptSettings.foreground must be between 0 and 1, "
                               f"got {self.foreground!r}")
        if not 0 < self.heldout < 1:
            raise SrrecnnError(f"AdaptSettings.heldout must be between 0 and 1, "
                               f"got {self.heldout!r}")
