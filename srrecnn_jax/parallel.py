"""Multi-device and multi-process runs: ``jax.distributed``, meshes, shardings (no engine of
our own)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence

import jax
import numpy as np

from srrecnn_jax.errors import SrrecnnError


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


#: How long ``initialize`` waits for every process to join (seconds; JAX's own default).
JOIN_TIMEOUT_S = 300


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, collectives: bool = True,
               timeout_s: float = JOIN_TIMEOUT_S, log: Callable[[str], None] = _stderr,
               fail: Callable[[str], None] = _stderr) -> tuple[int, int]:
    """Join a multi-process JAX job; return ``(process_index, process_count)``.

    With no arguments, JAX detects the cluster (Slurm, Open MPI, ...). On CPU the
    collectives go through gloo, so CPU-only processes can join too. Without
    ``collectives`` (a batch, whose processes only meet once, through ``detach``), no
    gloo is set up: its connections between CPU clients can hang a process at start
    or at exit when a peer has gone (seen about once in ten 2-process runs, JAX 0.10).

    What it waits for goes to ``log`` at once. A job that has not formed within
    ``timeout_s`` ends this process: one line naming what was missing goes to ``fail``
    and the process exits with status 1 (JAX would abort it later with a C++ stack
    trace, and no Python error can be raised out of its waiting call).
    """
    if collectives and (jax.config.jax_platforms in (None, "", "cpu")
                        or "cpu" in str(jax.config.jax_platforms)):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    who = f"process {process_id}" if process_id is not None else "this process"
    where = f"the coordinator at {coordinator}" if coordinator else "the cluster's coordinator"
    count = f"all {num_processes} processes" if num_processes else "every process"
    log(f"jax.distributed: {who} waiting up to {timeout_s:g} s for {count} to join "
        f"{where}")
    missing = ("the coordinator (process 0) or another process" if process_id != 0
               else f"process(es) 1 to {num_processes - 1}" if num_processes
               else "another process")
    watchdog = threading.Timer(timeout_s, _give_up, [fail, f"jax.distributed: {who} gave up "
                               f"after {timeout_s:g} s: {missing} never joined {where}"])
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=int(timeout_s) + 60)
    finally:
        watchdog.cancel()
    return jax.process_index(), jax.process_count()


def _give_up(fail: Callable[[str], None], message: str) -> None:
    """End the process from the watchdog thread: JAX's join cannot be interrupted."""
    fail(message)
    os._exit(1)


#: How long ``detach`` waits for the other processes (as ``jax.distributed.initialize``).
DETACH_TIMEOUT_S = 300


def detach(values: Sequence[int]) -> np.ndarray:
    """Leave the multi-process job: wait here for every process, hand each process 0's
    ``values`` (integers), then shut ``jax.distributed`` down, after which the processes
    go on independently on their local devices.

    For work that needs no collective after this point (batch super-resolution): while
    joined, the death of one process makes JAX's coordination service terminate all
    the others, losing their work in flight. The values and the wait go through the
    coordination service's key-value store and barrier, not a device collective, so no
    device (nor gloo) takes part. JAX has no public handle on that store; orbax's
    multi-host code uses the same client.
    """
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("detach: jax.distributed is not initialized")
    timeout_ms = DETACH_TIMEOUT_S * 1000
    key = "srrecnn/detach/values"
    if jax.process_index() == 0:
        client.key_value_set(key, ",".join(str(int(v)) for v in values))
    try:
        client.wait_at_barrier("srrecnn/detach", timeout_ms)
        shared = np.array([int(v) for v in client.blocking_key_value_get(key, timeout_ms)
                           .split(",")], np.int64)
    except jax.errors.JaxRuntimeError as e:
        raise SrrecnnError(f"jax.distributed: not all {jax.process_count()} processes "
                           f"met within {DETACH_TIMEOUT_S} s ({str(e).splitlines()[0]})"
                           ) from None
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
