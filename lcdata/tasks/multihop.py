"""Multi-hop questions over distant parts of one context, built from parts.

``method: composed`` (the default) never asks the model to invent a multi-hop question:

1. **Atomic facts, answer first.** For each part, code picks a line in a chunk at a chosen
   depth decile and an answer span inside that line (a number, a name, a code identifier); the
   model only writes a question whose answer is that span (``atomic.v2``, two worked examples;
   the question's form constrained by a JSON-schema ``pattern``). Evidence is the line,
   located by construction.
2. **Checked on the spot.** A question that contains its answer, does not ask about its line
   (``grounded``), runs away (``degenerate``), or that the generator answers closed-book
   (greedy, token F1 >= ``closed_max``) is dropped;
   each part has ``candidates`` lines, the first good one is used.
3. **Composed in code** through a versioned form (``FORMS``), the gold answer computed from
   the parts: *bridge* (hop 1's answer is a name that hop 2's question mentions, found in
   both lines), *comparison* (two answers compared: larger for numbers, same or different
   otherwise), *ordering* (2-4 questions; answer each and give the order of their answers in
   the document).
4. Optionally (``merge``) the model rewrites the composed question as one fluent question;
   dropped (``merge_lost_part``) if a part's words are gone or an answer leaks into it.
5. Optionally (``distractors``) passages of other documents most similar to the evidence
   (MiniLM) are inserted next to the evidence chunks, recorded in ``meta.distractors``.

Every sample carries a **certificate** (``meta.certificate``): its evidence spans (chars,
tokens, depth), the first-to-last token distance, and whether one window of
``window_tokens`` tokens holds all spans, which drops it (``window_holds_all``).

``method: direct`` is the one-call design (the model reads 2-4 labelled chunks, writes a
question needing all of them and cites one line per chunk); the schema's ``evidence_k``
fields offer chunk k's labels as an ``enum``, so the citation of every chunk is guaranteed
by the decoder.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lcdata.config import MultihopTask, VerifyFilter
from lcdata.filters.scoring import normalize, score
from lcdata.schema import PURPOSE_TRAIN, Context, Part, Sample, sample_id
from lcdata.stage import Planned
from lcdata.tasks.base import Span, insert_texts, line_start_near, make_sample
from lcdata.tasks.synth import (
    QUESTION_PATTERN,
    Job,
    LLMStage,
    Passages,
    bad_qa,
    label_lines,
    pick_chunks,
    resolve_evidence,
    template,
)

ATOMIC, CHECK, MERGE, DIRECT = "atomic.v2", "atomic_check.v1", "merge.v1", "multihop.v3"  # atomic v2: few-shot, the line only
BRIEF = "\n\nAnswer briefly."


# A merged question is longer: two quantifiers of <= 128 (xgrammar's limit, see QUESTION_PATTERN)
LONG_QUESTION_PATTERN = r'^[A-Z][^"\\?\x00-\x1f]{8,128}[^"\\?\x00-\x1f]{0,128}\?$'


def question_schema(must_contain: str | None = None, long: bool = False) -> dict[str, Any]:
    """``{"question": ...}`` that reads as a question; ``must_contain``: a literal the decoder
    must put in it (hop 2 of a bridge names hop 1's answer)."""
    pattern = LONG_QUESTION_PATTERN if long else QUESTION_PATTERN
    if must_contain:  # the same character class as QUESTION_PATTERN, around the literal
        lit = re.escape(must_contain)
        pattern = rf'^[A-Z][^"\\?\x00-\x1f]{{0,120}}{lit}[^"\\?\x00-\x1f]{{0,120}}\?$'

    return {"type": "object", "properties": {"question": {"type": "string", "pattern": pattern}},
            "required": ["question"], "additionalProperties": False}


def direct_schema(labels: dict[str, tuple[int, int, int]], n: int) -> dict[str, Any]:
    """One ``evidence_k`` field per passage, its ``enum`` the labels shown for passage k."""
    props: dict[str, Any] = {"question": {"type": "string", "pattern": QUESTION_PATTERN},
                             "answer": {"type": "string", "minLength": 1, "maxLength": 200}}
    for k in range(n):
        props[f"evidence_{k + 1}"] = {"type": "string", "enum": [lb for lb, v in labels.items() if v[2] == k]}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


# ---------------------------------------------------------------- answer spans (chosen in code)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?![\w.])")
_NAME = re.compile(r"(?<![\w.])[A-Z][a-z]{2,}(?:\s+(?:of\s+|de\s+)?[A-Z][a-z]{2,})*(?![\w])")
_CODE = re.compile(r"``?([A-Za-z_][\w.]*(?:\(\))?)``?|(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?|[A-Za-z_]\w*\(\))")
_STOP = set("""The This That These Those There Then Than When Where What Which Who Whom Whose Why How And But For
Nor Not Yet With Without From Into Upon Unto Your You Yours Our Ours Their They Them His Her Hers Its Thou Thee Thy
Thine Sir Lord Lady Madam Enter Exit Exeunt Exeunt Act Scene Note See Also Return Returns Raise Raises If Else Here
Now Let All Any Some Each Every One Two Three Well Good Come What Nay Yea Yes Ay Alas Are Was Were Will Shall
Would Should Could Can May Might Must Have Has Had Does Did Doing Being Been Use Used Using New Changed Added Default
Example Examples Python True False None Unicode Note Warning Deprecated Since Version Parameters Otherwise""".split())
_WORDS = re.compile(r"(?<![\w'-])[a-z]{6,}(?![\w'-])")
_COMMON = set("""should would could before between against itself himself herself themselves another
through without within further always because however therefore whether either neither nothing something
anything everything little better people things thought called return returns object objects string strings
method methods function functions module modules argument arguments default value values example""".split())
_MARKUP = re.compile(r"^\s*(\.\.|[-=~^*#]{3,}|>>>|\$|[|+])")


@dataclass(frozen=True)
class Fact:
    """An answer span chosen in code: ``answer == text[start:end]`` inside the line
    ``text[line_start:line_end]``; ``kind`` number, name or code."""

    answer: str
    start: int
    end: int
    line_start: int
    line_end: int
    kind: str


def line_facts(text: str, a: int, b: int) -> list[Fact]:
    """Candidate answers in the lines of ``text[a:b]``: code identifiers, numbers, capitalised
    names (not a line's or sentence's first word, not a stop word), rare content words (6+
    letters, at most twice in the text); lines of markup are skipped."""
    out: list[Fact] = []
    pos = a
    for raw in text[a:b].split("\n"):
        ls, le = pos, pos + len(raw)
        pos = le + 1
        line = raw.strip()
        if not 30 <= len(line) <= 300 or _MARKUP.match(raw) or line.isupper():
            continue
        first = ls + raw.index(line)
        seen: set[str] = set()
        for kind, rx in (("code", _CODE), ("number", _NUMBER), ("name", _NAME), ("word", _WORDS)):
            for m in rx.finditer(raw):
                g = next((i for i in range(1, (m.lastindex or 0) + 1) if m.group(i)), 0)
                s, e = ls + m.start(g), ls + m.end(g)
                if kind == "name":  # "Then Macbeth": the name starts after a stop word or a line's first word
                    while (s == first or text[s:e].split()[0] in _STOP) and " " in text[s:e]:
                        s += text[s:e].index(" ") + 1
                ans = text[s:e]
                if ans in seen or ans.split()[0] in _STOP:
                    continue
                # a capitalised word that starts a line or sentence is no name ("Speak, I charge you")
                if kind == "name" and (s == first or re.search(r"[.?!;:_'\"(\[]\s*$", text[first:s])):
                    continue
                if kind == "number" and (len(ans) > 12 or ans.count(".") > 1):
                    continue
                if kind == "code" and len(ans) < 4:  # "e.g", "i.e"
                    continue
                if kind == "word" and (ans in _COMMON or text.count(ans) > 2):
                    continue  # a rare content word: what the line says, not how
                seen.add(ans)
                out.append(Fact(ans, s, e, first, first + len(line), kind))
    return out


def pick_facts(text: str, chunk: tuple[int, int], k: int, rng: random.Random, kinds: set[str] | None = None,
               max_count: int = 3) -> list[Fact]:
    """Up to ``k`` facts from distinct lines of ``chunk``, seeded; answers that occur at most
    ``max_count`` times in the whole text first (a rare answer names one fact)."""
    facts = [f for f in line_facts(text, *chunk) if kinds is None or f.kind in kinds]
    rng.shuffle(facts)
    # stable: names, numbers and identifiers before plain words, rare ones first, else shuffled
    facts.sort(key=lambda f: (f.kind == "word", text.count(f.answer) > max_count))
    out: list[Fact] = []
    for f in facts:
        if all(f.line_start != g.line_start for g in out):
            out.append(f)
        if len(out) == k:
            break
    return out


def bridge_facts(text: str, chunks: list[tuple[int, int]], min_gap: int, k: int,
                 rng: random.Random) -> list[tuple[Fact, Fact]]:
    """Up to ``k`` (hop 1, hop 2) pairs: hop 1's answer is a name (or identifier, or rare
    word) in a line of the first chunk that also occurs in a line at least ``min_gap`` chars
    away, before or after it, where hop 2 asks about another span of that line."""
    out: list[tuple[Fact, Fact]] = []
    names = [f for f in line_facts(text, *chunks[0]) if f.kind in ("name", "code") and 2 <= text.count(f.answer) <= 30]
    rng.shuffle(names)
    for h1 in names:
        hop2: list[Fact] = []
        h1_line = text.rfind("\n", 0, h1.start) + 1
        for m in re.finditer(rf"(?<!\w){re.escape(h1.answer)}(?!\w)", text):
            at = m.start()
            ls = text.rfind("\n", 0, at) + 1
            if abs(ls - h1_line) < min_gap:  # measured between the evidence lines, as the certificate does
                continue
            le = text.find("\n", at)
            hop2 += [f for f in line_facts(text, ls, len(text) if le < 0 else le) if h1.answer not in f.answer
                     and f.answer not in h1.answer and f.answer not in text[ls:f.start].split()[-1:]]
        if hop2:
            out.append((h1, rng.choice(hop2)))
        if len(out) == k:
            break
    return out


def shared_kind(per_chunk: list[list[Fact]]) -> set[str] | None:
    """A fact kind every chunk has (comparisons compare like with like): numbers first."""
    for kind in ("number", "name", "code", "word"):
        if all(any(f.kind == kind for f in fs) for fs in per_chunk):
            return {kind}
    return None


# ---------------------------------------------------------------- composition forms (versioned)
FORMS = {"bridge": "compose.bridge.v1", "comparison": "compose.comparison.v1", "ordering": "compose.ordering.v1"}
_HOP = "the answer to step 1"


@dataclass
class Atom:
    """One atomic QA: a fact and the question the model wrote for it."""

    fact: Fact
    question: str = ""
    status: str = "pending"  # pending, ok, or the reason it failed
    known: str = ""  # the generator's closed-book answer
    writer: str = "llm"  # llm, or cloze: the model's question failed (``replaced``) and code wrote one
    replaced: str = ""


def cloze(text: str, fact: Fact) -> str:
    """A question written in code: the fact's line quoted with its answer blanked."""
    line = text[fact.line_start:fact.start] + "___" + text[fact.end:fact.line_end]
    return f'Which word or name fills the blank in this line of the document: "{line.strip()}"?'


def compose(form: str, atoms: list[Atom], rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    """The composed question, its gold answer (computed from the parts) and what the form
    recorded (``meta.compose``). ``atoms`` in document order."""
    if form == "bridge":
        h1, h2 = atoms
        step2 = re.sub(re.escape(h1.fact.answer), _HOP, h2.question, count=1)
        q = f"Answer in two steps.\nStep 1: {h1.question}\nStep 2: {step2}"
        a = f"Step 1: {h1.fact.answer}. Step 2: {h2.fact.answer}."
        return q, a, {"bridge": h1.fact.answer, "answer": h2.fact.answer}
    if form == "comparison":
        x, y = atoms[0], atoms[1]
        nums = [_number(t.fact.answer) for t in (x, y)]
        if None not in nums and nums[0] != nums[1]:
            q = (f"Answer both questions, then say which answer is the larger number.\n"
                 f"(1) {x.question}\n(2) {y.question}")
            big = 1 if nums[0] > nums[1] else 2  # type: ignore[operator]
            a = f"(1) {x.fact.answer}. (2) {y.fact.answer}. The larger is ({big}): {(x, y)[big - 1].fact.answer}."
            return q, a, {"compare": "larger", "result": big}
        same = normalize(x.fact.answer) == normalize(y.fact.answer)
        q = (f"Answer both questions, then say whether the two answers are the same.\n"
             f"(1) {x.question}\n(2) {y.question}")
        a = f"(1) {x.fact.answer}. (2) {y.fact.answer}. {'The same' if same else 'Different'}."
        return q, a, {"compare": "same", "result": same}
    # ordering: the questions in a seeded shuffled order, lettered; the gold order is by position
    shown = list(range(len(atoms)))
    rng.shuffle(shown)
    letters = "ABCD"
    lines = "\n".join(f"({letters[j]}) {atoms[i].question}" for j, i in enumerate(shown))
    q = ("Each question below is answered in a different part of the document. Answer each one, then list "
         f"the letters in the order their answers appear in the document.\n{lines}")
    answers = "; ".join(f"({letters[j]}) {atoms[i].fact.answer}" for j, i in enumerate(shown))
    order = ", ".join(letters[shown.index(i)] for i in range(len(atoms)))
    return q, f"{answers}. Order in the document: {order}.", {"order": order}


def _number(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


# ---------------------------------------------------------------- the stage
@dataclass
class Plan:
    """One composed sample in the making: its parts' candidate atoms, in document order."""

    ctx: Context
    index: int
    form: str
    sample_id: str
    chunks: list[tuple[int, int]]
    parts: list[list[Atom]]  # per part, its candidates in preference order
    rng: random.Random
    open_jobs: int = 0
    done: bool = False
    merged: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AtomJob:
    plan: Plan
    part: int
    atom: Atom


class MultihopStage(LLMStage):
    """Multi-hop questions whose evidence lies in 2-4 distant chunks (see the module doc)."""

    kind, Config = "multihop", MultihopTask

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.pool: list[Context] = []  # every context of the shard: distractor passages come from them
        if self.cfg.window_tokens is None:  # a task config made outside a BuildConfig
            self.cfg = self.cfg.model_copy(update={"window_tokens": VerifyFilter().window_tokens})

    def produce(self, records: Iterable[Context]) -> Iterator[Sample | Planned]:
        def seen(rs: Iterable[Context]) -> Iterator[Context]:
            for r in rs:
                self.pool.append(r)
                yield r
        return super().produce(seen(records))

    def plan(self, ctx: Context) -> Iterator[Sample | Job | Planned]:
        for i in range(self.cfg.per_context):
            if self.cfg.method == "direct":
                yield from self.plan_direct(ctx, i)
            else:
                yield from self.plan_composed(ctx, i)

    # ------------------------------------------------------------ composed
    def plan_composed(self, ctx: Context, i: int) -> Iterator[Job | Planned]:
        cfg, text = self.cfg, ctx.text
        rng = random.Random(f"{self.seed}:multihop:{ctx.id}:{i}")
        form = rng.choice(cfg.forms)
        sid = sample_id("multihop", ctx.id, i)
        yield Planned()
        parts: list[list[Atom]] = []
        chunks: list[tuple[int, int]] | None
        if form == "bridge":
            # hop 1's chunk anywhere (hop 2 lies min_distance_frac before or after it); a few tried
            pairs = []
            for _ in range(6):
                chunks = pick_chunks(text, 1, cfg.chunk_chars, 0, rng)
                pairs = bridge_facts(text, chunks, int(cfg.min_distance_frac * len(text)), cfg.candidates, rng) \
                    if chunks else []
                if pairs:
                    break
            if pairs:
                # hop 1's candidates, then hop 2's: each pair is used together (the bridge names hop 2's line)
                parts = [[Atom(h1) for h1, _ in pairs], [Atom(h2) for _, h2 in pairs]]
        else:
            n = 2 if form == "comparison" else rng.randint(cfg.min_chunks, cfg.max_chunks)
            for _ in range(6):  # chunk layouts tried until every chunk has a fact
                chunks = pick_chunks(text, n, cfg.chunk_chars, cfg.min_distance_frac, rng)
                kinds = None
                if chunks and form == "comparison":
                    kinds = shared_kind([line_facts(text, *c) for c in chunks])
                parts = [[Atom(f) for f in pick_facts(text, c, cfg.candidates, rng, kinds)] for c in chunks or []]
                if chunks is None or all(parts):
                    break
        if not chunks or not parts or any(not p for p in parts):
            self.drop(sid, "no_room", f"{ctx.id}: no {form} facts: {len(text):,} chars give no line with a number, "
                      f"name or identifier in every chunk of {cfg.chunk_chars} chars {cfg.min_distance_frac:.0%} "
                      "apart; lower tasks.multihop.chunk_chars or min_distance_frac, or use longer buckets",
                      {"context": ctx.id, "form": form})
            return
        plan = Plan(ctx, i, form, sid, chunks, parts, rng)
        for k, cands in enumerate(parts):
            for c, atom in enumerate(cands):
                plan.open_jobs += 1
                # hop 2 of a bridge names hop 1's answer (the decoder enforces it)
                yield self.atom_job(plan, k, atom, parts[0][c].fact.answer if form == "bridge" and k == 1 else None)

    def atom_job(self, plan: Plan, k: int, atom: Atom, must: str | None = None) -> Job[AtomJob]:
        """The job that asks for ``atom``'s question; ``must``: a name it has to mention."""
        text, f = plan.ctx.text, atom.fact
        line = text[f.line_start:f.line_end]
        extra = f'\nYour question must mention "{must}".' if must else ""
        prompt = template(ATOMIC).format(source=plan.ctx.source, line=line, answer=f.answer, extra=extra)
        return Job([], self.user(prompt), ATOMIC, question_schema(must), self.cfg.max_tokens, self._atom,
                   AtomJob(plan, k, atom), on_fail=self._atom_failed)

    def _atom_failed(self, j: Job[AtomJob], text: str) -> Iterator[Sample | Job[Any]]:
        j.data.atom.status = self.bad_output(j, text)[0]
        yield from self._settle(j)

    def _check_failed(self, j: Job[AtomJob], text: str) -> Iterator[Sample | Job[Any]]:
        j.data.atom.status = self.bad_output(j, text)[0]
        j.data.plan.open_jobs -= 1
        yield from self.maybe_compose(j.data.plan)

    def _atom(self, j: Job[AtomJob], obj: dict[str, Any]) -> Iterator[Sample | Job[Any]]:
        plan, atom = j.data.plan, j.data.atom
        q = str(obj["question"]).strip()
        atom.question = q
        why = bad_qa({"question": q, "answer": atom.fact.answer})
        line = plan.ctx.text[atom.fact.line_start:atom.fact.line_end]
        if why or degenerate(q):
            atom.status = "degenerate_output"
        elif normalize(atom.fact.answer) in normalize(q):
            atom.status = "answer_in_question"
        elif not grounded(q, line, atom.fact.answer):
            atom.status = "ungrounded_question"
        yield from self._settle(j)

    def _settle(self, j: Job[AtomJob]) -> Iterator[Sample | Job[Any]]:
        """After the model's question: a failed one is replaced by a cloze (``fallback``); a
        usable one goes to its closed-book check."""
        plan, atom = j.data.plan, j.data.atom
        if atom.status != "pending" and self.cfg.fallback == "cloze":
            atom.replaced, atom.status, atom.writer = atom.status, "pending", "cloze"
            atom.question = cloze(plan.ctx.text, atom.fact)
            self.note("atoms_cloze")
        if atom.status != "pending" or not self.cfg.closed_book_check:
            if atom.status == "pending":
                atom.status = "ok"
            plan.open_jobs -= 1
            yield from self.maybe_compose(plan)
            return
        # the atom's closed-book check: greedy, the question alone
        self.note("atoms_checked")
        yield Job([], self.user(atom.question + BRIEF), CHECK, None, 32, self._checked, j.data,
                  on_fail=self._check_failed, temperature=0.0)

    def _checked(self, j: Job[AtomJob], obj: dict[str, Any]) -> Iterator[Sample | Job[Any]]:
        plan, atom = j.data.plan, j.data.atom
        atom.known = str(obj.get("text", ""))[:200]
        known = score(atom.known, atom.fact.answer, "f1") >= self.cfg.closed_max
        atom.status = "atomic_closed_book" if known else "ok"
        self.note("atoms_closed_book", int(known))
        plan.open_jobs -= 1
        yield from self.maybe_compose(plan)

    def maybe_compose(self, plan: Plan) -> Iterator[Sample | Job[Any]]:
        if plan.open_jobs > 0 or plan.done:
            return
        plan.done = True
        chosen = self._choose(plan)
        if isinstance(chosen, str):
            return
        q, a, info = compose(plan.form, chosen, plan.rng)
        plan.extra["compose"] = {"form": plan.form, "version": FORMS[plan.form], **info}
        if self.cfg.merge:
            plan.done = False
            yield self.merge_job(plan, chosen, q, a)
            return
        s = self.finish(plan, chosen, q, a)
        if s is not None:
            yield s

    def _choose(self, plan: Plan) -> list[Atom] | str:
        """The first good atom of each part (a bridge: the first pair good on both hops), or
        the drop reason."""
        if plan.form == "bridge":
            pairs = [(x, y) for x, y in zip(*plan.parts, strict=True) if x.status == y.status == "ok"]
            if pairs:
                return list(pairs[0])
            failed = [t for t in (*plan.parts[0], *plan.parts[1]) if t.status != "ok"]
        else:
            good = [next((t for t in cands if t.status == "ok"), None) for cands in plan.parts]
            if all(good):
                return good  # type: ignore[return-value]
            failed = [t for cands in plan.parts if not any(x.status == "ok" for x in cands) for t in cands]
        reason = _worst(t.status for t in failed)
        self.drop(plan.sample_id, reason, f"{plan.form}: no part-{'pair' if plan.form == 'bridge' else ''} "
                  f"with a usable atomic question ({', '.join(sorted({t.status for t in failed}))})",
                  {"context": plan.ctx.id, "atoms": [{"answer": t.fact.answer, "question": t.question,
                                                      "status": t.status, "closed_book": t.known} for t in failed]})
        return reason

    def merge_job(self, plan: Plan, atoms: list[Atom], q: str, a: str) -> Job[Any]:
        prompt = template(MERGE).format(question=q)
        return Job([], self.user(prompt), MERGE, question_schema(long=True), self.cfg.max_tokens, self._merged,
                   (plan, atoms, q, a), on_fail=self._merge_failed)

    def _merge_failed(self, j: Job[Any], text: str) -> None:
        plan = j.data[0]
        self.drop(plan.sample_id, self.bad_output(j, text)[0], "the merge of the parts gave no valid question",
                  {"output": text[:2000]})

    def _merged(self, j: Job[Any], obj: dict[str, Any]) -> Iterator[Sample]:
        plan, atoms, q, a = j.data
        merged = str(obj["question"]).strip()
        lost = [t.question for t in atoms if not _keeps(merged, t)]
        leaked = [t.fact.answer for t in atoms if normalize(t.fact.answer) in normalize(merged)]
        if lost or leaked:
            self.drop(plan.sample_id, "merge_lost_part", f"the merged question {'loses a part' if lost else ''}"
                      f"{' and ' if lost and leaked else ''}{'gives an answer away' if leaked else ''}",
                      {"merged": merged, "composed": q, "lost": lost, "leaked": leaked})
            return
        plan.extra["compose"]["merged_from"] = q
        s = self.finish(plan, atoms, merged, a)
        if s is not None:
            yield s

    def finish(self, plan: Plan, atoms: list[Atom], question: str, answer: str) -> Sample | None:
        """The sample over the whole context (with distractors, if configured) and its certificate."""
        ctx = plan.ctx
        text, parts = ctx.text, ctx.parts
        spans = sorted({(t.fact.line_start, t.fact.line_end) for t in atoms})
        ev: list[Span] = [Span(text[s:e], s, e) for s, e in spans]
        if self.cfg.distractors > 0:
            text, parts, ev, plan.extra["distractors"] = self.with_distractors(ctx, ev, plan.rng)
        s = make_sample(
            task="multihop", index=plan.index, ctx=ctx, text=text, parts=parts, question=question, answer=answer,
            evidence=ev, tok=self.tok, short_max_tokens=self.short_max, purpose=PURPOSE_TRAIN,
            meta=self.meta(ATOMIC, form=plan.form, chunks=plan.chunks, **plan.extra,
                           atoms=[{"question": t.question, "answer": t.fact.answer, "kind": t.fact.kind,
                                   "writer": t.writer, "replaced": t.replaced, "closed_book": t.known}
                                  for t in atoms]))
        # every atom's line lies in a chunk of its own (a bridge: min_distance_frac apart)
        cert = certificate(s, self.cfg.window_tokens, len(spans))
        s.meta["certificate"] = cert
        self.note("certificates")
        if cert["window_holds_all"] or cert["chunks"] < 2:
            self.drop(plan.sample_id, "window_holds_all", f"one {self.cfg.window_tokens}-token window holds every "
                      f"evidence span ({cert['distance_tokens']} tokens first to last)", {"certificate": cert})
            return None
        if cert["distance_frac"] < self.cfg.min_distance_frac:  # e.g. distractors grew the context
            self.drop(plan.sample_id, "evidence_too_close", f"first to last evidence line {cert['distance_frac']:.1%} "
                      f"of the context, below `min_distance_frac` {self.cfg.min_distance_frac:.0%}",
                      {"certificate": cert})
            return None
        return s

    def with_distractors(self, ctx: Context, ev: list[Span], rng: random.Random
                         ) -> tuple[str, list[Part], list[Span], list[dict[str, Any]]]:
        """Passages of other documents of the shard most similar (MiniLM cosine) to the evidence
        lines, inserted at line starts right before or after evidence lines, within the
        context's token budget; evidence offsets and parts shift with them."""
        from lcdata.engine import shared
        from lcdata.filters.coherence import Embedder

        n, size = self.cfg.distractors, self.cfg.chunk_chars
        own = {p.doc_id for p in ctx.parts}
        cands: list[tuple[str, str, int]] = []  # (passage, doc id, doc offset)
        for other in self.pool:
            for p in other.parts:
                if p.doc_id in own:
                    continue
                for a in range(p.ctx_start, p.ctx_end - size // 2, size):
                    a = line_start_near(other.text, a)
                    b = line_start_near(other.text, min(p.ctx_end, a + size))
                    if b - a >= size // 2 and other.text[a:b].strip():
                        cands.append((other.text[a:b].rstrip("\n") + "\n", p.doc_id, p.doc_start + a - p.ctx_start))
        room = ctx.target_tokens - ctx.n_tokens
        if not cands or room <= 0:
            self.note("distractors_no_room" if cands else "distractors_no_other_documents")
            return ctx.text, ctx.parts, ev, []
        emb = shared("minilm", Embedder)
        q = emb([e.text for e in ev]).mean(0)
        sims = emb([c[0] for c in cands]) @ q
        order = sorted(range(len(cands)), key=lambda k: -float(sims[k]))
        inserts: list[tuple[int, str, Any]] = []
        used: set[str] = set()
        for k in order:
            if len(inserts) == n:
                break
            passage, doc, off = cands[k]
            cost = self.tok.count([passage])[0]
            if passage in used or cost > room:
                continue
            room -= cost
            used.add(passage)
            e = ev[len(inserts) % len(ev)]
            after = rng.random() < 0.5  # before or after an evidence line, so position is no tell
            at = ctx.text.find("\n", e.end) + 1 if after else e.start
            at = e.start if at <= 0 else at
            inserts.append((at, passage, {"doc_id": doc, "doc_start": off, "similarity": round(float(sims[k]), 4)}))
        text, parts, done = insert_texts(ctx.text, ctx.parts, inserts)
        # evidence moves with the text inserted before it
        shift = [(p, len(s)) for p, s, _ in inserts]
        moved = [Span(e.text, e.start + sum(n for p, n in shift if p <= e.start),
                      e.end + sum(n for p, n in shift if p <= e.start)) for e in ev]
        info = [{**d.tag, "start": d.start, "end": d.end} for d in done]
        return text, parts, moved, info

    # ------------------------------------------------------------ direct (one call, enum citations)
    def plan_direct(self, ctx: Context, i: int) -> Iterator[Job | Planned]:
        cfg = self.cfg
        rng = random.Random(f"{self.seed}:multihop:{ctx.id}:{i}")
        n = rng.randint(cfg.min_chunks, cfg.max_chunks)
        chunks = pick_chunks(ctx.text, n, cfg.chunk_chars, cfg.min_distance_frac, rng)
        uid = sample_id("multihop", ctx.id, i)
        if chunks is None:
            yield Planned()
            self.drop(uid, "no_room", f"{ctx.id}: {len(ctx.text):,} chars cannot hold {n} chunks of {cfg.chunk_chars} "
                      f"chars {cfg.min_distance_frac:.0%} apart; lower tasks.multihop.chunk_chars or "
                      "min_distance_frac, or use longer buckets", {"context": ctx.id})
            return
        passages, labels = label_lines(ctx.text, chunks)
        prompt = template(DIRECT).format(n=len(chunks), source=ctx.source, passages=passages)
        yield Job([uid], self.user(prompt), DIRECT, direct_schema(labels, len(chunks)), cfg.max_tokens,
                  self._direct, Passages(ctx, i, chunks, labels))

    def _direct(self, j: Job[Passages], obj: dict[str, Any]) -> Iterator[Sample]:
        p = j.data
        sid = j.sample_ids[0]
        why = bad_qa(obj)
        if why:
            self.drop(sid, "empty_output" if "empty" in why else "degenerate_output", why, {"output": obj})
            return
        cited = [obj[f"evidence_{k + 1}"] for k in range(len(p.chunks))]
        found = resolve_evidence(p.ctx.text, p.chunks, p.labels, cited)  # labels only: exact lines
        s = make_sample(
            task="multihop", index=p.index, ctx=p.ctx, text=p.ctx.text, parts=p.ctx.parts,
            question=str(obj["question"]).strip(), answer=str(obj["answer"]).strip(), evidence=found, tok=self.tok,
            short_max_tokens=self.short_max, purpose=PURPOSE_TRAIN,
            meta=self.meta(DIRECT, form="direct", chunks=p.chunks))
        s.meta["certificate"] = cert = certificate(s, self.cfg.window_tokens, len({f.chunk for f in found}))
        self.note("certificates")
        if cert["window_holds_all"] or cert["chunks"] < 2:
            self.drop(sid, "window_holds_all", f"one {self.cfg.window_tokens}-token window holds every evidence span",
                      {"certificate": cert})
            return
        yield s


_ORDER = ["atomic_closed_book", "answer_in_question", "ungrounded_question", "degenerate_output", "truncated",
          "bad_json"]


def _worst(statuses: Iterable[str]) -> str:
    """The drop reason of a sample whose parts failed: the most telling of its atoms' reasons."""
    st = set(statuses)
    return next((r for r in _ORDER if r in st), next(iter(sorted(st)), "bad_json"))


_WORD = re.compile(r"[a-z]{4,}")
_FILLER = {"what", "which", "does", "that", "this", "with", "from", "have", "there", "their", "whom", "whose", "when",
           "where", "they", "them", "then", "than", "will", "would", "should", "could", "been", "were", "your",
           "answer", "question", "line", "document", "passage", "text"}


def grounded(question: str, line: str, answer: str) -> bool:
    """Whether a question asks about its line: at least two of the line's content words (4+
    letters, not the answer's) are in it, or all of them for a line with fewer. Small models
    write "What is the answer to this question?" for any line."""
    words = set(_WORD.findall(line.lower())) - _FILLER - set(_WORD.findall(answer.lower()))
    return len(words & set(_WORD.findall(question.lower()))) >= min(2, len(words))


def degenerate(question: str) -> bool:
    """Runaway decoding: a 30+ character run without a space, or one word 4+ times."""
    if re.search(r"\S{30,}", question):
        return True
    counts: dict[str, int] = {}
    for w in _WORD.findall(question.lower()):
        counts[w] = counts.get(w, 0) + 1
    return max(counts.values(), default=0) >= 4


def _keeps(merged: str, atom: Atom) -> bool:
    """Whether a merged question still asks ``atom``'s part: half of its content words (4+
    letters) are in it."""
    words = set(_WORD.findall(atom.question.lower())) - _FILLER
    if not words:
        return True
    have = set(_WORD.findall(merged.lower()))
    return len(words & have) * 2 >= len(words)


def certificate(s: Sample, window_tokens: int, chunks: int) -> dict[str, Any]:
    """What proves a sample needs distant parts: its evidence spans (chars, tokens, depth), the
    first-to-last token distance, the chunks they come from, and whether one window of
    ``window_tokens`` tokens holds them all (then it is not long-range)."""
    ev = sorted(s.evidence, key=lambda e: e.start)
    first, last = ev[0], ev[-1]
    span_tokens = max(e.token_end for e in ev) - first.token_start
    return {
        "spans": [{"start": e.start, "end": e.end, "token_start": e.token_start, "token_end": e.token_end,
                   "depth": e.depth} for e in ev],
        "distance_tokens": last.token_start - first.token_start,
        "distance_frac": round((last.start - first.start) / max(1, s.context_chars), 6),
        "chunks": chunks,
        "window_tokens": window_tokens,
        "window_holds_all": span_tokens <= window_tokens,
    }
