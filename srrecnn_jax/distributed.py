"""Multi-process runs through ``jax.distributed`` (no engine of our own)."""

from __future__ import annotations

import jax


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> tuple[int, int]:
    """Join a multi-process JAX job; return ``(process_index, process_count)``.

    With no arguments, JAX detects the cluster (Slurm, Open MPI, ...). On CPU
    the collectives go through gloo, so CPU-only processes can join too.
    """
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return jax.process_index(), jax.process_count()


def barrier(name: str) -> None:
    """Wait until every process reaches ``name``."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
