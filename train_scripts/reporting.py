"""What a run leaves for a person to read: the retrieval table with chance levels, and the training curves."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

RECALL_KEYS = ("t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "r_mean")


def chance_mean_recall(num_items: int, ks: Sequence[int] = (1, 5, 10)) -> float:
    """Mean of R@K (percent) of a random ranking over `num_items` candidates (one correct item each)."""
    return 100.0 * sum(min(k, num_items) for k in ks) / len(ks) / num_items


def format_table(results: dict[str, dict[str, float]], chance: dict[str, float] | None = None) -> str:
    """Markdown table of R@1/5/10 both ways and mean recall; `chance` (row name -> mean recall) adds a column."""
    header = ["evaluation", *RECALL_KEYS] + (["chance r_mean"] if chance else [])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, metrics in results.items():
        cells = [f"{metrics[key]:.2f}" for key in RECALL_KEYS]
        if chance:
            cells.append(f"{chance[name]:.2f}" if name in chance else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_training_curves(log_history: Sequence[dict], path: str) -> str | None:
    """Every logged loss term and temperature against the step, one panel each, as a PNG. None without logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if (key == "loss" or key.startswith("loss_") or key.endswith("temperature")) and isinstance(value, (int, float)):
                if math.isfinite(value) and step is not None:
                    steps, values = series.setdefault(key, ([], []))
                    steps.append(step)
                    values.append(value)
    if not series:
        return None
    names = sorted(series, key=lambda key: (key != "loss", key))
    columns = 3
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        steps, values = series[name]
        axis.plot(steps, values, marker="o", markersize=2)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


__all__ = ["RECALL_KEYS", "chance_mean_recall", "format_table", "plot_training_curves"]
