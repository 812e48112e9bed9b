import gzip

import numpy as np
import pytest

from conftest import shared
from dvclust import DVClustError, load_dataset
from dvclust.data import as_images


def test_digits_embedded():
    d = load_dataset("digits")
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == np.float32
    assert d.images.min() >= 0 and d.images.max() == 1.0
    assert len(d.labels) == 1797 and d.sources[0] == "digits#0"


def test_mnist_folder_splits():
    d = load_dataset(shared("mnist"), split="test")
    assert d.images.shape == (10000, 1, 28, 28) and d.images.dtype == np.uint8
    assert np.bincount(d.labels).tolist()[:3] == [980, 1135, 1032]  # the README's counts


def test_medmnist_rgb_all_splits_and_choice():
    path = shared("medmnist/retinamnist.npz")
    d = load_dataset(path)
    assert d.images.shape == (1600, 3, 28, 28)
    assert np.bincount(d.labels[:1080]).tolist() == [486, 128, 206, 194, 66]
    assert d.sources[1080] == "retinamnist.npz#val/0"
    t = load_dataset(path, split="test")
    assert len(t) == 400
    assert len(load_dataset(path, split="train,val")) == 1200


def test_medmnist_other_flag_and_size(tmp_path):
    """Any flag and size: a 64-px gray file with the official key layout."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "bloodmnist_64.npz",
             train_images=rng.integers(0, 255, (5, 64, 64), dtype=np.uint8),
             train_labels=np.arange(5)[:, None],
             test_images=rng.integers(0, 255, (3, 64, 64), dtype=np.uint8),
             test_labels=np.arange(3)[:, None])
    d = load_dataset(tmp_path / "bloodmnist_64.npz")
    assert d.images.shape == (8, 1, 64, 64) and d.labels.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]


def test_plain_arrays(tmp_path):
    x = np.random.default_rng(0).random((4, 3, 20, 20)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    assert np.allclose(load_dataset(tmp_path / "a.npy").images, x)
    np.savez(tmp_path / "b.npz", images=(x * 255).astype(np.uint8).transpose(0, 2, 3, 1), labels=[0, 1, 0, 1])
    d = load_dataset(tmp_path / "b.npz")
    assert d.images.shape == (4, 3, 20, 20) and d.labels.tolist() == [0, 1, 0, 1]


def test_non_unit_range_is_scaled():
    x = np.arange(2 * 10 * 10, dtype=np.int16).reshape(2, 10, 10)
    out = as_images(x)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0


def test_mnist_idx_written_here(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for stem, arr, magic in [("t10k-images-idx3-ubyte", imgs, b"\x00\x00\x08\x03"),
                             ("t10k-labels-idx1-ubyte", np.array([3, 7], np.uint8), b"\x00\x00\x08\x01")]:
        dims = b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as f:
            f.write(magic + dims + arr.tobytes())
    d = load_dataset(tmp_path, split="test")
    assert d.labels.tolist() == [3, 7] and np.array_equal(d.images[:, 0], imgs)


# ---- bad input: one clear line naming the file or value ----------------------------------
@pytest.mark.parametrize("arr, words", [
    (np.zeros((0, 28, 28)), "no images"),
    (np.zeros((5, 28)), "shape"),
    (np.zeros((5, 5, 28, 28)), "channel"),
    (np.full((3, 28, 28), np.nan), "NaN"),
    (np.array([[[np.inf] * 9] * 9]), "NaN or Inf"),
    (np.zeros((2, 4, 4)), "outside 8..1024"),
])
def test_bad_arrays(tmp_path, arr, words):
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(DVClustError, match=words) as e:
        load_dataset(tmp_path / "bad.npy")
    assert "bad.npy" in str(e.value) and "\n" not in str(e.value)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(DVClustError, match="no such file"):
        load_dataset(tmp_path / "nope.npz")
    with pytest.raises(DVClustError, match="embedded: digits"):
        load_dataset("imagenet")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DVClustError, match="unsupported file type"):
        load_dataset(tmp_path / "x.txt")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DVClustError, match="broken.npz"):
        load_dataset(tmp_path / "broken.npz")


def test_bad_split(tmp_path):
    with pytest.raises(DVClustError, match="unknown split"):
        load_dataset(shared("medmnist/retinamnist.npz"), split="training")


def test_augment_auto_on_the_real_sets():
    """The rule of `augment: auto` on the data it was measured on: jitter MNIST, not the medical
    sets (on which it lowered NMI)."""
    from dvclust import Config
    from dvclust.data.augment import background_fraction

    auto = Config()
    for rel, split, want in [("mnist", "test", "digits"), ("medmnist/retinamnist.npz", "all", None),
                             ("medmnist_derived/pneumoniamnist_subset_varun19424.npz", "all", None)]:
        d = load_dataset(shared(rel), split=split)
        assert auto.augment_for(d.images.shape[1:], background_fraction(d.images)) is want, rel


@pytest.mark.parametrize("name", ["xray", "photo", "micro"])
def test_medical_policies_never_fill_with_black(name):
    """A flat gray frame stays gray everywhere under the medical policies (reflected borders, no
    black wedges), while the digits jitter fills the corners it turns in with zeros."""
    import torch

    from dvclust.data.augment import make_policy

    x = torch.full((16, 3 if name != "xray" else 1, 32, 32), 0.5)
    torch.manual_seed(0)
    y = make_policy(name, (32, 32))(x)
    assert y.shape == x.shape and y.min() > 0.2 and y.max() <= 1.0
    torch.manual_seed(0)
    assert torch.equal(make_policy(name, (32, 32))(x), y)  # seeded: the same views again
    torch.manual_seed(1)
    assert make_policy("digits", (32, 32))(x).min() == 0.0


def test_xray_policy_keeps_left_and_right():
    """No flips for X-rays: a mark on the left stays on the left in every view."""
    import torch

    from dvclust.data.augment import make_policy

    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 12:20, 2:10] = 1.0
    torch.manual_seed(0)
    y = make_policy("xray", (32, 32))(x)
    assert (y[:, :, :, :16].mean((1, 2, 3)) > y[:, :, :, 16:].mean((1, 2, 3))).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_png_bytes_decode_to_the_same_pixels(channels):
    """The hand-written PNG encoder the exports, report and review app use: what PIL reads back
    is the image as the run saw it, for gray and RGB, uint8 and float in [0, 1], stored or
    compressed; the exports' files are stored below one disk block and compressed above."""
    import io

    from PIL import Image

    from dvclust.curate import DISK_BLOCK, file_png
    from dvclust.data.images import png_bytes

    rng = np.random.default_rng(0)
    for h, w in ((9, 13), (70, 90)):                     # not square: rows vs columns
        img = rng.integers(0, 256, (channels, h, w), dtype=np.uint8)
        img[:, h // 2:] = 7                              # something to compress
        hwc = img[0] if channels == 1 else img.transpose(1, 2, 0)
        for given in (img, img / 255.0):
            for encoded in (png_bytes(given), png_bytes(given, 0), file_png(given)):
                back = Image.open(io.BytesIO(encoded))
                assert back.mode == ("L" if channels == 1 else "RGB")
                assert np.array_equal(np.asarray(back), hwc)
        stored = len(png_bytes(img, 0))
        assert (len(file_png(img)) == stored) == (img.size + h <= DISK_BLOCK)
