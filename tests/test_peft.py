"""LoRA on InstAP (`instap_train.peft_utils`): what is adapted, what trains, and the merged checkpoint."""

from __future__ import annotations

import os
import re

import pytest
import torch
from helpers_training import SyntheticAlignDataset, align_training_arguments, collate_align_batch, tiny_config
from safetensors.torch import load_file

from instap_train import InstAPAlignTrainer
from instap_train.peft_utils import apply_lora, lora_target_regex, merge_and_save
from modeling_instap import InstAPForPreTraining, InstAPModel

VISION_LAYERS, TEXT_LAYERS, FUSION_FROM = 4, 4, 2  # the tiny preset


def _base_name(peft_name: str) -> str:
    """`base_model.model.instap.x.base_layer.weight` -> `instap.x.weight` (the plain model's name)."""
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer", "").replace(".modules_to_save.default", "")


def _adapted_modules(peft_model) -> list[str]:
    return [_base_name(name) for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]


@pytest.fixture
def tiny_model() -> InstAPForPreTraining:
    torch.manual_seed(0)
    return InstAPForPreTraining(tiny_config())


def test_lora_targets_the_encoders_projections_and_never_the_teacher(tiny_model):
    peft_model = apply_lora(tiny_model)
    adapted = _adapted_modules(peft_model)
    vision = [n for n in adapted if n.startswith("instap.vision_model.")]
    text = [n for n in adapted if n.startswith("instap.text_model.")]
    # 6 per ViT block; BERT: q, k, v, attention output, intermediate, output; fusion layers add 4 cross-attention.
    assert len(vision) == VISION_LAYERS * 6
    assert len(text) == TEXT_LAYERS * 6 + (TEXT_LAYERS - FUSION_FROM) * 4
    assert len(adapted) == len(vision) + len(text)
    assert not [n for n in adapted if "distillation" in n or "attention_pool" in n or "mlm_head" in n]

    trainable = {_base_name(n) for n, p in peft_model.named_parameters() if p.requires_grad}
    heads = {f"instap.{head}.{kind}" for head in ("itm_head", "visual_projection", "text_projection") for kind in
             ("weight", "bias")}
    assert heads <= trainable
    assert all("lora_" in name or name in heads for name in trainable)


def test_lora_target_choices():
    attention_only = re.compile(lora_target_regex("attention"))
    mlp_only = re.compile(lora_target_regex("mlp"))
    assert attention_only.fullmatch("instap.text_model.encoder.layer.3.crossattention.self.key")
    assert attention_only.fullmatch("vision_model.encoder.layers.0.self_attn.out_proj")  # InstAPModel naming
    assert not attention_only.fullmatch("instap.vision_model.encoder.layers.0.mlp.fc1")
    assert mlp_only.fullmatch("instap.text_model.encoder.layer.0.intermediate.dense")
    assert not mlp_only.fullmatch("instap.text_model.encoder.layer.0.attention.output.dense")
    assert not re.fullmatch(lora_target_regex(), "distillation.teacher.vision_model.encoder.layers.0.self_attn.q_proj")
    with pytest.raises(ValueError, match="target"):
        lora_target_regex("everything")

    torch.manual_seed(0)
    backbone = apply_lora(InstAPModel(tiny_config()), target="mlp", heads_to_save=None)
    adapted = _adapted_modules(backbone)
    assert len(adapted) == VISION_LAYERS * 2 + TEXT_LAYERS * 2
    assert all(not p.requires_grad for n, p in backbone.named_parameters() if "lora_" not in n)


def test_training_changes_only_lora_and_heads_then_merged_model_reloads(tiny_model, tmp_path):
    initial = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    peft_model = apply_lora(tiny_model, r=4, alpha=8)
    before = {name: tensor.clone() for name, tensor in peft_model.state_dict().items()}
    trainer = InstAPAlignTrainer(
        model=peft_model,
        args=align_training_arguments(str(tmp_path / "run"), max_steps=3),
        train_dataset=SyntheticAlignDataset(length=16),
        data_collator=collate_align_batch,
    )
    trainer.train()
    after = peft_model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # lora_B starts at 0 and moves first; every adapter must have moved after 3 steps.
    lora_names = {name for name in before if "lora_" in name}
    assert lora_names <= changed
    saved_heads = {name for name in before if ".modules_to_save." in name}
    assert saved_heads and saved_heads <= changed
    assert changed == lora_names | saved_heads
    teacher = [name for name in after if ".distillation.teacher." in name]
    assert teacher and all(torch.equal(before[name], after[name]) for name in teacher)

    merged = merge_and_save(peft_model, str(tmp_path / "merged"))
    assert type(merged) is InstAPForPreTraining
    saved_keys = load_file(os.path.join(tmp_path / "merged", "model.safetensors")).keys()
    assert not [k for k in saved_keys if "lora" in k or "base_layer" in k or "modules_to_save" in k]
    merged_state = merged.state_dict()
    assert merged_state.keys() == initial.keys()
    # Merging moved exactly the adapted weights and the heads, never the teacher.
    moved = {name for name in initial if not torch.equal(initial[name], merged_state[name])}
    assert moved and not [name for name in moved if name.startswith("distillation.")]
    assert "instap.vision_model.encoder.layers.0.self_attn.q_proj.weight" in moved
    assert "instap.itm_head.weight" in moved

    reloaded = InstAPForPreTraining.from_pretrained(str(tmp_path / "merged"))
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, merged_state[name], rtol=0, atol=0, msg=name)
    merged.eval()
    reloaded.eval()
    batch = collate_align_batch([SyntheticAlignDataset(length=4, seed=1)[i] for i in range(4)])
    with torch.no_grad():
        torch.manual_seed(0)  # the teacher-guided masks, VTM negatives and MLM masks draw from the global RNG
        merged_out = merged(**batch)
        torch.manual_seed(0)
        reloaded_out = reloaded(**batch)
        merged_video = merged.instap.get_video_features(batch["pixel_values"]).pooler_output
        reloaded_video = reloaded.instap.get_video_features(batch["pixel_values"]).pooler_output
    for name in ("loss", "loss_rec", "loss_vtc", "loss_vtm", "loss_mlm", "loss_inst_vtc", "loss_inst_vtm",
                 "loss_inst_mlm", "logits_per_video"):
        torch.testing.assert_close(reloaded_out[name], merged_out[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(reloaded_video, merged_video, rtol=0, atol=0)
