# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""`evaluate` wrapper of `instap_eval.retrieval_metrics`: Recall@K, median and mean rank of one direction.

`evaluate.load` copies this script into its modules cache and imports it from there, so it imports the
installed `instap_eval` package by absolute name (relative imports would not resolve).
"""

import datasets
import evaluate
import numpy as np

from instap_eval.retrieval import retrieval_metrics

_CITATION = """\
@article{instap2026,
  title   = {InstAP: Instance-Aware Video-Language Pre-training},
  journal = {arXiv preprint arXiv:2604.08337},
  year    = {2026}
}
"""

_DESCRIPTION = """\
Recall@K for cross-modal retrieval (e.g. text-to-video): the percentage of queries whose best-ranked correct
candidate is among the K highest-scored candidates, plus the mean of the recalls and the median and mean
1-based rank. A query may have several correct candidates; the best-ranked one counts (UMT `itm_eval`). Ties
are broken pessimistically by default: incorrect candidates scoring the same as the best correct one are
ranked ahead of it. For both directions of video-text retrieval with UMT's key names, call
`instap_eval.video_text_retrieval_metrics` on the score matrix directly.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of the score matrix per query, the similarity to every
        candidate (higher is better); all rows have the same length.
    references (`list` of `list` of `int`, or `list` of `int`): the indices of the correct candidates of each
        query (at least one).
    ks (`tuple` of `int`, defaults to `(1, 5, 10)`): the K of the reported Recall@K.
    ties (`str`, defaults to `"pessimistic"`): `"pessimistic"` ranks incorrect candidates tied with the best
        correct one ahead of it, `"optimistic"` counts only strictly higher scores.
    chunk_size (`int`, *optional*): query rows ranked at a time, to bound memory.
Returns:
    r1, r5, r10 (`float`): Recall@K in percent, one `r{K}` per K in `ks`.
    r_mean (`float`): the mean of the recalls.
    medr (`float`): the median rank (1-based; the mean of the two middle ranks for an even count).
    meanr (`float`): the mean rank (1-based).
Examples:
    >>> import evaluate
    >>> from instap_eval import metric_path
    >>> recall = evaluate.load(metric_path("retrieval_recall"))
    >>> scores = [[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.1, 0.2, 0.3]]
    >>> results = recall.compute(predictions=scores, references=[[0], [0, 2], [0]], ks=(1, 2))
    >>> {key: round(value, 2) for key, value in results.items()}
    {'r1': 33.33, 'r2': 66.67, 'r_mean': 50.0, 'medr': 2.0, 'meanr': 2.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        score_row = datasets.List(datasets.Value("float32"))
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": score_row, "references": datasets.List(datasets.Value("int64"))}
                ),
                datasets.Features({"predictions": score_row, "references": datasets.Value("int64")}),
            ],
            reference_urls=["https://github.com/OpenGVLab/unmasked_teacher"],
        )
        # Read the stored rows back as one NumPy matrix rather than nested Python lists (a 10K x 10K matrix
        # would take gigabytes as lists). `MetricInfo` only accepts format="numpy" for scalar features at
        # construction, but the `datasets` NumPy formatter handles list columns, so set it afterwards.
        info.format = "numpy"
        return info

    def _compute(self, predictions, references, ks=(1, 5, 10), ties="pessimistic", chunk_size=None):
        try:
            scores = np.stack(predictions) if predictions.dtype == object else predictions
        except ValueError:
            raise ValueError(
                "All rows of the score matrix (`predictions`) must have the same length."
            ) from None
        if references.dtype == object or references.ndim == 2:
            # Per-query index lists; NumPy gives a 2-D array when they happen to have equal lengths.
            references = [np.atleast_1d(indices).tolist() for indices in references]
        return retrieval_metrics(scores, references, ks=ks, ties=ties, chunk_size=chunk_size)
