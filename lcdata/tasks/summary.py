"""Global summaries of contexts longer than the generator's window: every section summarized
alone (map), then the section summaries combined (reduce) in groups that fit the window, and
those again, until one summary of the whole remains (a tree)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lcdata.config import SummaryTask
from lcdata.schema import Context, Sample, sample_id
from lcdata.stage import Planned
from lcdata.tasks.base import line_start_near, make_sample
from lcdata.tasks.synth import MIN_OUTPUT_CHARS, Job, LLMStage, repetitive, template

SUMMARY_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string", "maxLength": 900}},
    "required": ["summary"],
    "additionalProperties": False,
}
CHAT_MARGIN = 64  # tokens a prompt may gain from the chat template (SmolLM2's adds ~30)
Span = tuple[int, int]
Path = tuple[int, ...]  # a section (i,), or the halves of one re-split: (i, 0), (i, 1), (i, 0, 1), ...
Item = tuple[str, str, str]  # a summary in a reduce: (first section label, last section label, text)


def sections_of(text: str, n_min: int, max_chars: int) -> list[Span]:
    """Consecutive line-aligned sections covering ``text``: at least ``n_min``, each about
    ``<= max_chars``."""
    n = max(n_min, math.ceil(len(text) / max_chars))
    cuts = sorted({0, *(line_start_near(text, len(text) * k // n) for k in range(1, n)), len(text)})
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]


def halves(text: str, a: int, b: int) -> list[Span] | None:
    """``text[a:b]`` cut in two at the line start nearest its middle (at a space if it is one
    line), or None when either half would be blank."""
    piece = text[a:b]
    m = line_start_near(piece, len(piece) // 2)
    if not 0 < m < len(piece):
        m = piece.rfind(" ", 0, len(piece) // 2) + 1 or piece.find(" ", len(piece) // 2) + 1
    if not 0 < m < len(piece) or not piece[:m].strip() or not piece[m:].strip():
        return None
    return [(a, a + m), (a + m, b)]


def label(path: Path) -> str:
    """A section's name in prompts and meta: ``3``, its halves ``3.1`` and ``3.2``."""
    return ".".join(str(p + 1) for p in path)


class SummaryStage(LLMStage):
    """Global summary of a context of any length, one planned sample per context.

    Map: the context in line-aligned sections (at least ``sections``, at most
    ``max_section_chars``, halved further until each prompt plus ``max_tokens`` fits the
    engine's ``max_model_len``), each summarized alone. A section whose summary is invalid,
    truncated or repetitive after ``max_retries`` is halved (``resplit_depth`` times at most)
    and its halves stand in for it. Reduce: the summaries in order, in one prompt when they fit
    (and number at most ``max_reduce_inputs``), else in balanced consecutive groups that do,
    each reduced to an intermediate summary (``summary_part``), level after level, until one
    prompt takes them all. The first failure that cannot be re-split drops the context's sample
    once (truncated, bad_json, degenerate_output, no_room); a repetitive or too short final
    summary drops it too. Meta records the tree: ``tree`` (summaries per level, leaves first),
    ``reduce_levels``, ``resplit`` (labels of halved sections) and the spans."""

    kind, Config = "summary", SummaryTask

    MAP, PART, REDUCE = "summary_section.v1", "summary_part.v1", "summary_global.v1"
    QUESTION = "Summarize the whole document in one paragraph."

    def plan(self, ctx: Context) -> Iterator[Sample | Job | Planned]:
        if self.cfg.per_context < 1:
            return
        sid = sample_id("summary", ctx.id, 0)
        secs = self._fitted(ctx, sections_of(ctx.text, self.cfg.sections, self.cfg.max_section_chars))
        if secs is None:
            yield Planned()
            self.drop(sid, "no_room", f"{ctx.id}: no section prompt fits engine.max_model_len="
                      f"{self.engine.cfg.max_model_len} with tasks.summary.max_tokens={self.cfg.max_tokens}",
                      {"context": ctx.id})
            return
        st = SummaryState(ctx, sid, secs, {(i,): None for i in range(len(secs))})
        for i, span in enumerate(secs):
            job = self._section_job(st, (i,), span)
            if i == 0:  # the context's one planned sample is counted on its first section job only
                job.sample_ids = [sid]
            yield job

    # --- fitting the window -------------------------------------------------------------------

    def _fits(self, prompts: list[str]) -> list[bool]:
        room = self.engine.cfg.max_model_len - self.cfg.max_tokens - CHAT_MARGIN
        return [n <= room for n in self.tok.count(prompts)]

    def _map_prompt(self, ctx: Context, name: str, n: int, span: Span) -> str:
        return template(self.MAP).format(i=name, n=n, source=ctx.source, section=ctx.text[span[0]:span[1]].strip())

    def _fitted(self, ctx: Context, secs: list[Span]) -> list[Span] | None:
        """``secs`` with every section whose prompt would not fit halved until it does (None:
        one cannot be cut smaller, or not even an empty section fits)."""
        name, n = "9999.9.9", 9999  # longer than any real label and count: the real prompts are shorter
        if not self._fits([self._map_prompt(ctx, name, n, (0, 0))])[0]:
            return None
        done: list[Span] = []
        todo = secs
        while todo:
            nxt: list[Span] = []
            for span, ok in zip(todo, self._fits([self._map_prompt(ctx, name, n, s) for s in todo]), strict=True):
                if ok:
                    done.append(span)
                    continue
                hs = halves(ctx.text, *span)
                if hs is None:
                    return None
                nxt += hs
            todo = nxt
        return sorted(done)

    def _section_job(self, st: SummaryState, path: Path, span: Span) -> Job[SectionOf]:
        # follow-ups (halves) carry no sample: the first section job counted it
        prompt = self._map_prompt(st.ctx, label(path), len(st.sections), span)
        return Job([], self.user(prompt), self.MAP, SUMMARY_SCHEMA, self.cfg.max_tokens, self._section,
                   SectionOf(st, path, span), on_fail=self._section_failed)

    def _retried(self, j: Job[Any]) -> bool:
        """Take another attempt at ``j`` (its output looped) while ``max_retries`` allows."""
        if j.attempt < self.cfg.max_retries:
            j.attempt += 1
            return True
        return False

    # --- map ----------------------------------------------------------------------------------

    def _section(self, j: Job[SectionOf], obj: dict[str, Any]) -> Iterator[Job[Any]]:
        st = j.data.state
        if st.failed:
            return
        text = str(obj["summary"]).strip()
        if repetitive(text):
            if self._retried(j):
                yield j
            else:
                yield from self._piece_failed(j, "degenerate_output", f"a repetitive summary after {j.attempt + 1} "
                                              "attempts", text)
            return
        st.summaries[j.data.path] = text
        if all(s is not None for s in st.summaries.values()):
            yield from self._reduce(st, [(label(p), label(p), s) for p, s in sorted(st.summaries.items())])

    def _section_failed(self, j: Job[SectionOf], text: str) -> list[Job[SectionOf]]:
        return list(self._piece_failed(j, *self.bad_output(j, text), text))

    def _piece_failed(self, j: Job[SectionOf], reason: str, why: str, text: str) -> Iterator[Job[SectionOf]]:
        """A section that failed its last attempt: its halves as new jobs, or the context dropped."""
        st, path = j.data.state, j.data.path
        if st.failed:
            return
        hs = halves(st.ctx.text, *j.data.span) if len(path) <= self.cfg.resplit_depth else None
        if hs is None:
            self._fail(st, reason, f"section {label(path)}: {why}", text)
            return
        del st.summaries[path]
        st.resplit.append(label(path))
        for k, span in enumerate(hs):
            st.summaries[(*path, k)] = None
            yield self._section_job(st, (*path, k), span)

    # --- reduce -------------------------------------------------------------------------------

    def _listing(self, items: list[Item]) -> str:
        return "\n\n".join(f"Section {a}: {s}" if a == b else f"Sections {a}-{b}: {s}" for a, b, s in items)

    def _final_prompt(self, st: SummaryState, items: list[Item]) -> str:
        return template(self.REDUCE).format(n=len(st.sections), source=st.ctx.source, summaries=self._listing(items))

    def _part_prompt(self, st: SummaryState, items: list[Item]) -> str:
        return template(self.PART).format(first=items[0][0], last=items[-1][1], n=len(st.sections),
                                          source=st.ctx.source, summaries=self._listing(items))

    def _groups(self, st: SummaryState, items: list[Item]) -> list[list[Item]] | None:
        """The fewest balanced runs of consecutive ``items`` whose reduce prompts fit (fewer runs
        than items, so each level shrinks), or None."""
        n, cap = len(items), self.cfg.max_reduce_inputs or len(items)
        room = self.engine.cfg.max_model_len - self.cfg.max_tokens - CHAT_MARGIN
        need = sum(self.tok.count([self._listing([it]) for it in items]))  # a lower bound: no template
        for g in range(max(2, math.ceil(n / cap), math.ceil(need / room)), n):
            bounds = [n * k // g for k in range(g + 1)]
            groups = [items[bounds[k]:bounds[k + 1]] for k in range(g)]
            if all(self._fits([self._part_prompt(st, grp) for grp in groups if len(grp) > 1])):
                return groups
        return None

    def _reduce(self, st: SummaryState, items: list[Item]) -> Iterator[Job[ReduceOf]]:
        """One reduce level: the final summary if ``items`` fit one prompt, else their groups."""
        st.levels.append(len(items))
        cap = self.cfg.max_reduce_inputs or len(items)
        final = self._final_prompt(st, items)
        if len(items) <= cap and self._fits([final])[0]:
            yield Job([], self.user(final), self.REDUCE, SUMMARY_SCHEMA, self.cfg.max_tokens, self._whole,
                      ReduceOf(st, len(st.levels), 0), on_fail=self._reduce_failed)
            return
        groups = self._groups(st, items)
        if groups is None:
            self._fail(st, "no_room", f"{len(items)} summaries cannot be reduced in prompts that fit "
                       f"engine.max_model_len={self.engine.cfg.max_model_len}; lower tasks.summary.max_tokens", "")
            return
        st.partial = [grp[0] if len(grp) == 1 else None for grp in groups]  # a group of one goes up as it is
        for g, grp in enumerate(groups):
            if len(grp) > 1:
                yield Job([], self.user(self._part_prompt(st, grp)), self.PART, SUMMARY_SCHEMA, self.cfg.max_tokens,
                          self._part, ReduceOf(st, len(st.levels), g, grp[0][0], grp[-1][1]),
                          on_fail=self._reduce_failed)

    def _part(self, j: Job[ReduceOf], obj: dict[str, Any]) -> Iterator[Job[Any]]:
        st, r = j.data.state, j.data
        if st.failed:
            return
        text = str(obj["summary"]).strip()
        if repetitive(text):
            if self._retried(j):
                yield j
            else:
                self._fail(st, "degenerate_output", f"level {r.level} summary of sections {r.first}-{r.last}: "
                           f"repetitive after {j.attempt + 1} attempts", text)
            return
        st.partial[r.group] = (r.first, r.last, text)
        if all(p is not None for p in st.partial):
            yield from self._reduce(st, [p for p in st.partial if p is not None])

    def _reduce_failed(self, j: Job[ReduceOf], text: str) -> None:
        reason, why = self.bad_output(j, text)
        what = "the final summary" if j.handle == self._whole else f"level {j.data.level} summary of sections " \
            f"{j.data.first}-{j.data.last}"
        self._fail(j.data.state, reason, f"{what}: {why}", text)

    def _whole(self, j: Job[ReduceOf], obj: dict[str, Any]) -> Iterator[Sample | Job[ReduceOf]]:
        st = j.data.state
        if st.failed:
            return
        ctx, summary = st.ctx, str(obj["summary"]).strip()
        if len(summary) < MIN_OUTPUT_CHARS:
            self._fail(st, "empty_output", f"summary of {len(summary)} chars", summary)
            return
        if repetitive(summary):
            if self._retried(j):
                yield j
            else:
                self._fail(st, "degenerate_output", f"the final summary is repetitive after {j.attempt + 1} attempts",
                           summary)
            return
        leaves = sorted(st.summaries)
        tpl = f"{self.MAP}+{self.PART}+{self.REDUCE}" if len(st.levels) > 1 else f"{self.MAP}+{self.REDUCE}"
        yield make_sample(
            task="summary", index=0, ctx=ctx, text=ctx.text, parts=ctx.parts, question=self.QUESTION,
            answer=summary, evidence=[], tok=self.tok, short_max_tokens=self.short_max,
            meta=self.meta(tpl, tree=[*st.levels, 1], reduce_levels=len(st.levels), resplit=st.resplit,
                           sections=st.sections, leaves=[st.spans[p] for p in leaves],
                           section_summaries=[st.summaries[p] for p in leaves]),
        )

    def _fail(self, st: SummaryState, reason: str, why: str, output: str) -> None:
        """Drop the context's summary, once, whichever of its jobs fails first."""
        if not st.failed:
            st.failed = True
            self.drop(st.sample_id, reason, why, {"output": output[:2000]})


@dataclass
class SummaryState:
    """One context's summary tree as it grows: its sections, the summaries of the leaves (a
    re-split section's halves replace it) and the reduce level in progress."""

    ctx: Context
    sample_id: str
    sections: list[Span]
    summaries: dict[Path, str | None]  # leaves, in order when sorted
    spans: dict[Path, Span] = field(default_factory=dict)
    resplit: list[str] = field(default_factory=list)  # labels of halved sections, in the order they failed
    levels: list[int] = field(default_factory=list)  # summaries going into each reduce level
    partial: list[Item | None] = field(default_factory=list)  # the current level's group summaries
    failed: bool = False


@dataclass
class SectionOf:
    state: SummaryState
    path: Path
    span: Span

    def __post_init__(self) -> None:
        self.state.spans[self.path] = self.span

    @property
    def i(self) -> int:
        """The top-level section (0-based)."""
        return self.path[0]


@dataclass
class ReduceOf:
    """A reduce job: its level (1 = over the leaves), group, and the sections it covers."""

    state: SummaryState
    level: int
    group: int
    first: str = ""
    last: str = ""
