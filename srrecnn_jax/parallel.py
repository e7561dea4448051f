"""Multi-device and multi-process runs: ``jax.distributed``, meshes, shardings (no engine of
our own)."""

from __future__ import annotations

import jax
import numpy as np


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


def detach(values) -> np.ndarray:
    """Leave the multi-process job: wait here for every process, hand each process 0's
    ``values`` (integers), then shut ``jax.distributed`` down, after which the processes
    go on independently on their local devices.

    For work that needs no collective after this point (batch super-resolution): while
    joined, the death of one process makes JAX's coordination service terminate all
    the others, losing their work in flight.
    """
    from jax.experimental import multihost_utils

    shared = np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(values, np.int64)))
    jax.distributed.shutdown()
    return shared


def data_mesh() -> jax.sharding.Mesh:
    """A one-axis ``data`` mesh of every device of every process. Its sharding is
    propagated by XLA (``Auto``), not typed into every operation (``Explicit``, JAX's
    default), which the Winograd layers' blocked, vmapped loops do not support."""
    devices = jax.devices()
    return jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def mesh_shardings(mesh: jax.sharding.Mesh) -> tuple[jax.sharding.Sharding,
                                                     jax.sharding.Sharding]:
    """``(replicated, split)``: whole arrays on every device, and arrays whose leading
    (batch) axis is split over the mesh's ``data`` axis."""
    return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))


def local_copy(tree):
    """A replicated (possibly multi-process) pytree as NumPy, from this process's copy."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), tree)
