"""Packed rows from lcdata shards: verified, memory-mapped, in a deterministic, resumable order.

Only ``lcdata.schema`` and ``lcdata.shards`` are imported from lcdata: the shard format is
the contract, not the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import torch

from lcdata.schema import IGNORE_INDEX, check_version
from lcdata.shards import SHARD_DIR, load_manifest, sha256_file


class DataError(ValueError):
    pass


@dataclass
class Row:
    input_ids: torch.Tensor  # (1, L) int64
    labels: torch.Tensor  # (1, L) int64, unshifted, IGNORE_INDEX where no loss
    position_ids: torch.Tensor  # (1, L) int64, restarting at 0 per sample
    seq_lens: list[int]

    @property
    def n_loss(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


class PackedRows:
    """All rows of one or more built datasets. Every shard is checked against its manifest
    (schema version, sha256) before anything is read."""

    def __init__(self, dirs: list[Path], verify: bool = True) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.tables: list[pa.Table] = []
        self.manifests: list[dict[str, Any]] = []
        where: list[tuple[int, int, int]] = []  # (table, batch, row in batch)
        lengths: list[np.ndarray] = []
        for d in dirs:
            d = Path(d)
            try:
                m = load_manifest(d)
            except (FileNotFoundError, ValueError) as e:
                raise DataError(str(e)) from None
            self.manifests.append(m)
            for s in m["shards"]:
                path = d / SHARD_DIR / s["path"]
                if not path.is_file():
                    raise DataError(f"{path}: listed in {d / 'manifest.json'} but missing; rebuild the dataset")
                size = path.stat().st_size
                if "bytes" in s and size != s["bytes"]:  # say how it differs, before opening a cut file
                    raise DataError(f"{path}: {size:,} bytes, but {d / 'manifest.json'} says {s['bytes']:,} "
                                    f"({'truncated' if size < s['bytes'] else 'grown'} after the build); "
                                    "rebuild the dataset or restore the file")
                if verify:
                    digest = sha256_file(path)
                    if digest != s["sha256"]:
                        raise DataError(
                            f"{path}: sha256 {digest[:16]}... does not match the manifest ({s['sha256'][:16]}...); "
                            "the shard changed after the build: rebuild the dataset or restore the file"
                        )
                reader = ipc.open_file(pa.memory_map(str(path)))
                try:
                    check_version(reader.schema, str(path))
                except ValueError as e:
                    raise DataError(str(e)) from None
                t = reader.read_all()
                ti = len(self.tables)
                self.tables.append(t)
                for bi, chunk in enumerate(t.column("input_ids").chunks):
                    where.extend((ti, bi, r) for r in range(len(chunk)))
                    lengths.append(np.diff(chunk.offsets.to_numpy()))
        if not where:
            raise DataError(f"no rows in {', '.join(map(str, dirs))}")
        self.where = np.asarray(where, dtype=np.int64)
        self.seq_len = max(m["seq_len"] for m in self.manifests)
        self.lengths = np.concatenate(lengths).astype(np.int64)

    def __len__(self) -> int:
        return len(self.where)

    def _cell(self, i: int, col: str) -> np.ndarray:
        t, b, r = self.where[i]
        return self.tables[t].column(col).chunk(int(b))[int(r)].values.to_numpy(zero_copy_only=False)

    def row(self, i: int) -> Row:
        def tens(col: str) -> torch.Tensor:
            return torch.from_numpy(self._cell(i, col).astype(np.int64)).unsqueeze(0)

        return Row(tens("input_ids"), tens("labels"), tens("position_ids"), self._cell(i, "seq_lens").tolist())

    def row_seq_lens(self, i: int) -> list[int]:
        return self._cell(i, "seq_lens").tolist()

    def fill(self) -> float:
        return float(self.lengths.sum() / (len(self) * self.seq_len))

    def longest_sample(self) -> int:
        """The most tokens of one sample (what the model's position window must cover)."""
        return max(int(pc.max(pc.list_flatten(t.column("seq_lens"))).as_py() or 0) for t in self.tables)

    def check_tokenizer(self, model_dir: str | Path) -> None:
        """Refuse a model whose ``tokenizer.json`` is not the one the dataset was tokenized with."""
        path = Path(model_dir) / "tokenizer.json"
        for d, m in zip(self.dirs, self.manifests, strict=True):
            want = m.get("tokenizer", {})
            if "sha256" not in want:
                continue
            if not path.is_file():
                raise DataError(f"{path} is missing: {d} was tokenized with {want.get('model')}/tokenizer.json; "
                                "train a model that ships its tokenizer.json")
            got = sha256_file(path)
            if got != want["sha256"]:
                raise DataError(f"the model's tokenizer differs from the dataset's: {path} has sha256 {got[:16]}..., "
                                f"{d} was tokenized with {want.get('model')}/tokenizer.json (sha256 "
                                f"{want['sha256'][:16]}...); train with --model={want.get('model')} (or a model with "
                                "its tokenizer), or rebuild the dataset with this model")


class _Stream:
    """One pool of rows in a deterministic per-epoch order."""

    def __init__(self, rows: PackedRows, idx: np.ndarray, order: str, seed: int, pool: int) -> None:
        self.rows, self.idx, self.order, self.seed, self.pool = rows, idx, order, seed, pool
        self.epoch, self.cursor = 0, 0
        self.perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        n = len(self.idx)
        if self.order == "sequential":
            return self.idx
        if self.order == "curriculum":
            return self.idx[np.lexsort((np.arange(n), self.rows.lengths[self.idx]))]
        return self.idx[np.random.default_rng([self.seed, self.pool, self.epoch]).permutation(n)]

    def next(self) -> int:
        if self.cursor == len(self.perm):
            self.epoch, self.cursor = self.epoch + 1, 0
            self.perm = self._permutation()
        self.cursor += 1
        return int(self.perm[self.cursor - 1])

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load(self, st: dict[str, int]) -> None:
        self.epoch, self.cursor = st["epoch"], st["cursor"]
        self.perm = self._permutation()


class Loader:
    """Deterministic row order by (seed, epoch); ``state()``/``load_state()`` resume exactly.

    With ``short_ratio``, rows whose samples are all ``<= short_max_tokens`` form a short
    pool and the rest a long pool; each pick takes from the pool that keeps the running share
    of short tokens closest to the ratio (the long:short mix against context-over-memory bias).
    """

    def __init__(self, rows: PackedRows, order: str, seed: int, short_ratio: float | None = None,
                 short_max_tokens: int = 2048) -> None:
        self.rows, self.seed, self.short_ratio = rows, seed, short_ratio
        if short_ratio is None:
            self.streams = [_Stream(rows, np.arange(len(rows)), order, seed, 0)]
        else:
            short = np.asarray([max(rows.row_seq_lens(i)) <= short_max_tokens for i in range(len(rows))])
            if short.all() or not short.any():
                kind = "short" if short.all() else "long"
                raise DataError(f"data.short_ratio={short_ratio} needs short and long rows, but every row is {kind} "
                                f"(short: all samples <= {short_max_tokens} tokens); give a dataset of each kind")
            self.streams = [_Stream(rows, np.flatnonzero(~short), order, seed, 0),
                            _Stream(rows, np.flatnonzero(short), order, seed, 1)]
        self.tokens = [0, 0]  # long, short tokens served so far

    def _pick(self) -> int:
        if len(self.streams) == 1:
            return 0
        total = self.tokens[0] + self.tokens[1]
        return 1 if total == 0 or self.tokens[1] / total < self.short_ratio else 0

    def next_rows(self, k: int) -> list[Row]:
        out = []
        for _ in range(k):
            pool = self._pick()
            i = self.streams[pool].next()
            self.tokens[pool] += int(self.rows.lengths[i])
            out.append(self.rows.row(i))
        return out

    @property
    def epoch(self) -> int:
        return self.streams[0].epoch

    def state(self) -> dict[str, Any]:
        return {"seed": self.seed, "streams": [s.state() for s in self.streams], "tokens": list(self.tokens)}

    def load_state(self, st: dict[str, Any]) -> None:
        if st["seed"] != self.seed:
            raise DataError(f"checkpoint was made with data.seed={st['seed']}, config has {self.seed}")
        if len(st["streams"]) != len(self.streams):
            raise DataError("checkpoint and config differ in data.short_ratio: resume with the same data config")
        for s, x in zip(self.streams, st["streams"], strict=True):
            s.load(x)
        self.tokens = list(st["tokens"])
