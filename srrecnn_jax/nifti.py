"""NIfTI-1 and -2 files cut short: their length against what the header promises."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

from srrecnn_jax.errors import SrrecnnError


def check_nifti_complete(path: Path, role: str, to_end: bool = False) -> None:
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
