"""Histograms like the paper's figures 3 (human grades) and 4 (predicted buckets), and feature plots."""
from __future__ import annotations

import io

import numpy as np

from infer.grader import BUCKETS


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grouped_bars(ax, categories: list[str], per_set: dict[str, np.ndarray]) -> None:
    n = max(1, len(per_set))
    width = 0.8 / n
    x = np.arange(len(categories))
    for i, (label, counts) in enumerate(per_set.items()):
        total = max(1, int(np.sum(counts)))
        ax.bar(x + (i - (n - 1) / 2) * width, np.asarray(counts) / total * 100.0, width,
               label=f"{label} (n={total})")
    ax.set_xticks(x, categories)
    ax.set_ylabel("% of clips")
    ax.legend()


def bucket_histogram_png(per_set: dict[str, np.ndarray], title: str) -> bytes:
    """Figure-4 style: share of clips per predicted bucket, one bar group per bucket, one colour per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    _grouped_bars(ax, [f"grade {b}" for b in BUCKETS], per_set)
    ax.set_title(title)
    return _figure_bytes(fig)


def grade_histogram_png(per_set: dict[str, np.ndarray], title: str) -> bytes:
    """Figure-3 style: share of clips per rounded mean human grade 0..9."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    _grouped_bars(ax, [str(g) for g in range(10)], per_set)
    ax.set_xlabel("grade (mean over raters and dimensions, rounded)")
    ax.set_title(title)
    return _figure_bytes(fig)


def feature_histograms_png(per_set: dict[str, dict[str, np.ndarray]], names: list[str]) -> bytes:
    """One panel per feature, overlaid histograms per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.0 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = [np.asarray(v[name], float) for v in per_set.values()]
        finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
        bins = np.histogram_bin_edges(finite, bins=20) if finite.size else 10
        for label, v in zip(per_set, values):
            ax.hist(v[np.isfinite(v)], bins=bins, alpha=0.55, label=label)
        ax.set_title(name)
        ax.set_ylabel("clips")
    axes[0][0].legend()
    return _figure_bytes(fig)
