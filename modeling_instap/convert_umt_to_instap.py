"""Convert UMT ("Unmasked Teacher") checkpoints into InstAP folders (`config.json` + `model.safetensors`).

Two source layouts (METHOD.md §7, UMT_NOTES.md §4):

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
import collections
import fnmatch
import json
import logging
import math
import os
import pickle
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .configuration_instap import InstAPConfig
from .modeling_instap import InstAPForMaskedVideoModeling, InstAPForPreTraining, InstAPPreTrainedModel

logger = logging.getLogger(__name__)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted as asked; the message lists every offending key or field."""


# --------------------------------------------------------------------------------------------------------------------
# Rename tables: (source key regex, target key template, conversion). The regex is matched in full against a source
# key relative to its group prefix; the template is `str.format`ted with the regex groups ({0}, {1}, ...) and the
# target prefixes ({vision}, {text}, {mlm}, {teacher}, {model}); "{proj}" expands to q_proj/k_proj/v_proj for splits.
# --------------------------------------------------------------------------------------------------------------------

# UMT video ViT (`PretrainVisionTransformer`): keys relative to the module (stage 1: the file root; stage 2:
# `vision_encoder.`).
UMT_VIDEO_RENAMES: list[tuple[str, str, str]] = [
    (r"encoder\.patch_embed\.proj\.(weight|bias)", "{vision}embeddings.patch_embedding.{0}", "copy"),
    (r"encoder\.blocks\.(\d+)\.norm([12])\.(weight|bias)", "{vision}encoder.layers.{0}.layer_norm{1}.{2}", "copy"),
    (r"encoder\.blocks\.(\d+)\.attn\.qkv\.weight", "{vision}encoder.layers.{0}.self_attn.{proj}.weight", "split_qkv"),
    (r"encoder\.blocks\.(\d+)\.attn\.qkv\.bias", "{vision}encoder.layers.{0}.self_attn.{proj}.bias", "split_qkv_no_k_bias"),
    (r"encoder\.blocks\.(\d+)\.attn\.q_bias", "{vision}encoder.layers.{0}.self_attn.q_proj.bias", "copy"),
    (r"encoder\.blocks\.(\d+)\.attn\.v_bias", "{vision}encoder.layers.{0}.self_attn.v_proj.bias", "copy"),
    (r"encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", "{vision}encoder.layers.{0}.self_attn.out_proj.{1}", "copy"),
    (r"encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", "{vision}encoder.layers.{0}.mlp.{1}.{2}", "copy"),
    (r"encoder\.norm\.(weight|bias)", "{vision}post_layernorm.{0}", "copy"),
    (r"pool_norm\.(weight|bias)", "{vision}pool_layernorm.{0}", "copy"),
    (r"clip_decoder\.(\d+)\.(head|norm)\.(weight|bias)", "distillation.heads.{0}.{1}.{2}", "copy"),
]

# OpenAI CLIP visual tower (`clip.model.VisionTransformer`, UMT's `clip_teacher`) -> `CLIPVisionModelWithProjection`.
OPENAI_CLIP_VISUAL_RENAMES: list[tuple[str, str, str]] = [
    (r"conv1\.weight", "{teacher}vision_model.embeddings.patch_embedding.weight", "conv_to_2d"),
    (r"class_embedding", "{teacher}vision_model.embeddings.class_embedding", "copy"),
    (r"positional_embedding", "{teacher}vision_model.embeddings.position_embedding.weight", "position_table"),
    (r"ln_pre\.(weight|bias)", "{teacher}vision_model.pre_layrnorm.{0}", "copy"),
    (
        r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)",
        "{teacher}vision_model.encoder.layers.{0}.self_attn.{proj}.{1}",
        "split_qkv",
    ),
    (
        r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)",
        "{teacher}vision_model.encoder.layers.{0}.self_attn.out_proj.{1}",
        "copy",
    ),
    (r"transformer\.resblocks\.(\d+)\.ln_([12])\.(weight|bias)", "{teacher}vision_model.encoder.layers.{0}.layer_norm{1}.{2}", "copy"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", "{teacher}vision_model.encoder.layers.{0}.mlp.fc1.{1}", "copy"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", "{teacher}vision_model.encoder.layers.{0}.mlp.fc2.{1}", "copy"),
    (r"ln_post\.(weight|bias)", "{teacher}vision_model.post_layernorm.{0}", "copy"),
    (r"proj", "{teacher}visual_projection.weight", "transpose"),
]

# BERT (`BertForMaskedLM` of transformers, and UMT's `xbert` with cross-attention in the fusion layers): keys relative
# to the masked-LM model (`bert.*`, `cls.predictions.*`). No pooler: UMT builds BERT without one, and so do we.
BERT_RENAMES: list[tuple[str, str, str]] = [
    (r"bert\.embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)\.weight", "{text}embeddings.{0}.weight", "copy"),
    (r"bert\.embeddings\.LayerNorm\.(weight|bias)", "{text}embeddings.LayerNorm.{0}", "copy"),
    (
        r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
        "{text}encoder.layer.{0}.{1}.self.{2}.{3}",
        "copy",
    ),
    (
        r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
        "{text}encoder.layer.{0}.{1}.output.{2}.{3}",
        "copy",
    ),
    (r"bert\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", "{text}encoder.layer.{0}.intermediate.dense.{1}", "copy"),
    (r"bert\.encoder\.layer\.(\d+)\.output\.(dense|LayerNorm)\.(weight|bias)", "{text}encoder.layer.{0}.output.{1}.{2}", "copy"),
    (r"cls\.predictions\.transform\.dense\.(weight|bias)", "{mlm}dense.{0}", "copy"),
    (r"cls\.predictions\.transform\.LayerNorm\.(weight|bias)", "{mlm}LayerNorm.{0}", "copy"),
    (r"cls\.predictions\.decoder\.weight", "{mlm}decoder.weight", "copy"),
    (r"cls\.predictions\.bias", "{mlm}decoder.bias", "copy"),
    # The same tensor as `cls.predictions.bias` in BERT (tied); both map to one target and must agree.
    (r"cls\.predictions\.decoder\.bias", "{mlm}decoder.bias", "copy"),
]

# Buffers some BERT checkpoints persist (UMT's `xbert` registers `position_ids` as a persistent buffer).
BERT_IGNORED_KEYS: list[str] = [r"bert\.embeddings\.(position_ids|token_type_ids)"]

# The top-level heads of the UMT stage-2 model.
UMT_HEAD_RENAMES: list[tuple[str, str, str]] = [
    (r"vision_proj\.(weight|bias)", "{model}visual_projection.{0}", "copy"),
    (r"text_proj\.(weight|bias)", "{model}text_projection.{0}", "copy"),
    (r"itm_head\.(weight|bias)", "{model}itm_head.{0}", "copy"),
    (r"temp", "{model}temperature", "scalar"),
]

# InstAP parameters UMT does not have: left as initialised by the model, reported, never an error.
INSTAP_ONLY_KEYS: dict[int, list[str]] = {
    1: ["vision_model.pool_layernorm.*"],
    2: ["instap.attention_pool.*", "instap.instance_temperature"],
}

# Where each table applies, per stage: (source prefix, table, ignored-key regexes).
STAGE_GROUPS: dict[int, list[tuple[str, list[tuple[str, str, str]], list[str]]]] = {
    1: [("", UMT_VIDEO_RENAMES, []), ("clip_teacher.", OPENAI_CLIP_VISUAL_RENAMES, [])],
    2: [
        ("vision_encoder.", UMT_VIDEO_RENAMES, []),
        ("clip_teacher.", OPENAI_CLIP_VISUAL_RENAMES, []),
        ("text_encoder.", BERT_RENAMES, BERT_IGNORED_KEYS),
        ("", UMT_HEAD_RENAMES, []),
    ],
}

TARGET_PREFIXES: dict[int, dict[str, str]] = {
    1: {"vision": "vision_model.", "teacher": "distillation.teacher.", "text": "", "mlm": "", "model": ""},
    2: {
        "vision": "instap.vision_model.",
        "teacher": "distillation.teacher.",
        "text": "instap.text_model.",
        "mlm": "mlm_head.",
        "model": "instap.",
    },
}


# --------------------------------------------------------------------------------------------------------------------
# Reading checkpoints
# --------------------------------------------------------------------------------------------------------------------


def _torch_load_weights_only(path: str):
    """`torch.load(weights_only=True)`; unknown pickled classes become inert `OrderedDict` placeholders (by name)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not names:
            raise
        logger.info("Non-tensor objects of %s in %s are read as inert placeholders.", ", ".join(names), path)
        with torch.serialization.safe_globals([(collections.OrderedDict, name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """The model state dict inside a training checkpoint, with `module.` prefixes removed."""
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise ConversionError(f"Expected a state dict (a mapping of names to tensors), got {type(obj).__name__}.")
    state_dict = {}
    not_tensors = []
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        if not isinstance(value, torch.Tensor):
            not_tensors.append(key)
            continue
        state_dict[key] = value
    if not_tensors:
        raise ConversionError(
            f"The state dict holds non-tensor entries {sorted(not_tensors)}: is this a model state dict? "
            "(Wrapped checkpoints are read from their 'model', 'module' or 'state_dict' entry.)"
        )
    return state_dict


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Read a `.safetensors` file or a PyTorch pickle (weights only), unwrap it and strip `module.`."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return unwrap_state_dict(load_file(str(path)))
    return unwrap_state_dict(_torch_load_weights_only(str(path)))


def detect_stage(state_dict: Mapping[str, torch.Tensor]) -> int:
    """1 for a `single_modality` checkpoint (`encoder.*`), 2 for a `multi_modality` one (`vision_encoder.*`)."""
    if any(key.startswith(("vision_encoder.", "text_encoder.")) for key in state_dict):
        return 2
    if any(key.startswith(("encoder.", "clip_decoder.")) for key in state_dict):
        return 1
    sample = sorted(state_dict)[:5]
    raise ConversionError(
        f"Not a UMT checkpoint: no 'encoder.*' (stage 1) nor 'vision_encoder.*' (stage 2) keys; first keys: {sample}."
    )


def normalise_text_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """UMT downstream checkpoints store the `BertModel` as `text_encoder.X`; the pre-training ones as `text_encoder.bert.X`."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(("text_encoder.embeddings.", "text_encoder.encoder.")):
            key = "text_encoder.bert." + key[len("text_encoder.") :]
        out[key] = value
    return out


def openai_visual_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The visual tower of an OpenAI CLIP file: `visual.*` of a full CLIP, UMT's `clip_teacher.*`, or the bare tower.

    Returns the tower's keys (unprefixed) and the keys left out (the text tower of a full CLIP).
    """
    for prefix in ("visual.", "clip_teacher."):
        if any(key.startswith(prefix) for key in state_dict):
            kept = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            return kept, sorted(k for k in state_dict if not k.startswith(prefix))
    return dict(state_dict), []


# --------------------------------------------------------------------------------------------------------------------
# Tensor conversions
# --------------------------------------------------------------------------------------------------------------------


def split_qkv(tensor: torch.Tensor, source_key: str) -> dict[str, torch.Tensor]:
    """Fused `[q; k; v]` rows (weight or bias) -> the three projections."""
    if tensor.shape[0] % 3:
        raise ConversionError(f"{source_key}: first dimension {tensor.shape[0]} is not 3 x width.")
    query, key, value = tensor.chunk(3, dim=0)
    return {"q_proj": query, "k_proj": key, "v_proj": value}


def split_qkv_no_k_bias(tensor: torch.Tensor, source_key: str) -> dict[str, torch.Tensor]:
    """A fused `qkv.bias` = cat(q_bias, 0, v_bias): our key projection has no bias, so its third must be zero."""
    parts = split_qkv(tensor, source_key)
    if torch.count_nonzero(parts["k_proj"]):
        raise ConversionError(
            f"{source_key}: the key part of the fused bias is not zero, but the InstAP video encoder has no key bias "
            "(UMT/BEiT attention); this checkpoint is not a UMT encoder."
        )
    return {"q_proj": parts["q_proj"], "v_proj": parts["v_proj"]}


def conv_to_2d(tensor: torch.Tensor, source_key: str) -> torch.Tensor:
    """UMT inflates the CLIP `conv1` to Conv3d with kernel (1, p, p); the teacher uses the 2-D kernel."""
    if tensor.ndim == 5:
        if tensor.shape[2] != 1:
            raise ConversionError(
                f"{source_key}: a Conv3d kernel with temporal size {tensor.shape[2]} cannot become the teacher's 2-D "
                "patch embedding (only the (1, p, p) inflation of UMT can)."
            )
        tensor = tensor[:, :, 0]
    if tensor.ndim != 4:
        raise ConversionError(f"{source_key}: expected a 4-D or 5-D convolution kernel, got shape {tuple(tensor.shape)}.")
    return tensor


def resize_position_table(table: torch.Tensor, num_positions: int) -> torch.Tensor:
    """CLIP `[1 + g*g, width]` table -> `[num_positions, width]`: bicubic on the patch grid, the CLS row kept."""
    if table.shape[0] == num_positions:
        return table
    old_grid, new_grid = math.isqrt(table.shape[0] - 1), math.isqrt(num_positions - 1)
    if old_grid * old_grid + 1 != table.shape[0] or new_grid * new_grid + 1 != num_positions:
        raise ConversionError(
            f"Position tables must be 1 + a square grid: cannot resize {table.shape[0]} -> {num_positions} positions."
        )
    width = table.shape[1]
    patches = table[1:].float().reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid * new_grid, width).to(table.dtype)
    return torch.cat([table[:1], patches], dim=0)


@dataclass
class ConversionReport:
    """What a conversion did; `check()` raises on what it must not do."""

    stage: int
    preset: str | None = None
    converted: dict[str, str] = field(default_factory=dict)  # target key -> source key
    instap_only: list[str] = field(default_factory=list)  # fresh InstAP-only parameters
    missing: list[str] = field(default_factory=list)  # model keys nothing provided
    unexpected: list[str] = field(default_factory=list)  # source keys no rule reads
    ignored: list[str] = field(default_factory=list)  # known buffers and tied duplicates
    dropped: list[str] = field(default_factory=list)  # keys of a teacher file outside the visual tower
    resized: list[str] = field(default_factory=list)  # position tables resampled
    shape_mismatches: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    allowed_missing: list[str] = field(default_factory=list)
    allowed_unexpected: list[str] = field(default_factory=list)

    def check(self):
        problems = []
        if self.shape_mismatches:
            problems.append("shape mismatches (checkpoint vs InstAP config):\n  " + "\n  ".join(self.shape_mismatches))
        if self.conflicts:
            problems.append("conflicting tensors:\n  " + "\n  ".join(self.conflicts))
        if self.missing:
            problems.append(
                f"{len(self.missing)} InstAP parameters are missing from the checkpoint (pass --allow-missing GLOB to "
                "keep them freshly initialised):\n  " + "\n  ".join(self.missing)
            )
            if any(key.startswith("distillation.teacher.") for key in self.missing):
                problems.append(
                    f"The CLIP teacher is missing: UMT stage-{self.stage} checkpoints do not hold it; pass --teacher "
                    "(an OpenAI-layout file such as UMT's vit_l14.pth, or a Hugging Face CLIP folder / Hub id)."
                )
        if self.unexpected:
            problems.append(
                f"{len(self.unexpected)} checkpoint keys are not read by any rule (pass --allow-unexpected GLOB to "
                "drop them):\n  " + "\n  ".join(self.unexpected)
            )
        if problems:
            raise ConversionError("UMT -> InstAP conversion failed:\n" + "\n".join(problems))

    def summary(self) -> str:
        lines = [
            f"UMT stage-{self.stage} checkpoint" + (f", preset {self.preset}" if self.preset else ""),
            f"  converted parameters: {len(self.converted)}",
            f"  InstAP-only, freshly initialised: {_globs_summary(self.instap_only)}",
        ]
        for name in ("allowed_missing", "allowed_unexpected", "ignored", "dropped", "resized"):
            values = getattr(self, name)
            if values:
                lines.append(f"  {name.replace('_', ' ')}: {_globs_summary(values)}")
        return "\n".join(lines)


def _globs_summary(keys: list[str], limit: int = 6) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _matches_any(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def apply_rename_tables(
    state_dict: Mapping[str, torch.Tensor],
    groups: list[tuple[str, list[tuple[str, str, str]], list[str]]],
    prefixes: Mapping[str, str],
    report: ConversionReport,
) -> dict[str, torch.Tensor]:
    """Run every source key through the first rule of its group that matches it; record what nothing matched.

    Position tables are returned at their source size (`fit_to_model` resizes them).
    """
    compiled = [
        (prefix, [(re.compile(pattern), template, kind) for pattern, template, kind in table], [re.compile(p) for p in ignored])
        for prefix, table, ignored in groups
    ]
    converted: dict[str, torch.Tensor] = {}
    for source_key in sorted(state_dict):
        tensor = state_dict[source_key]
        outputs = _convert_one(source_key, tensor, compiled, prefixes, report)
        if outputs is None:
            report.unexpected.append(source_key)
            continue
        for target_key, value in outputs.items():
            if target_key in converted:
                if converted[target_key].shape != value.shape or not torch.equal(converted[target_key], value):
                    report.conflicts.append(
                        f"{source_key} and {report.converted[target_key]} both give {target_key} but differ"
                    )
                else:
                    report.ignored.append(source_key)
                continue
            converted[target_key] = value
            report.converted[target_key] = source_key
    return converted


def _convert_one(source_key, tensor, compiled, prefixes, report) -> dict[str, torch.Tensor] | None:
    for prefix, rules, ignored in compiled:
        if not source_key.startswith(prefix):
            continue
        relative = source_key[len(prefix) :]
        if any(pattern.fullmatch(relative) for pattern in ignored):
            report.ignored.append(source_key)
            return {}
        for pattern, template, kind in rules:
            match = pattern.fullmatch(relative)
            if match is None:
                continue
            groups = match.groups()
            if kind in ("split_qkv", "split_qkv_no_k_bias"):
                split = split_qkv if kind == "split_qkv" else split_qkv_no_k_bias
                return {
                    template.format(*groups, proj=proj, **prefixes): part
                    for proj, part in split(tensor, source_key).items()
                }
            target = template.format(*groups, **prefixes)
            if kind == "transpose":
                if tensor.ndim != 2:
                    raise ConversionError(f"{source_key}: expected a [width, out] matrix, got {tuple(tensor.shape)}.")
                tensor = tensor.t()
            elif kind == "conv_to_2d":
                tensor = conv_to_2d(tensor, source_key)
            elif kind == "scalar":
                if tensor.numel() != 1:
                    raise ConversionError(f"{source_key}: expected a scalar, got shape {tuple(tensor.shape)}.")
                tensor = tensor.reshape(())
            return {target: tensor.contiguous()}
    return None


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


PRESETS = ("instap-l", "instap-b", "tiny")


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
            report.unexpected.append(f"{report.converted.get(key, key)} (-> {key}, not in the InstAP model)")
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
    unexpected = report.unexpected
    report.unexpected = [k for k in unexpected if not _matches_any(k.split(" ")[0], allow_unexpected)]
    report.allowed_unexpected += [k for k in unexpected if k not in report.unexpected]
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
