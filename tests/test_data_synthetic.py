"""The synthetic InstVL: schema, real media, boxes on the objects, captions, confusable pairs, held-out pairs, CLI."""

import re

import numpy as np
import pytest

from instap_processing.captions import split_sentences
from instap_processing.decoding import decode_media
from instap_processing.instvl import load_instvl
from instap_processing.records import parse_record, validate_instances_against_media
from instap_processing.synthetic import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    SHAPES,
    SyntheticConfig,
    available_video_codec,
    generate_record,
    generate_split,
    main,
)

CONFIG = SyntheticConfig(min_frames=8, max_frames=12)


def objects_of(record):
    """(colour, shape) of every instance, read from its caption."""
    result = []
    for instance in record["instances"]:
        words = instance["caption"].split(".")[0].split()
        colour = next(w for w in words if w in COLOURS)
        shape = next(w for w in words if w in SHAPES)
        result.append((colour, shape))
    return result


@pytest.fixture(scope="module")
def records():
    return {
        split: list(generate_split(split, 24, CONFIG))
        for split in ("train", "img_1k", "img_zero_1k", "video_1k")
    }


def test_records_follow_the_schema_and_decode(records):
    for split_records in records.values():
        for record in split_records:
            parsed = parse_record(record)
            media = decode_media(record["media"], record["media_type"], num_frames=None)
            assert (media.height, media.width) == (64, 64)
            validate_instances_against_media(parsed, num_frames=media.total_num_frames, height=64, width=64)
            assert 1 <= len(record["instances"]) <= 4
            if record["media_type"] == "video":
                assert CONFIG.min_frames <= media.total_num_frames <= CONFIG.max_frames
    assert {r["media_type"] for r in records["train"]} == {"image", "video"}
    assert {r["media_type"] for r in records["img_1k"]} == {"image"}
    assert {r["media_type"] for r in records["video_1k"]} == {"video"}


def test_media_are_real_h264_jpeg_and_png(records):
    videos = [r for r in records["video_1k"]]
    assert decode_media(videos[0]["media"], "video").codec == (
        "h264" if available_video_codec() == "libx264" else "mpeg4"
    )
    image_codecs = {decode_media(r["media"], "image").codec for r in records["img_1k"]}
    assert image_codecs == {"jpeg", "png"}


def test_boxes_sit_on_the_objects(records):
    """Inside each box the instance's colour dominates the box centre, frame by frame."""
    checked = 0
    for record in records["video_1k"][:8] + records["img_1k"][:8]:
        media = decode_media(record["media"], record["media_type"])
        frames = media.frames.permute(0, 2, 3, 1).numpy().astype(np.float32)
        boxes_by_object = [(obj, inst) for obj, inst in zip(objects_of(record), record["instances"])]
        for (colour, _), instance in boxes_by_object:
            for frame_index, box in zip(instance["frame_index"], instance["boxes"]):
                x1, y1, x2, y2 = box
                cx, cy = int((x1 + x2) / 2), int((y1 + 2 * y2) / 3)  # lower centre: inside every shape
                patch = frames[frame_index, cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(0)
                distances = {name: np.linalg.norm(patch - np.array(rgb)) for name, rgb in COLOURS.items()}
                # Objects may overlap (the one drawn later wins), so another object's colour is possible, but the
                # background never is.
                background = min(np.linalg.norm(patch - np.array(rgb)) for rgb in BACKGROUNDS.values())
                assert min(distances.values()) < background
                checked += distances[colour] < 60
    assert checked > 100


def test_trajectories_move_as_the_captions_say(records):
    directions = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for record in records["video_1k"]:
        for instance in record["instances"]:
            first, last = np.array(instance["boxes"][0]), np.array(instance["boxes"][-1])
            moved = ((last[:2] + last[2:]) - (first[:2] + first[2:])) / 2
            match = re.search(r"moving (left|right|up|down)", instance["caption"])
            if match is None:
                assert "standing still" in instance["caption"] and np.allclose(moved, 0)
            else:
                dx, dy = directions[match.group(1)]
                assert moved[0] * dx + moved[1] * dy > 5 and abs(moved[0] * dy) + abs(moved[1] * dx) < 1e-3
            assert instance["frame_index"][0] == 0 and len(instance["frame_index"]) >= 4


def test_every_caption_sentence_names_its_subjects(records):
    """Each sentence, the unit caption sub-sampling trains on, identifies its subject: scene sentences name every
    object by colour and shape, instance sentences name their object by size, colour and shape (and motion)."""
    for split, split_records in records.items():
        expected = None if split == "train" else CONFIG.test_caption_sentences
        for record in split_records:
            sentences = split_sentences(record["caption"])
            assert len(sentences) == expected if expected else len(sentences) >= 3
            for (colour, shape), instance in zip(objects_of(record), record["instances"]):
                assert all(f"{colour} {shape}" in sentence for sentence in sentences)
                instance_sentences = split_sentences(instance["caption"])
                assert len(instance_sentences) == expected if expected else len(instance_sentences) >= 3
                size = next(w for w in instance_sentences[0].split() if w in ("small", "large"))
                for sentence in instance_sentences:
                    assert f"{size} {colour} {shape}" in sentence
                    if record["media_type"] == "video":
                        assert re.search(r"moving (left|right|up|down) (slowly|quickly)|standing still", sentence)
            captions = [instance["caption"] for instance in record["instances"]]
            assert len(set(captions)) == len(captions)  # every instance caption identifies its instance


def test_every_sentence_fits_the_demo_text_length(records, tmp_path):
    """A sentence cut at the text length loses what tells it apart (the last objects it lists, their motions): the
    demo's `max_text_length` holds every synthetic sentence, where method §4.4's 32 tokens would cut some."""
    from instap_train.demo_data import build_caption_tokenizer
    from instap_train.run_align import DEMO_ARGUMENTS

    every_record = [record for split_records in records.values() for record in split_records]
    tokenizer = build_caption_tokenizer(every_record, str(tmp_path))
    sentences = [
        sentence
        for record in every_record
        for text in [record["caption"]] + [instance["caption"] for instance in record["instances"]]
        for sentence in split_sentences(text)
    ]
    lengths = [len(tokenizer(sentence)["input_ids"]) for sentence in sentences]
    assert 32 < max(lengths) <= DEMO_ARGUMENTS["max_text_length"]


def test_no_caption_repeats_across_samples_of_a_split(records):
    """No scene sentence and no instance caption occurs in two samples of a split: identical texts of different
    samples would be false contrastive negatives (and preferred VTM hard negatives) of each other."""
    for split, split_records in records.items():
        owner = {}
        for record in split_records:
            texts = split_sentences(record["caption"]) + [instance["caption"] for instance in record["instances"]]
            for text in texts:
                assert owner.setdefault(text, record["id"]) == record["id"], (split, text)
    # Without the redraw the same generator repeats texts (one-object scenes, one-sentence test captions).
    plain = list(generate_split("img_1k", 24, SyntheticConfig(min_frames=8, max_frames=12, unique_captions=False)))
    texts = [s for r in plain for s in split_sentences(r["caption"]) + [i["caption"] for i in r["instances"]]]
    assert len(set(texts)) < len(texts)


def test_confusable_pairs_occur(records):
    same_shape, same_colour = 0, 0
    for record in records["train"] + records["video_1k"] + records["img_1k"]:
        objects = objects_of(record)
        for (c1, s1), (c2, s2) in zip(objects, objects[1:]):
            same_shape += s1 == s2 and c1 != c2
            same_colour += c1 == c2
    assert same_shape >= 3 and same_colour >= 3


def test_held_out_pairs_only_in_zero_shot_splits(records):
    for split in ("train", "img_1k", "video_1k"):
        for record in records[split]:
            assert not set(objects_of(record)) & set(HELD_OUT_PAIRS)
    for record in records["img_zero_1k"]:
        assert set(objects_of(record)) & set(HELD_OUT_PAIRS)


def test_generation_is_deterministic():
    first, again = generate_record("img_1k", 5, CONFIG), generate_record("img_1k", 5, CONFIG)
    assert first == again
    assert generate_record("img_1k", 5, SyntheticConfig(seed=1)) != first


def test_cli_writes_parquet_shards(tmp_path):
    main(["--out", str(tmp_path), "--num-train", "10", "--num-test", "3", "--shard-size", "4",
          "--splits", "train", "img_zero_1k", "--max-frames", "8"])  # fmt: skip
    shards = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert shards == [
        "img_zero_1k-00000-of-00001.parquet",
        "train-00000-of-00003.parquet",
        "train-00001-of-00003.parquet",
        "train-00002-of-00003.parquet",
    ]
    assert "split: img_zero_1k" in (tmp_path / "README.md").read_text()
    assert len(list(load_instvl(tmp_path, "train"))) == 10
