"""Images: IDX files written here (plain and gz) read back and their damage detected; Fashion-MNIST
loading; CIFAR-10 binary batches written here (3 records a file) in grey levels; pixel sequences; an
ImageFolder of tiny PNGs with DeiT's transforms."""

import gzip
import pickle
import random
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from primaldual.data import images as I
from tests import tolerances as T

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_bytes(array, magic=None, shape=None):
    shape = array.shape if shape is None else shape
    magic = bytes([0, 0, 0x08, len(shape)]) if magic is None else magic
    return magic + struct.pack(f">{len(shape)}I", *shape) + np.ascontiguousarray(array, np.uint8).tobytes()


def _write(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, rng, gz):
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    image_path = _write(tmp_path / "images", _idx_bytes(images), gz)
    label_path = _write(tmp_path / "labels", _idx_bytes(labels), gz)
    assert np.array_equal(I.read_idx(image_path, ndim=3), images)
    assert np.array_equal(I.read_idx(label_path, ndim=1), labels)
    assert I.read_idx(label_path).shape == (5,)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_payload(tmp_path, rng, gz):
    data = _idx_bytes(rng.integers(0, 256, (4, 28, 28), dtype=np.uint8))
    path = _write(tmp_path / "train-images-idx3-ubyte", data[:-10], gz)
    match = "truncated payload: sizes \\[4, 28, 28\\] declare 3136 bytes, the file holds 3126"
    with pytest.raises(ValueError, match=match):
        I.read_idx(path)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        I.read_idx(path)


def test_idx_truncated_header_and_trailing_bytes(tmp_path):
    path = _write(tmp_path / "empty", b"")
    with pytest.raises(ValueError, match=f"{path}: 0 bytes, too short for an IDX header"):
        I.read_idx(path)
    path = _write(tmp_path / "short", bytes([0, 0, 8, 3, 0, 0, 0, 4]))
    with pytest.raises(ValueError, match=f"{path}: truncated header"):
        I.read_idx(path)
    path = _write(tmp_path / "long", _idx_bytes(np.zeros(3, np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match="bytes beyond the 3 declared"):
        I.read_idx(path)


@pytest.mark.parametrize(
    "magic, ndim, match",
    [
        (bytes([0, 0, 0x09, 1]), None, "magic number 0x00000901"),  # int8, not uint8
        (bytes([1, 0, 0x08, 1]), None, "magic number 0x01000801"),
        (bytes([0, 0, 0x08, 0]), None, "magic number 0x00000800"),
        (bytes([0, 0, 0x08, 1]), 3, "declares 1 dimensions, expected 3 \\(0x00000803\\)"),
    ],
)
def test_idx_wrong_magic(tmp_path, magic, ndim, match):
    path = _write(tmp_path / "labels", magic + struct.pack(">I", 3) + bytes(3))
    with pytest.raises(ValueError, match=match) as info:
        I.read_idx(path, ndim=ndim)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_huge_declared_size_does_not_allocate(tmp_path, gz):
    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 60_000) + bytes(100)
    path = _write(tmp_path / "forged", data, gz)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="truncated payload.*the file holds 100"):
            I.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def test_idx_damaged_gzip(tmp_path):
    data = gzip.compress(_idx_bytes(np.arange(2000, dtype=np.uint8) % 251))
    path = _write(tmp_path / "labels.gz", data[: len(data) // 2])
    with pytest.raises(ValueError, match="labels.gz"):
        I.read_idx(path)
    path = _write(tmp_path / "garbage.gz", b"\x1f\x8b" + b"not deflate at all")
    with pytest.raises(ValueError, match="garbage.gz"):
        I.read_idx(path)
    with pytest.raises(FileNotFoundError, match="absent"):
        I.read_idx(tmp_path / "absent")


def _fashion_folder(root, rng, n_train=6, n_test=4, gz=(False, True, True, False)):
    arrays = [
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    ]
    for name, array, compress in zip(NAMES, arrays, gz):
        _write(root / (name + ".gz" if compress else name), _idx_bytes(array), compress)
    return arrays


def test_load_fashion_mnist(tmp_path, rng):
    train_x, train_y, test_x, test_y = _fashion_folder(tmp_path, rng)
    data = I.load_fashion_mnist(tmp_path)
    assert data.name == "fashion-mnist" and data.num_classes == 10 and data.classes[9] == "Ankle boot"
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (6, 28, 28)
    assert data.train.labels.dtype == torch.int64 and len(data.test) == 4
    assert np.array_equal(data.train.images.numpy(), train_x) and np.array_equal(data.test.images.numpy(), test_x)
    assert data.train.labels.tolist() == train_y.tolist() and data.test.labels.tolist() == test_y.tolist()
    image, label = data.test.to_dataset()[1]
    assert torch.equal(image, torch.from_numpy(test_x[1])) and label.item() == test_y[1]


def test_load_fashion_mnist_missing_files(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(I, "FASHION_MNIST_ROOT", tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match="not-installed/train-images-idx3-ubyte.*dataset-fashion-mnist"):
        I.load_fashion_mnist()
    _fashion_folder(tmp_path, rng)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.*pass root="):
        I.load_fashion_mnist(tmp_path)


def test_load_fashion_mnist_count_mismatch(tmp_path, rng):
    _fashion_folder(tmp_path, rng)
    _write(tmp_path / "train-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(5, np.uint8)), gz=True)
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz holds 5 labels, .*train-images-idx3-ubyte 6"):
        I.load_fashion_mnist(tmp_path)


def test_load_fashion_mnist_bad_content(tmp_path, rng):
    _fashion_folder(tmp_path, rng)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.array([1, 2, 10, 3], np.uint8)))
    with pytest.raises(ValueError, match="labels must lie in 0..9, got 10"):
        I.load_fashion_mnist(tmp_path)
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(np.zeros((4, 32, 32), np.uint8)))
    with pytest.raises(ValueError, match="28x28"):
        I.load_fashion_mnist(tmp_path)
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="expected 3"):
        I.load_fashion_mnist(tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10 (binary version)

CIFAR_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")


def _cifar_folder(folder, rng, n=3):
    """The six binary batch files in ``folder``, ``n`` records each: {name: (rgb (n, 3, 32, 32), labels (n,))}."""
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in CIFAR_FILES:
        rgb = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        records = np.concatenate([labels[:, None], rgb.reshape(n, 3072)], axis=1)
        (folder / name).write_bytes(records.tobytes())
        batches[name] = rgb, labels
    return batches


def _grey(rgb):
    """The float grey levels 0.2989 R + 0.5870 G + 0.1140 B of ``rgb`` (n, 3, H, W) -> (n, H, W)."""
    r, g, b = rgb.astype(np.float64).transpose(1, 0, 2, 3)
    return 0.2989 * r + 0.5870 * g + 0.1140 * b


@pytest.mark.parametrize("parent", [False, True])
def test_load_cifar10_binary(tmp_path, rng, parent):
    folder = tmp_path / "cifar-10-batches-bin"
    batches = _cifar_folder(folder, rng)
    data = I.load_cifar10_binary(tmp_path if parent else folder)
    assert data.name == "cifar10" and data.classes == I.CIFAR10_CLASSES and data.classes[9] == "truck"
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (15, 32, 32)
    assert data.test.images.shape == (3, 32, 32) and data.train.labels.dtype == torch.int64
    train_labels = np.concatenate([batches[name][1] for name in CIFAR_FILES[:5]])
    assert data.train.labels.tolist() == train_labels.tolist()
    assert data.test.labels.tolist() == batches["test_batch.bin"][1].tolist()
    rgb = batches["data_batch_2.bin"][0]  # records 3..5 of the training split, in file order
    grey = data.train.images[3:6].numpy()
    assert np.array_equal(grey, np.trunc(_grey(rgb) * 255.5 / 255).astype(np.uint8))  # TensorFlow's conversion
    rgb[1, :, 4, 7] = (200, 100, 50)  # pixel (4, 7) of record 4: channel planes are row-major 32x32
    records = np.concatenate([batches["data_batch_2.bin"][1][:, None], rgb.reshape(3, 3072)], axis=1)
    (folder / "data_batch_2.bin").write_bytes(records.tobytes())
    data = I.load_cifar10_binary(tmp_path if parent else folder)
    assert data.train.images[4, 4, 7].item() == 124  # 59.78 + 58.70 + 5.70 = 124.18
    assert I.pixel_sequence(data.train.images)[4, 4 * 32 + 7].item() == 124
    assert I.pixel_sequence(data.test.images).shape == (3, 1024)


def test_rgb_to_grey_by_hand():
    rgb = np.zeros((1, 3, 1, 6), np.uint8)
    rgb[0, :, 0] = np.array([(200, 100, 50), (0, 1, 0), (1, 0, 0), (0, 0, 250), (255, 255, 255), (0, 0, 0)]).T
    # g = 59.78 + 58.70 + 5.70 = 124.18, 0.587, 0.2989, 28.5, 254.9745, 0; times 255.5 / 255, truncated:
    assert I.rgb_to_grey(rgb).tolist() == [[[124, 0, 0, 28, 255, 0]]]
    with pytest.raises(ValueError, match="uint8 array \\(n, 3, H, W\\)"):
        I.rgb_to_grey(rgb[:, :2])


def test_load_cifar10_binary_class_names(tmp_path, rng):
    _cifar_folder(tmp_path, rng)
    names = [f"class {c}" for c in range(10)]
    (tmp_path / "batches.meta.txt").write_text("\n".join(names) + "\n\n\n")  # the real file ends in blank lines
    assert I.load_cifar10_binary(tmp_path).classes == tuple(names)
    (tmp_path / "batches.meta.txt").write_text("airplane\nautomobile\n")
    with pytest.raises(ValueError, match="batches.meta.txt: expected 10 class names, one a line, got 2"):
        I.load_cifar10_binary(tmp_path)


def test_load_cifar10_binary_missing(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match=f"CIFAR-10 folder {tmp_path / 'absent'} not found.*binary"):
        I.load_cifar10_binary(tmp_path / "absent")
    _cifar_folder(tmp_path / "cifar-10-batches-bin", rng)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    match = f"CIFAR-10 file {tmp_path / 'cifar-10-batches-bin' / 'data_batch_4.bin'} not found.*test_batch.bin"
    for root in (tmp_path, tmp_path / "cifar-10-batches-bin"):
        with pytest.raises(FileNotFoundError, match=match):
            I.load_cifar10_binary(root)
    (tmp_path / "python").mkdir()  # e.g. the pickled python version's folder: nothing the loader reads
    (tmp_path / "python" / "data_batch_1").write_bytes(b"\x80\x02")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'python' / 'data_batch_1.bin'} not found"):
        I.load_cifar10_binary(tmp_path / "python")


@pytest.mark.parametrize("cut", [1, 3072, 3 * 3073])  # a byte, all but the label of the last record, all
def test_load_cifar10_binary_truncated(tmp_path, rng, cut):
    _cifar_folder(tmp_path, rng)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(ValueError, match=f"{path}: {3 * 3073 - cut} bytes, not a positive multiple of the 3073-byte"):
        I.load_cifar10_binary(tmp_path)


def test_load_cifar10_binary_bad_label(tmp_path, rng):
    _cifar_folder(tmp_path, rng)
    path = tmp_path / "data_batch_3.bin"
    raw = bytearray(path.read_bytes())
    raw[2 * 3073] = 10  # the label byte of record 2
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{path}: labels must lie in 0..9, record 2 has 10"):
        I.load_cifar10_binary(tmp_path)


def test_pixel_sequence(rng):
    images = torch.from_numpy(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8))
    images[0, 27, 27] = 255
    tokens = I.pixel_sequence(images)
    assert tokens.shape == (3, 784) and tokens.dtype == torch.int64
    n, i, j = torch.meshgrid(torch.arange(3), torch.arange(28), torch.arange(28), indexing="ij")
    assert torch.equal(tokens[n, i * 28 + j], images.long())
    assert tokens[0, 783] == 255
    with pytest.raises(ValueError, match="uint8 tensor"):
        I.pixel_sequence(images.float())
    with pytest.raises(ValueError, match="uint8 tensor"):
        I.pixel_sequence(images[0])


def test_image_split_validates():
    with pytest.raises(ValueError, match="labels must be an int64"):
        I.ImageSplit(torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# ----------------------------------------------------------------------------- ImageFolder


@pytest.fixture
def folder(tmp_path, rng):
    for cls, mode in (("cat", "RGB"), ("dog", "L")):
        (tmp_path / cls).mkdir()
        for k in range(2):
            shape = (20, 20, 3) if mode == "RGB" else (20, 20)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(tmp_path / cls / f"{k}.png")
    return tmp_path


def test_image_folder_loads(folder):
    torch.manual_seed(0)
    random.seed(0)  # timm's RandAugment draws from Python's random
    train = I.image_folder(folder, train=True, img_size=16)
    test = I.image_folder(folder, train=False, img_size=16)
    assert train.classes == ["cat", "dog"] and len(train) == 4
    for dataset in (train, test):
        for idx in range(4):
            image, label = dataset[idx]
            assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == idx // 2
    assert torch.equal(test[2][0], test[2][0])  # eval is deterministic
    assert not torch.equal(train[0][0], train[0][0])  # train augments
    assert pickle.loads(pickle.dumps(train))[1][0].shape == (3, 16, 16)  # spawned DataLoader workers
    reference = np.asarray(Image.open(folder / "cat" / "0.png").convert("RGB").resize((18, 18), Image.BICUBIC))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (reference[1:17, 1:17] / 255.0 - mean) / std  # resize to 16 / 0.875, centre crop 16
    # the same uint8 pixels; x / 255 rounded to float32, then (x - mean) / std in float32 with float32 statistics:
    # standardized_atol, and eps · |x| / std for the division by 255
    largest = np.abs(expected).max()
    atol = T.standardized_atol(torch.float32, mean, std, largest) + T.eps(torch.float32) * (
        np.max(mean / std) + largest
    )
    T.assert_close_normwise(test[0][0].permute(1, 2, 0).double(), torch.from_numpy(expected), atol, "image")


def test_deit_transform_steps():
    train = [type(t).__name__ for t in I.deit_transform(32, train=True).transforms]
    assert train[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert "RandomErasing" in train and "Normalize" in train
    test = [type(t).__name__ for t in I.deit_transform(32, train=False).transforms]
    assert test[:2] == ["Resize", "CenterCrop"] and I.deit_transform(32, train=False).transforms[0].size == 36


def test_deit_randaugment_at_full_magnitude():
    """m9 + N(0, 0.5) noise reaches magnitude 10, where timm's posterize asks Pillow for 0 bits."""
    (ra,) = [t for t in I.deit_transform(16, train=True).transforms if type(t).__name__ == "RandAugment"]
    (posterize,) = [op for op in ra.ops if op.name == "PosterizeIncreasing"]
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0.0
    image = Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
    assert np.all(np.asarray(posterize(image)) == 128)  # 1 bit kept: 200 -> 128


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_image_folder_corrupt_file(folder, damage):
    bad = folder / "dog" / "1.png"
    raw = bad.read_bytes()
    bad.write_bytes(b"this is not a png" if damage == "garbage" else raw[: len(raw) // 2])
    dataset = I.image_folder(folder, train=False, img_size=16)
    dataset[2]  # the intact dog image still loads
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        dataset[3]
