"""Every "primaldual-<variant>" in the decoder and encoder-decoder families of transformers, from small configs.

Each family's model runs a left-padded batch (finite outputs) and generates greedily, with its cache and
without: the same tokens (the causal forms with the new queries at the last positions, SPEC section 5).
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from primaldual.functional import VARIANTS  # noqa: E402
from primaldual.integrations.transformers import register  # noqa: E402

VOCAB = 64
SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


def config(family):
    c = transformers
    return {
        "gpt2": lambda: c.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64),
        "llama": lambda: c.LlamaConfig(vocab_size=VOCAB, num_key_value_heads=2, **SIZE),
        "mistral": lambda: c.MistralConfig(vocab_size=VOCAB, num_key_value_heads=2, sliding_window=None, **SIZE),
        "qwen2": lambda: c.Qwen2Config(vocab_size=VOCAB, num_key_value_heads=2, **SIZE),
        "qwen3": lambda: c.Qwen3Config(vocab_size=VOCAB, num_key_value_heads=2, head_dim=8, **SIZE),
        "phi3": lambda: c.Phi3Config(vocab_size=VOCAB, num_key_value_heads=2, pad_token_id=0, **SIZE),
        "gpt_neox": lambda: c.GPTNeoXConfig(vocab_size=VOCAB, **SIZE),
        "opt": lambda: c.OPTConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=48,
            word_embed_proj_dim=32, max_position_embeddings=64,
        ),
        "gemma": lambda: c.GemmaConfig(vocab_size=VOCAB, num_key_value_heads=2, head_dim=8, **SIZE),
        "whisper": lambda: c.WhisperConfig(
            vocab_size=VOCAB, num_mel_bins=8, d_model=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
            max_source_positions=16, max_target_positions=32, decoder_start_token_id=1, pad_token_id=0,
            begin_suppress_tokens=None, suppress_tokens=None,
        ),
        "bart": lambda: c.BartConfig(
            vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
        ),
    }[family]()  # fmt: skip


SEQ2SEQ = {
    "bart": lambda: transformers.BartForConditionalGeneration,
    "whisper": lambda: transformers.WhisperForConditionalGeneration,
}
DECODERS = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gpt_neox", "opt", "gemma"]


@pytest.fixture(scope="module", autouse=True)
def _registered():
    register(window=2)


def build(family, variant):
    torch.manual_seed(0)
    cfg = config(family)
    impl = f"primaldual-{variant}"
    if family in SEQ2SEQ:
        model = SEQ2SEQ[family]()._from_config(cfg, attn_implementation=impl)
    else:
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
    model = model.double().eval()
    model.generation_config.eos_token_id = None
    model.generation_config.forced_eos_token_id = None
    return model


def batch():
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0  # left padding, as for generation
    return ids, mask


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", DECODERS + ["bart"])
def test_family_runs_and_generates_with_every_variant(family, variant):
    model, (ids, mask) = build(family, variant), batch()
    if family == "bart":
        if variant == "sparse":  # cross-attention of 5 decoder queries on 7 encoder keys has no positions
            with pytest.raises(ValueError, match="needs the queries' positions"):
                model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :5])
            return
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :5]).logits
    else:
        out = model(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(out).all()
    settings = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, **settings)
    assert torch.equal(cached, model.generate(ids, use_cache=False, **settings))


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "sparse"])
def test_whisper_generates_with_every_variant(variant):
    """Whisper: a bidirectional audio encoder, a causal text decoder with cross-attention (sparse is left out: a
    window has no meaning between text queries and audio keys; BART above shows its refusal)."""
    model = build("whisper", variant)
    features = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    settings = dict(max_new_tokens=4, do_sample=False)
    cached = model.generate(features, **settings)
    assert torch.equal(cached, model.generate(features, use_cache=False, **settings))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_clip_text_tower_runs_every_variant(variant):
    """CLIP's text tower: a causal mask and padding in an encoder (no generation)."""
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=16,
    )  # fmt: skip
    model = transformers.CLIPTextModel._from_config(cfg, attn_implementation=f"primaldual-{variant}").double().eval()
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask.flip(1)).last_hidden_state  # right padding
    later = ids.clone()
    later[:, 5:] = 7
    moved = model(input_ids=later, attention_mask=mask.flip(1)).last_hidden_state
    assert torch.isfinite(out).all()
    if not VARIANTS[variant].bn:  # causal: the tokens after position 4 change nothing before them
        torch.testing.assert_close(moved[:, :5], out[:, :5], rtol=0, atol=0)
