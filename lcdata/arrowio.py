"""Crash-safe file writing: Arrow IPC files and JSON under a temp name, fsynced, renamed."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


class ArrowWriter:
    """Streams record batches into an Arrow IPC *file* under a temp name; ``close`` renames."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = pa.OSFile(str(self.tmp), "wb")
        self._writer = ipc.new_file(self._sink, schema)
        self.schema = schema
        self.rows = 0

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.write(pa.RecordBatch.from_pylist(rows, schema=self.schema))

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += len(batch)

    def close(self) -> Path:
        self._writer.close()
        self._sink.close()
        fsync(self.tmp)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    fsync(tmp)
    if path.name == "manifest.json":
        from lcdata.faults import crash_point

        crash_point("manifest")
    os.replace(tmp, path)


def open_ipc(path: Path) -> pa.Table:
    """Memory-mapped table of an Arrow IPC file (no copy)."""
    return ipc.open_file(pa.memory_map(str(path))).read_all()


def open_ipc_mapped(path: Path) -> tuple[pa.Table, mmap.mmap]:
    """Like ``open_ipc``, over a Python ``mmap`` the caller keeps: ``mm.madvise(MADV_DONTNEED)``
    then drops the pages read so far from the process (they are re-read from the page cache
    if touched again), which keeps a long streaming pass's resident memory flat."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    mm.madvise(mmap.MADV_RANDOM)  # the packer reads samples in plan order, scattered: no readahead
    return ipc.open_file(pa.BufferReader(pa.py_buffer(mm))).read_all(), mm
