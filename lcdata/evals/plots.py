"""PNG plots of `lcdata eval` results (matplotlib, Agg: no display needed): each suite's own
(`EvalSuite.plot`) and the summary of every suite's primary metric."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lcdata.evals.suites import SUITES  # noqa: E402


def heatmap(ax: Any, grid: list[list[float]], title: str) -> None:
    """``grid``: [length, depth, value] cells, drawn lengths across, depths down."""
    if not grid:
        ax.set_axis_off()
        ax.set_title(title.split(" (")[0] + ": no items", fontsize=9)
        return
    lengths = sorted({int(g[0]) for g in grid})
    depths = sorted({g[1] for g in grid})
    m = [[math.nan] * len(lengths) for _ in depths]
    for length, depth, v in grid:
        m[depths.index(depth)][lengths.index(int(length))] = v
    ax.imshow(m, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{x // 1024}K" if x % 1024 == 0 else str(x) for x in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)


def plot_results(results: dict[str, Any], out: Path) -> list[Path]:
    labels = list(results["models"])
    suites = results["models"][labels[0]]["suites"]
    written = []
    for name, suite in SUITES.items():  # registry order: the same files, in the same order, every run
        if name in suites:
            p = suite.plot({m: results["models"][m]["suites"][name] for m in labels}, out)
            if p is not None:
                written.append(p)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(suites)
    w = 0.8 / len(labels)
    for i, m in enumerate(labels):
        vals = [results["models"][m]["suites"][s]["value"] for s in names]
        ax.bar([j + i * w for j in range(len(names))], [0 if math.isnan(v) else v for v in vals], w, label=m)
    ax.set_xticks([j + w * (len(labels) - 1) / 2 for j in range(len(names))],
                  [f"{s}\n({suites[s]['primary']})" for s in names], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"lcdata eval suite v{results['suite_version']} ({results['suite_key']})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(save(fig, out / "summary.png"))
    return written


def save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
