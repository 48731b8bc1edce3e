"""The weight-mapping machinery shared by the UMT converter (`convert_umt_to_instap.py`) and the BERT / CLIP
initialisers (`pretrained_init.py`): rename tables from source keys to InstAP keys, the tensor conversions they
name (q/k/v splits, patch-embedding inflation, position tables), the report of what was mapped, and its error.

Both modules import this one, and neither imports the other's internals.
"""

from __future__ import annotations

import collections
import fnmatch
import logging
import math
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

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
    not_in_model: dict[str, str] = field(default_factory=dict)  # source key -> its renamed key the model lacks
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
        unread = self.unexpected + [f"{key} (-> {target}, not in the InstAP model)" for key, target in self.not_in_model.items()]
        if unread:
            problems.append(
                f"{len(unread)} checkpoint keys are not read by any rule (pass --allow-unexpected GLOB to "
                "drop them):\n  " + "\n  ".join(unread)
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
