"""Build wall time and peak RSS against dataset size (programmatic tasks, no LLM), and the
Prefect overhead: the same build through the flow (ephemeral server, threads) vs in-process.

Data: the whole Python standard library (packages joined per package, ~3.5M tokens of
contexts), needles + kv_tracking with `--per-context` samples each per context (the size
knob: 1 gives ~7M packed tokens, 14 ~100M), 4K rows. Each build runs in a child process;
peak RSS is the child's ru_maxrss.
Run: `.venv/bin/python bench/build_scale.py --per-context 1 14 --flow-overhead`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(cfg: dict, flow: bool) -> tuple[float, float, dict]:
    d = Path(tempfile.mkdtemp(prefix="lcdata-scale-"))
    (d / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [str(BIN / "lcdata"), "build", str(d / "c.yaml"), "--out", str(d / "out")]
    cmd += ["--workers", "2"] if flow else ["--local"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, max over children so far
    m = json.loads((d / "out" / "manifest.json").read_text())
    m["_peak_rss_mb"] = json.loads((d / "out" / "build_info.json").read_text()).get("peak_rss_mb", {})
    return wall, max(rss, before) / 1024, m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-context", type=int, nargs="+", default=[1, 14])
    ap.add_argument("--flow-overhead", action="store_true", help="also time the smallest size through Prefect")
    a = ap.parse_args()
    def cfg_for(k: int) -> dict:
        return {"name": f"scale-{k}", "model": str(ROOT / "models/smollm2-135m-instruct"),
                "sources": [{"name": "std", "kind": "python_stdlib", "docs_per_shard": 64}],
                "assemble": {"buckets": [4096]},
                "tasks": [{"kind": "needles", "per_context": k}, {"kind": "kv_tracking", "per_context": k}],
                "pack": {"seq_len": 4096}, "shard": {"max_tokens": 8_000_000}}

    rows = []
    for k in sorted(a.per_context):
        wall, rss, m = run(cfg_for(k), flow=False)
        rows.append((k, m["totals"]["tokens"], wall, rss))
        print(f"per_context {k:3}: {m['totals']['tokens']:>12,} tokens, {wall:7.1f} s, peak RSS {rss:8.0f} MiB, "
              f"{m['totals']['tokens'] / wall:,.0f} tok/s; peak RSS by phase {m['_peak_rss_mb']}", flush=True)
    (k0, t0, w0, r0), (_, t1, w1, r1) = rows[0], rows[-1]
    print(f"ratio largest/smallest: tokens {t1 / t0:.1f}x, time {w1 / w0:.1f}x, peak RSS {r1 / r0:.2f}x")
    if a.flow_overhead:
        wl, _, _ = run(cfg_for(k0), flow=False)
        wf, _, m = run(cfg_for(k0), flow=True)
        print(f"Prefect flow vs in-process, per_context {k0}: {wf:.1f} s vs {wl:.1f} s (2 threads vs 1): "
              f"overhead incl. server start {wf - wl:+.1f} s")


if __name__ == "__main__":
    main()
