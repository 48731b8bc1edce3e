"""Video processor class for InstAP."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as tvF
from PIL import Image
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PILImageResampling,
    SizeDict,
    pil_torch_interpolation_mapping,
)
from transformers.processing_utils import Unpack, VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .decoding import IMAGE_EXTENSIONS, DecodedVideo, decode_image, decode_video
from .geometry import FrameTransform, get_frame_transform
from .sampling import FRAME_SAMPLING_MODES, sample_frame_indices

# Leading bytes of the image formats PIL reads; anything else handed over as bytes is treated as a video container.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


class InstAPVideosKwargs(VideosKwargs, total=False):
    """
    do_train_augment (`bool`, *optional*):
        Random resized crop and horizontal flip (the same for all frames of a clip), and `"rand"` frame sampling.
        Without it, the whole frame is resized to `size` and frames are sampled with `"middle"`.
    frame_sampling (`str`, *optional*):
        `"rand"` or `"middle"` (METHOD §4.4); overrides the choice implied by `do_train_augment`.
    random_resized_crop_scale (`tuple[float, float]`, *optional*):
        Range of the crop area as a fraction of the frame area.
    random_resized_crop_ratio (`tuple[float, float]`, *optional*):
        Range of the crop aspect ratio (width / height).
    flip_probability (`float`, *optional*):
        Probability of the horizontal flip when `do_train_augment` is set.
    patch_size (`int`, *optional*):
        Patch size of the video encoder; instance boxes are grown to at least one patch.
    instance_crop_size (`dict[str, int]`, *optional*):
        `{"height", "width"}` of instance crops; `None` means the model input size `size`.
    return_frame_transforms (`bool`, *optional*):
        Also return the [`FrameTransform`] of each clip under `frame_transforms` (to map boxes).
    augment_seeds (`list[int]`, *optional*):
        One seed per clip for its random resized crop and flip (the data pipeline derives them from the seed, the
        epoch and the sample id, so a resumed run sees the same augmentation); `None` draws from torch's global RNG.
    """

    do_train_augment: bool | None
    frame_sampling: str | None
    random_resized_crop_scale: tuple[float, float] | list[float] | None
    random_resized_crop_ratio: tuple[float, float] | list[float] | None
    flip_probability: float | None
    patch_size: int | None
    instance_crop_size: dict[str, int] | None
    return_frame_transforms: bool | None
    augment_seeds: list[int] | None


def _looks_like_image(source: Any) -> bool:
    if isinstance(source, (bytes, bytearray, memoryview)):
        head = bytes(source[:12])
        return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source).lower().endswith(IMAGE_EXTENSIONS)
    return False


_CHECKED_VALUES = (
    "resample", "rescale_factor", "image_mean", "image_std", "random_resized_crop_scale", "random_resized_crop_ratio",
    "flip_probability", "num_frames", "patch_size", "instance_crop_size",
)


def _finite_numbers(name: str, value: Any, length: int | None = None) -> list[float]:
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        numbers = [float(v) for v in values if not isinstance(v, bool)]
        if len(numbers) != len(values):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}.") from None
    if length is not None and len(numbers) != length:
        raise ValueError(f"{name} must have {length} values, got {value!r}.")
    if not all(np.isfinite(numbers)):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return numbers


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_processing_values(values: dict[str, Any]) -> None:
    """Raises a `ValueError` naming the field for a processing value that would give NaN/inf pixels, empty clips or
    an obscure error later (`None` values are not checked: they fall back to the processor's own)."""
    for name, value in values.items():
        if value is None:
            continue
        if name == "resample":
            if not isinstance(value, tvF.InterpolationMode) and value not in pil_torch_interpolation_mapping:
                raise ValueError(f"resample must be a PIL resampling filter or an InterpolationMode, got {value!r}.")
        elif name == "rescale_factor":
            if _finite_numbers(name, value, 1)[0] <= 0:
                raise ValueError(f"rescale_factor must be positive, got {value!r}.")
        elif name == "image_mean":
            _finite_numbers(name, value)
        elif name == "image_std":
            if min(_finite_numbers(name, value)) <= 0:
                raise ValueError(f"image_std must be positive (it divides the pixels), got {value!r}.")
        elif name in ("random_resized_crop_scale", "random_resized_crop_ratio"):
            low, high = _finite_numbers(name, value, 2)
            if not 0 < low <= high or (name.endswith("scale") and high > 1):
                bound = "0 < low <= high <= 1" if name.endswith("scale") else "0 < low <= high"
                raise ValueError(f"{name} must be (low, high) with {bound}, got {value!r}.")
        elif name == "flip_probability":
            if not 0 <= _finite_numbers(name, value, 1)[0] <= 1:
                raise ValueError(f"flip_probability must be in [0, 1], got {value!r}.")
        elif name in ("num_frames", "patch_size"):
            _positive_int(name, value)
        elif name == "instance_crop_size":
            if not isinstance(value, dict) or set(value) != {"height", "width"}:
                raise ValueError(f"instance_crop_size must be {{'height': int, 'width': int}}, got {value!r}.")
            for side in ("height", "width"):
                _positive_int(f"instance_crop_size[{side!r}]", value[side])


class InstAPVideoProcessor(BaseVideoProcessor):
    r"""
    Video processor of InstAP (UMT-style video-language pre-training with instance crops).

    It decodes videos with PyAV reading only the sampled frames (paths, bytes or file objects), or takes decoded
    frames (arrays, tensors, PIL images, [`DecodedVideo`]); samples `num_frames` frames per video (one per segment:
    random in training, the middle one at evaluation); resizes (evaluation) or random-resized-crops and flips
    (training) each clip with one transform for all its frames; and normalizes with the ImageNet mean and std.
    Images are 1-frame videos and are never repeated to `num_frames`.

    The output `pixel_values` has shape `(batch_size, num_frames, 3, height, width)`. With
    `return_frame_transforms=True` the [`FrameTransform`] of each clip is returned as well, so that boxes can follow
    the frames ([`FrameTransform.apply_to_boxes`]).
    """

    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"height": 224, "width": 224}
    default_to_square = True
    do_resize = True
    do_center_crop = False
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_sample_frames = True
    num_frames = 16
    do_train_augment = False
    frame_sampling = None
    random_resized_crop_scale = (0.5, 1.0)
    random_resized_crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    flip_probability = 0.5
    patch_size = 16
    instance_crop_size = None
    return_frame_transforms = False
    valid_kwargs = InstAPVideosKwargs
    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs: Unpack[InstAPVideosKwargs]) -> None:
        super().__init__(**kwargs)
        check_processing_values({name: getattr(self, name, None) for name in _CHECKED_VALUES})
        # JSON turns tuples into lists; keep the in-memory type stable across a save/load round trip.
        for name in ("random_resized_crop_scale", "random_resized_crop_ratio"):
            value = getattr(self, name, None)
            if value is not None:
                setattr(self, name, tuple(float(v) for v in value))

    # ----------------------------------------------------------------------------------------------------------------
    # Frame sampling and decoding
    # ----------------------------------------------------------------------------------------------------------------

    def resolve_frame_sampling(
        self, frame_sampling: str | None = None, do_train_augment: bool | None = None
    ) -> str:
        """`"rand"` in training and `"middle"` at evaluation, unless `frame_sampling` says otherwise."""
        frame_sampling = frame_sampling if frame_sampling is not None else self.frame_sampling
        if frame_sampling is None:
            do_train_augment = self.do_train_augment if do_train_augment is None else do_train_augment
            frame_sampling = "rand" if do_train_augment else "middle"
        if frame_sampling not in FRAME_SAMPLING_MODES:
            raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLING_MODES}, got {frame_sampling!r}.")
        return frame_sampling

    def sample_frames(
        self,
        metadata: VideoMetadata,
        num_frames: int | None = None,
        fps: int | float | None = None,
        frame_sampling: str | None = None,
        do_train_augment: bool | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Segment-based sampling of METHOD §4.4 (`fps` is not supported: InstAP samples a fixed number of frames).

        Args:
            metadata (`VideoMetadata`): needs `total_num_frames`.
            num_frames (`int`, *optional*): defaults to `self.num_frames`.
            frame_sampling (`str`, *optional*): `"rand"` or `"middle"`; see [`resolve_frame_sampling`].
        """
        if fps is not None:
            raise ValueError(
                "InstAPVideoProcessor samples a fixed `num_frames` per video; `fps` is not supported."
            )
        num_frames = num_frames if num_frames is not None else self.num_frames
        mode = self.resolve_frame_sampling(frame_sampling, do_train_augment)
        return np.asarray(
            sample_frame_indices(int(metadata.total_num_frames), int(num_frames), mode), dtype=np.int64
        )

    def _decode_and_sample_videos(
        self,
        videos: Any,
        video_metadata: Any = None,
        do_sample_frames: bool | None = None,
        sample_indices_fn: Any = None,
    ) -> tuple[list[torch.Tensor], list[VideoMetadata]]:
        """Turns every input into a `(T, C, H, W)` (or `(T, H, W, C)`) frame tensor and its metadata.

        Accepted per item: a path, bytes or a binary file object (decoded with PyAV, or PIL for image files), a
        [`DecodedVideo`], a PIL image or a 3-D array/tensor (an image: 1 frame), a 4-D array/tensor or a list of PIL
        images (video frames, sampled when `do_sample_frames`).
        """
        items = self._as_list_of_items(videos)
        if video_metadata is not None and not isinstance(video_metadata, (list, tuple)):
            video_metadata = [video_metadata]
        frames_list, metadata_list = [], []
        for position, item in enumerate(items):
            given_metadata = video_metadata[position] if video_metadata is not None else None
            frames, metadata = self._load_item(item, given_metadata, do_sample_frames, sample_indices_fn)
            frames_list.append(frames)
            metadata_list.append(metadata)
        return frames_list, metadata_list

    @staticmethod
    def _as_list_of_items(videos: Any) -> list[Any]:
        single = (str, os.PathLike, bytes, bytearray, memoryview, DecodedVideo, Image.Image)
        if isinstance(videos, single) or hasattr(videos, "read"):
            return [videos]
        if isinstance(videos, (np.ndarray, torch.Tensor)):
            if videos.ndim == 5:
                return list(videos)
            return [videos]
        if isinstance(videos, (list, tuple)):
            if videos and all(isinstance(v, Image.Image) for v in videos):
                # A flat list of PIL images: the frames of one video.
                return [list(videos)]
            return list(videos)
        raise TypeError(f"Unsupported video input of type {type(videos).__name__}.")

    def _load_item(
        self,
        item: Any,
        metadata: VideoMetadata | dict | None,
        do_sample_frames: bool | None,
        sample_indices_fn: Any,
    ) -> tuple[torch.Tensor, VideoMetadata]:
        if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(item, "read"):
            if _looks_like_image(item):
                item = decode_image(item)
            else:
                indices_fn = None
                if do_sample_frames and sample_indices_fn is not None:
                    indices_fn = partial(self._indices_for_length, sample_indices_fn=sample_indices_fn)
                item = decode_video(item, sample_indices_fn=indices_fn)
        if isinstance(item, DecodedVideo):
            return item.frames, item.to_video_metadata()
        if isinstance(item, Image.Image):
            item = np.asarray(item.convert("RGB"))
        if isinstance(item, list):  # PIL frames
            item = np.stack([np.asarray(frame.convert("RGB")) for frame in item])
        frames = torch.from_numpy(np.ascontiguousarray(item)) if isinstance(item, np.ndarray) else item
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"Unsupported video item of type {type(item).__name__}.")
        if frames.ndim == 3:  # one image
            frames = frames.unsqueeze(0)
            channel_first = frames.shape[1] in (1, 3, 4) and frames.shape[-1] not in (1, 3, 4)
            height, width = (
                (frames.shape[2], frames.shape[3]) if channel_first else (frames.shape[1], frames.shape[2])
            )
            return frames, VideoMetadata(
                total_num_frames=1, fps=None, width=int(width), height=int(height), frames_indices=[0]
            )
        if frames.ndim != 4:
            raise ValueError(
                f"A video must have 4 dimensions (T, C, H, W) or (T, H, W, C), got {tuple(frames.shape)}."
            )
        if isinstance(metadata, dict):
            metadata = VideoMetadata(**metadata)
        total = int(frames.shape[0])
        if metadata is None:
            metadata = VideoMetadata(total_num_frames=total, fps=None, frames_indices=list(range(total)))
        if do_sample_frames and sample_indices_fn is not None and total > 1:
            indices = np.asarray(
                sample_indices_fn(metadata=VideoMetadata(total_num_frames=total)), dtype=np.int64
            )
            frames = frames[torch.as_tensor(indices)]
            known = metadata.frames_indices if metadata.frames_indices is not None else list(range(total))
            metadata = VideoMetadata(
                total_num_frames=metadata.total_num_frames if metadata.total_num_frames else total,
                fps=metadata.fps,
                width=metadata.width,
                height=metadata.height,
                duration=metadata.duration,
                frames_indices=[int(known[i]) for i in indices],
            )
        elif metadata.frames_indices is None:
            metadata.frames_indices = list(range(total))
        return frames, metadata

    @staticmethod
    def _indices_for_length(total_num_frames: int, sample_indices_fn: Any) -> np.ndarray:
        return sample_indices_fn(metadata=VideoMetadata(total_num_frames=total_num_frames))

    # ----------------------------------------------------------------------------------------------------------------
    # Geometry and pixels
    # ----------------------------------------------------------------------------------------------------------------

    def get_frame_transform(
        self,
        source_size: tuple[int, int],
        do_train_augment: bool | None = None,
        size: SizeDict | dict | None = None,
        generator: torch.Generator | None = None,
    ) -> FrameTransform:
        """Draws the geometric transform of one clip with this processor's settings (see [`get_frame_transform`]).

        The returned object transforms the frames (`apply_to_frames`) and the boxes (`apply_to_boxes`) identically.
        """
        size = size if size is not None else self.size
        do_train_augment = self.do_train_augment if do_train_augment is None else do_train_augment
        output_size = self._output_size(source_size, size)
        return get_frame_transform(
            source_size,
            output_size,
            train_augment=bool(do_train_augment),
            scale=tuple(self.random_resized_crop_scale),
            ratio=tuple(self.random_resized_crop_ratio),
            flip_probability=float(self.flip_probability),
            generator=generator,
        )

    @staticmethod
    def _output_size(source_size: Sequence[int], size: SizeDict | dict) -> tuple[int, int]:
        get = size.get if isinstance(size, dict) else partial(getattr, size)
        height, width = get("height", None), get("width", None)
        if height and width:
            return int(height), int(width)
        shortest_edge = get("shortest_edge", None)
        if shortest_edge:
            source_height, source_width = source_size
            scale = shortest_edge / min(source_height, source_width)
            return max(1, round(source_height * scale)), max(1, round(source_width * scale))
        raise ValueError(f"size must have `height` and `width` or `shortest_edge`, got {size}.")

    def _preprocess(
        self,
        videos: list[torch.Tensor],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | tvF.InterpolationMode | int | None,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | list[float] | None,
        image_std: float | list[float] | None,
        return_tensors: str | None = None,
        do_train_augment: bool | None = None,
        random_resized_crop_scale: Sequence[float] | None = None,
        random_resized_crop_ratio: Sequence[float] | None = None,
        flip_probability: float | None = None,
        return_frame_transforms: bool | None = None,
        augment_seeds: Sequence[int] | None = None,
        **kwargs,
    ) -> BatchFeature:
        check_processing_values(
            {
                "resample": resample, "rescale_factor": rescale_factor if do_rescale else None,
                "image_mean": image_mean if do_normalize else None, "image_std": image_std if do_normalize else None,
                "random_resized_crop_scale": random_resized_crop_scale,
                "random_resized_crop_ratio": random_resized_crop_ratio, "flip_probability": flip_probability,
            }
        )
        for position, video in enumerate(videos):
            if video.shape[0] == 0:
                raise ValueError(f"video {position} has no frame.")
        if isinstance(resample, (PILImageResampling, int)):
            interpolation = pil_torch_interpolation_mapping[resample]
        else:
            interpolation = resample if resample is not None else tvF.InterpolationMode.BILINEAR

        if augment_seeds is not None and len(augment_seeds) != len(videos):
            raise ValueError(f"augment_seeds has {len(augment_seeds)} seeds for {len(videos)} clips.")
        transforms: list[FrameTransform] = []
        processed: list[torch.Tensor] = []
        for position, video in enumerate(videos):
            generator = None if augment_seeds is None else torch.Generator().manual_seed(int(augment_seeds[position]))
            source_size = (int(video.shape[-2]), int(video.shape[-1]))
            if do_resize:
                transform = get_frame_transform(
                    source_size,
                    self._output_size(source_size, size),
                    train_augment=bool(do_train_augment),
                    scale=tuple(random_resized_crop_scale or self.random_resized_crop_scale),
                    ratio=tuple(random_resized_crop_ratio or self.random_resized_crop_ratio),
                    flip_probability=float(
                        self.flip_probability if flip_probability is None else flip_probability
                    ),
                    generator=generator,
                )
            else:
                transform = FrameTransform(*source_size, 0, 0, *source_size, *source_size, flip=False)
            video = transform.apply_to_frames(video, interpolation=interpolation, antialias=True)
            if do_center_crop:
                top = (video.shape[-2] - crop_size.height) // 2
                left = (video.shape[-1] - crop_size.width) // 2
                video = video[..., top : top + crop_size.height, left : left + crop_size.width]
                transform = FrameTransform(
                    source_height=transform.source_height,
                    source_width=transform.source_width,
                    top=transform.top + round(top * transform.height / transform.output_height),
                    left=transform.left + round(left * transform.width / transform.output_width),
                    height=round(crop_size.height * transform.height / transform.output_height),
                    width=round(crop_size.width * transform.width / transform.output_width),
                    output_height=crop_size.height,
                    output_width=crop_size.width,
                    flip=transform.flip,
                )
            transforms.append(transform)
            processed.append(video)

        shapes = {tuple(video.shape) for video in processed}
        if len(shapes) == 1:
            pixel_values = torch.stack(processed)
            pixel_values = self.rescale_and_normalize(
                pixel_values, do_rescale, rescale_factor, do_normalize, image_mean, image_std
            )
        else:
            # Mixed shapes (e.g. images and videos, or do_resize=False): one tensor per clip.
            pixel_values = [
                self.rescale_and_normalize(
                    video, do_rescale, rescale_factor, do_normalize, image_mean, image_std
                )
                for video in processed
            ]
            if return_tensors is not None:
                raise ValueError(
                    f"Clips of different shapes {sorted(shapes)} cannot be batched; give one media type (images or "
                    "videos) per call, with the same number of frames, or pass return_tensors=None."
                )
        data: dict[str, Any] = {"pixel_values": pixel_values}
        if return_frame_transforms:
            data["frame_transforms"] = transforms
        return BatchFeature(data=data, skip_tensor_conversion=["frame_transforms", "video_metadata"])


__all__ = ["InstAPVideoProcessor", "InstAPVideosKwargs"]


# Every save writes an `auto_map` and copies this code: a saved folder loads with `AutoVideoProcessor` as remote code.
InstAPVideoProcessor.register_for_auto_class("AutoVideoProcessor")
