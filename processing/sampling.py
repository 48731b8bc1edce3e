"""Frame sampling as in METHOD §4.4 (and UMT): split the video into `num_frames` equal segments, then take a random
frame of each segment (`"rand"`, training) or its middle frame (`"middle"`, evaluation).
"""

from __future__ import annotations

import torch

__all__ = ["FRAME_SAMPLING_MODES", "sample_frame_indices"]

FRAME_SAMPLING_MODES = ("rand", "middle")


def sample_frame_indices(
    total_num_frames: int,
    num_frames: int,
    mode: str = "middle",
    generator: torch.Generator | None = None,
) -> list[int]:
    """Indices of `num_frames` frames of a video with `total_num_frames` frames, in increasing order.

    Segment `i` covers frames `[floor(i·n/T), floor((i+1)·n/T))`. When the video has fewer frames than requested
    (`n < T`) the segments hold one frame each and some frames repeat, spread evenly over the clip so that the clip
    stays in temporal order (UMT instead pads with the last frame, which freezes the end of the clip).

    Args:
        total_num_frames (`int`): number of frames `n` of the video (>= 1).
        num_frames (`int`): number of frames `T` to return (>= 1).
        mode (`str`, *optional*, defaults to `"middle"`): `"rand"` or `"middle"`.
        generator (`torch.Generator`, *optional*): RNG for `"rand"`; the global torch RNG when `None` (which
            DataLoader workers seed differently per worker).
    """
    if total_num_frames < 1:
        raise ValueError(f"Cannot sample frames from a video with {total_num_frames} frames.")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    if mode not in FRAME_SAMPLING_MODES:
        raise ValueError(f"Unknown frame sampling mode {mode!r}; expected one of {FRAME_SAMPLING_MODES}.")

    segment = torch.arange(num_frames + 1, dtype=torch.int64)
    bounds = (segment * total_num_frames) // num_frames
    starts = bounds[:-1]
    # Short videos give empty segments; give each at least the frame it starts at.
    ends = torch.maximum(bounds[1:], starts + 1)
    if mode == "middle":
        # (start + end) // 2 with an exclusive end, as UMT's `get_frame_indices`.
        indices = (starts + ends) // 2
    else:
        lengths = (ends - starts).to(torch.float64)
        offsets = torch.floor(torch.rand(num_frames, generator=generator, dtype=torch.float64) * lengths)
        indices = starts + offsets.to(torch.int64)
    indices = indices.clamp_(0, total_num_frames - 1)
    return indices.tolist()
