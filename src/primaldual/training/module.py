"""``Classifier``: the LightningModule that trains any ``model(x, key_padding_mask) -> logits`` classifier
(sequences) or ``model(x) -> logits`` classifier (images).

AdamW; learning rate warmed up linearly for ``warmup_epochs`` then decayed by a cosine to 0, stepped per
batch; cross-entropy; accuracy from torchmetrics, logged per epoch as ``{train,val,test}_{loss,acc}`` and
``lr`` (the epoch's mean).

``LanguageModel``: the same engine for a causal LM (``model(input_ids=x).logits``): every position's next-token
cross-entropy and accuracy, over the labelled positions only (labels ``IGNORE`` = -100 elsewhere), each position
counting once in the epoch's means.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..data.language import IGNORE

if TYPE_CHECKING:
    from .config import TrainConfig


class Classifier(L.LightningModule):
    """Batches are ``(x, key_padding_mask, y)`` (sequences), for which ``model(x, key_padding_mask)`` gives the logits
    ``(B, classes)``, or ``(x, y)`` (images, nothing padded), for which ``model(x)`` does (a timm ViT, whose second
    argument is an attention mask, is called with x only)."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        lr: float,
        weight_decay: float,
        warmup_epochs: float,
        compiled: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.compiled = compiled
        self._compiled = self._compile()
        self.lr, self.weight_decay, self.warmup_epochs = lr, weight_decay, warmup_epochs
        for stage in ("train", "val", "test"):  # torchmetrics: exact under DDP, where each process sees a shard
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE))
            setattr(self, f"{stage}_loss", MeanMetric())

    def _compile(self) -> Any:
        """The model's forward through ``torch.compile`` (None unless ``compiled``): a function, not a module, so
        that the parameters, the state dict and the checkpoints stay the model's own."""
        return torch.compile(self.model.forward, dynamic=True) if self.compiled else None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (``ddp_spawn`` sends the module to its processes) without the compiled function, which does not
        pickle; :meth:`__setstate__` compiles again."""
        return {**super().__getstate__(), "_compiled": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._compiled = self._compile()

    @classmethod
    def for_config(cls, model: nn.Module, num_classes: int, config: TrainConfig) -> Classifier:
        """The module with ``config``'s optimisation options (lr, weight_decay, warmup_epochs, compile)."""
        return cls(
            model,
            num_classes,
            lr=config.lr,
            weight_decay=config.weight_decay,
            warmup_epochs=config.warmup_epochs,
            compiled=config.compile,
        )

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        model = self._compiled or self.model
        return model(x) if key_padding_mask is None else model(x, key_padding_mask)

    def scores(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """``(logits (n, classes), labels (n,))`` of a batch: one row per classified item."""
        *inputs, y = batch
        return self(*inputs), y

    def _step(self, batch: tuple[Tensor, ...], stage: str) -> Tensor:
        logits, y = self.scores(batch)
        loss = F.cross_entropy(logits, y, ignore_index=IGNORE)
        accuracy, mean_loss = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_loss")
        accuracy(logits, y)
        mean_loss(loss.detach(), (y != IGNORE).sum())
        options = dict(on_step=False, on_epoch=True, batch_size=len(y), prog_bar=stage != "test")
        self.log(f"{stage}_loss", mean_loss, **options)
        self.log(f"{stage}_acc", accuracy, **options)
        if stage == "train":
            self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW; per step: linear warm-up to ``lr`` over ``warmup_epochs``, then cosine to 0 at the last step.

        A LambdaLR rather than torch's LinearLR + CosineAnnealingLR in a SequentialLR: those store their horizon
        in the checkpoint, so a run resumed with more epochs would keep the old one; a lambda is not saved, so the
        schedule is recomputed for the new length and only the step counter is restored.
        """
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(total, round(self.warmup_epochs * total / self.trainer.max_epochs))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """Set the rate of the (possibly restored) step: a run resumed with more epochs has a new schedule, but
        its restored optimiser holds the rate of the old one (a no-op for a fresh or same-length run)."""
        scheduler = self.lr_schedulers()
        for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)


class LanguageModel(Classifier):
    """A :class:`Classifier` of next tokens: batches ``(ids (B, N), key_padding_mask (B, N), labels (B, N))``, each
    labelled position one classified item. The mask is not passed: the model is causal and the data right-padded,
    so no valid position sees a padded one (their labels are ``IGNORE``)."""

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """The logits ``(B, N, vocab)`` of ``model(input_ids=x)``."""
        model = self._compiled or self.model
        return model(input_ids=x.long()).logits

    def scores(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        x, _, y = batch
        return self(x).flatten(0, 1), y.flatten()


class RngState(Callback):
    """Saves the torch (CPU and CUDA) and Python random states in checkpoints and restores them on resume,
    so that a resumed run draws the same shuffles and dropout masks as an uninterrupted one.

    Lightning saves no random state itself; its private ``_collect_rng_states`` also holds numpy's state,
    an array that ``torch.load(weights_only=True)`` refuses (training draws no numpy random numbers).
    """

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
