"""InstAPVideoProcessor: shapes, normalization, sampling, augmentation, boxes following the frames, save/load."""

import json

import numpy as np
import pytest
import torch
from media_utils import frame_index_of, indexed_frames, write_image, write_video

from instap_processing import (
    DecodedVideo,
    FrameTransform,
    InstAPVideoProcessor,
    get_frame_transform,
    sample_frame_indices,
)

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def small_processor(**kwargs) -> InstAPVideoProcessor:
    defaults = {"size": {"height": 32, "width": 32}, "num_frames": 4}
    return InstAPVideoProcessor(**{**defaults, **kwargs})


def test_defaults_follow_the_method():
    processor = InstAPVideoProcessor()
    assert processor.num_frames == 16 and (processor.size.height, processor.size.width) == (224, 224)
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406) and tuple(processor.image_std) == (
        0.229,
        0.224,
        0.225,
    )
    assert processor.model_input_names == ["pixel_values"]
    assert processor.random_resized_crop_scale == (0.5, 1.0) and processor.patch_size == 16
    assert processor.resolve_frame_sampling() == "middle"
    assert processor.resolve_frame_sampling(do_train_augment=True) == "rand"


def test_output_is_normalized_b_t_c_h_w():
    processor = small_processor()
    frames = np.full((10, 20, 30, 3), 128, dtype=np.uint8)
    pixel_values = processor([frames, frames])["pixel_values"]
    assert pixel_values.shape == (2, 4, 3, 32, 32) and pixel_values.dtype == torch.float32
    expected = (128 / 255 - MEAN) / STD
    torch.testing.assert_close(pixel_values.mean(dim=(0, 1, 3, 4)), expected, atol=1e-4, rtol=0)


def test_decodes_paths_and_bytes_with_middle_sampling(tmp_path):
    data = write_video(indexed_frames(40), tmp_path / "clip.mp4")
    processor = small_processor(do_normalize=False, do_rescale=False, do_resize=False)
    output = processor([str(tmp_path / "clip.mp4"), data], return_metadata=True)
    expected = sample_frame_indices(40, 4, "middle")
    for clip, metadata in zip(output["pixel_values"], output["video_metadata"]):
        assert metadata.frames_indices == expected
        assert [frame_index_of(frame.numpy()) for frame in clip] == expected


def test_train_augment_samples_randomly_inside_segments():
    data = write_video(indexed_frames(40))
    processor = small_processor()
    torch.manual_seed(0)
    draws = [
        processor(data, do_train_augment=True, return_metadata=True)["video_metadata"][0].frames_indices
        for _ in range(6)
    ]
    for indices in draws:
        assert all(10 * i <= index < 10 * (i + 1) for i, index in enumerate(indices))
    assert len({tuple(indices) for indices in draws}) > 1


def test_images_stay_one_frame():
    processor = small_processor()
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    assert processor(image)["pixel_values"].shape == (1, 1, 3, 32, 32)
    assert processor([write_image(image), write_image(image, image_format="PNG")])["pixel_values"].shape == (
        2,
        1,
        3,
        32,
        32,
    )


def test_decoded_video_objects_are_not_resampled():
    frames = torch.from_numpy(indexed_frames(3)).permute(0, 3, 1, 2)
    clip = DecodedVideo(frames=frames, frame_indices=[4, 9, 20], total_num_frames=30)
    output = small_processor(num_frames=16)(clip, return_metadata=True)
    assert output["pixel_values"].shape[1] == 3 and output["video_metadata"][0].frames_indices == [4, 9, 20]


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_frames_give_the_same_pixels(train):
    # Decoded clips are channels-last in memory (as FFmpeg writes RGB); planar copies must not change a pixel.
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 45, 61, 3), dtype=np.uint8))
    channels_last, planar = frames.permute(0, 3, 1, 2), frames.permute(0, 3, 1, 2).contiguous()
    processor = small_processor(flip_probability=0.5)
    outputs = [
        processor(clip, do_train_augment=train, do_sample_frames=False, augment_seeds=[seed])["pixel_values"]
        for clip in (channels_last, planar)
        for seed in (0, 1)
    ]
    assert torch.equal(outputs[0], outputs[2]) and torch.equal(outputs[1], outputs[3])
    assert train == (not torch.equal(outputs[0], outputs[1]))  # the seed matters only when augmenting


def test_mixed_frame_counts_cannot_be_batched():
    processor = small_processor()
    with pytest.raises(ValueError, match="one media type"):
        processor([np.zeros((20, 30, 3), np.uint8), np.zeros((8, 20, 30, 3), np.uint8)], return_tensors="pt")


def test_augmentation_is_the_same_for_every_frame():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (1, 40, 50, 3), dtype=np.uint8)
    video = np.repeat(frame, 6, axis=0)
    processor = small_processor(num_frames=6, flip_probability=0.5)
    for seed in range(5):
        torch.manual_seed(seed)
        clip = processor(video, do_train_augment=True)["pixel_values"][0]
        assert all(torch.equal(clip[0], clip[t]) for t in range(1, 6))
    torch.manual_seed(0)
    augmented = [processor(video, do_train_augment=True)["pixel_values"] for _ in range(4)]
    assert not all(torch.equal(augmented[0], other) for other in augmented[1:])


def bright_box_frame(height=90, width=120, box=(30, 20, 70, 50)):
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    frame[y1:y2, x1:x2] = 255
    return frame


@pytest.mark.parametrize("seed", range(8))
def test_boxes_follow_the_frames_through_crop_and_flip(seed):
    """The transformed box must cover the bright rectangle of the transformed frame, flip included."""
    box = (30, 20, 70, 50)
    frame = torch.from_numpy(bright_box_frame(box=box)).permute(2, 0, 1)[None]
    generator = torch.Generator().manual_seed(seed)
    transform = get_frame_transform((90, 120), (64, 64), train_augment=True, generator=generator)
    output = transform.apply_to_frames(frame, antialias=True)[0, 0].float() / 255
    x1, y1, x2, y2 = transform.apply_to_boxes(torch.tensor(box, dtype=torch.float32)).tolist()
    inside = torch.zeros_like(output, dtype=torch.bool)
    ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    inside = (xs > x1 + 1) & (xs < x2 - 1) & (ys > y1 + 1) & (ys < y2 - 1)
    outside = (xs < x1 - 1) | (xs > x2 + 1) | (ys < y1 - 1) | (ys > y2 + 1)
    if inside.any():
        assert output[inside].min() > 0.8
    assert output[outside].max() < 0.2 if outside.any() else True


def test_flip_mirrors_boxes():
    transform = FrameTransform(
        source_height=50, source_width=100, top=0, left=0, height=50, width=100,
        output_height=50, output_width=100, flip=True,
    )  # fmt: skip
    assert transform.apply_to_boxes(torch.tensor([10.0, 5.0, 30.0, 20.0])).tolist() == [70.0, 5.0, 90.0, 20.0]
    frame = torch.zeros(1, 3, 50, 100, dtype=torch.uint8)
    frame[..., 5:20, 10:30] = 255
    flipped = transform.apply_to_frames(frame)
    assert flipped[0, 0, 10, 80] == 255 and flipped[0, 0, 10, 20] == 0


def test_processor_returns_the_transforms_it_applied():
    processor = small_processor(num_frames=1, flip_probability=1.0, random_resized_crop_scale=(1.0, 1.0))
    frame = bright_box_frame(height=64, width=64, box=(4, 4, 20, 20))
    output = processor(frame, do_train_augment=True, return_frame_transforms=True, do_normalize=False)
    (transform,) = output["frame_transforms"]
    assert transform.flip
    x1, y1, x2, y2 = transform.apply_to_boxes(torch.tensor([4.0, 4.0, 20.0, 20.0])).tolist()
    assert x1 > 16  # mirrored to the right half of the 32-px output
    clip = output["pixel_values"][0, 0, 0]
    assert clip[int((y1 + y2) / 2), int((x1 + x2) / 2)] > 0.8


def test_save_and_load_round_trip(tmp_path):
    processor = small_processor(num_frames=8, do_train_augment=True, random_resized_crop_scale=(0.3, 0.9))
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["video_processor_type"] == "InstAPVideoProcessor" and saved["num_frames"] == 8
    loaded = InstAPVideoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert loaded.random_resized_crop_scale == (0.3, 0.9)
    video = np.random.default_rng(0).integers(0, 255, (8, 24, 24, 3), dtype=np.uint8)
    torch.testing.assert_close(
        loaded(video, do_train_augment=False)["pixel_values"],
        processor(video, do_train_augment=False)["pixel_values"],
    )


def test_auto_video_processor_round_trip(tmp_path):
    from transformers import AutoVideoProcessor

    small_processor(num_frames=8).save_pretrained(tmp_path)
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, InstAPVideoProcessor) and loaded.num_frames == 8


def test_fps_sampling_is_rejected():
    with pytest.raises(ValueError, match="fps"):
        small_processor()(np.zeros((10, 8, 8, 3), np.uint8), fps=2, num_frames=None)
