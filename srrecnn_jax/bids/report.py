"""The QC report: one HTML page per subject (``sub-01.html``, as fMRIPrep writes them)
with each output's montage, sidecar numbers and warnings, and at group level an
``index.html`` table of every output and error, sortable by its headers."""

from __future__ import annotations

import dataclasses
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax.bids.sidecars import sidecar_path
from srrecnn_jax.writing import write_text_atomic

#: Where each subject's figures go, below the output folder.
FIGURES = "sub-{subject}/figures"
#: The group's gains plot, below the output folder.
GAINS = "figures/self_check_gains.png"


@dataclasses.dataclass
class Entry:
    """One input's line in the report: its entities, what became of it (``status``:
    ``ok``, ``error``, ``not-started``), its output and sidecar (relative to the output
    folder), the sidecar's facts, the error, and the montage (relative)."""

    input: str
    subject: str
    session: str | None
    suffix: str
    status: str
    output: str | None = None
    facts: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    figure: str | None = None

    @property
    def warnings(self) -> list[str]:
        return list(self.facts.get("SrrecnnWarnings") or [])


def entries(rows: Sequence[dict], out_dir: Path) -> list[Entry]:
    """The report's entries from the manifest's rows (oldest first): each input's latest
    row; a written or kept output's facts read from its sidecar."""
    from bids.layout import parse_file_entities

    latest: dict[str, dict] = {}
    for row in rows:
        latest[row.get("input", "")] = row
    found = []
    for path, row in sorted(latest.items()):
        entities = parse_file_entities(path)
        status = "ok" if row.get("status") in ("ok", "skipped") else str(row.get("status"))
        entry = Entry(path, str(entities.get("subject", "?")), entities.get("session"),
                      str(entities.get("suffix", "?")), status, error=row.get("error"))
        output = Path(row.get("output", ""))
        if status == "ok":
            try:
                entry.facts = json.loads(sidecar_path(output).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                entry.status, entry.error = "error", f"{sidecar_path(output)}: no sidecar"
            entry.output = Path(os.path.relpath(output, out_dir)).as_posix()
            entry.figure = f"{FIGURES.format(subject=entry.subject)}/{figure_name(output)}"
        found.append(entry)
    return found


def figure_name(output: Path) -> str:
    """The montage's file name of an output."""
    return output.name.split(".", 1)[0] + "_montage.png"


def _number(value, digits: str = ".2f") -> str:
    return "" if value is None else format(value, digits)


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1200px}
table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px}
th{background:#eee;cursor:pointer;text-align:left}td.num{text-align:right}
.error{color:#a00}.warn{color:#850}img{max-width:100%}
section{border-top:2px solid #888;margin-top:1.5em}"""

SORT = """<script>
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], up = th.dataset.up !== '1';
  th.dataset.up = up ? '1' : '0';
  const key = r => { const t = r.cells[col].innerText.trim(), n = parseFloat(t);
                     return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (x > y ? 1 : x < y ? -1 : 0) * (up ? 1 : -1); }).forEach(r => body.appendChild(r));
}));
</script>"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


FACTS = [("SrrecnnModel", "model", None), ("SrrecnnScale", "scale", None),
         ("SrrecnnInputVoxelSize", "input voxel (mm)", None),
         ("SrrecnnOutputVoxelSize", "output voxel (mm)", None),
         ("SrrecnnNoisePercent", "noise (% of max)", ".3g"),
         ("SrrecnnSelfCheckGainDb", "self-check gain over spline (dB)", "+.2f"),
         ("SrrecnnSelfCheckPsf", "self-check acquisition", None),
         ("SrrecnnFalloff", "spectral fall-off", ".3g"),
         ("SrrecnnAdapt", "fine-tuning on the scan", "adapt"),
         ("SrrecnnAcquisition", "data consistency with the input's acquisition", None),
         ("SrrecnnPrecision", "precision", None), ("SrrecnnCeiling", "ceiling", None),
         ("SrrecnnModelSHA256", "model SHA-256", None), ("SrrecnnVersion", "srrecnn-jax", None),
         ("Sources", "sources", None)]


def _shown(value, digits: str | None) -> str:
    if value is None:
        return "none"
    if digits == "adapt":
        return _adapt_line(value)
    if digits and isinstance(value, (int, float)):
        return format(value, digits)
    if isinstance(value, list):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def _adapt_line(facts: dict) -> str:
    """A sidecar's ``SrrecnnAdapt`` in one line: the verdict, steps, time and held-out
    PSNRs."""
    psnr = facts.get("HeldoutPsnrDb") or {}
    shown = ", ".join(f"{k.lower()} {v:.2f}" for k, v in psnr.items() if v is not None)
    verdict = "adapted weights used" if facts.get("Kept") else "model used unchanged"
    return (f"{verdict}: {facts.get('Steps')} steps in {facts.get('Seconds')} s of a "
            f"{facts.get('BudgetSeconds')} s budget; held-out PSNR (dB) {shown or 'none'}")


def _section(entry: Entry) -> str:
    """One output's (or error's) part of its subject page."""
    name = html.escape(entry.output or entry.input)
    if entry.status != "ok":
        return (f"<section><h2 class=\"error\">{name}: {html.escape(entry.status)}</h2>"
                f"<p class=\"error\">{html.escape(entry.error or 'not made')}</p></section>")
    rows = "".join(f"<tr><th>{label}</th><td>{html.escape(_shown(entry.facts.get(key), d))}"
                   "</td></tr>" for key, label, d in FACTS)
    warnings = "".join(f"<li class=\"warn\">{html.escape(w)}</li>" for w in entry.warnings)
    return (f"<section><h2>{name}</h2><p>From <code>{html.escape(entry.input)}</code>. "
            "Columns: the input zoomed by cubic spline, the SR output, and their "
            "difference (x4).</p>"
            f"<img src=\"{html.escape(entry.figure or '')}\" alt=\"montage of {name}\">"
            f"<table>{rows}</table><h3>Warnings</h3>"
            f"<ul>{warnings or '<li>none</li>'}</ul></section>")


def subject_page(subject: str, found: Sequence[Entry]) -> str:
    """The HTML page of one subject: every output of it, and every error."""
    mine = [e for e in found if e.subject == subject]
    body = (f"<p><a href=\"index.html\">all subjects</a> &middot; {len(mine)} scans, "
            f"{sum(e.status != 'ok' for e in mine)} failed</p>"
            + "".join(_section(e) for e in mine))
    return _page(f"sub-{subject}: srrecnn super-resolution", body)


def index_page(found: Sequence[Entry], gains: str | None) -> str:
    """The group's HTML page: a table of every output and error (click a header to sort)
    and the plot of the self-check gains."""
    head = ["subject", "session", "suffix", "output", "self-check gain (dB)", "noise (%)",
            "status", "warnings", "page"]
    lines = []
    for e in found:
        cells = [e.subject, e.session or "", e.suffix, e.output or e.input,
                 _number(e.facts.get("SrrecnnSelfCheckGainDb"), "+.2f"),
                 _number(e.facts.get("SrrecnnNoisePercent"), ".3g"), e.status,
                 str(len(e.warnings)) if e.status == "ok" else e.error or ""]
        shown = "".join(f"<td{' class=num' if i in (4, 5) else ''}>{html.escape(c)}</td>"
                        for i, c in enumerate(cells))
        link = f"<td><a href=\"sub-{html.escape(e.subject)}.html\">sub-" \
               f"{html.escape(e.subject)}</a></td>"
        klass = "" if e.status == "ok" else " class=\"error\""
        lines.append(f"<tr{klass}>{shown}{link}</tr>")
    table = (f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
             f"<tbody>{''.join(lines)}</tbody></table>")
    failed = sum(e.status != "ok" for e in found)
    plot = f"<h2>Self-check gains</h2><img src=\"{gains}\" alt=\"self-check gains\">" \
        if gains else ""
    body = (f"<p>{len(found)} scans, {failed} failed. Click a column's header to sort by "
            "it. The self-check predicts, from the input alone, whether the model beats "
            f"cubic spline on it (a negative gain: it is predicted to lose).</p>{table}"
            f"{plot}{SORT}")
    return _page("srrecnn super-resolution: all outputs", body)


def write_subject_pages(out_dir: Path, found: Sequence[Entry],
                        subjects: Sequence[str]) -> list[Path]:
    """Write ``sub-<label>.html`` of each of ``subjects`` (atomically); returns them."""
    pages = []
    for subject in sorted(set(subjects)):
        page = out_dir / f"sub-{subject}.html"
        write_text_atomic(page, subject_page(subject, found))
        pages.append(page)
    return pages


def write_index(out_dir: Path, found: Sequence[Entry], gains: str | None) -> Path:
    """Write ``index.html`` (atomically)."""
    page = out_dir / "index.html"
    write_text_atomic(page, index_page(found, gains))
    return page
