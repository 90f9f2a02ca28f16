"""The data contract: one record type per stage boundary, defined once.

    corpora --read--> Document --assemble--> Context --tasks--> Sample
        --tokenize--> TokenizedSample --pack--> PackedRow (Arrow shards)

Every record has a pyarrow schema here, stamped with ``SCHEMA_VERSION`` in the schema
metadata. ``schemas/*.json`` is generated from this module (``python -m lcdata.schema``)
and a test fails if it drifts. The trainer imports this module and nothing else from the
pipeline, so it must depend on pyarrow and the standard library only.

Offsets are Python ``str`` indices (code points), half-open ``[start, end)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "1.3"  # 1.3: Context.joins; 1.2: Sample.question / answer; 1.1: evidence token offsets, context_message -1
IGNORE_INDEX = -100  # label value that carries no loss (PyTorch / transformers convention)

# Split of a sample in the long:short mix.
SPLIT_LONG = "long"
SPLIT_SHORT = "short"
# What a sample is for: training rows are packed; evaluation samples are kept apart.
PURPOSE_TRAIN = "train"
PURPOSE_EVAL = "eval"


def _meta(record: str) -> dict[bytes, bytes]:
    return {b"lcdata.schema_version": SCHEMA_VERSION.encode(), b"lcdata.record": record.encode()}


# ---------------------------------------------------------------- Document
DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # unique within a build: "source/relative/path"
        pa.field("source", pa.string(), nullable=False),  # the config's source name
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),  # JSON object (group, order, path, ...)
    ],
    metadata=_meta("document"),
)


@dataclass
class Document:
    id: str
    source: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """Documents of one group (a repository, a book, a manual) may be joined."""
        return str(self.metadata.get("group", self.id))

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "text": self.text,
                "metadata": json.dumps(self.metadata, sort_keys=True)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Document:
        return cls(row["id"], row["source"], row["text"], json.loads(row["metadata"] or "{}"))


# ---------------------------------------------------------------- Context
# One part of an assembled context: context.text[ctx_start:ctx_end] == doc.text[doc_start:doc_end].
PART_TYPE = pa.struct(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("ctx_start", pa.int64(), nullable=False),
        pa.field("ctx_end", pa.int64(), nullable=False),
        pa.field("doc_start", pa.int64(), nullable=False),
        pa.field("doc_end", pa.int64(), nullable=False),
    ]
)

CONTEXT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),  # natural | concat | neighbours
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("parts", pa.list_(PART_TYPE), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("target_tokens", pa.int32(), nullable=False),  # the bucket it was cut for
        # neighbours: cosine similarity of the documents on each side of each join
        # (joins[i] between parts[i] and parts[i+1]); empty for the other strategies
        pa.field("joins", pa.list_(pa.float32()), nullable=False),
    ],
    metadata=_meta("context"),
)


@dataclass
class Part:
    doc_id: str
    ctx_start: int
    ctx_end: int
    doc_start: int
    doc_end: int

    def to_row(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class Context:
    id: str
    source: str
    group: str
    strategy: str
    text: str
    parts: list[Part]
    n_tokens: int
    target_tokens: int
    joins: list[float] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        row = self.__dict__.copy()
        row["joins"] = list(self.joins)
        row["parts"] = [p.to_row() for p in self.parts]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Context:
        row = dict(row)
        row["parts"] = [Part(**p) for p in row["parts"]]
        return cls(**row)


# ---------------------------------------------------------------- Sample
MESSAGE_TYPE = pa.struct(
    [pa.field("role", pa.string(), nullable=False), pa.field("content", pa.large_string(), nullable=False)]
)
# Offsets of SOURCE and EVIDENCE are into the context text; the context sits verbatim in
# messages[context_message].content starting at char context_offset. context_message is -1
# when the sample does not carry its context (LIFT closed-book QA and memorization): offsets
# then refer to context `context_id`, written to OUT/contexts/. Evidence token offsets count
# tokens of the context text tokenized alone (no chat template), end exclusive.
SOURCE_TYPE = PART_TYPE
EVIDENCE_TYPE = pa.struct(
    [
        pa.field("text", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("end", pa.int64(), nullable=False),
        pa.field("depth", pa.float32(), nullable=False),  # start / len(context), in [0, 1]
        pa.field("token_start", pa.int32(), nullable=False),
        pa.field("token_end", pa.int32(), nullable=False),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("question", pa.large_string(), nullable=False),  # the last user turn without its context
        pa.field("answer", pa.large_string(), nullable=False),  # the reference answer (the last assistant turn)
        pa.field("split", pa.string(), nullable=False),  # long | short
        pa.field("purpose", pa.string(), nullable=False),  # train | eval
        pa.field("context_id", pa.string(), nullable=False),
        pa.field("context_message", pa.int32(), nullable=False),
        pa.field("context_offset", pa.int64(), nullable=False),
        pa.field("context_chars", pa.int64(), nullable=False),
        pa.field("context_tokens", pa.int32(), nullable=False),
        pa.field("sources", pa.list_(SOURCE_TYPE), nullable=False),
        pa.field("evidence", pa.list_(EVIDENCE_TYPE), nullable=False),
        pa.field("meta", pa.string(), nullable=False),  # JSON object: task-specific facts
    ],
    metadata=_meta("sample"),
)


@dataclass
class Evidence:
    text: str
    start: int
    end: int
    depth: float
    token_start: int = 0
    token_end: int = 0

    def to_row(self) -> dict[str, Any]:
        return self.__dict__.copy()


def sample_id(task: str, context_id: str, index: int | str) -> str:
    """The id of a sample (and of its rejects, when it is dropped): task, context, index."""
    return f"{task}:{context_id}:{index}"


@dataclass
class Sample:
    id: str  # sample_id(task, context_id, index)
    task: str
    messages: list[dict[str, str]]
    question: str
    answer: str
    split: str
    purpose: str
    context_id: str
    context_message: int
    context_offset: int
    context_chars: int
    context_tokens: int
    sources: list[Part]
    evidence: list[Evidence]
    meta: dict[str, Any] = field(default_factory=dict)

    def context_text(self) -> str:
        """The context as it sits in the messages ("" for samples that do not carry it)."""
        if self.context_message < 0:
            return ""
        content = self.messages[self.context_message]["content"]
        return content[self.context_offset : self.context_offset + self.context_chars]

    def to_row(self) -> dict[str, Any]:
        row = self.__dict__.copy()
        row["sources"] = [p.to_row() for p in self.sources]
        row["evidence"] = [e.to_row() for e in self.evidence]
        row["meta"] = json.dumps(self.meta, sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sample:
        row = dict(row)
        row["sources"] = [Part(**p) for p in row["sources"]]
        row["evidence"] = [Evidence(**e) for e in row["evidence"]]
        row["meta"] = json.loads(row["meta"] or "{}")
        return cls(**row)


# ---------------------------------------------------------------- TokenizedSample
TOKENIZED_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),  # IGNORE_INDEX where no loss
    ],
    metadata=_meta("tokenized"),
)

# ---------------------------------------------------------------- PackedRow
# Column names are the ones transformers / TRL expect for packed (padding-free) batches.
# Labels are NOT shifted: labels[t] is the target of the logits at t-1 (the model shifts).
PACKED_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),
        pa.field("position_ids", pa.list_(pa.int32()), nullable=False),  # 0 at every sample start
        pa.field("seq_lens", pa.list_(pa.int32()), nullable=False),  # sums to len(input_ids)
        pa.field("sample_ids", pa.list_(pa.string()), nullable=False),  # one per seq_lens entry
    ],
    metadata=_meta("packed"),
)

# ---------------------------------------------------------------- Rejects
# Every dropped record lands in a rejects file: the stage, the reason code, a human
# message, the record id and the record itself as JSON (truncated for huge inputs).
REJECT_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("record", pa.large_string(), nullable=False),
    ],
    metadata=_meta("reject"),
)

SCHEMAS: dict[str, pa.Schema] = {
    "document": DOCUMENT_SCHEMA,
    "context": CONTEXT_SCHEMA,
    "sample": SAMPLE_SCHEMA,
    "tokenized": TOKENIZED_SCHEMA,
    "packed": PACKED_SCHEMA,
    "reject": REJECT_SCHEMA,
}


class SchemaVersionError(ValueError):
    pass


def check_version(schema: pa.Schema, where: str) -> None:
    """Refuse data written under another schema version, naming the file and the fix."""
    found = (schema.metadata or {}).get(b"lcdata.schema_version", b"<none>").decode()
    if found != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{where}: schema version {found}, this lcdata reads {SCHEMA_VERSION}; "
            "rebuild the dataset with this lcdata version or install the one that wrote it"
        )


def _type_json(t: pa.DataType) -> Any:
    if pa.types.is_struct(t):
        return {"struct": [_field_json(t.field(i)) for i in range(t.num_fields)]}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"list": _type_json(t.value_type)}
    return str(t)


def _field_json(f: pa.Field) -> dict[str, Any]:
    return {"name": f.name, "type": _type_json(f.type), "nullable": f.nullable}


def schema_json(name: str) -> dict[str, Any]:
    s = SCHEMAS[name]
    return {"record": name, "schema_version": SCHEMA_VERSION, "fields": [_field_json(f) for f in s]}


def export(dir_: Path) -> list[Path]:
    dir_.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SCHEMAS:
        p = dir_ / f"{name}.json"
        p.write_text(json.dumps(schema_json(name), indent=2) + "\n")
        paths.append(p)
    return paths


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "schemas")
    for p in export(out):
        print(p)
