"""Processor class for InstAP: the video processor, a BERT tokenizer, and instance crops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoTokenizer
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .captions import caption_offset, select_caption_sentence, swap_left_right
from .crops import (
    boxes_at_frames,
    crop_instances,
    pad_degenerate_boxes,
    visible_fraction,
    visible_in_any_frame,
)
from .errors import InstVLSampleError
from .records import InstVLInstance, parse_instance, stable_source_id, validate_instance_against_media
from .video_processing_instap import InstAPVideoProcessor


def _checked_max_length(value: Any) -> int:
    # [CLS] word [SEP]: fewer than 3 tokens hold no word of the caption.
    if isinstance(value, bool) or not isinstance(value, int) or value < 3:
        raise ValueError(f"max_length must be an integer >= 3 ([CLS], a token, [SEP]), got {value!r}.")
    return value


class InstAPProcessor(ProcessorMixin):
    r"""
    Processor of InstAP: [`InstAPVideoProcessor`] for the clips, a BERT tokenizer for the captions, and the instance
    branch's crops (METHOD §4.2, §4.4).

    `processor(videos=..., text=..., instances=...)` returns the batch the model consumes:

    - `pixel_values` `(B, T, 3, H, W)` float32 (images: `T = 1`);
    - `input_ids`, `attention_mask` `(B, L)` long, padded to `max_length`;
    - `source_ids` `(B,)` long: a stable 63-bit hash of each sample id (same value on every rank);
    - when at least one instance survives: `instance_pixel_values` `(N, T, 3, Hc, Wc)`, `instance_input_ids`,
      `instance_attention_mask` `(N, L)`, `instance_sample_index` `(N,)` (which clip each crop comes from) and
      `instance_source_id` `(N,)` (= `source_ids[instance_sample_index]`). Without instances these keys are absent.
    - with instances given: `num_dropped_instances` `()` long, the instances left out because the augmentation left
      less than `min_visible_box_fraction` of their box in view (the trainer logs their total).

    Args:
        video_processor ([`InstAPVideoProcessor`], *optional*):
            Defaults to `InstAPVideoProcessor()`.
        tokenizer ([`BertTokenizerFast`]):
            A BERT tokenizer (`[CLS] ... [SEP]`).
        max_length (`int`, *optional*, defaults to 32):
            Token length captions are padded/truncated to (METHOD §4.4; 64 for paragraph benchmarks).
        caption_seed (`int`, *optional*, defaults to 0):
            Seed of the per-caption sentence offsets of caption sub-sampling.
        full_caption (`bool`, *optional*, defaults to `False`):
            Always use whole captions (no sentence sub-sampling even when an `epoch` is given).
        swap_left_right_on_flip (`bool`, *optional*, defaults to `True`):
            When the training flip mirrors a clip, swap "left" and "right" in its captions so that they stay true.
        box_trajectories (`bool`, *optional*, defaults to `True`):
            Crop a video instance along its box trajectory (the nearest annotated box for each sampled frame, METHOD
            §4.2); `False` crops every frame at its first box (the "one box" row of the paper's Table 5).
        min_visible_box_fraction (`float`, *optional*, defaults to 0.5):
            Keep an instance only if at least this share of its box area (summed over the clip's frames) is still
            in view after the random resized crop; a crop showing less of its object would keep a caption it no
            longer shows (8.6 % of kept crops were under half visible on the synthetic InstVL with 0 as the bound).
            0 keeps every instance with any part in view.
    """

    def __init__(
        self,
        video_processor=None,
        tokenizer=None,
        max_length: int = 32,
        caption_seed: int = 0,
        full_caption: bool = False,
        swap_left_right_on_flip: bool = True,
        min_visible_box_fraction: float = 0.5,
        box_trajectories: bool = True,
        **kwargs,
    ):
        if video_processor is None:
            video_processor = InstAPVideoProcessor()
        if tokenizer is None:
            raise ValueError("InstAPProcessor needs a tokenizer (e.g. BertTokenizerFast).")
        self.max_length = _checked_max_length(max_length)
        self.caption_seed = int(caption_seed)
        self.full_caption = bool(full_caption)
        self.swap_left_right_on_flip = bool(swap_left_right_on_flip)
        if isinstance(min_visible_box_fraction, bool) or not 0.0 <= float(min_visible_box_fraction) <= 1.0:
            raise ValueError(f"min_visible_box_fraction must be in [0, 1], got {min_visible_box_fraction!r}.")
        self.min_visible_box_fraction = float(min_visible_box_fraction)
        self.box_trajectories = bool(box_trajectories)
        super().__init__(video_processor, tokenizer, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # AutoVideoProcessor resolves InstAPVideoProcessor only once it is registered against the model config (or
        # through remote code), so load the two parts directly: the saved files are the same either way.
        subfolder = kwargs.pop("subfolder", "")
        video_processor = InstAPVideoProcessor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        return [video_processor, tokenizer]

    @property
    def model_input_names(self) -> list[str]:
        return [
            "pixel_values",
            "input_ids",
            "attention_mask",
            "source_ids",
            "instance_pixel_values",
            "instance_input_ids",
            "instance_attention_mask",
            "instance_sample_index",
            "instance_source_id",
        ]

    # ----------------------------------------------------------------------------------------------------------------

    def select_caption(self, caption: str, key: str, epoch: int | None) -> str:
        """Caption sub-sampling (METHOD §4.4): sentence `(epoch + offset) mod n`, or the whole caption when `epoch`
        is `None` (evaluation) or `full_caption` is set. `key` fixes the offset (sample id, or sample id + caption)."""
        if epoch is None or self.full_caption:
            return caption
        return select_caption_sentence(caption, epoch, caption_offset(self.caption_seed, key))

    def tokenize(self, captions: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` (long) padded to `max_length`; no token type ids (the model takes none)."""
        encoded = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length if max_length is None else _checked_max_length(max_length),
            return_token_type_ids=False,
            return_tensors="pt",
        )
        return {
            "input_ids": encoded["input_ids"].to(torch.long),
            "attention_mask": encoded["attention_mask"].to(torch.long),
        }

    def __call__(
        self,
        videos: Any = None,
        text: str | Sequence[str] | None = None,
        instances: Sequence[Sequence[Mapping | InstVLInstance]] | None = None,
        images: Any = None,
        sample_ids: Sequence[str] | None = None,
        epoch: int | None = None,
        max_length: int | None = None,
        uint8_instance_crops: bool = False,
        **kwargs,
    ) -> BatchFeature:
        """Processes one batch of clips of one media type with their captions and instances.

        Args:
            videos: paths, bytes, file objects, [`DecodedVideo`]s, frame arrays/tensors `(T, H, W, C)` or
                `(T, C, H, W)`, or lists of PIL frames; one per sample.
            text (`str` or `list[str]`, *optional*): one caption per sample.
            instances (`list[list[dict]]`, *optional*): per sample, its instances, each with `caption`, `boxes`
                (`[x1, y1, x2, y2]` in the source frame's pixels, one per `frame_index`) and `frame_index` (frames of
                the source video where the box is known; may be left out for images). Instances whose boxes all
                fall outside the augmented view are dropped.
            images: images (PIL, `(H, W, C)` arrays, paths, bytes); processed as 1-frame videos. Give either
                `videos` or `images`.
            sample_ids (`list[str]`, *optional*): sample ids; they give `source_ids` and the caption offsets. Without
                them source ids are random (unique, but not reproducible).
            epoch (`int`, *optional*): enables caption sub-sampling for this epoch; `None` keeps whole captions.
            max_length (`int`, *optional*): overrides `self.max_length`.
            uint8_instance_crops (`bool`, *optional*, defaults to `False`): return `instance_pixel_values` as uint8
                pixels, 4x less memory from the DataLoader workers to the device; `normalize_instance_crops` turns
                them into the model's input there (the trainer does, see `InstAPDataCollator`).
            kwargs: passed to the video processor (e.g. `do_train_augment=True`, `num_frames=8`).
        """
        if videos is not None and images is not None:
            raise ValueError("Give either `videos` or `images`: a batch holds one media type.")
        media = videos if videos is not None else images
        if media is None:
            raise ValueError("InstAPProcessor needs `videos` or `images`.")
        if images is not None:
            kwargs.setdefault("do_sample_frames", False)

        kwargs.pop("return_tensors", None)
        return_metadata = bool(kwargs.pop("return_metadata", False))
        vision = self.video_processor(media, return_metadata=True, return_frame_transforms=True, **kwargs)
        pixel_values = vision["pixel_values"]
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError("All clips of a batch must have the same shape (one media type per batch).")
        transforms = vision["frame_transforms"]
        metadata = vision["video_metadata"]
        batch_size = pixel_values.shape[0]

        if sample_ids is not None:
            sample_ids = [str(sample_id) for sample_id in sample_ids]
            if len(sample_ids) != batch_size:
                raise ValueError(f"{len(sample_ids)} sample ids for {batch_size} clips.")
            source_ids = torch.tensor([stable_source_id(i) for i in sample_ids], dtype=torch.long)
        else:
            source_ids = torch.randint(0, (1 << 63) - 1, (batch_size,), dtype=torch.long)
        keys = sample_ids if sample_ids is not None else [str(i) for i in range(batch_size)]

        data: dict[str, Any] = {"pixel_values": pixel_values}
        if text is not None:
            captions = [text] if isinstance(text, str) else list(text)
            if len(captions) != batch_size:
                raise ValueError(f"{len(captions)} captions for {batch_size} clips.")
            captions = [
                self._caption_for_clip(caption, key, epoch, transform.flip)
                for caption, key, transform in zip(captions, keys, transforms)
            ]
            data.update(self.tokenize(captions, max_length))
        if text is not None or instances is not None:
            data["source_ids"] = source_ids

        if instances is not None:
            if len(instances) != batch_size:
                raise ValueError(f"Instances for {len(instances)} samples given with {batch_size} clips.")
            data.update(
                self._process_instances(
                    pixel_values,
                    instances,
                    transforms,
                    metadata,
                    keys,
                    sample_ids,
                    source_ids,
                    epoch,
                    max_length,
                    uint8_instance_crops,
                )
            )
        if return_metadata:
            data["video_metadata"] = metadata
        return BatchFeature(data=data, skip_tensor_conversion=["video_metadata"])

    def _normalisation(self, device) -> tuple[float, torch.Tensor, torch.Tensor]:
        vp = self.video_processor
        scale = vp.rescale_factor if vp.do_rescale else 1.0
        shape = (-1, 1, 1)
        if vp.do_normalize:
            mean = torch.tensor(vp.image_mean, dtype=torch.float32, device=device).reshape(shape)
            std = torch.tensor(vp.image_std, dtype=torch.float32, device=device).reshape(shape)
        else:
            mean, std = torch.zeros(1, 1, 1, device=device), torch.ones(1, 1, 1, device=device)
        return float(scale), mean, std

    def _pixels_of(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The 0–255 pixels (float) that the video processor normalised into `pixel_values`."""
        scale, mean, std = self._normalisation(pixel_values.device)
        return (pixel_values.float() * std + mean) / scale

    def normalize_instance_crops(self, crops: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 `instance_pixel_values` (`uint8_instance_crops=True`) -> the model's input, on the crops' device:
        the video processor's rescale and normalisation."""
        if crops.dtype != torch.uint8:
            raise ValueError(f"normalize_instance_crops expects uint8 crops, got {crops.dtype}.")
        scale, mean, std = self._normalisation(crops.device)
        return ((crops.float() * scale - mean) / std).to(dtype)

    def _caption_for_clip(self, caption: str, key: str, epoch: int | None, flipped: bool) -> str:
        caption = self.select_caption(caption, key, epoch)
        if flipped and self.swap_left_right_on_flip:
            caption = swap_left_right(caption)
        return caption

    def _process_instances(
        self,
        pixel_values: torch.Tensor,
        instances: Sequence[Sequence[Mapping | InstVLInstance]],
        transforms: Sequence,
        metadata: Sequence,
        keys: Sequence[str],
        sample_ids: Sequence[str] | None,
        source_ids: torch.Tensor,
        epoch: int | None,
        max_length: int | None,
        uint8_instance_crops: bool = False,
    ) -> dict[str, torch.Tensor]:
        _, num_frames, _, height, width = pixel_values.shape
        all_boxes, sample_index, captions = [], [], []
        for sample, (sample_instances, transform, clip_metadata, key) in enumerate(
            zip(instances, transforms, metadata, keys)
        ):
            sample_id = sample_ids[sample] if sample_ids is not None else None
            media_type = "image" if num_frames == 1 else "video"
            clip_frames = clip_metadata.frames_indices
            if clip_frames is None or len(clip_frames) != num_frames:
                clip_frames = list(range(num_frames))
            for position, raw in enumerate(sample_instances or []):
                if isinstance(raw, InstVLInstance):
                    instance = raw  # parsed and checked against its media by the data pipeline
                else:
                    instance = parse_instance(raw, position, sample_id=sample_id, media_type=media_type)
                    # Raw instances come straight from the caller: check them against the media they annotate.
                    validate_instance_against_media(
                        instance,
                        sample_id=sample_id,
                        num_frames=int(clip_metadata.total_num_frames or num_frames),
                        height=int(clip_metadata.height or height),
                        width=int(clip_metadata.width or width),
                    )
                if media_type == "video" and self.box_trajectories:
                    boxes = boxes_at_frames(instance.frame_index, instance.boxes, clip_frames)
                else:
                    # An image instance has one box (whatever frame index it was given); without trajectories a
                    # video instance keeps its first box in every frame.
                    boxes = torch.as_tensor(instance.boxes[:1], dtype=torch.float32).expand(num_frames, 4)
                all_boxes.append(transform.apply_to_boxes(boxes))
                sample_index.append(sample)
                caption = self.select_caption(instance.caption, f"{key}\x1f{instance.caption}", epoch)
                if transform.flip and self.swap_left_right_on_flip:
                    caption = swap_left_right(caption)
                captions.append(caption)
        if not all_boxes:
            return {}

        boxes = torch.stack(all_boxes)  # (N, T, 4) in output pixels
        if not torch.isfinite(boxes).all():
            raise InstVLSampleError("instance boxes became non-finite after the transform", field="instances")
        # A degenerate (zero-width or zero-height) box grows to one patch around its centre before the visibility
        # checks, as METHOD §4.2 says; left at zero area it would count as out of view and vanish.
        boxes = pad_degenerate_boxes(boxes, float(self.video_processor.patch_size))
        keep = visible_in_any_frame(boxes, height, width)
        if self.min_visible_box_fraction > 0:
            keep &= visible_fraction(boxes, height, width) >= self.min_visible_box_fraction
        dropped = torch.tensor(int((~keep).sum()), dtype=torch.long)
        if not keep.any():
            return {"num_dropped_instances": dropped}
        boxes = boxes[keep]
        sample_index = torch.tensor(sample_index, dtype=torch.long)[keep]
        captions = [caption for caption, kept in zip(captions, keep.tolist()) if kept]

        crop_size = self.video_processor.instance_crop_size or {"height": height, "width": width}
        # Cropping commutes with the per-channel affine normalisation (roi_align is linear): uint8 crops are cut from
        # the frames before normalisation, and `normalize_instance_crops` gives the float crops up to rounding.
        frames = self._pixels_of(pixel_values) if uint8_instance_crops else pixel_values
        crops = crop_instances(
            frames,
            boxes,
            sample_index,
            crop_size=(crop_size["height"], crop_size["width"]),
            min_box_size=float(self.video_processor.patch_size),
        )
        if uint8_instance_crops:
            crops = crops.round().clamp(0, 255).to(torch.uint8)
        tokens = self.tokenize(captions, max_length)
        return {
            "instance_pixel_values": crops,
            "instance_input_ids": tokens["input_ids"],
            "instance_attention_mask": tokens["attention_mask"],
            "instance_sample_index": sample_index,
            "instance_source_id": source_ids[sample_index],
            "num_dropped_instances": dropped,
        }


__all__ = ["InstAPProcessor"]


# Every save writes an `auto_map` and copies this code, so a saved folder loads with `AutoProcessor` as remote code.
InstAPProcessor.register_for_auto_class("AutoProcessor")
