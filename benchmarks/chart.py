"""Bar chart of every implementation's ratio to the plain aiohttp loop, per workload (matplotlib, if installed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.runner import Results


def draw(path: Path, results: Results, names: list[str]) -> bool:
    from benchmarks.runner import BASELINE, COLUMNS, STREAM_COLUMNS, ratio

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart drawn", file=sys.stderr)
        return False
    shown = [n for n in names if n not in results.skipped]
    keys = [(key, title) for key, title, _ in COLUMNS]
    keys += [(key, title.replace(" ", " stream ", 1)) for key, title, _ in STREAM_COLUMNS]
    width = 0.8 / max(len(shown), 1)
    fig, ax = plt.subplots(figsize=(16, 6))
    for i, name in enumerate(shown):
        xs, ys = [], []
        for j, (key, _) in enumerate(keys):
            r = ratio(results, name, key)
            if r is not None:
                xs.append(j + (i - (len(shown) - 1) / 2) * width)
                ys.append(r)
        ax.bar(xs, ys, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)), [title for _, title in keys], rotation=45, ha="right")
    ax.set_ylabel(f"ratio to {BASELINE} (log scale; lower is better)")
    ax.set_title("Median per workload, relative to a hand-written aiohttp loop")
    ax.legend(fontsize="small")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)
    return True
