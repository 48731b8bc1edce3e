"""The transformers model contract, as `tests/test_modeling_common.py` of transformers checks it (written anew here):
`return_dict`, the config's and the keyword output flags with their counts and shapes, attention kernels that agree,
`return_loss`, and behaviour that does not hide behind `self.training`."""

import pytest
import torch
from instap_model_testing import make_batch, make_captions, tiny_config

from modeling_instap import InstAPForPreTraining, InstAPModel, InstAPTextModel, InstAPVisionModel

HEADS, WIDTH, PATCHES = 4, 64, 16


def _inputs():
    torch.manual_seed(0)
    ids, mask = make_captions(2, 8)
    return {"pixel_values": torch.randn(2, 4, 3, 32, 32), "input_ids": ids, "attention_mask": mask}


def _models(attn_implementation="eager"):
    config = tiny_config(deterministic=True)
    torch.manual_seed(0)
    return {
        "vision": InstAPVisionModel._from_config(config.vision_config, attn_implementation=attn_implementation).eval(),
        "text": InstAPTextModel._from_config(config.text_config, attn_implementation=attn_implementation).eval(),
        "model": InstAPModel._from_config(config, attn_implementation=attn_implementation).eval(),
    }


def _call(name, model, inputs, **kwargs):
    if name == "vision":
        return model(inputs["pixel_values"], **kwargs)
    if name == "text":
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **kwargs)
    return model(**inputs, **kwargs)


@pytest.mark.parametrize("name", ["vision", "text", "model"])
def test_return_dict_false_by_keyword_and_by_config(name):
    model, inputs = _models()[name], _inputs()
    with torch.no_grad():
        as_dict = _call(name, model, inputs)
        as_tuple = _call(name, model, inputs, return_dict=False)
        model.config.return_dict = False
        from_config = _call(name, model, inputs)
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple)
    assert len(as_tuple) == len(as_dict.to_tuple())
    first = as_dict.to_tuple()[0]
    torch.testing.assert_close(as_tuple[0], first)
    torch.testing.assert_close(from_config[0], first)


def test_feature_getters_return_tuples_and_pass_output_flags():
    model, inputs = _models()["model"], _inputs()
    with torch.no_grad():
        video = model.get_video_features(inputs["pixel_values"], return_dict=False)
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"], return_dict=False)
        assert isinstance(video, tuple) and isinstance(text, tuple)
        video = model.get_video_features(inputs["pixel_values"], output_hidden_states=True, output_attentions=True)
        text = model.get_text_features(
            inputs["input_ids"], inputs["attention_mask"], output_hidden_states=True, output_attentions=True
        )
    config = model.config
    assert len(video.hidden_states) == config.vision_config.num_hidden_layers + 1
    assert len(video.attentions) == config.vision_config.num_hidden_layers
    assert len(text.hidden_states) == config.text_config.fusion_layer + 1
    assert len(text.attentions) == config.text_config.fusion_layer


@pytest.mark.parametrize("source", ["keyword", "config"])
def test_output_flags_counts_and_shapes(source):
    models, inputs = _models(), _inputs()
    tokens = 4 * PATCHES
    for name, model in models.items():
        if source == "config":
            model.config.output_hidden_states = model.config.output_attentions = True
            for sub in ("vision_config", "text_config"):
                if hasattr(model.config, sub):
                    getattr(model.config, sub).output_hidden_states = True
                    getattr(model.config, sub).output_attentions = True
            kwargs = {}
        else:
            kwargs = {"output_hidden_states": True, "output_attentions": True}
        with torch.no_grad():
            out = _call(name, model, inputs, **kwargs)
        vision = out if name == "vision" else out.vision_model_output if name == "model" else None
        text = out if name == "text" else out.text_model_output if name == "model" else None
        if vision is not None:
            assert len(vision.hidden_states) == 4 + 1
            assert all(h.shape == (2, tokens, WIDTH) for h in vision.hidden_states)
            assert len(vision.attentions) == 4
            assert all(a.shape == (2, HEADS, tokens, tokens) for a in vision.attentions)
        if text is not None:
            assert len(text.hidden_states) == 2 + 1  # embeddings + the text layers below fusion_layer
            assert all(h.shape == (2, 8, WIDTH) for h in text.hidden_states)
            assert len(text.attentions) == 2
            assert all(a.shape == (2, HEADS, 8, 8) for a in text.attentions)
        # Off by default: nothing is collected.
        for sub in ("vision_config", "text_config"):
            if hasattr(model.config, sub):
                getattr(model.config, sub).output_hidden_states = getattr(model.config, sub).output_attentions = False
        model.config.output_hidden_states = model.config.output_attentions = False
        with torch.no_grad():
            quiet = _call(name, model, inputs)
        for output in (quiet,) if name != "model" else (quiet.vision_model_output, quiet.text_model_output):
            assert output.hidden_states is None and output.attentions is None


def test_fusion_cross_attentions_and_padding_masks():
    text_model, inputs = _models()["text"], _inputs()
    video = torch.randn(2, 12, WIDTH)
    video_mask = torch.ones(2, 12, dtype=torch.long)
    video_mask[1, 8:] = 0
    with torch.no_grad():
        states = text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        fused = text_model(
            text_hidden_states=states, attention_mask=inputs["attention_mask"], encoder_hidden_states=video,
            encoder_attention_mask=video_mask, mode="fusion", output_attentions=True,
        )
    assert len(fused.attentions) == len(fused.cross_attentions) == 2
    for cross in fused.cross_attentions:
        assert cross.shape == (2, HEADS, 8, 12)
        assert cross[1, :, :, 8:].abs().max() < 1e-6


@pytest.fixture
def uncompiled_flex(monkeypatch):
    """transformers runs flex attention through `torch.compile`; on CPU, torch 2.14's compiled kernel returns
    uninitialised values (NaN or wrong rows, varying run to run) for short sequences. The model's side of flex (its
    block masks and kwargs) is what is tested here, so the kernel runs uncompiled (the same maths, exact on CPU)."""
    import transformers.integrations.flex_attention as flex
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(
        flex, "compile_friendly_flex_attention", lambda q, k, v, training=False, **kwargs: flex_attention(q, k, v, **kwargs)
    )


@pytest.mark.parametrize("kernel", ["sdpa", "flex_attention"])
def test_attention_kernels_agree_with_eager(kernel, uncompiled_flex):
    """Every kernel gives eager's outputs (padding masks included); only eager returns the weights."""
    eager, other, inputs = _models("eager"), _models(kernel), _inputs()
    video_tokens = torch.randn(2, 12, WIDTH)
    video_mask = torch.ones(2, 12, dtype=torch.long)
    video_mask[1, 8:] = 0
    with torch.no_grad():
        for name in ("vision", "text", "model"):
            reference = _call(name, eager[name], inputs, output_hidden_states=True, output_attentions=True)
            result = _call(name, other[name], inputs, output_hidden_states=True)
            torch.testing.assert_close(result.to_tuple()[0], reference.to_tuple()[0], rtol=1e-4, atol=1e-5)
        fused = [
            models["model"].fuse(
                models["model"].get_text_features(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state,
                inputs["attention_mask"], video_tokens, video_mask,
            ).last_hidden_state
            for models in (eager, other)
        ]
    torch.testing.assert_close(fused[1][inputs["attention_mask"].bool()], fused[0][inputs["attention_mask"].bool()],
                               rtol=1e-4, atol=1e-5)
    assert reference.vision_model_output.attentions and len(reference.text_model_output.attentions) == 2


def test_return_loss_false_computes_no_loss_term(monkeypatch):
    config = tiny_config()
    model = InstAPForPreTraining(config).train()
    calls = []
    import modeling_instap.modeling_instap as module

    for name in ("contrastive_loss", "matching_loss", "mlm_loss", "reconstruction_loss"):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    out = model(**make_batch(config), return_loss=False)
    assert calls == [] and out.loss is None and out.logits_per_video is not None
    model(**make_batch(config))
    assert {"contrastive_loss", "matching_loss", "mlm_loss", "reconstruction_loss"} <= set(calls)


def test_pretraining_output_is_a_tuple_with_return_dict_false():
    config = tiny_config(deterministic=True)
    model = InstAPForPreTraining(config).eval()
    batch = make_batch(config)
    torch.manual_seed(3)
    as_dict = model(**batch)
    torch.manual_seed(3)
    as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)


def test_task_heads_return_tuples_with_return_dict_false():
    from modeling_instap import InstAPForGrounding, InstAPForMaskedVideoModeling

    config = tiny_config(deterministic=True)
    inputs = _inputs()
    grounding = InstAPForGrounding(config).eval()
    with torch.no_grad():
        as_dict = grounding(**inputs)
        as_tuple = grounding(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.pred_boxes)
    stage1 = InstAPForMaskedVideoModeling(config).eval()
    torch.manual_seed(0)
    loss = stage1(inputs["pixel_values"]).loss
    torch.manual_seed(0)
    as_tuple = stage1(inputs["pixel_values"], return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], loss)


def test_text_config_with_special_tokens_outside_the_vocabulary_warns_not_raises(caplog):
    """A config rebuilt for a small vocabulary keeps BERT's special ids (101-103): transformers only warns there."""
    import logging

    from modeling_instap import InstAPTextConfig

    with caplog.at_level(logging.WARNING):
        config = InstAPTextConfig(vocab_size=100, pad_token_id=100)
    assert config.sep_token_id == 102
    assert "sep_token_id=102" in caplog.text and "pad_token_id=100" in caplog.text
    model = InstAPTextModel(config)  # builds: the [PAD] row is only zeroed when the id is a row of the table
    assert model.embeddings.word_embeddings.padding_idx is None
