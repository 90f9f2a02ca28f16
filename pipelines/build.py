"""The build flow: ``lcdata.build.run_build`` with a runner that maps one Prefect task per
input shard (on a thread pool, or on Dask workers).

Thin by design: the orchestration and the stage order live in ``lcdata`` (``build.run_build``,
``pipeline.shard_pipeline``); tasks get the resolved config (a small dict), one input shard's
file list and the output path, and return small stats dicts. Resume comes from the per-shard
``_DONE`` markers: a rerun of the same command skips finished shards and rewrites only what
is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Offline-friendly Prefect defaults (see ../shared/PLATFORM.md); the user's env wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The ephemeral API server gets 20 s to start by default: too little on a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

from prefect import flow, task, unmapped  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from rich.progress import MofNCompleteColumn, Progress  # noqa: E402

from lcdata import build as B  # noqa: E402
from lcdata.config import BuildConfig, dump_config, parse_config  # noqa: E402


@task(name="process-input-shard", cache_policy=NONE)
def process_shard_task(cfg_json: dict[str, Any], shard: dict[str, Any], out: str) -> dict[str, Any]:
    return B.process_input_shard(parse_config(cfg_json), shard, Path(out))


@task(name="pack-and-write", cache_policy=NONE)
def pack_task(cfg_json: dict[str, Any], stats: list[dict[str, Any]], out: str) -> dict[str, Any]:
    m = B.pack_and_write(parse_config(cfg_json), stats, Path(out))
    _publish_artifact(m, stats, out)
    return m


class PrefectRunner:
    """Maps ``process_shard_task`` over the input shards on the flow's task runner (a thread
    pool, or Dask workers), then packs in ``pack_task``; tasks get the resolved config (a
    small dict), one shard's file list and the output path, and return small stats dicts."""

    def map_shards(self, cfg: BuildConfig, shards: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
        futures = process_shard_task.map(unmapped(dump_config(cfg)), shards, unmapped(str(out)))
        stats = []
        try:
            with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), transient=False) as bar:
                job = bar.add_task("input shards", total=len(futures))
                for f in as_completed(futures):
                    stats.append(f.result())
                    bar.advance(job)
        except BaseException:
            # the build's lock is released when this raises: no shard task may still be writing
            # then, or a rerun would work under it. Cancel those not started, wait for the rest.
            for f in futures:
                wrapped = getattr(f, "wrapped_future", None)
                if wrapped is not None:
                    wrapped.cancel()
            for f in futures:
                try:
                    f.wait()
                except BaseException:  # noqa: S110 - the first error is the one reported
                    pass
            raise
        return stats

    def pack(self, cfg: BuildConfig, stats: list[dict[str, Any]], out: Path) -> dict[str, Any]:
        return pack_task(dump_config(cfg), stats, str(out))


def _publish_artifact(m: dict[str, Any], stats: list[dict[str, Any]], out: str) -> None:
    """A table artifact per build (Prefect UI -> Artifacts): counts, drops, fill, timings."""
    from prefect.artifacts import create_table_artifact

    rows = [{"stage": k, "in": v["in"], "out": v["out"],
             "dropped": ", ".join(f"{r}={n}" for r, n in v["dropped"].items()) or "-"}
            for k, v in m["lineage"]["stages"].items()]
    t = m["totals"]
    rows.append({"stage": "TOTAL", "in": t["samples"], "out": t["rows"],
                 "dropped": f"rows {t['rows']}, tokens {t['tokens']}, fill {t['fill']:.2%}, "
                            f"shard seconds {sum(s['seconds'] for s in stats):.1f}"})
    create_table_artifact(key="lcdata-build", table=rows, description=f"lcdata build {m['name']} -> {out}")


@flow(name="lcdata-build", log_prints=True)
def build_flow(cfg_json: dict[str, Any], out: str) -> dict[str, Any]:
    """``lcdata.build.run_build`` with the shards and the pack run as Prefect tasks."""
    m = B.run_build(parse_config(cfg_json), Path(out), PrefectRunner(), say=print)
    return {"totals": m["totals"], "shards": len(m["shards"])}


def update_latest(out_root: Path, version: str) -> None:
    """Point ``OUT_ROOT/latest`` at ``version`` atomically (symlink, then rename over)."""
    tmp = out_root / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(version, tmp)
    os.replace(tmp, out_root / "latest")


@flow(name="lcdata-scheduled-build", log_prints=True)
def scheduled_build(config: str, out_root: str, workers: int = 2) -> dict[str, Any]:
    """What a deployment runs: build ``config`` into ``OUT_ROOT/<scheduled UTC time>/`` and move
    ``OUT_ROOT/latest`` to it only once the manifest is written. A retried run of the same
    schedule slot resumes in the same directory."""
    from datetime import UTC, datetime

    from prefect.runtime import flow_run

    from lcdata.config import load_config

    when = flow_run.scheduled_start_time or datetime.now(UTC)
    version = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = Path(out_root)
    out = root / version
    cfg = load_config(config)
    print(f"scheduled build {cfg.name}: {out}")
    result = build_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))(dump_config(cfg), str(out))
    update_latest(root, version)
    return {"version": version, "out": str(out), **result}


def deploy_schedule(config: Path, out_root: Path, cron: str, name: str, pool: str, workers: int = 2) -> str:
    """Create the process work pool if missing and deploy ``scheduled_build`` from this
    repository with a cron schedule; returns the deployment id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            pass
    root = Path(__file__).resolve().parent.parent
    dep = scheduled_build.from_source(source=str(root), entrypoint="pipelines/build.py:scheduled_build")
    return str(dep.deploy(name=name, work_pool_name=pool, cron=cron, build=False, push=False, print_next_steps=False,
                          parameters={"config": str(config), "out_root": str(out_root), "workers": workers}))


class PrefectDatabaseError(RuntimeError):
    pass


def check_ephemeral_database() -> None:
    """Without an API URL the flow starts Prefect's ephemeral server on the local database.
    One migrated by a newer Prefect (a revision this Prefect does not know) makes that server
    fail to start after a long timeout with no reason given: stop at once, saying what to do."""
    import sqlite3

    import prefect
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_API_URL

    url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    if PREFECT_API_URL.value() or not url.startswith("sqlite"):
        return
    db = Path(url.split(":///", 1)[-1]).expanduser()
    if not db.is_file():
        return
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            (rev,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except (sqlite3.Error, TypeError):
        return  # not ours to judge: Prefect reports its own errors
    versions = Path(prefect.__file__).parent / "server" / "database" / "_migrations" / "versions" / "sqlite"
    known = {p.stem.split("_")[4] for p in versions.glob("*.py") if p.stem.count("_") >= 5}
    if known and rev not in known:
        raise PrefectDatabaseError(
            f"Prefect's local database {db} was migrated by a newer Prefect (revision {rev}) than this "
            f"one ({prefect.__version__}), whose ephemeral server cannot start on it: move it aside "
            f"(`mv {db} {db}.newer`) or set PREFECT_HOME to another directory, then rerun")


def run_flow(cfg_json: dict[str, Any], out: str | Path, workers: int = 2,
              dask_address: str | None = None) -> dict[str, Any]:
    """Run the flow with a thread pool of ``workers`` (ephemeral Prefect server if no API URL),
    or on an existing Dask cluster (``dask_address``, e.g. tcp://10.0.0.5:8786): one task per
    input shard on the Dask workers, each worker process holding its own engine."""
    check_ephemeral_database()
    if dask_address:
        from prefect_dask import DaskTaskRunner

        runner: Any = DaskTaskRunner(address=dask_address)
    else:
        runner = ThreadPoolTaskRunner(max_workers=workers)
    return build_flow.with_options(task_runner=runner)(cfg_json, str(Path(out).resolve()))
