# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""IoU@threshold and mean IoU for visual grounding of boxes and box trajectories, in plain torch.

docs/method.md §5 (Table 3): the box head predicts one normalized ``(cx, cy, w, h)`` box per sample (image) or per
frame (trajectory). A sample's IoU is the IoU of its box, or for a trajectory the IoU averaged over the frames
where the ground truth is valid; ``iou@t`` is the percentage of samples whose IoU is at least ``t``.

Degenerate boxes (zero or negative width or height, or any non-finite coordinate) overlap nothing: their IoU is
0, never NaN, even against an identical degenerate box. IoUs are computed in float64 and compared to the
thresholds without tolerance, so boxes built to overlap by exactly 0.5 count for ``iou@0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from modeling_instap.losses import box_cxcywh_to_xyxy

__all__ = [
    "BoxFormat",
    "box_cxcywh_to_xyxy",
    "grounding_ious",
    "grounding_metrics",
    "paired_box_iou",
]

BoxFormat = Literal["xyxy", "cxcywh"]


def paired_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of two broadcastable ``(..., 4)`` stacks of ``(x1, y1, x2, y2)`` boxes.

    Unlike ``torchvision.ops.box_iou`` this pairs ``boxes1[i]`` with ``boxes2[i]`` only (no N x M matrix), and a
    degenerate box gives 0 rather than NaN.
    """
    x1, y1, x2, y2 = boxes1.unbind(-1)
    u1, v1, u2, v2 = boxes2.unbind(-1)
    intersection = (torch.minimum(x2, u2) - torch.maximum(x1, u1)).clamp(min=0) * (
        torch.minimum(y2, v2) - torch.maximum(y1, v1)
    ).clamp(min=0)
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - intersection

    def is_proper(boxes: torch.Tensor) -> torch.Tensor:
        # `>` is False for NaN, so this also rejects boxes with NaN coordinates.
        return (
            torch.isfinite(boxes).all(-1) & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        )

    both_proper = is_proper(boxes1) & is_proper(boxes2)
    # Divide only where the union is positive; elsewhere the quotient would be NaN or inf.
    safe_union = torch.where(both_proper, union, torch.ones_like(union))
    return torch.where(both_proper, intersection / safe_union, torch.zeros_like(union))


def _as_boxes(boxes: torch.Tensor | np.ndarray | Sequence, name: str) -> torch.Tensor:
    boxes = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes)
    if boxes.ndim not in (2, 3) or boxes.shape[-1] != 4 or boxes.shape[0] == 0:
        raise ValueError(
            f"`{name}` must be (num_samples, 4) boxes or (num_samples, num_frames, 4) trajectories, "
            f"got shape {tuple(boxes.shape)}."
        )
    return boxes.to(torch.float64)


def grounding_ious(
    pred_boxes: torch.Tensor | np.ndarray | Sequence,
    gt_boxes: torch.Tensor | np.ndarray | Sequence,
    *,
    valid_mask: torch.Tensor | np.ndarray | Sequence | None = None,
    box_format: BoxFormat = "xyxy",
) -> torch.Tensor:
    """The IoU of every sample, in [0, 1].

    Args:
        pred_boxes: ``(num_samples, 4)`` boxes, or ``(num_samples, num_frames, 4)`` trajectories.
        gt_boxes: ground truth of the same shape.
        valid_mask: for trajectories, ``(num_samples, num_frames)`` booleans, ``True`` where the ground truth has
            a box; other frames are ignored whatever they hold (NaN padding included). By default all frames are
            valid. Every sample needs at least one valid frame.
        box_format: ``"xyxy"`` (corners) or ``"cxcywh"`` (center and size), for both inputs. Normalized or
            pixel coordinates both work, since IoU does not depend on the scale as long as both inputs share it.

    Returns:
        ``(num_samples,)`` float64 IoUs: the box IoU, or for a trajectory its mean over the valid frames.
    """
    if box_format not in ("xyxy", "cxcywh"):
        raise ValueError(f"`box_format` must be 'xyxy' or 'cxcywh', got {box_format!r}.")
    pred_boxes, gt_boxes = _as_boxes(pred_boxes, "pred_boxes"), _as_boxes(gt_boxes, "gt_boxes")
    if pred_boxes.shape != gt_boxes.shape:
        raise ValueError(
            f"`pred_boxes` and `gt_boxes` must have the same shape, got {tuple(pred_boxes.shape)} "
            f"and {tuple(gt_boxes.shape)}."
        )
    if box_format == "cxcywh":
        pred_boxes, gt_boxes = box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(gt_boxes)
    ious = paired_box_iou(pred_boxes, gt_boxes)

    if pred_boxes.ndim == 2:
        if valid_mask is not None:
            raise ValueError("`valid_mask` applies to trajectories, (num_samples, num_frames, 4) boxes.")
        return ious
    if valid_mask is None:
        return ious.mean(dim=1)
    valid_mask = torch.as_tensor(
        np.asarray(valid_mask) if not isinstance(valid_mask, torch.Tensor) else valid_mask
    )
    if valid_mask.shape != ious.shape:
        raise ValueError(
            f"`valid_mask` must have shape (num_samples, num_frames) = {tuple(ious.shape)}, "
            f"got {tuple(valid_mask.shape)}."
        )
    valid_mask = valid_mask.to(device=ious.device, dtype=torch.bool)
    num_valid_frames = valid_mask.sum(dim=1)
    if (num_valid_frames == 0).any():
        first = int((num_valid_frames == 0).nonzero()[0])
        raise ValueError(f"Trajectory {first} has no valid frame, so its IoU is undefined.")
    return torch.where(valid_mask, ious, torch.zeros_like(ious)).sum(dim=1) / num_valid_frames


def grounding_metrics(
    pred_boxes: torch.Tensor | np.ndarray | Sequence,
    gt_boxes: torch.Tensor | np.ndarray | Sequence,
    *,
    valid_mask: torch.Tensor | np.ndarray | Sequence | None = None,
    box_format: BoxFormat = "xyxy",
    thresholds: Sequence[float] = (0.5, 0.7, 0.9),
) -> dict[str, float]:
    """IoU@threshold and mean IoU, all in percent.

    See `grounding_ious` for the arguments. Returns ``{"iou@0.5": ..., "iou@0.7": ..., "iou@0.9": ...,
    "mean_iou": ...}``: one ``iou@{t:g}`` per threshold, the percentage of samples with IoU >= t, and
    ``mean_iou``, 100 times the mean sample IoU.

    Example::

        >>> pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 10.0, 10.0]])
        >>> gt = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 10.0, 8.0]])  # IoUs 0.5 and 0.8
        >>> grounding_metrics(pred, gt)
        {'iou@0.5': 100.0, 'iou@0.7': 50.0, 'iou@0.9': 0.0, 'mean_iou': 65.0}
    """
    ious = grounding_ious(pred_boxes, gt_boxes, valid_mask=valid_mask, box_format=box_format)
    results = {
        f"iou@{threshold:g}": 100.0 * (ious >= threshold).double().mean().item() for threshold in thresholds
    }
    results["mean_iou"] = 100.0 * ious.mean().item()
    return results
