"""``TrainConfig``: every option of one training run, checked on construction, with a YAML round trip.

The help text of each option lives in its field's metadata; the command line is generated from it.

One config serves every task; the options a task does not use are ignored by it (so that one config file
can hold them all):

==========  ===========================================  ===================================================
task        data options used                            model options used
==========  ===========================================  ===================================================
timeseries  dataset (UEA name), root, val_fraction,      d_model, depth, num_heads, mlp_ratio, dropout,
            normalize, jitter                            patch_size, pooling
image       dataset (fashion-mnist, imagefolder), root,  model (the ViT preset fixes width, depth, heads and
            val_fraction, normalize (fashion-mnist),     MLP ratio), dropout, drop_path
            augment, max_train_samples
listops     dataset (listops, listops-tsv), root,        d_model, depth, num_heads, mlp_ratio, dropout,
            num_train, num_val, num_test, min_length,    pooling
            max_length (listops)
pixels      dataset (fashion-mnist, cifar10), root,       d_model, depth, num_heads, mlp_ratio, dropout,
            val_fraction, max_train_samples              pooling
lm          dataset (text, mqar); max_train_samples      d_model, depth, num_heads, mlp_ratio, dropout (on
            (sequences per epoch); text: root, context,  the attention weights): a Llama-architecture
            num_val; mqar: mqar_pairs, mqar_lengths,     causal LM (:func:`~primaldual.models.causal_lm`)
            num_train, num_val, num_test
==========  ===========================================  ===================================================

The attention options (attention, scales, window, eps, mean_weight) and the optimisation, trainer and output
options apply to every task; bucket_by_length to every task but image.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..functional import VARIANTS, AttentionOptions, get_variant
from ..models.vit import PRESETS

TASKS = ("timeseries", "image", "listops", "pixels", "lm")
# the datasets of each task but timeseries (whose dataset is any UEA name)
TASK_DATASETS = {
    "image": ("fashion-mnist", "imagefolder"),
    "listops": ("listops", "listops-tsv"),
    "pixels": ("fashion-mnist", "cifar10"),
    "lm": ("text", "mqar"),
}
ROOT_REQUIRED = ("imagefolder", "listops-tsv", "cifar10")  # datasets with no default folder (task not timeseries)
TOKEN_TASKS = ("listops", "pixels")  # token ids, embedded one per position


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field whose metadata holds its command-line help (and argparse extras such as ``choices``)."""
    if isinstance(default, list):  # a fresh list per config; the help then states the default itself
        return field(default_factory=default.copy, metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """One training run: data, model, optimiser, trainer and output options (see each field's help)."""

    # data
    task: str = _option(
        "timeseries",
        "what to train on: timeseries (UEA classification), image (ViT on images), "
        "listops (LRA ListOps token sequences), pixels (grey-level token sequences: "
        "Fashion-MNIST's 784, or sequential CIFAR-10's 1024: LRA's Image task), lm (a causal language "
        "model: next bytes of the Python documentation, or multi-query associative recall)",
        choices=TASKS,
    )
    dataset: str = _option(
        "JapaneseVowels",
        "timeseries: UEA dataset name (a bundled one, or one found under "
        "--root); image: fashion-mnist or imagefolder; listops: listops "
        "(generated) or listops-tsv (LRA's basic_{train,val,test}.tsv); "
        "pixels: fashion-mnist or cifar10 (sequential CIFAR-10 in grey levels, "
        "LRA's Image task); lm: text (bytes of the Python 3.11 documentation's sources) or mqar "
        "(multi-query associative recall, generated)",
    )
    root: str | None = _option(
        None,
        "data folder: timeseries: holds <dataset>/<dataset>_TRAIN.ts and _TEST.ts "
        "(default: the bundled data); fashion-mnist: its four IDX files (default: "
        "/usr/share/datasets/fashion-mnist, Debian package dataset-fashion-mnist); "
        "imagefolder (required): train/<class>/* and val/<class>/* (the ImageNet "
        "layout; val/ is the test split); listops: the generated data's cache "
        "(default: runs/data/listops); listops-tsv (required): LRA's TSV files; "
        "cifar10 (required): the folder cifar-10-batches-bin of CIFAR-10's binary "
        "version (data_batch_1.bin .. data_batch_5.bin, test_batch.bin) or its parent; lm text: the "
        "documents' folder (default: /usr/share/doc/python3.11/html/_sources, Debian package python3.11-doc)",
    )
    val_fraction: float = _option(
        0.2,
        "fraction of the training split held out for validation (stratified), in "
        "[0, 1); with 0 the best epoch is chosen on training loss; not used by "
        "listops, which has num_val",
    )
    normalize: bool = _option(
        True,
        "standardise each channel with the training split's mean and std (timeseries, "
        "fashion-mnist images; imagefolder uses ImageNet's)",
    )
    jitter: float = _option(
        0.0,
        "timeseries: std of the Gaussian noise added to the training series at every valid "
        "step, drawn anew each epoch, in the units of the (normalised) data: the jitter "
        "augmentation (0: none)",
    )
    augment: bool = _option(
        True,
        "augment the image task's training images: fashion-mnist: random crop with "
        "2-pixel padding and horizontal flip; imagefolder: DeiT's (random resized crop, "
        "flip, RandAugment, random erasing)",
    )
    max_train_samples: int | None = _option(
        None,
        "train on a random stratified subset of this many samples of the "
        "training split, before the validation split is held out (image, "
        "pixels; for quick runs); lm: training sequences per epoch, drawn anew each epoch "
        "from all of them (default: all)",
    )
    num_train: int = _option(
        96_000,
        "generated ListOps: training expressions (LRA: 96000); mqar: training sequences in all, shared by the "
        "cells so that each has the same number of tokens",
    )
    num_val: int = _option(
        2_000,
        "generated ListOps: validation expressions (LRA: 2000); mqar: validation sequences per cell; "
        "lm text: validation windows",
    )
    num_test: int = _option(2_000, "generated ListOps: test expressions (LRA: 2000); mqar: test sequences per cell")
    min_length: int = _option(500, "generated ListOps: fewest tokens of an expression (LRA: 500)")
    max_length: int = _option(
        2_000, "generated ListOps: most tokens of an expression, and the padded length (LRA: 2000)"
    )
    context: int = _option(256, "lm text: bytes per window (training, validation and test)")
    mqar_pairs: list[int] = _option(
        [4, 8, 16, 32, 64],
        "mqar: numbers of key-value pairs; the cells are pairs x lengths with 4·pairs <= length "
        "(default: 4 8 16 32 64)",
    )
    mqar_lengths: list[int] = _option([64, 128, 256, 512], "mqar: sequence lengths, even (default: 64 128 256 512)")
    mqar_offset: int = _option(
        0, "mqar: random tokens before the pairs (0: the pairs open the sequence, as in Zoology; 1: a control)"
    )
    bucket_by_length: bool = _option(
        False,
        "batch sequences of similar length together (sorted within shuffled "
        "chunks of 50 batches) and cut each batch to its longest sequence: the "
        "same model and loss on less padding (ListOps' 500-2000 tokens: about half "
        "the positions, a third of the N^2 attention work); timeseries, listops "
        "and pixels only",
    )
    # model
    attention: str = _option("softmax", "attention variant", choices=tuple(VARIANTS))
    # options of some variants only, ignored by the others (so that one config serves a comparison)
    scales: list[int] | None = _option(
        None, "SH downsampling factor per head, used by the sh variants (default: 1 2 4 8 repeated)"
    )
    window: int | None = _option(None, "half-width of the sliding window, used (and needed) by the sparse variant")
    sh_grid: bool = _option(
        False,
        "image task: SH pools 2D windows of neighbouring patches (factor r as an a x b window: 2 -> 1x2, "
        "4 -> 2x2, 8 -> 2x4) rather than r consecutive patches in raster order; used by the sh variants",
    )
    eps: float = _option(1e-5, "BN variance floor, used by the bn variants")
    mean_weight: float = _option(1.0, "BN weight beta on the key mean, used by the bn variants")
    model: str = _option(
        "vit_28",
        "ViT preset of the image task: vit_28 (28x28 grey, 4x4 patches, width 128, 6 "
        "blocks, 4 heads), vit_28_p7 (the same on 7x7 patches: 16 tokens), eva02_28_p7 (an EVA02-style timm Eva of vit_28_p7's size: rotary embeddings, SwiGLU MLP; converted), deit_tiny, deit_small (224x224 RGB, 16x16 patches); it fixes "
        "width, depth, heads and MLP ratio, so d_model, depth, num_heads, mlp_ratio and "
        "patch_size are not used by the image task",
        choices=tuple(PRESETS),
    )
    drop_path: float = _option(0.1, "stochastic depth rate of the ViT's blocks (image task; DeiT: 0.1)")
    d_model: int = _option(64, "token width")
    depth: int = _option(2, "number of encoder blocks")
    num_heads: int = _option(8, "attention heads per block")
    mlp_ratio: float = _option(2.0, "MLP hidden width as a multiple of d_model")
    dropout: float = _option(0.2, "dropout on embeddings, attention weights, attention and MLP outputs")
    patch_size: int = _option(1, "time steps per token (Conv1d patch embedding when > 1, for long series)")
    pooling: str = _option(
        "mean",
        "read-out of the sequence classifier: the mean of the non-padded tokens, or "
        "all positions flattened into the head (the published UEA transformer's)",
        choices=("mean", "flatten"),
    )
    # optimisation
    epochs: int = _option(50, "maximum number of training epochs")
    batch_size: int = _option(32, "samples per batch (per device)")
    lr: float = _option(1e-3, "peak learning rate of AdamW")
    weight_decay: float = _option(0.05, "AdamW weight decay")
    warmup_epochs: float = _option(
        5.0, "epochs of linear learning-rate warm-up before the cosine decay (capped at the run's length)"
    )
    patience: int | None = _option(
        None,
        "stop after this many epochs without a better validation accuracy (training "
        "loss if val_fraction is 0) (default: no early stopping)",
    )
    grad_clip: float = _option(1.0, "clip the gradient norm to this value (0: no clipping)")
    # trainer
    precision: str = _option("32-true", "Lightning precision, e.g. 32-true, bf16-mixed, 16-mixed")
    compile: bool = _option(
        False,
        "run the model through torch.compile (dynamic shapes): the first training and evaluation steps "
        "compile it, the later ones are fused; for long runs (seconds to minutes of compilation)",
    )
    seed: int = _option(0, "seed of the data split, initialisation, shuffling and dropout")
    threads: int = _option(
        1,
        "torch CPU threads per process, 0 for torch's default (one per core); small models "
        "gain nothing from more threads, and lose much when cores are shared",
    )
    accelerator: str = _option("auto", "Lightning accelerator: auto, cpu, gpu, ...")
    devices: int | str = _option(1, "devices per node: a count, 'auto', or a list such as '0,1'")
    num_nodes: int = _option(1, "number of nodes (multi-node DDP)")
    strategy: str = _option("auto", "Lightning strategy, e.g. auto, ddp, ddp_spawn")
    num_workers: int = _option(0, "DataLoader worker processes")
    output: str = _option(
        "runs/train", "output folder: config.yaml, metrics.json, metrics.csv, model.safetensors, checkpoints/"
    )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints[f.name]):
                raise TypeError(f"config option {f.name} must be {_describe(hints[f.name])}, got {value!r}")
        if self.task not in TASKS:
            raise ValueError(f"config option task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task in TASK_DATASETS and self.dataset not in TASK_DATASETS[self.task]:
            raise ValueError(
                f"config option dataset must be one of {', '.join(TASK_DATASETS[self.task])} for task "
                f"{self.task}, got {self.dataset!r}"
            )
        if self.task != "timeseries" and self.dataset in ROOT_REQUIRED and self.root is None:
            raise ValueError(f"dataset {self.dataset} needs the option root (the folder holding its files)")
        if self.task == "image" and self.bucket_by_length:
            raise ValueError(
                "config option bucket_by_length applies to sequences (tasks timeseries, listops, pixels), "
                "not to the image task"
            )
        if self.task != "timeseries" and self.jitter:
            raise ValueError(f"config option jitter applies to the timeseries task only, not to task {self.task}")
        if self.task in TOKEN_TASKS and self.patch_size != 1:
            raise ValueError(
                f"config option patch_size must be 1 for task {self.task} (token ids are embedded one "
                f"per position), got {self.patch_size}"
            )
        get_variant(self.attention)  # names the known variants if unknown
        for name in (
            "d_model",
            "depth",
            "num_heads",
            "patch_size",
            "epochs",
            "batch_size",
            "num_nodes",
            "num_train",
            "num_test",
            "max_length",
            "context",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"config option {name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "weight_decay",
            "warmup_epochs",
            "grad_clip",
            "num_workers",
            "threads",
            "num_val",
            "min_length",
            "jitter",
            "mqar_offset",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"config option {name} must be >= 0, got {getattr(self, name)}")
        for name in ("val_fraction", "dropout", "drop_path"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"config option {name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("lr", "mlp_ratio", "eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"config option {name} must be > 0, got {getattr(self, name)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"config option patience must be >= 1 (or unset), got {self.patience}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"config option max_train_samples must be >= 1 (or unset), got {self.max_train_samples}")
        if self.task == "lm" and self.dataset == "mqar":
            from ..data.language import mqar_cells

            mqar_cells(self.mqar_pairs, self.mqar_lengths)  # a ValueError when no cell fits
        if self.min_length > self.max_length:
            raise ValueError(f"config option min_length ({self.min_length}) must be <= max_length ({self.max_length})")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"config option d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        heads = self.heads
        if self.scales is not None and len(self.scales) != heads:
            raise ValueError(f"config option scales needs one factor per head ({heads}), got {self.scales}")
        if self.sh_grid and self.task != "image":
            raise ValueError(f"config option sh_grid pools an image's patch grid: task image only, not {self.task!r}")
        if get_variant(self.attention).windowed and self.window is None:
            raise ValueError(f"attention {self.attention!r} needs the option window (an integer >= 0)")

    @property
    def heads(self) -> int:
        """Attention heads per block of the model: the ViT preset's for the image task, else ``num_heads``."""
        return PRESETS[self.model]["num_heads"] if self.task == "image" else self.num_heads

    @property
    def width(self) -> int:
        """Token width of the model: the ViT preset's ``embed_dim`` for the image task, else ``d_model``."""
        return PRESETS[self.model]["embed_dim"] if self.task == "image" else self.d_model

    def attention_options(self) -> AttentionOptions:
        """This run's attention: the variant with its settings (scales and window where the variant uses them)."""
        spec = get_variant(self.attention)
        scales = tuple(self.scales) if spec.pooled and self.scales is not None else None
        window = self.window if spec.windowed else None
        return AttentionOptions(
            self.attention, scales=scales, window=window, eps=self.eps, mean_weight=self.mean_weight
        )

    def to_dict(self) -> dict[str, Any]:
        """The options as plain Python values (YAML- and JSON-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> TrainConfig:
        """A config from ``options``; a ValueError names any key that is not an option."""
        if not isinstance(options, dict):
            raise TypeError(f"a config must be a mapping of option names to values, got {type(options).__name__}")
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown config option(s): {', '.join(map(str, unknown))}")
        hints = typing.get_type_hints(cls)
        # YAML 1.1 reads 1e-3 (no dot) as a string: accept it where a float is expected
        options = {k: _float_or_keep(v) if hints[k] is float else v for k, v in options.items()}
        return cls(**options)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The options as YAML text, also written to the file ``path`` if given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a config written by :meth:`to_yaml` (or by hand; missing options keep their defaults)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            options = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"config file {path} is not valid YAML: {error}") from None
        return cls.from_dict(options)


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has type ``hint`` (int, float, str, bool, None, ``list[X]`` and unions of them)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(hint)[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _float_or_keep(value: Any) -> Any:
    """``float(value)`` for a numeric string such as '1e-3', else ``value`` unchanged (checked later)."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _describe(hint: Any) -> str:
    """``int | None`` -> 'int | None', ``float`` -> 'float'."""
    return (hint.__name__ if isinstance(hint, type) else str(hint)).replace("NoneType", "None")
