"""The training loop: `lcdata train DIR [DIR ...] [--model PATH] [--section.key=value ...]`
(or `python -m train ...`). One visible loop; model, data and checkpoint helpers beside it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from train.adapters import GatedMemorySpec, add_gated_memory, add_lora
from train.checkpoint import (
    export_hf,
    load_checkpoint,
    load_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from train.config import ConfigError, TrainConfig, apply_overrides, parse_cli_overrides
from train.data import DataError, Loader, PackedRows, Row
from train.fsdp import full_model_state, norm_value, shard_model, unsharded_copy
from train.memory import offload_activations, tile_mlps
from train.model import (
    check_window,
    fast_bf16,
    load_model,
    model_config,
    packed_loss,
    resolve_attention,
)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine down to lr * min_lr_ratio at the last step."""
    o, n = cfg.optim, cfg.run.steps
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, n - o.warmup_steps - 1)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def step_denominator(rows: list[Row], weighting: str) -> int:
    """What the step's summed loss is divided by: its loss tokens, or its samples with loss."""
    if weighting == "token":
        return sum(int((r.labels[0, 1:] != -100).sum()) for r in rows)
    n = 0
    for r in rows:
        start = 0
        for length in r.seq_lens:
            n += int((r.labels[0, start + 1:start + length] != -100).any())
            start += length
    return n


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Dist:
    """torchrun data parallel: each rank runs rows rank, rank+W, ... of every step and the
    gradients are summed over ranks (the loss is already divided by the *global* denominator,
    so the result equals one process running the whole step). ``ddp``: every rank holds the
    whole model and one all-reduce sums the gradients after the step's backward passes;
    ``fsdp``: FSDP2 shards the model and reduce-sums each layer's gradients during backward
    (train/fsdp.py). FSDP needs a process group even alone: one process gets a 1-rank group."""

    def __init__(self, mode: str = "ddp") -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.fsdp = mode == "fsdp"
        self.on = self.world > 1 or self.fsdp
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owned = self.on and not torch.distributed.is_initialized()
        if self.owned:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if "MASTER_ADDR" in os.environ:
                torch.distributed.init_process_group(backend)
            else:  # one process without torchrun
                torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                                                     rank=0, world_size=1)

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        if not self.on or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        i = 0
        for t in tensors:
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()

    def close(self) -> None:
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(dirs: list[Path], cfg: TrainConfig, log: Any = print) -> dict[str, Any]:
    dist = Dist(cfg.parallel.mode)
    try:
        return _train(dist, dirs, cfg, log if dist.rank == 0 else _quiet)
    finally:
        dist.close()


def _train(dist: Dist, dirs: list[Path], cfg: TrainConfig, log: Any) -> dict[str, Any]:
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.run.seed)
    rows = PackedRows(dirs)
    rows.check_tokenizer(cfg.model.path)
    mix = cfg.data.short_ratio if cfg.data.short_ratio >= 0 else None
    loader = Loader(rows, cfg.data.order, cfg.data.seed, mix, cfg.data.short_max_tokens)
    rows_per_step = max(1, math.ceil(cfg.batch.tokens_per_step / rows.seq_len))
    if rows_per_step < dist.world:
        raise ConfigError(f"`batch.tokens_per_step` gives {rows_per_step} row(s) per step, fewer than the "
                          f"{dist.world} processes: raise it to >= {dist.world * rows.seq_len}")
    if dist.fsdp and rows_per_step % dist.world:
        raise ConfigError(f"`parallel.mode=fsdp` runs the same number of rows on every process (each forward "
                          f"gathers weights from all of them); `batch.tokens_per_step` gives {rows_per_step} rows "
                          f"for {dist.world} processes: make it a multiple of {dist.world * rows.seq_len}")
    log(f"data: {len(rows):,} packed rows of seq_len {rows.seq_len:,} from {len(dirs)} dataset(s), "
        f"fill {rows.fill():.2%} (padding-free: the trainer never pads)")
    log(f"step: {rows_per_step} micro-batch(es) of 1 row over {dist.world} process(es) = "
        f"{rows_per_step * rows.seq_len:,} token slots, ~{int(rows.lengths.mean() * rows_per_step):,} real "
        f"tokens/step; {cfg.run.steps} steps = {cfg.run.steps * rows_per_step / len(rows):.2f} epochs")

    bf16 = fast_bf16(dist.device) if cfg.model.autocast_bf16 is None else cfg.model.autocast_bf16
    attention = resolve_attention(cfg.model.attention, dist.device, bf16)
    config = model_config(cfg.model)  # with model.rope_theta / rope_scaling applied
    check_window(config, rows.longest_sample(), cfg.model)
    model = load_model(cfg.model.path, attention, config=config)
    if not dist.fsdp:  # fsdp moves each layer's shard to the device as it shards it
        model = model.to(dist.device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    a = cfg.adapter
    if a.kind == "lora":
        model = add_lora(model, a.lora_r, a.lora_alpha, a.lora_dropout)
    elif a.kind == "gated_memory":
        model = add_gated_memory(model, GatedMemorySpec(a.memory_slots, a.gate_init), attention)
    tiled = tile_mlps(model, cfg.memory.mlp_tile_tokens) if cfg.memory.mlp_tile_tokens else 0
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if dist.fsdp:  # bf16 becomes FSDP's parameter dtype (float32 master weights and reduction), not autocast
        loss_fn: Any = shard_model(model.train(), dist.device, dist.world, bf16)
        params = [p for p in loss_fn.parameters() if p.requires_grad]
    else:
        model.to(dist.device).train()
        loss_fn = functools.partial(packed_loss, model)
        params = [p for p in model.parameters() if p.requires_grad]
    autocast = bf16 and not dist.fsdp
    log(f"model: {cfg.model.path} ({n_params / 1e6:.1f}M trainable params), "
        f"adapter {a.kind}, attention {attention}, bf16 {'params (fsdp)' if dist.fsdp else 'autocast'} "
        f"{bf16}{' (auto)' if cfg.model.autocast_bf16 is None else ''}, device {dist.device}")
    log(f"parallel: {cfg.parallel.mode} over {dist.world} process(es)"
        f"{f', each holding 1/{dist.world} of weights, grads and AdamW state' if dist.fsdp else ''}; memory: "
        f"MLP tiles {f'of {cfg.memory.mlp_tile_tokens:,} tokens ({tiled} layers)' if tiled else 'off'}, "
        f"activation offload {'on' if cfg.memory.offload_activations else 'off'}"
        f"{' (no effect on CPU)' if cfg.memory.offload_activations and dist.device.type == 'cpu' else ''}")
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            weight_decay=cfg.optim.weight_decay)
    if dist.rank == 0:
        (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2) + "\n")

    start_step = 0
    ckpt = out / "checkpoint"
    if cfg.run.resume and (ckpt / "trainer_state.json").is_file():
        start_step = (load_sharded_checkpoint(ckpt, loss_fn, opt, loader, dist.rank) if dist.fsdp
                      else load_checkpoint(ckpt, model, opt, loader))
        log(f"resumed from {ckpt} at step {start_step}")
    log_path = out / "log.jsonl"
    if start_step == 0 and dist.rank == 0:
        log_path.write_text("")
    history: list[dict[str, Any]] = []

    def save(step: int) -> None:
        if dist.fsdp:
            save_sharded_checkpoint(ckpt, loss_fn, opt, loader, step, cfg, dist.rank)
        elif dist.rank == 0:
            save_checkpoint(ckpt, model, opt, loader, step, cfg)

    for step in range(start_step, cfg.run.steps):
        t0 = time.perf_counter()
        batch = loader.next_rows(rows_per_step)  # every rank reads the same step ...
        denom = max(1, step_denominator(batch, cfg.loss.weighting))
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        stats = torch.zeros(2, dtype=torch.float64, device=dist.device)  # loss sum, tokens
        for row in batch[dist.rank::dist.world]:  # ... and runs its share of the rows
            with (torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=autocast),
                  offload_activations(cfg.memory.offload_activations, dist.device)):
                total, _ = loss_fn(row.input_ids.to(dist.device), row.position_ids.to(dist.device),
                                   row.labels.to(dist.device), row.seq_lens, cfg.loss.weighting, cfg.loss.chunk_tokens)
            (total / denom).backward()  # fsdp: each layer's gradients are reduce-summed here
            stats += torch.tensor([float(total.detach()), row.input_ids.shape[1]], dtype=torch.float64,
                                  device=dist.device)
        if dist.fsdp:
            dist.all_reduce_([stats])
        else:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            dist.all_reduce_(grads + [stats])
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        grad_norm = norm_value(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        rec = {"step": step + 1, "loss": float(stats[0]) / denom, "lr": lr, "grad_norm": grad_norm,
               "tokens": int(stats[1]), "tokens_per_s": float(stats[1]) / dt, "seconds": dt,
               "peak_rss_mb": peak_rss_mb()}
        history.append(rec)
        if dist.rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if (step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.run.steps:
            log(f"step {step + 1:>5}/{cfg.run.steps}  loss {rec['loss']:.4f}  lr {lr:.2e}  "
                f"grad {grad_norm:.2f}  {rec['tokens_per_s']:,.0f} tok/s  peak {rec['peak_rss_mb']:,.0f} MB")
        if cfg.run.stop_at and step + 1 == cfg.run.stop_at:
            save(step + 1)
            log(f"stopped after step {step + 1} (run.stop_at); rerun the same command to resume")
            return {"out": str(out), "checkpoint": str(ckpt), "history": history, "stopped": step + 1}
        if cfg.run.save_every and (step + 1) % cfg.run.save_every == 0 and step + 1 < cfg.run.steps:
            save(step + 1)
    save(cfg.run.steps)
    result: dict[str, Any] = {"out": str(out), "checkpoint": str(ckpt), "history": history}
    full = full_model_state(model) if dist.fsdp and cfg.run.export else None  # collective
    if dist.rank == 0:
        if cfg.run.export:
            plain = unsharded_copy(model, full) if full is not None else model
            result["final"] = str(export_hf(plain, cfg.model.path, out / "final", cfg.adapter))
        plot_losses(log_path, out / "loss.png")
        result["plot"] = str(out / "loss.png")
    return result


def _quiet(*args: Any) -> None:
    pass


def plot_losses(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per loss token)")
    ax.set_title("lcdata train")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dirs = [Path(a) for a in argv if not a.startswith("--")]
    flags = [a for a in argv if a.startswith("--")]
    model = None
    rest = []
    for a in flags:
        if a.startswith("--model="):
            model = a.split("=", 1)[1]
        else:
            rest.append(a)
    try:
        over = parse_cli_overrides(rest)
        if model:
            over["model.path"] = model
        cfg = apply_overrides(TrainConfig(), over)
        if not dirs:
            raise ConfigError("usage: lcdata train DIR [DIR ...] [--model=PATH] [--section.key=value ...]")
        from rich.console import Console

        console = Console(emoji=False)
        train(dirs, cfg, log=lambda msg: console.print(msg, markup=False, highlight=False))
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
