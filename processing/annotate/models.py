# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""The stage models, each a callable over plain images and boxes, built from transformers checkpoints (a Hub id or
a local folder):

- `GroundingDinoDetector(images) -> [[{"box": xyxy, "score", "category"}, ...] per image]`
- `Sam2VideoTracker(frames, boxes) -> [{frame index: xyxy} per box]`
- `VisionLanguageCaptioner(images, prompts, max_new_tokens) -> [caption per image]`

Models run on `config.device` ("auto": CUDA when available) in `config.dtype`, in batches where the model allows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .config import AnnotateConfig

__all__ = [
    "GroundingDinoDetector",
    "Sam2VideoTracker",
    "VisionLanguageCaptioner",
    "build_captioner",
    "build_detector",
    "build_tracker",
    "masks_to_boxes",
    "resolve_device",
    "tracks_from_frame_boxes",
]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(config: AnnotateConfig) -> torch.dtype:
    return getattr(torch, config.dtype)


def masks_to_boxes(masks: torch.Tensor) -> list[list[float] | None]:
    """`[x1, y1, x2, y2]` (pixel edges) of each boolean `(N, H, W)` mask, `None` for an empty one."""
    boxes = []
    for mask in masks:
        rows, columns = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
        if rows.numel() == 0:
            boxes.append(None)
            continue
        boxes.append([float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1)])
    return boxes


class GroundingDinoDetector:
    """Open-vocabulary detection prompted by the category list ("person. car. dog."), thresholds on the box score
    and the phrase score, then class-agnostic NMS (one object, one box, whatever phrase it matched best)."""

    def __init__(self, model, processor, config: AnnotateConfig) -> None:
        self.model, self.processor, self.config = model, processor, config.detection
        self.categories = [category.strip().lower() for category in self.config.categories]
        self.prompt = ". ".join(self.categories) + "."

    @torch.no_grad()
    def __call__(self, images) -> list[list[dict]]:
        from torchvision.ops import nms

        device = next(self.model.parameters()).device
        inputs = self.processor(images=list(images), text=[self.prompt] * len(images), return_tensors="pt")
        inputs = {key: value.to(device) for key, value in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        outputs = self.model(**inputs)
        results = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.config.box_threshold, text_threshold=self.config.text_threshold,
            target_sizes=[(image.height, image.width) for image in images],
        )
        found = []
        for image, result in zip(images, results):
            boxes, scores = result["boxes"].float().cpu(), result["scores"].float().cpu()
            labels = result["text_labels"] if "text_labels" in result else result["labels"]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
            keep = nms(boxes, scores, self.config.nms_iou) if len(boxes) else torch.zeros(0, dtype=torch.long)
            detections = []
            for index in keep.tolist():
                category = self._category(labels[index])
                if category is not None:
                    detections.append({"box": boxes[index].tolist(), "score": float(scores[index]), "category": category})
            found.append(detections[: self.config.max_instances])
        return found

    def _category(self, phrase) -> str | None:
        """The prompt category a detected phrase names (the phrase may be a part of it, or several words of it)."""
        phrase = str(phrase).strip().lower()
        if phrase in self.categories:
            return phrase
        matches = [category for category in self.categories if phrase and (phrase in category or category in phrase)]
        return matches[0] if matches else None


class Sam2VideoTracker:
    """Box prompts on frame 0 propagated through the frames by SAM 2 (video). A track ends at the first frame where
    its mask is empty, so that an object that left the shot does not get a box again."""

    def __init__(self, model, processor, config: AnnotateConfig) -> None:
        self.model, self.processor, self.config = model, processor, config.tracking

    @torch.no_grad()
    def __call__(self, frames: Sequence[np.ndarray], boxes: Sequence[Sequence[float]]) -> list[dict[int, list[float]]]:
        device = next(self.model.parameters()).device
        session = self.processor.init_video_session(
            video=list(frames), inference_device=device, dtype=self.model.dtype
        )
        self.processor.add_inputs_to_inference_session(
            inference_session=session, frame_idx=0, obj_ids=list(range(1, len(boxes) + 1)),
            input_boxes=[[[float(v) for v in box] for box in boxes]],
        )
        size = [[int(session.video_height), int(session.video_width)]]
        per_frame: dict[int, list[list[float] | None]] = {}
        self.model(inference_session=session, frame_idx=0)
        for output in self.model.propagate_in_video_iterator(session):
            masks = self.processor.post_process_masks(
                [output.pred_masks], original_sizes=size, mask_threshold=self.config.mask_threshold, binarize=True
            )[0]
            per_frame[int(output.frame_idx)] = masks_to_boxes(masks[:, 0].bool().cpu())
        # The key frame keeps the detected box (the prompt); the masks give the later frames.
        per_frame[0] = [[float(v) for v in box] for box in boxes]
        return tracks_from_frame_boxes(per_frame, len(boxes))


def tracks_from_frame_boxes(per_frame: dict[int, list[list[float] | None]], num_objects: int) -> list[dict[int, list[float]]]:
    """Per-object tracks `{frame: box}` from per-frame box lists (`None`: the object's mask is empty there). A track
    ends at its object's first empty frame (after the first frame), even if the object shows again later: the
    later mask may be another object, and an InstVL track is one object."""
    tracks: list[dict[int, list[float]]] = [{} for _ in range(num_objects)]
    ended = [False] * num_objects
    for frame in sorted(per_frame):
        for position, box in enumerate(per_frame[frame]):
            if ended[position]:
                continue
            if box is None:
                ended[position] = True
            else:
                tracks[position][frame] = box
    return tracks


class VisionLanguageCaptioner:
    """Captions from an image-text-to-text model: one user turn (the image, then the prompt) through the processor's
    chat template, greedy decoding, the generated text only."""

    def __init__(self, model, processor, config: AnnotateConfig) -> None:
        self.model, self.processor = model, processor
        self.batch_size = max(1, config.detection.batch_size)
        # A decoder-only language model generates after the prompt: pad on the left in a batch.
        if getattr(processor, "tokenizer", None) is not None:
            processor.tokenizer.padding_side = "left"

    @torch.no_grad()
    def __call__(self, images, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        device = next(self.model.parameters()).device
        captions = []
        for start in range(0, len(images), self.batch_size):
            batch_images = list(images[start : start + self.batch_size])
            texts = [
                self.processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
                    add_generation_prompt=True,
                )
                for prompt in prompts[start : start + self.batch_size]
            ]
            inputs = self.processor(
                text=texts, images=[[image] for image in batch_images], return_tensors="pt", padding=True
            ).to(device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            generated = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            captions += [text.strip() for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]
        return captions


def _load(model_class, processor_class, name: str, config: AnnotateConfig):
    processor = processor_class.from_pretrained(name)
    model = model_class.from_pretrained(name, dtype=_dtype(config)).to(resolve_device(config.device)).eval()
    return model, processor


def build_detector(config: AnnotateConfig) -> GroundingDinoDetector:
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    return GroundingDinoDetector(
        *_load(AutoModelForZeroShotObjectDetection, AutoProcessor, config.detection.model, config), config
    )


def build_tracker(config: AnnotateConfig) -> Sam2VideoTracker:
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    return Sam2VideoTracker(*_load(Sam2VideoModel, Sam2VideoProcessor, config.tracking.model, config), config)


def build_captioner(config: AnnotateConfig) -> VisionLanguageCaptioner:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return VisionLanguageCaptioner(
        *_load(AutoModelForImageTextToText, AutoProcessor, config.captions.model, config), config
    )
