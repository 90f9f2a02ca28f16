"""Checkpoints that resume exactly, with no pickle on load.

OUT/checkpoint/
  model.safetensors     trainable weights (safetensors; tied weights handled)
  optimizer.pt          AdamW state: tensors and numbers only, loaded with weights_only=True
  rng.safetensors       torch RNG state
  trainer_state.json    step, loader state (epoch, cursor, seed), parallel mode
  config.json           the resolved training config
Written to a temp directory, then renamed: a crash never leaves half a checkpoint.

With ``parallel.mode=fsdp`` every process takes part in gathering the full weights and AdamW
state to rank 0's CPU (``torch.distributed.checkpoint.state_dict``), rank 0 writes the same
files (``model.safetensors`` holds the full weights; ``optimizer.pt`` is keyed by parameter
name), and a resume loads them on rank 0 and broadcasts them into the shards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from train.adapters import trainable_state


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any, step: int,
                    cfg: Any) -> None:
    def weights(f: Path) -> None:
        if all(p.requires_grad for p in model.parameters()):
            save_model(model, str(f))  # handles tied weights
        else:  # an adapter: only what trains (small)
            save_file(trainable_state(model), str(f))

    _write(path, weights, opt.state_dict(), loader, step, cfg, "ddp")


def save_sharded_checkpoint(path: Path, root: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any, step: int,
                            cfg: Any, rank: int) -> None:
    """FSDP: every rank calls this (the gathers are collective); rank 0 writes."""
    from train.fsdp import full_model_state, full_optim_state

    state, osd = full_model_state(root.model), full_optim_state(root, opt)
    if rank == 0:
        _write(path, lambda f: save_file({k: v.contiguous() for k, v in state.items()}, str(f)), osd, loader,
               step, cfg, "fsdp")
    torch.distributed.barrier()


def _write(path: Path, weights: Any, opt_state: dict[str, Any], loader: Any, step: int, cfg: Any,
           mode: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    weights(tmp / "model.safetensors")
    torch.save(opt_state, tmp / "optimizer.pt")
    save_file({"torch_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    state = {"step": step, "loader": loader.state(), "parallel": mode}
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def _trainer_state(path: Path, mode: str) -> dict[str, Any]:
    st = json.loads((path / "trainer_state.json").read_text())
    written = st.get("parallel", "ddp")
    if written != mode:
        raise ValueError(f"{path}: checkpoint written with parallel.mode={written}; resume with "
                         f"--parallel.mode={written}, or start in a new run.out")
    return st


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any) -> int:
    st = _trainer_state(path, "ddp")
    if all(p.requires_grad for p in model.parameters()):
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    else:
        state = load_file(str(path / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in trainable_state(model) if k not in state]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks trainable weights ({missing[:3]}...); resume with the "
                         "same model and adapter config, or start in a new run.out")
    if unexpected:
        raise ValueError(f"{path}: checkpoint has weights this model lacks ({unexpected[:3]}...); "
                         "resume with the same model and adapter config, or start in a new run.out")
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    loader.load_state(st["loader"])
    return int(st["step"])


def load_sharded_checkpoint(path: Path, root: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any,
                            rank: int) -> int:
    """FSDP: every rank calls this; rank 0 reads the weights and AdamW state and broadcasts them."""
    from train.fsdp import load_full_model_state, load_full_optim_state, tied_aliases

    st = _trainer_state(path, "fsdp")
    state = load_file(str(path / "model.safetensors")) if rank == 0 else {}
    if rank == 0:
        names = {n for n, _ in root.model.named_parameters()} | {n for n, _ in root.model.named_buffers()}
        unexpected = sorted(set(state) - names - set(tied_aliases(root.model)))
        missing = sorted(n for n, _ in root.model.named_parameters() if n not in state)
        if missing or unexpected:
            raise ValueError(f"{path}: checkpoint and model differ (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); resume with the same model, or start in a new run.out")
    load_full_model_state(root.model, state)
    load_full_optim_state(root, opt, torch.load(path / "optimizer.pt", weights_only=True) if rank == 0 else {})
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    loader.load_state(st["loader"])
    return int(st["step"])


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")


def export_hf(model: torch.nn.Module, base_dir: str | Path, out: Path, adapter: Any = None) -> Path:
    """A Hugging Face directory that transformers and vLLM load (standard attention). With an
    adapter, its small adapter-only files go to ``OUT/adapter`` too; LoRA is merged into the
    export, Gated Memory (a new architecture) is exported as the adapter only."""
    from train.adapters import save_adapter

    if adapter is not None and adapter.kind != "none":
        meta = ({"r": adapter.lora_r, "alpha": adapter.lora_alpha, "dropout": adapter.lora_dropout}
                if adapter.kind == "lora" else {"memory_slots": adapter.memory_slots, "gate_init": adapter.gate_init})
        save_adapter(model, out.parent / "adapter", adapter.kind, {"base_model": str(base_dir), **meta})
        if adapter.kind == "gated_memory":
            return out.parent / "adapter"
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    impl = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"
    try:
        model.save_pretrained(tmp)
    finally:
        model.config._attn_implementation = impl
    for name in TOKENIZER_FILES:
        src = Path(base_dir) / name
        if src.is_file() and not (tmp / name).exists():
            shutil.copy(src, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
