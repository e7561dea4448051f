"""``benchmarks/profile_train.py``: the sums it prints from a train step's trace."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_benchmarks import REPO

from benchmarks.profile_train import by_kind, concurrency

# (start us, duration us, thread, op): two threads, an op alone, two at once, a gap.
OPS = [(0.0, 10.0, 1, "concatenate.461"), (10.0, 5.0, 1, "ynn_fusion.105"),
       (10.0, 5.0, 2, "ynn_fusion.104"), (20.0, 4.0, 2, "concatenate.3")]


def test_op_kinds_sum_thread_time_without_the_op_numbers():
    assert by_kind(OPS) == {"concatenate": 14.0, "ynn_fusion": 10.0}


def test_concurrency_splits_the_span_by_ops_running_at_once():
    """0-10 one op, 10-15 two, 15-20 none, 20-24 one: the span is 24 us."""
    assert concurrency(OPS) == {0: 5.0, 1: 14.0, 2: 5.0}


@pytest.mark.slow
def test_a_tiny_networks_step_is_profiled():
    result = subprocess.run([sys.executable, "-m", "benchmarks.profile_train", "--layers", "3",
                             "--filters", "8", "--batch", "2", "--patch", "9"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ops running at once" in result.stdout and " ops, " in result.stdout
