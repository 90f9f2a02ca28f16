"""The stage order is declared once (lcdata/pipeline.py) and the orchestration is one function
(lcdata.build.run_build) that every runner shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from lcdata.build import LocalRunner, ShardOutputs, build_local, plan_build, run_build
from lcdata.config import parse_config
from lcdata.engine import Engine
from lcdata.pipeline import build_filters, shard_pipeline
from lcdata.stage import Lineage, RejectSink


def full_cfg(model_dir: Path):
    return parse_config({
        "model": str(model_dir),
        "sources": [{"name": "sh", "kind": "shakespeare", "include": ["comedies/the-comedy-of-errors.md"]}],
        "assemble": {"buckets": [512], "reserve_tokens": 128},
        "tasks": [{"kind": "needles"}, {"kind": "multihop"}, {"kind": "kv_tracking"}, {"kind": "summary"}],
        "pack": {"seq_len": 512},
        "filters": {"coherence": {"enabled": True}, "dedup": {"documents": True, "questions": True},
                    "decontaminate": {"enabled": True, "sources": ["lcdata_eval"]},
                    "evidence": {"min_distance_tokens": 10, "rebalance_depth": True},
                    "judge": {"enabled": True}, "verify": {"enabled": True}},
    })


def test_the_shard_stage_order(model_dir, tok):
    cfg = full_cfg(model_dir)
    p = shard_pipeline(cfg, cfg.sources[0], tok, Engine(cfg.engine), {}, Lineage(), RejectSink(None))
    names = [[s.name for s in phase] for phase in (p.documents, p.contexts, p.tasks, p.samples)]
    assert names == [["read", "dedup_documents", "assemble"], ["coherence"],
                     ["tasks", "synthesize.multihop", "synthesize.summary"],
                     ["evidence_distance", "decontaminate", "judge", "verify"]]
    assert p.tokenize.name == "tokenize"
    assert [f.name for f, _ in build_filters(cfg)] == ["dedup_questions", "rebalance_depth"]


def test_optional_stages_are_left_out(model_dir, tok, base_cfg):
    cfg = parse_config(base_cfg())
    p = shard_pipeline(cfg, cfg.sources[0], tok, None, None, Lineage(), RejectSink(None))
    assert [s.name for s in p.documents] == ["read", "assemble"]
    assert p.contexts == [] and p.samples == [] and [s.name for s in p.tasks] == ["tasks"]
    assert build_filters(cfg) == []


class RecordingRunner(LocalRunner):
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def map_shards(self, cfg, shards, out):
        self.calls.append([s["id"] for s in shards])
        return super().map_shards(cfg, reversed(shards), out)  # finishing order must not matter


def test_a_runner_only_maps_the_shards(model_dir, base_cfg, tmp_path):
    cfg = parse_config(base_cfg(assemble={"buckets": [512], "reserve_tokens": 128}, pack={"seq_len": 512}))
    runner = RecordingRunner()
    m = run_build(cfg, tmp_path / "a", runner)
    assert runner.calls == [[s["id"] for s in plan_build(cfg)]] and len(runner.calls[0]) >= 2
    ref = build_local(cfg, tmp_path / "b")
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in ref["shards"]]
    assert m["lineage"] == ref["lineage"]


def test_shard_outputs_are_aborted_together_on_error(tmp_path):
    from lcdata.schema import Context

    work = tmp_path / "work" / "s1"
    work.mkdir(parents=True)
    with pytest.raises(ValueError, match="boom"), ShardOutputs(tmp_path, "s1", work) as outs:
        outs.contexts.write_rows([Context("c", "src", "g", "natural", "text", [], 1, 512).to_row()])
        raise ValueError("boom")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []
    with ShardOutputs(tmp_path, "s1", work):
        pass
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "contexts/s1.arrow", "eval/s1.arrow", "rejects/s1.arrow", "samples/s1.arrow", "work/s1/tokenized.arrow"]


def test_a_failing_close_leaves_no_temp_file(tmp_path, monkeypatch):
    from lcdata.arrowio import ArrowWriter

    work = tmp_path / "work" / "s1"
    work.mkdir(parents=True)
    real_close = ArrowWriter.close
    calls = []

    def close(self):
        calls.append(self.path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_close(self)

    monkeypatch.setattr(ArrowWriter, "close", close)
    with pytest.raises(OSError, match="disk full"), ShardOutputs(tmp_path, "s1", work):
        pass
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["samples/s1.arrow"]  # the one closed before the failure; no .tmp file anywhere
