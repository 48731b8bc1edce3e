# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""The annotation pipeline's settings: one dataclass per stage, read from YAML/JSON with every key checked."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AnnotateConfig",
    "CaptionConfig",
    "DetectionConfig",
    "OutputConfig",
    "ShotConfig",
    "TrackingConfig",
    "load_annotate_config",
]

# Everyday object categories (a subset of COCO's): the default detection prompt.
DEFAULT_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "bus", "truck", "boat", "bird", "cat", "dog", "horse", "cow", "sheep",
    "backpack", "umbrella", "handbag", "bottle", "cup", "chair", "couch", "bed", "table", "laptop", "phone", "book",
    "ball",
)


@dataclass
class ShotConfig:
    """Stage 1: shots. A cut is where the colour histograms of consecutive sampled frames differ by more than
    `threshold` (total variation, in [0, 1]); shots outside [`min_seconds`, `max_seconds`] are dropped and counted.
    Videos are read at `frame_rate` frames per second, at most `max_side` pixels on their longer side; each kept shot
    is written as a clip of those frames."""

    enabled: bool = True  # False: each video is one item
    threshold: float = 0.4
    histogram_bins: int = 16
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    frame_rate: float = 4.0
    max_side: int = 448
    decode_window: int = 256  # frames decoded per call (bounds memory on long videos)


@dataclass
class DetectionConfig:
    """Stage 2: open-vocabulary detection on each item's key frame (its first frame), prompted by `categories`."""

    enabled: bool = True
    model: str = "IDEA-Research/grounding-dino-tiny"
    categories: list[str] = field(default_factory=lambda: list(DEFAULT_CATEGORIES))
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float = 0.5
    max_instances: int = 8
    min_box_side: float = 8.0  # pixels; smaller boxes are dropped
    batch_size: int = 4


@dataclass
class TrackingConfig:
    """Stage 3: the key-frame boxes propagated through the shot as masks (SAM 2 video), then per-frame boxes. A track
    ends at the first frame where its mask is empty; tracks with fewer than `min_track_frames` boxes are dropped."""

    enabled: bool = True
    model: str = "facebook/sam2.1-hiera-tiny"
    frame_stride: int = 1  # track every k-th frame of the clip (the others get no box)
    min_track_frames: int = 2
    mask_threshold: float = 0.0


@dataclass
class CaptionConfig:
    """Stage 4: the scene caption and one caption per instance (its box drawn on the key frame) from an
    image-text-to-text model with a chat template. Skipped (`enabled: false`), captions come from `captions_file`
    (JSON: item id or input file path -> caption) and else from the detected categories."""

    enabled: bool = True
    model: str = "HuggingFaceTB/SmolVLM-256M-Instruct"
    prompts: str | None = None  # YAML with `scene` and `instance` prompts; default: the package's prompts.yaml
    max_new_tokens_scene: int = 96
    max_new_tokens_instance: int = 40
    box_color: str = "red"
    box_width: int = 3
    captions_file: str | None = None


@dataclass
class OutputConfig:
    """Stage 5: InstVL records as Parquet shards `OUTPUT/data/{split}-NNNNN.parquet`, media embedded as bytes."""

    split: str = "train"
    shard_size: int = 64


@dataclass
class AnnotateConfig:
    shots: ShotConfig = field(default_factory=ShotConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    device: str = "auto"  # "auto": CUDA when available, else CPU
    dtype: str = "float32"  # of the models; "bfloat16" on a GPU

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        checks = [
            (0 < self.shots.threshold <= 1, "shots.threshold must be in (0, 1]"),
            (self.shots.histogram_bins >= 2, "shots.histogram_bins must be >= 2"),
            (0 <= self.shots.min_seconds <= self.shots.max_seconds, "shots needs 0 <= min_seconds <= max_seconds"),
            (self.shots.frame_rate > 0, "shots.frame_rate must be > 0"),
            (self.shots.max_side >= 16, "shots.max_side must be >= 16"),
            (self.shots.decode_window >= 1, "shots.decode_window must be >= 1"),
            (bool(self.detection.categories), "detection.categories must name at least one category"),
            (0 <= self.detection.box_threshold <= 1, "detection.box_threshold must be in [0, 1]"),
            (0 <= self.detection.text_threshold <= 1, "detection.text_threshold must be in [0, 1]"),
            (0 < self.detection.nms_iou <= 1, "detection.nms_iou must be in (0, 1]"),
            (self.detection.max_instances >= 1, "detection.max_instances must be >= 1"),
            (self.detection.batch_size >= 1, "detection.batch_size must be >= 1"),
            (self.tracking.frame_stride >= 1, "tracking.frame_stride must be >= 1"),
            (self.tracking.min_track_frames >= 1, "tracking.min_track_frames must be >= 1"),
            (self.output.shard_size >= 1, "output.shard_size must be >= 1"),
            (bool(self.output.split) and "/" not in self.output.split, "output.split must be a plain name"),
            (self.dtype in ("float32", "bfloat16", "float16"), "dtype must be float32, bfloat16 or float16"),
        ]
        problems = [message for ok, message in checks if not ok]
        if any("." in category for category in self.detection.categories):
            problems.append("detection.categories must not contain '.' (it separates the prompt's phrases)")
        if problems:
            raise ValueError("Invalid annotation config: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AnnotateConfig:
        """Builds a config from nested mappings; an unknown key is an error naming it (and the closest known key)."""
        return _build(cls, values, prefix="")


def _build(cls, values: Mapping[str, Any], prefix: str):
    if not isinstance(values, Mapping):
        raise ValueError(f"Invalid annotation config: {prefix.rstrip('.') or 'the config'} must be a mapping.")
    fields = {item.name: item for item in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise ValueError(f"Invalid annotation config: unknown key {prefix + str(key)!r}{hint}.")
        default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = value
    return cls(**kwargs)


def load_annotate_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> AnnotateConfig:
    """The config of a YAML or JSON file (or the defaults), with `overrides` (nested mappings) merged on top."""
    values: dict[str, Any] = {}
    if path is not None:
        with open(os.fspath(path), encoding="utf-8") as handle:
            text = handle.read()
        if os.fspath(path).endswith(".json"):
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text) or {}
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(values.get(key), Mapping):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return AnnotateConfig.from_dict(values)
