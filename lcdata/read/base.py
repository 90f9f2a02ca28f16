"""The ``Source`` base class and its registry: one subclass per source kind.

A source kind is one class: its config rules (``needs_path``), its default assembly strategy,
its licence and card description, where its files are (``root``), how it lists its units
(``units``) and how it reads one unit (``read``). Defining the class registers it in
``SOURCES``; the config accepts exactly the registered kinds.

``read`` yields what it finds, in order, and never counts: ``Planned()`` for each raw record
it takes (a file, a line, a row, a page, an act), then either the record's ``Candidate``
document (the read stage checks it for size and emptiness) or a ``Drop`` naming why the record
is unusable. The read stage turns these into lineage counts and rejects.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lcdata.schema import Document
from lcdata.stage import Planned

if TYPE_CHECKING:
    from lcdata.config import SourceConfig

Strategy = Literal["natural", "concat", "neighbours"]


@dataclass
class Unit:
    path: str  # absolute, or the file's full URL for a remote source
    rel: str  # relative to the source root, posix
    group: str
    order: int = 0
    # a range of a big record file ([first, end) records; JSONL: lines, 1-based, and the byte
    # offset of the first): a file split over several input shards (``records_per_shard``)
    records: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InputShard:
    id: str
    source: str
    units: list[Unit]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "units": [u.to_json() for u in self.units]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputShard:
        return cls(d["id"], d["source"], [Unit(**u) for u in d["units"]])


class SourceError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class Candidate:
    """A document read from one raw record; ``where`` names it in messages (file, line, row)."""

    doc: Document
    where: str


@dataclass(frozen=True)
class Drop:
    """A raw record the source cannot use: counted under ``reason``, written to the rejects."""

    record_id: str
    reason: str
    message: str
    record: Any = ""


# What ``Source.read`` yields; a bare Document is checked like a Candidate named by its id.
SourceItem = Planned | Candidate | Drop | Document

SOURCES: dict[str, type[Source]] = {}


class Source:
    """One source kind. Subclasses that set ``kind`` register themselves in ``SOURCES``;
    intermediate classes without their own ``kind`` (shared listing or reading) do not."""

    kind: ClassVar[str]
    needs_path: ClassVar[bool] = False
    remote: ClassVar[bool] = False  # whether ``path`` may be a URL (``lcdata.read.fs``)
    default_strategy: ClassVar[Strategy] = "natural"
    license: ClassVar[str | None] = None  # SPDX id of shipped corpora; None: the config's `license`
    description: ClassVar[str] = ""  # what it is, for the dataset card

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            return
        if cls.kind in SOURCES:
            raise ValueError(f"source kind `{cls.kind}` is defined twice: {SOURCES[cls.kind].__qualname__} "
                             f"and {cls.__qualname__}; rename one")
        SOURCES[cls.kind] = cls

    @classmethod
    def root(cls, cfg: SourceConfig) -> Path:
        """The file or directory the units are under (``path`` for generic kinds)."""
        assert cfg.path is not None, "the config requires `path` for kinds with needs_path"
        return Path(cfg.path).expanduser().resolve()

    @classmethod
    def units(cls, cfg: SourceConfig) -> list[Unit]:  # pragma: no cover - abstract
        """The source's units, grouped; ``order`` is filled in by planning."""
        raise NotImplementedError

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:  # pragma: no cover - abstract
        """Everything found in one unit, in order (see the module docstring)."""
        raise NotImplementedError

    @classmethod
    def card(cls, path: str | None) -> str:
        """What the source is, for the dataset card (generic kinds name their ``path``)."""
        return f"{cls.description} at `{path}`" if cls.needs_path else cls.description

    # ------------------------------------------------------------- listing helpers
    @classmethod
    def existing_root(cls, cfg: SourceConfig) -> Path:
        root = cls.root(cfg)
        if not root.exists():
            raise SourceError(f"source `{cfg.name}`: path {root} does not exist; fix `path` in the config")
        return root

    @classmethod
    def directory(cls, cfg: SourceConfig) -> Path:
        root = cls.existing_root(cfg)
        if root.is_file():
            raise SourceError(f"source `{cfg.name}` of kind `{cls.kind}`: {root} is a file, expected a directory")
        return root


def single_unit(root: Path) -> list[Unit]:
    """A source that is one file or one dataset directory: one unit, its own group."""
    return [Unit(str(root), root.name, root.name)]


def keep_file(rel: str, suffixes: list[str], cfg: SourceConfig, skip: Callable[[str], bool] | None = None) -> bool:
    """Whether a file at ``rel`` (relative, posix) belongs to the source: one of ``suffixes``,
    not ``skip``, kept by the config's ``include``/``exclude`` globs."""
    if not any(rel.endswith(s) for s in suffixes):
        return False
    if skip is not None and skip(rel):
        return False
    if cfg.include and not any(fnmatch.fnmatch(rel, g) for g in cfg.include):
        return False
    return not any(fnmatch.fnmatch(rel, g) for g in cfg.exclude)


def walk(root: Path, suffixes: list[str], cfg: SourceConfig, skip: Callable[[str], bool] | None = None) -> list[str]:
    """Relative posix paths under ``root`` with one of ``suffixes``, kept by the config's
    ``include``/``exclude`` globs (and not ``skip``), sorted."""
    rels = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if keep_file(rel, suffixes, cfg, skip):
            rels.append(rel)
    return sorted(rels)


def top_group(rel: str) -> str:
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else "<toplevel>"
