"""PNG plots of `lcdata eval` results (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _heat(ax: Any, grid: list[list[float]], title: str) -> None:
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
    if "niah" in suites:
        fig, axes = plt.subplots(len(labels), 2, figsize=(8, 3.2 * len(labels)), squeeze=False)
        for r, m in enumerate(labels):
            s = results["models"][m]["suites"]["niah"]
            _heat(axes[r][0], s["grid_single"], f"{m}: single needle (acc {s['single']:.2f})")
            _heat(axes[r][1], s["grid_multi"], f"{m}: multi-needle, per needle (acc {s['multi']:.2f})")
        fig.suptitle("Needle in a haystack (Paul Graham essays): share of needles retrieved", fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out / "niah.png"))
    if "multihop" in suites:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
        for m in labels:
            s = results["models"][m]["suites"]["multihop"]
            ax.plot([x["distance"] for x in s["by_distance"]], [x["contains"] for x in s["by_distance"]],
                    marker="o", label=m)
            ax2.plot([x["depth"] + 0.125 for x in s["by_depth"]], [x["contains"] for x in s["by_depth"]],
                     marker="o", label=m)
        ax.set_xlabel("gap between the two supporting paragraphs\n(fraction of the context)", fontsize=8)
        ax.set_ylabel("answer found (contains)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("HotpotQA at distance", fontsize=10)
        ax2.set_xlabel("depth of the first supporting paragraph (quarter)", fontsize=8)
        ax2.set_xlim(0, 1)
        ax2.set_title("by depth", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "multihop.png"))
    if "counterfactual" in suites:
        fig, ax = plt.subplots(figsize=(6, 0.9 + 0.6 * len(labels)))
        cats = [("follows_context", "context", "#4c9be8"), ("follows_memory", "memory", "#e8a14c"),
                ("both", "both", "#9b9b9b"), ("other", "other", "#dddddd")]
        for i, m in enumerate(labels):
            s = results["models"][m]["suites"]["counterfactual"]
            left = 0.0
            for key, name, color in cats:
                v = 0.0 if math.isnan(s[key]) else s[key]
                ax.barh(i, v, left=left, color=color, label=name if i == 0 else None)
                left += v
            ax.text(1.01, i, f"n={s['known']} known", va="center", fontsize=7)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("answers to counterfactual contexts, over facts known closed-book")
        ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
        written.append(_save(fig, out / "counterfactual.png"))
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
    written.append(_save(fig, out / "summary.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
