"""experiments/arms.py (the four-arm experiment): its split, the configs it writes, and the
statistics of its report, on tiny real inputs (the run itself takes ~2 hours: bench/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def arms():
    spec = importlib.util.spec_from_file_location("arms", ROOT / "experiments" / "arms.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_is_seeded_and_keeps_held_out_documents_out_of_training(arms):
    a, b, c = arms.split(0, 3, 4, 3, 4), arms.split(0, 3, 4, 3, 4), arms.split(1, 3, 4, 3, 4)
    assert a == b and a != c
    for sp in (a, c):
        h, t = sp["heldout"], sp["train"]
        assert (len(h["plays"]), len(t["plays"]), len(h["packages"]), len(t["packages"])) == (3, 4, 3, 4)
        assert not set(h["plays"]) & set(t["plays"]) and not set(h["packages"]) & set(t["packages"])
    # the run recorded in bench/RESULTS.md
    assert a["heldout"] == {"plays": ["comedies/twelfth-night.md", "histories/henry-viii.md",
                                      "problems/troilus-and-cressida.md"], "packages": ["html", "tomllib", "urllib"]}
    with pytest.raises(SystemExit, match="at most 38 plays and 14 packages"):
        arms.split(0, 30, 9, 3, 4)
    # a side without plays has no Shakespeare source at all (an empty `include` would mean all)
    no_plays = arms.split(0, 0, 4, 3, 4)
    assert [s["kind"] for s in arms.sources(no_plays["heldout"])] == ["python_stdlib"]
    assert [s["kind"] for s in arms.sources(no_plays["train"])] == ["shakespeare", "python_stdlib"]


def test_every_config_it_writes_is_valid(arms, tmp_path):
    """The build and eval configs pass lcdata's own models (unknown keys are errors there), and
    only the verified arm runs the distance and verify filters."""
    from lcdata.config import parse_config
    from lcdata.evals.run import EvalConfig

    sp, qa = arms.split(0, 3, 4, 3, 4), tmp_path / "heldout_qa.jsonl"
    for sc in (arms.Scale(), arms.Scale("models/x", 32768, 40, require_full=True)):
        held = parse_config(arms.heldout_config(sp, sc))
        assert held.filters.verify.enabled and held.filters.verify.require_full == sc.verify["require_full"]
        raw = {arm: arms.train_config(sp, arm, qa, sc) for arm in arms.ARMS}
        cfgs = {arm: parse_config(c) for arm, c in raw.items()}
        assert cfgs["verified"].filters.verify.enabled and not cfgs["unfiltered"].filters.verify.enabled
        assert cfgs["verified"].filters.evidence.min_distance_tokens == 256
        assert cfgs["unfiltered"].filters.evidence.min_distance_tokens == 0  # the filter is off
        # the paired design: verified and unfiltered differ only in those two filters (and name),
        # so unfiltered's build answers every generation from verified's copied cache
        strip = {"name": None, "filters": None}
        assert raw["verified"] | strip == raw["unfiltered"] | strip
        assert {k: v for k, v in raw["verified"]["filters"].items() if k not in ("evidence", "verify")} \
            == raw["unfiltered"]["filters"]
        assert [t.kind for t in cfgs["short"].tasks] == ["short_qa"]
        for c in cfgs.values():
            assert c.filters.decontaminate.files == [str(qa)] and c.filters.decontaminate.fields == ["context"]
            assert c.pack.seq_len == sc.seq_len
        ev = EvalConfig(**arms.eval_config(qa, sc)).suite_config()
        assert ev.niah.lengths[-1] <= sc.seq_len and ev.multihop.length == sc.seq_len


def _scored(d: Path, label: str, rows: list[tuple[str, str, dict]]) -> None:
    (d / label).mkdir(parents=True)
    (d / label / "scored.jsonl").write_text("".join(
        json.dumps({"id": i, "suite": s, "meta": {}, "score": sc}) + "\n" for i, s, sc in rows))


def test_report_intervals_and_paired_differences(arms, tmp_path):
    """Per-item scores averaged over an arm's seeds; a paired difference of identical items is
    exactly 0; a constant difference has a zero-width interval and is starred."""
    ev = tmp_path / "eval"
    ids = [f"niah/{i}" for i in range(10)]
    _scored(ev, "base", [(i, "niah", {"accuracy": 0.0}) for i in ids])
    _scored(ev, "verified_s0", [(i, "niah", {"accuracy": 1.0}) for i in ids])
    _scored(ev, "verified_s1", [(i, "niah", {"accuracy": 0.0}) for i in ids])  # seeds average to 0.5
    _scored(ev, "short_s0", [(i, "niah", {"accuracy": 0.0}) for i in ids])
    for label in ("base", "verified_s0", "verified_s1", "short_s0"):  # held-out items: parts and contains
        with (ev / label / "scored.jsonl").open("a") as f:
            f.write(json.dumps({"id": "user_qa/q1", "suite": "user_qa", "meta": {},
                                "score": {"contains": 0.0, "parts": 0.5 if label != "base" else 0.0}}) + "\n")
    (tmp_path / "heldout_qa.jsonl").write_text(json.dumps({"id": "q1", "evidence_distance_tokens": 1500,
                                                           "evidence_depths": [0.2, 0.5]}) + "\n")
    text = arms.report(tmp_path, {"base": ["base"], "verified": ["verified_s0", "verified_s1"], "short": ["short_s0"]})
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["metrics"]["niah/accuracy"] == {"base": [0.0, 0.0, 0.0], "verified": [0.5, 0.5, 0.5],
                                               "short": [0.0, 0.0, 0.0]}
    assert res["differences"]["niah/accuracy"]["verified-base"] == [0.5, 0.5, 0.5]
    assert res["differences"]["niah/accuracy"]["short-base"] == [0.0, 0.0, 0.0]
    assert "| niah | accuracy | +0.500 [+0.500, +0.500]* | +0.000 [+0.000, +0.000] |" in text
    assert res["metrics"]["user_qa/parts"]["verified"] == [0.5, 0.5, 0.5]
    assert "| distance 1K-2K | 1 | 0.000 [0.000, 0.000] | 0.500 [0.500, 0.500] | 0.500 [0.500, 0.500] |" in text
    assert "| niah | accuracy | 10 / 0, p=0.00195 | 0 / 0, p=1 |" in text  # verified vs base, short vs base
    assert res["sign_tests"]["niah/accuracy"]["verified-short"] == [10, 0, 2 / 2 ** 10]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["niah.png", "user_qa.png"]


def test_bootstrap_and_sign_test_golden_values(arms):
    # 2,000 seeded resamples, the 2.5th and 97.5th percentiles (binomial 0.4, n=50: sd 0.069)
    assert arms.bootstrap([0.0] * 30 + [1.0] * 20) == (0.4, 0.26, 0.54)
    assert arms.bootstrap([1.0] * 7) == (1.0, 1.0, 1.0)
    assert arms.fmt(arms.bootstrap([])) == "n/a"
    # 5 items better, none worse: two-sided p = 2 / 2^5; ties are left out
    assert arms.sign_test({str(i): 1.0 for i in range(8)}, {str(i): 0.0 if i < 5 else 1.0 for i in range(8)}) \
        == (5, 0, 0.0625)
    assert arms.sign_test({"a": 1, "b": 0, "c": 0.5}, {"a": 0, "b": 1, "c": 1}) == (1, 2, 1.0)
    assert arms.sign_test({"a": 1}, {"a": 1}) == (0, 0, 1.0)
