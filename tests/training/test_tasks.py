"""The image, listops and pixels tasks in the training engine: data, models, train, compare and report.

Fashion-MNIST is replaced by IDX files written here (4 classes told apart by grey level, chance 25%), and the
ViT preset by a tiny one, so that every run takes seconds.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from primaldual.cli import main
from primaldual.data.images import load_fashion_mnist
from primaldual.data.listops import evaluate
from primaldual.models import SequenceClassifier
from primaldual.models.vit import PRESETS
from primaldual.training import TrainConfig, build_model, load_data, train
from primaldual.training.tasks import model_inputs
from tests import tolerances as T

CLASSES = 4  # of Fashion-MNIST's 10 labels, the synthetic sets use 0..3
OUTPUTS = (
    "config.yaml",
    "metrics.json",
    "metrics.csv",
    "model.safetensors",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
)
TINY_VIT = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0)
# a small sequence model for listops and pixels
TOKENS = dict(d_model=16, depth=1, num_heads=2, mlp_ratio=2.0, dropout=0.0, lr=3e-3, warmup_epochs=0, threads=1)
LISTOPS = dict(
    task="listops",
    dataset="listops",
    num_train=480,
    num_val=100,
    num_test=100,
    min_length=5,
    max_length=40,
    batch_size=32,
)


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzip IDX file of the uint8 ``array`` (magic 0x000008NN, big-endian uint32 sizes, payload)."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_fashion_mnist(root: Path, train: int = 600, test: int = 200) -> Path:
    """The four Fashion-MNIST IDX files in ``root``: class c's pixels are 60 c plus noise in 0..49."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = np.arange(n) % CLASSES
        rng.shuffle(labels)
        images = 60 * labels[:, None, None] + rng.integers(0, 50, (n, 28, 28))
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def tiny_vit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vit_28 preset shrunk to one block of width 32 on 7x7 patches (16 tokens)."""
    monkeypatch.setitem(PRESETS, "vit_28", TINY_VIT)


def accuracy(model: torch.nn.Module, split) -> float:
    """Accuracy of ``model`` (eval mode) on a whole split, batched as training batches it."""
    with torch.no_grad():
        inputs = model_inputs(split, len(split))
        labels = next(iter(torch.utils.data.DataLoader(split.to_dataset(), batch_size=len(split))))[-1]
        return (model.eval()(*inputs).argmax(1) == labels).float().mean().item()


def train_losses(output: Path) -> list[float]:
    """The training loss of every epoch, from the run's metrics.csv."""
    with (output / "metrics.csv").open(newline="") as file:
        return [float(row["train_loss"]) for row in csv.DictReader(file)]


# ---- image ----------------------------------------------------------------------------------------------


def test_fashion_mnist_splits_normalise_and_augment(tmp_path: Path) -> None:
    root = fake_fashion_mnist(tmp_path / "fm")
    config = TrainConfig(
        task="image", dataset="fashion-mnist", root=str(root), max_train_samples=400, val_fraction=0.25
    )
    data = load_data(config)
    assert (len(data.train), len(data.val), len(data.test)) == (300, 100, 200)
    assert (data.image_size, data.channels, data.num_classes) == (28, 1, 10)
    val_labels = torch.stack([data.val.to_dataset()[i][1] for i in range(len(data.val))])
    assert torch.bincount(val_labels).tolist() == [25] * CLASSES  # stratified
    # normalised with the fit split's statistics: without augmentation it has mean 0 and std 1
    plain = load_data(TrainConfig(**{**config.to_dict(), "augment": False}))
    fit = model_inputs(plain.train, len(plain.train))[0]
    assert fit.shape == (300, 1, 28, 28) and fit.dtype == torch.float32
    # The statistics are float32 sums over n pixels (√n · eps relative to their terms, Wilkinson's rule as in
    # tests/tolerances.py), then (x - mean) / std in float32 (standardized_atol); the test's own in float64.
    pixels = plain.train.dataset.split.images.double() / 255
    mean, std, n = pixels.mean(), pixels.std(), pixels.numel()
    ratio = (mean / std).item()
    largest = fit.double().abs().amax().item()
    atol = T.standardized_atol(torch.float32, mean, std, largest, n) + math.sqrt(n) * T.eps(torch.float32) * (ratio + 1)
    T.assert_close_normwise(fit.double().mean(), torch.tensor(0.0, dtype=torch.float64), atol, "mean")
    T.assert_close_normwise(fit.double().std(), torch.tensor(1.0, dtype=torch.float64), atol, "std")
    # augmentation (crop with padding 2, flip) draws anew on every access; evaluation splits are fixed
    torch.manual_seed(0)
    first, second = (torch.stack([data.train.to_dataset()[i][0] for i in range(20)]) for _ in range(2))
    assert not torch.equal(first, second)
    assert torch.equal(data.test.to_dataset()[3][0], data.test.to_dataset()[3][0])
    assert torch.equal(data.test.to_dataset()[3][0], plain.test.to_dataset()[3][0])


def test_image_task_trains_beats_chance_and_writes_outputs(tmp_path: Path, tiny_vit: None) -> None:
    config = TrainConfig(
        task="image",
        dataset="fashion-mnist",
        root=str(fake_fashion_mnist(tmp_path / "fm")),
        attention="bn+sh",
        scales=[1, 2],
        max_train_samples=400,
        epochs=6,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=0,
        dropout=0.0,
        drop_path=0.0,
        threads=1,
        output=str(tmp_path / "run"),
    )
    metrics = train(config)
    output = Path(config.output)
    assert all((output / name).is_file() for name in OUTPUTS)
    assert metrics["test_accuracy"] > 0.6  # chance: 0.25
    data = load_data(config)
    model = build_model(config, data)
    assert type(model).__name__ == "VisionTransformer" and model.blocks[0].attn.variant == "bn+sh"
    model.load_state_dict(load_file(output / "model.safetensors"))
    assert accuracy(model, data.test) == pytest.approx(metrics["test_accuracy"])  # a ratio of counts: rel 1e-6 is exact


def test_image_models_follow_the_preset_and_the_data(tmp_path: Path) -> None:
    data = load_data(TrainConfig(task="image", dataset="fashion-mnist", root=str(fake_fashion_mnist(tmp_path))))
    config = TrainConfig(task="image", dataset="fashion-mnist", attention="sh", scales=[1, 2, 4, 8])
    model = build_model(config, data)  # the real vit_28: 4 heads on 7x7 patches of 4x4 pixels + class token
    assert model.patch_embed.num_patches == 49 and model.blocks[0].attn.scales == (1, 2, 4, 8)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="16x16 patches, which do not tile the 28x28"):
        build_model(TrainConfig(task="image", dataset="fashion-mnist", model="deit_tiny"), data)
    with pytest.raises(ValueError, match=r"one factor per head \(4\)"):
        TrainConfig(task="image", dataset="fashion-mnist", attention="sh", scales=[1, 2, 4, 8, 1, 2, 4, 8])


def test_image_folder_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train/<class>/ minus a stratified validation part, val/<class>/ as the test split, DeiT's transforms."""
    from PIL import Image

    monkeypatch.setitem(PRESETS, "deit_tiny", dict(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2))
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c, name in enumerate(("cat", "dog")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = (100 * c + rng.integers(0, 50, (40, 40, 3))).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    config = TrainConfig(
        task="image",
        dataset="imagefolder",
        model="deit_tiny",
        root=str(tmp_path),
        val_fraction=0.25,
        epochs=1,
        batch_size=4,
        threads=1,
        output=str(tmp_path / "run"),
    )
    data = load_data(config)
    assert (len(data.train), len(data.val), len(data.test), data.classes) == (12, 4, 4, ("cat", "dog"))
    image, label = data.train.to_dataset()[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label in (0, 1)
    metrics = train(config)
    assert 0 <= metrics["test_accuracy"] <= 1 and (Path(config.output) / "model.safetensors").is_file()
    (tmp_path / "val" / "bird").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / "bird" / "0.png")
    with pytest.raises(ValueError, match="val has classes"):
        load_data(config)
    with pytest.raises(FileNotFoundError, match="train/<class>/<image>"):
        load_data(TrainConfig(**{**config.to_dict(), "root": str(tmp_path / "train")}))


# ---- token sequences ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["softmax", "bn", "sh", "bn+sh", "linear"])
@pytest.mark.parametrize("vocab", [16, 256])
def test_token_model_ignores_padding(variant: str, vocab: int) -> None:
    """Ids at padded positions and extra padding never reach the logits; narrow ids equal int64 ones."""
    torch.manual_seed(0)
    model = SequenceClassifier(
        None, 3, 24, vocab_size=vocab, d_model=16, depth=2, num_heads=4, dropout=0.0, attention=variant
    ).eval()
    lengths = torch.tensor([20, 7, 13])
    mask = torch.arange(20)[None] >= lengths[:, None]
    ids = torch.randint(1, vocab, (3, 20)).masked_fill(mask, 0)
    ids[0, 0] = vocab - 1  # the largest id (255 for grey levels) is a valid token
    other = ids.masked_scatter(mask, torch.randint(0, vocab, (int(mask.sum()),)))  # new ids at padding
    longer, longer_mask = torch.cat([other, other[:, :4]], 1), torch.cat([mask, torch.ones(3, 4, dtype=torch.bool)], 1)
    with torch.no_grad(), T.RecordLayerSizes() as record:
        expected = model(ids, mask)
        # exact: the same embedding rows, and padded positions meet only -inf scores and exact 0 weights
        torch.testing.assert_close(model(other.to(torch.uint8), mask), expected, rtol=0, atol=0)
        longer_out = model(longer, longer_mask)
        assert not torch.allclose(model(other, torch.zeros_like(mask)), expected)  # unmasked, they do count
    # other shapes: two float32 evaluations of the network, tests/tolerances.py's model law
    atol = T.model_atol(
        torch.float32,
        T.parameter_sensitivity(model, ids, mask),
        reduction=T.widest_reduction(model),
        size=record.size,
        length=24,
    )
    T.assert_close_normwise(longer_out, expected, atol, "extra padding")


def test_token_model_bad_input_is_named() -> None:
    model = SequenceClassifier(None, 3, 8, vocab_size=16, d_model=16, num_heads=2)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocab_size=16\)"):
        model(torch.full((2, 8), 16))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(2, 8, 1))
    with pytest.raises(ValueError, match="exactly one of in_channels"):
        SequenceClassifier(3, 3, 8, vocab_size=16)
    with pytest.raises(ValueError, match="patch_size must be 1 with vocab_size"):
        SequenceClassifier(None, 3, 8, vocab_size=16, patch_size=2)


def test_listops_task_data_is_narrow_and_cached(tmp_path: Path) -> None:
    config = TrainConfig(**LISTOPS, root=str(tmp_path))
    data = load_data(config)
    assert (len(data.train), len(data.val), len(data.test)) == (480, 100, 100)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (480, 40)
    assert (data.vocab_size, data.num_classes, data.max_length) == (16, 10, 40)
    lengths = data.train.lengths
    assert lengths.min() >= 5 and lengths.max() <= 40
    assert [evaluate(data.test.x[i][~data.test.mask[i]].tolist()) for i in range(20)] == data.test.y[:20].tolist()
    assert len(list(tmp_path.glob("listops-*.npz"))) == 1
    again = load_data(config)  # from the cache: the same expressions
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)


def test_listops_task_trains_and_writes_outputs(tmp_path: Path) -> None:
    config = TrainConfig(**LISTOPS, **TOKENS, root=str(tmp_path / "data"), epochs=6, output=str(tmp_path / "run"))
    metrics = train(config)
    assert all((tmp_path / "run" / name).is_file() for name in OUTPUTS)
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1
    assert metrics["test_accuracy"] > 0.1  # uniform chance over the 10 values
    assert metrics["params"] == sum(p.numel() for p in build_model(config, load_data(config)).parameters())


def test_pixels_task_tokens_and_training(tmp_path: Path) -> None:
    root = fake_fashion_mnist(tmp_path / "fm")
    config = TrainConfig(
        task="pixels",
        dataset="fashion-mnist",
        root=str(root),
        max_train_samples=100,
        epochs=3,
        batch_size=8,
        **{**TOKENS, "lr": 1e-2},
        output=str(tmp_path / "run"),
    )
    data = load_data(config)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (80, 784) and not data.train.mask.any()
    assert (data.vocab_size, data.max_length) == (256, 784)
    images = load_fashion_mnist(root).test.images
    assert torch.equal(data.test.x[:, 28 * 5 + 17], images[:, 5, 17])  # row-major: token 28 i + j is pixel (i, j)
    metrics = train(config)
    assert metrics["test_accuracy"] > 0.6  # chance: 0.25


def fake_cifar10(root: Path, records: int = 10) -> Path:
    """The six CIFAR-10 binary batch files in ``root/cifar-10-batches-bin``, ``records`` each: class c's red,
    green and blue bytes are 60 c plus noise in 0..49, labels cycle through 0..3."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"):
        labels = np.arange(records) % CLASSES
        pixels = 60 * labels[:, None] + rng.integers(0, 50, (records, 3072))
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], axis=1).astype(np.uint8).tobytes())
    return root


def test_pixels_task_cifar10(tmp_path: Path) -> None:
    config = TrainConfig(task="pixels", dataset="cifar10", root=str(fake_cifar10(tmp_path)), val_fraction=0.2, **TOKENS)
    data = load_data(config)
    assert data.name == "cifar10" and data.classes[0] == "airplane" and data.num_classes == 10
    assert (data.vocab_size, data.max_length) == (256, 1024)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (40, 1024) and not data.train.mask.any()
    assert (len(data.val), len(data.test)) == (10, 10)
    assert data.test.y.tolist() == [c % CLASSES for c in range(10)]
    offset = data.test.x.long() - 60 * data.test.y[:, None]  # grey: 0.9999 x (60 c + 0..49 noise), rounded
    assert offset.min() >= -1 and offset.max() <= 49
    model = build_model(config, data)
    assert model(*model_inputs(data.test, 4)).shape == (4, 10)


# ---- configuration and command line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(task="image"), "dataset must be one of fashion-mnist, imagefolder for task image"),
        (dict(task="pixels", dataset="imagefolder"), "dataset must be one of fashion-mnist, cifar10 for task pixels"),
        (dict(task="pixels", dataset="cifar10"), "dataset cifar10 needs the option root"),
        (dict(task="listops", dataset="listops-tsv"), "dataset listops-tsv needs the option root"),
        (dict(task="image", dataset="imagefolder"), "dataset imagefolder needs the option root"),
        (dict(task="listops", dataset="listops", patch_size=4), "patch_size must be 1 for task listops"),
        (dict(min_length=10, max_length=5), r"min_length \(10\) must be <= max_length \(5\)"),
        (dict(max_train_samples=0), "max_train_samples must be >= 1"),
        (dict(drop_path=1.0), "drop_path must be in"),
    ],
)
def test_task_options_are_checked(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**options)


@pytest.mark.parametrize("task", ["listops", "image"])
def test_compare_writes_summaries_and_a_report_with_redundancy(
    task: str, tmp_path: Path, tiny_vit: None, capsys: pytest.CaptureFixture
) -> None:
    if task == "listops":
        options = [f"--{k.replace('_', '-')}={v}" for k, v in {**LISTOPS, **TOKENS}.items()]
        options += ["--root", str(tmp_path / "data")]
    else:
        options = [
            "--task",
            "image",
            "--dataset",
            "fashion-mnist",
            "--root",
            str(fake_fashion_mnist(tmp_path / "fm")),
            "--max-train-samples",
            "200",
            "--batch-size",
            "50",
            "--threads",
            "1",
        ]
    out = tmp_path / "cmp"
    status = main(
        ["compare", *options, "--epochs", "1", "--attention", "softmax", "bn+sh", "--seeds", "0", "--output", str(out)]
    )
    assert status == 0, capsys.readouterr().err
    with (out / "summary.csv").open(newline="") as file:
        assert [row["attention"] for row in csv.DictReader(file)] == ["softmax", "bn+sh"]
    assert (out / "summary.md").is_file()
    assert TrainConfig.from_yaml(out / "bn+sh" / "seed0" / "config.yaml").task == task
    report = json.loads((out / "report" / "report.json").read_text())
    assert {row["attention"] for row in report["redundancy"]} == {"softmax", "bn+sh"}
    assert not any("not measured" in note for note in report["notes"])
    width, heads = (TOKENS["d_model"], TOKENS["num_heads"]) if task == "listops" else (32, 2)  # tiny_vit's
    assert any(f"at width {width}, {heads} heads" in note for note in report["notes"])
