"""Media decoding with PyAV (videos) and PIL (images) that reads only the frames it needs.

[`decode_video`] first demuxes the video stream without decoding it, which gives the presentation timestamp of every
frame and the positions of the keyframes. It then samples frame indices (METHOD §4.4), and decodes only up to each
needed frame, seeking to the keyframe before it when that skips more frames than a seek costs. Indices therefore
count frames in display order even for variable-frame-rate videos, and agree with the `frame_index` of InstVL box
trajectories.

Frames are returned in display orientation: the rotation of the container's display matrix (phone videos) is
applied, as is the EXIF orientation of images. Boxes in InstVL annotate the displayed frame.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InstVLSampleError
from .sampling import sample_frame_indices

__all__ = [
    "DECODE_THREAD_TYPES", "DecodedVideo", "MediaSource", "decode_image", "decode_media", "decode_video",
    "read_media_bytes",
]

logger = logging.getLogger(__name__)

MediaSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


@dataclass
class DecodedVideo:
    """Decoded frames of a video (or an image, as a 1-frame video) and what is known about them.

    Attributes:
        frames (`torch.Tensor`): uint8 tensor of shape `(T, 3, H, W)`, RGB, display orientation. Decoded media are
            stored channels-last (`frames.permute(0, 2, 3, 1)` is contiguous, as FFmpeg wrote them); call
            `.contiguous()` for a planar copy.
        frame_indices (`list[int]`): for each returned frame, its index among the source's frames (display order).
        total_num_frames (`int`): number of frames of the source.
        fps (`float`, *optional*): average frame rate (`None` for images).
        timestamps (`list[float]`): presentation time of each returned frame, in seconds from the first frame.
        media_type (`str`): `"video"` or `"image"`.
        rotation (`int`): degrees (counter-clockwise) the decoded frames were rotated by for display.
        repeated_frames (`bool`): `True` when the source had fewer frames than requested, so that some frames were
            repeated to fill the clip.
        codec (`str`, *optional*): codec name of the source (e.g. `"h264"`, `"jpeg"`).
        decoded_frame_count (`int`): frames the decoder produced to get these (the cost of the decode; the whole
            video would be `total_num_frames`).
    """

    frames: torch.Tensor
    frame_indices: list[int]
    total_num_frames: int
    fps: float | None = None
    timestamps: list[float] | None = None
    media_type: str = "video"
    rotation: int = 0
    repeated_frames: bool = False
    codec: str | None = None
    decoded_frame_count: int = 0

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[-2])

    @property
    def width(self) -> int:
        return int(self.frames.shape[-1])

    def to_video_metadata(self):
        """The transformers `VideoMetadata` of the returned clip (for `video_metadata=` arguments)."""
        from transformers.video_utils import VideoMetadata

        duration = self.total_num_frames / self.fps if self.fps else None
        return VideoMetadata(
            total_num_frames=self.total_num_frames,
            fps=self.fps,
            width=self.width,
            height=self.height,
            duration=duration,
            video_backend="pyav",
            frames_indices=list(self.frame_indices),
        )


# PyAV's `CodecContext.thread_type` values that [`decode_video`] accepts.
DECODE_THREAD_TYPES = ("FRAME", "SLICE", "AUTO")

# File name endings read as images (PIL) rather than videos (PyAV), everywhere a path is routed.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# FFmpeg opens only local files, and only with video demuxers: a playlist (HLS `.m3u8`, `concat`, image
# sequences) would make it open other files or URLs that the data names, whatever the file is called.
VIDEO_DEMUXERS = (
    "mov", "mp4", "matroska", "webm", "avi", "flv", "mpegts", "mpeg", "ogg", "asf", "gif", "ivf", "h264", "hevc",
    "m4v", "mjpeg", "yuv4mpegpipe", "nut", "mxf", "dv", "rm",
)
_SAFE_OPEN_OPTIONS = {"format_whitelist": ",".join(VIDEO_DEMUXERS), "protocol_whitelist": "file"}


def read_media_bytes(source: MediaSource, *, sample_id: str | None = None, field: str = "media") -> bytes:
    """Reads a path, a file object or a bytes-like object into `bytes` (raising `missing_file` for a bad path)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise InstVLSampleError(
                f"media file {path!r} does not exist", sample_id=sample_id, field=field, reason="missing_file"
            )
        with open(path, "rb") as handle:
            return handle.read()
    if hasattr(source, "read"):
        return source.read()
    raise TypeError(f"Unsupported media source of type {type(source).__name__}.")


def _as_av_input(source: MediaSource, *, sample_id: str | None) -> str | BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InstVLSampleError(
                "media bytes are empty", sample_id=sample_id, field="media", reason="corrupt_media"
            )
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise InstVLSampleError(
                f"media file {path!r} does not exist",
                sample_id=sample_id,
                field="media",
                reason="missing_file",
            )
        return path
    if hasattr(source, "read"):
        return source
    raise TypeError(f"Unsupported media source of type {type(source).__name__}.")


@dataclass
class _StreamIndex:
    """Display-order presentation timestamps of all frames, and which display positions are keyframes."""

    pts: np.ndarray  # int64, sorted
    keyframe_positions: np.ndarray  # int64, sorted display positions of keyframes
    seekable: bool  # False when packets carry no usable timestamps; then we decode sequentially

    def keyframe_at_or_before(self, position: int) -> int:
        slot = int(np.searchsorted(self.keyframe_positions, position, side="right")) - 1
        return int(self.keyframe_positions[slot]) if slot >= 0 else 0


def _index_stream(container, stream, *, sample_id: str | None) -> _StreamIndex:
    timestamps, keyframe_timestamps = [], []
    missing_timestamp = False
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end of the stream
                continue
            timestamp = packet.pts if packet.pts is not None else packet.dts
            if timestamp is None:
                missing_timestamp = True
                timestamp = len(timestamps)
            timestamps.append(timestamp)
            if packet.is_keyframe:
                keyframe_timestamps.append(timestamp)
    except av.error.FFmpegError as error:
        raise InstVLSampleError(
            f"cannot demux the video stream ({error})",
            sample_id=sample_id,
            field="media",
            reason="corrupt_media",
        ) from None
    pts = np.asarray(sorted(timestamps), dtype=np.int64)
    seekable = not missing_timestamp and len(np.unique(pts)) == len(pts)
    if seekable:
        keyframes = np.searchsorted(pts, np.asarray(sorted(keyframe_timestamps), dtype=np.int64))
    else:
        pts = np.arange(len(timestamps), dtype=np.int64)
        keyframes = np.zeros(1, dtype=np.int64)
    if len(keyframes) == 0 or keyframes[0] != 0:
        keyframes = np.concatenate([np.zeros(1, dtype=np.int64), keyframes])
    return _StreamIndex(pts=pts, keyframe_positions=np.unique(keyframes), seekable=seekable)


def _frame_to_array(frame, rotation: int, reformatter: VideoReformatter) -> np.ndarray:
    # One reformatter per video: `frame.to_ndarray(format=...)` builds a new swscale context for every frame, which
    # costs more than the conversion of a small frame (same pixels either way).
    array = reformatter.reformat(frame, format="rgb24").to_ndarray()
    quarter_turns = (rotation // 90) % 4
    if quarter_turns:
        # np.rot90 turns counter-clockwise, as the display matrix rotation of FFmpeg/PyAV is counted.
        array = np.rot90(array, k=quarter_turns)
    return array


def _frame_rotation(frame, stream) -> int:
    rotation = 0
    try:
        rotation = int(frame.rotation)
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - older PyAV
        rotation = 0
    if rotation == 0:
        # Files written by old muxers carry the rotation as a `rotate` tag (clockwise degrees).
        tag = stream.metadata.get("rotate") if stream.metadata else None
        if tag:
            try:
                rotation = -int(float(tag))
            except ValueError:
                rotation = 0
    quarter = int(round(rotation / 90.0)) * 90
    return (quarter + 179) % 360 - 179  # in (-180, 180]


class _FrameStore:
    """The RGB frames at the wanted display positions, written into one `(N, H, W, 3)` array as they are decoded
    (FFmpeg's RGB24 layout: no stacking or transposing copy later, and half the peak memory of keeping them apart)."""

    def __init__(self, wanted: Sequence[int], *, sample_id: str | None):
        self.slot_of = {position: slot for slot, position in enumerate(wanted)}
        self.filled: set[int] = set()
        self.array: np.ndarray | None = None
        self.sample_id = sample_id

    def wants(self, position: int) -> bool:
        return position in self.slot_of and position not in self.filled

    def put(self, position: int, rgb: np.ndarray) -> None:
        if self.array is None:
            self.array = np.empty((len(self.slot_of), *rgb.shape), dtype=np.uint8)
        elif rgb.shape != self.array.shape[1:]:
            raise InstVLSampleError(
                f"the frame size changes within the stream ({self.array.shape[2]}x{self.array.shape[1]} to "
                f"{rgb.shape[1]}x{rgb.shape[0]} at frame {position}); such streams are not supported",
                sample_id=self.sample_id,
                field="media",
                reason="corrupt_media",
            )
        self.array[self.slot_of[position]] = rgb
        self.filled.add(position)


def _decode_positions(
    container,
    stream,
    index: _StreamIndex,
    positions: Sequence[int],
    *,
    seek_overhead_frames: int,
    skip_unneeded_frames: bool,
    sample_id: str | None,
) -> tuple[_FrameStore, int, int]:
    """Decodes the frames at the given display positions, seeking to keyframes when that skips enough frames.

    Returns the frames (in sorted position order), the display rotation that was applied to them, and the number of
    frames the decoder produced.
    """
    wanted = sorted({int(p) for p in positions})
    store = _FrameStore(wanted, sample_id=sample_id)
    position_of_pts = {int(t): p for p, t in enumerate(index.pts)} if index.seekable else None
    wanted_pts = {int(index.pts[p]) for p in wanted} if index.seekable else None
    rotation: int | None = None
    last_position = -1
    decoded_frame_count = 0
    codec_context = stream.codec_context
    reformatter = VideoReformatter()

    def frames_from_here():
        """Decodes from the current demuxer position. Packets of frames we do not need are sent with
        `skip_frame="NONREF"`: the decoder then drops them if no other frame references them (most B-frames),
        which saves their decoding; frames we need and reference frames are always decoded."""
        for packet in container.demux(stream):
            if skip_unneeded_frames and wanted_pts is not None:
                needed = packet.pts is None or int(packet.pts) in wanted_pts
                codec_context.skip_frame = "DEFAULT" if needed else "NONREF"
            yield from codec_context.decode(packet)
        codec_context.skip_frame = "DEFAULT"

    def run(frames_iterator, target: int, start_position: int) -> tuple[int, bool]:
        """Pulls frames until the one at `target` is passed; returns (next position, stream exhausted)."""
        nonlocal rotation, last_position, decoded_frame_count
        position = start_position
        for frame in frames_iterator:
            decoded_frame_count += 1
            if position_of_pts is not None and frame.pts is not None and int(frame.pts) in position_of_pts:
                position = position_of_pts[int(frame.pts)]
            if rotation is None:
                rotation = _frame_rotation(frame, stream)
            if store.wants(position):
                store.put(position, _frame_to_array(frame, rotation, reformatter))
            last_position = max(last_position, position)
            position += 1
            if position > target:
                return position, False
        return position, True

    def seek_to(position: int) -> None:
        if index.seekable:
            container.seek(int(index.pts[position]), backward=True, any_frame=False, stream=stream)
        else:
            container.seek(0)

    try:
        frames_iterator = None
        cursor = 0  # display position of the next frame the decoder will return
        exhausted = False
        for target in wanted:
            if target in store.filled:
                continue
            keyframe = index.keyframe_at_or_before(target) if index.seekable else 0
            must_restart = frames_iterator is None or target < cursor
            if must_restart or keyframe - cursor > seek_overhead_frames:
                seek_to(keyframe)
                cursor = keyframe
                frames_iterator = frames_from_here()
                exhausted = False
            elif exhausted:
                break
            cursor, exhausted = run(frames_iterator, target, cursor)
        # A seek that lands after its target (a keyframe whose decode timestamp is later than the index says)
        # leaves holes before frames we did decode: fill them with one sequential pass from the start.
        skipped = [p for p in wanted if p not in store.filled and p < last_position]
        if skipped and index.seekable:
            seek_to(0)
            run(frames_from_here(), max(skipped), 0)
    except av.error.FFmpegError as error:
        raise InstVLSampleError(
            f"cannot decode the video stream ({error})",
            sample_id=sample_id,
            field="media",
            reason="corrupt_media",
        ) from None
    return store, rotation or 0, decoded_frame_count


def _check_not_truncated(container, stream, total_num_frames: int, *, sample_id: str | None) -> None:
    """Policy for videos cut short (a Matroska/WebM file truncated after its header still opens and demuxes, with
    fewer frames): an error, reason `truncated_media`, when the stream lacks more than one frame (or 2 %, for long
    videos whose declared duration is rounded) of those its declared duration implies. The declared duration is the
    video stream's, or the container's when the video is its only stream (a longer audio track must not count)."""
    rate = float(stream.average_rate) if stream.average_rate else None
    if stream.duration and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:
        declared = container.duration / 1_000_000
    else:
        return
    if not rate or declared <= 0:
        return
    expected = declared * rate
    if total_num_frames < expected - max(1.0, 0.02 * expected) - 1e-6:
        raise InstVLSampleError(
            f"the video stream has {total_num_frames} frames but its container declares {declared:.3g} s at "
            f"{rate:.3g} fps (~{expected:.0f} frames): the file is cut short",
            sample_id=sample_id,
            field="media",
            reason="truncated_media",
        )


def decode_video(
    source: MediaSource,
    *,
    num_frames: int | None = None,
    frame_indices: Sequence[int] | None = None,
    sampling: str = "middle",
    generator: torch.Generator | None = None,
    sample_indices_fn: Callable[[int], Sequence[int]] | None = None,
    num_threads: int = 1,
    thread_type: str = "FRAME",
    seek_overhead_frames: int = 4,
    skip_unneeded_frames: bool = True,
    sample_id: str | None = None,
) -> DecodedVideo:
    """Decodes the sampled frames of a video.

    Args:
        source (`str`, `os.PathLike`, `bytes` or a binary file object):
            The encoded video (MP4, WebM, MKV, ... anything this FFmpeg build demuxes).
        num_frames (`int`, *optional*):
            Number of frames `T` to sample with [`sample_frame_indices`]. With neither `num_frames` nor
            `frame_indices`, every frame is decoded.
        frame_indices (`Sequence[int]`, *optional*):
            Explicit display-order indices to decode (instead of sampling).
        sampling (`str`, *optional*, defaults to `"middle"`):
            `"rand"` (train) or `"middle"` (eval), see METHOD §4.4.
        generator (`torch.Generator`, *optional*):
            RNG for `"rand"` sampling.
        sample_indices_fn (`Callable[[int], Sequence[int]]`, *optional*):
            Called with the number of frames of the video, returns the indices to decode; takes precedence over
            `num_frames`/`sampling` (the video processor passes its `sample_frames` here).
        num_threads (`int`, *optional*, defaults to 1):
            FFmpeg decoding threads (0: FFmpeg picks one per core). Keep 1 inside DataLoader workers when the
            workers already use the cores.
        thread_type (`str`, *optional*, defaults to `"FRAME"`):
            How FFmpeg uses `num_threads > 1` (PyAV's `thread_type`): `"FRAME"` decodes consecutive frames in
            parallel (any stream, at a few frames of latency per seek), `"SLICE"` splits each frame (only helps
            streams encoded with several slices), `"AUTO"` lets FFmpeg choose. `benchmarks/bench_decode.py` measures
            them.
        seek_overhead_frames (`int`, *optional*, defaults to 4):
            A seek is done when it skips more than this many frames; a seek costs about as much as decoding a few
            small frames (it flushes the decoder).
        skip_unneeded_frames (`bool`, *optional*, defaults to `True`):
            Let the decoder drop non-reference frames that are not sampled (most B-frames of H.264/MPEG-4); their
            decoding is the bulk of the saving on videos with long keyframe intervals.
        sample_id (`str`, *optional*):
            Named in error messages.

    Returns:
        [`DecodedVideo`]. When the video has fewer than `num_frames` frames, frames are repeated and
        `repeated_frames` is `True`.

    Raises:
        [`InstVLSampleError`] with reason `missing_file`, `corrupt_media`, `truncated_media`, `zero_frames` or
        `unsupported_codec`.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(f"num_threads must be an int >= 0 (0: one per core), got {num_threads!r}.")
    if thread_type not in DECODE_THREAD_TYPES:
        raise ValueError(f"thread_type must be one of {DECODE_THREAD_TYPES}, got {thread_type!r}.")
    av_input = _as_av_input(source, sample_id=sample_id)
    try:
        container = av.open(av_input, mode="r", metadata_errors="ignore", options=dict(_SAFE_OPEN_OPTIONS))
    except av.error.FileNotFoundError:
        raise InstVLSampleError(
            f"media file {av_input!r} does not exist",
            sample_id=sample_id,
            field="media",
            reason="missing_file",
        ) from None
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as error:
        raise InstVLSampleError(
            f"cannot open the media as a video container ({error})",
            sample_id=sample_id,
            field="media",
            reason="corrupt_media",
        ) from None

    with container:
        if not container.streams.video:
            raise InstVLSampleError(
                "the container has no video stream", sample_id=sample_id, field="media", reason="zero_frames"
            )
        stream = container.streams.video[0]
        try:
            codec_context = stream.codec_context
        except av.error.FFmpegError:  # pragma: no cover - depends on the FFmpeg build
            codec_context = None
        if codec_context is None:
            raise InstVLSampleError(
                "this FFmpeg build has no decoder for the video codec of the stream"
                f" (codec tag {getattr(stream, 'codec_tag', '?')!r})",
                sample_id=sample_id,
                field="media",
                reason="unsupported_codec",
            )
        codec_context.thread_count = int(num_threads)
        if num_threads != 1:
            codec_context.thread_type = thread_type
        codec_name = codec_context.name

        index = _index_stream(container, stream, sample_id=sample_id)
        total_num_frames = len(index.pts)
        if total_num_frames == 0:
            raise InstVLSampleError(
                "the video stream has no frames", sample_id=sample_id, field="media", reason="zero_frames"
            )

        _check_not_truncated(container, stream, total_num_frames, sample_id=sample_id)

        if frame_indices is not None:
            positions = [int(i) for i in frame_indices]
            bad = [p for p in positions if p < 0 or p >= total_num_frames]
            if bad:
                raise InstVLSampleError(
                    f"frame indices {bad[:5]} are outside the video's {total_num_frames} frames",
                    sample_id=sample_id,
                    field="media",
                    reason="frame_index_out_of_range",
                )
        elif sample_indices_fn is not None:
            positions = [int(i) for i in sample_indices_fn(total_num_frames)]
            if any(p < 0 or p >= total_num_frames for p in positions):
                raise ValueError(f"sample_indices_fn returned indices outside [0, {total_num_frames}).")
        elif num_frames is not None:
            positions = sample_frame_indices(total_num_frames, num_frames, sampling, generator)
        else:
            positions = list(range(total_num_frames))

        store, rotation, decoded_frame_count = _decode_positions(
            container,
            stream,
            index,
            positions,
            seek_overhead_frames=seek_overhead_frames,
            skip_unneeded_frames=skip_unneeded_frames,
            sample_id=sample_id,
        )
        if not store.filled:
            raise InstVLSampleError(
                "no frame of the video stream could be decoded",
                sample_id=sample_id,
                field="media",
                reason="zero_frames",
            )
        missing = sorted(p for p in set(positions) if p not in store.filled)
        if missing:
            # The demuxer listed packets the decoder did not turn into frames: a cut-off end of file.
            raise InstVLSampleError(
                f"frames {missing[:5]} of {total_num_frames} could not be decoded (the file is cut short)",
                sample_id=sample_id,
                field="media",
                reason="truncated_media",
            )

        frames = torch.from_numpy(store.array)
        if positions != list(store.slot_of):  # repeated or unordered indices (slots are sorted): one gather, a copy
            frames = frames[torch.tensor([store.slot_of[p] for p in positions])]
        time_base = float(stream.time_base) if stream.time_base else None
        if time_base and index.seekable:
            start = int(index.pts[0])
            timestamps = [(int(index.pts[p]) - start) * time_base for p in positions]
            duration = (int(index.pts[-1]) - start) * time_base
            fps = (total_num_frames - 1) / duration if duration > 0 else None
        else:
            timestamps, fps = None, None
        if stream.average_rate:
            fps = float(stream.average_rate)
        elif fps is None and stream.guessed_rate:  # pragma: no cover
            fps = float(stream.guessed_rate)

    return DecodedVideo(
        # (T, 3, H, W) over channels-last memory, as FFmpeg writes RGB: a transposing copy would cost more than the
        # decode of a large frame, and torchvision resizes channels-last uint8 frames 2-3x faster.
        frames=frames.permute(0, 3, 1, 2),
        frame_indices=positions,
        total_num_frames=total_num_frames,
        fps=fps,
        timestamps=timestamps,
        media_type="video",
        rotation=rotation,
        repeated_frames=frame_indices is None and len(positions) > len(set(positions)),
        codec=codec_name,
        decoded_frame_count=decoded_frame_count,
    )


def decode_image(source: MediaSource, *, sample_id: str | None = None) -> DecodedVideo:
    """Decodes a JPEG/PNG/... image into a 1-frame [`DecodedVideo`] (EXIF orientation applied, RGB).

    Raises:
        [`InstVLSampleError`] with reason `missing_file` or `corrupt_media` (unreadable or truncated bytes).
    """
    data = read_media_bytes(source, sample_id=sample_id)
    if not data:
        raise InstVLSampleError(
            "image bytes are empty", sample_id=sample_id, field="media", reason="corrupt_media"
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # PIL is lazy; truncated files only fail here
            image_format = image.format
            exif_orientation = image.getexif().get(0x0112, 1)
            image = ImageOps.exif_transpose(image)
            image = image.convert("RGB")
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise InstVLSampleError(
            f"cannot decode the image ({error})", sample_id=sample_id, field="media", reason="corrupt_media"
        ) from None
    rotation = {3: 180, 6: -90, 8: 90}.get(int(exif_orientation), 0)
    return DecodedVideo(
        frames=torch.from_numpy(array.copy()).unsqueeze(0).permute(0, 3, 1, 2),  # channels-last, as videos
        frame_indices=[0],
        total_num_frames=1,
        fps=None,
        timestamps=[0.0],
        media_type="image",
        rotation=rotation,
        repeated_frames=False,
        codec=(image_format or "").lower() or None,
        decoded_frame_count=1,
    )


def decode_media(
    source: MediaSource,
    media_type: str,
    *,
    num_frames: int | None = None,
    sampling: str = "middle",
    generator: torch.Generator | None = None,
    num_threads: int = 1,
    thread_type: str = "FRAME",
    sample_id: str | None = None,
) -> DecodedVideo:
    """Decodes an image (1 frame, never repeated) or the sampled frames of a video (see [`decode_video`])."""
    if media_type == "image":
        return decode_image(source, sample_id=sample_id)
    if media_type == "video":
        return decode_video(
            source,
            num_frames=num_frames,
            sampling=sampling,
            generator=generator,
            num_threads=num_threads,
            thread_type=thread_type,
            sample_id=sample_id,
        )
    raise InstVLSampleError(
        f"media_type must be 'image' or 'video', got {media_type!r}",
        sample_id=sample_id,
        field="media_type",
        reason="malformed_record",
    )
