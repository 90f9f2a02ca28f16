"""The build, as plain library steps that a Prefect flow (``pipelines/build.py``) maps over
input shards. Steps take and return paths and small dicts, never big data.

Output directory::

    OUT/config.yaml               the resolved config
    OUT/samples/<shard>.arrow     Sample records made for training (messages, evidence, sources)
    OUT/eval/<shard>.arrow        Sample records for evaluation only (never packed)
    OUT/contexts/<shard>.arrow    the assembled contexts (what evidence offsets point into)
    OUT/rejects/<stage>.arrow     every dropped record with stage, reason code and message
    OUT/work/<shard>/             tokenized samples + stats + _DONE marker (resume)
    OUT/shards/shard-00000.arrow  packed rows (PACKED_SCHEMA)
    OUT/manifest.json             written last
    OUT/build_info.json           timings (not part of the deterministic output)
"""

from __future__ import annotations

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
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from lcdata import __version__
from lcdata.arrowio import ArrowWriter, open_ipc, open_ipc_mapped, sha256_file, write_json
from lcdata.assemble import Assembler
from lcdata.config import BuildConfig, dump_config
from lcdata.engine import Engine
from lcdata.faults import crash_point
from lcdata.filters.coherence import CoherenceStage
from lcdata.filters.decontam import DecontamStage
from lcdata.filters.dedup import char_shingles, near_duplicates, word_shingles
from lcdata.filters.evidence import DistanceFilter, rebalance_depth
from lcdata.filters.verify import JudgeStage, VerifyStage, question_of
from lcdata.pack import PackPlan, TokenStore, iter_row_batches, plan_pack
from lcdata.read import InputShard, plan_source, read_shard, strategy_of
from lcdata.read.files import ReadStage
from lcdata.schema import (
    CONTEXT_SCHEMA,
    PURPOSE_EVAL,
    SAMPLE_SCHEMA,
    SCHEMA_VERSION,
    TOKENIZED_SCHEMA,
    Sample,
)
from lcdata.shards import MANIFEST, SHARD_DIR, write_shard
from lcdata.stage import Filter, Lineage, RejectSink, StageStats
from lcdata.tasks import LLM_STAGES, TaskStage
from lcdata.tokenize import ChatTokenizer, TokenizeStage

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
    blob = json.dumps([__version__, code_hash(), SCHEMA_VERSION, dump_config(cfg), extra], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare_output(cfg: BuildConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
    # a stale manifest would make an unfinished rebuild look complete
    (out / MANIFEST).unlink(missing_ok=True)


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


def unit_stamps(shard_json: dict[str, Any]) -> list[tuple[str, int, int]]:
    """Size and mtime of every file of an input shard: an edited file redoes its shard."""
    out = []
    for u in shard_json["units"]:
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
    drop those documents. A no-op unless ``filters.dedup.documents``."""
    dc = cfg.filters.dedup
    if not dc.documents:
        return {}
    items = []
    doc_ids: list[list[str]] = []
    for sj in shards:
        shard = InputShard.from_json(sj)
        src = next(s for s in cfg.sources if s.name == shard.source)
        reader = ReadStage(cfg.read).bind(Lineage(), RejectSink(None))  # counted again by the shard task
        mine = [(d.id, word_shingles(d.text)) for d in read_shard(shard, src, reader)]
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


def _doc_dups(cfg: BuildConfig, out: Path) -> dict[str, str] | None:
    if not cfg.filters.dedup.documents:
        return None
    path = out / DEDUP_DOCS
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run the document dedup step first (build_local and the flow do)")
    return json.loads(path.read_text())["duplicates"]


class DocDedupStage(Filter[Any]):
    name = "dedup_documents"

    def __init__(self, dups: dict[str, str]) -> None:
        super().__init__()
        self.dups = dups

    def keep(self, doc: Any) -> tuple[bool, str, str]:
        if doc.id in self.dups:
            return False, "near_duplicate", f"near-duplicate of {self.dups[doc.id]} (MinHash LSH, word 5-grams)"
        return True, "", ""


def process_input_shard(cfg: BuildConfig, shard_json: dict[str, Any], out: Path) -> dict[str, Any]:
    """read -> assemble -> tasks -> tokenize for one input shard; returns its stats.

    Skipped (stats read back) when its ``_DONE`` marker holds the same config hash."""
    shard = InputShard.from_json(shard_json)
    work = out / "work" / shard.id
    dups = _doc_dups(cfg, out)
    # inputs: the config, the shard's files (paths, sizes, mtimes) and the documents the
    # whole-build dedup drops from it
    mine = json.loads((out / DEDUP_DOCS).read_text()).get("by_shard", {}).get(shard.id, {}) if dups is not None else None
    key = config_hash(cfg, [shard_json, unit_stamps(shard_json), mine])
    done = work / DONE
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        return json.loads((work / "stats.json").read_text())
    if work.exists():
        shutil.rmtree(work)  # a partial or outdated attempt: redo it whole
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    src = next(s for s in cfg.sources if s.name == shard.source)
    tok = tokenizer_for(cfg)
    lineage = Lineage()
    rejects = RejectSink(out / "rejects" / f"{shard.id}.arrow")
    reader = ReadStage(cfg.read).bind(lineage, rejects)
    assembler = Assembler(cfg.assemble, tok, strategy_of(src), cfg.seed).bind(lineage, rejects)
    tasks = TaskStage(cfg.tasks, tok, cfg.seed, cfg.assemble.short_max_tokens).bind(lineage, rejects)
    llm_tasks = [t for t in cfg.tasks if t.kind in LLM_STAGES]
    fc = cfg.filters
    # one Engine (request cache) per shard; the vLLM backend behind it is shared by the process
    needs_engine = bool(llm_tasks) or fc.verify.enabled or fc.judge.enabled
    engine = Engine(cfg.engine, out / "cache" / shard.id) if needs_engine else None
    doc_filter = DocDedupStage(dups).bind(lineage, rejects) if dups is not None else None
    coherence = CoherenceStage(fc.coherence, cfg.model, tok).bind(lineage, rejects) if fc.coherence.enabled else None
    sample_filters: list[Any] = []
    if fc.evidence.min_distance_tokens > 0 or fc.evidence.min_distance_frac > 0:
        sample_filters.append(DistanceFilter(fc.evidence))
    if fc.decontaminate.enabled:
        sample_filters.append(DecontamStage(fc.decontaminate))
    if fc.judge.enabled:
        sample_filters.append(JudgeStage(fc.judge, engine))
    if fc.verify.enabled:
        sample_filters.append(VerifyStage(fc.verify, engine, tok))
    sample_filters = [f.bind(lineage, rejects) for f in sample_filters]
    synth = [LLM_STAGES[t.kind](t, engine, tok, cfg.seed, cfg.assemble.short_max_tokens).bind(lineage, rejects)
             for t in llm_tasks]
    tokenizer = TokenizeStage(tok, cfg.tokenize.loss_on, cfg.tokenize.batch_size).bind(lineage, rejects)

    train_w = ArrowWriter(out / "samples" / f"{shard.id}.arrow", SAMPLE_SCHEMA)
    eval_w = ArrowWriter(out / "eval" / f"{shard.id}.arrow", SAMPLE_SCHEMA)
    tok_w = ArrowWriter(work / "tokenized.arrow", TOKENIZED_SCHEMA)
    ctx_w = ArrowWriter(out / "contexts" / f"{shard.id}.arrow", CONTEXT_SCHEMA)
    n_eval = 0

    def train_samples():  # noqa: ANN202 - a generator feeding the tokenizer
        nonlocal n_eval
        buf: list[dict[str, Any]] = []
        ebuf: list[dict[str, Any]] = []
        docs = read_shard(shard, src, reader)
        if doc_filter is not None:
            docs = doc_filter.run(docs)
        contexts = list(assembler.run(docs))
        if coherence is not None:
            contexts = list(coherence.run(contexts))
        ctx_w.write_rows([c.to_row() for c in contexts])
        made = itertools.chain(tasks.run(contexts), *(st.run(contexts) for st in synth))
        for f in sample_filters:
            made = f.run(made)
        for s in made:
            if s.purpose == PURPOSE_EVAL:
                n_eval += 1
                ebuf.append(s.to_row())
                if len(ebuf) >= 64:
                    eval_w.write_rows(ebuf)
                    ebuf = []
                continue
            buf.append(s.to_row())
            if len(buf) >= 64:
                train_w.write_rows(buf)
                buf = []
            yield s
        train_w.write_rows(buf)
        eval_w.write_rows(ebuf)

    writers = [train_w, eval_w, tok_w, ctx_w]
    try:
        rows: list[dict[str, Any]] = []
        for t in tokenizer.run(train_samples()):
            rows.append({"sample_id": t.sample_id, "task": t.task, "split": t.split,
                         "input_ids": t.input_ids, "labels": t.labels})
            if len(rows) >= 256:
                tok_w.write(_tokenized_batch(rows))
                rows = []
        if rows:
            tok_w.write(_tokenized_batch(rows))
        crash_point("tokenized")
        for w in writers:
            w.close()
        rejects.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    stats = {
        "shard": shard.id,
        "lineage": lineage.to_json(),
        "contexts": assembler.n_contexts,
        "eval_samples": n_eval,
        "engine_requests": engine.calls if engine else 0,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(work / "stats.json", stats)
    write_json(done, {"key": key})
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
    read, asm = lineage.get("read", {}), lineage.get("assemble", {})
    tasks, tok = lineage.get("tasks", {}), lineage.get("tokenize", {})
    synth_stages = {k.split(".", 1)[1]: v for k, v in lineage.items() if k.startswith("synthesize.")}
    made_llm = sum(v.get("out", 0) for v in synth_stages.values())
    sample_drops: dict[str, int] = {}
    filters = [lineage.get(k, {}) for k in SAMPLE_FILTER_STAGES]
    for d in (*(f.get("dropped", {}) for f in filters), tok.get("dropped", {}), dict(pack.dropped)):
        for k, v in d.items():
            sample_drops[k] = sample_drops.get(k, 0) + v
    return {
        "records_read": read.get("in", 0),
        "documents": {
            "read": read.get("out", 0),
            "used": asm.get("out", 0),
            # assembly's drops and the near-duplicates removed before it
            "dropped": dict(sorted((Counter(asm.get("dropped", {}))
                                    + Counter(lineage.get("dedup_documents", {}).get("dropped", {}))).items())),
            "rejected_at_read": read.get("dropped", {}),
        },
        "contexts": tasks.get("in", 0),
        "contexts_dropped": lineage.get("coherence", {}).get("dropped", {}),
        # per LLM task: samples planned = made + dropped by reason
        "synthesis": {k: {"planned": v.get("in", 0), "made": v.get("out", 0), "dropped": v.get("dropped", {})}
                      for k, v in synth_stages.items()},
        "samples": {
            "made": tasks.get("out", 0) + made_llm,
            "packed": pack.out,
            "eval": eval_samples,
            "dropped": dict(sorted(sample_drops.items())),
        },
        "stages": {**lineage, "pack": pack.to_json()},
    }


# stages that drop samples after they were made (their drops count in samples.dropped)
SAMPLE_FILTER_STAGES = ("evidence_distance", "decontaminate", "judge", "verify", "dedup_questions", "rebalance_depth")


def select_samples(cfg: BuildConfig, out: Path, lineage: Lineage) -> set[str]:
    """Whole-build selection before packing: near-duplicate questions, then evidence depth
    rebalancing. Returns the sample ids to leave out; counts and rejects like any stage."""
    fc = cfg.filters
    if not (fc.dedup.questions or fc.evidence.rebalance_depth):
        return set()
    files = sorted((out / "samples").glob("*.arrow"))
    rows = [r for f in files for r in open_ipc(f).to_pylist()] if files else []
    rejects = RejectSink(out / "rejects" / "_build.arrow")
    exclude: set[str] = set()
    if fc.dedup.questions:
        st = lineage.stage("dedup_questions")
        cand = [Sample.from_row(r) for r in rows if r["task"] in fc.dedup.tasks]
        st.in_ += len(cand)
        by_task: dict[str, list[tuple[str, set[str]]]] = {}
        for smp in cand:
            by_task.setdefault(smp.task, []).append(
                (smp.id, char_shingles(question_of(smp) + " " + smp.messages[-1]["content"])))
        for items in by_task.values():
            for sid, kept in near_duplicates(items, fc.dedup.question_threshold, fc.dedup.num_perm).items():
                st.dropped["duplicate_question"] += 1
                rejects.add("dedup_questions", "duplicate_question", f"near-duplicate of {kept}", sid, "")
                exclude.add(sid)
        st.out += len(cand) - len(exclude)
    if fc.evidence.rebalance_depth:
        st = lineage.stage("rebalance_depth")
        items = [(r["id"], sum(e["depth"] for e in r["evidence"]) / len(r["evidence"]))
                 for r in rows if r["evidence"] and r["id"] not in exclude]
        st.in_ += len(items)
        drop, hist = rebalance_depth(items, fc.evidence.max_decile_share, cfg.seed)
        for sid in sorted(drop):
            st.dropped["depth_rebalance"] += 1
            rejects.add("rebalance_depth", "depth_rebalance", f"its depth decile is over {fc.evidence.max_decile_share:.0%}"
                        " of the samples with evidence", sid, "")
        st.out += len(items) - len(drop)
        st.notes.update({f"before_d{i}": n for i, n in enumerate(hist["before"])})
        st.notes.update({f"after_d{i}": n for i, n in enumerate(hist["after"])})
        exclude |= drop
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

    shards = write_packed_shards(store, plan, out / SHARD_DIR, cfg.shard.max_tokens)

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
        "config": dump_config(cfg),
    }
    write_json(out / MANIFEST, manifest)
    info = {"pack_seconds": round(time.perf_counter() - t0, 3),
            "shard_seconds": {s["shard"]: s["seconds"] for s in shard_stats},
            # this process's peak RSS before packing (the shard work, when it ran here) and at the end
            "peak_rss_mb": {"before_pack": rss_before_pack, "end": _peak_rss_mb()}}
    write_json(out / "build_info.json", info)
    return manifest


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


def build_local(cfg: BuildConfig, out: Path) -> dict[str, Any]:
    """The whole build in this process, without Prefect (tests, benchmarks, debugging)."""
    out = Path(out)
    shards = plan_build(cfg)  # plan first: a bad source path fails before anything is written
    prepare_output(cfg, out)
    prune_stale(out, shards)
    dedup_documents(cfg, shards, out)
    stats = [process_input_shard(cfg, s, out) for s in shards]
    return pack_and_write(cfg, stats, out)

