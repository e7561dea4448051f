"""Batch jobs: find the inputs, name each output below the output folder, share the jobs
out between processes."""

from __future__ import annotations

import dataclasses
import os
import string
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from srrecnn_jax.errors import SrrecnnError
from srrecnn_jax.files import is_list_file, read_list_file, split_name
from srrecnn_jax.images import is_dicom_series


@dataclasses.dataclass(frozen=True)
class Job:
    """One volume to super-resolve: an image file or a DICOM series folder."""

    input: Path
    output: Path
    reference: Path | None = None



def collect_inputs(sources: Sequence[Path], glob: str = "*.nii*",
                   exclude: Callable[[Path], bool] = lambda p: False) -> list[tuple[Path, Path]]:
    """Expand paths, folders (recursive ``glob``), list files and DICOM folders.

    Returns:
      ``(input, root)`` pairs, in a stable order; an output mirrors the input's
      place below ``root``. Missing paths are kept: they fail as jobs, so one
      bad entry does not stop the batch.
    """
    found: list[tuple[Path, Path]] = []
    for source in sources:
        if source.is_file() and is_list_file(source):
            found += [(p, p.parent) for p in read_list_file(source)]
        elif source.is_dir() and is_dicom_series(source):
            found.append((source, source.parent))
        elif source.is_dir():
            files = [p for p in source.rglob(glob) if p.is_file()]
            folders = [p for p in source.rglob("*") if p.is_dir() and is_dicom_series(p)]
            found += [(p, source) for p in sorted(files + folders)
                      if not exclude(p) and not any(part.startswith(".tmp-")
                                                    for part in p.relative_to(source).parts)]
        else:
            found.append((source, source.parent))
    unique, seen = [], set()
    for path, root in found:  # the same file named twice (a folder and a file in it)
        key = path.resolve() if path.exists() else path
        if key not in seen:
            seen.add(key)
            unique.append((path, root))
    return unique


#: The fields an output template may name.
TEMPLATE_FIELDS = ("dir", "stem", "ext", "suffix")


def check_template(template: str) -> None:
    """Refuse an output template naming anything but ``TEMPLATE_FIELDS`` as plain fields:
    ``{stem.__class__}`` or ``{stem[0]}`` reach into Python objects, and ``{0}`` is no
    field of ours."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as e:
        raise SrrecnnError(f"{template!r} is not valid ({e})", "output_template") from None
    for field in fields:
        if field not in TEMPLATE_FIELDS:
            raise SrrecnnError(f"{template!r}: {{{field}}} is not a field (use "
                               f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})",
                               "output_template")


def plan_jobs(inputs: Iterable[tuple[Path, Path]], out_dir: Path, suffix: str = "_SR",
              template: str | None = None, reference_pattern: str | None = None) -> list[Job]:
    """Name each output below ``out_dir`` and pair each input with its reference.

    Outputs mirror the input's folder below its root and add ``suffix`` before
    the extension, or follow ``template`` (fields ``{dir}``, ``{stem}``,
    ``{ext}``, ``{suffix}``). ``reference_pattern`` ``OLD:NEW`` replaces OLD by
    NEW in the input's file name to find its reference (``T1w:T2w``).

    Output paths are normalised (``a/../b`` is ``b``) and must stay inside
    ``out_dir``; two inputs whose outputs are one file (after normalising and
    following symbolic links) are refused, before any work.
    """
    if template is not None:
        check_template(template)
    if reference_pattern is not None and (":" not in reference_pattern
                                          or not reference_pattern.split(":", 1)[0]):
        raise SrrecnnError(f"{reference_pattern!r} is not OLD:NEW", "reference_pattern")
    inside = os.path.abspath(out_dir)
    jobs, seen = [], {}
    for path, root in inputs:
        stem, ext = split_name(path)
        try:
            folder = path.parent.relative_to(root)
        except ValueError:
            folder = Path()
        if template:
            try:
                name = template.format(dir=folder, stem=stem, ext=ext, suffix=suffix)
            except (KeyError, IndexError, ValueError) as e:
                raise SrrecnnError(f"{template!r} is not valid ({e})", "output_template") \
                    from None
        else:
            name = str(folder / f"{stem}{suffix}{ext}")
        output = Path(os.path.normpath(out_dir / name))
        where = os.path.abspath(output)
        if os.path.commonpath([inside, where]) != inside or where == inside:
            what, parameter = (template, "output_template") if template else (suffix, "suffix")
            raise SrrecnnError(f"{what!r} puts the output of {path} at {output}, outside the "
                               f"output folder {out_dir}", parameter)
        reference = None
        if reference_pattern:
            old, new = reference_pattern.split(":", 1)
            if old not in path.name:
                raise SrrecnnError(f"{old!r} is not in {path}", "reference_pattern")
            reference = path.with_name(path.name.replace(old, new, 1))
        key = os.path.realpath(output)
        if key in seen:
            raise SrrecnnError(f"{path}: its output {output} is also the output of {seen[key]}")
        seen[key] = path
        jobs.append(Job(path, output, reference))
    return jobs


def check_inputs_kept(jobs: Sequence[Job], manifest: Path | None = None) -> None:
    """Refuse a plan that would write over one of its inputs or references: an output or
    the manifest that is (following symbolic links) one of them, before any work."""
    sources = {}
    for job in jobs:
        for path in (job.input, job.reference):
            if path is not None:
                sources.setdefault(os.path.realpath(path), path)
    outputs = {}
    for job in jobs:
        victim = sources.get(os.path.realpath(job.output))
        if victim is not None:
            raise SrrecnnError(f"{job.output}: the output of {job.input} would replace the "
                               f"input {victim}")
        outputs[os.path.realpath(job.output)] = job
    if manifest is not None:
        key = os.path.realpath(manifest)
        if key in sources:
            raise SrrecnnError(f"{manifest}: the manifest would replace the input "
                               f"{sources[key]}", "manifest")
        if key in outputs:
            raise SrrecnnError(f"{manifest}: the manifest would replace the output of "
                               f"{outputs[key].input}", "manifest")


def plan(sources: Sequence[Path], out_dir: Path, glob: str = "*.nii*", suffix: str = "_SR",
         template: str | None = None, reference_pattern: str | None = None,
         process: int = 0, count: int = 1, manifest: Path | None = None) -> list[Job]:
    """This process's jobs: inputs found in ``sources`` (outputs inside ``out_dir`` are never
    inputs), named by ``plan_jobs``, checked by ``check_inputs_kept`` (``manifest``: the
    manifest's path), shared out by ``shard``."""
    inside_out = Path(os.path.realpath(out_dir))  # realpath: no error on a link loop
    inputs = collect_inputs(sources, glob,
                            exclude=lambda p: inside_out in Path(os.path.realpath(p)).parents)
    if not inputs:
        raise SrrecnnError(f"{' '.join(map(str, sources))}: no input images found "
                           f"(file pattern {glob!r})")
    jobs = plan_jobs(inputs, out_dir, suffix, template, reference_pattern)
    check_inputs_kept(jobs, manifest)
    return shard(jobs, process, count)


def shard(jobs: Sequence[Job], index: int, count: int) -> list[Job]:
    """The jobs of process ``index`` of ``count``: every count-th, in sorted order."""
    return sorted(jobs, key=lambda j: str(j.input))[index::count]
