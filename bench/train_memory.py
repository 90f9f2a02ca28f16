"""Trainer memory and speed against row length: one training step of SmolLM2-135M at
2K/4K/8K/16K tokens, each in a fresh process (peak RSS), packed_sdpa + gradient
checkpointing + the target-only chunked loss. Rows hold samples of a quarter of the row
(attention cost grows with the samples), or of a fixed `--sample-len` (rows get longer with
more samples of the same length: tokens/s should stay flat).
Run: `.venv/bin/python bench/train_memory.py [--lengths ...] [--sample-len 2048]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time, torch
from train.model import load_model, packed_loss
L = int(sys.argv[1]); S = int(sys.argv[2]); n = max(1, L // S)  # samples of S tokens in one packed row
torch.manual_seed(0)
ids = torch.randint(0, 49152, (1, L)); lens = [L // n] * n
pos = torch.cat([torch.arange(k) for k in lens])[None]
labels = ids.clone(); labels[:, :] = -100
for a in range(0, L, L // n):
    labels[0, a + L // n - 64:a + L // n] = ids[0, a + L // n - 64:a + L // n]  # a 64-token answer per sample
model = load_model("models/smollm2-135m-instruct")
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False}); model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, k = packed_loss(model, ids, pos, labels, lens, "token", 1024)
    (total / k).backward(); opt.step(); opt.zero_grad()
step()  # warm-up (allocates optimizer state)
t = time.perf_counter(); step(); dt = time.perf_counter() - t
print(json.dumps({"len": L, "seconds": dt, "tokens_per_s": L / dt,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    ap.add_argument("--sample-len", type=int, default=0, help="tokens per packed sample; 0: a quarter of the row")
    a = ap.parse_args()
    res = []
    for L in a.lengths:
        p = subprocess.run([sys.executable, "-c", CHILD, str(L), str(a.sample_len or L // 4)], cwd=ROOT,
                           capture_output=True, text=True)
        if p.returncode:
            print(p.stderr[-2000:])
            raise SystemExit(1)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        res.append(r)
        print(f"{L:>6} tokens: {r['peak_rss_mb']:8,.0f} MB peak RSS  {r['tokens_per_s']:7.1f} tokens/s  "
              f"({r['seconds']:.1f} s/step)", flush=True)
    by = {r["len"]: r for r in res}
    if 8192 in by and 16384 in by:
        print(f"RSS(16K)/RSS(8K) = {by[16384]['peak_rss_mb'] / by[8192]['peak_rss_mb']:.2f}")
    if 4096 in by and 8192 in by:
        print(f"RSS(8K)/RSS(4K) = {by[8192]['peak_rss_mb'] / by[4096]['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
