"""Readers: plan input shards (small JSON-able lists of files) and read one into Documents.

Planning lists the *units* of a source (one file, or one dataset directory) with the group
each belongs to, sorts them (groups, then a sensible order inside: ``__init__.py`` first,
acts in order), and cuts them into input shards that never split a group, so same-source
concatenation sees all of a group's files. Each input shard becomes one Prefect task.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lcdata.config import SourceConfig
from lcdata.read import corpora, files
from lcdata.read.files import ReadStage
from lcdata.schema import Document

DEFAULT_STRATEGY = {
    "shakespeare": "concat", "python_stdlib": "concat", "python_docs": "concat", "code_repo": "concat",
    "wikipedia": "natural", "text_dir": "natural", "jsonl": "natural", "parquet": "natural",
    "arrow": "natural", "hf_dataset": "natural",
}
RECORD_SUFFIXES = {"jsonl": [".jsonl", ".json"], "parquet": [".parquet"], "arrow": [".arrow", ".feather", ".ipc"]}


def strategy_of(src: SourceConfig) -> str:
    if src.strategy:
        return src.strategy
    if src.group_field:
        return "concat"
    return DEFAULT_STRATEGY[src.kind]


@dataclass
class Unit:
    path: str  # absolute
    rel: str  # relative to the source root, posix
    group: str
    order: int = 0

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


def _code_sort_key(rel: str) -> tuple[Any, ...]:
    p = PurePosixPath(rel)
    return (p.parent.parts, 0 if p.name == "__init__.py" else 1, p.name)


def _walk(root: Path, suffixes: list[str], src: SourceConfig, skip_tests: bool = False) -> list[str]:
    rels = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if not any(rel.endswith(s) for s in suffixes):
            continue
        if skip_tests and corpora.is_test_path(rel):
            continue
        if src.include and not any(fnmatch.fnmatch(rel, g) for g in src.include):
            continue
        if any(fnmatch.fnmatch(rel, g) for g in src.exclude):
            continue
        rels.append(rel)
    return sorted(rels)


def _top_group(rel: str) -> str:
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else "<toplevel>"


def source_root(src: SourceConfig) -> Path:
    if src.kind == "shakespeare":
        return corpora.shakespeare_root()
    if src.kind == "python_stdlib":
        return corpora.stdlib_root()
    if src.kind == "python_docs":
        return corpora.python_docs_root(src)
    if src.kind == "wikipedia":
        return corpora.wikipedia_file()
    assert src.path is not None
    return Path(src.path).expanduser().resolve()


def list_units(src: SourceConfig) -> list[Unit]:
    """The source's units; ``order`` counts within the unit's group (not across the source),
    so a file added to one group leaves every other group's units unchanged."""
    units = _list_units(src)
    seen: dict[str, int] = {}
    for u in units:
        u.order = seen.get(u.group, 0)
        seen[u.group] = u.order + 1
    return units


def _list_units(src: SourceConfig) -> list[Unit]:
    root = source_root(src)
    if not root.exists():
        raise SourceError(f"source `{src.name}`: path {root} does not exist; fix `path` in the config")
    k = src.kind
    if k == "wikipedia":
        return [Unit(str(root), root.name, root.name)]
    if k == "hf_dataset":
        return [Unit(str(root), root.name, root.name)]
    if k in RECORD_SUFFIXES:
        if root.is_file():
            return [Unit(str(root), root.name, root.name)]
        return [Unit(str(root / r), r, r) for r in _walk(root, RECORD_SUFFIXES[k], src)]
    if root.is_file():
        raise SourceError(f"source `{src.name}` of kind `{k}`: {root} is a file, expected a directory")
    if k == "shakespeare":
        rels = _walk(root, [".md"], src)
        return [Unit(str(root / r), r, r.rsplit("/", 1)[-1].removesuffix(".md")) for r in rels]
    if k in ("python_stdlib", "code_repo"):
        rels = _walk(root, src.extensions or ([".py"] if k == "python_stdlib" else files.CODE_EXTENSIONS),
                     src, skip_tests=(k == "python_stdlib"))
        rels.sort(key=_code_sort_key)
        return [Unit(str(root / r), r, _top_group(r), i) for i, r in enumerate(rels)]
    if k == "python_docs":
        rels = _walk(root, [".rst.txt"], src)
        return [Unit(str(root / r), r, _top_group(r), i) for i, r in enumerate(rels)]
    if k == "text_dir":
        rels = _walk(root, src.extensions or files.TEXT_EXTENSIONS, src)
        return [Unit(str(root / r), r, str(PurePosixPath(r).parent), i) for i, r in enumerate(rels)]
    raise ValueError(f"unknown source kind {k}")  # pragma: no cover - config validates kinds


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
        if not cur:
            first = g
        cur.extend(sorted(groups[g], key=lambda u: (u.order, u.rel)))
        if cut_after(g, len(groups[g]), src.docs_per_shard) or len(cur) >= 4 * src.docs_per_shard:
            shards.append(InputShard(_shard_id(src.name, first), src.name, cur))
            cur = []
    if cur:
        shards.append(InputShard(_shard_id(src.name, first), src.name, cur))
    return shards


def read_shard(shard: InputShard, src: SourceConfig, stage: ReadStage) -> Iterator[Document]:
    """All Documents of one input shard, in plan order."""
    for u in shard.units:
        path = Path(u.path)
        if not path.exists():
            stage.stats.in_ += 1
            stage.drop(f"{src.name}/{u.rel}", "missing_file", f"{path}: file disappeared since planning; rerun the build")
            continue
        meta = {"group": u.group, "order": u.order}
        k = src.kind
        if k == "jsonl":
            docs = files.read_jsonl(stage, src, path, u.rel)
        elif k == "parquet":
            docs = files.read_parquet(stage, src, path, u.rel)
        elif k == "arrow":
            docs = files.read_arrow(stage, src, path, u.rel)
        elif k == "hf_dataset":
            docs = files.read_hf_dataset(stage, src, path, u.rel)
        elif k == "wikipedia":
            docs = _read_wikipedia(stage, src, path)
        elif k == "shakespeare":
            docs = _read_play(stage, src, path, u.rel)
        else:
            docs = files.read_text_file(stage, src, path, u.rel, meta)
        yield from docs


def _read_wikipedia(stage: ReadStage, src: SourceConfig, path: Path) -> Iterator[Document]:
    for title, wikitext in corpora.iter_wiki_pages(path):
        stage.stats.in_ += 1
        doc = Document(f"{src.name}/{title}", src.name, corpora.clean_wikitext(wikitext),
                       {"group": title, "title": title, "license": "CC BY-SA 3.0"})
        checked = stage.check(doc, f"{path} page {title!r}")
        if checked is not None:
            yield checked


def _read_play(stage: ReadStage, src: SourceConfig, path: Path, rel: str) -> Iterator[Document]:
    data = path.read_bytes()
    text = files.decode_utf8(stage, data, str(path), f"{src.name}/{rel}")
    if text is None:
        stage.stats.in_ += 1
        return
    for doc in corpora.read_play(src, text, rel):
        stage.stats.in_ += 1
        checked = stage.check(doc, f"{path} ({doc.id})")
        if checked is not None:
            yield checked
