"""Crash safety: a build killed with SIGKILL at several points (mid-shard, after a shard,
while writing packed shards, between the manifest's temp write and its rename) and rerun
with the same command ends byte-identical to an uninterrupted build; and the same config
gives the same bytes whatever the number of workers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import free_port, stop_group

BIN = Path(sys.executable).parent


def digest(out: Path) -> dict[str, str]:
    files = sorted(out.glob("shards/*.arrow")) + [out / "manifest.json"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def build(cfg: Path, out: Path, crash: str | None = None, flow: bool = False, workers: int = 1) -> int:
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("LCDATA_CRASH_AT", None)
    if crash:
        env["LCDATA_CRASH_AT"] = crash
    cmd = [str(BIN / "lcdata"), "build", str(cfg), "--out", str(out)]
    cmd += ["--workers", str(workers)] if flow else ["--local"]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode


@pytest.fixture(scope="module")
def cfg_and_clean(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    cfg = {"name": "crash", "model": str(model_dir),
           "sources": [{"name": "sh", "kind": "shakespeare", "limit_groups": 2, "docs_per_shard": 5},
                       {"name": "std", "kind": "python_stdlib", "include": ["json/*"]}],
           "assemble": {"buckets": [1024, 2048]}, "tasks": [{"kind": "needles"}, {"kind": "kv_tracking"}],
           "pack": {"seq_len": 2048, "short_token_ratio": 0.3}, "shard": {"max_tokens": 60000}}
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert build(path, tmp / "clean") == 0
    return path, digest(tmp / "clean"), tmp


@pytest.mark.parametrize("point", ["tokenized", "shard_done", "pack", "manifest"])
def test_sigkill_then_rerun_gives_identical_bytes(cfg_and_clean, point):
    cfg, clean, tmp = cfg_and_clean
    assert len([k for k in clean if k.startswith("shard-")]) >= 2  # the pack point is mid-write
    out = tmp / f"killed-{point}"
    assert build(cfg, out, crash=point) == -9
    assert not (out / "manifest.json").is_file()  # an unfinished build never looks finished
    assert build(cfg, out) == 0
    assert digest(out) == clean


def test_same_bytes_whatever_the_number_of_workers(cfg_and_clean):
    cfg, clean, tmp = cfg_and_clean
    for w in (1, 3):
        out = tmp / f"flow-{w}"
        assert build(cfg, out, flow=True, workers=w) == 0
        assert digest(out) == clean, f"{w} workers"


def test_dask_cluster_gives_the_same_bytes(cfg_and_clean):
    """A Dask scheduler and 2 worker processes on 127.0.0.1 (started and stopped here, by PID)."""
    import time

    cfg, clean, tmp = cfg_and_clean
    root = Path(__file__).resolve().parent.parent
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root)}
    addr = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0"], env=env, cwd=root, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(3)
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", addr, "--nworkers", "2", "--nthreads", "1",
                                       "--dashboard-address", "127.0.0.1:0"], env=env, cwd=root,
                                      start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(addr, timeout=60) as c:
            c.wait_for_workers(2, timeout=120)
        out = tmp / "dask"
        r = subprocess.run([str(BIN / "lcdata"), "build", str(cfg), "--out", str(out), "--dask-address", addr],
                           env={**env, "PREFECT_LOGGING_LEVEL": "WARNING"}, cwd=root, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert digest(out) == clean
    finally:
        for p in reversed(procs):
            stop_group(p)
