"""Real files in, written here with Pillow, pydicom and nibabel: folders, DICOM, NIfTI, the store."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from dvclust import DVClustError, load_dataset
from dvclust.data import ReadOptions
from dvclust.data.store import write_array_store

OPTS = ReadOptions(size=16)


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)


@pytest.fixture
def messy_folder(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    _png(root / "cats" / "a.png", rng.integers(0, 255, (20, 30), dtype=np.uint8))
    _png(root / "cats" / "b.jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    _png(root / "dogs" / "c16.png", (np.arange(400, dtype=np.uint16).reshape(20, 20) * 100))
    _png(root / "dogs" / "rgba.png", rng.integers(0, 255, (12, 18, 4), dtype=np.uint8))
    _png(root / "dogs" / "d.bmp", rng.integers(0, 255, (64, 32), dtype=np.uint8))
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "dogs" / "notes.png").write_text("this is text, not an image")
    good = root / "cats" / "b.jpg"
    (root / "cats" / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (root / "cats" / "README.txt").write_text("ignored: not an image suffix")
    return root


def test_folder_reads_good_skips_bad(messy_folder, tmp_path):
    d = load_dataset(messy_folder, options=OPTS, store=tmp_path / "store")
    assert d.images.shape == (5, 1, 16, 16) and d.images.dtype == np.uint8
    assert d.class_names == ["cats", "dogs"]
    assert sorted(d.sources) == ["cats/a.png", "cats/b.jpg", "dogs/c16.png", "dogs/d.bmp",
                                 "dogs/rgba.png"]
    assert d.labels.tolist() == [0 if s.startswith("cats") else 1 for s in d.sources]
    skipped = dict(d.skipped)
    assert set(skipped) == {"dogs/empty.png", "dogs/notes.png", "cats/truncated.jpg"}
    assert all("image" in r for r in skipped.values())
    c16 = d.images[d.sources.index("dogs/c16.png"), 0]
    assert c16.min() <= 5 and c16.max() >= 245  # 16-bit scaled by its own range


def test_folder_options(messy_folder, tmp_path):
    d = load_dataset(messy_folder, options=ReadOptions(size=8, channels=3, resize="crop",
                                                       folder_labels=False), store=tmp_path / "s")
    assert d.images.shape == (5, 3, 8, 8) and d.labels is None


def test_pad_keeps_whole_image_crop_takes_centre():
    from dvclust.data.preprocess import preprocess
    img = np.zeros((10, 20), np.float32)
    img[:, :5] = 1.0  # bright left quarter
    pad = preprocess(img, ReadOptions(size=20, resize="pad"))
    crop = preprocess(img, ReadOptions(size=20, resize="crop"))
    assert pad[0, :5].sum() == 0 and pad[0, 10, :4].min() == 255  # padded rows top, content kept
    assert crop[0, 10, :2].max() == 0  # the bright quarter lies outside the centre crop


def test_empty_and_all_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DVClustError, match="holds no image, DICOM or NIfTI files"):
        load_dataset(tmp_path / "empty", options=OPTS, store=tmp_path / "s1")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"")
    (bad / "y.jpg").write_text("nope")
    with pytest.raises(DVClustError, match="none of its 2 files could be read"):
        load_dataset(bad, options=OPTS, store=tmp_path / "s2")


def test_store_reuse_and_rebuild(messy_folder, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="dvclust")  # progress goes through the dvclust logger
    store = tmp_path / "store"
    load_dataset(messy_folder, options=OPTS, store=store, verbose=True)
    assert "preprocessed 5 images" in _taken(caplog)
    before = load_dataset(messy_folder, options=OPTS, store=store, verbose=True)
    assert "reusing" in _taken(caplog)
    old_images = before.images[:]
    _png(messy_folder / "cats" / "a.png", np.full((20, 30), 255, np.uint8))  # rewritten: row 0 changes
    _png(messy_folder / "cats" / "new.png", np.zeros((9, 9), np.uint8))
    d = load_dataset(messy_folder, options=OPTS, store=store, verbose=True)
    assert "stale (2 file(s) added, removed or changed): rebuilding" in _taken(caplog)
    assert len(d) == 6 and not np.array_equal(d.images[0], old_images[0])
    # A run that opened the store before the rebuild still reads the images it started with.
    assert len(before) == 5 and np.array_equal(before.images[:], old_images)
    load_dataset(messy_folder, options=ReadOptions(size=12), store=store, verbose=True)
    assert "stale (options changed)" in _taken(caplog)


def _taken(caplog) -> str:
    text = caplog.text
    caplog.clear()
    return text


def test_parallel_build_matches_serial(tmp_path):
    root = tmp_path / "many"
    rng = np.random.default_rng(1)
    for i in range(80):
        _png(root / f"{i:03d}.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))
    a = load_dataset(root, options=OPTS, store=tmp_path / "a", workers=1)
    b = load_dataset(root, options=OPTS, store=tmp_path / "b", workers=2)
    assert a.sources == b.sources and np.array_equal(a.images[:], b.images[:])



def _load_shared_store(args):
    root, store = args
    d = load_dataset(root, options=OPTS, store=store, workers=1)
    return len(d), int(np.asarray(d.images[:]).sum())


def test_concurrent_runs_share_one_store(tmp_path):
    """Seeds launched at once on one folder: one builds, the others wait and reuse (a race on
    images.u8.tmp made one of three benchmark runs fail before the store was locked)."""
    import multiprocessing as mp

    root = tmp_path / "shared"
    rng = np.random.default_rng(2)
    for i in range(300):
        _png(root / f"{i:03d}.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))
    with mp.get_context("fork").Pool(4) as pool:
        out = pool.map(_load_shared_store, [(root, tmp_path / "store")] * 4)
    assert len(set(out)) == 1 and out[0][0] == 300

# ---- DICOM ------------------------------------------------------------------------------------
def _dicom(path, pixels, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None,
           frames=1, syntax=None):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset, Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if syntax:  # a compressed syntax this machine has no decoder for (or garbage in it)
        from pydicom.encaps import encapsulate
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64])
    ds.save_as(path, enforce_file_format=True)


def test_dicom_luts_inversion_frames_and_corrupt(tmp_path):
    root = tmp_path / "dcm"
    root.mkdir()
    ramp = np.tile(np.arange(32, dtype=np.uint16) * 100, (32, 1))  # dark left, bright right
    _dicom(root / "mono2.dcm", ramp)
    _dicom(root / "mono1.dcm", ramp, photometric="MONOCHROME1")
    # rescale to HU (-1024 + 2x), then a window over the middle of that range
    _dicom(root / "windowed.dcm", ramp, slope=2.0, intercept=-1024.0, window=(2176, 2000))
    _dicom(root / "multi.dcm", np.stack([ramp, ramp[:, ::-1], ramp]), frames=3)
    _dicom(root / "noext", ramp)  # DICOM without a suffix, found by its 'DICM' marker
    (root / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    _dicom(root / "jpeg2000.dcm", ramp, syntax="1.2.840.10008.1.2.4.90")  # raw bytes, wrong syntax
    d = load_dataset(root, options=ReadOptions(size=32), store=tmp_path / "s")
    by = dict(zip(d.sources, d.images[:][:, 0]))
    m2, m1 = by["mono2.dcm"], by["mono1.dcm"]
    assert m2[:, 0].mean() < 10 and m2[:, -1].mean() > 245       # bright means dense
    assert np.array_equal(m1, 255 - m2)                             # MONOCHROME1 inverted
    w = by["windowed.dcm"]
    # window 2176 +/- 1000 on HU = 2*v - 1024: left half below the window is clipped to black
    assert w[:, :5].max() == 0 and w[:, -1].min() == 255 and 0 < w[:, 16].mean() < 255
    assert {"multi.dcm#frame=0", "multi.dcm#frame=1", "multi.dcm#frame=2"} <= set(by)
    assert np.array_equal(by["multi.dcm#frame=1"], m2[:, ::-1])
    assert "noext" in by
    assert {s for s, _ in d.skipped} == {"corrupt.dcm", "jpeg2000.dcm"}


# ---- NIfTI ------------------------------------------------------------------------------------
def test_nifti_slices_axis_clip_and_nan(tmp_path):
    nib = pytest.importorskip("nibabel")
    root = tmp_path / "nii"
    root.mkdir()
    vol = np.zeros((20, 24, 10), np.float32)
    for k in range(10):
        vol[:, :, k] = k
    vol[0, 0, 0] = 1e6  # an outlier the percentile clip removes
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), np.nan, np.float32), np.eye(4)), root / "nan.nii")
    d = load_dataset(root, options=ReadOptions(size=16, slices="2:8:2", clip=(1, 99)),
                     store=tmp_path / "s")
    assert d.sources == ["a.nii.gz#slice=2", "a.nii.gz#slice=4", "a.nii.gz#slice=6"]
    means = [d.images[i].mean() for i in range(3)]
    assert means[0] < means[1] < means[2] and means[2] < 255  # not squashed by the outlier
    assert d.skipped == [("nan.nii", "the volume holds no finite values (all NaN/Inf)")]
    d0 = load_dataset(root / "a.nii.gz", options=ReadOptions(size=16, axis=0), store=tmp_path / "s0")
    assert len(d0) == 20


# ---- bounded memory ---------------------------------------------------------------------------
def test_store_larger_than_memory_limit_is_read_in_bounded_memory(tmp_path):
    """Train-loader and inference passes over a 512 MB store, in a process whose address space
    is capped at what it holds before touching the store + 256 MB."""
    n = 512 * 1024 * 1024 // (28 * 28)
    chunks = (np.full((8192, 1, 28, 28), i % 251, np.uint8) for i in range(-(-n // 8192)))
    store = write_array_store(tmp_path / "big", chunks)
    script = textwrap.dedent(f"""
        import resource, numpy as np, torch
        from torch.utils.data import DataLoader
        from dvclust.data import load_dataset
        from dvclust.data.dataset import ImageDataset, collate_batch
        d = load_dataset({str(store)!r})
        vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
        assert d.images.shape[0] * 784 > 512 * 2**20 - 8192 * 784
        seen = 0
        for xb, idx in DataLoader(ImageDataset(d.images), batch_size=4096, shuffle=True,
                                  collate_fn=collate_batch):
            seen += len(idx)
        total = sum(int(d.images[s:s + 8192].sum(dtype=np.int64)) for s in range(0, len(d), 8192))
        print(seen, len(d), total)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    seen, n_rows, total = map(int, p.stdout.split())
    assert seen == n_rows >= n - 8192
    # the sequential pass read every row's bytes: chunk i holds the value i % 251 throughout
    assert total == sum((i % 251) * 8192 * 784 for i in range(n_rows // 8192))


# ---- the reader registry ----------------------------------------------------------------------
def test_a_registered_reader_reads_its_files_through_the_store(tmp_path):
    from dvclust.data import Reader, register_reader
    from dvclust.data.readers import READERS, optional_import

    class TextMatrix(Reader):
        name, suffixes = "text matrix", (".mat.txt",)

        def read(self, path, opts):
            return [("", np.loadtxt(path, dtype=np.float32))]

    rng = np.random.default_rng(0)
    for cls, level in (("dark", 0.1), ("light", 0.9)):
        (tmp_path / "m" / cls).mkdir(parents=True)
        for i in range(3):
            np.savetxt(tmp_path / "m" / cls / f"{i}.mat.txt", np.clip(rng.normal(level, 0.05, (12, 12)), 0, 1))
    (tmp_path / "m" / "dark" / "bad.mat.txt").write_text("not numbers")
    reader = register_reader(TextMatrix(), first=True)
    try:
        d = load_dataset(tmp_path / "m", options=ReadOptions(size=8), store=tmp_path / "store")
    finally:
        READERS.remove(reader)
    assert len(d) == 6 and d.class_names == ["dark", "light"] and d.images.shape == (6, 1, 8, 8)
    assert d.images[:3].mean() < 60 < 200 < d.images[3:].mean()
    assert [s for s, _ in d.skipped] == ["dark/bad.mat.txt"]  # a bad file is skipped and listed
    with pytest.raises(DVClustError, match=r"reading X needs no_such_lib: pip install 'dvclust\[x\]'"):
        optional_import("no_such_lib", "x", "X")
