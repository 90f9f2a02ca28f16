"""Scoring of one prediction per suite, and the aggregates `lcdata eval` reports.

Small models answer in sentences, so besides SQuAD's exact match and token F1 (on the best
reference) every QA suite reports ``contains``: the normalised reference appears in the
normalised prediction. NIAH scores each needle found (its digits in the output).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from lcdata.filters.scoring import exact_match, normalize, token_f1

PRIMARY = {"niah": "accuracy", "multihop": "contains", "squad": "f1", "counterfactual": "follows_context",
           "lift": "contains"}


def contains(pred: str, ref: str) -> float:
    r = normalize(ref)
    return float(bool(r) and re.search(rf"(?<!\w){re.escape(r)}(?!\w)", normalize(pred)) is not None)


def qa_scores(pred: str, refs: list[str]) -> dict[str, float]:
    return {"em": max(exact_match(pred, r) for r in refs), "f1": max(token_f1(pred, r) for r in refs),
            "contains": max(contains(pred, r) for r in refs)}


def niah_scores(pred: str, values: list[str]) -> dict[str, Any]:
    found = [v in re.sub(r"[\s,]", "", pred) for v in values]  # "4,821,003" counts as 4821003
    return {"found": found, "accuracy": sum(found) / len(found), "all": float(all(found))}


def counterfactual_class(pred: str, memory: str, context: str) -> str:
    m, c = contains(pred, memory), contains(pred, context)
    return "both" if m and c else "memory" if m else "context" if c else "other"


def score_item(item: dict[str, Any], pred: str) -> dict[str, Any]:
    suite = item["suite"]
    if suite == "niah":
        return niah_scores(pred, item["answers"])
    if suite == "counterfactual":
        memory, context = item["answers"]
        return {"class": counterfactual_class(pred, memory, context), "memory": contains(pred, memory)}
    return qa_scores(pred, item["answers"])


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else float("nan")


def aggregate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Per suite: the primary metric, the other metrics, and the breakdowns the plots use.
    ``items`` carry ``suite``, ``meta`` and ``score``."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        by[it["suite"]].append(it)
    out: dict[str, Any] = {}
    for suite, its in by.items():
        if suite == "niah":
            # every needle counts at its own depth (multi-needle items have needles elsewhere too)
            cells: dict[tuple[int, float], list[float]] = defaultdict(list)
            for it in its:
                if it["meta"]["needles"] == 1:
                    cells[(it["meta"]["length"], it["meta"]["depth"])].append(it["score"]["accuracy"])
            grid = sorted({d for _, d in cells})
            multi: dict[tuple[int, float], list[float]] = defaultdict(list)
            for it in its:
                if it["meta"]["needles"] > 1:
                    for f, d in zip(it["score"]["found"], it["meta"]["needle_depths"], strict=True):
                        near = min(grid or [d], key=lambda g, d=d: abs(g - d))
                        multi[(it["meta"]["length"], near)].append(float(f))
            out[suite] = {
                "n": len(its),
                "accuracy": _mean([it["score"]["accuracy"] for it in its]),
                "single": _mean([it["score"]["accuracy"] for it in its if it["meta"]["needles"] == 1]),
                "multi": _mean([it["score"]["accuracy"] for it in its if it["meta"]["needles"] > 1]),
                "grid_single": [[length, depth, _mean(v)] for (length, depth), v in sorted(cells.items())],
                "grid_multi": [[length, depth, _mean(v)] for (length, depth), v in sorted(multi.items())],
            }
        elif suite == "counterfactual":
            closed = {it["meta"]["fact"]: it for it in its if it["meta"]["mode"] == "closed"}
            ctx = [it for it in its if it["meta"]["mode"] == "context"]
            known = [it for it in ctx if closed.get(it["meta"]["fact"], {}).get("score", {}).get("memory")]
            classes = defaultdict(int)
            for it in known:
                classes[it["score"]["class"]] += 1
            nk = max(1, len(known))
            out[suite] = {
                "n": len(ctx), "closed_book_accuracy": _mean([c["score"]["memory"] for c in closed.values()]),
                "known": len(known),
                # among the facts the model knows closed-book: which version does it answer?
                "follows_context": round(classes["context"] / nk, 4) if known else float("nan"),
                "follows_memory": round(classes["memory"] / nk, 4) if known else float("nan"),
                "both": round(classes["both"] / nk, 4) if known else float("nan"),
                "other": round(classes["other"] / nk, 4) if known else float("nan"),
                "follows_context_all": _mean([float(it["score"]["class"] == "context") for it in ctx]),
            }
        else:
            res: dict[str, Any] = {"n": len(its)}
            for k in ("em", "f1", "contains"):
                res[k] = _mean([it["score"][k] for it in its])
            if suite == "multihop":
                dist: dict[float, list[dict[str, Any]]] = defaultdict(list)
                for it in its:
                    dist[it["meta"]["distance"]].append(it)
                res["by_distance"] = [
                    {"distance": d, "n": len(v), "contains": _mean([x["score"]["contains"] for x in v]),
                     "f1": _mean([x["score"]["f1"] for x in v]),
                     "distance_tokens": _mean([x["meta"]["distance_tokens"] for x in v])}
                    for d, v in sorted(dist.items())]
                res["by_depth"] = [
                    {"depth": b / 4, "n": len(v), "contains": _mean([x["score"]["contains"] for x in v])}
                    for b in range(4)
                    if (v := [x for x in its if b / 4 <= x["meta"]["depth"] < (b + 1) / 4 or (b == 3 and x["meta"]["depth"] == 1)])]
            out[suite] = res
        out[suite]["primary"] = PRIMARY[suite]
        out[suite]["value"] = out[suite][PRIMARY[suite]]
    return out
