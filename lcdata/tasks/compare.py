"""``compare``: what two far-apart sections of a context say about one thing they both name.

Decomposed like the composed multi-hop samples (``multihop.py``): the code chooses what the
model could not choose reliably, and the model only writes. Two sections at least
``min_distance_frac`` apart are picked; the *topic* is a name, identifier or rare word that
occurs in a line of each (``shared_topics``), and those two lines are the evidence, located by
construction. The model is shown both sections and the topic and writes one sentence per
section (``passage_1``/``passage_2``: prose that cannot hold digits or brackets, so no line
labels and no runaway digit strings). A side that shares fewer than two content words with its
own section is dropped (``ungrounded_output``): small models otherwise describe the prompt.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lcdata.config import CompareTask
from lcdata.schema import Context, Sample, sample_id
from lcdata.stage import Planned
from lcdata.tasks.base import make_sample
from lcdata.tasks.multihop import _STOP, Fact, degenerate
from lcdata.tasks.synth import Job, LLMStage, Located, anchor, pick_chunks, repetitive, template

# Prose without digits or brackets: a line label ("P1.3") cannot be written into it, nor a run
# of digits. Plain regex for xgrammar (length in the pattern, at most 128 repeats).
SAYS_PATTERN = r'^[A-Z][^0-9\[\]"\\\x00-\x1f]{19,128}$'
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"passage_1": {"type": "string", "pattern": SAYS_PATTERN},
                   "passage_2": {"type": "string", "pattern": SAYS_PATTERN}},
    "required": ["passage_1", "passage_2"],
    "additionalProperties": False,
}
_WORDS = re.compile(r"[a-z]{4,}")
_COMMON = {"what", "which", "does", "that", "this", "with", "from", "have", "there", "their", "about", "first",
           "second", "part", "passage", "passages", "section", "document", "line", "lines", "says", "said", "both",
           "mentions", "mentioned", "talks"}


@dataclass
class Pair:
    """A compare job: the two sections, the topic, the line of each that names it, and the
    unique opening line that names each section in the question."""

    ctx: Context
    index: int
    chunks: list[tuple[int, int]]
    topic: str
    lines: list[tuple[int, int]]
    anchors: list[str]


_TOKEN = re.compile(r"(?<![\w.])[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_STOPWORDS = {w.lower() for w in _STOP} | _COMMON | set("""self none true false return import class while yield
await async raise except lambda global assert elif pass break continue print isinstance super init args kwargs
value values name names data item items list dict type string object thing things make made more most much many
like just only also very even still ever never into over under upon unto thee thou thine hath doth shall what
that this those these them they then than when where your yours mine ours some such same other others give gives
given know knows known take takes taken tell tells think thinks speak speaks look looks makes come comes
thus hence whence thence therefore wherefore done through till until""".split())


def shared_topics(text: str, chunks: list[tuple[int, int]], max_count: int = 12) -> list[tuple[Fact, Fact]]:
    """Words or identifiers (4+ characters, no stop word) that both sections hold, each in a line
    of 20-300 characters, and that the whole text holds at most ``max_count`` times (specific
    enough to name one thing): (its first line in section 1, in section 2), identifiers and
    capitalised names first, then longer words."""
    def lines_with(a: int, b: int) -> dict[str, Fact]:
        found: dict[str, Fact] = {}
        pos = a
        for raw in text[a:b].split("\n"):
            ls, le = pos, pos + len(raw)
            pos = le + 1
            if not 20 <= len(raw.strip()) <= 300:
                continue
            for m in _TOKEN.finditer(raw):
                w = m.group(0)
                if len(w) >= 4 and w.lower() not in _STOPWORDS and w not in found:
                    found[w] = Fact(w, ls + m.start(), ls + m.end(), ls, le, "word")
        return found

    first, second = lines_with(*chunks[0]), lines_with(*chunks[1])
    shared = [w for w in first if w in second and len(re.findall(rf"(?<![\w.]){re.escape(w)}(?![\w])", text)) <= max_count]
    shared.sort(key=lambda w: (not ("_" in w or "." in w or w[0].isupper()), -len(w)))
    return [(first[w], second[w]) for w in shared]


def grounded_side(side: str, section: str, topic: str) -> bool:
    """Whether a side is about its section: two of its content words (4+ letters, not the
    topic's) occur in the section."""
    words = set(_WORDS.findall(side.lower())) - _COMMON - set(_WORDS.findall(topic.lower()))
    low = section.lower()
    return len({w for w in words if w in low}) >= 2


class CompareStage(LLMStage):
    kind, Config = "compare", CompareTask

    # v4: topic and evidence lines chosen in code, one sentence per section (v3: the model chose
    # the topic and cited a label of each section; v2: a free evidence list; v1: one comparison)
    VERSION = "compare.v4"

    def plan(self, ctx: Context) -> Iterator[Sample | Job | Planned]:
        tpl = template(self.VERSION)
        cfg = self.cfg
        for i in range(cfg.per_context):
            rng = random.Random(f"{self.seed}:compare:{ctx.id}:{i}")
            uid = sample_id("compare", ctx.id, i)
            pair = None
            why = "no_room"
            for _ in range(6):  # section layouts tried until the two share a topic
                chunks = pick_chunks(ctx.text, 2, cfg.chunk_chars, cfg.min_distance_frac, rng)
                if chunks is None:
                    break
                anchors = [anchor(ctx.text, a, b) for a, b in chunks]
                if None in anchors:
                    why = "ambiguous_anchor" if why == "no_room" else why
                    continue
                topics = shared_topics(ctx.text, chunks)
                why = "no_shared_topic"
                if topics:
                    f1, f2 = rng.choice(topics[:3])
                    pair = Pair(ctx, i, chunks, f1.answer, [(f1.line_start, f1.line_end), (f2.line_start, f2.line_end)],
                                [a for a in anchors if a is not None])
                    break
            if pair is None:
                yield Planned()  # (a job counts its own samples as planned)
                say = {"no_room": f"too short for two sections of {cfg.chunk_chars} chars "
                                  f"{cfg.min_distance_frac:.0%} apart; lower tasks.compare.chunk_chars or "
                                  "min_distance_frac",
                       "ambiguous_anchor": "no section layout tried has a unique opening line to quote",
                       "no_shared_topic": "no section layout tried names a common thing (a name, identifier or "
                                          "rare word) in a line of each section"}[why]
                self.drop(uid, why, f"{ctx.id}: {say}", {"context": ctx.id})
                continue
            (a1, b1), (a2, b2) = pair.chunks
            prompt = tpl.format(source=ctx.source, topic=pair.topic, passage_1=ctx.text[a1:b1].strip(),
                                passage_2=ctx.text[a2:b2].strip())
            yield Job([uid], self.user(prompt), self.VERSION, SCHEMA, cfg.max_tokens, self._handle, pair)

    def _handle(self, j: Job[Pair], obj: dict[str, Any]) -> Iterator[Sample]:
        p, uid = j.data, j.sample_ids[0]
        ctx = p.ctx
        said = [str(obj[k]).strip() for k in ("passage_1", "passage_2")]
        sections = [ctx.text[a:b] for a, b in p.chunks]
        lines = [ctx.text[a:b].strip() for a, b in p.lines]
        sides, writers = [], []
        for k, (side, sec, line) in enumerate(zip(said, sections, lines, strict=True)):
            if not repetitive(side) and not degenerate(side) and (k == 0 or side != said[0]) \
                    and grounded_side(side, sec, p.topic):
                sides.append(side)
                writers.append("llm")
            elif self.cfg.fallback == "quote":  # the line that names the topic, quoted: right by construction
                sides.append(f'it says "{line}"')
                writers.append("quote")
            else:
                self.drop(uid, "ungrounded_output", f"side {k + 1} repeats itself, repeats side 1, or shares fewer "
                          f"than two content words with its section (topic {p.topic!r})",
                          {"output": obj, "topic": p.topic})
                return
        self.note(f"sides_{writers[0]}")
        self.note(f"sides_{writers[1]}")
        found = [Located(ctx.text[a:b], a, b, k, "topic") for k, (a, b) in enumerate(p.lines)]
        question = (f'Compare the part of the document around "{p.anchors[0]}" with the part around '
                    f'"{p.anchors[1]}": what does each of them say about {p.topic}?')
        answer = f"The first part: {sides[0]}\nThe second part: {sides[1]}"
        yield make_sample(
            task="compare", index=p.index, ctx=ctx, text=ctx.text, parts=ctx.parts, question=question,
            answer=answer, evidence=found, tok=self.tok, short_max_tokens=self.short_max,
            meta=self.meta(self.VERSION, chunks=p.chunks, topic=p.topic, writers=writers,
                           grounding=[f.method for f in found]),
        )
