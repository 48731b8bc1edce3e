"""Behaviour of the InstAP models on the tiny preset (CPU, random weights): outputs, loss wiring, masking through the
model, gradient flow and the configuration checks.

Serialisation, Auto classes, remote code and parameter counts: `test_modeling_io.py`. Gradient checkpointing, SDPA
vs eager, bf16 and the overfitting check: `test_modeling_training.py`.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from instap_model_testing import (
    make_batch,
    make_captions,
    tiny_config,
    umt_visible_count,
    visible_per_frame,
)

from modeling_instap import (
    InstAPConfig,
    InstAPForGrounding,
    InstAPForMaskedVideoModeling,
    InstAPForPreTraining,
    InstAPModel,
    InstAPTextConfig,
    InstAPTextModel,
    InstAPVisionConfig,
    InstAPVisionModel,
)
from modeling_instap.losses import box_regression_loss, contrastive_loss
from modeling_instap.masking import random_token_mask

WIDTH = 64  # tiny vision and text width
PATCHES = 16  # 32 px / patch 8 -> 4 x 4 grid
HEADS = 4
PROJ = 32
TEACHER_PROJ = 32


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------------------------------
# Video encoder
# ----------------------------------------------------------------------------------------------------------------


def test_vision_model_unmasked_outputs():
    config = tiny_config().vision_config
    model = InstAPVisionModel._from_config(config, attn_implementation="eager").eval()
    pixels = torch.randn(2, 4, 3, 32, 32)
    out = model(pixels, output_hidden_states=True, output_attentions=True)
    tokens = 4 * PATCHES
    assert out.last_hidden_state.shape == (2, tokens, WIDTH)
    assert out.pooler_output.shape == (2, WIDTH)
    assert out.last_hidden_state.dtype == out.pooler_output.dtype == torch.float32
    # Embeddings + one state per block, all before the final norm.
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (2, tokens, WIDTH) for h in out.hidden_states)
    torch.testing.assert_close(model.post_layernorm(out.hidden_states[-1]), out.last_hidden_state)
    assert len(out.attentions) == config.num_hidden_layers
    for attention in out.attentions:
        assert attention.shape == (2, HEADS, tokens, tokens)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, HEADS, tokens))
    # Pooled vector: the pool norm of the mean token.
    torch.testing.assert_close(out.pooler_output, model.pool_layernorm(out.last_hidden_state.mean(1)))
    # Optional outputs are off by default.
    plain = model(pixels)
    assert plain.hidden_states is None and plain.attentions is None
    torch.testing.assert_close(plain.last_hidden_state, out.last_hidden_state)


@pytest.mark.parametrize("tubelet_size", [1, 2])
def test_embeddings_of_visible_tubelets_equal_the_convolution_gathered(tubelet_size):
    # The masked path cuts out and projects the visible tubelets only; non-square frames check the (t, h, w) order.
    config = dataclasses.replace(tiny_config().vision_config, tubelet_size=tubelet_size)
    embeddings = InstAPVisionModel(config).embeddings
    pixels = torch.randn(2, 4, 3, 32, 48)
    tokens_per_frame, frames = 4 * 6, 4 // tubelet_size
    mask = random_token_mask(2, frames, tokens_per_frame, 0.75)
    masked = embeddings(pixels, mask)
    full = embeddings(pixels)
    torch.testing.assert_close(masked, full[~mask].reshape(2, -1, WIDTH), rtol=1e-5, atol=1e-5)
    weight = embeddings.patch_embedding.weight
    (grad_masked,) = torch.autograd.grad(masked.square().sum(), weight)
    (grad_full,) = torch.autograd.grad(full[~mask].square().sum(), weight)
    torch.testing.assert_close(grad_masked, grad_full, rtol=1e-4, atol=1e-4)
    uneven = mask.clone()
    uneven[0, torch.nonzero(mask[0])[0]] = False
    with pytest.raises(ValueError, match="same number of visible tokens"):
        embeddings(pixels, uneven)
    with pytest.raises(ValueError, match="bool_masked_pos"):
        embeddings(pixels, mask[:, 1:])


def test_vision_model_masked_encodes_only_visible_tokens():
    config = tiny_config().vision_config
    model = InstAPVisionModel(config).eval()
    pixels = torch.randn(2, 4, 3, 32, 32)
    mask = random_token_mask(2, 4, PATCHES, 0.75)  # 4 visible per frame
    out = model(pixels, bool_masked_pos=mask, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 16, WIDTH)
    assert out.pooler_output.shape == (2, WIDTH)
    assert all(h.shape == (2, 16, WIDTH) for h in out.hidden_states)

    # The pixels of hidden patches never reach the encoder; those of visible patches do.
    frame, patch = 0, int(torch.nonzero(mask[0, :PATCHES])[0])  # a hidden patch of sample 0, frame 0
    row, col = divmod(patch, 4)
    changed = pixels.clone()
    changed[0, frame, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] += 5.0
    torch.testing.assert_close(model(changed, bool_masked_pos=mask).last_hidden_state, out.last_hidden_state)
    visible = int(torch.nonzero(~mask[0, :PATCHES])[0])
    row, col = divmod(visible, 4)
    changed = pixels.clone()
    changed[0, frame, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] += 5.0
    assert not torch.allclose(model(changed, bool_masked_pos=mask).last_hidden_state[0], out.last_hidden_state[0])

    # Visible tokens keep their own position code: the masked output equals encoding the gathered embeddings.
    embeddings = model.embeddings(pixels)[~mask].reshape(2, 16, WIDTH)
    expected = model.post_layernorm(model.encoder(embeddings).last_hidden_state)
    torch.testing.assert_close(out.last_hidden_state, expected)

    with pytest.raises(ValueError, match="bool_masked_pos"):
        model(pixels, bool_masked_pos=mask[:, :-1])


def test_vision_model_pool_frames_and_images():
    model = InstAPVisionModel(tiny_config().vision_config).eval()
    pixels = torch.randn(2, 4, 3, 32, 32)
    out = model(pixels, pool_frames=True)
    assert out.pooler_output.shape == (2, 4, WIDTH)
    per_frame = out.last_hidden_state.reshape(2, 4, PATCHES, WIDTH).mean(2)
    torch.testing.assert_close(out.pooler_output, model.pool_layernorm(per_frame))
    with pytest.raises(ValueError, match="pool_frames"):
        model(pixels, bool_masked_pos=random_token_mask(2, 4, PATCHES, 0.5), pool_frames=True)

    # A (batch, 3, H, W) image batch is a batch of 1-frame clips.
    images = torch.randn(3, 3, 32, 32)
    image_out = model(images)
    assert image_out.last_hidden_state.shape == (3, PATCHES, WIDTH)
    torch.testing.assert_close(image_out.last_hidden_state, model(images[:, None]).last_hidden_state)
    torch.testing.assert_close(model(images, pool_frames=True).pooler_output[:, 0], image_out.pooler_output)
    with pytest.raises(ValueError):
        model(torch.randn(2, 3, 32))


@pytest.mark.parametrize("num_frames,size", [(4, 32), (8, 32), (1, 32), (4, 48), (8, 48)])
def test_vision_model_any_frame_count_and_resolution_without_new_weights(num_frames, size):
    model = InstAPVisionModel(tiny_config().vision_config).eval()
    keys = set(model.state_dict())
    tokens = num_frames * (size // 8) ** 2
    out = model(torch.randn(2, num_frames, 3, size, size), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, tokens, WIDTH)
    assert out.pooler_output.shape == (2, WIDTH)
    assert torch.isfinite(out.last_hidden_state).all()
    mask = random_token_mask(2, num_frames, (size // 8) ** 2, 0.5)
    masked = model(torch.randn(2, num_frames, 3, size, size), bool_masked_pos=mask)
    assert masked.last_hidden_state.shape == (2, int((~mask[0]).sum()), WIDTH)
    # The sinusoid table is regenerated, not stored: no weight was added or resized.
    assert set(model.state_dict()) == keys
    assert not any("position" in key for key in keys)


def test_vision_position_table_is_a_fixed_sinusoid_prefix():
    model = InstAPVisionModel(tiny_config().vision_config)
    table8 = model.embeddings.position_embeddings(8 * PATCHES, "cpu", torch.float32)
    table4 = model.embeddings.position_embeddings(4 * PATCHES, "cpu", torch.float32)
    torch.testing.assert_close(table8[: 4 * PATCHES], table4)
    # sin on even, cos on odd channels of position / 10000^(2i/d)
    position, channel = 5, 6
    angle = position / 10000 ** (channel / WIDTH)
    assert table8[position, channel].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table8[position, channel + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_vision_model_rejects_untileable_input():
    model = InstAPVisionModel(tiny_config().vision_config)
    with pytest.raises(ValueError, match="tile"):
        model(torch.randn(1, 2, 3, 30, 32))


# ----------------------------------------------------------------------------------------------------------------
# Text and fusion encoder
# ----------------------------------------------------------------------------------------------------------------


def _text_model() -> tuple[InstAPTextModel, InstAPTextConfig]:
    config = tiny_config().text_config
    return InstAPTextModel._from_config(config, attn_implementation="eager").eval(), config


def test_text_model_text_mode():
    model, config = _text_model()
    ids, mask = make_captions(3, 10)
    out = model(input_ids=ids, attention_mask=mask, mode="text", output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (3, 10, WIDTH)
    assert out.last_hidden_state.dtype == torch.float32
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])  # [CLS], no pooler layer
    assert len(out.hidden_states) == config.fusion_layer + 1  # embeddings + the text layers
    assert len(out.attentions) == config.fusion_layer and out.cross_attentions == ()  # no cross-attention here
    for attention in out.attentions:
        assert attention.shape == (3, HEADS, 10, 10)
        assert attention[-1, :, :, mask[-1] == 0].abs().max() < 1e-6  # padded keys get no attention
    # Padding is invisible: changing the ids under the padding mask leaves every real position unchanged.
    changed = ids.clone()
    changed[mask == 0] = 77
    again = model(input_ids=changed, attention_mask=mask, mode="text").last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(again[real], out.last_hidden_state[real])
    # ... and without the mask it is not.
    unmasked = model(input_ids=changed, mode="text").last_hidden_state
    assert not torch.allclose(unmasked[-1, 0], out.last_hidden_state[-1, 0], atol=1e-4)


def test_text_model_fusion_mode_and_cross_attention_maps():
    model, config = _text_model()
    ids, mask = make_captions(2, 8)
    text = model(input_ids=ids, attention_mask=mask, mode="text").last_hidden_state
    video = torch.randn(2, 12, WIDTH)
    video_mask = torch.ones(2, 12, dtype=torch.long)
    video_mask[1, 8:] = 0
    out = model(
        text_hidden_states=text,
        attention_mask=mask,
        encoder_hidden_states=video,
        encoder_attention_mask=video_mask,
        mode="fusion",
        output_attentions=True,
        output_hidden_states=True,
    )
    assert out.last_hidden_state.shape == (2, 8, WIDTH)
    assert len(out.hidden_states) == config.num_fusion_layers + 1
    assert len(out.attentions) == len(out.cross_attentions) == config.num_fusion_layers
    assert all(attention.shape == (2, HEADS, 8, 8) for attention in out.attentions)
    for attention in out.cross_attentions:
        assert attention.shape == (2, HEADS, 8, 12)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, HEADS, 8))
        assert attention[1, :, :, 8:].abs().max() < 1e-6  # masked video tokens get no attention
    # The video tokens are read: other tokens, other output; masked-out tokens do not matter.
    other = video.clone()
    other[1, 8:] += 3.0
    same = model(text_hidden_states=text, attention_mask=mask, encoder_hidden_states=other,
                 encoder_attention_mask=video_mask, mode="fusion")
    torch.testing.assert_close(same.last_hidden_state, out.last_hidden_state)
    other[1, 0] += 3.0
    changed = model(text_hidden_states=text, attention_mask=mask, encoder_hidden_states=other,
                    encoder_attention_mask=video_mask, mode="fusion")
    assert not torch.allclose(changed.last_hidden_state[1], out.last_hidden_state[1])
    torch.testing.assert_close(changed.last_hidden_state[0], out.last_hidden_state[0])


def test_text_model_mode_errors():
    model, _ = _text_model()
    ids, mask = make_captions(2, 8)
    with pytest.raises(ValueError, match="mode"):
        model(input_ids=ids, mode="decoder")
    with pytest.raises(ValueError, match="text_hidden_states"):
        model(input_ids=ids, mode="fusion")
    text = model(input_ids=ids, attention_mask=mask).last_hidden_state
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        model(text_hidden_states=text, attention_mask=mask, mode="fusion")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.ones(1, 65, dtype=torch.long), mode="text")


# ----------------------------------------------------------------------------------------------------------------
# InstAPModel
# ----------------------------------------------------------------------------------------------------------------


def test_model_forward_is_clip_like():
    config = tiny_config(deterministic=True)
    model = InstAPModel(config).eval()
    pixels = torch.randn(2, 4, 3, 32, 32)
    ids, mask = make_captions(3, 8)
    out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask, return_loss=False)
    assert out.loss is None
    assert out.logits_per_video.shape == (2, 3)
    assert out.video_embeds.shape == (2, PROJ) and out.text_embeds.shape == (3, PROJ)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_video.t())
    tau = model.temperature.clamp(config.temperature_min, config.temperature_max)
    torch.testing.assert_close(out.logits_per_video, out.video_embeds @ out.text_embeds.t() / tau)
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(3))
    # Eval (eval_frame_pooling="frames"): each frame pooled and projected alone, unit vectors averaged, so a dot
    # product is the frame-averaged cosine similarity.
    frames = model.vision_model(pixels, pool_frames=True).pooler_output
    per_frame = F.normalize(model.visual_projection(frames), dim=-1)
    torch.testing.assert_close(out.video_embeds, per_frame.mean(1))
    cos = torch.einsum("bfd,td->bft", per_frame, out.text_embeds).mean(1)
    torch.testing.assert_close(out.logits_per_video, cos / tau)

    with_loss = model(pixel_values=pixels[:, :], input_ids=ids[:2], attention_mask=mask[:2], return_loss=True)
    assert with_loss.loss.ndim == 0 and torch.isfinite(with_loss.loss)
    expected = contrastive_loss(with_loss.video_embeds, with_loss.text_embeds, tau)
    torch.testing.assert_close(with_loss.loss, expected)


def test_model_whole_video_pooling_is_normalised():
    for config, pool_frames in ((tiny_config(deterministic=True, eval_frame_pooling="video"), None),
                                (tiny_config(deterministic=True), False)):
        model = InstAPModel(config).eval()
        pixels = torch.randn(2, 4, 3, 32, 32)
        features = model.get_video_features(pixels, pool_frames=pool_frames)
        # The pooling is what the arguments and config say, not the module's train/eval mode.
        torch.testing.assert_close(model.train().get_video_features(pixels, pool_frames=pool_frames).pooler_output,
                                   features.pooler_output)
        model.eval()
        assert features.pooler_output.shape == (2, PROJ)
        torch.testing.assert_close(features.pooler_output.norm(dim=-1), torch.ones(2))
        pooled = model.vision_model(pixels).pooler_output
        torch.testing.assert_close(features.pooler_output, F.normalize(model.visual_projection(pooled), dim=-1))
    masked = model.get_video_features(pixels, bool_masked_pos=random_token_mask(2, 4, PATCHES, 0.5))
    assert masked.last_hidden_state.shape == (2, 32, WIDTH)
    torch.testing.assert_close(masked.pooler_output.norm(dim=-1), torch.ones(2))


def test_model_get_text_features_and_temperature_clamp():
    config = tiny_config()
    model = InstAPModel(config).eval()
    ids, mask = make_captions(3, 8)
    text = model.get_text_features(ids, mask)
    assert text.pooler_output.shape == (3, PROJ)
    assert text.last_hidden_state.shape == (3, 8, WIDTH)
    torch.testing.assert_close(text.pooler_output.norm(dim=-1), torch.ones(3))
    assert model.temperature.item() == pytest.approx(0.07) and model.instance_temperature.item() == pytest.approx(0.07)
    with torch.no_grad():
        model.temperature.fill_(3.0)
        model.instance_temperature.fill_(1e-6)
    tau, tau_inst = model.clamped_temperatures()
    assert tau.item() == pytest.approx(config.temperature_max)
    assert tau_inst.item() == pytest.approx(config.temperature_min)
    out = model(pixel_values=torch.randn(3, 4, 3, 32, 32), input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.logits_per_video, out.video_embeds @ out.text_embeds.t() / config.temperature_max)


def test_model_match_score():
    model = InstAPModel(tiny_config()).eval()
    video = model.get_video_features(torch.randn(3, 4, 3, 32, 32)).last_hidden_state
    ids, mask = make_captions(3, 8)
    text = model.get_text_features(ids, mask).last_hidden_state
    scores = model.match_score(video, text, mask)
    assert scores.shape == (3, 2) and scores.dtype == torch.float32
    # Pairs are independent: a pair scored alone gets its score in the batch.
    torch.testing.assert_close(model.match_score(video[2:], text[2:], mask[2:]), scores[2:], atol=1e-5, rtol=1e-5)
    # Padded text positions are masked out: whatever their states, the scores stay.
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype)], dim=1)
    padded_text = torch.cat([text, 100 * torch.randn(3, 4, text.shape[-1])], dim=1)
    torch.testing.assert_close(model.match_score(video, padded_text, padded_mask), scores, atol=1e-5, rtol=1e-5)
    # Each pair is scored on its own video: swapping the videos changes the scores.
    swapped = model.match_score(video.flip(0), text, mask)
    assert not torch.allclose(swapped[0], scores[0])
    torch.testing.assert_close(swapped[1], scores[1])  # the middle pair keeps its video


def test_match_score_with_video_index_equals_the_gathered_videos():
    model = InstAPModel(tiny_config(deterministic=True)).train()  # train mode: the gradients too
    videos = model.get_video_features(torch.randn(2, 4, 3, 32, 32)).last_hidden_state.detach().requires_grad_()
    ids, mask = make_captions(5, 8)
    text = model.get_text_features(ids, mask).last_hidden_state
    video_mask = torch.ones(videos.shape[:2], dtype=torch.long)
    video_mask[1, -3:] = 0  # the second video's last tokens are padding
    index = torch.tensor([0, 1, 1, 0, 1])

    def scores_and_grads(**video_inputs):
        scores = model.match_score(text_hidden_states=text, attention_mask=mask, **video_inputs)
        (grad,) = torch.autograd.grad(scores.square().sum(), videos, retain_graph=True)
        return scores, grad

    gathered, gathered_grad = scores_and_grads(video_hidden_states=videos[index], video_attention_mask=video_mask[index])
    indexed, indexed_grad = scores_and_grads(video_hidden_states=videos, video_attention_mask=video_mask, video_index=index)
    torch.testing.assert_close(indexed, gathered, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(indexed_grad, gathered_grad, atol=1e-6, rtol=1e-5)
    # The masked video tokens matter: unmasked, the second video's pairs score differently.
    unmasked = model.match_score(videos, text, mask, video_index=index)
    assert not torch.allclose(unmasked[1], indexed[1])
    torch.testing.assert_close(unmasked[0], indexed[0])


def test_model_encode_instances():
    model = InstAPModel(tiny_config()).eval()
    scenes = model.vision_model(torch.randn(2, 4, 3, 32, 32)).last_hidden_state
    crops = torch.randn(3, 4, 3, 32, 32)
    index = torch.tensor([0, 1, 1])
    out = model.encode_instances(crops, scenes, index)
    tokens = 4 * PATCHES
    assert out.crop_hidden_states.shape == (3, tokens, WIDTH)
    assert out.crop_pooled.shape == (3, WIDTH)
    assert out.pooled_hidden_states.shape == (3, tokens, WIDTH)
    assert out.instance_embeds.shape == (3, PROJ)
    torch.testing.assert_close(out.crop_pooled, out.crop_hidden_states.mean(1))
    torch.testing.assert_close(out.instance_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(
        out.instance_embeds, F.normalize(model.visual_projection(out.pooled_hidden_states.mean(1)), dim=-1)
    )
    # Each instance pools against its own scene (instance_sample_index), and only that scene.
    other = scenes.clone()
    other[1] = torch.randn_like(other[1])
    moved = model.encode_instances(crops, other, index)
    torch.testing.assert_close(moved.instance_embeds[0], out.instance_embeds[0])
    assert not torch.allclose(moved.instance_embeds[1:], out.instance_embeds[1:])
    # Scenes already aligned with the instances need no index; with one, each scene's keys and values are projected
    # once and picked per crop: the same embeddings and the same gradient for the scene tokens.
    leaf = scenes.detach().requires_grad_()
    aligned = model.encode_instances(crops, leaf[index])
    indexed = model.encode_instances(crops, leaf, index)
    torch.testing.assert_close(aligned.instance_embeds, out.instance_embeds)
    torch.testing.assert_close(indexed.instance_embeds, aligned.instance_embeds)
    (aligned_grad,) = torch.autograd.grad(aligned.instance_embeds[:, 0].sum(), leaf)
    (indexed_grad,) = torch.autograd.grad(indexed.instance_embeds[:, 0].sum(), leaf)
    torch.testing.assert_close(indexed_grad, aligned_grad)
    assert aligned_grad[1].abs().sum() > 0  # scene 1 is attended by two instances
    # Masked crops: only their visible tokens are encoded.
    mask = random_token_mask(3, 4, PATCHES, 0.75)
    masked = model.encode_instances(crops, scenes, index, bool_masked_pos=mask)
    assert masked.crop_hidden_states.shape == (3, 16, WIDTH)
    assert masked.pooled_hidden_states.shape == (3, 16, WIDTH)


# ----------------------------------------------------------------------------------------------------------------
# InstAPForPreTraining (stage 2)
# ----------------------------------------------------------------------------------------------------------------

TERMS = ("loss_rec", "loss_vtc", "loss_vtm", "loss_mlm", "loss_inst_vtc", "loss_inst_vtm", "loss_inst_mlm")
LAMBDAS = {
    "lambda_rec": 0.5, "lambda_vtc": 2.0, "lambda_vtm": 0.3, "lambda_mlm": 1.5,
    "lambda_inst": 0.2, "lambda_inst_vtc": 0.7, "lambda_inst_vtm": 1.3, "lambda_inst_mlm": 0.4,
}


def _weighted_total(out, c) -> torch.Tensor:
    """Eq. 11-13 by hand from the output terms; absent terms count 0."""

    def term(name):
        value = getattr(out, name)
        return 0.0 if value is None else value

    global_part = c.lambda_vtc * term("loss_vtc") + c.lambda_vtm * term("loss_vtm") + c.lambda_mlm * term("loss_mlm")
    instance_part = c.lambda_inst * (
        c.lambda_inst_vtc * term("loss_inst_vtc")
        + c.lambda_inst_vtm * term("loss_inst_vtm")
        + c.lambda_inst_mlm * term("loss_inst_mlm")
    )
    return c.lambda_rec * term("loss_rec") + global_part + instance_part


def test_pretraining_all_terms_and_weighted_total():
    config = tiny_config(**LAMBDAS)
    model = InstAPForPreTraining(config).train()
    batch = make_batch(config, instances_per_sample=(2, 1))
    out = model(**batch)
    for name in TERMS:
        value = getattr(out, name)
        assert value is not None, name
        assert value.ndim == 0 and value.dtype == torch.float32 and torch.isfinite(value), name
        assert value.item() > 0, name
    assert out.loss.ndim == 0
    torch.testing.assert_close(out.loss, _weighted_total(out, config))
    # With λ = 1, 0.1: a different total from the same terms would mean wrong weights.
    assert not math.isclose(out.loss.item(), sum(getattr(out, n).item() for n in TERMS), rel_tol=1e-3)

    assert out.temperature.item() == pytest.approx(0.07) and out.instance_temperature.item() == pytest.approx(0.07)
    assert out.logits_per_video.shape == out.logits_per_text.shape == (2, 2)
    assert out.video_embeds.shape == out.text_embeds.shape == (2, PROJ)
    torch.testing.assert_close(out.logits_per_video, out.video_embeds @ out.text_embeds.t() / out.temperature)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_video.t())
    # The global VTC term is the contrastive loss of the returned embeddings (source ids as soft positives).
    expected_vtc = contrastive_loss(out.video_embeds, out.text_embeds, out.temperature, source_ids=batch["source_ids"])
    torch.testing.assert_close(out.loss_vtc, expected_vtc)
    assert out.bool_masked_pos.shape == (2, 4 * PATCHES) and out.bool_masked_pos.dtype == torch.bool

    no_loss = model(**batch, return_loss=False)
    assert no_loss.loss is None and all(getattr(no_loss, name) is None for name in TERMS)
    assert no_loss.logits_per_video.shape == (2, 2) and no_loss.video_embeds.shape == (2, PROJ)


def test_pretraining_same_source_samples_are_soft_positives():
    config = tiny_config()
    model = InstAPForPreTraining(config).train()
    batch = make_batch(config, batch_size=3, instances_per_sample=None)
    batch["source_ids"] = torch.tensor([5, 5, 9])
    out = model(**batch)
    soft = contrastive_loss(out.video_embeds, out.text_embeds, out.temperature, source_ids=batch["source_ids"])
    hard = contrastive_loss(out.video_embeds, out.text_embeds, out.temperature)
    torch.testing.assert_close(out.loss_vtc, soft)
    assert not torch.allclose(out.loss_vtc, hard)


@pytest.mark.parametrize("empty", [False, True])
def test_pretraining_without_instances_has_no_instance_terms(empty):
    config = tiny_config(**LAMBDAS)
    model = InstAPForPreTraining(config).train()
    if empty:  # instance tensors with zero rows
        batch = make_batch(config, instances_per_sample=(0, 0))
    else:
        batch = make_batch(config, instances_per_sample=None)
    out = model(**batch)
    assert out.loss_inst_vtc is None and out.loss_inst_vtm is None and out.loss_inst_mlm is None
    for name in ("loss_rec", "loss_vtc", "loss_vtm", "loss_mlm"):
        assert getattr(out, name) is not None and torch.isfinite(getattr(out, name))
    torch.testing.assert_close(out.loss, _weighted_total(out, config))
    out.loss.backward()


def test_pretraining_without_teacher_has_no_reconstruction():
    config = tiny_config(teacher_config=None)
    model = InstAPForPreTraining(config).train()
    assert model.distillation is None
    out = model(**make_batch(config))
    assert out.loss_rec is None
    for name in TERMS[1:]:
        assert getattr(out, name) is not None, name
    torch.testing.assert_close(out.loss, _weighted_total(out, config))
    # Without a teacher the scene is still masked in training, at random, with the UMT visible count.
    assert (visible_per_frame(out.bool_masked_pos, 4) == umt_visible_count(PATCHES, 0.8)).all()
    # The same objective in eval mode (no behaviour behind `self.training`); `mask_tokens=False` hides nothing.
    assert (visible_per_frame(model.eval()(**make_batch(config)).bool_masked_pos, 4) == umt_visible_count(PATCHES, 0.8)).all()
    assert model(**make_batch(config), mask_tokens=False).bool_masked_pos is None


def test_pretraining_caps_instances_per_sample_and_masks_crops(monkeypatch):
    config = tiny_config(max_instances_per_sample=2)
    model = InstAPForPreTraining(config)
    seen = []
    encode = model.instap.encode_instances

    def spy(pixels, scenes, index, bool_masked_pos=None):
        seen.append((index.clone(), bool_masked_pos))
        return encode(pixels, scenes, index, bool_masked_pos=bool_masked_pos)

    monkeypatch.setattr(model.instap, "encode_instances", spy)
    batch = make_batch(config, instances_per_sample=(5, 1))
    model.train()(**batch)
    index, crop_mask = seen[-1]
    assert index.tolist() == [0, 0, 1]
    # Training crops are masked at random with the media's ratio (0.8 for video): same count per frame.
    assert crop_mask is not None and crop_mask.shape == (3, 4 * PATCHES)
    assert (visible_per_frame(crop_mask, 4) == umt_visible_count(PATCHES, 0.8)).all()
    model.eval()(**batch, mask_tokens=False)
    index, crop_mask = seen[-1]
    assert index.tolist() == [0, 0, 1]  # the cap is part of the objective, in eval mode too
    assert crop_mask is None


@pytest.mark.parametrize("num_frames", [4, 1])
def test_crop_mask_ratio_overrides_the_media_ratio_for_crops_only(monkeypatch, num_frames):
    config = tiny_config(crop_mask_ratio=0.75)
    model = InstAPForPreTraining(config).train()
    crop_masks = []
    encode = model.instap.encode_instances

    def spy(pixels, scenes, index, bool_masked_pos=None):
        crop_masks.append(bool_masked_pos)
        return encode(pixels, scenes, index, bool_masked_pos=bool_masked_pos)

    monkeypatch.setattr(model.instap, "encode_instances", spy)
    out = model(**make_batch(config, num_frames=num_frames, instances_per_sample=(2, 1)))
    assert (visible_per_frame(crop_masks[-1], num_frames) == umt_visible_count(PATCHES, 0.75)).all()
    # The scenes keep their media's ratio.
    scene_ratio = 0.8 if num_frames > 1 else 0.5
    assert (visible_per_frame(out.bool_masked_pos, num_frames) == umt_visible_count(PATCHES, scene_ratio)).all()
    model.eval()(**make_batch(config, num_frames=num_frames, instances_per_sample=(2, 1)), mask_tokens=False)
    assert crop_masks[-1] is None


def test_pretraining_on_images_uses_the_image_ratio():
    config = tiny_config()
    model = InstAPForPreTraining(config).train()
    batch = make_batch(config, num_frames=1, instances_per_sample=(1, 2))
    out = model(**batch)
    assert (visible_per_frame(out.bool_masked_pos, 1) == umt_visible_count(PATCHES, 0.5)).all()
    assert all(getattr(out, name) is not None for name in TERMS)
    assert torch.isfinite(out.loss)


def test_pretraining_vtm_and_mlm_wiring(monkeypatch):
    """Which (video, text) pairs the matching head scores, and what the MLM fusion attends to."""
    import modeling_instap.modeling_instap as modeling

    config = tiny_config(deterministic=True)
    model = InstAPForPreTraining(config).train()
    batch = make_batch(config, batch_size=3, instances_per_sample=(2, 1, 1))
    batch["source_ids"] = torch.tensor([5, 5, 9])  # samples 0 and 1 share a source
    del batch["instance_source_id"]  # defaults to source_ids[instance_sample_index]
    excludes, scored, labels, fused, instance_outputs, mlm_labels = [], [], [], [], [], []

    def first_allowed(similarity, exclude, generator=None):
        # Deterministic stand-in for the hard-negative draw: the first allowed column, -1 if none.
        excludes.append(exclude.clone())
        allowed = ~exclude
        return torch.where(allowed.any(1), allowed.float().argmax(1), torch.full_like(allowed[:, 0], -1).long())

    match_score, fuse, encode = model.instap.match_score, model.instap.fuse, model.instap.encode_instances
    matching_loss, mask_tokens_for_mlm = modeling.matching_loss, modeling.mask_tokens_for_mlm
    monkeypatch.setattr(modeling, "sample_hard_negatives", first_allowed)
    monkeypatch.setattr(modeling, "matching_loss", lambda lo, la: labels.append(la) or matching_loss(lo, la))
    monkeypatch.setattr(
        modeling, "mask_tokens_for_mlm", lambda *a, **k: mlm_labels.append(mask_tokens_for_mlm(*a, **k)) or mlm_labels[-1]
    )
    monkeypatch.setattr(
        model.instap, "match_score",
        # Record each pair's video (VTM passes each video once with the pairs' `video_index`).
        lambda v, t, m, *a, video_index=None: scored.append((v if video_index is None else v[video_index], t))
        or match_score(v, t, m, *a, video_index=video_index),
    )
    monkeypatch.setattr(
        model.instap, "fuse",
        lambda t, m, v, *a, **k: fused.append(v if k.get("video_index") is None else v[k["video_index"]])
        or fuse(t, m, v, *a, **k),
    )
    monkeypatch.setattr(
        model.instap, "encode_instances",
        lambda *a, **k: instance_outputs.append(encode(*a, **k)) or instance_outputs[-1],
    )
    model(**batch)

    def rows_of(states, reference):
        # index of the reference row each row of `states` equals
        flat_states, flat_reference = states.flatten(1), reference.flatten(1)
        return [int(torch.nonzero((flat_reference == row).all(1))[0]) for row in flat_states]

    # Global VTM: sources {0,1} are excluded from each other's negatives; positives first, labels 1 then 0.
    same = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(excludes[0], same) and torch.equal(excludes[1], same)
    video, text = scored[0]
    scenes, captions = video[:3], text[:3]
    # text 0 -> video 2, text 1 -> video 2, text 2 -> video 0; video 0 -> text 2, video 1 -> text 2, video 2 -> text 0
    assert rows_of(video, scenes) == [0, 1, 2, 2, 2, 0, 0, 1, 2]
    assert rows_of(text, captions) == [0, 1, 2, 0, 1, 2, 2, 2, 0]
    assert labels[0].tolist() == [1, 1, 1] + [0] * 6

    # Instance VTM: instances 0, 1 (sample 0, source 5), 2 (sample 1, source 5), 3 (sample 2, source 9): negatives
    # never share a source; the visual context is the raw pooled crop embedding as one token.
    instance_source = torch.tensor([5, 5, 5, 9])
    assert torch.equal(excludes[2], instance_source[:, None] == instance_source[None, :])
    crops = instance_outputs[0]
    video, text = scored[1]
    assert video.shape[1] == 1
    torch.testing.assert_close(video[:4, 0], crops.crop_pooled)
    assert rows_of(video[:, 0], crops.crop_pooled) == [0, 1, 2, 3, 3, 3, 3, 0, 0, 1, 2, 3]
    assert rows_of(text, text[:4]) == [0, 1, 2, 3, 0, 1, 2, 3, 3, 3, 3, 0]
    assert labels[1].tolist() == [1] * 4 + [0] * 8

    # MLM: global fusion attends to the visible scene tokens, instance MLM to Z (the attention-pooled crops);
    # [CLS] and padding are never targets.
    # Fusion calls in order: global VTM (9 pairs), global MLM, instance VTM (12 pairs, 1 token), instance MLM.
    visible = 4 * umt_visible_count(PATCHES, 0.8)
    assert [tuple(v.shape) for v in fused] == [(9, visible, WIDTH), (3, visible, WIDTH), (12, 1, WIDTH),
                                               (4, visible, WIDTH)]
    assert torch.equal(fused[1], scenes)  # the same visible scene tokens as the VTM positives
    assert fused[3] is crops.pooled_hidden_states
    for ids, mask, (_, target) in ((batch["input_ids"], batch["attention_mask"], mlm_labels[0]),
                                   (batch["instance_input_ids"], batch["instance_attention_mask"], mlm_labels[1])):
        assert (target[:, 0] == -100).all() and (target[mask == 0] == -100).all()
        chosen = target != -100
        assert chosen.any() and torch.equal(target[chosen], ids[chosen])


def test_mlm_head_scores_the_chosen_tokens_only(monkeypatch):
    """The head runs at the MLM's chosen tokens only, and the loss equals the one over its logits at every token."""
    import modeling_instap.modeling_instap as modeling

    config = tiny_config(deterministic=True)
    model = InstAPForPreTraining(config).train()
    batch = make_batch(config, batch_size=3, instances_per_sample=None)
    draws, fused, head_rows = [], [], []
    mask_tokens_for_mlm, fuse, head = modeling.mask_tokens_for_mlm, model.instap.fuse, model.mlm_head.forward
    monkeypatch.setattr(
        modeling, "mask_tokens_for_mlm", lambda *a, **k: draws.append(mask_tokens_for_mlm(*a, **k)) or draws[-1]
    )
    monkeypatch.setattr(model.instap, "fuse", lambda *a, **k: fused.append(fuse(*a, **k)) or fused[-1])
    monkeypatch.setattr(model.mlm_head, "forward", lambda states: head_rows.append(states.shape[0]) or head(states))
    out = model(**batch)
    (_, labels), = draws
    chosen = labels != -100
    assert head_rows == [int(chosen.sum())] and 0 < head_rows[0] < labels.numel()
    with torch.no_grad():
        every_token = modeling.mlm_loss(head(fused[-1].last_hidden_state), labels)
    torch.testing.assert_close(out.loss_mlm, every_token)


def test_pretraining_tied_mlm_decoder():
    model = InstAPForPreTraining(tiny_config())
    assert model.mlm_head.decoder.weight is model.instap.text_model.embeddings.word_embeddings.weight
    assert model.get_output_embeddings() is model.mlm_head.decoder
    # The head computes (W·hᵀ)ᵀ + b for its memory: the same logits and gradients as `decoder(h)`.
    head = model.mlm_head
    for shape in ((5, 64), (2, 3, 64)):
        states = torch.randn(shape)
        transform = head.LayerNorm(head.transform_act_fn(head.dense(states)))
        torch.testing.assert_close(head(states), head.decoder(transform), rtol=1e-5, atol=1e-5)
    states = torch.randn(4, 64)
    grads = []
    for logits in (head(states), head.decoder(head.LayerNorm(head.transform_act_fn(head.dense(states))))):
        model.zero_grad(set_to_none=True)
        logits.logsumexp(-1).sum().backward()
        grads.append(head.decoder.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Gradient flow
# ----------------------------------------------------------------------------------------------------------------


def test_gradients_reach_every_trainable_parameter_and_never_the_teacher():
    config = tiny_config()
    model = InstAPForPreTraining(config)
    model.train()
    teacher = model.distillation.teacher
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    out = model(**make_batch(config, instances_per_sample=(2, 2)))
    out.loss.backward()
    teacher_ids = {id(p) for p in teacher.parameters()}
    missing = [n for n, p in model.named_parameters() if id(p) not in teacher_ids and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    nonfinite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not nonfinite, nonfinite
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not zero, f"parameters with an all-zero gradient: {zero}"
    assert all(p.grad is None for p in teacher.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in teacher.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Masking through the model
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames,ratio", [(4, 0.8), (1, 0.5)])
def test_umt_mask_has_the_same_visible_count_in_every_frame(num_frames, ratio):
    config = tiny_config(mask_strategy="umt")
    model = InstAPForPreTraining(config).train()
    out = model(**make_batch(config, batch_size=3, num_frames=num_frames, instances_per_sample=None))
    counts = visible_per_frame(out.bool_masked_pos, num_frames)
    assert (counts == umt_visible_count(PATCHES, ratio)).all(), counts
    # Drawn per frame, not one pattern for all frames.
    frames = out.bool_masked_pos.reshape(-1, PATCHES)
    assert len({tuple(row.tolist()) for row in frames}) > 1


def test_umt_mask_follows_the_teacher_cls_attention(monkeypatch):
    """When the teacher's CLS attends to exactly n_vis patches of a frame, exactly those are visible."""
    config = tiny_config(mask_strategy="umt")
    model = InstAPForPreTraining(config).train()
    batch = make_batch(config, batch_size=2, num_frames=4, instances_per_sample=None)
    n_vis = umt_visible_count(PATCHES, 0.8)
    chosen = torch.stack([torch.randperm(PATCHES)[:n_vis] for _ in range(2 * 4)])  # (B*T, n_vis)

    attention = torch.full((2 * 4, PATCHES + 1, PATCHES + 1), 1.0 / (PATCHES + 1))
    attention[:, 0] = 0.0
    attention[torch.arange(8)[:, None], 0, chosen + 1] = 1.0 / n_vis
    teacher_blocks = model.distillation.teacher_blocks

    def crafted(pixel_values):
        return dataclasses.replace(teacher_blocks(pixel_values), attention=attention)

    monkeypatch.setattr(model.distillation, "teacher_blocks", crafted)
    out = model(**batch)
    expected = torch.ones(8, PATCHES, dtype=torch.bool)
    expected[torch.arange(8)[:, None], chosen] = False
    assert torch.equal(out.bool_masked_pos, expected.reshape(2, 4 * PATCHES))


def test_mean_attention_mask_hides_the_lowest_scoring_tokens():
    config = tiny_config(mask_strategy="mean_attention")
    model = InstAPForPreTraining(config).train()
    batch = make_batch(config, batch_size=2, num_frames=4, instances_per_sample=None)
    out = model(**batch)
    mask = out.bool_masked_pos
    length = 4 * PATCHES
    hidden = math.ceil(0.8 * length - 1e-6)
    assert (mask.sum(1) == hidden).all()

    # Scores computed independently: the CLIP teacher's own (eager) last-layer attention maps, head-averaged,
    # s = (1/L) A^T 1 (mean attention each patch receives within its frame), ranked over the whole clip.
    teacher = model.distillation.teacher
    teacher.set_attn_implementation("eager")
    frames = batch["pixel_values"].flatten(0, 1)
    with torch.no_grad():
        maps = teacher.vision_model(frames, output_attentions=True).attentions[-1].mean(1)  # (B*T, 1+N, 1+N)
    _, attention = model.distillation.teacher_forward(batch["pixel_values"])
    torch.testing.assert_close(attention, maps, atol=1e-5, rtol=1e-4)
    scores = maps[:, :, 1:].mean(1).reshape(2, length)
    lowest = torch.topk(scores, hidden, dim=1, largest=False).indices
    expected = torch.zeros_like(mask)
    expected.scatter_(1, lowest, True)
    assert torch.equal(mask, expected)
    for row in range(2):
        assert scores[row][mask[row]].max() <= scores[row][~mask[row]].min()


@pytest.mark.parametrize("num_frames", [4, 8, 1])
def test_pretraining_with_another_frame_count(num_frames):
    config = tiny_config()
    model = InstAPForPreTraining(config).train()
    keys = set(model.state_dict())
    out = model(**make_batch(config, num_frames=num_frames))
    assert out.bool_masked_pos.shape == (2, num_frames * PATCHES)
    assert all(getattr(out, name) is not None and torch.isfinite(getattr(out, name)) for name in TERMS)
    assert set(model.state_dict()) == keys


# ----------------------------------------------------------------------------------------------------------------
# InstAPForMaskedVideoModeling (stage 1)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("images", [False, True])
def test_masked_video_modeling(images):
    config = tiny_config()
    model = InstAPForMaskedVideoModeling(config).train()
    if images:
        pixels = torch.randn(3, 3, 32, 32)  # a batch of images = 1-frame clips
        frames, ratio = 1, config.image_mask_ratio
    else:
        pixels = torch.randn(3, 4, 3, 32, 32)
        frames, ratio = 4, config.video_mask_ratio
    out = model(pixels)
    n_vis = umt_visible_count(PATCHES, ratio)
    k = config.teacher_num_layers
    assert out.bool_masked_pos.shape == (3, frames * PATCHES)
    assert (visible_per_frame(out.bool_masked_pos, frames) == n_vis).all()
    assert out.student_features.shape == (k, 3, frames * n_vis, TEACHER_PROJ)
    assert out.teacher_features.shape == out.student_features.shape
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # Teacher targets are the teacher's last-K features at the visible positions.
    clip = pixels if not images else pixels[:, None]
    targets, _ = model.distillation.teacher_forward(clip)
    assert targets.shape == (k, 3, frames * PATCHES, TEACHER_PROJ)
    expected = targets[:, ~out.bool_masked_pos].reshape(k, 3, frames * n_vis, TEACHER_PROJ)
    torch.testing.assert_close(out.teacher_features, expected)
    # Eq. 1: mean over layers and visible tokens of || unit(s) - unit(t) ||^2 = 2 - 2 cos.
    cos = F.cosine_similarity(out.student_features, out.teacher_features, dim=-1)
    torch.testing.assert_close(out.loss, (2 - 2 * cos).mean())
    out.loss.backward()
    assert all(p.grad is None for p in model.distillation.teacher.parameters())
    assert all(p.grad is not None for p in model.distillation.heads.parameters())
    assert model.vision_model.embeddings.patch_embedding.weight.grad is not None


def test_a_compiled_teacher_gives_the_same_masks_targets_and_gradients():
    config = tiny_config()
    eager = InstAPForMaskedVideoModeling(config).train()
    compiled = copy.deepcopy(eager)
    compiled.distillation.compile_teacher()
    pixels = torch.randn(2, 4, 3, 32, 32)
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    outputs = []
    for model in (eager, compiled):
        torch.manual_seed(0)
        out = model(pixels)
        out.loss.backward()
        outputs.append(out)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before  # the compiled path ran
    assert torch.equal(outputs[0].bool_masked_pos, outputs[1].bool_masked_pos)
    torch.testing.assert_close(outputs[1].teacher_features, outputs[0].teacher_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[1].loss, outputs[0].loss, rtol=1e-5, atol=1e-6)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
        if p_eager.grad is not None:
            torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in compiled.distillation.teacher.parameters())


def test_masked_video_modeling_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher_config"):
        InstAPForMaskedVideoModeling(tiny_config(teacher_config=None))


# ----------------------------------------------------------------------------------------------------------------
# InstAPForGrounding
# ----------------------------------------------------------------------------------------------------------------


def test_grounding_on_images():
    model = InstAPForGrounding(tiny_config()).train()
    ids, mask = make_captions(3, 8)
    boxes = torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.2, 0.7, 0.1, 0.2], [0.6, 0.4, 0.8, 0.8]])
    out = model(pixel_values=torch.randn(3, 3, 32, 32), input_ids=ids, attention_mask=mask, boxes=boxes)
    assert out.pred_boxes.shape == (3, 1, 4)
    assert (out.pred_boxes >= 0).all() and (out.pred_boxes <= 1).all()
    assert torch.isfinite(out.loss) and out.loss.ndim == 0
    torch.testing.assert_close(out.loss, out.loss_l1 + out.loss_giou)
    l1, giou = box_regression_loss(out.pred_boxes.reshape(-1, 4), boxes)
    torch.testing.assert_close(out.loss_l1, l1)
    torch.testing.assert_close(out.loss_giou, giou)
    out.loss.backward()
    assert all(p.grad is not None for p in model.box_head.parameters())
    assert model.instap.vision_model.embeddings.patch_embedding.weight.grad is not None
    assert model(pixel_values=torch.randn(3, 3, 32, 32), input_ids=ids).loss is None


def test_grounding_on_videos_with_a_box_per_frame():
    model = InstAPForGrounding(tiny_config()).eval()
    ids, mask = make_captions(2, 8)
    boxes = torch.rand(2, 4, 4) * 0.5 + 0.25
    box_mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    out = model(pixel_values=torch.randn(2, 4, 3, 32, 32), input_ids=ids, attention_mask=mask, boxes=boxes,
                box_mask=box_mask)
    assert out.pred_boxes.shape == (2, 4, 4)
    assert (out.pred_boxes >= 0).all() and (out.pred_boxes <= 1).all()
    assert torch.isfinite(out.loss)
    # Only the frames with a box count.
    l1, giou = box_regression_loss(out.pred_boxes[box_mask], boxes[box_mask])
    torch.testing.assert_close(out.loss, l1 + giou)
    # Boxes are predicted per frame: frames differ.
    assert not torch.allclose(out.pred_boxes[:, 0], out.pred_boxes[:, 1])


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------

_TINY_TEXT = {
    "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
    "max_position_embeddings": 64, "pad_token_id": 0, "cls_token_id": 1, "sep_token_id": 2, "mask_token_id": 3,
}


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"video_mask_ratio": 1.5}, "video_mask_ratio"),
        ({"image_mask_ratio": -0.1}, "image_mask_ratio"),
        ({"mask_strategy": "x"}, "mask_strategy"),
        ({"crop_mask_strategy": "always"}, "crop_mask_strategy"),
        ({"text_config": {**_TINY_TEXT, "fusion_layer": 4}}, "fusion_layer"),
        ({"text_config": {**_TINY_TEXT, "fusion_layer": 0}}, "fusion_layer"),
        ({"teacher_image_size": 48}, "teacher_image_size"),
        ({"lambda_inst": -0.1}, "lambda_inst"),
        ({"lambda_rec": -1.0}, "lambda_rec"),
        ({"lambda_vtc": float("nan")}, "lambda_vtc"),
        ({"temperature_init": 0.9}, "temperature_init"),
        ({"teacher_num_layers": 5}, "teacher_num_layers"),
        ({"crop_size": 36}, "crop_size"),
        ({"crop_mask_ratio": 1.0}, "crop_mask_ratio"),
        ({"crop_mask_ratio": "0.9"}, "crop_mask_ratio"),
        ({"crop_checkpointing": "partial"}, "crop_checkpointing"),
        ({"instance_text_checkpointing": None}, "instance_text_checkpointing"),
        ({"attention_pool_num_heads": 3}, "attention_pool_num_heads"),
        ({"mlm_probability": 1.2}, "mlm_probability"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "cls,kwargs,field",
    [
        (InstAPVisionConfig, {"hidden_size": 96, "num_attention_heads": 5}, "num_attention_heads"),
        (InstAPVisionConfig, {"image_size": 100}, "patch_size"),
        (InstAPVisionConfig, {"drop_path_rate": 1.0}, "drop_path_rate"),
        (InstAPTextConfig, {"fusion_layer": 12}, "fusion_layer"),
    ],
)
def test_sub_configs_reject_bad_values(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_config_presets_build():
    large = InstAPConfig.from_preset("instap-l")
    assert (large.vision_config.hidden_size, large.vision_config.num_hidden_layers) == (1024, 24)
    assert (large.text_config.num_hidden_layers, large.text_config.fusion_layer) == (24, 19)
    assert large.teacher_config.patch_size == 14 and large.teacher_image_size == 196
    assert large.projection_dim == 768 and large.teacher_num_layers == 6
    assert large.text_config.encoder_hidden_size == 1024 and large.crop_size == 224
    base = InstAPConfig.from_preset("instap-b")
    assert (base.vision_config.hidden_size, base.text_config.fusion_layer, base.projection_dim) == (768, 9, 512)
    assert base.teacher_image_size == 224 and base.teacher_config.patch_size == 16
    tiny = InstAPConfig.from_preset("tiny", lambda_inst=0.3)
    assert tiny.lambda_inst == 0.3 and tiny.text_config.encoder_hidden_size == tiny.vision_config.hidden_size
    # Defaults of the method (METHOD §3-§4).
    assert (large.video_mask_ratio, large.image_mask_ratio, large.mask_strategy) == (0.8, 0.5, "umt")
    assert (large.lambda_rec, large.lambda_vtc, large.lambda_inst, large.mlm_probability) == (1.0, 1.0, 0.1, 0.5)
    assert (large.temperature_init, large.temperature_min, large.temperature_max) == (0.07, 0.001, 0.5)
    with pytest.raises(ValueError, match="preset"):
        InstAPConfig.from_preset("instap-xl")
    # The preset an architecture came from; training choices do not change it, one width does.
    assert [InstAPConfig.from_preset(name, lambda_inst=0.5).preset_name() for name in ("instap-l", "instap-b", "tiny")] == [
        "instap-l", "instap-b", "tiny"
    ]
    wider = InstAPConfig.from_preset("tiny")
    wider.text_config.intermediate_size *= 2
    assert wider.preset_name() is None


@pytest.mark.parametrize("teacher", [True, False])
def test_config_dict_round_trip(teacher):
    config = tiny_config(lambda_inst=0.25, mask_strategy="mean_attention", **({} if teacher else {"teacher_config": None}))
    data = config.to_dict()
    again = InstAPConfig.from_dict(data)
    assert again.to_dict() == data
    assert isinstance(again.vision_config, InstAPVisionConfig) and isinstance(again.text_config, InstAPTextConfig)
    assert (again.teacher_config is None) == (not teacher)
    assert again.lambda_inst == 0.25 and again.mask_strategy == "mean_attention"
    assert again.text_config.fusion_layer == 2 and again.vision_config.image_size == 32
    assert InstAPConfig(**data).to_dict() == data


def _mean_text_cosine(model, generator) -> float:
    ids = torch.randint(5, 100, (16, 12), generator=generator)
    ids[:, 0], ids[:, -1] = 1, 2
    with torch.no_grad():
        embeds = model.eval().get_text_features(ids, torch.ones_like(ids)).pooler_output
    cosine = embeds @ embeds.t()
    return float((cosine.sum() - cosine.diagonal().sum()) / (16 * 15))


@pytest.mark.parametrize("width", [64, 256])
def test_text_tower_is_not_collapsed_at_init(width):
    """From scratch, different captions must get different [CLS] embeddings at any width. With BERT's fixed 0.02 a
    narrow tower maps every caption to nearly one vector (mean cosine 0.99998 at width 64), a plateau training
    leaves only by luck."""
    fields = InstAPConfig.preset_fields("tiny")
    text = {**fields["text_config"], "hidden_size": width, "intermediate_size": 2 * width}
    config = InstAPConfig(**{**fields, "text_config": text})
    assert config.text_config.initializer_range == pytest.approx(width**-0.5)
    torch.manual_seed(0)
    assert _mean_text_cosine(InstAPModel(config), torch.Generator().manual_seed(0)) < 0.99
    torch.manual_seed(0)
    collapsed = InstAPConfig(**{**fields, "text_config": {**text, "initializer_range": 0.02}})
    assert _mean_text_cosine(InstAPModel(collapsed), torch.Generator().manual_seed(0)) > 0.99


def test_each_tower_and_its_heads_take_their_own_init_std():
    fields = InstAPConfig.preset_fields("tiny")
    config = InstAPConfig(**{
        **fields,
        "vision_config": {**fields["vision_config"], "initializer_range": 0.01},
        "text_config": {**fields["text_config"], "initializer_range": 0.2},
    })
    torch.manual_seed(0)
    model = InstAPForPreTraining(config)
    text_side = [model.instap.text_model.encoder.layer[0].attention.self.query, model.instap.text_projection,
                 model.instap.itm_head, model.mlm_head.dense]
    vision_side = [model.instap.vision_model.encoder.layers[0].self_attn.q_proj, model.instap.visual_projection,
                   model.instap.attention_pool.q_proj]
    for module in text_side:
        assert module.weight.std().item() == pytest.approx(0.2, rel=0.25), module
    for module in vision_side:
        assert module.weight.std().item() == pytest.approx(0.01, rel=0.25), module


def test_identical_captions_are_never_vtm_hard_negatives(monkeypatch):
    import modeling_instap.modeling_instap as module

    config = tiny_config(exclude_identical_texts=True)
    model = InstAPForPreTraining(config).train()
    batch = make_batch(config, batch_size=3, instances_per_sample=(1, 1, 1))
    batch["input_ids"][1] = batch["input_ids"][0]
    batch["attention_mask"][1] = batch["attention_mask"][0]
    batch["instance_input_ids"][2] = batch["instance_input_ids"][0]
    batch["instance_attention_mask"][2] = batch["instance_attention_mask"][0]
    seen = []
    original = module.sample_hard_negatives
    monkeypatch.setattr(module, "sample_hard_negatives", lambda s, e, *a, **k: seen.append(e.clone()) or original(s, e, *a, **k))
    model(**batch)
    global_exclude, instance_exclude = seen[0], seen[2]  # text-for-video, then the instance ones
    assert global_exclude[0, 1] and global_exclude[1, 0] and not global_exclude[0, 2]
    assert instance_exclude[0, 2] and instance_exclude[2, 0] and not instance_exclude[0, 1]
    config.exclude_identical_texts = False  # METHOD: only the same source is excluded
    seen.clear()
    model(**batch)
    assert not seen[0][0, 1] and not seen[2][0, 2]
