"""The training loop: `lcdata train DIR [DIR ...] [--model PATH] [--section.key=value ...]`
(or `python -m train ...`). One visible loop; model, data and checkpoint helpers beside it.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from train.checkpoint import export_hf, load_checkpoint, save_checkpoint
from train.config import ConfigError, TrainConfig, apply_overrides, parse_cli_overrides
from train.data import DataError, Loader, PackedRows, Row
from train.model import load_model, packed_loss


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


def train(dirs: list[Path], cfg: TrainConfig, log: Any = print) -> dict[str, Any]:
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.run.seed)
    rows = PackedRows(dirs)
    loader = Loader(rows, cfg.data.order, cfg.data.seed)
    rows_per_step = max(1, math.ceil(cfg.batch.tokens_per_step / rows.seq_len))
    log(f"data: {len(rows):,} packed rows of seq_len {rows.seq_len:,} from {len(dirs)} dataset(s), "
        f"fill {rows.fill():.2%} (padding-free: the trainer never pads)")
    log(f"step: {rows_per_step} micro-batch(es) of 1 row = {rows_per_step * rows.seq_len:,} token slots, "
        f"~{int(rows.lengths.mean() * rows_per_step):,} real tokens/step; {cfg.run.steps} steps "
        f"= {cfg.run.steps * rows_per_step / len(rows):.2f} epochs")

    model = load_model(cfg.model.path, cfg.model.attention)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    log(f"model: {cfg.model.path} ({sum(p.numel() for p in params) / 1e6:.1f}M trainable params), "
        f"attention {cfg.model.attention}, bf16 autocast {cfg.model.autocast_bf16}")
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            weight_decay=cfg.optim.weight_decay)
    (out / "config.json").write_text(json.dumps(cfg.to_json(), indent=2) + "\n")

    start_step = 0
    ckpt = out / "checkpoint"
    if cfg.run.resume and (ckpt / "trainer_state.json").is_file():
        start_step = load_checkpoint(ckpt, model, opt, loader)
        log(f"resumed from {ckpt} at step {start_step}")
    log_path = out / "log.jsonl"
    if start_step == 0:
        log_path.write_text("")
    history: list[dict[str, Any]] = []

    for step in range(start_step, cfg.run.steps):
        t0 = time.perf_counter()
        batch = loader.next_rows(rows_per_step)
        denom = max(1, step_denominator(batch, cfg.loss.weighting))
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        loss_sum, n_tokens = 0.0, 0
        for row in batch:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.model.autocast_bf16):
                total, _ = packed_loss(model, row.input_ids, row.position_ids, row.labels, row.seq_lens,
                                       cfg.loss.weighting, cfg.loss.chunk_tokens)
            (total / denom).backward()
            loss_sum += float(total.detach())
            n_tokens += row.input_ids.shape[1]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip))
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        rec = {"step": step + 1, "loss": loss_sum / denom, "lr": lr, "grad_norm": grad_norm, "tokens": n_tokens,
               "tokens_per_s": n_tokens / dt, "seconds": dt, "peak_rss_mb": peak_rss_mb()}
        history.append(rec)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if (step + 1) % cfg.run.log_every == 0 or step + 1 == cfg.run.steps:
            log(f"step {step + 1:>5}/{cfg.run.steps}  loss {rec['loss']:.4f}  lr {lr:.2e}  "
                f"grad {grad_norm:.2f}  {rec['tokens_per_s']:,.0f} tok/s  peak {rec['peak_rss_mb']:,.0f} MB")
        if cfg.run.stop_at and step + 1 == cfg.run.stop_at:
            save_checkpoint(ckpt, model, opt, loader, step + 1, cfg)
            log(f"stopped after step {step + 1} (run.stop_at); rerun the same command to resume")
            return {"out": str(out), "checkpoint": str(ckpt), "history": history, "stopped": step + 1}
        if cfg.run.save_every and (step + 1) % cfg.run.save_every == 0 and step + 1 < cfg.run.steps:
            save_checkpoint(ckpt, model, opt, loader, step + 1, cfg)
    save_checkpoint(ckpt, model, opt, loader, cfg.run.steps, cfg)
    result: dict[str, Any] = {"out": str(out), "checkpoint": str(ckpt), "history": history}
    if cfg.run.export:
        result["final"] = str(export_hf(model, cfg.model.path, out / "final"))
    plot_losses(log_path, out / "loss.png")
    result["plot"] = str(out / "loss.png")
    return result


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
        train(dirs, cfg)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
