"""Image data: Fashion-MNIST from its IDX files, CIFAR-10 from its binary batches (in grey levels), the
pixel-sequence view of the LRA Image task, and ImageFolder directories with DeiT's transforms (timm).

IDX (the MNIST format): magic ``0x000008NN`` (two zero bytes, type 0x08 = uint8, ``NN`` dimensions),
then ``NN`` big-endian uint32 sizes, then the row-major uint8 payload; files may be gzip-compressed.

CIFAR-10 binary version (``cifar-10-batches-bin``): records of 3073 bytes, a label byte 0..9 then 1024 red,
1024 green and 1024 blue bytes, each channel row-major 32x32. (The python version, pickled, is not read.)
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from .sequences import _describe
from .splits import ClassificationData

if TYPE_CHECKING:  # Pillow, timm and torchvision (the vision extra) are imported where they are used
    from PIL.Image import Image
    from torchvision.datasets import ImageFolder

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_FOLDER = "cifar-10-batches-bin"
_CIFAR10_FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
_CIFAR10_META = "batches.meta.txt"
_CIFAR10_SIDE = 32
_CIFAR10_RECORD = 1 + 3 * _CIFAR10_SIDE**2  # label byte, then the red, green and blue planes
# tf.image.rgb_to_grayscale's weights (0.2989, 0.5870, 0.1140) in units of 1e-4: grey levels are computed exactly
_GREY_WEIGHTS = (2989, 5870, 1140)
_IDX_UINT8 = 0x08
_CHUNK = 1 << 24  # payloads are read in 16 MiB chunks: a forged size never allocates more than the file holds


@dataclass
class ImageSplit:
    """images ``(n, H, W)`` uint8 grey levels, labels ``(n,)`` int64 class indices."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 3:
            raise ValueError(f"images must be a uint8 tensor (n, H, W), got {_describe(self.images)}")
        n = self.images.shape[0]
        if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.int64 or self.labels.shape != (n,):
            raise ValueError(f"labels must be an int64 tensor (n,) = {(n,)}, got {_describe(self.labels)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to_dataset(self) -> TensorDataset:
        """A ``TensorDataset`` whose items are ``(image_i, label_i)``."""
        return TensorDataset(self.images, self.labels)


@dataclass
class ImageData:
    """A named image-classification set: ``classes[c]`` names class index ``c``."""

    name: str
    classes: tuple[str, ...]
    train: ImageSplit
    test: ImageSplit

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class TransformedImages(Dataset):
    """Item ``i``: ``(transform(images[i] as (1, H, W) uint8), labels[i])``."""

    def __init__(self, split: ImageSplit, transform: nn.Module) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.split.images[i][None]), self.split.labels[i]


@dataclass
class DatasetSplit:
    """One split as a torch ``Dataset`` of ``(image (C, H, W) float, label)`` items, transformed on access."""

    dataset: Dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def to_dataset(self) -> Dataset:
        return self.dataset


@dataclass
class ImageDatasets(ClassificationData):
    """An image classification set ready to train on: square ``image_size`` images of ``channels`` channels,
    each split a :class:`DatasetSplit`."""

    train: DatasetSplit
    val: DatasetSplit
    test: DatasetSplit
    image_size: int
    channels: int


# ----------------------------------------------------------------------------- IDX files


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """The uint8 array of an IDX file (plain or gzip), shape = its declared sizes.

    ``ndim``: the number of dimensions required (3 for images, magic 0x00000803; 1 for labels,
    0x00000801). Wrong magic, a header or payload shorter than declared, or bytes after it raise
    ValueError naming the file. (torchvision's MNIST reader wants its own folder layout, uncompressed
    files, and checks with asserts, hence this reader.)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} not found")
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4:
                raise ValueError(f"{len(magic)} bytes, too short for an IDX header")
            if magic[:3] != b"\x00\x00" + bytes([_IDX_UINT8]) or magic[3] == 0:
                raise ValueError(f"magic number 0x{magic.hex()} is not that of a uint8 IDX file (0x000008NN)")
            if ndim is not None and magic[3] != ndim:
                raise ValueError(
                    f"magic number 0x{magic.hex()} declares {magic[3]} dimensions, expected {ndim} "
                    f"(0x{0x800 + ndim:08x})"
                )
            header = f.read(4 * magic[3])
            if len(header) < 4 * magic[3]:
                raise ValueError(f"truncated header: {magic[3]} sizes declared, {len(header)} bytes of them present")
            shape = np.frombuffer(header, dtype=">u4").tolist()
            size = math.prod(shape)
            payload = bytearray()
            while len(payload) < size and (chunk := f.read(min(_CHUNK, size - len(payload)))):
                payload += chunk
            if len(payload) < size:
                raise ValueError(
                    f"truncated payload: sizes {shape} declare {size} bytes, the file holds {len(payload)}"
                )
            if f.read(1):
                raise ValueError(f"bytes beyond the {size} declared by sizes {shape}")
    except (ValueError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # the last three: a damaged .gz
        raise ValueError(f"{path}: {e}") from None
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(root: str | os.PathLike | None = None) -> ImageData:
    """Fashion-MNIST (Xiao et al. 2017) from ``root`` (default ``/usr/share/datasets/fashion-mnist``, the
    Debian package ``dataset-fashion-mnist``): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or ``.gz``.

    Returns train (60000) and test (10000) splits: images ``(n, 28, 28)`` uint8, labels int64 0..9.
    """
    root = FASHION_MNIST_ROOT if root is None else Path(root)
    splits = {}
    for split, (image_name, label_name) in _FASHION_MNIST_FILES.items():
        image_path, label_path = _find(root, image_name), _find(root, label_name)
        images, labels = read_idx(image_path, ndim=3), read_idx(label_path, ndim=1)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{image_path}: Fashion-MNIST images are 28x28, got {images.shape[1:]}")
        if len(labels) != len(images):
            raise ValueError(f"{label_path} holds {len(labels)} labels, {image_path} {len(images)} images")
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{label_path}: labels must lie in 0..9, got {labels.max()}")
        splits[split] = ImageSplit(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    return ImageData("fashion-mnist", FASHION_MNIST_CLASSES, splits["train"], splits["test"])


def _find(root: Path, name: str) -> Path:
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {root / name} (or .gz) not found: install the Debian package dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist, files in {FASHION_MNIST_ROOT}) or pass root= a folder holding "
        "the four IDX files"
    )


# ----------------------------------------------------------------------------- CIFAR-10 (binary version)


def load_cifar10_binary(root: str | os.PathLike) -> ImageData:
    """CIFAR-10 (Krizhevsky 2009) in grey levels, the images of LRA's Image task, from the binary version:
    ``root`` is the folder ``cifar-10-batches-bin`` or its parent. It holds ``data_batch_1.bin`` ..
    ``data_batch_5.bin`` (train) and ``test_batch.bin`` (test), and optionally ``batches.meta.txt`` (one class
    name a line; default :data:`CIFAR10_CLASSES`).

    Returns train (50000) and test (10000) splits: images ``(n, 32, 32)`` uint8 grey levels (:func:`rgb_to_grey`),
    labels int64 0..9. A missing folder or file raises FileNotFoundError; a file whose size is not a positive
    multiple of 3073 bytes, or a label byte above 9, raises ValueError naming the file.
    """
    folder = _cifar10_folder(Path(root))
    classes = _cifar10_classes(folder / _CIFAR10_META)
    splits = {}
    for split, names in _CIFAR10_FILES.items():
        images, labels = zip(*(_read_cifar10_batch(_cifar10_file(folder, name)) for name in names))
        splits[split] = ImageSplit(
            torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels).astype(np.int64))
        )
    return ImageData("cifar10", classes, splits["train"], splits["test"])


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Grey levels of uint8 RGB planes ``(n, 3, H, W)`` -> ``(n, H, W)`` uint8, as LRA's Image task makes them
    (``tf.image.rgb_to_grayscale`` on uint8 images): ``g = 0.2989 R + 0.5870 G + 0.1140 B``, taken back to uint8
    the way TensorFlow converts floats, ``trunc(g * 255.5 / 255)``; here in exact integer arithmetic, where
    TensorFlow's float32 may land one level lower on an exact boundary.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must be a uint8 array (n, 3, H, W), got {rgb.dtype} {rgb.shape}")
    weighted = sum(w * rgb[:, c].astype(np.int64) for c, w in enumerate(_GREY_WEIGHTS))  # 1e4 g
    return (weighted * 511 // (510 * 10_000)).astype(np.uint8)  # 255.5 / 255 = 511 / 510; white: 255


def _cifar10_folder(root: Path) -> Path:
    """``root/cifar-10-batches-bin`` if it is a folder, else ``root``."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 folder {root} not found: pass root= the folder {CIFAR10_FOLDER} of the "
            "binary version (data_batch_1.bin .. data_batch_5.bin, test_batch.bin) or its parent"
        )
    return root / CIFAR10_FOLDER if (root / CIFAR10_FOLDER).is_dir() else root


def _cifar10_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 file {path} not found: root= must be the folder {CIFAR10_FOLDER} (or its parent) of the "
            "binary version, holding data_batch_1.bin .. data_batch_5.bin and test_batch.bin (the pickled python "
            "version is not read)"
        )
    return path


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Grey images ``(n, 32, 32)`` uint8 and labels ``(n,)`` uint8 of one binary batch file."""
    size = path.stat().st_size
    if size == 0 or size % _CIFAR10_RECORD:
        raise ValueError(
            f"{path}: {size} bytes, not a positive multiple of the {_CIFAR10_RECORD}-byte records of "
            "CIFAR-10's binary version (a label byte, then 3072 pixel bytes): truncated, or not such "
            "a file"
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, _CIFAR10_RECORD)
    labels = records[:, 0]
    if labels.max() >= len(CIFAR10_CLASSES):
        bad = int(np.argmax(labels >= len(CIFAR10_CLASSES)))
        raise ValueError(f"{path}: labels must lie in 0..9, record {bad} has {labels[bad]}")
    rgb = records[:, 1:].reshape(-1, 3, _CIFAR10_SIDE, _CIFAR10_SIDE)
    return rgb_to_grey(rgb), labels.copy()


def _cifar10_classes(path: Path) -> tuple[str, ...]:
    """The class names of ``batches.meta.txt`` (blank lines ignored), or the standard ones if it is absent."""
    if not path.is_file():
        return CIFAR10_CLASSES
    names = tuple(line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip())
    if len(names) != len(CIFAR10_CLASSES):
        raise ValueError(f"{path}: expected {len(CIFAR10_CLASSES)} class names, one a line, got {len(names)}")
    return names


def pixel_sequence(images: Tensor) -> Tensor:
    """Grey-level token sequences of the LRA Image task: ``(n, H, W)`` uint8 -> ``(n, H*W)`` int64 in
    0..255, row-major (pixel ``(i, j)`` is token ``i*W + j``)."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(f"images must be a uint8 tensor (n, H, W), got {_describe(images)}")
    return images.reshape(images.shape[0], -1).to(torch.int64)


# ----------------------------------------------------------------------------- ImageFolder


def deit_transform(img_size: int = 224, *, train: bool) -> Callable:
    """DeiT's (Touvron et al. 2021) transforms through ``timm.data.create_transform``.

    train: RandomResizedCrop (bicubic), horizontal flip, RandAugment ``rand-m9-mstd0.5-inc1``, random
    erasing (p 0.25, per-pixel noise), ImageNet normalisation; colour jitter 0.4 is passed as DeiT does,
    and timm leaves it out while RandAugment is on, as in DeiT's runs.
    eval: resize to ``img_size / 0.875`` (bicubic), centre crop ``img_size``, ImageNet normalisation.
    """
    from timm.data import create_transform

    if not train:
        return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=0.875)
    transform = create_transform(
        img_size,
        is_training=True,
        color_jitter=0.4,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
    )
    # timm's PosterizeIncreasing keeps 0 bits at magnitude 10 (m9 plus N(0, 0.5) noise reaches it), which
    # old Pillow turned into a black image and Pillow 13 rejects with a ValueError: keep 1 bit instead.
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):
            if op.name == "PosterizeIncreasing":
                op.level_fn = partial(_keep_one_bit, op.level_fn)  # a partial pickles for spawned workers
    return transform


def _keep_one_bit(level_fn: Callable, magnitude: float, hparams: dict) -> tuple[int]:
    return (max(1, level_fn(magnitude, hparams)[0]),)


def load_rgb(path: str | os.PathLike) -> Image:
    """The RGB image of ``path``; an unreadable, corrupt or truncated file raises ValueError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for files it cannot identify or decode
        raise ValueError(f"cannot read image {path}: {e}") from e


def image_folder(
    root: str | os.PathLike, *, train: bool, img_size: int = 224, transform: Callable | None = None
) -> ImageFolder:
    """``torchvision.datasets.ImageFolder`` of ``root/<class>/<image>`` with :func:`deit_transform`
    (or ``transform``) and :func:`load_rgb` as loader. Items: ``(image (3, img_size, img_size), class)``."""
    from torchvision.datasets import ImageFolder

    return ImageFolder(
        root, transform=deit_transform(img_size, train=train) if transform is None else transform, loader=load_rgb
    )
