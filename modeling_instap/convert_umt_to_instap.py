"""Convert UMT ("Unmasked Teacher") checkpoints into InstAP folders (`config.json` + `model.safetensors`).

Two source layouts (docs/method.md §7):

- **stage 1** (`single_modality`, e.g. `l16_ptk710_f8_res224.pth`): `encoder.*` (the video ViT) and `clip_decoder.*`
  (the per-layer distillation heads). The CLIP teacher is not in these files: pass it with `--teacher` (UMT's
  `vit_l14.pth` in the OpenAI layout, a full OpenAI CLIP state dict with `visual.*` keys, or a Hugging Face CLIP
  folder / Hub id). Output: an [`InstAPForMaskedVideoModeling`] folder.
- **stage 2** (`multi_modality`, e.g. `l16_25m.pth`): `vision_encoder.{encoder,clip_decoder,pool_norm}.*`,
  `clip_teacher.*` (OpenAI CLIP visual layout), `text_encoder.bert.*` and `text_encoder.cls.predictions.*` (BERT with
  cross-attention in the fusion layers), `vision_proj`, `text_proj`, `temp` (τ itself, not its log), `itm_head`.
  Output: an [`InstAPForPreTraining`] folder.

Files may be wrapped (`{"model": …}`, `{"module": …}` or `{"state_dict": …}`) or raw, keys may carry `module.`, and
`.safetensors` files are read too. Pickles are only ever read with `torch.load(weights_only=True)`: non-tensor
objects of classes outside the weights-only allowlist (UMT saves an `argparse.Namespace` or an `EasyDict` config next
to the weights) are rebuilt as inert `OrderedDict` placeholders, by name, without importing their code.

What the rename tables do beyond renaming:

- UMT's fused `attn.qkv.weight` is split into `q_proj`/`k_proj`/`v_proj` (rows `[q; k; v]`, heads contiguous inside
  each part, as `qkv.reshape(B, N, 3, heads, head_dim)` reads them). `q_bias`/`v_bias` become the q/v biases; the key
  bias is implicitly zero and our `k_proj` has none. A timm-style fused `qkv.bias` is accepted when its key third is
  exactly zero, and refused otherwise.
- OpenAI CLIP `attn.in_proj_weight`/`in_proj_bias` are split the same way; `c_fc`/`c_proj` are `fc1`/`fc2`;
  `ln_1`/`ln_2`/`ln_pre`/`ln_post` are the four LayerNorms; `conv1` is squeezed to a `Conv2d` kernel when UMT
  inflated it to `(1, p, p)`; `proj` (`[width, out]`, used as `x @ proj`) is transposed into
  `visual_projection.weight` (`[out, width]`).
- `positional_embedding` keeps its grid when the teacher config was inferred from the checkpoint; when a `--preset`,
  `--config` or `--teacher-image-size` fixes a different teacher `image_size`, the patch part is resized bicubically
  (`align_corners=False`, as UMT and `CLIPVisionEmbeddings.interpolate_pos_encoding` do), e.g. 257 -> 197 positions
  for L/14 at 224 vs 196.
- `temp` (0-dim) becomes `instap.temperature`. The MLM decoder is tied to the word embeddings: the converter checks
  the checkpoint's `cls.predictions.decoder.weight` equals `word_embeddings` (and `decoder.bias` equals `bias`).

Keys that must be absent from a UMT file and are left freshly initialised (listed in the report, never an error):
`INSTAP_ONLY_KEYS` — the instance attention pool `instap.attention_pool.*` and `instap.instance_temperature`
(initialised to `config.instance_temperature_init`); for stage 1 also `vision_model.pool_layernorm.*` (UMT builds its
`pool_norm` only in stage 2, as an identity LayerNorm). Every other parameter of the InstAP model that the checkpoint
does not provide is *missing*, and every checkpoint key no rule reads is *unexpected*; either makes the conversion fail
with the full list, unless `--allow-missing GLOB...` (InstAP keys) / `--allow-unexpected GLOB...` (checkpoint keys,
after unwrapping and `module.` stripping) names them. Ignored without a word: the persistent BERT buffers
`embeddings.position_ids`/`embeddings.token_type_ids` of UMT's `xbert`.

Sizes come from tensor shapes: widths, depths, MLP sizes, patch and tubelet sizes, vocabulary, fusion layer, the
number of distillation heads K, projection sizes and the teacher's positional grid. Head counts cannot be read from
shapes: without `--preset`/`--config`, the first preset whose shapes all match is taken (`instap-l` for UMT-L,
`instap-b` for UMT-B); when none fits, `--config` is required (the head counts are not in the shapes).

Usage:

    python -m modeling_instap.convert_umt_to_instap --checkpoint l16_25m.pth --output-dir instap-l-from-umt
    python -m modeling_instap.convert_umt_to_instap --checkpoint l16_ptk710_f8_res224.pth \
        --teacher vit_l14.pth --output-dir instap-l-stage1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping

import torch

from .configuration_instap import PRESETS, InstAPConfig
from .modeling_instap import InstAPForMaskedVideoModeling, InstAPForPreTraining, InstAPPreTrainedModel
from .weight_mapping import (
    INSTAP_ONLY_KEYS,
    STAGE_GROUPS,
    TARGET_PREFIXES,
    ConversionError,
    ConversionReport,
    _matches_any,
    apply_rename_tables,
    detect_stage,
    load_state_dict_file,
    normalise_text_keys,
    openai_visual_state_dict,
    resize_position_table,
    unwrap_state_dict,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Configuration: inferred from shapes, or a preset / config checked against them
# --------------------------------------------------------------------------------------------------------------------


def _count_indexed(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for key in state_dict if (m := regex.match(key))}
    if indices and indices != set(range(max(indices) + 1)):
        raise ConversionError(f"Layer indices of {pattern!r} are not contiguous from 0: {sorted(indices)}.")
    return len(indices)


def infer_fields(state_dict: Mapping[str, torch.Tensor], stage: int) -> dict[str, dict]:
    """Configuration fields readable from shapes: {"vision": {...}, "text": {...}, "teacher": {...}, "top": {...}}.

    `teacher.image_size` is the grid of the checkpoint's positional table times the patch size.
    """
    vision_prefix = "" if stage == 1 else "vision_encoder."
    sd = state_dict
    fields: dict[str, dict] = {"vision": {}, "text": {}, "teacher": {}, "top": {}}
    patch = sd.get(f"{vision_prefix}encoder.patch_embed.proj.weight")
    if patch is not None:
        if patch.ndim != 5:
            raise ConversionError(f"{vision_prefix}encoder.patch_embed.proj.weight must be a Conv3d kernel, got {tuple(patch.shape)}.")
        fields["vision"].update(
            hidden_size=patch.shape[0], num_channels=patch.shape[1], tubelet_size=patch.shape[2], patch_size=patch.shape[3]
        )
    fields["vision"]["num_hidden_layers"] = _count_indexed(sd, re.escape(vision_prefix) + r"encoder\.blocks\.(\d+)\.")
    fc1 = sd.get(f"{vision_prefix}encoder.blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        fields["vision"]["intermediate_size"] = fc1.shape[0]
    num_heads = _count_indexed(sd, re.escape(vision_prefix) + r"clip_decoder\.(\d+)\.")
    if num_heads:
        fields["top"]["teacher_num_layers"] = num_heads
        fields["teacher"]["projection_dim"] = sd[f"{vision_prefix}clip_decoder.0.head.weight"].shape[0]

    teacher = {k[len("clip_teacher.") :]: v for k, v in sd.items() if k.startswith("clip_teacher.")}
    if teacher:
        conv = teacher.get("conv1.weight")
        if conv is not None:
            fields["teacher"].update(hidden_size=conv.shape[0], num_channels=conv.shape[1], patch_size=conv.shape[-1])
        fields["teacher"]["num_hidden_layers"] = _count_indexed(teacher, r"transformer\.resblocks\.(\d+)\.")
        c_fc = teacher.get("transformer.resblocks.0.mlp.c_fc.weight")
        if c_fc is not None:
            fields["teacher"]["intermediate_size"] = c_fc.shape[0]
        if "proj" in teacher:
            fields["teacher"]["projection_dim"] = teacher["proj"].shape[1]
        positions = teacher.get("positional_embedding")
        if positions is not None and conv is not None:
            grid = math.isqrt(positions.shape[0] - 1)
            fields["teacher"]["image_size"] = grid * conv.shape[-1]

    if stage == 2:
        bert = "text_encoder.bert."
        words = sd.get(f"{bert}embeddings.word_embeddings.weight")
        if words is not None:
            fields["text"].update(vocab_size=words.shape[0], hidden_size=words.shape[1])
        for name, dim_field in (("position_embeddings", "max_position_embeddings"), ("token_type_embeddings", "type_vocab_size")):
            table = sd.get(f"{bert}embeddings.{name}.weight")
            if table is not None:
                fields["text"][dim_field] = table.shape[0]
        fields["text"]["num_hidden_layers"] = _count_indexed(sd, re.escape(bert) + r"encoder\.layer\.(\d+)\.")
        inter = sd.get(f"{bert}encoder.layer.0.intermediate.dense.weight")
        if inter is not None:
            fields["text"]["intermediate_size"] = inter.shape[0]
        cross = re.compile(re.escape(bert) + r"encoder\.layer\.(\d+)\.crossattention\.")
        fusion = sorted({int(m.group(1)) for key in sd if (m := cross.match(key))})
        if fusion:
            fields["text"]["fusion_layer"] = fusion[0]
        if "vision_proj.weight" in sd:
            fields["top"]["projection_dim"] = sd["vision_proj.weight"].shape[0]
    return {group: {k: int(v) for k, v in values.items() if v} for group, values in fields.items()}


_SUB_CONFIGS = {"vision": "vision_config", "text": "text_config", "teacher": "teacher_config"}


def config_mismatches(config: InstAPConfig, fields: Mapping[str, Mapping[str, int]], skip=("image_size",)) -> list[str]:
    """`sub_config.field: checkpoint X, config Y` for every inferred field the configuration disagrees with."""
    problems = []
    for group, values in fields.items():
        if group == "top":
            target, name_prefix = config, ""
        else:
            target, name_prefix = getattr(config, _SUB_CONFIGS[group]), _SUB_CONFIGS[group] + "."
        for name, value in values.items():
            if group == "teacher" and name in skip:
                continue
            if target is None:
                problems.append(f"{name_prefix or 'config.'}{name}: checkpoint {value}, config has no teacher")
                continue
            if getattr(target, name, None) != value:
                problems.append(f"{name_prefix}{name}: checkpoint {value}, config {getattr(target, name, None)}")
    return problems


def _no_preset_error(fields: Mapping[str, Mapping[str, int]]) -> ConversionError:
    """No preset fits: the head counts are not in the tensor shapes (q/k/v are `(width, width)` whatever the split), so
    guessing one (64 per head, say) would convert silently into a different model. Ask for the configuration."""
    widths = ", ".join(
        f"{part} width {values['hidden_size']}" for part, values in fields.items() if values.get("hidden_size")
    )
    return ConversionError(
        f"No InstAP preset matches the checkpoint's shapes ({widths}), and the shapes do not determine the number of "
        "attention heads: pass --config (a config.json with each tower's num_attention_heads) or --preset."
    )


def build_config(
    fields: Mapping[str, Mapping[str, int]],
    preset: str | None = None,
    config: InstAPConfig | str | os.PathLike | None = None,
    teacher_image_size: int | None = None,
) -> tuple[InstAPConfig, str | None]:
    """The InstAP configuration to convert into, and the preset it came from (if any).

    With `config` or `preset`, that configuration must agree with every shape-derived field. Without, the first
    preset that agrees is used, with the teacher `image_size` taken from the checkpoint's position table so that no
    resampling happens; failing that, a configuration is built from the shapes.
    """
    if config is not None:
        if not isinstance(config, InstAPConfig):
            config = InstAPConfig.from_pretrained(config)
        chosen, source = config, None
    elif preset is not None:
        chosen, source = InstAPConfig.from_preset(preset), preset
    else:
        chosen = source = None
        for name in PRESETS:
            candidate = InstAPConfig.from_preset(name)
            if not config_mismatches(candidate, fields):
                chosen, source = candidate, name
                break
        if chosen is None:
            raise _no_preset_error(fields)
        checkpoint_size = fields["teacher"].get("image_size")
        if teacher_image_size is None and checkpoint_size and chosen.teacher_config is not None:
            teacher_image_size = checkpoint_size
    problems = config_mismatches(chosen, fields)
    if problems:
        what = f"preset {preset!r}" if preset else "the --config configuration"
        raise ConversionError(f"The checkpoint does not fit {what}:\n  " + "\n  ".join(problems))
    if teacher_image_size is not None:
        if chosen.teacher_config is None:
            raise ConversionError("A teacher image size was given but the configuration has no teacher.")
        chosen.teacher_config.image_size = int(teacher_image_size)
    chosen.validate_values()
    return chosen, source


# --------------------------------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------------------------------


def fit_to_model(
    converted: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], report: ConversionReport
) -> dict[str, torch.Tensor]:
    """Resize position tables to the model's, and list any other shape disagreement."""
    out = {}
    for key, tensor in converted.items():
        if key not in expected:
            report.not_in_model[report.converted.get(key, key)] = key
            continue
        target_shape = expected[key].shape
        if tensor.shape != target_shape and key.endswith("embeddings.position_embedding.weight") and tensor.ndim == 2:
            if tensor.shape[1] == target_shape[1]:
                report.resized.append(f"{key}: {tensor.shape[0]} -> {target_shape[0]} positions")
                logger.warning(
                    "Resampling the teacher position table %d -> %d positions (the config's teacher image_size); the "
                    "teacher resamples again at run time if teacher_image_size differs. Leave out --preset/--config "
                    "or pass --teacher-image-size to keep the checkpoint's grid.",
                    tensor.shape[0],
                    target_shape[0],
                )
                tensor = resize_position_table(tensor, target_shape[0])
        if tensor.shape != target_shape:
            report.shape_mismatches.append(
                f"{key} (from {report.converted.get(key, '?')}): checkpoint {tuple(tensor.shape)}, model {tuple(target_shape)}"
            )
            continue
        out[key] = tensor
    return out


def _tied_decoder_check(converted: dict[str, torch.Tensor], config: InstAPConfig, report: ConversionReport):
    """The MLM decoder shares the word embeddings' storage when tied: the checkpoint's copy must equal them."""
    decoder, words = "mlm_head.decoder.weight", "instap.text_model.embeddings.word_embeddings.weight"
    if not config.tie_word_embeddings or decoder not in converted or words not in converted:
        return
    if converted[decoder].shape != converted[words].shape or not torch.equal(converted[decoder], converted[words]):
        report.conflicts.append(
            f"{report.converted[decoder]} differs from {report.converted[words]}, but the InstAP config ties the MLM "
            "decoder to the word embeddings (set tie_word_embeddings=False in --config to keep both)"
        )
    else:
        report.ignored.append(report.converted.pop(decoder))
        del converted[decoder]


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: InstAPPreTrainedModel,
    stage: int,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
    report: ConversionReport | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename and reshape a UMT state dict onto `model`'s keys; raise `ConversionError` on any unaccounted key."""
    report = report or ConversionReport(stage=stage)
    allow_missing, allow_unexpected = list(allow_missing), list(allow_unexpected)
    converted = apply_rename_tables(state_dict, STAGE_GROUPS[stage], TARGET_PREFIXES[stage], report)
    if stage == 2:
        _tied_decoder_check(converted, model.config, report)
    expected = model.state_dict()
    converted = fit_to_model(converted, expected, report)

    tied = {"mlm_head.decoder.weight"} if stage == 2 and model.config.tie_word_embeddings else set()
    for key in sorted(expected):
        if key in converted or key in tied:
            continue
        if _matches_any(key, INSTAP_ONLY_KEYS[stage]):
            report.instap_only.append(key)
        elif _matches_any(key, allow_missing):
            report.allowed_missing.append(key)
        else:
            report.missing.append(key)
    unread = report.unexpected + list(report.not_in_model)
    report.unexpected = [key for key in report.unexpected if not _matches_any(key, allow_unexpected)]
    report.not_in_model = {
        key: target for key, target in report.not_in_model.items() if not _matches_any(key, allow_unexpected)
    }
    report.allowed_unexpected += [key for key in unread if key not in report.unexpected and key not in report.not_in_model]
    report.check()
    return converted, report


def _load_teacher_source(teacher: str | os.PathLike) -> tuple[dict[str, torch.Tensor] | None, str | None, list[str]]:
    """A `--teacher` file in the OpenAI layout -> its visual keys under `clip_teacher.`; a folder / Hub id -> (None, id)."""
    path = os.fspath(teacher)
    if os.path.isfile(path):
        visual, dropped = openai_visual_state_dict(load_state_dict_file(path))
        return {f"clip_teacher.{k}": v for k, v in visual.items()}, None, dropped
    return None, path, []


def _hf_teacher_fields(clip_source: str) -> dict[str, int]:
    from .pretrained_init import clip_vision_config

    vision, projection_dim = clip_vision_config(clip_source)
    return {
        "hidden_size": vision.hidden_size,
        "num_hidden_layers": vision.num_hidden_layers,
        "intermediate_size": vision.intermediate_size,
        "patch_size": vision.patch_size,
        "num_channels": vision.num_channels,
        "image_size": vision.image_size,
        **({"projection_dim": projection_dim} if projection_dim else {}),
    }


def convert_umt_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    output_dir: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    config: InstAPConfig | str | os.PathLike | None = None,
    stage: int | None = None,
    teacher: str | os.PathLike | None = None,
    teacher_image_size: int | None = None,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
) -> tuple[InstAPPreTrainedModel, ConversionReport]:
    """Convert a UMT checkpoint (path or state dict) into an InstAP model, saved to `output_dir` when given.

    Returns the model (stage 1: [`InstAPForMaskedVideoModeling`], stage 2: [`InstAPForPreTraining`]) and the report.
    """
    if preset is not None and config is not None:
        raise ValueError("Pass either preset or config, not both.")
    if isinstance(checkpoint, Mapping):
        state_dict = unwrap_state_dict(checkpoint)
    else:
        state_dict = load_state_dict_file(os.fspath(checkpoint))
    state_dict = normalise_text_keys(state_dict)
    stage = stage or detect_stage(state_dict)
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}.")

    dropped: list[str] = []
    hf_teacher = None
    if teacher is not None:
        if any(key.startswith("clip_teacher.") for key in state_dict):
            raise ConversionError("The checkpoint already holds a teacher (clip_teacher.*); do not pass --teacher.")
        teacher_state, hf_teacher, dropped = _load_teacher_source(teacher)
        if teacher_state is not None:
            state_dict = {**state_dict, **teacher_state}

    fields = infer_fields(state_dict, stage)
    if hf_teacher is not None:
        fields["teacher"].update(_hf_teacher_fields(hf_teacher))
    instap_config, source_preset = build_config(fields, preset=preset, config=config, teacher_image_size=teacher_image_size)
    if hf_teacher is not None and fields["teacher"].get("image_size") != instap_config.teacher_config.image_size:
        raise ConversionError(
            f"The Hugging Face teacher {hf_teacher} is for {fields['teacher']['image_size']}px inputs but the config's "
            f"teacher image_size is {instap_config.teacher_config.image_size}."
        )

    model_class = InstAPForMaskedVideoModeling if stage == 1 else InstAPForPreTraining
    model = model_class(instap_config)
    report = ConversionReport(stage=stage, preset=source_preset, dropped=dropped)
    allow_missing = list(allow_missing)
    if hf_teacher is not None:
        allow_missing.append("distillation.teacher.*")  # loaded below, with its own checks
    converted, report = convert_state_dict(state_dict, model, stage, allow_missing, allow_unexpected, report)
    model.load_state_dict(converted, strict=False)
    if hf_teacher is not None:
        from .pretrained_init import load_teacher_from_clip

        load_teacher_from_clip(model, hf_teacher)
        report.allowed_missing = [k for k in report.allowed_missing if not k.startswith("distillation.teacher.")]
    if output_dir is not None:
        model.save_pretrained(output_dir)
        with open(os.path.join(output_dir, "conversion_report.json"), "w") as handle:
            json.dump(_report_dict(report), handle, indent=2)
    return model, report


def _report_dict(report: ConversionReport) -> dict:
    out = {k: v for k, v in report.__dict__.items() if k != "converted"}
    out["converted"] = {target: source for target, source in sorted(report.converted.items())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert a UMT stage-1 or stage-2 checkpoint into an InstAP folder (config + safetensors).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "InstAP-only parameters (instap.attention_pool.*, instap.instance_temperature; stage 1: "
            "vision_model.pool_layernorm.*) stay freshly initialised. Any other missing or unknown key fails the "
            "conversion unless --allow-missing / --allow-unexpected names it (shell globs, quote them)."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="UMT .pth/.pt/.bin (read weights-only) or .safetensors")
    parser.add_argument("--output-dir", required=True, help="folder to write the InstAP model to")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", choices=PRESETS, help="InstAP preset (default: inferred from tensor shapes)")
    group.add_argument("--config", help="an InstAP config.json or model folder to convert into")
    parser.add_argument("--stage", type=int, choices=(1, 2), help="checkpoint stage (default: from its keys)")
    parser.add_argument(
        "--teacher",
        help="stage 1: the CLIP teacher, an OpenAI-layout file (UMT's vit_l14.pth, or a full CLIP state dict with "
        "visual.* keys) or a Hugging Face CLIP folder / Hub id",
    )
    parser.add_argument("--teacher-image-size", type=int, help="teacher image_size; resamples its position table")
    parser.add_argument("--allow-missing", nargs="+", default=[], metavar="GLOB", help="InstAP keys that may stay fresh")
    parser.add_argument("--allow-unexpected", nargs="+", default=[], metavar="GLOB", help="checkpoint keys to drop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _, report = convert_umt_checkpoint(
            args.checkpoint,
            args.output_dir,
            preset=args.preset,
            config=args.config,
            stage=args.stage,
            teacher=args.teacher,
            teacher_image_size=args.teacher_image_size,
            allow_missing=args.allow_missing,
            allow_unexpected=args.allow_unexpected,
        )
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"Saved to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
