"""The base classes keep the books: filters answer verdicts, producers yield records and
markers, and in/out/dropped and the rejects come out of the base alone."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.ipc as ipc
import pytest

from lcdata.stage import KEEP, Filter, Kept, Lineage, Planned, Producer, RejectSink, Verdict, reject


@dataclass
class Rec:
    id: str
    n: int


class Even(Filter[Rec]):
    name = "even"

    def keep(self, r: Rec) -> Verdict:
        return KEEP if r.n % 2 == 0 else reject("odd", f"{r.n} is odd")


class BatchEven(Even):
    name = "batch_even"
    batch_size = 2

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def keep_batch(self, batch: list[Rec]) -> list[Verdict]:
        self.batches.append(len(batch))
        return [self.keep(r) for r in batch]


def recs(n: int) -> list[Rec]:
    return [Rec(f"r{i}", i) for i in range(n)]


def test_a_filter_counts_and_writes_rejects(tmp_path):
    lin = Lineage()
    sink = RejectSink(tmp_path / "rejects.arrow")
    kept = list(Even().bind(lin, sink).run(recs(5)))
    sink.close()
    assert [r.id for r in kept] == ["r0", "r2", "r4"]
    assert lin.to_json() == {"even": {"in": 5, "out": 3, "dropped": {"odd": 2}}}
    rows = ipc.open_file(str(tmp_path / "rejects.arrow")).read_all().to_pylist()
    assert [(r["stage"], r["reason"], r["record_id"], r["message"]) for r in rows] == [
        ("even", "odd", "r1", "1 is odd"), ("even", "odd", "r3", "3 is odd")]


@pytest.mark.parametrize("batch_size, batches", [(2, [2, 2, 1]), (None, [5]), (10, [5])])
def test_keep_batch_sees_batches_of_batch_size(batch_size, batches):
    f = BatchEven()
    f.batch_size = batch_size
    lin = Lineage()
    kept = list(f.bind(lin, RejectSink(None)).run(recs(5)))
    assert f.batches == batches and [r.n for r in kept] == [0, 2, 4]
    assert lin.to_json()["batch_even"] == {"in": 5, "out": 3, "dropped": {"odd": 2}}


def test_keep_batch_must_answer_every_record():
    class Short(Even):
        batch_size = None

        def keep_batch(self, batch: list[Rec]) -> list[Verdict]:
            return [KEEP]

    with pytest.raises(RuntimeError, match="1 verdicts for 3 records"):
        list(Short().run(recs(3)))


class Splitter(Producer[Rec, str]):
    """Plans one output per unit of n; drops the units of records with n == 3."""

    name = "split"

    def produce(self, records):
        for r in records:
            yield Planned(r.n)
            if r.n == 3:
                for k in range(r.n):
                    self.drop(f"{r.id}.{k}", "three", "no threes")
                continue
            for k in range(r.n):
                yield f"{r.id}.{k}"


def test_a_producer_counts_planned_units_and_outputs():
    lin = Lineage()
    out = list(Splitter().bind(lin, RejectSink(None)).run(recs(5)))
    assert out == ["r1.0", "r2.0", "r2.1", "r4.0", "r4.1", "r4.2", "r4.3"]
    assert lin.to_json()["split"] == {"in": 10, "out": 7, "dropped": {"three": 3}}


def test_counts_inputs_and_kept_markers():
    class Groups(Producer[Rec, str]):
        """in: records; out: records used (Kept), while it emits one string per pair."""

        name = "groups"
        counts_inputs, counts_outputs = True, False

        def produce(self, records):
            buf = []
            for r in records:
                buf.append(r)
                if len(buf) == 2:
                    yield Kept(2)
                    yield "+".join(x.id for x in buf)
                    buf = []
            for r in buf:
                self.drop(r.id, "alone", "no pair")

    lin = Lineage()
    assert list(Groups().bind(lin, RejectSink(None)).run(recs(5))) == ["r0+r1", "r2+r3"]
    assert lin.to_json()["groups"] == {"in": 5, "out": 4, "dropped": {"alone": 1}}


def test_notes_are_kept_beside_the_counts():
    class Noting(Even):
        def keep(self, r: Rec) -> Verdict:
            self.note("seen")
            return super().keep(r)

    lin = Lineage()
    list(Noting().bind(lin, RejectSink(None)).run(recs(3)))
    assert lin.to_json()["even"]["notes"] == {"seen": 3}


def test_a_whole_input_filter_answers_once_even_for_no_records():
    class Histogram(Even):
        name = "hist"
        batch_size = None

        def keep_batch(self, batch: list[Rec]) -> list[Verdict]:
            self.note("calls")
            return [KEEP for _ in batch]

    lin = Lineage()
    assert list(Histogram().bind(lin, RejectSink(None)).run([])) == []
    assert lin.to_json()["hist"] == {"in": 0, "out": 0, "dropped": {}, "notes": {"calls": 1}}


def test_bad_batch_size_and_misused_markers_are_refused():
    f = Even()
    f.batch_size = 0
    with pytest.raises(ValueError, match="batch_size must be >= 1 or None, got 0"):
        list(f.run(recs(2)))

    class Wrong(Producer[Rec, str]):
        def produce(self, records):
            yield Kept()

    with pytest.raises(TypeError, match="set counts_outputs = False"):
        list(Wrong().run(recs(1)))
