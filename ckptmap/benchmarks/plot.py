"""Bar plot of a suite run: % exactly right (top) and % structurally right (bottom) per case and method."""

from __future__ import annotations


from ckptmap.atomic import atomic_path
from ckptmap.benchmarks.suite import SuiteResult


def plot_accuracy(result: SuiteResult, path: str) -> str:
    """Write a PNG (matplotlib, Agg backend) to `path` atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in result.methods if any(r.method == m and r.score is not None for r in result.runs)]
    cases = list(dict.fromkeys(f"{r.family}/scan{r.scan}" for r in result.runs if r.score is not None))
    values = {(f"{r.family}/scan{r.scan}", r.method): r.score for r in result.runs if r.score is not None}
    width = 0.8 / max(1, len(methods))
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.11 * len(cases) * (len(methods) + 1)), 7.5), sharex=True)
    for ax, metric, title in ((axes[0], "pct_exact", "% exactly right"),
                              (axes[1], "pct_structural", "% structurally right (up to value ops)")):
        for k, method in enumerate(methods):
            xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(cases))]
            ys = [getattr(values[(c, method)], metric) if (c, method) in values else 0.0 for c in cases]
            ax.bar(xs, ys, width=width, label=method)
        ax.set_ylabel(title)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, ncol=len(methods), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.95))
    axes[1].set_xticks(range(len(cases)))
    axes[1].set_xticklabels(cases, rotation=60, ha="right", fontsize=8)
    fig.suptitle("ckptmap vs baselines against MaxText's own conversion (tiny fixtures)")
    fig.tight_layout(rect=(0, 0, 1, 0.91))

    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
