"""Long-context assembly to target token lengths.

Documents are cut into *pieces* at paragraph boundaries (then line boundaries, then token
boundaries for a paragraph longer than a context), counted with the real tokenizer, and
poured into contexts of a target length chosen per context from the configured buckets:

- ``natural``: each document alone (a long one yields several consecutive windows);
- ``concat``: the documents of one group (a repository's files, a play's acts, a manual's
  pages) in their planned order, each file announced by a ``==> path <==`` header;
- ``neighbours``: all documents of the input shard in the order of an embedding
  nearest-neighbour walk (``lcdata.neighbours``), so each context joins related documents;
  ``Context.joins`` records the similarity at each join.

Every context keeps exact provenance: for each part,
``context.text[ctx_start:ctx_end] == document.text[doc_start:doc_end]``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from lcdata.chat import ChatTokenizer
from lcdata.config import AssembleConfig
from lcdata.schema import Context, Document, Part
from lcdata.stage import Kept, Producer

_PARA_BREAK = re.compile(r"\n[ \t]*\n+")


@dataclass
class Piece:
    doc: Document
    start: int
    end: int
    n_tokens: int


def _cuts(text: str, pattern: re.Pattern[str], start: int, end: int) -> list[int]:
    return [m.end() for m in pattern.finditer(text, start, end) if m.end() < end]


def _split_spans(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    bounds = [start, *_cuts(text, pattern, start, end), end]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


_LINE = re.compile(r"\n")


class Assembler(Producer[Document, Context]):
    """Consumes the Documents of one input shard (grouped, in plan order), emits Contexts.

    Stats: ``in`` documents, ``out`` documents used in at least one context, drops by reason
    (``too_short``: a document or group too short for the smallest fill)."""

    name = "assemble"

    def __init__(self, cfg: AssembleConfig, tok: ChatTokenizer, strategy: str, seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = tok
        self.strategy = strategy
        self.seed = seed
        # room for a file header in the smallest context
        self.max_piece = min(cfg.buckets) - cfg.reserve_tokens - 32

    # -- pieces ------------------------------------------------------------------
    def pieces(self, doc: Document) -> list[Piece]:
        text = doc.text
        spans = _split_spans(text, 0, len(text), _PARA_BREAK)
        counts = self.tok.count([text[a:b] for a, b in spans])
        out: list[Piece] = []
        for (a, b), n in zip(spans, counts, strict=True):
            if n <= self.max_piece:
                out.append(Piece(doc, a, b, n))
                continue
            lines = _split_spans(text, a, b, _LINE)
            for (la, lb), ln in zip(lines, self.tok.count([text[x:y] for x, y in lines]), strict=True):
                if ln <= self.max_piece:
                    out.append(Piece(doc, la, lb, ln))
                else:
                    out.extend(self._hard_split(doc, la, lb))
        return out

    def _hard_split(self, doc: Document, a: int, b: int) -> list[Piece]:
        """A line longer than a context (minified code, a 50 MB one-liner): cut at token bounds."""
        enc = self.tok.tokenizer.encode(doc.text[a:b], add_special_tokens=False)
        out = []
        n = len(enc.ids)
        for t in range(0, n, self.max_piece):
            t_end = min(n, t + self.max_piece)
            ca = a + enc.token_to_chars(t)[0] if t else a
            cb = a + enc.token_to_chars(t_end)[0] if t_end < n else b
            if cb > ca:
                out.append(Piece(doc, ca, cb, t_end - t))
        return out

    # -- contexts ----------------------------------------------------------------
    def _target(self, rng: random.Random) -> int:
        bucket = rng.choices(self.cfg.buckets, weights=self.cfg.bucket_weights)[0]
        return bucket

    counts_inputs = True  # in: documents
    counts_outputs = False  # out: documents used (Kept), not contexts

    def produce(self, records: Iterable[Document]) -> Iterator[Context | Kept]:
        group: list[Document] = []
        if self.strategy == "neighbours":
            yield from self._neighbours(list(records))
            return
        for doc in records:
            if self.strategy == "natural":
                yield from self._assemble([doc], doc.id)
            elif group and doc.group != group[0].group:
                yield from self._assemble(group, group[0].group)
                group = [doc]
            else:
                group.append(doc)
        if group:
            yield from self._assemble(group, group[0].group)

    def _neighbours(self, docs: list[Document]) -> Iterator[Context | Kept]:
        """The shard's documents in nearest-neighbour walk order, poured into contexts as one
        sequence, named after the shard's first group (unique: shards never split groups)."""
        if not docs:
            return
        from lcdata.neighbours import embedder, neighbour_order

        nc = self.cfg.neighbours
        order, vecs = neighbour_order([d.text[:nc.embed_chars] for d in docs], embedder(nc.embedder), nc.k)
        self.vectors = {docs[i].id: vecs[i] for i in range(len(docs))}
        yield from self._assemble([docs[i] for i in order], docs[0].group)

    vectors: dict[str, np.ndarray] | None = None  # neighbours: each document's embedding

    def _header(self, doc: Document, n_docs: int) -> str:
        if n_docs > 1 and "path" in doc.metadata and self.strategy != "natural" and "#" not in doc.id:
            return f"==> {doc.metadata['path']} <==\n"
        return ""

    def _assemble(self, docs: list[Document], group: str) -> Iterator[Context | Kept]:
        rng = random.Random(f"{self.seed}:{docs[0].source}:{group}")
        source = docs[0].source
        used: set[str] = set()
        pieces = [p for d in docs for p in self.pieces(d)]
        headers = {d.id: self._header(d, len(docs)) for d in docs}
        header_tokens = dict(zip(headers, self.tok.count(list(headers.values())), strict=True))
        sep_tokens = 1  # "\n\n" between parts of different documents

        def cost(run: list[Piece]) -> int:
            return sum(p.n_tokens + (header_tokens[p.doc.id] + sep_tokens
                                     if i == 0 or run[i - 1].doc.id != p.doc.id else 0)
                       for i, p in enumerate(run))

        target = self._target(rng)
        acc: list[Piece] = []
        acc_tokens = 0
        k = 0
        queue = list(reversed(pieces))
        while queue:
            p = queue.pop()
            new_doc = not acc or acc[-1].doc.id != p.doc.id
            c = p.n_tokens + (header_tokens[p.doc.id] + sep_tokens if new_doc else 0)
            if acc and acc_tokens + c > target - self.cfg.reserve_tokens:
                ctx, n_used = self._emit(acc, source, group, k, target, headers)
                if ctx is not None:
                    used.update(x.doc.id for x in acc[:n_used])
                    k += 1
                    yield ctx
                # pieces cut off by a token overshoot at the joins start the next context
                queue.append(p)
                queue.extend(reversed(acc[n_used:]))
                target = self._target(rng)
                acc, acc_tokens = [], 0
                continue
            acc.append(p)
            acc_tokens += c
        if acc:
            while acc:
                ctx, n_used = self._emit(acc, source, group, k, target, headers)
                if ctx is not None:
                    used.update(x.doc.id for x in acc[:n_used])
                    k += 1
                    yield ctx
                acc = acc[n_used:]
                if acc and cost(acc) < self.cfg.min_fill * (target - self.cfg.reserve_tokens):
                    break  # a tail too short for a context
        for d in docs:
            if d.id in used:
                yield Kept()
            else:
                self.drop(d.id, "too_short", self._too_short(d), {"id": d.id, "chars": len(d.text)})

    def _too_short(self, d: Document) -> str:
        if self.strategy == "neighbours":
            return (f"{d.id}: {len(d.text):,} chars, in the last documents of its input shard's neighbour walk, "
                    f"too few tokens for another context (min_fill {self.cfg.min_fill} x bucket); lower "
                    "`assemble.min_fill` or put more documents in a shard (`records_per_shard`, `docs_per_shard`)")
        return (f"{d.id}: {len(d.text):,} chars, too short for any context (min_fill {self.cfg.min_fill} x bucket); "
                "lower `assemble.min_fill` or the buckets, or join it with related documents (strategy concat "
                "or neighbours)")

    def _join(self, run: list[Piece], headers: dict[str, str]) -> tuple[str, list[Part]]:
        """The text of ``run`` joined (a header before each new document, ``\\n\\n`` between
        documents) and its parts, consecutive pieces of one document merged into one part."""
        chunks: list[str] = []
        parts: list[Part] = []
        pos = 0
        for p in run:
            seg = p.doc.text[p.start:p.end]
            if parts and parts[-1].doc_id == p.doc.id and parts[-1].doc_end == p.start:
                parts[-1].ctx_end += len(seg)
                parts[-1].doc_end = p.end
            else:
                prefix = ("\n\n" if parts else "") + headers[p.doc.id]
                chunks.append(prefix)
                pos += len(prefix)
                parts.append(Part(p.doc.id, pos, pos + len(seg), p.start, p.end))
            chunks.append(seg)
            pos += len(seg)
        return "".join(chunks), parts

    def _longest_fit(self, acc: list[Piece], headers: dict[str, str],
                     budget: int) -> tuple[int, str, list[Part], int]:
        """The longest prefix of ``acc`` whose joined text is at most ``budget`` tokens (one piece
        at least): ``(n_pieces, text, parts, n_tokens)``. Token merges at the joins make the
        joined text longer than the sum of its pieces (by a token a join on text of many short
        paragraphs, 4% of a 128K context), so pieces are left for the next context: probed
        from the end with doubling steps, then by bisection, about ``2 log2(dropped)``
        tokenizations whatever the number of pieces to leave out."""

        def measure(n: int) -> tuple[int, str, list[Part], int]:
            text, parts = self._join(acc[:n], headers)
            return n, text, parts, self.tok.count([text])[0]

        fit = measure(len(acc))
        if fit[3] <= budget or fit[0] == 1:
            return fit
        over, step = len(acc), 1  # over: the shortest prefix known to overshoot
        while True:
            fit = measure(max(1, over - step))
            if fit[3] <= budget or fit[0] == 1:
                break
            over, step = fit[0], step * 2
        while over - fit[0] > 1:  # fit[0] fits (or is one piece), over overshoots
            mid = measure((fit[0] + over) // 2)
            if mid[3] <= budget:
                fit = mid
            else:
                over = mid[0]
        return fit

    def _emit(self, acc: list[Piece], source: str, group: str, k: int, target: int,
              headers: dict[str, str]) -> tuple[Context | None, int]:
        """The context made of the longest prefix of ``acc`` that fits, and that prefix's length
        (all of ``acc`` when it is too short to make a context: those pieces are left out)."""
        budget = target - self.cfg.reserve_tokens
        n_used, text, parts, n_tokens = self._longest_fit(acc, headers, budget)
        if n_tokens < self.cfg.min_fill * budget:
            return None, len(acc)
        joins: list[float] = []
        if self.vectors is not None:
            joins = [round(float(self.vectors[a.doc_id] @ self.vectors[b.doc_id]), 4)
                     for a, b in zip(parts, parts[1:], strict=False)]
        ctx = Context(f"ctx:{source}:{group}:{k}", source, group, self.strategy, text, parts, n_tokens, target, joins)
        return ctx, n_used
