"""AttentionOptions: validated once where it is made, passed whole, equal to the keyword form."""

import dataclasses
import math

import pytest
import torch

from primaldual import Attention
from primaldual import functional as F
from primaldual.functional.options import FIELDS


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(variant="bn-sh"), ValueError, r"unknown variant 'bn-sh'"),
        (dict(variant="bn", scales=(1, 2)), ValueError, r"scales is only used by the sh variants"),
        (dict(variant="sh", scales=(1, 0)), ValueError, r"every factor in scales must be >= 1"),
        (dict(variant="sh", scales=3), TypeError, r"scales must be a sequence of integers"),
        (dict(variant="sparse"), ValueError, r"needs window"),
        (dict(variant="bn", window=3), ValueError, r"window is only used by the sparse variant"),
        (dict(variant="bn", eps=-1.0), ValueError, r"eps must be > 0"),
        (dict(variant="bn", eps=math.inf), ValueError, r"eps must be finite"),
        (dict(variant="bn", mean_weight=math.nan), ValueError, r"mean_weight must be finite"),
        (dict(variant="sh", num_prefix_tokens=-1), ValueError, r"num_prefix_tokens must be an integer >= 0"),
        (dict(variant="bn", grid=(4, 4)), ValueError, r"grid \(2D pooling of an image's patches\) is used by the sh"),
        (dict(variant="sh", grid=(4, 4), causal=True), ValueError, r"not 'sh' causal"),
        (dict(variant="sh", grid=(4, 0)), ValueError, r"grid must hold two integers >= 1"),
        (dict(variant="sh", grid=16), TypeError, r"grid must be the patch grid \(rows, cols\)"),
    ],
)
def test_bad_options_are_refused_where_they_are_made(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        F.AttentionOptions(**kwargs)


def test_options_are_frozen_and_replace_revalidates():
    options = F.AttentionOptions("bn", eps=1e-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.eps = 1.0
    assert options.replace(mean_weight=0.5) == F.AttentionOptions("bn", eps=1e-3, mean_weight=0.5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        options.replace(eps=0.0)
    with pytest.raises(TypeError, match=r"unknown attention option\(s\) beta; expected some of variant, scales"):
        options.replace(beta=0.5)
    assert set(FIELDS) == {"variant", "scales", "window", "eps", "mean_weight", "causal", "num_prefix_tokens", "grid"}


def test_for_heads_fills_sh_defaults_and_checks_the_count():
    assert F.AttentionOptions("sh").for_heads(6).scales == (1, 2, 4, 8, 1, 2)
    assert F.AttentionOptions("sh", scales=[2, 3]).for_heads(2).scales == (2, 3)
    assert F.AttentionOptions("bn").for_heads(4).scales is None
    with pytest.raises(ValueError, match=r"scales must have one factor per head \(3\)"):
        F.AttentionOptions("sh", scales=(1, 2)).for_heads(3)


@pytest.mark.parametrize(
    "variant, options",
    [
        ("bn", dict(eps=1e-3, mean_weight=0.5)),
        ("bn+sh", dict(scales=(1, 2, 3, 8), num_prefix_tokens=1)),
        ("sparse", dict(window=2, causal=True)),
        ("linear-bn", dict(mean_weight=0.0)),
    ],
)
def test_options_object_equals_the_keyword_form(variant, options):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 11, 8, dtype=torch.float64)
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[1, 7:] = True
    made = F.AttentionOptions(variant, **options)
    expected = F.attention(q, k, v, variant, key_padding_mask=mask, **options)
    torch.testing.assert_close(F.attention(q, k, v, made, key_padding_mask=mask), expected, rtol=0, atol=0)
    torch.testing.assert_close(
        F.attention_weights(q, k, made, key_padding_mask=mask),
        F.attention_weights(q, k, variant, key_padding_mask=mask, **options),
        rtol=0,
        atol=0,
    )


def test_functional_refuses_unknown_option_names():
    q = k = v = torch.randn(1, 2, 5, 4)
    with pytest.raises(TypeError, match=r"unknown attention option\(s\) scale"):
        F.attention(q, k, v, "sh", scale=(1, 2))


def test_layer_takes_an_options_object_or_its_fields():
    options = F.AttentionOptions("bn+sh", scales=(1, 4), eps=1e-3)
    layer = Attention(16, 2, options=options)
    assert layer.options == options and layer.variant == "bn+sh" and layer.scales == (1, 4)
    assert Attention(16, 2, options=options, eps=1e-2).options.eps == 1e-2
    assert Attention(16, 2, variant="sh").options.scales == (1, 2)
    with pytest.raises(TypeError, match=r"unknown attention option\(s\) factor"):
        Attention(16, 2, variant="sh", factor=2)
    with pytest.raises(TypeError, match=r"options must be an AttentionOptions"):
        Attention(16, 2, options={"variant": "bn"})
    with pytest.raises(ValueError, match=r"scales must have one factor per head \(2\)"):
        Attention(16, 2, options=F.AttentionOptions("sh", scales=(1, 2, 4)))
