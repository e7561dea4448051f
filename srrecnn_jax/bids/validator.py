"""The official BIDS validator (``bids-validator-deno``, on PyPI with its deno), run on a
dataset; its findings read from its JSON report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from srrecnn_jax.errors import SrrecnnError

EXECUTABLE = "bids-validator-deno"


def find() -> str | None:
    """The validator's executable: on PATH, else beside this Python (a virtualenv whose
    ``bin`` is not on PATH); None if it is not installed."""
    found = shutil.which(EXECUTABLE)
    if found:
        return found
    beside = Path(sys.executable).parent / EXECUTABLE
    return str(beside) if os.access(beside, os.X_OK) else None


def command(dataset: Path, dataset_type: str, executable: str = EXECUTABLE) -> list[str]:
    """The command that validates ``dataset`` as a ``raw`` or ``derivative`` dataset."""
    return [executable, str(dataset), "--datasetTypes", dataset_type, "--format", "json"]


def errors(dataset: Path, dataset_type: str, executable: str) -> list[str]:
    """The validator's errors on ``dataset`` (warnings left out), each as ``CODE: the file
    (detail)``, in its order; none if it accepts the dataset."""
    env = dict(os.environ, NO_COLOR="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    try:
        done = subprocess.run(command(dataset, dataset_type, executable), capture_output=True,
                              text=True, env=env, timeout=600, check=False)
        report = json.loads(done.stdout)
        issues = report["issues"]["issues"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as e:
        raise SrrecnnError(f"{dataset}: the BIDS validator ({executable}) did not run "
                           f"({type(e).__name__}: {e})") from None
    found = []
    for issue in issues:
        if issue.get("severity") != "error":
            continue
        detail = issue.get("subCode") or issue.get("issueMessage") or ""
        found.append(f"{issue.get('code')}: {issue.get('location') or dataset}"
                     + (f" ({str(detail).strip().splitlines()[0]})" if detail else ""))
    if not found and done.returncode != 0:
        found.append(f"exit status {done.returncode}")
    return found
