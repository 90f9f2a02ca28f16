"""Stages, filters, lineage and rejects (datatrove's way).

A stage is a small class with a generator ``run(records) -> records``. It never drops a
record silently: ``self.drop(record_id, reason, message, record)`` counts it under a
reason code in the lineage and writes it to the rejects file. A ``Filter`` only answers
keep/drop + reason; the base class does the counting and writing.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from lcdata.arrowio import ArrowWriter
from lcdata.schema import REJECT_SCHEMA

log = logging.getLogger("lcdata")

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741

MAX_REJECT_RECORD_CHARS = 20_000  # keep reject files small even for a 50 MB bad document


@dataclass
class StageStats:
    """Counts of one stage. ``in_ == out + sum(dropped)`` for filters and for producers whose
    units are planned one for one (readers, assembly, LLM tasks); others may emit more records
    than they take (programmatic tasks: ``in`` contexts, ``out`` samples)."""

    in_: int = 0
    out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # stage-specific counts (e.g. per ablation)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"in": self.in_, "out": self.out, "dropped": dict(sorted(self.dropped.items()))}
        if self.notes:
            d["notes"] = dict(sorted(self.notes.items()))
        return d

    def merge(self, other: dict[str, Any]) -> None:
        self.in_ += other["in"]
        self.out += other["out"]
        self.dropped.update(other["dropped"])
        self.notes.update(other.get("notes", {}))


class Lineage:
    """Per-stage counts, in stage order; JSON-able, mergeable across shards."""

    def __init__(self) -> None:
        self.stages: dict[str, StageStats] = {}

    def stage(self, name: str) -> StageStats:
        return self.stages.setdefault(name, StageStats())

    def to_json(self) -> dict[str, Any]:
        return {k: v.to_json() for k, v in self.stages.items()}

    def merge(self, other: dict[str, Any]) -> None:
        for name, st in other.items():
            self.stage(name).merge(st)


class RejectSink:
    """Collects dropped records and writes them as one Arrow IPC file (temp, then rename)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def add(self, stage: str, reason: str, message: str, record_id: str, record: Any) -> None:
        if not isinstance(record, str):
            record = json.dumps(record, default=str, ensure_ascii=False)
        if len(record) > MAX_REJECT_RECORD_CHARS:
            record = record[:MAX_REJECT_RECORD_CHARS] + f"... [{len(record)} chars, truncated]"
        self.rows.append(
            {"stage": stage, "reason": reason, "message": message, "record_id": record_id, "record": record}
        )

    def close(self) -> None:
        if self.path is None:
            return
        w = ArrowWriter(self.path, REJECT_SCHEMA)
        try:
            w.write_rows(self.rows)
        except BaseException:
            w.abort()
            raise
        w.close()


class Stage(Generic[I, O]):
    """A step of the pipeline. Its lineage name is the class attribute ``name``; subclasses
    never write counters: ``drop`` counts drops, ``Filter`` and ``Producer`` count the rest."""

    name: str = "stage"

    def __init__(self) -> None:
        self.stats = StageStats()
        self.rejects: RejectSink = RejectSink(None)

    def bind(self, lineage: Lineage, rejects: RejectSink) -> Stage[I, O]:
        self.stats = lineage.stage(self.name)
        self.rejects = rejects
        return self

    def drop(self, record_id: str, reason: str, message: str, record: Any = "") -> None:
        self.stats.dropped[reason] += 1
        self.rejects.add(self.name, reason, message, record_id, record)
        log.warning("%s: dropped %s (%s): %s", self.name, record_id, reason, message)

    def note(self, key: str, n: int = 1) -> None:
        """A stage-specific count (an ablation, a skip) kept beside in/out/dropped."""
        self.stats.notes[key] += n

    def run(self, records: Iterable[I]) -> Iterator[O]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Verdict:
    """A filter's answer for one record: keep it, or drop it under a reason code."""

    keep: bool
    reason: str = ""
    message: str = ""


KEEP = Verdict(True)


def reject(reason: str, message: str) -> Verdict:
    return Verdict(False, reason, message)


class Filter(Stage[I, I]):
    """Answers keep/drop + reason per record (``keep``) or per batch (``keep_batch``, for
    filters that batch engine calls); counting and rejects are handled here.

    ``batch_size``: records handed to ``keep_batch`` at once (None: the whole input, for
    filters whose engine requests are cheapest in one call)."""

    batch_size: int | None = 1

    def keep(self, record: I) -> Verdict:
        raise NotImplementedError

    def examines(self, record: I) -> bool:
        """Whether this filter looks at ``record`` at all; the others pass it in place,
        uncounted (``in`` counts what the filter examined: verify's, the samples it checked)."""
        return True

    def keep_batch(self, batch: list[I]) -> list[Verdict]:
        return [self.keep(r) for r in batch]

    def record_id(self, record: I) -> str:
        return str(getattr(record, "id", "?"))

    def record_json(self, record: I) -> Any:
        to_row = getattr(record, "to_row", None)
        return to_row() if to_row else record

    def run(self, records: Iterable[I]) -> Iterator[I]:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"{type(self).__name__}.batch_size must be >= 1 or None, got {self.batch_size}")
        it = iter(records)
        first = True
        # a whole-input filter answers once even for no records (its notes, e.g. histograms, exist)
        while (batch := list(itertools.islice(it, self.batch_size))) or (first and self.batch_size is None):
            first = False
            mine = [self.examines(r) for r in batch]
            examined = [r for r, m in zip(batch, mine, strict=True) if m]
            self.stats.in_ += len(examined)
            verdicts = self.keep_batch(examined)
            if len(verdicts) != len(examined):
                raise RuntimeError(f"{type(self).__name__}.keep_batch returned {len(verdicts)} verdicts "
                                   f"for {len(examined)} records")
            answers = iter(verdicts)
            for r, m in zip(batch, mine, strict=True):
                if not m:
                    yield r  # not this filter's: passes in place
                    continue
                v = next(answers)
                if v.keep:
                    self.stats.out += 1
                    yield r
                else:
                    self.drop(self.record_id(r), v.reason, v.message, self.record_json(r))


@dataclass(frozen=True)
class Planned:
    """Yielded by ``Producer.produce``: ``n`` more units taken in (raw records read, samples
    planned). Every unit ends as an emitted record or a drop."""

    n: int = 1


@dataclass(frozen=True)
class Kept:
    """Yielded by ``Producer.produce`` of a stage whose ``out`` counts input units kept rather
    than records emitted (assembly: documents used in a context)."""

    n: int = 1


class Producer(Stage[I, O]):
    """Stages that plan and emit records (readers, assembly, tasks, LLM synthesis, tokenize).

    Subclasses implement ``produce(records)``, a generator of output records and markers; the
    base counts ``in`` from ``Planned`` markers (or, with ``counts_inputs``, every input record
    as one unit) and ``out`` from the records yielded (or, without ``counts_outputs``, from
    ``Kept`` markers)."""

    counts_inputs: bool = False
    counts_outputs: bool = True

    def produce(self, records: Iterable[I]) -> Iterator[O | Planned | Kept]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _counted(self, records: Iterable[I]) -> Iterator[I]:
        for r in records:
            self.stats.in_ += 1
            yield r

    def run(self, records: Iterable[I]) -> Iterator[O]:
        for item in self.produce(self._counted(records) if self.counts_inputs else records):
            if isinstance(item, Planned):
                self.stats.in_ += item.n
            elif isinstance(item, Kept):
                if self.counts_outputs:
                    raise TypeError(f"{type(self).__name__} yields Kept markers: set counts_outputs = False")
                self.stats.out += item.n
            else:
                self.stats.out += self.counts_outputs
                yield item
