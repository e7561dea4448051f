"""File names: the image and list suffixes, output names, list files, names for
messages and for SimpleITK, and checks of an output path before any work."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from srrecnn_jax.errors import OutputExistsError, SrrecnnError

#: Image file name endings SimpleITK reads and writes here, longest first so that
#: ``.nii.gz`` wins over ``.nii``. SimpleITK picks its writer by the (case-sensitive)
#: ending, so these are matched in lower case exactly.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")


#: Text files listing paths, one per line (``#`` starts a comment line).
LIST_SUFFIXES = (".txt", ".lst")


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


def sitk_name(path: str | Path) -> str:
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
                      image: bool = True, make_folder: bool = False) -> None:
    """Refuse, before any work, an output we could not or should not write.

    An image output needs a known (lower-case) suffix; no output may be one of
    ``inputs``; an existing one needs ``force``; its folder must exist, or with
    ``make_folder`` be one that ``writable_folder`` can make later (the nearest
    existing folder above it can be written in): nothing is created here.
    """
    if image and not is_image_name(output):  # SimpleITK is case-sensitive
        raise SrrecnnError(f"{output}: unknown image format; use one of "
                           f"{', '.join(IMAGE_SUFFIXES)} (lower case)")
    if any(os.path.realpath(output) == os.path.realpath(p) for p in inputs):  # no loop error
        raise SrrecnnError(f"{output}: output would replace an input")
    if output.exists() and not force:
        raise OutputExistsError(f"{output}: already exists")
    if make_folder:
        _check_creatable(output, output.parent)
    elif not output.parent.is_dir():
        raise SrrecnnError(f"{output}: folder {output.parent} does not exist")


def _check_creatable(output: Path, folder: Path) -> None:
    """Refuse an ``output`` whose ``folder`` neither exists nor can be made."""
    above = folder
    while not above.exists() and above != above.parent:
        above = above.parent
    if above == folder and folder.is_dir():
        return
    if not above.is_dir():
        raise SrrecnnError(f"{output}: cannot create folder {folder} ({above} is not a "
                           "folder)")
    if not os.access(above, os.W_OK | os.X_OK):
        raise SrrecnnError(f"{output}: cannot create folder {folder} (no permission to "
                           f"write in {above})")


def writable_folder(folder: Path) -> None:
    """Create ``folder`` and the missing folders above it if needed; raise
    ``SrrecnnError`` (one line, naming it) if it cannot be created or written in
    (read-only, no permission)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise SrrecnnError(f"{folder}: cannot write in the output folder "
                           f"({e.strerror or e})") from None


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
