"""Arrow IPC shard files and the manifest.

Shards use the Arrow IPC **file** format: memory-mapped random access to record batches
(the trainer), lazy ``pl.scan_ipc`` (polars) and ``load_dataset("arrow", data_files=...)``
(Hugging Face datasets) all read it. Every file is written under a temp name, fsynced and
renamed; ``manifest.json`` is written last, so a directory with a manifest is complete.
The manifest holds no timestamps: the same config and seed give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from lcdata.arrowio import ArrowWriter, file_change, file_entry, open_ipc, sha256_file
from lcdata.schema import IGNORE_INDEX, PACKED_SCHEMA, SCHEMA_VERSION, check_version

MANIFEST = "manifest.json"
SHARD_DIR = "shards"
# What `datasets.load_dataset(OUT)` reads (the YAML header of OUT/README.md): the packed rows by
# default, the Sample records as config `samples` (train; eval samples as the test split).
HF_CONFIGS = [
    {"config_name": "default", "data_files": [{"split": "train", "path": f"{SHARD_DIR}/*.arrow"}]},
    {"config_name": "samples", "data_files": [{"split": "train", "path": "samples/*.arrow"},
                                              {"split": "test", "path": "eval/*.arrow"}]},
]


def stub_card(name: str) -> str:
    """The dataset card a build writes (``lcdata report`` replaces it with the full one): its
    YAML header tells ``datasets.load_dataset(OUT)`` where the rows are, which it would
    otherwise guess from directory names (``eval/`` alone, as a test split)."""
    import yaml

    return (f"---\n{yaml.safe_dump({'pretty_name': name, 'configs': HF_CONFIGS}, sort_keys=False).strip()}\n---\n\n"
            f"# {name}\n\nA long-context SFT dataset built by lcdata. `lcdata report DIR` writes the full dataset "
            "card here; `lcdata inspect DIR` summarises it.\n")


def shard_stats(batch: pa.RecordBatch) -> dict[str, int]:
    labels = batch.column("labels").values.to_numpy()
    return {
        "rows": len(batch),
        "tokens": len(labels),
        "loss_tokens": int((labels != IGNORE_INDEX).sum()),
        "samples": len(batch.column("sample_ids").values),
    }


def write_shard(batches: Iterable[pa.RecordBatch], path: Path) -> dict[str, Any]:
    """Stream record batches into one shard file; returns its manifest entry."""
    w = ArrowWriter(path, PACKED_SCHEMA)
    totals = {"rows": 0, "tokens": 0, "loss_tokens": 0, "samples": 0}
    try:
        for b in batches:
            w.write(b)
            for k, v in shard_stats(b).items():
                totals[k] += v
    except BaseException:
        w.abort()
        raise
    w.close()
    return {"path": path.name, **file_entry(path), **totals}


def load_manifest(dir_: Path) -> dict[str, Any]:
    p = Path(dir_) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} not found: {dir_} is not a finished lcdata build (the manifest is written last); "
            "run or rerun `lcdata build` to finish it"
        )
    m = json.loads(p.read_text())
    if m.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{p}: schema version {m.get('schema_version')}, this lcdata reads {SCHEMA_VERSION}; "
            "rebuild the dataset with this version"
        )
    return m


def shard_paths(dir_: Path, manifest: dict[str, Any] | None = None) -> list[Path]:
    manifest = manifest or load_manifest(dir_)
    return [Path(dir_) / SHARD_DIR / s["path"] for s in manifest["shards"]]


def check_shards(dir_: Path) -> list[str]:
    """Problems found (empty list: every shard exists, matches its sha256 and schema)."""
    dir_ = Path(dir_)
    m = load_manifest(dir_)
    problems = []
    for s, path in zip(m["shards"], shard_paths(dir_, m), strict=True):
        if not path.is_file():
            problems.append(f"{path}: missing; rebuild the dataset (`lcdata build`)")
            continue
        size = path.stat().st_size
        if "bytes" in s and size != s["bytes"]:
            problems.append(f"{path}: {size:,} bytes, the manifest says {s['bytes']:,} (truncated or overwritten); "
                            "rebuild or restore it")
            continue
        digest = sha256_file(path)
        if digest != s["sha256"]:
            problems.append(f"{path}: sha256 {digest[:12]}... != manifest {s['sha256'][:12]}...; "
                            "the file changed after the build: rebuild or restore it")
            continue
        try:
            check_version(ipc.open_file(pa.memory_map(str(path))).schema, str(path))
        except ValueError as e:
            problems.append(str(e))
    return problems


def check_build(dir_: Path) -> list[str]:
    """Every problem of a finished build directory (empty list: all is as its manifest says):
    each packed shard (``check_shards``), every other output file the manifest lists
    (samples, eval, contexts, rejects) by size and sha256, and no file in ``shards/`` that the
    manifest does not list."""
    dir_ = Path(dir_)
    problems = check_shards(dir_)
    m = load_manifest(dir_)
    rerun = "rerun `lcdata build` with the same config and --out (it redoes it)"
    for rel, want in m.get("files", {}).items():
        path = dir_ / rel
        change = file_change(path, want)
        if change == "missing":
            problems.append(f"{path}: missing; {rerun}")
        elif change == "size":
            problems.append(f"{path}: {path.stat().st_size:,} bytes, the manifest says {want['bytes']:,} "
                            f"(truncated or overwritten); {rerun}")
        elif change == "sha256":
            problems.append(f"{path}: sha256 differs from the manifest (the file changed after the build); {rerun}")
    listed = {s["path"] for s in m["shards"]}
    for p in sorted((dir_ / SHARD_DIR).glob("*")):
        if p.name not in listed:
            problems.append(f"{p}: not part of this build (the manifest does not list it); remove it")
    return problems


def iter_rows(dir_: Path) -> Iterator[dict[str, Any]]:
    for path in shard_paths(Path(dir_)):
        t = open_ipc(path)
        for b in t.to_batches():
            yield from b.to_pylist()


def check_row(row: dict[str, Any]) -> None:
    """The packed-row invariants; raises AssertionError naming the broken one."""
    ids, labels, pos, lens = (np.asarray(row[k]) for k in ("input_ids", "labels", "position_ids", "seq_lens"))
    assert len(ids) == len(labels) == len(pos), "column lengths differ"
    assert int(lens.sum()) == len(ids), "sum(seq_lens) != len(input_ids)"
    assert len(row["sample_ids"]) == len(lens), "one sample id per seq_len"
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(int)
    expected = np.arange(len(ids)) - np.repeat(starts, lens)
    assert np.array_equal(pos, expected), "position_ids must restart at 0 at every sample"
    assert (labels[starts] == IGNORE_INDEX).all(), "the first token of a sample must have no label"
    m = labels != IGNORE_INDEX
    assert np.array_equal(labels[m], ids[m]), "a label differs from its token"
