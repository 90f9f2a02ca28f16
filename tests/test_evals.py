"""`lcdata eval`: suites are deterministic and cached, scorers on hand-made cases, the eval
texts are registered for decontamination, and a tiny end-to-end eval of the real SmolLM2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from lcdata.evals import suites as S
from lcdata.evals.base import EvalItem, EvalSuite, contains, qa_scores
from lcdata.evals.score import aggregate, score_item
from lcdata.evals.suites import counterfactual_class, niah_scores

TINY = dict(
    niah=S.NIAHSuite.Config(lengths=[512, 1024], depths=[0.0, 1.0], needles=[1, 2]),
    multihop=S.MultihopSuite.Config(length=1024, distances=[0.0, 0.5], per_distance=1),
    squad=S.SquadSuite.Config(n=2), counterfactual=S.CounterfactualSuite.Config(n=2),
    lift=S.LiftSuite.Config(doc_tokens=512, n_facts=2),
)


def qa_file(d: Path, long_tokens_chars: int = 30000) -> Path:
    """A user's long-QA file from real HotpotQA dev rows: two with their own ten paragraphs as the
    context, one whose context is padded with other rows' paragraphs to ~``long_tokens_chars``."""
    from lcdata.read.corpora import eval_data_dir

    rows = json.loads((eval_data_dir() / "hotpotqa.json").read_text())
    ctx = [" ".join(t + ": " + "".join(s) for t, s in r["context"]) for r in rows[:60]]
    recs = [{"qid": rows[i]["_id"], "question": rows[i]["question"], "answer": rows[i]["answer"], "context": ctx[i]}
            for i in range(2)]
    pad = " ".join(ctx[3:])[:long_tokens_chars]
    recs.append({"qid": rows[2]["_id"], "question": rows[2]["question"], "answer": [rows[2]["answer"], "x"],
                 "context": ctx[2] + " " + pad})
    p = d / "my_qa.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def _item(suite: str, answers: list[str]) -> EvalItem:
    return EvalItem(id=f"{suite}/0", suite=suite, messages=[], answers=answers)


def test_suite_is_deterministic_and_cached(model_dir, tmp_path, monkeypatch):
    cfg = S.SuiteConfig(**TINY)
    a = S.generate_suite(cfg, model_dir, 8000, tmp_path / "a")
    b = S.generate_suite(cfg, model_dir, 8000, tmp_path / "b")
    assert a.name == b.name and a.name.startswith(f"v{S.SUITE_VERSION}-")
    files = sorted(p.name for p in a.iterdir())
    assert files == ["counterfactual.jsonl", "lift.jsonl", "lift_document.txt", "multihop.jsonl", "niah.jsonl",
                     "squad.jsonl", "suite.json", "user_qa.jsonl"]
    assert (a / "user_qa.jsonl").read_text() == ""  # no file given: the user's suite is empty
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # a second call finds the cache and generates nothing
    monkeypatch.setattr(S.NIAHSuite, "items", lambda *a, **k: pytest.fail("regenerated a cached suite"))
    assert S.generate_suite(cfg, model_dir, 8000, tmp_path / "a") == a
    # another seed is another suite
    assert S.generate_suite(S.SuiteConfig(seed=1, suites=["squad"]), model_dir, 8000, tmp_path / "a") != a


def test_suite_items_hold_their_invariants(model_dir, tok, tmp_path):
    items = S.load_items(S.generate_suite(S.SuiteConfig(**TINY), model_dir, 8000, tmp_path))
    by = {}
    for it in items:
        by.setdefault(it.suite, []).append(it)
    assert {k: len(v) for k, v in by.items()} == {"niah": 8, "multihop": 2, "squad": 2, "counterfactual": 4, "lift": 2}
    for it in by["niah"]:
        text = it.messages[0]["content"]
        n = tok.count([tok.render(it.messages, add_generation_prompt=True)])[0]
        assert n == it.meta["prompt_tokens"] <= it.meta["length"]
        assert n >= it.meta["length"] - 64  # filled to the target, not far under
        for v in it.answers:
            assert text.count(f" is {v}.") == 1  # every needle is in the haystack, once
        if it.meta["needles"] == 1:
            assert abs(it.meta["char_depths"][0] - it.meta["depth"]) < 0.05
    near, far = sorted(by["multihop"], key=lambda it: it.meta["distance"])
    assert near.meta["distance_tokens"] < far.meta["distance_tokens"]
    assert far.meta["distance_tokens"] > 300
    for it in by["lift"]:
        assert it.messages[0]["content"].count("<document>") == 0  # asked without the document
    doc = (next(tmp_path.iterdir()) / "lift_document.txt").read_text()
    assert all(f"is {it.answers[0]}." in doc for it in by["lift"])


def test_lengths_beyond_the_window_are_refused(model_dir, tmp_path):
    with pytest.raises(ValueError, match="exceeds the model's window"):
        S.generate_suite(S.SuiteConfig(suites=["niah"], niah=S.NIAHSuite.Config(lengths=[4096])), model_dir, 2000, tmp_path)


def test_scorers_on_hand_made_cases():
    assert contains("It was Paris, of course.", "paris") == 1.0
    assert contains("Parisian food", "Paris") == 0.0  # whole words only
    assert qa_scores("The Nobel Prize in Literature.", ["Nobel Prize in Literature"]) == {"em": 1.0, "f1": 1.0, "contains": 1.0}
    q = qa_scores("I think it is 80,000 colonists", ["80,000", "eighty thousand"])
    assert q["em"] == 0.0 and q["contains"] == 1.0 and 0 < q["f1"] < 1
    assert niah_scores("The numbers are 1,234,567 and 7654321.", ["1234567", "7654321", "1111111"])["found"] == [True, True, False]
    assert counterfactual_class("The capital is Lyon.", "Paris", "Lyon") == "context"
    assert counterfactual_class("Paris.", "Paris", "Lyon") == "memory"
    assert counterfactual_class("Paris or Lyon", "Paris", "Lyon") == "both"
    assert counterfactual_class("Marseille", "Paris", "Lyon") == "other"
    assert score_item(_item("counterfactual", ["Paris", "Lyon"]), "Lyon") == {"class": "context", "memory": 0.0}
    assert score_item(_item("niah", ["1234567", "7654321"]), "1,234,567") == {"found": [True, False], "accuracy": 0.5, "all": 0.0}
    assert score_item(_item("squad", ["80,000"]), "80,000") == {"em": 1.0, "f1": 1.0, "contains": 1.0}


def test_counterfactual_counts_only_facts_known_closed_book():
    def it(fact, mode, pred):
        return {"suite": "counterfactual", "meta": {"fact": fact, "mode": mode},
                "score": score_item(_item("counterfactual", ["Paris", "Lyon"]), pred)}

    items = [it(0, "closed", "Paris"), it(0, "context", "Lyon"),     # known, follows the context
             it(1, "closed", "Paris"), it(1, "context", "Paris"),    # known, follows memory
             it(2, "closed", "Rome"), it(2, "context", "Lyon")]      # unknown: not counted
    r = aggregate(items)["counterfactual"]
    assert r["known"] == 2 and r["follows_context"] == 0.5 and r["follows_memory"] == 0.5
    assert r["closed_book_accuracy"] == round(2 / 3, 4) and r["follows_context_all"] == round(2 / 3, 4)
    assert r["primary"] == "follows_context" and r["value"] == 0.5
    assert math.isnan(aggregate([it(2, "closed", "Rome"), it(2, "context", "Lyon")])["counterfactual"]["follows_context"])


def test_niah_aggregate_puts_each_needle_at_its_depth():
    items = [
        {"suite": "niah", "meta": {"length": 1024, "depth": 0.0, "needles": 1, "needle_depths": [0.0]},
         "score": niah_scores("5", ["5"])},
        {"suite": "niah", "meta": {"length": 1024, "depth": 1.0, "needles": 1, "needle_depths": [1.0]},
         "score": niah_scores("", ["5"])},
        {"suite": "niah", "meta": {"length": 1024, "depth": 0.0, "needles": 2, "needle_depths": [0.0, 0.9]},
         "score": niah_scores("5", ["5", "6"])},
    ]
    r = aggregate(items)["niah"]
    assert r["grid_single"] == [[1024, 0.0, 1.0], [1024, 1.0, 0.0]]
    assert r["grid_multi"] == [[1024, 0.0, 1.0], [1024, 1.0, 0.0]]  # the 0.9 needle counts at depth 1.0
    assert r["single"] == 0.5 and r["multi"] == 0.5


def test_suite_config_is_generated_from_the_registry():
    import lcdata.evals

    assert lcdata.evals.SUITES is S.SUITES
    assert list(S.SuiteConfig.model_fields) == ["seed", "suites", *S.SUITES]
    assert list(S.SUITES) == ["niah", "multihop", "squad", "counterfactual", "lift", "user_qa"]
    cfg, small = S.SuiteConfig(), S.SuiteConfig.preset("small")
    assert cfg.suites == list(S.SUITES)
    for name, suite in S.SUITES.items():
        assert suite.name == name and suite.primary
        assert cfg.suite(name) == suite.Config() and small.suite(name) == suite.Config(**suite.small)
    with pytest.raises(ValidationError, match="nope"):
        S.SuiteConfig(nope={})
    with pytest.raises(ValidationError, match="lengthz"):
        S.SuiteConfig(niah={"lengthz": [1]})  # every suite's Config forbids unknown keys
    with pytest.raises(ValidationError, match=r"niah.depths must lie in \[0, 1\]"):
        S.SuiteConfig(niah={"depths": [1.5]})
    with pytest.raises(ValidationError, match="'lift'"):
        S.SuiteConfig(suites=["nope"])


def test_every_suite_scores_aggregates_and_reports_its_items(model_dir, tmp_path):
    from lcdata.evals.run import summary_table

    user = S.UserQASuite.Config(path=str(qa_file(tmp_path)))
    items = S.load_items(S.generate_suite(S.SuiteConfig(**TINY, user_qa=user), model_dir, 8000, tmp_path))

    def right(it: EvalItem) -> str:  # counterfactual: knows the fact closed-book, follows the context
        if it.suite == "niah":
            return " ".join(it.answers)
        return it.answers[1] if it.suite == "counterfactual" and it.meta["mode"] == "context" else it.answers[0]

    scored = [{"suite": it.suite, "meta": it.meta, "score": score_item(it, right(it))} for it in items]
    res = aggregate(scored)
    assert list(res) == list(S.SUITES)
    table = summary_table({"models": {"m": {"suites": res}}})
    for name, suite in S.SUITES.items():
        assert res[name]["primary"] == suite.primary and res[name]["value"] == res[name][suite.primary]
        for k in suite.summary or (suite.primary,):
            assert f"| {name} | {k} | " in table
    assert all(r["value"] == 1.0 for r in res.values())


def test_a_new_suite_is_one_class(model_dir, tmp_path):
    from lcdata.evals.plots import plot_results
    from lcdata.evals.run import load_eval_config, summary_table

    class ToySuite(EvalSuite):
        name = "toy"
        primary = "hit"

        class Config(BaseModel):
            model_config = ConfigDict(extra="forbid")
            n: int = 3

        small = dict(n=1)

        @classmethod
        def items(cls, cfg, tok, seed, window):
            for i in range(cfg.n):
                yield EvalItem(id=f"toy/{i}", suite=cls.name, messages=[{"role": "user", "content": f"Say {seed + i}."}],
                               answers=[str(seed + i)])

        @classmethod
        def score(cls, item, pred):
            return {"hit": float(item.answers[0] in pred)}

    try:
        assert S.SUITES["toy"] is ToySuite
        model = S.suite_config_model()
        assert list(model.model_fields)[-1] == "toy" and model().toy == ToySuite.Config() and model().suites[-1] == "toy"
        with pytest.raises(ValidationError, match="m"):
            model(toy={"m": 1})
        assert load_eval_config(None, size="small", suites=["toy"]).suite_config().toy.n == 1  # the CLI's path
        d = S.generate_suite(model(seed=5, suites=["toy"], toy={"n": 2}), model_dir, 1000, tmp_path)
        assert json.loads((d / "suite.json").read_text())["config"]["toy"] == {"n": 2}
        items = S.load_items(d)
        assert [(it.id, it.answers) for it in items] == [("toy/0", ["5"]), ("toy/1", ["6"])]
        scored = [{"suite": it.suite, "meta": it.meta, "score": score_item(it, p)} for it, p in zip(items, ["5", "no"])]
        res = aggregate(scored)
        assert res == {"toy": {"n": 2, "hit": 0.5, "primary": "hit", "value": 0.5}}
        results = {"suite_version": S.SUITE_VERSION, "suite_key": d.name, "models": {"a": {"suites": res}}}
        assert "| toy | hit | 0.500 |" in summary_table(results)
        assert [p.name for p in plot_results(results, tmp_path)] == ["summary.png"]  # no plot of its own
    finally:
        del S.SUITES["toy"]
    assert S.suite_config_model() is S.SuiteConfig
    with pytest.raises(KeyError, match="unknown eval suite `toy`"):
        aggregate(scored)


def test_suite_names_are_checked_when_defined():
    with pytest.raises(TypeError, match="already registered by lcdata.evals.suites.SquadSuite"):
        class Clash(EvalSuite):
            name = "squad"
            primary = "f1"
            Config = S.SquadSuite.Config
    with pytest.raises(TypeError, match="lower_snake_case"):
        class Reserved(EvalSuite):
            name = "seed"
            primary = "f1"
            Config = S.SquadSuite.Config
    with pytest.raises(TypeError, match="must set `primary`"):
        class NoPrimary(EvalSuite):
            name = "no_primary"
            Config = S.SquadSuite.Config
    assert list(S.SUITES) == ["niah", "multihop", "squad", "counterfactual", "lift", "user_qa"]


def test_eval_texts_are_registered_for_decontamination(tmp_path, monkeypatch):
    from lcdata.config import DecontamFilter
    from lcdata.filters.decontam import EvalIndex

    monkeypatch.setenv("LCDATA_CACHE", str(tmp_path))
    idx = EvalIndex.build(DecontamFilter(enabled=True, sources=["lcdata_eval"]))
    fact = S.load_facts()[0]
    leak = "Some text. " + fact["statement"].format(x=fact["context"]) + " More text."
    assert idx.matches(leak) >= 1
    assert idx.matches("Everyone knows that " + fact["statement"].format(x=fact["memory"])) == 0  # true facts are fine
    assert idx.matches("Q: " + fact["q"]) >= 1
    assert EvalIndex.build(DecontamFilter(enabled=True, sources=["lcdata_eval"])).short.keys() == idx.short.keys()  # cached
    # only the suite's own texts are matched whole: the shipped sets' short strings (answers,
    # titles) would hit ordinary prose. A real play shares nothing with the default sources.
    from lcdata.read.corpora import shakespeare_root

    default = EvalIndex.build(DecontamFilter(enabled=True))
    assert sum(len(v) for v in default.short.values()) == sum(len(v) for v in idx.short.values())
    play = shakespeare_root() / "problems" / "all-s-well-that-ends-well.md"
    assert default.matches(play.read_text()[:200_000]) == 0


def _user_items(model_dir, tmp_path, window, **cfg):
    user = S.UserQASuite.Config(path=str(qa_file(tmp_path)), id_field="qid", **cfg)
    return S.load_items(S.generate_suite(S.SuiteConfig(suites=["user_qa"], user_qa=user), model_dir, window,
                                         tmp_path / "cache"))


def test_user_qa_truncates_the_middle_of_a_context_over_the_window(model_dir, tok, tmp_path):
    items = _user_items(model_dir, tmp_path, 4000)
    recs = [json.loads(x) for x in (tmp_path / "my_qa.jsonl").read_text().splitlines()]
    assert [it.id for it in items] == [f"user_qa/{r['qid']}" for r in recs]
    short, long_ = items[:2], items[2]
    for it, r in zip(short, recs, strict=False):  # under the window: whole, untouched
        assert r["context"] in it.messages[0]["content"] and it.meta["truncated_tokens"] == 0
        assert it.answers == [r["answer"]] and it.meta["too_long"] == ""
    n = tok.count([tok.render(long_.messages, add_generation_prompt=True)])[0]
    assert n == long_.meta["prompt_tokens"] and 4000 - 200 <= n <= 4000
    assert long_.meta["context_tokens"] > 6000 and long_.meta["truncated_tokens"] > 2000
    text, ctx = long_.messages[0]["content"], recs[2]["context"]
    assert ctx[:1000] in text and ctx[-1000:] in text  # the start and the end are kept
    assert f"[... {long_.meta['truncated_tokens']:,} tokens cut ...]" in text
    assert long_.answers == recs[2]["answer"] and long_.answers[1] == "x" and long_.meta["too_long"] == "truncate"
    assert text.endswith(recs[2]["question"] + " Answer with a few words only.")
    res = aggregate([{"suite": it.suite, "meta": it.meta, "score": score_item(it, it.answers[0])} for it in items])
    assert res["user_qa"]["contains"] == 1.0 and res["user_qa"]["truncated"] == pytest.approx(1 / 3, abs=1e-3)
    # by the context's own length: the padded one is over 8K tokens before truncation
    assert [(b["min_tokens"], b["n"], b["truncated"]) for b in res["user_qa"]["by_length"]] == [(0, 2, 0.0), (8192, 1, 1.0)]


def test_user_qa_skip_keeps_it_whole_and_refuse_names_the_record(model_dir, tmp_path):
    items = _user_items(model_dir, tmp_path, 4000, too_long="skip")
    assert items[2].meta["prompt_tokens"] > 4000 and items[2].meta["too_long"] == "skip"
    assert items[2].messages[0]["content"].count(json.loads((tmp_path / "my_qa.jsonl").read_text().splitlines()[2])
                                                 ["context"][-500:]) == 1
    (tmp_path / "r").mkdir()
    with pytest.raises(ValueError, match=r"my_qa.jsonl line 3: the prompt is [\d,]+ tokens, over the window of 4,000"):
        _user_items(model_dir, tmp_path / "r", 4000, too_long="refuse")


def test_user_qa_reads_parquet_and_checks_its_fields(model_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in qa_file(tmp_path).read_text().splitlines()][:2]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    cfg = S.SuiteConfig(suites=["user_qa"], user_qa=S.UserQASuite.Config(path=str(tmp_path / "qa.parquet"), n=1))
    items = S.load_items(S.generate_suite(cfg, model_dir, 8000, tmp_path / "c"))
    assert len(items) == 1 and items[0].id in ("user_qa/0", "user_qa/1")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"q": "Who?", "answer": "A", "context": "B"}) + "\n")
    bad = S.SuiteConfig(suites=["user_qa"], user_qa=S.UserQASuite.Config(path=str(tmp_path / "bad.jsonl")))
    with pytest.raises(ValueError, match=r"bad.jsonl line 1: no `question`; .*`suite.user_qa.question_field` "
                                         r"\(its fields: q, answer, context\)"):
        S.generate_suite(bad, model_dir, 8000, tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="nope.jsonl not found"):
        S.generate_suite(S.SuiteConfig(suites=["user_qa"], user_qa=S.UserQASuite.Config(path="nope.jsonl")),
                         model_dir, 8000, tmp_path / "c")


def test_user_qa_cache_follows_the_files_content(model_dir, tmp_path):
    p = qa_file(tmp_path)
    cfg = S.SuiteConfig(suites=["user_qa"], user_qa=S.UserQASuite.Config(path=str(p)))
    a = S.generate_suite(cfg, model_dir, 8000, tmp_path / "c")
    assert S.generate_suite(cfg, model_dir, 8000, tmp_path / "c") == a
    p.write_text(p.read_text().splitlines()[0] + "\n")  # the user edits the file: same path, new suite
    b = S.generate_suite(cfg, model_dir, 8000, tmp_path / "c")
    assert b != a and len(S.load_items(b)) == 1


@pytest.mark.slow
def test_tiny_end_to_end_eval_of_the_real_model(model_dir, tmp_path, monkeypatch):
    from lcdata.evals.run import EvalConfig, evaluate

    monkeypatch.setenv("LCDATA_CACHE", str(tmp_path / "cache"))
    cfg = EvalConfig(size="full", suite={k: v.model_dump() for k, v in TINY.items()} | {
        "niah": {"lengths": [512], "depths": [0.5], "needles": [1]},
        "user_qa": {"path": str(qa_file(tmp_path, long_tokens_chars=60000))}})
    out = tmp_path / "eval"
    res = evaluate([f"base={model_dir}"], out, cfg, log=lambda m: None)
    suites = res["models"]["base"]["suites"]
    assert set(suites) == {"niah", "multihop", "squad", "counterfactual", "lift", "user_qa"}
    # the 14K-token context of the user's third record was cut to SmolLM2's 8K window, and answered
    assert suites["user_qa"]["n"] == 3 and suites["user_qa"]["truncated"] == pytest.approx(1 / 3, abs=1e-3)
    assert (out / "user_qa.png").stat().st_size > 5000
    # golden: greedy SmolLM2-135M finds one needle in 512 tokens, and knows no LIFT password
    assert suites["niah"]["single"] == 1.0
    assert suites["lift"]["contains"] == 0.0
    preds = (out / "base" / "scored.jsonl").read_text().splitlines()
    assert len(preds) == 14 and all(json.loads(p)["prediction"].strip() for p in preds)
    for name in ("niah", "multihop", "counterfactual", "summary"):
        assert (out / f"{name}.png").stat().st_size > 5000
    assert json.loads((out / "results.json").read_text())["suite_version"] == S.SUITE_VERSION
    assert (out / "suite" / "suite.json").is_file() and "| niah | accuracy | 1.000 |" in (out / "summary.md").read_text()
    # a rerun reuses the predictions: no engine starts
    log = (out / "base" / "engine.log").stat().st_mtime_ns
    evaluate([f"base={model_dir}"], out, cfg, log=lambda m: None)
    assert (out / "base" / "engine.log").stat().st_mtime_ns == log


def test_bad_model_directory_is_named(tmp_path):
    from lcdata.evals.run import EvalConfig, EvalError, evaluate

    with pytest.raises(EvalError, match="has no config.json"):
        evaluate([str(tmp_path / "nope")], tmp_path / "out", EvalConfig())


def test_unknown_eval_config_keys_are_errors(tmp_path):
    from lcdata.evals.run import EvalError, load_eval_config

    p = tmp_path / "e.yaml"
    p.write_text("size: small\nsuite: {niah: {lengthz: [1]}}\n")
    with pytest.raises(EvalError, match="lengthz"):
        load_eval_config(p)
    assert load_eval_config(None, size="small", suites=["squad"]).suite_config().suites == ["squad"]


def test_cli_eval_help_lists_the_suites():
    from typer.testing import CliRunner

    from lcdata.cli import app

    r = CliRunner().invoke(app, ["eval", "--help"])
    assert r.exit_code == 0 and "counterfactual" in r.output


def test_each_model_is_evaluated_in_its_own_window(model_dir, tmp_path, monkeypatch):
    """A base model (window 1024) and its context extension (linear RoPE x2: 2048): the suite
    reaches the longer window, each model's engine gets its own, and the base answers only the
    items that fit its window (the longer one is recorded beyond its window, not scored)."""
    import shutil
    import subprocess
    import sys

    from lcdata.engine import ScriptedBackend
    from lcdata.evals import run as R

    monkeypatch.setenv("LCDATA_CACHE", str(tmp_path / "cache"))
    dirs = {}
    for label, over in (("base", {"max_position_embeddings": 1024}),
                        ("ext", {"max_position_embeddings": 1024, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})):
        d = dirs[label] = tmp_path / label
        d.mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(model_dir / f, d / f)
        (d / "config.json").write_text(json.dumps(json.loads((model_dir / "config.json").read_text()) | over))
    asked: dict[str, int] = {}

    def child(cmd: list[str], stdout=None, stderr=None) -> int:  # noqa: ANN001 - subprocess.call's
        assert cmd[:3] == [sys.executable, "-m", "lcdata.evals.run"]
        model, suite_dir, out, engine_json, mml = cmd[3:]
        asked[Path(model).name] = int(mml)
        R.generate_predictions(Path(model), Path(suite_dir), Path(out), R.EvalEngine(**json.loads(engine_json)),
                               int(mml), backend=ScriptedBackend(lambda r: "I do not know."))
        return 0

    monkeypatch.setattr(subprocess, "call", child)
    cfg = R.EvalConfig(suite={"suites": ["niah"], "niah": {"lengths": [512, 1536], "depths": [0.5], "needles": [1]}})
    res = R.evaluate([f"base={dirs['base']}", f"ext={dirs['ext']}"], tmp_path / "eval", cfg, log=lambda m: None)
    assert asked == {"base": 1024, "ext": 2048} and res["window"] == 2048
    assert json.loads((tmp_path / "eval" / "suite" / "suite.json").read_text())["window"] == 2048 - R.ANSWER_TOKENS
    base, ext = res["models"]["base"], res["models"]["ext"]
    assert (base["window"], base["beyond_window"], base["suites"]["niah"]["n"]) == (1024, 1, 1)
    assert (ext["window"], ext["beyond_window"], ext["suites"]["niah"]["n"]) == (2048, 0, 2)
    preds = [json.loads(x) for x in (tmp_path / "eval" / "base" / "predictions.jsonl").read_text().splitlines()]
    assert [p.get("skipped") for p in preds] == [None, "prompt_too_long"]


def test_a_built_dataset_exports_as_a_user_qa_suite(small_dataset, model_dir, tmp_path):
    """`lcdata export-qa`: the samples that carry a context become a `--qa` file whose items hold
    the sample's own context, question and answer (a build over held-out documents is a suite)."""
    import polars as pl

    from lcdata.schema import Sample
    from lcdata.viewer import export_qa

    f = tmp_path / "qa.jsonl"
    counts = export_qa(small_dataset, f, ["needles"])
    recs = [json.loads(x) for x in f.read_text().splitlines()]
    samples = {r["id"]: Sample.from_row(r) for r in
               pl.concat([pl.read_ipc(p) for p in sorted((small_dataset / "samples").glob("*.arrow"))
                          + sorted((small_dataset / "eval").glob("*.arrow"))]).filter(pl.col("task") == "needles").to_dicts()}
    assert counts == {"needles": len(recs)} and len(recs) == len(samples) > 0
    for r in recs:
        s = samples[r["id"]]
        assert (r["question"], r["answer"], r["context"]) == (s.question, s.answer, s.context_text())
        assert r["evidence_distance_tokens"] >= 0 and len(r["evidence_depths"]) == len(s.evidence)
    cfg = S.SuiteConfig(suites=["user_qa"], user_qa=S.UserQASuite.Config(path=str(f), id_field="id", instruction=""))
    items = S.load_items(S.generate_suite(cfg, model_dir, 8000, tmp_path / "c"))
    assert [it.id for it in items] == [f"user_qa/{r['id']}" for r in recs]
    res = aggregate([{"suite": it.suite, "meta": it.meta, "score": score_item(it, it.answers[0])} for it in items])
    assert res["user_qa"]["contains"] == 1.0 and res["user_qa"]["truncated"] == 0.0
    with pytest.raises(ValueError, match="no samples of task multihop; tasks present: kv_tracking, needles"):
        export_qa(small_dataset, tmp_path / "x.jsonl", ["multihop"])


def test_user_qa_scores_a_composed_answers_parts_one_by_one(model_dir, tmp_path):
    """A multi-hop answer composed of parts ("Step 1: French. Step 2: wonders.") is out of reach
    verbatim; `parts` is the fraction of its parts the prediction names. A part the question holds
    is not scored (an echo of the question would find it); a record without parts scores `contains`."""
    recs = [{"id": "a", "question": "Which two words are missing: what the king saw and who saw it?",
             "answer": "Step 1: French. Step 2: wonders.", "parts": ["French", "wonders", "king"], "context": "..."},
            {"id": "b", "question": "Who?", "answer": "Ann", "context": "Ann was here."}]
    f = tmp_path / "qa.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = S.SuiteConfig(suites=["user_qa"], user_qa=S.UserQASuite.Config(path=str(f), id_field="id"))
    a, b = S.load_items(S.generate_suite(cfg, model_dir, 8000, tmp_path / "c"))
    assert a.meta["parts"] == ["French", "wonders"] and "parts" not in b.meta
    got = [score_item(a, "The French, I think."), score_item(a, "french ... Wonders"), score_item(a, "The king."),
           score_item(b, "It was Ann."), score_item(b, "Bob")]
    assert [(s["contains"], s["parts"]) for s in got] == [(0.0, 0.5), (0.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.0, 0.0)]
    res = aggregate([{"suite": "user_qa", "meta": it.meta, "score": s} for it, s in zip([a, a, b], got[:2] + got[3:4], strict=True)])
    assert res["user_qa"]["parts"] == pytest.approx(2.5 / 3, abs=1e-3) and res["user_qa"]["by_length"][0]["parts"] == res["user_qa"]["parts"]
    f.write_text(json.dumps(recs[0] | {"parts": ["French", ""]}) + "\n")
    with pytest.raises(ValueError, match=r"qa.jsonl line 1: `parts` must be a non-empty list of non-empty strings"):
        S.generate_suite(cfg, model_dir, 8000, tmp_path / "c")


def test_export_qa_writes_a_composed_samples_parts(small_dataset, tmp_path):
    """A sample whose meta lists its atoms (a composed multi-hop sample) exports their answers as
    `parts`, in the atoms' (document) order; other samples have none."""
    import shutil

    import pyarrow as pa
    import pyarrow.ipc as ipc

    from lcdata.viewer import export_qa

    d = tmp_path / "ds"
    shutil.copytree(small_dataset, d)
    f = sorted((d / "samples").glob("*.arrow"))[0]
    with pa.memory_map(str(f)) as src:
        table = ipc.open_file(src).read_all()
    rows = table.to_pylist()
    i = next(j for j, r in enumerate(rows) if r["task"] == "needles")
    meta = json.loads(rows[i]["meta"]) | {"atoms": [{"answer": "one", "question": "q1"}, {"answer": "two", "question": "q2"}]}
    rows[i]["meta"] = json.dumps(meta)
    with ipc.new_file(str(f), table.schema) as w:
        w.write_table(pa.Table.from_pylist(rows, schema=table.schema))
    # a sample the whole-build filters dropped (a near-duplicate question) is not exported
    from lcdata.stage import RejectSink

    gone = next(r["id"] for j, r in enumerate(rows) if r["task"] == "needles" and j != i)
    sink = RejectSink(d / "rejects" / "_build.arrow")
    sink.add("dedup_questions", "duplicate_question", "near-duplicate", gone, "")
    sink.close()
    counts = export_qa(d, tmp_path / "qa.jsonl", ["needles"])
    recs = {r["id"]: r for r in map(json.loads, (tmp_path / "qa.jsonl").read_text().splitlines())}
    assert recs[rows[i]["id"]]["parts"] == ["one", "two"]
    assert [r for k, r in recs.items() if "parts" in r and k != rows[i]["id"]] == []
    every = [r for f in sorted((d / "samples").glob("*.arrow")) + sorted((d / "eval").glob("*.arrow"))
             for r in ipc.open_file(str(f)).read_all().to_pylist() if r["task"] == "needles"]
    assert gone not in recs and counts["needles"] == len(recs) == len(every) - 1


def test_cli_export_qa_names_what_it_wrote(small_dataset, tmp_path):
    from typer.testing import CliRunner

    from lcdata.cli import app

    r = CliRunner().invoke(app, ["export-qa", str(small_dataset), "--out", str(tmp_path / "q.jsonl"), "--task", "needles"])
    assert r.exit_code == 0, r.output
    n = len((tmp_path / "q.jsonl").read_text().splitlines())
    assert f"needles {n}" in r.output and "lcdata eval MODEL --qa" in r.output
    bad = CliRunner().invoke(app, ["export-qa", str(small_dataset), "--out", str(tmp_path / "b.jsonl"), "--split", "dev"])
    assert bad.exit_code == 2 and "`--split` must be all, train or eval" in bad.output
