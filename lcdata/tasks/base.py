"""The task registry and the shared machinery of tasks: inserting facts into a real context
at controlled depths while keeping exact provenance, and building Sample records.

A task kind is one class with ``kind``, ``Config`` (its pydantic model in ``lcdata.config``)
and ``plan(ctx)``, which yields Samples (programmatic tasks) or engine Jobs (LLM tasks,
``lcdata.tasks.synth.LLMStage``). Defining the class registers it in ``TASKS``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from lcdata.schema import (
    PURPOSE_TRAIN,
    SPLIT_LONG,
    SPLIT_SHORT,
    Context,
    Evidence,
    Part,
    Sample,
    sample_id,
)

TASKS: dict[str, type[Task]] = {}


class Task:
    """A task kind. Subclasses that set ``kind`` register themselves in ``TASKS``."""

    kind: ClassVar[str]
    Config: ClassVar[type[BaseModel]]  # the task's entry in the build config's `tasks`
    uses_engine: ClassVar[bool] = False
    # data it uses beyond the sources, for the dataset card: (what, licence)
    data: ClassVar[tuple[str, str] | None] = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            if cls.kind in TASKS:
                raise ValueError(f"task kind `{cls.kind}` is defined twice: {TASKS[cls.kind]} and {cls}")
            TASKS[cls.kind] = cls


class ProgrammaticTask(Task):
    """A task that makes its samples without the engine: ``per_context`` samples per context,
    each from its own seeded RNG (``make``)."""

    def __init__(self, cfg: Any, tok: Any, seed: int, short_max_tokens: int, first_index: int = 0) -> None:
        # first_index: a kind listed twice in the config keeps counting, so ids stay unique
        self.cfg, self.tok, self.seed, self.short_max, self.first = cfg, tok, seed, short_max_tokens, first_index

    def plan(self, ctx: Context) -> Iterator[Sample]:
        for j in range(self.cfg.per_context):
            i = self.first + j
            yield self.make(ctx, i, random.Random(f"{self.seed}:{self.kind}:{ctx.id}:{i}"))

    def make(self, ctx: Context, index: int, rng: random.Random) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError


DOC_OPEN = "Read the document below, then answer the question after it.\n\n<document>\n"
DOC_CLOSE = "\n</document>\n\n"


@dataclass
class Inserted:
    """An inserted text and where it ended up in the new context."""

    text: str
    start: int
    end: int
    tag: Any = None


def line_start_near(text: str, pos: int) -> int:
    """The start of the line nearest to ``pos`` (0 <= result <= len(text))."""
    pos = max(0, min(pos, len(text)))
    before = text.rfind("\n", 0, pos)
    after = text.find("\n", pos)
    cand = [0 if before < 0 else before + 1]
    if after >= 0:
        cand.append(after + 1)
    return min(cand, key=lambda c: abs(c - pos))


def insert_texts(text: str, parts: list[Part], inserts: list[tuple[int, str, Any]]) -> tuple[str, list[Part], list[Inserted]]:
    """Insert ``(pos, text, tag)`` items (pos in the old text, snapped by the caller) and
    return the new text, the parts with shifted/split offsets, and the inserted spans.

    A part that an insertion falls inside is split in two, so that for every part
    ``new_text[ctx_start:ctx_end] == doc.text[doc_start:doc_end]`` still holds.
    """
    inserts = sorted(inserts, key=lambda x: x[0])
    positions = [p for p, _, _ in inserts]
    # split parts at insertion points strictly inside them
    split: list[Part] = []
    for part in parts:
        cuts = [p for p in positions if part.ctx_start < p < part.ctx_end]
        a = part.ctx_start
        for c in [*cuts, part.ctx_end]:
            if c > a:
                off = a - part.ctx_start
                split.append(Part(part.doc_id, a, c, part.doc_start + off, part.doc_start + off + (c - a)))
            a = c
    chunks: list[str] = []
    out: list[Inserted] = []
    prev = 0
    shift = 0
    for p, ins, tag in inserts:
        chunks.append(text[prev:p])
        start = p + shift
        out.append(Inserted(ins, start, start + len(ins), tag))
        chunks.append(ins)
        shift += len(ins)
        prev = p
    chunks.append(text[prev:])

    def shifted(x: int, end: bool) -> int:
        # an insertion at a part's start goes before it; one at its end goes after it
        return x + sum(len(ins) for p, ins, _ in inserts if (p < x if end else p <= x))

    new_parts = [
        Part(q.doc_id, shifted(q.ctx_start, False), shifted(q.ctx_end, True), q.doc_start, q.doc_end) for q in split
    ]
    return "".join(chunks), new_parts, out


def depth_positions(text: str, depths: list[float]) -> list[int]:
    return [line_start_near(text, int(d * len(text))) for d in depths]


def spread_depths(rng: random.Random, n: int, lo: float = 0.02, hi: float = 0.98) -> list[float]:
    """``n`` depths in distinct deciles (when n <= 10), uniform inside each, sorted."""
    deciles = rng.sample(range(10), n) if n <= 10 else [rng.randrange(10) for _ in range(n)]
    return sorted(min(hi, max(lo, (d + rng.random()) / 10)) for d in deciles)


def clip_parts(parts: list[Part], a: int, b: int, rebase: bool = False) -> list[Part]:
    """The parts overlapping ``[a, b)`` of a context, clipped to it; offsets stay in the
    context, or start at 0 at ``a`` with ``rebase`` (the slice becomes a context of its own)."""
    out = []
    shift = a if rebase else 0
    for p in parts:
        s, e = max(a, p.ctx_start), min(b, p.ctx_end)
        if s < e:
            off = s - p.ctx_start
            out.append(Part(p.doc_id, s - shift, e - shift, p.doc_start + off, p.doc_start + off + (e - s)))
    return out


def slice_parts(parts: list[Part], a: int, b: int) -> list[Part]:
    return clip_parts(parts, a, b, rebase=True)


class SpanLike(Protocol):
    """A located piece of text: ``text == context[start:end]`` (``Span``, ``Inserted``,
    ``synth.Located``)."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Span:
    text: str
    start: int
    end: int


def make_evidence(tok: Any, text: str, evidence: Sequence[SpanLike]) -> tuple[int, list[Evidence]]:
    """Evidence records with char and token offsets and depth; and the token count of ``text``."""
    spans = [(e.text, e.start, e.end) for e in evidence]
    for t, s, end in spans:
        assert text[s:end] == t, "evidence offsets must point at the evidence text"
    n_tokens, tspans = tok.token_spans(text, [(s, end) for _, s, end in spans])
    ev = [Evidence(t, s, end, round(s / max(1, len(text)), 6), ts, te)
          for (t, s, end), (ts, te) in zip(spans, tspans, strict=True)]
    return n_tokens, ev


def make_sample(
    *, task: str, index: int | str, ctx: Context, text: str, parts: list[Part], question: str, answer: str,
    evidence: Sequence[SpanLike], tok: Any, short_max_tokens: int,
    purpose: str = PURPOSE_TRAIN, meta: dict[str, Any] | None = None, with_context: bool = True,
) -> Sample:
    """A question over ``text`` (the context, possibly with inserted facts) and its answer.

    ``with_context=False`` makes a closed-book sample (LIFT): the question is asked alone,
    ``context_message`` is -1 and the offsets refer to context ``ctx.id``."""
    n_tokens, ev = make_evidence(tok, text, evidence)
    meta = dict(meta or {})
    if len(ev) >= 2:  # how far apart the facts are: first to last evidence span
        first, last = min(ev, key=lambda e: e.start), max(ev, key=lambda e: e.start)
        meta["distance_tokens"] = last.token_start - first.token_start
        meta["distance_frac"] = round((last.start - first.start) / max(1, len(text)), 6)
    user = DOC_OPEN + text + DOC_CLOSE + question if with_context else question
    prompt_tokens = n_tokens if with_context else tok.count([user])[0]
    return Sample(
        id=sample_id(task, ctx.id, index),
        task=task,
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        question=question,
        answer=answer,
        split=SPLIT_SHORT if prompt_tokens <= short_max_tokens else SPLIT_LONG,
        purpose=purpose,
        context_id=ctx.id,
        context_message=0 if with_context else -1,
        context_offset=len(DOC_OPEN) if with_context else 0,
        context_chars=len(text),
        context_tokens=n_tokens,
        sources=parts,
        evidence=ev,
        meta=meta,
    )


# Keys for needles and variable names: plain nouns, never numbers.
WORDS = (
    "anchor apple arrow badge barrel basket beacon bell blossom bottle bridge brook bucket cabin "
    "camera candle canyon carpet castle cedar chalk cherry circle cloud clover comet compass copper "
    "coral cotton crane crystal curtain dagger desert diamond dolphin dragon drum eagle ember engine "
    "falcon feather fern fiddle flame forest fossil fountain garden garnet glacier globe granite "
    "hammer harbor harp hazel helmet honey horizon island ivory jacket jasmine jewel kettle kite "
    "ladder lagoon lantern lemon lily lotus magnet maple marble meadow mirror moss mountain needle "
    "nutmeg oak ocean olive orchid otter paddle palace panther pearl pebble pepper piano pillar pine "
    "planet plum pocket prism quartz quill rabbit raven reef ribbon river rocket saddle sapphire "
    "shell silver spruce stone summit swan thistle thunder tiger timber tulip valley velvet violin "
    "walnut willow window wolf zephyr"
).split()
