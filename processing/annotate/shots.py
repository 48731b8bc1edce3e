# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Stage 1: reading a video at a fixed frame rate and cutting it into shots at colour-histogram changes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..decoding import decode_video
from .config import ShotConfig

__all__ = ["Shot", "colour_histogram", "cut_into_shots", "histogram_distance", "read_frames", "video_shots"]


@dataclass
class Shot:
    """Consecutive sampled frames between two cuts. `start` counts sampled frames from the video's first."""

    start: int
    frames: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8 each
    too_long: bool = False  # more frames than the longest kept shot: they were not stored

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def colour_histogram(frame: np.ndarray, bins: int = 16) -> np.ndarray:
    """Per-channel histogram of an `(H, W, 3)` uint8 frame, normalised to sum 1 per channel: `(3, bins)`."""
    levels = (frame.reshape(-1, 3).astype(np.int64) * bins) // 256
    counts = np.stack([np.bincount(levels[:, channel], minlength=bins) for channel in range(3)])
    return counts / max(1, levels.shape[0])


def histogram_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Total variation between two `colour_histogram`s, averaged over the channels: 0 (same colours) to 1."""
    return float(0.5 * np.abs(first - second).sum(axis=1).mean())


def cut_into_shots(frames: Iterable[np.ndarray], config: ShotConfig) -> Iterator[Shot]:
    """Shots of a stream of frames sampled at `config.frame_rate`; frames are held for the current shot only, and not
    past `max_seconds` (such a shot is marked `too_long` and kept empty)."""
    max_frames = int(config.max_seconds * config.frame_rate) + 1
    shot: Shot | None = None
    previous = None
    for index, frame in enumerate(frames):
        histogram = colour_histogram(frame, config.histogram_bins)
        if shot is None:
            shot = Shot(start=index)
        elif config.enabled and histogram_distance(previous, histogram) > config.threshold:
            yield shot
            shot = Shot(start=index)
        previous = histogram
        if shot.too_long:
            continue
        shot.frames.append(frame)
        if len(shot.frames) > max_frames:
            shot.frames, shot.too_long = [], True
    if shot is not None:
        yield shot


def read_frames(source, config: ShotConfig, *, sample_id: str | None = None) -> tuple[float, Iterator[np.ndarray]]:
    """`(frame rate of the frames, iterator of (H, W, 3) uint8 frames)` of a video at about `config.frame_rate` fps
    (every k-th source frame), scaled to at most `config.max_side` pixels (even sides, for H.264). Decoding goes
    through `decode_video` (bad media raise its `InstVLSampleError`), `decode_window` frames at a time."""
    probe = decode_video(source, frame_indices=[0], sample_id=sample_id)
    fps = probe.fps or config.frame_rate
    stride = max(1, round(fps / config.frame_rate))
    indices = list(range(0, probe.total_num_frames, stride))

    def frames() -> Iterator[np.ndarray]:
        for start in range(0, len(indices), config.decode_window):
            window = indices[start : start + config.decode_window]
            decoded = decode_video(source, frame_indices=window, sample_id=sample_id).frames
            for frame in _resize(decoded, config.max_side):
                yield frame.permute(1, 2, 0).numpy()

    return fps / stride, frames()


def _resize(frames: torch.Tensor, max_side: int) -> torch.Tensor:
    height, width = frames.shape[-2:]
    scale = min(1.0, max_side / max(height, width))
    size = (max(2, int(height * scale) // 2 * 2), max(2, int(width * scale) // 2 * 2))
    if size == (height, width):
        return frames
    resized = F.interpolate(frames.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def video_shots(
    source, config: ShotConfig, *, sample_id: str | None = None
) -> tuple[float, list[Shot], dict[str, int]]:
    """`(clip frame rate, kept shots, counts)` of one video: shots with [`min_seconds`, `max_seconds`] of frames are
    kept; `counts` has `shots` (all), `too_short` and `too_long`."""
    rate, frames = read_frames(source, config, sample_id=sample_id)
    min_frames = max(1, int(np.ceil(config.min_seconds * rate)))
    kept, counts = [], {"shots": 0, "too_short": 0, "too_long": 0}
    for shot in cut_into_shots(frames, config):
        counts["shots"] += 1
        if shot.too_long:
            counts["too_long"] += 1
        elif shot.num_frames < min_frames:
            counts["too_short"] += 1
        else:
            kept.append(shot)
    return rate, kept, counts
