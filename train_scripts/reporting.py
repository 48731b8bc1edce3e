"""What a run leaves for a person to read besides the results table (`instap_eval.benchmarks.format_results_table`): the
training curves."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence


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


__all__ = ["plot_training_curves"]
