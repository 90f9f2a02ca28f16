"""The trainer: exact packed attention, masked loss, golden losses, exact resume, refusals,
and a real SmolLM2 smoke run on a shard the pipeline built."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from lcdata.schema import IGNORE_INDEX
from train.config import ConfigError, TrainConfig, apply_overrides
from train.data import DataError, Loader, PackedRows
from train.model import BACKENDS, backend_unavailable, load_model, packed_loss, packing_kwargs
from train.train import train

CHATS = [
    [{"role": "user", "content": "Name a colour of the sea."}, {"role": "assistant", "content": "Blue."}],
    [{"role": "user", "content": "What is two plus three? " * 8}, {"role": "assistant", "content": "Five, said twice: five."}],
    [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there!"}],
]


def packed_row(tok):
    enc = tok.encode_chats(CHATS)
    ids = torch.cat([torch.from_numpy(i.astype("int64")) for i, _ in enc])[None]
    labels = torch.cat([torch.from_numpy(l.astype("int64")) for _, l in enc])[None]
    pos = torch.cat([torch.arange(len(i)) for i, _ in enc])[None]
    return enc, ids, labels, pos, [len(i) for i, _ in enc]


@pytest.mark.parametrize("attention", BACKENDS)
@pytest.mark.parametrize("mode", ["eval", "train_ckpt"])
def test_packed_logits_equal_alone(model_dir, tok, attention, mode):
    """Each sample's logits inside a pack equal its logits run alone with HF's own eager
    attention (float32, tolerance 1e-4), in eval mode and in the training mode (train() with
    gradient checkpointing), for every backend this machine runs; sample boundaries are passed
    as the trainer passes them (cu_seq_lens from seq_lens)."""
    from transformers import AutoModelForCausalLM

    why = backend_unavailable(attention, torch.device("cpu"), half=False, training=False)
    if why:
        pytest.skip(f"{attention} on cpu: {why}")
    enc, ids, _, pos, lens = packed_row(tok)
    model = load_model(model_dir, attention)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    if mode == "train_ckpt":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    else:
        model.eval()
    ref.eval()
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos, use_cache=False, **packing_kwargs(lens, ids.device)).logits[0]
        start = 0
        for (i, _), n in zip(enc, lens):
            alone = ref(input_ids=torch.from_numpy(i.astype("int64"))[None], use_cache=False).logits[0]
            assert (packed[start:start + n] - alone).abs().max().item() < 1e-4
            start += n


def test_transformers_default_leaks_across_samples(model_dir, tok):
    """Why we register our own attention: plain sdpa with a cache ignores the packing."""
    from transformers import AutoModelForCausalLM

    enc, ids, _, pos, lens = packed_row(tok)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        leaky = plain(input_ids=ids, position_ids=pos, use_cache=True).logits[0]
        second = plain(input_ids=torch.from_numpy(enc[1][0].astype("int64"))[None], use_cache=False).logits[0]
    assert (leaky[lens[0]:lens[0] + lens[1]] - second).abs().max().item() > 1e-2


def test_packed_loss_equals_sum_of_hf_losses(model_dir, tok):
    """Masked, shifted, chunked loss of a pack == sum over samples of HF's own loss x tokens."""
    enc, ids, labels, pos, lens = packed_row(tok)
    model = load_model(model_dir).eval()
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        total, n = packed_loss(model, ids, pos, labels, lens, "token", chunk=3)
        expected, n_exp = 0.0, 0
        for i, l in enc:
            li = torch.from_numpy(l.astype("int64"))[None]
            k = int((li[0, 1:] != IGNORE_INDEX).sum())
            expected += ref(input_ids=torch.from_numpy(i.astype("int64"))[None], labels=li, use_cache=False).loss.item() * k
            n_exp += k
    assert n == n_exp
    assert abs(total.item() - expected) < 1e-3 * n


def test_no_target_crosses_a_sample_boundary(small_dataset):
    rows = PackedRows([small_dataset])
    for i in range(len(rows)):
        r = rows.row(i)
        targets = torch.full_like(r.labels, IGNORE_INDEX)
        targets[:, :-1] = r.labels[:, 1:]
        ends = torch.tensor(r.seq_lens).cumsum(0) - 1
        assert (targets[0, ends] == IGNORE_INDEX).all()


def tiny_cfg(tiny_model_dir, out, **over):
    cfg = TrainConfig()
    base = {"model.path": str(tiny_model_dir), "model.autocast_bf16": False, "run.out": str(out), "run.steps": 10,
            "batch.tokens_per_step": 1024, "optim.lr": 1e-3, "optim.warmup_steps": 2, "run.export": False}
    base.update(over)
    return apply_overrides(cfg, base)


# Losses of the first 10 steps of the tiny model (fixed init, seed 0) on the small dataset,
# float32, no autocast. Tolerance: 2e-3 absolute (CPU kernels differ slightly across ISAs).
# They also pin the data pipeline: a change in assembly, tasks or packing changes them.
GOLDEN = [10.8302095, 10.6948251, 10.5723877, 10.5144479, 10.5076614, 10.3081194, 10.2362590, 10.3348902,
          10.2357119, 10.2955894]


def test_golden_losses(tiny_model_dir, small_dataset, tmp_path):
    res = train([small_dataset], tiny_cfg(tiny_model_dir, tmp_path / "run"), log=lambda *_: None)
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 10 and all(x == x for x in losses)
    assert losses[-1] < losses[0]  # it learns
    assert losses == pytest.approx(GOLDEN, abs=2e-3)


def test_exact_resume(tiny_model_dir, small_dataset, tmp_path):
    full = train([small_dataset], tiny_cfg(tiny_model_dir, tmp_path / "a", **{"run.steps": 6}), log=lambda *_: None)
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "b", **{"run.steps": 6, "run.stop_at": 3})
    first = train([small_dataset], cfg, log=lambda *_: None)
    assert first["stopped"] == 3
    cfg.run.stop_at = 0
    second = train([small_dataset], cfg, log=lambda *_: None)
    resumed = [h["loss"] for h in first["history"]] + [h["loss"] for h in second["history"]]
    assert resumed == [h["loss"] for h in full["history"]]  # bit-identical
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_checksum_and_schema_refusals(small_dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_dataset, bad)
    shard = next((bad / "shards").glob("*.arrow"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{shard.name}: sha256 .* does not match the manifest"):
        PackedRows([bad])
    old = tmp_path / "old"
    shutil.copytree(small_dataset, old)
    m = json.loads((old / "manifest.json").read_text())
    m["schema_version"] = "0.9"
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="schema version 0.9"):
        PackedRows([old])
    with pytest.raises(DataError, match="not a finished lcdata build"):
        PackedRows([tmp_path])


def test_config_overrides_and_unknown_keys():
    cfg = apply_overrides(TrainConfig(), {"optim.lr": "3e-4", "run.steps": "7", "model.autocast_bf16": "false"})
    assert cfg.optim.lr == 3e-4 and cfg.run.steps == 7 and cfg.model.autocast_bf16 is False
    assert TrainConfig().model.autocast_bf16 is None  # auto: bf16 only where its matmuls are fast
    assert apply_overrides(TrainConfig(), {"model.autocast_bf16": "auto"}).model.autocast_bf16 is None
    assert apply_overrides(TrainConfig(), {"model.autocast_bf16": "on"}).model.autocast_bf16 is True
    with pytest.raises(ConfigError, match="autocast_bf16"):
        apply_overrides(TrainConfig(), {"model.autocast_bf16": "maybe"})
    with pytest.raises(ConfigError, match="unknown key `optim.lrr`"):
        apply_overrides(TrainConfig(), {"optim.lrr": "1"})
    with pytest.raises(ConfigError, match="unknown key `optimizer.lr`: no section `optimizer`"):
        apply_overrides(TrainConfig(), {"optimizer.lr": "1"})
    with pytest.raises(ConfigError, match="`data.order` must be one of"):
        apply_overrides(TrainConfig(), {"data.order": "random"})


def test_loader_order_is_deterministic(small_dataset):
    rows = PackedRows([small_dataset])
    a, b = Loader(rows, "shuffle", 1), Loader(rows, "shuffle", 1)
    assert [r.seq_lens for r in a.next_rows(len(rows) + 3)] == [r.seq_lens for r in b.next_rows(len(rows) + 3)]
    c = Loader(rows, "curriculum", 0)
    lens = [int(r.input_ids.shape[1]) for r in c.next_rows(len(rows))]
    assert lens == sorted(lens)


@pytest.mark.slow
def test_smollm2_smoke_run_via_cli(model_dir, small_dataset, tmp_path):
    out = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "lcdata.cli", "train", str(small_dataset), f"--model={model_dir}",
         f"--run.out={out}", "--run.steps=2", "--batch.tokens_per_step=512"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "tokens/step" in p.stdout + p.stderr or "token slots" in p.stdout + p.stderr
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(r["loss"] > 0 for r in log)
    assert (out / "loss.png").stat().st_size > 1000
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(out / "final")
    assert m.config._attn_implementation in ("sdpa", "eager")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(tiny_model_dir, small_dataset, tmp_path):
    """torchrun with 2 CPU processes (gloo, 127.0.0.1): same losses as one process, same global batch."""
    import os

    args = [str(small_dataset), f"--model={tiny_model_dir}", "--model.autocast_bf16=false", "--run.steps=3",
            "--batch.tokens_per_step=1024", "--optim.lr=1e-3", "--run.export=false"]
    one = train([small_dataset], tiny_cfg(tiny_model_dir, tmp_path / "one", **{"run.steps": 3}), log=lambda *_: None)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
                "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "-m", "train"]
    p = subprocess.run([*torchrun, *args, f"--run.out={tmp_path / 'two'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    two = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in two] == pytest.approx([h["loss"] for h in one["history"]], abs=1e-5)
    assert [r["tokens"] for r in two] == [h["tokens"] for h in one["history"]]


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory, model_dir):
    from lcdata.build import build_local
    from lcdata.config import parse_config

    out = tmp_path_factory.mktemp("long") / "ds"
    build_local(parse_config({
        "model": str(model_dir),
        "sources": [{"name": "sh", "kind": "shakespeare", "include": ["comedies/twelfth-night.md"]}],
        "assemble": {"buckets": [1536]}, "tasks": [{"kind": "needles"}], "pack": {"seq_len": 2048},
    }), out)
    return out


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_long_short_mix_by_token_ratio(small_dataset, long_dataset, ratio):
    rows = PackedRows([small_dataset, long_dataset])
    loader = Loader(rows, "shuffle", 0, short_ratio=ratio, short_max_tokens=600)
    picked = loader.next_rows(60)
    short = sum(r.input_ids.shape[1] for r in picked if max(r.seq_lens) <= 600)
    total = sum(r.input_ids.shape[1] for r in picked)
    assert abs(short / total - ratio) < 0.05
    # resumable: a loader restored from the state continues identically
    again = Loader(rows, "shuffle", 0, short_ratio=ratio, short_max_tokens=600)
    again.load_state(loader.state())
    assert [r.seq_lens for r in again.next_rows(10)] == [r.seq_lens for r in loader.next_rows(10)]
    with pytest.raises(DataError, match="needs short and long rows"):
        Loader(PackedRows([small_dataset]), "shuffle", 0, short_ratio=ratio, short_max_tokens=600)


def test_sequence_weighting_is_mean_of_sample_means(tiny_model_dir, tok):
    """LongAlign weighting: every sample counts once, whatever its number of loss tokens."""
    enc, ids, labels, pos, lens = packed_row(tok)
    model = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        total, _ = packed_loss(model, ids, pos, labels, lens, "sequence", chunk=2)
        means = []
        for i, l in enc:
            ti, li = torch.from_numpy(i.astype("int64"))[None], torch.from_numpy(l.astype("int64"))[None]
            s, k = packed_loss(model, ti, torch.arange(len(i))[None], li, [len(i)], "token", chunk=2)
            means.append(s.item() / k)
    assert total.item() == pytest.approx(sum(means), rel=1e-5)
    from train.data import Row
    from train.train import step_denominator

    assert step_denominator([Row(ids, labels, pos, lens)], "sequence") == len(lens)
