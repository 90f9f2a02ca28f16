"""Evidence distance and depth.

``DistanceFilter`` (per sample): a sample with two or more evidence spans must have its first
and last span at least ``min_distance_tokens`` and ``min_distance_frac`` of the context apart
(reason ``evidence_too_close``); samples with fewer spans pass (nothing to measure).

``rebalance_depth`` (whole build, before packing): every training sample with evidence falls
in the decile of its mean evidence depth; over-full deciles are subsampled (seeded) until no
decile holds more than ``max_decile_share`` of them, so evidence is spread over the whole
context instead of piling up at the start and end (lost in the middle). Returns the dropped
ids and the before/after histograms.
"""

from __future__ import annotations

import math
import random
from typing import Any

from lcdata.config import EvidenceFilter
from lcdata.schema import PURPOSE_TRAIN, Sample
from lcdata.stage import KEEP, Filter, Verdict, reject


def distance(s: Sample) -> tuple[int, float] | None:
    """First-to-last evidence distance in tokens and as a fraction of the context."""
    if len(s.evidence) < 2:
        return None
    first, last = min(s.evidence, key=lambda e: e.start), max(s.evidence, key=lambda e: e.start)
    return last.token_start - first.token_start, (last.start - first.start) / max(1, s.context_chars)


class DistanceFilter(Filter[Sample]):
    name = "evidence_distance"

    def __init__(self, cfg: EvidenceFilter) -> None:
        super().__init__()
        self.cfg = cfg

    def examines(self, s: Sample) -> bool:
        return s.purpose == PURPOSE_TRAIN and len(s.evidence) >= 2  # fewer spans: no distance to measure

    def keep(self, s: Sample) -> Verdict:
        d = distance(s)
        if d is None or (d[0] >= self.cfg.min_distance_tokens and d[1] >= self.cfg.min_distance_frac):
            return KEEP
        return reject("evidence_too_close", f"first-to-last evidence {d[0]} tokens / {d[1]:.1%} of the context; "
                                             f"filters.evidence needs >= {self.cfg.min_distance_tokens} tokens and "
                                             f">= {self.cfg.min_distance_frac:.0%}")


def decile(depth: float) -> int:
    return min(9, max(0, int(depth * 10)))


def decile_cap(counts: list[int], share: float) -> int:
    """The largest per-decile cap c with c <= share * sum(min(n, c)): capping every decile at c
    leaves none above ``share`` of the total."""
    lo, hi = 0, max(counts, default=0)
    while lo < hi:
        c = (lo + hi + 1) // 2
        if c <= share * sum(min(n, c) for n in counts):
            lo = c
        else:
            hi = c - 1
    return lo


def rebalance_depth(items: list[tuple[str, float]], share: float, seed: int) -> tuple[set[str], dict[str, Any]]:
    """``items``: (sample id, mean evidence depth). Returns ids to drop and the histograms."""
    by: list[list[str]] = [[] for _ in range(10)]
    for sid, depth in sorted(items):
        by[decile(depth)].append(sid)
    before = [len(b) for b in by]
    cap = decile_cap(before, share) if share < 1 else max(before, default=0)
    if share >= 1 or math.isclose(share, 1):
        cap = max(before, default=0)
    rng = random.Random(f"{seed}:rebalance")
    drop: set[str] = set()
    for b in by:
        if len(b) > cap:
            drop.update(rng.sample(b, len(b) - cap))
    after = [min(n, cap) for n in before]
    return drop, {"cap_per_decile": cap, "before": before, "after": after}


class DepthRebalance(Filter[Sample]):
    """Whole build, before packing: subsample over-full deciles of mean evidence depth
    (``rebalance_depth``); the before/after histograms go to the stage's notes."""

    name = "rebalance_depth"
    batch_size = None  # the deciles are counted over the whole build

    def __init__(self, cfg: EvidenceFilter, seed: int) -> None:
        super().__init__()
        self.cfg, self.seed = cfg, seed

    def record_json(self, record: Sample) -> Any:
        return ""  # the sample is in OUT/samples/; its id joins to it

    def keep_batch(self, samples: list[Sample]) -> list[Verdict]:
        items = [(s.id, sum(e.depth for e in s.evidence) / len(s.evidence)) for s in samples]
        drop, hist = rebalance_depth(items, self.cfg.max_decile_share, self.seed)
        for i, n in enumerate(hist["before"]):
            self.note(f"before_d{i}", n)
        for i, n in enumerate(hist["after"]):
            self.note(f"after_d{i}", n)
        why = reject("depth_rebalance", f"its depth decile is over {self.cfg.max_decile_share:.0%} of the samples "
                     "with evidence")
        return [why if s.id in drop else KEEP for s in samples]
