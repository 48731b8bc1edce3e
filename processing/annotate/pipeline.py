# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""The annotation run: input files -> items (shots, images) -> detections -> tracks -> captions -> InstVL shards.

Resumable: the state file (`annotate_state.json`) lists the input files whose items are in written shards, and is
rewritten after each shard; a restarted run skips those files and continues with the next shard number. A bad input
file (unreadable, truncated, no video stream, ...) is recorded with its reason and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..decoding import IMAGE_EXTENSIONS, decode_image, read_media_bytes
from ..errors import InstVLSampleError
from ..instvl import MEDIA_EXTENSIONS
from .config import AnnotateConfig
from .shots import video_shots

__all__ = ["Item", "annotate", "list_inputs", "category_caption", "scene_caption_from_categories"]

logger = logging.getLogger(__name__)

STATE_FILE = "annotate_state.json"
SUMMARY_FILE = "summary.json"
STAGES = ("shots", "detection", "tracking", "captions", "write")
VIDEO_EXTENSIONS = tuple(f".{extension}" for extension in MEDIA_EXTENSIONS["video"])


@dataclass
class Item:
    """One future InstVL record: an image, or one shot of a video as a clip of sampled frames."""

    id: str
    source: str  # the input file, relative to the input folder
    media_type: str
    frames: list[np.ndarray]  # (H, W, 3) uint8; one for an image
    frame_rate: float | None = None
    media: bytes | None = None  # an image's own bytes; a clip is encoded when written
    caption: str | None = None
    instances: list[dict[str, Any]] = field(default_factory=list)


def list_inputs(input_dir: str) -> tuple[list[str], list[str]]:
    """`(media files, other files)` under `input_dir`, relative paths, sorted (the order a run walks them in)."""
    media, other = [], []
    for root, directories, names in os.walk(input_dir):
        directories.sort()
        for name in sorted(names):
            relative = os.path.relpath(os.path.join(root, name), input_dir).replace(os.sep, "/")
            suffix = os.path.splitext(name)[1].lower()
            (media if suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS else other).append(relative)
    return sorted(media), sorted(other)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def category_caption(category: str) -> str:
    """The instance caption without a captioning model: "a dog."."""
    return f"{_article(category)} {category}."


def scene_caption_from_categories(media_type: str, categories: Sequence[str]) -> str:
    """The scene caption without a captioning model, from what was detected: "a video with two persons and a car."."""
    numbers = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
    counts = Counter(categories)
    if not counts:
        return f"{_article(media_type)} {media_type}."
    parts = [
        f"{_article(name)} {name}" if count == 1 else f"{numbers.get(count, count)} {name}s"
        for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{_article(media_type)} {media_type} with {listed}."


def _items_of(relative: str, path: str, config: AnnotateConfig, counts: Counter) -> list[Item]:
    if os.path.splitext(relative)[1].lower() in IMAGE_EXTENSIONS:
        decoded = decode_image(path, sample_id=relative)
        frame = decoded.frames[0].permute(1, 2, 0).numpy()
        return [Item(relative, relative, "image", [frame], media=read_media_bytes(path, sample_id=relative))]
    rate, shots, shot_counts = video_shots(path, config.shots, sample_id=relative)
    counts.update({f"shots_{key}" if key != "shots" else "shots": value for key, value in shot_counts.items()})
    stem = os.path.splitext(relative)[0]
    return [
        Item(f"{stem}#shot{number:03d}", relative, "video", shot.frames, frame_rate=rate)
        for number, shot in enumerate(shots)
    ]


def _encode_clip(item: Item) -> bytes:
    from ..synthetic import encode_mp4

    return encode_mp4(np.stack(item.frames), fps=max(1, round(item.frame_rate or 1)))


def _record(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "media_type": item.media_type,
        "media": item.media if item.media is not None else _encode_clip(item),
        "caption": item.caption,
        "instances": item.instances,
    }


class _State:
    """What a run has written, kept in `annotate_state.json` (rewritten atomically after each shard)."""

    def __init__(self, output_dir: str, config: AnnotateConfig) -> None:
        self.path = os.path.join(output_dir, STATE_FILE)
        # Where the models run is no part of what the output is: a run may resume on another device.
        settings = {key: value for key, value in config.to_dict().items() if key != "device"}
        self.values: dict[str, Any] = {"config": settings, "shards": 0, "done": {}, "counts": {}, "seconds": {}}
        if os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as handle:
                previous = json.load(handle)
            if previous.get("config") != self.values["config"]:
                raise ValueError(
                    f"{output_dir!r} holds a run with another config: resume it with the same config, or use a new "
                    "output folder."
                )
            self.values = previous

    def save(self) -> None:
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(self.values, handle, indent=1)
        os.replace(temporary, self.path)


def annotate(
    input_dir: str,
    output_dir: str,
    config: AnnotateConfig | None = None,
    *,
    detector: Callable | None = None,
    tracker: Callable | None = None,
    captioner: Callable | None = None,
) -> dict[str, Any]:
    """Annotates every image and video under `input_dir` into InstVL shards under `output_dir`; returns the summary
    (also written to `output_dir/summary.json`).

    The stage models are built from `config` unless given (`detector`, `tracker`, `captioner`, see
    `instap_processing.annotate.models`); a disabled stage builds nothing.
    """
    from .models import build_captioner, build_detector, build_tracker

    config = config or AnnotateConfig()
    os.makedirs(os.path.join(output_dir, "data"), exist_ok=True)
    state = _State(output_dir, config)
    done: dict[str, Any] = state.values["done"]
    counts: Counter = Counter(state.values["counts"])
    seconds: Counter = Counter(state.values["seconds"])
    media, other = list_inputs(input_dir)
    counts["ignored_files"] = len(other)
    todo = [relative for relative in media if relative not in done]
    if detector is None and config.detection.enabled and todo:
        detector = build_detector(config)
    if tracker is None and config.tracking.enabled and config.detection.enabled and todo:
        tracker = build_tracker(config)
    if captioner is None and config.captions.enabled and todo:
        captioner = build_captioner(config)
    known_captions = _load_captions_file(config.captions.captions_file)
    prompts = load_prompts(config.captions.prompts) if captioner is not None else None

    bars = {stage: tqdm(desc=stage, unit="item", position=i, disable=None, leave=True) for i, stage in enumerate(STAGES)}
    pending: list[dict[str, Any]] = []
    pending_sources: dict[str, Any] = {}

    def flush() -> None:
        if not pending and not pending_sources:
            return
        start = time.perf_counter()
        if pending:
            _write_shard(output_dir, config.output.split, state.values["shards"], pending)
            state.values["shards"] += 1
        done.update(pending_sources)
        state.values["counts"], state.values["seconds"] = dict(counts), dict(seconds)
        state.save()
        seconds["write"] += time.perf_counter() - start
        bars["write"].update(len(pending))
        pending.clear()
        pending_sources.clear()

    for relative in todo:
        path = os.path.join(input_dir, relative)
        start = time.perf_counter()
        try:
            items = _items_of(relative, path, config, counts)
        except InstVLSampleError as error:
            logger.warning("Skipping %s: %s", relative, error)
            counts["bad_inputs"] += 1
            pending_sources[relative] = {"status": "bad", "reason": error.reason, "detail": str(error)}
            continue
        seconds["shots"] += time.perf_counter() - start
        bars["shots"].update(len(items))

        start = time.perf_counter()
        detections = _detect(items, detector, config) if detector is not None else [[] for _ in items]
        seconds["detection"] += time.perf_counter() - start
        bars["detection"].update(len(items))

        start = time.perf_counter()
        for item, found in zip(items, detections):
            counts["detections"] += len(found)
            item.instances = _instances(item, found, tracker, config, counts)
        seconds["tracking"] += time.perf_counter() - start
        bars["tracking"].update(len(items))

        start = time.perf_counter()
        _caption(items, captioner, prompts, known_captions, config, counts)
        seconds["captions"] += time.perf_counter() - start
        bars["captions"].update(len(items))

        for item in items:
            pending.append(_record(item))
            counts["items"] += 1
            counts[f"{item.media_type}_items"] += 1
            counts["instances"] += len(item.instances)
        pending_sources[relative] = {"status": "ok", "items": len(items)}
        if len(pending) >= config.output.shard_size:
            flush()
    flush()
    for bar in bars.values():
        bar.close()
    summary = _summary(state, counts, seconds)
    with open(os.path.join(output_dir, SUMMARY_FILE), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=1)
    return summary


def _summary(state: _State, counts: Counter, seconds: Counter) -> dict[str, Any]:
    done = state.values["done"]
    bad = {source: entry for source, entry in done.items() if entry["status"] == "bad"}
    items = counts.get("items", 0)
    return {
        "inputs": len(done),
        "bad_inputs": {source: f"{entry['reason']}: {entry['detail']}" for source, entry in sorted(bad.items())},
        "ignored_files": counts.get("ignored_files", 0),
        "items": items,
        "image_items": counts.get("image_items", 0),
        "video_items": counts.get("video_items", 0),
        "shots": {key: counts.get(name, 0) for key, name in (
            ("detected", "shots"), ("too_short", "shots_too_short"), ("too_long", "shots_too_long"))},
        "detections": counts.get("detections", 0),
        "small_boxes_dropped": counts.get("small_boxes", 0),
        "instances": counts.get("instances", 0),
        "instances_per_item": counts.get("instances", 0) / items if items else 0.0,
        "dropped_tracks": counts.get("dropped_tracks", 0),
        "empty_captions_replaced": counts.get("empty_captions", 0),
        "shards": state.values["shards"],
        "seconds_per_stage": {stage: round(seconds.get(stage, 0.0), 3) for stage in STAGES},
    }


def _write_shard(output_dir: str, split: str, number: int, records: list[dict[str, Any]]) -> str:
    from datasets import Dataset

    from ..instvl import INSTVL_FEATURES

    path = os.path.join(output_dir, "data", f"{split}-{number:05d}.parquet")
    Dataset.from_list(records, features=INSTVL_FEATURES).to_parquet(path)
    return path


def _load_captions_file(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as handle:
        values = json.load(handle)
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise ValueError(f"captions_file {path!r} must map item ids or input paths to caption strings.")
    return values


def _pil(frame: np.ndarray) -> Image.Image:
    return Image.fromarray(frame)


def _detect(items: list[Item], detector, config: AnnotateConfig) -> list[list[dict[str, Any]]]:
    """Detections on each item's key frame (its first), in batches: `[{"box": xyxy, "score", "category"}]`."""
    size = config.detection.batch_size
    found = []
    for start in range(0, len(items), size):
        found += detector([_pil(item.frames[0]) for item in items[start : start + size]])
    return found


def _instances(item: Item, detections, tracker, config: AnnotateConfig, counts: Counter) -> list[dict[str, Any]]:
    kept = []
    for detection in detections:
        x1, y1, x2, y2 = detection["box"]
        if min(x2 - x1, y2 - y1) < config.detection.min_box_side:
            counts["small_boxes"] += 1
            continue
        kept.append(detection)
    kept = kept[: config.detection.max_instances]
    if not kept:
        return []
    if item.media_type == "image" or tracker is None:
        tracks = [{0: list(map(float, detection["box"]))} for detection in kept]
    else:
        stride = config.tracking.frame_stride
        tracked = tracker(item.frames[::stride], [detection["box"] for detection in kept])
        tracks = [{index * stride: box for index, box in track.items()} for track in tracked]
    instances = []
    for detection, track in zip(kept, tracks):
        minimum = 1 if item.media_type == "image" or tracker is None else config.tracking.min_track_frames
        if len(track) < minimum:
            counts["dropped_tracks"] += 1
            continue
        frames = sorted(track)
        instances.append({
            "category": detection["category"],
            "caption": None,
            "frame_index": frames,
            "boxes": [[float(v) for v in track[f]] for f in frames],
        })
    return instances


def _with_box(frame: np.ndarray, box: Sequence[float], config: AnnotateConfig) -> Image.Image:
    from PIL import ImageDraw

    image = _pil(frame).copy()
    ImageDraw.Draw(image).rectangle([float(v) for v in box], outline=config.captions.box_color, width=config.captions.box_width)
    return image


def _caption(
    items: list[Item], captioner, prompts, known: dict[str, str], config: AnnotateConfig, counts: Counter
) -> None:
    """Scene and instance captions: a captions file first, then the model, else the detected categories (also for
    a caption the model leaves empty, counted as `empty_captions`)."""
    for item in items:
        given = known.get(item.id, known.get(item.source))
        if given is not None:
            item.caption = given
        elif captioner is not None:
            item.caption = captioner([_pil(item.frames[0])], [prompts["scene"].format(media=item.media_type)],
                                     config.captions.max_new_tokens_scene)[0]
        if not (item.caption or "").strip():
            counts["empty_captions"] += item.caption is not None
            item.caption = scene_caption_from_categories(item.media_type, [i["category"] for i in item.instances])
        if captioner is not None and item.instances:
            images = [_with_box(item.frames[i["frame_index"][0]], i["boxes"][0], config) for i in item.instances]
            texts = [prompts["instance"].format(category=i["category"], media=item.media_type) for i in item.instances]
            captions = captioner(images, texts, config.captions.max_new_tokens_instance)
        else:
            captions = [category_caption(i["category"]) for i in item.instances]
        for instance, caption in zip(item.instances, captions):
            if not caption.strip():
                counts["empty_captions"] += 1
                caption = category_caption(instance["category"])
            instance["caption"] = caption


def load_prompts(path: str | None) -> dict[str, str]:
    """The `scene` and `instance` prompts of a YAML file (default: the package's `prompts.yaml`)."""
    import yaml

    path = path or os.path.join(os.path.dirname(__file__), "prompts.yaml")
    with open(path, encoding="utf-8") as handle:
        prompts = yaml.safe_load(handle) or {}
    missing = [key for key in ("scene", "instance") if not isinstance(prompts.get(key), str)]
    if missing:
        raise ValueError(f"prompts file {path!r} needs string entries {missing}.")
    return prompts
