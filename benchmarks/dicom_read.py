"""Reading a CT series: our DICOM reader against nibabel reading the same volume as NIfTI, in one run.

Writes (to a temporary folder, removed at the end) a 512 x 512 x 100 CT volume in HU as a DICOM series (pydicom,
one file per slice, int16 stored values with RescaleIntercept -1024, uncompressed) and as NIfTI (int16 HU, ``.nii``
and ``.nii.gz``), then times, alternating, ``samforge.data.dicom.read_dicom_series`` (every header read, the slices
sorted and checked, pixels rescaled to an int32 volume) and nibabel's ``load(mmap=False)`` +
``np.asanyarray(img.dataobj)`` (read into memory, as ours is; a memory-mapped ``.nii`` would defer the read to the
first use). The files were just written, so every read comes from the page cache. Checks that both give the same
HU volume.

    python benchmarks/dicom_read.py [--slices 100] [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from samforge.data.dicom import read_dicom_series


def ct_volume(size: int, slices: int) -> np.ndarray:
    """A ``size x size x slices`` int16 HU volume: air, a water-like body with noise, a bright bone ring."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - size / 2
    r = np.hypot(yy, xx) / (size / 2)
    body = np.where(r < 0.8, 40, -1000) + np.where((r > 0.6) & (r < 0.7), 900, 0)
    vol = body[..., None] + rng.normal(0, 20, (size, size, slices))
    return np.clip(vol, -1024, 3000).astype(np.int16)


def write_series(folder: Path, hu: np.ndarray, spacing: float = 0.7, step: float = 1.5) -> None:
    """``hu`` (columns x rows x slices) as an axial CT series, one file per slice, names not in slice order."""
    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    n = hu.shape[2]
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.InstanceNumber = "CT", series, study, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-180.0, -180.0, k * step]
        ds.PixelSpacing, ds.SliceThickness = [spacing, spacing], step
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray((hu[:, :, k].T + 1024).astype(np.int16)).tobytes()
        ds.save_as(folder / f"slice{(k * 37) % n:04d}.dcm", enforce_file_format=True)  # shuffled names


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one) and the core count, to print beside the figures."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"


def time_it(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.slices < 2 or args.size < 8 or args.repeats < 1:
        ap.error("expected --slices >= 2, --size >= 8 and --repeats >= 1")
    hu = ct_volume(args.size, args.slices)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_series(tmp / "series", hu)
        for name in ("ct.nii", "ct.nii.gz"):
            nib.save(nib.Nifti1Image(hu, np.diag([-0.7, -0.7, 1.5, 1.0])), str(tmp / name))
        mb = sum(p.stat().st_size for p in (tmp / "series").iterdir()) / 2**20
        print(f"{args.size}x{args.size}x{args.slices} CT, {mb:.0f} MB of DICOM; {cpu_name()}; "
              f"pydicom {pydicom.__version__}, nibabel {nib.__version__}; median of {args.repeats}")
        results = {}
        for _ in range(2):  # alternate, so a slow moment hits both; the second round is kept
            results["dicom"] = time_it(lambda: read_dicom_series(tmp / "series")[0], args.repeats)
            for name in ("ct.nii", "ct.nii.gz"):
                results[name] = time_it(lambda n=name: np.asanyarray(nib.load(str(tmp / n), mmap=False).dataobj),
                                        args.repeats)
        ours, vol = results["dicom"]
        for name in ("ct.nii", "ct.nii.gz"):
            t, ref = results[name]
            assert np.array_equal(vol, ref), f"the DICOM and {name} volumes differ"
            print(f"nibabel {name:9s} {t * 1000:8.1f} ms   samforge DICOM {ours * 1000:8.1f} ms   "
                  f"ours / nibabel = {ours / t:.2f}x")


if __name__ == "__main__":
    main()
