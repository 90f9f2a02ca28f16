"""HTML, PDF, EPUB and DOCX readers on real files: the Python documentation's HTML pages (the
python3.11-doc package), and PDFs, EPUBs and DOCX files written by their well-kept writers
(fpdf2, a minimal EPUB zip, python-docx). No markup survives, page and chapter provenance is exact, and
files without text are dropped with reasons."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_readers import assert_adds_up, read_all

from lcdata.config import SourceConfig, parse_config
from lcdata.read.documents import has_markup, pdf_page_text

DOCS_HTML = Path(os.environ.get("LCDATA_DATA", "data")) / "python3.11-doc/usr/share/doc/python3.11/html"


# ---------------------------------------------------------------- html
@pytest.fixture(scope="module")
def python_docs() -> Path:
    if not (DOCS_HTML / "library" / "json.html").is_file():
        pytest.skip("python3.11-doc not unpacked (`make data`)")
    return DOCS_HTML


def test_html_pages_of_the_python_docs_come_out_clean(python_docs):
    src = SourceConfig(name="pydoc", kind="html", path=str(python_docs), include=["library/json.html",
                                                                                  "library/email.*.html"])
    docs, st, _ = read_all(src)
    assert_adds_up(st)
    by_id = {d.id: d for d in docs}
    assert "pydoc/library/json.html" in by_id and len(docs) >= 10
    j = by_id["pydoc/library/json.html"].text
    assert j.startswith("# `json` — JSON encoder and decoder")
    assert "JSON (JavaScript Object Notation), specified by" in j and "Lib/json/__init__.py" in j
    assert "```\n>>> import json" in j  # code blocks kept
    for d in docs:
        assert not has_markup(d.text), d.id
        assert "¶" not in d.text and "&amp;" not in d.text and "&lt;" not in d.text
        assert "Navigation" not in d.text and "Theme" not in d.text  # the page chrome is gone
        assert d.metadata["format"] == "html" and d.group == "library"


def test_html_without_content_is_dropped_and_charsets_are_honoured(tmp_path):
    (tmp_path / "nav.html").write_text("<html><head><script>var x = 1;</script><style>p{}</style></head>"
                                       "<body><nav><a href='/'>Home</a></nav></body></html>")
    body = "<p>" + "Le caf\xe9 de la gare ouvre \xe0 six heures du matin. " * 20 + "</p>"
    (tmp_path / "latin.html").write_bytes(
        f"<html><head><meta charset='iso-8859-1'><title>t</title></head><body><article>{body}</article></body></html>"
        .encode("latin-1"))
    docs, st, sink = read_all(SourceConfig(name="h", kind="html", path=str(tmp_path)))
    assert_adds_up(st)
    assert [d.id for d in docs] == ["h/latin.html"] and "Le café de la gare ouvre à six heures" in docs[0].text
    assert dict(st.dropped) == {"no_text": 1}
    (row,) = sink.rows
    assert row["record_id"] == "h/nav.html" and row["message"].startswith(f"{tmp_path / 'nav.html'}: the page has no")


# ---------------------------------------------------------------- pdf
def write_pdf(path: Path, pages: list[str]) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
    pdf.output(str(path))


PAGES = ["The lighthouse keeper of Skerryvore logged every passing ship in a leather ledger.\n"
         "On stormy nights he wrote by lamplight until dawn.",
         "",  # a blank page
         "Years later the ledger was found in an attic in Edinburgh, its pages brittle but whole.\n"
         "Historians called it an extraordinary record of maritime traffic."]


def test_pdf_pages_are_documents_with_their_page_numbers(tmp_path):
    write_pdf(tmp_path / "ledger.pdf", PAGES)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(500))
    docs, st, sink = read_all(SourceConfig(name="p", kind="pdf", path=str(tmp_path)))
    assert_adds_up(st)
    assert [d.id for d in docs] == ["p/ledger.pdf#p1", "p/ledger.pdf#p3"]
    assert [d.metadata["page"] for d in docs] == [1, 3] and {d.group for d in docs} == {"ledger.pdf"}
    assert docs[0].text == PAGES[0] and docs[1].text == PAGES[2]
    assert dict(st.dropped) == {"no_text": 1, "unreadable_file": 1}
    reasons = {r["record_id"]: r for r in sink.rows}
    assert reasons["p/ledger.pdf#p2"]["message"].startswith(f"{tmp_path / 'ledger.pdf'} page 2: the page has no")
    assert reasons["p/broken.pdf"]["reason"] == "unreadable_file"


def test_pdf_text_joins_words_hyphenated_at_line_ends():
    assert pdf_page_text("an extra-\r\nordinary record\r\n\r\n\r\n\r\nwell-known  \nX") == \
        "an extraordinary record\n\nwell-known\nX"
    assert pdf_page_text("Edin-\nBurgh") == "Edin-\nBurgh"  # a capital after the break: not a split word


def test_a_pdf_build_keeps_the_page_of_every_character(model_dir, tmp_path):
    from lcdata.arrowio import open_ipc
    from lcdata.build import build_local

    src = tmp_path / "pdfs"
    src.mkdir()
    long_pages = [f"Page {i} of the harbour report. " + " ".join(f"Vessel number {i}-{k} arrived from Bergen."
                                                                for k in range(40)) for i in range(1, 7)]
    write_pdf(src / "report.pdf", long_pages)
    cfg = parse_config({"name": "pdf", "model": str(model_dir),
                        "sources": [{"name": "p", "kind": "pdf", "path": str(src)}],
                        "assemble": {"buckets": [1024, 2048], "min_fill": 0.3},
                        "tasks": [{"kind": "needles"}], "pack": {"seq_len": 2048}})
    out = tmp_path / "out"
    build_local(cfg, out)
    ctxs = [r for f in sorted((out / "contexts").glob("*.arrow")) for r in open_ipc(f).to_pylist()]
    assert ctxs
    seen = set()
    docs, _, _ = read_all(cfg.sources[0])
    pages = {d.id: d.text for d in docs}
    assert sorted(pages) == [f"p/report.pdf#p{i}" for i in range(1, 7)]
    for c in ctxs:
        for part in json.loads(c["parts"]) if isinstance(c["parts"], str) else c["parts"]:
            # each part names one page, and its characters are that page's, at the recorded offsets
            assert c["text"][part["ctx_start"]:part["ctx_end"]] == \
                pages[part["doc_id"]][part["doc_start"]:part["doc_end"]]
            seen.add(part["doc_id"])
    assert len(seen) >= 4  # contexts span pages, each part still names its own


# ---------------------------------------------------------------- epub
def write_epub(path: Path, chapters: list[tuple[str, str]]) -> None:
    """A minimal valid EPUB 3: mimetype first and stored, the container, a package file in a
    subdirectory whose spine lists the chapters in the given order (not the file names')."""
    import zipfile

    items = "".join(f'<item id="c{i}" href="text/{n}.xhtml" media-type="application/xhtml+xml"/>'
                    for i, (n, _) in enumerate(chapters))
    spine = "".join(f'<itemref idref="c{i}"/>' for i in range(len(chapters)))
    opf = ('<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">'
           '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier id="id">t</dc:identifier>'
           f'<dc:title>The Ledger</dc:title></metadata><manifest>{items}</manifest><spine>{spine}</spine></package>')
    container = ('<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                 '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
                 '</rootfiles></container>')
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")
        z.writestr("META-INF/container.xml", container)
        z.writestr("OEBPS/content.opf", opf)
        for name, body in chapters:
            z.writestr(f"OEBPS/text/{name}.xhtml", '<?xml version="1.0" encoding="utf-8"?><html '
                       f'xmlns="http://www.w3.org/1999/xhtml"><head><title>{name}</title></head><body>'
                       f"<h1>{name.title()}</h1>{body}</body></html>")


def test_epub_chapters_in_spine_order(tmp_path):
    para = "<p>" + "The keeper climbed the hundred steps of the tower and trimmed the wick. " * 8 + "</p>"
    write_epub(tmp_path / "book.epub", [("zeta", para + "<p>First in the spine.</p>"), ("alpha", para),
                                        ("blank", "<p></p>")])
    (tmp_path / "zz-broken.epub").write_bytes(b"PK\x03\x04 not really a zip")
    docs, st, sink = read_all(SourceConfig(name="e", kind="epub", path=str(tmp_path)))
    assert_adds_up(st)
    assert [d.id for d in docs] == ["e/book.epub#zeta.xhtml", "e/book.epub#alpha.xhtml"]
    assert "First in the spine." in docs[0].text and "First in the spine." not in docs[1].text
    assert all(not has_markup(d.text) for d in docs) and {d.group for d in docs} == {"book.epub"}
    assert dict(st.dropped) == {"no_text": 1, "unreadable_file": 1}
    assert [r["record_id"] for r in sink.rows] == ["e/book.epub#blank.xhtml", "e/zz-broken.epub"]


# ---------------------------------------------------------------- docx
def test_docx_headings_lists_and_tables(tmp_path):
    import docx

    d = docx.Document()
    d.add_heading("Harbour report", level=1)
    d.add_paragraph("Ships arrived from Bergen and Leith during the winter months of the year.")
    d.add_heading("Arrivals", level=2)
    d.add_paragraph("The Skerryvore", style="List Bullet")
    d.add_paragraph("The Bell Rock", style="List Bullet")
    t = d.add_table(rows=2, cols=2)
    t.cell(0, 0).text, t.cell(0, 1).text, t.cell(1, 0).text, t.cell(1, 1).text = "ship", "tons", "Skerryvore", "420"
    d.add_paragraph("Signed by the harbour master.")
    d.save(str(tmp_path / "report.docx"))
    docx.Document().save(str(tmp_path / "empty.docx"))
    docs, st, sink = read_all(SourceConfig(name="w", kind="docx", path=str(tmp_path)))
    assert_adds_up(st)
    (doc,) = docs
    assert doc.text == ("# Harbour report\n\nShips arrived from Bergen and Leith during the winter months of the "
                        "year.\n\n## Arrivals\n\n- The Skerryvore\n\n- The Bell Rock\n\n| ship | tons |\n"
                        "| Skerryvore | 420 |\n\nSigned by the harbour master.")
    assert dict(st.dropped) == {"no_text": 1} and sink.rows[0]["record_id"] == "w/empty.docx"
