"""Answer scoring against a reference, SQuAD-style: lower case, no punctuation, no articles,
single spaces; exact match, token F1, and token recall (the reference's tokens found in the
prediction, for verbose generators)."""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(pred: str, ref: str) -> float:
    return float(normalize(pred) == normalize(ref))


def _overlap(pred: str, ref: str) -> tuple[int, int, int]:
    p, r = normalize(pred).split(), normalize(ref).split()
    return sum((Counter(p) & Counter(r)).values()), len(p), len(r)


def token_f1(pred: str, ref: str) -> float:
    common, n_p, n_r = _overlap(pred, ref)
    if n_p == 0 or n_r == 0:
        return float(n_p == n_r)
    if common == 0:
        return 0.0
    precision, recall = common / n_p, common / n_r
    return 2 * precision * recall / (precision + recall)


def token_recall(pred: str, ref: str) -> float:
    common, _, n_r = _overlap(pred, ref)
    return common / n_r if n_r else 1.0


METRICS = {"em": exact_match, "f1": token_f1, "recall": token_recall}


def score(pred: str, ref: str, metric: str = "f1") -> float:
    return METRICS[metric](pred, ref)
