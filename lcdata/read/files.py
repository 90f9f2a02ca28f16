"""Generic sources: text/markdown/reST directories, code repositories, JSONL, Parquet, Arrow,
local HF datasets. Each reads one *unit* (one file, or one dataset directory) and yields a
``Drop`` for every record it cannot use, naming the file (and line or row) and the fix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from lcdata.read.base import (
    Candidate,
    Drop,
    Source,
    SourceError,
    SourceItem,
    Unit,
    single_unit,
    top_group,
    walk,
)
from lcdata.read.fs import is_url, open_binary, open_url, remote_root
from lcdata.schema import Document
from lcdata.stage import Planned

if TYPE_CHECKING:
    from lcdata.config import SourceConfig

TEXT_EXTENSIONS = [".txt", ".md", ".markdown", ".rst", ".rst.txt", ".text"]
CODE_EXTENSIONS = [
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts",
    ".tsx", ".rb", ".sh", ".toml", ".cfg", ".md", ".rst", ".txt",
]


def decode_utf8(data: bytes, where: str, record_id: str) -> str | Drop:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Drop(record_id, "bad_utf8",
                    f"{where}: invalid UTF-8 at byte {e.start} ({data[e.start:e.start + 4]!r}); "
                    "re-encode the file as UTF-8", data[: max(0, e.start) + 64].decode("utf-8", "replace"))


# ----------------------------------------------------------------- file trees
class FileTree(Source):
    """A directory of text files, one document per file, grouped by ``group_of``."""

    suffixes: ClassVar[list[str]] = TEXT_EXTENSIONS
    remote = True

    @classmethod
    def extensions(cls, cfg: SourceConfig) -> list[str]:
        return cfg.extensions or cls.suffixes

    @classmethod
    def group_of(cls, rel: str) -> str:
        return str(PurePosixPath(rel).parent)

    @classmethod
    def skip(cls, rel: str) -> bool:
        return False

    @classmethod
    def sort_key(cls, rel: str) -> Any:
        return rel

    @classmethod
    def units(cls, cfg: SourceConfig) -> list[Unit]:
        if is_url(cfg.path):
            remote = remote_root(cfg)
            if not remote.is_dir:
                raise SourceError(f"source `{cfg.name}` of kind `{cls.kind}`: {cfg.path} is a file, expected a "
                                  "directory (an http(s) index page needs a URL ending in `/`)")
            rels = sorted(remote.files(cls.extensions(cfg), cfg, cls.skip), key=cls.sort_key)
            return [Unit(remote.url_of(r), r, cls.group_of(r)) for r in rels]
        root = cls.directory(cfg)
        rels = sorted(walk(root, cls.extensions(cfg), cfg, cls.skip), key=cls.sort_key)
        return [Unit(str(root / r), r, cls.group_of(r)) for r in rels]

    fmt: ClassVar[str | None] = None  # a converted format, recorded in the document metadata

    @classmethod
    def to_text(cls, data: bytes, where: str, doc_id: str) -> str | Drop:
        """The file's text from its bytes, or why there is none (a format reader converts here)."""
        return decode_utf8(data, where, doc_id)

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:
        yield Planned()
        doc_id = f"{cfg.name}/{unit.rel}"
        with open_binary(unit.path, cfg) as f:
            data = f.read()
        text = cls.to_text(data, unit.path, doc_id)
        if isinstance(text, Drop):
            yield text
            return
        meta: dict[str, Any] = {"path": unit.rel, "group": unit.group, "order": unit.order}
        if cls.fmt:
            meta["format"] = cls.fmt
        yield Candidate(Document(doc_id, cfg.name, text, meta), unit.path)


class TextDir(FileTree):
    kind = "text_dir"
    needs_path = True
    description = "text files (" + " ".join(TEXT_EXTENSIONS) + ")"


def code_sort_key(rel: str) -> tuple[Any, ...]:
    """Directory by directory, ``__init__.py`` first in each."""
    p = PurePosixPath(rel)
    return (p.parent.parts, 0 if p.name == "__init__.py" else 1, p.name)


class CodeRepo(FileTree):
    kind = "code_repo"
    needs_path = True
    default_strategy = "concat"
    description = "source files of a code repository"
    suffixes = CODE_EXTENSIONS

    @classmethod
    def group_of(cls, rel: str) -> str:
        return top_group(rel)

    @classmethod
    def sort_key(cls, rel: str) -> Any:
        return code_sort_key(rel)


# ----------------------------------------------------------------- records
def record_item(cfg: SourceConfig, rec: dict[str, Any], where: str, fallback_id: str) -> Candidate | Drop:
    text = rec.get(cfg.text_field)
    rid = f"{cfg.name}/{rec[cfg.id_field]}" if cfg.id_field and cfg.id_field in rec else fallback_id
    if text is None:
        return Drop(rid, "missing_field",
                    f"{where}: no field `{cfg.text_field}` (fields: {', '.join(sorted(rec)) or 'none'}); "
                    "set `text_field` in the source config", rec)
    if not isinstance(text, str):
        return Drop(rid, "bad_type", f"{where}: field `{cfg.text_field}` is {type(text).__name__}, expected a string", rec)
    meta = {k: v for k, v in rec.items() if k != cfg.text_field and isinstance(v, str | int | float | bool)}
    if cfg.group_field and cfg.group_field in rec:
        meta["group"] = str(rec[cfg.group_field])
    return Candidate(Document(rid, cfg.name, text, meta), where)


class RecordFiles(Source):
    """One record file, or a directory of them (every file with one of ``suffixes``). With
    ``records_per_shard``, a file with more records is split into ranges of that many, each a
    unit (and group) of its own, so one big file runs as several input shards."""

    needs_path = True
    remote = True
    suffixes: ClassVar[list[str]] = []

    @classmethod
    def files(cls, cfg: SourceConfig) -> list[Unit]:
        """The record files: the root itself, or the files under it."""
        if is_url(cfg.path):
            remote = remote_root(cfg)
            if not remote.is_dir:
                return [Unit(remote.url, remote.name, remote.name)]
            return [Unit(remote.url_of(r), r, r) for r in remote.files(cls.suffixes, cfg)]
        root = cls.existing_root(cfg)
        return single_unit(root) if root.is_file() else [Unit(str(root / r), r, r) for r in walk(root, cls.suffixes, cfg)]

    @classmethod
    def units(cls, cfg: SourceConfig) -> list[Unit]:
        files = cls.files(cfg)
        if not cfg.records_per_shard:
            return files
        out = []
        for u in files:
            ranges = cls.ranges(u.path, cfg.records_per_shard, cfg)
            if len(ranges) <= 1:
                out.append(u)
                continue
            # the group names the range: shards cut between ranges, and a shard's id stays put
            out += [Unit(u.path, u.rel, f"{u.group}@{r[0]:012d}", records=r) for r in ranges]
        return out

    @classmethod
    def ranges(cls, path: str, n: int, cfg: SourceConfig) -> list[list[int]]:
        """``[first, end)`` record ranges of ``n`` records (rows; a format may add more)."""
        total = cls.count(path, cfg)
        return [[a, min(total, a + n)] for a in range(0, total, n)]

    @classmethod
    def count(cls, path: str, cfg: SourceConfig) -> int:  # pragma: no cover - per format
        raise NotImplementedError


class Jsonl(RecordFiles):
    kind = "jsonl"
    description = "JSON Lines records"
    suffixes = [".jsonl", ".json"]

    @classmethod
    def ranges(cls, path: str, n: int, cfg: SourceConfig) -> list[list[int]]:
        """Ranges of ``n`` lines: ``[first line, end line, byte offset of the first]`` (1-based
        line numbers, as in messages and ids), found in one pass over the file."""
        out: list[list[int]] = []
        offset = 0
        with open_binary(path, cfg) as f:
            for lineno, raw in enumerate(f, 1):
                if (lineno - 1) % n == 0:
                    out.append([lineno, lineno, offset])
                out[-1][1] = lineno + 1
                offset += len(raw)
        return out

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:
        path = unit.path
        first, end, offset = unit.records if unit.records else (1, -1, 0)
        with open_binary(path, cfg) as f:
            if offset:
                f.seek(offset)  # a range: over HTTP, a range request
            for lineno, raw in enumerate(f, first):
                if lineno == end:
                    break
                if not raw.strip():
                    continue  # blank lines are not records
                yield Planned()
                yield cls.line_item(cfg, raw, f"{path}:{lineno}", f"{cfg.name}/{unit.rel}:{lineno}")

    @classmethod
    def line_item(cls, cfg: SourceConfig, raw: bytes, where: str, rid: str) -> Candidate | Drop:
        line = decode_utf8(raw, where, rid)
        if isinstance(line, Drop):
            return line
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            return Drop(rid, "bad_json", f"{where}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line", line)
        except RecursionError:
            return Drop(rid, "bad_json", f"{where}: JSON nested too deeply to parse; flatten or remove the line",
                        line[:200])
        if not isinstance(rec, dict):
            return Drop(rid, "bad_json", f"{where}: expected a JSON object, got {type(rec).__name__}", line)
        return record_item(cfg, rec, where, rid)


def table_items(cfg: SourceConfig, path: str, rel: str, schema: pa.Schema,
                batches: Iterator[pa.RecordBatch], first_row: int = 0) -> Iterator[SourceItem]:
    """One item per row (numbered from ``first_row``); a table without the text column is one
    dropped record."""
    if cfg.text_field not in schema.names:
        yield Planned()
        yield Drop(f"{cfg.name}/{rel}", "missing_column",
                   f"{path}: no column `{cfg.text_field}` (columns: {', '.join(schema.names)}); "
                   "set `text_field` in the source config", str(path))
        return
    row = first_row
    for batch in batches:
        for rec in batch.to_pylist():
            yield Planned()
            yield record_item(cfg, rec, f"{path} row {row}", f"{cfg.name}/{rel}:{row}")
            row += 1


@contextmanager
def parquet_file(path: str, cfg: SourceConfig) -> Iterator[pq.ParquetFile]:
    """A Parquet file opened by pyarrow (a local path) or through fsspec (a URL: the footer,
    then only the row groups read, by range requests)."""
    if not is_url(path):
        yield pq.ParquetFile(path)
        return
    with open_url(path, cfg) as f:
        yield pq.ParquetFile(f)


class Parquet(RecordFiles):
    kind = "parquet"
    description = "Parquet records"
    suffixes = [".parquet"]

    @classmethod
    def count(cls, path: str, cfg: SourceConfig) -> int:
        with parquet_file(path, cfg) as pf:
            return pf.metadata.num_rows

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:
        with parquet_file(unit.path, cfg) as pf:
            yield from cls.read_file(cfg, unit, pf)

    @classmethod
    def read_file(cls, cfg: SourceConfig, unit: Unit, pf: pq.ParquetFile) -> Iterator[SourceItem]:
        if not unit.records:
            yield from table_items(cfg, unit.path, unit.rel, pf.schema_arrow, pf.iter_batches(batch_size=256))
            return
        first, end = unit.records[:2]
        # only the row groups that hold the range are read, then cut to it
        groups, starts, at = [], [], 0
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if at < end and at + n > first:
                groups.append(i)
                starts.append(at)
            at += n
        table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
        table = table.slice(first - (starts[0] if starts else 0), end - first)
        yield from table_items(cfg, unit.path, unit.rel, pf.schema_arrow,
                               iter(table.to_batches(max_chunksize=256)), first)


def open_arrow(path: Path) -> pa.Table:
    """Open an Arrow IPC file or stream memory-mapped, whichever format it is."""
    source = pa.memory_map(str(path))
    try:
        return ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source = pa.memory_map(str(path))
        return ipc.open_stream(source).read_all()


def arrow_batches(f: Any) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and record batches of an Arrow IPC file or stream read from a file object,
    one batch at a time (a remote file is never held whole)."""
    try:
        r = ipc.open_file(f)
        return r.schema, (r.get_batch(i) for i in range(r.num_record_batches))
    except pa.ArrowInvalid:
        f.seek(0)
        s = ipc.open_stream(f)
        return s.schema, iter(s)


def rows_between(batches: Iterator[pa.RecordBatch], first: int, end: int | None) -> Iterator[pa.RecordBatch]:
    """The rows ``[first, end)`` of a run of batches (``end`` None: to the last), 256 at most
    at a time (a writer's batch may be far larger)."""
    at = 0
    for b in batches:
        a, z = max(first - at, 0), b.num_rows if end is None else min(end - at, b.num_rows)
        at += b.num_rows
        for s in range(a, z, 256):
            yield b.slice(s, min(256, z - s))
        if end is not None and at >= end:
            return


class Arrow(RecordFiles):
    kind = "arrow"
    description = "Arrow IPC records"
    suffixes = [".arrow", ".feather", ".ipc"]

    @classmethod
    def count(cls, path: str, cfg: SourceConfig) -> int:
        if not is_url(path):
            return open_arrow(Path(path)).num_rows
        with open_url(path, cfg) as f:
            return sum(b.num_rows for b in arrow_batches(f)[1])

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:
        first, end = unit.records[:2] if unit.records else (0, None)
        if is_url(unit.path):
            with open_url(unit.path, cfg) as f:
                schema, batches = arrow_batches(f)
                yield from table_items(cfg, unit.path, unit.rel, schema, rows_between(batches, first, end), first)
            return
        table = open_arrow(Path(unit.path))  # memory-mapped: a slice reads only its rows
        if end is not None:
            table = table.slice(first, end - first)
        yield from table_items(cfg, unit.path, unit.rel, table.schema,
                               iter(table.to_batches(max_chunksize=256)), first)


class HFDataset(Source):
    """A dataset saved with ``save_to_disk`` or a local dataset directory/file ``load_dataset`` reads."""

    kind = "hf_dataset"
    needs_path = True
    description = "a local Hugging Face dataset"

    @classmethod
    def units(cls, cfg: SourceConfig) -> list[Unit]:
        return single_unit(cls.existing_root(cfg))

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:
        import datasets

        path = Path(unit.path)
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(str(path), split="train")
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
        schema = ds.features.arrow_schema
        batches = (b for t in ds.with_format("arrow").iter(batch_size=256) for b in t.to_batches())
        yield from table_items(cfg, str(path), unit.rel, schema, batches)
