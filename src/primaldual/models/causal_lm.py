"""``causal_lm``: a Hugging Face Llama-architecture causal LM, built from a small config (nothing downloaded), whose
attention is ``"primaldual-<variant>"`` (or transformers' own ``"sdpa"``, the reference of the same weights).

The Llama block as transformers implements it (RMSNorm, rotary positions, SwiGLU MLP), untied input and output
embeddings (so that its weights save to safetensors without shared tensors), and every head a key head of its own
(no GQA). The variant's settings (SH's factors, sparse's window, BN's eps and weight) are registered with the
implementation name (:func:`primaldual.integrations.transformers.register`), which :class:`PrimalDualCache` reads
back when the model generates.
"""

from __future__ import annotations

from typing import Any

from ..functional import AttentionOptions

#: The longest position the rotary embedding is configured for (generation runs past the training context).
MAX_POSITIONS = 8192


def causal_lm(
    vocab_size: int,
    attention: AttentionOptions | str,
    *,
    d_model: int = 128,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
) -> Any:
    """A ``LlamaForCausalLM`` of ``depth`` blocks of width ``d_model`` with ``num_heads`` heads and an MLP of
    ``mlp_ratio · d_model``; ``attention``: the variant's options, or ``"sdpa"``; ``dropout``: on the attention
    weights (Llama has no other). Returns the model in training mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if isinstance(attention, str):
        if attention != "sdpa":
            raise ValueError(f"attention must be AttentionOptions or 'sdpa', got {attention!r}")
        implementation = "sdpa"
    else:
        from ..integrations.transformers import PREFIX, register

        fields = ("scales", "window", "eps", "mean_weight")
        register(**{name: getattr(attention, name) for name in fields if getattr(attention, name) is not None})
        implementation = PREFIX + attention.variant
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=round(mlp_ratio * d_model),
        num_hidden_layers=depth,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=MAX_POSITIONS,
        attention_dropout=dropout,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = LlamaForCausalLM._from_config(config, attn_implementation=implementation)
    model.generation_config.eos_token_id = None  # generate exactly the tokens asked for
    return model
