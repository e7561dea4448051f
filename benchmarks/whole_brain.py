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

from srrecnn_jax import io
from srrecnn_jax.checkpoint import LoadedModel, load_model, save_model
from srrecnn_jax.degradation import degrade
from srrecnn_jax.demo import mni_t1

HERE = Path(__file__).resolve().parent
ORIGINAL = HERE.parents[1] / "shared" / "caffe" / "SRReCNN3D_10Layers_IsoScalex2.caffemodel"


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


def prepare(folder: Path, model: Path | None, crop: int | None = None
            ) -> tuple[Path, Path, Path]:
    """The degraded MNI T1 (or a centred crop of ``crop``^3 HR voxels), the model and its
    weights as .npz for PyTorch."""
    hr_image = mni_t1()
    if crop:
        start = [(n - crop) // 2 for n in hr_image.GetSize()]
        hr_image = hr_image[tuple(slice(a, a + crop) for a in start)]
    lr, _ = degrade(io.to_array(hr_image), (2, 2, 2))
    lr_path = folder / "lr.nii.gz"
    sitk.WriteImage(io.to_image(lr, [2.0] * 3, hr_image.GetOrigin(), hr_image.GetDirection()),
                    str(lr_path))
    if model is None and ORIGINAL.is_file():
        model = ORIGINAL
    if model is None:
        import jax

        from srrecnn_jax import model as network
        from srrecnn_jax.config import recnn

        config = recnn(layers=10, filters=64)
        params = network.init(jax.random.key(0), config)
        model = save_model(folder / "model", LoadedModel(params, config))
    loaded = load_model(model)
    weights = folder / "weights.npz"
    np.savez(weights, **{f"{name}_{leaf}": np.asarray(value)
                         for name, layer in loaded.params.items()
                         for leaf, value in layer.items()})
    return lr_path, model, weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model (default: original 10L-64 x2)")
    parser.add_argument("--repeats", type=int, default=2, help="turns of each (default 2)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="PyTorch threads (default: the CPUs this process may use)")
    parser.add_argument("--crop", type=int, help="a centred crop of N^3 HR voxels (a quick "
                        "check of the benchmark itself)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="whole-brain-") as tmp:
        folder = Path(tmp)
        lr_path, model, weights = prepare(folder, args.model, args.crop)
        ours_out, torch_out = folder / "ours.nii.gz", folder / "torch.nii.gz"
        commands = {
            "srrecnn": [sys.executable, "-m", "srrecnn_jax.cli", "sr", str(lr_path), "-o",
                        str(ours_out), "-m", str(model), "-s", "2", "--force"],
            "torch": [sys.executable, str(HERE / "torch_pipeline.py"), str(lr_path),
                      str(torch_out), str(weights), "2", str(args.threads)],
        }
        runs: dict[str, list[dict]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                if name == "srrecnn" and ours_out.exists():
                    ours_out.unlink()
                runs[name].append(timed_process(command))
                print(f"{name:8s} {runs[name][-1]['seconds']:7.1f} s "
                      f"{runs[name][-1]['peak_rss_gib']:5.2f} GiB", flush=True)
        ours = io.to_array(sitk.ReadImage(str(ours_out)), np.float64)
        theirs = io.to_array(sitk.ReadImage(str(torch_out)), np.float64)
    summary = {name: {"seconds": [r["seconds"] for r in rows],
                      "median_s": statistics.median(r["seconds"] for r in rows),
                      "peak_rss_gib": max(r["peak_rss_gib"] for r in rows)}
               for name, rows in runs.items()}
    result = {
        "command": " ".join(["python -m benchmarks.whole_brain", *(argv or sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": platform.machine(), "cpus": len(os.sched_getaffinity(0)),
        "model": str(model.name),
        "input": f"MNI 2009a T1{f' crop {args.crop}^3' if args.crop else ''} degraded x2",
        "timed": "fresh processes, launch to exit, in turns",
        "runs": summary,
        "time_ratio": summary["srrecnn"]["median_s"] / summary["torch"]["median_s"],
        "memory_ratio": summary["srrecnn"]["peak_rss_gib"] / summary["torch"]["peak_rss_gib"],
        "agreement_max_rel_diff": float(np.abs(ours - theirs).max() / np.ptp(theirs)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    print(json.dumps({k: result[k] for k in ("time_ratio", "memory_ratio",
                                             "agreement_max_rel_diff")}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
