"""The models shipped with the package, by name.

They are the source tree's ``checkpoints/`` folder, installed as the package
``srrecnn_jax.shipped_models`` (``pyproject.toml``): found through
``importlib.resources`` in an installed wheel and in an editable install alike.
A shipped model is a folder ``<folder>/`` holding ``model/`` (a model
folder, see ``checkpoint``) and ``card.json`` (``CARD_KEYS``: its task and training data
in words, scales, voxel sizes, training data with licences, scores, fingerprint, licence).
Its name is the folder's with ``-`` for ``_`` (``mni_x2`` -> ``mni-x2``); ``default``
names ``DEFAULT``. Its scores come from a table written by ``checkpoints/scripts/evaluate.py``:
Colin27, a real brain no shipped model trained on (``scores/colin27_crop.json``), unless the
card names another (``"metrics": {"table", "region", "on"}``: a multimodal model is
scored on the held-out slab of a T1/T2 template pair, as no real pair is installable).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path

from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.structured import parse_json


def _shipped_root() -> Path:
    """The installed ``srrecnn_jax.shipped_models`` folder; in a source tree imported
    without installing (``PYTHONPATH``), the ``checkpoints/`` folder beside the package."""
    try:
        return Path(str(importlib.resources.files("srrecnn_jax.shipped_models")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "checkpoints"


CHECKPOINTS = _shipped_root()
#: What ``default`` names: the x2 model trained on scanner-like and Gaussian acquisitions
#: with noise (it won more scan x condition cells than ``mono-x2`` lost, the rule fixed
#: in ``checkpoints/real_x2/config.toml`` before it was scored).
DEFAULT = "real-x2"
CARD = "card.json"
#: The Colin27 table of ``checkpoints/scripts/evaluate.py`` (central crop), relative to
#: the shelf.
COLIN27_SCORES = "scores/colin27_crop.json"
#: The table of ``checkpoints/scripts/evaluate_real.py`` (x2 under each observation model
#: and noise level, Colin27 and the real scans' held-out slabs), relative to the shelf.
REAL_SCORES = "scores/real_acquisitions.json"
#: Where a model's scores come from unless its card says otherwise.
DEFAULT_SCORES = {"table": COLIN27_SCORES, "region": "crop", "on": "Colin27 crop"}
#: The keys of a shipped model's ``card.json``. ``task`` and ``data`` are words; ``scales``
#: and ``spacing_mm`` the trained scales and the HR voxel sizes (mm) of the training data;
#: ``training_data`` a list of ``{name, licence}`` (starting weights included);
#: ``metrics`` ``{on, table, region, psnr_db: {condition: {model, spline}}}``, the PSNR
#: rounded from the table (relative to the shelf); ``sha256`` the model's
#: ``checkpoint.fingerprint``; ``licence`` the model's.
CARD_KEYS = ("name", "version", "task", "data", "scales", "spacing_mm", "training_data",
             "metrics", "sha256", "licence")


@dataclasses.dataclass(frozen=True)
class Shipped:
    """One shipped model: ``name``, its model folder ``path``, what it is for (``task``),
    what it was trained on (``data``), the scales and HR voxel size (mm, or None) its
    folder records, what it was scored on (``scored_on``: Colin27's crop unless its card
    says otherwise) and its PSNR there beside cubic spline's, per condition
    (``{"x2": (model, spline)}``); and, when ``REAL_SCORES`` scored it, its gain over
    cubic spline at x2 per observation model and noise level, mean and least over the
    scans (``{"k-space 1%": (mean, least)}``)."""

    name: str
    path: Path
    task: str
    data: str
    trained_scales: tuple
    trained_spacing: float | None
    scored_on: str
    psnr: dict[str, tuple[float, float]]
    acquisitions: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


def names(root: Path = CHECKPOINTS) -> list[str]:
    """The shipped models' names, sorted."""
    return sorted(_folder_name(card.parent) for card in root.glob(f"*/{CARD}")
                  if (card.parent / "model").is_dir())


def shipped(root: Path = CHECKPOINTS) -> list[Shipped]:
    """Every shipped model, sorted by name."""
    return [describe(name, root) for name in names(root)]


def describe(name: str, root: Path = CHECKPOINTS) -> Shipped:
    """The shipped model ``name`` (or ``default``)."""
    # Here, not at the top: ``locate`` runs while the command line is parsed, before
    # the CLI configures JAX (its compilation cache), and must not import it.
    from srrecnn_jax.checkpoint import read_meta

    folder = _folder(name, root)
    card_path = folder / CARD
    try:
        card = parse_json(card_path.read_text(encoding="utf-8"))
        task, data = str(card["task"]), str(card["data"])
        scores = {**DEFAULT_SCORES, **card.get("metrics", {})}
        table, region, scored_on = (str(scores[k]) for k in ("table", "region", "on"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SrrecnnError(f"{card_path}: unreadable model card ({e})") from None
    meta, _ = read_meta(folder / "model" / "config.json")
    scales = tuple(meta.get("trained_scales") or ())
    return Shipped(_folder_name(folder), folder / "model", task, data, scales,
                   meta.get("trained_spacing"), scored_on,
                   _psnr(folder.name, root / table, region),
                   _gains(folder.name, root / REAL_SCORES))


def check_card(name: str, root: Path = CHECKPOINTS) -> list[str]:
    """What is wrong with the card of the shipped model ``name`` (empty when nothing):
    a key of ``CARD_KEYS`` missing or of the wrong type, another model's name, scales
    other than its model folder's, PSNR other than its score table's."""
    from srrecnn_jax.checkpoint import read_meta

    folder = _folder(name, root)
    card = parse_json((folder / CARD).read_text(encoding="utf-8"))
    types = {"name": str, "version": str, "task": str, "data": str, "scales": list,
             "spacing_mm": list, "training_data": list, "metrics": dict, "sha256": str,
             "licence": str}
    problems = [f"{key}: missing or not a {kind.__name__}" for key, kind in types.items()
                if not isinstance(card.get(key), kind)]
    problems += [f"{key}: unknown key" for key in card if key not in types]
    if problems:
        return problems
    if card["name"] != _folder_name(folder):
        problems.append(f"name: {card['name']!r}, not {_folder_name(folder)!r}")
    meta, _ = read_meta(folder / "model" / "config.json")
    if card["scales"] != list(meta.get("trained_scales") or []):
        problems.append(f"scales: {card['scales']}, the model records "
                        f"{meta.get('trained_scales')}")
    if meta.get("trained_spacing") is not None and card["spacing_mm"] != [
            meta["trained_spacing"]]:
        problems.append(f"spacing_mm: {card['spacing_mm']}, the model records "
                        f"{meta['trained_spacing']}")
    if not all(isinstance(d, dict) and set(d) == {"name", "licence"}
               for d in card["training_data"]):
        problems.append("training_data: each item must be {name, licence}")
    metrics = card["metrics"]
    table = _psnr(folder.name, root / str(metrics.get("table")), str(metrics.get("region")))
    rounded = {c: {"model": round(m, 2), "spline": round(s, 2)} for c, (m, s) in table.items()}
    if not table or metrics.get("psnr_db") != rounded:
        problems.append(f"metrics: psnr_db differs from {metrics.get('table')} "
                        f"({metrics.get('region')})")
    return problems


def locate(value: str | Path, root: Path = CHECKPOINTS) -> Path:
    """A model argument as a path: an existing file or folder, or anything that looks
    like a path (a ``/`` or a suffix), as given (loading it reports what is wrong);
    else the folder of the shipped model of that name (``default`` included)."""
    path = Path(value)
    text = str(value)
    if path.exists() or "/" in text or path.suffix:
        return path
    if text == "default" or text in names(root):
        return _folder(text, root) / "model"
    raise SrrecnnError(f"{text}: no such file or folder, nor a shipped model (names: "
                       f"{', '.join(['default'] + names(root))})", "model")


def _folder_name(folder: Path) -> str:
    return folder.name.replace("_", "-")


def _folder(name: str, root: Path) -> Path:
    name = DEFAULT if name == "default" else name
    folder = root / name.replace("-", "_")
    if not (folder / CARD).is_file() or not (folder / "model").is_dir():
        raise SrrecnnError(f"{name}: not a shipped model (names: "
                           f"{', '.join(['default'] + names(root))})", "model")
    return folder


def _gains(method: str, table: Path) -> dict[str, tuple[float, float]]:
    """``{condition: (mean, least)}`` of ``method``'s gain over spline across the scans of
    an ``evaluate_real.py`` table (empty when the table or the model's rows are missing)."""
    try:
        rows = parse_json(table.read_text(encoding="utf-8"))["rows"]
        gains: dict[str, list[float]] = {}
        for r in rows:
            if r["method"] == method:
                gains.setdefault(str(r["condition"]), []).append(float(r["gain_db"]))
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {c: (sum(g) / len(g), min(g)) for c, g in gains.items()}


def _psnr(method: str, table: Path, region: str) -> dict[str, tuple[float, float]]:
    """``{condition: (model PSNR, spline PSNR)}`` for ``method`` in ``region`` of an
    ``evaluate.py`` table (empty when the table or the model's rows are missing)."""
    try:
        rows = parse_json(table.read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError):
        return {}
    psnr = {(r["condition"], r["method"]): r["psnr"] for r in rows if r.get("region") == region}
    return {condition: (value, psnr[condition, "cubic spline"])
            for (condition, method_name), value in psnr.items()
            if method_name == method and (condition, "cubic spline") in psnr}
