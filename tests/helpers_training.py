"""Deterministic in-memory stage-2 data for the training tests (no decoding, no files).

`SyntheticAlignDataset` follows the batch contract of `InstAPForPreTraining.forward` one sample at a time, and
`collate_align_batch` stacks samples into that contract. Every sample is drawn from a generator seeded by
(seed, index) alone, so every rank, every run and every resumed run sees the same sample for the same index,
whatever the sampler order.

The tiny preset's vocabulary reserves pad 0, cls 1, sep 2, mask 3; caption tokens are drawn from [4, vocab).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from modeling_instap import InstAPConfig

PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
FIRST_WORD_ID = 4


def tiny_config(**overrides) -> InstAPConfig:
    """The tiny preset without dropout or drop-path (so that equal inputs give equal outputs), unless overridden."""
    config = InstAPConfig.from_preset("tiny", **overrides)
    config.vision_config.drop_path_rate = 0.0
    config.text_config.hidden_dropout_prob = 0.0
    config.text_config.attention_probs_dropout_prob = 0.0
    return config


def _caption(generator: torch.Generator, length: int, vocab_size: int) -> torch.Tensor:
    """[CLS] words [SEP], between 3 and `length - 2` words, unpadded."""
    num_words = int(torch.randint(3, length - 1, (1,), generator=generator))
    words = torch.randint(FIRST_WORD_ID, vocab_size, (num_words,), generator=generator)
    return torch.cat([torch.tensor([CLS_ID]), words, torch.tensor([SEP_ID])])


class SyntheticAlignDataset(Dataset):
    """Random stage-2 samples: a clip, a caption, and `instances_per_sample(index)` instance crops with captions.

    Args:
        length: number of samples.
        num_frames, image_size: clip shape (the tiny preset: 4 frames at 32x32); crops have the same shape.
        max_text_length: longest caption, special tokens included (tiny preset: at most 64 positions).
        vocab_size: tiny preset vocabulary (512).
        instance_counts: instance count of sample `i` is `instance_counts[i % len(instance_counts)]`; the default
            cycles 1, 2, 3 so that two ranks get unequal counts in the same step.
        seed: base seed; sample `i` is drawn from `torch.Generator().manual_seed(seed * 1_000_003 + i)`.
    """

    def __init__(
        self,
        length: int = 16,
        num_frames: int = 4,
        image_size: int = 32,
        max_text_length: int = 12,
        vocab_size: int = 512,
        instance_counts: tuple[int, ...] = (1, 2, 3),
        seed: int = 0,
    ):
        self.length = length
        self.num_frames = num_frames
        self.image_size = image_size
        self.max_text_length = max_text_length
        self.vocab_size = vocab_size
        self.instance_counts = instance_counts
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        clip_shape = (self.num_frames, 3, self.image_size, self.image_size)
        num_instances = self.instance_counts[index % len(self.instance_counts)]
        return {
            "pixel_values": torch.randn(clip_shape, generator=generator),
            "input_ids": _caption(generator, self.max_text_length, self.vocab_size),
            "source_id": index,
            "instance_pixel_values": [torch.randn(clip_shape, generator=generator) for _ in range(num_instances)],
            "instance_input_ids": [
                _caption(generator, self.max_text_length, self.vocab_size) for _ in range(num_instances)
            ],
        }


def _pad(captions: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest caption: `(input_ids, attention_mask)`, both long `(n, length)`."""
    length = max(int(c.numel()) for c in captions)
    input_ids = torch.full((len(captions), length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(captions), length), dtype=torch.long)
    for row, caption in enumerate(captions):
        input_ids[row, : caption.numel()] = caption
        attention_mask[row, : caption.numel()] = 1
    return input_ids, attention_mask


def collate_align_batch(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples into the `InstAPForPreTraining.forward` contract.

    `source_ids` are the dataset indices, hence globally unique across ranks (the same-source rules of the
    contrastive losses compare gathered ids). Instance keys are left out when the batch has no instance.
    """
    input_ids, attention_mask = _pad([s["input_ids"] for s in samples])
    batch = {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "source_ids": torch.tensor([s["source_id"] for s in samples], dtype=torch.long),
    }
    crops = [crop for s in samples for crop in s["instance_pixel_values"]]
    if crops:
        instance_ids, instance_mask = _pad([c for s in samples for c in s["instance_input_ids"]])
        sample_index = torch.tensor(
            [row for row, s in enumerate(samples) for _ in s["instance_pixel_values"]], dtype=torch.long
        )
        batch.update(
            instance_pixel_values=torch.stack(crops),
            instance_input_ids=instance_ids,
            instance_attention_mask=instance_mask,
            instance_sample_index=sample_index,
            instance_source_id=batch["source_ids"][sample_index],
        )
    return batch


class NaNPixelsDataset(Dataset):
    """Wrap a dataset and replace the clip of the listed indices by NaN (the non-finite guard tests)."""

    def __init__(self, dataset: Dataset, nan_indices: set[int]):
        self.dataset = dataset
        self.nan_indices = set(nan_indices)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.dataset[index])
        if index in self.nan_indices:
            sample["pixel_values"] = torch.full_like(sample["pixel_values"], float("nan"))
        return sample


def align_training_arguments(output_dir: str, **overrides):
    """`TrainingArguments` for a few CPU steps of stage 2 on the synthetic data, reproducible and quiet."""
    from transformers import TrainingArguments

    fields = {
        "output_dir": output_dir,
        "per_device_train_batch_size": 2,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "weight_decay": 0.02,
        "warmup_steps": 0,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "remove_unused_columns": False,  # the collator consumes the raw sample dicts
        "dataloader_num_workers": 0,
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    fields.update(overrides)
    return TrainingArguments(**fields)


__all__ = [
    "NaNPixelsDataset",
    "SyntheticAlignDataset",
    "align_training_arguments",
    "collate_align_batch",
    "tiny_config",
]
