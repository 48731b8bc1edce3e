# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Phrase grounding (METHOD §5, Table 3): fine-tune `InstAPForGrounding` on InstVL instances, report IoU@0.5/0.7/0.9.

    python train_scripts/run_grounding.py --model_name_or_path out/stage2 --dataset_name_or_path org/instvl \\
        --train_split train --test_splits img_1k,img_zero_1k,video_1k --output_dir out/grounding \\
        --num_train_epochs 5 --per_device_train_batch_size 64 --learning_rate 1e-4 --bf16

Every instance of the training split is one example: its caption (the whole caption, truncated to
``max_text_length``) is the phrase, its box (image) or box trajectory (video) the target. The box head (a 3-layer
MLP on the fused [CLS], fused with each frame's tokens) predicts one normalised ``(cx, cy, w, h)`` box per frame and
is trained with L1 + GIoU (`InstAPForGrounding`) by the transformers `Trainer`.

Targets (`grounding_targets`) reuse the processing code, no box geometry of their own: the box of each sampled
frame comes from `boxes_at_frames` (nearest annotated frame), is mapped through the clip's `FrameTransform`
(`apply_to_boxes`: the processor's resize, or its random resized crop + flip with ``--augment``), clipped to the
frame (`clip_boxes`) and divided by the frame size. ``box_mask`` marks the frames that have a target:

* ``--box_frames span`` (default): sampled frames between the first and the last annotated frame of the trajectory
  (frames outside it are not annotated: the object may not be there);
* ``exact``: only sampled frames that are annotated themselves;
* ``nearest``: every frame (the rule of the instance crops).

A box that the clip's view does not contain (possible with ``--augment``) is masked out as well. An example with
no valid frame is kept in training (it adds nothing to the loss) and left out of the metrics (counted).

Batches hold one media type (images are 1-frame clips): training batches come from `MediaTypeBatchSampler`. The
test splits are evaluated with `instap_eval.grounding_metrics`, per split and, for a mixed split, per media type:
IoU@0.5/0.7/0.9 and mean IoU in percent, a trajectory's IoU being its mean over the valid frames.

With no ``--model_name_or_path`` a model is built from ``--preset`` (``tiny`` for tests), with a tokenizer built
from the training captions as in the stage-2 demo.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.utils import logging

from instap_eval.benchmarks import evaluation_batches
from instap_eval.grounding import grounding_ious, grounding_metrics
from instap_processing.captions import swap_left_right
from instap_processing.crops import boxes_at_frames, clip_boxes
from instap_processing.decoding import decode_media
from instap_processing.errors import InstVLSampleError
from instap_processing.geometry import FrameTransform
from instap_processing.records import InstVLInstance, parse_record, validate_instances_against_media

logger = logging.get_logger(__name__)

__all__ = [
    "GroundingArguments",
    "GroundingCollator",
    "GroundingTrainer",
    "InstVLGroundingDataset",
    "evaluate_grounding",
    "grounding_targets",
    "main",
]

BoxFrames = Literal["span", "exact", "nearest"]


# --------------------------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------------------------


def grounding_targets(
    instance: InstVLInstance,
    frame_indices: Sequence[int],
    transform: FrameTransform,
    media_type: str,
    box_frames: BoxFrames = "span",
    tubelet_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised ``(cx, cy, w, h)`` targets of one instance in the sampled frames of its clip, and their mask.

    Args:
        instance: the parsed instance (boxes in source pixels, ``x1, y1, x2, y2``).
        frame_indices: the source frame index of each sampled frame (``DecodedVideo.frame_indices``).
        transform: the clip's geometric transform (from the video processor's ``frame_transforms``).
        media_type: ``"image"`` (one box, one frame) or ``"video"``.
        box_frames: which frames get a target (see the module docstring).
        tubelet_size: the model predicts one box per tubelet; its first frame's target is used.

    Returns:
        ``boxes`` ``(frames // tubelet_size, 4)`` float32 (zeros where invalid) and ``mask`` of the same length
        (bool).
    """
    frames = torch.as_tensor(list(frame_indices), dtype=torch.int64)
    if media_type == "image":
        boxes = torch.as_tensor(instance.boxes[:1], dtype=torch.float32).expand(len(frames), 4)
        valid = torch.ones(len(frames), dtype=torch.bool)
    else:
        known = torch.as_tensor(instance.frame_index, dtype=torch.int64)
        boxes = boxes_at_frames(known, instance.boxes, frames)
        if box_frames == "span":
            valid = (frames >= known.min()) & (frames <= known.max())
        elif box_frames == "exact":
            valid = torch.isin(frames, known)
        elif box_frames == "nearest":
            valid = torch.ones(len(frames), dtype=torch.bool)
        else:
            raise ValueError(f"box_frames must be 'span', 'exact' or 'nearest', got {box_frames!r}.")
    height, width = transform.output_height, transform.output_width
    boxes = clip_boxes(transform.apply_to_boxes(boxes), height, width)
    x1, y1, x2, y2 = boxes.unbind(-1)
    valid = valid & (x2 > x1) & (y2 > y1)  # nothing of the box left in view
    cxcywh = torch.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], -1)
    cxcywh = torch.where(valid[:, None], cxcywh, torch.zeros_like(cxcywh))
    return cxcywh[::tubelet_size].contiguous(), valid[::tubelet_size].contiguous()


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def _instance_counts(records) -> tuple[list[str], list[int]]:
    """Media type and number of instances of every record, without reading the media column."""
    if hasattr(records, "select_columns"):
        columns = records.select_columns(["media_type", "instances"])
        return list(columns["media_type"]), [len(instances or []) for instances in columns["instances"]]
    return (
        [record.get("media_type") for record in records],
        [len(record.get("instances") or []) for record in records],
    )


class InstVLGroundingDataset(Dataset):
    """One item per (record, instance) of an InstVL split: the decoded clip, the phrase and the box targets.

    Each item decodes its clip (a record with K instances is decoded K times; decoding is the cheap part of a
    grounding step, and items stay independent for shuffling). Items are dicts with ``pixel_values``
    ``(T, 3, H, W)``, ``input_ids``/``attention_mask`` ``(L,)``, ``boxes`` ``(T', 4)``, ``box_mask`` ``(T',)``.

    Args:
        records: InstVL records (`load_instvl(..., streaming=False)` or a list of dicts).
        processor: an `InstAPProcessor` (its video processor transforms the frames, its tokenizer the phrase).
        num_frames: frames per video clip.
        training: ``"rand"`` frame sampling (and, with ``augment``, random resized crop + flip); else ``"middle"``.
        augment: random resized crop + horizontal flip in training (the phrase's left/right are swapped on a flip).
        box_frames, tubelet_size: see `grounding_targets`.
        max_text_length: phrase tokens (default: the processor's).
    """

    def __init__(
        self,
        records,
        processor,
        *,
        num_frames: int,
        training: bool = False,
        augment: bool = False,
        box_frames: BoxFrames = "span",
        tubelet_size: int = 1,
        max_text_length: int | None = None,
    ) -> None:
        self.records = records
        self.processor = processor
        self.num_frames = num_frames
        self.training = training
        self.augment = augment and training
        self.box_frames = box_frames
        self.tubelet_size = tubelet_size
        self.max_text_length = max_text_length
        record_types, counts = _instance_counts(records)
        self.items = [(record, instance) for record, count in enumerate(counts) for instance in range(count)]
        self.media_types = [record_types[record] for record, _ in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record_index, instance_index = self.items[index]
        record = parse_record(self.records[record_index], require_caption=False)
        try:
            video = decode_media(
                record.media, record.media_type, num_frames=self.num_frames,
                sampling="rand" if self.training else "middle", sample_id=record.id,
            )
        except InstVLSampleError as error:
            raise error.with_context(sample_id=record.id, field="media") from None
        validate_instances_against_media(record, num_frames=video.total_num_frames, height=video.height,
                                         width=video.width)
        instance = record.instances[instance_index]
        vision = self.processor.video_processor(
            [video], do_train_augment=self.augment, return_frame_transforms=True, return_tensors="pt"
        )
        transform = vision["frame_transforms"][0]
        boxes, mask = grounding_targets(
            instance, video.frame_indices, transform, record.media_type, self.box_frames, self.tubelet_size
        )
        phrase = instance.caption
        if transform.flip and getattr(self.processor, "swap_left_right_on_flip", True):
            phrase = swap_left_right(phrase)
        tokens = self.processor.tokenize([phrase], self.max_text_length)
        return {
            "pixel_values": vision["pixel_values"][0],
            "input_ids": tokens["input_ids"][0],
            "attention_mask": tokens["attention_mask"][0],
            "boxes": boxes,
            "box_mask": mask,
        }


class GroundingCollator:
    """Stacks grounding items (all of one media type) into the `InstAPForGrounding` batch."""

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        frames = {item["pixel_values"].shape[0] for item in items}
        if len(frames) > 1:
            raise ValueError(f"A grounding batch must hold one media type (clips of {sorted(frames)} frames).")
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class GroundingTrainer(Trainer):
    """`Trainer` whose training batches hold one media type (`MediaTypeBatchSampler`, seeded, rank-consistent)."""

    def get_train_dataloader(self):
        dataset = self.train_dataset
        if not hasattr(dataset, "media_types"):
            return super().get_train_dataloader()
        from instap_processing.streaming import MediaTypeBatchSampler

        sampler = MediaTypeBatchSampler(
            dataset.media_types, self._train_batch_size, seed=self.args.seed,
            world_size=self.accelerator.num_processes, shard=False, drop_last=False,
        )
        loader = DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_grounding(model, dataset: InstVLGroundingDataset, batch_size: int = 32, num_workers: int = 0) -> dict:
    """IoU@0.5/0.7/0.9 and mean IoU (percent) of the model's boxes on a grounding data set, per media type.

    Returns ``{"all": metrics, "image": metrics, "video": metrics, "num_examples": ..., "num_without_box": ...}``
    (a media type absent from the split has no entry).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(
        dataset, batch_sampler=evaluation_batches(dataset.media_types, batch_size),
        collate_fn=GroundingCollator(), num_workers=num_workers,
    )
    predictions: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    without_box = 0
    for batch in loader:
        outputs = model(
            pixel_values=batch["pixel_values"].to(device), input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        keep = batch["box_mask"].any(dim=1)
        without_box += int((~keep).sum())
        media_type = "image" if batch["pixel_values"].shape[1] == 1 else "video"
        predictions.setdefault(media_type, []).append(
            (outputs.pred_boxes.float().cpu()[keep], batch["boxes"][keep], batch["box_mask"][keep])
        )
    model.train(was_training)
    results: dict[str, Any] = {}
    per_sample_ious = []
    for media_type, parts in sorted(predictions.items()):
        pred, gt, mask = (torch.cat(tensors) for tensors in zip(*parts))
        if len(pred) == 0:
            continue
        results[media_type] = grounding_metrics(pred, gt, valid_mask=mask, box_format="cxcywh")
        results[media_type]["num_examples"] = len(pred)
        per_sample_ious.append((pred, gt, mask))
    if per_sample_ious:
        ious = torch.cat([grounding_ious(p, g, valid_mask=m, box_format="cxcywh") for p, g, m in per_sample_ious])
        results["all"] = {
            **{f"iou@{t:g}": 100.0 * (ious >= t).double().mean().item() for t in (0.5, 0.7, 0.9)},
            "mean_iou": 100.0 * ious.mean().item(),
            "num_examples": len(ious),
        }
    results["num_without_box"] = without_box
    return results


def format_grounding_table(results: dict[str, dict]) -> str:
    columns = ("iou@0.5", "iou@0.7", "iou@0.9", "mean_iou")
    lines = ["| split | examples | IoU@0.5 | IoU@0.7 | IoU@0.9 | mean IoU |", "|---|---:|---:|---:|---:|---:|"]
    for name, metrics in results.items():
        lines.append(
            f"| {name} | {metrics['num_examples']} | " + " | ".join(f"{metrics[key]:.2f}" for key in columns) + " |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Script
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class GroundingArguments:
    """Model, data and target options of the grounding fine-tuning (with `TrainingArguments`)."""

    dataset_name_or_path: str = field(metadata={"help": "InstVL data: Hub id, local folder or JSON(L) file."})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "InstAP checkpoint folder or Hub id (InstAPModel, InstAPForPreTraining or "
                  "InstAPForGrounding) with its processor. Default: a fresh model from --preset."},
    )
    preset: str = field(default="tiny", metadata={"help": "Config preset without a checkpoint (tests, demos)."})
    config_overrides: str | None = field(default=None, metadata={"help": "Preset overrides, e.g. 'crop_size=32'."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Without a checkpoint: a BERT tokenizer (default: built from the captions)."}
    )
    media_root: str | None = None
    train_split: str = "train"
    test_splits: str = field(default="img_1k,img_zero_1k,video_1k", metadata={"help": "Comma-separated."})
    train_media_type: str | None = field(
        default=None, metadata={"help": "Train on 'image' or 'video' instances only (default: both)."}
    )
    num_frames: int | None = field(default=None, metadata={"help": "Frames per video (default: the processor's)."})
    max_text_length: int | None = field(default=None, metadata={"help": "Phrase tokens (default: the processor's)."})
    box_frames: str = field(default="span", metadata={"help": "Frames with a target: span, exact or nearest."})
    augment: bool = field(default=False, metadata={"help": "Random resized crop + flip in training."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use the first N training records."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use the first N records of each test split."})
    skip_training: bool = field(default=False, metadata={"help": "Only evaluate the given checkpoint."})


def _load_records(source: str, split: str, media_root: str | None, max_samples: int | None, media_type=None):
    from instap_processing.instvl import load_instvl

    records = load_instvl(source, split, media_root=media_root, streaming=False)
    if media_type is not None:
        records = records.filter(lambda types: [t == media_type for t in types], input_columns="media_type",
                                 batched=True)
    if max_samples is not None:
        records = records.select(range(min(len(records), max_samples)))
    return records


def build_model_and_processor(args: GroundingArguments, train_records, output_dir: str):
    """`InstAPForGrounding` from a checkpoint (the box head is new unless it is a grounding checkpoint) or a preset."""
    from instap_processing import InstAPProcessor
    from instap_train.demo_data import build_caption_tokenizer
    from instap_train.factory import ModelArguments, build_config, build_processor
    from modeling_instap import InstAPForGrounding

    if args.model_name_or_path:
        model = InstAPForGrounding.from_pretrained(args.model_name_or_path)
        processor = InstAPProcessor.from_pretrained(args.model_name_or_path)
        if args.num_frames:
            processor.video_processor.num_frames = args.num_frames
        return model, processor
    if args.tokenizer_name_or_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    else:
        tokenizer = build_caption_tokenizer(train_records, os.path.join(output_dir, "tokenizer"))
    config = build_config(ModelArguments(preset=args.preset, config_overrides=args.config_overrides), tokenizer)
    model = InstAPForGrounding(config)
    num_frames = args.num_frames or config.vision_config.num_frames
    processor = build_processor(config, tokenizer, num_frames, args.max_text_length or 32)
    return model, processor


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Fine-tune and evaluate; returns ``{"train": {...}, "results": {split: metrics}}`` (also written as
    ``grounding_results.json`` in the output folder)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((GroundingArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        args, training_args = parser.parse_args_into_dataclasses(argv)
    if args.box_frames not in ("span", "exact", "nearest"):
        raise ValueError(f"--box_frames must be span, exact or nearest, got {args.box_frames!r}.")
    # The collator builds every model input; Trainer must not drop the `boxes`/`box_mask` columns.
    training_args.remove_unused_columns = False
    set_seed(training_args.seed)

    train_records = _load_records(
        args.dataset_name_or_path, args.train_split, args.media_root, args.max_train_samples, args.train_media_type
    )
    model, processor = build_model_and_processor(args, train_records, training_args.output_dir)
    num_frames = args.num_frames or processor.video_processor.num_frames
    common = dict(
        num_frames=num_frames, box_frames=args.box_frames, tubelet_size=model.config.vision_config.tubelet_size,
        max_text_length=args.max_text_length,
    )
    summary: dict[str, Any] = {}
    if not args.skip_training:
        train_dataset = InstVLGroundingDataset(train_records, processor, training=True, augment=args.augment, **common)
        if len(train_dataset) == 0:
            raise ValueError(f"Split {args.train_split!r} has no instances to ground.")
        trainer = GroundingTrainer(
            model=model, args=training_args, train_dataset=train_dataset, data_collator=GroundingCollator(),
            processing_class=processor,
        )
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        if trainer.is_world_process_zero():
            processor.save_pretrained(training_args.output_dir)
        model = trainer.accelerator.unwrap_model(trainer.model)
        summary = {"global_step": train_result.global_step, "training_loss": train_result.training_loss,
                   "num_train_examples": len(train_dataset)}

    results: dict[str, Any] = {}
    rows: dict[str, dict] = {}
    if training_args.process_index == 0:
        for split in filter(None, (name.strip() for name in args.test_splits.split(","))):
            records = _load_records(args.dataset_name_or_path, split, args.media_root, args.max_eval_samples)
            dataset = InstVLGroundingDataset(records, processor, training=False, **common)
            split_results = evaluate_grounding(
                model, dataset, training_args.per_device_eval_batch_size, training_args.dataloader_num_workers
            )
            results[split] = split_results
            media_types = [key for key in ("image", "video") if key in split_results]
            if len(media_types) == 1:
                rows[split] = split_results["all"]
            else:
                rows.update({f"{split} ({media_type})": split_results[media_type] for media_type in media_types})
        if rows:
            print(format_grounding_table(rows))
        output = {"train": summary, "results": results}
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "grounding_results.json"), "w", encoding="utf-8") as handle:
            json.dump(output, handle, indent=2)
        return output
    return {"train": summary, "results": results}


if __name__ == "__main__":
    main()
