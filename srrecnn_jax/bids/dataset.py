"""The derivative dataset's own files: ``dataset_description.json``, ``README.md``,
``CITATION.cff`` and ``.bidsignore`` (what the validator must not read: the QC pages,
their figures, the work folder with the manifest)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax.bids.naming import RAW
from srrecnn_jax.catalog import CARD
from srrecnn_jax.writing import write_text_atomic

#: The BIDS version the outputs follow (that of the validator's schema when written).
BIDS_VERSION = "1.10.0"
PAPER = {"authors": ["Chi-Hieu Pham", "Carlos Tor-Díez", "Hélène Meunier",
                     "Nathalie Bednarek", "Ronan Fablet", "Nicolas Passat",
                     "François Rousseau"],
         "title": "Multiscale brain MRI super-resolution using deep 3D convolutional "
                  "networks",
         "journal": "Computerized Medical Imaging and Graphics", "volume": 77,
         "year": 2019, "article": "101647", "doi": "10.1016/j.compmedimag.2019.101647"}


def raw_link(bids_dir: Path, out_dir: Path) -> str:
    """Where the raw dataset is, seen from the derivative one: a relative path when the
    output lies inside it (``BIDS_DIR/derivatives/srrecnn``), else a ``file://`` URI."""
    raw, out = os.path.realpath(bids_dir), os.path.realpath(out_dir)
    if os.path.commonpath([raw, out]) == raw:
        return Path(os.path.relpath(raw, out)).as_posix()
    return Path(raw).as_uri()


def description(bids_dir: Path, out_dir: Path, version: str, command_line: str) -> dict:
    """``dataset_description.json`` of the derivative dataset: what made it (the exact
    command line in ``GeneratedBy``'s ``Description``) from which raw dataset. No
    ``Authors``: ``CITATION.cff`` says whom to cite, and the validator refuses both."""
    return {"Name": "srrecnn-jax super-resolution", "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "srrecnn-jax", "Version": version,
                             "Description": command_line}],
            "SourceDatasets": [{"URL": f"bids:{RAW}:"}],
            "DatasetLinks": {RAW: raw_link(bids_dir, out_dir)}}


def readme(models: Sequence[str]) -> str:
    """The dataset's README: what the outputs are, what to cite, which model card."""
    cards = "\n".join(f"- `{m}`: its model card, `checkpoints/{m.replace('-', '_')}/README.md`"
                      f" in srrecnn-jax" for m in models) or "- (none recorded yet)"
    p = PAPER
    return f"""# srrecnn-jax super-resolution

Anatomical scans of the raw dataset (`DatasetLinks.raw` in `dataset_description.json`)
super-resolved by SRReCNN3D, a residual 3-D convolutional network, with srrecnn-jax.
Each output `*_res-<label>_desc-srrecnn_<suffix>.nii.gz` has a JSON sidecar: its
`Sources` (BIDS URIs of the input and, for a two-channel model, its T2w reference),
`Resolution` (what the `res-` label means) and the run's facts (`Srrecnn*` fields:
model, its SHA-256, scale, precision, the input's noise estimate, the self-check's
predicted gain over cubic spline, warnings).

The QC pages (`sub-<label>.html`, `index.html`, `figures/`) and `srrecnn_work/` (the
batch manifest, one JSON line per job and run) are listed in `.bidsignore`.

Models used:

{cards}

A network restores noise as if it were detail: check each output's
`SrrecnnSelfCheckGainDb` and warnings before trusting it over cubic spline.

## Citation

{', '.join(p['authors'])}. "{p['title']}". *{p['journal']}* {p['volume']} ({p['year']}):
{p['article']}. doi:{p['doi']}
"""


def citation(version: str) -> str:
    """``CITATION.cff``: the software, and the paper as its preferred citation."""
    p = PAPER

    def authors(indent: str) -> str:
        return "".join(f'{indent}- family-names: "{a.rsplit(" ", 1)[1]}"\n'
                       f'{indent}  given-names: "{a.rsplit(" ", 1)[0]}"\n'
                       for a in p["authors"])

    return f"""cff-version: 1.2.0
message: "If you use these outputs, please cite the paper below."
title: "srrecnn-jax"
version: "{version}"
type: software
authors:
  - name: "srrecnn-jax contributors"
preferred-citation:
  type: article
  title: "{p['title']}"
  journal: "{p['journal']}"
  volume: {p['volume']}
  year: {p['year']}
  start: "{p['article']}"
  doi: "{p['doi']}"
  authors:
{authors('    ')}"""


#: What the validator must not read (gitignore patterns; bids-validator-deno 3.0.2 matches
#: a folder's name without a trailing slash only).
BIDSIGNORE = ["*.html", "figures", "srrecnn_work", "srrecnn_manifest*.jsonl"]


def write_dataset_files(out_dir: Path, bids_dir: Path, version: str, command_line: str,
                        models: Sequence[str], work_dir: Path | None = None) -> None:
    """Write (atomically) the dataset's own files; ``work_dir``, when inside ``out_dir``,
    is added to ``.bidsignore``."""
    ignore = list(BIDSIGNORE)
    if work_dir is not None:
        inside = os.path.relpath(os.path.realpath(work_dir), os.path.realpath(out_dir))
        if not inside.startswith("..") and Path(inside).as_posix() not in ignore:
            ignore.append(Path(inside).as_posix())
    write_text_atomic(out_dir / "dataset_description.json",
                      json.dumps(description(bids_dir, out_dir, version, command_line),
                                 indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(out_dir / "README.md", readme(models))
    write_text_atomic(out_dir / "CITATION.cff", citation(version))
    write_text_atomic(out_dir / ".bidsignore", "\n".join(ignore) + "\n")


def model_name(model: Path) -> tuple[str, bool]:
    """A model's name for the sidecars, and whether it is a shipped one (whose card is
    ``checkpoints/<name>/README.md``): a shipped model's folder is ``<name>/model``."""
    if model.name == "model" and (model.parent / CARD).is_file():
        return model.parent.name.replace("_", "-"), True
    return str(model), False


def is_ours(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a derivative dataset that ``srrecnn bids`` wrote."""
    try:
        described = json.loads((out_dir / "dataset_description.json").read_text("utf-8"))
        return any(g.get("Name") == "srrecnn-jax" for g in described.get("GeneratedBy", []))
    except (OSError, ValueError, AttributeError, TypeError):
        return False
