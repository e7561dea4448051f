"""Choosing, for one scan, the shipped model the self-check predicts does best on it.

A user who asks for a model may hand it a scan it was not trained for (noisier, sharper,
another scale). ``choose`` keeps the asked-for model when its self-check
(``guardrails.self_check_gain_db``) predicts a gain over cubic spline at a scale it was
trained for; otherwise it runs the same self-check, on the same re-acquisition of the
scan, for every shipped monomodal model trained for the scale, and takes the one with
the largest predicted gain (the asked-for model on a tie or when no other does better).
Each self-check runs a model on a crop of at most 96^3 voxels: seconds to a minute on a
2-core CPU per model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from srrecnn_jax import catalog
from srrecnn_jax.checkpoint import LoadedModel, fingerprint, load_model, read_meta
from srrecnn_jax.guardrails import falloff, likely_psf, noise_percent, self_check_gain_db
from srrecnn_jax.scales import untrained_scale


@dataclasses.dataclass(frozen=True)
class Choice:
    """What ``choose`` found.

    Attributes:
      model: the model to run (the asked-for one, or the shipped ``name``).
      name: the shipped name of the model taken, or None for the asked-for one.
      why: why the asked-for model was not enough (None when it was kept unchecked).
      gains: predicted gain over spline (dB) per model checked, the asked-for one as
        ``"asked"``.
      checks: the input's ``noise_percent``, ``falloff`` and ``self_check_psf``.
    """

    model: LoadedModel
    name: str | None
    why: str | None
    gains: dict[str, float]
    checks: dict

    def facts(self) -> dict:
        """The JSON summary: the model taken, why, and every predicted gain."""
        return {"chosen": self.name or "asked", "why": self.why,
                "gains_db": {k: round(v, 3) for k, v in self.gains.items()}}


def candidates(scale: Sequence[float], root: Path | None = None) -> list[catalog.Shipped]:
    """The shipped monomodal models trained for ``scale`` (x, y, z); ``root``: the shelf
    (default ``catalog.CHECKPOINTS``)."""
    found = []
    for shipped in catalog.shipped(root or catalog.CHECKPOINTS):
        _, config = read_meta(shipped.path / "config.json")
        if config.in_channels == 1 and not untrained_scale(list(shipped.trained_scales),
                                                           scale):
            found.append(shipped)
    return found


def choose(asked: LoadedModel, lr: np.ndarray, scale: Sequence[float],
           precision: str = "fp32", root: Path | None = None,
           log: Callable[[str], None] | None = None, *, acquisition: str = "none",
           consistency: float | None = None) -> Choice:
    """The model to run on the (x, y, z) scan ``lr`` at ``scale``: ``asked`` unless it
    is predicted to lose to spline or was not trained for ``scale``, then the shipped
    model of the best predicted gain (see the module's docstring). ``log`` hears each
    model's predicted gain as it is computed; ``acquisition`` and ``consistency``: the
    run's data-consistency projection, which every self-check makes too."""
    if asked.config.in_channels != 1:
        raise ValueError("choosing a model by the self-check needs a monomodal model")
    volume = np.asarray(lr, np.float32)
    noise = noise_percent(volume)
    psf = likely_psf(volume)
    checks = {"noise_percent": round(noise, 3), "falloff": round(falloff(volume), 4),
              "self_check_psf": psf}

    def gain(model: LoadedModel) -> float:
        # As ``guardrails.check_scan`` computes it (noise estimated on the self-check's
        # crop), so that ``--auto-model`` and ``--check`` give one number for a model.
        return self_check_gain_db(model.params, model.config, volume, scale, None,
                                  precision, psf, acquisition, consistency)

    gains = {"asked": gain(asked)}
    if log:
        log(f"self-check of the asked-for model: {gains['asked']:+.2f} dB over spline")
    untrained = untrained_scale(asked.trained_scales, scale)
    if gains["asked"] >= 0 and not untrained:
        return Choice(asked, None, None, gains, checks)
    why = (f"not trained for scale {tuple(scale)}" if untrained else
           f"predicted {-gains['asked']:.2f} dB behind cubic spline")
    best, best_model, asked_print = None, asked, fingerprint(asked)
    for shipped in candidates(scale, root):
        loaded = load_model(shipped.path)
        if fingerprint(loaded) == asked_print:  # the asked-for model, by name
            continue
        gains[shipped.name] = gain(loaded)
        if log:
            log(f"self-check of {shipped.name}: {gains[shipped.name]:+.2f} dB over spline")
        if gains[shipped.name] > gains.get(best or "asked"):
            best, best_model = shipped.name, loaded
    return Choice(best_model, best, why, gains, checks)

