"""Shared fixtures: the real SmolLM2 tokenizer (prepared once) and small real configs."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "models" / "smollm2-135m-instruct"
os.environ.setdefault("LCDATA_DATA", str(ROOT / "data"))
# Prefect's home (its sqlite database) private to this test session, for the commands the tests
# start too: ~/.prefect is shared with every other run on the machine, and a database migrated
# by a newer Prefect stops this one's ephemeral server from starting (README "Install").
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lcdata-test-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from lcdata.model import is_prepared, prepare

    if not is_prepared(MODEL_DIR):
        prepare(MODEL_DIR)
    return MODEL_DIR


@pytest.fixture(scope="session")
def tok(model_dir: Path):
    from lcdata.chat import ChatTokenizer

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, model_dir) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and a fixed random init (seed 0)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(model_dir / f, d / f)
    return d


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, model_dir) -> Path:
    """A real built dataset with short rows (seq_len 512): one play, needles + kv tracking."""
    from lcdata.build import build_local
    from lcdata.config import parse_config

    out = tmp_path_factory.mktemp("small") / "ds"
    cfg = parse_config({
        "model": str(model_dir),
        "sources": [{"name": "sh", "kind": "shakespeare", "include": ["comedies/the-comedy-of-errors.md"]}],
        "assemble": {"buckets": [512], "reserve_tokens": 128},
        "tasks": [{"kind": "needles", "n_needles": 2, "n_queried": 1}, {"kind": "kv_tracking", "chain_len": 2}],
        "pack": {"seq_len": 512},
    })
    build_local(cfg, out)
    return out


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server a test starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(p) -> None:  # noqa: ANN001 - a subprocess.Popen started with start_new_session=True
    """Stop a server the test started, with its children: SIGTERM to its process group, then SIGKILL."""
    import signal
    import subprocess

    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
