"""End-to-end builds on real corpus slices (in-process) and the shard contract."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from lcdata.arrowio import sha256_file
from lcdata.build import build_local
from lcdata.config import parse_config
from lcdata.schema import IGNORE_INDEX, PACKED_SCHEMA, SAMPLE_SCHEMA, Sample
from lcdata.shards import check_row, check_shards, iter_rows, load_manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_dir):
    out = tmp_path_factory.mktemp("build") / "ds"
    bad = tmp_path_factory.mktemp("bad")
    (bad / "notes.jsonl").write_text(
        json.dumps({"text": "A note about the harbour. " * 400, "book": "b"}) + "\n"
        + '{"text": broken\n'
        + json.dumps({"body": "no text field"}) + "\n"
        + json.dumps({"text": "   "}) + "\n"
    )
    raw = {
        "name": "test",
        "model": str(model_dir),
        "sources": [
            {"name": "shakespeare", "kind": "shakespeare", "include": ["comedies/the-comedy-of-errors.md"]},
            {"name": "stdlib", "kind": "python_stdlib", "include": ["json/*"], "docs_per_shard": 3},
            {"name": "notes", "kind": "jsonl", "path": str(bad), "group_field": "book"},
        ],
        "assemble": {"buckets": [1024, 2048]},
        "tasks": [{"kind": "needles"}, {"kind": "kv_tracking"}, {"kind": "hotpot_haystack", "per_context": 1}],
        "pack": {"seq_len": 2048},
        "shard": {"max_tokens": 30000},
    }
    cfg = parse_config(raw)
    manifest = build_local(cfg, out)
    return out, manifest, cfg


def test_the_output_loads_with_hugging_face_datasets(built):
    """`datasets.load_dataset(OUT)` reads the packed rows (default) and the Sample records
    (`samples`: train, and the eval samples as test), as the build's README header says."""
    import datasets

    out, m, _ = built
    rows = datasets.load_dataset(str(out), cache_dir=str(out.parent / "hf-cache"))
    assert list(rows) == ["train"] and rows["train"].num_rows == m["totals"]["rows"]
    assert rows["train"].column_names == ["input_ids", "labels", "position_ids", "seq_lens", "sample_ids"]
    samples = datasets.load_dataset(str(out), "samples", cache_dir=str(out.parent / "hf-cache"))
    assert samples["test"].num_rows == m["lineage"]["samples"]["eval"] > 0
    assert set(samples["test"]["task"]) == {"hotpot_haystack"}
    assert samples["train"].num_rows >= m["lineage"]["samples"]["packed"]


def test_manifest_and_checksums(built):
    out, m, _ = built
    assert check_shards(out) == []
    assert len(m["shards"]) > 1  # max_tokens forces several shards
    for s in m["shards"]:
        p = out / "shards" / s["path"]
        assert sha256_file(p) == s["sha256"] and p.stat().st_size == s["bytes"]
    t = m["totals"]
    assert t["rows"] == sum(s["rows"] for s in m["shards"])
    assert t["tokens"] == sum(s["tokens"] for s in m["shards"])
    assert 0 < t["fill"] <= 1 and t["loss_tokens"] < t["tokens"]
    assert m["config"]["pack"]["seq_len"] == 2048 and (out / "config.yaml").is_file()
    assert "created" not in json.dumps(m)  # no timestamps: deterministic bytes


def test_every_row_keeps_the_invariants(built):
    out, m, _ = built
    n = 0
    for r in iter_rows(out):
        check_row(r)
        assert len(r["input_ids"]) <= 2048
        n += 1
    assert n == m["totals"]["rows"]


def test_tokens_conserved_from_samples_to_shards(built):
    out, m, _ = built
    tokenized = pl.read_ipc(str(out / "work" / "*" / "tokenized.arrow"))
    packed_ids = {s for r in iter_rows(out) for s in r["sample_ids"]}
    kept = tokenized.filter(pl.col("sample_id").is_in(list(packed_ids)))
    assert kept.height == len(packed_ids) == m["totals"]["samples"]
    assert int(kept["input_ids"].list.len().sum()) == m["totals"]["tokens"]


def test_lineage_adds_up(built):
    _, m, _ = built
    lin = m["lineage"]
    for name, st in lin["stages"].items():
        if name in ("read", "assemble", "tokenize", "pack"):
            assert st["in"] == st["out"] + sum(st["dropped"].values()), name
    d, s = lin["documents"], lin["samples"]
    assert d["read"] == d["used"] + sum(d["dropped"].values())
    assert lin["records_read"] == d["read"] + sum(d["rejected_at_read"].values())
    assert s["made"] == s["packed"] + s["eval"] + sum(s["dropped"].values())
    # the bad JSONL lines are accounted for, by reason
    assert d["rejected_at_read"] == {"bad_json": 1, "empty": 1, "missing_field": 1}


def test_rejects_name_the_file_and_line(built):
    out, _, _ = built
    t = pl.read_ipc(str(out / "rejects" / "notes-*.arrow"))  # the notes source's one input shard
    msgs = t["message"].to_list()
    assert any("notes.jsonl:2: not valid JSON" in x for x in msgs)
    assert sorted(t["reason"].to_list()) == ["bad_json", "empty", "missing_field"]


def test_shards_open_with_pyarrow_polars_and_datasets(built):
    out, m, _ = built
    paths = [str(out / "shards" / s["path"]) for s in m["shards"]]
    t = ipc.open_file(pa.memory_map(paths[0])).read_all()
    assert t.schema.equals(PACKED_SCHEMA, check_metadata=True)
    lazy = pl.scan_ipc(paths)
    assert lazy.select(pl.len()).collect().item() == m["totals"]["rows"]
    assert lazy.collect_schema().names() == PACKED_SCHEMA.names
    import datasets

    ds = datasets.load_dataset("arrow", data_files=paths, split="train")
    assert ds.num_rows == m["totals"]["rows"]
    assert ds[0]["input_ids"] == t.column("input_ids")[0].as_py()


def test_samples_and_eval_files(built):
    out, m, _ = built
    train = pl.read_ipc([str(out / f) for f in m["samples_files"]])
    ev = pl.read_ipc([str(out / f) for f in m["eval_files"]])
    assert set(train["task"]) == {"needles", "kv_tracking"}
    assert set(ev["task"]) == {"hotpot_haystack"} and set(ev["purpose"]) == {"eval"}
    assert ev.height == m["lineage"]["samples"]["eval"]
    packed = {s for r in iter_rows(out) for s in r["sample_ids"]}
    assert not packed & set(ev["id"])  # eval samples are never packed
    row = ipc.open_file(str(out / m["samples_files"][0])).read_all()
    assert row.schema.equals(SAMPLE_SCHEMA, check_metadata=True)
    s = Sample.from_row(row.slice(0, 1).to_pylist()[0])
    ctx = s.context_text()
    for e in s.evidence:
        assert ctx[e.start : e.end] == e.text


def test_tampered_shard_is_caught(built, tmp_path):
    import shutil

    out, m, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    p = copy / "shards" / m["shards"][0]["path"]
    data = bytearray(p.read_bytes())
    data[-100] ^= 0xFF
    p.write_bytes(bytes(data))
    problems = check_shards(copy)
    assert len(problems) == 1 and "sha256" in problems[0] and m["shards"][0]["path"] in problems[0]
    (copy / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a finished lcdata build"):
        load_manifest(copy)


def test_rebuild_is_byte_identical_and_resumes(built, tmp_path):
    out, m, cfg = built
    out2 = tmp_path / "again"
    m2 = build_local(cfg, out2)
    assert [s["sha256"] for s in m2["shards"]] == [s["sha256"] for s in m["shards"]]
    # a rerun skips finished input shards: their markers and files are not rewritten
    marker = next((out2 / "work").glob("*/_DONE"))
    before = marker.stat().st_mtime_ns
    tok_file = marker.parent / "tokenized.arrow"
    tok_before = tok_file.stat().st_mtime_ns
    # drop one shard's marker: only that one is redone
    victim = sorted((out2 / "work").glob("*/_DONE"))[-1]
    victim.unlink()
    m3 = build_local(cfg, out2)
    assert marker.stat().st_mtime_ns == before and tok_file.stat().st_mtime_ns == tok_before
    assert victim.is_file()
    assert (out2 / "manifest.json").read_bytes() == json.dumps(m3, indent=2).encode() + b"\n"
    assert [s["sha256"] for s in m3["shards"]] == [s["sha256"] for s in m["shards"]]


def test_labels_only_on_assistant_answers(built, tok):
    out, _, _ = built
    r = next(iter_rows(out))
    ids, labels = np.asarray(r["input_ids"]), np.asarray(r["labels"])
    start = 0
    for n in r["seq_lens"]:
        lab = labels[start : start + n]
        trained = tok.decode(ids[start : start + n][lab != IGNORE_INDEX].tolist())
        assert trained.endswith("<|im_end|>") and "<|im_start|>" not in trained
        assert "<document>" not in trained
        start += n


def test_a_code_change_redoes_finished_shards(built, tmp_path, monkeypatch):
    """The completion key holds a hash of lcdata's source: outputs made by other code are redone."""
    import lcdata.build as B

    out, m, cfg = built
    out2 = tmp_path / "code"
    build_local(cfg, out2)
    marker = next((out2 / "work").glob("*/_DONE"))
    key = marker.read_text()
    assert len(B.code_hash()) == 64
    monkeypatch.setattr(B, "code_hash", lambda: "another version of lcdata")
    m2 = build_local(cfg, out2)
    assert marker.read_text() != key  # redone under the new key
    assert [s["sha256"] for s in m2["shards"]] == [s["sha256"] for s in m["shards"]]


def test_neighbours_build_from_short_records(tmp_path, model_dir):
    """HotpotQA's Wikipedia paragraphs as a JSONL of short records, two input shards, joined by
    embedding neighbours: contexts record their joins, the coherence filter runs on them."""
    from lcdata.read.corpora import eval_data_dir

    rows = json.loads((eval_data_dir() / "hotpotqa.json").read_text())[:40]
    paras = {t: "".join(s) for q in rows for t, s in q["context"]}
    src = tmp_path / "paras"
    src.mkdir()
    (src / "wiki.jsonl").write_text("".join(json.dumps({"id": t, "text": p}) + "\n" for t, p in sorted(paras.items())))
    raw = {
        "name": "nb", "model": str(model_dir),
        "sources": [{"name": "wiki", "kind": "jsonl", "path": str(src), "id_field": "id", "strategy": "neighbours",
                     "records_per_shard": (len(paras) + 1) // 2}],
        "assemble": {"buckets": [1024], "reserve_tokens": 128},
        "filters": {"coherence": {"enabled": True}},
        "tasks": [{"kind": "needles"}],
        "pack": {"seq_len": 2048},
    }
    out = tmp_path / "ds"
    cfg = parse_config(raw)
    m = build_local(cfg, out)
    ctxs = pl.concat([pl.read_ipc(p) for p in sorted((out / "contexts").glob("*.arrow"))])
    assert ctxs.height >= 10 and set(ctxs["strategy"]) == {"neighbours"}
    # contexts are named after their input shard's first document: one name per shard
    firsts = sorted(paras)[:: (len(paras) + 1) // 2]
    assert set(ctxs["group"]) == {f"wiki/{t}" for t in firsts}
    for parts, joins in zip(ctxs["parts"].to_list(), ctxs["joins"].to_list(), strict=True):
        assert len(joins) == len(parts) - 1 and all(-1 <= j <= 1.0001 for j in joins)
    lin = m["lineage"]
    assert lin["documents"]["read"] == len(paras)
    assert lin["stages"]["assemble"]["in"] == lin["stages"]["assemble"]["out"] + sum(
        lin["stages"]["assemble"]["dropped"].values())
    assert "coherence" in lin["stages"]
    # a rerun skips both shards and gives the same shards
    markers = {p: p.stat().st_mtime_ns for p in (out / "work").glob("*/_DONE")}
    assert len(markers) == 2
    again = build_local(cfg, out)
    assert {p: p.stat().st_mtime_ns for p in markers} == markers
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in m["shards"]]
