"""Trainer memory and speed against row length: one training step per (config, length) after a warm-up step on a short row,
each in a fresh process (peak RSS from ru_maxrss), packed_sdpa + gradient checkpointing + the
target-only chunked loss, AdamW. Rows hold samples of a quarter of the row (attention cost grows
with the samples), or of a fixed `--sample-len` (rows get longer with more samples of the same
length: tokens/s should stay flat). Tokens per CPU-second (process time, all threads) is printed
beside tokens/s: on a shared machine it moves less with the other processes' load.

`--model tiny` is a random-init model of SmolLM2's architecture scaled down (Llama, tied
embeddings, SmolLM2's vocabulary, 3:1 grouped-query heads, MLP 8/3 x hidden; 2 layers of 96),
written to a temp directory, for 16K-128K rows on a CPU. `--configs` picks the memory options:
plain, tiled (memory.mlp_tile_tokens=--tile), offload (memory.offload_activations), tiled+offload.

Run: `.venv/bin/python bench/train_memory.py [--model tiny] [--lengths ...] [--sample-len 2048]
[--configs plain tiled tiled+offload] [--tile 4096]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time, torch
from train.memory import offload_activations, tile_mlps
from train.model import load_model, packed_loss
path = sys.argv[1]; L = int(sys.argv[2]); S = int(sys.argv[3]); tile = int(sys.argv[4]); offload = sys.argv[5] == "1"
bf16 = sys.argv[6] == "1"
def row(L):
    n = max(1, L // S)  # samples of S tokens in one packed row
    torch.manual_seed(0)
    ids = torch.randint(0, 49152, (1, L)); lens = [L // n] * n
    pos = torch.cat([torch.arange(k) for k in lens])[None]
    labels = ids.clone(); labels[:, :] = -100
    for a in range(0, L, L // n):
        labels[0, a + L // n - 64:a + L // n] = ids[0, a + L // n - 64:a + L // n]  # a 64-token answer per sample
    return ids, pos, labels, lens
model = load_model(path)
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}); model.train()
if tile:
    tile_mlps(model, tile)
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
def step(ids, pos, labels, lens):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), offload_activations(offload, torch.device("cpu")):
        total, k = packed_loss(model, ids, pos, labels, lens, "token", 1024)
    (total / k).backward(); opt.step(); opt.zero_grad()
step(*row(min(L, 2 * S)))  # warm-up on a short row: allocates AdamW state, first-call costs
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
ids, pos, labels, lens = row(L)
t, c = time.perf_counter(), time.process_time(); step(ids, pos, labels, lens)
dt, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"len": L, "seconds": dt, "tokens_per_s": L / dt, "tokens_per_cpu_s": L / cpu,
                  "warmup_rss_mb": base, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# SmolLM2-135M: hidden 576, MLP 1536, 30 layers, 9 heads / 3 KV heads of 64, vocab 49152, tied
TINY = {"vocab_size": 49152, "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 3, "num_key_value_heads": 1, "max_position_embeddings": 131072,
        "rope_theta": 100000.0, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2}
CONFIGS = {"plain": (False, False), "tiled": (True, False), "offload": (False, True), "tiled+offload": (True, True)}


def tiny_model(d: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(d)
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/smollm2-135m-instruct", help="a model directory, or `tiny`")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    ap.add_argument("--sample-len", type=int, default=0, help="tokens per packed sample; 0: a quarter of the row")
    ap.add_argument("--configs", nargs="+", default=["plain"], choices=list(CONFIGS))
    ap.add_argument("--tile", type=int, default=4096, help="memory.mlp_tile_tokens of the tiled configs")
    ap.add_argument("--bf16", choices=["on", "off"], default="on", help="bf16 autocast (off: float32 matmuls)")
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    model = str(tiny_model(Path(tmp.name) / "tiny")) if a.model == "tiny" else a.model
    res: dict[tuple[str, int], dict] = {}
    for name in a.configs:
        tiled, offload = CONFIGS[name]
        for L in a.lengths:
            args = [model, str(L), str(a.sample_len or L // 4), str(a.tile if tiled else 0), str(int(offload)),
                    str(int(a.bf16 == "on"))]
            p = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True)
            if p.returncode:
                print(p.stderr[-2000:])
                raise SystemExit(1)
            r = res[name, L] = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"{name:>14} {L:>7} tokens: {r['peak_rss_mb']:8,.0f} MB peak RSS (+{r['peak_rss_mb'] - r['warmup_rss_mb']:,.0f} "
                  f"over the warm-up's)  {r['tokens_per_s']:7.1f} tokens/s  {r['tokens_per_cpu_s']:7.1f} tokens/CPU-s  "
                  f"({r['seconds']:.1f} s/step)", flush=True)
    for name in a.configs:
        for lo, hi in zip(a.lengths, a.lengths[1:]):
            print(f"{name}: RSS({hi // 1024}K)/RSS({lo // 1024}K) = "
                  f"{res[name, hi]['peak_rss_mb'] / res[name, lo]['peak_rss_mb']:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
