"""The geometric transform of a clip (resize, random resized crop, horizontal flip) and its action on boxes.

One [`FrameTransform`] is drawn per clip and applied to all of its frames (METHOD §4.4), and the same object maps the
clip's boxes from source pixels to output pixels, so that instance boxes follow the frames exactly.

Coordinates are continuous pixel coordinates: the pixel `(i, j)` covers `[j, j+1) x [i, i+1)`, a box
`[x1, y1, x2, y2]` covers `[x1, x2) x [y1, y2)`. This is the convention of `torchvision` resizing and of
`roi_align(aligned=True)`, so no half-pixel correction is needed anywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torchvision.transforms.v2.functional as tvF

__all__ = ["FrameTransform", "get_frame_transform"]


@dataclass(frozen=True)
class FrameTransform:
    """Crop window `[left, left+width) x [top, top+height)` of the source frame, resized to the output size, then
    optionally mirrored left-right."""

    source_height: int
    source_width: int
    top: int
    left: int
    height: int
    width: int
    output_height: int
    output_width: int
    flip: bool = False

    def apply_to_frames(
        self,
        frames: torch.Tensor,
        interpolation: tvF.InterpolationMode = tvF.InterpolationMode.BICUBIC,
        antialias: bool = True,
    ) -> torch.Tensor:
        """Transforms frames of shape `(..., C, source_height, source_width)`."""
        if tuple(frames.shape[-2:]) != (self.source_height, self.source_width):
            raise ValueError(
                f"Frames of size {tuple(frames.shape[-2:])} given to a transform drawn for "
                f"{(self.source_height, self.source_width)}."
            )
        is_full_frame = (self.top, self.left, self.height, self.width) == (
            0,
            0,
            self.source_height,
            self.source_width,
        )
        if is_full_frame and (self.output_height, self.output_width) == (self.height, self.width):
            output = frames
        else:
            output = tvF.resized_crop(
                frames,
                top=self.top,
                left=self.left,
                height=self.height,
                width=self.width,
                size=[self.output_height, self.output_width],
                interpolation=interpolation,
                antialias=antialias,
            )
        if self.flip:
            output = output.flip(-1)
        return output

    def apply_to_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Maps boxes `[..., 4]` (`x1, y1, x2, y2` in source pixels) to output pixels.

        Boxes are not clipped here: a box partly outside the crop window extends outside the output frame, and the
        caller decides whether to clip it or to drop the instance.
        """
        boxes = torch.as_tensor(boxes, dtype=torch.float32)
        scale_x = self.output_width / self.width
        scale_y = self.output_height / self.height
        x1 = (boxes[..., 0] - self.left) * scale_x
        y1 = (boxes[..., 1] - self.top) * scale_y
        x2 = (boxes[..., 2] - self.left) * scale_x
        y2 = (boxes[..., 3] - self.top) * scale_y
        if self.flip:
            x1, x2 = self.output_width - x2, self.output_width - x1
        return torch.stack([x1, y1, x2, y2], dim=-1)

    def to_dict(self) -> dict:
        return asdict(self)


def _sample_crop_window(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
) -> tuple[int, int, int, int]:
    """`RandomResizedCrop` window: an area fraction in `scale` and a log-uniform aspect ratio in `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        uniform = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * uniform[0])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * uniform[1])
        crop_width = int(round(math.sqrt(target_area * aspect_ratio)))
        crop_height = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator))
            return top, left, crop_height, crop_width
    # Fallback (extreme aspect ratios): the largest centred window whose ratio is within bounds.
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_width, crop_height = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_height, crop_width = height, int(round(height * max(ratio)))
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def get_frame_transform(
    source_size: tuple[int, int],
    output_size: tuple[int, int],
    *,
    train_augment: bool = False,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    flip_probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> FrameTransform:
    """Draws the transform of one clip.

    Args:
        source_size (`tuple[int, int]`): `(height, width)` of the decoded frames.
        output_size (`tuple[int, int]`): `(height, width)` of the model input.
        train_augment (`bool`, *optional*, defaults to `False`):
            `False`: resize the whole frame to the output size (UMT's test transform). `True`: random resized crop
            (area `scale`, aspect `ratio`) and a horizontal flip with `flip_probability` (UMT's train transform).
        generator (`torch.Generator`, *optional*): RNG; the global torch RNG when `None`.

    Returns:
        [`FrameTransform`]; apply it to frames with `apply_to_frames` and to boxes with `apply_to_boxes`.
    """
    source_height, source_width = (int(v) for v in source_size)
    output_height, output_width = (int(v) for v in output_size)
    if min(source_height, source_width, output_height, output_width) < 1:
        raise ValueError(f"Sizes must be positive, got source {source_size} and output {output_size}.")
    if train_augment:
        top, left, height, width = _sample_crop_window(source_height, source_width, scale, ratio, generator)
        flip = bool(torch.rand((), generator=generator).item() < flip_probability)
    else:
        top, left, height, width, flip = 0, 0, source_height, source_width, False
    return FrameTransform(
        source_height=source_height,
        source_width=source_width,
        top=top,
        left=left,
        height=height,
        width=width,
        output_height=output_height,
        output_width=output_width,
        flip=flip,
    )
