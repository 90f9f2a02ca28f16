"""Embedding neighbours: join related short documents into long contexts (ICLM).

``strategy: neighbours`` embeds every document of an input shard, finds each one's ``k``
nearest neighbours (cosine, exact: faiss ``IndexFlatIP``, so a build is deterministic), and
walks the graph as In-Context Pretraining (Shi et al., 2023) does: start at the unvisited
document that the fewest others have as a neighbour, step to its most similar unvisited
neighbour, and when every neighbour is used, start again at the next least-linked document.
Each document is used once; the assembler pours the walk, in order, into contexts of the
buckets' lengths (see ``lcdata.assemble``), and every context records the similarity of
each join (``Context.joins``).

Two embedders: ``minilm`` (all-MiniLM-L6-v2, the coherence filter's model, about 100-300
documents/s on 2 CPU cores) and ``static`` (WordLlama's 256-d static token embeddings,
numpy only, thousands of documents/s); ``bench/neighbours_scale.py`` measures both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

Embed = Callable[[list[str]], np.ndarray]


class StaticEmbedder:
    """WordLlama ``l2_supercat`` 256-d static embeddings (MIT), loaded from the files the wheel
    ships (its own loader looks for the tokenizer in the wrong folder, then downloads)."""

    def __init__(self) -> None:
        try:
            import wordllama
            from safetensors import safe_open
            from tokenizers import Tokenizer
            from wordllama.inference import WordLlamaInference
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError("the static embedder needs WordLlama: `pip install wordllama==0.4.0.post1` "
                                      "(lcdata's install does it)") from e
        d = Path(wordllama.__file__).parent
        with safe_open(str(d / "weights" / "l2_supercat_256.safetensors"), framework="np") as f:
            table = f.get_tensor("embedding.weight")
        tok = Tokenizer.from_file(str(d / "tokenizers" / "l2_supercat_tokenizer_config.json"))
        self.model = WordLlamaInference(table, tok)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 256), np.float32)
        return np.ascontiguousarray(self.model.embed(texts, norm=True), dtype=np.float32)


def embedder(name: str) -> Embed:
    """The named embedder, one per process (loading MiniLM costs seconds)."""
    from lcdata.engine import shared
    from lcdata.filters.coherence import Embedder

    if name == "minilm":
        return shared("minilm", Embedder)
    if name == "static":
        return shared("static", StaticEmbedder)
    raise ValueError(f"unknown embedder `{name}`; use `minilm` or `static`")


def knn(vecs: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by inner product (unit vectors: cosine), exact:
    (similarities, indices), -1 where there are fewer than ``k`` others."""
    import faiss

    n, d = vecs.shape
    index = faiss.IndexFlatIP(d)
    index.add(vecs)
    kk = min(k + 1, n)
    sims = np.full((n, k), -np.inf, np.float32)
    ids = np.full((n, k), -1, np.int64)
    for a in range(0, n, block):  # blocks bound the (block x n) distance matrix faiss builds
        s, i = index.search(vecs[a:a + block], kk)
        for r in range(s.shape[0]):
            keep = i[r] != a + r  # not itself (ties may put it second)
            row_s, row_i = s[r][keep][:k], i[r][keep][:k]
            sims[a + r, :len(row_s)] = row_s
            ids[a + r, :len(row_i)] = row_i
    return sims, ids


def walk(ids: np.ndarray) -> list[int]:
    """The ICLM traversal of a kNN graph (rows sorted by similarity): every node once. Starts
    at the unvisited node with the fewest in-links (ties: lowest index), steps to the most
    similar unvisited neighbour, and restarts the same way when none is left."""
    n = ids.shape[0]
    indeg = np.bincount(ids[ids >= 0].ravel(), minlength=n)
    starts = iter(np.lexsort((np.arange(n), indeg)).tolist())
    seen = np.zeros(n, bool)
    order: list[int] = []
    while len(order) < n:
        cur = next(s for s in starts if not seen[s])
        while cur >= 0:
            seen[cur] = True
            order.append(cur)
            cur = next((int(j) for j in ids[cur] if j >= 0 and not seen[j]), -1)
    return order


def neighbour_order(texts: list[str], embed: Embed, k: int) -> tuple[list[int], np.ndarray]:
    """The order in which to join ``texts`` and their unit embeddings."""
    if not texts:
        return [], np.zeros((0, 1), np.float32)
    vecs = embed(texts)
    if len(texts) == 1:
        return [0], vecs
    _, ids = knn(vecs, k)
    return walk(ids), vecs
