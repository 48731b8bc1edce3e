"""Instance crops: nearest known box, clipping, growing degenerate boxes, one roi_align call per batch."""

import torch

import instap_processing.crops as crops_module
from instap_processing.crops import (
    boxes_at_frames,
    clip_boxes,
    crop_instances,
    expand_small_boxes,
    visible_in_any_frame,
)


def test_nearest_known_box_for_each_frame():
    boxes = torch.tensor([[0.0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]])
    result = boxes_at_frames([2, 6, 12], boxes, [0, 2, 3, 4, 5, 9, 10, 30])
    # frame 4 is halfway between 2 and 6: the earlier box wins; 9 -> 6 (3 away) vs 12 (3 away): earlier.
    assert result[:, 0].tolist() == [0, 0, 0, 0, 10, 10, 20, 20]


def test_single_box_covers_every_frame():
    result = boxes_at_frames([5], [[1.0, 2, 3, 4]], range(8))
    assert result.shape == (8, 4) and (result == torch.tensor([1.0, 2, 3, 4])).all()


def test_clip_boxes_to_the_frame():
    clipped = clip_boxes(torch.tensor([[-5.0, -3, 40, 50], [10, 10, 20, 20]]), height=32, width=36)
    assert clipped.tolist() == [[0, 0, 36, 32], [10, 10, 20, 20]]


def test_degenerate_boxes_grow_to_one_patch_inside_the_frame():
    boxes = torch.tensor([[10.0, 10, 10, 10], [0, 5, 0, 25], [63, 63, 64, 64], [5, 5, 40, 40]])
    grown = expand_small_boxes(boxes, min_size=16, height=64, width=64)
    sizes = grown[:, 2:] - grown[:, :2]
    assert (sizes >= 16 - 1e-5).all()
    assert (grown[:, :2] >= 0).all() and (grown[:, 2:] <= 64).all()
    assert grown[0].tolist() == [2, 2, 18, 18]  # centred on the point
    assert grown[2].tolist() == [48, 48, 64, 64]  # shifted back inside at the far edge
    assert grown[3].tolist() == [5, 5, 40, 40]  # large boxes are untouched


def test_crop_matches_slicing_for_pixel_aligned_boxes():
    pixel_values = torch.arange(2 * 3 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 3, 32, 32)
    boxes = torch.tensor([[[8.0, 4, 24, 20]] * 3, [[0.0, 16, 16, 32]] * 3])
    crops = crop_instances(
        pixel_values, boxes, torch.tensor([1, 0]), (16, 16), min_box_size=1, sampling_ratio=1
    )
    assert crops.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(crops[0], pixel_values[1, :, :, 4:20, 8:24])
    torch.testing.assert_close(crops[1], pixel_values[0, :, :, 16:32, 0:16])


def test_each_frame_uses_its_own_box():
    pixel_values = torch.zeros(1, 2, 1, 16, 16)
    pixel_values[0, 0, :, :8, :8] = 1.0  # frame 0: bright top-left
    pixel_values[0, 1, :, 8:, 8:] = 2.0  # frame 1: bright bottom-right
    boxes = torch.tensor([[[0.0, 0, 8, 8], [8, 8, 16, 16]]])
    crops = crop_instances(pixel_values, boxes, torch.tensor([0]), (4, 4), min_box_size=1)
    assert torch.allclose(crops[0, 0], torch.ones(1, 4, 4)) and torch.allclose(
        crops[0, 1], torch.full((1, 4, 4), 2.0)
    )


def test_out_of_frame_parts_are_clipped_not_padded():
    pixel_values = torch.ones(1, 1, 1, 16, 16)
    boxes = torch.tensor([[[-8.0, -8, 8, 8]]])  # half outside: clipped to [0, 8]
    crops = crop_instances(pixel_values, boxes, torch.tensor([0]), (4, 4), min_box_size=1)
    assert torch.allclose(crops, torch.ones_like(crops))  # roi_align would give zeros outside the frame


def test_no_instances_gives_an_empty_tensor():
    crops = crop_instances(
        torch.zeros(2, 3, 3, 8, 8), torch.zeros(0, 3, 4), torch.zeros(0, dtype=torch.long), (5, 6)
    )
    assert crops.shape == (0, 3, 3, 5, 6)


def test_one_roi_align_call_per_batch(monkeypatch):
    calls = []
    original = crops_module.roi_align

    def counting_roi_align(*args, **kwargs):
        calls.append(args[1].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(crops_module, "roi_align", counting_roi_align)
    num_instances, num_frames = 7, 4
    boxes = torch.rand(num_instances, num_frames, 2) * 10
    boxes = torch.cat([boxes, boxes + 5], dim=-1)
    crop_instances(torch.rand(3, num_frames, 3, 16, 16), boxes, torch.tensor([0, 0, 1, 2, 2, 2, 1]), (8, 8))
    assert calls == [num_instances * num_frames]


def test_visibility_over_the_clip():
    boxes = torch.tensor(
        [
            [[-20.0, 0, -5, 10], [-20, 0, -5, 10]],  # left of the frame in both frames
            [[-20.0, 0, -5, 10], [2, 2, 6, 6]],  # visible in the second frame only
            [[40.0, 40, 50, 50], [33, 0, 40, 10]],  # below / right of a 32 x 32 frame
        ]
    )
    assert visible_in_any_frame(boxes, 32, 32).tolist() == [False, True, False]


def test_visible_fraction_sums_area_over_frames():
    from instap_processing.crops import visible_fraction

    boxes = torch.tensor([
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]],  # inside in both frames
        [[-10.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]],  # half out in one frame: 100 + 100 of 300
        [[40.0, 40.0, 50.0, 50.0], [35.0, 0.0, 45.0, 10.0]],  # out, then half in: 50 of 200
    ])
    torch.testing.assert_close(visible_fraction(boxes, 40, 40), torch.tensor([1.0, 2 / 3, 0.25]))
