"""Trainer throughput: lcdata packed rows vs the Hugging Face `Trainer` with a padding collator.

Same real samples (tokenized by the demo build), same model (SmolLM2-135M-Instruct), same
token budget per step, same optimizer, bf16 autocast on both. First checks that both compute
the same per-token loss on the same batch, then times a few steps of each.
Run: `.venv/bin/python bench/train_vs_hf.py [--steps 3] [--batch 4]`.
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "smollm2-135m-instruct"


def samples(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from lcdata.build import build_local
    from lcdata.config import load_config, uses_engine

    out = Path(tempfile.mkdtemp()) / "ds"
    cfg = load_config(ROOT / "configs/demo.yaml", {"model": str(MODEL)})
    # the programmatic tasks only: the same samples as recorded in RESULTS.md, no engine start
    cfg = cfg.model_copy(update={"tasks": [t for t in cfg.tasks if not uses_engine(t)]})
    build_local(cfg, out)
    t = pa.concat_tables([pa.ipc.open_file(f).read_all() for f in sorted(glob.glob(str(out / "work/*/tokenized.arrow")))])
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(t))[:n]
    return [(np.asarray(t.column("input_ids")[int(i)].as_py(), np.int64),
             np.asarray(t.column("labels")[int(i)].as_py(), np.int64)) for i in idx]


def pack(batch: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
    ids = torch.from_numpy(np.concatenate([b[0] for b in batch]))[None]
    labels = torch.from_numpy(np.concatenate([b[1] for b in batch]))[None]
    pos = torch.cat([torch.arange(len(b[0])) for b in batch])[None]
    return ids, labels, pos, [len(b[0]) for b in batch]


def padded(batch: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    tok = AutoTokenizer.from_pretrained(MODEL)
    tok.pad_token_id = pad_id
    coll = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    return coll([{"input_ids": b[0].tolist(), "labels": b[1].tolist()} for b in batch])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4, help="samples per step (HF: one padded batch)")
    a = ap.parse_args()
    torch.manual_seed(0)
    data = samples(a.steps * a.batch)
    steps = [data[i * a.batch:(i + 1) * a.batch] for i in range(a.steps)]
    real = [sum(len(s[0]) for s in st) for st in steps]

    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from train.model import load_model, packed_loss

    # 1. same per-token loss on the same batch
    ours = load_model(MODEL).eval()
    hf = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids, labels, pos, lens = pack(steps[0])
    pb = padded(steps[0], pad_id=2)
    with torch.no_grad():
        total, n = packed_loss(ours, ids, pos, labels, lens, "token", 1024)
        hf_loss = hf(**pb, use_cache=False).loss.item()
    print(f"same batch, per-token loss: lcdata {total.item() / n:.5f}  HF {hf_loss:.5f}")
    pad_frac = 1 - int(pb["attention_mask"].sum()) / pb["attention_mask"].numel()

    # 2. lcdata: packed rows (one row per step here: the samples fit seq_len 4096 x batch)
    model = load_model(MODEL)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    t0 = time.perf_counter()
    for st in steps:
        ids, labels, pos, lens = pack(st)
        denom = int((labels[0, 1:] != -100).sum())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            total, _ = packed_loss(model, ids, pos, labels, lens, "token", 1024)
        (total / denom).backward()
        opt.step()
        opt.zero_grad()
    t_ours = time.perf_counter() - t0

    # 3. HF Trainer, padding collator, same samples and steps
    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> dict[str, list[int]]:
            return {"input_ids": data[i][0].tolist(), "labels": data[i][1].tolist()}

    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    tok = AutoTokenizer.from_pretrained(MODEL)
    hf = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="sdpa")
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.batch, max_steps=a.steps,
                             learning_rate=1e-5, bf16=True, gradient_checkpointing=True, report_to=[],
                             logging_steps=1, save_strategy="no", use_cpu=True, dataloader_num_workers=0,
                             lr_scheduler_type="constant")
    trainer = Trainer(model=hf, args=args, train_dataset=DS(),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    t0 = time.perf_counter()
    trainer.train()
    t_hf = time.perf_counter() - t0
    tokens = sum(real)
    print(f"{a.steps} steps x {a.batch} samples, {tokens:,} real tokens, HF padding {pad_frac:.0%} of its first batch")
    print(f"lcdata packed   : {t_ours:7.1f} s  {tokens / t_ours:7.1f} real tokens/s")
    print(f"HF Trainer+pad  : {t_hf:7.1f} s  {tokens / t_hf:7.1f} real tokens/s")
    print(f"ratio           : {t_hf / t_ours:.2f}x")


if __name__ == "__main__":
    main()
