"""Best-fit-decreasing packing into ``seq_len`` rows, long:short mixing, curriculum order.

The packer never crosses or cuts a sample silently: a sample longer than ``seq_len`` is
dropped (``too_long``) or, by explicit policy, split into pieces that each start a new
sample. Packing works on lengths only; the tokens are gathered with one vectorised copy
per output shard, from memory-mapped tokenized Arrow files.

BFD is exact (each item, longest first, goes to the open row with the least room that fits
it) but runs over *groups*: items of equal length are placed together, and rows with equal
room are taken together, so the Python loop runs once per (length, room) step, not per item.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from lcdata.config import PackConfig
from lcdata.schema import IGNORE_INDEX, PACKED_SCHEMA, SPLIT_SHORT
from lcdata.stage import StageStats

log = logging.getLogger("lcdata")


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Row index of every item (rows numbered in opening order). Every length must be in
    ``[1, capacity]``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    assign = np.empty(n, dtype=np.int64)
    if n == 0:
        return assign
    if lengths.min() < 1 or lengths.max() > capacity:
        raise ValueError(f"lengths must be in [1, {capacity}], got [{lengths.min()}, {lengths.max()}]")
    order = np.argsort(-lengths, kind="stable")
    sizes, starts, counts = np.unique(lengths[order], return_index=True, return_counts=True)
    # np.unique sorts ascending; walk sizes descending
    rooms: list[list[int]] = [[] for _ in range(capacity + 1)]  # rows by remaining room (stacks)
    n_room = np.zeros(capacity + 1, dtype=np.int64)
    n_rows = 0
    for s, st, c in zip(sizes[::-1].tolist(), starts[::-1].tolist(), counts[::-1].tolist(), strict=True):
        items = order[st : st + c]
        i = 0
        while i < c:
            left = c - i
            nz = np.flatnonzero(n_room[s:])
            if nz.size:
                r = s + int(nz[0])
                m = r // s  # the row keeps being the best fit until its room drops below s
                q = min(int(n_room[r]), -(-left // m))
                rows = rooms[r][-q:]
                del rooms[r][-q:]
                n_room[r] -= q
            else:
                r = capacity
                m = r // s
                q = -(-left // m)
                rows = list(range(n_rows, n_rows + q))
                n_rows += q
            take = min(left, q * m)
            row_of = np.repeat(np.asarray(rows, dtype=np.int64), m)[:take]
            assign[items[i : i + take]] = row_of
            i += take
            # room after: full rows got m items, the last one possibly fewer
            full, last = divmod(take, m)
            if full:
                rr = r - m * s
                rooms[rr].extend(rows[:full])
                n_room[rr] += full
            if last:
                rr = r - last * s
                rooms[rr].append(rows[full])
                n_room[rr] += 1
    # keep the room index honest only where it is used; rows with room 0 are simply full
    return assign


@dataclass
class TokenStore:
    """Tokenized samples as flat segments (one per Arrow record batch) plus a per-sample index."""

    seg_ids: list[np.ndarray] = field(default_factory=list)
    seg_labels: list[np.ndarray] = field(default_factory=list)
    seg_offsets: list[np.ndarray] = field(default_factory=list)
    item_seg: list[np.ndarray] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    short: list[np.ndarray] = field(default_factory=list)
    _keep: list[Any] = field(default_factory=list)  # keeps memory maps alive

    def add_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        if isinstance(batch, pa.Table):
            for b in batch.to_batches():
                self.add_batch(b)
            return
        ids = batch.column("input_ids")
        labels = batch.column("labels")
        seg = len(self.seg_ids)
        self.seg_ids.append(ids.values.to_numpy(zero_copy_only=False))
        self.seg_labels.append(labels.values.to_numpy(zero_copy_only=False))
        off = ids.offsets.to_numpy()
        if not np.array_equal(off, labels.offsets.to_numpy()):
            raise ValueError("input_ids and labels differ in length in a tokenized batch")
        self.seg_offsets.append(off)
        n = len(batch)
        self.item_seg.append(np.full(n, seg, dtype=np.int32))
        self.sample_ids.extend(batch.column("sample_id").to_pylist())
        self.short.append(np.asarray([s == SPLIT_SHORT for s in batch.column("split").to_pylist()], dtype=bool))
        self._keep.append(batch)

    @classmethod
    def from_arrays(cls, samples: Sequence[tuple[str, str, np.ndarray, np.ndarray]]) -> TokenStore:
        """(sample_id, split, input_ids, labels) tuples, for tests and small builds."""
        store = cls()
        if samples:
            store.add_batch(pa.RecordBatch.from_pydict({
                "sample_id": [s[0] for s in samples], "split": [s[1] for s in samples],
                "input_ids": pa.array([np.asarray(s[2], np.int32) for s in samples], pa.list_(pa.int32())),
                "labels": pa.array([np.asarray(s[3], np.int32) for s in samples], pa.list_(pa.int32())),
            }))
        return store

    def finish(self) -> None:
        def cat(xs: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(xs) if xs else np.zeros(0, dtype)

        self.seg = cat(self.item_seg, np.int32)
        self.is_short = cat(self.short, bool)
        self.starts = cat([o[:-1] for o in self.seg_offsets], np.int64).astype(np.int64)
        self.lengths = cat([np.diff(o) for o in self.seg_offsets], np.int64).astype(np.int64)

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclass
class Piece:
    """One packed unit: a whole sample, or a piece of an oversize sample under ``split``."""

    item: np.ndarray  # sample index in the store
    start: np.ndarray  # token offset inside the sample
    length: np.ndarray


@dataclass
class PackPlan:
    pieces: Piece
    piece_ids: list[str]
    row_of_piece: np.ndarray  # row index (in final order) of each piece, pieces sorted by (row, slot)
    row_lengths: np.ndarray
    seq_len: int
    stats: StageStats
    dropped: list[tuple[str, str, str]]  # (sample_id, reason, message)

    @property
    def n_rows(self) -> int:
        return len(self.row_lengths)

    @property
    def n_tokens(self) -> int:
        return int(self.row_lengths.sum())

    @property
    def fill(self) -> float:
        return self.n_tokens / max(1, self.n_rows * self.seq_len)


def _mix(store: TokenStore, keep: np.ndarray, ratio: float, rng: np.random.Generator,
         dropped: list[tuple[str, str, str]]) -> np.ndarray:
    lengths = store.lengths
    short_tok = int(lengths[keep & store.is_short].sum())
    long_tok = int(lengths[keep & ~store.is_short].sum())
    if short_tok == 0 or long_tok == 0:
        log.warning("pack.short_token_ratio=%s but the build has %s short and %s long tokens: no mixing",
                    ratio, short_tok, long_tok)
        return keep
    if short_tok / (short_tok + long_tok) > ratio:
        side, budget = store.is_short, ratio / (1 - ratio) * long_tok
    else:
        side, budget = ~store.is_short, (1 - ratio) / ratio * short_tok
    cand = np.flatnonzero(keep & side)
    cand = cand[rng.permutation(len(cand))]
    cum = np.cumsum(lengths[cand])
    n_keep = int(np.searchsorted(cum, budget, side="right"))
    out = keep.copy()
    for i in cand[n_keep:]:
        out[i] = False
        dropped.append((store.sample_ids[i], "mix_ratio",
                        f"subsampled to reach pack.short_token_ratio={ratio}"))
    return out


def plan_pack(store: TokenStore, cfg: PackConfig, seed: int) -> PackPlan:
    store.finish()
    n = len(store)
    stats = StageStats(in_=n)
    dropped: list[tuple[str, str, str]] = []
    rng = np.random.default_rng(seed)
    lengths = store.lengths
    keep = lengths > 0
    over = np.flatnonzero(lengths > cfg.seq_len)
    if cfg.oversize == "drop":
        for i in over:
            keep[i] = False
            dropped.append((store.sample_ids[i], "too_long",
                            f"{lengths[i]} tokens > pack.seq_len={cfg.seq_len}; raise seq_len, lower the "
                            "assemble buckets, or set pack.oversize=split"))
    if cfg.short_token_ratio is not None:
        keep = _mix(store, keep, cfg.short_token_ratio, rng, dropped)
    items = np.flatnonzero(keep)
    # pieces: a sample, or seq_len-sized pieces of an oversize sample (policy split)
    p_item, p_start, p_len = [items], [np.zeros(len(items), np.int64)], [lengths[items]]
    if cfg.oversize == "split" and len(over):
        big = np.isin(items, over)
        p_item, p_start, p_len = [items[~big]], [p_start[0][~big]], [p_len[0][~big]]
        for i in items[big]:
            starts = np.arange(0, lengths[i], cfg.seq_len)
            p_item.append(np.full(len(starts), i))
            p_start.append(starts)
            p_len.append(np.minimum(cfg.seq_len, lengths[i] - starts))
    pieces = Piece(np.concatenate(p_item), np.concatenate(p_start), np.concatenate(p_len))
    row = best_fit_decreasing(pieces.length, cfg.seq_len)
    n_rows = int(row.max()) + 1 if len(row) else 0
    row_len = np.bincount(row, weights=pieces.length, minlength=n_rows).astype(np.int64)
    # row order: seeded shuffle, or curriculum by the longest sample in the row
    if cfg.order == "curriculum":
        longest = np.zeros(n_rows, np.int64)
        np.maximum.at(longest, row, pieces.length)
        rank_of_row = np.empty(n_rows, np.int64)
        rank_of_row[np.lexsort((np.arange(n_rows), longest))] = np.arange(n_rows)
    else:
        rank_of_row = rng.permutation(n_rows)
    final_row = rank_of_row[row]
    # inside a row: longest first (BFD placement order), ties by sample index
    order = np.lexsort((pieces.start, pieces.item, -pieces.length, final_row))
    pieces = Piece(pieces.item[order], pieces.start[order], pieces.length[order])
    final_row = final_row[order]
    row_lengths = np.empty(n_rows, np.int64)
    row_lengths[rank_of_row] = row_len
    ids = [store.sample_ids[i] if not (cfg.oversize == "split" and store.lengths[i] > cfg.seq_len)
           else f"{store.sample_ids[i]}#p{s // cfg.seq_len}" for i, s in zip(pieces.item.tolist(), pieces.start.tolist(), strict=True)]
    stats.out = len(items)
    for _, reason, _ in dropped:
        stats.dropped[reason] += 1
    return PackPlan(pieces, ids, final_row, row_lengths, cfg.seq_len, stats, dropped)


def gather_rows(store: TokenStore, plan: PackPlan, row_lo: int, row_hi: int) -> pa.RecordBatch:
    """Packed rows ``[row_lo, row_hi)`` as one record batch of ``PACKED_SCHEMA``."""
    sel = np.flatnonzero((plan.row_of_piece >= row_lo) & (plan.row_of_piece < row_hi))
    item = plan.pieces.item[sel]
    lens = plan.pieces.length[sel]
    src_start = store.starts[item] + plan.pieces.start[sel]
    total = int(lens.sum())
    piece_off = np.zeros(len(sel) + 1, np.int64)
    np.cumsum(lens, out=piece_off[1:])
    # flat source index of every output token, then one gather per source segment
    within = np.arange(total, dtype=np.int64) - np.repeat(piece_off[:-1], lens)
    src = np.repeat(src_start, lens) + within
    seg_of_tok = np.repeat(store.seg[item], lens)
    ids = np.empty(total, np.int32)
    labels = np.empty(total, np.int32)
    if len(store.seg_ids) == 1:
        ids[:] = store.seg_ids[0][src]
        labels[:] = store.seg_labels[0][src]
    else:
        by_seg = np.argsort(seg_of_tok, kind="stable")
        bounds = np.searchsorted(seg_of_tok[by_seg], np.arange(len(store.seg_ids) + 1))
        for k in range(len(store.seg_ids)):
            t = by_seg[bounds[k] : bounds[k + 1]]
            if len(t):
                ids[t] = store.seg_ids[k][src[t]]
                labels[t] = store.seg_labels[k][src[t]]
    # a sample's first token never carries a label: its logits would come from the previous sample
    labels[piece_off[:-1][lens > 0]] = IGNORE_INDEX
    position_ids = within.astype(np.int32)
    rows = plan.row_of_piece[sel]
    n = row_hi - row_lo
    row_len = np.bincount(rows - row_lo, weights=lens, minlength=n).astype(np.int64)
    row_off = np.zeros(n + 1, np.int64)
    np.cumsum(row_len, out=row_off[1:])
    n_per_row = np.bincount(rows - row_lo, minlength=n)
    cnt_off = np.zeros(n + 1, np.int64)
    np.cumsum(n_per_row, out=cnt_off[1:])
    if total >= 2**31:
        raise ValueError("a shard must hold < 2**31 tokens: lower shard.max_tokens")
    tok_off = pa.array(row_off.astype(np.int32))
    cnt_off_a = pa.array(cnt_off.astype(np.int32))

    def lst(values: np.ndarray | pa.Array, offsets: pa.Array) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, values)

    ids_list = [plan.piece_ids[i] for i in sel.tolist()]
    return pa.RecordBatch.from_arrays(
        [
            lst(pa.array(ids, pa.int32()), tok_off),
            lst(pa.array(labels, pa.int32()), tok_off),
            lst(pa.array(position_ids, pa.int32()), tok_off),
            lst(pa.array(lens.astype(np.int32), pa.int32()), cnt_off_a),
            lst(pa.array(ids_list, pa.string()), cnt_off_a),
        ],
        schema=PACKED_SCHEMA,
    )
