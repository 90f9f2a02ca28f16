"""Packing fill and speed: lcdata's BFD packer vs TRL's `pack_dataset(strategy="bfd")`.

Same 1M samples (input_ids + labels, a long/short length mix of mean ~500 tokens), same
seq_len, both timed from an in-memory Arrow table to packed rows *including the copy of
the tokens*. Run: `.venv/bin/python bench/pack_vs_trl.py [--n 1000000] [--seq-len 4096]`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa


def make_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    # 86 % short chat samples (lognormal around 150 tokens), 14 % long ones (1K-4K): mean ~500
    short = np.clip(rng.lognormal(np.log(150), 0.6, n), 8, 2048).astype(np.int64)
    long_ = rng.integers(1024, 4097, n)
    lengths = np.where(rng.random(n) < 0.86, short, long_)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    ids = rng.integers(0, 49152, total, dtype=np.int32)
    labels = ids.copy()
    labels[offsets[:-1]] = -100
    off32 = pa.array(offsets.astype(np.int32)) if total < 2**31 else pa.array(offsets)
    mk = pa.ListArray.from_arrays if total < 2**31 else pa.LargeListArray.from_arrays
    return pa.table({
        "sample_id": pa.array([f"s{i}" for i in range(n)]),
        "split": pa.array(np.where(lengths <= 2048, "short", "long")),
        "input_ids": mk(off32, pa.array(ids)),
        "labels": mk(off32, pa.array(labels)),
    })


def run_lcdata(table: pa.Table, seq_len: int, rows_per_batch: int = 256) -> tuple[float, float, int, float]:
    from lcdata.config import PackConfig
    from lcdata.pack import TokenStore, iter_row_batches, plan_pack

    t0 = time.perf_counter()
    store = TokenStore()
    store.add_batch(table.combine_chunks())
    plan = plan_pack(store, PackConfig(seq_len=seq_len), seed=0)
    t_plan = time.perf_counter() - t0
    # the copy of every token into packed rows (kept in memory, like TRL's result)
    batches = list(iter_row_batches(store, plan, 0, plan.n_rows, rows_per_batch))
    dt = time.perf_counter() - t0
    assert sum(len(b.column("input_ids").values) for b in batches) == plan.n_tokens
    return dt, plan.fill, plan.n_rows, t_plan


def run_lcdata_disk(table: pa.Table, seq_len: int, out: str) -> float:
    """The build's path: plan, then stream packed rows into checksummed Arrow shard files."""
    from pathlib import Path

    from lcdata.build import write_packed_shards
    from lcdata.config import PackConfig
    from lcdata.pack import TokenStore, plan_pack

    t0 = time.perf_counter()
    store = TokenStore()
    store.add_batch(table.combine_chunks())
    plan = plan_pack(store, PackConfig(seq_len=seq_len), seed=0)
    write_packed_shards(store, plan, Path(out) / "shards", 8_000_000)
    return time.perf_counter() - t0


def run_trl_disk(table: pa.Table, seq_len: int, out: str) -> float:
    import datasets
    from trl.data_utils import pack_dataset

    ds = datasets.Dataset(table.select(["input_ids", "labels"]))
    t0 = time.perf_counter()
    pack_dataset(ds, seq_len, strategy="bfd").save_to_disk(out)
    return time.perf_counter() - t0


def run_trl(table: pa.Table, seq_len: int) -> tuple[float, float, int]:
    import datasets
    from trl.data_utils import pack_dataset

    ds = datasets.Dataset(table.select(["input_ids", "labels"]))
    t0 = time.perf_counter()
    packed = pack_dataset(ds, seq_len, strategy="bfd")
    dt = time.perf_counter() - t0
    lens = packed.data.column("input_ids").combine_chunks()
    tokens = len(lens.values)
    rows = len(packed)
    return dt, tokens / (rows * seq_len), rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prewarm-gb", type=float, default=10.0)
    ap.add_argument("--to-disk", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the path to shard files on disk (lcdata shards vs TRL save_to_disk)")
    a = ap.parse_args()
    table = make_table(a.n)
    if a.prewarm_gb:
        # Touch (then free) fresh memory once, so that neither side pays this VM's first-touch
        # cost of ~1-2 s/GB (a hypervisor cost, not the packer's): both then run on warm memory.
        warm = np.ones(int(a.prewarm_gb * 2**30) // 4, np.int32)
        del warm
    lengths = table.column("input_ids").combine_chunks().value_lengths().to_numpy()
    print(f"{a.n:,} samples, mean length {lengths.mean():.0f}, {lengths.sum():,} tokens, seq_len {a.seq_len}")
    # Alternate the two and keep each one's best.
    ours, trl = [], []
    for rep in range(a.reps):
        ours.append(run_lcdata(table, a.seq_len))
        print(f"  rep {rep}: lcdata {ours[-1][0]:.2f} s (plan {ours[-1][3]:.2f} s)", flush=True)
        trl.append(run_trl(table, a.seq_len))
        print(f"  rep {rep}: TRL    {trl[-1][0]:.2f} s", flush=True)
    t_ours, fill_ours, rows_ours, t_plan = min(ours)
    t_trl, fill_trl, rows_trl = min(trl)
    print(f"lcdata BFD : {t_ours:7.2f} s  fill {fill_ours:.4%}  rows {rows_ours:,}  (packing plan alone {t_plan:.2f} s)")
    print(f"TRL bfd    : {t_trl:7.2f} s  fill {fill_trl:.4%}  rows {rows_trl:,}")
    print(f"speed ratio (TRL time / lcdata time): {t_trl / t_ours:.1f}x with the token copy, "
          f"{t_trl / t_plan:.0f}x TRL end to end vs lcdata's packing plan")
    if a.to_disk:
        import shutil
        import tempfile

        d1, d2 = tempfile.mkdtemp(), tempfile.mkdtemp()
        try:
            t_ours_d = run_lcdata_disk(table, a.seq_len, d1)
            t_trl_d = run_trl_disk(table, a.seq_len, d2)
        finally:
            shutil.rmtree(d1)
            shutil.rmtree(d2)
        print(f"to disk    : lcdata pack + shards + sha256 {t_ours_d:.2f} s, TRL pack_dataset + save_to_disk "
              f"{t_trl_d:.2f} s, ratio {t_trl_d / t_ours_d:.1f}x")


if __name__ == "__main__":
    main()
