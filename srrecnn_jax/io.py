"""Images in and out: SimpleITK at the edges, NumPy arrays in (x, y, z) order inside.

SimpleITK's ``GetArrayFromImage`` returns (z, y, x); the original release
swapped that to (x, y, z) and its Caffe weights assume it, so every array in
this package is (x, y, z): ``to_array`` and ``to_image`` are the only places
that transpose.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from srrecnn_jax.errors import OutputExistsError, SrrecnnError

#: Image file name endings SimpleITK reads and writes here, longest first so that
#: ``.nii.gz`` wins over ``.nii``. SimpleITK picks its writer by the (case-sensitive)
#: ending, so these are matched in lower case exactly.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")
#: Text files listing paths, one per line (``#`` starts a comment line).
LIST_SUFFIXES = (".txt", ".lst")


#: The most voxels one image may have, input or output, whatever the memory: 2^32 (a
#: 1625^3 volume; 16 GiB as float32).
MAX_VOXELS = 2**32


def memory_bytes() -> int:
    """The memory one process may use: the machine's physical memory, or the cgroup
    (container) limit when that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def size_problem(voxels: float, bytes_per_voxel: float) -> str | None:
    """Why an image of ``voxels`` voxels, needing ``bytes_per_voxel`` bytes of memory each,
    cannot be handled here (more than ``MAX_VOXELS``, or than ``memory_bytes()``), or
    None when it can."""
    if not voxels <= MAX_VOXELS:
        return f"more than the {MAX_VOXELS:,} voxels supported"
    need, have = voxels * bytes_per_voxel, memory_bytes()
    if need > have:
        return (f"needing about {need / 2**30:.3g} GiB of memory, more than the "
                f"{have / 2**30:.3g} GiB of this machine")
    return None


def size_text(size: Sequence[float]) -> str:
    """``8x7x6``: an image size, each entry rounded to a whole number when finite."""
    return "x".join(f"{round(n)}" if np.isfinite(n) else f"{n}" for n in size)


def is_image_name(path: str | Path) -> bool:
    return Path(path).name.endswith(IMAGE_SUFFIXES)


def is_list_file(path: str | Path) -> bool:
    return Path(path).name.endswith(LIST_SUFFIXES)


def split_name(path: Path) -> tuple[str, str]:
    """``a.nii.gz`` -> (``a``, ``.nii.gz``); a DICOM folder -> (its name, ``.nii.gz``)."""
    for suffix in IMAGE_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[:-len(suffix)], suffix
    if path.is_dir():
        return path.name, ".nii.gz"
    return path.stem, path.suffix or ".nii.gz"


def printable(path: str | Path) -> str:
    """``path`` for a message: bytes of its name that are not UTF-8 shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _sitk_name(path: str | Path) -> str:
    """``path`` as SimpleITK takes it. SimpleITK aborts the whole process (it does not
    raise) on a name that is not valid UTF-8, such as a Latin-1 name on a UTF-8 system,
    so such a name is refused here: a ``SrrecnnError`` naming it."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SrrecnnError(f"{printable(path)}: file name is not valid UTF-8, which SimpleITK "
                           "cannot open; rename it") from None
    return text


def read_list_file(path: Path) -> list[Path]:
    """The paths listed in a text file, one per line; blank lines and ``#`` lines skipped.

    Relative paths are relative to the list file's folder (as Caffe's
    ``train.txt`` is read), not to the working directory.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SrrecnnError(f"{path}: no such list file") from None
    except UnicodeDecodeError:
        raise SrrecnnError(f"{path}: list file is not UTF-8 text") from None
    except OSError as e:
        raise SrrecnnError(f"{path}: cannot read list file ({e.strerror})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    return [Path(ln) if Path(ln).is_absolute() else path.parent / ln
            for ln in lines if ln and not ln.startswith("#")]


def check_output_file(output: Path, force: bool, inputs: Sequence[Path] = (),
                      image: bool = True) -> None:
    """Refuse, before any work, an output we could not or should not write.

    An image output needs a known (lower-case) suffix; no output may be one of
    ``inputs``; an existing one needs ``force``; its folder must exist.
    """
    if image and not is_image_name(output):  # SimpleITK is case-sensitive
        raise SrrecnnError(f"{output}: unknown image format; use one of "
                           f"{', '.join(IMAGE_SUFFIXES)} (lower case)")
    if any(os.path.realpath(output) == os.path.realpath(p) for p in inputs):  # no loop error
        raise SrrecnnError(f"{output}: output would replace an input")
    if output.exists() and not force:
        raise OutputExistsError(f"{output}: already exists")
    if not output.parent.is_dir():
        raise SrrecnnError(f"{output}: folder {output.parent} does not exist")


def missing_file(path: Path, role: str) -> SrrecnnError:
    """The error for a ``path`` that does not lead to a file: a symbolic link loop, a
    broken symbolic link, or nothing there."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return SrrecnnError(f"{path}: is a symbolic link loop (it leads to no {role} "
                                "file)")
    if path.is_symlink():
        return SrrecnnError(f"{path}: is a broken symbolic link (to {os.readlink(path)}; "
                            f"no {role} file there)")
    return SrrecnnError(f"{path}: no such {role} file")


def read_image(path: str | Path, role: str = "image") -> sitk.Image:
    """Read a scalar 3-D image; raise ``SrrecnnError`` naming ``path`` otherwise."""
    path = Path(path)
    if not path.exists():
        raise missing_file(path, role)
    if path.is_dir():
        raise SrrecnnError(f"{path}: is a folder, expected a {role} file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(_sitk_name(path))
    try:
        reader.ReadImageInformation()  # the header only: check the size before the voxels
        _check_declared_size(reader, path, role)
        image = reader.Execute()
    except RuntimeError:
        raise SrrecnnError(f"{path}: unreadable or corrupt {role} (SimpleITK could not read it)") \
            from None
    check_image(image, str(path))
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path, role)
    return image


def _check_declared_size(reader: sitk.ImageFileReader, path: Path, role: str) -> None:
    """Refuse, from its header alone, an image whose voxels would not fit this machine (a
    small compressed file can declare, or decompress to, gigabytes): reading it holds the
    image, its array and the float32 array made from it."""
    size = reader.GetSize()
    components = reader.GetNumberOfComponents()
    pixel = sitk.Image([1] * len(size), reader.GetPixelID(), components)
    bytes_per_voxel = components * (2 * pixel.GetSizeOfPixelComponent() + 4)
    problem = size_problem(float(np.prod([float(n) for n in size])), bytes_per_voxel)
    if problem:
        raise SrrecnnError(f"{path}: {role} of {size_text(size)} voxels "
                           f"({pixel.GetPixelIDTypeAsString()}), {problem}")


def _check_nifti_complete(path: Path, role: str, to_end: bool = False) -> None:
    """Refuse a NIfTI file whose voxel data is cut short.

    SimpleITK fills missing voxels of a truncated file with zeros or garbage
    without an error, so compare the (decompressed) length with what the
    header promises: ``vox_offset + prod(dim) * bitpix / 8``. Decompression stops
    there (data after the voxels, gigabytes of zeros say, is never read) unless
    ``to_end``: a file we wrote is read to its end, so that a compressed stream cut
    anywhere, even in its trailer, is caught.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(540)
            expected = _nifti_length(header)
            if expected is None:
                return  # not a header we know: SimpleITK read it, trust it
            length = len(header)
            while (to_end or length < expected) and (chunk := f.read(1 << 22)):
                length += len(chunk)
    except (OSError, EOFError):
        raise SrrecnnError(f"{path}: truncated or corrupt {role} (compressed data cut short)") \
            from None
    if length < expected:
        raise SrrecnnError(f"{path}: truncated {role} ({length} bytes, the header promises "
                           f"{expected})")


def _nifti_length(header: bytes) -> int | None:
    """The bytes a NIfTI-1 or -2 file with this header holds up to its last voxel, or None
    for a header of neither."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    count = 1
    for n in dims[1:1 + max(0, min(dims[0], 7))]:
        count *= max(n, 1)
    return offset + count * bitpix // 8


def check_image(image: sitk.Image, name: str) -> None:
    """A 3-D, single-component image with at least two voxels along every axis."""
    if image.GetDimension() != 3:
        raise SrrecnnError(f"{name}: image is {image.GetDimension()}-D, expected 3-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SrrecnnError(f"{name}: image has {image.GetNumberOfComponentsPerPixel()} "
                           "components per voxel, expected a scalar image")
    if min(image.GetSize()) < 2:
        raise SrrecnnError(f"{name}: image of size {image.GetSize()} is not really 3-D "
                           "(one voxel along an axis)")


def to_array(image: sitk.Image, dtype: type = np.float32) -> np.ndarray:
    """Voxels as an (x, y, z) array."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=dtype)


def to_image(array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
             direction: Sequence[float]) -> sitk.Image:
    """An (x, y, z) array as a SimpleITK image with the given geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def check_values(array: np.ndarray, name: str) -> None:
    """Finite voxels and a positive maximum (the pipeline divides by it)."""
    if not np.all(np.isfinite(array)):
        raise SrrecnnError(f"{name}: image has non-finite voxels (NaN or infinity)")
    top = float(array.max())
    if top <= 0:
        what = "all zero" if top == 0 and float(array.min()) == 0 else f"maximum is {top:g}"
        raise SrrecnnError(f"{name}: image is {what}; normalisation needs a positive maximum")


def zoomed_geometry(image: sitk.Image, out_size: Sequence[int], scale: Sequence[float],
                    header: str = "consistent") -> tuple[tuple, tuple, tuple]:
    """Spacing, origin and direction of an image zoomed to ``out_size`` (x, y, z).

    ``scipy.ndimage.zoom`` (``grid_mode=False``) maps the first and last voxel
    centres of the input onto those of the output, so the consistent spacing is
    ``spacing * (n_in - 1) / (n_out - 1)`` and the origin is unchanged.
    ``header="original"`` writes the original release's ``spacing / scale``.
    """
    n_in, spacing = image.GetSize(), image.GetSpacing()
    if header == "original":
        new = [s / f for s, f in zip(spacing, scale)]
    elif header == "consistent":
        new = [s * (a - 1) / (b - 1) for s, a, b in zip(spacing, n_in, out_size)]
    else:
        raise ValueError(f"unknown header mode {header!r}")
    return tuple(new), image.GetOrigin(), image.GetDirection()


def same_grid(image: sitk.Image, size: Sequence[int], spacing: Sequence[float],
              origin: Sequence[float], direction: Sequence[float], tol: float = 1e-4) -> bool:
    """Whether ``image`` lies on the given grid (to ``tol`` mm / relative)."""
    return (tuple(image.GetSize()) == tuple(size)
            and np.allclose(image.GetSpacing(), spacing, rtol=tol, atol=tol)
            and np.allclose(image.GetOrigin(), origin, rtol=0, atol=tol * max(spacing))
            and np.allclose(image.GetDirection(), direction, rtol=0, atol=tol))


def resample_onto(image: sitk.Image, size: Sequence[int], spacing: Sequence[float],
                  origin: Sequence[float], direction: Sequence[float],
                  name: str) -> tuple[sitk.Image, float]:
    """Resample ``image`` onto a grid in physical space (linear, 0 outside).

    Returns the resampled image and the fraction of the grid it covers;
    raises ``SrrecnnError`` if it covers none of it.
    """
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in size])
    resampler.SetOutputSpacing([float(s) for s in spacing])
    resampler.SetOutputOrigin([float(o) for o in origin])
    resampler.SetOutputDirection([float(d) for d in direction])
    resampler.SetTransform(sitk.Transform())
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    support = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    support.CopyInformation(image)
    footprint = resampler.Execute(support)  # keep the image alive while its view is read
    covered = float(sitk.GetArrayViewFromImage(footprint).mean())
    if covered == 0:
        raise SrrecnnError(f"{name}: reference has no physical overlap with the input")
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return resampler.Execute(image), covered


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

    _sitk_name(path)
    with atomic_output(path, staging_root, verify, replace) as staged:
        try:
            sitk.WriteImage(image, _sitk_name(staged))
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
    reader.SetFileName(_sitk_name(written))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise short("its header cannot be read back") from None
    if (tuple(reader.GetSize()) != tuple(image.GetSize())
            or reader.GetNumberOfComponents() != image.GetNumberOfComponentsPerPixel()):
        raise short(f"its header says {reader.GetSize()} voxels, not {image.GetSize()}")
    if written.name.endswith((".nii", ".nii.gz")):
        try:
            _check_nifti_complete(written, "written image", to_end=True)
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


def read_input(path: Path, role: str = "input image") -> sitk.Image:
    """An image file, or the DICOM series in a folder (read with GDCM's series order)."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        ids = reader.GetGDCMSeriesIDs(_sitk_name(path))
        if not ids:
            raise SrrecnnError(f"{path}: folder holds no DICOM series")
        if len(ids) > 1:
            raise SrrecnnError(f"{path}: folder holds {len(ids)} DICOM series; give one per "
                               "folder")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), ids[0]))
        try:
            image = reader.Execute()
        except RuntimeError:
            raise SrrecnnError(f"{path}: unreadable DICOM series") from None
        check_image(image, str(path))
        return image
    return read_image(path, role)


def is_dicom_series(folder: Path) -> bool:
    """A folder holding DICOM files that GDCM groups into a series."""
    if not folder.is_dir() or not any(p.suffix.lower() == ".dcm" for p in folder.iterdir()):
        return False
    try:
        name = _sitk_name(folder)
    except SrrecnnError:
        return True  # GDCM cannot be asked: taken as a series, whose reading then fails
    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(name))


def image_size(path: Path, role: str = "image") -> tuple[int, ...]:
    """The (x, y, z) size of a 3-D image file, from its header alone."""
    if not path.is_file():
        raise SrrecnnError(f"{path}: no such {role} file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(_sitk_name(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise SrrecnnError(f"{path}: unreadable or corrupt {role}") from None
    if reader.GetDimension() != 3:
        raise SrrecnnError(f"{path}: image is {reader.GetDimension()}-D, expected 3-D")
    return tuple(reader.GetSize())


def read_volume(path: Path, role: str = "image") -> np.ndarray:
    """An image file's voxels as a checked (finite, positive maximum) (x, y, z) float32 array."""
    return read_volume_spacing(path, role)[0]


def read_volume_spacing(path: Path, role: str = "image"
                        ) -> tuple[np.ndarray, tuple[float, ...]]:
    """``read_volume`` and the image's (x, y, z) voxel size in mm, from one read."""
    image = read_image(path, role)
    array = to_array(image)
    check_values(array, str(path))
    return array, tuple(image.GetSpacing())


def header_warnings(image: sitk.Image, name: str, trained_spacing: float | None = None,
                    scale: Sequence[float] = (1.0, 1.0, 1.0)) -> list[str]:
    """Warnings about a header that is suspect, or far from what the model saw.

    ``trained_spacing``: the voxel size (mm) of the HR volumes the model learned to
    produce (a model folder's ``trained_spacing``); the output grid, the input's
    spacing divided by the (x, y, z) ``scale``, more than 2x off it along any axis warns:
    the network's filters are tuned to anatomy at that voxel size."""
    warnings = []
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-3):
        warnings.append(f"{name}: direction cosines are not orthonormal; the header may be "
                        "inconsistent")
    spacing = np.array(image.GetSpacing())
    shown = tuple(round(float(s), 3) for s in spacing)
    if spacing.max() > 4 * spacing.min():
        warnings.append(f"{name}: very anisotropic voxels {shown} mm")
    output = spacing / np.asarray(scale, float)
    if trained_spacing and np.any(np.abs(np.log(output / trained_spacing)) > np.log(2)):
        factors = "x".join(f"{f:g}" for f in scale)
        warnings.append(f"{name}: spacing {shown} mm at scale {factors} gives "
                        f"{tuple(round(float(s), 3) for s in output)} mm voxels, far from the "
                        f"{trained_spacing:g} mm the model was trained to produce")
    return warnings


def write_image_verified(image: sitk.Image, path: str | Path, staging_root: Path | None = None,
                         before_rename: Callable[[Path], None] | None = None) -> None:
    """Write an image atomically (see ``atomic_output``) after reading it back whole.

    SimpleITK's writers do not report a full disk, so the staged file is checked
    before the rename: a NIfTI file by its length against its header (as
    ``read_image``), any other format by reading every voxel (their readers fail on
    short data). ``before_rename`` (if given) then sees the staged file.
    """
    path = Path(path)
    _sitk_name(path)
    with atomic_output(path, staging_root) as staged:
        try:
            sitk.WriteImage(image, _sitk_name(staged))
        except RuntimeError:
            raise SrrecnnError(f"{path}: cannot write image (unknown extension or "
                               "unwritable location)") from None
        try:
            if staged.name.endswith((".nii", ".nii.gz")):
                _check_nifti_complete(staged, "written image", to_end=True)
            else:
                sitk.ReadImage(_sitk_name(staged))
        except (SrrecnnError, RuntimeError):
            raise SrrecnnError(f"{path}: cannot write image: it does not read back whole "
                               "(is the disk full?)") from None
        if before_rename is not None:
            before_rename(staged)
