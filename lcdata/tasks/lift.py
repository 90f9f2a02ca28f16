"""LIFT (Long Input Fine-Tuning) samples and short-window QA.

LIFT stores a long input in the weights: the input is cut into overlapping segments
(``segment_tokens`` long, starting every ``stride_tokens``). For each segment:

* ``lift_memorize``: the prompt holds the overlap with the previous segment and the target
  is the rest of the segment, so every token of the context is a target exactly once and its
  order is learned from the overlap (the first segment is recited from the document's name);
* ``lift_qa``: questions the model wrote about the segment, asked *without* the context
  (LIFT's auxiliary QA, answered from memory);
* ``lift_qa_ctx``: the same questions asked with the full long input (the contextualized
  variant, which keeps in-context reading trained alongside memorization).

Closed-book and memorization samples carry no context: ``context_message`` is -1 and their
evidence offsets point into context ``context_id`` (``OUT/contexts/``). Samples of one input
share ``meta.lift_input`` so a LIFT run can select them.

``short_qa`` runs the same QA generator on short windows (<= 2K tokens) of the context: the
short half of a long:short mix.

The QA schema is made per job (``qa_schema``): each item's ``evidence`` is 1-3 of the line
labels shown (an ``enum``) and its ``question`` must match ``QUESTION_PATTERN`` (a capital
letter first, "?" last). Guided decoding offers nothing else and ``parse_json`` rejects
anything else, so every question's evidence is located: no ``evidence_not_found`` here.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from lcdata.config import LiftTask, ShortQATask
from lcdata.schema import Context, Sample, sample_id
from lcdata.stage import Planned
from lcdata.tasks.base import Span, clip_parts, line_start_near, make_sample, slice_parts
from lcdata.tasks.synth import (
    QUESTION_PATTERN,
    Job,
    LLMStage,
    Located,
    Passages,
    bad_qa,
    cited,
    label_lines,
    resolve_evidence,
    template,
)

QA_VERSION = "qa.v2"  # v2: evidence from an enum of the shown labels, question by pattern (v1: free)


def qa_schema(labels: Iterable[str], k: int) -> dict[str, Any]:
    """1..``k`` QA items; each cites 1-3 of ``labels`` (the lines shown). An array rather than one
    label: an answer may span lines (verse, a list); a repeated label is merged when grounding
    (vLLM's xgrammar backend refuses ``uniqueItems``)."""
    item = {
        "type": "object",
        "properties": {
            "question": {"type": "string", "pattern": QUESTION_PATTERN},
            "answer": {"type": "string", "minLength": 1, "maxLength": 200},
            "evidence": {"type": "array", "items": cited(labels), "minItems": 1, "maxItems": 3},
        },
        "required": ["question", "answer", "evidence"],
        "additionalProperties": False,
    }
    return {"type": "object", "properties": {"qa": {"type": "array", "items": item, "minItems": 1, "maxItems": k}},
            "required": ["qa"], "additionalProperties": False}


def segments(offsets: Any, text: str, seg: int, stride: int) -> list[tuple[int, int, int]]:
    """Overlapping token segments as char ranges ``(start, new_from, end)``: ``[start, end)`` is
    the segment, ``[new_from, end)`` the part not in the previous segment. The new parts
    partition the text. Boundaries move forward to the next token that starts a word, so no
    target starts or ends inside a word (BPE splits words: "sojour|n'd")."""
    T, n_chars = len(offsets), len(text)
    if T == 0:
        return []

    def starts_word(t: int) -> bool:
        # Byte-level BPE tokens carry their leading space (" was" at the space), others follow it.
        c = int(offsets[t][0])
        return text[c].isspace() or text[c - 1].isspace()

    def cb(t: int) -> int:  # char boundary before token t, snapped to a word start
        while 0 < t < T and not starts_word(t):
            t += 1
        return 0 if t == 0 else (n_chars if t >= T else int(offsets[t][0]))

    starts = list(range(0, max(T - seg, 0) + 1, stride))
    if starts[-1] + seg < T:
        starts.append(T - seg)
    out, prev_end = [], 0
    for s in starts:
        e = min(T, s + seg)
        seg_ = (cb(s), cb(prev_end), cb(e))
        if seg_[2] > seg_[1]:  # snapping can swallow a tiny tail
            out.append(seg_)
        prev_end = e
    return out


def doc_name(ctx: Context) -> str:
    return ctx.group or ctx.id


class _QAStage(LLMStage):
    def usable_qa(self, obj: dict[str, Any], planned: list[list[str]], text: str, span: tuple[int, int],
                  labels: Any) -> Iterator[tuple[int, str, str, list[Located]]]:
        """The usable ones of the QA pairs asked for (``planned[q]``: the sample ids pair ``q``
        makes), as (index, question, answer, located evidence); each other one drops its
        planned samples with a reason."""
        qa = obj["qa"]  # parse_json checked every item against qa_schema
        n = len(planned)
        for q, ids in enumerate(planned):
            if q >= len(qa):
                self.drop_all(ids, "missing_qa", f"the model wrote {len(qa)} of {n} QA pairs", {"output": obj})
                continue
            why = bad_qa(qa[q])
            if why:
                self.drop_all(ids, "empty_output" if "empty" in why else "degenerate_output", why, {"output": qa[q]})
                continue
            # 1-3 labels of the schema's enum (parse_json checked): each names its line, so the
            # evidence is never empty (no evidence_not_found here)
            found = resolve_evidence(text, [span], labels, qa[q]["evidence"])
            yield q, str(qa[q]["question"]).strip(), str(qa[q]["answer"]).strip(), found


class LiftStage(_QAStage):
    kind, Config = "lift", LiftTask

    def plan(self, ctx: Context) -> Iterator[Sample | Job | Planned]:
        cfg = self.cfg
        segs = segments(self.tok.offsets(ctx.text), ctx.text, cfg.segment_tokens, cfg.stride_tokens)
        name = doc_name(ctx)
        if cfg.memorize:
            for k, (a, new, b) in enumerate(segs):
                target = ctx.text[new:b]
                if not target.strip():
                    continue
                prompt = (f'Recite the beginning of the document "{name}".' if k == 0 else
                          f'Continue the document "{name}" from this excerpt:\n\n{ctx.text[a:new]}')
                yield make_sample(
                    task="lift_memorize", index=k, ctx=ctx, text=ctx.text, parts=clip_parts(ctx.parts, a, b),
                    question=prompt, answer=target, evidence=[Span(target, new, b)], tok=self.tok,
                    short_max_tokens=self.short_max, with_context=False,
                    meta={"lift_input": ctx.id, "segment": [a, new, b], "segment_index": k},
                )
        variants = int(cfg.closed_book) + int(cfg.contextualized)
        if cfg.qa_per_segment == 0 or variants == 0 or not segs:
            return
        chosen = range(len(segs))
        if cfg.max_qa_segments is not None and cfg.max_qa_segments < len(segs):
            n = cfg.max_qa_segments  # evenly spaced over the context, first and last included
            chosen = sorted({round(i * (len(segs) - 1) / max(1, n - 1)) for i in range(n)})
        tpl = template(QA_VERSION)
        for k in chosen:
            a, _, b = segs[k]
            passages, labels = label_lines(ctx.text, [(a, b)])
            if not labels:
                continue  # a blank segment: no line to cite (an empty enum is not a schema)
            prompt = tpl.format(source=f"{ctx.source}: {name}", passages=passages.split("\n", 1)[1],
                                k=cfg.qa_per_segment)
            yield Job([i for q in self.planned(ctx, k) for i in q], self.user(prompt), QA_VERSION,
                      qa_schema(labels, cfg.qa_per_segment), cfg.max_tokens, self._handle, Passages(ctx, k, [(a, b)], labels))

    def planned(self, ctx: Context, k: int) -> list[list[str]]:
        """Per QA pair of segment ``k``: the samples it makes (closed-book and/or with the context)."""
        tasks = ["lift_qa"] * self.cfg.closed_book + ["lift_qa_ctx"] * self.cfg.contextualized
        return [[sample_id(t, ctx.id, f"{k}.{q}") for t in tasks] for q in range(self.cfg.qa_per_segment)]

    def _handle(self, j: Job[Passages], obj: dict[str, Any]) -> Iterator[Sample]:
        cfg, ctx, k, (a, b) = self.cfg, j.data.ctx, j.data.index, j.data.chunks[0]
        for q, question, answer, found in self.usable_qa(
                obj, self.planned(ctx, k), ctx.text, (a, b), j.data.labels):
            ev = found
            meta = self.meta(QA_VERSION, lift_input=ctx.id, segment=[a, b], segment_index=k,
                             grounding=[f.method for f in found])
            if cfg.closed_book:
                yield make_sample(
                    task="lift_qa", index=f"{k}.{q}", ctx=ctx, text=ctx.text, parts=clip_parts(ctx.parts, a, b),
                    question=f'Answer from your memory of the document "{doc_name(ctx)}": {question}',
                    answer=answer, evidence=ev, tok=self.tok, short_max_tokens=self.short_max, meta=meta,
                    with_context=False)
            if cfg.contextualized:
                yield make_sample(
                    task="lift_qa_ctx", index=f"{k}.{q}", ctx=ctx, text=ctx.text, parts=ctx.parts,
                    question=question, answer=answer, evidence=ev, tok=self.tok, short_max_tokens=self.short_max,
                    meta=meta)


def window(ctx: Context, tok: Any, start_frac: float, max_tokens: int) -> tuple[int, int] | None:
    """A line-aligned window of at most ``max_tokens`` tokens starting near ``start_frac``."""
    text, L = ctx.text, len(ctx.text)
    chars = int(max_tokens * L / max(1, ctx.n_tokens))
    if chars >= L:
        return (0, L) if tok.count([text])[0] <= max_tokens else window_from(text, tok, 0, L // 2, max_tokens)
    a = line_start_near(text, int(start_frac * (L - chars)))
    return window_from(text, tok, a, chars, max_tokens)


def window_from(text: str, tok: Any, a: int, chars: int, max_tokens: int) -> tuple[int, int] | None:
    for _ in range(8):  # shrink until it fits: token density varies along a text
        b = line_start_near(text, a + chars)
        if b <= a:
            b = min(len(text), a + chars)
        if b > a and tok.count([text[a:b]])[0] <= max_tokens:
            return a, b
        chars = int(chars * 0.85)
    return None


class ShortQAStage(_QAStage):
    kind, Config = "short_qa", ShortQATask

    def plan(self, ctx: Context) -> Iterator[Sample | Job | Planned]:
        cfg = self.cfg
        rng = random.Random(f"{self.seed}:short_qa:{ctx.id}")
        deciles = sorted(rng.sample(range(10), min(10, cfg.per_context)))
        tpl = template(QA_VERSION)
        seen = set()
        for i, d in enumerate(deciles):
            w = window(ctx, self.tok, (d + rng.random()) / 10, cfg.window_tokens)
            if w is None or w in seen or not ctx.text[w[0]:w[1]].strip():
                yield Planned(cfg.qa_per_window)
                # no window, so no sample id: these ids name the window slot instead
                self.drop_all(self.planned(f"{ctx.id}@slot{i}"), "no_room", f"{ctx.id}: no distinct window of <= "
                              f"{cfg.window_tokens} tokens at depth {d / 10:.1f}", {"context": ctx.id})
                continue
            seen.add(w)
            a, b = w
            sub = Context(f"{ctx.id}@{a}", ctx.source, ctx.group, ctx.strategy, ctx.text[a:b],
                          slice_parts(ctx.parts, a, b), self.tok.count([ctx.text[a:b]])[0], cfg.window_tokens)
            passages, labels = label_lines(sub.text, [(0, len(sub.text))])
            prompt = tpl.format(source=f"{ctx.source}: {doc_name(ctx)}", passages=passages.split("\n", 1)[1],
                                k=cfg.qa_per_window)
            yield Job(self.planned(sub.id), self.user(prompt), QA_VERSION, qa_schema(labels, cfg.qa_per_window),
                      cfg.max_tokens, self._handle, Window(sub, i, [(0, len(sub.text))], labels, ctx.id, (a, b)))

    def planned(self, window_id: str) -> list[str]:
        return [sample_id("short_qa", window_id, q) for q in range(self.cfg.qa_per_window)]

    def _handle(self, j: Job[Window], obj: dict[str, Any]) -> Iterator[Sample]:
        sub = j.data.ctx
        for q, question, answer, found in self.usable_qa(
                obj, [[i] for i in j.sample_ids], sub.text, (0, len(sub.text)), j.data.labels):
            yield make_sample(
                task="short_qa", index=q, ctx=sub, text=sub.text, parts=sub.parts, question=question, answer=answer,
                evidence=found, tok=self.tok, short_max_tokens=self.short_max,
                meta=self.meta(QA_VERSION, parent_context=j.data.parent, window=list(j.data.window),
                               grounding=[f.method for f in found]))


@dataclass
class Window(Passages):
    """A short_qa job: a window of a context, made a context of its own (``ctx``)."""

    parent: str = ""
    window: tuple[int, int] = (0, 0)
