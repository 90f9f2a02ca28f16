"""Evidence grounding: find an LLM-quoted evidence sentence in the context it came from.

Exact match first; then a normalised match (case, whitespace and punctuation folded, offsets
mapped back to the original text); then a fuzzy match against the context's sentences
(difflib ratio >= ``min_ratio``). Returns char offsets into the context, or None: a sample
whose evidence cannot be located is dropped by the caller with a reason.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_SENT = re.compile(r"[^.!?\n]+[.!?]?", re.M)


@dataclass
class Grounded:
    start: int
    end: int
    method: str  # exact | normalized | fuzzy
    score: float = 1.0


def _normalize(text: str) -> tuple[str, list[int]]:
    """Lowercased text with runs of non-alphanumerics folded to one space, and for each char
    of the result its index in the original."""
    out: list[str] = []
    idx: list[int] = []
    prev_space = True
    for i, ch in enumerate(text):
        if ch.isalnum():
            out.append(ch.lower())
            idx.append(i)
            prev_space = False
        elif not prev_space:
            out.append(" ")
            idx.append(i)
            prev_space = True
    return "".join(out), idx


def ground(evidence: str, context: str, lo: int = 0, hi: int | None = None, min_ratio: float = 0.85) -> Grounded | None:
    """Locate ``evidence`` in ``context[lo:hi]`` (offsets returned are into ``context``)."""
    ev = evidence.strip()
    if len(ev) < 8:
        return None  # too short to be evidence of anything
    hi = len(context) if hi is None else hi
    i = context.find(ev, lo, hi)
    if i >= 0:
        return Grounded(i, i + len(ev), "exact")
    norm_ctx, idx = _normalize(context[lo:hi])
    norm_ev = _normalize(ev)[0].strip()
    if norm_ev:
        j = norm_ctx.find(norm_ev)
        if j >= 0:
            a = lo + idx[j]
            b = lo + idx[j + len(norm_ev) - 1] + 1
            return Grounded(a, b, "normalized")
    best: Grounded | None = None
    for m in _SENT.finditer(context, lo, hi):
        sent = m.group().strip()
        if not sent or not 0.85 * len(ev) <= len(sent) <= 1.2 * len(ev):
            continue  # a fragment of the evidence, or a long sentence merely containing it, is no match
        r = difflib.SequenceMatcher(None, sent.lower(), ev.lower(), autojunk=False).ratio()
        if r >= min_ratio and (best is None or r > best.score):
            a = m.start() + (len(m.group()) - len(m.group().lstrip()))
            best = Grounded(a, a + len(sent), "fuzzy", r)
    return best
