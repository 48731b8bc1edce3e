"""Helpers for tests: tiny real media written with PyAV/PIL, and a tiny BERT tokenizer. Nothing is downloaded.

Frames written by [`indexed_frames`] encode their own index as two grey levels (left half `16 * (i // 16) + 8`, right
half `16 * (i % 16) + 8`), so a test can tell which source frame a decoded frame is even after lossy compression:
[`frame_index_of`] reads it back (up to 256 frames).
"""

from __future__ import annotations

import fractions
import io
import os
from collections.abc import Sequence

import av
import numpy as np
from PIL import Image

__all__ = [
    "TINY_WORDS",
    "frame_index_of",
    "indexed_frames",
    "make_tiny_tokenizer",
    "write_image",
    "write_video",
]

TINY_WORDS = (
    "a an the it is are and with in of on to at scene frame small large tiny big red green blue yellow white black "
    "purple orange square circle triangle object objects moving moves left right up down still slowly quickly top "
    "bottom middle side centre center there one two three four . , !"
).split()


def make_tiny_tokenizer(directory: str | os.PathLike, words: Sequence[str] = TINY_WORDS):
    """A `BertTokenizerFast` over a vocab file written in `directory` ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4)."""
    from transformers import BertTokenizerFast

    path = os.path.join(os.fspath(directory), "vocab.txt")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w in dict.fromkeys(words)]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(tokens) + "\n")
    return BertTokenizerFast(vocab=path)


def indexed_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """`(T, H, W, 3)` uint8 frames whose two halves encode the frame index (see the module docstring)."""
    if num_frames > 256:
        raise ValueError("indexed_frames encodes at most 256 frames")
    index = np.arange(num_frames)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:, :, : width // 2] = (16 * (index // 16) + 8)[:, None, None, None]
    frames[:, :, width // 2 :] = (16 * (index % 16) + 8)[:, None, None, None]
    return frames


def frame_index_of(frame: np.ndarray) -> int:
    """Inverse of [`indexed_frames`] for one decoded frame (`(H, W, 3)` or `(3, H, W)`)."""
    frame = np.asarray(frame, dtype=np.float64)
    if frame.shape[0] == 3 and frame.shape[-1] != 3:
        frame = frame.transpose(1, 2, 0)
    height, width = frame.shape[:2]
    # Read the middle of each half, away from the edge where compression rings.
    high = frame[height // 4 : 3 * height // 4, width // 8 : 3 * width // 8].mean()
    low = frame[height // 4 : 3 * height // 4, 5 * width // 8 : 7 * width // 8].mean()
    return int(round((high - 8.0) / 16.0)) * 16 + int(round((low - 8.0) / 16.0))


def write_video(
    frames: np.ndarray,
    path: str | os.PathLike | None = None,
    *,
    fps: int = 10,
    codec: str = "libx264",
    container_format: str = "mp4",
    gop_size: int = 4,
    rotation: int | None = None,
    pts_ms: Sequence[int] | None = None,
) -> bytes:
    """Encodes `(T, H, W, 3)` uint8 frames and returns the file's bytes (also written to `path` if given).

    Args:
        gop_size: keyframe interval (small, so that seeking has keyframes to land on).
        rotation: display-matrix rotation in degrees counter-clockwise (as a phone writes it).
        pts_ms: explicit presentation times in milliseconds (variable frame rate); default is constant `fps`.
    """
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format=container_format)
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = gop_size
    if rotation is not None:
        stream.set_display_rotation(rotation)
    if pts_ms is not None:
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
    for position, array in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        if pts_ms is not None:
            frame.pts = int(pts_ms[position])
            frame.time_base = fractions.Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    data = buffer.getvalue()
    if path is not None:
        with open(path, "wb") as handle:
            handle.write(data)
    return data


def write_image(
    array: np.ndarray,
    path: str | os.PathLike | None = None,
    *,
    image_format: str = "JPEG",
    exif_orientation=None,
) -> bytes:
    """Encodes an `(H, W, 3)` uint8 array as JPEG/PNG bytes (optionally with an EXIF orientation tag)."""
    image = Image.fromarray(np.ascontiguousarray(array))
    buffer = io.BytesIO()
    kwargs = {"quality": 95} if image_format == "JPEG" else {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = int(exif_orientation)
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, format=image_format, **kwargs)
    data = buffer.getvalue()
    if path is not None:
        with open(path, "wb") as handle:
            handle.write(data)
    return data


def audio_only_mp4() -> bytes:
    """An MP4 holding only an audio track: a container without a video frame."""
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format="mp4")
    stream = container.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate = 16000
    for packet in list(stream.encode(frame)) + list(stream.encode()):
        container.mux(packet)
    container.close()
    return buffer.getvalue()


BAD_MEDIA = (
    "garbage bytes", "empty bytes", "truncated video", "unknown codec", "audio only", "missing video file",
    "garbage image", "truncated image", "missing image file",
)


def bad_media_case(name: str, folder: str | os.PathLike) -> tuple[object, str, str]:
    """`(media, media_type, reason)` of one bad-media case of `BAD_MEDIA`: the one list that the decoder tests and
    the record tests both run (`folder` holds no file: the missing ones are paths in it)."""
    video = write_video(indexed_frames(10, 48, 64), gop_size=4)
    image = write_image(np.full((40, 50, 3), 90, dtype=np.uint8))
    cases = {
        "garbage bytes": (b"this is not a video" * 20, "video", "corrupt_media"),
        "empty bytes": (b"", "video", "corrupt_media"),
        "truncated video": (video[: len(video) // 3], "video", "corrupt_media"),
        # The sample entry of the H.264 track rewritten to a codec tag FFmpeg does not know.
        "unknown codec": (video.replace(b"avc1", b"zzzz"), "video", "unsupported_codec"),
        "audio only": (audio_only_mp4(), "video", "zero_frames"),
        "missing video file": (os.path.join(folder, "gone.mp4"), "video", "missing_file"),
        "garbage image": (b"\xff\xd8\xff garbage", "image", "corrupt_media"),
        "truncated image": (image[: len(image) // 2], "image", "corrupt_media"),
        "missing image file": (os.path.join(folder, "gone.jpg"), "image", "missing_file"),
    }
    return cases[name]
