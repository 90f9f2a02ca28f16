"""Multi-hop questions over distant parts of one context."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from lcdata.config import MultihopTask
from lcdata.schema import PURPOSE_TRAIN, Context, Sample, sample_id
from lcdata.stage import Planned
from lcdata.tasks.base import make_sample
from lcdata.tasks.synth import (
    SCHEMA,
    TEMPLATE_VERSION,
    Job,
    LLMStage,
    Passages,
    bad_qa,
    label_lines,
    pick_chunks,
    resolve_evidence,
    template,
)


class MultihopStage(LLMStage):
    """2-4 chunks at distinct depth deciles, ``min_distance_frac`` apart; the model sees only
    them, writes a question needing all of them and cites a line of each; the sample asks the
    question over the *whole* context."""

    kind, Config = "multihop", MultihopTask

    def plan(self, ctx: Context) -> Iterator[Sample | Job | Planned]:
        tpl = template(TEMPLATE_VERSION)
        for i in range(self.cfg.per_context):
            rng = random.Random(f"{self.seed}:multihop:{ctx.id}:{i}")
            n = rng.randint(self.cfg.min_chunks, self.cfg.max_chunks)
            chunks = pick_chunks(ctx.text, n, self.cfg.chunk_chars, self.cfg.min_distance_frac, rng)
            uid = sample_id("multihop", ctx.id, i)
            if chunks is None:
                yield Planned()
                self.drop(uid, "no_room",
                          f"{ctx.id}: {len(ctx.text):,} chars cannot hold {n} chunks of {self.cfg.chunk_chars} "
                          f"chars {self.cfg.min_distance_frac:.0%} apart; lower tasks.multihop.chunk_chars or "
                          "min_distance_frac, or use longer buckets", {"context": ctx.id})
                continue
            passages, labels = label_lines(ctx.text, chunks)
            prompt = tpl.format(n=len(chunks), source=ctx.source, passages=passages)
            yield Job([uid], self.user(prompt), TEMPLATE_VERSION, SCHEMA, self.cfg.max_tokens, self._handle,
                      Passages(ctx, i, chunks, labels))

    def _handle(self, j: Job[Passages], obj: dict[str, Any]) -> Iterator[Sample]:
        s = self.sample(j.data, obj)
        if s is not None:
            yield s

    def sample(self, p: Passages, obj: dict[str, Any]) -> Sample | None:
        ctx, index, chunks, labels = p.ctx, p.index, p.chunks, p.labels
        sid = sample_id("multihop", ctx.id, index)
        text = ctx.text
        why = bad_qa(obj)
        if why:
            self.drop(sid, "empty_output" if "empty" in why else "degenerate_output", why, {"output": obj})
            return None
        found = resolve_evidence(text, chunks, labels, obj["evidence"])
        if not found:
            self.drop(sid, "evidence_not_found", "no evidence sentence could be located in the chosen chunks",
                      {"output": obj, "chunks": chunks})
            return None
        if len({f.chunk for f in found}) < 2:
            self.drop(sid, "evidence_single_chunk", "the located evidence comes from one chunk only: not multi-hop",
                      {"output": obj, "chunks": chunks})
            return None
        return make_sample(
            task="multihop", index=index, ctx=ctx, text=text, parts=ctx.parts,
            question=str(obj["question"]).strip(), answer=str(obj["answer"]).strip(),
            evidence=found, tok=self.tok, short_max_tokens=self.short_max,
            purpose=PURPOSE_TRAIN, meta=self.meta(TEMPLATE_VERSION, chunks=chunks, grounding=[f.method for f in found]),
        )
