"""LLM-synthesized long-range samples (vLLM engine): multi-hop questions across distant chunks.

For each context, 2-4 chunks are taken at distinct depth deciles and at least
``min_distance_frac`` of the context apart; the model sees only those chunks and writes a
question needing all of them, its answer and one verbatim evidence sentence per chunk. The
sample then asks the question over the *whole* context. Evidence is grounded back into the
context (exact, normalised, fuzzy); a sample is dropped with a reason when its JSON is bad
after the retry budget, or its evidence cannot be located in at least two distinct chunks.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from lcdata.engine import Engine, Request
from lcdata.grounding import ground
from lcdata.schema import PURPOSE_TRAIN, Context, Sample
from lcdata.stage import Stage
from lcdata.tasks.base import line_start_near, make_sample
from lcdata.tokenize import ChatTokenizer

TEMPLATE_VERSION = "multihop.v2"  # v2: labelled lines, evidence by label (v1: quoted sentences)
SCHEMA = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "maxLength": 300},
        "answer": {"type": "string", "maxLength": 200},
        "evidence": {"type": "array", "items": {"type": "string", "maxLength": 300}, "minItems": 1, "maxItems": 4},
    },
    "required": ["question", "answer", "evidence"],
    "additionalProperties": False,
}


def template() -> str:
    return resources.files("lcdata.templates").joinpath(f"{TEMPLATE_VERSION}.txt").read_text()


def pick_chunks(text: str, n: int, chunk_chars: int, min_gap_frac: float, rng: random.Random) -> list[tuple[int, int]] | None:
    """``n`` line-aligned chunks in distinct depth deciles, consecutive starts at least
    ``min_gap_frac`` of the text apart; None when the text is too short for that."""
    L = len(text)
    if L < n * chunk_chars or (n - 1) * min_gap_frac >= 1:
        return None
    for _ in range(20):
        deciles = sorted(rng.sample(range(10), n))
        starts = [line_start_near(text, int((d + rng.random()) / 10 * (L - chunk_chars))) for d in deciles]
        if all(b - a >= min_gap_frac * L and b - a >= chunk_chars for a, b in zip(starts, starts[1:], strict=False)):
            return [(s, min(L, s + chunk_chars)) for s in starts]
    return None


@dataclass
class _Job:
    ctx: Context
    index: int
    chunks: list[tuple[int, int]]
    messages: list[dict[str, str]]
    labels: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # "P1.3" -> (start, end, chunk)


_LABEL = re.compile(r"^\[?\s*P\s*(\d+)\s*[.:]\s*(\d+)\s*\]?$", re.I)


def label_lines(text: str, chunks: list[tuple[int, int]]) -> tuple[str, dict[str, tuple[int, int, int]]]:
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


class SynthStage(Stage[Context, Sample]):
    """``in`` contexts, ``out`` samples; drops: no_room, bad_json, evidence_not_found, evidence_single_chunk."""

    name = "synthesize"

    def __init__(self, cfg: Any, engine: Engine, tok: ChatTokenizer, seed: int, short_max_tokens: int) -> None:
        super().__init__()
        self.cfg, self.engine, self.tok, self.seed, self.short_max = cfg, engine, tok, seed, short_max_tokens

    def _jobs(self, ctxs: list[Context]) -> list[_Job]:
        jobs = []
        tpl = template()
        for ctx in ctxs:
            for i in range(self.cfg.per_context):
                rng = random.Random(f"{self.seed}:multihop:{ctx.id}:{i}")
                n = rng.randint(self.cfg.min_chunks, self.cfg.max_chunks)
                chunks = pick_chunks(ctx.text, n, self.cfg.chunk_chars, self.cfg.min_distance_frac, rng)
                if chunks is None:
                    self.drop(f"multihop:{ctx.id}:{i}", "no_room",
                              f"{ctx.id}: {len(ctx.text):,} chars cannot hold {n} chunks of {self.cfg.chunk_chars} "
                              f"chars {self.cfg.min_distance_frac:.0%} apart; lower tasks.multihop.chunk_chars or "
                              "min_distance_frac, or use longer buckets", {"context": ctx.id})
                    continue
                passages, labels = label_lines(ctx.text, chunks)
                prompt = tpl.format(n=len(chunks), source=ctx.source, passages=passages)
                jobs.append(_Job(ctx, i, chunks, [{"role": "user", "content": prompt}], labels))
        return jobs

    def run(self, records: Iterable[Context]) -> Iterator[Sample]:
        ctxs = list(records)
        self.stats.in_ += len(ctxs)
        pending = self._jobs(ctxs)
        for attempt in range(self.cfg.max_retries + 1):
            if not pending:
                break
            # each attempt is its own request (and cache entry): a retry is a new sample, not a cache hit
            reqs = [Request(j.messages, SCHEMA, f"{TEMPLATE_VERSION}#try{attempt}", self.cfg.max_tokens) for j in pending]
            texts = self.engine.generate(reqs)
            retry = []
            for j, text in zip(pending, texts, strict=True):
                try:
                    obj = json.loads(text)
                    assert isinstance(obj, dict) and {"question", "answer", "evidence"} <= set(obj)
                except (json.JSONDecodeError, AssertionError):
                    if attempt < self.cfg.max_retries:
                        retry.append(j)
                    else:
                        self.drop(f"multihop:{j.ctx.id}:{j.index}", "bad_json",
                                  f"no valid JSON after {attempt + 1} attempts", {"output": text[:2000]})
                    continue
                s = self._sample(j, obj)
                if s is not None:
                    self.stats.out += 1
                    yield s
            pending = retry

    def _sample(self, j: _Job, obj: dict[str, Any]) -> Sample | None:
        sid = f"multihop:{j.ctx.id}:{j.index}"
        text = j.ctx.text
        found: list[tuple[str, int, int, int, str]] = []  # (text, start, end, chunk, method)
        for ev in obj["evidence"]:
            m = _LABEL.match(str(ev).strip())
            if m:  # a line label: its span is known exactly
                hit = j.labels.get(f"P{int(m.group(1))}.{int(m.group(2))}")
                if hit is not None and all(f[1] != hit[0] for f in found):
                    found.append((text[hit[0]:hit[1]], hit[0], hit[1], hit[2], "label"))
                continue
            for k, (a, b) in enumerate(j.chunks):  # a quoted sentence: ground it
                g = ground(str(ev), text, a, b)
                if g is not None:
                    found.append((text[g.start:g.end], g.start, g.end, k, g.method))
                    break
        if not found:
            self.drop(sid, "evidence_not_found", "no evidence sentence could be located in the chosen chunks",
                      {"output": obj, "chunks": j.chunks})
            return None
        if len({f[3] for f in found}) < 2:
            self.drop(sid, "evidence_single_chunk", "the located evidence comes from one chunk only: not multi-hop",
                      {"output": obj, "chunks": j.chunks})
            return None
        found.sort(key=lambda f: f[1])
        n_tokens = self.tok.count([text])[0]
        return make_sample(
            task="multihop", index=j.index, ctx=j.ctx, text=text, parts=j.ctx.parts,
            question=str(obj["question"]).strip(), answer=str(obj["answer"]).strip(),
            evidence=[(f[0], f[1], f[2]) for f in found], n_tokens=n_tokens, short_max_tokens=self.short_max,
            purpose=PURPOSE_TRAIN,
            meta={"template": TEMPLATE_VERSION, "model": self.engine.cfg.model, "chunks": j.chunks,
                  "grounding": [f[4] for f in found],
                  "distance_frac": (found[-1][1] - found[0][1]) / len(text),
                  "distance_tokens": self.tok.count([text[found[0][1]:found[-1][1]]])[0]},
        )
