"""Programmatic tasks on real assembled text: evidence spans, depths, provenance."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcdata.assemble import Assembler
from lcdata.config import (
    AssembleConfig,
    HotpotHaystackTask,
    KVTrackingTask,
    NeedlesTask,
    ReadConfig,
    SourceConfig,
)
from lcdata.read import ReadStage, plan_source
from lcdata.schema import PURPOSE_EVAL, Part
from lcdata.tasks.base import insert_texts
from lcdata.tasks.programmatic import hotpot_haystack, kv_tracking, needles


@pytest.fixture(scope="module")
def ctx_and_docs(tok):
    src = SourceConfig(name="sh", kind="shakespeare", include=["tragedies/othello.md"])
    stage = ReadStage(ReadConfig(), src)
    docs = [d for sh in plan_source(src) for d in stage.run(sh.units)]
    ctxs = list(Assembler(AssembleConfig(buckets=[4096]), tok, "concat", 0).run(docs))
    return ctxs, {d.id: d for d in docs}


def check_sample(s, docs):
    ctx = s.context_text()
    assert len(ctx) == s.context_chars
    # typed payload: the question ends the user turn right after the context, the answer is the reply
    user = s.messages[s.context_message]["content"]
    assert user.endswith("</document>\n\n" + s.question) and s.question.strip()
    assert s.answer == s.messages[-1]["content"]
    for e in s.evidence:
        assert ctx[e.start : e.end] == e.text
        assert e.depth == pytest.approx(e.start / len(ctx), abs=1e-6)
    for p in s.sources:
        assert ctx[p.ctx_start : p.ctx_end] == docs[p.doc_id].text[p.doc_start : p.doc_end]
    assert s.messages[-1]["role"] == "assistant" and s.messages[-1]["content"]


def test_needles_at_configured_depths(ctx_and_docs, tok):
    ctxs, docs = ctx_and_docs
    cfg = NeedlesTask(n_needles=4, n_queried=4, depths=[0.1, 0.35, 0.6, 0.9])
    s = needles(cfg, ctxs[0], 0, random.Random(0), tok, 2048)
    check_sample(s, docs)
    assert all(abs(e.depth - d) < 0.02 for e, d in zip(s.evidence, cfg.depths, strict=True))
    for e in s.evidence:
        assert e.text in s.messages[1]["content"]
    assert s.split == "long" and s.context_tokens > 2048


def test_needle_depths_spread_over_deciles(ctx_and_docs, tok):
    ctxs, docs = ctx_and_docs
    deciles = set()
    for i, c in enumerate(ctxs):
        s = needles(NeedlesTask(n_needles=4), c, i, random.Random(i), tok, 2048)
        check_sample(s, docs)
        deciles |= {int(d * 10) for d in s.meta["depths"]}
    assert len(deciles) >= 8  # evidence spread over the whole context, not only the ends


def test_kv_chain_spans_the_document(ctx_and_docs, tok):
    ctxs, docs = ctx_and_docs
    s = kv_tracking(KVTrackingTask(chain_len=4, n_distractor_chains=2), ctxs[1], 0, random.Random(1), tok, 2048)
    check_sample(s, docs)
    depths = [e.depth for e in s.evidence]
    assert depths == sorted(depths) and depths[0] < 0.25 and depths[-1] > 0.75
    assert s.messages[1]["content"] == "The variables are " + ", ".join(s.meta["chain"]) + "."
    assert s.evidence[0].text == f"VAR {s.meta['chain'][0]} = {s.meta['value']}."


def test_hotpot_in_haystack_places_support_far_apart(ctx_and_docs, tok):
    ctxs, docs = ctx_and_docs
    s = hotpot_haystack(HotpotHaystackTask(depths=[0.1, 0.9], distractors=2), ctxs[2], 0, random.Random(2), tok, 2048)
    check_sample(s, docs)
    assert s.purpose == PURPOSE_EVAL
    assert len(s.evidence) >= 2
    assert s.meta["distance_frac"] > 0.7
    assert s.messages[1]["content"] == s.meta["answer"]


def test_user_qa_file_in_hotpot_format(ctx_and_docs, tok, tmp_path):
    import json

    ctxs, docs = ctx_and_docs
    row = {"_id": "q1", "question": "Who wrote the memo?", "answer": "Ada",
           "supporting_facts": [["Memo", 0], ["Office", 1]],
           "context": [["Memo", ["The memo was written by Ada."]], ["Office", ["An office.", " Ada works there."]]]}
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps(row) + "\n")
    cfg = HotpotHaystackTask(qa_path=str(p), purpose="train", distractors=0)
    s = hotpot_haystack(cfg, ctxs[0], 0, random.Random(0), tok, 2048)
    check_sample(s, docs)
    assert s.purpose == "train" and [e.text for e in s.evidence] == ["The memo was written by Ada.", "Ada works there."]


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="ab\n", min_size=1, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=4),
    ins=st.lists(st.tuples(st.integers(0, 60), st.text(alphabet="XY", min_size=1, max_size=5)), max_size=4),
)
def test_insert_texts_keeps_provenance(text, cuts, ins):
    """Any insertion, anywhere, into any partition of a context keeps every part exact."""
    n = len(text)
    bounds = sorted({0, n, *[c % (n + 1) for c in cuts]})
    doc = "PRE" + text + "POST"
    parts = [Part("d", a, b, a + 3, b + 3) for a, b in zip(bounds, bounds[1:]) if b > a]
    inserts = [(p % (n + 1), t, i) for i, (p, t) in enumerate(ins)]
    new, new_parts, spans = insert_texts(text, parts, inserts)
    assert len(new) == n + sum(len(t) for _, t, _ in inserts)
    for q in new_parts:
        assert new[q.ctx_start : q.ctx_end] == doc[q.doc_start : q.doc_end]
    for s in spans:
        assert new[s.start : s.end] == s.text
    assert sum(q.ctx_end - q.ctx_start for q in new_parts) == n


def test_task_registry_matches_the_config_union():
    """Every task kind is one registered class whose Config is the config's union member."""
    import typing

    from lcdata.config import TaskConfig, uses_engine
    from lcdata.tasks import TASKS

    members = typing.get_args(typing.get_args(TaskConfig)[0])
    by_kind = {m.model_fields["kind"].default: m for m in members}
    assert set(by_kind) == set(TASKS)
    for kind, cls in TASKS.items():
        assert cls.Config is by_kind[kind], kind
        assert cls.uses_engine == uses_engine(cls.Config()), kind


def test_a_new_programmatic_task_is_one_class(ctx_and_docs, tok):
    """Defining a ProgrammaticTask subclass registers it; the tasks stage runs it per context
    with its own seeded RNG, ids from sample_id, and counts in contexts / out samples."""
    from lcdata.schema import sample_id
    from lcdata.stage import Lineage, RejectSink
    from lcdata.tasks import TASKS, ProgrammaticTasks
    from lcdata.tasks.base import ProgrammaticTask, Span, make_sample

    class FirstLine(ProgrammaticTask):
        kind, Config = "first_line_test", NeedlesTask

        def make(self, ctx, index, rng):
            line = ctx.text.split("\n", 1)[0]
            return make_sample(task=self.kind, index=index, ctx=ctx, text=ctx.text, parts=ctx.parts,
                               question="What is the first line?", answer=line,
                               evidence=[Span(line, 0, len(line))], tok=self.tok, short_max_tokens=self.short_max)

    try:
        assert TASKS["first_line_test"] is FirstLine
        with pytest.raises(ValueError, match="defined twice"):
            type("Again", (ProgrammaticTask,), {"kind": "first_line_test", "Config": NeedlesTask})
        ctxs = ctx_and_docs[0][:2]
        cfg = NeedlesTask.model_construct(kind="first_line_test", per_context=2)
        lin = Lineage()
        stage = ProgrammaticTasks([cfg], tok, 0, 2048).bind(lin, RejectSink(None))
        out = list(stage.run(ctxs))
        assert [s.id for s in out] == [sample_id("first_line_test", c.id, i) for c in ctxs for i in range(2)]
        assert all(s.question == "What is the first line?" and s.answer == s.messages[-1]["content"] for s in out)
        assert lin.to_json()["tasks"] == {"in": 2, "out": 4, "dropped": {}}
    finally:
        TASKS.pop("first_line_test", None)


def test_programmatic_ids_continue_across_repeated_kinds(ctx_and_docs, tok):
    from lcdata.stage import Lineage, RejectSink
    from lcdata.tasks import ProgrammaticTasks

    ctx = ctx_and_docs[0][0]
    stage = ProgrammaticTasks([NeedlesTask(per_context=1), KVTrackingTask(), NeedlesTask(per_context=2)],
                              tok, 0, 2048).bind(Lineage(), RejectSink(None))
    ids = [s.id for s in stage.run([ctx])]
    assert ids == [f"needles:{ctx.id}:0", f"kv_tracking:{ctx.id}:0", f"needles:{ctx.id}:1", f"needles:{ctx.id}:2"]
