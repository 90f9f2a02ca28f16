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
        self.tables: list[pa.Table] = []
        self.manifests: list[dict[str, Any]] = []
        where: list[tuple[int, int, int]] = []  # (table, batch, row in batch)
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
        if not where:
            raise DataError(f"no rows in {', '.join(map(str, dirs))}")
        self.where = np.asarray(where, dtype=np.int64)
        self.seq_len = max(m["seq_len"] for m in self.manifests)
        self.lengths = np.asarray([self._len(i) for i in range(len(self.where))], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.where)

    def _cell(self, i: int, col: str) -> np.ndarray:
        t, b, r = self.where[i]
        return self.tables[t].column(col).chunk(int(b))[int(r)].values.to_numpy(zero_copy_only=False)

    def _len(self, i: int) -> int:
        t, b, r = self.where[i]
        return len(self.tables[t].column("input_ids").chunk(int(b))[int(r)].values)

    def row(self, i: int) -> Row:
        def tens(col: str) -> torch.Tensor:
            return torch.from_numpy(self._cell(i, col).astype(np.int64)).unsqueeze(0)

        return Row(tens("input_ids"), tens("labels"), tens("position_ids"), self._cell(i, "seq_lens").tolist())

    def fill(self) -> float:
        return float(self.lengths.sum() / (len(self) * self.seq_len))


class Loader:
    """Deterministic row order by (seed, epoch); ``state()``/``load_state()`` resume exactly."""

    def __init__(self, rows: PackedRows, order: str, seed: int) -> None:
        self.rows, self.order, self.seed = rows, order, seed
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        n = len(self.rows)
        if self.order == "sequential":
            return np.arange(n)
        if self.order == "curriculum":
            return np.lexsort((np.arange(n), self.rows.lengths))
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def next_rows(self, k: int) -> list[Row]:
        out = []
        for _ in range(k):
            if self.cursor == len(self._perm):
                self.epoch += 1
                self.cursor = 0
                self._perm = self._permutation(self.epoch)
            out.append(self.rows.row(int(self._perm[self.cursor])))
            self.cursor += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state(self, st: dict[str, int]) -> None:
        if st["seed"] != self.seed:
            raise DataError(f"checkpoint was made with data.seed={st['seed']}, config has {self.seed}")
        self.epoch, self.cursor = st["epoch"], st["cursor"]
        self._perm = self._permutation(self.epoch)
