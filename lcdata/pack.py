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

import ctypes
import logging
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lcdata import native
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
    """Tokenized samples as Arrow record batches (memory-mapped when read from files),
    plus per-sample lengths and split flags as numpy arrays."""

    batches: list[pa.RecordBatch] = field(default_factory=list)
    maps: list[Any] = field(default_factory=list)  # mmaps behind the batches (see release_pages)

    def release_pages(self) -> None:
        """Drop the pages of the memory-mapped inputs read so far from this process's memory."""
        for mm in self.maps:
            mm.madvise(mmap.MADV_DONTNEED)

    def add_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        if isinstance(batch, pa.Table):
            self.batches.extend(batch.to_batches())
        else:
            self.batches.append(batch)

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
        if self.batches:
            t = pa.Table.from_batches(self.batches)
        else:
            t = pa.table({"sample_id": pa.array([], pa.string()), "split": pa.array([], pa.string()),
                          "input_ids": pa.array([], pa.list_(pa.int32())), "labels": pa.array([], pa.list_(pa.int32()))})
        self.ids = t.column("input_ids")
        self.labels = t.column("labels")
        self.sample_ids = t.column("sample_id")
        self.lengths = pc.list_value_length(self.ids).to_numpy().astype(np.int64)
        if not np.array_equal(self.lengths, pc.list_value_length(self.labels).to_numpy()):
            raise ValueError("input_ids and labels differ in length in the tokenized samples")
        self.is_short = pc.equal(t.column("split"), SPLIT_SHORT).to_numpy()
        # flat token values of each chunk (zero-copy views) and where each sample starts in them
        self.chunk_ids = [c.values.to_numpy(zero_copy_only=False) for c in self.ids.chunks]
        self.chunk_labels = [c.values.to_numpy(zero_copy_only=False) for c in self.labels.chunks]
        self.item_chunk = np.concatenate(
            [np.full(len(c), k, np.int32) for k, c in enumerate(self.ids.chunks)] or [np.zeros(0, np.int32)])
        self.item_start = np.concatenate(
            [c.offsets.to_numpy()[:-1].astype(np.int64) for c in self.ids.chunks] or [np.zeros(0, np.int64)])
        for ci, cl in zip(self.ids.chunks, self.labels.chunks, strict=True):
            if not np.array_equal(ci.offsets.to_numpy(), cl.offsets.to_numpy()) or ci.offset or cl.offset:
                raise ValueError("tokenized input_ids and labels must share offsets (rewrite the tokenized file)")

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)

    def chunk_pointers(self) -> tuple[Any, Any]:
        """C arrays of the chunks' value pointers (for the native gather), built once."""
        if not hasattr(self, "_ptrs"):
            arr = ctypes.c_void_p * len(self.chunk_ids)
            self._ptrs = (arr(*[a.ctypes.data for a in self.chunk_ids]), arr(*[a.ctypes.data for a in self.chunk_labels]))
        return self._ptrs

    def sample_id(self, i: int) -> str:
        return self.sample_ids[int(i)].as_py()


@dataclass
class Pieces:
    """One packed unit: a whole sample, or a piece of an oversize sample under ``split``."""

    item: np.ndarray  # sample index in the store
    start: np.ndarray  # token offset inside the sample
    length: np.ndarray


@dataclass
class PackPlan:
    pieces: Pieces  # sorted by (row, slot)
    row_of_piece: np.ndarray  # final row index of each piece
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
        dropped.append((store.sample_id(i), "mix_ratio",
                        f"subsampled to reach pack.short_token_ratio={ratio}"))
    return out


def plan_pack(store: TokenStore, cfg: PackConfig, seed: int, exclude: set[str] | None = None) -> PackPlan:
    """``exclude``: sample ids left out by whole-build selection (counted by their own stage)."""
    store.finish()
    n = len(store.lengths)
    lengths = store.lengths
    keep = lengths > 0
    n_excluded = 0
    if exclude:
        out = pc.is_in(store.sample_ids, value_set=pa.array(sorted(exclude), pa.string())).to_numpy(zero_copy_only=False)
        keep &= ~out
        n_excluded = int(out.sum())
    stats = StageStats(in_=n - n_excluded)
    dropped: list[tuple[str, str, str]] = []
    rng = np.random.default_rng(seed)
    over = np.flatnonzero(lengths > cfg.seq_len)
    if cfg.oversize == "drop":
        for i in over:
            keep[i] = False
            dropped.append((store.sample_id(i), "too_long",
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
    pieces = Pieces(np.concatenate(p_item), np.concatenate(p_start), np.concatenate(p_len))
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
    pieces = Pieces(pieces.item[order], pieces.start[order], pieces.length[order])
    final_row = final_row[order]
    row_lengths = np.empty(n_rows, np.int64)
    row_lengths[rank_of_row] = row_len
    stats.out = len(items)
    for _, reason, _ in dropped:
        stats.dropped[reason] += 1
    return PackPlan(pieces, final_row, row_lengths, cfg.seq_len, stats, dropped)


def gather_rows(store: TokenStore, plan: PackPlan, row_lo: int, row_hi: int,
                out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                release_every: int = 0) -> pa.RecordBatch:
    """Packed rows ``[row_lo, row_hi)`` as one record batch of ``PACKED_SCHEMA``; ``out``:
    int32 buffers (ids, labels, positions) of exactly the rows' token count to fill.
    ``release_every``: drop the inputs' mapped pages after every that many pieces."""
    # pieces are sorted by row: the rows' pieces are one contiguous slice
    a, b = np.searchsorted(plan.row_of_piece, [row_lo, row_hi])
    item = plan.pieces.item[a:b]
    start = plan.pieces.start[a:b]
    lens = plan.pieces.length[a:b]
    total = int(lens.sum())
    if total >= 2**31:
        raise ValueError("a shard must hold < 2**31 tokens: lower shard.max_tokens")
    piece_off = np.zeros(len(item) + 1, np.int64)
    np.cumsum(lens, out=piece_off[1:])
    if out is None:
        out = (np.empty(total, np.int32), np.empty(total, np.int32), np.empty(total, np.int32))
    ids, labels, position_ids = out
    src = store.item_start[item] + start
    lib = native.load() if total else None
    if lib is not None:
        # one C pass: two memcpys per piece, positions counted, first labels set to -100
        ids_p, lab_p = store.chunk_pointers()
        seg = np.ascontiguousarray(store.item_chunk[item], np.int32)
        src64 = np.ascontiguousarray(src, np.int64)
        lens64 = np.ascontiguousarray(lens, np.int64)
        # in blocks of pieces: each piece reads from anywhere in the inputs and every page
        # fault maps a large folio around it, so mapped input grows with pieces x folio size
        # until released (at 100M tokens, 256 rows' pieces mapped ~250 MB)
        step = release_every or max(1, len(item))
        for k in range(0, len(item), step):
            o = int(piece_off[k])
            lib.lcdata_gather(len(item[k:k + step]), ids_p, lab_p, seg[k:].ctypes.data, src64[k:].ctypes.data,
                              lens64[k:].ctypes.data, ids[o:].ctypes.data, labels[o:].ctypes.data,
                              position_ids[o:].ctypes.data)
            if release_every:
                store.release_pages()
    elif total:
        # each piece is a contiguous run of its sample's tokens: concatenate views (one memcpy each)
        chunk = store.item_chunk[item].tolist()
        srcl = src.tolist()
        ends = [x + n for x, n in zip(srcl, lens.tolist(), strict=True)]
        np.concatenate([store.chunk_ids[c][x:y] for c, x, y in zip(chunk, srcl, ends, strict=True)], out=ids)
        np.concatenate([store.chunk_labels[c][x:y] for c, x, y in zip(chunk, srcl, ends, strict=True)], out=labels)
        # a sample's first token never carries a label: its logits come from the previous sample
        labels[piece_off[:-1][lens > 0]] = IGNORE_INDEX
        # position ids restart at every piece: ones, minus the previous piece's length at each start, cumsum
        position_ids.fill(1)
        position_ids[0] = 0
        position_ids[piece_off[1:-1]] = 1 - lens[:-1]
        np.cumsum(position_ids, out=position_ids)
    names = store.sample_ids.take(pa.array(item, pa.int64())).combine_chunks()
    split = (start > 0) | (lens != store.lengths[item])
    if split.any():
        sfx = [f"#p{s // plan.seq_len}" if sp else "" for s, sp in zip(start.tolist(), split.tolist(), strict=True)]
        names = pa.array([x + y for x, y in zip(names.to_pylist(), sfx, strict=True)], pa.string())
    rows = plan.row_of_piece[a:b] - row_lo
    n = row_hi - row_lo
    row_off = np.zeros(n + 1, np.int32)
    np.cumsum(np.bincount(rows, weights=lens, minlength=n).astype(np.int64), out=row_off[1:])
    cnt_off = np.zeros(n + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=cnt_off[1:])
    tok_off, cnt_off_a = pa.array(row_off), pa.array(cnt_off)
    return pa.RecordBatch.from_arrays(
        [
            pa.ListArray.from_arrays(tok_off, pa.array(ids)),
            pa.ListArray.from_arrays(tok_off, pa.array(labels)),
            pa.ListArray.from_arrays(tok_off, pa.array(position_ids)),
            pa.ListArray.from_arrays(cnt_off_a, pa.array(lens.astype(np.int32))),
            pa.ListArray.from_arrays(cnt_off_a, names),
        ],
        schema=PACKED_SCHEMA,
    )


def iter_row_batches(store: TokenStore, plan: PackPlan, row_lo: int, row_hi: int,
                     rows_per_batch: int = 256) -> Iterator[pa.RecordBatch]:
    """Rows ``[row_lo, row_hi)`` in record batches of ``rows_per_batch`` rows: small blocks
    keep the working set in cache and let the allocator reuse memory."""
    # one allocation per column for the whole range (large pages fault in fast), filled batch by batch
    ends = np.concatenate([[0], np.cumsum(plan.row_lengths[row_lo:row_hi])])
    bufs = [np.empty(int(ends[-1]), np.int32) for _ in range(3)]
    for lo in range(row_lo, row_hi, rows_per_batch):
        hi = min(row_hi, lo + rows_per_batch)
        a, b = int(ends[lo - row_lo]), int(ends[hi - row_lo])
        # rows draw samples from all over the inputs and the kernel maps neighbouring cached
        # pages on each fault: drop them every few pieces, or one output shard maps nearly all inputs
        yield gather_rows(store, plan, lo, hi, (bufs[0][a:b], bufs[1][a:b], bufs[2][a:b]), release_every=32)
        store.release_pages()
