"""Bad data never stops or silently corrupts a run: adversarial records, JSON(L) files and processor values raise the
documented errors (naming sample and field) or become counted bad samples; a fuzz test over records and processor
inputs asserts that nothing else escapes."""

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from media_utils import make_tiny_tokenizer
from PIL import Image

from instap_processing import (
    InstAPProcessor,
    InstAPVideoProcessor,
    InstVLSampleError,
    load_instvl,
    parse_record,
)
from instap_processing.streaming import prepare_example


def _record(**changes):
    record = {
        "id": "s1", "media_type": "image", "media": b"not decoded here", "caption": "a red square",
        "instances": [{"caption": "a red square", "boxes": [[1, 2, 10, 12]], "frame_index": [0]}],
    }
    record.update(changes)
    return record


def _instance(**changes):
    instance = {"caption": "a red square", "boxes": [[1, 2, 10, 12], [2, 3, 11, 13]], "frame_index": [0, 2]}
    instance.update(changes)
    return _record(media_type="video", instances=[instance])


@pytest.mark.parametrize(
    "record,field,reason",
    [
        (_instance(frame_index=[1e999, 2]), "instances[0].frame_index", "malformed_instances"),
        (_instance(frame_index=[float("inf"), 2]), "instances[0].frame_index", "malformed_instances"),
        (_instance(boxes=[[10**400, 0, 10, 10], [0, 0, 1, 1]]), "instances[0].boxes", "malformed_instances"),
        (_instance(boxes=[[40.3, 4.6, 1e39, 17.4], [0, 0, 1, 1]]), "instances[0].boxes[0]", "nan_coordinates"),
        (_instance(boxes=[[-1e300, 0, 10, 10], [0, 0, 1, 1]]), "instances[0].boxes[0]", "nan_coordinates"),
        (_record(caption="\u200b"), "caption", "bad_caption"),
        (_record(caption="\x00 \x01"), "caption", "bad_caption"),
        (_record(caption="\u200b\u200d\ufeff"), "caption", "bad_caption"),
    ],
)
def test_overflowing_numbers_and_invisible_captions_are_sample_errors(record, field, reason):
    with pytest.raises(InstVLSampleError) as caught:
        parse_record(record)
    assert caught.value.sample_id == "s1" and caught.value.field == field and caught.value.reason == reason


def test_a_caption_with_one_visible_character_is_kept():
    assert parse_record(_record(caption="\u200bé\u200b")).caption == "\u200bé\u200b"


@pytest.mark.parametrize("streaming", [False, True])
def test_one_bad_jsonl_line_costs_one_sample_not_the_split(tmp_path, streaming):
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "a.png")
    good = {"id": "g", "media_type": "image", "media": "a.png", "caption": "a red square",
            "instances": [{"caption": "a red square", "boxes": [[0, 0, 10, 10]]}]}
    lines = [
        json.dumps(good),
        json.dumps({**good, "id": "number", "caption": 5}),
        json.dumps([1, 2]),
        json.dumps({**good, "id": "g2", "instances": [{"caption": "x", "boxes": [[0, 0, 10, 10]], "frame_index": [0]}]}),
        '{"id": "truncated", "capt',
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    outcomes = []
    for row in load_instvl(str(tmp_path), "train", streaming=streaming):
        try:
            outcomes.append(("ok", prepare_example(row, num_frames=1).sample_id))
        except InstVLSampleError as error:
            outcomes.append((error.reason, error.sample_id, error.field))
    assert outcomes == [
        ("ok", "g"),
        ("bad_caption", "number", "caption"),
        ("malformed_record", "train.jsonl:3", None),
        ("ok", "g2"),
        ("malformed_record", "train.jsonl:5", None),
    ]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


def _video_processor(**kwargs):
    return InstAPVideoProcessor(**{"size": {"height": 16, "width": 16}, "num_frames": 2, "patch_size": 8, **kwargs})


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"image_std": [0.0, 0.0, 0.0]}, "image_std"),
        ({"image_std": [float("nan"), 1.0, 1.0]}, "image_std"),
        ({"image_mean": [float("inf"), 0.0, 0.0]}, "image_mean"),
        ({"rescale_factor": float("nan")}, "rescale_factor"),
        ({"random_resized_crop_scale": (0.5,)}, "random_resized_crop_scale"),
        ({"random_resized_crop_scale": (0.9, 0.5)}, "random_resized_crop_scale"),
        ({"resample": 99}, "resample"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"num_frames": 0}, "num_frames"),
        ({"instance_crop_size": {"height": 0, "width": 8}}, "instance_crop_size"),
        ({"flip_probability": 2.0}, "flip_probability"),
    ],
)
def test_wrong_processor_values_raise_value_errors_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        _video_processor(**kwargs)
    # The same values given per call are checked too (the call-time kwargs override the saved ones).
    if field not in ("num_frames", "instance_crop_size"):
        with pytest.raises(ValueError, match=field):
            _video_processor()(np.zeros((2, 16, 16, 3), np.uint8), **kwargs)


def test_an_empty_clip_is_an_error():
    with pytest.raises(ValueError, match="no frame"):
        _video_processor()(np.zeros((0, 16, 16, 3), np.uint8), do_sample_frames=False)


@pytest.mark.parametrize("max_length", [-1, 0, 1, 2, 2.5, True])
def test_max_length_is_checked(tokenizer, max_length):
    with pytest.raises(ValueError, match="max_length"):
        InstAPProcessor(_video_processor(), tokenizer, max_length=max_length)
    processor = InstAPProcessor(_video_processor(), tokenizer, max_length=8)
    with pytest.raises(ValueError, match="max_length"):
        processor(images=[np.zeros((16, 16, 3), np.uint8)], text=["a"], max_length=max_length)


# ---------------------------------------------------------------------------------------------------------------------
# Fuzz: the only exceptions are the documented ones


_numbers = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True), st.just(10**400), st.just(1e39),
)
_anything = st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=6), st.binary(max_size=6))
_boxes = st.one_of(
    st.lists(st.lists(_numbers, min_size=0, max_size=5), max_size=3), _anything, st.lists(_numbers, max_size=5)
)
_instances = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "caption": st.one_of(st.text(max_size=8), _anything),
            "boxes": _boxes,
            "frame_index": st.one_of(st.lists(_numbers, max_size=3), _anything),
            "category": _anything,
        },
    ),
    max_size=3,
)
_records = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=5), _anything),
        "media_type": st.one_of(st.sampled_from(["image", "video", "audio"]), _anything),
        "media": st.one_of(st.binary(min_size=1, max_size=8), st.text(max_size=8), _anything),
        "caption": st.one_of(st.text(max_size=10), _anything),
        "instances": st.one_of(_instances, _anything),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_records)
def test_fuzzed_records_raise_only_sample_errors(raw):
    try:
        record = parse_record(raw)
    except InstVLSampleError as error:
        assert error.reason and str(error)
        return
    for instance in record.instances:  # what parses is finite in float32 and has integer frames
        assert np.isfinite(instance.boxes.astype(np.float32)).all()
        assert all(isinstance(i, int) for i in instance.frame_index)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(instances=_instances, media_type=st.sampled_from(["image", "video"]))
def test_fuzzed_processor_instances_raise_only_sample_errors(tokenizer, instances, media_type):
    processor = InstAPProcessor(_video_processor(), tokenizer, max_length=8)
    media = np.zeros((16, 16, 3), np.uint8) if media_type == "image" else np.zeros((4, 16, 16, 3), np.uint8)
    inputs = {"images": [media]} if media_type == "image" else {"videos": [media]}
    try:
        batch = processor(**inputs, text=["a"], instances=[instances], sample_ids=["f"])
    except InstVLSampleError as error:
        assert error.sample_id == "f" or error.sample_id is None
        return
    if "instance_pixel_values" in batch:
        assert math.isfinite(float(batch["instance_pixel_values"].abs().sum()))


# ---------------------------------------------------------------------------------------------------------------------
# Security: media paths stay inside the data root; FFmpeg opens no playlist


@pytest.mark.parametrize("streaming", [False, True])
def test_media_paths_cannot_escape_the_data_root(tmp_path, streaming):
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    for folder in (root, outside):
        Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "a.png")
    rows = [
        {"id": "inside", "media_type": "image", "media": "a.png", "caption": "a red square"},
        {"id": "dotdot", "media_type": "image", "media": "../outside/a.png", "caption": "a red square"},
        {"id": "absolute", "media_type": "image", "media": str(outside / "a.png"), "caption": "a red square"},
    ]
    (root / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    outcomes = []
    for row in load_instvl(str(root), "train", streaming=streaming):
        try:
            outcomes.append(prepare_example(row, num_frames=1, load_instances=False).sample_id)
        except InstVLSampleError as error:
            outcomes.append((error.sample_id, error.field, error.reason))
    assert outcomes == [
        "inside", ("dotdot", "media", "unsafe_media_path"), ("absolute", "media", "unsafe_media_path")
    ]


def test_a_playlist_is_never_opened_whatever_its_name(tmp_path):
    from media_utils import indexed_frames, write_video

    from instap_processing.decoding import decode_video

    write_video(indexed_frames(8), tmp_path / "secret.mp4", fps=8)
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{tmp_path / 'secret.mp4'}\n#EXT-X-ENDLIST\n"
    for name in ("list.m3u8", "innocent.mp4"):
        (tmp_path / name).write_text(playlist)
        with pytest.raises(InstVLSampleError) as caught:
            decode_video(str(tmp_path / name), num_frames=2, sample_id="p")
        assert caught.value.reason == "corrupt_media" and caught.value.sample_id == "p"
    with pytest.raises(InstVLSampleError):
        decode_video(playlist.encode(), num_frames=2, sample_id="p")
    assert decode_video(str(tmp_path / "secret.mp4"), num_frames=2).total_num_frames == 8


# ---------------------------------------------------------------------------------------------------------------------
# Counting: one global total of skipped samples, whatever the worker count


@pytest.fixture(scope="module")
def corrupted_image_split(tmp_path_factory):
    """24 synthetic image records as JSONL with media files, 5 of them corrupted (garbage, truncated, missing)."""
    from instap_processing.synthetic import SyntheticConfig, generate_split, write_jsonl_split

    root = tmp_path_factory.mktemp("bad_data")
    config = SyntheticConfig(seed=3, video_fraction=0.0, num_samples={"train": 24})
    write_jsonl_split(str(root), "train", list(generate_split("train", 24, config)))
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    corrupted = records[1::5]  # 5 records
    for number, record in enumerate(corrupted):
        media = root / record["media"]
        if number % 3 == 0:
            media.write_bytes(b"\x00garbage" * 10)
        elif number % 3 == 1:
            media.write_bytes(media.read_bytes()[:40])
        else:
            media.unlink()
    return str(root), len(records), len(corrupted)


@pytest.mark.parametrize("workers", [0, 2])
def test_training_counts_every_skipped_sample_once_over_workers(corrupted_image_split, tmp_path, workers, capsys):
    from instap_train.run_align import main as run_align

    root, total, bad = corrupted_image_split
    run_align([
        "--dataset_name_or_path", root, "--preset", "tiny", "--output_dir", str(tmp_path / "run"),
        "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--dataloader_num_workers", str(workers),
        "--eval_splits", "", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--use_cpu",
        "--num_frames", "1", "--max_bad_fraction", "0.5",
    ])
    assert f"Bad samples skipped in training (all workers and processes): {bad} of {total} read." in capsys.readouterr().out


def test_the_bad_fraction_cap_is_global(corrupted_image_split, tmp_path):
    from instap_processing import TooManyBadSamplesError
    from instap_train.run_align import main as run_align

    root, _, _ = corrupted_image_split  # 5 of 24 bad: over a 10 % cap once 12 samples were read
    with pytest.raises(TooManyBadSamplesError, match="max_bad_fraction"):
        run_align([
            "--dataset_name_or_path", root, "--preset", "tiny", "--output_dir", str(tmp_path / "run"),
            "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--dataloader_num_workers", "2",
            "--eval_splits", "", "--report_to", "none", "--save_strategy", "no", "--use_cpu", "--num_frames", "1",
            "--max_bad_fraction", "0.1", "--min_samples_for_bad_fraction", "12",
        ])
