"""Checkpoints that resume exactly, with no pickle on load.

OUT/checkpoint/
  model.safetensors     trainable weights (safetensors; tied weights handled)
  optimizer.pt          AdamW state: tensors and numbers only, loaded with weights_only=True
  rng.safetensors       torch RNG state
  trainer_state.json    step, loader state (epoch, cursor, seed)
  config.json           the resolved training config
Written to a temp directory, then renamed: a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model


def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any, step: int,
                    cfg: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    save_file({"torch_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "loader": loader.state()}, indent=2) + "\n")
    (tmp / "config.json").write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any) -> int:
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if unexpected:
        raise ValueError(f"{path}: checkpoint has weights this model lacks ({unexpected[:3]}...); "
                         "resume with the same model and adapter config, or start in a new run.out")
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    st = json.loads((path / "trainer_state.json").read_text())
    loader.load_state(st["loader"])
    return int(st["step"])


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")


def export_hf(model: torch.nn.Module, base_dir: str | Path, out: Path) -> Path:
    """A Hugging Face directory that transformers and vLLM load (standard attention)."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
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
