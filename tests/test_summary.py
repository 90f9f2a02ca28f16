"""The global summary (``lcdata.tasks.summary``) without a model: sections (map), then the
section summaries reduced in a tree whose every prompt fits the engine window; retries,
re-split sections and drop reasons (truncated, bad_json, degenerate_output, no_room), with
the LLM stages' accounting (one planned sample per context: made, or dropped once) checked
by ``run`` on every case. A ``ScriptedBackend`` answers each request by its template version
and the section label its prompt quotes ("Below is section 2.1 of 3")."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from test_llm_paths import TEXT, Ran, context, js, run

from lcdata.config import SummaryTask
from lcdata.engine import Engine, EngineConfig, Request
from lcdata.read.corpora import shakespeare_root
from lcdata.schema import Context
from lcdata.stage import Lineage, RejectSink
from lcdata.tasks.summary import SummaryStage, halves, sections_of
from lcdata.tasks.synth import Job

SUMMARY = SummaryTask(sections=3, max_section_chars=8000, max_retries=1)
WHOLE = "Witches promise Macbeth the crown; he kills King Duncan and rules in fear."
LOOP = "The 4th section is about the king and his men. " * 8  # what small models write at length
CUT = '{"summary": "' + "Macbeth and Banquo meet the witches on the heath, " * 60  # ran into max_tokens
Answer = Callable[[str, int, Request], str]  # (section label or "a-b" range, attempt, request) -> output


@pytest.fixture(scope="module")
def ctx(tok) -> Context:
    return context(tok, TEXT, "ctxS")


def script(section: Answer | None = None, part: Answer | None = None, final: Answer | None = None) -> Callable[[Request], str]:
    """Good outputs unless ``section`` / ``part`` / ``final`` say otherwise (None: the good one)."""
    def good(what: str) -> str:
        return js(summary=f"Summary of {what}.")

    def answer(r: Request) -> str:
        prompt, attempt = r.messages[0]["content"], int(r.template_version.rsplit("#try", 1)[1])
        if r.template_version.startswith("summary_global"):
            return (final and final("all", attempt, r)) or js(summary=WHOLE)
        if r.template_version.startswith("summary_part"):
            a, b = re.search(r"sections (\S+) to (\S+) \(of", prompt).groups()  # type: ignore[union-attr]
            return (part and part(f"{a}-{b}", attempt, r)) or good(f"sections {a}-{b}")
        name = re.search(r"Below is section ([\d.]+) of", prompt).group(1)  # type: ignore[union-attr]
        return (section and section(name, attempt, r)) or good(f"section {name}")
    return answer


def rejects_once(ran: Ran, reason: str, ctx: Context) -> None:
    assert ran.samples == [] and ran.lineage == {"in": 1, "out": 0, "dropped": {reason: 1}}
    assert ran.rejects == [("synthesize.summary", reason, f"summary:{ctx.id}:0")]


# --- one prompt: map, then a single reduce --------------------------------------------------

def test_summary_maps_then_reduces_into_one_sample(tok, ctx):
    ran = run(tok, SUMMARY, script(), [ctx])
    assert ran.sent() == ["summary_section.v1#try0"] * 3 + ["summary_global.v1#try0"]
    assert ran.backend.batches == [3, 1]
    assert "Section 3: Summary of section 3." in ran.backend.requests[3].messages[0]["content"]
    (s,) = ran.samples
    assert s.task == "summary" and s.messages[1]["content"] == WHOLE and s.context_text() == ctx.text
    assert s.meta["section_summaries"] == [f"Summary of section {i}." for i in (1, 2, 3)]
    assert s.meta["tree"] == [3, 1] and s.meta["reduce_levels"] == 1 and s.meta["resplit"] == []
    assert s.meta["leaves"] == s.meta["sections"] and s.meta["template"] == "summary_section.v1+summary_global.v1"
    assert s.meta["model"] == ran.backend.model and ran.backend.model.startswith("scripted:")
    assert ran.lineage == {"in": 1, "out": 1, "dropped": {}}


def test_plan_counts_the_sample_on_the_first_job_and_follow_ups_carry_none(tok, ctx):
    lin = Lineage()
    st = SummaryStage(SUMMARY, Engine(EngineConfig()), tok, 0, 2048).bind(lin, RejectSink(None))
    secs = sections_of(ctx.text, 3, 8000)
    assert secs[0][0] == 0 and secs[-1][1] == len(ctx.text) and all(a < b for a, b in secs)
    assert all(b == c for (_, b), (c, _) in zip(secs, secs[1:]))  # consecutive, nothing lost
    assert len(sections_of(ctx.text, 1, 5000)) == 4  # more sections when they would be too long
    jobs = list(st.plan(ctx))
    assert len(jobs) == 3 and [len(j.sample_ids) for j in jobs] == [1, 0, 0]  # one sample, counted once
    follow: list[Job] = []
    for i, j in enumerate(jobs):
        follow += list(j.handle(j, {"summary": f"Section {i} summary."}))
    assert len(follow) == 1 and follow[0].sample_ids == []  # the reduce job comes once every section is in
    assert "Section 3: Section 2 summary." in follow[0].messages[0]["content"]
    (s,) = follow[0].handle(follow[0], {"summary": "Macbeth meets witches, kills the king and falls."})
    assert s.task == "summary" and s.messages[1]["content"].startswith("Macbeth") and s.context_text() == ctx.text
    assert [tuple(x) for x in s.meta["sections"]] == secs


def test_halves_are_line_aligned_and_cover_the_piece():
    a, b = 100, 5000
    (x, m), (m2, y) = halves(TEXT, a, b)  # type: ignore[misc]
    assert (x, y) == (a, b) and m == m2 and a < m < b and TEXT[m - 1] == "\n"
    assert halves("one line without breaks", 0, 23) == [(0, 9), (9, 23)]  # at a space when it is one line
    assert halves("word\n\n\n", 0, 7) is None  # a blank half is no half


# --- at length: every prompt fits, the reduce is a tree ----------------------------------------

@pytest.fixture(scope="module")
def long_ctx(tok) -> Context:
    root = shakespeare_root() / "tragedies"
    text = "".join((root / f).read_text() for f in ("hamlet.md", "king-lear.md", "macbeth.md"))[:400_000]
    c = context(tok, text, "long")
    assert 120_000 <= c.n_tokens <= 140_000  # about 128K tokens of real text
    return c


def quoting(n_chars: int) -> Callable[[str, int, Request], str]:
    """Section summaries of ``n_chars`` quoted from the section (real text: never repetitive)."""
    def answer(name: str, attempt: int, r: Request) -> str:
        body = r.messages[0]["content"].split("\n\n", 1)[1]
        return js(summary=" ".join(body.split())[:n_chars])
    return answer


def assert_prompts_fit(ran: Ran, tok, max_model_len: int) -> None:
    """Every request, chat template included, plus its output cap fits the engine window."""
    sizes = tok.count([tok.render(r.messages, add_generation_prompt=True) for r in ran.backend.requests])
    assert max(n + r.max_tokens for n, r in zip(sizes, ran.backend.requests)) <= max_model_len


def test_a_128k_context_reduces_in_a_tree_of_prompts_that_fit_8k(tok, long_ctx):
    ctx = long_ctx
    ran = run(tok, SummaryTask(max_reduce_inputs=None), script(section=quoting(700)), [ctx], max_model_len=8192)
    assert_prompts_fit(ran, tok, 8192)
    (s,) = ran.samples
    n = len(s.meta["sections"])
    assert n >= 60 and s.meta["tree"][0] == n and s.meta["reduce_levels"] >= 2  # too many summaries for one prompt
    assert s.meta["tree"] == [n, 2, 1] and s.meta["template"] == "summary_section.v1+summary_part.v1+summary_global.v1"
    parts = [r for r in ran.backend.requests if r.template_version.startswith("summary_part")]
    assert len(parts) == 2 and f"sections 1 to {n // 2} (of {n})" in parts[0].messages[0]["content"]
    final = ran.backend.requests[-1].messages[0]["content"]
    assert f"Sections 1-{n // 2}: Summary of sections 1-{n // 2}." in final
    assert ran.lineage == {"in": 1, "out": 1, "dropped": {}}
    # the default: at most 8 summaries per reduce prompt, however many would fit
    ran = run(tok, SummaryTask(), script(section=quoting(700)), [ctx], max_model_len=8192)
    assert ran.samples[0].meta["tree"] == [n, 9, 2, 1]


def test_sections_too_long_for_the_window_are_halved_until_they_fit(tok, long_ctx):
    ctx = long_ctx
    cfg = SummaryTask(max_section_chars=100_000)  # ~32K tokens a section
    ran = run(tok, cfg, script(), [ctx], max_model_len=8192)
    assert_prompts_fit(ran, tok, 8192)
    (s,) = ran.samples
    assert len(s.meta["sections"]) >= 4 * len(sections_of(ctx.text, cfg.sections, cfg.max_section_chars))
    assert s.meta["sections"][0][0] == 0 and s.meta["sections"][-1][1] == len(ctx.text)
    assert all(b == c for (_, b), (c, _) in zip(s.meta["sections"], s.meta["sections"][1:]))


def test_max_reduce_inputs_makes_a_deeper_tree_and_passes_single_groups_up(tok, ctx):
    ran = run(tok, SummaryTask(sections=5, max_section_chars=8000, max_reduce_inputs=2), script(), [ctx])
    (s,) = ran.samples
    assert s.meta["tree"] == [5, 3, 2, 1] and s.meta["reduce_levels"] == 3
    assert ran.sent() == ["summary_section.v1#try0"] * 5 + ["summary_part.v1#try0"] * 3 + ["summary_global.v1#try0"]
    final = ran.backend.requests[-1].messages[0]["content"]
    assert "Section 1: Summary of section 1.\n\nSections 2-5: Summary of sections 2-5." in final


def test_a_window_too_small_for_any_prompt_drops_no_room_at_plan(tok, ctx):
    ran = run(tok, SUMMARY, script(), [ctx], max_model_len=300)
    assert ran.backend.requests == []
    rejects_once(ran, "no_room", ctx)


# --- failures: retries, re-split, one drop with its reason --------------------------------------

def test_a_repetitive_section_is_retried(tok, ctx):
    ran = run(tok, SUMMARY, script(section=lambda name, attempt, r: js(summary=LOOP) if (name, attempt) == ("2", 0)
                                   else None), [ctx])
    assert ran.sent().count("summary_section.v1#try1") == 1 and ran.lineage["out"] == 1
    assert ran.samples[0].meta["resplit"] == []


def test_a_section_still_repetitive_is_resplit_and_the_summary_made(tok, ctx):
    ran = run(tok, SUMMARY, script(section=lambda name, attempt, r: js(summary=LOOP) if name == "2" else None), [ctx])
    assert ran.sent() == (["summary_section.v1#try0"] * 3 + ["summary_section.v1#try1"]
                          + ["summary_section.v1#try0"] * 2 + ["summary_global.v1#try0"])
    (s,) = ran.samples
    assert s.meta["resplit"] == ["2"] and s.meta["tree"] == [4, 1]
    assert s.meta["section_summaries"] == [f"Summary of section {x}." for x in ("1", "2.1", "2.2", "3")]
    (a, b), (h1, h2) = s.meta["sections"][1], s.meta["leaves"][1:3]
    assert (h1[0], h1[1], h2[1]) == (a, h2[0], b)  # the halves cover the section, in order
    assert "Section 2.1: Summary of section 2.1.\n\nSection 2.2:" in ran.backend.requests[-1].messages[0]["content"]
    assert ran.lineage == {"in": 1, "out": 1, "dropped": {}}


def test_a_section_failing_in_both_halves_drops_the_summary_once(tok, ctx):
    ran = run(tok, SUMMARY, script(section=lambda name, attempt, r: "{" if name.startswith("2") else None), [ctx])
    assert ran.sent() == (["summary_section.v1#try0"] * 3 + ["summary_section.v1#try1"]
                          + ["summary_section.v1#try0"] * 2 + ["summary_section.v1#try1"] * 2)  # no reduce
    rejects_once(ran, "bad_json", ctx)


def test_one_failed_half_is_enough_to_drop(tok, ctx):
    ran = run(tok, SUMMARY, script(section=lambda name, attempt, r: js(summary=LOOP) if name in ("2", "2.2") else None),
              [ctx])
    assert "summary_global.v1#try0" not in ran.sent()
    rejects_once(ran, "degenerate_output", ctx)


def test_resplit_depth_0_drops_the_first_failed_section(tok, ctx):
    cfg = SUMMARY.model_copy(update={"resplit_depth": 0})
    ran = run(tok, cfg, script(section=lambda name, attempt, r: "{" if name == "2" else None), [ctx])
    assert ran.sent() == ["summary_section.v1#try0"] * 3 + ["summary_section.v1#try1"]
    rejects_once(ran, "bad_json", ctx)


def test_resplit_depth_2_halves_the_halves(tok, ctx):
    cfg = SUMMARY.model_copy(update={"resplit_depth": 2})
    ran = run(tok, cfg, script(section=lambda name, attempt, r: "{" if name in ("2", "2.1", "2.2") else None), [ctx])
    (s,) = ran.samples
    assert s.meta["resplit"] == ["2", "2.1", "2.2"] and s.meta["tree"] == [6, 1]
    assert s.meta["section_summaries"][1:5] == [f"Summary of section 2.{a}.{b}." for a in (1, 2) for b in (1, 2)]


def test_a_truncated_section_drops_truncated_not_bad_json(tok, ctx):
    ran = run(tok, SUMMARY, script(section=lambda name, attempt, r: CUT if name.startswith("3") else None), [ctx])
    assert ran.sent().count("summary_section.v1#try1") == 3  # section 3, then both its halves
    rejects_once(ran, "truncated", ctx)


def test_a_truncated_final_summary_drops_truncated(tok, ctx):
    ran = run(tok, SUMMARY, script(final=lambda *_: CUT), [ctx])
    assert ran.sent()[-2:] == ["summary_global.v1#try0", "summary_global.v1#try1"]
    rejects_once(ran, "truncated", ctx)


def test_a_repetitive_final_summary_is_retried_then_dropped_degenerate(tok, ctx):
    ran = run(tok, SUMMARY, script(final=lambda *_: js(summary=LOOP)), [ctx])
    assert ran.sent()[-2:] == ["summary_global.v1#try0", "summary_global.v1#try1"]
    rejects_once(ran, "degenerate_output", ctx)
    ok = run(tok, SUMMARY, script(final=lambda _, attempt, r: js(summary=LOOP) if attempt == 0 else None), [ctx])
    assert ok.samples[0].messages[1]["content"] == WHOLE


def test_a_repetitive_intermediate_summary_drops_degenerate(tok, ctx):
    cfg = SummaryTask(sections=4, max_section_chars=8000, max_reduce_inputs=2)
    ran = run(tok, cfg, script(part=lambda rng, attempt, r: js(summary=LOOP) if rng == "3-4" else None), [ctx])
    assert ran.sent().count("summary_part.v1#try1") == 1 and "summary_global.v1#try0" not in ran.sent()
    rejects_once(ran, "degenerate_output", ctx)


def test_a_section_summary_of_the_wrong_type_is_a_bad_output(tok, ctx):
    """{"summary": null} parses as JSON but is not the schema's string: retried, re-split, then
    dropped (not fed to the reduce step as the text "None")."""
    ran = run(tok, SUMMARY, script(section=lambda name, attempt, r: js(summary=None) if name.startswith("2") else None),
              [ctx])
    assert "summary_global.v1#try0" not in ran.sent()
    rejects_once(ran, "bad_json", ctx)


def test_summary_too_short_is_dropped(tok, ctx):
    ran = run(tok, SUMMARY, script(final=lambda *_: js(summary="Ok.")), [ctx])
    rejects_once(ran, "empty_output", ctx)


def test_contexts_fail_independently(tok, ctx):
    other = context(tok, TEXT[:12000], "ctxT")
    ran = run(tok, SUMMARY, script(section=lambda name, attempt, r: "{" if "(ctxT)" in r.messages[0]["content"]
                                   else None), [ctx, other])
    assert [s.context_id for s in ran.samples] == [ctx.id]
    assert ran.lineage == {"in": 2, "out": 1, "dropped": {"bad_json": 1}}
    assert ran.rejects == [("synthesize.summary", "bad_json", f"summary:{other.id}:0")]
