"""The data and the model of each task of a :class:`TrainConfig`: ``load_data(config)``, ``build_model(config, data)``.

==========  ==================================================  ===============================================
task        data: items of a split's dataset                    model
==========  ==================================================  ===============================================
timeseries  a UEA set: ``(x (N, C) float, mask (N,), y)``        :class:`SequenceClassifier` on float series
image       Fashion-MNIST's IDX files or an ImageFolder tree:   a timm ViT preset of :mod:`..models.vit` with
            ``(x (C, H, W) float, y)``                          the attention variant
listops     generated ListOps (or LRA's TSV files):             :class:`SequenceClassifier` on token ids
            ``(ids (N,) uint8, mask (N,), y)``
pixels      grey-level tokens, row-major: Fashion-MNIST's 784   :class:`SequenceClassifier` on token ids
            or CIFAR-10's 1024 (LRA's Image task, from the
            binary batches in ``root``): ``(ids, mask, y)``
lm          :mod:`..data.language`: bytes of the text corpus    :func:`~..models.causal_lm.causal_lm`, a Llama-
            or MQAR: ``(ids (N,), mask (N,), labels (N,))``     architecture causal LM with the variant
==========  ==================================================  ===============================================

Every split has ``len()`` and ``to_dataset()``; the training engine batches it as it is (images without a mask:
nothing is padded, and ``Classifier`` then calls ``model(x)``).

Fashion-MNIST (image task): the training split minus a stratified ``val_fraction`` is the fit split; its grey-level
mean and std normalise every split. Its augmentation is light, random crop with 2 pixels of padding and horizontal
flip (the usual CIFAR/Fashion-MNIST recipe): DeiT's RandAugment, random erasing and resized crops are made for
224-pixel photographs, and on 28x28 grey images they mostly destroy the object. ImageFolder trees get DeiT's
transforms (:func:`~primaldual.data.images.deit_transform`) at the preset's image size.

Token ids are stored in the narrowest integer dtype that holds the vocabulary (uint8 for ListOps' 16 and the 256
grey levels) and converted to int64 per batch by the model: LRA's 96000 x 2000 training ids take 190 MB instead
of 1.5 GB. (:func:`~primaldual.data.listops.load_listops` returns int64 splits, so loading them peaks at that
size once.)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ..data.images import (
    DatasetSplit,
    ImageDatasets,
    ImageSplit,
    TransformedImages,
    image_folder,
    load_cifar10_binary,
    load_fashion_mnist,
    pixel_sequence,
)
from ..data.language import LanguageData, mqar_data, text_data
from ..data.listops import load_listops, load_listops_tsv
from ..data.sequences import SequenceData, SequenceSplit, TokenData, TokenSplit
from ..data.splits import stratified_split
from ..data.uea import load_uea
from ..functional import get_variant
from ..models import SequenceClassifier
from ..models.causal_lm import causal_lm
from ..models.vit import PRESETS, vision_transformer
from .config import TOKEN_TASKS, TrainConfig

LISTOPS_ROOT = Path("runs/data/listops")
# generated ListOps is one fixed data set, as LRA's files are: every training seed sees the same expressions
LISTOPS_SEED = 0
# the options that decide what load_data returns (report caches the data of runs that share them)
DATA_OPTIONS = (
    "task",
    "dataset",
    "root",
    "val_fraction",
    "normalize",
    "jitter",
    "augment",
    "max_train_samples",
    "num_train",
    "num_val",
    "num_test",
    "min_length",
    "max_length",
    "seed",
    "model",
    "context",
    "mqar_pairs",
    "mqar_lengths",
    "mqar_offset",
)


TaskData = SequenceData | TokenData | ImageDatasets | LanguageData


def load_data(config: TrainConfig) -> TaskData:
    """The train, val and test splits of ``config.task`` (see the module's table)."""
    if config.task == "timeseries":
        data = load_uea(
            config.dataset,
            root=config.root,
            val_fraction=config.val_fraction,
            seed=config.seed,
            normalize=config.normalize,
        )
        return replace(data, train=replace(data.train, jitter=config.jitter))
    if config.task == "image":
        return _image_folder(config) if config.dataset == "imagefolder" else _fashion_mnist(config)
    if config.task == "pixels":
        return _pixels(config)
    if config.task == "lm":
        if config.dataset == "text":
            return text_data(config.context, config.num_val, root=config.root)
        options = (config.mqar_pairs, config.mqar_lengths, config.num_train, config.num_val, config.num_test)
        return mqar_data(*options, offset=config.mqar_offset)
    return _listops(config)


def build_model(config: TrainConfig, data: TaskData) -> nn.Module:
    """The model of ``config`` for ``data``'s shapes; ``load_state_dict`` of a run's model.safetensors fits it."""
    if config.task == "image":
        patch = PRESETS[config.model]["patch_size"]
        if data.image_size % patch:
            raise ValueError(
                f"model {config.model} cuts images into {patch}x{patch} patches, which do not tile the "
                f"{data.image_size}x{data.image_size} images of {data.name}: choose another --model"
            )
        return vision_transformer(
            config.model,
            config.attention_options().replace(num_prefix_tokens=1),
            grid=config.sh_grid and get_variant(config.attention).pooled,
            num_classes=data.num_classes,
            img_size=data.image_size,
            in_chans=data.channels,
            drop_rate=config.dropout,
            proj_drop_rate=config.dropout,
            attn_drop_rate=config.dropout,
            drop_path_rate=config.drop_path,
        )
    if config.task == "lm":
        return causal_lm(
            data.vocab_size,
            config.attention_options(),
            d_model=config.d_model,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
        )
    tokens = config.task in TOKEN_TASKS
    return SequenceClassifier(
        None if tokens else data.num_channels,
        data.num_classes,
        data.max_length,
        vocab_size=data.vocab_size if tokens else None,
        d_model=config.d_model,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        dropout=config.dropout,
        attention=config.attention_options(),
        patch_size=config.patch_size,
        pooling=config.pooling,
    )


def model_inputs(split: SequenceSplit | DatasetSplit, samples: int) -> tuple[Tensor, ...]:
    """The model's inputs for the first ``samples`` items of ``split``, batched as training batches them:
    ``(x, key_padding_mask)`` for sequences, ``(x,)`` for images."""
    *inputs, _ = next(iter(DataLoader(split.to_dataset(), batch_size=samples)))
    return tuple(inputs)


# ----------------------------------------------------------------------------- images


def _fashion_mnist(config: TrainConfig) -> ImageDatasets:
    from torchvision.transforms import v2

    data = load_fashion_mnist(config.root)
    fit, val = _fit_val(data.train, config)
    scale = [v2.ToDtype(torch.float32, scale=True)]
    if config.normalize:
        pixels = fit.images.float().div_(255)
        scale.append(v2.Normalize([pixels.mean().item()], [pixels.std().item()]))
    augment = [v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()] if config.augment else []
    train, evaluate = v2.Compose([*augment, *scale]), v2.Compose(scale)
    return ImageDatasets(
        data.name,
        data.classes,
        DatasetSplit(TransformedImages(fit, train)),
        DatasetSplit(TransformedImages(val, evaluate)),
        DatasetSplit(TransformedImages(data.test, evaluate)),
        image_size=28,
        channels=1,
    )


def _image_folder(config: TrainConfig) -> ImageDatasets:
    root, size = Path(config.root), PRESETS[config.model]["img_size"]
    for folder in (root / "train", root / "val"):
        if not folder.is_dir():
            raise FileNotFoundError(
                f"ImageFolder tree {root}: {folder} not found (expected train/<class>/<image> "
                "and val/<class>/<image>, the ImageNet layout)"
            )
    fit_images = image_folder(root / "train", train=config.augment, img_size=size)
    val_images = image_folder(root / "train", train=False, img_size=size)
    test_images = image_folder(root / "val", train=False, img_size=size)
    if test_images.classes != fit_images.classes:
        raise ValueError(
            f"{root}/val has classes {test_images.classes}, {root}/train {fit_images.classes}: they must be the same"
        )
    fit, val = _fit_val_indices(np.asarray(fit_images.targets), config)
    return ImageDatasets(
        root.name,
        tuple(fit_images.classes),
        DatasetSplit(Subset(fit_images, fit.tolist())),
        DatasetSplit(Subset(val_images, val.tolist())),
        DatasetSplit(test_images),
        image_size=size,
        channels=3,
    )


def _fit_val(split: ImageSplit, config: TrainConfig) -> tuple[ImageSplit, ImageSplit]:
    fit, val = _fit_val_indices(split.labels.numpy(), config)
    return ImageSplit(split.images[fit], split.labels[fit]), ImageSplit(split.images[val], split.labels[val])


def _fit_val_indices(labels: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~primaldual.data.splits.stratified_split` of a training split with the config's options."""
    return stratified_split(
        labels,
        config.val_fraction,
        config.seed,
        max_samples=config.max_train_samples,
        source=f"the training split of {config.dataset}",
    )


# ----------------------------------------------------------------------------- token sequences


def _pixels(config: TrainConfig) -> TokenData:
    """Grey levels as tokens (vocabulary 256): CIFAR-10's 1024 per image (LRA's Image task) or Fashion-MNIST's 784."""
    data = load_cifar10_binary(config.root) if config.dataset == "cifar10" else load_fashion_mnist(config.root)

    def tokens(split: ImageSplit) -> TokenSplit:
        ids = _narrow(pixel_sequence(split.images), 256)
        return TokenSplit(ids, torch.zeros(ids.shape, dtype=torch.bool), split.labels)

    fit, val = _fit_val(data.train, config)
    return TokenData(data.name, data.classes, tokens(fit), tokens(val), tokens(data.test), vocab_size=256)


def _listops(config: TrainConfig) -> TokenData:
    if config.dataset == "listops-tsv":
        data = load_listops_tsv(config.root)
    else:
        data = load_listops(
            LISTOPS_ROOT if config.root is None else config.root,
            num_train=config.num_train,
            num_val=config.num_val,
            num_test=config.num_test,
            seed=LISTOPS_SEED,
            min_length=config.min_length,
            max_length=config.max_length,
        )
    splits = [TokenSplit(_narrow(s.x, len(data.vocab)), s.mask, s.y) for s in (data.train, data.val, data.test)]
    return TokenData(config.dataset, data.classes, *splits, vocab_size=len(data.vocab))


def _narrow(ids: Tensor, vocab_size: int) -> Tensor:
    """``ids`` in the narrowest of uint8, int16, int32 that holds ``[0, vocab_size)``."""
    dtype = next(t for t in (torch.uint8, torch.int16, torch.int32) if vocab_size - 1 <= torch.iinfo(t).max)
    return ids.to(dtype)
