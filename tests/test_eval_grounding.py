"""Grounding fine-tuning: box targets of a hand-made sample, and a few Trainer steps on a tiny synthetic split."""

import json

import numpy as np
import pytest
import torch
from eval_helpers import NUM_FRAMES, make_synthetic_instvl, make_tiny_checkpoint
from media_utils import indexed_frames, write_image, write_video

from instap_processing.geometry import FrameTransform
from instap_processing.records import parse_instance
from instap_train.run_grounding import (
    GroundingCollator,
    InstVLGroundingDataset,
    grounding_targets,
    main,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval_grounding"))
    synthetic = make_synthetic_instvl(root)
    checkpoint = make_tiny_checkpoint(root, synthetic)
    return root, synthetic, checkpoint


def test_box_targets_of_a_hand_made_sample(setup, tmp_path):
    """A 10-frame 48x64 video and an 40x80 image, resized to the tiny model's 32x32 input."""
    from instap_processing import InstAPProcessor
    from instap_processing.instvl import load_instvl

    _, _, checkpoint = setup
    processor = InstAPProcessor.from_pretrained(checkpoint)
    write_video(indexed_frames(10, height=48, width=64), tmp_path / "clip.mp4")
    write_image(np.full((40, 80, 3), 128, dtype=np.uint8), tmp_path / "still.jpg")
    records = [
        {"id": "v", "media_type": "video", "media": "clip.mp4", "caption": "a clip",
         "instances": [{"caption": "a red square", "frame_index": [3, 7], "boxes": [[8, 12, 24, 36], [32, 0, 64, 24]]}]},
        {"id": "i", "media_type": "image", "media": "still.jpg", "caption": "an image",
         "instances": [{"caption": "a blue circle", "frame_index": [0], "boxes": [[20, 10, 60, 30]]},
                       {"caption": "a box partly outside", "boxes": [[-40, 20, 40, 60]]}]},
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    dataset = InstVLGroundingDataset(load_instvl(str(tmp_path / "test.jsonl"), "test", streaming=False), processor,
                                     num_frames=4)
    assert len(dataset) == 3 and dataset.media_types == ["video", "image", "image"]

    video = GroundingCollator()([dataset[0]])
    # Middle sampling of 10 frames into 4 segments takes frames 1, 3, 6, 8. Frame 1 and 8 lie outside the
    # annotated span [3, 7]: no target. Frame 3 is annotated; frame 6 takes the nearest annotation, frame 7.
    assert video["pixel_values"].shape == (1, 4, 3, 32, 32)
    assert video["box_mask"].tolist() == [[False, True, True, False]]
    # Frame 3: [8, 12, 24, 36] in 64x48 -> [4, 8, 12, 24] in 32x32 -> cxcywh [8, 16, 8, 16] / 32.
    # Frame 7: [32, 0, 64, 24] -> [16, 0, 32, 16] -> [24, 8, 16, 16] / 32.
    expected = torch.tensor([[0.25, 0.5, 0.25, 0.5], [0.75, 0.25, 0.5, 0.5]])
    torch.testing.assert_close(video["boxes"][0, 1:3], expected)

    images = GroundingCollator()([dataset[1], dataset[2]])
    assert images["pixel_values"].shape == (2, 1, 3, 32, 32) and images["box_mask"].all()
    # [20, 10, 60, 30] in 80x40 -> [8, 8, 24, 24] in 32x32; [-40, 20, 40, 60] is clipped to [0, 16, 16, 32].
    torch.testing.assert_close(images["boxes"][:, 0], torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5]]))
    # The phrase is the instance caption.
    assert processor.tokenizer.decode(images["input_ids"][0], skip_special_tokens=True) == "a blue circle"


def test_targets_follow_a_flip_and_drop_boxes_out_of_view():
    instance = parse_instance({"caption": "x", "frame_index": [0, 4], "boxes": [[0, 0, 10, 10], [90, 0, 100, 10]]},
                              0, sample_id="s", media_type="video")
    # A crop window of the right half (x in [50, 100)), resized to 50x50 and mirrored.
    transform = FrameTransform(source_height=50, source_width=100, top=0, left=50, height=50, width=50,
                               output_height=50, output_width=50, flip=True)
    boxes, mask = grounding_targets(instance, [0, 4], transform, "video")
    # Frame 0's box is left of the window: no target. Frame 4's [90, 0, 100, 10] -> [40, 0, 50, 10] -> mirrored
    # [0, 0, 10, 10].
    assert mask.tolist() == [False, True]
    torch.testing.assert_close(boxes[1], torch.tensor([0.1, 0.1, 0.2, 0.2]))
    # "exact" keeps only annotated frames; "nearest" every frame; a tubelet of 2 keeps each pair's first frame.
    identity = FrameTransform(50, 100, 0, 0, 50, 100, 50, 100)
    assert grounding_targets(instance, [0, 2, 4, 6], identity, "video", box_frames="exact")[1].tolist() == [
        True, False, True, False]
    assert grounding_targets(instance, [0, 2, 4, 6], identity, "video", box_frames="nearest")[1].all()
    assert grounding_targets(instance, [0, 2, 4, 6], identity, "video", tubelet_size=2)[1].tolist() == [True, True]


def test_finetune_from_checkpoint_then_reload(setup, tmp_path, capsys):
    from modeling_instap import InstAPForGrounding, InstAPForPreTraining

    root, synthetic, checkpoint = setup
    # The backbone comes from the InstAP checkpoint; only the box head is new.
    pretrained = InstAPForPreTraining.from_pretrained(checkpoint)
    grounding = InstAPForGrounding.from_pretrained(checkpoint)
    torch.testing.assert_close(grounding.instap.itm_head.weight, pretrained.instap.itm_head.weight)

    out = tmp_path / "grounding"
    common = ["--dataset_name_or_path", synthetic, "--test_splits", "img_1k,video_1k", "--num_frames", str(NUM_FRAMES),
              "--per_device_eval_batch_size", "8", "--report_to", "none", "--use_cpu", "--dataloader_num_workers", "0"]
    result = main(["--model_name_or_path", checkpoint, "--output_dir", str(out), "--max_steps", "4",
                   "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--save_strategy", "no",
                   "--logging_steps", "1"] + common)
    assert result["train"]["global_step"] == 4 and np.isfinite(result["train"]["training_loss"])
    printed = capsys.readouterr().out
    assert "| img_1k |" in printed and "| video_1k |" in printed
    for split, media_type in (("img_1k", "image"), ("video_1k", "video")):
        metrics = result["results"][split]
        assert set(metrics) == {media_type, "all", "num_without_box"}
        for key in ("iou@0.5", "iou@0.7", "iou@0.9", "mean_iou"):
            assert np.isfinite(metrics["all"][key]) and 0.0 <= metrics["all"][key] <= 100.0
        assert metrics["all"]["iou@0.5"] >= metrics["all"]["iou@0.7"] >= metrics["all"]["iou@0.9"]
        assert metrics["all"]["num_examples"] > 0
    assert json.loads((out / "grounding_results.json").read_text())["results"] == result["results"]

    # The saved folder is a grounding checkpoint with its processor: evaluating it again gives the same numbers.
    again = main(["--model_name_or_path", str(out), "--output_dir", str(tmp_path / "again"), "--skip_training"] + common)
    for split in ("img_1k", "video_1k"):
        assert again["results"][split]["all"] == pytest.approx(result["results"][split]["all"])
