"""ListOps: the evaluator on hand-written expressions, the sampler against LRA's procedure, cache, TSV."""

import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from primaldual.data import listops as L

SHORT = dict(min_length=10, max_length=60, max_depth=5, max_args=5)


# ----------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize(
    "expression, value",
    [
        ("7", 7),
        ("[MAX 3 1 4 ]", 4),
        ("[MIN 3 1 4 ]", 1),
        ("[MED 3 1 4 ]", 3),
        ("[MED 1 2 ]", 1),  # even count: floor of the mean of the two middle values
        ("[MED 3 8 1 6 ]", 4),  # middle values 3 and 6: neither the lower (3) nor the upper (6) median
        ("[MED 9 9 0 0 ]", 4),
        ("[SM 9 8 7 ]", 4),
        ("[SM 0 0 ]", 0),
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MIN 8 [MAX 1 2 ] 9 ]", 2),
        ("[SM [MAX 1 2 ] [MIN 5 [MED 9 8 7 ] ] 3 ]", 0),
        ("[MED [SM 5 5 ] [MAX 6 1 ] [MIN 9 3 ] ]", 3),
        ("[MAX [MAX [MAX [MIN 3 5 ] 1 ] 2 ] 0 ]", 3),
        # LRA's TSV spelling of [MAX 2 [MIN 4 7 ] ]
        ("( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )", 4),
    ],
)
def test_evaluate_hand_written(expression, value):
    assert L.evaluate(expression) == value
    assert L.evaluate(expression.split()) == value
    ids = L.tokenize(expression)
    assert L.evaluate(ids) == value
    assert L.evaluate(torch.tensor(ids + [L.PAD_ID] * 3)) == value  # trailing padding


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=12))
def test_evaluate_each_operator_against_numpy(args):
    body = " ".join(map(str, args))
    assert L.evaluate(f"[MAX {body} ]") == max(args)
    assert L.evaluate(f"[MIN {body} ]") == min(args)
    assert L.evaluate(f"[MED {body} ]") == int(np.median(args))  # LRA's definition
    assert L.evaluate(f"[SM {body} ]") == sum(args) % 10


@pytest.mark.parametrize(
    "expression, match",
    [
        ("[MAX 1 2", "not closed"),
        ("[MAX 1 2 ] ]", "follows a complete"),
        ("] 1", "unmatched"),
        ("[MAX ]", "without arguments"),
        ("1 2", "follows a complete"),
        ("[FOO 1 2 ]", "unknown ListOps token"),
        ("[MAX 12 ]", "unknown ListOps token"),
        ("", "empty"),
    ],
)
def test_evaluate_malformed(expression, match):
    with pytest.raises(ValueError, match=match):
        L.evaluate(expression)


def test_evaluate_rejects_padding_inside_and_bad_ids():
    ids = L.tokenize("[MAX 1 2 ]")
    with pytest.raises(ValueError, match="invalid token id 0"):
        L.evaluate(ids[:2] + [L.PAD_ID] + ids[2:])
    with pytest.raises(ValueError, match="invalid token id 99"):
        L.evaluate([L.TOKEN_IDS["[MAX"], 99, L.TOKEN_IDS["]"]])


def test_vocabulary_and_round_trip():
    assert L.VOCAB[L.PAD_ID] == "<pad>" and L.PAD_ID == 0
    assert len(set(L.VOCAB)) == len(L.VOCAB) == 16
    assert {"[MAX", "[MIN", "[MED", "[SM", "]", *map(str, range(10))} == set(L.VOCAB[1:])
    expression = "[SM [MAX 1 2 ] [MIN 5 [MED 9 8 7 ] ] 3 ]"
    assert L.decode(L.tokenize(expression)) == expression
    assert L.decode(L.tokenize("( ( [SM 1 ) 2 ) ] )")) == "[SM 1 2 ]"


# ----------------------------------------------------------------------------- sampler


def _structure(ids):
    """(depth in levels, root = 1 and digits counted; largest argument count) of one expression."""
    depth, widest, stack = 1, 0, []
    for t in ids:
        if L.TOKEN_IDS["[MAX"] <= t <= L.TOKEN_IDS["[SM"]:
            if stack:
                stack[-1] += 1
            stack.append(0)
            depth = max(depth, len(stack) + 1)
        elif t == L.TOKEN_IDS["]"]:
            widest = max(widest, stack.pop())
        elif stack:
            stack[-1] += 1
    return depth, widest


def test_generate_shapes_bounds_labels():
    split = L.generate_listops(400, seed=3, **SHORT)
    x, mask, y = split.x, split.mask, split.y
    assert x.shape == mask.shape == (400, SHORT["max_length"]) and x.dtype == torch.int64 and y.shape == (400,)
    assert torch.equal(mask, x == L.PAD_ID)
    lengths = split.lengths
    assert lengths.min() >= SHORT["min_length"] and lengths.max() <= SHORT["max_length"]
    assert lengths.max() - lengths.min() > 30  # the whole range is used, not one length
    assert torch.all(~mask[torch.arange(400), lengths - 1]) and torch.all(mask.long().diff(dim=1) >= 0)  # right-padded
    assert len({tuple(row.tolist()) for row in x}) == 400  # distinct
    for row, label in zip(x, y.tolist()):
        assert L.evaluate(row) == label  # the vectorised labels against the reference evaluator
        depth, widest = _structure(row[row != 0].tolist())
        assert depth <= SHORT["max_depth"] and widest <= SHORT["max_args"]
    counts = torch.bincount(y, minlength=10)
    assert (counts > 0).sum() >= 9 and counts.max() < 0.4 * len(y)
    used = {t for t in x.unique().tolist()}
    assert set(L.TOKEN_IDS[o] for o in L.OPERATORS) <= used


def test_generate_lra_defaults_honour_lengths():
    split = L.generate_listops(12, seed=0)
    assert split.x.shape == (12, 2000)
    assert split.lengths.min() >= 500 and split.lengths.max() <= 2000
    assert all(L.evaluate(row) == label for row, label in zip(split.x, split.y.tolist()))


def test_generate_bounds_are_inclusive():
    split = L.generate_listops(50, seed=1, min_length=7, max_length=7, max_depth=3, max_args=4)
    assert torch.all(split.lengths == 7) and split.x.shape == (50, 7)


def test_generate_deterministic_and_prefix_stable():
    a = L.generate_listops(60, seed=11, **SHORT)
    b = L.generate_listops(60, seed=11, **SHORT)
    c = L.generate_listops(60, seed=12, **SHORT)
    head = L.generate_listops(25, seed=11, **SHORT)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    assert torch.equal(head.x, a.x[:25]) and torch.equal(head.y, a.y[:25])


def _lra_tree(rng, depth, max_depth, max_args):
    """LRA's recursive procedure, written out plainly: (tokens, value)."""
    if depth >= max_depth or rng.random() > 0.25:
        d = rng.randrange(10)
        return [str(d)], d
    n = rng.randint(2, max_args)
    op = rng.choice(L.OPERATORS)
    children = [_lra_tree(rng, depth + 1, max_depth, max_args) for _ in range(n)]
    values = sorted(v for _, v in children)
    value = {"[MAX": values[-1], "[MIN": values[0], "[MED": int(np.median(values)), "[SM": sum(values) % 10}[op]
    return [op, *(t for tokens, _ in children for t in tokens), "]"], value


def test_sampler_distribution_matches_lra_procedure():
    """The vectorised sampler (root drawn as an operator, early abandon) has LRA's distribution."""
    params = dict(min_length=8, max_length=40, max_depth=4, max_args=5)
    ours = L.generate_listops(3000, seed=5, **params)
    rng, theirs, seen = random.Random(0), [], set()
    while len(theirs) < 3000:
        tokens, value = _lra_tree(rng, 1, params["max_depth"], params["max_args"])
        if params["min_length"] <= len(tokens) <= params["max_length"] and tuple(tokens) not in seen:
            seen.add(tuple(tokens))
            theirs.append((len(tokens), value, tokens[0]))
    lengths = np.array([t[0] for t in theirs])
    ours_lengths = ours.lengths.numpy()
    stderr = np.sqrt(lengths.var() / len(lengths) + ours_lengths.var() / len(ours_lengths))
    assert abs(ours_lengths.mean() - lengths.mean()) < 4 * stderr
    label_tv = (
        0.5
        * np.abs(
            np.bincount(ours.y.numpy(), minlength=10) / 3000 - np.bincount([t[1] for t in theirs], minlength=10) / 3000
        ).sum()
    )
    assert label_tv < 0.06
    for op in L.OPERATORS:  # root operator frequencies
        assert (
            abs((ours.x[:, 0] == L.TOKEN_IDS[op]).float().mean().item() - np.mean([t[2] == op for t in theirs])) < 0.05
        )


def test_generate_every_expression_of_a_small_space():
    # depth 2, 2 arguments, length 4: [OP d d ] -> 4 * 100 expressions, all distinct
    split = L.generate_listops(400, seed=0, min_length=4, max_length=4, max_depth=2, max_args=2)
    assert len({tuple(r.tolist()) for r in split.x}) == 400
    with pytest.raises(RuntimeError, match="max_attempts"):
        L.generate_listops(401, seed=0, min_length=4, max_length=4, max_depth=2, max_args=2, max_attempts=40_000)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(min_length=50, max_length=40), "no ListOps expression"),
        (dict(min_length=6, max_length=40, max_depth=2, max_args=3), "no ListOps expression"),  # longest is 5
        (dict(min_length=2, max_length=3), "no ListOps expression"),
        (dict(max_args=1), "max_args"),
        (dict(max_depth=0), "max_depth"),
        (dict(max_length=2.5), "max_length"),
    ],
)
def test_generate_impossible_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        L.generate_listops(5, **params)


def test_generate_digits_only_when_min_length_one():
    split = L.generate_listops(10, seed=0, min_length=1, max_length=1, max_depth=3, max_args=3)
    assert torch.equal(split.x[:, 0] - L.TOKEN_IDS["0"], split.y) and len(split.y.unique()) == 10


# ----------------------------------------------------------------------------- cache

SMALL = dict(num_train=120, num_val=20, num_test=30, seed=2, min_length=10, max_length=50, max_depth=5, max_args=4)


def _files(root):
    return sorted(p.name for p in root.iterdir())


def test_load_listops_splits_and_cache_round_trip(tmp_path, monkeypatch):
    data = L.load_listops(tmp_path, **SMALL)
    assert [len(data.train), len(data.val), len(data.test)] == [120, 20, 30]
    assert data.train.x.shape[1] == data.test.x.shape[1] == 50 and data.num_classes == 10
    everything = L.generate_listops(170, seed=2, min_length=10, max_length=50, max_depth=5, max_args=4)
    assert torch.equal(torch.cat([data.train.x, data.val.x, data.test.x]), everything.x)
    assert torch.equal(torch.cat([data.train.y, data.val.y, data.test.y]), everything.y)
    names = _files(tmp_path)
    assert len(names) == 2 and {n.rsplit(".", 1)[1] for n in names} == {"npz", "json"}

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the cache is valid")

    monkeypatch.setattr(L, "_generate", fail)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = L.load_listops(tmp_path, **SMALL)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(again, split).x, getattr(data, split).x)
        assert torch.equal(getattr(again, split).y, getattr(data, split).y)
    with pytest.raises(AssertionError, match="regenerated"):  # other parameters never reuse the cache
        L.load_listops(tmp_path, **{**SMALL, "seed": 3})


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-manifest", "manifest-params", "manifest-garbage"])
def test_load_listops_rebuilds_damaged_cache(tmp_path, damage):
    data = L.load_listops(tmp_path, **SMALL)
    npz = next(tmp_path.glob("*.npz"))
    manifest = npz.with_suffix(".json")
    raw = npz.read_bytes()
    if damage == "truncate":
        npz.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        npz.write_bytes(raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:])
    elif damage == "no-manifest":
        manifest.unlink()
    elif damage == "manifest-params":
        manifest.write_text(manifest.read_text().replace('"seed": 2', '"seed": 7'))
    else:
        manifest.write_text("{ not json")
    with pytest.warns(RuntimeWarning, match="unusable"):
        rebuilt = L.load_listops(tmp_path, **SMALL)
    assert torch.equal(rebuilt.train.x, data.train.x) and torch.equal(rebuilt.test.y, data.test.y)
    assert npz.read_bytes() == raw and len(_files(tmp_path)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L.load_listops(tmp_path, **SMALL)  # healthy again


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        L.load_listops(tmp_path, **SMALL)
    assert _files(tmp_path) == []  # neither a partial file nor a temporary one
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(L.load_listops(tmp_path, **SMALL).train) == 120


def test_load_listops_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="num_val"):
        L.load_listops(tmp_path, **{**SMALL, "num_val": -1})


# ----------------------------------------------------------------------------- LRA's TSV files


def _lra_spelling(expression):
    """LRA's to_string of an expression: every application (op a), (.. b), (.. ]) wrapped in ( )."""
    tokens = expression.split()[::-1]

    def node():
        t = tokens.pop()
        if not t.startswith("["):
            return t
        s = t
        while tokens[-1] != "]":
            s = f"( {s} {node()} )"
        tokens.pop()
        return f"( {s} ] )"

    return node()


EXPRESSIONS = ["[MAX 2 9 [MIN 4 7 ] 0 ]", "[SM [MAX 1 2 ] [MIN 5 [MED 9 8 7 ] ] 3 ]", "[MED 3 8 1 6 ]", "[MIN 4 1 ]"]


def _write_tsv(path, rows, header="Source\tTarget"):
    path.write_text("\n".join([header, *rows]) + "\n")


def test_lra_spelling_helper():
    assert _lra_spelling("[MAX 2 [MIN 4 7 ] ]") == "( ( ( [MAX 2 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )"


def test_read_tsv(tmp_path):
    path = tmp_path / "basic_test.tsv"
    _write_tsv(path, [f"{_lra_spelling(e)}\t{L.evaluate(e)}" for e in EXPRESSIONS])
    split = L.read_listops_tsv(path, check_labels=True)
    assert split.y.tolist() == [9, 0, 4, 1]
    assert split.x.shape == (4, max(len(L.tokenize(e)) for e in EXPRESSIONS))
    assert [L.decode(row) for row in split.x] == EXPRESSIONS
    assert torch.equal(split.mask, split.x == 0)
    assert L.read_listops_tsv(path, length=30).x.shape == (4, 30)
    with pytest.raises(ValueError, match="more than the padded length 5"):
        L.read_listops_tsv(path, length=5)


def test_load_listops_tsv_common_width(tmp_path):
    for split, expressions in (("train", EXPRESSIONS), ("val", EXPRESSIONS[2:]), ("test", EXPRESSIONS[3:])):
        _write_tsv(tmp_path / f"basic_{split}.tsv", [f"{_lra_spelling(e)}\t{L.evaluate(e)}" for e in expressions])
    data = L.load_listops_tsv(tmp_path)
    assert data.train.x.shape[1] == data.val.x.shape[1] == data.test.x.shape[1] == 15  # the longest, in train
    assert data.test.y.tolist() == [1] and len(data.val) == 2
    with pytest.raises(FileNotFoundError, match="other_train.tsv"):
        L.load_listops_tsv(tmp_path, task="other")


@pytest.mark.parametrize(
    "rows, header, match",
    [
        (["[MAX 1 2 ]\t2"], "Source,Target", "line 1: expected the header"),
        (["[MAX 1 2 ]\t2", "[MIN 1 2 ]\t1\textra"], None, "line 3: expected 2 tab-separated columns"),
        (["[MAX 1 2 ]"], None, "line 2: expected 2"),
        (["[MAX 1 2 ]\tseven"], None, "line 2: Target must be an integer 0..9"),
        (["[MAX 1 2 ]\t12"], None, "line 2: Target must be an integer 0..9"),
        (["[MAX 1 2 ]\t2", "[MAX 1 X ]\t2"], None, "line 3: unknown ListOps token 'X'"),
        (["( )\t2"], None, "line 2: empty Source"),
        (["[MAX 1 2 ]\t3"], None, "line 2: the expression's value is 2"),
        (["[MAX 1 2\t2"], None, "line 2: 1 operator.s. not closed"),
    ],
)
def test_read_tsv_malformed(tmp_path, rows, header, match):
    path = tmp_path / "basic_train.tsv"
    _write_tsv(path, rows, header or "Source\tTarget")
    with pytest.raises(ValueError, match=match) as info:
        L.read_listops_tsv(path, check_labels=True)
    assert str(path) in str(info.value)


def test_read_tsv_empty_file(tmp_path):
    path = tmp_path / "basic_val.tsv"
    path.write_text("")
    with pytest.raises(ValueError, match="basic_val.tsv, line 1: expected the header"):
        L.read_listops_tsv(path)
