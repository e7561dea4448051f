"""``srrecnn convert``, ``info``, ``models``, ``export-caffe``, ``degrade``, ``eval`` and
``demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from srrecnn_jax.cli import common


def add_to(commands) -> None:
    _add_convert(commands)
    _add_degrade(commands)
    _add_eval(commands)
    _add_export_caffe(commands)
    _add_demo(commands)
    _add_info(commands)
    _add_models(commands)


def _add_convert(commands) -> None:
    p = commands.add_parser("convert", help="convert a Caffe .caffemodel to a model folder",
                            description="Convert original Caffe weights (no Caffe needed) to "
                            "an orbax checkpoint folder with a readable config.json.")
    p.add_argument("caffemodel", type=Path, help="binary .caffemodel file")
    p.add_argument("-o", "--output", type=Path, required=True, help="model folder to write")
    p.add_argument("--prototxt", type=Path, help="deploy .prototxt to check the weights against")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(run=run_convert)


def _add_degrade(commands) -> None:
    p = commands.add_parser("degrade", help="simulate a low-resolution scan (observation model)",
                            description="The original training data's observation model: "
                            "Gaussian blur (sigma in voxels), crop each axis to a multiple of "
                            "the scale, cubic-spline downsampling. Headers stay physically "
                            "consistent: the LR (and interpolated) images lie where the cropped "
                            "HR image does.")
    p.add_argument("hr", type=Path, help="high-resolution image")
    p.add_argument("-o", "--output", type=Path, required=True, help="low-resolution image")
    p.add_argument("-s", "--scale", type=common.scale, required=True,
                   help="downsampling factor: one number or x,y,z")
    p.add_argument("--sigma", type=float, default=1.0,
                   help="Gaussian blur sigma in HR voxels (default 1, as the original)")
    p.add_argument("--order", type=common.order, default=3, help="spline order (default 3)")
    p.add_argument("--interpolated", type=Path,
                   help="also write the LR image zoomed back onto the cropped HR grid")
    p.add_argument("--cropped-hr", type=Path,
                   help="also write the HR image cropped to a multiple of the scale")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(run=run_degrade)


def _add_eval(commands) -> None:
    p = commands.add_parser("eval", help="PSNR and SSIM of a result against the truth",
                            description="PSNR (peak = HR maximum) and 3-D SSIM (Gaussian "
                            "window, sigma 1.5) of SR against HR, optionally in a mask and "
                            "away from the borders, and of the cubic-spline baseline.")
    p.add_argument("sr", type=Path, help="super-resolved (or any estimated) image")
    p.add_argument("hr", type=Path, help="ground-truth image on the same grid (a larger HR "
                   "image is cropped to SR's extent when they share the first voxel)")
    p.add_argument("--mask", type=Path, help="image whose non-zero voxels are evaluated")
    p.add_argument("--shave", type=int, default=0, help="ignore N voxels at each border")
    p.add_argument("--lr", type=Path, help="low-resolution input: also score its cubic-spline "
                   "zoom onto the SR grid (the baseline)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_eval)


def _add_export_caffe(commands) -> None:
    p = commands.add_parser("export-caffe", help="write a model as a Caffe .caffemodel",
                            description="Write a model folder (or caffemodel) as a binary "
                            "Caffe .caffemodel with conv1..convN and ReLU layers; "
                            "`srrecnn convert` reads it back to identical parameters.")
    p.add_argument("model", type=common.model, help="model folder, training run folder, "
                   ".caffemodel or shipped model's name")
    p.add_argument("-o", "--output", type=Path, required=True, help=".caffemodel to write")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(run=run_export_caffe)


def _add_demo(commands) -> None:
    p = commands.add_parser("demo", help="super-resolve a brain no shipped model saw, "
                            "degraded x2",
                            description="Degrade a 1 mm brain no shipped model was trained on "
                            "by 2 (observation model): Colin27 when Debian's mricron-data is "
                            "installed, else the slab of nilearn's MNI T1 held out of every "
                            "shipped model's training. Super-resolve it with the default "
                            "shipped model (or --model), print spline vs SR PSNR (and the "
                            "original release's x2 weights' when ../shared/caffe is beside the "
                            "source tree) and which data was scored, and write the volumes and "
                            "a montage.png (three planes: spline, SR, HR, error).")
    common.add_renamed(p, "--out", "--out-dir", type=Path, default=Path("srrecnn_demo"),
                       help="folder to fill with the volumes and montage (default "
                       "./srrecnn_demo)")
    p.add_argument("-m", "--model", type=common.model, help="model (a path or a shipped "
                   "model's name) instead of the default shipped model")
    p.add_argument("--crop", type=common.positive_int,
                   help="only a centred crop of N^3 HR voxels")
    p.add_argument("--tile", type=common.positive_int, help="tile edge (see sr --tile)")
    p.set_defaults(run=run_demo)


def _add_info(commands) -> None:
    p = commands.add_parser("info", help="describe a model",
                            description="Print a model's architecture, parameter count, "
                            "receptive field and origin.")
    p.add_argument("model", type=common.model, help="model folder, training run folder, "
                   ".caffemodel or shipped model's name")
    p.add_argument("--prototxt", type=Path, help="deploy .prototxt to check a .caffemodel against")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_info)


def _add_models(commands) -> None:
    p = commands.add_parser("models", help="list the shipped models",
                            description="The models shipped in the source tree's checkpoints/ "
                            "folder, by the name -m takes: task, trained scales, training "
                            "data, and PSNR on Colin27 (a real brain none trained on; central "
                            "crop, checkpoints/scores/colin27_crop.json) beside cubic spline's, "
                            "and the gain over cubic spline at x2 under each acquisition (the "
                            "release's Gaussian blur, a scanner's k-space box; noise 0-3%) on "
                            "Colin27 and real scans (checkpoints/scores/real_acquisitions.json). "
                            "`default` names " + _default_name() + ".")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_models)


def _default_name() -> str:
    from srrecnn_jax.catalog import DEFAULT

    return DEFAULT


def run_models(args: argparse.Namespace) -> int:
    from srrecnn_jax.catalog import DEFAULT, shipped
    from srrecnn_jax.scales import format_scales

    models = shipped()
    if args.json:
        print(json.dumps([{"name": m.name, "default": m.name == DEFAULT, "path": str(m.path),
                           "task": m.task, "trained_scales": list(m.trained_scales),
                           "trained_spacing": m.trained_spacing, "data": m.data,
                           "scored_on": m.scored_on,
                           "psnr": {c: {"model": v, "spline": s}
                                    for c, (v, s) in m.psnr.items()},
                           "gain_over_spline_x2": {c: {"mean": a, "least": b}
                                                   for c, (a, b) in m.acquisitions.items()}}
                          for m in models], indent=2))
        return 0
    if not models:
        print("no shipped models (checkpoints/ is not beside the package)", file=sys.stderr)
        return 0
    for m in models:
        scales = format_scales(list(m.trained_scales)) or "not recorded"
        scores = "; ".join(f"{c} {v:.2f} (spline {s:.2f})" for c, (v, s) in m.psnr.items())
        print(f"{m.name}{' (default)' if m.name == DEFAULT else ''}\n"
              f"  task:    {m.task}\n  scales:  {scales}\n"
              f"  voxels:  {_spacing_text(m.trained_spacing)}\n  data:    {m.data}\n"
              f"  {m.scored_on} PSNR, dB: {scores or 'not evaluated'}")
        if m.acquisitions:
            gains = "; ".join(f"{c} {a:+.2f} ({b:+.2f})" for c, (a, b) in m.acquisitions.items())
            print(f"  x2 over spline by acquisition, dB, mean (least) of Colin27 and the real "
                  f"held-out scans: {gains}")
    return 0


def _spacing_text(spacing: float | None) -> str:
    """A model's trained HR voxel size for people."""
    return f"{spacing:g} mm (output voxel size it learned)" if spacing else "not recorded"


def run_convert(args: argparse.Namespace) -> int:
    from srrecnn_jax.checkpoint import convert

    loaded = convert(args.caffemodel, args.output, args.prototxt, args.force)
    print(f"{args.output}: {loaded.config.describe()}", file=sys.stderr)
    return 0


def run_degrade(args: argparse.Namespace) -> int:
    from srrecnn_jax.degradation import degrade_files

    images = degrade_files(args.hr, args.output, args.scale, args.sigma, args.order,
                           args.interpolated, args.cropped_hr, args.force)
    size = "x".join(str(n) for n in images["lr"].GetSize())
    print(f"{args.output}: {size} voxels", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from srrecnn_jax.evaluation import evaluate_files

    scores = evaluate_files(args.sr, args.hr, mask=args.mask, shave=args.shave, lr=args.lr)
    if args.json:
        print(json.dumps(scores, indent=2))
        return 0
    for name in ("sr", "spline"):
        if name in scores:
            print(f"{name:7s} PSNR {scores[name]['psnr']:.3f} dB  SSIM {scores[name]['ssim']:.5f}")
    print(f"voxels  {scores['voxels']}")
    return 0


def run_export_caffe(args: argparse.Namespace) -> int:
    from srrecnn_jax.checkpoint import export_caffe

    loaded = export_caffe(args.model, args.output, args.force)
    print(f"{args.output}: {loaded.config.describe()}", file=sys.stderr)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from srrecnn_jax.demo import run_demo

    start = time.perf_counter()
    scores = run_demo(args.out_dir, args.model, args.crop, args.tile)
    original = ""
    if "psnr_original" in scores:
        original = (f"original x2   PSNR {scores['psnr_original']:.2f} dB "
                    f"SSIM {scores['ssim_original']:.4f} (the 2019 release's weights)\n")
    print(f"cubic spline  PSNR {scores['psnr_spline']:.2f} dB "
          f"(head {scores['psnr_spline_head']:.2f})  SSIM {scores['ssim_spline']:.4f}\n"
          f"SRReCNN3D     PSNR {scores['psnr_sr']:.2f} dB "
          f"(head {scores['psnr_sr_head']:.2f})  SSIM {scores['ssim_sr']:.4f}\n"
          f"{original}data: {scores['data']}\n"
          + (f"also: {scores['real']}, in {args.out_dir}/real_2mm.png\n"
             if "real" in scores else "") +
          f"wrote {args.out_dir}/{{lr,spline,sr,hr}}.nii.gz and {args.out_dir}/montage.png "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from srrecnn_jax.checkpoint import describe_model
    from srrecnn_jax.scales import format_scales

    facts = describe_model(args.model, args.prototxt)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    origin = facts["origin"]
    source = origin.get("fine_tuned_from") or origin  # a fine-tuned model names its source
    where = origin.get("kind", "?") if origin else "unknown"
    if source.get("file"):
        where += f" {source['file']} (sha256 {source.get('sha256', '?')})"
    if "step" in origin or "steps" in origin:
        where += f", step {origin.get('step', origin.get('steps'))}"
    if "alpha" in origin:  # a weight average (checkpoints/scripts/interpolate.py)
        where += f", alpha {origin['alpha']:g} of the fine-tuned weights"
    scales = facts["trained_scales"]
    r = facts["receptive_field"]
    print(f"model:           {facts['model']}\n"
          f"architecture:    {facts['architecture']}\n"
          f"parameters:      {facts['parameters']:,}\n"
          f"receptive field: {r}x{r}x{r} voxels\n"
          f"trained scales:  {format_scales(scales) if scales else 'unknown'}\n"
          f"trained voxels:  {_spacing_text(facts['trained_spacing'])}\n"
          f"origin:          {where}")
    return 0
