"""Decontamination: a training sample that shares a word ``ngram`` (13 by default, as in the
GPT-3 and Llama reports) with an evaluation text is dropped (reason ``contaminated``).

The index holds 64-bit hashes of every n-gram of the evaluation texts (HotpotQA dev
paragraphs and questions, SQuAD 2.0 dev contexts and questions, the Paul Graham haystack
essays, `lcdata eval`'s own texts, and your files), sorted in a numpy array and cached under
``~/.cache/lcdata``; a lookup hashes the sample's n-grams and binary-searches them. A text
of `lcdata eval`'s shorter than ``ngram`` words (5 at least: a question, a counterfactual
statement) is matched whole: its word sequence anywhere in a sample counts."""

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
from lcdata.stage import KEEP, Filter, Verdict, reject

_WORD = re.compile(r"\w+")
INDEX_VERSION = "3"
MIN_SHORT_WORDS = 5


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


def _strings(obj: Any, fields: frozenset[str] = frozenset(), inside: bool = True) -> Iterator[str]:
    """Every string value of ``obj``; with ``fields``, only those under one of these keys."""
    if isinstance(obj, str):
        if inside:
            yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, fields, inside or k in fields)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, fields, inside)


def _records(p: Path) -> Iterator[Any]:
    """The JSON objects of a .json file (one), a .jsonl file (one per line) or a .parquet file
    (its rows; a `lcdata eval --qa` file may be Parquet)."""
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(p).to_pylist()
    elif p.suffix == ".jsonl":
        for i, line in enumerate(p.read_text().splitlines()):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{i + 1}: not JSON ({e}); fix the line or use a .txt file") from None
    else:
        yield json.loads(p.read_text())


def eval_texts(cfg: DecontamFilter) -> Iterator[str]:
    d = eval_data_dir()
    names = {"hotpotqa": "hotpotqa.json", "squad": "squad.json", "paul_graham": "PaulGrahamEssays.json"}
    for src in cfg.sources:
        if src != "lcdata_eval":  # see short_texts
            yield from _strings(json.loads((d / names[src]).read_text()))
    fields = frozenset(cfg.fields)
    for f in cfg.files:
        p = Path(f)
        if not p.is_file():
            raise FileNotFoundError(f"filters.decontaminate.files: {p} not found; fix the path or remove it")
        if p.suffix not in (".json", ".jsonl", ".parquet"):
            yield p.read_text(errors="replace")
            continue
        found = 0
        for obj in _records(p):
            for t in _strings(obj, fields, not fields):
                found += 1
                yield t
        if fields and not found:
            raise ValueError(f"filters.decontaminate: {p} has no string under the keys {sorted(fields)} of "
                             "`decontaminate.fields`; name keys the file has, or leave `fields` empty (every string)")


def short_texts(cfg: DecontamFilter) -> Iterator[str]:
    """Texts matched whole however short (>= MIN_SHORT_WORDS words): only the eval suite's own,
    which are short on purpose. The shipped sets' short strings (titles, answers, 5-word
    sentences) would match ordinary prose, so only their n-grams count."""
    if "lcdata_eval" in cfg.sources:
        from lcdata.evals.suites import registered_texts

        yield from registered_texts()


class EvalIndex:
    """``hashes``: sorted n-gram hashes; ``short``: per word count k < n, sorted hashes of the
    whole k-word texts."""

    def __init__(self, hashes: np.ndarray, n: int, short: dict[int, np.ndarray] | None = None) -> None:
        self.hashes, self.n = hashes, n
        self.short = short or {}

    @classmethod
    def build(cls, cfg: DecontamFilter) -> EvalIndex:
        key = index_key(cfg)
        cache = Path(os.environ.get("LCDATA_CACHE", Path.home() / ".cache" / "lcdata")) / "decontam" / f"{key}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return cls(z["main"], cfg.ngram, {int(k[1:]): z[k] for k in z.files if k.startswith("k")})
        parts = [ngram_hashes(t, cfg.ngram) for t in eval_texts(cfg)]
        short: dict[int, list[np.ndarray]] = {}
        for t in short_texts(cfg):
            n_words = len(_WORD.findall(t))
            if n_words >= cfg.ngram:
                parts.append(ngram_hashes(t, cfg.ngram))
            elif n_words >= MIN_SHORT_WORDS:
                short.setdefault(n_words, []).append(ngram_hashes(t, n_words))
        hashes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        short_arr = {k: np.unique(np.concatenate(v)) for k, v in short.items()}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, main=hashes, **{f"k{k}": v for k, v in short_arr.items()})
        os.replace(tmp, cache)
        return cls(hashes, cfg.ngram, short_arr)

    @staticmethod
    def _count(table: np.ndarray, h: np.ndarray) -> int:
        if not len(h) or not len(table):
            return 0
        i = np.searchsorted(table, h)
        i[i >= len(table)] = 0
        return int((table[i] == h).sum())

    def matches(self, text: str) -> int:
        n = self._count(self.hashes, ngram_hashes(text, self.n))
        for k, table in self.short.items():
            n += self._count(table, ngram_hashes(text, k))
        return n


def index_key(cfg: DecontamFilter) -> str:
    """What the index is made of: the settings and each user file's path, mtime and size (an
    edited file is a new index, in the disk cache and in the process)."""
    files = [(f, st.st_mtime_ns, st.st_size) for f in cfg.files if Path(f).is_file() for st in [os.stat(f)]]
    return hashlib.sha256(json.dumps([INDEX_VERSION, cfg.ngram, cfg.sources, sorted(cfg.fields), files]).encode()).hexdigest()[:16]


_INDEXES: dict[str, EvalIndex] = {}


def eval_index(cfg: DecontamFilter) -> EvalIndex:
    """One index per process and content (building it reads ~100 MB of JSON once)."""
    key = index_key(cfg)
    with INIT_LOCK:  # two build threads must not both build (and write) it
        if key not in _INDEXES:
            _INDEXES[key] = EvalIndex.build(cfg)
        return _INDEXES[key]


class DecontamStage(Filter[Sample]):
    name = "decontaminate"

    def __init__(self, cfg: DecontamFilter) -> None:
        super().__init__()
        self.index = eval_index(cfg)

    def keep(self, s: Sample) -> Verdict:
        if s.purpose != PURPOSE_TRAIN:
            return KEEP  # evaluation samples are the registered texts themselves
        n = sum(self.index.matches(m["content"]) for m in s.messages)
        if n == 0:
            return KEEP
        return reject("contaminated", f"{n} word {self.index.n}-grams shared with the evaluation texts")
