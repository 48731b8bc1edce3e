"""InstAPProcessor: the batch contract, instance crops from trajectories, caption sub-sampling, save/load."""

import numpy as np
import pytest
import torch
from media_utils import make_tiny_tokenizer, write_video

from instap_processing import (
    InstAPProcessor,
    InstAPVideoProcessor,
    InstVLSampleError,
    caption_offset,
    split_sentences,
    stable_source_id,
    swap_left_right,
)
from instap_processing.synthetic import COLOURS, SyntheticConfig, generate_record

CONTRACT_KEYS = {
    "pixel_values",
    "input_ids",
    "attention_mask",
    "source_ids",
    "num_dropped_instances",
    "instance_pixel_values",
    "instance_input_ids",
    "instance_attention_mask",
    "instance_sample_index",
    "instance_source_id",
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def processor(tokenizer):
    video_processor = InstAPVideoProcessor(size={"height": 32, "width": 32}, num_frames=4, patch_size=8)
    return InstAPProcessor(video_processor, tokenizer, max_length=16)


@pytest.fixture(scope="module")
def moving_red_square():
    """A black 12-frame video where a red 12x12 square moves right by 3 px per frame; boxes known at even frames."""
    frames = np.zeros((12, 48, 64, 3), dtype=np.uint8)
    boxes = []
    for t in range(12):
        x = 4 + 3 * t
        frames[t, 20:32, x : x + 12] = (230, 20, 20)
        boxes.append([x, 20, x + 12, 32])
    known = [0, 2, 4, 6, 8, 10]
    instance = {
        "caption": "a red square moving right.",
        "frame_index": known,
        "boxes": [boxes[t] for t in known],
    }
    return write_video(frames, gop_size=4), instance


def test_batch_contract(processor, moving_red_square, tokenizer):
    video, instance = moving_red_square
    blue = {"caption": "a blue circle.", "frame_index": [0], "boxes": [[0, 0, 10, 10]]}
    batch = processor(
        videos=[video, video, video],
        text=["a scene. with a square.", "a red square", "a blue circle on the left"],
        instances=[[instance, blue], [], [instance]],
        sample_ids=["a", "b", "c"],
    )
    assert set(batch) == CONTRACT_KEYS
    assert batch["pixel_values"].shape == (3, 4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 16)
    assert batch["instance_pixel_values"].shape == (3, 4, 3, 32, 32)
    assert batch["instance_input_ids"].shape == batch["instance_attention_mask"].shape == (3, 16)
    for key in CONTRACT_KEYS - {"pixel_values", "instance_pixel_values"}:
        assert batch[key].dtype == torch.long, key
    assert batch["instance_sample_index"].tolist() == [0, 0, 2]
    assert batch["source_ids"].tolist() == [stable_source_id(i) for i in "abc"]
    assert (batch["source_ids"] >= 0).all()
    torch.testing.assert_close(
        batch["instance_source_id"], batch["source_ids"][batch["instance_sample_index"]]
    )
    assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    lengths = batch["attention_mask"].sum(1)
    assert all(batch["input_ids"][i, lengths[i] - 1] == tokenizer.sep_token_id for i in range(3))
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert not any(isinstance(value, str) for value in batch.values())


def test_no_instances_means_no_instance_keys(processor, moving_red_square):
    video, _ = moving_red_square
    for instances in (None, [[], []]):
        batch = processor(videos=[video, video], text=["a", "b"], instances=instances, sample_ids=["x", "y"])
        assert not any(key.startswith("instance_") for key in batch)
        assert {"pixel_values", "input_ids", "attention_mask", "source_ids"} <= set(batch)


def test_source_ids_are_stable_63_bit_hashes():
    assert stable_source_id("sample-1") == stable_source_id("sample-1")
    assert stable_source_id("sample-1") != stable_source_id("sample-2")
    ids = [stable_source_id(f"s{i}") for i in range(1000)]
    assert all(0 <= value < 2**63 for value in ids) and len(set(ids)) == 1000


def test_trajectory_crops_follow_the_object(processor, moving_red_square):
    video, instance = moving_red_square
    processor.video_processor.num_frames = 6
    batch = processor(
        videos=[video], text=["x"], instances=[[instance]], sample_ids=["s"], do_normalize=False
    )
    crops = batch["instance_pixel_values"][0]  # (T, 3, 32, 32), values in [0, 1]
    red = crops[:, 0] - crops[:, 1:].mean(1)
    # Sampled frames 1, 3, ..., 11 take the box of frames 0, 2, ..., 10 (3 px behind): most of each crop is red.
    # Taking any single box for the whole clip would leave the square out of the crops of far frames.
    assert (red.mean(dim=(1, 2)) > 0.45).all(), red.mean(dim=(1, 2))


def test_synthetic_record_crops_show_the_instance_colour(processor):
    record = generate_record("video_1k", 3, SyntheticConfig(image_size=64))
    processor.video_processor.size = {"height": 64, "width": 64}
    batch = processor(
        videos=[record["media"]],
        text=[record["caption"]],
        instances=[record["instances"]],
        sample_ids=[record["id"]],
        do_normalize=False,
    )
    for crop, instance in zip(batch["instance_pixel_values"], record["instances"]):
        colour = next(word for word in instance["caption"].split() if word in COLOURS)  # the subject's, first
        target = torch.tensor(COLOURS[colour], dtype=torch.float32) / 255
        centre = crop[:, :, 12:20, 12:20].mean(dim=(0, 2, 3))  # middle of the crop, averaged over frames
        assert torch.linalg.vector_norm(centre - target) < 0.35, (instance["caption"], centre, target)


def test_image_batch(processor):
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[10:30, 10:30] = 255
    batch = processor(
        images=[image, image],
        text=["a", "b"],
        instances=[[{"caption": "a white square", "boxes": [[10, 10, 30, 30]]}], []],
        sample_ids=["i1", "i2"],
        do_normalize=False,
    )
    assert batch["pixel_values"].shape == (2, 1, 3, 32, 32)
    assert batch["instance_pixel_values"].shape == (1, 1, 3, 32, 32)
    assert batch["instance_pixel_values"][0, 0, :, 4:28, 4:28].min() > 0.9


def test_raw_instances_are_checked_against_their_media(processor):
    """Instances given to the processor directly get the data pipeline's checks against the media they annotate."""
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    outside = {"caption": "gone", "boxes": [[50, 50, 60, 60]]}
    with pytest.raises(InstVLSampleError, match=r"'i'.*instances\[0\]\.boxes\[0\].*box_outside_frame"):
        processor(images=[image], text=["a"], instances=[[outside]], sample_ids=["i"])
    video = np.zeros((4, 40, 40, 3), dtype=np.uint8)
    late = {"caption": "late", "boxes": [[0, 0, 10, 10], [0, 0, 10, 10]], "frame_index": [0, 999]}
    with pytest.raises(InstVLSampleError, match=r"'v'.*frame_index\[1\].*frame_index_out_of_range"):
        processor(videos=[video], text=["a"], instances=[[late]], sample_ids=["v"])


def test_zero_size_boxes_grow_to_a_patch_instead_of_vanishing(processor):
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    point = {"caption": "a point", "boxes": [[10, 10, 10, 10]]}
    line = {"caption": "a line", "boxes": [[5, 20, 30, 20]]}
    batch = processor(images=[image], text=["a"], instances=[[point, line]], sample_ids=["i"])
    assert batch["instance_pixel_values"].shape[0] == 2 and int(batch["num_dropped_instances"]) == 0


def test_caption_sub_sampling_cycles_through_sentences(processor):
    caption = "first one. second one. third one."
    sentences = split_sentences(caption)
    offset = caption_offset(processor.caption_seed, "s1")
    chosen = [processor.select_caption(caption, "s1", epoch) for epoch in range(6)]
    assert chosen[:3] == [sentences[(epoch + offset) % 3] for epoch in range(3)]
    assert sorted(chosen[:3]) == sorted(sentences) and chosen[3:] == chosen[:3]
    assert processor.select_caption(caption, "s1", None) == caption  # evaluation: whole caption
    offsets = {caption_offset(0, f"sample-{i}") % 3 for i in range(30)}
    assert offsets == {0, 1, 2}  # offsets differ between samples
    assert caption_offset(1, "s1") != caption_offset(0, "s1")  # and depend on the seed
    processor.full_caption = True
    assert processor.select_caption(caption, "s1", 4) == caption


def test_sub_sampled_caption_reaches_the_tokens(processor, moving_red_square, tokenizer):
    video, _ = moving_red_square
    caption = "red. blue. green."
    batches = [
        processor(videos=[video], text=[caption], sample_ids=["s"], epoch=epoch)["input_ids"][0]
        for epoch in range(3)
    ]
    words = {tokenizer.decode(ids, skip_special_tokens=True).strip(" .") for ids in batches}
    assert words == {"red", "blue", "green"}


def test_flip_swaps_left_and_right_in_captions(processor, moving_red_square, tokenizer):
    assert (
        swap_left_right("Left of the rightmost box, moving left.")
        == "Right of the leftmost box, moving right."
    )
    video, instance = moving_red_square
    processor.video_processor.flip_probability = 1.0
    batch = processor(
        videos=[video], text=["moving left"], instances=[[instance]], sample_ids=["s"], do_train_augment=True
    )
    assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "moving right"
    assert "left" in tokenizer.decode(batch["instance_input_ids"][0], skip_special_tokens=True)
    processor.swap_left_right_on_flip = False
    batch = processor(videos=[video], text=["moving left"], sample_ids=["s"], do_train_augment=True)
    assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "moving left"


@pytest.mark.parametrize(
    ("box", "reason"),
    [
        ([float("nan"), 0, 10, 10], "nan_coordinates"),
        ([10, 0, 5, 10], "invalid_box"),
        ([1, 2, 3], "malformed_instances"),
    ],
)
def test_bad_instance_boxes_name_the_sample(processor, box, reason):
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    with pytest.raises(InstVLSampleError) as info:
        processor(
            images=[image], text=["a"], instances=[[{"caption": "c", "boxes": [box]}]], sample_ids=["img-9"]
        )
    assert info.value.reason == reason and "img-9" in str(info.value) and "instances[0]" in str(info.value)


def test_one_media_type_per_call(processor):
    with pytest.raises(ValueError, match="one media type"):
        processor(videos=[np.zeros((4, 8, 8, 3), np.uint8)], images=[np.zeros((8, 8, 3), np.uint8)])


def test_save_and_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = InstAPProcessor.from_pretrained(tmp_path)
    assert loaded.max_length == 16 and loaded.video_processor.num_frames == 4
    assert isinstance(loaded.video_processor, InstAPVideoProcessor)
    assert loaded.tokenizer("a red square")["input_ids"] == processor.tokenizer("a red square")["input_ids"]
    from transformers import AutoProcessor

    assert isinstance(AutoProcessor.from_pretrained(tmp_path), InstAPProcessor)


def test_remote_code_round_trip(processor, tmp_path, monkeypatch):
    """Every save writes self-contained Hub remote code (the classes are registered for their Auto classes)."""
    import transformers.dynamic_module_utils as dynamic_module_utils
    from transformers import AutoProcessor

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    # An earlier remote-code load in this process left `transformers_modules` imported from the default cache;
    # drop it (monkeypatch restores it) so the package is re-imported from the temporary cache.
    import sys

    for name in [name for name in sys.modules if name.split(".")[0] == "transformers_modules"]:
        monkeypatch.delitem(sys.modules, name)
    # ... and found first on sys.path (the default cache, which `evaluate` puts on sys.path, would shadow it).
    (tmp_path / "modules").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    processor.save_pretrained(tmp_path / "saved")
    copied = {path.name for path in (tmp_path / "saved").glob("*.py")}
    assert {"processing_instap.py", "video_processing_instap.py", "decoding.py", "crops.py"} <= copied
    # AutoProcessor prefers the installed class registered against InstAPConfig; load the copied module explicitly,
    # as a machine without `instap` would.
    remote_class = dynamic_module_utils.get_class_from_dynamic_module(
        "processing_instap.InstAPProcessor", str(tmp_path / "saved")
    )
    assert remote_class.__module__.startswith("transformers_modules") and remote_class is not InstAPProcessor
    loaded = remote_class.from_pretrained(tmp_path / "saved")
    assert loaded.max_length == 16 and type(loaded.video_processor).__module__.startswith(
        "transformers_modules"
    )
    # With the package installed, its registered classes win over the copied code.
    assert isinstance(AutoProcessor.from_pretrained(tmp_path / "saved", trust_remote_code=True), InstAPProcessor)
    video = np.zeros((6, 40, 40, 3), dtype=np.uint8)
    instances = [[{"caption": "a red square", "boxes": [[0, 0, 10, 10]], "frame_index": [0]}]]
    batch = loaded(videos=[video], text=["a red square"], instances=instances, sample_ids=["x"])
    reference = processor(videos=[video], text=["a red square"], instances=instances, sample_ids=["x"])
    for key in reference:
        torch.testing.assert_close(batch[key], reference[key])


def test_instances_mostly_out_of_view_are_dropped_and_counted(processor):
    """A crop showing a quarter of its box keeps a caption it no longer shows: dropped below the visible bound."""
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    half = {"caption": "half in view", "boxes": [[30, 10, 50, 30]]}  # half of the box inside the frame
    quarter = {"caption": "quarter in view", "boxes": [[35, 10, 55, 30]]}
    inside = {"caption": "all in view", "boxes": [[5, 5, 20, 20]]}
    batch = processor(images=[image], text=["a"], instances=[[half, quarter, inside]], sample_ids=["i"])
    assert processor.min_visible_box_fraction == 0.5
    assert batch["instance_pixel_values"].shape[0] == 2 and int(batch["num_dropped_instances"]) == 1
    processor.min_visible_box_fraction = 0.0
    try:
        batch = processor(images=[image], text=["a"], instances=[[half, quarter, inside]], sample_ids=["i"])
        assert batch["instance_pixel_values"].shape[0] == 3 and int(batch["num_dropped_instances"]) == 0
    finally:
        processor.min_visible_box_fraction = 0.5
    with pytest.raises(ValueError, match="min_visible_box_fraction"):
        type(processor)(processor.video_processor, processor.tokenizer, min_visible_box_fraction=1.5)


def test_without_trajectories_every_frame_takes_the_first_box(processor, moving_red_square):
    video, instance = moving_red_square
    processor.video_processor.num_frames = 6
    kwargs = dict(videos=[video], text=["x"], instances=[[instance]], sample_ids=["s"], do_normalize=False)
    processor.box_trajectories = False
    try:
        crops = processor(**kwargs)["instance_pixel_values"][0]
    finally:
        processor.box_trajectories = True
    red = (crops[:, 0] - crops[:, 1:].mean(1)).mean(dim=(1, 2))
    # The square moves away from its first box: the last frames' crops show less of it than the first one's.
    assert red[-1] < red[0] - 0.2, red


@pytest.mark.parametrize("train", [False, True])
def test_uint8_crops_normalise_to_the_float_crops(processor, moving_red_square, train):
    """`uint8_instance_crops=True`: a quarter of the bytes, and `normalize_instance_crops` gives the float crops back
    up to the rounding of the crop to whole pixel values (half a level, over the std)."""
    video, instance = moving_red_square
    common = dict(videos=[video, video], text=["a.", "b."], instances=[[instance], [instance]], sample_ids=["a", "b"],
                  do_train_augment=train, augment_seeds=[1, 2] if train else None)
    torch.manual_seed(0)  # frame sampling of raw videos draws from the global generator
    floats = processor(**common)["instance_pixel_values"]
    torch.manual_seed(0)
    pixels = processor(**common, uint8_instance_crops=True)["instance_pixel_values"]
    assert pixels.dtype == torch.uint8 and pixels.shape == floats.shape
    assert pixels.element_size() * 4 == floats.element_size()
    restored = processor.normalize_instance_crops(pixels)
    tolerance = 0.5 * processor.video_processor.rescale_factor / min(processor.video_processor.image_std) + 1e-5
    assert (restored - floats).abs().max() <= tolerance
    assert (restored - floats).abs().max() > 0  # the rounding is real: this is not the float path twice
    with pytest.raises(ValueError, match="uint8"):
        processor.normalize_instance_crops(floats)
