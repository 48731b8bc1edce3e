"""Initialise InstAP parts from Hugging Face checkpoints, as UMT does before its stage 2 (docs/method.md §1, §7).

- [`load_text_from_bert`]: a `BertForMaskedLM` / `BertForPreTraining` (or a bare `BertModel`) onto the text + fusion
  encoder `instap.text_model` and, when both sides have one, the MLM head `mlm_head`. Every BERT layer maps onto the
  layer of the same index: layers `[0, fusion_layer)` form the text encoder, the upper layers keep BERT's
  self-attention and FFN in the fusion encoder. Their cross-attention (`crossattention.*`) has no BERT counterpart
  and keeps its fresh initialisation, as in UMT (`xbert` loaded with `strict=False`); the report lists those keys.
  BERT's pooler and next-sentence head have no InstAP counterpart and are reported as unused.
- [`load_teacher_from_clip`]: a `CLIPVisionModelWithProjection`, `CLIPModel` or `CLIPVisionModel` onto the frozen
  teacher `distillation.teacher` (a `CLIPVisionModelWithProjection`, so the names are the same). The teacher config
  must match the checkpoint's (sizes, patch, image size, activation, projection), otherwise a `ValueError` names every
  difference. A `CLIPVisionModel` has no projection; it loads only with `strict=False` (the projection stays fresh).

Both take a model instance or a folder / Hub id (loaded with `from_pretrained`), and both return an [`InitReport`].
The BERT rename table is the one the UMT converter uses (`convert_umt_to_instap.BERT_RENAMES`).

Example:

    model = InstAPForPreTraining(InstAPConfig.from_preset("instap-l"))
    load_text_from_bert(model, "google-bert/bert-large-uncased")
    load_teacher_from_clip(model, "openai/clip-vit-large-patch14")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import (
    AutoConfig,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    PreTrainedModel,
)

from .modeling_instap import InstAPMLMHead, InstAPTeacherDistillation, InstAPTextModel
from .weight_mapping import BERT_IGNORED_KEYS, BERT_RENAMES, ConversionReport, apply_rename_tables

# BertConfig field -> InstAPTextConfig field (same names); all must agree for the weights to mean the same thing.
BERT_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
)
# CLIPVisionConfig fields the teacher config must share with the checkpoint.
CLIP_CONFIG_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
)
# Source keys with no InstAP counterpart: reported, never an error.
BERT_UNUSED_KEYS = ("bert.pooler.", "cls.seq_relationship.")
_BERT_MLM_ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining", "BertLMHeadModel")


@dataclass
class InitReport:
    """Keys of the InstAP model that were loaded or left as they were, and source keys that were not used."""

    loaded: list[str] = field(default_factory=list)
    left_as_is: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def _find_module(model: nn.Module, cls: type) -> tuple[str, nn.Module] | None:
    for name, module in model.named_modules():
        if isinstance(module, cls):
            return name, module
    return None


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


def _compare_configs(ours, theirs, names, what: str, extra: dict | None = None) -> None:
    problems = [
        f"{name}: {what} config {getattr(ours, name, None)!r}, checkpoint {getattr(theirs, name, None)!r}"
        for name in names
        if getattr(ours, name, None) != getattr(theirs, name, None)
    ]
    for name, (mine, other) in (extra or {}).items():
        if mine != other:
            problems.append(f"{name}: {what} config {mine!r}, checkpoint {other!r}")
    if problems:
        raise ValueError(f"The checkpoint does not match the {what} config:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------------------------------------
# BERT -> text / fusion encoder
# --------------------------------------------------------------------------------------------------------------------


def _load_bert(source: str | os.PathLike | PreTrainedModel) -> PreTrainedModel:
    if isinstance(source, PreTrainedModel):
        return source
    config = AutoConfig.from_pretrained(source)
    if not isinstance(config, BertConfig):
        raise ValueError(f"{source} is a {type(config).__name__}, not a BERT checkpoint.")
    has_mlm = any(arch in _BERT_MLM_ARCHITECTURES for arch in (config.architectures or []))
    return (BertForMaskedLM if has_mlm else BertModel).from_pretrained(source)


def _bert_state_dict(bert: PreTrainedModel) -> dict[str, torch.Tensor]:
    """Keys in the `BertForMaskedLM` layout (`bert.*`, `cls.*`) whatever the BERT class."""
    state_dict = bert.state_dict()
    if isinstance(bert, BertModel):
        return {f"bert.{key}": value for key, value in state_dict.items()}
    return dict(state_dict)


def load_text_from_bert(
    model: nn.Module, bert: str | os.PathLike | PreTrainedModel, *, strict: bool = True
) -> InitReport:
    """Load a BERT checkpoint into the InstAP text + fusion encoder (and MLM head) of `model`.

    Args:
        model: any InstAP model holding an `InstAPTextModel` (`InstAPForPreTraining`, `InstAPModel`, ...).
        bert: a `BertForMaskedLM`/`BertForPreTraining`/`BertModel` instance, folder or Hub id.
        strict: raise if a BERT key has no InstAP counterpart (other than the pooler and NSP head) or an InstAP key
            other than the fusion layers' cross-attention (and the MLM head, for a BERT without one) stays as is.

    Returns:
        [`InitReport`]; `left_as_is` lists the fusion layers' `crossattention.*` keys.
    """
    found = _find_module(model, InstAPTextModel)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no InstAPTextModel to load BERT into.")
    text_name, text_model = found
    mlm = _find_module(model, InstAPMLMHead)
    bert = _load_bert(bert)
    _compare_configs(text_model.config, bert.config, BERT_CONFIG_FIELDS, "InstAP text")
    position_type = getattr(bert.config, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"Only absolute BERT position embeddings map onto InstAP, got {position_type!r}.")

    source = _bert_state_dict(bert)
    report = InitReport()
    report.unused = sorted(k for k in source if k.startswith(BERT_UNUSED_KEYS) or (mlm is None and k.startswith("cls.")))
    source = {k: v for k, v in source.items() if k not in report.unused}
    prefixes = {"text": _prefix(text_name), "mlm": _prefix(mlm[0]) if mlm else ""}
    renames = ConversionReport(stage=2)
    converted = apply_rename_tables(source, [("", BERT_RENAMES, BERT_IGNORED_KEYS)], prefixes, renames)
    if renames.conflicts or (strict and renames.unexpected):
        raise ValueError(f"BERT keys that do not map: conflicts {renames.conflicts}, unmapped {renames.unexpected}.")
    report.unused += renames.unexpected

    target = model.state_dict()
    decoder = f"{prefixes['mlm']}decoder.weight"
    words = f"{prefixes['text']}embeddings.word_embeddings.weight"
    tied = mlm is not None and mlm[1].decoder.weight is text_model.embeddings.word_embeddings.weight
    if tied and decoder in converted:
        if not torch.equal(converted[decoder], converted[words]):
            raise ValueError("The BERT MLM decoder is not tied to its word embeddings, but the InstAP one is.")
        del converted[decoder]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(target[k].shape)}"
        for k, v in converted.items()
        if k in target and v.shape != target[k].shape
    ]
    if mismatched:
        raise ValueError("BERT tensors of the wrong shape:\n  " + "\n  ".join(mismatched))
    model.load_state_dict(converted, strict=False)
    report.loaded = sorted(converted)

    scope = [prefixes["text"]] + ([prefixes["mlm"]] if mlm else [])
    ours = [k for k in target if k.startswith(tuple(scope)) and not (tied and k == decoder)]
    report.left_as_is = sorted(k for k in ours if k not in converted)
    # Fresh by design: the fusion layers' cross-attention, and the MLM head when the BERT has none.
    mlm_stays_fresh = mlm is not None and not any(k.startswith("cls.predictions.") for k in source)
    surprising = [
        k
        for k in report.left_as_is
        if ".crossattention." not in k and not (mlm_stays_fresh and k.startswith(prefixes["mlm"]))
    ]
    if strict and surprising:
        raise ValueError(f"These InstAP text keys were not in the BERT checkpoint: {surprising}.")
    return report


# --------------------------------------------------------------------------------------------------------------------
# CLIP -> teacher
# --------------------------------------------------------------------------------------------------------------------


def _clip_class(config) -> type[PreTrainedModel]:
    if config.model_type == "clip":
        return CLIPModel
    if config.model_type == "clip_vision_model":
        with_projection = "CLIPVisionModelWithProjection" in (config.architectures or [])
        return CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    raise ValueError(f"Not a CLIP checkpoint: model_type {config.model_type!r}.")


def clip_vision_config(source: str | os.PathLike | PreTrainedModel) -> tuple[CLIPVisionConfig, int | None]:
    """The vision config of a CLIP checkpoint and its projection size (`None` for a `CLIPVisionModel`)."""
    if isinstance(source, PreTrainedModel):
        config, cls = source.config, type(source)
    else:
        config = AutoConfig.from_pretrained(source)
        cls = _clip_class(config)
    if cls is CLIPModel:
        return config.vision_config, config.projection_dim
    return config, (config.projection_dim if cls is CLIPVisionModelWithProjection else None)


def load_teacher_from_clip(
    model: nn.Module, clip: str | os.PathLike | PreTrainedModel, *, strict: bool = True
) -> InitReport:
    """Load a CLIP vision tower (+ projection) into the frozen teacher of `model` (`distillation.teacher`).

    Args:
        model: an InstAP model with a teacher (`InstAPForPreTraining`/`InstAPForMaskedVideoModeling` whose config
            has a `teacher_config`).
        clip: a `CLIPVisionModelWithProjection`, `CLIPModel` or `CLIPVisionModel` instance, folder or Hub id.
        strict: refuse a checkpoint without a visual projection (`CLIPVisionModel`).
    """
    found = _find_module(model, InstAPTeacherDistillation)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no teacher (its config has no teacher_config).")
    teacher_prefix = _prefix(found[0]) + "teacher."
    teacher = found[1].teacher
    if not isinstance(clip, PreTrainedModel):
        clip = _clip_class(AutoConfig.from_pretrained(clip)).from_pretrained(clip)
    vision_config, projection_dim = clip_vision_config(clip)
    extra = {} if projection_dim is None else {"projection_dim": (teacher.config.projection_dim, projection_dim)}
    _compare_configs(teacher.config, vision_config, CLIP_CONFIG_FIELDS, "InstAP teacher", extra)
    if projection_dim is None and strict:
        raise ValueError(
            f"{type(clip).__name__} has no visual projection, which the teacher's targets need: pass a "
            "CLIPVisionModelWithProjection or CLIPModel checkpoint (or strict=False to keep a fresh projection)."
        )

    source = clip.state_dict()
    if isinstance(clip, CLIPVisionModel):  # the bare tower, without the `vision_model.` level (transformers 5)
        source = {f"vision_model.{k}": v for k, v in source.items()}
    ours = teacher.state_dict()
    report = InitReport()
    report.unused = sorted(k for k in source if k not in ours)
    weights = {k: v for k, v in source.items() if k in ours}
    teacher.load_state_dict(weights, strict=False)
    report.loaded = sorted(teacher_prefix + k for k in weights)
    report.left_as_is = sorted(teacher_prefix + k for k in ours if k not in weights)
    return report


__all__ = ["InitReport", "clip_vision_config", "load_teacher_from_clip", "load_text_from_bert"]
