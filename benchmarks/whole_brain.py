"""A whole brain x2, end to end: ``srrecnn sr`` against a plain PyTorch script, in turns.

    python -m benchmarks.whole_brain [--model M] [--repeats 2] [--json OUT]

The input is nilearn's 1 mm MNI ICBM152 2009a T1 degraded x2 by the original
observation model (98 x 116 x 94 voxels of 2 mm; output 196 x 232 x 188). Each
turn launches ``srrecnn sr LR -o OUT -m MODEL -s 2`` and then
``benchmarks/torch_pipeline.py`` (scipy zoom + ``torch.nn.functional.conv3d``,
the same weights) as fresh processes, and records each one's wall time from
launch to exit and its peak RSS (``wait4``). Turns alternate so that a drift of
the machine's speed hits both. The outputs' agreement is recorded too.

The default model is the original 10L-64 x2 weights (``../shared/caffe``) when
present, else a He-initialised 10L-64 network (the same cost).

Start-up is measured too: ``srrecnn sr`` on a 32^3 crop, launched twice with an
empty persistent compilation cache of its own, gives the cold and the warm
(cache filled) time from launch to a written output.

``--smoke`` checks the benchmark itself in seconds: a 16^3 crop, one turn, a
3-layer network, PyTorch skipped when it is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from srrecnn_jax import sources
from srrecnn_jax.checkpoint import LoadedModel, load_model, save_model
from srrecnn_jax.degradation import degrade
from srrecnn_jax.demo import mni_t1
from srrecnn_jax.images import to_array, to_image

HERE = Path(__file__).resolve().parent
ORIGINAL = sources.release_weights(1)


def timed_process(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``command``; its wall seconds, peak RSS (GiB) and exit status."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env)
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited {process.returncode}: {err[-2000:]!r}")
    return {"seconds": seconds, "peak_rss_gib": usage.ru_maxrss / 2**20}


def degraded_mni(path: Path, crop: int | None = None) -> Path:
    """The MNI T1 (or a centred crop of ``crop``^3 HR voxels) degraded x2, written to
    ``path``."""
    hr_image = mni_t1()
    if crop:
        start = [(n - crop) // 2 for n in hr_image.GetSize()]
        hr_image = hr_image[tuple(slice(a, a + crop) for a in start)]
    lr, _ = degrade(to_array(hr_image), (2, 2, 2))
    sitk.WriteImage(to_image(lr, [2.0] * 3, hr_image.GetOrigin(), hr_image.GetDirection()),
                    str(path))
    return path


def prepare(folder: Path, model: Path | None, crop: int | None = None, layers: int = 10
            ) -> tuple[Path, Path, Path]:
    """The degraded MNI T1 (see ``degraded_mni``), the model and its weights as .npz for
    PyTorch. Without ``model``: the original weights when present, else a He-initialised
    ``layers``-layer, 64-filter network."""
    lr_path = degraded_mni(folder / "lr.nii.gz", crop)
    if model is None and ORIGINAL.is_file() and layers == 10:
        model = ORIGINAL
    if model is None:
        import jax

        from srrecnn_jax import model as network
        from srrecnn_jax.config import recnn

        config = recnn(layers=layers, filters=64)
        params = network.init(jax.random.key(0), config)
        model = save_model(folder / "model", LoadedModel(params, config))
    loaded = load_model(model)
    weights = folder / "weights.npz"
    np.savez(weights, **{f"{name}_{leaf}": np.asarray(value)
                         for name, layer in loaded.params.items()
                         for leaf, value in layer.items()})
    return lr_path, model, weights


def startup(folder: Path, model: Path) -> dict[str, float]:
    """Launch-to-output seconds of ``srrecnn sr`` on a 32^3 crop, cold (an empty
    compilation cache of its own) and then warm (the same cache, now filled)."""
    lr_path = degraded_mni(folder / "startup_lr.nii.gz", 32)
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(folder / "xla-cache"))
    command = [sys.executable, "-m", "srrecnn_jax.cli", "sr", str(lr_path), "-o",
               str(folder / "startup_sr.nii.gz"), "-m", str(model), "-s", "2", "--force"]
    return {turn: timed_process(command, env)["seconds"] for turn in ("cold_s", "warm_s")}


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model (default: original 10L-64 x2)")
    parser.add_argument("--repeats", type=int, default=2, help="turns of each (default 2)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="PyTorch threads (default: the CPUs this process may use)")
    parser.add_argument("--crop", type=int, help="a centred crop of N^3 HR voxels (a quick "
                        "check of the benchmark itself)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--smoke", action="store_true", help="a 16^3 crop, one turn, a "
                        "3-layer network; PyTorch skipped if absent (checks the benchmark)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.crop, args.repeats = args.crop or 16, 1

    with tempfile.TemporaryDirectory(prefix="whole-brain-") as tmp:
        folder = Path(tmp)
        lr_path, model, weights = prepare(folder, args.model, args.crop,
                                          layers=3 if args.smoke else 10)
        ours_out, torch_out = folder / "ours.nii.gz", folder / "torch.nii.gz"
        commands = {
            "srrecnn": [sys.executable, "-m", "srrecnn_jax.cli", "sr", str(lr_path), "-o",
                        str(ours_out), "-m", str(model), "-s", "2", "--force"],
            "torch": [sys.executable, str(HERE / "torch_pipeline.py"), str(lr_path),
                      str(torch_out), str(weights), "2", str(args.threads)],
        }
        if args.smoke and not torch_available():
            del commands["torch"]
        runs: dict[str, list[dict]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                if name == "srrecnn" and ours_out.exists():
                    ours_out.unlink()
                runs[name].append(timed_process(command))
                print(f"{name:8s} {runs[name][-1]['seconds']:7.1f} s "
                      f"{runs[name][-1]['peak_rss_gib']:5.2f} GiB", flush=True)
        ours = to_array(sitk.ReadImage(str(ours_out)), np.float64)
        theirs = (to_array(sitk.ReadImage(str(torch_out)), np.float64)
                  if "torch" in commands else None)
        started = startup(folder, model)
        print(f"start-up (32^3 crop, launch to output): cold {started['cold_s']:.1f} s, "
              f"warm {started['warm_s']:.1f} s", flush=True)
    summary = {name: {"seconds": [r["seconds"] for r in rows],
                      "median_s": statistics.median(r["seconds"] for r in rows),
                      "peak_rss_gib": max(r["peak_rss_gib"] for r in rows)}
               for name, rows in runs.items()}
    compared = theirs is not None
    result = {
        "command": " ".join(["python -m benchmarks.whole_brain", *(argv or sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": platform.machine(), "cpus": len(os.sched_getaffinity(0)),
        "model": str(model.name),
        "input": f"MNI 2009a T1{f' crop {args.crop}^3' if args.crop else ''} degraded x2",
        "timed": "fresh processes, launch to exit, in turns",
        "runs": summary,
        "time_ratio": (summary["srrecnn"]["median_s"] / summary["torch"]["median_s"]
                       if compared else None),
        "memory_ratio": (summary["srrecnn"]["peak_rss_gib"] / summary["torch"]["peak_rss_gib"]
                         if compared else None),
        "agreement_max_rel_diff": (float(np.abs(ours - theirs).max() / np.ptp(theirs))
                                   if compared else None),
        "startup_32cube_launch_to_output": started,
        "output_shape": list(ours.shape),
        "output_finite": bool(np.isfinite(ours).all()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    print(json.dumps({k: result[k] for k in ("time_ratio", "memory_ratio",
                                             "agreement_max_rel_diff")}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
