"""The annotation pipeline (instap_processing.annotate): shots on clips with known cuts, the run's wiring, schema,
resume and bad inputs with stand-in stage models, and the real transformers models built tiny and random."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from media_utils import write_image, write_video

from instap_processing.annotate import (
    AnnotateConfig,
    ShotConfig,
    annotate,
    cut_into_shots,
    load_annotate_config,
)
from instap_processing.annotate.shots import video_shots
from instap_processing.instvl import load_instvl

COLOURS = [(200, 40, 40), (40, 190, 60), (50, 60, 210), (220, 200, 40)]


def segment_frames(lengths, height=48, width=64):
    """Frames in segments of one background colour each, with a white square moving right (a cut at each segment
    start, none inside)."""
    frames = []
    for segment, length in enumerate(lengths):
        for step in range(length):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[:] = COLOURS[segment % len(COLOURS)]
            frame[12:24, 4 + 2 * step : 16 + 2 * step] = 255
            frames.append(frame)
    return np.stack(frames)


def test_cuts_are_found_exactly_and_not_inside_a_shot():
    shots = list(cut_into_shots(segment_frames([6, 9, 5]), ShotConfig(frame_rate=4)))
    assert [(shot.start, shot.num_frames) for shot in shots] == [(0, 6), (6, 9), (15, 5)]
    # shots disabled: one item per video
    assert [shot.num_frames for shot in cut_into_shots(segment_frames([6, 9]), ShotConfig(enabled=False))] == [15]


def test_video_shots_keep_the_length_range(tmp_path):
    path = tmp_path / "cuts.mp4"
    write_video(segment_frames([8, 2, 12, 30]), path, fps=4)
    rate, shots, counts = video_shots(str(path), ShotConfig(frame_rate=4, min_seconds=1.0, max_seconds=5.0))
    assert rate == pytest.approx(4.0)
    # 2 frames = 0.5 s: too short; 30 frames = 7.5 s: too long.
    assert [(shot.start, shot.num_frames) for shot in shots] == [(0, 8), (10, 12)]
    assert counts == {"shots": 4, "too_short": 1, "too_long": 1}
    # Read at 2 fps (every second frame), the same cuts fall at half the indices.
    rate, shots, _ = video_shots(str(path), ShotConfig(frame_rate=2, min_seconds=1.0, max_seconds=20.0))
    assert rate == pytest.approx(2.0) and [shot.start for shot in shots] == [0, 5, 11]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key 'detection\.box_treshold' \(did you mean 'detection\.box_threshold'\?\)"):
        AnnotateConfig.from_dict({"detection": {"box_treshold": 0.3}})
    with pytest.raises(ValueError, match="shots.threshold"):
        AnnotateConfig.from_dict({"shots": {"threshold": 0}})
    with pytest.raises(ValueError, match="must not contain '.'"):
        AnnotateConfig.from_dict({"detection": {"categories": ["a.b"]}})
    path = tmp_path / "annotate.yaml"
    path.write_text("detection:\n  categories: [ball, cube]\ntracking:\n  min_track_frames: 3\n")
    config = load_annotate_config(path, {"tracking": {"frame_stride": 2}})
    assert config.detection.categories == ["ball", "cube"]
    assert (config.tracking.min_track_frames, config.tracking.frame_stride) == (3, 2)


# --------------------------------------------------------------------------------------------------------------------
# The run, with stand-in stage models
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def inputs(tmp_path):
    folder = tmp_path / "raw"
    (folder / "clips").mkdir(parents=True)
    write_video(segment_frames([8, 8]), folder / "clips" / "a.mp4", fps=4)  # 2 shots
    write_video(segment_frames([12]), folder / "clips" / "b.mp4", fps=4)  # 1 shot
    (folder / "photo.jpg").write_bytes(write_image(np.full((40, 56, 3), 120, np.uint8)))
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 10)
    (folder / "notes.txt").write_text("not media")
    return folder


class StandIns:
    """Deterministic stage models with the call signatures of `instap_processing.annotate.models`."""

    def __init__(self, fail_on_call=None):
        self.detector_calls = 0
        self.fail_on_call = fail_on_call

    def detector(self, images):
        self.detector_calls += 1
        if self.detector_calls == self.fail_on_call:
            raise RuntimeError("stopped half way")
        found = []
        for image in images:
            w, h = image.size
            found.append([
                {"box": [w * 0.2, h * 0.2, w * 0.6, h * 0.7], "score": 0.9, "category": "ball"},
                {"box": [w * 0.5, h * 0.5, w * 0.9, h * 0.9], "score": 0.8, "category": "cube"},
                {"box": [1.0, 1.0, 3.0, 3.0], "score": 0.7, "category": "speck"},  # under min_box_side: dropped
            ])
        return found

    @staticmethod
    def tracker(frames, boxes):
        # The first object stays in view; the second vanishes after the key frame (a 1-box track: dropped).
        return [{index: list(boxes[0]) for index in range(len(frames))}, {0: list(boxes[1])}]

    @staticmethod
    def captioner(images, prompts, max_new_tokens):
        return [f"caption {len(prompt.split())} words {image.size[0]}x{image.size[1]}." for image, prompt in zip(images, prompts)]


def run(inputs, output_dir, standins, **config):
    values = {"shots": {"frame_rate": 4, "min_seconds": 1.0}, "output": {"shard_size": 1}, **config}
    return annotate(str(inputs), str(output_dir), AnnotateConfig.from_dict(values), detector=standins.detector,
                    tracker=standins.tracker, captioner=standins.captioner)


def test_annotation_run_writes_instvl_records(inputs, tmp_path):
    output = tmp_path / "out"
    summary = run(inputs, output, StandIns())
    assert summary["items"] == 4 and (summary["video_items"], summary["image_items"]) == (3, 1)
    assert summary["bad_inputs"].keys() == {"broken.mp4"} and summary["bad_inputs"]["broken.mp4"].startswith("corrupt_media")
    assert summary["ignored_files"] == 1 and summary["shots"] == {"detected": 3, "too_short": 0, "too_long": 0}
    assert summary["small_boxes_dropped"] == 4 and summary["dropped_tracks"] == 3  # one per video item
    assert summary["instances"] == 3 + 2 and summary["detections"] == 12
    assert set(summary["seconds_per_stage"]) == {"shots", "detection", "tracking", "captions", "write"}
    assert json.loads((output / "summary.json").read_text()) == summary

    records = {record["id"]: record for record in load_instvl(str(output), "train", streaming=False)}
    assert sorted(records) == ["clips/a#shot000", "clips/a#shot001", "clips/b#shot000", "photo.jpg"]
    video = records["clips/a#shot001"]
    assert video["media_type"] == "video" and video["caption"].startswith("caption ")
    (ball,) = video["instances"]
    assert ball["category"] == "ball" and ball["frame_index"] == list(range(8)) and len(ball["boxes"]) == 8
    assert ball["boxes"][0] == pytest.approx([64 * 0.2, 48 * 0.2, 64 * 0.6, 48 * 0.7])
    photo = records["photo.jpg"]
    assert photo["media"] == (inputs / "photo.jpg").read_bytes()  # images keep their own bytes
    assert [i["category"] for i in photo["instances"]] == ["ball", "cube"] and photo["instances"][0]["frame_index"] == [0]


def test_output_decodes_through_the_training_loader(inputs, tmp_path):
    from instap_processing.streaming import InstVLMapDataset

    output = tmp_path / "out"
    run(inputs, output, StandIns())
    dataset = InstVLMapDataset(load_instvl(str(output), "train", streaming=False), num_frames=4, skip_bad_samples=False)
    examples = [dataset[i] for i in range(len(dataset))]
    assert all(example is not None for example in examples)
    clip = next(example for example in examples if example.media_type == "video")
    assert clip.video.frames.shape == (4, 3, 48, 64) and clip.video.total_num_frames == 8


def test_resume_after_stopping_half_way(inputs, tmp_path):
    output = tmp_path / "out"
    first = StandIns(fail_on_call=3)  # detection of the third input file fails
    with pytest.raises(RuntimeError, match="stopped half way"):
        run(inputs, output, first)
    state = json.loads((output / "annotate_state.json").read_text())
    assert set(state["done"]) == {"broken.mp4", "clips/a.mp4", "clips/b.mp4"}
    second = StandIns()
    summary = run(inputs, output, second)
    assert second.detector_calls == 1  # only photo.jpg was left
    ids = [record["id"] for record in load_instvl(str(output), "train", streaming=False)]
    assert sorted(ids) == ["clips/a#shot000", "clips/a#shot001", "clips/b#shot000", "photo.jpg"]  # each once
    assert summary["items"] == 4 and summary["shards"] == 3  # a.mp4 (2 shots), b.mp4, photo.jpg
    with pytest.raises(ValueError, match="another config"):
        run(inputs, output, StandIns(), detection={"max_instances": 1})
    assert run(inputs, output, StandIns(), device="cpu")["items"] == 4  # another device is the same run


def test_stages_can_be_skipped_with_your_own_captions(inputs, tmp_path):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"photo.jpg": "my own photo caption.", "clips/b#shot000": "my own clip caption."}))
    output = tmp_path / "out"
    summary = annotate(str(inputs), str(output), AnnotateConfig.from_dict({
        "shots": {"frame_rate": 4}, "tracking": {"enabled": False},
        "captions": {"enabled": False, "captions_file": str(captions)},
    }), detector=StandIns().detector)
    records = {record["id"]: record for record in load_instvl(str(output), "train", streaming=False)}
    assert records["photo.jpg"]["caption"] == "my own photo caption."
    assert records["clips/b#shot000"]["caption"] == "my own clip caption."
    # No captioning model: the detected categories name the scene and each instance.
    assert records["clips/a#shot000"]["caption"] == "a video with a ball and a cube."
    assert [i["caption"] for i in records["clips/a#shot000"]["instances"]] == ["a ball.", "a cube."]
    # No tracker: one box, on the key frame.
    assert records["clips/a#shot000"]["instances"][0]["frame_index"] == [0]
    assert summary["dropped_tracks"] == 0


def test_annotated_folder_trains_with_run_align(inputs, tmp_path):
    """The output is a training set as it is: `run_align.py --dataset_name_or_path OUTPUT` (2 steps)."""
    from instap_train.run_align import main as run_align

    output = tmp_path / "out"
    run(inputs, output, StandIns(), output={"shard_size": 2})
    run_align([
        "--dataset_name_or_path", str(output), "--output_dir", str(tmp_path / "model"), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--num_frames", "4", "--eval_splits", "", "--save_strategy", "no",
        "--report_to", "none", "--dataloader_num_workers", "0", "--use_cpu",
        "--config_overrides", "vision_config.image_size=32,teacher_config.image_size=32,teacher_image_size=32",
    ])
    assert (tmp_path / "model" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------------------------
# The real stage models, tiny and random (built offline from their transformers configs)
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from annotation_models import tiny_captioner, tiny_grounding_dino, tiny_sam2_video

    root = tmp_path_factory.mktemp("annotation_models")
    for name, build in (("detector", tiny_grounding_dino), ("tracker", tiny_sam2_video), ("captioner", tiny_captioner)):
        build(root / name)
    return root


def real_config(tiny_models, **values):
    return AnnotateConfig.from_dict({
        "shots": {"frame_rate": 4, "min_seconds": 1.0},
        "detection": {"model": str(tiny_models / "detector"), "categories": ["person", "car", "dog"],
                      "box_threshold": 0.0, "text_threshold": 0.0, "min_box_side": 0.0, "max_instances": 3},
        "tracking": {"model": str(tiny_models / "tracker")},
        "captions": {"model": str(tiny_models / "captioner"), "max_new_tokens_scene": 4, "max_new_tokens_instance": 3},
        "output": {"shard_size": 2},
        "device": "cpu",
        **values,
    })


def test_grounding_dino_detector_wiring(tiny_models):
    from PIL import Image
    from torchvision.ops import box_iou

    from instap_processing.annotate.models import build_detector

    config = real_config(tiny_models, detection={
        "model": str(tiny_models / "detector"), "categories": ["person", "car", "dog"], "box_threshold": 0.0,
        "text_threshold": 0.0, "nms_iou": 0.3, "max_instances": 4})
    detector = build_detector(config)
    images = [Image.fromarray(np.full((48, 64, 3), 90, np.uint8)), Image.fromarray(np.full((60, 40, 3), 30, np.uint8))]
    found = detector(images)
    assert len(found) == 2
    for image, detections in zip(images, found):
        assert 1 <= len(detections) <= 4
        boxes = torch.tensor([d["box"] for d in detections])
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= image.width).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= image.height).all()
        assert all(d["category"] in ("person", "car", "dog") for d in detections)
        overlaps = box_iou(boxes, boxes).fill_diagonal_(0)
        assert (overlaps <= 0.3 + 1e-6).all()  # NMS, across categories


def test_a_track_ends_where_its_mask_vanishes():
    from instap_processing.annotate.models import masks_to_boxes, tracks_from_frame_boxes

    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert masks_to_boxes(masks) == [[2.0, 1.0, 5.0, 3.0], None]
    a, b = [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]
    per_frame = {0: [a, b], 1: [a, None], 2: [a, b], 3: [None, b]}
    assert tracks_from_frame_boxes(per_frame, 2) == [{0: a, 1: a, 2: a}, {0: b}]  # b does not come back at frame 2


def test_sam2_video_tracker_wiring(tiny_models):
    from instap_processing.annotate.models import build_tracker

    tracker = build_tracker(real_config(tiny_models))
    frames = list(segment_frames([6]))
    boxes = [[4.0, 12.0, 16.0, 24.0], [30.0, 5.0, 60.0, 40.0]]
    tracks = tracker(frames, boxes)
    assert len(tracks) == 2
    for track, box in zip(tracks, boxes):
        assert track[0] == box  # the key frame keeps the prompt box
        assert sorted(track) == list(range(len(track)))  # consecutive frames from the key frame
        for x1, y1, x2, y2 in track.values():
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 48


def test_captioner_wiring(tiny_models):
    from PIL import Image

    from instap_processing.annotate.models import build_captioner

    captioner = build_captioner(real_config(tiny_models))
    images = [Image.fromarray(np.full((48, 64, 3), v, np.uint8)) for v in (20, 200, 90)]
    captions = captioner(images, ["Describe the scene.", "Describe it.", "The dog in the red box."], 3)
    assert len(captions) == 3 and all(isinstance(caption, str) for caption in captions)
    # Batched (left-padded) generation gives each image the caption it gets alone.
    assert captioner(images[1:2], ["Describe it."], 3) == captions[1:2]


def test_annotation_with_the_real_models_end_to_end(inputs, tiny_models, tmp_path):
    output = tmp_path / "out"
    summary = annotate(str(inputs), str(output), real_config(tiny_models))
    assert summary["items"] == 4 and summary["bad_inputs"].keys() == {"broken.mp4"}
    records = list(load_instvl(str(output), "train", streaming=False))
    assert len(records) == 4 and all(isinstance(record["caption"], str) for record in records)
    assert sum(len(record["instances"]) for record in records) == summary["instances"] > 0
    for record in records:
        for instance in record["instances"]:
            assert instance["category"] in ("person", "car", "dog") and isinstance(instance["caption"], str)
            assert len(instance["frame_index"]) == len(instance["boxes"]) >= 1
