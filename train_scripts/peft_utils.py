"""LoRA for InstAP with `peft`: adapters on the video and text/fusion encoders, merged back for a plain checkpoint.

`apply_lora` targets the attention and MLP projections of the student video encoder (`vision_model`: `q_proj`,
`k_proj`, `v_proj`, `out_proj`, `fc1`, `fc2`) and of the BERT text/fusion encoder (`text_model`: `query`, `key`,
`value`, and every `dense`, cross-attention included). The module regex is anchored at the model root, so the frozen
CLIP teacher (`distillation.teacher.vision_model...`, which has the same CLIP names) is never adapted; the
instance attention pool and the distillation heads are not adapted either. The heads `itm_head`,
`visual_projection` and `text_projection` can be trained in full (`modules_to_save`).

`merge_and_save` folds the adapters into the weights and writes a checkpoint that `InstAPForPreTraining`
(or `AutoModel` with `trust_remote_code`) loads without peft.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

VISION_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
VISION_MLP = ("fc1", "fc2")
TEXT_ATTENTION = ("query", "key", "value")
DEFAULT_HEADS = ("itm_head", "visual_projection", "text_projection")
TARGETS = ("attention", "mlp", "attention+mlp")

# The backbone sits at the root (`InstAPModel`) or under `instap.` (`InstAPForPreTraining`, `InstAPForGrounding`).
_ROOT = r"(instap\.)?"
_VISION_LAYER = _ROOT + r"vision_model\.encoder\.layers\.\d+\."
_TEXT_LAYER = _ROOT + r"text_model\.encoder\.layer\.\d+\."


def lora_target_regex(target: str = "attention+mlp") -> str:
    """The `LoraConfig.target_modules` regex (peft full-matches it against each module name) for `target`.

    `"attention"`: the vision q/k/v/out projections and the text self- and cross-attention query/key/value and
    output `dense`; `"mlp"`: vision `fc1`/`fc2` and text `intermediate.dense`/`output.dense`.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}.")
    alternatives = []
    if "attention" in target:
        alternatives.append(_VISION_LAYER + r"self_attn\.(" + "|".join(VISION_ATTENTION) + ")")
        alternatives.append(
            _TEXT_LAYER + r"(attention|crossattention)\.(self\.(" + "|".join(TEXT_ATTENTION) + r")|output\.dense)"
        )
    if "mlp" in target:
        alternatives.append(_VISION_LAYER + r"mlp\.(" + "|".join(VISION_MLP) + ")")
        alternatives.append(_TEXT_LAYER + r"(intermediate|output)\.dense")
    return "(" + "|".join(alternatives) + ")"


def _backbone_prefix(model: nn.Module) -> str:
    """Module-name prefix of `InstAPModel` inside `model`: `"instap."` in the task models, `""` for the backbone."""
    return "instap." if hasattr(model, "instap") else ""


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target: str = "attention+mlp",
    heads_to_save: Sequence[str] | None = DEFAULT_HEADS,
    train_temperatures: bool = False,
):
    """Wrap an InstAP model in a `peft.PeftModel` with LoRA adapters; only adapters (and saved heads) train.

    Args:
        model: `InstAPForPreTraining`, `InstAPModel` or `InstAPForGrounding` (modified in place by peft).
        r, alpha, dropout: LoRA rank, scaling numerator (`lora_alpha`) and dropout on the adapter input.
        target: `"attention"`, `"mlp"` or `"attention+mlp"` (see `lora_target_regex`).
        heads_to_save: module names trained in full and saved beside the adapters (`modules_to_save`); `None` or
            `()` freezes the heads too.
        train_temperatures: also train τ and τ_inst (plain parameters, not modules, so not `modules_to_save`).

    Returns:
        The `PeftModel`. Train it with `InstAPAlignTrainer` as usual.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_regex(target),
        # Qualified names: peft matches `modules_to_save` by suffix, and the CLIP teacher has a `visual_projection`.
        modules_to_save=[_backbone_prefix(model) + head for head in heads_to_save] if heads_to_save else None,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    adapted = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    if not adapted:
        raise ValueError(f"No module of {type(model).__name__} matched the LoRA target {target!r}.")
    teacher_trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad and ".teacher." in name]
    if teacher_trainable or any(".distillation." in name or ".attention_pool." in name for name in adapted):
        raise RuntimeError(f"LoRA reached modules it must not adapt: {(teacher_trainable + adapted)[:3]}")
    if train_temperatures:
        for name, parameter in peft_model.named_parameters():
            if name.endswith("temperature"):
                parameter.requires_grad_(True)
    return peft_model


def merge_and_save(peft_model, out_dir: str, **save_kwargs) -> nn.Module:
    """Fold the adapters (and trained heads) into the base weights, save with `save_pretrained`, return the model.

    The returned model is the plain InstAP class again (`peft_model` is consumed: peft unloads in place), and the
    folder holds no adapter keys, so `InstAPForPreTraining.from_pretrained(out_dir)` loads it without peft.
    """
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out_dir, **save_kwargs)
    return merged


__all__ = ["DEFAULT_HEADS", "apply_lora", "lora_target_regex", "merge_and_save"]
