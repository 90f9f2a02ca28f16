"""LLM-synthesized samples (vLLM engine): the job loop every LLM task shares (``LLMStage``)
and its helpers (JSON parsing against a job's schema, line labels, chunk picking). The tasks
live beside it: ``multihop``, ``compare``, ``summary`` and ``lift`` (LIFT segment QA,
memorization, short-window QA).

A task plans *jobs* (one prompt each, a JSON schema, a template version) per context; the
stage sends every pending job of a shard to the engine in one batched call per round, parses
the JSON, retries bad outputs within a budget, and hands good ones to the job's handler,
which returns samples and/or follow-up jobs (summary: sections first, then the whole).

Accounting: ``in`` counts the samples a task planned, ``out`` those made, and every planned
sample not made is dropped once with a reason (no_room, bad_json, missing_qa,
ambiguous_anchor, empty_output, degenerate_output ...), so in == out + dropped.
Evidence is grounded back into the context: a line label maps to its exact span, a quoted
sentence is located exactly, normalised or fuzzily; unlocated evidence is never kept. Where
a task cites labelled lines (LIFT and short QA, multihop's direct method), its schema is made
per job and offers the labels shown as an ``enum``, so guided decoding cannot cite a line it
did not show, and ``parse_json`` rejects such an output from a backend without it (retried,
then bad_json): their evidence is always located. Composed multihop and compare choose their
evidence lines in code.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar

from lcdata.chat import ChatTokenizer
from lcdata.engine import Engine, Request
from lcdata.grounding import ground
from lcdata.schema import Context, Sample
from lcdata.stage import Planned, Producer
from lcdata.tasks.base import Task, line_start_near

_EVIDENCE = {"type": "array", "items": {"type": "string", "maxLength": 300}, "minItems": 1, "maxItems": 6}


def qa_item_schema(max_evidence: int) -> dict[str, Any]:
    """One question/answer/evidence object: the multi-hop output, and each item of a QA list."""
    return {
        "type": "object",
        "properties": {
            "question": {"type": "string", "minLength": 10, "maxLength": 300},
            "answer": {"type": "string", "minLength": 1, "maxLength": 200},
            "evidence": {**_EVIDENCE, "maxItems": max_evidence},
        },
        "required": ["question", "answer", "evidence"],
        "additionalProperties": False,
    }


# A question as the decoder must write it: a capital letter, 8-128 more characters without
# "?", quotes, backslashes or control characters (so the JSON text is the value itself), then
# "?". Plain regex for xgrammar: vLLM refuses pattern together with minLength/maxLength, so the
# length is in the pattern, and xgrammar 0.2.8 fails to compile a {m,n} above 128 inside an
# array of objects (a QA list) when its grammar cache is on, as vLLM runs it.
QUESTION_PATTERN = r'^[A-Z][^"\\?\x00-\x1f]{8,128}\?$'


def cited(labels: Iterable[str]) -> dict[str, Any]:
    """A string that is one of ``labels``: the line labels a job showed, so evidence cannot be
    invented (guided decoding offers only them; ``parse_json`` rejects anything else)."""
    return {"type": "string", "enum": list(labels)}


MIN_OUTPUT_CHARS = 20  # shorter summaries are not worth training on


def template(version: str) -> str:
    return resources.files("lcdata.templates").joinpath(f"{version}.txt").read_text()


def pick_chunks(text: str, n: int, chunk_chars: int, min_gap_frac: float, rng: random.Random) -> list[tuple[int, int]] | None:
    """``n`` line-aligned chunks in distinct depth deciles, consecutive starts at least
    ``min_gap_frac`` of the text apart, and the last chunk's start at least that plus one chunk
    after the first's end (so any line of the first and any line of the last are that far
    apart); None when the text is too short for that."""
    L = len(text)
    if L < n * chunk_chars or (n - 1) * min_gap_frac >= 1:
        return None
    for _ in range(20):
        deciles = sorted(rng.sample(range(10), n))
        starts = [line_start_near(text, int((d + rng.random()) / 10 * (L - chunk_chars))) for d in deciles]
        if all(b - a >= min_gap_frac * L and b - a >= chunk_chars for a, b in zip(starts, starts[1:], strict=False)) \
                and (n < 2 or starts[-1] - starts[0] >= min_gap_frac * L + chunk_chars):
            return [(s, min(L, s + chunk_chars)) for s in starts]
    return None


# a line label, alone or leading a copy of the line ("P1.3. The king...", "[P2.1]", "1.4")
_LABEL = re.compile(r"^\W*P?\s*(\d+)\s*[.:]\s*(\d+)(?!\d)(?:\W|$)", re.I)
Labels = dict[str, tuple[int, int, int]]  # "P1.3" -> (start, end, chunk)


def label_lines(text: str, chunks: list[tuple[int, int]]) -> tuple[str, Labels]:
    """The passages with every non-empty line labelled ``[Pk.j]``, and each label's span in ``text``."""
    blocks, labels = [], {}
    for k, (a, b) in enumerate(chunks):
        lines, j = [], 0
        pos = a
        for raw in text[a:b].split("\n"):
            stripped = raw.strip()
            if stripped:
                j += 1
                start = pos + raw.index(stripped)
                labels[f"P{k + 1}.{j}"] = (start, start + len(stripped), k)
                lines.append(f"[P{k + 1}.{j}] {stripped}")
            pos += len(raw) + 1
        blocks.append(f"Passage {k + 1}:\n" + "\n".join(lines))
    return "\n\n".join(blocks), labels


@dataclass(frozen=True)
class Located:
    """Model-given evidence found in the context: ``text == context[start:end]``, in chunk
    ``chunk`` of the prompt, found by ``method`` (label, exact, normalized, fuzzy)."""

    text: str
    start: int
    end: int
    chunk: int
    method: str


def resolve_evidence(text: str, chunks: list[tuple[int, int]], labels: Labels, evidence: Iterable[Any]) -> list[Located]:
    """Locate model-given evidence in ``text``, sorted by position, without duplicates. Labels
    map to their exact line; quotes are grounded inside the chunks (exact, normalised, fuzzy);
    anything else is ignored."""
    found: list[Located] = []
    for ev in evidence:
        m = _LABEL.match(str(ev).strip())
        hit = labels.get(f"P{int(m.group(1))}.{int(m.group(2))}") if m else None
        if hit is not None:
            if all(f.start != hit[0] for f in found):
                found.append(Located(text[hit[0]:hit[1]], hit[0], hit[1], hit[2], "label"))
            continue
        if m and len(str(ev).strip()) <= 12:
            continue  # a label that does not exist: nothing to ground
        for k, (a, b) in enumerate(chunks):
            g = ground(str(ev), text, a, b)
            if g is not None and all(f.start != g.start for f in found):
                found.append(Located(text[g.start:g.end], g.start, g.end, k, g.method))
                break
    return sorted(found, key=lambda f: f.start)


D = TypeVar("D")


@dataclass
class Job(Generic[D]):
    """One prompt to the engine, what it was made from (``data``, a task's dataclass) and what
    to do with its parsed JSON."""

    sample_ids: list[str]  # the samples it plans (counted in, dropped together if it fails)
    messages: list[dict[str, str]]
    template: str
    schema: dict[str, Any]
    max_tokens: int
    handle: Callable[[Job[D], dict[str, Any]], Iterable[Sample | Job[Any]]]
    data: D
    # after the last attempt: default, drop every planned sample (truncated or bad_json); may return
    # follow-up jobs (a summary re-splits a section) or samples (a composed multi-hop whose other parts held)
    on_fail: Callable[[Job[D], str], Iterable[Sample | Job[Any]] | None] | None = None
    attempt: int = 0
    temperature: float | None = None  # None: the engine's; 0: greedy (checks, not writing)
    too_long: str | None = None  # why its prompt does not fit the engine's window (never sent)

    def request(self) -> Request:
        # each attempt is its own request (and cache entry): a retry is a new sample, not a cache hit
        return Request(self.messages, self.schema, f"{self.template}#try{self.attempt}", self.max_tokens,
                       self.temperature)


@dataclass
class Passages:
    """What a job showed the model: labelled chunks of a context."""

    ctx: Context
    index: int
    chunks: list[tuple[int, int]]
    labels: Labels


def bad_qa(qa: dict[str, Any]) -> str | None:
    """Why a question/answer pair is unusable, or None. Catches what small models write when
    they echo the instructions instead of asking (a question that is not one, an empty answer)."""
    q, a = str(qa.get("question", "")).strip(), str(qa.get("answer", "")).strip()
    if not q or not a:
        return "empty question or answer"
    if "?" not in q and not re.match(r"^(who|what|when|where|which|why|how|name|list|give)\b", q, re.I):
        return f"not a question: {q[:80]!r}"
    if re.search(r"\bjson\b|\bP\d+\.\d+\b|\bpassage\s*\d", q + " " + a, re.I):
        return "the prompt's scaffolding (JSON, line labels, passage numbers) leaks into the text"
    return None


def repetitive(text: str, n: int = 4, min_words: int = 24, max_dup_share: float = 0.5) -> bool:
    """Whether ``text`` loops: over half of its word ``n``-grams repeat an earlier one (small
    models at length: "The 4th section is about ... The 5th section is about ...")."""
    words = text.lower().split()
    if len(words) < min_words:
        return False
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) > max_dup_share


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {"string": str, "array": list, "object": dict, "boolean": bool,
                                                   "integer": int, "number": (int, float)}


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    """Whether ``value`` has its schema's type, is one of its ``enum``, ``re.fullmatch``-es its
    ``pattern``; an array: at least ``minItems`` items, each fitting ``items``; an object: every
    ``required`` field, fitting. Length caps are not checked (an over-long field is usable)."""
    want = _JSON_TYPES.get(schema.get("type", ""))
    if want is not None and not isinstance(value, want):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "pattern" in schema and isinstance(value, str) and re.fullmatch(schema["pattern"], value) is None:
        return False
    if isinstance(value, list):
        return len(value) >= schema.get("minItems", 0) and all(_fits(v, schema.get("items", {})) for v in value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return all(k in value and _fits(value[k], props.get(k, {})) for k in schema.get("required", ()))
    return True


def parse_json(text: str, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The output as an object whose required fields fit its schema (``_fits``: types, enums,
    patterns, nested), or None (a bad output: retried, then dropped). Guided decoding enforces
    this; a backend without it may not, and still cannot pass off a label it was not shown.
    A job without a schema (free text, e.g. a closed-book answer) gets ``{"text": text}``."""
    if schema is None:
        return {"text": text}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and _fits(obj, schema) else None


class LLMStage(Producer[Context, Sample], Task):
    """Base of the LLM tasks: each is a stage of its own (lineage ``synthesize.<kind>``);
    subclasses set ``kind`` and ``Config`` and implement ``plan(ctx)`` (samples and/or jobs)."""

    uses_engine = True
    PREFIX = "synthesize."  # lineage per task kind: synthesize.<kind>

    def __init__(self, cfg: Any, engine: Engine, tok: ChatTokenizer, seed: int, short_max_tokens: int) -> None:
        super().__init__()
        self.name = self.PREFIX + cfg.kind
        self.cfg, self.engine, self.tok, self.seed, self.short_max = cfg, engine, tok, seed, short_max_tokens

    def plan(self, ctx: Context) -> Iterator[Sample | Job | Planned]:  # pragma: no cover - abstract
        raise NotImplementedError

    def drop_all(self, sample_ids: list[str], reason: str, message: str, record: Any = "") -> None:
        for sid in sample_ids:
            self.drop(sid, reason, message, record)

    def selected(self, ctx: Context) -> bool:
        """Whether this task runs on ``ctx``: its source is listed, it has ``min_context_tokens``,
        and a seeded coin (stable per context, whatever the shard layout) falls under
        ``context_fraction``."""
        if self.cfg.sources is not None and ctx.source not in self.cfg.sources:
            return False
        if ctx.n_tokens < self.cfg.min_context_tokens:
            return False
        if self.cfg.context_fraction >= 1:
            return True
        h = hashlib.sha256(f"{self.seed}:{self.cfg.kind}:{ctx.id}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < self.cfg.context_fraction

    def produce(self, records: Iterable[Context]) -> Iterator[Sample | Planned]:
        """``in`` counts planned samples: a Job's ``sample_ids``, a Sample made without the engine,
        and ``Planned`` markers of samples dropped while planning; ``out`` the samples made."""
        pending: list[Job] = []
        for ctx in records:
            if not self.selected(ctx):
                continue
            for item in self.plan(ctx):
                if isinstance(item, Job):
                    yield Planned(len(item.sample_ids))
                    pending.append(item)
                elif isinstance(item, Planned):
                    yield item
                else:
                    yield Planned()
                    yield item
        while pending:
            # measured before sending: a prompt that does not fit the window fails its job (never retried)
            texts, whys = self.engine.generate_fitting([j.request() for j in pending], who=self.name)
            nxt: list[Job] = []
            for j, out, why in zip(pending, texts, whys, strict=True):
                j.too_long = why
                text = out or ""
                obj = None if why else parse_json(text, j.schema)
                if obj is None:
                    if j.attempt < self.cfg.max_retries and not j.too_long:
                        j.attempt += 1
                        nxt.append(j)
                    elif j.on_fail is not None:
                        for item in j.on_fail(j, text) or ():
                            if isinstance(item, Job):
                                nxt.append(item)
                            else:
                                yield item
                    else:
                        reason, why = self.bad_output(j, text)
                        self.drop_all(j.sample_ids, reason, why, {"template": j.template, "prompt_too_long": j.too_long}
                                      if j.too_long else {"output": text[:2000]})
                    continue
                for item in j.handle(j, obj):
                    if isinstance(item, Job):
                        nxt.append(item)  # a follow-up: its samples were counted by the job that made it
                    else:
                        yield item
            pending = nxt

    def bad_output(self, j: Job[Any], text: str) -> tuple[str, str]:
        """Why the last attempt of ``j`` gave no valid JSON: ``prompt_too_long`` when its prompt
        did not fit the engine's window (never sent), ``truncated`` when it ran into the job's
        ``max_tokens`` (raise the task's ``max_tokens``), else ``bad_json``."""
        if j.too_long:
            return "prompt_too_long", (f"{j.template}: {j.too_long}; raise engine.max_model_len or lower the "
                                       f"task's prompt size (tasks.{self.cfg.kind}: chunk or window size, "
                                       "max_tokens; assemble.buckets)")
        if self.tok.count([text])[0] >= j.max_tokens - 1:
            return "truncated", (f"the output reached max_tokens={j.max_tokens} before its JSON closed "
                                 f"({j.attempt + 1} attempts); raise tasks.{self.cfg.kind}.max_tokens")
        return "bad_json", f"no valid JSON after {j.attempt + 1} attempts"

    def meta(self, template_version: str, **kw: Any) -> dict[str, Any]:
        return {"template": template_version, "model": self.engine.model, **kw}

    def user(self, prompt: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}]


def anchor(text: str, start: int, end: int, max_chars: int = 70, look: int = 6) -> str | None:
    """A quotable line near the start of the section ``[start, end)`` that occurs once in
    ``text``: the longest unique one of its first ``look`` non-empty lines (plays repeat speaker
    names), cut at a word boundary; None if there is none."""
    best = None
    for line in [x.strip() for x in text[start:end].split("\n") if x.strip()][:look]:
        cand = line if len(line) <= max_chars else line[:max_chars].rsplit(" ", 1)[0]
        if len(cand) >= 12 and text.count(cand) == 1 and (best is None or len(cand) > len(best)):
            best = cand
    return best
