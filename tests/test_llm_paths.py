"""Every LLM path without a model: the engine (cache, dedup, batches, keys) and each LLM stage
driven by a ``ScriptedBackend`` whose outputs the test writes, on real Shakespeare text and
the real SmolLM2 tokenizer. Each test asserts what a build would record: samples made,
lineage counts by reason, rejects rows, and the requests really sent (retries included).

A scripted engine tells requests apart by ``Request.template_version`` (``multihop.v3#try1``,
``verify.v1:closed``, ...) and by what its prompt quotes (a context's source name, a
question). No vLLM: the whole file runs in seconds."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from lcdata import engine as engine_mod
from lcdata.config import (
    CompareTask,
    JudgeFilter,
    LiftTask,
    MultihopTask,
    ShortQATask,
    VerifyFilter,
)
from lcdata.engine import Engine, EngineConfig, Request, ScriptedBackend, call_seed
from lcdata.filters.verify import BRIEF, JudgeStage, VerifyStage, local_windows
from lcdata.read.corpora import shakespeare_root
from lcdata.schema import Context, Part, Sample
from lcdata.stage import Lineage, RejectSink, Stage
from lcdata.tasks.base import DOC_CLOSE, make_sample
from lcdata.tasks.compare import SAYS_PATTERN, CompareStage, shared_topics
from lcdata.tasks.lift import LiftStage, ShortQAStage
from lcdata.tasks.multihop import MultihopStage
from lcdata.tasks.summary import SummaryStage

PLAY = (shakespeare_root() / "tragedies" / "macbeth.md").read_text()
TEXT = PLAY[:20000]
Script = Callable[[Request], str] | Sequence[str]


def js(**kw: Any) -> str:
    return json.dumps(kw)


@pytest.fixture(scope="module")
def ctx(tok) -> Context:
    return context(tok, TEXT, "ctxA")


def context(tok, text: str, source: str) -> Context:
    """A context of real text; ``source`` is quoted in every LLM prompt (scripts key on it)."""
    return Context(f"ctx:{source}:0", source, "macbeth", "natural", text, [Part("t/macbeth", 0, len(text), 0, len(text))],
                   tok.count([text])[0], 8192)


@dataclass
class Ran:
    samples: list[Sample]
    lineage: dict[str, Any]  # this stage's counts, as the build's lineage JSON holds them
    rejects: list[tuple[str, str, str]]  # (stage, reason, record_id)
    backend: ScriptedBackend
    engine: Engine

    def sent(self) -> list[str]:
        return [r.template_version for r in self.backend.requests]


def bind(stage: Stage[Any, Any]) -> tuple[Stage[Any, Any], Lineage, RejectSink]:
    lin, sink = Lineage(), RejectSink(None)
    return stage.bind(lin, sink), lin, sink


def scripted_engine(script: Script, cache: Path | None = None, tok: Any = None,
                    **cfg: Any) -> tuple[Engine, ScriptedBackend]:
    backend = ScriptedBackend(script, name="paths")
    return Engine(EngineConfig(**cfg), cache, backend=backend, tok=tok), backend


# The one place that knows stage constructors: adapt here if their signatures change.
def make_stage(task_or_filter: Any, engine: Engine, tok) -> Stage[Any, Any]:
    if isinstance(task_or_filter, VerifyFilter):
        return VerifyStage(task_or_filter, engine, tok)
    if isinstance(task_or_filter, JudgeFilter):
        return JudgeStage(task_or_filter, engine)
    stages = {"multihop": MultihopStage, "compare": CompareStage, "summary": SummaryStage, "lift": LiftStage,
              "short_qa": ShortQAStage}
    return stages[task_or_filter.kind](task_or_filter, engine, tok, 0, 2048)


def run(tok, cfg: Any, script: Script, records: list[Any], cache: Path | None = None, **engine_cfg: Any) -> Ran:
    engine, backend = scripted_engine(script, cache, tok, **engine_cfg)
    stage, lin, sink = bind(make_stage(cfg, engine, tok))
    samples = list(stage.run(records))
    counts = lin.to_json()[stage.name]
    if "notes" in counts:  # a note counted 0 times says nothing (whether it is listed is not the point)
        counts["notes"] = {k: v for k, v in counts["notes"].items() if v}
    assert counts["in"] == counts["out"] + sum(counts["dropped"].values())  # every planned sample accounted for
    assert sum(counts["dropped"].values()) == len(sink.rows)  # every drop has a rejects row
    return Ran(samples, counts, [(r["stage"], r["reason"], r["record_id"]) for r in sink.rows], backend, engine)


def labels_in(prompt: str) -> dict[str, str]:
    """The labelled lines of a prompt: ``{"P1.3": "line text"}``."""
    return dict(re.findall(r"^\[(P\d+\.\d+)\] (.*)$", prompt, re.M))


def assert_spans(s: Sample, text: str) -> None:
    assert s.evidence and all(text[e.start:e.end] == e.text for e in s.evidence)


# --- the engine -----------------------------------------------------------------------------

def req(content: str, version: str = "v1") -> Request:
    return Request([{"role": "user", "content": content}], {"type": "object"}, version, 32)


def test_engine_sends_identical_requests_once_in_batches_and_reruns_from_cache(tmp_path):
    a, b, c, d = (req(x) for x in "abcd")
    eng, backend = scripted_engine(lambda r: "out:" + r.messages[0]["content"], tmp_path, batch_size=2)
    assert eng.generate([a, b, a, c, d]) == ["out:a", "out:b", "out:a", "out:c", "out:d"]
    assert [r.messages[0]["content"] for r in backend.requests] == ["a", "b", "c", "d"]
    assert backend.batches == [2, 2] and eng.calls == 4
    assert len(list(tmp_path.glob("chunk-*.jsonl"))) == 2  # one chunk per batch
    # a rerun (new process, same cache) sends nothing; only a new request goes out
    again, backend2 = scripted_engine([], tmp_path, batch_size=2)
    assert again.generate([d, c, b, a]) == ["out:d", "out:c", "out:b", "out:a"]
    assert backend2.requests == [] and again.calls == 0
    more, backend3 = scripted_engine(["out:e"], tmp_path, batch_size=2)
    assert more.generate([a, req("e")]) == ["out:a", "out:e"]
    assert [r.messages[0]["content"] for r in backend3.requests] == ["e"] and more.calls == 1


def test_real_keys_are_unchanged_and_never_shared_with_a_scripted_model(tmp_path):
    cfg = EngineConfig()
    r = Request([{"role": "user", "content": "Hello"}], {"type": "object"}, "v1#try0", 32)
    r2 = Request([{"role": "user", "content": "Hi"}], None, "verify.v1:closed", 64, temperature=0.0)
    # pinned before the Backend protocol: existing builds' request caches stay valid
    assert r.key(cfg) == "31acce08e3c8acfc74cd33bf624caec4e6d8a5c88a3d649f1006a11794563586"
    assert r2.key(cfg) == "52dff0eb642dc9800c2959120a3d43350efb0a3ace3c59bfb953d6a99329baff"
    assert call_seed(cfg, [r, r2]) == 75202146786320487
    real = Engine(cfg, tmp_path)
    assert real.key(r) == r.key(cfg) and real.model == cfg.model
    scripted, _ = scripted_engine(["scripted answer"], tmp_path)
    assert scripted.model == "scripted:paths" and scripted.key(r) != r.key(cfg)
    scripted.generate([r])
    # the real model's engine on the same cache finds nothing of the scripted one (and has not started vLLM)
    real = Engine(cfg, tmp_path)
    assert real.cache.get(real.key(r)) is None and real._backend is None
    assert Engine(cfg, tmp_path, backend=ScriptedBackend([], "paths")).cache.get(scripted.key(r)) == "scripted answer"


def test_backends_that_are_not_thread_safe_take_turns(tmp_path):
    seen: list[bool] = []

    def script(r: Request) -> str:
        seen.append(engine_mod._LOCK.locked())
        return "x"

    eng, _ = scripted_engine(script)
    eng.generate([req("a")])

    class Concurrent(ScriptedBackend):
        thread_safe = True

    Engine(EngineConfig(), None, backend=Concurrent(script)).generate([req("a")])
    assert seen == [True, False]


def test_each_batch_is_cached_before_its_crash_point(monkeypatch, tmp_path):
    eng, _ = scripted_engine(lambda r: r.messages[0]["content"], tmp_path, batch_size=2)
    cached_at_crash: list[int] = []
    monkeypatch.setattr(engine_mod, "crash_point",
                        lambda name: cached_at_crash.append(len(eng.cache.data)) if name == "engine_batch" else None)
    eng.generate([req(x) for x in "abcde"])
    assert cached_at_crash == [2, 4, 5]  # a kill there loses nothing already returned by the backend


def test_a_scripted_list_that_runs_out_says_so():
    eng, _ = scripted_engine(["only one"])
    with pytest.raises(AssertionError, match=r"no scripted output for its request 2 \(v1\)"):
        eng.generate([req("a"), req("b")])


# --- the LLM job loop (multihop, direct: one call per sample) -----------------------------------

MULTIHOP = MultihopTask(method="direct", min_chunks=2, max_chunks=2, chunk_chars=800, min_distance_frac=0.3,
                        max_retries=1)
GOOD_Q = {"question": "Who is named king in the first passage and killed in the second?", "answer": "Duncan."}
V = "multihop.v3"


def good_multihop(r: Request) -> str:
    return js(**GOOD_Q, evidence_1="P1.1", evidence_2="P2.1")


def test_bad_json_is_retried_once_then_made(tok, ctx):
    ran = run(tok, MULTIHOP, lambda r: good_multihop(r) if r.template_version.endswith("#try1") else "{not json",
              [ctx])
    assert ran.sent() == [f"{V}#try0", f"{V}#try1"]
    assert ran.backend.requests[0].messages == ran.backend.requests[1].messages  # the same prompt, a new key
    assert [s.id for s in ran.samples] == [f"multihop:{ctx.id}:0"]
    assert ran.lineage == {"in": 1, "out": 1, "dropped": {}, "notes": {"certificates": 1}} and ran.rejects == []
    assert set(ran.engine.seconds) == {"synthesize.multihop"}  # backend time charged to the stage


def test_bad_json_beyond_max_retries_is_dropped(tok, ctx):
    ran = run(tok, MULTIHOP, lambda r: '{"question": "Who?"}', [ctx])  # valid JSON, required keys missing
    assert ran.sent() == [f"{V}#try0", f"{V}#try1"]
    assert ran.samples == [] and ran.lineage == {"in": 1, "out": 0, "dropped": {"bad_json": 1}}
    assert ran.rejects == [("synthesize.multihop", "bad_json", f"multihop:{ctx.id}:0")]
    no_retry = run(tok, MULTIHOP.model_copy(update={"max_retries": 0}), ["garbage"], [ctx])
    assert no_retry.sent() == [f"{V}#try0"] and no_retry.lineage["dropped"] == {"bad_json": 1}


def test_each_round_sends_the_pending_jobs_of_all_contexts_together(tok):
    """A made at once, B on its retry, C never: two engine calls (3 then 2 requests)."""
    ctxs = [context(tok, (shakespeare_root() / "tragedies" / f"{p}.md").read_text()[:12000], src)
            for p, src in (("macbeth", "ctxA"), ("hamlet", "ctxB"), ("othello", "ctxC"))]

    def script(r: Request) -> str:
        prompt, retry = r.messages[0]["content"], r.template_version.endswith("#try1")
        if "(ctxA)" in prompt or ("(ctxB)" in prompt and retry):
            return good_multihop(r)
        return "{"

    ran = run(tok, MULTIHOP, script, ctxs)
    assert ran.backend.batches == [3, 2] and ran.engine.calls == 5
    assert [s.id for s in ran.samples] == ["multihop:ctx:ctxA:0:0", "multihop:ctx:ctxB:0:0"]
    assert ran.lineage == {"in": 3, "out": 2, "dropped": {"bad_json": 1}, "notes": {"certificates": 2}}
    assert ran.rejects == [("synthesize.multihop", "bad_json", "multihop:ctx:ctxC:0:0")]


def test_a_rerun_from_the_request_cache_sends_nothing_and_makes_the_same_samples(tok, ctx, tmp_path):
    script = lambda r: good_multihop(r) if r.template_version.endswith("#try1") else "{"  # noqa: E731
    first = run(tok, MULTIHOP, script, [ctx], cache=tmp_path)
    again = run(tok, MULTIHOP, [], [ctx], cache=tmp_path)  # an empty script: any request would fail
    assert again.backend.requests == [] and again.engine.calls == 0 and first.engine.calls == 2
    assert [s.to_row() for s in again.samples] == [s.to_row() for s in first.samples]
    assert again.lineage == first.lineage == {"in": 1, "out": 1, "dropped": {}, "notes": {"certificates": 1}}


# --- multihop (direct) outputs and drop reasons ---------------------------------------------------

def test_multihop_direct_schema_offers_each_passage_its_own_labels(tok, ctx):
    ran = run(tok, MULTIHOP, good_multihop, [ctx])
    (r,) = ran.backend.requests
    labels = labels_in(r.messages[0]["content"])
    props = r.schema["properties"]
    assert props["evidence_1"]["enum"] == [k for k in labels if k.startswith("P1.")]
    assert props["evidence_2"]["enum"] == [k for k in labels if k.startswith("P2.")]
    assert {"evidence_1", "evidence_2", "question", "answer"} == set(r.schema["required"])
    assert re.fullmatch(props["question"]["pattern"], GOOD_Q["question"])
    assert not re.fullmatch(props["question"]["pattern"], "Tell me about the king")


def test_multihop_good_output_points_at_the_cited_lines(tok, ctx):
    ran = run(tok, MULTIHOP, good_multihop, [ctx])
    (s,) = ran.samples
    labels = labels_in(ran.backend.requests[0].messages[0]["content"])
    assert [e.text for e in s.evidence] == [labels["P1.1"], labels["P2.1"]]
    assert_spans(s, ctx.text)
    assert s.context_text() == ctx.text and s.messages[1]["content"] == "Duncan."
    assert s.meta["template"] == V and s.meta["certificate"]["chunks"] == 2
    assert s.meta["certificate"]["window_holds_all"] is False
    assert ran.lineage == {"in": 1, "out": 1, "dropped": {}, "notes": {"certificates": 1}}


@pytest.mark.parametrize(("output", "reason"), [
    (GOOD_Q | {"question": "What do P1.1 and P2.1 say?"}, "degenerate_output"),
    (GOOD_Q | {"answer": "Duncan, as the JSON says."}, "degenerate_output"),
    (GOOD_Q | {"answer": ""}, "empty_output"),
])
def test_multihop_drop_reasons(tok, ctx, output, reason):
    ran = run(tok, MULTIHOP, [json.dumps(output | {"evidence_1": "P1.1", "evidence_2": "P2.1"})], [ctx])
    assert ran.samples == [] and ran.sent() == [f"{V}#try0"]  # a parsed output is not retried
    assert ran.lineage == {"in": 1, "out": 0, "dropped": {reason: 1}}
    assert ran.rejects == [("synthesize.multihop", reason, f"multihop:{ctx.id}:0")]


def test_multihop_without_room_sends_nothing(tok):
    short = context(tok, TEXT[:1500], "short")
    ran = run(tok, MULTIHOP.model_copy(update={"per_context": 2}), [], [short])
    assert ran.backend.requests == [] and ran.samples == []
    assert ran.lineage == {"in": 2, "out": 0, "dropped": {"no_room": 2}}
    assert [r[1:] for r in ran.rejects] == [("no_room", "multihop:ctx:short:0:0"), ("no_room", "multihop:ctx:short:0:1")]


# --- compare ------------------------------------------------------------------------------------

COMPARE = CompareTask(chunk_chars=800, max_retries=0)


def sides_for(r: Request) -> dict[str, str]:
    """A good output for a compare prompt: each side quotes words of its own passage."""
    content = r.messages[0]["content"]
    p1 = content.split("Passage 1:\n", 1)[1].split("\n\nPassage 2:", 1)[0]
    p2 = content.split("Passage 2:\n", 1)[1].split("\n\nWrite one", 1)[0]

    def sentence(p: str) -> str:
        words = [w for w in re.findall(r"[A-Za-z]{5,}", p)][:4]
        return f"It tells of {' and '.join(w.lower() for w in words)} here."
    return {"passage_1": sentence(p1), "passage_2": sentence(p2)}


def test_compare_topic_and_evidence_lines_are_chosen_in_code(tok, ctx):
    ran = run(tok, COMPARE, lambda r: json.dumps(sides_for(r)), [ctx])
    (r,) = ran.backend.requests
    assert r.template_version == "compare.v4#try0"
    assert r.schema["required"] == ["passage_1", "passage_2"]
    assert r.schema["properties"]["passage_1"] == {"type": "string", "pattern": SAYS_PATTERN}
    (s,) = ran.samples
    topic = s.meta["topic"]
    assert f'Both mention "{topic}"' in r.messages[0]["content"]
    (a1, b1), (a2, b2) = s.meta["chunks"]
    e1, e2 = s.evidence
    assert a1 <= e1.start < b1 and a2 <= e2.start < b2  # one line in each section, each naming the topic
    assert topic in e1.text and topic in e2.text and "\n" not in e1.text.strip()
    assert_spans(s, ctx.text)
    assert s.meta["writers"] == ["llm", "llm"] and s.meta["grounding"] == ["topic", "topic"]
    assert f"about {topic}?" in s.messages[0]["content"]
    out = json.loads(json.dumps(sides_for(r)))
    assert s.messages[1]["content"] == f"The first part: {out['passage_1']}\nThe second part: {out['passage_2']}"
    assert ran.lineage == {"in": 1, "out": 1, "dropped": {}, "notes": {"sides_llm": 2}}


@pytest.mark.parametrize("bad", [
    {"passage_1": "P1.3 says the king is dead here."},  # a line label (digits)
    {"passage_2": "[P2.1] The thane."},  # brackets
    {"passage_1": "short."},
    {"passage_2": None},
])
def test_compare_outputs_outside_the_schema_are_retried_then_bad_json(tok, ctx, bad):
    script = lambda r: json.dumps(sides_for(r) | bad)  # noqa: E731
    ran = run(tok, COMPARE.model_copy(update={"max_retries": 1}), script, [ctx])
    assert ran.sent() == ["compare.v4#try0", "compare.v4#try1"]
    assert ran.samples == [] and ran.lineage == {"in": 1, "out": 0, "dropped": {"bad_json": 1}}
    assert ran.rejects == [("synthesize.compare", "bad_json", f"compare:{ctx.id}:0")]


GENERIC = "This passage provides a more detailed explanation of the topic."


@pytest.mark.parametrize(("fallback", "side2", "writers", "lineage"), [
    ("quote", GENERIC, ["llm", "quote"], {"in": 1, "out": 1, "dropped": {}, "notes": {"sides_llm": 1, "sides_quote": 1}}),
    ("quote", None, ["llm", "quote"], {"in": 1, "out": 1, "dropped": {}, "notes": {"sides_llm": 1, "sides_quote": 1}}),
    ("none", GENERIC, None, {"in": 1, "out": 0, "dropped": {"ungrounded_output": 1}}),
])
def test_compare_a_side_not_about_its_section_is_quoted_or_dropped(tok, ctx, fallback, side2, writers, lineage):
    """A generic sentence (no two content words of its section), or one repeating side 1 (None
    here), is replaced by the section's line that names the topic, or drops the sample."""
    def script(r: Request) -> str:
        good = sides_for(r)
        return json.dumps(good | {"passage_2": side2 or good["passage_1"]})
    ran = run(tok, COMPARE.model_copy(update={"fallback": fallback}), script, [ctx])
    assert ran.lineage == lineage
    if writers is None:
        assert ran.samples == [] and ran.rejects == [("synthesize.compare", "ungrounded_output", f"compare:{ctx.id}:0")]
        return
    (s,) = ran.samples
    assert s.meta["writers"] == writers
    assert s.messages[1]["content"].endswith(f'The second part: it says "{s.evidence[1].text.strip()}"')


def test_compare_shared_topics_name_one_thing_in_each_section(ctx):
    text = ctx.text
    chunks = [(1000, 1800), (15000, 15800)]
    topics = shared_topics(text, chunks)
    assert topics
    for f1, f2 in topics:
        assert f1.answer == f2.answer and len(f1.answer) >= 4
        assert chunks[0][0] <= f1.start < chunks[0][1] and chunks[1][0] <= f2.start < chunks[1][1]
        assert text[f1.start:f1.end] == f1.answer and text[f2.start:f2.end] == f2.answer
        assert f1.answer.lower() not in {"that", "with", "self", "return", "shall", "thou", "thus"}
    t = "Orlando walks in the forest today.\n" + "a filler line that is long enough\n" * 3 + "Rosalind sings in the castle now.\n"
    assert shared_topics(t, [(0, 35), (len(t) - 34, len(t))]) == []
    t2 = t.replace("castle now", "forest now")
    assert [f.answer for f, _ in shared_topics(t2, [(0, 35), (len(t2) - 34, len(t2))])] == ["forest"]


def test_compare_without_a_shared_topic_is_dropped_with_that_reason(tok):
    lines = [f"Line {i} talks about subject{i} alone in this place." for i in range(400)]
    text = "\n".join(lines)
    ran = run(tok, COMPARE, [], [context(tok, text, "plain")])
    assert ran.backend.requests == [] and ran.lineage == {"in": 1, "out": 0, "dropped": {"no_shared_topic": 1}}


# --- LIFT QA and short-window QA ----------------------------------------------------------------

LIFT = LiftTask(segment_tokens=512, stride_tokens=384, qa_per_segment=2, max_qa_segments=1, max_retries=0)
QA_GOOD = {"question": "Who enters with the witches?", "answer": "Macbeth.", "evidence": ["P1.2"]}
SHORT = ShortQATask(per_context=1, window_tokens=512, qa_per_window=2, max_retries=0)


@pytest.mark.parametrize("cfg", [LIFT.model_copy(update={"memorize": False}), SHORT], ids=["lift", "short_qa"])
def test_qa_schema_offers_the_shown_labels_and_asks_for_a_question(tok, ctx, cfg):
    ran = run(tok, cfg, [js(qa=[QA_GOOD, QA_GOOD | {"question": "Where do they meet?"}])], [ctx])
    (r,) = ran.backend.requests
    assert r.template_version == "qa.v2#try0"
    item = r.schema["properties"]["qa"]["items"]
    assert item["properties"]["evidence"] == {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "string", "enum": list(labels_in(r.messages[0]["content"]))}}
    assert set(item["required"]) == {"question", "answer", "evidence"}
    pattern = item["properties"]["question"]["pattern"]
    for q in ("Who enters with the witches?", "Where does Duncan sleep?", "Name the castle of Macbeth?"):
        assert re.fullmatch(pattern, q), q
    for q in ("Summarize the passage", "who enters with the witches?", "Who enters?\nWho leaves?",
              'Who says "hail"?', "Who?", "Who enters?? Twice?", "W" + "o" * 140 + "?"):
        assert not re.fullmatch(pattern, q), q
    assert ran.lineage["dropped"] == {} and len(ran.samples) == ran.lineage["in"]


@pytest.mark.parametrize("bad", [
    {"evidence": ["P3.4"]},  # a label not shown
    {"evidence": ["P1.2", "P1.99999"]},
    {"evidence": []},
    {"evidence": "P1.2"},
    {"question": "Summarize the passage"},  # not a question: off the pattern
    {"question": "who enters with the witches?"},
    {"question": "Who enters\nwith the witches?"},
    {"answer": None},
])
def test_qa_outside_the_schema_is_retried_then_bad_json(tok, ctx, bad):
    cfg = LIFT.model_copy(update={"memorize": False, "max_retries": 1})
    ran = run(tok, cfg, [js(qa=[QA_GOOD, QA_GOOD | bad])] * 2, [ctx])  # one bad item spoils the output
    assert ran.sent() == ["qa.v2#try0", "qa.v2#try1"]
    assert ran.samples == [] and ran.lineage == {"in": 4, "out": 0, "dropped": {"bad_json": 4}}
    short = run(tok, SHORT, [js(qa=[QA_GOOD | bad])], [ctx])
    assert short.samples == [] and short.lineage == {"in": 2, "out": 0, "dropped": {"bad_json": 2}}


def test_lift_good_qa_and_missing_qa(tok, ctx):
    ran = run(tok, LIFT, [js(qa=[QA_GOOD])], [ctx])
    mem = [s for s in ran.samples if s.task == "lift_memorize"]
    qa = [s for s in ran.samples if s.task != "lift_memorize"]
    assert mem and ran.sent() == ["qa.v2#try0"]
    assert [s.task for s in qa] == ["lift_qa", "lift_qa_ctx"]
    line = labels_in(ran.backend.requests[0].messages[0]["content"])["P1.2"]
    for s in qa:
        assert [e.text for e in s.evidence] == [line] and s.messages[1]["content"] == "Macbeth."
        assert_spans(s, ctx.text)  # closed-book too: its offsets point into the context
    # 2 questions x 2 variants planned; the missing question drops both of its variants
    assert ran.lineage == {"in": len(mem) + 4, "out": len(mem) + 2, "dropped": {"missing_qa": 2}}
    assert [r[:2] for r in ran.rejects] == [("synthesize.lift", "missing_qa")] * 2
    # the rejects carry the ids the dropped samples would have had (they join to samples)
    assert sorted(r[2] for r in ran.rejects) == [f"lift_qa:{ctx.id}:0.1", f"lift_qa_ctx:{ctx.id}:0.1"]


def test_lift_degenerate_qa(tok, ctx):
    """A question in the schema's form can still leak the prompt's scaffolding (bad_qa)."""
    cfg = LIFT.model_copy(update={"memorize": False})
    bad = [QA_GOOD | {"question": "What does line P1.2 say?"}, QA_GOOD | {"evidence": ["P1.2", "P1.3", "P1.2"]}]
    ran = run(tok, cfg, [js(qa=bad)], [ctx])
    assert [s.task for s in ran.samples] == ["lift_qa", "lift_qa_ctx"]
    assert len(ran.samples[0].evidence) == 2  # a repeated label is one span
    assert ran.lineage == {"in": 4, "out": 2, "dropped": {"degenerate_output": 2}}


def test_short_qa_good_and_missing(tok, ctx):
    ran = run(tok, SHORT, [js(qa=[QA_GOOD | {"evidence": ["P1.1"]}])], [ctx])
    (s,) = ran.samples
    assert ran.sent() == ["qa.v2#try0"]
    line = labels_in(ran.backend.requests[0].messages[0]["content"])["P1.1"]
    assert s.task == "short_qa" and [e.text for e in s.evidence] == [line]
    assert_spans(s, s.context_text())  # offsets into the window, which is a slice of the context
    assert s.context_text() in ctx.text and s.context_tokens <= 512
    assert ran.lineage == {"in": 2, "out": 1, "dropped": {"missing_qa": 1}}
    assert [r[1] for r in ran.rejects] == ["missing_qa"]


def test_short_qa_empty_answer(tok, ctx):
    ran = run(tok, SHORT.model_copy(update={"qa_per_window": 1}), [js(qa=[QA_GOOD | {"answer": ""}])], [ctx])
    assert ran.samples == [] and ran.lineage == {"in": 1, "out": 0, "dropped": {"empty_output": 1}}


# --- judge and verification ---------------------------------------------------------------------

class Span(NamedTuple):  # a tuple with named fields: what make_sample takes as evidence
    text: str
    start: int
    end: int


def line_at(text: str, frac: float) -> Span:
    """The first non-empty line at or after ``frac`` of ``text``."""
    a = text.index("\n", int(frac * len(text))) + 1
    while not text[a:text.index("\n", a)].strip():
        a = text.index("\n", a) + 1
    return Span(text[a:text.index("\n", a)], a, text.index("\n", a))


def qa_sample(tok, ctx: Context, index: int, question: str, answer: str, task: str = "multihop") -> Sample:
    ev = [line_at(ctx.text, 0.1), line_at(ctx.text, 0.9)] if task != "summary" else []
    return make_sample(task=task, index=index, ctx=ctx, text=ctx.text, parts=ctx.parts, question=question,
                       answer=answer, evidence=ev, tok=tok, short_max_tokens=2048)


def test_judge_drops_low_scores_and_keeps_unparsable(tok, ctx):
    samples = [qa_sample(tok, ctx, 0, "Who is low?", "A."), qa_sample(tok, ctx, 1, "Who is high?", "B."),
               qa_sample(tok, ctx, 2, "Who is garbled?", "C."), qa_sample(tok, ctx, 3, "Summarize.", "D.", "summary")]
    verdicts = {"low": js(score=3, reason="vague"), "high": js(score=8, reason="clear"), "garbled": "score: 9"}

    def script(r: Request) -> str:
        assert r.template_version == "judge.v1" and r.temperature == 0.0
        return next(v for k, v in verdicts.items() if f"Who is {k}?" in r.messages[0]["content"])

    ran = run(tok, JudgeFilter(enabled=True, min_score=5), script, samples)
    assert len(ran.backend.requests) == 3  # the summary is not a QA task: not judged
    assert [s.id for s in ran.samples] == [samples[i].id for i in (1, 2, 3)]
    assert samples[1].meta["judge"] == {"score": 8, "reason": "clear"} and samples[2].meta["judge"] is None
    assert "judge" not in samples[3].meta
    assert ran.lineage == {"in": 3, "out": 2, "dropped": {"low_judge_score": 1},  # in: the samples it judged
                           "notes": {"score_03": 1, "score_08": 1, "unparsable_kept": 1}}
    assert ran.rejects == [("judge", "low_judge_score", samples[0].id)]


# question -> the answers the scripted engine gives (closed-book, every local window, full context)
VERIFY_CASES = {
    "Who is answerable closed-book?": ("Banquo", "nobody", "Banquo", "answerable_closed_book"),
    "Who is answerable locally?": ("nobody", "Ross", "Ross", "answerable_locally"),
    "Who fails with the full context?": ("nobody", "nobody", "nobody", "full_context_fails"),
    "Who needs the whole play?": ("nobody", "nobody", "Fleance", None),
}


def verify_script(r: Request) -> str:
    kind = r.template_version.removeprefix("verify.v1:")
    question = r.messages[0]["content"].rsplit(DOC_CLOSE, 1)[-1].removesuffix(BRIEF)
    closed, local, full, _ = VERIFY_CASES[question]
    return {"closed": closed, "local": local, "full": full}[kind]


def verify_samples(tok, ctx: Context) -> list[Sample]:
    return [qa_sample(tok, ctx, i, q, v[2] if v[3] != "full_context_fails" else "Macduff")
            for i, (q, v) in enumerate(VERIFY_CASES.items())]


def test_verify_drop_reasons_in_turn_and_kept_scores(tok, ctx):
    samples = verify_samples(tok, ctx)
    unchecked = qa_sample(tok, ctx, 9, "Summarize.", "It ends.", task="summary")  # not a verified task
    cfg = VerifyFilter(enabled=True, metric="em")
    ran = run(tok, cfg, verify_script, [*samples, unchecked])
    wins = [len(local_windows(s, tok, cfg.window_tokens, cfg.max_windows)) for s in samples]
    assert all(n >= 1 for n in wins)
    kinds = [v.removeprefix("verify.v1:") for v in ran.sent()]
    assert kinds.count("closed") == kinds.count("full") == 4 and kinds.count("local") == sum(wins)
    assert all(r.temperature == 0.0 for r in ran.backend.requests)
    assert [s.id for s in ran.samples] == [samples[3].id, unchecked.id]
    assert ran.lineage == {  # in: the 4 samples it checked (the summary passes uncounted)
        "in": 4, "out": 1,
        "dropped": {"answerable_closed_book": 1, "answerable_locally": 1, "full_context_fails": 1},
        "notes": {"answerable_closed_book": 1, "answerable_locally": 1, "checked": 4, "full_context_fails": 1}}
    assert [r[1:] for r in ran.rejects] == [(v[3], s.id) for s, v in zip(samples, VERIFY_CASES.values()) if v[3]]
    assert {k: samples[3].meta["verify"][k] for k in ("metric", "closed", "local", "full")} == \
        {"metric": "em", "closed": 0.0, "local": 0.0, "full": 1.0}
    assert samples[3].meta["verify"]["answers"] == {"closed": "nobody", "full": "Fleance"}
    assert "verify" not in unchecked.meta


def test_verify_without_require_full_keeps_a_failing_full_answer(tok, ctx):
    samples = verify_samples(tok, ctx)
    ran = run(tok, VerifyFilter(enabled=True, metric="em", require_full=False), verify_script, samples)
    assert [s.id for s in ran.samples] == [samples[2].id, samples[3].id]
    assert ran.lineage["dropped"] == {"answerable_closed_book": 1, "answerable_locally": 1}


def test_verify_with_the_engine_as_answer_matcher(tok, ctx):
    """metric llm: the engine judges each answer against the reference; identical judgements
    are sent once, and an unparsable verdict counts as a wrong answer (and is noted)."""
    (s,) = verify_samples(tok, ctx)[3:]

    def script(r: Request) -> str:
        if r.template_version.startswith("verify.v1:"):
            return verify_script(r)
        assert r.template_version == "answer_match.v1" and r.temperature == 0.0
        cand = r.messages[0]["content"].split("Candidate answer: ", 1)[1].split("\n", 1)[0]
        return js(correct=True) if cand == "Fleance" else "maybe"

    ran = run(tok, VerifyFilter(enabled=True, metric="llm"), script, [s])
    n_local = ran.sent().count("verify.v1:local")
    # closed and every local window answered "nobody": one identical match request for all of them
    assert ran.sent().count("answer_match.v1") == 2 and n_local >= 1
    assert ran.samples == [s] and {k: s.meta["verify"][k] for k in ("metric", "closed", "local", "full")} == \
        {"metric": "llm", "closed": 0.0, "local": 0.0, "full": 1.0}
    assert ran.lineage == {"in": 1, "out": 1, "dropped": {},
                           "notes": {"checked": 1, "match_unparsable": 1 + n_local}}


def test_verify_drops_a_sample_whose_full_context_prompt_does_not_fit(tok, ctx):
    (s,) = verify_samples(tok, ctx)[3:]
    ran = run(tok, VerifyFilter(enabled=True, metric="em"), [], [s], max_model_len=1024)
    assert ran.backend.requests == [] and ran.samples == []
    assert ran.lineage == {"in": 1, "out": 0, "dropped": {"prompt_too_long": 1}}
    assert ran.rejects == [("verify", "prompt_too_long", s.id)]


# --- prompts that do not fit the engine's window --------------------------------------------

def test_the_engine_measures_prompts_with_the_chat_template_to_the_token(tok):
    r = Request([{"role": "user", "content": PLAY[:3000]}], None, "v1", 100)
    n = len(tok.encode(tok.render(r.messages, add_generation_prompt=True)))
    assert n > len(tok.encode(PLAY[:3000]))  # the template's tokens count too
    eng, backend = scripted_engine(["out"], None, tok, max_model_len=n + 100)
    assert eng.prompt_tokens([r]) == [n] and eng.too_long([r]) == [None]
    assert eng.generate([r]) == ["out"]
    short, backend = scripted_engine(["out"], None, tok, max_model_len=n + 99)
    assert short.too_long([r]) == [f"prompt of {n:,} tokens + 100 output tokens > engine.max_model_len {n + 99:,}"]
    with pytest.raises(engine_mod.PromptTooLong, match="Engine.too_long"):
        short.generate([r], who="test")
    assert backend.requests == [] and short.calls == 0  # never sent


def test_an_llm_prompt_longer_than_the_window_is_dropped_not_sent(tok, ctx):
    """Two contexts; the source name is quoted in every prompt, so one context's prompts are
    2,000 tokens longer: its sample is dropped (prompt_too_long, never retried or sent), the
    other is made as usual, and the shard goes on."""
    other = context(tok, TEXT, "B" + " longname" * 2000)
    fits = max(scripted_engine([], None, tok)[0].prompt_tokens([r])[0]
               for r in run(tok, COMPARE, lambda r: json.dumps(sides_for(r)), [ctx]).backend.requests)
    window = fits + COMPARE.max_tokens + 10
    ran = run(tok, COMPARE.model_copy(update={"max_retries": 2}), lambda r: json.dumps(sides_for(r)), [other, ctx],
              max_model_len=window)
    assert [s.context_id for s in ran.samples] == [ctx.id]
    assert ran.sent() == ["compare.v4#try0"] and "longname" not in ran.backend.requests[0].messages[0]["content"]
    assert ran.lineage == {"in": 2, "out": 1, "dropped": {"prompt_too_long": 1}, "notes": {"sides_llm": 2}}
    assert ran.rejects == [("synthesize.compare", "prompt_too_long", f"compare:{other.id}:0")]


@pytest.mark.parametrize(("window", "made"), [(4096, True), (2048, False)])
def test_a_summary_section_too_long_for_the_window_is_halved_then_dropped(tok, ctx, window, made):
    """A section whose prompt does not fit (here: a planner that believes every one does) fails
    like any other: it is halved (``resplit_depth``), and when its halves do not fit either the
    context's summary is dropped once, prompt_too_long; nothing too long is ever sent."""
    from lcdata.config import SummaryTask

    out = js(summary="Macbeth meets three witches on a heath, and later murders King Duncan in his sleep.")
    eng, backend = scripted_engine(lambda r: out, None, tok, max_model_len=window)
    stage = make_stage(SummaryTask(sections=1, max_section_chars=30000, resplit_depth=1), eng, tok)
    stage._fitted = lambda ctx, secs: secs  # type: ignore[method-assign]
    lin, sink = Lineage(), RejectSink(None)
    samples = list(stage.bind(lin, sink).run([ctx]))
    assert all(n + r.max_tokens <= window for n, r in zip(eng.prompt_tokens(backend.requests), backend.requests,
                                                          strict=True))
    if made:
        (s,) = samples
        assert s.meta["resplit"] == ["1"] and len(s.meta["leaves"]) == 2
        assert [r.template_version for r in backend.requests] == ["summary_section.v1#try0"] * 2 + \
            ["summary_global.v1#try0"]
        assert lin.to_json()[stage.name] == {"in": 1, "out": 1, "dropped": {}}
        return
    assert samples == [] and backend.requests == []
    assert lin.to_json()[stage.name] == {"in": 1, "out": 0, "dropped": {"prompt_too_long": 1}}
    assert [(r["reason"], r["record_id"]) for r in sink.rows] == [("prompt_too_long", f"summary:{ctx.id}:0")]


def test_generate_fitting_sends_what_fits_and_measures_each_prompt_once(tok, tmp_path, monkeypatch):
    """`Engine.generate_fitting`: outputs in request order, None (and the reason) for a prompt that
    does not fit the window, which is never sent; `generate`'s own check reuses the counts."""
    eng, backend = scripted_engine(lambda r: "ok", tmp_path, tok=tok, max_model_len=256, max_tokens=16)
    short = Request([{"role": "user", "content": "Hi"}], None, "t", 16)
    long_ = Request([{"role": "user", "content": "sea bread " * 200}], None, "t", 16)
    counted: list[int] = []
    measure = eng.tokenizer  # the engine model's own (a local directory here)
    real = measure.count
    monkeypatch.setattr(measure, "count", lambda texts: counted.append(len(texts)) or real(texts))
    outs, why = eng.generate_fitting([short, long_, short])
    assert outs == ["ok", None, "ok"] and why[0] is None and why[2] is None
    assert why[1].startswith("prompt of ") and why[1].endswith("> engine.max_model_len 256")
    assert [r.messages for r in backend.requests] == [short.messages]  # the long one never sent
    assert counted == [2]  # two distinct prompts, counted once, not again inside generate
