"""Scoring of one prediction and the aggregates `lcdata eval` reports, dispatched to each
item's suite class: the metrics themselves live with the suites (``suites.py``), the shared
ones (`contains`, `qa_scores`) in ``base.py``."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from lcdata.evals.suites import EvalItem, suite_class


def score_item(item: EvalItem, pred: str) -> dict[str, Any]:
    return suite_class(item.suite).score(item, pred)


def aggregate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Per suite: its metrics and breakdowns (`EvalSuite.aggregate`), then ``primary`` (the
    headline metric's name) and ``value``. ``items`` carry ``suite``, ``meta`` and ``score``."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        by[it["suite"]].append(it)
    out: dict[str, Any] = {}
    for name, its in by.items():
        suite = suite_class(name)
        out[name] = suite.aggregate(its)
        out[name]["primary"] = suite.primary
        out[name]["value"] = out[name][suite.primary]
    return out
