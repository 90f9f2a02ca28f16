"""Evidence grounding keeps located spans and drops invented ones, on real text."""

from __future__ import annotations

from lcdata.grounding import ground
from lcdata.read.corpora import shakespeare_root

HAMLET = (shakespeare_root() / "tragedies" / "hamlet.md").read_text()


def test_exact_evidence_is_found():
    ev = "Something is rotten in the state of Denmark."
    g = ground(ev, HAMLET)
    assert g is not None and g.method == "exact" and HAMLET[g.start:g.end] == ev


def test_normalised_evidence_maps_back_to_original_offsets():
    # the play breaks lines with two spaces and a newline; a model quotes it on one line
    i = HAMLET.index("To be, or not to be")
    original = HAMLET[i:HAMLET.index("question", i) + len("question")]
    quoted = " ".join(original.split()).upper()
    g = ground(quoted, HAMLET)
    assert g is not None and g.method == "normalized"
    assert HAMLET[g.start:g.end] == original


def test_fuzzy_evidence_with_small_slips():
    ev = "Something is rotten in the state of Denmarke"  # one letter off, no full stop
    g = ground(ev, HAMLET)
    assert g is not None and g.method in ("normalized", "fuzzy")
    assert "rotten in the state of Denmark" in HAMLET[g.start:g.end]


def test_invented_evidence_is_not_found():
    assert ground("The king of Denmark flew to the moon on a silver rocket.", HAMLET) is None
    assert ground("short", HAMLET) is None


def test_search_window():
    ev = "Something is rotten in the state of Denmark."
    i = HAMLET.index(ev)
    assert ground(ev, HAMLET, lo=i + 10) is None
    assert ground(ev, HAMLET, lo=i - 100, hi=i + 100).start == i
