"""``srrecnn make-patches`` and ``srrecnn train``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from srrecnn_jax.cli import common


def add_to(commands) -> None:
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
    p.add_argument("--mode", choices=("simulated", "free", "intermod"), default="simulated",
                   help="where each HR image's LR input comes from: simulated (observation "
                   "model), free (-i) or intermod (-i, 2 channels); default simulated")
    p.add_argument("-s", "--scale", type=common.scale, action="append",
                   help="scale of the observation model, repeatable (default 2,2,2)")
    p.add_argument("--patch", type=common.positive_int, default=21,
                   help="patch edge (default 21)")
    p.add_argument("--stride", type=common.positive_int, default=10, help="stride (default 10)")
    p.add_argument("--border", type=common.border, default=(10, 10, 0),
                   help="voxels shaved at each end of x,y,z (default 10,10,0)")
    p.add_argument("--sigma", type=float, default=1.0, help="blur sigma in voxels (default 1)")
    p.add_argument("--order", type=common.order, default=3, help="spline order (default 3)")
    p.add_argument("--batch", type=common.positive_int, default=64,
                   help="HDF5 chunk rows (default 64)")
    p.add_argument("--samples", type=common.positive_int,
                   help="keep the first N shuffled patches")
    p.add_argument("--compat", action="store_true",
                   help="reproduce the original's quirks: crops accumulating across scales; "
                   "integer zoom factors in free mode")
    p.add_argument("--list", type=Path, help="also write this text file listing the HDF5 files "
                   "(Caffe's HDF5Data source, or `srrecnn train`'s input)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_make_patches)

    p = commands.add_parser("train", help="train or fine-tune a model on HDF5 patch sets",
                            description="Train SRReCNN3D with the original's solver (Adam, "
                            "multistep, bias lr x0.1, Euclidean loss by default), data-parallel "
                            "over all devices, with orbax checkpoints. Rerunning the same command "
                            "resumes from the latest checkpoint. Settings: defaults (the --init "
                            "model's architecture when fine-tuning), then --from-caffe-solver, "
                            "then --config, then --set.")
    p.add_argument("data", type=Path, nargs="+",
                   help="HDF5 patch files (from make-patches or the original scripts), text "
                   "files listing them (train.txt; paths relative to the list file), or HR "
                   "images (NIfTI...) to cut random patches from on the fly (settings patch, "
                   "patch_scales, patch_scales_by_file, blur, and the augment table)")
    common.add_renamed(p, "--out", "--out-dir", type=Path, required=True,
                       help="run folder to fill (created or resumed; one with no checkpoint "
                       "yet restarts with the settings given)")
    p.add_argument("--config", type=Path, help="TOML or JSON file of settings")
    p.add_argument("--from-caffe-solver", type=Path, help="Caffe solver.prototxt to import")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set learning_rate=1e-4 --set "
                   "steps=[1000,2000] (repeatable); every setting is checked (type, range, "
                   "architecture limits, fit with the data) before anything is written")
    p.add_argument("--init", type=common.model, help="model folder, .caffemodel or shipped "
                   "model's name to fine-tune from")
    common.add_distributed(p, "reads its share of every batch")
    p.add_argument("--validate", type=Path, action="append", default=[], metavar="HR",
                   help="held-out HR image, degraded and scored (PSNR/SSIM of the model and "
                   "of spline) every validate_every steps (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_train)


def run_make_patches(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from srrecnn_jax.train.patches import PatchConfig, make_patch_sets

    config = PatchConfig(patch=args.patch, stride=args.stride, border=args.border,
                         sigma=args.sigma, order=args.order,
                         scales=tuple(args.scale or [(2.0, 2.0, 2.0)]), batch=args.batch,
                         samples=args.samples, compat=args.compat)
    with tqdm(total=len(args.hr), unit="image", disable=args.quiet, file=sys.stderr) as bar:
        make_patch_sets(args.hr, args.output, config, args.mode, args.other or [], args.list,
                        args.force, bar.update, lambda line: bar.write(line, file=sys.stderr))
    return 0


def progress(bar) -> Callable[[dict], None]:
    """The training loop's ``on_log``: moves ``bar`` (tqdm) to each logged step and shows
    the loss, learning rate, measured steps/s, data wait and validation. The bar's own
    rate and time left count from the first logged step, so that neither the steps of a
    resumed run's earlier invocations nor the compilation make them up."""
    first = True

    def on_log(metrics: dict) -> None:
        nonlocal first
        if first:
            bar.reset()
            bar.initial = bar.last_print_n = metrics["step"]
            first = False
        bar.n = metrics["step"]
        val = (f" val {metrics['val_psnr']:.2f} dB (spline "
               f"{metrics['val_spline_psnr']:.2f})" if "val_psnr" in metrics else "")
        bar.set_postfix_str(f"loss {metrics['loss']:.4g} lr {metrics['learning_rate']:.3g} "
                            f"{metrics['steps_per_s']:.3g} steps/s "
                            f"data wait {metrics['data_wait_fraction']:.0%}{val}")
        bar.refresh()

    return on_log


def run_train(args: argparse.Namespace) -> int:
    common.join_processes(args)
    from srrecnn_jax.train.loop import train_files

    with common.stoppable(0, "step", args.quiet) as (stop, bar):
        def on_start(config) -> None:
            bar.total = config.schedule.max_iter
            bar.refresh()

        last, config = train_files(args.data, args.out_dir, config_file=args.config,
                                   caffe_solver=args.from_caffe_solver, overrides=args.set,
                                   init=args.init, validation=args.validate, stop=stop,
                                   on_start=on_start, on_log=progress(bar))
    if stop.is_set():
        print(f"srrecnn: stopped at step {last.get('step')}; the same command resumes",
              file=sys.stderr)
        return 130
    print(f"{args.out_dir / 'model'}: trained {config.schedule.max_iter} steps", file=sys.stderr)
    return 0
