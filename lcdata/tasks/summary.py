"""Map-reduce global summaries: every section of a context summarized alone, then the section
summaries combined into one. Works for contexts longer than the generator's own window."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lcdata.config import SummaryTask
from lcdata.schema import Context, Sample, sample_id
from lcdata.stage import Planned
from lcdata.tasks.base import line_start_near, make_sample
from lcdata.tasks.synth import MIN_OUTPUT_CHARS, Job, LLMStage, template

SUMMARY_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string", "maxLength": 900}},
    "required": ["summary"],
    "additionalProperties": False,
}


def sections_of(text: str, n_min: int, max_chars: int) -> list[tuple[int, int]]:
    """Consecutive line-aligned sections covering ``text``: at least ``n_min``, each about
    ``<= max_chars``."""
    n = max(n_min, math.ceil(len(text) / max_chars))
    cuts = sorted({0, *(line_start_near(text, len(text) * k // n) for k in range(1, n)), len(text)})
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]


class SummaryStage(LLMStage):
    """Map-reduce global summary: every section summarized alone, then the section summaries
    combined. Works for contexts longer than the generator's own window."""

    kind, Config = "summary", SummaryTask

    MAP, REDUCE = "summary_section.v1", "summary_global.v1"
    QUESTION = "Summarize the whole document in one paragraph."

    def plan(self, ctx: Context) -> Iterator[Sample | Job | Planned]:
        if self.cfg.per_context < 1:
            return
        secs = sections_of(ctx.text, self.cfg.sections, self.cfg.max_section_chars)
        state = SummaryState(ctx, sample_id("summary", ctx.id, 0), secs, [None] * len(secs))
        tpl = template(self.MAP)
        for i, (a, b) in enumerate(secs):
            prompt = tpl.format(i=i + 1, n=len(secs), source=ctx.source, section=ctx.text[a:b].strip())
            # the context's one planned sample is counted on its first section job only
            yield Job([state.sample_id] if i == 0 else [], self.user(prompt), self.MAP, SUMMARY_SCHEMA,
                      self.cfg.max_tokens, self._section, SectionOf(state, i), on_fail=self._failed)

    def _failed(self, j: Job[SectionOf], text: str) -> None:
        st = j.data.state
        if not st.failed:
            st.failed = True
            self.drop(st.sample_id, "bad_json", f"section {j.data.i + 1}: no valid JSON after {j.attempt + 1} attempts",
                      {"output": text[:2000]})

    def _section(self, j: Job[SectionOf], obj: dict[str, Any]) -> Iterator[Job[SummaryState]]:
        st = j.data.state
        st.summaries[j.data.i] = str(obj["summary"]).strip()
        if st.failed or any(s is None for s in st.summaries):
            return
        ctx = st.ctx
        listing = "\n\n".join(f"Section {k + 1}: {s}" for k, s in enumerate(st.summaries))
        prompt = template(self.REDUCE).format(n=len(st.summaries), source=ctx.source, summaries=listing)
        yield Job([st.sample_id], self.user(prompt), self.REDUCE, SUMMARY_SCHEMA, self.cfg.max_tokens, self._whole, st)

    def _whole(self, j: Job[SummaryState], obj: dict[str, Any]) -> Iterator[Sample]:
        st = j.data
        ctx, summary = st.ctx, str(obj["summary"]).strip()
        if len(summary) < MIN_OUTPUT_CHARS:
            self.drop(st.sample_id, "empty_output", f"summary of {len(summary)} chars", {"output": obj})
            return
        yield make_sample(
            task="summary", index=0, ctx=ctx, text=ctx.text, parts=ctx.parts, question=self.QUESTION,
            answer=summary, evidence=[], tok=self.tok, short_max_tokens=self.short_max,
            meta=self.meta(f"{self.MAP}+{self.REDUCE}", sections=st.sections, section_summaries=st.summaries),
        )


@dataclass
class SummaryState:
    """One context's map-reduce summary: its sections and their summaries as they come in."""

    ctx: Context
    sample_id: str
    sections: list[tuple[int, int]]
    summaries: list[str | None]
    failed: bool = False


@dataclass
class SectionOf:
    state: SummaryState
    i: int
