"""Data-parallel training over two processes (jax.distributed, gloo on CPU, loopback).

Two processes with two CPU devices each split every global batch; the result
must match one process training on the same global batches. Not bitwise: the
gradient sum runs in another order, so parameters agree to 1e-5 (absolute,
for weights of order 0.1) after 10 Adam steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import package_file
from test_distributed import free_port, run_processes, stderr_of

from srrecnn_jax.checkpoint import load_model
from srrecnn_jax.cli import main
from srrecnn_jax.parallel import local_copy
from srrecnn_jax.train import loop as trainer
from srrecnn_jax.train.config import config_from
from srrecnn_jax.train.data import PatchSet

SETTINGS = {"layers": 2, "filters": 4, "batch": 8, "max_iter": 10, "log_every": 5,
            "checkpoint_every": 5}


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("patches")
    t1 = package_file("nibabel", "tests/data/anatomical.nii")
    assert main(["make-patches", "-f", str(t1), "-o", str(folder / "p.h5"), "--patch", "9",
                 "--stride", "4", "--border", "2,2,0", "--quiet"]) == 0
    return folder / "p.h5"


@pytest.mark.slow
def test_two_processes_train_as_one(patches, tmp_path):
    run = tmp_path / "two"
    port = free_port()
    sets = [arg for k, v in SETTINGS.items() for arg in ("--set", f"{k}={v}")]
    commands = [[sys.executable, "-m", "srrecnn_jax.cli", "train", str(patches), "--out-dir",
                 str(run), "--quiet", *sets, "--distributed", "--coordinator",
                 f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
                for i in range(2)]
    codes = run_processes(commands, tmp_path / "logs")
    assert codes == [0, 0], stderr_of(tmp_path / "logs", 2)

    single = tmp_path / "one"
    data = PatchSet([patches])
    trainer.train(config_from(SETTINGS), data, single)
    data.close()
    ours, reference = load_model(run / "model"), load_model(single / "model")
    for name, layer in reference.params.items():
        for leaf, value in layer.items():
            np.testing.assert_allclose(ours.params[name][leaf], value, rtol=0, atol=1e-5,
                                       err_msg=f"{name}.{leaf}")
    assert not np.array_equal(reference.params["conv1"]["kernel"],
                              local_copy(trainer.restore_state(single, 5)[0]
                                                 ["params"])["conv1"]["kernel"])
