"""Activation maps of a phrase on a video: range and shape, token-grid orientation, the PNG strip, and the box mass
ratio on hand-made maps. (Whether a *trained* tiny model's map favours the named object is measured by
`benchmarks/bench_activation_maps.py`: it needs far more training than a unit test can afford.)"""

import math

import numpy as np
import pytest
import torch
from eval_helpers import make_synthetic_instvl, make_tiny_checkpoint
from media_utils import write_image, write_video
from PIL import Image

from instap_eval.visualize import (
    activation_map,
    box_mass_ratio,
    load_clip,
    save_activation_strip,
    token_relevance,
    visualize_phrase,
)


@pytest.fixture(scope="module")
def model_and_processor(tmp_path_factory):
    from instap_processing import InstAPProcessor
    from modeling_instap import InstAPForPreTraining

    root = str(tmp_path_factory.mktemp("eval_visualize"))
    checkpoint = make_tiny_checkpoint(root, make_synthetic_instvl(root, num_train=4, num_test=1))
    return InstAPForPreTraining.from_pretrained(checkpoint).eval(), InstAPProcessor.from_pretrained(checkpoint)


@pytest.mark.parametrize("method", ["attention", "features"])
def test_map_of_a_video_file_is_a_normalised_frame_sized_map(model_and_processor, tmp_path, method):
    model, processor = model_and_processor
    rng = np.random.default_rng(0)
    path = tmp_path / "clip.mp4"
    write_video(rng.integers(0, 256, (9, 40, 56, 3), dtype=np.uint8), path)
    maps = visualize_phrase(model, processor, str(path), "a red square moving left", tmp_path / "strip.png",
                            method=method)
    assert maps.shape == (processor.video_processor.num_frames, 40, 56) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() == 1.0
    assert maps.std() > 0  # not a constant map
    with Image.open(tmp_path / "strip.png") as strip:
        assert strip.format == "PNG" and strip.size == (2 * 56 + 2, 2 * 40 + 2)
    # No gradient leaks into the model and its mode is restored.
    assert all(p.grad is None for p in model.parameters()) and not model.training
    # The same frames given as an array give the same map; another phrase gives another map.
    again = activation_map(model, processor, load_clip(str(path), 2).frames.permute(0, 2, 3, 1).numpy(),
                           "a red square moving left", method=method)
    torch.testing.assert_close(again, maps)
    other = activation_map(model, processor, str(path), "a large blue circle", method=method)
    assert not torch.allclose(other, maps)


def test_image_bytes_give_one_map(model_and_processor):
    model, processor = model_and_processor
    data = write_image(np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    maps = activation_map(model, processor, data, "a white circle", size=(8, 16))
    assert maps.shape == (1, 8, 16) and maps.max() == 1.0 and maps.min() >= 0


def test_token_grid_orientation(model_and_processor, monkeypatch):
    """Only one video token carries features: the map must peak at that token's frame, row and column."""
    model, processor = model_and_processor
    vision = model.instap.vision_model
    frames, rows, cols = 2, 4, 4  # tiny: 32 px, patch 8
    hot = (1, 0, 3)  # frame 1, top row, right column
    index = (hot[0] * rows + hot[1]) * cols + hot[2]

    def only_one_token(pixel_values, *args, **kwargs):
        output = type(vision).forward(vision, pixel_values, *args, **kwargs)
        tokens = torch.zeros_like(output.last_hidden_state)
        tokens[:, index] = torch.linspace(-2, 2, tokens.shape[-1])
        output.last_hidden_state = tokens
        return output

    monkeypatch.setattr(vision, "forward", only_one_token)
    relevance = token_relevance(model, torch.randn(1, frames, 3, 32, 32), *processor.tokenize(["a red square"]).values(),
                                method="features")
    assert relevance.shape == (frames, rows, cols)
    assert (relevance > 0).sum() == 1 and relevance[hot] > 0
    clip = np.zeros((frames, 48, 64, 3), dtype=np.uint8)
    maps = activation_map(model, processor, clip, "a red square", method="features")
    peak_frame, peak_y, peak_x = np.unravel_index(int(maps.argmax()), maps.shape)
    # Token (row 0, column 3) covers y in [0, 12) and x in [48, 64) of the 48x64 frame.
    assert peak_frame == 1 and peak_y < 12 and peak_x >= 48
    assert maps[0].max() == 0


def test_strip_blends_heat_over_frames(tmp_path):
    frames = np.full((3, 10, 12, 3), 100, dtype=np.uint8)
    maps = torch.zeros(3, 10, 12)
    maps[1, :, 6:] = 1.0
    save_activation_strip(frames, maps, tmp_path / "out" / "strip.png", with_frames=False, gap=0)
    strip = np.asarray(Image.open(tmp_path / "out" / "strip.png").convert("RGB")).astype(int)
    assert strip.shape == (10, 36, 3)
    cold, hot = strip[5, 12 + 2], strip[5, 12 + 9]  # frame 1: left half map 0, right half map 1
    assert hot[0] > hot[2] and cold[2] > cold[0]  # red where the map is high, blue where it is low
    assert (strip[:, :12] == strip[:, 24:]).all()  # frames 0 and 2 have the same (zero) map


def test_box_mass_ratio_on_hand_made_maps():
    uniform = torch.ones(20, 30)
    assert box_mass_ratio(uniform, [5, 5, 15, 10]) == pytest.approx(1.0)
    # Mass only inside: infinite; mass only outside: 0.
    inside = torch.zeros(20, 30)
    inside[5:10, 5:15] = 1
    assert box_mass_ratio(inside, [5, 5, 15, 10]) == math.inf
    assert box_mass_ratio(1 - inside, [5, 5, 15, 10]) == 0.0
    # A bump centred in the box is denser inside than outside; the same bump elsewhere is not.
    ys, xs = torch.meshgrid(torch.arange(20) + 0.5, torch.arange(30) + 0.5, indexing="ij")
    bump = torch.exp(-((xs - 10) ** 2 + (ys - 7.5) ** 2) / 8)
    assert box_mass_ratio(bump, [5, 5, 15, 10]) > 5
    assert box_mass_ratio(bump, [20, 10, 30, 20]) < 0.2
    # Densities, not totals: a box holding half the mass on a tenth of the area scores (0.5/0.1)/(0.5/0.9) = 9.
    half = torch.zeros(10, 10)
    half[0, :] = 5.0  # row 0: half the mass, 10 of 100 pixels
    half[1:, :] = 5.0 / 9.0
    assert box_mass_ratio(half, [0, 0, 10, 1]) == pytest.approx(9.0)
    # Pixel centres decide membership: [0, 0, 10, 0.4] holds no pixel centre.
    assert math.isnan(box_mass_ratio(half, [0, 0, 10, 0.4]))
    # One box per frame follows a moving object.
    clip = torch.zeros(2, 10, 10)
    clip[0, :3, :3] = 1
    clip[1, 7:, 7:] = 1
    assert box_mass_ratio(clip, torch.tensor([[0, 0, 3, 3], [7, 7, 10, 10]])) == math.inf
    assert box_mass_ratio(clip, [0, 0, 3, 3]) < box_mass_ratio(clip, torch.tensor([[0, 0, 3, 3], [7, 7, 10, 10]]))
    with pytest.raises(ValueError):
        box_mass_ratio(-uniform, [0, 0, 1, 1])
