"""checkpoints/scripts/selfcheck_oracle.py: the self-check's sign agreement as shipped
(the acquisition guessed from the fall-off) and told the true acquisition."""

from __future__ import annotations

import pytest
from conftest import checkpoints_script

from srrecnn_jax.guardrails import FALLOFF_GAUSSIAN


@pytest.fixture(scope="module")
def oracle():
    return checkpoints_script("selfcheck_oracle")


def cell(psf: str, falloff: float, gain: float, gaussian: float, kspace: float) -> dict:
    return {"psf": psf, "falloff": falloff, "gain_db": gain, "check_gaussian": gaussian,
            "check_kspace": kspace}


def test_shipped_takes_the_guessed_acquisition_and_oracle_the_true_one(oracle):
    """A k-space input that looks Gaussian (fall-off under the threshold) where the model
    loses: the guess predicts a gain (wrong), the true acquisition a loss (right); a
    Gaussian input guessed right agrees under both."""
    low = FALLOFF_GAUSSIAN - 0.1
    rows = [cell("kspace", low, -1.5, +0.7, -0.3), cell("gaussian", low, +2.0, +1.0, -0.5)]
    assert oracle.agreement(rows) == {"shipped": "1/2", "oracle": "2/2"}
