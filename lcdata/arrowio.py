"""Crash-safe file writing: Arrow IPC files and JSON under a temp name, fsynced, renamed."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import secrets
import shutil
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


def temp_path(path: Path) -> Path:
    """A temp name beside ``path`` that no other writer can pick (pid + random), hidden
    (leading dot) so globs over ``*.arrow`` never see it; ``is_temp`` recognises it."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def with_path(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path``: Arrow's and ``write``'s I/O errors name no file (ENOSPC,
    EROFS ...), and a message without the path leaves the user guessing which disk is full."""
    if e.filename:
        return e
    code = e.errno
    if code is None:  # Arrow puts the errno in its message: "... [errno 28] No space left on device"
        m = re.search(r"errno (\d+)", str(e), re.IGNORECASE)
        code = int(m.group(1)) if m else None
    return OSError(code, os.strerror(code) if code else str(e), str(path))


_TEMP = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp$")


def is_temp(name: str) -> bool:
    """Whether ``name`` is a ``temp_path`` name (and nothing else that happens to end in .tmp)."""
    return bool(_TEMP.match(name))


OWN_DIRS = ("samples", "eval", "contexts", "rejects", "work", "cache", "dedup", "report")


def remove_temps(out: Path) -> list[Path]:
    """Delete the temp files and directories of killed writers in a build's output directory:
    ``temp_path`` names at its top level and in lcdata's own subdirectories, nothing else (an
    --out shared with other files keeps theirs). Call it only while holding the output lock:
    then no live writer owns one."""
    found = [p for p in out.iterdir() if is_temp(p.name)]
    for sub in OWN_DIRS:
        if (out / sub).is_dir() and not (out / sub).is_symlink():
            found += [p for p in (out / sub).rglob(".*.tmp") if is_temp(p.name)]
    for p in sorted(found, key=lambda p: len(p.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """What a manifest records of a file: its size and sha256."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}  # the key order shards always had


def file_change(path: Path, want: dict[str, Any]) -> str | None:
    """How ``path`` differs from its ``file_entry`` (``missing``, ``size``, ``sha256``), or None."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != want["bytes"]:
        return "size"
    return "sha256" if sha256_file(path) != want["sha256"] else None


class ArrowWriter:
    """Streams record batches into an Arrow IPC *file* under a temp name; ``close`` renames."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.tmp = temp_path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.tmp), "wb")
        except OSError as e:
            raise with_path(e, path) from e
        try:
            self._writer = ipc.new_file(self._sink, schema)
        except OSError as e:
            self._sink.close()
            self.tmp.unlink(missing_ok=True)
            raise with_path(e, path) from e
        self.schema = schema
        self.rows = 0

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.write(pa.RecordBatch.from_pylist(rows, schema=self.schema))

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self._writer.write_batch(batch)
        except OSError as e:
            raise with_path(e, self.path) from e
        self.rows += len(batch)

    def close(self) -> Path:
        try:
            self._writer.close()
            self._sink.close()
            fsync(self.tmp)
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()  # e.g. a full disk while flushing the footer: no temp file stays
            raise with_path(e, self.path) from e
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the temp file; never raises (it runs while another error is on its way, and
        closing can fail again, e.g. on a full disk)."""
        for close in (self._writer.close, self._sink.close):
            try:
                close()
            except Exception:  # noqa: S110 - the original error is the one to report
                pass
        self.tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str, sync: bool = True) -> None:
    """``text`` to ``path`` atomically: a temp file (fsynced), then a rename; on any error the
    temp file is removed and an I/O error names ``path``."""
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        if sync:
            fsync(tmp)
        if path.name == "manifest.json":
            from lcdata.faults import crash_point

            crash_point("manifest")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise with_path(e, path) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


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
