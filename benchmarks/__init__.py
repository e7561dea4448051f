"""Benchmarks of srrecnn_jax: ``python -m benchmarks run --suite inference|train|interp|all``.

Run from the repository root. Modules, one job each:

- ``cases``: the case lists (GPU, CPU, smoke) and their selection.
- ``timing``: warm-up, then the median (min, max) of timed, synchronised runs.
- ``flops``: the FLOP convention and the rates derived from a timing.
- ``ceiling``: the square-matmul ceiling per precision, measured in the same run.
- ``memory``: peak device memory (or the host's peak RSS) and XLA's memory analysis.
- ``torch_ref``: the same network and train step in PyTorch (optional).
- ``bench_inference``, ``bench_train``, ``bench_interp``: one case of each suite.
- ``environment``: machine, versions and devices.
- ``report``: the table and the atomically written JSON.
- ``run``: the command line.

PyTorch is optional (never a runtime dependency of the package); without it,
or with ``--no-torch``, the PyTorch columns are null with the reason.
"""
