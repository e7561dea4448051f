"""What SimpleITK does not tell about a NIfTI-1 or -2 file: voxel data cut short (it
fills the rest with zeros or garbage) and NaN or infinite voxels (it reads them as 0, so
a NaN background or hole would pass as real zeros). Both are checked on the raw data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

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
            layout = _nifti_layout(header)
            if layout is None:
                return  # not a header we know: SimpleITK read it, trust it
            offset, expected, dtype = layout
            scan = _NonFinite(dtype)
            scan.add(header[offset:expected])
            length = len(header)
            while (to_end or length < expected) and (chunk := f.read(1 << 22)):
                # the voxels are bytes [offset, expected) of the file
                scan.add(chunk[max(0, offset - length):max(0, expected - length)])
                length += len(chunk)
    except (OSError, EOFError):
        raise SrrecnnError(f"{path}: truncated or corrupt {role} (compressed data cut short)") \
            from None
    if length < expected:
        raise SrrecnnError(f"{path}: truncated {role} ({length} bytes, the header promises "
                           f"{expected})")
    if scan.count:
        raise SrrecnnError(f"{path}: {role} has {scan.count} NaN or infinite voxels (a NaN "
                           "background or mask?); replace them by a number first")


#: NIfTI datatype codes of the floating-point voxel types, as NumPy dtypes (little-endian;
#: the header's byte order is applied).
_FLOATS = {16: "f4", 64: "f8", 32: "c8", 1792: "c16"}


class _NonFinite:
    """Counts NaN and infinite values in a stream of raw voxel bytes of ``dtype`` (None:
    an integer type, which holds none), chunk by chunk, across chunk boundaries."""

    def __init__(self, dtype: np.dtype | None):
        self.dtype, self.count, self._rest = dtype, 0, b""

    def add(self, data: bytes) -> None:
        if self.dtype is None or not data:
            return
        data = self._rest + data
        whole = len(data) // self.dtype.itemsize * self.dtype.itemsize
        self._rest = data[whole:]
        values = np.frombuffer(data[:whole], self.dtype)
        self.count += int(values.size - np.count_nonzero(np.isfinite(values)))


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """``(vox_offset, bytes up to the last voxel, float dtype or None)`` of a NIfTI-1 or
    -2 header; None for a header of neither."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            code, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            code, bitpix = struct.unpack(endian + "2h", header[12:16])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    count = 1
    for n in dims[1:1 + max(0, min(dims[0], 7))]:
        count *= max(n, 1)
    kind = _FLOATS.get(code)
    return offset, offset + count * bitpix // 8, None if kind is None else np.dtype(endian + kind)
