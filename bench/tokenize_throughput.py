"""Tokenize + pack + write throughput vs raw `tokenizers` `encode_batch`, same text, same cores.

The text: real samples made by the demo build's tasks (Shakespeare + stdlib contexts with
needles / variable tracking), rendered with the chat template. Raw = `encode_batch` of the
pre-rendered strings (nothing else). lcdata = render + loss spans + encode + labels
(`TokenizeStage`) + best-fit packing + writing Arrow shards with checksums.
Run: `.venv/bin/python bench/tokenize_throughput.py [--samples 2000]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lcdata.arrowio import ArrowWriter, open_ipc, sha256_file
from lcdata.build import build_local
from lcdata.chat import ChatTokenizer, TokenizeStage
from lcdata.config import PackConfig, load_config
from lcdata.pack import TokenStore, iter_row_batches, plan_pack
from lcdata.schema import SAMPLE_SCHEMA, TOKENIZED_SCHEMA, Sample

ROOT = Path(__file__).resolve().parent.parent


def demo_samples(n: int) -> list[Sample]:
    out = Path(tempfile.mkdtemp()) / "ds"
    cfg = load_config(ROOT / "configs" / "demo.yaml", {"model": str(ROOT / "models/smollm2-135m-instruct")})
    m = build_local(cfg, out)
    rows = [r for f in m["samples_files"] for r in open_ipc(out / f).to_pylist()]
    base = [Sample.from_row(r) for r in rows]
    return [base[i % len(base)] for i in range(n)]


def run_lcdata(tok: ChatTokenizer, samples: list[Sample], seq_len: int, out: Path) -> tuple[float, int]:
    import pyarrow as pa

    t0 = time.perf_counter()
    stage = TokenizeStage(tok, "all", batch_size=64)
    rows = [(t.sample_id, t.split, t.input_ids, t.labels) for t in stage.run(samples)]
    batch = pa.RecordBatch.from_pydict({
        "sample_id": [r[0] for r in rows], "task": ["x"] * len(rows), "split": [r[1] for r in rows],
        "input_ids": pa.array([r[2] for r in rows], pa.list_(pa.int32())),
        "labels": pa.array([r[3] for r in rows], pa.list_(pa.int32())),
    }, schema=TOKENIZED_SCHEMA)
    store = TokenStore()
    store.add_batch(batch)
    plan = plan_pack(store, PackConfig(seq_len=seq_len), seed=0)
    from lcdata.schema import PACKED_SCHEMA

    w = ArrowWriter(out / "shard-00000.arrow", PACKED_SCHEMA)
    for b in iter_row_batches(store, plan, 0, plan.n_rows):
        w.write(b)
    w.close()
    sha256_file(out / "shard-00000.arrow")
    return time.perf_counter() - t0, plan.n_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    a = ap.parse_args()
    tok = ChatTokenizer(ROOT / "models/smollm2-135m-instruct")
    samples = demo_samples(a.samples)
    texts = [tok.render(s.messages) for s in samples]  # the raw side gets pre-rendered text
    chars = sum(len(t) for t in texts)
    print(f"{len(samples):,} real samples, {chars / 1e6:.1f}M chars; SAMPLE_SCHEMA has {len(SAMPLE_SCHEMA)} fields")
    raw, ours = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        encs = tok.tokenizer.encode_batch(texts, add_special_tokens=False)
        raw.append(time.perf_counter() - t0)
        n_raw = sum(len(e.ids) for e in encs)
        with tempfile.TemporaryDirectory() as d:
            dt, n_ours = run_lcdata(tok, samples, 4096, Path(d))
        ours.append(dt)
    assert n_ours == n_raw, (n_ours, n_raw)
    r, o = min(raw), min(ours)
    print(f"raw encode_batch           : {r:6.2f} s  {n_raw / r:12,.0f} tokens/s")
    print(f"lcdata tokenize+pack+write : {o:6.2f} s  {n_ours / o:12,.0f} tokens/s")
    print(f"lcdata throughput / raw    : {r / o:.0%}")


if __name__ == "__main__":
    main()
