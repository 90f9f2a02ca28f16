"""Assembly on real text: exact provenance, budgets, ordering, drops."""

from __future__ import annotations

import pytest

from lcdata.assemble import Assembler
from lcdata.config import AssembleConfig, ReadConfig, SourceConfig
from lcdata.read import ReadStage, plan_source, strategy_of
from lcdata.schema import Document
from lcdata.stage import Lineage, RejectSink


def docs_of(src: SourceConfig) -> list[Document]:
    stage = ReadStage(ReadConfig(), src)
    return [d for sh in plan_source(src) for d in stage.run(sh.units)]


def assemble(docs, tok, strategy, **cfg):
    lineage = Lineage()
    asm = Assembler(AssembleConfig(**cfg), tok, strategy, seed=0).bind(lineage, RejectSink(None))
    return list(asm.run(docs)), lineage.stage("assemble")


def check_provenance(ctxs, docs):
    by_id = {d.id: d for d in docs}
    for c in ctxs:
        covered = 0
        for p in c.parts:
            assert c.text[p.ctx_start : p.ctx_end] == by_id[p.doc_id].text[p.doc_start : p.doc_end]
            covered += p.ctx_end - p.ctx_start
        assert covered > 0.9 * len(c.text)  # headers and separators are the rest


def test_concat_play_acts_in_order_with_exact_offsets(tok):
    docs = docs_of(SourceConfig(name="sh", kind="shakespeare", include=["tragedies/macbeth.md"]))
    ctxs, st = assemble(docs, tok, "concat", buckets=[4096], reserve_tokens=256)
    check_provenance(ctxs, docs)
    assert len(ctxs) >= 5
    for c in ctxs:
        assert 0.5 * (4096 - 256) <= c.n_tokens <= 4096 - 256
        assert c.n_tokens == tok.count([c.text])[0]
    # acts appear in order across consecutive contexts and inside each
    order = [int(p.doc_id.rsplit("-", 1)[1]) for c in ctxs for p in c.parts]
    assert order == sorted(order)
    # a part that continues a document starts where the previous one ended
    parts = [p for c in ctxs for p in c.parts]
    for a, b in zip(parts, parts[1:]):
        if a.doc_id == b.doc_id:
            assert b.doc_start >= a.doc_end
    assert st.in_ == st.out + sum(st.dropped.values())


def test_concat_code_files_with_headers(tok):
    src = SourceConfig(name="std", kind="python_stdlib", include=["json/*"])
    docs = docs_of(src)
    assert strategy_of(src) == "concat"
    ctxs, st = assemble(docs, tok, "concat", buckets=[2048])
    check_provenance(ctxs, docs)
    assert ctxs[0].text.startswith("==> json/__init__.py <==\n")
    assert any(len({p.doc_id for p in c.parts}) > 1 for c in ctxs)


def test_natural_long_document_is_windowed(tok):
    docs = docs_of(SourceConfig(name="wiki", kind="wikipedia"))
    long_doc = max(docs, key=lambda d: len(d.text))
    ctxs, st = assemble([long_doc], tok, "natural", buckets=[1024], reserve_tokens=128)
    assert len(ctxs) > 3 and all(len(c.parts) == 1 for c in ctxs)
    check_provenance(ctxs, [long_doc])
    assert all(c.n_tokens <= 1024 - 128 for c in ctxs)


def test_short_document_is_dropped_with_reason(tok):
    d = Document("x/1", "x", "A short text.\n", {})
    ctxs, st = assemble([d], tok, "natural", buckets=[1024])
    assert ctxs == [] and st.dropped["too_short"] == 1 and st.out == 0


def test_a_single_huge_line_is_cut_at_token_bounds(tok):
    text = "word " * 3000  # one line, ~3000 tokens, no paragraph or line breaks
    d = Document("x/1", "x", text, {})
    ctxs, st = assemble([d], tok, "natural", buckets=[1024], reserve_tokens=128)
    check_provenance(ctxs, [d])
    assert len(ctxs) >= 3 and all(c.n_tokens <= 1024 - 128 for c in ctxs)


@pytest.mark.parametrize("weights", [None, [1, 3]])
def test_buckets_are_used(tok, weights):
    docs = docs_of(SourceConfig(name="sh", kind="shakespeare", include=["comedies/*"], limit_groups=2))
    ctxs, _ = assemble(docs, tok, "concat", buckets=[1024, 4096], bucket_weights=weights)
    assert {c.target_tokens for c in ctxs} == {1024, 4096}


# ------------------------------------------------------------------ neighbours
def topic_paragraphs() -> tuple[list[Document], dict[str, str]]:
    """Short real documents of two unrelated topics, interleaved: Macbeth's speeches and the
    paragraphs of the `json` and `pickle` modules' documentation."""
    import re

    from lcdata.read.corpora import python_docs_root

    play = docs_of(SourceConfig(name="sh", kind="shakespeare", include=["tragedies/macbeth.md"]))
    speeches = [p for d in play for p in re.split(r"\n\s*\n", d.text) if 300 <= len(p) <= 1500][:40]
    lib = python_docs_root(SourceConfig(name="d", kind="python_docs")) / "library"
    rst = (lib / "json.rst.txt").read_text() + "\n\n" + (lib / "pickle.rst.txt").read_text()
    paras = [p for p in re.split(r"\n\s*\n", rst) if 300 <= len(p) <= 1500][:40]
    docs, topic = [], {}
    for i, (a, b) in enumerate(zip(speeches, paras, strict=False)):
        for name, text in (("play", a), ("json", b)):
            d = Document(f"mix/{name}-{i:02d}", "mix", text, {"group": "mix", "order": len(docs)})
            docs.append(d)
            topic[d.id] = name
    return docs, topic


@pytest.mark.parametrize("embedder", ["static", "minilm"])
def test_neighbours_joins_related_documents_once_each(tok, embedder):
    docs, topic = topic_paragraphs()
    assert len(docs) >= 60
    ctxs, st = assemble(docs, tok, "neighbours", buckets=[1024], reserve_tokens=128, min_fill=0.3,
                        neighbours={"embedder": embedder, "k": 8})
    check_provenance(ctxs, docs)
    used = [p.doc_id for c in ctxs for p in c.parts]
    # every document in the walk once: a document appears again only as its own continuation
    firsts = [p.doc_id for c in ctxs for i, p in enumerate(c.parts) if p.doc_start == 0]
    assert len(firsts) == len(set(firsts))
    assert set(used) <= {d.id for d in docs}
    assert st.in_ == st.out + sum(st.dropped.values()) == len(docs)
    for c in ctxs:
        assert c.strategy == "neighbours" and len(c.joins) == len(c.parts) - 1
        assert all(-1.0 <= j <= 1.0001 for j in c.joins)
    # interleaved input: in the input order every join crosses topics; the walk keeps topics together
    joins = [(a.doc_id, b.doc_id) for c in ctxs for a, b in zip(c.parts, c.parts[1:], strict=False)]
    same = sum(topic[a] == topic[b] for a, b in joins) / len(joins)
    assert same >= 0.85, same
    # the recorded similarity is the embedding cosine of the two documents
    from lcdata.neighbours import embedder as get

    e = get(embedder)
    c = next(c for c in ctxs if c.joins)
    a, b = (next(d for d in docs if d.id == p.doc_id) for p in c.parts[:2])
    v = e([a.text[:2000], b.text[:2000]])
    assert c.joins[0] == pytest.approx(float(v[0] @ v[1]), abs=1e-3)


def test_neighbours_is_deterministic(tok):
    docs, _ = topic_paragraphs()
    one, _ = assemble(docs, tok, "neighbours", buckets=[1024], reserve_tokens=128, min_fill=0.3)
    two, _ = assemble([Document(d.id, d.source, d.text, dict(d.metadata)) for d in docs], tok, "neighbours", buckets=[1024], reserve_tokens=128, min_fill=0.3)
    assert [c.to_row() for c in one] == [c.to_row() for c in two]


# ------------------------------------------------------------------ 128K on many short lines
def perl_manual() -> list[Document]:
    """Perl's own reference pages, real documents made of thousands of short ``=item``
    paragraphs: ``perltoc.pod`` (the table of contents) where perl-doc is installed, else
    ``Config.pod`` and ``perldiag.pod`` (libperl, perl-modules: there wherever perl is)."""
    from pathlib import Path

    roots = [Path("/usr/share/perl"), Path("/usr/lib/x86_64-linux-gnu/perl"), Path("/usr/lib/perl5"),
             Path("/usr/share/perl5"), Path("/usr/local/lib/perl5")]
    found = {p.name: p for r in roots if r.is_dir() for p in sorted(r.rglob("*.pod"))}
    names = ["perltoc.pod"] if "perltoc.pod" in found else ["Config.pod", "perldiag.pod"]
    if not all(n in found for n in names):
        pytest.skip(f"no perl manual pages ({' and '.join(names)}) on this machine: install perl")
    return [Document(f"perl/{n}", "perl", found[n].read_text(), {"group": "perl", "path": n}) for n in names]


class CountingTok:
    """The tokenizer, counting the long texts it is asked to measure (whole contexts)."""

    def __init__(self, tok) -> None:
        self.tok, self.long_counts = tok, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def count(self, texts: list[str]) -> list[int]:
        self.long_counts += sum(len(t) > 100_000 for t in texts)
        return self.tok.count(texts)


def test_a_128k_context_of_many_short_paragraphs(tok):
    """Joined, short paragraphs take a token more each than alone ("\\n\\n" + text splits), so a
    128K context of them overshoots the sum of its pieces by thousands of tokens: hundreds of
    pieces go back to the queue, found in a handful of tokenizations (not one per piece)."""
    import math

    docs = perl_manual()
    counting = CountingTok(tok)
    lineage = Lineage()
    asm = Assembler(AssembleConfig(buckets=[131072]), counting, "concat", seed=0).bind(lineage, RejectSink(None))
    pieces = [p for d in docs for p in asm.pieces(d)]
    assert len(pieces) > 2000 and sum(p.n_tokens for p in pieces) > 131072
    counting.long_counts = 0
    ctxs = list(asm.run(docs))
    check_provenance(ctxs, docs)
    budget = 131072 - 256
    c = ctxs[0]
    assert 0.9 * budget < c.n_tokens <= budget and c.n_tokens == tok.count([c.text])[0]
    # the longest prefix that fits: the next piece would overshoot
    last = c.parts[-1]
    nxt = next(p for p in pieces if p.doc.id == last.doc_id and p.start == last.doc_end)
    assert tok.count([c.text + nxt.doc.text[nxt.start:nxt.end]])[0] > budget
    # its pieces alone count thousands of tokens fewer: as many more were poured in, and given back
    used = [p for p in pieces if any(q.doc_id == p.doc.id and q.doc_start <= p.start < q.doc_end for q in c.parts)]
    assert c.n_tokens - sum(p.n_tokens for p in used) > 2000
    # a few probes per halving of the pieces given back (17 here), not one per piece
    assert counting.long_counts <= 2 * math.ceil(math.log2(len(pieces))) + 2
    st = lineage.stage("assemble")
    assert st.in_ == st.out + sum(st.dropped.values()) == len(docs)
