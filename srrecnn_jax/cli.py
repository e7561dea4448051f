"""The ``srrecnn`` command: parse arguments, call one library function, report.

Bad input ends in one line on stderr (``srrecnn: error: ...``) and a non-zero
exit; ``--debug`` shows the traceback instead. Outputs are written under a
temporary name and renamed, so a failure never leaves a partial file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax import __version__
from srrecnn_jax.errors import SrrecnnError

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _scale(text: str) -> tuple[float, float, float]:
    from srrecnn_jax.interpolation import parse_scale

    try:
        return parse_scale(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _border(text: str) -> tuple[int, int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not x,y,z integers") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or 3 non-negative integers")
    return (values[0], values[1], values[2])


def _order(text: str) -> int:
    value = _positive_int(text) if text != "0" else 0
    if value > 5:
        raise argparse.ArgumentTypeError(f"spline order must be 0 to 5, got {value}")
    return value


def _add_distributed(group, share: str) -> None:
    """--distributed and its explicit coordinator options (sr batch mode, train)."""
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run with jax.distributed (Slurm, Open MPI "
                       "and similar detected, or --coordinator/--num-processes/--process-id);"
                       f" each process {share}")
    group.add_argument("--coordinator", help="HOST:PORT of process 0 (with --distributed)")
    group.add_argument("--num-processes", type=_positive_int, help="with --distributed")
    group.add_argument("--process-id", type=int, help="with --distributed")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="srrecnn", description="SRReCNN3D brain MRI super-resolution in JAX.")
    parser.add_argument("--version", action="version", version=f"srrecnn-jax {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = commands.add_parser("sr", help="super-resolve 3-D images",
                            description="Super-resolve 3-D images as the original release "
                            "did: normalise by the maximum, cubic-spline zoom, network, "
                            "residual, de-normalise, clamp at the input minimum. One input "
                            "with -o, or any number of files, folders, DICOM series folders "
                            "and .txt lists of paths with --out-dir (batch mode: pipelined, "
                            "resumable, a manifest, one bad file does not stop the rest).")
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                   help="image file (NIfTI, NRRD, MetaImage), DICOM series folder, folder "
                   "(searched recursively with --glob) or .txt file listing paths")
    p.add_argument("-o", "--output", type=Path, help="output image for a single input (float32)")
    p.add_argument("--out-dir", type=Path,
                   help="batch mode: write outputs here, mirroring each input's place below "
                   "the folder it was found in")
    p.add_argument("-m", "--model", type=Path, required=True,
                   help="model folder (from `srrecnn convert`) or a .caffemodel file")
    p.add_argument("-s", "--scale", type=_scale, required=True,
                   help="zoom factor: one number or x,y,z (e.g. 2 or 2,2,2.5)")
    p.add_argument("-r", "--reference", type=Path,
                   help="high-resolution image of another modality, for multimodal models; "
                   "resampled onto the output grid if it is not on it already")
    p.add_argument("--reference-pattern", metavar="OLD:NEW",
                   help="batch mode: each input's reference is the file named with OLD "
                   "replaced by NEW (e.g. T1w:T2w)")
    p.add_argument("--prototxt", type=Path, help="deploy .prototxt to check a .caffemodel against")
    p.add_argument("--tile", type=_positive_int,
                   help="run the network in tiles of N^3 output voxels (exact: equals the "
                   "whole-volume result); default: whole volume unless it would not fit memory")
    p.add_argument("--order", type=_order, default=3, help="spline order of the zoom (default 3)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="arithmetic of the network's convolutions: fp32 (default, exact "
                   "float32), tf32 (GPU tensor cores, 10-bit mantissa products; as fp32 on "
                   "CPU) or bf16 (bfloat16 operands, float32 sums; the first layer, which reads "
                   "the intensities, stays fp32)")
    p.add_argument("--interpolation", choices=("device", "scipy"), default="device",
                   help="where the cubic-spline zoom runs: device (JAX, GPU when present; "
                   "default) or scipy (the original's scipy.ndimage.zoom on the CPU); they "
                   "agree to float32 rounding")
    p.add_argument("--no-residual", action="store_true",
                   help="do not add the interpolated image to the network output")
    p.add_argument("--header", choices=("consistent", "original"), default="consistent",
                   help="output geometry: 'consistent' keeps the first and last voxel centres "
                   "where the zoom puts them (default); 'original' writes spacing/scale as the "
                   "original release did")
    p.add_argument("--force", "--overwrite", dest="force", action="store_true",
                   help="replace existing outputs (batch mode skips complete ones otherwise)")
    batch = p.add_argument_group("batch mode (--out-dir)")
    batch.add_argument("--glob", default="*.nii*",
                       help="file pattern when searching folders (default '*.nii*')")
    batch.add_argument("--suffix", default="_SR",
                       help="added to each output's name before the extension (default _SR)")
    batch.add_argument("--output-template",
                       help="output path below --out-dir, with {dir} {stem} {ext} {suffix}, "
                       "e.g. '{dir}/{stem}_x2{ext}'")
    batch.add_argument("--manifest", type=Path,
                       help="JSONL record of the run (default OUT_DIR/srrecnn_manifest.jsonl)")
    batch.add_argument("--workers", type=_positive_int, default=2,
                       help="threads reading and interpolating ahead of the device (default 2)")
    batch.add_argument("--bucket", type=_positive_int, default=8,
                       help="pad volumes to a multiple of N voxels so nearby sizes share one "
                       "compilation; results unchanged (default 8)")
    batch.add_argument("--dry-run", action="store_true", help="list the work and stop")
    batch.add_argument("--quiet", action="store_true", help="no progress bar or warnings")
    batch.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_distributed(batch, "takes its share of the files")
    p.set_defaults(run=_cmd_sr)

    p = commands.add_parser("convert", help="convert a Caffe .caffemodel to a model folder",
                            description="Convert original Caffe weights (no Caffe needed) to "
                            "an orbax checkpoint folder with a readable config.json.")
    p.add_argument("caffemodel", type=Path, help="binary .caffemodel file")
    p.add_argument("-o", "--output", type=Path, required=True, help="model folder to write")
    p.add_argument("--prototxt", type=Path, help="deploy .prototxt to check the weights against")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(run=_cmd_convert)

    p = commands.add_parser("degrade", help="simulate a low-resolution scan (observation model)",
                            description="The original training data's observation model: "
                            "Gaussian blur (sigma in voxels), crop each axis to a multiple of "
                            "the scale, cubic-spline downsampling. Headers stay physically "
                            "consistent: the LR (and interpolated) images lie where the cropped "
                            "HR image does.")
    p.add_argument("hr", type=Path, help="high-resolution image")
    p.add_argument("-o", "--output", type=Path, required=True, help="low-resolution image")
    p.add_argument("-s", "--scale", type=_scale, required=True,
                   help="downsampling factor: one number or x,y,z")
    p.add_argument("--sigma", type=float, default=1.0,
                   help="Gaussian blur sigma in HR voxels (default 1, as the original)")
    p.add_argument("--order", type=_order, default=3, help="spline order (default 3)")
    p.add_argument("--interpolated", type=Path,
                   help="also write the LR image zoomed back onto the cropped HR grid")
    p.add_argument("--cropped-hr", type=Path,
                   help="also write the HR image cropped to a multiple of the scale")
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    p.set_defaults(run=_cmd_degrade)

    p = commands.add_parser("make-patches", help="HDF5 training patches, as the original",
                            description="Cut training patches into HDF5 files in the original "
                            "layout (data/label, float32, (N, C, P, P, P), chunked by batch), "
                            "shuffled with seed 0. Modes: simulated (LR from the observation "
                            "model, one or more -s), free (-i gives each HR image's LR image), "
                            "intermod (-i gives a registered HR image of another modality: "
                            "2-channel data). One -o for all images, or one -o per -f as the "
                            "original.")
    p.add_argument("-f", "--hr", type=Path, action="append", required=True,
                   help="HR image (repeat for several)")
    p.add_argument("-i", "--other", type=Path, action="append",
                   help="free: LR image of each -f; intermod: registered HR image of another "
                   "modality for each -f")
    p.add_argument("-o", "--output", type=Path, action="append", required=True,
                   help="HDF5 file: one for all, or one per -f")
    p.add_argument("--mode", choices=("simulated", "free", "intermod"), default="simulated")
    p.add_argument("-s", "--scale", type=_scale, action="append",
                   help="scale of the observation model, repeatable (default 2,2,2)")
    p.add_argument("--patch", type=_positive_int, default=21, help="patch edge (default 21)")
    p.add_argument("--stride", type=_positive_int, default=10, help="stride (default 10)")
    p.add_argument("--border", type=_border, default=(10, 10, 0),
                   help="voxels shaved at each end of x,y,z (default 10,10,0)")
    p.add_argument("--sigma", type=float, default=1.0, help="blur sigma in voxels (default 1)")
    p.add_argument("--order", type=_order, default=3, help="spline order (default 3)")
    p.add_argument("--batch", type=_positive_int, default=64, help="HDF5 chunk rows (default 64)")
    p.add_argument("--samples", type=_positive_int, help="keep the first N shuffled patches")
    p.add_argument("--compat", action="store_true",
                   help="reproduce the original's quirks: crops accumulating across scales; "
                   "integer zoom factors in free mode")
    p.add_argument("--list", type=Path, help="also write this text file listing the HDF5 files "
                   "(Caffe's HDF5Data source, or `srrecnn train`'s input)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_make_patches)

    p = commands.add_parser("train", help="train or fine-tune a model on HDF5 patch sets",
                            description="Train SRReCNN3D with the original's solver (Adam, "
                            "multistep, bias lr x0.1, Euclidean loss by default), data-parallel "
                            "over all devices, with orbax checkpoints. Rerunning the same command "
                            "resumes from the latest checkpoint. Settings: defaults, then "
                            "--from-caffe-solver, then --config, then --set.")
    p.add_argument("data", type=Path, nargs="+",
                   help="HDF5 patch files (from make-patches or the original scripts), text "
                   "files listing them (train.txt), or HR images (NIfTI...) to cut random "
                   "patches from on the fly (settings patch, patch_scales)")
    p.add_argument("--out", type=Path, required=True, help="run folder (created or resumed)")
    p.add_argument("--config", type=Path, help="TOML or JSON file of settings")
    p.add_argument("--from-caffe-solver", type=Path, help="Caffe solver.prototxt to import")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set learning_rate=1e-4 --set "
                   "steps=[1000,2000] (repeatable)")
    p.add_argument("--init", type=Path, help="model folder or .caffemodel to fine-tune from")
    _add_distributed(p, "reads its share of every batch")
    p.add_argument("--validate", type=Path, action="append", default=[], metavar="HR",
                   help="held-out HR image, degraded and scored (PSNR/SSIM of the model and "
                   "of spline) every validate_every steps (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_train)

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
    p.set_defaults(run=_cmd_eval)

    p = commands.add_parser("export-caffe", help="write a model as a Caffe .caffemodel",
                            description="Write a model folder (or caffemodel) as a binary "
                            "Caffe .caffemodel with conv1..convN and ReLU layers; "
                            "`srrecnn convert` reads it back to identical parameters.")
    p.add_argument("model", type=Path, help="model folder or .caffemodel file")
    p.add_argument("-o", "--output", type=Path, required=True, help=".caffemodel to write")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(run=_cmd_export_caffe)

    p = commands.add_parser("demo", help="super-resolve the installed MNI T1 degraded x2",
                            description="Degrade nilearn's 1 mm MNI T1 by 2 (observation "
                            "model), super-resolve it with the project's shipped checkpoint "
                            "(or --model), print spline vs SR PSNR, and write the volumes and a "
                            "montage.png (three planes: spline, SR, HR, error).")
    p.add_argument("--out", type=Path, default=Path("srrecnn_demo"),
                   help="output folder (default ./srrecnn_demo)")
    p.add_argument("-m", "--model", type=Path, help="model instead of the shipped checkpoint")
    p.add_argument("--crop", type=_positive_int, help="only a centred crop of N^3 HR voxels")
    p.add_argument("--tile", type=_positive_int, help="tile edge (see sr --tile)")
    p.set_defaults(run=_cmd_demo)

    p = commands.add_parser("info", help="describe a model",
                            description="Print a model's architecture, parameter count, "
                            "receptive field and origin.")
    p.add_argument("model", type=Path, help="model folder or .caffemodel file")
    p.add_argument("--prototxt", type=Path, help="deploy .prototxt to check a .caffemodel against")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_info)
    return parser


def _check_output_file(output: Path, force: bool, inputs: Sequence[Path]) -> None:
    """Refuse, before any work, an output we could not or should not write."""
    if not output.name.endswith(_IMAGE_SUFFIXES):  # SimpleITK is case-sensitive
        raise SrrecnnError(f"{output}: unknown image format; use one of "
                           f"{', '.join(_IMAGE_SUFFIXES)} (lower case)")
    if any(output.resolve() == p.resolve() for p in inputs):
        raise SrrecnnError(f"{output}: output would replace an input")
    if output.exists() and not force:
        raise SrrecnnError(f"{output}: already exists (use --force to replace it)")
    if not output.parent.is_dir():
        raise SrrecnnError(f"{output}: folder {output.parent} does not exist")


def _cmd_sr(args: argparse.Namespace) -> int:
    if args.out_dir is not None:
        if args.output is not None:
            raise SrrecnnError("-o/--output: give either -o (one input) or --out-dir, not both")
        if args.reference is not None:
            raise SrrecnnError("--reference: in batch mode pair inputs with "
                               "--reference-pattern OLD:NEW")
        from srrecnn_jax.batch_cli import run_batch_command

        return run_batch_command(args)
    if args.output is None:
        raise SrrecnnError("-o/--output: give an output file, or --out-dir for batch mode")
    if len(args.inputs) > 1 or args.inputs[0].name.endswith((".txt", ".lst")):
        raise SrrecnnError("-o/--output: takes a single input; use --out-dir for several")
    from srrecnn_jax import io
    from srrecnn_jax.batch import read_input
    from srrecnn_jax.inference import SuperResolver

    source = args.inputs[0]
    inputs = [source] + ([args.reference] if args.reference else [])
    _check_output_file(args.output, args.force, inputs)
    image = read_input(source, "input image")
    reference = read_input(args.reference, "reference image") if args.reference else None
    start = time.perf_counter()
    resolver = SuperResolver.load(args.model, args.prototxt)
    result = resolver.run(image, args.scale, reference, order=args.order, tile=args.tile,
                          residual=False if args.no_residual else None, header=args.header,
                          precision=args.precision, interpolation=args.interpolation,
                          input_name=str(source),
                          reference_name=str(args.reference))
    io.write_image_atomic(result, args.output)
    size = "x".join(str(n) for n in result.GetSize())
    spacing = "x".join(f"{s:.4g}" for s in result.GetSpacing())
    print(f"{args.output}: {size} voxels of {spacing} mm "
          f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from srrecnn_jax.checkpoint import load_model, save_model

    if args.output.exists() and not args.force:
        raise SrrecnnError(f"{args.output}: already exists (use --force to replace it)")
    if args.caffemodel.is_dir():
        raise SrrecnnError(f"{args.caffemodel}: is a folder, expected a .caffemodel file")
    loaded = load_model(args.caffemodel, args.prototxt)
    save_model(args.output, loaded, force=args.force)
    print(f"{args.output}: {loaded.config.describe()}", file=sys.stderr)
    return 0


def _cmd_degrade(args: argparse.Namespace) -> int:
    from srrecnn_jax import io
    from srrecnn_jax.degradation import degrade_image

    outputs = [args.output] + [p for p in (args.interpolated, args.cropped_hr) if p]
    for output in outputs:
        _check_output_file(output, args.force, [args.hr])
    if args.sigma < 0:
        raise SrrecnnError(f"--sigma: must be >= 0, got {args.sigma}")
    hr = io.read_image(args.hr, "HR image")
    images = degrade_image(hr, args.scale, args.sigma, args.order)
    io.write_image_atomic(images["lr"], args.output)
    if args.interpolated:
        io.write_image_atomic(images["interpolated"], args.interpolated)
    if args.cropped_hr:
        io.write_image_atomic(images["hr"], args.cropped_hr)
    size = "x".join(str(n) for n in images["lr"].GetSize())
    print(f"{args.output}: {size} voxels", file=sys.stderr)
    return 0


def _image_size(path: Path) -> tuple[int, ...]:
    import SimpleITK as sitk

    if not path.is_file():
        raise SrrecnnError(f"{path}: no such image file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise SrrecnnError(f"{path}: unreadable or corrupt image") from None
    if reader.GetDimension() != 3:
        raise SrrecnnError(f"{path}: image is {reader.GetDimension()}-D, expected 3-D")
    return tuple(reader.GetSize())


def _cmd_make_patches(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from srrecnn_jax import io
    from srrecnn_jax.patches import PatchConfig, Source, write_patch_set

    others = args.other or []
    if args.mode == "simulated" and others:
        raise SrrecnnError("-i/--other: only for --mode free or intermod")
    if args.mode != "simulated" and len(others) != len(args.hr):
        raise SrrecnnError(f"-i/--other: --mode {args.mode} needs one -i per -f "
                           f"({len(args.hr)} -f, {len(others)} -i)")
    if len(args.output) not in (1, len(args.hr)):
        raise SrrecnnError(f"-o/--output: give one file, or one per -f ({len(args.hr)})")
    for output in args.output + ([args.list] if args.list else []):
        if output.exists() and not args.force:
            raise SrrecnnError(f"{output}: already exists (use --force to replace it)")
        if not output.parent.is_dir():
            raise SrrecnnError(f"{output}: folder {output.parent} does not exist")
    if args.sigma < 0:
        raise SrrecnnError(f"--sigma: must be >= 0, got {args.sigma}")
    sources = [Source(hr, others[i] if others else None, args.mode)
               for i, hr in enumerate(args.hr)]
    shapes = [tuple(_image_size(p) for p in (s.hr, s.other) if p) for s in sources]
    config = PatchConfig(patch=args.patch, stride=args.stride, border=args.border,
                         sigma=args.sigma, order=args.order,
                         scales=tuple(args.scale or [(2.0, 2.0, 2.0)]), batch=args.batch,
                         samples=args.samples, compat=args.compat)

    def read(path: Path):
        array = io.to_array(io.read_image(path, "image"))
        io.check_values(array, str(path))
        return array

    groups = ([(args.output[0], sources, shapes)] if len(args.output) == 1 else
              [(o, [s], [sh]) for o, s, sh in zip(args.output, sources, shapes)])
    with tqdm(total=len(sources), unit="image", disable=args.quiet, file=sys.stderr) as bar:
        for output, group, group_shapes in groups:
            try:
                count = write_patch_set(output, group, group_shapes, config, read, bar.update)
            except ValueError as e:
                raise SrrecnnError(f"{output}: {e}") from None
            bar.write(f"{output}: {count} patches", file=sys.stderr)
    if args.list:
        io.write_text_atomic(args.list, "".join(f"{o.resolve()}\n" for o in args.output))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tqdm import tqdm

    from srrecnn_jax import training
    from srrecnn_jax.checkpoint import load_model
    from srrecnn_jax.data import PatchSet
    from srrecnn_jax.trainer import read_run_config, train

    if args.distributed:
        from srrecnn_jax import distributed

        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.coordinator or args.num_processes or args.process_id is not None:
        raise SrrecnnError("--coordinator/--num-processes/--process-id: need --distributed")
    if (args.out / "train_config.json").exists() and not (
            args.config or args.from_caffe_solver or args.set):
        config = read_run_config(args.out)
    else:
        config = training.TrainConfig()
        if args.from_caffe_solver:
            config = training.from_caffe_solver(args.from_caffe_solver, config)
        if args.config:
            config = training.load_config_file(args.config, config)
        config = training.config_from(dict(map(training.parse_override, args.set)), config)
    from srrecnn_jax import io

    init = load_model(args.init) if args.init else None
    validation = []
    for path in args.validate:
        volume = io.to_array(io.read_image(path, "validation image"))
        io.check_values(volume, str(path))
        validation.append(volume)
    if all(p.name.endswith((".h5", ".hdf5", ".txt", ".lst")) for p in args.data):
        data = PatchSet(args.data)
    else:
        from srrecnn_jax.data import RandomPatches

        volumes = []
        for path in args.data:
            volume = io.to_array(io.read_image(path, "training image"))
            io.check_values(volume, str(path))
            volumes.append(volume)
        data = RandomPatches(volumes, config.patch_scales, config.patch, seed=config.seed)
    stop = threading.Event()
    handlers = {s: signal.signal(s, lambda *_: stop.set())
                for s in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=config.max_iter, unit="step", disable=args.quiet, file=sys.stderr,
               dynamic_ncols=True)

    def on_log(metrics: dict) -> None:
        bar.n = metrics["step"]
        val = (f" val {metrics['val_psnr']:.2f} dB (spline {metrics['val_spline_psnr']:.2f})"
               if "val_psnr" in metrics else "")
        bar.set_postfix_str(f"loss {metrics['loss']:.4g} lr {metrics['learning_rate']:.3g} "
                            f"{metrics['steps_per_s']:.3g} steps/s "
                            f"data wait {metrics['data_wait_fraction']:.0%}{val}")
        bar.refresh()

    try:
        last = train(config, data, args.out, init, stop, on_log, validation)
    finally:
        bar.close()
        data.close()
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if stop.is_set():
        print(f"srrecnn: stopped at step {last.get('step')}; the same command resumes",
              file=sys.stderr)
        return 130
    print(f"{args.out / 'model'}: trained {config.max_iter} steps", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
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


def _cmd_export_caffe(args: argparse.Namespace) -> int:
    import os

    from srrecnn_jax.caffe import caffemodel_bytes
    from srrecnn_jax.checkpoint import load_model

    if args.output.exists() and not args.force:
        raise SrrecnnError(f"{args.output}: already exists (use --force to replace it)")
    if not args.output.parent.is_dir():
        raise SrrecnnError(f"{args.output}: folder {args.output.parent} does not exist")
    loaded = load_model(args.model)
    name = "SRCNN3D" if loaded.config.padding == "edge_valid" else "VDSR3D"
    data = caffemodel_bytes(loaded.params, loaded.config, name)
    tmp = args.output.with_name(f".tmp-{os.getpid()}-{args.output.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, args.output)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{args.output}: {loaded.config.describe()}", file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from srrecnn_jax.demo import run_demo

    start = time.perf_counter()
    scores = run_demo(args.out, args.model, args.crop, args.tile)
    print(f"cubic spline  PSNR {scores['psnr_spline']:.2f} dB "
          f"(head {scores['psnr_spline_head']:.2f})  SSIM {scores['ssim_spline']:.4f}\n"
          f"SRReCNN3D     PSNR {scores['psnr_sr']:.2f} dB "
          f"(head {scores['psnr_sr_head']:.2f})  SSIM {scores['ssim_sr']:.4f}\n"
          f"wrote {args.out}/{{lr,spline,sr,hr}}.nii.gz and {args.out}/montage.png "
          f"({time.perf_counter() - start:.0f} s)")
    return 0


def describe_model(path: Path, prototxt: Path | None = None) -> dict:
    """The facts ``srrecnn info`` prints."""
    from srrecnn_jax import model
    from srrecnn_jax.checkpoint import load_model

    loaded = load_model(path, prototxt)
    config = loaded.config
    return {"model": str(path), "architecture": config.describe(), "config": config.to_dict(),
            "parameters": model.param_count(loaded.params),
            "receptive_field": config.receptive_field,
            "trained_scales": loaded.trained_scales, "origin": loaded.origin}


def _cmd_info(args: argparse.Namespace) -> int:
    facts = describe_model(args.model, args.prototxt)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    origin = facts["origin"]
    where = (f"{origin.get('kind', '?')} {origin.get('file', '')} "
             f"(sha256 {origin.get('sha256', '?')})" if origin else "unknown")
    scales = facts["trained_scales"]
    r = facts["receptive_field"]
    print(f"model:           {facts['model']}\n"
          f"architecture:    {facts['architecture']}\n"
          f"parameters:      {facts['parameters']:,}\n"
          f"receptive field: {r}x{r}x{r} voxels\n"
          f"trained scales:  {', '.join(f'{s:g}' for s in scales) if scales else 'unknown'}\n"
          f"origin:          {where}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``srrecnn`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not args.debug:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return args.run(args)
    except SrrecnnError as e:
        if args.debug:
            raise
        print(f"srrecnn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("srrecnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
