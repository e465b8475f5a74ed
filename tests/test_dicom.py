"""DICOM series: slice order, HU, the affine against nibabel's DICOM geometry, datasets and ``track --volume`` on
series that pydicom writes here (shuffled file names, a non-axial orientation), and each bad-input case."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from samforge.cli import track as track_cli
from samforge.cli.main import main
from samforge.data.clip_dataset import open_clip_dataset
from samforge.data.dicom import dicom_series_folders, read_dicom_series, resolve_series_folder, scan_dicom_series
from samforge.data.readers import open_dataset
from samforge.models.sam2 import build_sam2

ROWS, COLS, SLICES = 6, 5, 4
SPACING = (0.8, 0.6)  # PixelSpacing: between rows, between columns (mm)
STEP = 2.5  # mm between slices
ORIGIN = np.array([-30.0, 12.0, 40.0])  # LPS mm, the first slice's ImagePositionPatient


def oblique_cosines() -> tuple[np.ndarray, np.ndarray]:
    """Row and column cosines of a sagittal plane tilted 20 degrees about the LPS y axis (not axial)."""
    a = np.deg2rad(20)
    row = np.array([0.0, 1.0, 0.0])
    col = np.array([np.sin(a), 0.0, -np.cos(a)])
    return row, col


def stored_values(k: int) -> np.ndarray:
    """The stored (unscaled) Rows x Columns values of slice k: 100 k + 10 row + column."""
    r, c = np.mgrid[:ROWS, :COLS]
    return (100 * k + 10 * r + c).astype(np.int16)


def write_slice(path, k: int, *, series_uid: str, position: np.ndarray, cosines=None, slope: float = 1.0,
                intercept: float = -1024.0, instance: int = 1, values: np.ndarray | None = None,
                bits_stored: int = 16, signed: bool = True) -> None:
    row, col = oblique_cosines() if cosines is None else cosines
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series_uid, "1.2.3"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
    ds.PixelSpacing = list(SPACING)
    ds.SliceThickness = STEP
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    pixels = stored_values(k) if values is None else values
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, int(signed)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(folder, positions_k=range(SLICES), *, series_uid: str | None = None, seed: int = 0,
                 gaps: dict[int, float] | None = None, stored: np.ndarray | None = None, **kw) -> list[str]:
    """Slices k (at ORIGIN + k STEP along the normal, plus ``gaps[k]`` mm; values ``stored[k]`` if given) under
    shuffled names and shuffled InstanceNumbers; returns the file names in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = oblique_cosines()
    normal = np.cross(row, col)
    ks = list(positions_k)
    rng = np.random.default_rng(seed)
    names = [f"IM{n:04d}.dcm" for n in rng.permutation(len(ks)) * 7 + 3]
    instances = rng.permutation(len(ks)) + 1
    uid = series_uid or generate_uid()
    for k, name, inst in zip(ks, names, instances):
        offset = k * STEP + (gaps or {}).get(k, 0.0)
        write_slice(folder / name, k, series_uid=uid, position=ORIGIN + offset * normal, instance=int(inst),
                    values=None if stored is None else stored[k], **kw)
    return names


def test_slice_order_hu_and_affine_of_an_oblique_series(tmp_path):
    names = write_series(tmp_path / "s")
    assert names != sorted(names)  # the file names do not give the order
    vol, series = read_dicom_series(tmp_path / "s")
    assert [p.name for p in series.files] == names
    assert vol.shape == series.shape == (COLS, ROWS, SLICES) and vol.dtype == np.int32
    for k in range(SLICES):  # vol[column, row, slice], rescaled to HU
        assert np.array_equal(vol[:, :, k], stored_values(k).T.astype(np.int32) - 1024)

    # the affine maps every voxel to its DICOM position (LPS, from the tags), with x and y negated (RAS)
    row, col = oblique_cosines()
    normal = np.cross(row, col)
    c, r, k = np.meshgrid(np.arange(COLS), np.arange(ROWS), np.arange(SLICES), indexing="ij")
    lps = (ORIGIN + k[..., None] * STEP * normal + c[..., None] * SPACING[1] * row
           + r[..., None] * SPACING[0] * col)
    ijk1 = np.stack([c, r, k, np.ones_like(c)], axis=-1)
    ras = ijk1 @ series.affine.T
    assert np.allclose(ras[..., :3], lps * [-1, -1, 1], atol=1e-3)

    # nibabel's DICOM geometry of the first slice (its array is row, column: our first two axes swapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nibabel.nicom.dicomwrappers import wrapper_from_data

        wrapper = wrapper_from_data(pydicom.dcmread(series.files[0]))
        nib_lps = wrapper.affine
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.allclose(series.affine[:, [1, 0, 3]], (flip @ nib_lps)[:, [0, 1, 3]], atol=1e-4)
    # nibabel's normal is column x row (right-handed for its row, column order); ours row x column, as DICOM
    # and dicom2nifti define it, so the slices run the opposite way along the same line
    assert np.allclose(series.affine[:3, 2], -STEP * (flip[:3, :3] @ wrapper.slice_normal), atol=1e-3)


def test_float_rescale_and_the_header_scan(tmp_path):
    write_series(tmp_path / "s", slope=0.5, intercept=-10.25)
    vol, series = read_dicom_series(tmp_path / "s")
    assert vol.dtype == np.float32
    assert np.allclose(vol[:, :, 2], stored_values(2).T * 0.5 - 10.25)
    scanned = scan_dicom_series(tmp_path / "s")  # headers only: the same geometry
    assert scanned.files == series.files and scanned.shape == series.shape
    assert np.array_equal(scanned.affine, series.affine)


def test_12_bit_pixels_signed_and_unsigned(tmp_path):
    stored = np.stack([stored_values(k) for k in range(SLICES)])
    write_series(tmp_path / "signed", stored=stored - 300, bits_stored=12)  # negative values: pydicom decodes them
    vol = read_dicom_series(tmp_path / "signed")[0]
    assert np.array_equal(vol, np.moveaxis(stored - 300, 0, 2).transpose(1, 0, 2).astype(np.int32) - 1024)
    garbage = (stored.astype(np.uint16) | 0xF000)  # bits above BitsStored (old overlays) are not values
    write_series(tmp_path / "unsigned", stored=garbage, bits_stored=12, signed=False)
    vol = read_dicom_series(tmp_path / "unsigned")[0]
    assert np.array_equal(vol, np.moveaxis(stored, 0, 2).transpose(1, 0, 2).astype(np.int32) - 1024)


def test_a_folder_of_series_folders(tmp_path):
    write_series(tmp_path / "cases" / "b", seed=1)
    write_series(tmp_path / "cases" / "a", seed=2)
    (tmp_path / "cases" / "notes").mkdir()
    assert [p.name for p in dicom_series_folders(tmp_path / "cases")] == ["a", "b"]
    assert resolve_series_folder(tmp_path / "cases" / "a") == tmp_path / "cases" / "a"
    with pytest.raises(ValueError, match=r"holds 2 DICOM series folders \(a, b\); give one of them"):
        resolve_series_folder(tmp_path / "cases")
    (tmp_path / "cases" / "b").rename(tmp_path / "b")
    assert resolve_series_folder(tmp_path / "cases") == tmp_path / "cases" / "a"  # the one series inside


def test_two_series_in_one_folder(tmp_path):
    write_series(tmp_path / "s", range(3), series_uid="1.2.826.1")
    write_slice(tmp_path / "s" / "other.dcm", 3, series_uid="1.2.826.2", position=ORIGIN)
    with pytest.raises(ValueError, match=r"2 DICOM series in one folder.*1\.2\.826\.2: other\.dcm \(1 file\)"):
        read_dicom_series(tmp_path / "s")


def test_a_missing_slice_is_named(tmp_path):
    names = write_series(tmp_path / "s", [0, 1, 3, 4])
    with pytest.raises(ValueError, match=rf"missing slice.*1 between {names[1]} .* and {names[2]} "):
        scan_dicom_series(tmp_path / "s")


def test_non_uniform_spacing_is_named(tmp_path):
    names = write_series(tmp_path / "s", gaps={2: 0.8, 3: 0.8})
    with pytest.raises(ValueError, match=rf"non-uniform slice spacing.*{names[1]} .* and {names[2]} .* 3\.300 mm"):
        read_dicom_series(tmp_path / "s")


def test_unreadable_and_unusable_files_are_named(tmp_path):
    write_series(tmp_path / "s")
    (tmp_path / "s" / "broken.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match=r"unreadable DICOM file\(s\): broken\.dcm \(not a DICOM file"):
        read_dicom_series(tmp_path / "s")
    (tmp_path / "s" / "broken.dcm").unlink()
    ds = pydicom.dcmread(next((tmp_path / "s").iterdir()))
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "s" / "noposition.dcm")
    with pytest.raises(ValueError, match=r"noposition\.dcm \(no ImagePositionPatient\)"):
        read_dicom_series(tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.dcm files"):
        read_dicom_series(tmp_path / "empty")


def test_track_refuses_a_folder_without_a_series(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["track", "--volume", str(tmp_path / "empty"), "--point", "1,1", "--model", "sam2.1_hiera_t",
                 "--out", str(tmp_path / "out")]) == 2
    assert "or a folder of .dcm files (one DICOM series)" in capsys.readouterr().err


def label_volume(shape=(COLS, ROWS, SLICES)) -> np.ndarray:
    """Two objects: label 1 on slices 1-2, label 3 on slice 2."""
    lab = np.zeros(shape, np.uint8)
    lab[1:3, 2:5, 1:3] = 1
    lab[3:5, 0:2, 2] = 3
    return lab


def write_dataset(root):
    """images/a/ (a series with its label in the series' voxel order) and images/b/ (a series whose label was
    drawn on a reoriented conversion: RAS-canonical axes)."""
    write_series(root / "images" / "a", seed=1)
    write_series(root / "images" / "b", seed=2)
    (root / "labels").mkdir()
    lab = label_volume()
    for case in ("a", "b"):
        img = nib.Nifti1Image(lab, scan_dicom_series(root / "images" / case).affine)
        if case == "b":
            img = nib.as_closest_canonical(img)
            assert img.shape != lab.shape or not np.array_equal(np.asarray(img.dataobj), lab)  # really reoriented
        nib.save(img, str(root / "labels" / f"{case}.nii.gz"))
    return lab


def test_a_dataset_of_series_folders_with_nifti_labels(tmp_path):
    lab = write_dataset(tmp_path)
    ds = open_dataset(tmp_path)
    assert len(ds) == 4 and ds.bad_samples == []  # slices 1 and 2 of each case
    assert ds._volumes[0].label_ornt is None and ds._volumes[1].label_ornt is not None
    assert ds.names[0] == f"{tmp_path / 'images' / 'a'}[axis=2,z=1]"
    assert sorted(set(ds.case_names)) == [str(tmp_path / "images" / c) for c in ("a", "b")]
    vol = read_dicom_series(tmp_path / "images" / "a")[0]
    for i in range(4):  # the reoriented label of b is back in the series' order: the same masks as a's
        s = ds[i]
        z = (1, 2, 1, 2)[i]
        expected = [lab[:, :, z] == v for v in np.unique(lab[:, :, z]) if v]
        assert np.array_equal(s.masks, np.stack(expected))
    s = ds[1]
    assert s.image.shape == (COLS, ROWS, 3)  # slice z is columns x rows, as the volume stores it
    lo, hi = np.percentile(vol, (0.5, 99.5))  # percentile normalisation over the whole series, in HU
    assert np.array_equal(s.image[..., 0], np.round(np.clip((vol[:, :, 2] - lo) / (hi - lo) * 255, 0, 255)))

    clips = open_clip_dataset(tmp_path, window=(-900, 200))  # SAM 2: a series is one clip, windowed in HU
    assert clips.names == [str(tmp_path / "images" / c) for c in ("a", "b")]
    clip = clips[1]
    assert clip.num_frames == SLICES and clip.obj_ids == [1, 3]
    assert np.array_equal(clip.masks[:, 0], np.moveaxis(lab == 1, 2, 0))
    hu = np.moveaxis(read_dicom_series(tmp_path / "images" / "b")[0], 2, 0)
    assert np.array_equal(clip.frames[..., 0], np.round(np.clip((hu + 1000) / 200 * 255, 0, 255)))


def test_a_label_on_another_grid_or_missing_is_a_bad_pair(tmp_path):
    write_dataset(tmp_path)
    nib.save(nib.Nifti1Image(label_volume(), np.eye(4)), str(tmp_path / "labels" / "b.nii.gz"))
    write_series(tmp_path / "images" / "c", seed=3)
    write_series(tmp_path / "images" / "d", [0, 1, 3], seed=4)
    nib.save(nib.Nifti1Image(label_volume(), np.eye(4)), str(tmp_path / "labels" / "d.nii.gz"))
    ds = open_dataset(tmp_path)
    assert len(ds) == 2  # case a only
    bad = {b.path: b.reason for b in ds.bad_samples}
    assert "does not lie on the voxels of the DICOM series" in bad[str(tmp_path / "labels" / "b.nii.gz")]
    assert bad[str(tmp_path / "images" / "c")].startswith("no label file: expected labels/c.nii.gz")
    assert bad[str(tmp_path / "images" / "d")].startswith("missing slice(s)")


@pytest.fixture()
def small_sam2(monkeypatch):
    """The CLI's model loader gives a shrunk SAM 2.1 tiny (256 input) with random weights."""
    from sam2_oracle import SMALL_OVERRIDES

    def load(args):
        torch.manual_seed(args.seed)
        return build_sam2("sam2.1_hiera_t", device="cpu", hydra_overrides_extra=list(SMALL_OVERRIDES))

    monkeypatch.setattr(track_cli, "load_model", load)


@pytest.mark.usefixtures("one_thread", "small_sam2")
def test_track_a_series_writes_a_nifti_mask_with_the_series_affine(tmp_path):
    from PIL import Image

    stored = np.full((5, 40, 32), 1000, np.int16)  # slices x rows x columns; a bright block on slices 1-3
    stored[1:4, 10:25, 8:20] = 2200
    write_series(tmp_path / "scan", range(5), stored=stored)
    out = tmp_path / "out"
    assert main(["track", "--volume", str(tmp_path / "scan"), "--frame", "2", "--box", "10,8,25,20",
                 "--window", "500,1000", "--model", "sam2.1_hiera_t", "--out", str(out)]) == 0
    mask = nib.load(str(out / "mask.nii.gz"))
    series = scan_dicom_series(tmp_path / "scan")
    assert mask.shape == series.shape == (32, 40, 5)
    assert np.allclose(mask.affine, series.affine, atol=1e-4) and int(mask.header["sform_code"]) == 1
    data = np.asarray(mask.dataobj)
    for t in range(5):  # slice t of the series is frame t's label PNG
        assert np.array_equal(data[:, :, t], np.asarray(Image.open(out / "masks" / f"{t:05d}.png")))
    assert data[:, :, 2].any()


def _pydicom_reads(monkeypatch) -> list:
    """Record the files the reader hands to pydicom's parser (the others are read by walking the first's layout)."""
    import samforge.data.dicom as dicom

    seen, parse = [], dicom._read_file
    monkeypatch.setattr(dicom, "_read_file", lambda path, pixels: seen.append(path.name) or parse(path, pixels))
    return seen


@pytest.mark.parametrize("pixels, implicit", [(True, False), (False, False), (True, True)])
def test_only_the_first_file_is_parsed_when_the_others_repeat_its_layout(tmp_path, monkeypatch, pixels, implicit):
    import samforge.data.dicom as dicom
    from pydicom.uid import ImplicitVRLittleEndian

    # element lengths differ from file to file (UIDs, InstanceNumber, positions, a per-slice intercept)
    names = write_series(tmp_path / "s", range(12))
    for k, name in enumerate(names):  # slice k: intercept -1024 + 1000 k, written as DS of another length
        ds = pydicom.dcmread(tmp_path / "s" / name)
        ds.RescaleIntercept = -1024 + 1000 * k
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(tmp_path / "s" / name, enforce_file_format=True)
    parsed = _pydicom_reads(monkeypatch)
    fast = read_dicom_series(tmp_path / "s") if pixels else (None, scan_dicom_series(tmp_path / "s"))
    assert parsed == [sorted(names, key=lambda n: int(n[2:6]))[0]]
    monkeypatch.setattr(dicom, "_layout", lambda data, pixels: None)  # every file through pydicom
    slow = read_dicom_series(tmp_path / "s") if pixels else (None, scan_dicom_series(tmp_path / "s"))
    assert len(parsed) == 1 + 12
    assert fast[1].files == slow[1].files and np.array_equal(fast[1].affine, slow[1].affine)
    if pixels:
        assert np.array_equal(fast[0], slow[0])
        for k in range(12):
            assert np.array_equal(fast[0][:, :, k], stored_values(k).T.astype(np.int32) - 1024 + 1000 * k)


def test_files_that_depart_from_the_first_files_layout_are_parsed(tmp_path, monkeypatch):
    from pydicom.uid import ImplicitVRLittleEndian

    names = write_series(tmp_path / "s", range(5), slope=0.5, intercept=-10.25)
    order = sorted(names, key=lambda n: int(n[2:6]))  # the order the reader visits them
    implicit, extra = tmp_path / "s" / order[2], tmp_path / "s" / order[3]
    ds = pydicom.dcmread(implicit)  # another transfer syntax: other element headers
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, enforce_file_format=True)
    ds = pydicom.dcmread(extra)  # one element more
    ds.SliceLocation = "12.5"
    ds.save_as(extra, enforce_file_format=True)
    parsed = _pydicom_reads(monkeypatch)
    vol, _ = read_dicom_series(tmp_path / "s")
    assert parsed == [order[0], order[2], order[3]]
    for k in range(5):
        assert np.allclose(vol[:, :, k], stored_values(k).T * 0.5 - 10.25)
