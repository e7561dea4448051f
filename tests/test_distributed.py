"""Batch mode over two processes on one machine: ``jax.distributed`` on loopback, CPU (gloo).

Two ``srrecnn sr --out-dir ... --distributed`` processes share eight tiny
volumes; the sorted job list is split every other job. The first run finds its
peers as on a cluster, from Slurm's variables alone (no coordinator options);
the others name the coordinator. Their results must
equal a single-process run, and the manifest parts are merged at the end,
keeping the rows of earlier runs. When one process dies (SIGKILL) or fails at
once, the other finishes its share, ends promptly (not after JAX's 100 s
heartbeat timeout) with one error line naming the missing process, and a rerun
completes the batch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import jax
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write

from srrecnn_jax import config, model
from srrecnn_jax.checkpoint import LoadedModel, save_model

#: Every test here starts fresh interpreters.
pytestmark = pytest.mark.slow

TIMEOUT_S = 120
MANIFEST = "srrecnn_manifest.jsonl"
# Two of the eight in a sub-folder, so outputs mirror the input tree across processes.
NAMES = ["a0", "a1", "a2", "a3", "a4", "a5", "sub/b0", "sub/b1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sr_command(in_dir: Path, out_dir: Path, model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "srrecnn_jax.cli", "sr", str(in_dir), "--out-dir",
            str(out_dir), "-m", str(model_dir), "-s", "2", "--quiet"]


def run_processes(commands: list[list[str]], logs: Path, timeout: float = TIMEOUT_S,
                  watch: Callable[[list[subprocess.Popen]], None] | None = None,
                  ended: list[float] | None = None,
                  envs: list[dict[str, str]] | None = None) -> list[int]:
    """Start all commands at once, wait for all (killing all on a timeout); exit statuses.

    ``watch`` is called with the running processes once all have started (to kill one
    mid-run); ``ended`` receives the time (``time.time()``) at which each one exited;
    ``envs`` adds variables to each command's environment.
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu")  # XLA_FLAGS (2 devices each) from conftest
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for i, command in enumerate(commands):
        out, err = open(logs / f"{i}.out", "w"), open(logs / f"{i}.err", "w")  # noqa: SIM115
        files += [out, err]
        procs.append(subprocess.Popen(command, stdout=out, stderr=err,
                                      env=env | (envs[i] if envs else {})))
    deadline = time.monotonic() + timeout
    times: list[float | None] = [None] * len(procs)
    try:
        if watch is not None:
            watch(procs)
        while None in times:
            for i, proc in enumerate(procs):
                if times[i] is None and proc.poll() is not None:
                    times[i] = time.time()
            if time.monotonic() > deadline:
                for proc in procs:
                    proc.kill()
                for proc in procs:
                    proc.wait()
                pytest.fail(f"timed out after {timeout} s\n{stderr_of(logs, len(procs))}")
            time.sleep(0.05)
    finally:
        for f in files:
            f.close()
    if ended is not None:
        ended[:] = times
    return [proc.returncode for proc in procs]


def stderr_of(logs: Path, count: int) -> str:
    return "\n".join(f"--- process {i} stderr:\n{(logs / f'{i}.err').read_text()[-3000:]}"
                     for i in range(count))


def run_distributed(in_dir: Path, out_dir: Path, model_dir: Path | list[Path], logs: Path,
                    **kwargs) -> list[int]:
    """The 2-process batch (``model_dir``: one for both, or one per process) with the
    coordinator named on the command line; ``kwargs`` go to ``run_processes``."""
    port = free_port()
    models = model_dir if isinstance(model_dir, list) else [model_dir] * 2
    commands = [sr_command(in_dir, out_dir, models[i])
                + ["--distributed", "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", "2", "--process-id", str(i)] for i in range(2)]
    return run_processes(commands, logs, **kwargs)


#: Slurm puts a job's coordinator on a port of this range picked by its job id.
SLURM_PORTS = range(65536 - 2**12, 65536)


def slurm_job_id() -> int:
    """A Slurm job id whose coordinator port (JAX: ``id % 4096 + 61440``) is free now."""
    for port in SLURM_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port - SLURM_PORTS.start
    pytest.skip("no free port in Slurm's coordinator range")


def run_as_slurm_tasks(in_dir: Path, out_dir: Path, model_dir: Path, logs: Path) -> list[int]:
    """The 2-process batch as ``srun -n 2 srrecnn sr ... --distributed`` would start it on
    one node: only Slurm's variables say who is who, no coordinator options."""
    job = str(slurm_job_id())
    envs = [{"SLURM_JOB_ID": job, "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
             "SLURM_STEP_NUM_NODES": "1", "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}
            for i in range(2)]
    commands = [sr_command(in_dir, out_dir, model_dir) + ["--distributed"]] * 2
    return run_processes(commands, logs, envs=envs)


#: Two processes join as a batch does (no collectives), meet in ``parallel.detach`` and
#: print what they were handed, then leave.
DETACH = """
import sys
from srrecnn_jax import parallel
parallel.initialize(sys.argv[1], 2, int(sys.argv[2]), collectives=False)
print(*parallel.detach([7 + int(sys.argv[2]), 2**40]))
"""


def test_detach_hands_every_process_the_values_of_process_0_three_times_running(tmp_path):
    """Each round: both exit 0 having printed process 0's values (a hang fails the run:
    before detach met through the coordination service, about one 2-process start in
    six hung in gloo)."""
    for round_ in range(3):
        port, logs = free_port(), tmp_path / f"round{round_}"
        commands = [[sys.executable, "-c", DETACH, f"127.0.0.1:{port}", str(i)]
                    for i in range(2)]
        assert run_processes(commands, logs, timeout=60) == [0, 0], stderr_of(logs, 2)
        assert [(logs / f"{i}.out").read_text().split() for i in range(2)] == \
            [["7", str(2**40)]] * 2


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A tiny saved model and eight volumes of 6-10 voxels per axis."""
    root = tmp_path_factory.mktemp("distributed")
    cfg = config.tiny()
    save_model(root / "model", LoadedModel(model.init(jax.random.PRNGKey(0), cfg), cfg))
    rng = np.random.default_rng(0)
    (root / "in" / "sub").mkdir(parents=True)
    for name in NAMES:
        shape = tuple(int(n) for n in rng.integers(6, 11, size=3))
        write((rng.random(shape) * 100 + 1).astype(np.float32), root / "in" / f"{name}.nii.gz")
    return {"root": root, "in": root / "in", "model": root / "model"}


#: A manifest part an earlier 3-process run left in the output folder.
STALE = {"input": "a0.nii.gz", "output": "a0_SR.nii.gz", "status": "error",
         "error": "from an earlier run", "process": 2}


@pytest.fixture(scope="module")
def two_process_run(data) -> dict:
    """The 2-process batch started as Slurm tasks, into a folder holding a stale part:
    output folder, exit statuses, both stderrs, and the merged manifest and both parts
    as they were right after it (a later run appends to them)."""
    out, logs = data["root"] / "out2", data["root"] / "logs2"
    out.mkdir()
    (out / "srrecnn_manifest.part-00002-of-00003.jsonl").write_text(json.dumps(STALE) + "\n")
    codes = run_as_slurm_tasks(data["in"], out, data["model"], logs)
    assert codes == [0, 0], stderr_of(logs, 2)
    return {"out": out, "codes": codes, "stderr": stderr_of(logs, 2),
            "merged": read_jsonl(out / MANIFEST),
            "parts": [read_jsonl(out / f"srrecnn_manifest.part-{i:05d}-of-00002.jsonl")
                      for i in range(2)]}


@pytest.fixture(scope="module")
def second_run(data, two_process_run) -> list[dict]:
    """The same batch again into the same folder (coordinator named): its merged manifest."""
    logs = data["root"] / "logs2-again"
    codes = run_distributed(data["in"], two_process_run["out"], data["model"], logs)
    assert codes == [0, 0], stderr_of(logs, 2)
    return read_jsonl(two_process_run["out"] / MANIFEST)


@pytest.fixture(scope="module")
def one_process_out(data) -> Path:
    """The same batch in one process (no --distributed)."""
    out, logs = data["root"] / "out1", data["root"] / "logs1"
    codes = run_processes([sr_command(data["in"], out, data["model"])], logs)
    assert codes == [0], stderr_of(logs, 1)
    return out


def expected_split(in_dir: Path) -> dict[str, int]:
    """Input path -> the process that should take it: every other job of the sorted list."""
    inputs = sorted(str(in_dir / f"{name}.nii.gz") for name in NAMES)
    return {path: k % 2 for k, path in enumerate(inputs)}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_slurm_tasks_find_each_other_and_exit_zero(two_process_run):
    """Started with Slurm's variables only, the two processes join one run (no coordinator
    options), finish their shares and exit 0 with no error line."""
    assert two_process_run["codes"] == [0, 0]
    assert "srrecnn: error" not in two_process_run["stderr"]


def test_outputs_written_once_and_equal_single_process(data, two_process_run, one_process_out):
    """Every input has exactly one output, voxel for voxel the single-process result."""
    out = two_process_run["out"]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz"))
    assert written == sorted(f"{name}_SR.nii.gz" for name in NAMES)
    assert not list(out.glob(".tmp-*")), "staging folders left behind"
    for name in NAMES:
        got = sitk.ReadImage(str(out / f"{name}_SR.nii.gz"))
        want = sitk.ReadImage(str(one_process_out / f"{name}_SR.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want))
        assert got.GetSpacing() == want.GetSpacing() and got.GetOrigin() == want.GetOrigin()


def test_merged_manifest_one_ok_line_per_input(data, two_process_run):
    """Process 0's merged manifest: one "ok" line per input, from the process that owns it
    (and the stale part's row, kept as history)."""
    rows = [r for r in two_process_run["merged"] if r != STALE]
    assert sorted(r["input"] for r in rows) == sorted(expected_split(data["in"]))
    assert all(r["status"] == "ok" for r in rows), rows
    assert {r["input"]: r["process"] for r in rows} == expected_split(data["in"])
    assert sorted(r["process"] for r in rows) == [0] * 4 + [1] * 4


def test_rows_of_both_processes_name_one_run(two_process_run):
    """The processes of one run agree on its id: every row of the merged manifest has it."""
    assert len({r["run"] for r in two_process_run["merged"] if r != STALE}) == 1


def test_part_files_list_only_their_share(data, two_process_run):
    """Each process's manifest part lists exactly its own jobs."""
    split = expected_split(data["in"])
    for i, rows in enumerate(two_process_run["parts"]):
        assert sorted(r["input"] for r in rows) == sorted(p for p, k in split.items() if k == i)
        assert {r["process"] for r in rows} == {i}
        assert {r["status"] for r in rows} == {"ok"}


def this_runs_rows(rows: list[dict]) -> list[dict]:
    """The rows that carry a run id (the stale hand-written row has none)."""
    return [r for r in rows if r.get("run")]


def test_merged_manifest_keeps_the_rows_of_earlier_runs(two_process_run, second_run):
    """The second run's merge keeps every row of the first (shapes and seconds unchanged)
    and adds its own: one skipped row per input."""
    first, second = this_runs_rows(two_process_run["merged"]), this_runs_rows(second_run)
    assert len(first) == len(NAMES) and {r["status"] for r in first} == {"ok"}
    assert all(r["shape"] and r["seconds"] > 0 for r in first)
    assert all(row in second for row in first)
    added = [r for r in second if r not in first]
    assert sorted(r["status"] for r in added) == ["skipped"] * len(NAMES)
    assert not {r["run"] for r in added} & {r["run"] for r in first}


def test_merge_folds_in_a_part_of_another_process_count(two_process_run, second_run):
    """A part left by an earlier 3-process run is folded into the manifest as history:
    its row is kept, once, whatever the later runs did."""
    assert two_process_run["merged"].count(STALE) == 1
    assert second_run.count(STALE) == 1


# --- a process that dies -----------------------------------------------------------------

#: A survivor ends within this many seconds of its last job and of the other process's
#: end (JAX's coordination service takes 100 s to declare a process dead).
PROMPT_S = 30


def row_times(rows: list[dict]) -> list[float]:
    return [datetime.fromisoformat(r["time"]).timestamp() for r in rows]


def srrecnn_lines(stderr: str) -> list[str]:
    """The command's own stderr lines (JAX and gloo add theirs)."""
    return [line for line in stderr.splitlines() if line.startswith("srrecnn:")]


def share_of(data, process: int) -> list[str]:
    return sorted(path for path, k in expected_split(data["in"]).items() if k == process)


def output_of(data, out: Path, path: str) -> Path:
    return out / Path(path).relative_to(data["in"]).as_posix().replace(".nii.gz",
                                                                      "_SR.nii.gz")


@pytest.fixture(scope="module")
def killed(data) -> dict:
    """Process 0 is killed (SIGKILL) as soon as one of its outputs is in place; process 1
    goes on alone. What they left, then a one-process rerun of the same batch."""
    root = data["root"] / "killed"
    out = root / "out"
    mine = [output_of(data, out, path) for path in share_of(data, 0)]
    killed_at: list[float] = []

    def kill_process_0(procs: list[subprocess.Popen]) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(p.exists() for p in mine):
            if procs[0].poll() is not None or time.monotonic() > deadline:
                return  # it ended on its own: the exit statuses tell
            time.sleep(0.005)
        procs[0].send_signal(signal.SIGKILL)
        killed_at.append(time.time())

    ended: list[float] = []
    codes = run_distributed(data["in"], out, data["model"], root / "logs",
                            watch=kill_process_0, ended=ended)
    part = read_jsonl(out / "srrecnn_manifest.part-00001-of-00002.jsonl")
    merged = read_jsonl(out / MANIFEST)
    rerun = run_processes([sr_command(data["in"], out, data["model"])], root / "rerun")
    return {"out": out, "codes": codes, "ended": ended, "killed_at": killed_at,
            "stderr": (root / "logs" / "1.err").read_text(), "part": part, "merged": merged,
            "rerun": rerun, "rerun_stderr": stderr_of(root / "rerun", 1),
            "after": read_jsonl(out / MANIFEST)}


def test_survivor_of_a_killed_process_ends_promptly_naming_it(killed):
    """Process 1 outlives the SIGKILL of process 0 (JAX's coordination service used to
    terminate it), finishes, and ends soon after with exit status 1 and one error line
    naming process 0."""
    assert killed["killed_at"], "process 0 ended before it could be killed"
    assert killed["codes"] == [-signal.SIGKILL, 1], killed["stderr"]
    (line,) = srrecnn_lines(killed["stderr"])
    assert line.startswith("srrecnn: error:") and "process 0 of 2" in line, line
    last = max(row_times(killed["part"]) + killed["killed_at"])
    assert killed["ended"][1] - last < PROMPT_S


def test_survivor_of_a_killed_process_keeps_its_outputs_and_part(data, killed):
    """The survivor's share is all written and recorded: its manifest part lists each of
    its inputs once, ok, and so does the merged manifest; every output reads back."""
    share = share_of(data, 1)
    assert sorted(r["input"] for r in killed["part"]) == share
    assert {r["status"] for r in killed["part"]} == {"ok"}
    assert all(row in killed["merged"] for row in killed["part"])
    for path in share:
        assert sitk.ReadImage(str(output_of(data, killed["out"], path))).GetDimension() == 3


def test_rerun_after_a_killed_process_completes_the_batch(data, killed, one_process_out):
    """A one-process rerun keeps the survivor's outputs and makes the rest: every output
    then equals the single-process run's, and nothing the dead process left (staging
    folder, lock file) remains."""
    assert killed["rerun"] == [0], killed["rerun_stderr"]
    assert [p.name for p in killed["out"].iterdir() if p.name.startswith(".")] == []
    rows = [r for r in killed["after"] if r["run"] == killed["after"][-1]["run"]]
    assert sorted(r["input"] for r in rows) == sorted(expected_split(data["in"]))
    assert {r["status"] for r in rows if r["input"] in share_of(data, 1)} == {"skipped"}
    for name in NAMES:
        got = sitk.ReadImage(str(killed["out"] / f"{name}_SR.nii.gz"))
        want = sitk.ReadImage(str(one_process_out / f"{name}_SR.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want))


def test_survivor_of_a_process_that_fails_at_once_ends_promptly_naming_it(data):
    """Process 1 fails at once (its model folder does not exist) and exits 1 naming it;
    process 0 does its share, then ends soon after with exit status 1 and one error line
    naming process 1 (it used to wait at a barrier for JAX's timeout)."""
    root = data["root"] / "early"
    ended: list[float] = []
    codes = run_distributed(data["in"], root / "out", [data["model"], root / "no-model"],
                            root / "logs", ended=ended)
    stderr = [(root / "logs" / f"{i}.err").read_text() for i in range(2)]
    assert codes == [1, 1], stderr
    (failed,) = srrecnn_lines(stderr[1])
    assert failed.startswith("srrecnn: error:") and str(root / "no-model") in failed
    (line,) = srrecnn_lines(stderr[0])
    assert line.startswith("srrecnn: error:") and "process 1 of 2" in line, line
    part = read_jsonl(root / "out" / "srrecnn_manifest.part-00000-of-00002.jsonl")
    assert sorted(r["input"] for r in part) == share_of(data, 0)
    assert ended[0] - max(row_times(part) + [ended[1]]) < PROMPT_S


@pytest.mark.parametrize("process_id, missing", [(1, "the coordinator (process 0)"),
                                                 (0, "process(es) 1 to 1")])
def test_a_peer_that_never_starts_is_one_error_line_after_the_timeout(data, process_id,
                                                                      missing):
    """One process of two, the other never started: at once a note of what it waits for;
    after ``--distributed-timeout`` (2 s here) one ``srrecnn: error:`` line naming the
    process that never joined, exit status 1, no C++ stack trace (it used to wait 300 s
    and abort with SIGABRT), and no output."""
    root = data["root"] / f"lonely-{process_id}"
    command = sr_command(data["in"], root / "out", data["model"]) + [
        "--distributed", "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2",
        "--process-id", str(process_id), "--distributed-timeout", "2"]
    started = time.monotonic()
    (code,) = run_processes([command], root / "logs", timeout=60)
    took = time.monotonic() - started
    stderr = (root / "logs" / "0.err").read_text()
    assert code == 1, stderr
    assert f"process {process_id} waiting up to 2 s for all 2 processes" in stderr
    (line,) = srrecnn_lines(stderr)
    assert line.startswith("srrecnn: error: jax.distributed:") and missing in line, line
    assert "stack trace" not in stderr and "Traceback" not in stderr
    assert took < 40, took
    outputs = list((root / "out").rglob("*.nii*")) if (root / "out").exists() else []
    assert outputs == []
