"""Plain-Python view of one InstVL record, its validation, and stable source ids.

This module has no dependency on `datasets`, so that the processor (which may ship as Hub remote code) can use it.
The `datasets.Features` of the schema live in `instvl.py`.

Validation happens in two steps, because some checks need the decoded media:

1. [`parse_record`] checks the structure of a raw record (types, captions, box shapes, NaN coordinates, `x2 < x1`).
2. [`validate_instances_against_media`] checks boxes and trajectory frame indices against the frame size and the
   number of frames, once the media has been opened.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InstVLSampleError

__all__ = [
    "MEDIA_TYPES",
    "InstVLInstance",
    "InstVLRecord",
    "decode_caption",
    "parse_instance",
    "parse_record",
    "stable_source_id",
    "validate_instances_against_media",
]

MEDIA_TYPES = ("image", "video")

# 63 bits, so that the id is a non-negative int64 on every rank and in every framework.
_SOURCE_ID_MASK = (1 << 63) - 1


def stable_source_id(sample_id: str) -> int:
    """A stable, non-negative 63-bit integer for a sample id string.

    The id is a hash of the string only (BLAKE2b, 8 bytes), so every rank and every worker computes the same value
    for the same sample without communication, and ids of different samples collide with probability ~N²/2⁶⁴.
    """
    digest = hashlib.blake2b(str(sample_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _SOURCE_ID_MASK


@dataclass
class InstVLInstance:
    """One annotated instance: a box (image) or a box trajectory (video) with a caption.

    Attributes:
        caption (`str`): free-form description of the instance.
        frame_index (`list[int]`): frames where the box is known (`[0]` for an image), in increasing order.
        boxes (`np.ndarray`): float64 array of shape `(len(frame_index), 4)`, `[x1, y1, x2, y2]` in the pixels of the
            displayed source frame.
        category (`str`): e.g. `"person"`; may be empty.
        index (`int`): position of the instance in the record's `instances` list (kept for error messages).
    """

    caption: str
    frame_index: list[int]
    boxes: np.ndarray
    category: str = ""
    index: int = 0


@dataclass
class InstVLRecord:
    """One InstVL record after structural validation (see METHOD §6)."""

    id: str
    media_type: str
    media: bytes | str
    caption: str
    instances: list[InstVLInstance] = field(default_factory=list)

    @property
    def source_id(self) -> int:
        return stable_source_id(self.id)


def decode_caption(value: Any, *, sample_id: str | None, field: str) -> str:
    """Returns a caption as a stripped `str`, raising `InstVLSampleError` for non-UTF-8 bytes or empty text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InstVLSampleError(
                f"caption is not valid UTF-8 ({error.reason} at byte {error.start})",
                sample_id=sample_id,
                field=field,
                reason="bad_caption",
            ) from None
    if not isinstance(value, str):
        raise InstVLSampleError(
            f"caption must be a string, got {type(value).__name__}",
            sample_id=sample_id,
            field=field,
            reason="bad_caption",
        )
    # Lone surrogates come from JSON files written with broken encoders; they cannot be tokenized.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InstVLSampleError(
            "caption contains characters that are not valid UTF-8 (lone surrogates)",
            sample_id=sample_id,
            field=field,
            reason="bad_caption",
        ) from None
    value = value.strip()
    if not value:
        raise InstVLSampleError("caption is empty", sample_id=sample_id, field=field, reason="bad_caption")
    # Text made only of invisible characters (zero-width spaces, control characters, format marks) is empty too:
    # it tokenizes to [UNK]s or to nothing.
    if not any(unicodedata.category(char)[0] in "LNPS" for char in value):
        raise InstVLSampleError(
            f"caption has no visible character ({value!r})", sample_id=sample_id, field=field, reason="bad_caption"
        )
    return value


def _parse_boxes(raw_boxes: Any, *, sample_id: str, field: str) -> np.ndarray:
    try:
        boxes = np.asarray(raw_boxes, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InstVLSampleError(
            "boxes must be a list of [x1, y1, x2, y2] numbers",
            sample_id=sample_id,
            field=field,
            reason="malformed_instances",
        ) from None
    if boxes.ndim == 1 and boxes.size == 4:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InstVLSampleError(
            f"boxes must have shape (num_boxes, 4), got {tuple(boxes.shape)}",
            sample_id=sample_id,
            field=field,
            reason="malformed_instances",
        )
    for row, box in enumerate(boxes):
        # Boxes travel as float32 tensors: a coordinate finite in float64 but not in float32 (1e39) is infinite there.
        if not (np.all(np.isfinite(box)) and np.all(np.abs(box) <= np.finfo(np.float32).max)):
            raise InstVLSampleError(
                f"box {box.tolist()} has NaN or infinite coordinates (in float32)",
                sample_id=sample_id,
                field=f"{field}[{row}]",
                reason="nan_coordinates",
            )
        if box[2] < box[0] or box[3] < box[1]:
            raise InstVLSampleError(
                f"box {box.tolist()} has x2 < x1 or y2 < y1 (expected [x1, y1, x2, y2])",
                sample_id=sample_id,
                field=f"{field}[{row}]",
                reason="invalid_box",
            )
    return boxes


def parse_instance(raw: Any, position: int, *, sample_id: str | None, media_type: str) -> InstVLInstance:
    """Checks one raw instance (`caption`, `boxes`, `frame_index`, optional `category`) and returns it parsed.

    `frame_index` may be left out for an image (`[0]`) or a single box. Raises [`InstVLSampleError`].
    """
    field = f"instances[{position}]"
    if not isinstance(raw, Mapping):
        raise InstVLSampleError(
            f"an instance must be a record, got {type(raw).__name__}",
            sample_id=sample_id,
            field=field,
            reason="malformed_instances",
        )
    for key in ("caption", "boxes"):
        if key not in raw or raw[key] is None:
            raise InstVLSampleError(
                f"instance has no {key!r}",
                sample_id=sample_id,
                field=f"{field}.{key}",
                reason="malformed_instances",
            )
    caption = decode_caption(raw["caption"], sample_id=sample_id, field=f"{field}.caption")
    boxes = _parse_boxes(raw["boxes"], sample_id=sample_id, field=f"{field}.boxes")

    raw_frame_index = raw.get("frame_index")
    if raw_frame_index is None:
        if media_type == "image" or len(boxes) == 1:
            raw_frame_index = [0] * len(boxes)
        else:
            raise InstVLSampleError(
                "a video instance with several boxes needs `frame_index`",
                sample_id=sample_id,
                field=f"{field}.frame_index",
                reason="malformed_instances",
            )
    try:
        frame_index = [int(index) for index in raw_frame_index]
        if any(float(a) != int(a) for a in raw_frame_index):
            raise ValueError
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf), float(10**400)
        raise InstVLSampleError(
            "frame_index must be a list of integers",
            sample_id=sample_id,
            field=f"{field}.frame_index",
            reason="malformed_instances",
        ) from None
    if len(frame_index) != len(boxes):
        raise InstVLSampleError(
            f"{len(frame_index)} frame indices for {len(boxes)} boxes (expected one box per frame index)",
            sample_id=sample_id,
            field=field,
            reason="malformed_instances",
        )
    if len(frame_index) == 0:
        raise InstVLSampleError(
            "instance has no box", sample_id=sample_id, field=f"{field}.boxes", reason="malformed_instances"
        )
    if len(set(frame_index)) != len(frame_index):
        raise InstVLSampleError(
            "frame_index contains duplicates",
            sample_id=sample_id,
            field=f"{field}.frame_index",
            reason="malformed_instances",
        )
    order = np.argsort(frame_index, kind="stable")
    category = raw.get("category") or ""
    if not isinstance(category, str):
        category = str(category)
    return InstVLInstance(
        caption=caption,
        frame_index=[frame_index[i] for i in order],
        boxes=boxes[order],
        category=category,
        index=position,
    )


def parse_record(raw: Mapping[str, Any], *, require_caption: bool = True) -> InstVLRecord:
    """Checks the structure of a raw InstVL record and returns an [`InstVLRecord`].

    Args:
        raw (`Mapping`):
            A record as read from Parquet, JSON or WebDataset: `id`, `media_type`, `media` (bytes or a path),
            `caption`, `instances`.
        require_caption (`bool`, *optional*, defaults to `True`):
            Stage 1 (video only) does not need captions; set `False` to accept records without one.

    Raises:
        [`InstVLSampleError`] naming the sample id and the field.
    """
    if not isinstance(raw, Mapping):
        raise InstVLSampleError(
            f"a record must be a mapping, got {type(raw).__name__}", reason="malformed_record"
        )
    sample_id = raw.get("id")
    if sample_id is None or (isinstance(sample_id, str) and not sample_id.strip()):
        raise InstVLSampleError("record has no `id`", field="id", reason="malformed_record")
    if isinstance(sample_id, bytes):
        sample_id = sample_id.decode("utf-8", errors="replace")
    sample_id = str(sample_id)

    media_type = raw.get("media_type")
    if media_type not in MEDIA_TYPES:
        raise InstVLSampleError(
            f"media_type must be one of {MEDIA_TYPES}, got {media_type!r}",
            sample_id=sample_id,
            field="media_type",
            reason="malformed_record",
        )

    media = raw.get("media")
    if isinstance(media, Mapping):  # a `datasets` Image/Video-style struct {"bytes", "path"}
        media = media.get("bytes") or media.get("path")
    if isinstance(media, (bytearray, memoryview)):
        media = bytes(media)
    if isinstance(media, os.PathLike):
        media = os.fspath(media)
    if not isinstance(media, (bytes, str)) or len(media) == 0:
        raise InstVLSampleError(
            "media must be non-empty bytes or a path string",
            sample_id=sample_id,
            field="media",
            reason="malformed_record" if not isinstance(media, bytes) else "corrupt_media",
        )

    raw_caption = raw.get("caption")
    if raw_caption is None and not require_caption:
        caption = ""
    else:
        caption = decode_caption(raw_caption, sample_id=sample_id, field="caption")

    raw_instances = raw.get("instances")
    if raw_instances is None:
        raw_instances = []
    if isinstance(raw_instances, (str, bytes, Mapping)) or not isinstance(raw_instances, Sequence):
        if isinstance(raw_instances, np.ndarray):
            raw_instances = list(raw_instances)
        else:
            raise InstVLSampleError(
                f"instances must be a list of records, got {type(raw_instances).__name__}",
                sample_id=sample_id,
                field="instances",
                reason="malformed_instances",
            )
    instances = [
        parse_instance(instance, position, sample_id=sample_id, media_type=media_type)
        for position, instance in enumerate(raw_instances)
    ]
    return InstVLRecord(
        id=sample_id, media_type=media_type, media=media, caption=caption, instances=instances
    )


def validate_instances_against_media(
    record: InstVLRecord, *, num_frames: int, height: int, width: int
) -> None:
    """Checks boxes and trajectory frame indices against the decoded media.

    A box that overlaps the frame only partly is fine (it is clipped later); a box that does not overlap the frame
    at all, or a frame index outside `[0, num_frames)`, raises [`InstVLSampleError`].
    """
    for instance in record.instances:
        validate_instance_against_media(
            instance, sample_id=record.id, num_frames=num_frames, height=height, width=width
        )


def validate_instance_against_media(
    instance: InstVLInstance, *, sample_id: str | None, num_frames: int, height: int, width: int
) -> None:
    """[`validate_instances_against_media`] for one instance (`instance.index` names it in the error)."""
    field = f"instances[{instance.index}]"
    for row, (frame, box) in enumerate(zip(instance.frame_index, instance.boxes)):
        if frame < 0 or frame >= num_frames:
            raise InstVLSampleError(
                f"trajectory frame index {frame} is outside the media's {num_frames} frame(s)",
                sample_id=sample_id,
                field=f"{field}.frame_index[{row}]",
                reason="frame_index_out_of_range",
            )
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (_overlaps(x1, x2, width) and _overlaps(y1, y2, height)):
            raise InstVLSampleError(
                f"box {[x1, y1, x2, y2]} lies outside the {width}x{height} frame",
                sample_id=sample_id,
                field=f"{field}.boxes[{row}]",
                reason="box_outside_frame",
            )


def _overlaps(low: float, high: float, size: int) -> bool:
    # A degenerate (zero-size) box is kept if it lies on the closed frame (it is expanded to a patch later); a proper
    # box must share a positive length with [0, size].
    if low == high:
        return 0.0 <= low <= size
    return high > 0.0 and low < size
