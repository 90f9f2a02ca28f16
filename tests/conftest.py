"""Shared fixtures: the real SmolLM2 tokenizer (prepared once) and small real configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
os.environ.setdefault("LCDATA_DATA", str(ROOT / "data"))


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from lcdata.model import is_prepared, prepare

    if not is_prepared(MODEL_DIR):
        prepare(MODEL_DIR)
    return MODEL_DIR


@pytest.fixture(scope="session")
def tok(model_dir: Path):
    from lcdata.tokenize import ChatTokenizer

    return ChatTokenizer(model_dir)


@pytest.fixture
def base_cfg(model_dir: Path):
    """A small real build: one play + the json package of the stdlib."""

    def make(**over):
        raw = {
            "name": "test",
            "model": str(model_dir),
            "sources": [
                {"name": "shakespeare", "kind": "shakespeare", "include": ["comedies/the-comedy-of-errors.md"]},
                {"name": "stdlib", "kind": "python_stdlib", "include": ["json/*"]},
            ],
            "assemble": {"buckets": [1024, 2048]},
            "tasks": [{"kind": "needles"}, {"kind": "kv_tracking"}],
            "pack": {"seq_len": 2048},
        }
        raw.update(over)
        return raw

    return make
