"""A synthetic InstVL: real encoded media (H.264 MP4, JPEG/PNG) of simple scenes, in the exact InstVL schema.

Each scene shows 1-4 objects on a plain background. Objects differ in colour, shape (square, circle, triangle), size
(small, large) and, in videos, motion (left, right, up, down or still; slowly or quickly). Every object is an
instance with its box (images) or per-frame box trajectory (videos, annotated every `box_stride` frames so that the
nearest-box rule is exercised) and a caption of several sentences ("a small red square moving left. it moves
quickly towards the left side. ..."); the scene caption names all objects in several sentences. With probability
`confusable_probability` a scene holds a confusable pair (same shape and different colour, or same colour and
different motion/size) so that instance retrieval cannot be solved from the scene caption alone.

Splits follow METHOD §6: `train` (images and videos), `img_1k`, `img_10k` (images), `img_zero_1k`, `img_zero_10k`
(images that contain colour-shape pairs never seen in training: [`HELD_OUT_PAIRS`]) and `video_1k` (videos). The
names are the paper's; the sizes here are small and configurable.

Command line (Parquet shards in the Hub layout `OUT/data/{split}-00000-of-00002.parquet`, with a README whose YAML
lets `load_dataset(OUT, split=...)` find every split):

    python -m instap_processing.synthetic --out data/synthetic --num-train 256 --num-test 64
"""

from __future__ import annotations

import argparse
import fractions
import io
import itertools
import json
import logging
import math
import os
import random
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import av
import numpy as np
from PIL import Image

__all__ = [
    "COLOURS",
    "HELD_OUT_PAIRS",
    "SHAPES",
    "SPLIT_MEDIA",
    "SyntheticConfig",
    "SyntheticObject",
    "available_video_codec",
    "generate_record",
    "generate_split",
    "main",
    "write_dataset",
    "write_jsonl_split",
    "write_parquet_split",
    "write_split",
    "write_webdataset_split",
]

logger = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 190, 60),
    "blue": (45, 85, 235),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "orange": (250, 140, 25),
    "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (12, 12, 12), "grey": (100, 100, 100)}
SHAPES = ("square", "circle", "triangle")
SIZES: dict[str, float] = {
    "small": 0.2,
    "large": 0.34,
}  # side of the object's box, as a fraction of the frame
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
SPEEDS: dict[str, float] = {
    "slowly": 0.2,
    "quickly": 0.5,
}  # distance over the clip, as a fraction of the frame
# Colour-shape pairs that never occur in `train`, `img_*k` or `video_1k`; every `img_zero_*` scene holds one.
HELD_OUT_PAIRS = (("purple", "triangle"), ("orange", "circle"), ("white", "square"))
# Media type of each split (`None`: mixed, with `SyntheticConfig.video_fraction` videos).
SPLIT_MEDIA: dict[str, str | None] = {
    "train": None,
    "img_1k": "image",
    "img_10k": "image",
    "img_zero_1k": "image",
    "img_zero_10k": "image",
    "video_1k": "video",
}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass
class SyntheticConfig:
    """Knobs of the generator. The defaults make a few hundred samples in seconds."""

    image_size: int = 64
    min_frames: int = 8
    max_frames: int = 16
    fps: int = 8
    min_objects: int = 1
    max_objects: int = 4
    video_fraction: float = 0.5
    confusable_probability: float = 0.5
    box_stride: int = 2
    png_fraction: float = 0.25
    # Captions of the test splits keep one sentence (drawn per caption): training sees one sentence per caption
    # (caption sub-sampling, METHOD §4.4), so test text comes from the same distribution. None keeps them whole.
    test_caption_sentences: int | None = 1
    # Redraw a scene whose scene sentence or instance caption already occurs in the split (`generate_split`):
    # identical texts of different samples are false VTC negatives and VTM hard negatives of each other.
    unique_captions: bool = True
    max_redraws: int = 100
    video_codec: str | None = None  # None: libx264 if this PyAV build has it, else mpeg4
    seed: int = 0
    num_samples: dict[str, int] = field(
        default_factory=lambda: {split: (256 if split == "train" else 64) for split in SPLIT_MEDIA}
    )


@dataclass
class SyntheticObject:
    colour: str
    shape: str
    size: str
    direction: str = "still"
    speed: str = "slowly"
    start: tuple[float, float] = (0.0, 0.0)  # centre at the first frame, pixels

    @property
    def name(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


_CODEC_CACHE: dict[str, str] = {}


def available_video_codec(preferred: str | None = None) -> str:
    """`preferred` if PyAV can encode it, else `libx264` (H.264) if bundled, else `mpeg4` (always in FFmpeg)."""
    key = preferred or ""
    if key not in _CODEC_CACHE:
        for name in ([preferred] if preferred else []) + ["libx264", "mpeg4"]:
            try:
                av.codec.Codec(name, "w")
            except Exception:  # noqa: BLE001 - av raises several error types for unknown codecs
                continue
            if name != "libx264" and preferred is None:
                logger.warning("libx264 is not in this PyAV build; synthetic videos use the %r codec", name)
            _CODEC_CACHE[key] = name
            break
        else:  # pragma: no cover
            raise RuntimeError("No usable video encoder (libx264 or mpeg4) in this PyAV build.")
    return _CODEC_CACHE[key]


# ---------------------------------------------------------------------------------------------------------------------
# Scenes


def _sample_objects(
    rng: random.Random, config: SyntheticConfig, media_type: str, held_out: bool
) -> list[SyntheticObject]:
    num_objects = rng.randint(config.min_objects, config.max_objects)
    if held_out:
        num_objects = max(num_objects, 1)
    allowed = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS]
    objects: list[SyntheticObject] = []
    confusable = num_objects >= 2 and rng.random() < config.confusable_probability
    for position in range(num_objects):
        if held_out and position == 0:
            colour, shape = rng.choice(HELD_OUT_PAIRS)
        elif confusable and position == 1:
            first = objects[0]
            if rng.random() < 0.5:  # same shape, different colour
                colour = rng.choice([c for c in COLOURS if c != first.colour and (c, first.shape) in allowed])
                shape = first.shape
            else:  # same colour, different motion (videos) or different size (images)
                colour, shape = first.colour, first.shape
                if (colour, shape) not in allowed:
                    shape = rng.choice([s for s in SHAPES if (colour, s) in allowed])
        else:
            colour, shape = rng.choice(allowed)
        size = rng.choice(list(SIZES))
        direction, speed = "still", "slowly"
        if media_type == "video":
            direction, speed = rng.choice(list(DIRECTIONS)), rng.choice(list(SPEEDS))
        if confusable and position == 1 and (colour, shape) == (objects[0].colour, objects[0].shape):
            if media_type == "video":
                direction = rng.choice([d for d in DIRECTIONS if d != objects[0].direction])
            else:
                size = "small" if objects[0].size == "large" else "large"
        objects.append(
            SyntheticObject(colour=colour, shape=shape, size=size, direction=direction, speed=speed)
        )
    # No two objects with the same full description: instance captions must identify their instance.
    seen: set[tuple] = set()
    unique = []
    for obj in objects:
        key = (obj.colour, obj.shape, obj.size, obj.direction, obj.speed)
        if key not in seen:
            seen.add(key)
            unique.append(obj)
    return unique


def _place(objects: list[SyntheticObject], rng: random.Random, image_size: int, num_frames: int) -> None:
    """Chooses start positions that keep every object inside the frame over the whole clip, avoiding overlaps."""
    placed: list[tuple[float, float, float]] = []
    for obj in objects:
        side = SIZES[obj.size] * image_size
        dx, dy = DIRECTIONS[obj.direction]
        travel = SPEEDS[obj.speed] * image_size if (dx or dy) else 0.0
        low_x = side / 2 + max(0.0, -dx * travel)
        high_x = image_size - side / 2 - max(0.0, dx * travel)
        low_y = side / 2 + max(0.0, -dy * travel)
        high_y = image_size - side / 2 - max(0.0, dy * travel)
        best, best_gap = None, -math.inf
        for _ in range(20):
            candidate = (rng.uniform(low_x, high_x), rng.uniform(low_y, high_y))
            gap = min((math.dist(candidate, (x, y)) - (side + s) / 2 for x, y, s in placed), default=math.inf)
            if gap > best_gap:
                best, best_gap = candidate, gap
            if gap > 0:
                break
        obj.start = best
        placed.append((best[0], best[1], side))


def _centre(obj: SyntheticObject, frame: int, num_frames: int, image_size: int) -> tuple[float, float]:
    dx, dy = DIRECTIONS[obj.direction]
    progress = frame / max(1, num_frames - 1)
    travel = SPEEDS[obj.speed] * image_size * progress
    return obj.start[0] + dx * travel, obj.start[1] + dy * travel


def _box(obj: SyntheticObject, frame: int, num_frames: int, image_size: int) -> list[float]:
    cx, cy = _centre(obj, frame, num_frames, image_size)
    half = SIZES[obj.size] * image_size / 2
    return [round(cx - half, 2), round(cy - half, 2), round(cx + half, 2), round(cy + half, 2)]


def _render(
    objects: Sequence[SyntheticObject], background: str, frame: int, num_frames: int, size: int
) -> np.ndarray:
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUNDS[background]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    for obj in objects:
        x1, y1, x2, y2 = _box(obj, frame, num_frames, size)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if obj.shape == "square":
            mask = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
        elif obj.shape == "circle":
            radius = (x2 - x1) / 2
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
        else:  # triangle pointing up: apex at the top centre, base at the bottom
            half_width = (x2 - x1) / 2 * (ys - y1) / max(y2 - y1, 1e-6)
            mask = (ys >= y1) & (ys < y2) & (np.abs(xs - cx) <= half_width)
        canvas[mask] = COLOURS[obj.colour]
    return canvas


def _region(cx: float, cy: float, size: int) -> str:
    column = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else ""
    row = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else ""
    if row and column:
        return f"{row} {column}"
    return row or column or "centre"


def _motion_phrase(obj: SyntheticObject) -> str:
    """"standing still" or "moving left quickly": with size, colour and shape it identifies an object of a video."""
    return "standing still" if obj.direction == "still" else f"moving {obj.direction} {obj.speed}"


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _relation(obj: SyntheticObject, other: SyntheticObject) -> str:
    """Where `obj` is with respect to `other` at the first frame: "left of", "right of", "above" or "below"."""
    dx, dy = obj.start[0] - other.start[0], obj.start[1] - other.start[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _nearest(obj: SyntheticObject, objects: Sequence[SyntheticObject]) -> SyntheticObject | None:
    others = [other for other in objects if other is not obj]
    return min(others, key=lambda other: math.dist(obj.start, other.start), default=None)


# Every sentence below names each object it is about by size, colour and shape (and, in videos, its motion), so
# that any one sentence, the unit that caption sub-sampling trains on, identifies its subject among the others;
# the rest of each sentence (background, place, order, neighbour) tells scenes of the same objects apart.


def _instance_sentences(
    obj: SyntheticObject, objects: Sequence[SyntheticObject], background: str, media_type: str, image_size: int
) -> list[str]:
    region = _region(*obj.start, image_size)
    subject = obj.name if media_type == "image" else f"{obj.name} {_motion_phrase(obj)}"
    nearest = _nearest(obj, objects)
    if nearest is None:
        neighbour = f"the {subject} is the only shape on the {background} background."
    else:
        neighbour = f"the {subject} is {_relation(obj, nearest)} the {nearest.colour} {nearest.shape}."
    if media_type == "image":
        first = f"a {subject} in the {region}."
        others = len(objects) - 1
        company = "no other shape" if others == 0 else f"{_NUMBER_WORDS[others]} other shape{'s' if others > 1 else ''}"
        last = f"a {subject} on a {background} background with {company}."
    else:
        first = f"a {subject}."
        last = f"the {subject} starts in the {region} of a {background} background."
    return [first, neighbour, last]


def _scene_sentences(
    objects: Sequence[SyntheticObject], background: str, media_type: str, image_size: int
) -> list[str]:
    count = _NUMBER_WORDS[len(objects)]
    shapes = f"{count} shape{'s' if len(objects) > 1 else ''}"
    first = f"{shapes} on a {background} background: {_listed([f'a {obj.name}' for obj in objects])}."
    if media_type == "video":
        second = f"on {background}, " + _listed([f"the {obj.name} is {_motion_phrase(obj)}" for obj in objects]) + "."
    else:
        places = [f"the {obj.name} is in the {_region(*obj.start, image_size)}" for obj in objects]
        second = f"on {background}, " + _listed(places) + "."
    ordered = sorted(objects, key=lambda obj: obj.start[0])
    if len(objects) == 1:
        third = f"a single {objects[0].name} on {background}, in the {_region(*objects[0].start, image_size)}."
    else:
        third = f"{shapes} on {background} from left to right: {_listed([f'a {obj.name}' for obj in ordered])}."
    return [first, second, third]


# ---------------------------------------------------------------------------------------------------------------------
# Encoding


def _rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 planes stacked as `(3H/2, W)` uint8 (PyAV's `yuv420p` ndarray layout).

    Converting here rather than in swscale keeps the encoder input reproducible: swscale picks SIMD or C code paths
    by buffer alignment, and they round differently.
    """
    rgb = rgb.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    height, width = y.shape

    def subsample(plane: np.ndarray) -> np.ndarray:
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    planes = [y.reshape(-1), subsample(u).reshape(-1), subsample(v).reshape(-1)]
    return np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8).reshape(height * 3 // 2, width)


def encode_mp4(frames: np.ndarray, fps: int, codec: str | None = None) -> bytes:
    """Encodes `(T, H, W, 3)` uint8 frames (even H and W) as an MP4 (H.264 when available)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(available_video_codec(codec), rate=fractions.Fraction(fps, 1))
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 8
        # One thread: x264's output depends on its thread count. (Even so, a few bits of a stream can differ between
        # runs, as x264's float decisions see the FPU flags other libraries set; the decoded frames are identical.)
        stream.codec_context.thread_count = 1
        if stream.codec_context.name in ("libx264", "h264"):
            stream.codec_context.options = {"preset": "veryfast", "crf": "18"}
        for array in frames:
            frame = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(array), format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def encode_image(array: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(
        buffer, format=image_format, **({"quality": 92} if image_format == "JPEG" else {})
    )
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# Records and splits


@dataclass
class _Scene:
    media_type: str
    num_frames: int
    objects: list[SyntheticObject]
    background: str
    caption: str
    instance_captions: list[str]
    image_format: str


def _keep_sentences(rng: random.Random, sentences: list[str], count: int | None) -> str:
    if count is None or count >= len(sentences):
        return " ".join(sentences)
    chosen = sorted(rng.sample(range(len(sentences)), count))
    return " ".join(sentences[i] for i in chosen)


def _draw_scene(split: str, index: int, config: SyntheticConfig, attempt: int = 0) -> _Scene:
    """Everything of a record but its pixels; deterministic in `(config.seed, split, index, attempt)`."""
    if config.image_size % 2:
        raise ValueError("image_size must be even (H.264 with 4:2:0 chroma)")
    key = f"instap-synthetic\x1f{config.seed}\x1f{split}\x1f{index}" + (f"\x1f{attempt}" if attempt else "")
    rng = random.Random(key)
    media_type = SPLIT_MEDIA.get(split) or ("video" if rng.random() < config.video_fraction else "image")
    num_frames = rng.randint(config.min_frames, config.max_frames) if media_type == "video" else 1
    size = config.image_size
    objects = _sample_objects(rng, config, media_type, held_out=split.startswith("img_zero"))
    _place(objects, rng, size, num_frames)
    background = rng.choice(list(BACKGROUNDS))
    image_format = "PNG" if rng.random() < config.png_fraction else "JPEG"
    keep = None if split == "train" else config.test_caption_sentences
    caption = _keep_sentences(rng, _scene_sentences(objects, background, media_type, size), keep)
    instance_captions = [
        _keep_sentences(rng, _instance_sentences(obj, objects, background, media_type, size), keep) for obj in objects
    ]
    return _Scene(media_type, num_frames, objects, background, caption, instance_captions, image_format)


def _render_record(split: str, index: int, scene: _Scene, config: SyntheticConfig) -> dict[str, Any]:
    size, num_frames, objects = config.image_size, scene.num_frames, scene.objects
    frames = np.stack([_render(objects, scene.background, t, num_frames, size) for t in range(num_frames)])
    if scene.media_type == "video":
        media = encode_mp4(frames, config.fps, config.video_codec)
        annotated = sorted(set(range(0, num_frames, max(1, config.box_stride))) | {num_frames - 1})
    else:
        media = encode_image(frames[0], scene.image_format)
        annotated = [0]
    instances = [
        {
            "category": obj.shape,
            "caption": caption,
            "frame_index": annotated,
            "boxes": [_box(obj, t, num_frames, size) for t in annotated],
        }
        for obj, caption in zip(objects, scene.instance_captions)
    ]
    return {
        "id": f"{split}-{index:06d}",
        "media_type": scene.media_type,
        "media": media,
        "caption": scene.caption,
        "instances": instances,
    }


def generate_record(split: str, index: int, config: SyntheticConfig, attempt: int = 0) -> dict[str, Any]:
    """One record of `split` in the InstVL schema (media as encoded bytes). Deterministic in `(config.seed, split,
    index, attempt)`; `generate_split` redraws (a higher `attempt`) scenes whose captions repeat."""
    return _render_record(split, index, _draw_scene(split, index, config, attempt), config)


def _scene_texts(scene: _Scene) -> list[str]:
    from .captions import split_sentences

    return split_sentences(scene.caption) + scene.instance_captions


def generate_split(split: str, num_samples: int, config: SyntheticConfig) -> Iterator[dict[str, Any]]:
    """The records of a split. With `config.unique_captions`, no scene sentence and no instance caption occurs in
    two records of the split (a scene that would repeat one is redrawn, up to `config.max_redraws` times)."""
    seen: set[str] = set()
    for index in range(num_samples):
        scene = _draw_scene(split, index, config)
        if config.unique_captions:
            attempt = 0
            while set(_scene_texts(scene)) & seen or len(set(scene.instance_captions)) < len(scene.instance_captions):
                attempt += 1
                if attempt > config.max_redraws:
                    raise RuntimeError(
                        f"synthetic {split}[{index}]: no scene with new captions in {config.max_redraws} draws; the "
                        "split is too large for the caption vocabulary (set unique_captions=False)."
                    )
                scene = _draw_scene(split, index, config, attempt)
            seen.update(_scene_texts(scene))
        yield _render_record(split, index, scene, config)


def _num_shards(num_samples: int, shard_size: int) -> int:
    return max(1, math.ceil(num_samples / shard_size))


def _shards(
    records: Iterable[dict[str, Any]], num_records: int, shard_size: int
) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(records)
    for _ in range(_num_shards(num_records, shard_size)):
        yield list(itertools.islice(iterator, shard_size))


def write_parquet_split(
    out_dir: str, split: str, records: Iterable[dict[str, Any]], num_records: int, shard_size: int = 128
) -> list[str]:
    """Writes `records` to `out_dir/data/{split}-{i:05d}-of-{n:05d}.parquet` and returns the paths."""
    from datasets import Dataset

    from .instvl import INSTVL_FEATURES

    os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
    num_shards = _num_shards(num_records, shard_size)
    paths = []
    for shard, rows in enumerate(_shards(records, num_records, shard_size)):
        path = os.path.join(out_dir, "data", f"{split}-{shard:05d}-of-{num_shards:05d}.parquet")
        Dataset.from_list(rows, features=INSTVL_FEATURES).to_parquet(path)
        paths.append(path)
    return paths


def write_webdataset_split(
    out_dir: str, split: str, records: Iterable[dict[str, Any]], num_records: int, shard_size: int = 128
) -> list[str]:
    """Writes WebDataset shards `out_dir/{split}-{i:06d}.tar` (`{key}.json` + `{key}.mp4|jpg|png` per sample)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for shard, rows in enumerate(_shards(records, num_records, shard_size)):
        path = os.path.join(out_dir, f"{split}-{shard:06d}.tar")
        with tarfile.open(path, "w") as archive:
            for position, record in enumerate(rows):
                record = dict(record)
                media = record.pop("media")
                key = f"{shard * shard_size + position:08d}"
                extension = "mp4" if record["media_type"] == "video" else _image_extension(media)
                for name, data in (
                    (f"{key}.json", json.dumps(record).encode()),
                    (f"{key}.{extension}", media),
                ):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 0
                    archive.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def write_jsonl_split(out_dir: str, split: str, records: Iterable[dict[str, Any]]) -> str:
    """Writes `out_dir/{split}.jsonl` with media files under `out_dir/media/{split}/` (paths relative to `out_dir`)."""
    media_dir = os.path.join(out_dir, "media", split)
    os.makedirs(media_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{split}.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            record = dict(record)
            media = record.pop("media")
            extension = "mp4" if record["media_type"] == "video" else _image_extension(media)
            relative = os.path.join("media", split, f"{record['id']}.{extension}")
            with open(os.path.join(out_dir, relative), "wb") as media_file:
                media_file.write(media)
            handle.write(json.dumps(dict(record, media=relative)) + "\n")
    return path


def write_split(
    out_dir: str,
    split: str,
    records: Iterable[dict[str, Any]],
    num_records: int,
    output_format: str = "parquet",
    shard_size: int = 128,
) -> list[str]:
    """Writes InstVL records (media as bytes) in `"parquet"`, `"webdataset"` or `"jsonl"` form; returns the files."""
    if output_format == "parquet":
        return write_parquet_split(out_dir, split, records, num_records, shard_size)
    if output_format == "webdataset":
        return write_webdataset_split(out_dir, split, records, num_records, shard_size)
    if output_format == "jsonl":
        return [write_jsonl_split(out_dir, split, records)]
    raise ValueError(f"Unknown format {output_format!r}; use parquet, webdataset or jsonl.")


def _image_extension(data: bytes) -> str:
    return "png" if data.startswith(b"\x89PNG") else "jpg"


def _dataset_card(splits: Sequence[str], config: SyntheticConfig) -> str:
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    lines += ["---", "", "# Synthetic InstVL", "", __doc__.strip().split("\n\n")[0], "", "```json"]
    lines += [json.dumps(asdict(config), indent=2), "```", ""]
    return "\n".join(lines)


def write_dataset(
    out_dir: str,
    config: SyntheticConfig | None = None,
    splits: Sequence[str] | None = None,
    output_format: str = "parquet",
    shard_size: int = 128,
) -> dict[str, list[str]]:
    """Writes the splits of a synthetic InstVL to `out_dir` (`"parquet"`, `"webdataset"` or `"jsonl"`)."""
    config = config or SyntheticConfig()
    splits = list(splits or SPLIT_MEDIA)
    written: dict[str, list[str]] = {}
    from tqdm.auto import tqdm

    for split in splits:
        count = config.num_samples.get(split, 0)
        records = tqdm(generate_split(split, count, config), total=count, desc=f"synthetic InstVL {split}", disable=None)
        written[split] = write_split(out_dir, split, records, count, output_format, shard_size)
    if output_format == "parquet":
        with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(_dataset_card(splits, config))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m instap_processing.synthetic", description="Write a synthetic InstVL data set."
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=256, help="samples in `train`")
    parser.add_argument("--num-test", type=int, default=64, help="samples in each test split")
    parser.add_argument("--splits", nargs="+", default=list(SPLIT_MEDIA), choices=list(SPLIT_MEDIA))
    parser.add_argument("--format", default="parquet", choices=["parquet", "webdataset", "jsonl"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--min-frames", type=int, default=8)
    parser.add_argument("--max-frames", type=int, default=16)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--video-fraction", type=float, default=0.5, help="share of videos in `train`")
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--video-codec", default=None, help="default: libx264 if available, else mpeg4")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import datasets

    datasets.disable_progress_bars()

    config = SyntheticConfig(
        image_size=args.image_size,
        min_frames=args.min_frames,
        max_frames=args.max_frames,
        fps=args.fps,
        video_fraction=args.video_fraction,
        video_codec=args.video_codec,
        seed=args.seed,
        num_samples={split: args.num_train if split == "train" else args.num_test for split in SPLIT_MEDIA},
    )
    start = time.perf_counter()
    written = write_dataset(args.out, config, args.splits, args.format, args.shard_size)
    total = sum(config.num_samples[split] for split in written)
    logger.info(
        "wrote %d samples (%s) to %s in %.1f s; video codec %s",
        total,
        ", ".join(f"{split}: {config.num_samples[split]}" for split in written),
        args.out,
        time.perf_counter() - start,
        available_video_codec(args.video_codec),
    )


if __name__ == "__main__":
    main()
