"""Packing invariants: exact BFD, boundaries, positions, labels, token conservation, policies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcdata.config import PackConfig
from lcdata.pack import TokenStore, best_fit_decreasing, gather_rows, plan_pack
from lcdata.schema import IGNORE_INDEX
from lcdata.shards import check_row


def naive_bfd(lengths, cap):
    rooms = []
    for i in np.argsort(-np.asarray(lengths), kind="stable"):
        s = lengths[i]
        fits = [r for r, room in enumerate(rooms) if room >= s]
        if fits:
            best = min(fits, key=lambda r: rooms[r])
        else:
            rooms.append(cap)
            best = len(rooms) - 1
        rooms[best] -= s
    return sorted(rooms)


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(1, 300), data=st.data())
def test_bfd_is_exact_best_fit_decreasing(cap, data):
    lengths = data.draw(st.lists(st.integers(1, cap), min_size=0, max_size=120))
    a = best_fit_decreasing(np.asarray(lengths, dtype=np.int64), cap)
    if not lengths:
        assert len(a) == 0
        return
    n_rows = a.max() + 1
    load = np.bincount(a, weights=lengths, minlength=n_rows)
    assert load.max() <= cap and (load > 0).all()
    assert sorted((cap - load).astype(int).tolist()) == naive_bfd(lengths, cap)


def synthetic(lengths, short_max=100, seed=0):
    """Samples with a recognisable token pattern: token = sample index, labels on the tail half."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = np.full(n, i % 50000, np.int32) + rng.integers(0, 2, n, dtype=np.int32) * 0
        labels = np.full(n, IGNORE_INDEX, np.int32)
        labels[n // 2 :] = ids[n // 2 :]
        out.append((f"s{i}", "short" if n <= short_max else "long", ids, labels))
    return out


def all_rows(store, plan):
    batch = gather_rows(store, plan, 0, plan.n_rows)
    return batch.to_pylist()


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.one_of(st.integers(1, 64), st.integers(200, 512)), min_size=1, max_size=80),
    seq_len=st.sampled_from([512, 600, 1024]),
    order=st.sampled_from(["shuffle", "curriculum"]),
)
def test_packing_invariants_over_random_length_mixes(lengths, seq_len, order):
    samples = synthetic(lengths)
    store = TokenStore.from_arrays(samples)
    plan = plan_pack(store, PackConfig(seq_len=seq_len, order=order), seed=1)
    rows = all_rows(store, plan)
    seen = {}
    for r in rows:
        check_row(r)
        assert len(r["input_ids"]) <= seq_len
        start = 0
        for sid, n in zip(r["sample_ids"], r["seq_lens"]):
            i = int(sid[1:])
            ids = np.asarray(r["input_ids"][start : start + n])
            labels = np.asarray(r["labels"][start : start + n])
            # the sample arrives whole and unchanged: no label predicts another sample's token
            assert np.array_equal(ids, samples[i][2])
            exp = samples[i][3].copy()
            exp[0] = IGNORE_INDEX
            assert np.array_equal(labels, exp)
            seen[sid] = seen.get(sid, 0) + 1
            start += n
    assert seen == {s[0]: 1 for s in samples}  # every sample exactly once
    assert sum(len(r["input_ids"]) for r in rows) == sum(lengths)  # tokens conserved
    if order == "curriculum":
        longest = [max(r["seq_lens"]) for r in rows]
        assert longest == sorted(longest)


def test_real_tokenized_samples_pack_exactly(tok):
    chats = [
        [{"role": "user", "content": "word " * n}, {"role": "assistant", "content": f"answer {n}"}]
        for n in [5, 50, 500, 1500, 30, 900, 2, 700, 1200, 60]
    ]
    enc = tok.encode_chats(chats)
    samples = [(f"c{i}", "short", ids, labels) for i, (ids, labels) in enumerate(enc)]
    store = TokenStore.from_arrays(samples)
    plan = plan_pack(store, PackConfig(seq_len=2048), seed=0)
    rows = all_rows(store, plan)
    for r in rows:
        check_row(r)
        start = 0
        for sid, n in zip(r["sample_ids"], r["seq_lens"]):
            text = tok.decode(r["input_ids"][start : start + n])
            assert text.startswith("<|im_start|>system") and text.endswith("<|im_end|>\n")
            i = int(sid[1:])
            assert tok.decode([t for t, l in zip(r["input_ids"][start : start + n], r["labels"][start : start + n]) if l != IGNORE_INDEX]) == f"answer {[5, 50, 500, 1500, 30, 900, 2, 700, 1200, 60][i]}<|im_end|>"
            start += n
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(e[0]) for e in enc)
    assert plan.fill > 0.7


def test_oversize_is_dropped_with_reason():
    store = TokenStore.from_arrays(synthetic([10, 3000, 20]))
    plan = plan_pack(store, PackConfig(seq_len=1024), seed=0)
    assert plan.stats.dropped["too_long"] == 1 and plan.stats.out == 2
    assert plan.dropped[0][0] == "s1" and "3000 tokens > pack.seq_len=1024" in plan.dropped[0][2]
    assert plan.n_tokens == 30


def test_oversize_split_policy():
    samples = synthetic([2500, 10])
    store = TokenStore.from_arrays(samples)
    plan = plan_pack(store, PackConfig(seq_len=1024, oversize="split"), seed=0)
    rows = all_rows(store, plan)
    for r in rows:
        check_row(r)
    ids = sorted(s for r in rows for s in r["sample_ids"])
    assert ids == ["s0#p0", "s0#p1", "s0#p2", "s1"]
    assert sum(len(r["input_ids"]) for r in rows) == 2510


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_short_token_ratio(ratio):
    lengths = [50] * 400 + [500] * 40  # 20,000 short tokens, 20,000 long
    store = TokenStore.from_arrays(synthetic(lengths, short_max=100))
    plan = plan_pack(store, PackConfig(seq_len=1024, short_token_ratio=ratio), seed=0)
    rows = all_rows(store, plan)
    short = sum(n for r in rows for n in r["seq_lens"] if n <= 100)
    total = sum(len(r["input_ids"]) for r in rows)
    assert abs(short / total - ratio) < 0.03
    assert plan.stats.in_ == plan.stats.out + plan.stats.dropped["mix_ratio"]


def test_pack_is_deterministic():
    store = TokenStore.from_arrays(synthetic(list(range(1, 300))))
    a = gather_rows(store, plan_pack(store, PackConfig(seq_len=512), seed=3), 0, 10)
    b = gather_rows(store, plan_pack(store, PackConfig(seq_len=512), seed=3), 0, 10)
    assert a.equals(b)


def test_native_and_numpy_gather_give_identical_rows(monkeypatch):
    """The optional C copy loop and the numpy path produce the same bytes."""
    from lcdata import native

    if native.load() is None:
        pytest.skip("no C compiler here: only the numpy path exists")
    lengths = list(range(1, 400, 7)) * 3
    store = TokenStore()
    for k in range(3):  # several chunks, as from several tokenized files
        store.add_batch(TokenStore.from_arrays(synthetic(lengths[k::3], seed=k)).batches[0])
    plan = plan_pack(store, PackConfig(seq_len=512), seed=0)
    fast = gather_rows(store, plan, 0, plan.n_rows)
    monkeypatch.setattr(native, "_LIB", None)
    slow = gather_rows(store, plan, 0, plan.n_rows)
    assert fast.equals(slow)
