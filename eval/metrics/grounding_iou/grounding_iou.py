# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""`evaluate` wrapper of `instap_eval.grounding_metrics`: IoU@threshold and mean IoU of boxes or trajectories.

`evaluate.load` copies this script into its modules cache and imports it from there, so it imports the
installed `instap_eval` package by absolute name (relative imports would not resolve).
"""

import datasets
import evaluate
import numpy as np

from instap_eval.grounding import grounding_metrics

_CITATION = """\
@article{instap2026,
  title   = {InstAP: Instance-Aware Video-Language Pre-training},
  journal = {arXiv preprint arXiv:2604.08337},
  year    = {2026}
}
"""

_DESCRIPTION = """\
Visual grounding accuracy: `iou@t` is the percentage of predicted boxes whose IoU with the ground-truth box is
at least t, and `mean_iou` the mean IoU in percent. Config "default": one box per sample. Config "trajectory"
(`evaluate.load(path, "trajectory")`): one box per frame, with a per-frame validity mask for the ground truth;
a sample's IoU is the mean over its valid frames, and trajectories may have different lengths. Degenerate boxes
(zero or negative size, non-finite coordinates) have IoU 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of boxes): one box of 4 numbers per sample ("default"), or a list of per-frame boxes
        per sample ("trajectory").
    references (`list` of boxes): the ground truth, shaped like `predictions`.
    valid_mask ("trajectory" only, `list` of `list` of `bool`): per sample and frame, whether the ground truth
        has a box there; other frames are ignored. Each sample needs at least one valid frame.
    box_format (`str`, defaults to `"xyxy"`): `"xyxy"` (corners) or `"cxcywh"` (center and size, e.g.
        the normalized output of the box head), for both inputs.
    thresholds (`tuple` of `float`, defaults to `(0.5, 0.7, 0.9)`): the IoU thresholds reported.
Returns:
    iou@0.5, iou@0.7, iou@0.9 (`float`): percent of samples with IoU >= t, one `iou@{t}` per threshold.
    mean_iou (`float`): the mean sample IoU, in percent.
Examples:
    >>> import evaluate
    >>> from instap_eval import metric_path
    >>> grounding = evaluate.load(metric_path("grounding_iou"))
    >>> grounding.compute(predictions=[[0, 0, 2, 2], [0, 0, 10, 10]], references=[[0, 0, 2, 1], [0, 0, 10, 8]])
    {'iou@0.5': 100.0, 'iou@0.7': 50.0, 'iou@0.9': 0.0, 'mean_iou': 65.0}
    >>> trajectory = evaluate.load(metric_path("grounding_iou"), "trajectory")
    >>> trajectory.compute(
    ...     predictions=[[[0, 0, 2, 2], [0, 0, 2, 2]], [[0, 0, 10, 10]]],
    ...     references=[[[0, 0, 2, 1], [5, 5, 6, 6]], [[0, 0, 10, 8]]],
    ...     valid_mask=[[True, False], [True]],
    ... )
    {'iou@0.5': 100.0, 'iou@0.7': 50.0, 'iou@0.9': 0.0, 'mean_iou': 65.0}
"""

_CONFIGS = ("default", "trajectory")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GroundingIou(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in _CONFIGS:
            raise KeyError(f"Unknown config {self.config_name!r} for grounding_iou; use one of {_CONFIGS}.")
        box = datasets.List(datasets.Value("float64"), length=4)
        if self.config_name == "trajectory":
            features = datasets.Features(
                {
                    "predictions": datasets.List(box),
                    "references": datasets.List(box),
                    "valid_mask": datasets.List(datasets.Value("bool")),
                }
            )
        else:
            features = datasets.Features({"predictions": box, "references": box})
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
        )
        # Read the stored boxes back as NumPy arrays; `MetricInfo` only accepts format="numpy" for scalar
        # features at construction, but the `datasets` NumPy formatter handles list columns.
        info.format = "numpy"
        return info

    def _compute(
        self, predictions, references, valid_mask=None, box_format="xyxy", thresholds=(0.5, 0.7, 0.9)
    ):
        if self.config_name == "trajectory":
            predictions, references, valid_mask = _pad_trajectories(predictions, references, valid_mask)
        return grounding_metrics(
            predictions, references, valid_mask=valid_mask, box_format=box_format, thresholds=thresholds
        )


def _pad_trajectories(predictions, references, valid_mask):
    """Pads trajectories of different lengths to ``(num_samples, max_frames, 4)``; padded frames are invalid."""
    lengths = [len(frames) for frames in predictions]
    for name, column in (("references", references), ("valid_mask", valid_mask)):
        if [len(frames) for frames in column] != lengths:
            raise ValueError(f"Every sample needs as many frames in `{name}` as in `predictions`.")
    num_samples, max_frames = len(lengths), max(lengths)
    padded_predictions = np.zeros((num_samples, max_frames, 4))
    padded_references = np.zeros((num_samples, max_frames, 4))
    padded_mask = np.zeros((num_samples, max_frames), dtype=bool)
    for index, length in enumerate(lengths):
        if length:
            padded_predictions[index, :length] = np.stack(list(predictions[index]))
            padded_references[index, :length] = np.stack(list(references[index]))
            padded_mask[index, :length] = valid_mask[index]
    return padded_predictions, padded_references, padded_mask
