"""Hugging Face transformers: the "primaldual-<variant>" attention implementations on small models (no download).

Encoder with padding (BERT), vision model with a class token (ViT), decoder with grouped-query attention (Llama).
Models are float64 so that "equal" means equal to rounding.
"""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AutoModel, BertConfig, LlamaConfig, LlamaForCausalLM, ViTConfig  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

from primaldual import functional  # noqa: E402
from primaldual.integrations import transformers as integration  # noqa: E402
from primaldual.integrations.transformers import register  # noqa: E402
from tests import tolerances as T  # noqa: E402

ENCODER_VARIANTS = ["softmax", "bn", "sh", "bn+sh"]

# Tolerances (docs/numerics.md): exact where both sides compute the same operations on the same numbers (padded
# tokens meet only -inf scores and exact 0 weights; the same model built twice); tests/tolerances.py's network
# law where two kernels compute one float64 formula (transformers' sdpa and eager against primaldual-softmax, a KV
# cache against the whole sequence, causal BN whose shift takes the mean of all keys): parameter sensitivity by
# autograd, the widest reduction, S of the attention calls (recorded), two evaluations.


def network_atol(model, output, record, length):
    return T.network_atol(torch.float64, model, output, size=record.size, length=length)


def recording():
    return T.RecordSizes(integration)


@pytest.fixture(scope="module", autouse=True)
def names():
    return register(window=2)


def bert(variant, dropout=0.0):
    config = BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=dropout,
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    impl = "sdpa" if variant == "sdpa" else f"primaldual-{variant}"
    return AutoModel.from_config(config, attn_implementation=impl, add_pooling_layer=False).double().eval()


def bert_inputs():
    ids = torch.randint(1, 40, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids, mask


def llama(variant):
    config = LlamaConfig(
        vocab_size=48,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        initializer_range=0.3,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    impl = "sdpa" if variant == "sdpa" else f"primaldual-{variant}"
    return LlamaForCausalLM._from_config(config, attn_implementation=impl).double().eval()


def llama_inputs():
    ids = torch.randint(1, 48, (2, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0  # left padding, as for generation
    return ids, mask


def valid(x, mask):
    return x[mask.bool()]


def equal_for_softmax_only(out, sdpa, variant, atol):
    """primaldual-softmax equals transformers' sdpa (within ``atol()``, the network law); every other variant
    differs from it."""
    if variant == "softmax":
        T.assert_close_normwise(out, sdpa, atol(), "sdpa")
    else:
        assert (out - sdpa).abs().max() > 1e-2


def test_register_names_every_variant_with_a_mask_function(names):
    assert names == [f"primaldual-{v}" for v in functional.VARIANTS]
    for name in names:
        assert name in ALL_ATTENTION_FUNCTIONS and name in AttentionMaskInterface._global_mapping


# --- encoder with padding (BERT) -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ENCODER_VARIANTS)
def test_bert_padding_never_changes_valid_tokens(variant):
    model, (ids, mask) = bert(variant), bert_inputs()
    other = ids.clone()
    other[mask == 0] = torch.randint(1, 40, (int((mask == 0).sum()),))
    a = model(ids, attention_mask=mask).last_hidden_state
    b = model(other, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(valid(a, mask), valid(b, mask), rtol=0, atol=0)  # exact: see above


@pytest.mark.parametrize("variant", ENCODER_VARIANTS)
def test_bert_softmax_equals_sdpa_and_the_others_differ(variant):
    (ids, mask), reference = bert_inputs(), bert("sdpa")
    expected = valid(reference(ids, attention_mask=mask).last_hidden_state, mask)
    model = bert(variant)
    with recording() as record:
        out = valid(model(ids, attention_mask=mask).last_hidden_state, mask)

    def atol():
        return network_atol(model, lambda m: valid(m(ids, attention_mask=mask).last_hidden_state, mask), record, 12)

    equal_for_softmax_only(out, expected, variant, atol)


@pytest.mark.parametrize("variant", ENCODER_VARIANTS)
def test_bert_backward_is_finite(variant):
    model, (ids, mask) = bert(variant, dropout=0.1).train(), bert_inputs()
    model(ids, attention_mask=mask).last_hidden_state.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("variant", ENCODER_VARIANTS)
def test_bert_attention_dropout_only_while_training(variant):
    model, (ids, mask) = bert(variant, dropout=0.5), bert_inputs()
    evaluated = [model(ids, attention_mask=mask).last_hidden_state for _ in range(2)]
    torch.testing.assert_close(evaluated[0], evaluated[1], rtol=0, atol=0)
    model.train()
    trained = [model(ids, attention_mask=mask).last_hidden_state for _ in range(2)]
    assert not torch.allclose(trained[0], trained[1]) and not torch.allclose(trained[0], evaluated[0])


@pytest.mark.parametrize("variant", ENCODER_VARIANTS)
def test_bert_output_attentions(variant):
    (ids, mask), model = bert_inputs(), bert(variant)
    with recording() as record:
        attentions = model(ids, attention_mask=mask, output_attentions=True).attentions
    assert len(attentions) == 2 and attentions[0].shape == (3, 4, 12, 12)
    for weights in attentions:
        # 12 weights in [0, 1], each rounded, summed: within range_atol of 1
        ones = torch.ones(3, 4, 12, dtype=weights.dtype)
        T.assert_close_normwise(weights.sum(-1), ones, T.range_atol(weights.dtype, 12, 1.0), "sum of weights")
        assert (weights.permute(0, 3, 1, 2)[mask == 0] == 0).all()  # no weight on a padded key
    if variant == "softmax":
        eager = bert("sdpa")
        eager.set_attn_implementation("eager")
        expected = eager(ids, attention_mask=mask, output_attentions=True).attentions
        rows = mask.bool()[:, None, :, None].expand(3, 4, 12, 12)  # the weights of valid queries
        for i, (weights, reference) in enumerate(zip(attentions, expected)):

            def layer_weights(m, i=i):
                return m(ids, attention_mask=mask, output_attentions=True).attentions[i][rows]

            atol = network_atol(model, layer_weights, record, 12)
            T.assert_close_normwise(weights[rows], reference[rows], atol, f"layer {i} weights")


@pytest.mark.parametrize("variant", ENCODER_VARIANTS)
def test_set_attn_implementation_switches_a_model(variant):
    (ids, mask), model = bert_inputs(), bert("sdpa")
    model.set_attn_implementation(f"primaldual-{variant}")
    # exact: the same weights (same seed) and the same implementation on the same inputs
    torch.testing.assert_close(
        model(ids, attention_mask=mask).last_hidden_state,
        bert(variant)(ids, attention_mask=mask).last_hidden_state,
        rtol=0,
        atol=0,
    )


# --- vision model with a class token (ViT) ---------------------------------------------------------------------


def vit(variant):
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    impl = "sdpa" if variant == "sdpa" else f"primaldual-{variant}"
    return AutoModel.from_config(config, attn_implementation=impl, add_pooling_layer=False).double().eval()


@pytest.mark.parametrize("variant", ENCODER_VARIANTS)
def test_vit_with_a_class_token(variant):
    register(num_prefix_tokens=1)  # the class token stays a key of every SH head
    try:
        images = torch.randn(2, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        expected = vit("sdpa")(images).last_hidden_state
        model = vit(variant)
        with recording() as record:
            out = model(images).last_hidden_state
        assert out.shape == (2, 17, 32)
        equal_for_softmax_only(
            out, expected, variant, lambda: network_atol(model, lambda m: m(images).last_hidden_state, record, 17)
        )
        out.square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        # The registered options reach the op: the first layer's attention is the functional variant.
        q, k, v = torch.randn(3, 2, 4, 17, 8, dtype=torch.float64).unbind(0)
        module = model.layers[0].attention
        got = ALL_ATTENTION_FUNCTIONS[f"primaldual-{variant}"](module, q, k, v, None, scaling=8**-0.5)[0]
        options = {"scales": (1, 2, 4, 8), "num_prefix_tokens": 1} if "sh" in variant else {}
        expected = functional.attention(q, k, v, variant, **options)
        law = T.variant_law(variant, q, k, None, **options)  # two float64 evaluations of the op: the law
        atol = T.attention_atol(torch.float64, law.pop("size"), T.output_scale(expected, v), **law)
        T.assert_close_normwise(got, expected.transpose(1, 2), atol, "op")
    finally:
        register(window=2)


# --- decoder with grouped-query attention (Llama) --------------------------------------------------------------


DECODER_VARIANTS = list(functional.VARIANTS)


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_llama_padding_and_the_future_never_change_valid_tokens(variant):
    model, (ids, mask) = llama(variant), llama_inputs()
    other = ids.clone()
    other[1, :3] = torch.tensor([5, 6, 7])  # other left padding
    future = ids.clone()
    future[:, 5:] = torch.tensor([9, 10])  # other future tokens: positions <= 4 unchanged
    with recording() as record:
        logits = model(ids, attention_mask=mask).logits
        moved = model(future, attention_mask=mask).logits
    # exact: padded tokens meet only -inf scores and exact 0 weights
    torch.testing.assert_close(
        valid(model(other, attention_mask=mask).logits, mask), valid(logits, mask), rtol=0, atol=0
    )
    # softmax: exact (future keys meet -inf scores); BN: the law (its shift is the mean of all keys, future ones
    # included: docs/numerics.md)
    atol = (
        0.0
        if not functional.VARIANTS[variant].bn
        else network_atol(model, lambda m: m(ids, attention_mask=mask).logits[:, :5], record, 7)
    )
    T.assert_close_normwise(moved[:, :5], logits[:, :5], atol, "past")


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_llama_softmax_equals_sdpa_and_bn_differs(variant):
    (ids, mask), reference = llama_inputs(), llama("sdpa")
    expected = valid(reference(ids, attention_mask=mask).logits, mask)
    model = llama(variant)
    with recording() as record:
        out = valid(model(ids, attention_mask=mask).logits, mask)
    equal_for_softmax_only(
        out,
        expected,
        variant,
        lambda: network_atol(model, lambda m: valid(m(ids, attention_mask=mask).logits, mask), record, 7),
    )


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_llama_kv_cache_gives_the_logits_of_the_whole_sequence(variant):
    """Prefill, then one token, then two at once (several new queries against the cache): the same logits."""
    model, (ids, mask) = llama(variant), llama_inputs()
    with recording() as record:
        whole = model(ids, attention_mask=mask).logits
        step = model(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
        parts = [step.logits]
        step = model(ids[:, 4:5], attention_mask=mask[:, :5], cache=step.past_key_values, use_cache=True)
        parts.append(step.logits)
        step = model(ids[:, 5:], attention_mask=mask, cache=step.past_key_values, use_cache=True)
        parts.append(step.logits)
    # other shapes and routes (the explicit prefix form for two new queries): two evaluations of the network law
    atol = network_atol(model, lambda m: valid(m(ids, attention_mask=mask).logits, mask), record, 7)
    T.assert_close_normwise(valid(torch.cat(parts, 1), mask), valid(whole, mask), atol, "cache")


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_llama_generation_with_and_without_cache(variant):
    model, (ids, mask) = llama(variant), llama_inputs()
    settings = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    cached = model.generate(ids, use_cache=True, **settings)
    assert torch.equal(cached, model.generate(ids, use_cache=False, **settings))
    assert torch.equal(cached, model.generate(ids, cache_implementation="static", **settings))
    if variant == "softmax":
        assert torch.equal(cached, llama("sdpa").generate(ids, **settings))


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_llama_backward_and_output_attentions(variant):
    model, (ids, mask) = llama(variant).train(), llama_inputs()
    out = model(ids, attention_mask=mask, labels=ids, output_attentions=True)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    weights = out.attentions[0]
    assert weights.shape == (2, 4, 7, 7) and (weights.triu(1) == 0).all()  # causal
    ones = torch.ones(4, 7, dtype=weights.dtype)
    T.assert_close_normwise(weights[0].sum(-1), ones, T.range_atol(weights.dtype, 7, 1.0), "sum of weights")


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_llama_left_padded_batch_generates_what_each_prompt_generates_alone(variant):
    """Greedy generation of a left-padded batch: each row's new tokens are those of its prompt alone."""
    model, (ids, mask) = llama(variant), llama_inputs()
    model.generation_config.eos_token_id = None  # six new tokens for every row
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    batch = model.generate(ids, attention_mask=mask, **settings)[:, ids.shape[1] :]
    for row in range(ids.shape[0]):
        prompt = ids[row : row + 1, mask[row].bool()]
        alone = model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)[:, prompt.shape[1] :]
        assert torch.equal(batch[row : row + 1], alone), row


# --- the attention function itself: grouped-query attention, scaling -------------------------------------------


class Module(torch.nn.Module):
    def __init__(self, groups, causal=False):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, causal


def test_grouped_query_attention_repeats_keys_per_group():
    q = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    k, v = torch.randn(2, 2, 2, 6, 8, dtype=torch.float64).unbind(0)
    got = ALL_ATTENTION_FUNCTIONS["primaldual-bn"](Module(2, causal=True), q, k, v, None)[0]
    keys, values = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    expected = functional.bn_attention(q, keys, values, causal=True)
    law = T.variant_law("bn", q, keys, None, causal=True)  # two float64 evaluations of the op
    atol = T.attention_atol(torch.float64, law.pop("size"), T.output_scale(expected, v), **law)
    T.assert_close_normwise(got, expected.transpose(1, 2), atol, "grouped")


def test_scaling_replaces_one_over_sqrt_d():
    q, k, v = torch.randn(3, 2, 4, 6, 8, dtype=torch.float64).unbind(0)
    module, scale = Module(1), 0.9
    got = ALL_ATTENTION_FUNCTIONS["primaldual-softmax"](module, q, k, v, None, scaling=scale)[0]
    expected = sdpa_attention_forward(module, q, k, v, None, scaling=scale)[0]
    c = scale * math.sqrt(q.shape[-1])  # the law of the score c·qᵀk/√D: q scaled by c (and β by c for BN)
    law = T.variant_law("softmax", q * c, k, None)
    atol = T.attention_atol(torch.float64, law.pop("size"), T.output_scale(expected, v), **law)
    T.assert_close_normwise(got, expected, atol, "softmax scaling")
    # BN: softmax(scaling · x̂(q)ᵀx̂(k)) v, x̂ = (x - μ)/sqrt(var + eps) with the keys' statistics.
    mean, var = k.mean(2, keepdim=True), k.var(2, unbiased=False, keepdim=True) + 1e-5
    scores = scale * ((q - mean) / var.sqrt()) @ ((k - mean) / var.sqrt()).transpose(-1, -2)
    expected = (scores.softmax(-1) @ v).transpose(1, 2)
    got = ALL_ATTENTION_FUNCTIONS["primaldual-bn"](module, q, k, v, None, scaling=scale)[0]
    law = T.variant_law("bn", q * c, k, None, mean_weight=c)
    atol = T.attention_atol(torch.float64, law.pop("size"), T.output_scale(expected, v), **law)
    T.assert_close_normwise(got, expected, atol, "bn scaling")
    assert not torch.allclose(got, ALL_ATTENTION_FUNCTIONS["primaldual-bn"](module, q, k, v, None)[0])
    assert math.isclose(scale, 0.9)


def test_unsupported_masks_and_arguments_are_refused():
    q, k, v = torch.randn(3, 1, 2, 5, 4, dtype=torch.float64).unbind(0)
    band = (torch.arange(5)[:, None] - torch.arange(5)).abs() <= 1
    attention = ALL_ATTENTION_FUNCTIONS["primaldual-bn"]
    with pytest.raises(ValueError, match="not a padding mask"):
        attention(Module(1), q, k, v, band.expand(1, 1, 5, 5))
    with pytest.raises(ValueError, match="softcap"):
        attention(Module(1), q, k, v, None, softcap=30.0)
    bias = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="additive biases"):
        attention(Module(1), q, k, v, bias)
    with pytest.raises(TypeError, match="causal is not an option"):
        register(causal=True)


# --- PrimalDualCache: each variant's own decoding state ---------------------------------------------------------


def llama_without_gqa(variant, heads=8):
    config = LlamaConfig(
        vocab_size=48,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=0.3,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, attn_implementation=f"primaldual-{variant}").double().eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_primaldual_cache_generates_the_tokens_of_dynamic_cache(variant):
    """Greedy generation with each variant's own state: the tokens of transformers' DynamicCache, left-padded
    batch and grouped-query keys included."""
    model, (ids, mask) = llama(variant), llama_inputs()
    model.generation_config.eos_token_id = None
    settings = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    expected = model.generate(ids, **settings)
    cache = integration.PrimalDualCache(model)
    assert torch.equal(model.generate(ids, cache=cache, **settings), expected)
    assert cache.get_seq_length() == ids.shape[1] + 7 and cache.nbytes() > 0


def generated_bytes(variant, new_tokens):
    from transformers import DynamicCache

    model = llama_without_gqa(variant)
    ids = torch.randint(1, 48, (1, 8), generator=torch.Generator().manual_seed(0))
    settings = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    cache, dynamic = integration.PrimalDualCache(model), DynamicCache(config=model.config)
    tokens = model.generate(ids, cache=cache, **settings)
    assert torch.equal(tokens, model.generate(ids, cache=dynamic, **settings))
    keys = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in dynamic.layers)
    return cache.nbytes(), keys


def test_primaldual_cache_holds_what_each_variant_needs():
    """SH with factors (1, 2, 4, 8) on a model without grouped-query keys: about mean(1/r) = 0.47 of
    DynamicCache's bytes; linear and linear-SH: a state that does not grow with the length."""
    sh, dynamic = generated_bytes("sh", 56)
    assert 0.44 < sh / dynamic < 0.5, sh / dynamic
    for variant in ("linear", "linear-sh"):
        assert generated_bytes(variant, 8)[0] == generated_bytes(variant, 40)[0], variant


def test_primaldual_cache_refuses_other_models_and_batches():
    with pytest.raises(ValueError, match="needs a model whose attn_implementation is 'primaldual-<variant>'"):
        integration.PrimalDualCache(llama("sdpa"))
    model, (ids, mask) = llama("sh"), llama_inputs()
    cache = integration.PrimalDualCache(model)
    model.generate(ids, attention_mask=mask, cache=cache, max_new_tokens=2, do_sample=False, pad_token_id=0)
    with pytest.raises(ValueError, match="holds 2 sequences, got a batch of 1"):
        model.generate(ids[:1], cache=cache, max_new_tokens=2, do_sample=False, pad_token_id=0)
    other = llama("bn")
    with pytest.raises(ValueError, match="made for 'sh', the model now runs 'bn'"):
        other.generate(ids, cache=integration.PrimalDualCache(model), max_new_tokens=2, pad_token_id=0)


# --- additive position biases (T5) -----------------------------------------------------------------------------


def t5(impl):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=40,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration._from_config(config, attn_implementation=impl).double().eval()
    model.generation_config.eos_token_id = None
    return model


def t5_inputs():
    g = torch.Generator().manual_seed(3)
    ids, decoder = torch.randint(1, 40, (2, 7), generator=g), torch.randint(1, 40, (2, 5), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder)


@pytest.mark.parametrize("variant", ["softmax", "bn"])
def test_t5_adds_its_position_bias(variant):
    """T5's relative position bias is added to the scores: primaldual-softmax equals T5's eager attention, bn
    differs from it; greedy generation with the cache equals generation without it."""
    inputs, reference = t5_inputs(), t5("eager")
    expected = reference(**inputs).logits
    model = t5(f"primaldual-{variant}")
    with recording() as record:
        out = model(**inputs).logits
    equal_for_softmax_only(out, expected, variant, lambda: network_atol(model, lambda m: m(**inputs).logits, record, 7))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    settings = dict(attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(model.generate(ids, **settings), model.generate(ids, use_cache=False, **settings))


def test_t5_with_sh_names_the_bias():
    """SH pools T5's bias in the encoder; the decoder's causal self-attention refuses it, naming it."""
    with pytest.raises(ValueError, match=r"attn_bias .*position_bias.* supported by .*, not 'sh' causal"):
        t5("primaldual-sh")(**t5_inputs())
