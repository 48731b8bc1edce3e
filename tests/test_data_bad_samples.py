"""Every kind of bad InstVL sample gives a clear error naming the sample id and the field; training streams skip,
count and log them, and stop past a cap."""

import logging
import pickle

import numpy as np
import pytest
from media_utils import BAD_MEDIA, bad_media_case, indexed_frames, write_image, write_video

from instap_processing.collator import InstAPDataCollator
from instap_processing.errors import InstVLSampleError, TooManyBadSamplesError
from instap_processing.streaming import (
    BadSampleTracker,
    InstVLIterableDataset,
    InstVLMapDataset,
    prepare_example,
)


@pytest.fixture(scope="module")
def video_bytes():
    return write_video(indexed_frames(10, 48, 64), gop_size=4)


@pytest.fixture(scope="module")
def image_bytes():
    return write_image(np.full((40, 50, 3), 90, dtype=np.uint8))


def video_record(video_bytes, **overrides):
    record = {
        "id": "vid-1",
        "media_type": "video",
        "media": video_bytes,
        "caption": "a scene. with things.",
        "instances": [
            {
                "category": "thing",
                "caption": "a thing.",
                "frame_index": [0, 9],
                "boxes": [[1, 1, 20, 20], [5, 5, 30, 30]],
            }
        ],
    }
    record.update(overrides)
    return record


def instance(**overrides):
    value = {"category": "thing", "caption": "a thing.", "frame_index": [0], "boxes": [[1, 1, 20, 20]]}
    value.update(overrides)
    return value


def expect_bad(record, reason, field):
    with pytest.raises(InstVLSampleError) as info:
        prepare_example(record, num_frames=4)
    error = info.value
    assert error.reason == reason, str(error)
    assert error.sample_id == record.get("id") and repr(record.get("id")) in str(error)
    assert field in str(error) and error.field.startswith(field)
    return error


def test_a_good_record_passes(video_bytes):
    example = prepare_example(video_record(video_bytes), num_frames=4)
    assert example.video.frames.shape == (4, 3, 48, 64) and len(example.instances) == 1


def test_empty_instance_list_is_valid(video_bytes):
    for empty in ([], None):
        example = prepare_example(video_record(video_bytes, instances=empty), num_frames=4)
        assert example.instances == []


@pytest.mark.parametrize("case", BAD_MEDIA)
def test_bad_media(video_bytes, case, tmp_path):
    media, media_type, reason = bad_media_case(case, tmp_path)
    expect_bad(video_record(video_bytes, media=media, media_type=media_type, instances=[]), reason, "media")


@pytest.mark.parametrize(
    ("instances", "reason", "field"),
    [
        ("not a list", "malformed_instances", "instances"),
        ({"caption": "a dict"}, "malformed_instances", "instances"),
        (["a string instance"], "malformed_instances", "instances[0]"),
        ([instance(boxes=None)], "malformed_instances", "instances[0].boxes"),
        ([instance(boxes=[[1, 2, 3]])], "malformed_instances", "instances[0].boxes"),
        ([instance(frame_index=[0, 1])], "malformed_instances", "instances[0]"),
        (
            [instance(), instance(frame_index=[0, 0], boxes=[[1, 1, 2, 2]] * 2)],
            "malformed_instances",
            "instances[1]",
        ),
        ([instance(boxes=[[30, 1, 20, 20]])], "invalid_box", "instances[0].boxes[0]"),
        ([instance(boxes=[[1, 30, 20, 20]])], "invalid_box", "instances[0].boxes[0]"),
        ([instance(boxes=[[float("nan"), 1, 20, 20]])], "nan_coordinates", "instances[0].boxes[0]"),
        ([instance(boxes=[[1, 1, float("inf"), 20]])], "nan_coordinates", "instances[0].boxes[0]"),
        ([instance(boxes=[[70, 1, 90, 20]])], "box_outside_frame", "instances[0].boxes[0]"),
        ([instance(boxes=[[-30, -30, -1, -1]])], "box_outside_frame", "instances[0].boxes[0]"),
        ([instance(frame_index=[10])], "frame_index_out_of_range", "instances[0].frame_index[0]"),
        ([instance(frame_index=[-1])], "frame_index_out_of_range", "instances[0].frame_index[0]"),
        ([instance(caption="")], "bad_caption", "instances[0].caption"),
        ([instance(caption=b"\xff\xfe bad")], "bad_caption", "instances[0].caption"),
    ],
)
def test_bad_instances(video_bytes, instances, reason, field):
    expect_bad(video_record(video_bytes, instances=instances), reason, field)


def test_partly_outside_and_degenerate_boxes_are_fine(video_bytes):
    instances = [
        instance(boxes=[[-10, -10, 20, 20]]),
        instance(boxes=[[64, 48, 64, 48]]),
        instance(boxes=[[5, 5, 5, 5]]),
    ]
    assert len(prepare_example(video_record(video_bytes, instances=instances), num_frames=4).instances) == 3


@pytest.mark.parametrize(
    ("caption", "reason"),
    [("", "bad_caption"), ("   ", "bad_caption"), (b"caf\xe9", "bad_caption"), (None, "bad_caption")],
)
def test_bad_scene_captions(video_bytes, caption, reason):
    error = expect_bad(video_record(video_bytes, caption=caption), reason, "caption")
    if isinstance(caption, bytes):
        assert "UTF-8" in str(error)


def test_utf8_bytes_captions_are_decoded(video_bytes):
    example = prepare_example(video_record(video_bytes, caption="café. ok".encode()), num_frames=4)
    assert example.caption == "café. ok"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"media_type": "audio"}, "media_type"), ({"media": None}, "media"), ({"media": 42}, "media")],
)
def test_malformed_records(video_bytes, overrides, field):
    expect_bad(video_record(video_bytes, **overrides), "malformed_record", field)


def test_record_without_id():
    with pytest.raises(InstVLSampleError, match="id"):
        prepare_example({"media_type": "video", "media": b"x"}, num_frames=4)


def test_stage_one_ignores_captions_and_instances(video_bytes):
    record = video_record(video_bytes, caption=None, instances="garbage")
    example = prepare_example(record, num_frames=4, require_caption=False, load_instances=False)
    assert example.instances == []


def test_errors_survive_pickling():
    error = InstVLSampleError("bad box", sample_id="s", field="instances[1]", reason="invalid_box")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.sample_id, clone.field, clone.reason, str(clone)) == (
        "s",
        "instances[1]",
        "invalid_box",
        str(error),
    )


# ------------------------------------------------------------------------------------------------------------------
# Streams


def mixed_records(video_bytes, num_good, bad):
    records = [video_record(video_bytes, id=f"good-{i}") for i in range(num_good)]
    for position, (reason_record) in enumerate(bad):
        records.insert(2 * position + 1, reason_record)
    return records


def test_stream_skips_counts_and_logs_bad_samples(video_bytes, caplog):
    bad = [
        video_record(video_bytes, id="bad-media", media=b"garbage" * 30),
        video_record(video_bytes, id="bad-box", instances=[instance(boxes=[[9, 9, 1, 1]])]),
        video_record(video_bytes, id="bad-caption", caption=""),
    ]
    dataset = InstVLIterableDataset(mixed_records(video_bytes, 6, bad), num_frames=2, max_bad_fraction=None)
    with caplog.at_level(logging.WARNING, logger="instap_processing.streaming"):
        ids = [example.sample_id for example in dataset]
    assert ids == [f"good-{i}" for i in range(6)]
    assert dataset.last_tracker.summary() == {
        "seen": 9,
        "bad": 3,
        "by_reason": {"corrupt_media": 1, "invalid_box": 1, "bad_caption": 1},
    }
    logged = caplog.text
    assert "bad-media" in logged and "bad-box" in logged and "instances[0].boxes[0]" in logged


def test_stream_raises_past_the_absolute_cap(video_bytes):
    bad = [video_record(video_bytes, id=f"bad-{i}", media=b"x" * 100) for i in range(3)]
    dataset = InstVLIterableDataset(mixed_records(video_bytes, 5, bad), num_frames=2, max_bad_samples=2)
    with pytest.raises(TooManyBadSamplesError, match="corrupt_media"):
        list(dataset)


def test_stream_raises_past_the_bad_fraction():
    tracker = BadSampleTracker(max_bad_samples=None, max_bad_fraction=0.2, min_samples_for_fraction=10)
    error = InstVLSampleError("x", sample_id="s", reason="corrupt_media")
    for _ in range(7):
        tracker.record_good()
    tracker.record_bad(error)
    tracker.record_bad(error)  # 2 / 9: fraction not checked before 10 samples
    with pytest.raises(TooManyBadSamplesError, match="3 of 10"):
        tracker.record_bad(error)


def test_a_stream_of_only_bad_samples_fails(video_bytes):
    records = [video_record(video_bytes, id=f"bad-{i}", caption="") for i in range(3)]
    dataset = InstVLIterableDataset(records, num_frames=2, max_bad_samples=None, max_bad_fraction=None)
    with pytest.raises(TooManyBadSamplesError, match="All 3 samples"):
        list(dataset)


def test_strict_mode_raises_the_sample_error(video_bytes):
    records = [video_record(video_bytes), video_record(video_bytes, id="broken", caption="")]
    with pytest.raises(InstVLSampleError, match="broken"):
        list(InstVLIterableDataset(records, num_frames=2, skip_bad_samples=False))


def test_map_style_returns_none_and_the_collator_drops_it(video_bytes, tmp_path):
    from media_utils import make_tiny_tokenizer

    from instap_processing import InstAPProcessor, InstAPVideoProcessor

    records = [video_record(video_bytes, id="ok"), video_record(video_bytes, id="broken", media=b"zz" * 40)]
    dataset = InstVLMapDataset(records, num_frames=2)
    examples = [dataset[0], dataset[1]]
    assert examples[1] is None and dataset.tracker.reasons == {"corrupt_media": 1}
    processor = InstAPProcessor(
        InstAPVideoProcessor(size={"height": 16, "width": 16}, num_frames=2), make_tiny_tokenizer(tmp_path)
    )
    batch = InstAPDataCollator(processor)(examples)
    assert batch["pixel_values"].shape[0] == 1
    with pytest.raises(RuntimeError, match="bad"):
        InstAPDataCollator(processor)([None, None])
