"""Generic readers: text/markdown/reST directories, JSONL, Parquet, Arrow, local HF datasets,
code repositories. Each reader yields ``Document``s for one *unit* (one file, or one
dataset directory) and reports every record it cannot use through ``stage.drop``, naming
the file (and line or row) and the fix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from lcdata.config import ReadConfig, SourceConfig
from lcdata.schema import Document
from lcdata.stage import Stage

TEXT_EXTENSIONS = [".txt", ".md", ".markdown", ".rst", ".rst.txt", ".text"]
CODE_EXTENSIONS = [
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts",
    ".tsx", ".rb", ".sh", ".toml", ".cfg", ".md", ".rst", ".txt",
]


class ReadStage(Stage[Any, Document]):
    """Counts raw records seen (``in``), documents produced (``out``) and drops by reason."""

    name = "read"

    def __init__(self, read_cfg: ReadConfig) -> None:
        super().__init__()
        self.cfg = read_cfg

    def check(self, doc: Document, where: str) -> Document | None:
        """The checks every reader shares: empty and oversize documents."""
        n = len(doc.text)
        if n > self.cfg.max_doc_chars:
            self.drop(doc.id, "too_large",
                      f"{where}: {n:,} chars exceeds `read.max_doc_chars`={self.cfg.max_doc_chars:,}; "
                      "raise it or split the document", doc.text)
            return None
        if len(doc.text.strip()) < self.cfg.min_doc_chars:
            self.drop(doc.id, "empty", f"{where}: empty or whitespace-only document; remove it or fill it", doc.text)
            return None
        self.stats.out += 1
        return doc


def decode_utf8(stage: ReadStage, data: bytes, where: str, record_id: str) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        stage.drop(record_id, "bad_utf8",
                   f"{where}: invalid UTF-8 at byte {e.start} ({data[e.start:e.start + 4]!r}); "
                   "re-encode the file as UTF-8", data[: max(0, e.start) + 64].decode("utf-8", "replace"))
        return None


def read_text_file(stage: ReadStage, src: SourceConfig, path: Path, rel: str, meta: dict[str, Any]) -> Iterator[Document]:
    stage.stats.in_ += 1
    doc_id = f"{src.name}/{rel}"
    text = decode_utf8(stage, path.read_bytes(), str(path), doc_id)
    if text is None:
        return
    doc = stage.check(Document(doc_id, src.name, text, {"path": rel, **meta}), str(path))
    if doc is not None:
        yield doc


def _record_doc(stage: ReadStage, src: SourceConfig, rec: dict[str, Any], where: str, fallback_id: str) -> Document | None:
    text = rec.get(src.text_field)
    rid = f"{src.name}/{rec[src.id_field]}" if src.id_field and src.id_field in rec else fallback_id
    if text is None:
        stage.drop(rid, "missing_field",
                   f"{where}: no field `{src.text_field}` (fields: {', '.join(sorted(rec)) or 'none'}); "
                   "set `text_field` in the source config", rec)
        return None
    if not isinstance(text, str):
        stage.drop(rid, "bad_type", f"{where}: field `{src.text_field}` is {type(text).__name__}, expected a string", rec)
        return None
    meta = {k: v for k, v in rec.items() if k != src.text_field and isinstance(v, str | int | float | bool)}
    if src.group_field and src.group_field in rec:
        meta["group"] = str(rec[src.group_field])
    return stage.check(Document(rid, src.name, text, meta), where)


def read_jsonl(stage: ReadStage, src: SourceConfig, path: Path, rel: str) -> Iterator[Document]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue  # blank lines are not records
            stage.stats.in_ += 1
            where = f"{path}:{lineno}"
            rid = f"{src.name}/{rel}:{lineno}"
            line = decode_utf8(stage, raw, where, rid)
            if line is None:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                stage.drop(rid, "bad_json", f"{where}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line", line)
                continue
            if not isinstance(rec, dict):
                stage.drop(rid, "bad_json", f"{where}: expected a JSON object, got {type(rec).__name__}", line)
                continue
            doc = _record_doc(stage, src, rec, where, rid)
            if doc is not None:
                yield doc


def _read_table_batches(stage: ReadStage, src: SourceConfig, path: Path, rel: str,
                        schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> Iterator[Document]:
    if src.text_field not in schema.names:
        stage.stats.in_ += 1
        stage.drop(f"{src.name}/{rel}", "missing_column",
                   f"{path}: no column `{src.text_field}` (columns: {', '.join(schema.names)}); "
                   "set `text_field` in the source config", str(path))
        return
    row = 0
    for batch in batches:
        for rec in batch.to_pylist():
            stage.stats.in_ += 1
            doc = _record_doc(stage, src, rec, f"{path} row {row}", f"{src.name}/{rel}:{row}")
            row += 1
            if doc is not None:
                yield doc


def read_parquet(stage: ReadStage, src: SourceConfig, path: Path, rel: str) -> Iterator[Document]:
    pf = pq.ParquetFile(path)
    yield from _read_table_batches(stage, src, path, rel, pf.schema_arrow, pf.iter_batches(batch_size=256))


def open_arrow(path: Path) -> pa.Table:
    """Open an Arrow IPC file or stream memory-mapped, whichever format it is."""
    source = pa.memory_map(str(path))
    try:
        return ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source = pa.memory_map(str(path))
        return ipc.open_stream(source).read_all()


def read_arrow(stage: ReadStage, src: SourceConfig, path: Path, rel: str) -> Iterator[Document]:
    table = open_arrow(path)
    yield from _read_table_batches(stage, src, path, rel, table.schema, iter(table.to_batches(max_chunksize=256)))


def read_hf_dataset(stage: ReadStage, src: SourceConfig, path: Path, rel: str) -> Iterator[Document]:
    """A dataset saved with ``save_to_disk`` or a local dataset directory/file ``load_dataset`` reads."""
    import datasets

    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset(str(path), split="train")
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    schema = ds.features.arrow_schema
    batches = (b for t in ds.with_format("arrow").iter(batch_size=256) for b in t.to_batches())
    yield from _read_table_batches(stage, src, path, rel, schema, batches)
