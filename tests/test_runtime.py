"""What the ``srrecnn`` command sets up before JAX starts: XLA flags and a compilation cache."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write

from srrecnn_jax.cli import common

SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler"


def test_scheduler_flag_is_added_to_the_users_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path))
    common.configure_jax()
    assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=3 "
                                       f"{SCHEDULER}=false")


def test_a_users_own_scheduler_setting_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("XLA_FLAGS", f"{SCHEDULER}=true")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path))
    common.configure_jax()
    assert os.environ["XLA_FLAGS"] == f"{SCHEDULER}=true"


def test_cache_goes_under_xdg_cache_home_unless_one_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    common.configure_jax()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "srrecnn-jax" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    common.configure_jax()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/elsewhere"


def test_unwritable_cache_home_is_skipped(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    common.configure_jax()
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ


@pytest.mark.slow
def test_sr_fills_the_cache_a_second_run_reads(models, tmp_path):
    """A fresh process compiles into the cache; the next one finds it there."""
    source = write(np.random.default_rng(0).random((8, 7, 6)).astype(np.float32) + 1,
                   tmp_path / "lr.nii.gz")
    env = {k: v for k, v in os.environ.items()  # the test run's cache settings
           if not k.startswith("JAX_COMPILATION_CACHE_")}
    env |= {"XDG_CACHE_HOME": str(tmp_path / "cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    command = [sys.executable, "-m", "srrecnn_jax.cli", "sr", str(source), "-o",
               str(tmp_path / "sr.nii.gz"), "-m", str(models["mono"]), "-s", "2", "--force"]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    cache = tmp_path / "cache" / "srrecnn-jax" / "xla"
    entries = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit__slab_layer") for name in entries)
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing new compiled
