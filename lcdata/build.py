"""The build: ``run_build(cfg, out, runner)`` is the one orchestration (plan, prepare, prune,
document dedup, the input shards through ``runner``, whole-build filters, pack, manifest);
the stage order it runs is declared in ``lcdata.pipeline``. Steps take and return paths and
small dicts, never big data, so a runner can launch them anywhere (``LocalRunner`` here,
``pipelines.build.PrefectRunner`` on threads or Dask workers).

Output directory::

    OUT/config.yaml               the resolved config
    OUT/samples/<shard>.arrow     Sample records made for training (messages, question, answer, evidence)
    OUT/eval/<shard>.arrow        Sample records for evaluation only (never packed)
    OUT/contexts/<shard>.arrow    the assembled contexts (what evidence offsets point into)
    OUT/rejects/<shard>.arrow     every dropped record with stage, reason code, message and record id
    OUT/rejects/_build.arrow      the whole-build filters' drops
    OUT/work/<shard>/             tokenized samples + stats + _DONE marker (resume)
    OUT/shards/shard-00000.arrow  packed rows (PACKED_SCHEMA)
    OUT/manifest.json             written last
    OUT/build_info.json           timings (not part of the deterministic output)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import yaml

from lcdata import __version__
from lcdata.arrowio import (
    ArrowWriter,
    file_change,
    file_entry,
    open_ipc,
    open_ipc_mapped,
    remove_temps,
    sha256_file,
    temp_path,
    write_json,
    write_text,
)
from lcdata.assemble import Assembler
from lcdata.chat import ChatTokenizer, TokenizeStage
from lcdata.config import BuildConfig, SourceConfig, dump_config
from lcdata.engine import Engine
from lcdata.faults import crash_point
from lcdata.filters.coherence import CoherenceStage
from lcdata.filters.dedup import DocumentDedup, near_duplicates, word_shingles
from lcdata.lock import OutputLock
from lcdata.pack import PackPlan, TokenStore, iter_row_batches, plan_pack
from lcdata.pipeline import (
    BUILD_FILTERS,
    SAMPLE_FILTERS,
    ShardPipeline,
    build_filters,
    needs_engine,
    shard_pipeline,
)
from lcdata.read import InputShard, ReadStage, plan_source
from lcdata.read.fs import is_url, stamp
from lcdata.schema import (
    CONTEXT_SCHEMA,
    PURPOSE_EVAL,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
    TOKENIZED_SCHEMA,
    Sample,
)
from lcdata.shards import MANIFEST, SHARD_DIR, stub_card, write_shard
from lcdata.stage import Lineage, RejectSink, StageStats
from lcdata.tasks import ProgrammaticTasks
from lcdata.tasks.synth import LLMStage

log = logging.getLogger("lcdata")
DONE = "_DONE"
_TOKENIZERS: dict[str, ChatTokenizer] = {}


def tokenizer_for(cfg: BuildConfig) -> ChatTokenizer:
    """One tokenizer per process and model dir (loading costs ~0.3 s)."""
    if cfg.model not in _TOKENIZERS:
        _TOKENIZERS[cfg.model] = ChatTokenizer(cfg.model)
    return _TOKENIZERS[cfg.model]


@functools.cache
def code_hash() -> str:
    """sha256 of lcdata's own source (Python, C, prompt templates, data files): part of every
    completion key, so a rerun after a code change redoes the shards instead of keeping outputs
    the old code made (LLM answers stay cached: their keys are the requests themselves)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix in {".py", ".c", ".txt", ".json"} and "__pycache__" not in f.parts:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def config_hash(cfg: BuildConfig, extra: Any = None) -> str:
    blob = json.dumps([__version__, code_hash(), SCHEMA_VERSION, dump_config(cfg, redact=True), extra], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare_output(cfg: BuildConfig, out: Path) -> None:
    """Start a build in ``out`` (whose lock the caller holds): remove what killed writers left
    (temp files), then the manifest and packed shards, which the pack step rewrites: a stale
    manifest would make an unfinished rebuild look complete, and ``shards/*.arrow`` must never
    hold rows that no manifest describes."""
    out.mkdir(parents=True, exist_ok=True)
    remove_temps(out)
    write_text(out / "config.yaml", yaml.safe_dump(dump_config(cfg, redact=True), sort_keys=False))
    (out / MANIFEST).unlink(missing_ok=True)
    if (out / SHARD_DIR).exists():
        shutil.rmtree(out / SHARD_DIR)
    for name in ("_build.arrow", "pack.arrow"):  # whole-build rejects: rewritten (or not) by this build
        (out / "rejects" / name).unlink(missing_ok=True)


def changed_files(out: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """The files (relative to ``out``) that are missing or differ from their recorded size and sha256."""
    return [rel for rel, want in files.items() if file_change(out / rel, want)]


PER_SHARD_OUTPUTS = ("work", "samples", "eval", "contexts", "rejects")


def prune_stale(out: Path, shards: list[dict[str, Any]]) -> list[str]:
    """Remove the per-shard outputs of input shards that are no longer planned (their files
    moved to other shards, or were removed), so whole-build steps only see the current plan.
    The LLM request cache (``cache/``) stays: it is keyed by request, not by plan."""
    ids = {s["id"] for s in shards}
    removed = []
    for sub in PER_SHARD_OUTPUTS:
        d = out / sub
        if not d.is_dir():
            continue
        for p in d.iterdir():
            name = p.name.removesuffix(".arrow")
            if name.startswith(("_", ".")) or name in ids:
                continue  # whole-build files (rejects/_build.arrow) and temp files are not a shard's
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(f"{sub}/{p.name}")
    return removed


def unit_stamps(shard_json: dict[str, Any], storage_options: dict[str, Any] | None = None) -> list[tuple[str, int, int | str]]:
    """Size and mtime of every file of an input shard (a remote file: size and ETag, else
    size and modification time, ``lcdata.read.fs.stamp``): an edited file redoes its shard."""
    out: list[tuple[str, int, int | str]] = []
    for u in shard_json["units"]:
        if is_url(u["path"]):
            out.append((u["rel"], *stamp(u["path"], storage_options)))
            continue
        st = os.stat(u["path"])
        out.append((u["rel"], st.st_size, st.st_mtime_ns))
    return out


def plan_build(cfg: BuildConfig) -> list[dict[str, Any]]:
    """Input shards of every source, as JSON-able dicts (what flows pass to tasks)."""
    return [s.to_json() for src in cfg.sources for s in plan_source(src)]


DEDUP_DOCS = Path("dedup") / "documents.json"


def dedup_documents(cfg: BuildConfig, shards: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Near-duplicate documents over the whole build (before any shard runs): reads every input
    shard once, writes ``OUT/dedup/documents.json`` ({dropped id: kept id}); the shard tasks
    drop those documents (``DocumentDedup``). A no-op unless ``filters.dedup.documents``."""
    dc = cfg.filters.dedup
    if not dc.documents:
        return {}
    items = []
    doc_ids: list[list[str]] = []
    for sj in shards:
        shard = InputShard.from_json(sj)
        reader = ReadStage(cfg.read, source_config(cfg, shard.source))  # counted again by the shard task
        mine = [(d.id, word_shingles(d.text)) for d in reader.run(shard.units)]
        items.extend(mine)
        doc_ids.append([i for i, _ in mine])
    dups = near_duplicates(items, dc.doc_threshold, dc.num_perm)
    # per shard too: a shard's work depends only on its own dropped documents, so a new file
    # elsewhere does not redo it
    by_shard: dict[str, dict[str, str]] = {}
    for sj, ids in zip(shards, doc_ids, strict=True):
        mine = {d: dups[d] for d in ids if d in dups}
        if mine:
            by_shard[sj["id"]] = mine
    (out / DEDUP_DOCS).parent.mkdir(parents=True, exist_ok=True)
    write_json(out / DEDUP_DOCS, {"threshold": dc.doc_threshold, "documents": len(items), "duplicates": dups,
                                  "by_shard": by_shard})
    return {"documents": len(items), "duplicates": len(dups)}


def _doc_dups(cfg: BuildConfig, out: Path) -> dict[str, Any] | None:
    if not cfg.filters.dedup.documents:
        return None
    path = out / DEDUP_DOCS
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run the document dedup step first (run_build does)")
    return json.loads(path.read_text())


def source_config(cfg: BuildConfig, name: str) -> SourceConfig:
    return next(s for s in cfg.sources if s.name == name)


def shard_key(cfg: BuildConfig, shard_json: dict[str, Any], doc_dups: dict[str, Any] | None) -> str:
    """The completion key of one input shard: the config, lcdata's code, the shard's files
    (paths, sizes, mtimes) and the documents the whole-build dedup drops from it."""
    mine = doc_dups.get("by_shard", {}).get(shard_json["id"], {}) if doc_dups is not None else None
    stamps = unit_stamps(shard_json, source_config(cfg, shard_json["source"]).storage_options)
    return config_hash(cfg, [shard_json, stamps, mine])


class ShardOutputs:
    """The files one input shard writes, opened together: on success every one is closed
    (renamed into place), on any error every one is aborted (its temp file removed)."""

    samples: ArrowWriter  # train samples
    eval: ArrowWriter  # eval samples (never packed)
    contexts: ArrowWriter
    tokenized: ArrowWriter

    def __init__(self, out: Path, shard_id: str, work: Path) -> None:
        self.paths = {"samples": (out / "samples" / f"{shard_id}.arrow", SAMPLE_SCHEMA),
                      "eval": (out / "eval" / f"{shard_id}.arrow", SAMPLE_SCHEMA),
                      "contexts": (out / "contexts" / f"{shard_id}.arrow", CONTEXT_SCHEMA),
                      "tokenized": (work / "tokenized.arrow", TOKENIZED_SCHEMA)}
        self.rejects = RejectSink(out / "rejects" / f"{shard_id}.arrow")
        self.open: list[ArrowWriter] = []

    def __enter__(self) -> ShardOutputs:
        try:
            for name, (path, schema) in self.paths.items():
                self.open.append(ArrowWriter(path, schema))
                setattr(self, name, self.open[-1])
        except BaseException:
            self._abort()
            raise
        return self

    def _abort(self) -> None:
        for w in self.open:
            with contextlib.suppress(Exception):  # already failing: remove every temp file
                w.abort()
        self.open = []

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            while self.open:
                self.open[0].close()
                self.open.pop(0)
            self.rejects.close()
        except BaseException:
            self._abort()  # the ones not renamed yet: no temp file is left behind
            raise


class _Batched:
    """Rows to an ArrowWriter in batches of ``n``."""

    def __init__(self, write: Any, n: int) -> None:
        self.write, self.n, self.rows = write, n, []

    def add(self, row: Any) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.n:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.write(self.rows)
            self.rows = []


def run_shard(p: ShardPipeline, units: list[Any], outs: ShardOutputs) -> tuple[int, int]:
    """Drive one input shard's records through its pipeline into its outputs; returns the
    numbers of contexts and of eval samples (kept apart, never tokenized)."""
    records: Any = units
    for st in p.documents:
        records = st.run(records)
    for f in p.contexts:
        records = f.run(records)
    contexts = list(records)  # every task reads all of them
    outs.contexts.write_rows([c.to_row() for c in contexts])
    samples: Any = itertools.chain(*(t.run(contexts) for t in p.tasks))
    for f in p.samples:
        samples = f.run(samples)
    train_rows = _Batched(outs.samples.write_rows, 64)
    eval_rows = _Batched(outs.eval.write_rows, 64)
    n_eval = 0

    def train(samples: Any) -> Any:  # eval samples are written apart; train ones go on to tokenize
        nonlocal n_eval
        for s in samples:
            if s.purpose == PURPOSE_EVAL:
                n_eval += 1
                eval_rows.add(s.to_row())
            else:
                train_rows.add(s.to_row())
                yield s
        train_rows.flush()
        eval_rows.flush()

    tokenized = _Batched(lambda rows: outs.tokenized.write(_tokenized_batch(rows)), 256)
    for t in p.tokenize.run(train(samples)):
        tokenized.add({"sample_id": t.sample_id, "task": t.task, "split": t.split,
                       "input_ids": t.input_ids, "labels": t.labels})
    tokenized.flush()
    return len(contexts), n_eval


def process_input_shard(cfg: BuildConfig, shard_json: dict[str, Any], out: Path) -> dict[str, Any]:
    """read -> assemble -> tasks -> tokenize for one input shard; returns its stats.

    Skipped (stats read back) when its ``_DONE`` marker holds the same key (``shard_key``)."""
    shard = InputShard.from_json(shard_json)
    work = out / "work" / shard.id
    doc_dups = _doc_dups(cfg, out)
    key = shard_key(cfg, shard_json, doc_dups)
    done = work / DONE
    if done.is_file():
        try:
            marker = json.loads(done.read_text())
            # the key says the inputs and code are the same; the outputs' hashes say nothing
            # since damaged them (a damaged or missing file redoes the shard, never trusted)
            if marker.get("key") == key and not changed_files(out, marker["outputs"]):
                return json.loads((work / "stats.json").read_text())
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged marker: redo the shard
    if work.exists():
        shutil.rmtree(work)  # a partial or outdated attempt: redo it whole
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    tok = tokenizer_for(cfg)
    # one Engine (request cache) per shard; the vLLM backend behind it is shared by the process
    engine = Engine(cfg.engine, out / "cache" / shard.id, tok=tok) if needs_engine(cfg) else None
    lineage = Lineage()
    with ShardOutputs(out, shard.id, work) as outs:
        p = shard_pipeline(cfg, source_config(cfg, shard.source), tok, engine,
                           doc_dups["duplicates"] if doc_dups is not None else None, lineage, outs.rejects)
        n_contexts, n_eval = run_shard(p, shard.units, outs)
        crash_point("tokenized")
    stats = {
        "shard": shard.id,
        "lineage": lineage.to_json(),
        "contexts": n_contexts,
        "eval_samples": n_eval,
        "engine_requests": engine.calls if engine else 0,
        # backend seconds per stage (this shard's calls; 0 when all came from the request cache)
        "engine_seconds": {k: round(v, 3) for k, v in sorted(engine.seconds.items())} if engine else {},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    outputs = {f"{sub}/{shard.id}.arrow": out / sub / f"{shard.id}.arrow" for sub in ("samples", "eval", "contexts", "rejects")}
    outputs[f"work/{shard.id}/tokenized.arrow"] = work / "tokenized.arrow"
    stats["outputs"] = {rel: file_entry(p) for rel, p in outputs.items() if p.is_file()}
    write_json(work / "stats.json", stats)
    write_json(done, {"key": key, "outputs": {**stats["outputs"], f"work/{shard.id}/stats.json": file_entry(work / "stats.json")}})
    crash_point("shard_done")
    return stats


def _tokenized_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            pa.array([r["sample_id"] for r in rows], pa.string()),
            pa.array([r["task"] for r in rows], pa.string()),
            pa.array([r["split"] for r in rows], pa.string()),
            pa.array([r["input_ids"] for r in rows], pa.list_(pa.int32())),
            pa.array([r["labels"] for r in rows], pa.list_(pa.int32())),
        ],
        schema=TOKENIZED_SCHEMA,
    )


def _lineage_totals(lineage: dict[str, Any], eval_samples: int, pack: StageStats) -> dict[str, Any]:
    """Documents read = used + dropped by reason; samples made = packed + eval + dropped by reason."""
    empty: dict[str, Any] = {"in": 0, "out": 0, "dropped": {}}
    read, asm = lineage.get(ReadStage.name, empty), lineage.get(Assembler.name, empty)
    tasks, tok = lineage.get(ProgrammaticTasks.name, empty), lineage.get(TokenizeStage.name, empty)
    synth_stages = {k.split(".", 1)[1]: v for k, v in lineage.items() if k.startswith(LLMStage.PREFIX)}
    made_llm = sum(v.get("out", 0) for v in synth_stages.values())
    sample_drops: Counter[str] = Counter()
    for d in (*(lineage.get(f.name, empty)["dropped"] for f in (*SAMPLE_FILTERS, *BUILD_FILTERS)),
              tok["dropped"], dict(pack.dropped)):
        sample_drops.update(d)
    return {
        "records_read": read["in"],
        "documents": {
            "read": read["out"],
            "used": asm["out"],
            # assembly's drops and the near-duplicates removed before it
            "dropped": dict(sorted((Counter(asm["dropped"])
                                    + Counter(lineage.get(DocumentDedup.name, empty)["dropped"])).items())),
            "rejected_at_read": read["dropped"],
        },
        "contexts": tasks["in"],
        "contexts_dropped": lineage.get(CoherenceStage.name, empty)["dropped"],
        # per LLM task: samples planned = made + dropped by reason
        "synthesis": {k: {"planned": v.get("in", 0), "made": v.get("out", 0), "dropped": v.get("dropped", {})}
                      for k, v in synth_stages.items()},
        "samples": {
            "made": tasks["out"] + made_llm,
            "packed": pack.out,
            "eval": eval_samples,
            "dropped": dict(sorted(sample_drops.items())),
        },
        "stages": {**lineage, "pack": pack.to_json()},
    }


def select_samples(cfg: BuildConfig, out: Path, lineage: Lineage) -> set[str]:
    """Whole-build filters before packing (``pipeline.build_filters``: near-duplicate
    questions, then evidence depth rebalancing) over the train samples of every shard.
    Returns the sample ids to leave out; counts and rejects like any stage."""
    filters = build_filters(cfg)
    if not filters:
        return set()
    files = sorted((out / "samples").glob("*.arrow"))
    kept = [Sample.from_row(r) for f in files for r in open_ipc(f).to_pylist()]
    rejects = RejectSink(out / "rejects" / "_build.arrow")
    exclude: set[str] = set()
    for f, examines in filters:
        f.bind(lineage, rejects)
        passed = {s.id for s in f.run([s for s in kept if examines(s)])}
        exclude |= {s.id for s in kept if examines(s) and s.id not in passed}
        kept = [s for s in kept if s.id not in exclude]
    rejects.close()
    return exclude


def pack_and_write(cfg: BuildConfig, shard_stats: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Pack every input shard's tokenized samples, write the shards, then the manifest."""
    t0 = time.perf_counter()
    rss_before_pack = _peak_rss_mb()
    global_lineage = Lineage()
    exclude = select_samples(cfg, out, global_lineage)
    store = TokenStore()
    for st in sorted(shard_stats, key=lambda s: s["shard"]):
        table, mm = open_ipc_mapped(out / "work" / st["shard"] / "tokenized.arrow")
        store.add_batch(table)
        store.maps.append(mm)
    plan = plan_pack(store, cfg.pack, cfg.seed, exclude)
    pack_rejects = RejectSink(out / "rejects" / "pack.arrow")
    for sid, reason, msg in plan.dropped:
        pack_rejects.add("pack", reason, msg, sid, "")
    pack_rejects.close()

    # into a temp directory, renamed to shards/ when complete: shards/ never holds a partial set
    tmp_dir = temp_path(out / SHARD_DIR)
    try:
        shards = write_packed_shards(store, plan, tmp_dir, cfg.shard.max_tokens)
        if (out / SHARD_DIR).exists():
            shutil.rmtree(out / SHARD_DIR)
        os.replace(tmp_dir, out / SHARD_DIR)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise

    lineage = Lineage()
    for st in shard_stats:
        lineage.merge(st["lineage"])
    lineage.merge(global_lineage.to_json())
    eval_samples = sum(st["eval_samples"] for st in shard_stats)
    totals = {
        "rows": plan.n_rows,
        "samples": sum(s["samples"] for s in shards),
        "tokens": plan.n_tokens,
        "loss_tokens": sum(s["loss_tokens"] for s in shards),
        "fill": round(plan.fill, 6),
        "seq_len": cfg.pack.seq_len,
    }
    tok_path = Path(cfg.model) / "tokenizer.json"
    manifest = {
        "format": "lcdata.packed",
        "schema_version": SCHEMA_VERSION,
        "lcdata_version": __version__,
        "name": cfg.name,
        "seq_len": cfg.pack.seq_len,
        "tokenizer": {"model": cfg.model, "sha256": sha256_file(tok_path)},
        "ipc_format": "file",
        "shards": shards,
        "totals": totals,
        "lineage": _lineage_totals(lineage.to_json(), eval_samples, plan.stats),
        "samples_files": sorted(f"samples/{p.name}" for p in (out / "samples").glob("*.arrow")),
        "eval_files": sorted(f"eval/{p.name}" for p in (out / "eval").glob("*.arrow")),
        "contexts_files": sorted(f"contexts/{p.name}" for p in (out / "contexts").glob("*.arrow")),
        # every other output, for `lcdata verify` (the shards' own entries are above)
        "files": output_files(out, shard_stats),
        "config": dump_config(cfg, redact=True),
    }
    write_text(out / "README.md", stub_card(cfg.name))  # before the manifest: a finished build has it
    write_json(out / MANIFEST, manifest)
    info = {"pack_seconds": round(time.perf_counter() - t0, 3),
            "shard_seconds": {s["shard"]: s["seconds"] for s in shard_stats},
            # this process's peak RSS before packing (the shard work, when it ran here) and at the end
            "peak_rss_mb": {"before_pack": rss_before_pack, "end": _peak_rss_mb()}}
    write_json(out / "build_info.json", info)
    return manifest


def output_files(out: Path, shard_stats: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every per-shard output (as its shard recorded them when it finished)
    and of the whole-build rejects, by path relative to ``out``."""
    files: dict[str, dict[str, Any]] = {}
    for st in shard_stats:
        files.update({rel: e for rel, e in st["outputs"].items() if not rel.startswith("work/")})
    for p in sorted((out / "rejects").glob("*.arrow")):
        rel = f"rejects/{p.name}"
        if rel not in files:  # _build.arrow, pack.arrow
            files[rel] = file_entry(p)
    return dict(sorted(files.items()))


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def write_packed_shards(store: TokenStore, plan: PackPlan, shard_dir: Path, max_tokens: int) -> list[dict[str, Any]]:
    """Cut the planned rows into shard files of at most ``max_tokens`` tokens (a row is never
    split), streaming record batches; returns the manifest entries."""
    if shard_dir.exists():
        shutil.rmtree(shard_dir)  # shards of an earlier, different build must not linger
    shard_dir.mkdir(parents=True)
    shards: list[dict[str, Any]] = []
    ends = np.cumsum(plan.row_lengths)
    lo = 0
    while lo < plan.n_rows:
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + max_tokens, side="right")))
        path = shard_dir / f"shard-{len(shards):05d}.arrow"
        shards.append(write_shard(iter_row_batches(store, plan, lo, hi), path))
        store.release_pages()  # resident memory stays about one output shard, whatever the build size
        crash_point("pack")
        lo = hi
    return shards


class Runner(Protocol):
    """How a build launches its work: ``process_input_shard`` over the input shards, and
    ``pack_and_write`` once; which steps run and in what order is ``run_build``'s."""

    def map_shards(self, cfg: BuildConfig, shards: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]: ...

    def pack(self, cfg: BuildConfig, stats: list[dict[str, Any]], out: Path) -> dict[str, Any]: ...


class LocalRunner:
    """Every input shard in this process, one after another (tests, benchmarks, debugging)."""

    def map_shards(self, cfg: BuildConfig, shards: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
        return [process_input_shard(cfg, s, out) for s in shards]

    def pack(self, cfg: BuildConfig, stats: list[dict[str, Any]], out: Path) -> dict[str, Any]:
        return pack_and_write(cfg, stats, out)


def run_build(cfg: BuildConfig, out: Path, runner: Runner | None = None, say: Any = log.info) -> dict[str, Any]:
    """The whole build: plan, prepare the output, prune stale shard outputs, document dedup,
    the shards (through ``runner``), then whole-build filters, pack, shards and manifest.
    The one orchestration: the in-process, Prefect and Dask runners only map the shards."""
    out = Path(out)
    shards = plan_build(cfg)  # plan first: a bad source path fails before anything is written
    tokenizer_for(cfg)  # and the model directory: a typo must not touch a finished dataset in OUT
    with OutputLock(out):  # one build per OUT: a second one is refused, naming this one
        prepare_output(cfg, out)
        prune_stale(out, shards)
        say(f"lcdata build: {len(shards)} input shard(s) -> {out}")
        dd = dedup_documents(cfg, shards, out)  # whole-build step: before any shard
        if dd:
            say(f"document dedup: {dd['duplicates']} near-duplicate(s) of {dd['documents']} documents")
        runner = runner or LocalRunner()
        stats = runner.map_shards(cfg, shards, out)
        return runner.pack(cfg, stats, out)


def build_local(cfg: BuildConfig, out: Path) -> dict[str, Any]:
    """The whole build in this process, without Prefect."""
    return run_build(cfg, out, LocalRunner())
