"""Writing files so that no name ever holds a half-written one: atomic outputs, and
images read back (a short write is an error) before they are moved into place."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from srrecnn_jax.errors import OutputExistsError, SrrecnnError
from srrecnn_jax.files import sitk_name
from srrecnn_jax.nifti import check_nifti_complete


@contextlib.contextmanager
def atomic_output(path: str | Path, staging_root: Path | None = None,
                  verify: Callable[[Path], None] | None = None,
                  replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; move it into place on success.

    The temporary path has ``path``'s own name, in a fresh hidden folder beside
    ``path`` (or in ``staging_root``, on the same file system), so writers that
    pick a format by the name (SimpleITK, matplotlib) and two-file formats
    (``.hdr``/``.img``, ``.mhd``/``.raw``) work unchanged. When the block ends
    without an error, ``verify`` (if given) checks the staged file, then every
    file written there is moved into place, the named one last. With
    ``replace`` (the default) an existing file or folder is replaced; without
    it, nothing that exists is ever replaced, even one that appeared while the
    content was written (another run): the files are linked into place, which
    fails if the name is taken, and that ends in ``OutputExistsError`` with the
    existing files untouched. On any error nothing is left behind, and an
    ``OSError`` (a full disk, a read-only folder) becomes a ``SrrecnnError``
    naming ``path``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise SrrecnnError(f"{path}: folder {path.parent} does not exist")
    try:
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=staging_root or path.parent))
    except OSError as e:
        raise SrrecnnError(f"{path}: cannot write in {path.parent} ({e.strerror})") from None
    try:
        staged = staging / path.name
        yield staged
        if verify is not None:
            verify(staged)
        placed: list[Path] = []
        try:
            for written in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
                target = path.parent / written.name
                if not replace:
                    _place_new(written, target)
                    placed.append(target)
                    continue
                if written.is_dir() and target.is_dir():
                    os.replace(target, staging / f".old-{written.name}")  # removed below
                os.replace(written, target)
        except FileExistsError:
            for target in placed:  # ours: the names were free until we took them
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            raise OutputExistsError(f"{path}: already exists") from None
    except OSError as e:
        raise SrrecnnError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place_new(staged: Path, target: Path) -> None:
    """Move ``staged`` to ``target`` unless ``target`` exists (``FileExistsError``), with no
    window in which another writer's file could be replaced.

    A file is hard-linked into place (the link fails if the name is taken), then its
    staged name removed. Where links are unsupported (some network and FAT file
    systems), and for a folder, the name is first claimed by creating it exclusively
    (an empty file or folder, for an instant) and the content renamed over the claim.
    """
    if staged.is_dir():
        os.mkdir(target)
        os.rename(staged, target)  # a folder replaces the empty folder we made
        return
    try:
        os.link(staged, target)
    except FileExistsError:
        raise
    except OSError:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.replace(staged, target)
        return
    os.unlink(staged)


def write_image_atomic(image: sitk.Image, path: str | Path,
                       staging_root: Path | None = None, replace: bool = True) -> None:
    """Write an image so that ``path`` never exists half-written (see ``atomic_output``;
    ``replace=False`` never replaces an existing file, even one made meanwhile).

    SimpleITK's writers do not report a full disk, so the staged file is read
    back before the rename (``check_written_image``): a short write of any
    format is an error, and nothing is left at ``path``.
    """
    path = Path(path)

    def verify(staged: Path) -> None:
        check_written_image(staged, image, path)

    sitk_name(path)
    with atomic_output(path, staging_root, verify, replace) as staged:
        try:
            sitk.WriteImage(image, sitk_name(staged))
        except RuntimeError:
            raise SrrecnnError(f"{path}: cannot write image (SimpleITK failed: unknown "
                               "extension, unwritable location, or is the disk full?)") from None


def check_written_image(written: Path, image: sitk.Image, name: str | Path) -> None:
    """Refuse an image file that does not hold all of ``image``: a short write.

    Its header is read back with SimpleITK (size and components must be
    ``image``'s), and its voxel data, wherever the format keeps it (the same
    file after the header, or a ``.raw``/``.img`` file beside it; decompressed
    when compressed), must be at least size x pixel bytes long.
    """
    def short(why: str) -> SrrecnnError:
        return SrrecnnError(f"{name}: cannot write image: it came out truncated ({why}; "
                            "is the disk full?)")

    reader = sitk.ImageFileReader()
    reader.SetFileName(sitk_name(written))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise short("its header cannot be read back") from None
    if (tuple(reader.GetSize()) != tuple(image.GetSize())
            or reader.GetNumberOfComponents() != image.GetNumberOfComponentsPerPixel()):
        raise short(f"its header says {reader.GetSize()} voxels, not {image.GetSize()}")
    if written.name.endswith((".nii", ".nii.gz")):
        try:
            check_nifti_complete(written, "written image", to_end=True)
        except SrrecnnError:
            raise short("voxel data cut short") from None
        return
    expected = (int(np.prod(image.GetSize())) * image.GetNumberOfComponentsPerPixel()
                * image.GetSizeOfPixelComponent())
    layout = _data_layout(written)
    if layout is None:
        return  # an encoding we never write (ascii, bzip2): SimpleITK read its header
    data_file, offset, encoding = layout
    try:
        length = _data_length(data_file, offset, encoding, expected)
    except (OSError, EOFError, zlib.error):
        length = -1
    if length < expected:
        raise short(f"{max(length, 0)} bytes of voxel data, {expected} expected")


def stored_bytes(path: Path) -> int:
    """The bytes an image file takes with its detached voxel data, if any (the ``.img``
    of a ``.hdr``, the ``.raw`` of a ``.mhd``, the data file of a ``.nhdr``): what a
    rerun compares with the size recorded when it was written. Raises ``OSError``."""
    size = path.stat().st_size
    layout = None if path.name.endswith((".nii", ".nii.gz")) else _data_layout(path)
    if layout is not None and layout[0] != path:
        size += layout[0].stat().st_size
    return size


def _text_header(path: Path, sep: str,
                 end: Callable[[bytes], bool]) -> tuple[dict[str, str], int]:
    """The ``key SEP value`` lines of a text header up to the line ``end`` accepts
    (included), keys in lower case, and the byte offset just after that line."""
    fields, offset = {}, 0
    with open(path, "rb") as f:
        for line in iter(lambda: f.readline(1 << 16), b""):
            offset += len(line)
            text = line.decode("latin-1").strip()
            key, found, value = text.partition(sep)
            if found:
                fields.setdefault(key.strip().lower(), value.strip())
            if end(line):
                break
    return fields, offset


def _data_layout(path: Path) -> tuple[Path, int, str] | None:
    """Where an image file we write keeps its voxels: (data file, byte offset in it,
    ``raw``/``gzip``/``zlib``); None for an encoding we do not check."""
    name = path.name
    if name.endswith(".hdr"):  # NIfTI-1 pair or Analyze: voxels in .img at vox_offset
        with open(path, "rb") as f:
            header = f.read(348)
        offset = 0
        for endian in "<>":
            if len(header) == 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
                offset = int(struct.unpack(endian + "f", header[108:112])[0])
        return path.with_suffix(".img"), offset, "raw"
    if name.endswith((".nrrd", ".nhdr")):  # header ends at the first blank line
        fields, offset = _text_header(path, ":", lambda line: line in (b"\n", b"\r\n"))
        encoding = {"raw": "raw", "gzip": "gzip", "gz": "gzip"}.get(fields.get("encoding", ""))
        detached = fields.get("data file") or fields.get("datafile")
        if encoding is None or (detached and " " in detached):  # lists and patterns: skip
            return None
        return (path.parent / detached, 0, encoding) if detached else (path, offset, encoding)
    if name.endswith((".mha", ".mhd")):  # header ends with the ElementDataFile line
        fields, offset = _text_header(
            path, "=", lambda line: line.split(b"=")[0].strip().lower() == b"elementdatafile")
        detached = fields.get("elementdatafile", "LOCAL")
        encoding = "zlib" if fields.get("compresseddata", "False").lower() == "true" else "raw"
        if detached != "LOCAL":
            if " " in detached or detached == "LIST":
                return None
            return path.parent / detached, 0, encoding
        return path, offset, encoding
    return None


def _data_length(path: Path, offset: int, encoding: str, enough: int) -> int:
    """Bytes of voxel data from ``offset`` of ``path`` (decompressed), counted up to ``enough``."""
    with open(path, "rb") as f:
        if encoding == "raw":
            return os.fstat(f.fileno()).st_size - offset
        f.seek(offset)
        length = 0
        if encoding == "gzip":
            with gzip.GzipFile(fileobj=f) as stream:
                while length < enough and (chunk := stream.read(1 << 22)):
                    length += len(chunk)
            return length
        inflate = zlib.decompressobj()
        while length < enough and (chunk := f.read(1 << 22)):
            length += len(inflate.decompress(chunk))
        return length


def write_text_atomic(path: str | Path, text: str, replace: bool = True) -> None:
    """Write a text file (UTF-8) under a temporary name, then rename (see ``atomic_output``)."""
    with atomic_output(path, replace=replace) as staged:
        staged.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | Path, data: bytes, replace: bool = True) -> None:
    """Write a binary file under a temporary name, then rename (see ``atomic_output``)."""
    with atomic_output(path, replace=replace) as staged:
        staged.write_bytes(data)


def write_image_verified(image: sitk.Image, path: str | Path, staging_root: Path | None = None,
                         before_rename: Callable[[Path], None] | None = None) -> None:
    """Write an image atomically (see ``atomic_output``) after reading it back whole.

    SimpleITK's writers do not report a full disk, so the staged file is checked
    before the rename: a NIfTI file by its length against its header (as
    ``read_image``), any other format by reading every voxel (their readers fail on
    short data). ``before_rename`` (if given) then sees the staged file.
    """
    path = Path(path)
    sitk_name(path)
    with atomic_output(path, staging_root) as staged:
        try:
            sitk.WriteImage(image, sitk_name(staged))
        except RuntimeError:
            raise SrrecnnError(f"{path}: cannot write image (unknown extension or "
                               "unwritable location)") from None
        try:
            if staged.name.endswith((".nii", ".nii.gz")):
                check_nifti_complete(staged, "written image", to_end=True)
            else:
                sitk.ReadImage(sitk_name(staged))
        except (SrrecnnError, RuntimeError):
            raise SrrecnnError(f"{path}: cannot write image: it does not read back whole "
                               "(is the disk full?)") from None
        if before_rename is not None:
            before_rename(staged)
