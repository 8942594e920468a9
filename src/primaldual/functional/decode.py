"""Incremental decoding: each variant's state after t tokens, and the step that adds one (SPEC section 5).

    state = DecodeState.start(options, batch, heads)      # or DecodeState.from_prompt(options, k, v, mask)
    out, state = state.step(q, k, v)                     # q (B, H, 1, D), k, v (B, H, 1, ·) -> (B, H, 1, Dv)

Decoding a sequence one token at a time gives the causal forward's output at every position, to rounding. What
the state holds is SPEC section 5's table, per group of heads of one SH factor:

* **keys and values** (softmax, sparse, bn, linear-bn: their SVR is fitted on every past key): the keys as they
  come, per key head (grouped-query attention), and their padding; sparse keeps the last ``window``; bn its
  running sums besides (``Σ k``, ``Σ k²``, the count, float64), so its step is one fused softmax call. The others'
  step is the causal op itself with one query at the last position.
* **carried points** (SH, linear): the points a later query sees, in slots per sample: the prefix tokens, then each
  complete window's mean (factor 1: every key). Not kept for the linear kernel without BN, which keeps their sums
  ``S = Σ Φ(k) vᵀ`` and ``z = Σ Φ(k)`` instead (O(1) in t).
* **the open window** (SH, factor > 1): the sums of its valid keys and values, its count, and how many positions
  it has. Windows start at each sample's first valid key after the prefix, so samples close windows at their own
  steps: a sample's w-th window goes to its slot ``P + w``, and the slots grow by one every r tokens (no host sync).

The step forms the query's training set (:class:`~primaldual.functional.causal.CausalSet`: the carried points and
its own point, the open window's running mean or its own key) and evaluates it with the kernels of
:mod:`~primaldual.functional.causal`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .causal import CausalSet, bn_softmax_on_set, linear_bn_on_set, softmax_on_set
from .kernels import elu_feature_map, softmax_kernel
from .options import AttentionOptions
from .transforms import HeadSplit, head_split, join_heads, split_heads
from .variants import attention, repeat_kv


def _nbytes(*tensors: Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True)
class KeysState:
    """Keys, values ``(B, Hkv, t, ·)`` and padding ``(B, t)`` (softmax, sparse, bn, linear-bn)."""

    keys: Tensor
    values: Tensor
    padding: Tensor
    sums: tuple[Tensor, Tensor, Tensor] | None = None  # bn: Σ k, Σ k² (B, Hkv, 1, D) and the count (B, 1, 1, 1)

    def nbytes(self) -> int:
        return _nbytes(self.keys, self.values, self.padding, *(self.sums or ()))


@dataclass(frozen=True)
class GroupState:
    """The state of one group of heads sharing an SH factor (SH, linear; see the module doc)."""

    factor: int
    keys: Tensor  # carried points (B, H, slots, D); no slots for the linear kernel without BN
    values: Tensor  # (B, H, slots, Dv)
    valid: Tensor  # (B, slots) bool: the slot holds a valid point (unwritten slots: False)
    filled: Tensor  # (B,) long: slots written
    sums: tuple[Tensor, Tensor] | None  # linear without BN: S (B, H, D, Dv), z (B, H, D)
    open_keys: Tensor  # the open window's Σ k over its valid positions (B, H, 1, D)
    open_values: Tensor  # (B, H, 1, Dv)
    open_count: Tensor  # (B, 1, 1, 1): its valid positions
    open_length: Tensor  # (B,) long: its positions
    started: Tensor  # (B,) bool: the sample has had a valid key after the prefix

    def nbytes(self) -> int:
        tensors = (self.keys, self.values, self.valid, self.filled, self.open_keys, self.open_values)
        return _nbytes(*tensors, self.open_count, self.open_length, self.started, *(self.sums or ()))


@dataclass(frozen=True)
class DecodeState:
    """A variant's decoding state after ``length`` tokens: a :class:`KeysState`, or one :class:`GroupState` per
    group of heads of one SH factor (:func:`~primaldual.functional.transforms.head_split`)."""

    options: AttentionOptions
    split: HeadSplit | None  # None: a KeysState
    parts: tuple[KeysState | GroupState, ...]
    length: int

    @classmethod
    def start(
        cls,
        options: AttentionOptions,
        batch: int,
        heads: int,
        *,
        key_heads: int | None = None,
        head_dim: int,
        value_dim: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> DecodeState:
        """The state before the first token of ``batch`` sequences, ``heads`` query heads (``key_heads`` key
        heads: grouped-query attention), ``head_dim`` and ``value_dim`` features."""
        options = options.for_heads(heads).replace(causal=True)
        value_dim = head_dim if value_dim is None else value_dim

        def zeros(*shape: int, dt: torch.dtype = dtype) -> Tensor:
            return torch.zeros(*shape, dtype=dt, device=device)

        if keeps_keys(options):
            h = key_heads or heads
            part = KeysState(
                zeros(batch, h, 0, head_dim), zeros(batch, h, 0, value_dim), zeros(batch, 0, dt=torch.bool)
            )
            return cls(options, None, (part,), 0)
        split = head_split(options.scales if options.spec.pooled else (1,) * heads)
        linear = options.spec.kernel == "linear" and not options.spec.bn

        def group(factor: int, h: int) -> GroupState:
            sums = (zeros(batch, h, head_dim, value_dim), zeros(batch, h, head_dim)) if linear else None
            return GroupState(
                factor,
                zeros(batch, h, 0, head_dim),
                zeros(batch, h, 0, value_dim),
                zeros(batch, 0, dt=torch.bool),
                zeros(batch, dt=torch.long),
                sums,
                zeros(batch, h, 1, head_dim),
                zeros(batch, h, 1, value_dim),
                zeros(batch, 1, 1, 1),
                zeros(batch, dt=torch.long),
                zeros(batch, dt=torch.bool),
            )

        sizes = [len(range(heads)[part]) for part in split.slices()]
        return cls(options, split, tuple(group(f, n) for f, n in zip(split.factors, sizes)), 0)

    @classmethod
    def from_prompt(
        cls, options: AttentionOptions, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, DecodeState]:
        """The causal forward of a prompt q ``(B, H, N, D)``, k, v ``(B, Hkv, N, ·)`` (``key_padding_mask`` True at
        padding) and the state after it."""
        options = options.for_heads(q.shape[1]).replace(causal=True)
        out = attention(q, k, v, options, key_padding_mask=key_padding_mask)
        state = cls.start(
            options,
            q.shape[0],
            q.shape[1],
            key_heads=k.shape[1],
            head_dim=k.shape[3],
            value_dim=v.shape[3],
            dtype=k.dtype,
            device=k.device,
        )
        for i in range(k.shape[2]):
            state = state.append(k[:, :, i : i + 1], v[:, :, i : i + 1], _valid(key_padding_mask, i))
        return out, state

    def nbytes(self) -> int:
        """Bytes of the tensors the state keeps."""
        return sum(part.nbytes() for part in self.parts)

    def step(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None = None) -> tuple[Tensor, DecodeState]:
        """The output ``(B, H, 1, Dv)`` of query q ``(B, H, 1, D)`` at the next position, whose key and value are
        k, v ``(B, Hkv, 1, ·)`` (``valid`` ``(B,)`` bool, False where that token is padding), and the state after."""
        return self._advance(k, v, valid, q)

    def append(self, k: Tensor, v: Tensor, valid: Tensor | None = None) -> DecodeState:
        """The state after a token whose query is not needed (a prompt's)."""
        return self._advance(k, v, valid, None)[1]

    def _advance(
        self, k: Tensor, v: Tensor, valid: Tensor | None, q: Tensor | None
    ) -> tuple[Tensor | None, DecodeState]:
        if valid is None:
            valid = torch.ones(k.shape[0], dtype=torch.bool, device=k.device)
        if self.split is None:
            out, part = _keys_step(self.options, self.parts[0], q, k, v, valid)
            return out, replace(self, parts=(part,), length=self.length + 1)
        heads = sum(part.keys.shape[1] for part in self.parts)
        k, v = repeat_kv(k, heads), repeat_kv(v, heads)
        queries = [None] * len(self.parts) if q is None else split_heads(q, self.split)
        steps = [
            _group_step(self.options, part, self.length, qh, kh, vh, valid)
            for part, qh, kh, vh in zip(self.parts, queries, split_heads(k, self.split), split_heads(v, self.split))
        ]
        out = None if q is None else join_heads([o for o, _ in steps], self.split)
        return out, replace(self, parts=tuple(g for _, g in steps), length=self.length + 1)


def keeps_keys(options: AttentionOptions) -> bool:
    """Whether the variant's state is its keys and values (its SVR is fitted on every past key)."""
    return not options.spec.pooled and (options.spec.kernel == "softmax" or options.spec.bn)


def _valid(mask: Tensor | None, i: int) -> Tensor | None:
    return None if mask is None else ~mask[:, i]


def _keys_step(
    options: AttentionOptions, part: KeysState, q: Tensor | None, k: Tensor, v: Tensor, valid: Tensor
) -> tuple[Tensor | None, KeysState]:
    keys, values = torch.cat((part.keys, k), 2), torch.cat((part.values, v), 2)
    padding = torch.cat((part.padding, ~valid[:, None]), 1)
    sums = _bn_sums(part.sums, k, valid) if options.spec.bn and options.spec.kernel == "softmax" else None
    out = None
    if q is not None and sums is not None:
        out = _bn_step(options, q, keys, values, padding, sums)
    elif q is not None:
        out = attention(q, keys, values, options, key_padding_mask=padding)
    if options.spec.windowed:  # the next query sees the last window of these and itself
        start = max(0, keys.shape[2] - options.window)
        keys, values, padding = keys[:, :, start:], values[:, :, start:], padding[:, start:]
    return out, KeysState(keys, values, padding, sums)


def _bn_sums(sums: tuple[Tensor, Tensor, Tensor] | None, k: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """BN's running sums after key k ``(B, Hkv, 1, D)``: ``Σ k``, ``Σ k²`` over the valid keys and their count, in
    float64 (``E[k²] - E[k]²`` cancels where the keys sit far from 0; float32 on MPS, which has no float64)."""
    acc = torch.float32 if k.device.type == "mps" else torch.float64
    weight = valid[:, None, None, None].to(acc)
    x = k.to(acc) * weight
    if sums is None:
        return x, x.square(), weight
    return sums[0] + x, sums[1] + x.square(), sums[2] + weight


def _bn_step(
    options: AttentionOptions, q: Tensor, keys: Tensor, values: Tensor, padding: Tensor, sums: tuple[Tensor, ...]
) -> Tensor:
    """Causal BN's last query from the running sums: ``(q - βμ) ⊘ s²`` against the keys less μ (the shift
    identity), one fused softmax call; a query fitted on at most one key is 0 (its output: that key's value)."""
    first, second, count = sums
    mean = first / count.clamp_min(1)
    var = (second / count.clamp_min(1) - mean.square()).clamp_min(0) + options.eps
    scale = var.reciprocal().masked_fill(count <= 1, 0.0).to(q.dtype)
    shift = (mean * -options.mean_weight).masked_fill(count <= 1, 0.0).to(q.dtype)
    groups = q.shape[1] // keys.shape[1]
    q_hat = (q + shift.repeat_interleave(groups, 1)) * scale.repeat_interleave(groups, 1)
    centred = keys - mean.to(keys.dtype)
    return softmax_kernel(q_hat, centred, values, padding)


def _group_step(
    options: AttentionOptions, g: GroupState, t: int, q: Tensor | None, k: Tensor, v: Tensor, valid: Tensor
) -> tuple[Tensor | None, GroupState]:
    """One token at position t for one group: its own point, the output, then the point it closes."""
    p, r = options.num_prefix_tokens, g.factor
    weight = valid[:, None, None, None].to(k.dtype)
    if t < p:  # a prefix token: its own point, carried as it is
        own_keys, own_values, own_valid, close = k, v, valid, torch.ones_like(valid)
        g_open = g
    else:
        started = g.started | valid if r > 1 else torch.ones_like(valid)
        sums_k, sums_v, count = g.open_keys + k * weight, g.open_values + v * weight, g.open_count + weight
        own_keys, own_values = sums_k / count.clamp_min(1), sums_v / count.clamp_min(1)
        own_valid = count[:, 0, 0, 0] > 0
        length = g.open_length + started.long()
        close = started & (length == r)
        keep = (~close)[:, None, None, None]
        g_open = replace(
            g,
            open_keys=sums_k * keep,
            open_values=sums_v * keep,
            open_count=count * keep,
            open_length=length.masked_fill(close, 0),
            started=started,
        )
    out = None
    if q is not None:
        out = _group_output(options, g, q, own_keys, own_values, own_valid)
    return out, _carry(g_open, t, p, own_keys, own_values, own_valid & close, close)


def _group_output(
    options: AttentionOptions, g: GroupState, q: Tensor, own_keys: Tensor, own_values: Tensor, own_valid: Tensor
) -> Tensor:
    """Query q against the carried points of g and its own point."""
    if g.sums is not None:  # the linear kernel's prefix sums
        phi_q = elu_feature_map(q - q.amax(-1, keepdim=True).clamp(max=0.0))
        phi_own = elu_feature_map(own_keys).masked_fill(~own_valid[:, None, None, None], 0.0)
        own = torch.linalg.vecdot(phi_q, phi_own).unsqueeze(-1)
        numerator = phi_q @ g.sums[0] + own * own_values
        normaliser = phi_q @ g.sums[1].unsqueeze(-1) + own
        out = numerator / normaliser.clamp_min(torch.finfo(normaliser.dtype).tiny)
        return out.masked_fill(normaliser == 0, 0.0)
    points = CausalSet(
        g.keys, g.values, g.valid, g.filled[:, None, None, None], own_keys, own_values, own_valid[:, None, None, None]
    )
    if options.spec.kernel == "linear":
        return linear_bn_on_set(q, points, options.eps, options.mean_weight)
    if options.spec.bn:
        return bn_softmax_on_set(q, points, options.eps, options.mean_weight)
    return softmax_on_set(q, points)


def _carry(g: GroupState, t: int, p: int, keys: Tensor, values: Tensor, valid: Tensor, close: Tensor) -> GroupState:
    """g with the point (keys, values ``(B, H, 1, ·)``, ``valid``) carried where ``close``: into the slot
    ``filled`` of each closing sample, or into the linear kernel's sums. The slots grow to ``P + ⌈(t + 1 - P)/r⌉``
    (the most a sample can have closed), a host-side count."""
    if g.sums is not None:
        phi = elu_feature_map(keys).masked_fill(~valid[:, None, None, None], 0.0)
        sums = (g.sums[0] + phi.transpose(-2, -1) @ values, g.sums[1] + phi[:, :, 0])
        return replace(g, sums=sums)
    slots = t + 1 if t < p else p + -(-(t + 1 - p) // g.factor)
    keys_, values_, valid_ = g.keys, g.values, g.valid
    if slots > keys_.shape[2]:
        grow = slots - keys_.shape[2]
        keys_ = torch.cat((keys_, keys_.new_zeros(*keys_.shape[:2], grow, keys_.shape[3])), 2)
        values_ = torch.cat((values_, values_.new_zeros(*values_.shape[:2], grow, values_.shape[3])), 2)
        valid_ = torch.cat((valid_, valid_.new_zeros(valid_.shape[0], grow)), 1)
    write = (torch.arange(slots, device=keys.device) == g.filled[:, None]) & close[:, None]  # (B, slots)
    keys_ = torch.where(write[:, None, :, None], keys, keys_)
    values_ = torch.where(write[:, None, :, None], values, values_)
    valid_ = torch.where(write, valid[:, None], valid_)
    return replace(g, keys=keys_, values=values_, valid=valid_, filled=g.filled + close.long())
