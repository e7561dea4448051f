"""Batch super-resolution: many inputs, pipelined, resumable, over devices and hosts.

Work flows through three stages joined by bounded queues, so host memory stays flat
however many volumes there are (``pipeline``): reader threads (read, check, normalise,
zoom, resample the reference), a thread per local device (the network, in shape buckets
or tiles) and a writer thread (de-normalise, clamp, write atomically, log to the
manifest). A rerun keeps the outputs that are still what this run would make
(``resume``).

Across hosts, ``jax.distributed`` (or ``--shard I/N``) gives each process its
index; the job list is sorted and process i takes every n-th job (``driver.run``).
Each process appends to its own manifest part, and folds the parts that exist into the
manifest when it ends. How the processes of one batch share the output folder, start
together and see each other end: ``processes``.
"""

from srrecnn_jax.batch.driver import run
from srrecnn_jax.batch.options import Options
from srrecnn_jax.batch.pipeline import Summary, run_batch
from srrecnn_jax.batch.processes import LOCK, PRESENCE, Presence, folder_lock, merge, start_together

__all__ = ["LOCK", "PRESENCE", "Options", "Presence", "Summary", "folder_lock", "merge", "run",
           "run_batch", "start_together"]
