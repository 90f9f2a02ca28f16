"""Readers on real corpora and on every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from lcdata.config import ReadConfig, SourceConfig
from lcdata.read import SOURCES, Drop, ReadStage, Source, SourceError, plan_source, strategy_of
from lcdata.read.base import single_unit
from lcdata.read.corpora import Wikipedia, clean_wikitext, is_test_path
from lcdata.schema import Document
from lcdata.stage import Lineage, Planned, RejectSink


def read_all(src: SourceConfig, read_cfg: ReadConfig | None = None, rejects_path=None):
    lineage = Lineage()
    sink = RejectSink(rejects_path)
    stage = ReadStage(read_cfg or ReadConfig(), src).bind(lineage, sink)
    docs = [d for sh in plan_source(src) for d in stage.run(sh.units)]
    sink.close()
    return docs, lineage.stage("read"), sink


def assert_adds_up(st):
    assert st.in_ == st.out + sum(st.dropped.values()), st.to_json()


# ---------------------------------------------------------------- generic formats
def test_text_dir_groups_by_directory(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.md").write_text("# X\n\nhello")
    (tmp_path / "a" / "y.rst").write_text("Y\n=\n\nworld")
    (tmp_path / "b.txt").write_text("top")
    (tmp_path / "skip.bin").write_bytes(b"\0")
    docs, st, _ = read_all(SourceConfig(name="t", kind="text_dir", path=str(tmp_path)))
    assert {d.id: d.group for d in docs} == {"t/a/x.md": "a", "t/a/y.rst": "a", "t/b.txt": "."}
    assert_adds_up(st)


def test_jsonl_broken_line_is_named_and_the_rest_goes_on(tmp_path, caplog):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "one"}\n{"text": "two"\n\n{"id": 7, "body": "x"}\n["list"]\n{"text": 5}\n{"text": "three"}\n')
    docs, st, sink = read_all(SourceConfig(name="j", kind="jsonl", path=str(p)))
    assert [d.text for d in docs] == ["one", "three"]
    assert st.in_ == 6 and st.out == 2
    assert dict(st.dropped) == {"bad_json": 2, "missing_field": 1, "bad_type": 1}
    msgs = [r["message"] for r in sink.rows]
    assert any(f"{p}:2: not valid JSON" in m for m in msgs)
    assert any(f"{p}:4: no field `text` (fields: body, id); set `text_field`" in m for m in msgs)
    assert f"{p}:2" in caplog.text
    assert_adds_up(st)


def test_invalid_utf8_is_named_with_byte_offset(tmp_path):
    (tmp_path / "good.txt").write_text("fine text")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait")
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    docs, st, sink = read_all(SourceConfig(name="t", kind="text_dir", path=str(tmp_path)))
    assert [d.id for d in docs] == ["t/good.txt"]
    assert st.dropped["bad_utf8"] == 1
    assert "bad.txt: invalid UTF-8 at byte 3" in sink.rows[0]["message"]
    assert "re-encode the file as UTF-8" in sink.rows[0]["message"]
    docs, st, sink = read_all(SourceConfig(name="j", kind="jsonl", path=str(p)))
    assert [d.text for d in docs] == ["ok"] and f"{p}:2: invalid UTF-8" in sink.rows[0]["message"]
    assert_adds_up(st)


def test_empty_and_whitespace_documents_are_dropped(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "ws.txt").write_text("  \n\t\n ")
    (tmp_path / "ok.txt").write_text("x")
    docs, st, sink = read_all(SourceConfig(name="t", kind="text_dir", path=str(tmp_path)))
    assert [d.id for d in docs] == ["t/ok.txt"] and st.dropped["empty"] == 2
    assert all("empty or whitespace-only" in r["message"] for r in sink.rows)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match=r"source `x`: path .*nope does not exist; fix `path`"):
        plan_source(SourceConfig(name="x", kind="text_dir", path=str(tmp_path / "nope")))


def test_parquet_without_text_column_names_columns(tmp_path):
    pq.write_table(pa.table({"body": ["a", "b"], "id": [1, 2]}), tmp_path / "no_text.parquet")
    pq.write_table(pa.table({"text": ["good one", "good two"], "book": ["b1", "b1"]}), tmp_path / "ok.parquet")
    docs, st, sink = read_all(SourceConfig(name="p", kind="parquet", path=str(tmp_path), group_field="book"))
    assert [d.text for d in docs] == ["good one", "good two"] and docs[0].group == "b1"
    assert st.dropped["missing_column"] == 1
    assert "no_text.parquet: no column `text` (columns: body, id); set `text_field`" in sink.rows[0]["message"]
    assert_adds_up(st)


def test_arrow_file_and_stream_and_hf_dataset(tmp_path):
    t = pa.table({"text": ["alpha", "beta"], "id": ["a", "b"]})
    with ipc.new_file(str(tmp_path / "f.arrow"), t.schema) as w:
        w.write_table(t)
    with ipc.new_stream(str(tmp_path / "s.arrow"), t.schema) as w:
        w.write_table(t)
    docs, st, _ = read_all(SourceConfig(name="a", kind="arrow", path=str(tmp_path), id_field="id"))
    assert [d.id for d in docs] == ["a/a", "a/b", "a/a", "a/b"]
    import datasets

    datasets.Dataset.from_dict({"text": ["gamma", "delta"]}).save_to_disk(str(tmp_path / "hf"))
    docs, st, _ = read_all(SourceConfig(name="h", kind="hf_dataset", path=str(tmp_path / "hf")))
    assert [d.text for d in docs] == ["gamma", "delta"]


def test_too_large_document_is_dropped_with_a_message(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("x" * 50 * 1024 * 1024)  # a 50 MB single document (one line)
    (tmp_path / "small.txt").write_text("small")
    docs, st, sink = read_all(SourceConfig(name="t", kind="text_dir", path=str(tmp_path)))
    assert [d.id for d in docs] == ["t/small.txt"]
    assert st.dropped["too_large"] == 1
    msg = sink.rows[0]["message"]
    assert "big.txt: 52,428,800 chars exceeds `read.max_doc_chars`=10,000,000" in msg
    assert len(sink.rows[0]["record"]) < 30_000  # the reject file stays small


def test_code_repo_order_init_first(tmp_path):
    for rel in ["pkg/z.py", "pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "top.py", "README.md"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    shards = plan_source(SourceConfig(name="c", kind="code_repo", path=str(tmp_path)))
    rels = [(u.group, u.rel) for s in shards for u in s.units]
    assert rels == [("<toplevel>", "README.md"), ("<toplevel>", "top.py"), ("pkg", "pkg/__init__.py"),
                    ("pkg", "pkg/a.py"), ("pkg", "pkg/z.py"), ("pkg", "pkg/sub/__init__.py")]


def test_shards_never_split_a_group(tmp_path):
    for g in range(3):
        for i in range(4):
            (tmp_path / f"g{g}").mkdir(exist_ok=True)
            (tmp_path / f"g{g}" / f"{i}.txt").write_text("t")
    shards = plan_source(SourceConfig(name="t", kind="text_dir", path=str(tmp_path), docs_per_shard=3))
    assert len(shards) == 3
    for s in shards:
        assert len({u.group for u in s.units}) == 1


# ---------------------------------------------------------------- real corpora
def test_shakespeare_acts_keep_file_offsets():
    src = SourceConfig(name="sh", kind="shakespeare", include=["tragedies/hamlet.md"])
    docs, st, _ = read_all(src)
    assert len(docs) == 5 and [d.metadata["order"] for d in docs] == [1, 2, 3, 4, 5]
    text = open(plan_source(src)[0].units[0].path).read()
    assert "".join(d.text for d in docs) == text
    for d in docs:
        a = d.metadata["file_start"]
        assert text[a : a + len(d.text)] == d.text
    assert docs[0].text.startswith("# Hamlet") and docs[1].text.startswith("## ACT II")


def test_stdlib_skips_tests_and_groups_packages():
    src = SourceConfig(name="std", kind="python_stdlib", include=["json/*", "unittest/*"])
    units = [u for s in plan_source(src) for u in s.units]
    rels = [u.rel for u in units]
    assert "json/__init__.py" in rels and rels.index("json/__init__.py") < rels.index("json/decoder.py")
    assert not any(is_test_path(r) for r in rels)
    assert not any("/test/" in r or r.split("/")[-1].startswith("test_") for r in rels)
    assert {u.group for u in units} == {"json", "unittest"}


def test_python_docs_rst():
    src = SourceConfig(name="docs", kind="python_docs", include=["tutorial/*"])
    docs, st, _ = read_all(src)
    assert len(docs) >= 15 and all(d.group == "tutorial" for d in docs)
    assert any("Python" in d.text for d in docs)


def test_wikipedia_articles_are_cleaned():
    docs, st, _ = read_all(SourceConfig(name="wiki", kind="wikipedia"))
    assert len(docs) >= 100
    d = next(d for d in docs if d.metadata["title"] == "Anarchism")
    assert "{{" not in d.text and "[[" not in d.text and "<ref" not in d.text
    assert "anarchism" in d.text.lower() and len(d.text) > 10_000
    assert d.metadata["license"] == Wikipedia.license == "CC-BY-SA-3.0"
    assert_adds_up(st)


def test_clean_wikitext():
    raw = "'''Foo''' is a [[bar|Bar]]{{cite|x={{y}}}}<ref>r</ref> [[baz]].\n== History ==\n[[File:a.png|thumb|x]]Text"
    assert clean_wikitext(raw) == "Foo is a Bar baz.\n## History\nText\n"


def test_rejects_file_is_arrow(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\nnot json\n')
    _, _, sink = read_all(SourceConfig(name="j", kind="jsonl", path=str(p)), rejects_path=tmp_path / "rej.arrow")
    t = ipc.open_file(str(tmp_path / "rej.arrow")).read_all()
    assert t.column("reason").to_pylist() == ["bad_json"]
    assert json.dumps(t.column("record").to_pylist()[0]) != ""


# ---------------------------------------------------------------- the registry
def test_config_kinds_are_the_registered_sources():
    assert set(SourceConfig.model_json_schema()["properties"]["kind"]["enum"]) == set(SOURCES)
    for kind, cls in SOURCES.items():
        assert cls.kind == kind and cls.description and cls.default_strategy in ("natural", "concat")
        if cls.needs_path:
            assert cls.license is None
            with pytest.raises(ValidationError, match=f"of kind `{kind}` needs `path`"):
                SourceConfig(name="x", kind=kind)
        else:
            assert cls.license and SourceConfig(name="x", kind=kind).kind == kind
    with pytest.raises(ValidationError, match=r"unknown source kind `txt`; the kinds are: arrow, code_repo, "):
        SourceConfig(name="x", kind="txt")


def test_a_kind_is_defined_once():
    with pytest.raises(ValueError, match="source kind `jsonl` is defined twice"):
        class Again(Source):
            kind = "jsonl"
    assert SOURCES["jsonl"].__name__ == "Jsonl"


def test_a_new_source_kind_is_one_class(tmp_path):
    class Lines(Source):
        """One document per line of one file; `#` lines are dropped."""

        kind = "test_lines"
        needs_path = True
        default_strategy = "concat"
        description = "lines of a file"

        @classmethod
        def units(cls, cfg):
            return single_unit(cls.existing_root(cfg))

        @classmethod
        def read(cls, cfg, unit):
            for i, line in enumerate(Path(unit.path).read_text().splitlines(), 1):
                yield Planned()
                if line.startswith("#"):
                    yield Drop(f"{cfg.name}/{i}", "comment", f"{unit.path}:{i}: a comment line", line)
                else:
                    yield Document(f"{cfg.name}/{i}", cfg.name, line, {"group": "all"})

    try:
        assert SOURCES["test_lines"] is Lines
        assert "test_lines" in SourceConfig.model_json_schema()["properties"]["kind"]["enum"]
        with pytest.raises(ValidationError, match="needs `path`"):
            SourceConfig(name="l", kind="test_lines")
        p = tmp_path / "l.txt"
        p.write_text("alpha\n# note\n  \nbeta\n")
        src = SourceConfig(name="l", kind="test_lines", path=str(p))
        assert strategy_of(src) == "concat"
        assert [[u.rel for u in s.units] for s in plan_source(src)] == [["l.txt"]]
        docs, st, sink = read_all(src)
        assert [d.text for d in docs] == ["alpha", "beta"]
        assert st.to_json() == {"in": 4, "out": 2, "dropped": {"comment": 1, "empty": 1}}
        assert f"{p}:2: a comment line" in sink.rows[0]["message"] and "l/3: empty" in sink.rows[1]["message"]
    finally:
        SOURCES.pop("test_lines", None)
    with pytest.raises(ValidationError, match="unknown source kind `test_lines`"):
        SourceConfig(name="l", kind="test_lines", path=str(p))


def test_missing_file_is_counted_and_dropped(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    src = SourceConfig(name="t", kind="text_dir", path=str(tmp_path))
    shards = plan_source(src)
    (tmp_path / "a.txt").unlink()
    lineage, sink = Lineage(), RejectSink(None)
    docs = list(ReadStage(ReadConfig(), src).bind(lineage, sink).run(shards[0].units))
    assert [d.id for d in docs] == ["t/b.txt"]
    assert lineage.to_json()["read"] == {"in": 2, "out": 1, "dropped": {"missing_file": 1}}
    assert "a.txt: file disappeared since planning; rerun the build" in sink.rows[0]["message"]


# ---------------------------------------------------------------- big files in record ranges
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "arrow"])
def test_a_big_record_file_is_split_into_input_shards_reading_the_same_records(tmp_path, kind):
    recs = [{"text": f"Record {i}: the harbour master wrote down ship number {i}."} for i in range(100)]
    path = tmp_path / f"big.{kind}"
    if kind == "jsonl":
        lines = [json.dumps(r) for r in recs]
        lines.insert(40, "")  # a blank line (not a record) and a broken one keep their line numbers
        lines.insert(70, '{"text": broken')
        path.write_text("\n".join(lines) + "\n")
    elif kind == "parquet":
        pq.write_table(pa.table({"text": [r["text"] for r in recs]}), path, row_group_size=16)
    else:
        with ipc.new_file(str(path), pa.schema([("text", pa.string())])) as w:
            for a in range(0, 100, 16):
                w.write_table(pa.table({"text": [r["text"] for r in recs[a:a + 16]]}))
    whole = SourceConfig(name="b", kind=kind, path=str(path))
    split = SourceConfig(name="b", kind=kind, path=str(path), records_per_shard=30)
    shards = plan_source(split)
    assert len(shards) == 4 and len({s.id for s in shards}) == 4 and len(plan_source(whole)) == 1
    assert all(len(s.units) == 1 and s.units[0].records for s in shards)
    docs_whole, st_whole, sink_whole = read_all(whole)
    docs_split, st_split, sink_split = read_all(split)
    assert [(d.id, d.text) for d in docs_split] == [(d.id, d.text) for d in docs_whole]  # same ids, same order
    assert len(docs_split) == 100 and st_split.to_json() == st_whole.to_json()
    assert [r["record_id"] for r in sink_split.rows] == [r["record_id"] for r in sink_whole.rows]
    assert plan_source(split)[2].to_json() == shards[2].to_json()  # stable plan: resume finds its shards


def test_records_per_shard_refuses_to_split_groups():
    with pytest.raises(ValidationError, match="`records_per_shard` splits files into record ranges"):
        SourceConfig(name="b", kind="jsonl", path="x.jsonl", records_per_shard=10, group_field="book")
