"""Decontamination: a training sample that shares a word ``ngram`` (13 by default, as in the
GPT-3 and Llama reports) with an evaluation text is dropped (reason ``contaminated``).

The index holds 64-bit hashes of every n-gram of the evaluation texts (HotpotQA dev
paragraphs and questions, SQuAD 2.0 dev contexts and questions, the Paul Graham haystack
essays, and your files), sorted in a numpy array and cached under ``~/.cache/lcdata``; a
lookup hashes the sample's n-grams and binary-searches them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lcdata.config import DecontamFilter
from lcdata.engine import INIT_LOCK
from lcdata.read.corpora import eval_data_dir
from lcdata.schema import PURPOSE_TRAIN, Sample
from lcdata.stage import Filter

_WORD = re.compile(r"\w+")
INDEX_VERSION = "1"


def word_hashes(text: str) -> np.ndarray:
    return np.fromiter((zlib.crc32(w.encode()) for w in _WORD.findall(text.lower())), np.uint64)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """64-bit hashes of the word n-grams of ``text`` (a polynomial over the words' crc32)."""
    w = word_hashes(text)
    if len(w) < n:
        return np.zeros(0, np.uint64)
    h = np.zeros(len(w) - n + 1, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * np.uint64(1_000_003) + w[k:len(w) - n + 1 + k]
    return h


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def eval_texts(cfg: DecontamFilter) -> Iterator[str]:
    d = eval_data_dir()
    names = {"hotpotqa": "hotpotqa.json", "squad": "squad.json", "paul_graham": "PaulGrahamEssays.json"}
    for src in cfg.sources:
        yield from _strings(json.loads((d / names[src]).read_text()))
    for f in cfg.files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"filters.decontaminate.files: {p} not found; fix the path or remove it")
        if p.suffix == ".jsonl":
            for i, line in enumerate(p.read_text().splitlines()):
                if line.strip():
                    try:
                        yield from _strings(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{p}:{i + 1}: not JSON ({e}); fix the line or use a .txt file") from None
        elif p.suffix == ".json":
            yield from _strings(json.loads(p.read_text()))
        else:
            yield p.read_text(errors="replace")


class EvalIndex:
    def __init__(self, hashes: np.ndarray, n: int) -> None:
        self.hashes, self.n = hashes, n

    @classmethod
    def build(cls, cfg: DecontamFilter) -> EvalIndex:
        key = hashlib.sha256(json.dumps([INDEX_VERSION, cfg.ngram, cfg.sources, [
            (f, os.path.getmtime(f), os.path.getsize(f)) for f in cfg.files if Path(f).is_file()]]).encode()).hexdigest()[:16]
        cache = Path(os.environ.get("LCDATA_CACHE", Path.home() / ".cache" / "lcdata")) / "decontam" / f"{key}.npy"
        if cache.is_file():
            return cls(np.load(cache), cfg.ngram)
        parts = [ngram_hashes(t, cfg.ngram) for t in eval_texts(cfg)]
        hashes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, hashes)
        os.replace(tmp, cache)
        return cls(hashes, cfg.ngram)

    def matches(self, text: str) -> int:
        h = ngram_hashes(text, self.n)
        if not len(h) or not len(self.hashes):
            return 0
        i = np.searchsorted(self.hashes, h)
        i[i >= len(self.hashes)] = 0
        return int((self.hashes[i] == h).sum())


_INDEXES: dict[str, EvalIndex] = {}


def eval_index(cfg: DecontamFilter) -> EvalIndex:
    """One index per process and config (building it reads ~100 MB of JSON once)."""
    key = cfg.model_dump_json()
    with INIT_LOCK:  # two build threads must not both build (and write) it
        if key not in _INDEXES:
            _INDEXES[key] = EvalIndex.build(cfg)
        return _INDEXES[key]


class DecontamStage(Filter[Sample]):
    name = "decontaminate"

    def __init__(self, cfg: DecontamFilter) -> None:
        super().__init__()
        self.index = eval_index(cfg)

    def keep(self, s: Sample) -> tuple[bool, str, str]:
        if s.purpose != PURPOSE_TRAIN:
            return True, "", ""  # evaluation samples are the registered texts themselves
        n = sum(self.index.matches(m["content"]) for m in s.messages)
        if n == 0:
            return True, "", ""
        return False, "contaminated", f"{n} word {self.index.n}-grams shared with the evaluation texts"
