"""The `lcdata` command end to end: a real Prefect flow build (ephemeral server), inspect,
show, verify (and its alias checksum), and the error paths a user hits first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

LCDATA = [sys.executable, "-m", "lcdata.cli"]


def run(args, tmp_path, check=True):
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_API_URL": "",
        "COLUMNS": "120",
    })
    env.pop("PREFECT_API_URL")
    p = subprocess.run([*LCDATA, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def flow_build(tmp_path_factory, model_dir):
    tmp = tmp_path_factory.mktemp("cli")
    cfg = {
        "name": "cli-test",
        "model": str(model_dir),
        "sources": [
            {"name": "shakespeare", "kind": "shakespeare", "include": ["comedies/the-comedy-of-errors.md"]},
            {"name": "stdlib", "kind": "python_stdlib", "include": ["json/*"]},
            {"name": "docs", "kind": "python_docs", "include": ["tutorial/*"], "docs_per_shard": 8},
            {"name": "wiki", "kind": "wikipedia", "limit_groups": 3},
        ],
        "assemble": {"buckets": [1024, 2048]},
        "tasks": [{"kind": "needles"}, {"kind": "kv_tracking"}, {"kind": "hotpot_haystack"}],
        "pack": {"seq_len": 2048, "short_token_ratio": 0.3},
    }
    p = tmp / "build.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = tmp / "ds"
    proc = run(["build", str(p), "--out", str(out)], tmp)
    return tmp, out, proc


@pytest.mark.slow
def test_build_through_the_prefect_flow(flow_build):
    tmp, out, proc = flow_build
    assert "built" in proc.stderr and (out / "manifest.json").is_file()
    m = json.loads((out / "manifest.json").read_text())
    assert {f.split("/")[1].split("-")[0] for f in m["samples_files"]} == {"shakespeare", "stdlib", "docs", "wiki"}
    assert m["totals"]["rows"] > 0
    assert run(["verify", str(out)], tmp).returncode == 0
    assert run(["checksum", str(out)], tmp).returncode == 0


@pytest.mark.slow
def test_inspect_json_and_table(flow_build):
    tmp, out, _ = flow_build
    info = json.loads(run(["inspect", str(out), "--json"], tmp).stdout)
    assert set(info["tasks"]) == {"needles", "kv_tracking"}
    assert sum(n for _, n in info["evidence_depth_hist"]) > 0
    assert sum(n for _, n in info["evidence_distance_hist"]) > 0
    # needles ask for 2 of 4 facts in distinct deciles: never in the same place
    assert info["evidence_distance_hist"][0][1] < sum(n for _, n in info["evidence_distance_hist"])
    assert info["lineage"]["stages"]["pack"]["dropped"].get("mix_ratio", 0) >= 0
    assert sum(n for _, n in info["evidence_distance_tokens_hist"]) == sum(n for _, n in info["evidence_distance_hist"])
    per_task = {r["task"]: r for r in info["task_evidence"]}
    assert per_task["needles"]["spans"] == 2 and per_task["kv_tracking"]["dist_tok"] > 0
    text = run(["inspect", str(out)], tmp).stdout
    for heading in ("task types", "packed sample length", "evidence depth", "evidence distance", "evidence per task",
                    "drop reasons", "fill"):
        assert heading in text


@pytest.mark.slow
def test_show_marks_trained_spans(flow_build):
    tmp, out, _ = flow_build
    text = run(["show", str(out), "--row", "0", "--plain"], tmp).stdout
    assert "--- sample" in text and "⟦" in text and "<|im_end|>⟧" in text
    bad = run(["show", str(out), "--row", "999999"], tmp, check=False)
    assert bad.returncode == 2 and "out of range" in bad.stderr
    text = run(["show", str(out), "--task", "needles", "--plain"], tmp).stdout
    assert text.startswith("sample needles:") and text.count("«") == 2 and "distance first..last span" in text
    bad = run(["show", str(out), "--task", "nope"], tmp, check=False)
    assert bad.returncode == 2 and "tasks present" in bad.stderr


def test_unknown_config_key_exits_with_its_name(tmp_path, model_dir):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": str(model_dir), "sources": [{"name": "s", "kind": "shakespeare"}],
                                 "pack": {"seq_length": 10}}))
    proc = run(["build", str(p), "--out", str(tmp_path / "o")], tmp_path, check=False)
    assert proc.returncode == 2 and "unknown key `pack.seq_length`" in proc.stderr
    assert not (tmp_path / "o").exists()  # nothing written on a config error


def test_missing_source_path_exits_cleanly(tmp_path, model_dir):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": str(model_dir),
                                 "sources": [{"name": "s", "kind": "text_dir", "path": str(tmp_path / "nope")}]}))
    proc = run(["build", str(p), "--out", str(tmp_path / "o"), "--local"], tmp_path, check=False)
    assert proc.returncode == 2 and "path" in proc.stderr and "does not exist" in proc.stderr


def test_inspect_unfinished_dir(tmp_path):
    proc = run(["inspect", str(tmp_path)], tmp_path, check=False)
    assert proc.returncode == 2 and "not a finished lcdata build" in proc.stderr


def test_a_prefect_database_from_a_newer_prefect_is_named_at_once(tmp_path, model_dir):
    """A local Prefect database migrated by a newer Prefect makes the ephemeral server time out
    with no reason: the build stops before starting it, naming the file and the fix."""
    import sqlite3

    home = tmp_path / "prefect-home"
    home.mkdir()
    with sqlite3.connect(home / "prefect.db") as con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        con.execute("INSERT INTO alembic_version VALUES ('ffffffffffff')")
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump({"model": str(model_dir), "sources": [
        {"name": "stdlib", "kind": "python_stdlib", "include": ["json/*"]}]}))
    proc = run(["build", str(p), "--out", str(tmp_path / "ds")], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "was migrated by a newer Prefect (revision ffffffffffff)" in proc.stderr
    assert f"mv {home / 'prefect.db'} {home / 'prefect.db'}.newer" in proc.stderr.replace("\n", "")
    assert not (tmp_path / "ds" / "manifest.json").exists()
