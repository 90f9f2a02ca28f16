"""`engine.reproducible` on vs off: run-to-run reproducibility of synthesis outputs and
generation speed, side by side in one run.

Each engine run is a fresh process (the variation is between engine runs, as between a killed
build and its rerun); modes alternate (on, off, on, off, ...) so drift hits both alike. Every
run sends the same requests through `lcdata.engine.Engine` (no cache) as a build does: real
Shakespeare passages of ~`--context` tokens, a question-writing prompt with a JSON schema
(structured output), the build's default sampling (temperature 0.7, top-p 0.95, seed 0) or
greedy with `--greedy`, in calls of `--batch` requests. Reported per mode: requests whose
output differs from that mode's first run, and output tokens/s (engine start excluded).
Run: `.venv/bin/python bench/engine_determinism.py [--runs 3] [--n 32] [--batch 8] [--greedy]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = str(ROOT / "models" / "smollm2-135m-instruct")
SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string", "maxLength": 200}, "answer": {"type": "string", "maxLength": 100}},
    "required": ["question", "answer"],
    "additionalProperties": False,
}


def requests(n: int, context_tokens: int) -> list:
    from lcdata.engine import Request
    from lcdata.read.corpora import shakespeare_root

    text = (shakespeare_root() / "tragedies" / "hamlet.md").read_text()
    chars = context_tokens * 3  # ~3 characters per SmolLM2 token on verse
    return [Request([{"role": "user", "content": f"{text[i * chars:(i + 1) * chars]}\n\nWrite one question about "
                      "the passage above and its short answer, as JSON."}], SCHEMA, "bench-1", max_tokens=128)
            for i in range(n)]


def one_run(reproducible: bool, a: argparse.Namespace) -> dict:
    from lcdata.engine import Engine, EngineConfig

    cfg = EngineConfig(model=MODEL, reproducible=reproducible, batch_size=a.batch, max_model_len=a.context + 1024,
                       kv_cache_gib=2, temperature=0.0 if a.greedy else 0.7)
    eng = Engine(cfg)
    _ = eng.backend  # start the engine outside the timed part
    reqs = requests(a.n, a.context)
    t = time.perf_counter()
    texts = eng.generate(reqs)
    return {"seconds": time.perf_counter() - t, "texts": texts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="engine runs per mode")
    ap.add_argument("--n", type=int, default=32, help="requests")
    ap.add_argument("--context", type=int, default=1000, help="passage tokens per request (about)")
    ap.add_argument("--batch", type=int, default=8, help="requests per engine call")
    ap.add_argument("--greedy", action="store_true", help="temperature 0 instead of the default sampling")
    ap.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(one_run(a.child == "on", a)))
        return

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(MODEL) / "tokenizer.json"))
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for i in range(a.runs):
        for mode in ("on", "off"):
            cmd = [sys.executable, __file__, "--child", mode, "--n", str(a.n), "--context", str(a.context),
                   "--batch", str(a.batch)] + (["--greedy"] if a.greedy else [])
            p = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                sys.exit(f"engine run failed ({mode}):\n{p.stderr[-3000:]}")
            r = json.loads(line[0][7:])
            r["tokens"] = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in r["texts"])
            runs[mode].append(r)
            print(f"run {i + 1} reproducible={mode}: {r['tokens'] / r['seconds']:.1f} output tok/s", flush=True)

    print(f"\n{a.n} requests x ~{a.context} tokens, JSON schema, {'greedy' if a.greedy else 'temperature 0.7'}, "
          f"calls of {a.batch}, {a.runs} engine runs per mode, {os.cpu_count()} cores")
    print("| reproducible | requests differing from the mode's first run (each later run) | output tok/s (median) |")
    print("|---|---|---|")
    speed = {}
    for mode, rs in runs.items():
        first = rs[0]["texts"]
        diffs = [sum(x != y for x, y in zip(first, r["texts"], strict=True)) for r in rs[1:]]
        speed[mode] = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        print(f"| {mode} | {diffs} of {a.n} | {speed[mode]:.1f} |")
    print(f"\nspeed on/off: {speed['on'] / speed['off']:.2f}x")


if __name__ == "__main__":
    main()
