"""The build flow: plan input shards, map one task per shard, then pack and write.

Thin by design: every step is a function of ``lcdata.build``; tasks get the resolved
config (a small dict), one input shard's file list and the output path, and return small
stats dicts. Resume comes from the per-shard ``_DONE`` markers: a rerun of the same
command skips finished shards and rewrites only what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Offline-friendly Prefect defaults (see ../shared/PLATFORM.md); the user's env wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow, task, unmapped  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from rich.progress import MofNCompleteColumn, Progress  # noqa: E402

from lcdata import build as B  # noqa: E402
from lcdata.config import parse_config  # noqa: E402


@task(name="process-input-shard", cache_policy=NONE)
def process_shard_task(cfg_json: dict[str, Any], shard: dict[str, Any], out: str) -> dict[str, Any]:
    return B.process_input_shard(parse_config(cfg_json), shard, Path(out))


@task(name="pack-and-write", cache_policy=NONE)
def pack_task(cfg_json: dict[str, Any], stats: list[dict[str, Any]], out: str) -> dict[str, Any]:
    m = B.pack_and_write(parse_config(cfg_json), stats, Path(out))
    return {"totals": m["totals"], "shards": len(m["shards"])}


@flow(name="lcdata-build", log_prints=True)
def build_flow(cfg_json: dict[str, Any], out: str) -> dict[str, Any]:
    cfg = parse_config(cfg_json)
    shards = B.plan_build(cfg)  # plan first: a bad source path fails before anything is written
    B.prepare_output(cfg, Path(out))
    print(f"lcdata build: {len(shards)} input shard(s) -> {out}")
    dd = B.dedup_documents(cfg, shards, Path(out))  # whole-build step: before any shard task
    if dd:
        print(f"document dedup: {dd['duplicates']} near-duplicate(s) of {dd['documents']} documents")
    futures = process_shard_task.map(unmapped(cfg_json), shards, unmapped(out))
    stats = []
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), transient=False) as bar:
        job = bar.add_task("input shards", total=len(futures))
        for f in as_completed(futures):
            stats.append(f.result())
            bar.advance(job)
    return pack_task(cfg_json, stats, out)


def run_build(cfg_json: dict[str, Any], out: str | Path, workers: int = 2) -> dict[str, Any]:
    """Run the flow with a thread pool of ``workers`` (ephemeral Prefect server if no API URL)."""
    flow_ = build_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    return flow_(cfg_json, str(Path(out).resolve()))
