"""Near-duplicate removal with MinHash LSH (datasketch).

Documents (before assembly, over the whole build): word 5-gram shingles, Jaccard above
``doc_threshold``; the document first in id order stays, later ones are dropped (reason
``near_duplicate``). Questions (before packing, over the whole build): question + answer as
character 5-grams of the normalised text, per task, above ``question_threshold`` (reason
``duplicate_question``). Both are deterministic: the order is the sorted ids, not the
order workers finished in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from datasketch import MinHash, MinHashLSH

from lcdata.config import DedupFilter
from lcdata.filters.scoring import normalize
from lcdata.schema import Document, Sample
from lcdata.stage import KEEP, Filter, Verdict, reject

_WORD = re.compile(r"\w+")


def word_shingles(text: str, n: int = 5) -> set[str]:
    w = _WORD.findall(text.lower())
    if len(w) < n:
        return {" ".join(w)}
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def char_shingles(text: str, n: int = 5) -> set[str]:
    t = normalize(text)
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))}


def minhash(shingles: set[str], num_perm: int) -> MinHash:
    m = MinHash(num_perm=num_perm, seed=1)
    m.update_batch([s.encode() for s in sorted(shingles)])
    return m


def near_duplicates(items: Iterable[tuple[str, set[str]]], threshold: float, num_perm: int) -> dict[str, str]:
    """``items``: (id, shingles). Returns {dropped id: the id it duplicates}, first in id order kept."""
    # weigh false negatives 9:1: candidates are confirmed by the estimated Jaccard below anyway
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
    sigs: dict[str, MinHash] = {}
    dups: dict[str, str] = {}
    for rid, sh in sorted(items, key=lambda x: x[0]):
        m = minhash(sh, num_perm)
        hits = sorted(lsh.query(m))
        # LSH candidates are approximate: confirm with the estimated Jaccard
        hit = next((h for h in hits if sigs[h].jaccard(m) >= threshold), None)
        if hit is not None:
            dups[rid] = hit
            continue
        lsh.insert(rid, m)
        sigs[rid] = m
    return dups


class DocumentDedup(Filter[Document]):
    """Drops the documents the whole-build pass (``lcdata.build.dedup_documents``) found to be
    near-duplicates of an earlier one."""

    name = "dedup_documents"

    def __init__(self, dups: dict[str, str]) -> None:
        super().__init__()
        self.dups = dups

    def keep(self, doc: Document) -> Verdict:
        if doc.id in self.dups:
            return reject("near_duplicate", f"near-duplicate of {self.dups[doc.id]} (MinHash LSH, word 5-grams)")
        return KEEP


class QuestionDedup(Filter[Sample]):
    """Whole build, before packing: near-duplicate question + answer pairs within a task."""

    name = "dedup_questions"
    batch_size = None  # every sample of the build at once: duplicates span shards

    def __init__(self, cfg: DedupFilter) -> None:
        super().__init__()
        self.cfg = cfg

    def record_json(self, record: Sample) -> Any:
        return ""  # the sample is in OUT/samples/; its id joins to it

    def keep_batch(self, samples: list[Sample]) -> list[Verdict]:
        by_task: dict[str, list[tuple[str, set[str]]]] = {}
        for s in samples:
            by_task.setdefault(s.task, []).append((s.id, char_shingles(s.question + " " + s.answer)))
        dropped: dict[str, str] = {}
        for items in by_task.values():
            dropped.update(near_duplicates(items, self.cfg.question_threshold, self.cfg.num_perm))
        return [reject("duplicate_question", f"near-duplicate of {dropped[s.id]}") if s.id in dropped else KEEP
                for s in samples]
