"""``PrimalDualCache``: a transformers ``Cache`` whose layers keep each variant's decoding state (SPEC section 5).

    model = LlamaForCausalLM._from_config(config, attn_implementation="primaldual-sh")
    out = model.generate(ids, attention_mask=mask, past_key_values=PrimalDualCache(model), max_new_tokens=64)

transformers' own caches (``DynamicCache``, ``StaticCache``) keep every key and value, which every variant can
generate from (its causal form with the queries at the last positions). This cache keeps what the variant's math
needs instead (:class:`~primaldual.functional.decode.DecodeState`): SH's pooled windows (mean(1/r) of the keys),
the linear kernel's sums (constant in the length). Its layers' ``update`` hands the new keys and values back
unchanged and marks them, so that the attention function, which receives them next, finds its layer's state
(:func:`layer_of`); the prompt's forward builds the state, each later call steps it.

Eager only (the state is Python objects that grow; ``is_compileable`` is False): compile with transformers'
static cache instead. Beam search's reordering and cropping are refused with a ValueError that says so.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from ..functional import AttentionOptions
from ..functional.decode import DecodeState

# id of the keys update() returned -> (those keys, their layer), until they are read; the keys are held so that their
# id cannot be reused by another tensor while the mark stands, and checked by identity when read
_MARKED: dict[int, tuple[Tensor, PrimalDualLayer]] = {}


class PrimalDualLayer(CacheLayerMixin):
    """One attention layer's decoding state."""

    is_compileable = False
    is_sliding = False

    def __init__(self, options: AttentionOptions, layer_idx: int) -> None:
        super().__init__()
        self.options, self.layer_idx = options, layer_idx
        self.state: DecodeState | None = None
        self.length = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """The new keys and values, unchanged, marked for the attention function (the state is stepped there, with
        the queries and the padding it gets)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        _MARKED[id(key_states)] = (key_states, self)
        return key_states, value_states

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def nbytes(self) -> int:
        """Bytes of the state."""
        return 0 if self.state is None else self.state.nbytes()

    def reset(self) -> None:
        self.state, self.length = None, 0

    def reorder_cache(self, beam_idx: Tensor) -> None:
        raise ValueError("PrimalDualCache does not support beam search (reordering); use DynamicCache for beams")

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("PrimalDualCache cannot be cropped (its pooled windows and sums cannot drop tokens)")

    def attend(self, options: AttentionOptions, q: Tensor, k: Tensor, v: Tensor, padding: Tensor | None) -> Tensor:
        """The causal outputs ``(B, H, Nq, Dv)`` of the new queries q, keys and values k, v ``(B, Hkv, Nq, ·)``
        (``options`` and q scaled for the host's score scale); ``padding`` ``(B, Nq)`` True at padding or None. The
        first call is the prompt's."""
        if options.variant != self.options.variant:
            raise ValueError(
                f"this PrimalDualCache was made for {self.options.variant!r}, the model now runs {options.variant!r}"
            )
        if self.state is None:
            out, self.state = DecodeState.from_prompt(options, q, k, v, padding)
        else:
            batch = self.state.parts[0].keys.shape[0]
            if q.shape[0] != batch:
                raise ValueError(
                    f"this PrimalDualCache holds {batch} sequences, got a batch of {q.shape[0]}: make a new cache "
                    "for each call of generate"
                )
            outs = []
            for i in range(q.shape[2]):
                valid = None if padding is None else ~padding[:, i]
                out, self.state = self.state.step(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], valid)
                outs.append(out)
            out = torch.cat(outs, 2)
        self.length += q.shape[2]
        return out


def layer_of(key_states: Tensor) -> PrimalDualLayer | None:
    """The layer whose ``update`` returned ``key_states`` (once: the mark is removed), or None."""
    marked = _MARKED.pop(id(key_states), None)
    return marked[1] if marked is not None and marked[0] is key_states else None


class PrimalDualCache(Cache):
    """The decoding states of a model whose attention is ``"primaldual-<variant>"`` (one layer per decoder layer),
    with the options :func:`~primaldual.integrations.transformers.register` gave that variant. A new cache for each
    call of ``generate``."""

    def __init__(self, model: Any) -> None:
        from .transformers import registered_options  # the options registered with the model's implementation

        config = getattr(model, "config", None)
        text = config.get_text_config(decoder=True) if config is not None else None
        name = getattr(config, "_attn_implementation", None)
        options = registered_options(name)
        if options is None:
            raise ValueError(
                f"PrimalDualCache needs a model whose attn_implementation is 'primaldual-<variant>', got {name!r}"
            )
        heads = text.num_attention_heads
        self.options = options.for_heads(heads)
        super().__init__(layers=[PrimalDualLayer(self.options, i) for i in range(text.num_hidden_layers)])

    def nbytes(self) -> int:
        """Bytes of every layer's state."""
        return sum(layer.nbytes() for layer in self.layers)
