"""The engine's settings per device (a pure function: no GPU, no vLLM), the config's refusal
of LLM work that cannot fit `engine.max_model_len`, and a model directory's own window."""

from __future__ import annotations

import json

import pytest

from lcdata.config import ConfigError, parse_config
from lcdata.engine import EngineConfig, engine_settings, model_window

CPU_ONLY = {"VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_ATTN_SPLIT_KV", "VLLM_CPU_NUM_OF_RESERVED_CPU",
            "VLLM_ENABLE_V1_MULTIPROCESSING"}


def test_cpu_settings_keep_the_cpu_workarounds():
    st = engine_settings(EngineConfig(kv_cache_gib=3.5), "cpu", cpu_count=2)
    assert st.env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_ATTN_SPLIT_KV": "0"}
    assert st.env_defaults == {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert st.llm["enforce_eager"] is True and "gpu_memory_utilization" not in st.llm
    assert (st.sync_grammar, st.reseed_calls, st.request_seeds, st.reset_prefix_cache) == (True, True, False, True)
    # a big machine keeps vLLM's reserved core; reproducible off is vLLM's defaults
    st = engine_settings(EngineConfig(reproducible=False, enforce_eager=False), "cpu", cpu_count=64)
    assert st.env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_ATTN_SPLIT_KV": "1"}
    assert st.env_defaults == {"VLLM_CPU_KVCACHE_SPACE": "4"} and st.llm["enforce_eager"] is False
    assert (st.sync_grammar, st.reseed_calls, st.reset_prefix_cache) == (False, False, False)


def test_gpu_settings_have_no_cpu_workarounds():
    cfg = EngineConfig(model="m", max_model_len=32768, gpu_memory_utilization=0.85, tensor_parallel_size=2)
    st = engine_settings(cfg, "cuda", cpu_count=2, capability=(9, 0))
    assert st.env == {"VLLM_BATCH_INVARIANT": "1"} and st.env_defaults == {}
    assert not CPU_ONLY & set(st.env) and not CPU_ONLY & set(st.env_defaults)
    assert st.llm == {"model": "m", "dtype": "bfloat16", "max_model_len": 32768, "tensor_parallel_size": 2,
                      "seed": 0, "trust_remote_code": False, "enforce_eager": False, "gpu_memory_utilization": 0.85}
    assert (st.sync_grammar, st.reseed_calls, st.request_seeds, st.reset_prefix_cache) == (False, False, True, True)
    st = engine_settings(cfg.model_copy(update={"reproducible": False, "enforce_eager": True}), "cuda")
    assert st.env == {"VLLM_BATCH_INVARIANT": "0"} and st.llm["enforce_eager"] is True
    with pytest.raises(ValueError, match="compute capability >= 8.0.*7.5: set `engine.reproducible: false`"):
        engine_settings(cfg, "cuda", capability=(7, 5))
    assert engine_settings(cfg.model_copy(update={"reproducible": False}), "cuda", capability=(7, 5)).env == \
        {"VLLM_BATCH_INVARIANT": "0"}


def test_gpu_request_seeds_differ_per_attempt():
    from lcdata.engine import Request, request_seed

    cfg = EngineConfig()
    a, b = (Request([{"role": "user", "content": "q"}], None, f"v1#try{i}", 32) for i in (0, 1))
    assert request_seed(cfg, a) != request_seed(cfg, b) and 0 <= request_seed(cfg, a) < 2**63
    assert request_seed(cfg, a) == request_seed(cfg, Request(a.messages, None, "v1#try0", 32))


def cfg_with(model_dir, **over):
    raw = {"model": str(model_dir), "sources": [{"name": "sh", "kind": "shakespeare"}],
           "assemble": {"buckets": [4096, 16384]}, "pack": {"seq_len": 16384},
           "engine": {"max_model_len": 8192}}
    raw.update(over)
    return parse_config(raw)


def test_verify_over_contexts_longer_than_the_engine_window_is_refused(model_dir):
    with pytest.raises(ConfigError) as e:
        cfg_with(model_dir, tasks=[{"kind": "multihop"}], filters={"verify": {"enabled": True}})
    msg = str(e.value)
    assert "task `multihop`" in msg and "largest bucket (16384" in msg and "needs 16320 tokens > " \
        "engine.max_model_len 8192" in msg
    assert "raise `engine.max_model_len` to 16320" in msg and "lower the bucket to 8256" in msg
    # the fixes it names load
    cfg_with(model_dir, tasks=[{"kind": "multihop"}], filters={"verify": {"enabled": True}},
             engine={"max_model_len": 16320})
    cfg_with(model_dir, tasks=[{"kind": "multihop"}], filters={"verify": {"enabled": True}},
             assemble={"buckets": [4096, 8256]})
    # verify of tasks not in the build, or none: nothing asks with the whole context
    cfg_with(model_dir, tasks=[{"kind": "summary"}], filters={"verify": {"enabled": True}})
    cfg_with(model_dir, tasks=[{"kind": "multihop"}, {"kind": "compare"}])


def test_a_task_whose_prompts_exceed_the_window_is_refused_and_summary_is_not(model_dir):
    with pytest.raises(ConfigError, match=r"task `short_qa`: its prompts show a window of 2048 tokens, which with "
                       r"instructions and max_tokens 384 needs at least 2560 tokens > engine.max_model_len 2048; "
                       r"raise `engine.max_model_len` .* or lower `tasks.short_qa.window_tokens`"):
        cfg_with(model_dir, tasks=[{"kind": "short_qa", "window_tokens": 2048}], engine={"max_model_len": 2048})
    with pytest.raises(ConfigError, match=r"task `compare`: its prompts show 2 sections of 20000 chars.*"
                       r"`tasks.compare.chunk_chars`"):
        cfg_with(model_dir, tasks=[{"kind": "compare", "chunk_chars": 20000}])
    with pytest.raises(ConfigError, match=r"task `lift`.*a segment of 8192 tokens"):
        cfg_with(model_dir, tasks=[{"kind": "lift", "segment_tokens": 8192, "stride_tokens": 8192}])
    # map-reduce: summaries of 16K contexts with an 8K engine, and sections larger than the window
    cfg_with(model_dir, tasks=[{"kind": "summary", "max_section_chars": 60000}])
    # LIFT memorization alone, and composed multi-hop (a line per prompt), need no room
    cfg_with(model_dir, tasks=[{"kind": "lift", "segment_tokens": 8192, "stride_tokens": 8192, "qa_per_segment": 0},
                               {"kind": "multihop", "chunk_chars": 50000}], engine={"max_model_len": 1024})


@pytest.mark.parametrize(("config", "tokenizer", "window"), [
    ({"max_position_embeddings": 8192, "rope_parameters": {"rope_type": "default", "rope_theta": 1e5}}, None, 8192),
    ({"max_position_embeddings": 8192, "rope_scaling": {"type": "linear", "factor": 4.0}}, None, 32768),
    ({"max_position_embeddings": 8192, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, None, 16384),
    # YaRN and llama3 configs state the extended length themselves (transformers, vLLM)
    ({"max_position_embeddings": 32768, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                         "original_max_position_embeddings": 8192}}, None, 32768),
    ({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, None, 131072),
    ({"max_position_embeddings": 8192}, {"model_max_length": 4096}, 4096),
    ({"n_positions": 1024}, {"model_max_length": 1e30}, 1024),
    ({}, None, 2048),
])
def test_a_model_window_is_derived_as_vllm_does(tmp_path, config, tokenizer, window):
    (tmp_path / "config.json").write_text(json.dumps(config))
    if tokenizer is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    assert model_window(tmp_path) == window


def test_smollm2_window(model_dir):
    assert model_window(model_dir) == 8192
