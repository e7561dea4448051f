"""The command line: ``python -m benchmarks run --suite inference|train|interp|all ...``."""

from __future__ import annotations

import argparse
import datetime
import gc
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.cases import PRECISIONS, SUITES

CEILING_N = {"smoke": 256, "cpu": 4096, "gpu": 8192}
INTERP_TOLERANCE = 1e-5


class _Parser(argparse.ArgumentParser):
    """Errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"benchmarks: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmarks", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run a suite, print a table, write JSON")
    r.add_argument("--suite", choices=[*SUITES, "all"], default="all")
    r.add_argument("--smoke", action="store_true",
                   help="tiny net and sizes, 2 repeats: checks that every path runs")
    r.add_argument("--json", type=Path, default=None,
                   help="output file (default benchmarks/results/bench_<suite>_<platform>"
                        "[_smoke].json)")
    r.add_argument("--repeats", type=int, default=None,
                   help="timed runs per case after one warm-up (default 5; 2 with --smoke)")
    r.add_argument("--precision", default=None,
                   help="inference precisions, comma-separated from fp32,tf32,bf16 (default: "
                        "all three on GPU; fp32 plus one bf16 case on CPU)")
    r.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    r.add_argument("--torch-compile", action="store_true",
                   help="wrap the PyTorch network in torch.compile")
    r.add_argument("--cases", default=None,
                   help="comma-separated case names or shell-style patterns")
    return p


def _precisions(text: str | None) -> list[str] | None:
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PRECISIONS]
    if bad or not values:
        raise ValueError(f"--precision: {', '.join(bad) or 'empty'}: choose from "
                         f"{','.join(PRECISIONS)}")
    return list(dict.fromkeys(values))


def _fail(message: str) -> int:
    print(f"benchmarks: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        precisions = _precisions(args.precision)
    except ValueError as e:
        return _fail(str(e))
    repeats = args.repeats if args.repeats is not None else (2 if args.smoke else 5)
    if repeats < 1:
        return _fail(f"--repeats: must be at least 1, got {repeats}")
    patterns = [p.strip() for p in args.cases.split(",") if p.strip()] if args.cases else None

    import jax  # after the arguments: errors above come back without starting JAX

    from benchmarks import cases as case_lists
    from benchmarks import environment, flops, report, torch_ref
    from benchmarks.ceiling import measure_ceiling

    platform = environment.device()["platform"]
    try:
        selected = case_lists.select(platform, args.smoke, args.suite, precisions, patterns)
    except ValueError as e:
        return _fail(str(e))
    if not selected:
        return _fail("no case to run")
    out = args.json or Path("benchmarks/results") / (
        f"bench_{args.suite}_{platform}{'_smoke' if args.smoke else ''}.json")

    torch_opts = _torch_options(args, platform, torch_ref)
    size_note = (case_lists.SMOKE_NOTE if args.smoke else
                 case_lists.CPU_SIZE_NOTE if platform == "cpu" else "")
    if size_note:
        print(size_note)
    data: dict[str, Any] = {
        "schema": "srrecnn-jax-benchmarks/1",
        "command": "python -m benchmarks " + shlex.join(argv),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": environment.machine(), "versions": environment.versions(),
        "devices": environment.devices(), "device": environment.device(),
        "environment": environment.env_vars(),
        "options": {"suite": args.suite, "smoke": args.smoke, "repeats": repeats, "warmup": 1,
                    "precisions": precisions, "torch": not torch_opts.get("skip"),
                    "torch_skipped": torch_opts.get("skip"),
                    "torch_compile": args.torch_compile, "cases": patterns},
        "flop_convention": flops.CONVENTION, "ratio_convention": flops.RATIO_CONVENTION,
        "size_note": size_note, "ceilings": {}, "cases": [], "failed": [],
    }

    n = CEILING_N["smoke" if args.smoke else ("cpu" if platform == "cpu" else "gpu")]
    for precision in dict.fromkeys(c.precision for c in selected):
        _log(f"ceiling {precision}: {n} x {n} matmul ...")
        try:
            data["ceilings"][precision] = measure_ceiling(precision, n, repeats)
        except Exception as e:
            data["ceilings"][precision] = {"error": f"{type(e).__name__}: {e}", "tflops": None,
                                           "n": n}
        _log(f"  {_fmt(data['ceilings'][precision].get('tflops'))} TFLOP/s")
        gc.collect()

    for i, case in enumerate(selected, 1):
        _log(f"[{i}/{len(selected)}] {case.name} ...")
        start = time.perf_counter()
        record = _run_case(case, repeats, data["ceilings"], torch_opts, environment.device())
        record["wall_s"] = time.perf_counter() - start
        problem = _problem(record)
        if problem:
            data["failed"].append({"name": case.name, "why": problem})
        _log(f"  {record['wall_s']:.1f} s" + (f"; FAILED: {problem}" if problem else ""))
        data["cases"].append(record)
        report.write_json(out, data)
        _free(torch_opts)
        gc.collect()
        jax.clear_caches()

    print(report.table(data["cases"], flops.CONVENTION, {
        p: c for p, c in data["ceilings"].items() if c.get("tflops")}))
    print(f"\nJSON: {out}")
    if data["failed"]:
        for f in data["failed"]:
            print(f"benchmarks: {f['name']}: {f['why']}", file=sys.stderr)
        return 1
    return 0


def _torch_options(args, platform: str, torch_ref) -> dict[str, Any]:
    if args.no_torch:
        return {"skip": "disabled with --no-torch"}
    torch, reason = torch_ref.load()
    if torch is None:
        return {"skip": reason}
    device, reason = torch_ref.pick_device(torch, platform)
    if device is None:
        return {"skip": reason}
    return {"device": device, "compile": args.torch_compile}


def _run_case(case, repeats, ceilings, torch_opts, device) -> dict[str, Any]:
    from benchmarks import bench_inference, bench_interp, bench_train

    runner = {"inference": bench_inference.run, "train": bench_train.run,
              "interp": bench_interp.run}[case.suite]
    record: dict[str, Any] = {
        "name": case.name, "suite": case.suite, "sizes": case.sizes,
        "shape": list(case.shape) if case.shape else None, "batch": case.batch,
        "patch": case.patch, "tile": case.tile,
        "scale": case.scale if case.suite == "interp" else None,
        "model_label": case.model, "precision": case.precision, "device": device,
        "note": case.note}
    try:
        record.update(runner(case, repeats, ceilings, torch_opts))
    except Exception as e:
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()
    return record


def _problem(record: dict[str, Any]) -> str | None:
    """Why a case counts as failed: it raised, or a check did not hold."""
    if "error" in record:
        return record["error"]
    torch_side = record.get("torch") or {}
    if torch_side.get("agreement_ok") is False:
        value = torch_side.get("agreement_max_rel_diff",
                               torch_side.get("agreement_loss_rel_diff"))
        return f"PyTorch and JAX disagree: {value:.2e} (tolerance 1e-4)"
    diff = record.get("max_rel_diff")
    if diff is not None and diff > INTERP_TOLERANCE:
        return f"zoom_device differs from scipy by {diff:.2e} of the range (> 1e-5)"
    return None


def _free(torch_opts: dict[str, Any]) -> None:
    if torch_opts.get("device") == "cuda":
        import torch

        torch.cuda.empty_cache()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
