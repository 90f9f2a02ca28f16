"""Readers for the formats long documents arrive in: HTML, PDF, EPUB and DOCX. Each is a
``Source`` kind over a directory (or one file), and each turns its format into clean text:

- ``html``: main-content extraction with trafilatura (boilerplate, navigation, ``<script>`` and
  ``<style>`` removed; headings, lists and tables kept as Markdown; entities decoded). One
  document per page.
- ``pdf``: the text layer of each page with pypdfium2 (PDFium, Chrome's PDF engine: fast, keeps
  reading order better than pure-Python parsers); a word hyphenated at a line end is joined.
  One document per page (id ``<file>#p<N>``), grouped per file and joined in page order, so a
  context's parts name the exact file and page of every character.
- ``epub``: the chapters in spine order (the zip's container and package files read directly:
  the common EPUB library is AGPL), each XHTML chapter through the HTML extractor; one document
  per chapter (``<file>#<chapter>``), grouped and joined per book.
- ``docx``: paragraphs with python-docx, headings as Markdown ``#``, list items as ``-``,
  tables as ``|`` rows; one document per file.

A page, chapter or file that yields no text (a scanned PDF has no text layer) is dropped with
reason ``no_text``, naming it; a file the library cannot open is dropped by the read stage as
``unreadable_file``. Libraries are imported when a file is read, not at startup.
"""

from __future__ import annotations

import io
import posixpath
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, ClassVar
from urllib.parse import unquote

from lcdata.read.base import Candidate, Drop, SourceItem, Unit
from lcdata.read.files import FileTree, decode_utf8
from lcdata.read.fs import is_url, open_binary
from lcdata.schema import Document
from lcdata.stage import Planned

if TYPE_CHECKING:
    from lcdata.config import SourceConfig

MIN_WORDS = 5  # extracted text with fewer words is a page's leftovers, not content
_TAG = re.compile(r"""</?[A-Za-z][A-Za-z0-9]*(\s+[A-Za-z_:][-\w:.]*(\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?)*\s*/?>""")
_HYPHEN = re.compile(r"(\w)-[ \t]*\r?\n[ \t]*([a-z])")


def html_to_text(html: str) -> str:
    """The main content of an HTML page as Markdown-ish text ('' when there is none)."""
    import trafilatura

    text = trafilatura.extract(html, output_format="markdown", include_comments=False, include_tables=True,
                               include_links=False, include_images=False, favor_recall=True, deduplicate=False)
    return _unescape((text or "").replace("\u00b6", "")).strip()  # ¶: Sphinx's heading anchors


_MD_ESCAPE = re.compile(r"\\([_*\[\]<>#])")


def _unescape(text: str) -> str:
    """Undo the Markdown escapes of ``_ * [ ]`` outside code fences (``\\_\\_init\\_\\_`` reads
    as ``__init__``, as the page shows it); code blocks are left as they are."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        out.append(line if fenced else _MD_ESCAPE.sub(r"\1", line))
    return "\n".join(out)


def _charset(data: bytes) -> str:
    m = re.search(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_-]+)""", data[:4096], re.I)
    return m.group(1).decode("ascii") if m else "utf-8"


def decode_html(data: bytes, where: str, record_id: str) -> str | Drop:
    """Bytes of an HTML page as text, in the charset its ``<meta>`` names (UTF-8 otherwise)."""
    cs = _charset(data)
    if cs.lower().replace("_", "-") in ("utf-8", "utf8"):
        return decode_utf8(data, where, record_id)
    try:
        return data.decode(cs)
    except (LookupError, UnicodeDecodeError):
        return decode_utf8(data, where, record_id)


def no_text(record_id: str, where: str, what: str) -> Drop:
    return Drop(record_id, "no_text", f"{where}: {what} has no extractable text; remove it or convert it to text "
                "first (a scanned PDF needs OCR)", "")


class Html(FileTree):
    kind = "html"
    needs_path = True
    description = "HTML pages (main content extracted with trafilatura)"
    suffixes: ClassVar[list[str]] = [".html", ".htm", ".xhtml"]

    fmt = "html"

    @classmethod
    def to_text(cls, data: bytes, where: str, doc_id: str) -> str | Drop:
        html = decode_html(data, where, doc_id)
        if isinstance(html, Drop):
            return html
        text = html_to_text(html)
        if len(text.split()) < MIN_WORDS:  # nothing, or only what was left of a menu ("Home")
            return no_text(doc_id, where, "the page")
        return text


class Pdf(FileTree):
    kind = "pdf"
    needs_path = True
    default_strategy = "concat"  # the pages of one file, in order
    description = "PDF files (text layer per page, pypdfium2)"
    suffixes: ClassVar[list[str]] = [".pdf"]

    @classmethod
    def group_of(cls, rel: str) -> str:
        return rel  # one group per file: its pages are joined, never pages of two files

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:
        import pypdfium2 as pdfium

        path = unit.path
        if is_url(path):
            with open_binary(path, cfg) as f:  # PDFium reads all over the file: fetch it once
                pdf = pdfium.PdfDocument(f.read())
        else:
            pdf = pdfium.PdfDocument(path)
        try:
            for i in range(len(pdf)):
                yield Planned()
                page = pdf[i]
                tp = page.get_textpage()
                try:
                    raw = tp.get_text_bounded()
                finally:
                    tp.close()
                    page.close()
                text = pdf_page_text(raw)
                doc_id = f"{cfg.name}/{unit.rel}#p{i + 1}"
                if not text:
                    yield no_text(doc_id, f"{path} page {i + 1}", "the page")
                    continue
                meta = {"path": unit.rel, "group": unit.group, "order": unit.order, "page": i + 1,
                        "format": "pdf"}
                yield Candidate(Document(doc_id, cfg.name, text, meta), f"{path} page {i + 1}")
        finally:
            pdf.close()


def pdf_page_text(raw: str) -> str:
    """A page's text layer, cleaned: CRLF to LF, a word hyphenated at a line end joined
    ("exam-\\nple" -> "example"), trailing spaces and runs of blank lines removed."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = _HYPHEN.sub(r"\1\2", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


class Epub(FileTree):
    kind = "epub"
    needs_path = True
    default_strategy = "concat"  # the chapters of one book, in spine order
    description = "EPUB books (chapters in spine order; zip + OPF read directly, chapters through trafilatura)"
    suffixes: ClassVar[list[str]] = [".epub"]

    @classmethod
    def group_of(cls, rel: str) -> str:
        return rel

    @classmethod
    def read(cls, cfg: SourceConfig, unit: Unit) -> Iterator[SourceItem]:
        path = unit.path
        with open_binary(path, cfg) as f, zipfile.ZipFile(f) as z:
            for n, name in enumerate(epub_spine(z)):
                yield Planned()
                doc_id = f"{cfg.name}/{unit.rel}#{PurePosixPath(name).name}"
                where = f"{path} chapter {name}"
                if name not in z.namelist():
                    yield Drop(doc_id, "missing_chapter", f"{where}: listed in the spine, missing from the file", "")
                    continue
                html = decode_html(z.read(name), where, doc_id)
                if isinstance(html, Drop):
                    yield html
                    continue
                text = html_to_text(html)
                if len(text.split()) < MIN_WORDS:
                    yield no_text(doc_id, where, "the chapter")
                    continue
                meta = {"path": unit.rel, "group": unit.group, "order": unit.order, "chapter": n,
                        "chapter_file": name, "format": "epub"}
                yield Candidate(Document(doc_id, cfg.name, text, meta), where)


def _xml(data: bytes) -> ET.Element:
    if len(data) > 8 << 20:
        raise ValueError(f"EPUB metadata file of {len(data):,} bytes: too large to be genuine")
    return ET.fromstring(data)


def epub_spine(z: zipfile.ZipFile) -> list[str]:
    """The chapter files of an EPUB in reading (spine) order, as paths inside the zip:
    ``META-INF/container.xml`` names the package file, whose manifest maps the spine's idrefs
    to files (relative to the package file). Written against the EPUB 2/3 container format
    directly (a zip and two XML files), so no EPUB library is needed."""
    ns = {"c": "urn:oasis:names:tc:opendocument:xmlns:container", "opf": "http://www.idpf.org/2007/opf"}
    root = _xml(z.read("META-INF/container.xml")).find("c:rootfiles/c:rootfile", ns)
    if root is None:
        raise ValueError("META-INF/container.xml names no package file")
    opf_path = root.attrib["full-path"]
    opf = _xml(z.read(opf_path))
    base = PurePosixPath(opf_path).parent
    manifest = {i.attrib["id"]: i.attrib for i in opf.iterfind("opf:manifest/opf:item", ns)}
    out = []
    for ref in opf.iterfind("opf:spine/opf:itemref", ns):
        item = manifest.get(ref.attrib.get("idref", ""))
        if item is None or "html" not in item.get("media-type", ""):
            continue
        href = unquote(item["href"])
        out.append(posixpath.normpath(str(base / href)) if str(base) != "." else posixpath.normpath(href))
    return out


class Docx(FileTree):
    kind = "docx"
    needs_path = True
    description = "Word documents (.docx, python-docx)"
    suffixes: ClassVar[list[str]] = [".docx"]

    fmt = "docx"

    @classmethod
    def to_text(cls, data: bytes, where: str, doc_id: str) -> str | Drop:
        return docx_text(io.BytesIO(data)) or no_text(doc_id, where, "the document")


def docx_text(source: Path | IO[bytes]) -> str:
    """Body paragraphs and tables in document order: headings as ``#``, list items as ``-``,
    table rows as ``| a | b |``."""
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    d = docx.Document(source if not isinstance(source, Path) else str(source))
    out: list[str] = []
    for block in d.iter_inner_content():
        if isinstance(block, Paragraph):
            text = block.text.strip()
            if not text:
                continue
            style = (block.style.name if block.style is not None else "") or ""
            m = re.match(r"Heading (\d)", style)
            if m:
                out.append("#" * int(m.group(1)) + " " + text)
            elif style == "Title":
                out.append("# " + text)
            elif style.startswith("List"):
                out.append("- " + text)
            else:
                out.append(text)
        elif isinstance(block, Table):
            rows = ["| " + " | ".join(c.text.strip() for c in row.cells) + " |" for row in block.rows]
            out.append("\n".join(rows))
    return "\n\n".join(out).strip()


def has_markup(text: str) -> bool:
    """Whether HTML/XML tags survive in extracted text outside code (a page's code examples
    may show HTML: that is content, not markup)."""
    prose = re.sub(r"```.*?(```|$)", "", text, flags=re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return bool(_TAG.search(prose))


__all__ = ["Docx", "Epub", "Html", "Pdf", "decode_html", "docx_text", "has_markup", "html_to_text", "pdf_page_text"]

