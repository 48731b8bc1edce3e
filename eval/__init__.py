# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""InstAP evaluation: retrieval and grounding metrics (installed as ``instap_eval``).

The maths lives in plain torch functions (`retrieval_metrics`, `grounding_metrics`); the `evaluate` modules under
``metrics/`` are thin wrappers around them, loadable offline with ``evaluate.load(metric_path(name))``.
"""

from __future__ import annotations

from pathlib import Path

from .grounding import (
    box_cxcywh_to_xyxy,
    grounding_ious,
    grounding_metrics,
    paired_box_iou,
)
from .retrieval import (
    metrics_from_ranks,
    retrieval_metrics,
    retrieval_ranks,
    video_text_retrieval_metrics,
)

__all__ = [
    "available_metrics",
    "box_cxcywh_to_xyxy",
    "grounding_ious",
    "grounding_metrics",
    "metric_path",
    "metrics_from_ranks",
    "paired_box_iou",
    "retrieval_metrics",
    "retrieval_ranks",
    "video_text_retrieval_metrics",
]

# The `evaluate` scripts are package data, not subpackages: `evaluate.load` copies and imports them itself.
_EVALUATE_MODULES_DIR = Path(__file__).resolve().parent / "metrics"


def available_metrics() -> list[str]:
    """Names of the `evaluate` modules shipped with the package (e.g. ``"retrieval_recall"``)."""
    return sorted(
        path.name for path in _EVALUATE_MODULES_DIR.iterdir() if (path / f"{path.name}.py").is_file()
    )


def metric_path(name: str) -> str:
    """Folder of the `evaluate` module ``name`` inside the installed package, for ``evaluate.load``.

    Example::

        >>> import evaluate
        >>> recall = evaluate.load(metric_path("retrieval_recall"))  # doctest: +SKIP
    """
    path = _EVALUATE_MODULES_DIR / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"Unknown metric {name!r}; available: {available_metrics()}.")
    return str(path)
