"""DICOM series (a folder of ``.dcm`` files, one file per slice, read with pydicom) as a 3-D volume with its affine.

A *series folder* holds the ``.dcm`` files of exactly one series (directly, not in subfolders); a folder whose
subfolders are series folders holds several cases. Files are recognised by the ``.dcm`` suffix (any case).

* Order: the slices are sorted by their ImagePositionPatient projected on the slice normal (the cross product of
  the ImageOrientationPatient row and column cosines), never by file name or InstanceNumber.
* Values: each slice's stored values times its RescaleSlope plus its RescaleIntercept (CT in HU). The volume is
  ``int32`` when every slope and intercept is a whole number, ``float32`` otherwise.
* Array order and affine: as nibabel and dicom2nifti lay out a series (before any reorientation): ``vol[i, j, k]``
  is column ``i``, row ``j`` of the ``k``-th slice along the normal, so a slice ``vol[:, :, k]`` is the DICOM image
  transposed. The affine maps ``(i, j, k, 1)`` to RAS+ millimetres (DICOM's LPS with x and y negated), so a NIfTI
  written with it lines up with the series in a viewer.
* Checks, each a ``ValueError`` naming the folder and the file(s): no ``.dcm`` file, an unreadable file, two
  series (SeriesInstanceUID) in one folder, a multi-frame or colour file, slices that differ in orientation, size
  or pixel spacing, two slices at one position, a missing slice (a gap that is a multiple of the spacing),
  non-uniform spacing, and slices that shift in-plane (gantry tilt, which would need resampling).
* Reading: pydicom parses the first file; every other file is read by walking its element headers against the
  first file's element sequence (the same tags and VRs in the same order; each length read from the file), and
  parsed by pydicom only where it departs from it (:class:`_Layout`). pydicom's per-file parse was most of the time.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from samforge.data.bad_samples import natural_key

DICOM_SUFFIX = ".dcm"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING_RTOL = 0.01  # slice gaps within 1% (+ SPACING_ATOL mm) of the spacing count as equal
SPACING_ATOL = 0.01  # mm
ORIENTATION_ATOL = 1e-4
MAX_NAMED = 5  # files named per problem in an error message
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR little endian, uncompressed
_HEADER_TAGS = ["SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                "Columns", "RescaleSlope", "RescaleIntercept", "NumberOfFrames", "SamplesPerPixel",
                "SpacingBetweenSlices", "SliceThickness", "BitsAllocated", "BitsStored", "PixelRepresentation"]


@dataclass(frozen=True)
class _SliceHeader:
    path: Path
    series_uid: str
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient: row cosine (3), column cosine (3)
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns (mm)
    size: tuple[int, int]  # Rows, Columns
    slope: float
    intercept: float


@dataclass(frozen=True)
class DicomSeries:
    """The geometry of one DICOM series, read from the headers: ``files`` in slice order, the volume ``shape``
    (columns, rows, slices), the RAS ``affine`` (4 x 4) and the SeriesInstanceUID."""

    folder: Path
    files: tuple[Path, ...]
    shape: tuple[int, int, int]
    affine: np.ndarray
    series_uid: str


def _as_path(value: object, what: str = "folder") -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a path (str or os.PathLike), got {type(value).__name__}")
    return Path(value)


def _dcm_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(DICOM_SUFFIX)), key=lambda p: natural_key(p.name))


def is_dicom_series(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding ``.dcm`` files directly."""
    path = _as_path(path, "path")
    return path.is_dir() and any(p.is_file() and p.name.lower().endswith(DICOM_SUFFIX) for p in path.iterdir())


def dicom_series_folders(folder: str | os.PathLike) -> list[Path]:
    """The subfolders of ``folder`` that hold ``.dcm`` files (series folders), in natural name order, hidden
    ones left out. Raises ``FileNotFoundError`` if ``folder`` is not a folder."""
    folder = _as_path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".") and is_dicom_series(p)),
                  key=lambda p: natural_key(p.name))


def resolve_series_folder(path: str | os.PathLike) -> Path:
    """The one series folder ``path`` names: itself, or its only series subfolder. Raises ``ValueError`` when it
    holds no series or several (listing them)."""
    if is_dicom_series(path):
        return Path(path)
    found = dicom_series_folders(path)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"{path}: expected a folder of {DICOM_SUFFIX} files (one DICOM series) or a folder "
                         f"holding one such series folder, found none")
    names = ", ".join(p.name for p in found[:MAX_NAMED]) + (" ..." if len(found) > MAX_NAMED else "")
    raise ValueError(f"{path}: holds {len(found)} DICOM series folders ({names}); give one of them")


def _names(paths: list[Path]) -> str:
    more = f" and {len(paths) - MAX_NAMED} more" if len(paths) > MAX_NAMED else ""
    return ", ".join(p.name for p in paths[:MAX_NAMED]) + more


def _read_file(path: Path, pixels: bool):
    """pydicom's dataset of one file (files without the 128-byte preamble too). Raises ``ValueError``."""
    import pydicom  # imported here: only DICOM users pay for it

    tags = _header_tags(pixels)  # only these are parsed: faster
    try:
        if pixels:  # one read call, not one per element
            return pydicom.dcmread(io.BytesIO(path.read_bytes()), specific_tags=tags)
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except pydicom.errors.InvalidDicomError as e:  # no "DICM" preamble: an old file, or not DICOM at all
        first = e
    except Exception as e:  # pydicom raises many types on corrupt files
        raise ValueError(f"{type(e).__name__}: {e}") from e
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels, specific_tags=tags, force=True)
        if "Rows" in ds and "ImagePositionPatient" in ds:
            return ds
    except Exception:  # noqa: BLE001 - the first error says it better
        pass
    raise ValueError(f"not a DICOM file ({type(first).__name__}: {first})") from first


@dataclass(frozen=True)
class _Element:
    """One top-level element of a series' first file, as the next file must repeat it."""

    tag: int
    head: bytes  # its tag bytes (and VR bytes, for explicit VR) as they start the element
    header_size: int  # bytes before its value: 8, or 12 for explicit VRs with a 4-byte length
    length_size: int  # bytes of its length field: 2 (explicit VR, short form) or 4
    vr: str | None
    undefined: bytes | None  # for an undefined-length value (a sequence): its bytes, which must repeat exactly
    wanted: bool  # one of the tags a slice is read for


@dataclass(frozen=True)
class _Layout:
    """The element sequence of a series' first file (pydicom-parsed), so that the other files need no full parse:
    a file whose top-level elements are the same tags with the same VRs, in the same order, is read by walking their
    headers (each value's length read from the file itself) up to the last element needed. Anything else (another
    element, another order or transfer syntax, a sequence of undefined length that differs) is parsed by pydicom."""

    elements: tuple[_Element, ...]  # the file meta group's, then the dataset's, up to PixelData (or before it)
    end: int  # where the first file's last element ends
    implicit: bool
    syntax: bytes  # the TransferSyntaxUID value, which every file must repeat
    file_meta: object  # the first file's pydicom FileMetaDataset
    values: dict  # the first file's value bytes of each tag a slice is read for (PixelData aside)


PREAMBLE = 128  # bytes before "DICM"
_UNDEFINED = 0xFFFFFFFF
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")
_PIXEL_DATA = 0x7FE00010
_SYNTAX = 0x00020010


def _layout(data: bytes, pixels: bool) -> _Layout | None:
    """The :class:`_Layout` of a Part-10 file (``data``: its bytes) of uncompressed little-endian data, else None."""
    import pydicom
    from pydicom.filereader import data_element_generator

    if len(data) < PREAMBLE + 4 or data[PREAMBLE:PREAMBLE + 4] != b"DICM":
        return None
    fp = io.BytesIO(data)
    fp.seek(PREAMBLE + 4)
    wanted = set(_header_tags(pixels))
    elements: list[_Element] = []
    values: dict[int, bytes] = {}

    def walk(implicit: bool, stop) -> dict:
        raw = {}
        start = fp.tell()
        for elem in data_element_generator(fp, implicit, True, stop_when=stop):
            end = fp.tell()
            size = elem.value_tell - start
            undefined = data[elem.value_tell:end] if elem.length == _UNDEFINED else None
            elements.append(_Element(elem.tag, data[start:start + (4 if implicit else 6)], size,
                                     4 if implicit or size == 12 else 2, elem.VR, undefined,
                                     elem.tag in wanted or elem.tag == _SYNTAX))
            raw[elem.tag] = elem
            if elem.tag in wanted and elem.tag != _PIXEL_DATA:
                values[elem.tag] = data[elem.value_tell:end]
            start = end
        return raw

    try:
        meta = walk(False, lambda tag, vr, length: tag.group != 2)
        syntax = meta[_SYNTAX].value if _SYNTAX in meta else b""
        if syntax.rstrip(b"\0 ").decode("ascii", "replace") not in NATIVE_SYNTAXES:
            return None
        implicit = syntax.rstrip(b"\0 ") == NATIVE_SYNTAXES[0].encode()
        stop = (lambda tag, vr, length: tag > _PIXEL_DATA) if pixels else (lambda tag, vr, length: tag >= _PIXEL_DATA)
        found = walk(implicit, stop)
        if pixels and (_PIXEL_DATA not in found or found[_PIXEL_DATA].length == _UNDEFINED):
            return None  # no pixels, or encapsulated (compressed) ones
        file_meta = pydicom.dataset.FileMetaDataset(meta)
    except Exception:  # noqa: BLE001 - pydicom's own reading of the file then says what is wrong with it
        return None
    return _Layout(tuple(elements), fp.tell(), implicit, syntax, file_meta, values)


def _walk(data: bytes, layout: _Layout) -> dict | None:
    """Offset and length of each wanted element's value in ``data``, walking ``layout``'s element sequence; None
    where ``data`` departs from it."""
    p, n, at = PREAMBLE + 4, len(data), {}
    if not data.startswith(b"DICM", PREAMBLE):
        return None
    for e in layout.elements:
        h = p + e.header_size
        if h > n or not data.startswith(e.head, p):
            return None
        length = (_U32 if e.length_size == 4 else _U16).unpack_from(data, h - e.length_size)[0]
        if length == _UNDEFINED:
            if e.undefined is None or not data.startswith(e.undefined, h):
                return None
            length = len(e.undefined)
        if h + length > n:
            return None
        if e.wanted:
            at[e.tag] = (e.vr, length, h)
        p = h + length
    return at


def _read_like(path: Path, layout: _Layout, pixels: bool) -> tuple | None:
    """``path``'s dataset (the tags a slice is read for), read by walking ``layout``'s element sequence, and the
    tags whose values differ from the first file's; None when the file departs from it (then pydicom parses it)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset

    with open(path, "rb") as f:
        data = f.read() if pixels else f.read(layout.end + 4096)  # headers only: a little more than the first's
    at = _walk(data, layout)
    if at is None or (pixels and _PIXEL_DATA not in at):
        return None
    _, length, h = at[_SYNTAX]  # the first file has one (its layout needs it), so this file too
    if data[h:h + length] != layout.syntax:
        return None
    view = memoryview(data)  # the pixel bytes are not copied
    ds = Dataset({tag: RawDataElement(tag, vr, length, view[h:h + length] if tag == _PIXEL_DATA else data[h:h + length],
                                      h, layout.implicit, True)
                  for tag, (vr, length, h) in at.items() if tag >> 16 != 2})
    ds.file_meta = layout.file_meta
    changed = {tag for tag, (_, length, h) in at.items()
               if tag in layout.values and data[h:h + length] != layout.values[tag]}
    return ds, changed


_FORMAT_TAGS = (0x00280100, 0x00280101, 0x00280103)  # BitsAllocated, BitsStored, PixelRepresentation


def _format_key(ds) -> tuple:
    """What decides how a slice's pixel bytes decode, as cheap to compare values (raw bytes where unconverted)."""
    items = (ds.get_item(t) for t in _FORMAT_TAGS)
    return (id(getattr(ds, "file_meta", None)), *(None if e is None else e.value for e in items))


def _pixel_format(ds) -> tuple[np.dtype, int] | None:
    """(dtype, stored bits) of uncompressed little-endian pixel data that can be read straight from its bytes, else
    None (pydicom's decoders then read it)."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    bits, stored = int(ds.get("BitsAllocated", 0)), int(ds.get("BitsStored", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if syntax in NATIVE_SYNTAXES and bits in (8, 16, 32) and 0 < stored <= bits and not (signed and stored < bits):
        return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}"), stored
    return None


def _pixels(path: Path, ds, rows: int, cols: int, fmt: tuple[np.dtype, int] | None) -> np.ndarray:
    """The stored values of one slice (``rows x cols``): straight from the bytes for uncompressed little-endian
    data (``fmt``: :func:`_pixel_format`), else through pydicom's decoders (compressed data needs the matching
    pydicom plugin)."""
    elem = ds.get_item(_PIXEL_DATA)  # unconverted: its bytes (a view of the file's, from _read_like)
    data = None if elem is None else elem.value
    if fmt is not None and isinstance(data, (bytes, memoryview)) and len(data) >= rows * cols * fmt[0].itemsize:
        dtype, stored = fmt
        arr = np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
        return arr & np.array((1 << stored) - 1, arr.dtype) if stored < dtype.itemsize * 8 else arr  # high bits cleared
    import pydicom

    return pydicom.dcmread(path, force=True).pixel_array  # the whole file: the decoders need more tags


@functools.lru_cache(maxsize=2)
def _header_tags(pixels: bool) -> list:
    """The tags a slice is read for, as pydicom tags (converted once, not per file)."""
    from pydicom.tag import Tag

    return [Tag(k) for k in _HEADER_TAGS + (["PixelData"] if pixels else [])]


def _floats(ds, tag: str, n: int) -> np.ndarray:
    """The ``n`` numbers of a DS/IS element; parsed from the raw bytes when pydicom has not converted them yet
    (its conversion is most of the header time of a series)."""
    elem = ds.get_item(tag)
    value = None if elem is None else elem.value
    if value is None or (isinstance(value, (bytes, str)) and not value.strip()):
        raise ValueError(f"no {tag}")
    try:
        parts = value.split(b"\\") if isinstance(value, bytes) else (value if n > 1 else [value])
        arr = np.asarray([float(v) for v in parts], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{tag} is not {n} number(s): {value!r}") from e
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise ValueError(f"{tag}: expected {n} finite numbers, got {value!r}")
    return arr


def _header(path: Path, ds) -> _SliceHeader:
    """The geometry and rescale of one slice; raises ``ValueError`` saying what is missing or unsupported."""
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"a multi-frame file ({ds.NumberOfFrames} frames): only one slice per file is read")
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise ValueError(f"a colour image (SamplesPerPixel {ds.SamplesPerPixel}): expected greyscale CT/MR slices")
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    row, col = orientation[:3], orientation[3:]
    if not (abs(row @ row - 1) < 2e-3 and abs(col @ col - 1) < 2e-3 and abs(row @ col) < 1e-3):
        raise ValueError(f"ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors")
    spacing = _floats(ds, "PixelSpacing", 2)
    if (spacing <= 0).any():
        raise ValueError(f"PixelSpacing {spacing.tolist()} must be positive")
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    if rows < 1 or cols < 1:
        raise ValueError(f"Rows x Columns {rows} x {cols}: expected an image")
    return _SliceHeader(path, str(getattr(ds, "SeriesInstanceUID", "")), _floats(ds, "ImagePositionPatient", 3),
                        orientation, (float(spacing[0]), float(spacing[1])), (rows, cols), *_rescale(ds))


def _rescale(ds) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept (1 and 0 where absent)."""
    slope = float(_floats(ds, "RescaleSlope", 1)[0]) if "RescaleSlope" in ds else 1.0
    intercept = float(_floats(ds, "RescaleIntercept", 1)[0]) if "RescaleIntercept" in ds else 0.0
    return slope, intercept


_VARYING = {0x00200032, 0x00281052, 0x00281053}  # ImagePositionPatient, RescaleIntercept, RescaleSlope


def _header_like(path: Path, ds, changed: set, first: _SliceHeader) -> _SliceHeader:
    """The header of a slice read by :func:`_read_like`: the first file's, with its own position and rescale, when
    nothing else differs from the first file's bytes (else read in full, :func:`_header`)."""
    if not changed <= _VARYING:
        return _header(path, ds)
    return replace(first, path=path, position=_floats(ds, "ImagePositionPatient", 3),
                               **dict(zip(("slope", "intercept"), _rescale(ds))))


def _check_one_series(folder: Path, headers: list[_SliceHeader]) -> None:
    by_uid: dict[str, list[Path]] = {}
    for h in headers:
        by_uid.setdefault(h.series_uid, []).append(h.path)
    if len(by_uid) > 1:
        parts = "; ".join(f"SeriesInstanceUID {uid or '(none)'}: {_names(paths)} "
                          f"({len(paths)} file{'' if len(paths) == 1 else 's'})"
                          for uid, paths in by_uid.items())
        raise ValueError(f"{folder}: {len(by_uid)} DICOM series in one folder ({parts}); "
                         f"put each series in its own folder")
    ref = headers[0]
    for field, what in (("orientation", "ImageOrientationPatient"), ("spacing", "PixelSpacing"),
                        ("size", "Rows x Columns")):
        values = np.asarray([getattr(h, field) for h in headers], dtype=np.float64)
        far = np.abs(values - values[0]).max(axis=1) > ORIENTATION_ATOL
        odd = [headers[i].path for i in np.nonzero(far)[0]]
        if odd:
            raise ValueError(f"{folder}: {what} of {_names(odd)} differs from {ref.path.name}'s "
                             f"{np.asarray(getattr(ref, field)).tolist()}: the slices must share it")


def _slice_step(folder: Path, headers: list[_SliceHeader], normal: np.ndarray, ds0) -> np.ndarray:
    """The LPS vector from one slice to the next (``headers`` in slice order); checks the spacing."""
    if len(headers) == 1:  # one slice: its thickness along the normal
        for tag in ("SpacingBetweenSlices", "SliceThickness"):
            if tag in ds0 and ds0[tag].value not in (None, ""):
                value = float(ds0[tag].value)
                if value > 0:
                    return normal * value
        return normal * 1.0
    pos = np.stack([h.position for h in headers])
    along = pos @ normal
    gaps = np.diff(along)
    pair = [f"{headers[i].path.name} ({along[i]:.3f} mm) and {headers[i + 1].path.name} ({along[i + 1]:.3f} mm)"
            for i in range(len(gaps))]
    same = [pair[i] for i in np.nonzero(gaps <= SPACING_ATOL)[0]]
    if same:
        raise ValueError(f"{folder}: two slices at one position along the slice normal: {'; '.join(same[:MAX_NAMED])}")
    spacing = float(gaps.min())
    tol = SPACING_RTOL * spacing + SPACING_ATOL
    missing, uneven = [], []
    for i, g in enumerate(gaps):
        if abs(g - spacing) <= tol:
            continue
        k = round(g / spacing)
        if k >= 2 and abs(g - k * spacing) <= k * tol:
            missing.append(f"{k - 1} between {pair[i]}")
        else:
            uneven.append(f"{pair[i]} are {g:.3f} mm apart")
    if missing:
        raise ValueError(f"{folder}: missing slice(s) in the series (the slices are {spacing:.3f} mm apart): "
                         f"{'; '.join(missing[:MAX_NAMED])}")
    if uneven:
        raise ValueError(f"{folder}: non-uniform slice spacing (the closest slices are {spacing:.3f} mm apart): "
                         f"{'; '.join(uneven[:MAX_NAMED])}")
    in_plane = (pos - pos[:1]) - np.outer(along - along[0], normal)
    shifted = [headers[i].path for i in np.nonzero(np.linalg.norm(in_plane, axis=1) > tol)[0]]
    if shifted:
        raise ValueError(f"{folder}: the slices do not stack along their normal ({_names(shifted)} shift in-plane "
                         f"from {headers[0].path.name}; gantry tilt?): such a series needs resampling first")
    return (pos[-1] - pos[0]) / (len(headers) - 1)


def _series(folder: str | os.PathLike, pixels: bool) -> tuple[DicomSeries, list[_SliceHeader], list]:
    """Read every ``.dcm`` of ``folder`` (headers, or whole files with ``pixels``) and check it is one series."""
    folder = _as_path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM series folder not found: {folder}")
    files = _dcm_files(folder)
    if not files:
        raise ValueError(f"{folder}: no {DICOM_SUFFIX} files (expected the files of one DICOM series)")
    datasets, headers, bad = [], [], []
    layout, first = None, None  # the first readable file's layout and header
    for path in files:
        try:
            read = None if layout is None else _read_like(path, layout, pixels)
            if read is not None:
                ds, changed = read
                header = _header_like(path, ds, changed, first)
            else:
                ds = _read_file(path, pixels)
                header = _header(path, ds)
                if first is None:
                    layout, first = _layout(path.read_bytes(), pixels), header
            headers.append(header)
            datasets.append(ds)
        except ValueError as e:
            bad.append(f"{path.name} ({e})")
    if bad:
        raise ValueError(f"{folder}: unreadable DICOM file(s): {'; '.join(bad[:MAX_NAMED])}"
                         + (f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""))
    _check_one_series(folder, headers)
    row, col = headers[0].orientation[:3], headers[0].orientation[3:]
    normal = np.cross(row, col)
    order = np.argsort([h.position @ normal for h in headers], kind="stable")
    headers = [headers[i] for i in order]
    datasets = [datasets[i] for i in order]
    step = _slice_step(folder, headers, normal, datasets[0])
    row_spacing, col_spacing = headers[0].spacing
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing  # i: along a row, one column to the next
    lps[:3, 1] = col * row_spacing  # j: down a column, one row to the next
    lps[:3, 2] = step
    lps[:3, 3] = headers[0].position
    rows, cols = headers[0].size
    series = DicomSeries(folder, tuple(h.path for h in headers), (cols, rows, len(headers)), LPS_TO_RAS @ lps,
                         headers[0].series_uid)
    return series, headers, datasets


def scan_dicom_series(folder: str | os.PathLike) -> DicomSeries:
    """The geometry of the series in ``folder`` from its headers only (no pixel data read). Raises
    ``ValueError`` naming the file(s) for any of the problems the module docstring lists."""
    return _series(folder, pixels=False)[0]


def read_dicom_series(folder: str | os.PathLike) -> tuple[np.ndarray, DicomSeries]:
    """The series in ``folder`` as a ``columns x rows x slices`` volume (rescaled: CT in HU) and its geometry.
    Raises ``ValueError`` naming the file(s) for any of the problems the module docstring lists."""
    series, headers, datasets = _series(folder, pixels=True)
    whole = all(float(h.slope).is_integer() and float(h.intercept).is_integer() for h in headers)
    cols, rows, n = series.shape
    out = np.empty((n, rows, cols), dtype=np.int32 if whole else np.float32)  # slice-major: vol is its transpose
    formats: dict[tuple, tuple | None] = {}  # decided once for the slices that share the first's format bytes
    for k, (h, ds) in enumerate(zip(headers, datasets)):
        try:
            key = _format_key(ds)
            if key not in formats:
                formats[key] = _pixel_format(ds)
            pixels = _pixels(h.path, ds, rows, cols, formats[key])
        except Exception as e:  # compressed without a decoder, truncated data, ...
            raise ValueError(f"{folder}: unreadable pixel data in {h.path.name} ({type(e).__name__}: {e})") from e
        if pixels.shape != (rows, cols):
            raise ValueError(f"{folder}: {h.path.name} holds pixel data of shape {pixels.shape}, its header says "
                             f"{rows} x {cols}")
        if whole:
            np.add(pixels * np.int32(h.slope) if h.slope != 1 else pixels, np.int32(h.intercept), out=out[k],
                   casting="unsafe")
        else:
            np.multiply(pixels, np.float32(h.slope), out=out[k], casting="unsafe")
            out[k] += np.float32(h.intercept)
    return out.transpose(2, 1, 0), series


def label_orientation(label_affine: np.ndarray, label_shape: tuple[int, ...], series: DicomSeries) -> np.ndarray | None:
    """How a label volume (a NIfTI file's affine and shape) maps onto the series' voxels: None when its voxels are
    already in the series' order, else the nibabel orientation (axis permutation and flips; for
    ``nibabel.orientations.apply_orientation``) that puts them so, as for a label drawn on a reoriented conversion
    (dicom2nifti's, say). Raises ``ValueError`` when the label lies on another grid (size, spacing, position)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    label_affine = np.asarray(label_affine, dtype=np.float64)
    if label_affine.shape != (4, 4) or len(label_shape) != 3:
        raise ValueError(f"expected a 4 x 4 affine and a 3-D shape, got {label_affine.shape} and {label_shape}")
    ornt = None
    affine, shape = label_affine, tuple(int(d) for d in label_shape)
    if not _same_grid(affine, series.affine):
        ornt = ornt_transform(io_orientation(label_affine), io_orientation(series.affine))
        affine = label_affine @ inv_ornt_aff(ornt, shape)
        shape = apply_orientation(np.broadcast_to(np.zeros((), bool), shape), ornt).shape
    if shape != series.shape or not _same_grid(affine, series.affine):
        raise ValueError(f"the label volume (shape {tuple(label_shape)}, affine {np.round(label_affine, 3).tolist()}) "
                         f"does not lie on the voxels of the DICOM series {series.folder} (shape {series.shape}, "
                         f"affine {np.round(series.affine, 3).tolist()}), in any axis order")
    if ornt is not None and np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return None
    return ornt


def _same_grid(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two affines place voxels alike: directions and spacings within 1e-3, positions within 0.01 mm."""
    return bool(np.allclose(a[:3, :3], b[:3, :3], rtol=0, atol=1e-3)
                and np.allclose(a[:3, 3], b[:3, 3], rtol=0, atol=1e-2))
