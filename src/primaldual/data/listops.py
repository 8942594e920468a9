"""ListOps, the Long Range Arena task (Nangia & Bowman 2018; Tay et al. 2021): token ids + padding masks.

An expression is a digit 0-9 or an operator applied to 2..``max_args`` expressions, written bracketed
as in LRA: ``[MAX 2 9 [MIN 4 7 ] 0 ]``. Its label is its value:

    MAX, MIN   the largest / smallest argument
    MED        the median; for an even count the mean of the two middle values rounded down, which is
               what LRA's ``int(np.median(args))`` gives (neither the lower nor the upper median)
    SM         the sum modulo 10

Trees are sampled as LRA's generator does: a node at depth ``d < max_depth`` (root: depth 1) is an
operator with probability 1/4, else a uniform digit; an operator is uniform over the four and takes a
uniform 2..``max_args`` arguments; nodes at depth ``max_depth`` are digits. A tree is kept when its
token count (digits, operators and ``]``; LRA's own count, LRA's parentheses are not tokens) lies in
``[min_length, max_length]`` (inclusive here; LRA keeps ``min_length < length < max_length``), and
the kept expressions are all distinct, so the splits are disjoint. The sampler is exact rejection
sampling, vectorised over a batch of trees level by level with numpy (a pure-Python recursive sampler
plus a Python evaluator would take minutes for the 100k LRA-size sequences); a tree is abandoned as
soon as its length is known to exceed ``max_length`` and, when ``min_length > 1``, the root is drawn as
an operator directly (a digit root would always be rejected), neither of which changes the distribution.

Token ids: 0 padding, 1..10 the digits, 11..14 ``[MAX [MIN [MED [SM``, 15 ``]`` (see ``VOCAB``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_open
from .sequences import TokenSplit, check_padded_size

DIGITS = tuple(str(d) for d in range(10))
OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
CLOSE = "]"
PAD_ID = 0
VOCAB = ("<pad>", *DIGITS, *OPERATORS, CLOSE)
TOKEN_IDS = {token: i for i, token in enumerate(VOCAB)}

_DIGIT0 = TOKEN_IDS["0"]
_OP0 = TOKEN_IDS[OPERATORS[0]]
_CLOSE_ID = TOKEN_IDS[CLOSE]
_MAX, _MIN, _MED, _SM = range(len(OPERATORS))
_OPERATOR_P = 0.25  # LRA's VALUE_P: the probability that a node above the depth limit is an operator
_BATCH = 2048  # trees per sampling batch; fixed, so the first k of n expressions do not depend on n
_CACHE_VERSION = 1


@dataclass
class ListOpsData:
    """The three ListOps splits, padded to one common length; ``vocab[i]`` is the token of id ``i``."""

    train: TokenSplit
    val: TokenSplit
    test: TokenSplit
    vocab: tuple[str, ...] = VOCAB
    classes: tuple[str, ...] = DIGITS

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ----------------------------------------------------------------------------- tokens and evaluation


def tokenize(expression: str) -> list[int]:
    """Token ids of a whitespace-separated expression. LRA's parentheses ``(`` ``)`` (the TSV files
    write ``( ( [MAX 2 ) 9 ) ] )``) only repeat the bracket structure and are dropped."""
    ids = []
    for token in expression.split():
        if token in ("(", ")"):
            continue
        if token not in TOKEN_IDS or token == VOCAB[PAD_ID]:
            raise ValueError(f"unknown ListOps token {token!r} in {expression[:80]!r}; expected one of {VOCAB[1:]}")
        ids.append(TOKEN_IDS[token])
    return ids


def decode(ids: Sequence[int] | np.ndarray | Tensor) -> str:
    """The expression string of token ids; padding (id 0) is skipped."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= len(VOCAB)):
        raise ValueError(f"token ids must lie in [0, {len(VOCAB)}), got range [{ids.min()}, {ids.max()}]")
    return " ".join(VOCAB[i] for i in ids.tolist() if i != PAD_ID)


def _apply(op: int, args: list[int]) -> int:
    if op == _MAX:
        return max(args)
    if op == _MIN:
        return min(args)
    if op == _MED:
        s = sorted(args)
        return (s[(len(s) - 1) // 2] + s[len(s) // 2]) // 2
    return sum(args) % 10


def evaluate(expression: str | Sequence[str] | Sequence[int] | np.ndarray | Tensor) -> int:
    """Value 0..9 of one expression: a string, a list of token strings, or token ids (trailing
    padding allowed). Malformed expressions (unbalanced ``]``, an operator without arguments, two
    top-level expressions, unknown tokens) raise ValueError."""
    if isinstance(expression, str):
        ids = tokenize(expression)
    elif isinstance(expression, (np.ndarray, Tensor)) or (len(expression) and not isinstance(expression[0], str)):
        ids = np.trim_zeros(np.asarray(expression).reshape(-1), "b").tolist()
    else:
        ids = tokenize(" ".join(expression))
    stack: list[tuple[int, list[int]]] = []
    value = None
    for pos, t in enumerate(ids):
        if value is not None:
            raise ValueError(f"token {pos} follows a complete expression: {decode(ids)[:80]!r}")
        if _OP0 <= t < _CLOSE_ID:
            stack.append((t - _OP0, []))
            continue
        if _DIGIT0 <= t < _OP0:
            v = t - _DIGIT0
        elif t == _CLOSE_ID:
            if not stack:
                raise ValueError(f"unmatched ']' at token {pos}: {decode(ids)[:80]!r}")
            op, args = stack.pop()
            if not args:
                raise ValueError(f"operator {OPERATORS[op]} without arguments at token {pos}")
            v = _apply(op, args)
        else:
            raise ValueError(f"invalid token id {t} at position {pos}; expected ids 1..{len(VOCAB) - 1}")
        if stack:
            stack[-1][1].append(v)
        else:
            value = v
    if stack:
        raise ValueError(f"{len(stack)} operator(s) not closed by ']': {decode(ids)[:80]!r}")
    if value is None:
        raise ValueError("empty ListOps expression")
    return value


def pad(
    sequences: Sequence[Sequence[int]], labels: Sequence[int], length: int | None = None, *, source: object = "ListOps"
) -> TokenSplit:
    """Right-pad token id lists with 0 to ``length`` (default: the longest) into a :class:`TokenSplit`;
    ``source`` names the data in errors."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = np.fromiter((t for s in sequences for t in s), dtype=np.int64)
    return _pad_flat(flat, lengths, np.asarray(labels), length, source=source)


def _pad_flat(
    flat: np.ndarray, lengths: np.ndarray, labels: np.ndarray, length: int | None, *, source: object = "ListOps"
) -> TokenSplit:
    """Padded split from the concatenated tokens ``flat`` of sequences of the given ``lengths``."""
    longest = int(lengths.max(initial=0))
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sequence has {longest} tokens, more than the padded length {length}")
    check_padded_size(len(lengths), length, source=source)
    mask = np.arange(length)[None, :] >= lengths[:, None]
    x = np.zeros(mask.shape, dtype=np.int64)
    x[~mask] = flat
    return TokenSplit(torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(labels.astype(np.int64)))


# ----------------------------------------------------------------------------- sampling


def _check_params(min_length: int, max_length: int, max_depth: int, max_args: int) -> None:
    for name, v, low in (
        ("min_length", min_length, 0),
        ("max_length", max_length, 1),
        ("max_depth", max_depth, 1),
        ("max_args", max_args, 2),
    ):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    longest = 1
    for _ in range(max_depth - 1):
        longest = 2 + max_args * longest
    # lengths: 1 (a digit) and, with max_depth > 1, 4 ([OP a b ]) up to longest
    if max_length < 1 or (min_length > 1 and max(min_length, 4) > min(max_length, longest)):
        raise ValueError(
            f"no ListOps expression has a length in [min_length, max_length] = [{min_length}, {max_length}] "
            f"with max_depth={max_depth}, max_args={max_args} (lengths are 1 or 4..{longest})"
        )


def _sample_batch(
    rng: np.random.Generator, batch: int, min_length: int, max_length: int, max_depth: int, max_args: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``batch`` trees, keep those of length in range: (flat uint8 tokens, lengths, labels)."""
    # Top-down, one level at a time; children of a node are contiguous in the next level.
    tree = np.arange(batch)
    if min_length > 1:  # a digit root (length 1) would be rejected: draw the root as an operator
        is_op = np.ones(batch, bool)
    else:
        is_op = (rng.random(batch) < _OPERATOR_P) & (max_depth > 1)
    fixed = np.zeros(batch, np.int64)  # tokens of the decided nodes (operator and ']' = 2, digit = 1)
    alive = np.ones(batch, bool)
    levels = []
    for depth in range(1, max_depth + 1):
        n = len(tree)
        sym = np.where(is_op, rng.integers(0, len(OPERATORS), n), rng.integers(0, 10, n))
        nargs = np.where(is_op, rng.integers(2, max_args + 1, n), 0)
        fixed += np.bincount(tree, weights=1 + is_op, minlength=batch).astype(np.int64)
        # every pending argument takes at least one token: past max_length the tree is abandoned
        alive &= fixed + np.bincount(tree, weights=nargs, minlength=batch) <= max_length
        nargs *= alive[tree]
        levels.append((tree, is_op, sym, nargs))
        parent = np.repeat(np.arange(n), nargs)
        if not len(parent):
            break
        tree = tree[parent]
        is_op = rng.random(len(tree)) < _OPERATOR_P if depth + 1 < max_depth else np.zeros(len(tree), bool)

    # Bottom-up: token count and value of every node.
    sizes: list[np.ndarray] = [np.ones(0)] * len(levels)
    size = value = np.zeros(0, np.int64)
    for depth in reversed(range(len(levels))):
        tree, is_op, sym, nargs = levels[depth]
        parent = np.repeat(np.arange(len(tree)), nargs)
        size = np.where(is_op, 2 + np.bincount(parent, weights=size, minlength=len(tree)).astype(np.int64), 1)
        full = nargs > 0  # operators of abandoned trees have no arguments; their values are never used
        first, count, ops = (np.cumsum(nargs) - nargs)[full], nargs[full], sym[full]
        ordered = np.sort(parent * 10 + value) % 10  # argument values, ascending within each operator
        node_value = sym.copy()
        if len(first):
            node_value[full] = np.select(
                [ops == _MAX, ops == _MIN, ops == _MED],
                [
                    np.maximum.reduceat(value, first),
                    np.minimum.reduceat(value, first),
                    (ordered[first + (count - 1) // 2] + ordered[first + count // 2]) // 2,
                ],
                np.add.reduceat(value, first) % 10,
            )
        sizes[depth], value = size, node_value

    keep = np.flatnonzero(alive & (size >= min_length) & (size <= max_length))
    lengths, labels = size[keep], value[keep]
    offset = np.full(batch, -1, np.int64)
    offset[keep] = np.cumsum(lengths) - lengths
    flat = np.zeros(int(lengths.sum()), np.uint8)

    # Top-down again: each node's first token sits after its parent's operator and its elder siblings;
    # an operator's ']' is its last token.
    start = np.zeros(batch, np.int64)
    for depth, (tree, is_op, sym, nargs) in enumerate(levels):
        kept = offset[tree] >= 0
        pos = offset[tree[kept]] + start[kept]
        flat[pos] = np.where(is_op[kept], _OP0, _DIGIT0) + sym[kept]
        flat[(pos + sizes[depth][kept] - 1)[is_op[kept]]] = _CLOSE_ID
        if depth + 1 < len(levels):
            parent = np.repeat(np.arange(len(tree)), nargs)
            child_size = sizes[depth + 1]
            before = np.cumsum(child_size) - child_size  # tokens of all earlier nodes of the level
            first = np.cumsum(nargs) - nargs
            start = start[parent] + 1 + before - before[first[parent]]
    return flat, lengths, labels


def _generate(
    num: int,
    seed: int,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    max_attempts: int | None,
    progress: bool | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num`` distinct expressions as (flat uint8 tokens, lengths int64, labels int64)."""
    if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 0:
        raise ValueError(f"num must be a non-negative integer, got {num!r}")
    _check_params(min_length, max_length, max_depth, max_args)
    max_attempts = 100 * num + 10 * _BATCH if max_attempts is None else max_attempts
    rng = np.random.default_rng(seed)
    seen: set[bytes] = set()
    flats, lengths, labels = [], [], []
    attempts = 0
    if progress is None:  # tqdm is not a core dependency (lightning brings it)
        progress = num >= 10_000 and importlib.util.find_spec("tqdm") is not None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num, desc="ListOps", unit="expr")
    while len(seen) < num:
        if attempts >= max_attempts:
            raise RuntimeError(
                f"ListOps sampling kept {len(seen)} of the {num} expressions requested after {attempts} trees "
                f"(max_attempts): lengths [{min_length}, {max_length}] are too rare with max_depth={max_depth}, "
                f"max_args={max_args}, or there are fewer distinct expressions than requested"
            )
        flat, length, label = _sample_batch(rng, _BATCH, min_length, max_length, max_depth, max_args)
        attempts += _BATCH
        for end, n, y in zip(np.cumsum(length).tolist(), length.tolist(), label.tolist()):
            tokens = flat[end - n : end]
            key = hashlib.blake2b(tokens.tobytes(), digest_size=16).digest()
            if key in seen:
                continue
            seen.add(key)
            flats.append(tokens)
            lengths.append(n)
            labels.append(y)
            if len(seen) == num:
                break
        if bar is not None:
            bar.update(len(seen) - bar.n)
    if bar is not None:
        bar.close()
    flat = np.concatenate(flats) if flats else np.zeros(0, np.uint8)
    return flat, np.asarray(lengths, np.int64), np.asarray(labels, np.int64)


def generate_listops(
    num: int,
    seed: int = 0,
    *,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    max_attempts: int | None = None,
    progress: bool | None = None,
) -> TokenSplit:
    """``num`` distinct random expressions with ``min_length <= tokens <= max_length``, deterministic in
    ``seed``; the first ``k`` expressions do not depend on ``num >= k``.

    Returns x ``(num, max_length)`` int64 token ids right-padded with 0, mask True at padding, y the
    values 0..9. Raises ValueError when no length in range is possible and RuntimeError when
    ``max_attempts`` trees (default ``100 num + 20480``) did not give ``num`` distinct expressions.
    ``progress``: a tqdm bar (default: when ``num >= 10000``).
    """
    flat, lengths, labels = _generate(num, seed, min_length, max_length, max_depth, max_args, max_attempts, progress)
    return _pad_flat(flat, lengths, labels, max_length)


# ----------------------------------------------------------------------------- splits and cache


def load_listops(
    root: str | os.PathLike,
    *,
    num_train: int = 96_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    seed: int = 0,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    progress: bool | None = None,
) -> ListOpsData:
    """Generated ListOps splits (LRA sizes by default), cached under ``root``.

    One call of :func:`generate_listops` gives ``num_train + num_val + num_test`` distinct expressions,
    split in that order and padded to ``max_length``. The cache is ``listops-<params hash>.npz`` (flat
    uint8 tokens, lengths, labels) plus a JSON manifest of the parameters and the file's sha256, both
    written atomically; a missing, truncated or altered cache is regenerated (with a warning when a
    cache was there but unusable), and other parameters never reuse it.
    """
    params = dict(
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        seed=seed,
        min_length=min_length,
        max_length=max_length,
        max_depth=max_depth,
        max_args=max_args,
    )
    for name in ("num_train", "num_val", "num_test", "seed"):
        if not isinstance(params[name], (int, np.integer)) or isinstance(params[name], bool) or params[name] < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {params[name]!r}")
    _check_params(min_length, max_length, max_depth, max_args)
    params = {"version": _CACHE_VERSION, **{k: int(v) for k, v in params.items()}}
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    data_path, manifest_path = Path(root) / f"listops-{tag}.npz", Path(root) / f"listops-{tag}.json"
    cached = _read_cache(data_path, manifest_path, params)
    if cached is None:
        cached = _generate(
            num_train + num_val + num_test, seed, min_length, max_length, max_depth, max_args, None, progress
        )
        _write_cache(data_path, manifest_path, params, *cached)
    flat, lengths, labels = cached
    bounds = np.cumsum([0, num_train, num_val, num_test])  # sequences of split i: bounds[i]..bounds[i + 1]
    token_bounds = np.concatenate([[0], np.cumsum(lengths)])[bounds]
    return ListOpsData(
        *(
            _pad_flat(
                flat[token_bounds[i] : token_bounds[i + 1]],
                lengths[bounds[i] : bounds[i + 1]],
                labels[bounds[i] : bounds[i + 1]],
                max_length,
            )
            for i in range(3)
        )
    )


def _write_cache(
    data_path: Path, manifest_path: Path, params: dict, flat: np.ndarray, lengths: np.ndarray, labels: np.ndarray
) -> None:
    data_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(data_path) as f:
        np.savez_compressed(f, tokens=flat, lengths=lengths, labels=labels)
    manifest = dict(params=params, data=data_path.name, sha256=_sha256(data_path))
    with atomic_open(manifest_path) as f:
        f.write(json.dumps(manifest, indent=2).encode())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_cache(data_path: Path, manifest_path: Path, params: dict) -> tuple[np.ndarray, ...] | None:
    """The cached (flat, lengths, labels), or None (after a warning if a cache exists but is unusable)."""
    if not data_path.exists() and not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("params") != params:
            raise ValueError(f"its manifest was written for other parameters: {manifest.get('params')}")
        if _sha256(data_path) != manifest.get("sha256"):
            raise ValueError(f"the sha256 of {data_path.name} does not match its manifest (truncated or altered)")
        with np.load(data_path) as npz:
            flat, lengths, labels = npz["tokens"], npz["lengths"], npz["labels"]
        total = params["num_train"] + params["num_val"] + params["num_test"]
        if lengths.shape != (total,) or labels.shape != (total,) or flat.shape != (int(lengths.sum()),):
            raise ValueError("its arrays do not have the sizes of its parameters")
        return flat, lengths, labels
    except (OSError, ValueError, KeyError, AttributeError, zipfile.BadZipFile) as e:  # JSONDecodeError: ValueError
        warnings.warn(f"ListOps cache {data_path} is unusable ({e}); regenerating it", RuntimeWarning, stacklevel=3)
        return None


# ----------------------------------------------------------------------------- LRA's TSV files


def read_listops_tsv(path: str | os.PathLike, length: int | None = None, *, check_labels: bool = False) -> TokenSplit:
    """An LRA ListOps file (``basic_train.tsv`` ...: header ``Source\\tTarget``, one expression and its
    value 0..9 per line) as a :class:`TokenSplit` padded to ``length`` (default: its longest).

    Parentheses are dropped (see :func:`tokenize`); LRA truncates inputs longer than its model length,
    here a longer sequence is an error. ``check_labels`` also evaluates every expression (about 0.2 ms
    each) and requires the value to equal the Target. Malformed lines raise ValueError naming file and line.
    """
    sequences, labels = _read_tsv(Path(path), check_labels)
    return pad(sequences, labels, length, source=path)


def load_listops_tsv(root: str | os.PathLike, task: str = "basic", *, check_labels: bool = False) -> ListOpsData:
    """LRA's ``{task}_train.tsv``, ``{task}_val.tsv``, ``{task}_test.tsv`` from ``root``, padded to the
    longest sequence of the three."""
    read = [_read_tsv(Path(root) / f"{task}_{split}.tsv", check_labels) for split in ("train", "val", "test")]
    length = max((len(s) for sequences, _ in read for s in sequences), default=0)
    return ListOpsData(*(pad(sequences, labels, length, source=root) for sequences, labels in read))


def _read_tsv(path: Path, check_labels: bool) -> tuple[list[list[int]], list[int]]:
    if not path.is_file():
        raise FileNotFoundError(f"ListOps file {path} not found (LRA's basic_{{train,val,test}}.tsv)")
    sequences, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(_lines(f, path), delimiter="\t", quoting=csv.QUOTE_NONE)  # LRA's files quote nothing
        if next(rows, None) != ["Source", "Target"]:
            raise ValueError(f"{path}, line 1: expected the header 'Source<TAB>Target'")
        for row in rows:
            where = f"{path}, line {rows.line_num}"
            if len(row) != 2:
                raise ValueError(f"{where}: expected 2 tab-separated columns (Source, Target), got {len(row)}")
            if row[1].strip() not in DIGITS:
                raise ValueError(f"{where}: Target must be an integer 0..9, got {row[1]!r}")
            try:
                ids = tokenize(row[0])
                if not ids:
                    raise ValueError("empty Source expression")
                if check_labels and evaluate(ids) != int(row[1]):
                    raise ValueError(f"the expression's value is {evaluate(ids)}, not the Target {row[1]}")
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            sequences.append(ids)
            labels.append(int(row[1]))
    return sequences, labels


def _lines(file: TextIO, path: Path) -> Iterator[str]:
    """The lines of a text file for csv; bytes that are not UTF-8, or a line longer than csv reads in a field,
    are a ValueError naming the file and line (open and csv would raise errors that name neither)."""
    number = 0
    try:
        for number, line in enumerate(file, 1):
            if len(line) > csv.field_size_limit():
                raise ValueError(
                    f"{path}, line {number}: {len(line)} characters, more than a field may hold "
                    f"(csv.field_size_limit() = {csv.field_size_limit()})"
                )
            yield line
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}, after line {number}: not UTF-8 text: {e.reason}") from None
