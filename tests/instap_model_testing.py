"""Shared builders for the model tests (`tests/test_modeling*.py`): tiny configs and synthetic stage-2 batches.

Not a test module (pytest collects `test_*.py` only). Tiny text ids: [PAD] 0, [CLS] 1, [SEP] 2, [MASK] 3, vocab 512.
"""

from __future__ import annotations

import torch

from modeling_instap import InstAPConfig

PAD, CLS, SEP, MASK = 0, 1, 2, 3
VOCAB = 512


def tiny_config(deterministic: bool = False, **overrides) -> InstAPConfig:
    """The `tiny` preset (64-wide ViT, 4x4 patch grid at 32 px, 4-layer BERT fused from layer 2, CLIP teacher).

    `deterministic=True` switches every dropout and the drop-path off, for comparisons between two runs.
    """
    config = InstAPConfig.from_preset("tiny", **overrides)
    if deterministic:
        config.text_config.hidden_dropout_prob = 0.0
        config.text_config.attention_probs_dropout_prob = 0.0
        config.vision_config.drop_path_rate = 0.0
        config.vision_config.attention_dropout = 0.0
    return config


def make_captions(count: int, length: int = 8, generator: torch.Generator | None = None, pad_last: bool = True):
    """`(count, length)` ids `[CLS] w ... w [SEP] [PAD]...` with distinct random words, and the 1/0 mask.

    With `pad_last`, the last caption is shorter (padded), so padding paths are exercised.
    """
    ids = torch.randint(4, VOCAB, (count, length), generator=generator)
    ids[:, 0] = CLS
    mask = torch.ones(count, length, dtype=torch.long)
    ends = torch.full((count,), length - 1)
    if pad_last and count > 1:
        ends[-1] = max(2, length // 2)
    for row, end in enumerate(ends.tolist()):
        ids[row, end] = SEP
        ids[row, end + 1 :] = PAD
        mask[row, end + 1 :] = 0
    return ids, mask


def make_batch(
    config: InstAPConfig,
    batch_size: int = 2,
    num_frames: int = 4,
    instances_per_sample: tuple[int, ...] | None = (2, 1),
    text_length: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A stage-2 batch following the `InstAPForPreTraining.forward` contract.

    `instances_per_sample[i]` crops belong to sample `i`; `None` leaves the instance keys out.
    """
    g = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    input_ids, attention_mask = make_captions(batch_size, text_length, g)
    batch = {
        "pixel_values": torch.randn(batch_size, num_frames, 3, size, size, generator=g),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "source_ids": torch.arange(batch_size) + 100,
    }
    if instances_per_sample is not None:
        assert len(instances_per_sample) == batch_size
        sample_index = torch.repeat_interleave(torch.arange(batch_size), torch.tensor(instances_per_sample))
        count = int(sample_index.numel())
        crop = config.crop_size
        ids, mask = make_captions(count, text_length, g)
        batch.update(
            instance_pixel_values=torch.randn(count, num_frames, 3, crop, crop, generator=g),
            instance_input_ids=ids,
            instance_attention_mask=mask,
            instance_sample_index=sample_index,
            instance_source_id=batch["source_ids"][sample_index],
        )
    return batch


def visible_per_frame(bool_masked_pos: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`(batch, frames)` number of visible tokens in each frame of a `(batch, frames * patches)` mask."""
    return (~bool_masked_pos).reshape(bool_masked_pos.shape[0], num_frames, -1).sum(-1)


def umt_visible_count(tokens_per_frame: int, ratio: float) -> int:
    """UMT's rule: N - int(N * rho) visible patches per frame."""
    return tokens_per_frame - int(tokens_per_frame * ratio)
