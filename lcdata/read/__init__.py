"""Readers: plan input shards (small JSON-able lists of files) and read them into Documents.

Each source kind is one ``Source`` class (``SOURCES``, see ``base``): generic formats in
``files``, shipped corpora in ``corpora``. Planning lists a source's *units* (one file, or one
dataset directory) with the group each belongs to, sorts them (groups, then a sensible order
inside: ``__init__.py`` first, acts in order), and cuts them into input shards that never
split a group, so same-source concatenation sees all of a group's files. Each input shard
becomes one Prefect task, whose ``ReadStage`` reads the shard's units in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from lcdata.config import ReadConfig, SourceConfig
from lcdata.read import corpora, documents, files, fs  # noqa: F401 - defining the source classes registers them
from lcdata.read.base import (
    SOURCES,
    Candidate,
    Drop,
    InputShard,
    Source,
    SourceError,
    SourceItem,
    Strategy,
    Unit,
)
from lcdata.schema import Document
from lcdata.stage import Planned, Producer

__all__ = [
    "SOURCES", "Candidate", "Drop", "InputShard", "ReadStage", "Source", "SourceError", "SourceItem", "Unit",
    "cut_after", "list_units", "plan_source", "source_of", "strategy_of",
]


def source_of(src: SourceConfig) -> type[Source]:
    return SOURCES[src.kind]


def strategy_of(src: SourceConfig) -> Strategy:
    if src.strategy:
        return src.strategy
    if src.group_field:
        return "concat"
    return source_of(src).default_strategy


def list_units(src: SourceConfig) -> list[Unit]:
    """The source's units; ``order`` counts within the unit's group (not across the source),
    so a file added to one group leaves every other group's units unchanged."""
    units = source_of(src).units(src)
    seen: dict[str, int] = {}
    for u in units:
        u.order = seen.get(u.group, 0)
        seen[u.group] = u.order + 1
    return units


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _shard_id(source: str, first_group: str) -> str:
    return f"{source}-{_hash64(first_group) >> 16:012x}"


def cut_after(group: str, n_units: int, target: int) -> bool:
    """Content-defined shard boundary: a shard ends after a group with probability
    ``n_units / target``, decided by the group's name alone. Shards hold ``target`` units on
    average, and adding a file to a group (or a new group) moves only the boundaries next to
    it: the other shards keep their units and ids, so a rebuild redoes only the shards it
    touches (with sequential cuts every later shard would shift)."""
    return _hash64(group) % target < n_units


def plan_source(src: SourceConfig) -> list[InputShard]:
    """Cut a source's units into input shards of about ``docs_per_shard`` units (at most 4x),
    whole groups, at content-defined boundaries (`cut_after`). A shard's id is the source name
    and a hash of its first group: stable while the shard's start is."""
    units = list_units(src)
    groups: dict[str, list[Unit]] = {}
    for u in units:
        groups.setdefault(u.group, []).append(u)
    names = sorted(groups)
    if src.limit_groups:
        names = names[: src.limit_groups]
    shards: list[InputShard] = []
    cur: list[Unit] = []
    first = ""
    for g in names:
        ranged = groups[g][0].records is not None  # a range of a big file: an input shard of its own
        if cur and ranged:  # so the shard before it ends here
            shards.append(InputShard(_shard_id(src.name, first), src.name, cur))
            cur = []
        if not cur:
            first = g
        cur.extend(sorted(groups[g], key=lambda u: (u.order, u.rel)))
        if ranged or cut_after(g, len(groups[g]), src.docs_per_shard) or len(cur) >= 4 * src.docs_per_shard:
            shards.append(InputShard(_shard_id(src.name, first), src.name, cur))
            cur = []
    if cur:
        shards.append(InputShard(_shard_id(src.name, first), src.name, cur))
    return shards


class ReadStage(Producer[Unit, Document]):
    """Reads units of one source into Documents, in order. The base counts ``in`` (raw
    records: the source's ``Planned`` markers) and ``out`` (documents); unusable records, and
    empty or oversize documents, are dropped here with the source's message."""

    name = "read"

    def __init__(self, read_cfg: ReadConfig, src: SourceConfig) -> None:
        super().__init__()
        self.cfg = read_cfg
        self.src = src
        self.source = source_of(src)

    @staticmethod
    def unit_root(u: Unit) -> Path:
        """The source root a unit was listed under: its planned path less its relative path
        (planned paths are absolute, so this holds on any worker, whatever its directory)."""
        depth = len(PurePosixPath(u.rel).parts)
        return Path(u.path).parents[depth - 1].resolve()

    def not_read(self, u: Unit) -> tuple[str, str] | None:
        """Why a planned unit is not read (reason, message), or None to read it."""
        if fs.is_url(u.path):  # an object store has no symlinks: only whether the object is still there
            return None if fs.exists(u.path, self.src) else (
                "missing_file", f"{u.path}: file disappeared since planning; rerun the build")
        path = Path(u.path)
        if not path.exists():
            return "missing_file", f"{path}: file disappeared since planning; rerun the build"
        root = None if self.src.follow_symlinks else self.unit_root(u)
        if root is not None and not path.resolve().is_relative_to(root):
            return ("symlink_outside_root",
                    f"{path}: a symlink to {path.resolve()}, outside the source's root {root}; not read "
                    f"(copy the file in, or set `follow_symlinks: true` on source `{self.src.name}`)")
        return None

    def produce(self, records: Iterable[Unit]) -> Iterator[Document | Planned]:
        for u in records:
            rid = f"{self.src.name}/{u.rel}"
            why = self.not_read(u)
            if why is not None:
                yield Planned()
                self.drop(rid, *why)
                continue
            items = self.source.read(self.src, u)
            pending = False  # a Planned record not yet resolved into a document or a drop
            while True:
                # one unreadable file (corrupt Parquet/Arrow, a decoder error, an I/O error) is
                # dropped with its reason; what it yielded before stays and the build goes on
                try:
                    item = next(items)
                except StopIteration:
                    break
                except MemoryError:
                    raise
                except (Exception, RecursionError) as e:  # noqa: BLE001 - reported, not swallowed
                    # not the file's fault (the disk, the network, refused credentials): fail the
                    # shard, a rerun retries it
                    if fs.is_url(u.path) and fs.not_the_files_fault(e):
                        raise fs.unreachable(u.path, e) from e
                    if fs.is_transient(e):
                        raise
                    if not pending:
                        yield Planned()
                    self.drop(rid, "unreadable_file",
                              f"{u.path}: cannot be read ({type(e).__name__}: {str(e)[:300]}); the rest of the "
                              "build goes on without it: fix or replace the file, then rerun")
                    break
                pending = isinstance(item, Planned)
                if isinstance(item, Planned):
                    yield item
                elif isinstance(item, Drop):
                    self.drop(item.record_id, item.reason, item.message, item.record)
                else:
                    doc = self.check(item.doc, item.where) if isinstance(item, Candidate) else self.check(item, item.id)
                    if doc is not None:
                        yield doc

    def check(self, doc: Document, where: str) -> Document | None:
        """The checks every source shares: empty and oversize documents."""
        n = len(doc.text)
        if n > self.cfg.max_doc_chars:
            self.drop(doc.id, "too_large",
                      f"{where}: {n:,} chars exceeds `read.max_doc_chars`={self.cfg.max_doc_chars:,}; "
                      "raise it or split the document", doc.text)
            return None
        if len(doc.text.strip()) < self.cfg.min_doc_chars:
            self.drop(doc.id, "empty", f"{where}: empty or whitespace-only document; remove it or fill it", doc.text)
            return None
        return doc
