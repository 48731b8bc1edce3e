"""UMT -> InstAP conversion and BERT/CLIP initialisation, against the original models and raw-tensor references.

Every model is tiny and random; nothing is downloaded. The UMT state dicts are written here from the conventions of
docs/method.md §7 / and the converted model is compared with forwards computed directly from those raw
tensors (fused qkv with q/v bias, sinusoid positions, OpenAI CLIP `nn.MultiheadAttention` layout).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from modeling_instap import InstAPConfig, InstAPForMaskedVideoModeling, InstAPForPreTraining
from modeling_instap.convert_umt_to_instap import ConversionError, convert_umt_checkpoint, main
from modeling_instap.pretrained_init import load_teacher_from_clip, load_text_from_bert
from modeling_instap.weight_mapping import resize_position_table, split_qkv_no_k_bias

TINY = InstAPConfig.from_preset("tiny")
V, T, C = TINY.vision_config, TINY.text_config, TINY.teacher_config
K = TINY.teacher_num_layers
ATOL = 1e-5


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(gen, *shape, scale=0.2, offset=0.0):
    return torch.randn(*shape, generator=gen) * scale + offset


# --------------------------------------------------------------------------------------------------------------------
# Tiny Hugging Face BERT / CLIP matching the tiny preset
# --------------------------------------------------------------------------------------------------------------------


def _bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=T.vocab_size,
        hidden_size=T.hidden_size,
        num_hidden_layers=T.num_hidden_layers,
        num_attention_heads=T.num_attention_heads,
        intermediate_size=T.intermediate_size,
        max_position_embeddings=T.max_position_embeddings,
        pad_token_id=0,
    )


def _clip_vision_config(**overrides) -> CLIPVisionConfig:
    fields = {k: getattr(C, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
    fields.update(image_size=C.image_size, patch_size=C.patch_size, projection_dim=C.projection_dim, hidden_act="quick_gelu")
    fields.update(overrides)
    return CLIPVisionConfig(**fields)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    # Non-trivial LayerNorms and biases so that any swapped tensor shows.
    gen = _generator(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(_rand(gen, *param.shape, scale=0.1, offset=1.0 if param.ndim == 1 else 0.0))


@pytest.fixture(scope="module")
def bert_mlm_dir(tmp_path_factory):
    torch.manual_seed(0)
    bert = BertForMaskedLM(_bert_config()).eval()
    _randomise(bert, 1)
    bert.tie_weights()
    path = tmp_path_factory.mktemp("bert_mlm")
    bert.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    clip = CLIPVisionModelWithProjection(_clip_vision_config()).eval()
    _randomise(clip, 2)
    path = tmp_path_factory.mktemp("clip")
    clip.save_pretrained(path)
    return path


def _tiny_model(cls=InstAPForPreTraining, **overrides):
    torch.manual_seed(1)
    return cls(InstAPConfig.from_preset("tiny", **overrides)).eval()


# --------------------------------------------------------------------------------------------------------------------
# BERT -> text / fusion encoder
# --------------------------------------------------------------------------------------------------------------------


def test_bert_init_matches_bert_layer_by_layer(bert_mlm_dir):
    model = _tiny_model()
    cross_before = {k: v.clone() for k, v in model.state_dict().items() if ".crossattention." in k}
    report = load_text_from_bert(model, bert_mlm_dir)
    bert = BertForMaskedLM.from_pretrained(bert_mlm_dir).eval()

    gen = _generator(3)
    input_ids = torch.randint(4, T.vocab_size, (2, 9), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    with torch.no_grad():
        ours = model.instap.text_model(input_ids, attention_mask=attention_mask, mode="text", output_hidden_states=True)
        theirs = bert.bert(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    fusion = T.fusion_layer
    assert len(ours.hidden_states) == fusion + 1
    for layer, (mine, reference) in enumerate(zip(ours.hidden_states, theirs.hidden_states[: fusion + 1])):
        torch.testing.assert_close(mine, reference, atol=ATOL, rtol=1e-5, msg=f"text hidden state {layer}")

    # The fusion layers keep BERT's self-attention and FFN of the same index; their cross-attention stays fresh.
    ours_sd, bert_sd = model.state_dict(), bert.state_dict()
    for layer in range(fusion, T.num_hidden_layers):
        for name in ("attention.self.query.weight", "attention.output.LayerNorm.bias", "intermediate.dense.weight", "output.dense.bias"):
            torch.testing.assert_close(
                ours_sd[f"instap.text_model.encoder.layer.{layer}.{name}"], bert_sd[f"bert.encoder.layer.{layer}.{name}"]
            )
    for key, value in cross_before.items():
        torch.testing.assert_close(ours_sd[key], value)
    assert report.left_as_is == sorted(cross_before)
    assert {int(k.split(".")[4]) for k in report.left_as_is} == set(range(fusion, T.num_hidden_layers))

    # MLM head (decoder tied to the word embeddings on both sides).
    hidden = _rand(gen, 2, 5, T.hidden_size, scale=1.0)
    with torch.no_grad():
        torch.testing.assert_close(model.mlm_head(hidden), bert.cls(hidden), atol=ATOL, rtol=1e-5)
    assert model.mlm_head.decoder.weight is model.instap.text_model.embeddings.word_embeddings.weight


def test_bert_model_without_head_and_config_mismatch(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(_bert_config())  # with a pooler, no MLM head
    bert.save_pretrained(tmp_path / "bert")
    model = _tiny_model()
    head_before = model.mlm_head.dense.weight.clone()
    report = load_text_from_bert(model, tmp_path / "bert")
    assert report.unused == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    assert {k for k in report.left_as_is if k.startswith("mlm_head.")} == {
        "mlm_head.dense.weight", "mlm_head.dense.bias", "mlm_head.LayerNorm.weight", "mlm_head.LayerNorm.bias",
        "mlm_head.decoder.bias",
    }
    torch.testing.assert_close(model.mlm_head.dense.weight, head_before)
    torch.testing.assert_close(model.instap.text_model.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)

    wrong = BertModel(BertConfig(**{**_bert_config().to_dict(), "intermediate_size": 96}))
    with pytest.raises(ValueError, match=r"intermediate_size: InstAP text config 128, checkpoint 96"):
        load_text_from_bert(_tiny_model(), wrong)


# --------------------------------------------------------------------------------------------------------------------
# CLIP -> teacher
# --------------------------------------------------------------------------------------------------------------------


def _assert_teacher_matches(model, clip_vision, visual_projection, pixel_values):
    with torch.no_grad():
        ours = model.distillation.teacher(pixel_values, output_hidden_states=True)
        theirs = clip_vision(pixel_values, output_hidden_states=True)
        for mine, reference in zip(ours.hidden_states, theirs.hidden_states, strict=True):
            torch.testing.assert_close(mine, reference, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(ours.image_embeds, visual_projection(theirs.pooler_output), atol=ATOL, rtol=1e-5)


def test_clip_teacher_init_matches_clip(clip_dir, tmp_path):
    pixel_values = _rand(_generator(4), 3, 3, C.image_size, C.image_size, scale=1.0)
    model = _tiny_model(InstAPForMaskedVideoModeling)
    report = load_teacher_from_clip(model, clip_dir)
    assert report.left_as_is == [] and report.unused == []
    clip = CLIPVisionModelWithProjection.from_pretrained(clip_dir).eval()
    _assert_teacher_matches(model, clip.vision_model, clip.visual_projection, pixel_values)
    assert not any(p.requires_grad for p in model.distillation.teacher.parameters())

    # A full CLIPModel: its vision tower and visual projection, the text tower reported unused.
    torch.manual_seed(5)
    text = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    full = CLIPModel(
        CLIPConfig(text_config=text, vision_config=_clip_vision_config().to_dict(), projection_dim=C.projection_dim)
    ).eval()
    full.save_pretrained(tmp_path / "clip_full")
    model = _tiny_model()
    report = load_teacher_from_clip(model, tmp_path / "clip_full")
    assert "logit_scale" in report.unused and any(k.startswith("text_model.") for k in report.unused)
    _assert_teacher_matches(model, full.vision_model, full.visual_projection, pixel_values)


def test_clip_teacher_mismatch_and_missing_projection():
    with pytest.raises(ValueError, match=r"image_size: InstAP teacher config 32, checkpoint 48"):
        load_teacher_from_clip(_tiny_model(), CLIPVisionModelWithProjection(_clip_vision_config(image_size=48)))
    with pytest.raises(ValueError, match=r"projection_dim: InstAP teacher config 32, checkpoint 16"):
        load_teacher_from_clip(_tiny_model(), CLIPVisionModelWithProjection(_clip_vision_config(projection_dim=16)))
    no_projection = CLIPVisionModel(_clip_vision_config())
    with pytest.raises(ValueError, match="no visual projection"):
        load_teacher_from_clip(_tiny_model(), no_projection)
    report = load_teacher_from_clip(_tiny_model(), no_projection, strict=False)
    assert report.left_as_is == ["distillation.teacher.visual_projection.weight"]


# --------------------------------------------------------------------------------------------------------------------
# UMT checkpoints written from the documented key layout, and references computed from the raw tensors
# --------------------------------------------------------------------------------------------------------------------


def umt_video_tensors(gen, prefix: str = "", pool_norm: bool = False) -> dict[str, torch.Tensor]:
    d, m = V.hidden_size, V.intermediate_size
    sd = {
        "encoder.patch_embed.proj.weight": _rand(gen, d, V.num_channels, V.tubelet_size, V.patch_size, V.patch_size),
        "encoder.patch_embed.proj.bias": _rand(gen, d),
        "encoder.norm.weight": _rand(gen, d, offset=1.0),
        "encoder.norm.bias": _rand(gen, d),
    }
    for i in range(V.num_hidden_layers):
        block = f"encoder.blocks.{i}."
        sd.update({
            block + "norm1.weight": _rand(gen, d, offset=1.0), block + "norm1.bias": _rand(gen, d),
            block + "attn.qkv.weight": _rand(gen, 3 * d, d), block + "attn.q_bias": _rand(gen, d),
            block + "attn.v_bias": _rand(gen, d),
            block + "attn.proj.weight": _rand(gen, d, d), block + "attn.proj.bias": _rand(gen, d),
            block + "norm2.weight": _rand(gen, d, offset=1.0), block + "norm2.bias": _rand(gen, d),
            block + "mlp.fc1.weight": _rand(gen, m, d), block + "mlp.fc1.bias": _rand(gen, m),
            block + "mlp.fc2.weight": _rand(gen, d, m), block + "mlp.fc2.bias": _rand(gen, d),
        })  # fmt: skip
    for k in range(K):
        sd.update({
            f"clip_decoder.{k}.head.weight": _rand(gen, C.projection_dim, d), f"clip_decoder.{k}.head.bias": _rand(gen, C.projection_dim),
            f"clip_decoder.{k}.norm.weight": _rand(gen, C.projection_dim, offset=1.0), f"clip_decoder.{k}.norm.bias": _rand(gen, C.projection_dim),
        })  # fmt: skip
    if pool_norm:
        sd.update({"pool_norm.weight": _rand(gen, d, offset=1.0), "pool_norm.bias": _rand(gen, d)})
    return {prefix + k: v for k, v in sd.items()}


def openai_visual_tensors(gen, prefix: str = "", grid: int | None = None, inflated: bool = True) -> dict[str, torch.Tensor]:
    w, m = C.hidden_size, C.intermediate_size
    grid = grid or C.image_size // C.patch_size
    kernel = (w, 3, 1, C.patch_size, C.patch_size) if inflated else (w, 3, C.patch_size, C.patch_size)
    sd = {
        "conv1.weight": _rand(gen, *kernel),
        "class_embedding": _rand(gen, w),
        "positional_embedding": _rand(gen, grid * grid + 1, w),
        "ln_pre.weight": _rand(gen, w, offset=1.0), "ln_pre.bias": _rand(gen, w),
        "ln_post.weight": _rand(gen, w, offset=1.0), "ln_post.bias": _rand(gen, w),
        "proj": _rand(gen, w, C.projection_dim),  # [width, out]: used as x @ proj
    }  # fmt: skip
    for i in range(C.num_hidden_layers):
        block = f"transformer.resblocks.{i}."
        sd.update({
            block + "attn.in_proj_weight": _rand(gen, 3 * w, w), block + "attn.in_proj_bias": _rand(gen, 3 * w),
            block + "attn.out_proj.weight": _rand(gen, w, w), block + "attn.out_proj.bias": _rand(gen, w),
            block + "ln_1.weight": _rand(gen, w, offset=1.0), block + "ln_1.bias": _rand(gen, w),
            block + "mlp.c_fc.weight": _rand(gen, m, w), block + "mlp.c_fc.bias": _rand(gen, m),
            block + "mlp.c_proj.weight": _rand(gen, w, m), block + "mlp.c_proj.bias": _rand(gen, w),
            block + "ln_2.weight": _rand(gen, w, offset=1.0), block + "ln_2.bias": _rand(gen, w),
        })  # fmt: skip
    return {prefix + k: v for k, v in sd.items()}


def umt_text_tensors(gen) -> dict[str, torch.Tensor]:
    h, m, vocab = T.hidden_size, T.intermediate_size, T.vocab_size
    bert, cls = "text_encoder.bert.", "text_encoder.cls.predictions."
    words = _rand(gen, vocab, h)
    bias = _rand(gen, vocab)
    sd = {
        bert + "embeddings.word_embeddings.weight": words,
        bert + "embeddings.position_embeddings.weight": _rand(gen, T.max_position_embeddings, h),
        bert + "embeddings.token_type_embeddings.weight": _rand(gen, T.type_vocab_size, h),
        bert + "embeddings.LayerNorm.weight": _rand(gen, h, offset=1.0),
        bert + "embeddings.LayerNorm.bias": _rand(gen, h),
        bert + "embeddings.position_ids": torch.arange(T.max_position_embeddings)[None],  # xbert's persistent buffer
        cls + "bias": bias,
        cls + "decoder.weight": words.clone(),  # tied in UMT: saved twice, equal
        cls + "decoder.bias": bias.clone(),
        cls + "transform.dense.weight": _rand(gen, h, h),
        cls + "transform.dense.bias": _rand(gen, h),
        cls + "transform.LayerNorm.weight": _rand(gen, h, offset=1.0),
        cls + "transform.LayerNorm.bias": _rand(gen, h),
    }
    for i in range(T.num_hidden_layers):
        layer = f"{bert}encoder.layer.{i}."
        attentions = ["attention"] + (["crossattention"] if i >= T.fusion_layer else [])
        for name in attentions:
            kv_width = V.hidden_size if name == "crossattention" else h
            sd.update({
                f"{layer}{name}.self.query.weight": _rand(gen, h, h), f"{layer}{name}.self.query.bias": _rand(gen, h),
                f"{layer}{name}.self.key.weight": _rand(gen, h, kv_width), f"{layer}{name}.self.key.bias": _rand(gen, h),
                f"{layer}{name}.self.value.weight": _rand(gen, h, kv_width), f"{layer}{name}.self.value.bias": _rand(gen, h),
                f"{layer}{name}.output.dense.weight": _rand(gen, h, h), f"{layer}{name}.output.dense.bias": _rand(gen, h),
                f"{layer}{name}.output.LayerNorm.weight": _rand(gen, h, offset=1.0),
                f"{layer}{name}.output.LayerNorm.bias": _rand(gen, h),
            })  # fmt: skip
        sd.update({
            layer + "intermediate.dense.weight": _rand(gen, m, h), layer + "intermediate.dense.bias": _rand(gen, m),
            layer + "output.dense.weight": _rand(gen, h, m), layer + "output.dense.bias": _rand(gen, h),
            layer + "output.LayerNorm.weight": _rand(gen, h, offset=1.0), layer + "output.LayerNorm.bias": _rand(gen, h),
        })  # fmt: skip
    return sd


def umt_stage2_tensors(seed: int = 10) -> dict[str, torch.Tensor]:
    gen = _generator(seed)
    sd = umt_video_tensors(gen, "vision_encoder.", pool_norm=True)
    sd.update(openai_visual_tensors(gen, "clip_teacher."))
    sd.update(umt_text_tensors(gen))
    sd.update({
        "vision_proj.weight": _rand(gen, TINY.projection_dim, V.hidden_size), "vision_proj.bias": _rand(gen, TINY.projection_dim),
        "text_proj.weight": _rand(gen, TINY.projection_dim, T.hidden_size), "text_proj.bias": _rand(gen, TINY.projection_dim),
        "itm_head.weight": _rand(gen, 2, T.hidden_size), "itm_head.bias": _rand(gen, 2),
        "temp": torch.tensor(0.05),  # τ itself, 0-dim
    })  # fmt: skip
    return sd


def umt_sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    # `get_sinusoid_encoding_table` of UMT, written the way UMT writes it (numpy, float64).
    angles = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(num_positions)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.tensor(angles, dtype=torch.float32)


def reference_umt_video(sd, video, prefix=""):
    """UMT `PretrainVisionTransformerEncoder` (no mask) from raw tensors: (final-normed tokens, block outputs)."""
    p = lambda name: sd[prefix + name]  # noqa: E731
    d, heads = V.hidden_size, V.num_attention_heads
    kernel = p("encoder.patch_embed.proj.weight")
    x = F.conv3d(video.transpose(1, 2), kernel, p("encoder.patch_embed.proj.bias"), stride=kernel.shape[2:])
    x = x.flatten(2).transpose(1, 2)
    batch, length, _ = x.shape
    x = x + umt_sinusoid_table(length, d)
    blocks = []
    for i in range(V.num_hidden_layers):
        b = f"encoder.blocks.{i}."
        h = F.layer_norm(x, (d,), p(b + "norm1.weight"), p(b + "norm1.bias"), eps=1e-6)
        qkv_bias = torch.cat([p(b + "attn.q_bias"), torch.zeros_like(p(b + "attn.v_bias")), p(b + "attn.v_bias")])
        qkv = F.linear(h, p(b + "attn.qkv.weight"), qkv_bias).reshape(batch, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = x + F.linear((attn @ v).transpose(1, 2).reshape(batch, length, d), p(b + "attn.proj.weight"), p(b + "attn.proj.bias"))
        h = F.layer_norm(x, (d,), p(b + "norm2.weight"), p(b + "norm2.bias"), eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, p(b + "mlp.fc1.weight"), p(b + "mlp.fc1.bias"))), p(b + "mlp.fc2.weight"), p(b + "mlp.fc2.bias"))
        x = x + h
        blocks.append(x)
    final = lambda t: F.layer_norm(t, (d,), p("encoder.norm.weight"), p("encoder.norm.bias"), eps=1e-6)  # noqa: E731
    return final(x), blocks, final


def reference_clip_decoder(sd, blocks, final_norm, prefix=""):
    """UMT stage-1 `clip_decoder` on the last K blocks (in block order): LN(head(norm(x) + sinusoid))."""
    table = umt_sinusoid_table(blocks[0].shape[1], V.hidden_size)
    outs = []
    for k, x in enumerate(blocks[-K:]):
        p = f"{prefix}clip_decoder.{k}."
        y = F.linear(final_norm(x) + table, sd[p + "head.weight"], sd[p + "head.bias"])
        outs.append(F.layer_norm(y, (C.projection_dim,), sd[p + "norm.weight"], sd[p + "norm.bias"], eps=1e-6))
    return torch.stack(outs)


def reference_clip_visual(sd, video, prefix=""):
    """OpenAI CLIP visual (UMT `clip_teacher`) per frame: last-K `ln_post(x[1:]) @ proj` and the last attention map."""
    p = lambda name: sd[prefix + name]  # noqa: E731
    w, heads = C.hidden_size, C.num_attention_heads
    batch, frames = video.shape[:2]
    conv = p("conv1.weight")
    x = F.conv3d(video.transpose(1, 2), conv, stride=conv.shape[2:]) if conv.ndim == 5 else None
    x = x.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*T, width, g, g)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([p("class_embedding").expand(x.shape[0], 1, w), x], dim=1) + p("positional_embedding")
    x = F.layer_norm(x, (w,), p("ln_pre.weight"), p("ln_pre.bias"), eps=1e-5).transpose(0, 1)  # (L, N, D)
    outputs, attention = [], None
    for i in range(C.num_hidden_layers):
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (w,), p(b + "ln_1.weight"), p(b + "ln_1.bias"), eps=1e-5)
        a, attention = F.multi_head_attention_forward(
            h, h, h, w, heads, p(b + "attn.in_proj_weight"), p(b + "attn.in_proj_bias"), None, None, False, 0.0,
            p(b + "attn.out_proj.weight"), p(b + "attn.out_proj.bias"), training=False, need_weights=True,
        )  # fmt: skip
        x = x + a
        h = F.layer_norm(x, (w,), p(b + "ln_2.weight"), p(b + "ln_2.bias"), eps=1e-5)
        h = F.linear(h, p(b + "mlp.c_fc.weight"), p(b + "mlp.c_fc.bias"))
        x = x + F.linear(h * torch.sigmoid(1.702 * h), p(b + "mlp.c_proj.weight"), p(b + "mlp.c_proj.bias"))
        outputs.append(x)
    targets = []
    for x in outputs[-K:]:
        tokens = F.layer_norm(x.transpose(0, 1)[:, 1:], (w,), p("ln_post.weight"), p("ln_post.bias"), eps=1e-5)
        targets.append((tokens @ p("proj")).reshape(batch, -1, C.projection_dim))
    return torch.stack(targets), attention


def _video(seed=20, frames=2):
    return _rand(_generator(seed), 2, frames, 3, V.image_size, V.image_size, scale=1.0)


def _assert_video_encoder_matches(vision_model, sd, video, prefix):
    reference, blocks, final_norm = reference_umt_video(sd, video, prefix)
    with torch.no_grad():
        ours = vision_model(video, output_hidden_states=True)
    torch.testing.assert_close(ours.last_hidden_state, reference, atol=ATOL, rtol=1e-4)
    for mine, block in zip(ours.hidden_states[1:], blocks, strict=True):
        torch.testing.assert_close(mine, block, atol=ATOL, rtol=1e-4)
    return reference, blocks, final_norm


def _assert_teacher_matches_reference(distillation, sd, video, prefix):
    targets, attention = reference_clip_visual(sd, video, prefix)
    ours_targets, ours_attention = distillation.teacher_forward(video)
    torch.testing.assert_close(ours_targets, targets, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(ours_attention, attention, atol=ATOL, rtol=1e-4)


def test_umt_stage2_checkpoint_reproduces_reference_forward(tmp_path):
    sd = umt_stage2_tensors()
    # A training checkpoint: wrapped, DDP `module.` prefixes, non-tensor entries (read weights-only, as placeholders).
    wrapped = {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}
    torch.save(wrapped, tmp_path / "umt_stage2.pth")
    _, report = convert_umt_checkpoint(tmp_path / "umt_stage2.pth", tmp_path / "out")
    assert report.preset == "tiny" and report.stage == 2
    assert report.instap_only == sorted(
        [k for k in InstAPForPreTraining(TINY).state_dict() if k.startswith("instap.attention_pool.")]
        + ["instap.instance_temperature"]
    )
    assert "text_encoder.bert.embeddings.position_ids" in report.ignored
    assert {"text_encoder.cls.predictions.decoder.weight", "text_encoder.cls.predictions.decoder.bias"} <= set(report.ignored)

    model = InstAPForPreTraining.from_pretrained(tmp_path / "out").eval()
    video = _video()
    _, _, final_norm = _assert_video_encoder_matches(model.instap.vision_model, sd, video, "vision_encoder.")
    reference, _, _ = reference_umt_video(sd, video, "vision_encoder.")
    pooled = F.layer_norm(reference.mean(1), (V.hidden_size,), sd["vision_encoder.pool_norm.weight"], sd["vision_encoder.pool_norm.bias"], eps=1e-6)
    with torch.no_grad():
        ours = model.instap.vision_model(video)
        torch.testing.assert_close(ours.pooler_output, pooled, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(
            model.instap.visual_projection(ours.pooler_output),
            F.linear(pooled, sd["vision_proj.weight"], sd["vision_proj.bias"]), atol=ATOL, rtol=1e-4,
        )  # fmt: skip
        _assert_teacher_matches_reference(model.distillation, sd, video, "clip_teacher.")

    ours_sd = model.state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.3.crossattention.self.key.weight", "encoder.layer.1.output.LayerNorm.bias"):
        torch.testing.assert_close(ours_sd[f"instap.text_model.{key}"], sd[f"text_encoder.bert.{key}"])
    torch.testing.assert_close(model.mlm_head.decoder.weight, sd["text_encoder.bert.embeddings.word_embeddings.weight"])
    torch.testing.assert_close(model.mlm_head.decoder.bias, sd["text_encoder.cls.predictions.bias"])
    torch.testing.assert_close(model.mlm_head.dense.weight, sd["text_encoder.cls.predictions.transform.dense.weight"])
    torch.testing.assert_close(model.instap.text_projection.bias, sd["text_proj.bias"])
    torch.testing.assert_close(model.instap.itm_head.weight, sd["itm_head.weight"])
    assert model.instap.temperature.shape == () and model.instap.temperature.item() == pytest.approx(0.05)
    assert model.instap.instance_temperature.item() == pytest.approx(TINY.instance_temperature_init)
    assert model.mlm_head.decoder.weight is model.instap.text_model.embeddings.word_embeddings.weight


def test_umt_stage1_safetensors_with_openai_teacher_file(tmp_path):
    gen = _generator(30)
    sd = umt_video_tensors(gen)
    save_file(sd, tmp_path / "umt_stage1.safetensors")
    # UMT reads the teacher from a separate file; a full OpenAI CLIP state dict keeps the tower under `visual.`.
    teacher = openai_visual_tensors(gen, "visual.", inflated=False)
    teacher["token_embedding.weight"] = _rand(gen, 10, 8)  # text tower: not the teacher's, dropped
    torch.save(teacher, tmp_path / "clip.pt")
    model, report = convert_umt_checkpoint(
        tmp_path / "umt_stage1.safetensors", tmp_path / "out", teacher=tmp_path / "clip.pt"
    )
    assert isinstance(model, InstAPForMaskedVideoModeling) and report.stage == 1
    assert report.instap_only == ["vision_model.pool_layernorm.bias", "vision_model.pool_layernorm.weight"]
    assert report.dropped == ["token_embedding.weight"]

    model = InstAPForMaskedVideoModeling.from_pretrained(tmp_path / "out").eval()
    video = _video(31)
    _, blocks, final_norm = _assert_video_encoder_matches(model.vision_model, sd, video, "")
    with torch.no_grad():
        ours = model.vision_model(video, output_hidden_states=True)
        table = model.vision_model.embeddings.position_embeddings(ours.last_hidden_state.shape[1], "cpu", torch.float32)
        heads = model.distillation.student_features(ours.hidden_states, model.vision_model.post_layernorm, table[None])
        torch.testing.assert_close(heads, reference_clip_decoder(sd, blocks, final_norm), atol=ATOL, rtol=1e-4)
        # The 2-D kernel of a plain OpenAI file, run through the reference as UMT's (1, p, p) inflation.
        inflated = {k: (v[:, :, None] if k == "visual.conv1.weight" else v) for k, v in teacher.items()}
        _assert_teacher_matches_reference(model.distillation, inflated, video, "visual.")


def test_umt_stage1_with_hugging_face_teacher(tmp_path, clip_dir):
    save_file(umt_video_tensors(_generator(32)), tmp_path / "umt_stage1.safetensors")
    model, _ = convert_umt_checkpoint(tmp_path / "umt_stage1.safetensors", teacher=clip_dir)
    clip = CLIPVisionModelWithProjection.from_pretrained(clip_dir).eval()
    pixel_values = _rand(_generator(33), 2, 3, C.image_size, C.image_size, scale=1.0)
    _assert_teacher_matches(model.eval(), clip.vision_model, clip.visual_projection, pixel_values)


def test_missing_and_unknown_keys_fail_unless_allowed(tmp_path):
    sd = umt_stage2_tensors(seed=11)
    del sd["itm_head.weight"]
    sd["text_decoder.bert.embeddings.word_embeddings.weight"] = torch.zeros(3, 3)  # an extra module (UMT issue #26)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ConversionError) as error:
        convert_umt_checkpoint(tmp_path / "broken.pth")
    message = str(error.value)
    assert "instap.itm_head.weight" in message and "text_decoder.bert.embeddings.word_embeddings.weight" in message
    assert "attention_pool" not in message  # InstAP-only: expected to be missing

    out = tmp_path / "out"
    argv = ["--checkpoint", str(tmp_path / "broken.pth"), "--output-dir", str(out)]
    assert main(argv) == 1
    assert main(argv + ["--allow-missing", "instap.itm_head.*", "--allow-unexpected", "text_decoder.*"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    reloaded = InstAPForPreTraining.from_pretrained(out)
    torch.testing.assert_close(reloaded.instap.itm_head.bias, sd["itm_head.bias"])
    # --config: a saved InstAP folder (or config.json) to convert into.
    _, report = convert_umt_checkpoint(sd, config=out, allow_missing=["instap.itm_head.*"], allow_unexpected=["text_decoder.*"])
    assert report.allowed_missing == ["instap.itm_head.weight"] and report.allowed_unexpected == [
        "text_decoder.bert.embeddings.word_embeddings.weight"
    ]

    # A stage-2 file without its teacher: every teacher key is listed.
    no_teacher = {k: v for k, v in umt_stage2_tensors(seed=12).items() if not k.startswith("clip_teacher.")}
    with pytest.raises(ConversionError, match=r"distillation\.teacher\.vision_model\.embeddings\.class_embedding"):
        convert_umt_checkpoint(no_teacher)
    with pytest.raises(ConversionError, match="pass --teacher"):
        convert_umt_checkpoint(umt_video_tensors(_generator(14)))
    convert_umt_checkpoint(no_teacher, allow_missing=["distillation.teacher.*"])


def test_preset_mismatch_and_fused_bias_checks():
    sd = umt_stage2_tensors(seed=13)
    with pytest.raises(ConversionError, match=r"vision_config\.hidden_size: checkpoint 64, config 768"):
        convert_umt_checkpoint(sd, preset="instap-b")
    # A timm-style fused bias is accepted when its key third is zero, refused otherwise.
    fused = {k: v for k, v in sd.items() if not k.endswith(("attn.q_bias", "attn.v_bias"))}
    for i in range(V.num_hidden_layers):
        b = f"vision_encoder.encoder.blocks.{i}.attn."
        fused[b + "qkv.bias"] = torch.cat([sd[b + "q_bias"], torch.zeros(V.hidden_size), sd[b + "v_bias"]])
    model, _ = convert_umt_checkpoint(fused)
    torch.testing.assert_close(
        model.instap.vision_model.encoder.layers[1].self_attn.v_proj.bias, sd["vision_encoder.encoder.blocks.1.attn.v_bias"]
    )
    with pytest.raises(ConversionError, match="key part of the fused bias is not zero"):
        split_qkv_no_k_bias(torch.ones(3 * V.hidden_size), "x.qkv.bias")


def test_teacher_position_table_grid(tmp_path):
    gen = _generator(40)
    sd = umt_video_tensors(gen)
    teacher = openai_visual_tensors(gen, grid=5)  # 26 positions, e.g. 257 for L/14 at 224
    torch.save(teacher, tmp_path / "clip.pt")
    # A preset fixes the teacher image size (32 px, a 4x4 grid): bicubic resampling, CLS row kept.
    model, report = convert_umt_checkpoint(sd, preset="tiny", teacher=tmp_path / "clip.pt")
    table = model.distillation.teacher.vision_model.embeddings.position_embedding.weight
    source = teacher["positional_embedding"]
    grid = source[1:].reshape(1, 5, 5, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(16, -1)
    torch.testing.assert_close(table, torch.cat([source[:1], expected]))
    assert report.resized == ["distillation.teacher.vision_model.embeddings.position_embedding.weight: 26 -> 17 positions"]
    torch.testing.assert_close(resize_position_table(source, 26), source)
    # Inferred: the teacher keeps the checkpoint's grid (40 px) and the model resizes at run time.
    model, report = convert_umt_checkpoint(sd, teacher=tmp_path / "clip.pt")
    assert report.resized == [] and model.config.teacher_config.image_size == 40
    torch.testing.assert_close(model.distillation.teacher.vision_model.embeddings.position_embedding.weight, source)
    assert math.isclose(model.config.teacher_image_size, 32)


def test_no_matching_preset_requires_a_config_instead_of_guessing_heads(tmp_path):
    """Head counts are not in the shapes: a checkpoint no preset fits is refused without --config, never converted
    with a guessed head count (a 4-head width-64 UMT once became a 1-head model)."""
    sd = umt_stage2_tensors(seed=14)
    last = V.num_hidden_layers - 1
    shallower = {k: v for k, v in sd.items() if not k.startswith(f"vision_encoder.encoder.blocks.{last}.")}
    with pytest.raises(ConversionError, match="do not determine the number of attention heads.*--config"):
        convert_umt_checkpoint(shallower)
    config = InstAPConfig.from_preset("tiny")
    config.vision_config.num_hidden_layers = last
    config.save_pretrained(tmp_path / "config")
    model, report = convert_umt_checkpoint(shallower, config=str(tmp_path / "config"))
    assert report.preset is None and len(model.instap.vision_model.encoder.layers) == last
    assert model.config.vision_config.num_attention_heads == V.num_attention_heads


def test_renamed_keys_the_model_lacks_are_reported_and_can_be_allowed():
    """A source key whose renamed key the model lacks (here one vision block too many) is kept as a typed
    (source -> target) entry, listed in the error and matched by --allow-unexpected on the source key itself."""
    from modeling_instap.convert_umt_to_instap import convert_state_dict

    config = InstAPConfig.from_preset("tiny")
    config.vision_config.num_hidden_layers -= 1
    last = config.vision_config.num_hidden_layers
    model = InstAPForPreTraining(config)
    state_dict = umt_stage2_tensors(seed=3)
    with pytest.raises(ConversionError, match=rf"vision_encoder\.encoder\.blocks\.{last}\.mlp\.fc1\.bias \(-> "
                       rf"instap\.vision_model\.encoder\.layers\.{last}\.mlp\.fc1\.bias, not in the InstAP model\)"):
        convert_state_dict(state_dict, model, 2)
    _, report = convert_state_dict(state_dict, model, 2, allow_unexpected=[f"vision_encoder.encoder.blocks.{last}.*"])
    block = sorted(key for key in state_dict if key.startswith(f"vision_encoder.encoder.blocks.{last}."))
    assert report.not_in_model == {} and report.unexpected == [] and sorted(report.allowed_unexpected) == block
