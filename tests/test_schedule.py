"""Scheduled builds against a real `prefect server` and process worker on 127.0.0.1, both
started and stopped (by process group) here: deploy with a cron schedule, see the scheduler
create runs, trigger one, see it complete, its outputs pass `lcdata verify` and `latest` point at it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port, stop_group

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # own session: the worker and server get SIGTERM/SIGKILL as a group, by PID
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=ROOT)


@pytest.mark.slow
def test_cron_deployment_runs_on_a_process_worker(model_dir, tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING", "DO_NOT_TRACK": "1"}
    cfg = {"name": "sched", "model": str(model_dir),
           "sources": [{"name": "sh", "kind": "shakespeare", "include": ["comedies/the-comedy-of-errors.md"]}],
           "assemble": {"buckets": [1024]}, "tasks": [{"kind": "needles"}], "pack": {"seq_len": 1024}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    root = tmp_path / "builds"
    server = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
                   env, tmp_path / "server.log")
    worker = None
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("prefect server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
        out = subprocess.run([str(BIN / "lcdata"), "schedule", str(tmp_path / "c.yaml"), "--out-root", str(root),
                              "--cron", "0 3 * * *", "--name", "nightly", "--pool", "lcdata-test"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        probe = """
import asyncio, json, sys
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from prefect.deployments import run_deployment
async def scheduled():
    async with get_client() as c:
        runs = await c.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["nightly"])))
        return [r.state.type.value for r in runs]
for _ in range(60):
    states = asyncio.run(scheduled())
    if "SCHEDULED" in states:
        break
    import time; time.sleep(1)
print(json.dumps({"scheduled": states}))
r = run_deployment("lcdata-scheduled-build/nightly", timeout=300, poll_interval=1)
print(json.dumps({"final": r.state.type.value}))
"""
        worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "lcdata-test"], env, tmp_path / "worker.log")
        res = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=420)
        lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
        assert lines and "SCHEDULED" in lines[0]["scheduled"], res.stdout + res.stderr
        assert lines[-1].get("final") == "COMPLETED", res.stdout + res.stderr + (tmp_path / "worker.log").read_text()[-4000:]
        latest = root / "latest"
        assert latest.is_symlink() and (latest / "manifest.json").is_file()
        v = subprocess.run([str(BIN / "lcdata"), "verify", str(latest)], env=env, capture_output=True, text=True)
        assert v.returncode == 0, v.stderr
    finally:
        if worker is not None:
            stop_group(worker)
        stop_group(server)
