"""The build's stages, declared once, in order.

One input shard flows through four phases (``shard_pipeline``)::

    units --read--> Document --dedup_documents--> --assemble--> Context --coherence-->
        contexts (written to OUT/contexts/)
    Context --tasks (programmatic, then each LLM task)--> Sample
        --evidence_distance--> --decontaminate--> --judge--> --verify-->
        eval samples (OUT/eval/) | train samples (OUT/samples/) --tokenize--> TokenizedSample

and over the whole build, before packing (``build_filters``): ``dedup_questions`` then
``rebalance_depth``. Runners (in-process, Prefect, Dask) only launch ``lcdata.build``'s
steps; none of them wires stages. A stage's lineage name is its class's ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lcdata.assemble import Assembler
from lcdata.chat import ChatTokenizer, TokenizeStage
from lcdata.config import BuildConfig, SourceConfig
from lcdata.engine import Engine
from lcdata.filters.coherence import CoherenceStage
from lcdata.filters.decontam import DecontamStage
from lcdata.filters.dedup import DocumentDedup, QuestionDedup
from lcdata.filters.evidence import DepthRebalance, DistanceFilter
from lcdata.filters.verify import JudgeStage, VerifyStage
from lcdata.read import ReadStage, strategy_of
from lcdata.stage import Filter, Lineage, RejectSink, Stage
from lcdata.tasks import TASKS, ProgrammaticTasks

# Filters of made samples, per shard and then over the whole build: their drops count as
# samples dropped in the manifest's lineage totals.
SAMPLE_FILTERS: tuple[type[Filter[Any]], ...] = (DistanceFilter, DecontamStage, JudgeStage, VerifyStage)
BUILD_FILTERS: tuple[type[Filter[Any]], ...] = (QuestionDedup, DepthRebalance)


@dataclass
class ShardPipeline:
    """The bound stages of one input shard, by phase."""

    documents: list[Stage[Any, Any]]  # units -> Documents -> Contexts
    contexts: list[Filter[Any]]  # Contexts -> Contexts (then written)
    tasks: list[Stage[Any, Any]]  # each runs over all contexts -> Samples
    samples: list[Filter[Any]]  # Samples -> Samples (then routed: eval apart, train tokenized)
    tokenize: TokenizeStage


def needs_engine(cfg: BuildConfig) -> bool:
    return any(TASKS[t.kind].uses_engine for t in cfg.tasks) or cfg.filters.verify.enabled or cfg.filters.judge.enabled


def shard_pipeline(cfg: BuildConfig, src: SourceConfig, tok: ChatTokenizer, engine: Engine | None,
                   doc_dups: dict[str, str] | None, lineage: Lineage, rejects: RejectSink) -> ShardPipeline:
    """The stages of one input shard of source ``src``, bound to its lineage and rejects file:
    the only place the shard's stage order is written."""
    fc = cfg.filters
    short_max = cfg.assemble.short_max_tokens
    documents: list[Stage[Any, Any]] = [ReadStage(cfg.read, src)]
    if doc_dups is not None:
        documents.append(DocumentDedup(doc_dups))
    documents.append(Assembler(cfg.assemble, tok, strategy_of(src), cfg.seed))
    contexts: list[Filter[Any]] = [CoherenceStage(fc.coherence, cfg.model, tok)] if fc.coherence.enabled else []
    tasks: list[Stage[Any, Any]] = [ProgrammaticTasks(cfg.tasks, tok, cfg.seed, short_max)]
    # each LLM task is a stage of its own (it batches its engine requests over the shard)
    tasks += [TASKS[t.kind](t, engine, tok, cfg.seed, short_max) for t in cfg.tasks if TASKS[t.kind].uses_engine]
    samples: list[Filter[Any]] = []
    if fc.evidence.min_distance_tokens > 0 or fc.evidence.min_distance_frac > 0:
        samples.append(DistanceFilter(fc.evidence))
    if fc.decontaminate.enabled:
        samples.append(DecontamStage(fc.decontaminate))
    if fc.judge.enabled:
        samples.append(JudgeStage(fc.judge, engine))
    if fc.verify.enabled:
        samples.append(VerifyStage(fc.verify, engine, tok))
    tokenize = TokenizeStage(tok, cfg.tokenize.loss_on, cfg.tokenize.batch_size)
    for st in (*documents, *contexts, *tasks, *samples, tokenize):
        st.bind(lineage, rejects)
    return ShardPipeline(documents, contexts, tasks, samples, tokenize)


def build_filters(cfg: BuildConfig) -> list[tuple[Filter[Any], Any]]:
    """The whole-build filters before packing, in order, each with the predicate that picks
    the samples it examines (the others pass it untouched and uncounted)."""
    fc = cfg.filters
    out: list[tuple[Filter[Any], Any]] = []
    if fc.dedup.questions:
        out.append((QuestionDedup(fc.dedup), lambda s: s.task in fc.dedup.tasks))
    if fc.evidence.rebalance_depth:
        out.append((DepthRebalance(fc.evidence, cfg.seed), lambda s: bool(s.evidence)))
    return out
