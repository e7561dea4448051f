"""The printed table and the JSON file (written atomically)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from srrecnn_jax.writing import write_text_atomic

COLUMNS = ("case", "sizes", "model", "prec", "median s [min-max]", "voxels/s", "TFLOP/s",
           "ceil", "peak mem", "ref", "ref s", "speed", "agree")


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "-" if value is None else format(value, fmt)


def _bytes(mem: dict | None) -> str:
    if not mem or mem.get("bytes") is None:
        return "-"
    where = "host" if mem["kind"].startswith("host") else "dev"
    return f"{mem['bytes'] / 2 ** 30:.2f}G {where}"


def _row(case: dict[str, Any]) -> list[str]:
    head = [case["name"], case["sizes"], case.get("model_label", ""), case["precision"]]
    if "skipped" in case or "error" in case:
        text = f"skipped: {case['skipped']}" if "skipped" in case else f"ERROR: {case['error']}"
        return head + [text]
    jax_side = case.get("jax", {})
    if "median_s" not in jax_side:
        return head + [f"JAX side skipped: {jax_side.get('skipped', '?')}"]
    timing = (f"{jax_side['median_s']:.4g} [{jax_side['min_s']:.3g}-{jax_side['max_s']:.3g}]")
    frac = jax_side.get("fraction_of_ceiling")
    ref_name = case.get("reference", "")
    ref = case.get(ref_name) or {}
    ref_s = (ref.get("timing") or {}).get("median_s", ref.get("median_s"))
    if ref_name == "torch" and ref_s is None:
        ref_name = "torch: " + ("skipped" if "skipped" in ref else "error")
    agree = case.get("max_rel_diff", ref.get("agreement_max_rel_diff",
                                             ref.get("agreement_loss_rel_diff")))
    return head + [timing, _num(jax_side.get("voxels_per_s")), _num(jax_side.get("tflops")),
                   "-" if frac is None else f"{100 * frac:.1f}%", _bytes(jax_side.get("memory")),
                   ref_name, _num(ref_s, ".4g"), _num(case.get("speed_ratio"), ".2f"),
                   _num(agree, ".1e")]


def table(cases: list[dict[str, Any]], convention: dict[str, str], ceilings: dict[str, dict]
          ) -> str:
    """A plain-text table, one row per case, under the FLOP convention and the ceilings."""
    lines = ["FLOPs: inference " + convention["inference"],
             "       train " + convention["train"],
             "       interp " + convention["interp"],
             "ceil = achieved TFLOP/s / matmul ceiling of this run: " + ", ".join(
                 f"{p} {c['tflops']:.3g} TFLOP/s (n={c['n']})" for p, c in ceilings.items()),
             "speed = reference s / JAX s (> 1: JAX faster); agree = max |diff| / output "
             "range (train: relative first-step loss difference)", ""]
    rows = [list(COLUMNS)] + [_row(c) for c in cases]
    full = [r for r in rows if len(r) == len(COLUMNS)]
    widths = [max(len(r[i]) for r in full) for i in range(len(COLUMNS))]
    for r in rows:
        if len(r) == len(COLUMNS):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        else:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  "
                         + r[4])
    lines.insert(len(lines) - len(rows) + 1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (``srrecnn_jax.writing.write_text_atomic``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
