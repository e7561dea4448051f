"""Where a train step's time goes on CPU: XLA's profiler on one step, summed.

    python -m benchmarks.profile_train [--layers 10 --filters 64 --batch 16 --patch 21]

Compiles ``srrecnn_jax.train.step`` for the case (the benchmark's batch and weights),
runs two steps, traces the third and prints:

- each op kind's thread time (the HLO op names without their numbers: ``ynn_fusion``
  is a matrix product, ``concatenate`` a copy, ...), largest first;
- how much of the step 0, 1, 2 ... ops were running at once: on a 2-core machine the
  time with one op running is time one core had nothing to do, unless that op
  splits its work over threads itself;
- how many ops ran.

Time nothing else while it runs; only shares and counts compare across machines.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import jax
import numpy as np


def op_events(trace_dir: Path) -> list[tuple[float, float, int, str]]:
    """``(start us, duration us, thread, HLO op)`` of every op a trace folder holds."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"{trace_dir}: no trace written")
    events = json.loads(gzip.open(files[-1]).read())["traceEvents"]
    return sorted((e["ts"], e["dur"], e["tid"], e["args"]["hlo_op"]) for e in events
                  if e.get("ph") == "X" and "hlo_op" in e.get("args", {}))


def by_kind(ops: list[tuple[float, float, int, str]]) -> collections.Counter:
    """Thread time (us) per op kind: the op's name without its ``.N`` number."""
    total: collections.Counter = collections.Counter()
    for _, duration, _, name in ops:
        total[re.sub(r"\.\d+$", "", name)] += duration
    return total


def concurrency(ops: list[tuple[float, float, int, str]]) -> dict[int, float]:
    """Wall time (us) from the first op's start to the last op's end during which n ops
    were running, for each n."""
    edges = sorted([(start, 1) for start, _, _, _ in ops]
                   + [(start + duration, -1) for start, duration, _, _ in ops])
    spans: collections.Counter = collections.Counter()
    running, last = 0, edges[0][0]
    for at, change in edges:
        spans[running] += at - last
        running, last = running + change, at
    return dict(sorted(spans.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=21)
    parser.add_argument("--top", type=int, default=15, help="op kinds to list")
    args = parser.parse_args()

    from benchmarks.bench_train import batch_arrays
    from benchmarks.cases import train
    from benchmarks.weights import initial_params
    from srrecnn_jax.train.config import config_from
    from srrecnn_jax.train.step import compile_step, init_state

    case = train(args.layers, args.filters, args.batch, args.patch)
    config = config_from({"layers": args.layers, "filters": args.filters,
                          "batch": args.batch, "patch": args.patch})
    data, label = batch_arrays(case)
    batch = {"data": jax.device_put(data), "label": jax.device_put(label)}
    state = init_state(jax.random.key(0), config,
                       params=initial_params(args.layers, args.filters))
    step = compile_step(config).lower(state, batch).compile()
    for _ in range(2):
        state, metrics = step(state, batch)
        metrics["loss"].block_until_ready()
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            metrics["loss"].block_until_ready()
            seconds = time.perf_counter() - start
        ops = op_events(Path(folder))
    kinds, spans = by_kind(ops), concurrency(ops)
    busy = sum(kinds.values())
    print(f"{case.name}: step {seconds:.2f} s (traced), {len(ops)} ops, "
          f"{busy / 1e6:.2f} s of thread time in ops")
    for kind, micros in kinds.most_common(args.top):
        print(f"  {micros / 1e6:7.2f} s  {100 * micros / busy:5.1f}%  {kind}")
    wall = sum(spans.values())
    print("ops running at once, share of the step's span:")
    for count, micros in spans.items():
        print(f"  {count}: {micros / 1e6:6.2f} s  {100 * micros / wall:5.1f}%")
    print(f"mean op {np.mean([d for _, d, _, _ in ops]):.0f} us")


if __name__ == "__main__":
    main()
