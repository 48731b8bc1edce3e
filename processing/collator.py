"""The data collator: a list of decoded [`InstVLExample`]s in, the model's batch (a dict of tensors) out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .processing_instap import InstAPProcessor
from .streaming import InstVLExample

__all__ = ["InstAPDataCollator"]


class InstAPDataCollator:
    """Builds the batch of one media type in the model's contract, with [`InstAPProcessor`].

    Stage 2 (`text=True, instances=True`) returns `pixel_values`, `input_ids`, `attention_mask`, `source_ids` and,
    when the batch has instances, `instance_pixel_values`, `instance_input_ids`, `instance_attention_mask`,
    `instance_sample_index`, `instance_source_id`. The variable number of instances per sample is flattened (`N`
    crops in total, each with the index of its clip) so no padding is needed. Stage 1 (`text=False,
    instances=False`) returns `pixel_values`. Both also return `num_skipped_samples` (`()` long: the bad samples
    skipped since the batch's previous one, counted by the trainer). No strings are returned.

    Args:
        processor ([`InstAPProcessor`]): its video processor and tokenizer do the work.
        text (`bool`, *optional*, defaults to `True`): tokenize the scene captions.
        instances (`bool`, *optional*, defaults to `True`): build instance crops and tokenize instance captions.
        training (`bool`, *optional*, defaults to `True`): random resized crop + flip, and caption sub-sampling by
            epoch (unless the processor's `full_caption` is set); otherwise resize only and whole captions.
        max_length (`int`, *optional*): token length; defaults to the processor's.
        uint8_instance_crops (`bool`, *optional*, defaults to `False`): instance crops as uint8 pixels (4x less memory
            between the workers and the device); whoever feeds the model normalises them with
            `processor.normalize_instance_crops` (InstAPTrainer does, on the device).
    """

    def __init__(
        self,
        processor: InstAPProcessor,
        *,
        text: bool = True,
        instances: bool = True,
        training: bool = True,
        max_length: int | None = None,
        uint8_instance_crops: bool = False,
    ) -> None:
        self.processor = processor
        self.uint8_instance_crops = uint8_instance_crops
        self.text = text
        self.instances = instances
        self.training = training
        self.max_length = max_length

    def __call__(self, examples: Sequence[InstVLExample | None]) -> dict[str, torch.Tensor]:
        # Map-style datasets give `None` for a bad sample, streams count theirs on the next good one: the batch
        # carries both as `num_skipped_samples` (the trainer totals it across workers and ranks).
        skipped = sum(example is None for example in examples)
        examples = [example for example in examples if example is not None]
        skipped += sum(example.skipped_before for example in examples)
        if not examples:
            raise RuntimeError(
                "Every sample of this batch was bad and skipped; see the logged InstVLSampleError messages."
            )
        media_types = {example.media_type for example in examples}
        if len(media_types) > 1:
            raise ValueError(
                f"A batch must hold one media type, got {sorted(media_types)} (ids "
                f"{[example.sample_id for example in examples][:8]}). Use InstVLIterableDataset(batch_size=...) or "
                "MediaTypeBatchSampler."
            )
        videos = [example.video for example in examples]
        augment: dict[str, Any] = {"do_train_augment": self.training}
        if self.training and all(example.augment_seed is not None for example in examples):
            augment["augment_seeds"] = [example.augment_seed for example in examples]
        num_skipped = torch.tensor(skipped, dtype=torch.long)
        if not self.text and not self.instances:
            output = self.processor.video_processor(videos, **augment)
            return {"pixel_values": output["pixel_values"], "num_skipped_samples": num_skipped}

        output = self.processor(
            videos=videos,
            text=[example.caption for example in examples] if self.text else None,
            instances=[example.instances for example in examples] if self.instances else None,
            sample_ids=[example.sample_id for example in examples],
            epoch=examples[0].epoch if self.training else None,
            max_length=self.max_length,
            uint8_instance_crops=self.uint8_instance_crops,
            **augment,
        )
        batch = {key: value for key, value in output.items() if isinstance(value, torch.Tensor)}
        batch["num_skipped_samples"] = num_skipped
        return batch
