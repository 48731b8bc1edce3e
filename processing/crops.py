"""Instance crops (METHOD §4.2): from a box or a box trajectory to a clip of `T` crops at the crop size.

For each sampled frame the instance's box is the box of the nearest annotated frame, mapped through the clip's
geometric transform, clipped to the frame and grown to at least one patch. All crops of a batch are then cut in a
single `torchvision.ops.roi_align` call over the processed frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import roi_align

__all__ = [
    "boxes_at_frames",
    "clip_boxes",
    "crop_instances",
    "expand_small_boxes",
    "pad_degenerate_boxes",
    "visible_fraction",
    "visible_in_any_frame",
]


def boxes_at_frames(
    frame_index: Sequence[int] | torch.Tensor,
    boxes: Sequence[Sequence[float]] | torch.Tensor,
    query_frames: Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """The box of the nearest annotated frame for each query frame.

    Args:
        frame_index: `(K,)` frames where the box is known, sorted increasingly.
        boxes: `(K, 4)` the boxes at those frames.
        query_frames: `(T,)` the frames of the clip (source frame indices).

    Returns:
        `(T, 4)` float32 boxes. Ties (a query frame halfway between two annotated frames) take the earlier box.
    """
    known = torch.as_tensor(frame_index, dtype=torch.int64).reshape(-1)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    query = torch.as_tensor(query_frames, dtype=torch.int64).reshape(-1)
    if known.numel() == 0:
        raise ValueError("An instance needs at least one annotated box.")
    if known.numel() != boxes.shape[0]:
        raise ValueError(f"{known.numel()} frame indices for {boxes.shape[0]} boxes.")
    right = torch.searchsorted(known, query).clamp_(max=known.numel() - 1)
    left = (right - 1).clamp_(min=0)
    take_left = (query - known[left]).abs() <= (known[right] - query).abs()
    nearest = torch.where(take_left, left, right)
    return boxes[nearest]


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clips `[..., 4]` boxes to the frame `[0, width] x [0, height]`."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def expand_small_boxes(boxes: torch.Tensor, min_size: float, height: int, width: int) -> torch.Tensor:
    """Grows boxes narrower or shorter than `min_size` to `min_size` around their centre, kept inside the frame.

    Degenerate boxes (a point or a line) would give crops of a single interpolated pixel; one patch of the model is the
    smallest region the encoder can say anything about.
    """
    min_width = min(float(min_size), float(width))
    min_height = min(float(min_size), float(height))

    def grow(
        low: torch.Tensor, high: torch.Tensor, minimum: float, limit: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        centre = (low + high) / 2
        size = (high - low).clamp(min=minimum)
        new_low = (centre - size / 2).clamp(min=0)
        new_low = torch.minimum(new_low, limit - size)  # shift back inside at the far edge
        return new_low, new_low + size

    x1, x2 = grow(boxes[..., 0], boxes[..., 2], min_width, width)
    y1, y2 = grow(boxes[..., 1], boxes[..., 3], min_height, height)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def pad_degenerate_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Grows the zero-width or zero-height sides of `(..., 4)` boxes to `min_size` around their centre (not clipped
    to the frame: where the box lies decides whether it is in view)."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = boxes[..., 2:] - boxes[..., :2]
    half = torch.where(size > 0, size, torch.full_like(size, float(min_size))) / 2
    return torch.cat([centre - half, centre + half], dim=-1)


def visible_fraction(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`(N,)` share of the `(N, T, 4)` boxes' area that lies inside the frame, summed over the `T` frames.

    After a random resized crop a box may be only partly in view; its crop then shows little of the object that
    its caption describes.
    """
    area = ((boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)).sum(-1)
    inside_x = (boxes[..., 2].clamp(max=float(width)) - boxes[..., 0].clamp(min=0)).clamp(min=0)
    inside_y = (boxes[..., 3].clamp(max=float(height)) - boxes[..., 1].clamp(min=0)).clamp(min=0)
    inside = (inside_x * inside_y).sum(-1)
    return torch.where(area > 0, inside / area.clamp(min=1e-12), torch.zeros_like(area))


def visible_in_any_frame(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`(N,)` bool: whether the `(N, T, 4)` boxes overlap the frame in at least one of the `T` frames.

    A random resized crop can cut an instance out of the clip; its crop would then show something else, so such
    instances are dropped rather than paired with their caption.
    """
    overlap_x = torch.minimum(boxes[..., 2], torch.tensor(float(width))) - boxes[..., 0].clamp(min=0)
    overlap_y = torch.minimum(boxes[..., 3], torch.tensor(float(height))) - boxes[..., 1].clamp(min=0)
    return ((overlap_x > 0) & (overlap_y > 0)).any(dim=-1)


def crop_instances(
    pixel_values: torch.Tensor,
    boxes: torch.Tensor,
    sample_index: torch.Tensor,
    crop_size: tuple[int, int],
    min_box_size: float = 16,
    sampling_ratio: int = 0,
) -> torch.Tensor:
    """Cuts the instance crop clips of a batch with one `roi_align` call.

    Args:
        pixel_values (`torch.Tensor`): `(B, T, C, H, W)` processed frames.
        boxes (`torch.Tensor`): `(N, T, 4)` boxes in the pixels of `pixel_values` (after resize/crop/flip).
        sample_index (`torch.Tensor`): `(N,)` index in `[0, B)` of the clip each instance belongs to.
        crop_size (`tuple[int, int]`): `(Hc, Wc)` of the crops.
        min_box_size (`float`, *optional*, defaults to 16): boxes are grown to at least this size (one patch).
        sampling_ratio (`int`, *optional*, defaults to 0): bilinear samples per output pixel and axis; 0 adapts it
            per box (`ceil(box size / crop size)`): one sample when a crop enlarges a small box, several (no
            aliasing) when it shrinks a large one. A fixed 2 costs about 3x more at 224² for no gain on small boxes.

    Returns:
        `(N, T, C, Hc, Wc)` crops, in the dtype of `pixel_values`.
    """
    batch_size, num_frames, channels, height, width = pixel_values.shape
    num_instances = boxes.shape[0]
    crop_height, crop_width = (int(v) for v in crop_size)
    if num_instances == 0:
        return pixel_values.new_zeros((0, num_frames, channels, crop_height, crop_width))
    if boxes.shape[1] != num_frames:
        raise ValueError(f"Boxes cover {boxes.shape[1]} frames but the clips have {num_frames}.")
    boxes = clip_boxes(boxes.to(torch.float32), height, width)
    boxes = expand_small_boxes(boxes, min_box_size, height, width)

    sample_index = torch.as_tensor(sample_index, dtype=torch.int64, device=pixel_values.device)
    frame = torch.arange(num_frames, device=pixel_values.device)
    # Row r of the flattened (B*T, C, H, W) frames is frame r % T of clip r // T.
    image_index = (sample_index[:, None] * num_frames + frame[None, :]).reshape(-1, 1)
    rois = torch.cat([image_index.to(boxes.dtype), boxes.reshape(-1, 4).to(pixel_values.device)], dim=1)

    crops = roi_align(
        pixel_values.reshape(batch_size * num_frames, channels, height, width).float(),
        rois,
        output_size=(crop_height, crop_width),
        spatial_scale=1.0,
        sampling_ratio=sampling_ratio,
        aligned=True,
    )
    return crops.reshape(num_instances, num_frames, channels, crop_height, crop_width).to(pixel_values.dtype)
