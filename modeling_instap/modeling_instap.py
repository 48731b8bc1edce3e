"""PyTorch InstAP: instance-aware video-language pre-training on a UMT backbone.

Layout, top to bottom (as in `modeling_clip.py`): output dataclasses; the video encoder (tubelet embedding with a
fixed sinusoid table, pre-norm blocks with q/v bias and drop-path); the BERT text encoder whose upper layers add
bidirectional cross-attention (the fusion encoder); the instance attention pool; the frozen-teacher distillation
module; `InstAPPreTrainedModel`; the towers; `InstAPModel`; the task heads `InstAPForPreTraining` (stage 2),
`InstAPForMaskedVideoModeling` (stage 1) and `InstAPForGrounding`.

Tensor layout: videos are `(batch, frames, channels, height, width)`; video tokens are flattened in (t, h, w) order;
token masks are boolean with `True` = hidden (as `bool_masked_pos` in VideoMAE).
"""

import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
    BaseModelOutputWithPoolingAndCrossAttentions,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings, CLIPVisionModelWithProjection
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_instap import InstAPConfig, InstAPTextConfig, InstAPVisionConfig
from .losses import (
    IGNORE_INDEX,
    all_gather_variable,
    all_gather_with_grad,
    box_regression_loss,
    check_equal_batch_sizes,
    contrastive_loss,
    gather_counts,
    gather_without_grad,
    identical_texts,
    local_contrastive_loss,
    mask_tokens_for_mlm,
    matching_loss,
    mlm_loss,
    process_rank,
    process_world_size,
    reconstruction_loss,
    sample_hard_negatives,
)
from .masking import (
    gather_visible,
    mean_attention_mask,
    random_token_mask,
    teacher_attention_mask,
)

logger = logging.get_logger(__name__)

# The zero-shot pipeline shipped beside the model code (`pipeline_instap.py`; not imported here: the model needs it
# only as a file to copy) and its task name.
PIPELINE_MODULE = "pipeline_instap"
PIPELINE_TASK = "zero-shot-video-classification"

# Remote-code entry points written into every saved `config.json` (files copied by `save_pretrained`).
INSTAP_AUTO_MAP = {
    "AutoConfig": "configuration_instap.InstAPConfig",
    "AutoModel": "modeling_instap.InstAPModel",
    "AutoModelForPreTraining": "modeling_instap.InstAPForPreTraining",
}


# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class InstAPOutput(ModelOutput):
    """Output of [`InstAPModel`]: dual-encoder similarity logits, CLIP style.

    Args:
        loss: the global video-text contrastive loss, when `return_loss=True`.
        logits_per_video: `(num_videos, num_texts)` cosine similarities divided by the temperature.
        logits_per_text: the transpose.
        video_embeds, text_embeds: L2-normalised projected embeddings.
        vision_model_output, text_model_output: the towers' outputs.
    """

    loss: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class InstAPInstanceOutput(ModelOutput):
    """Output of [`InstAPModel.encode_instances`] (METHOD Eq. 5–7).

    Args:
        crop_hidden_states: `(num_instances, crop_tokens, vision_width)` crop tokens C from the video encoder.
        crop_pooled: `(num_instances, vision_width)` raw pooled crop embedding c = mean(C) (instance VTM context).
        pooled_hidden_states: `(num_instances, crop_tokens, vision_width)` Z = XAttn(C, V_scene).
        instance_embeds: `(num_instances, projection_dim)` normalised W_v · mean(Z).
    """

    crop_hidden_states: torch.FloatTensor | None = None
    crop_pooled: torch.FloatTensor | None = None
    pooled_hidden_states: torch.FloatTensor | None = None
    instance_embeds: torch.FloatTensor | None = None


@dataclass
class InstAPForPreTrainingOutput(ModelOutput):
    """Output of [`InstAPForPreTraining`]: the total loss of METHOD Eq. 11–13 and each term.

    A term whose inputs were absent from the batch (no instances, no teacher) is `None`, never a fake 0.

    Args:
        loss: λ_rec·L_rec + L_global + L_inst.
        loss_rec, loss_vtc, loss_vtm, loss_mlm, loss_inst_vtc, loss_inst_vtm, loss_inst_mlm: unweighted terms.
        temperature, instance_temperature: the clamped τ and τ_inst used in this step.
        logits_per_video, logits_per_text: local in-batch similarity logits of the global branch.
        video_embeds, text_embeds: local normalised embeddings.
        bool_masked_pos: the token mask of the scene videos (`True` = hidden).
    """

    loss: torch.FloatTensor | None = None
    loss_rec: torch.FloatTensor | None = None
    loss_vtc: torch.FloatTensor | None = None
    loss_vtm: torch.FloatTensor | None = None
    loss_mlm: torch.FloatTensor | None = None
    loss_inst_vtc: torch.FloatTensor | None = None
    loss_inst_vtm: torch.FloatTensor | None = None
    loss_inst_mlm: torch.FloatTensor | None = None
    temperature: torch.FloatTensor | None = None
    instance_temperature: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None


@dataclass
class InstAPForMaskedVideoModelingOutput(ModelOutput):
    """Output of [`InstAPForMaskedVideoModeling`] (stage 1, METHOD Eq. 1).

    Args:
        loss: the reconstruction loss L_rec (mean of 2 − 2·cos over the K aligned layers and the visible tokens).
        student_features: `(K, batch, visible_tokens, teacher_dim)` outputs of the student heads.
        teacher_features: `(K, batch, visible_tokens, teacher_dim)` teacher targets at the visible positions.
        bool_masked_pos: `(batch, tokens)` the attention-guided mask (`True` = hidden).
    """

    loss: torch.FloatTensor | None = None
    student_features: torch.FloatTensor | None = None
    teacher_features: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None


@dataclass
class InstAPForGroundingOutput(ModelOutput):
    """Output of [`InstAPForGrounding`].

    Args:
        loss: L1 + GIoU loss, when boxes are given.
        loss_l1, loss_giou: the two terms.
        pred_boxes: `(batch, frames, 4)` normalised (cx, cy, w, h) boxes, one per frame (images: one frame).
    """

    loss: torch.FloatTensor | None = None
    loss_l1: torch.FloatTensor | None = None
    loss_giou: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------------------


def sinusoid_position_table(num_positions: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The fixed 1-D sinusoid table of UMT/VideoMAE: `(num_positions, dim)`, sin on even and cos on odd channels.

    It has no weights, so it is rebuilt for any number of frames and any resolution.
    """
    position = torch.arange(num_positions, device=device, dtype=torch.float64).unsqueeze(1)
    channel = torch.arange(dim, device=device, dtype=torch.float64)
    angle = position / torch.pow(10000.0, 2 * torch.div(channel, 2, rounding_mode="floor") / dim)
    table = torch.where(channel.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(dtype)


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch of whole samples with probability `drop_prob`."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * keep / keep_prob


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention; returns `(output (B, L, H, D), weights (B, H, Lq, Lk))`. Used when weights are needed."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def _attention_interface(module: nn.Module) -> Callable:
    """The kernel `config._attn_implementation` names (eager, sdpa, flex_attention, flash_attention_2, ...).

    As in CLIP, only eager returns the attention weights; request them with `attn_implementation="eager"`.
    """
    return ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager_attention_forward)


# The outputs selective recomputation keeps: matmuls and fused attention kernels, the costly work of a layer. The rest
# (LayerNorm, GELU, softmax, dropout with its replayed random state, adds) is recomputed from them in backward.
_RECOMPUTE_KEEPS = {
    getattr(torch.ops.aten, name).default
    for name in (
        "mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(torch.ops.aten, name)
}


def _keep_matmul_outputs(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _RECOMPUTE_KEEPS else CheckpointPolicy.PREFER_RECOMPUTE


def selective_recompute_context():
    """`context_fn` of a non-reentrant `torch.utils.checkpoint.checkpoint` that keeps matmul and attention outputs
    and recomputes the elementwise ops: about half of full checkpointing's memory saving, for a fraction of its
    recompute time.
    For the whole model: `model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
    "context_fn": selective_recompute_context})`; for the instance branch only: `crop_checkpointing` and
    `instance_text_checkpointing` (`InstAPConfig`).
    """
    return create_selective_checkpoint_contexts(_keep_matmul_outputs)


# --------------------------------------------------------------------------------------------------------------------
# Video encoder
# --------------------------------------------------------------------------------------------------------------------


class InstAPTubeletEmbedding(nn.Conv3d):
    """The tubelet projection: a Conv3d whose stride equals its kernel, hence also a linear map of each flattened
    tubelet. `forward` takes videos `(batch, channels, frames, height, width)` (the convolution) or tubelets
    already cut and flattened `(..., channels * tubelet_size * patch_size**2)`, in the kernel's (c, t, h, w) order.
    Both paths run inside this module's forward, so hooks on it (DeepSpeed ZeRO-3's parameter gathering) see both.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.ndim == 5:
            return super().forward(inputs)
        return F.linear(inputs, self.weight.flatten(1), self.bias)


class InstAPVisionEmbeddings(nn.Module):
    """Tubelet embedding plus the fixed sinusoid table over the flattened (t, h, w) token index.

    With a token mask only the visible tubelets are cut out and projected: in training 80 % of a video's tokens are
    hidden, and convolving every tubelet took 5-11 % of the masked encoder's forward and backward (UMT's dimensions)
    and kept all of the clip's pixels alive for the weight gradient (the float copy of uint8 crops among them); now
    only the visible ones are kept. The two paths agree to float rounding.
    """

    def __init__(self, config: InstAPVisionConfig):
        super().__init__()
        self.config = config
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.patch_embedding = InstAPTubeletEmbedding(
            config.num_channels, config.hidden_size, kernel_size=kernel, stride=kernel
        )

    def position_embeddings(self, num_tokens: int, device, dtype) -> torch.Tensor:
        return sinusoid_position_table(num_tokens, self.config.hidden_size, device=device, dtype=dtype)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """`(batch, frames, channels, height, width)` pixels -> `(batch, tokens, width)`, or the visible tokens
        `(batch, visible, width)` in token order when `bool_masked_pos` (`(batch, tokens)`, `True` = hidden) is given."""
        batch_size, num_frames, channels, height, width = pixel_values.shape
        tubelet, patch = self.config.tubelet_size, self.config.patch_size
        if num_frames % tubelet or height % patch or width % patch:
            raise ValueError(
                f"pixel_values of {num_frames} frames at {height}x{width} do not tile into tubelets of "
                f"{tubelet}x{patch}x{patch}."
            )
        target_dtype = self.patch_embedding.weight.dtype
        grid_t, grid_h, grid_w = num_frames // tubelet, height // patch, width // patch
        num_tokens = grid_t * grid_h * grid_w
        if bool_masked_pos is None:
            embeddings = self.patch_embedding(pixel_values.transpose(1, 2).to(target_dtype))  # (B, D, t, h, w)
            embeddings = embeddings.flatten(2).transpose(1, 2)
            return embeddings + self.position_embeddings(num_tokens, embeddings.device, embeddings.dtype)
        if bool_masked_pos.shape != (batch_size, num_tokens):
            raise ValueError(
                f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)}, expected {(batch_size, num_tokens)}."
            )
        token_index = torch.arange(num_tokens, device=pixel_values.device).expand(batch_size, num_tokens)
        visible = gather_visible(token_index.unsqueeze(-1), bool_masked_pos).squeeze(-1)  # (B, L_vis), checked
        # A view with one axis per tubelet coordinate, the kernel's (c, t, h, w) last: indexing it copies only the
        # visible tubelets' pixels.
        tubelets = pixel_values.reshape(batch_size, grid_t, tubelet, channels, grid_h, patch, grid_w, patch)
        tubelets = tubelets.permute(0, 1, 4, 6, 3, 2, 5, 7)
        frame, cell = visible // (grid_h * grid_w), visible % (grid_h * grid_w)
        rows = torch.arange(batch_size, device=pixel_values.device).unsqueeze(1)
        cut = tubelets[rows, frame, cell // grid_w, cell % grid_w]  # (B, L_vis, C, t, p, p)
        embeddings = self.patch_embedding(cut.flatten(2).to(target_dtype))
        # In the projection's dtype, as the unmasked path (bf16 under autocast).
        return embeddings + self.position_embeddings(num_tokens, embeddings.device, embeddings.dtype)[visible]


class InstAPVisionAttention(nn.Module):
    """Multi-head self-attention with a learnt bias on queries and values but none on keys (BEiT/UMT)."""

    def __init__(self, config: InstAPVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = False
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=config.qkv_bias)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(
        self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, length, _ = hidden_states.shape
        shape = (batch_size, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        attn_output, attn_weights = _attention_interface(self)(
            self,
            query,
            key,
            value,
            None,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, length, self.embed_dim)
        return self.out_proj(attn_output), attn_weights


class InstAPVisionMLP(nn.Module):
    def __init__(self, config: InstAPVisionConfig):
        super().__init__()
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class InstAPVisionLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x)))."""

    def __init__(self, config: InstAPVisionConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = InstAPVisionAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = InstAPVisionMLP(config)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attn_output, _ = self.self_attn(self.layer_norm1(hidden_states), **kwargs)
        hidden_states = hidden_states + drop_path(attn_output, self.drop_path_rate, self.training)
        mlp_output = self.mlp(self.layer_norm2(hidden_states))
        return hidden_states + drop_path(mlp_output, self.drop_path_rate, self.training)


class InstAPVisionEncoder(nn.Module):
    def __init__(self, config: InstAPVisionConfig):
        super().__init__()
        # Stochastic depth increases linearly from 0 at the first block to drop_path_rate at the last.
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([InstAPVisionLayer(config, rate) for rate in rates])

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


# --------------------------------------------------------------------------------------------------------------------
# Text and fusion encoder (BERT names, so BERT checkpoints map by a rename of the prefix)
# --------------------------------------------------------------------------------------------------------------------


class InstAPTextEmbeddings(nn.Module):
    def __init__(self, config: InstAPTextConfig):
        super().__init__()
        pad = config.pad_token_id
        padding_idx = pad if pad is not None and 0 <= pad < config.vocab_size else None
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=padding_idx)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"input_ids has {length} tokens but max_position_embeddings is "
                f"{self.position_embeddings.num_embeddings}; truncate the caption in the tokenizer."
            )
        positions = torch.arange(length, device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class InstAPTextSelfAttention(nn.Module):
    """BERT attention projections; keys/values read `kv_hidden_size` features (the video width for cross-attention)."""

    def __init__(self, config: InstAPTextConfig, kv_hidden_size: int):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(kv_hidden_size, config.hidden_size)
        self.value = nn.Linear(kv_hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        key_value_index: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key_value_states = hidden_states if key_value_states is None else key_value_states
        batch_size, length, _ = hidden_states.shape
        query = self.query(hidden_states).view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)
        kv_shape = (batch_size, key_value_states.shape[1], self.num_heads, self.head_dim)
        key, value = self.key(key_value_states), self.value(key_value_states)
        if key_value_index is not None:
            # Rows shared by several queries (a video in VTM's negative pairs) are projected once, then picked.
            key, value = key[key_value_index], value[key_value_index]
        key = key.view(kv_shape).transpose(1, 2)
        value = value.view(kv_shape).transpose(1, 2)
        attn_output, attn_weights = _attention_interface(self)(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout_prob if self.training else 0.0,
            **kwargs,
        )
        return attn_output.reshape(batch_size, length, -1), attn_weights


class InstAPTextSelfOutput(nn.Module):
    def __init__(self, config: InstAPTextConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class InstAPTextAttention(nn.Module):
    def __init__(self, config: InstAPTextConfig, kv_hidden_size: int):
        super().__init__()
        self.self = InstAPTextSelfAttention(config, kv_hidden_size)
        self.output = InstAPTextSelfOutput(config)

    def forward(
        self,
        hidden_states,
        key_value_states=None,
        attention_mask=None,
        key_value_index=None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        attn_output, attn_weights = self.self(hidden_states, key_value_states, attention_mask, key_value_index, **kwargs)
        return self.output(attn_output, hidden_states), attn_weights


class InstAPTextIntermediate(nn.Module):
    def __init__(self, config: InstAPTextConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class InstAPTextOutput(nn.Module):
    def __init__(self, config: InstAPTextConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class InstAPTextLayer(GradientCheckpointingLayer):
    """A post-norm BERT layer; fusion layers add *bidirectional* cross-attention to video tokens.

    The stock `BertLayer` only allows cross-attention in a causal decoder, hence this class.
    """

    def __init__(self, config: InstAPTextConfig, is_fusion_layer: bool):
        super().__init__()
        self.attention = InstAPTextAttention(config, config.hidden_size)
        self.crossattention = InstAPTextAttention(config, config.encoder_hidden_size) if is_fusion_layer else None
        self.intermediate = InstAPTextIntermediate(config)
        self.output = InstAPTextOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        encoder_index: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        hidden_states, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
        if self.crossattention is not None:
            if encoder_hidden_states is None:
                raise ValueError("A fusion layer needs `encoder_hidden_states` (the video tokens).")
            hidden_states, _ = self.crossattention(
                hidden_states, encoder_hidden_states, encoder_attention_mask, encoder_index, **kwargs
            )
        return self.output(self.intermediate(hidden_states), hidden_states)


class InstAPMLMHead(nn.Module):
    """BERT's MLM head (`cls.predictions`): transform, then a decoder tied to the word embeddings."""

    def __init__(self, config: InstAPTextConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))
        # The decoder's weight is the word-embedding table. As (W·hᵀ)ᵀ its gradient is a new tensor, which autograd
        # adds in place to the embedding lookups' gradients; `decoder(h)`'s comes out as a transposed view, and
        # autograd then holds a third table-sized gradient while summing (`benchmarks/bench_step_vs_base.py`).
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        logits = torch.matmul(self.decoder.weight, flat.t()).t() + self.decoder.bias
        return logits.reshape(*hidden_states.shape[:-1], logits.shape[-1])


# --------------------------------------------------------------------------------------------------------------------
# Instance attention pool and teacher distillation
# --------------------------------------------------------------------------------------------------------------------


class InstAPAttentionPool(nn.Module):
    """Eq. 5: Z = XAttn(C, V): crop tokens query the scene tokens; one pre-norm cross-attention block with MLP."""

    def __init__(self, config: InstAPConfig):
        super().__init__()
        vision = config.vision_config
        self.config = vision
        self.num_heads = config.attention_pool_num_heads
        self.head_dim = vision.hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.layer_norm_query = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.layer_norm_context = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.q_proj = nn.Linear(vision.hidden_size, vision.hidden_size)
        self.k_proj = nn.Linear(vision.hidden_size, vision.hidden_size)
        self.v_proj = nn.Linear(vision.hidden_size, vision.hidden_size)
        self.out_proj = nn.Linear(vision.hidden_size, vision.hidden_size)
        self.layer_norm_mlp = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.mlp = InstAPVisionMLP(vision)

    def forward(
        self,
        crop_hidden_states: torch.Tensor,
        scene_hidden_states: torch.Tensor,
        scene_index: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`crop_hidden_states` `(crops, crop_tokens, width)` attend to `scene_hidden_states` `(crops, scene_tokens,
        width)`, or with `scene_index` `(crops,)` to row `scene_index[i]` of `(scenes, scene_tokens, width)`."""
        batch_size, length, dim = crop_hidden_states.shape
        query = self.q_proj(self.layer_norm_query(crop_hidden_states))
        context = self.layer_norm_context(scene_hidden_states)
        query = query.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)
        key, value = self.k_proj(context), self.v_proj(context)
        if scene_index is not None:
            # Each scene's keys and values once, however many of its instances query them (4 per scene at UMT's
            # comparison dimensions), then picked per crop.
            key, value = key[scene_index], value[scene_index]
        kv_shape = (batch_size, context.shape[1], self.num_heads, self.head_dim)
        key = key.view(kv_shape).transpose(1, 2)
        value = value.view(kv_shape).transpose(1, 2)
        attn_output, attn_weights = _attention_interface(self)(
            self, query, key, value, None, scaling=self.scaling, dropout=0.0, **kwargs
        )
        hidden_states = crop_hidden_states + self.out_proj(attn_output.reshape(batch_size, length, dim))
        hidden_states = hidden_states + self.mlp(self.layer_norm_mlp(hidden_states))
        return hidden_states, attn_weights


class InstAPDistillationHead(nn.Module):
    """Student head of one aligned layer (UMT `clip_decoder.k`): Linear(width -> teacher dim) + LayerNorm."""

    def __init__(self, in_features: int, out_features: int, eps: float):
        super().__init__()
        self.head = nn.Linear(in_features, out_features)
        self.norm = nn.LayerNorm(out_features, eps=eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(hidden_states))


@dataclass
class TeacherState:
    """The teacher's work on a batch of clips up to its last block (`InstAPTeacherDistillation.teacher_blocks`): the
    outputs of the blocks before the last whose patches are targets, the last block's input and attention output
    (before its projection), and its head-averaged attention `(batch * frames, 1 + patches, 1 + patches)`."""

    batch_size: int
    block_outputs: list[torch.Tensor]
    last_input: torch.Tensor
    last_context: torch.Tensor
    attention: torch.Tensor


class InstAPTeacherDistillation(nn.Module):
    """The frozen CLIP teacher, the attention-guided token masks it yields, and the student heads of Eq. 1.

    The teacher is frozen: its parameters never require grad, it runs under `no_grad`, and it stays in eval mode
    whatever `.train()` is called with.
    """

    def __init__(self, config: InstAPConfig):
        super().__init__()
        self.config = config
        self.teacher = CLIPVisionModelWithProjection._from_config(config.teacher_config)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        teacher_dim = config.teacher_config.projection_dim
        self.heads = nn.ModuleList(
            [
                InstAPDistillationHead(config.vision_config.hidden_size, teacher_dim, config.vision_config.layer_norm_eps)
                for _ in range(config.teacher_num_layers)
            ]
        )

    # `teacher_blocks` and `teacher_targets` through `torch.compile` (the unbound functions, called with the module),
    # set by `compile_teacher`.
    _compiled_teacher: tuple | None = None

    def compile_teacher(self, **compile_kwargs) -> None:
        """Runs the frozen teacher (`teacher_blocks` and `teacher_targets`) through `torch.compile` from the next call
        on; numerics equal to float tolerance. The teacher is a forward-only graph of fixed shapes, the easy case for
        the compiler: a stage-2 step at UMT's dimensions takes 0.91x the time on CPU at one thread
        (`benchmarks/bench_step_vs_base.py --compile-teacher`), for about 30 s of compilation at the first batch
        (and at each new input shape: `dynamic=False` unless given)."""
        options = {"dynamic": False, **compile_kwargs}
        self._compiled_teacher = tuple(
            torch.compile(function, **options) for function in (type(self).teacher_blocks, type(self).teacher_targets)
        )

    def run_teacher_blocks(self, pixel_values: torch.Tensor) -> TeacherState:
        """`teacher_blocks`, compiled after `compile_teacher`."""
        if self._compiled_teacher is not None:
            return self._compiled_teacher[0](self, pixel_values)
        return self.teacher_blocks(pixel_values)

    def run_teacher_targets(self, state: TeacherState, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`teacher_targets`, compiled after `compile_teacher`."""
        if self._compiled_teacher is not None:
            return self._compiled_teacher[1](self, state, mask)
        return self.teacher_targets(state, mask)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        # `from_pretrained` swaps in new parameters that require grad (and then calls `.eval()`): re-freeze here.
        self.teacher.requires_grad_(False)
        return self

    @torch.no_grad()
    def teacher_forward(
        self, pixel_values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the teacher per frame.

        Args:
            pixel_values: `(batch, frames, 3, height, width)`.
            mask: optional `(batch, frames * patches)` student mask (`True` = hidden): targets at its visible tokens
                only (see `teacher_targets`).

        Returns:
            targets: `(K, batch, tokens, teacher_dim)` the last K blocks without CLS, after the CLIP post-LayerNorm and
                projection (normalised later, in the loss), at every patch (`tokens = frames * patches`) or at the
                visible ones of `mask`.
            attention: `(batch * frames, 1 + patches, 1 + patches)` last-block attention, averaged over heads.
        """
        state = self.run_teacher_blocks(pixel_values)
        return self.run_teacher_targets(state, mask), state.attention

    @torch.no_grad()
    def teacher_blocks(self, pixel_values: torch.Tensor) -> TeacherState:
        """Every teacher block but the last, per frame, then the last block's attention (what the masks need).

        The last block's output is left to `teacher_targets`, which computes it only where the student looks: its
        attention is all a mask needs, and its MLP and output projection are most of its cost.
        """
        frames = pixel_values.flatten(0, 1)
        size = self.config.teacher_image_size
        if frames.shape[-2:] != (size, size):
            frames = F.interpolate(frames.float(), size=(size, size), mode="bicubic", align_corners=False)
        vision = self.teacher.vision_model
        hidden_states = vision.pre_layrnorm(vision.embeddings(frames.to(self.teacher.dtype), interpolate_pos_encoding=True))
        *blocks, last_block = vision.encoder.layers
        block_outputs = []
        for block in blocks:
            hidden_states = block(hidden_states, None)
            block_outputs.append(hidden_states)
        # The last block's attention, from its own projections (CLIP's kernel does not return the probabilities).
        attn = last_block.self_attn
        normed = last_block.layer_norm1(hidden_states)
        shape = (*normed.shape[:2], attn.num_heads, attn.head_dim)
        query, key, value = (proj(normed).view(shape).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        probabilities = torch.softmax(torch.matmul(query, key.transpose(-1, -2)).float() * attn.scale, dim=-1)
        context = torch.matmul(probabilities.to(value.dtype), value).transpose(1, 2).flatten(2)
        return TeacherState(
            batch_size=pixel_values.shape[0],
            block_outputs=block_outputs[len(block_outputs) - self.config.teacher_num_layers + 1 :],
            last_input=hidden_states,
            last_context=context,
            attention=probabilities.mean(dim=1),
        )

    @torch.no_grad()
    def teacher_targets(self, state: TeacherState, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last K blocks' patch tokens through the post-LayerNorm and projection, at the visible tokens of `mask`
        (every patch when `None`): `(K, batch, tokens, teacher_dim)`. The last block's residual branch, the
        post-LayerNorm and the projection run on those tokens only, since only they are compared with the student."""
        vision = self.teacher.vision_model
        last_block = vision.encoder.layers[-1]

        def patches(frame_tokens: torch.Tensor) -> torch.Tensor:
            # (batch * frames, 1 + patches, width) -> (batch, frames * patches, width), then the visible ones
            tokens = frame_tokens[:, 1:].reshape(state.batch_size, -1, frame_tokens.shape[-1])
            return tokens if mask is None else gather_visible(tokens, mask)

        hidden_states = patches(state.last_input) + last_block.self_attn.out_proj(patches(state.last_context))
        last_output = hidden_states + last_block.mlp(last_block.layer_norm2(hidden_states))
        layer_outputs = [patches(output) for output in state.block_outputs] + [last_output]
        return torch.stack([self.teacher.visual_projection(vision.post_layernorm(h)) for h in layer_outputs])

    def token_mask(
        self, attention: torch.Tensor, num_frames: int, mask_ratio: float, strategy: str
    ) -> torch.Tensor:
        """The student's token mask (`True` = hidden) from the teacher's last-block attention."""
        if strategy == "umt":
            return teacher_attention_mask(attention[:, 0, 1:], num_frames, mask_ratio)
        # Mean attention each patch receives over all queries of its frame (METHOD §3, s = (1/L)·Aᵀ·1).
        received = attention[:, :, 1:].mean(dim=1)
        return mean_attention_mask(received.reshape(-1, num_frames * received.shape[-1]), mask_ratio)

    def student_features(
        self,
        student_hidden_states: tuple[torch.Tensor, ...],
        final_norm: nn.Module,
        visible_positions: torch.Tensor,
    ) -> torch.Tensor:
        """Heads over the last K student blocks: final norm, + position table again, Linear + LayerNorm.

        Args:
            student_hidden_states: the vision encoder's hidden states (visible tokens only).
            final_norm: the encoder's final LayerNorm.
            visible_positions: `(batch, visible_tokens, width)` the sinusoid table at the visible positions.
        """
        last_k = student_hidden_states[-self.config.teacher_num_layers :]
        return torch.stack([head(final_norm(h) + visible_positions) for head, h in zip(self.heads, last_k)])

    def mask_and_targets(
        self, pixel_values: torch.Tensor, ratio: float, with_targets: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The student's token mask (`None` at ratio 0; teacher-guided unless `mask_strategy="random"`) and, with
        `with_targets`, the teacher targets at its visible tokens. The teacher runs only when one of them needs it."""
        strategy = self.config.mask_strategy
        teacher_masks = ratio > 0.0 and strategy != "random"
        if not (with_targets or teacher_masks):
            return _random_video_mask(pixel_values, ratio, self.config.vision_config.patch_size), None
        state = self.run_teacher_blocks(pixel_values)
        if teacher_masks:
            mask = self.token_mask(state.attention, pixel_values.shape[1], ratio, strategy)
        else:
            mask = _random_video_mask(pixel_values, ratio, self.config.vision_config.patch_size)
        return mask, self.run_teacher_targets(state, mask) if with_targets else None

    def reconstruction(
        self, vision_model: nn.Module, vision_outputs: BaseModelOutputWithPooling, mask, targets
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Student head outputs at the encoded tokens (the visible ones under a mask) beside the teacher targets of
        `mask_and_targets` (already at those tokens), each `(K, batch, tokens, teacher_dim)`: the two sides of Eq. 1."""
        batch_size = targets.shape[1]
        num_tokens = targets.shape[2] if mask is None else mask.shape[1]
        table = vision_model.embeddings.position_embeddings(num_tokens, targets.device, vision_outputs.last_hidden_state.dtype)
        positions = table.expand(batch_size, -1, -1)
        if mask is not None:
            positions = gather_visible(positions, mask)
        student = self.student_features(vision_outputs.hidden_states, vision_model.post_layernorm, positions)
        return student, targets


def _random_video_mask(pixel_values: torch.Tensor, ratio: float, patch_size: int) -> torch.Tensor | None:
    """A random token mask hiding `ratio` of each frame's tokens of `(batch, frames, 3, H, W)` clips; `None` at 0."""
    if ratio == 0.0:
        return None
    batch_size, num_frames = pixel_values.shape[:2]
    tokens_per_frame = (pixel_values.shape[-2] // patch_size) * (pixel_values.shape[-1] // patch_size)
    return random_token_mask(batch_size, num_frames, tokens_per_frame, ratio, device=pixel_values.device)


# --------------------------------------------------------------------------------------------------------------------
# Pre-trained model base
# --------------------------------------------------------------------------------------------------------------------


class InstAPPreTrainedModel(PreTrainedModel):
    config: InstAPConfig
    config_class = InstAPConfig
    base_model_prefix = "instap"
    main_input_name = "pixel_values"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["InstAPVisionLayer", "InstAPTextLayer", "InstAPAttentionPool", "CLIPEncoderLayer"]
    # What `output_hidden_states` / `output_attentions` collect (transformers' output-capturing hooks). The text
    # tower records its self-attention as `attentions` and the fusion layers' cross-attention as `cross_attentions`.
    _can_record_outputs = {
        "hidden_states": [InstAPVisionLayer, InstAPTextLayer],
        "attentions": [
            OutputRecorder(InstAPVisionAttention, index=1),
            OutputRecorder(InstAPTextSelfAttention, index=1, layer_name="attention"),
        ],
        "cross_attentions": OutputRecorder(InstAPTextSelfAttention, index=1, layer_name="crossattention"),
    }
    # The losses are already per-batch means: Trainer must keep scaling them for gradient accumulation itself.
    accepts_loss_kwargs = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, writing a folder that loads complete as remote code.

        transformers only records the saved class; a stage-2 checkpoint must also load as `AutoModel` (the
        backbone), the way a Hub user loads `org/instap-l` with `trust_remote_code=True`: the `auto_map` names every
        Auto class of InstAP, and the zero-shot video classification pipeline is copied and named under
        `custom_pipelines`, so `pipeline(..., model=folder, trust_remote_code=True)` works without the project.
        """
        if isinstance(self.config, InstAPConfig):
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **INSTAP_AUTO_MAP}
            pipeline_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{PIPELINE_MODULE}.py")
            if os.path.isfile(pipeline_file):
                os.makedirs(save_directory, exist_ok=True)
                shutil.copyfile(pipeline_file, os.path.join(save_directory, f"{PIPELINE_MODULE}.py"))
                self.config.custom_pipelines = {
                    PIPELINE_TASK: {
                        "impl": f"{PIPELINE_MODULE}.InstAPZeroShotVideoClassificationPipeline",
                        "pt": ["AutoModel"],
                        "type": "multimodal",
                    }
                }
        return super().save_pretrained(save_directory, *args, **kwargs)

    # Modules of a composite model that live on the text side (they read text features): they take the text
    # tower's std, everything else the video tower's.
    _text_side_modules: tuple[str, ...] = ()

    def _initializer_range(self, module: nn.Module) -> float:
        config = self.config
        if not isinstance(config, InstAPConfig):
            return config.initializer_range
        for name in self._text_side_modules:
            owner = getattr(self, name, None)
            if owner is not None and any(module is sub for sub in owner.modules()):
                return config.text_config.initializer_range
        return config.vision_config.initializer_range

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        std = self._initializer_range(module)
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
            if module.padding_idx is not None:  # BERT keeps the [PAD] embedding at zero
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, CLIPVisionEmbeddings):
            init.normal_(module.class_embedding, std=module.embed_dim**-0.5)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, InstAPModel):
            init.constant_(module.temperature, module.config.temperature_init)
            init.constant_(module.instance_temperature, module.config.instance_temperature_init)


# --------------------------------------------------------------------------------------------------------------------
# Towers
# --------------------------------------------------------------------------------------------------------------------


class InstAPVisionModel(InstAPPreTrainedModel):
    """The space-time ViT video encoder (no CLS token).

    `bool_masked_pos` hides tokens: only the visible ones are encoded (the UMT saving). The pooled output is the
    "pool norm" LayerNorm of the mean token.
    """

    config: InstAPVisionConfig
    config_class = InstAPVisionConfig
    base_model_prefix = "vision_model"
    input_modalities = ("video",)

    def __init__(self, config: InstAPVisionConfig):
        super().__init__(config)
        self.embeddings = InstAPVisionEmbeddings(config)
        self.encoder = InstAPVisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pool_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        pool_frames: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values: `(batch, frames, channels, height, width)`; an image is a 1-frame video.
            bool_masked_pos: `(batch, tokens)` boolean, `True` = hidden. Every row must hide the same number.
            pool_frames: pool each frame separately (`pooler_output` of shape `(batch, frames, width)`); only
                without a mask.

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` `(batch, visible_tokens, width)` after the final
            norm and `pooler_output` `(batch, width)`. With `output_hidden_states`, the embeddings and every block
            output (visible tokens, before the final norm; the last K are the student side of the distillation);
            with `output_attentions` (eager attention), each block's `(batch, heads, tokens, tokens)` weights.
        """
        if pixel_values.ndim == 4:  # a batch of images
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.ndim != 5:
            raise ValueError(f"pixel_values must be (batch, frames, channels, height, width), got {tuple(pixel_values.shape)}.")
        embeddings = self.embeddings(pixel_values, bool_masked_pos)
        encoder_outputs = self.encoder(embeddings, **kwargs)
        last_hidden_state = self.post_layernorm(encoder_outputs.last_hidden_state)
        if pool_frames:
            if bool_masked_pos is not None:
                raise ValueError("pool_frames needs every token: call it without bool_masked_pos.")
            num_frames = pixel_values.shape[1] // self.config.tubelet_size
            per_frame = last_hidden_state.reshape(last_hidden_state.shape[0], num_frames, -1, last_hidden_state.shape[-1])
            pooled = self.pool_layernorm(per_frame.mean(dim=2))
        else:
            pooled = self.pool_layernorm(last_hidden_state.mean(dim=1))
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled)


class InstAPTextModel(InstAPPreTrainedModel):
    """BERT text encoder (layers below `fusion_layer`) and fusion encoder (the layers from it on).

    Unlike `BertModel`, the default forward (`mode="text"`) runs only the layers below `fusion_layer` (the text
    tower of the dual encoder, as in UMT), so `hidden_states` has `fusion_layer + 1` entries; `mode="fusion"` runs
    the fusion layers on text hidden states with cross-attention to video tokens. There is no BERT pooler layer:
    `pooler_output` is the [CLS] state.
    """

    config: InstAPTextConfig
    config_class = InstAPTextConfig
    base_model_prefix = "text_model"
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: InstAPTextConfig):
        super().__init__(config)
        self.embeddings = InstAPTextEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            [InstAPTextLayer(config, is_fusion_layer=i >= config.fusion_layer) for i in range(config.num_hidden_layers)]
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module):
        self.embeddings.word_embeddings = value

    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        text_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        encoder_index: torch.Tensor | None = None,
        mode: str = "text",
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        r"""
        Args:
            input_ids, attention_mask, token_type_ids: the caption (mode `"text"`); `attention_mask` is also the
                text padding mask in mode `"fusion"`.
            text_hidden_states: `(batch, length, hidden)` output of the text mode (mode `"fusion"`).
            encoder_hidden_states: `(batch, video_tokens, video_width)` the video tokens the fusion layers attend to.
            encoder_attention_mask: optional `(batch, video_tokens)` 1/0 mask over the video tokens.
            encoder_index: optional `(batch,)` row of `encoder_hidden_states` (and of its mask) for each caption, when
                captions share videos: `encoder_hidden_states` then holds each video once.

        Returns:
            `BaseModelOutputWithPoolingAndCrossAttentions`: `last_hidden_state` and, as `pooler_output`, the [CLS]
            state. With `output_attentions` (eager attention): `attentions` holds the self-attention of the layers
            run and, in mode `"fusion"`, `cross_attentions` the maps over the video tokens.
        """
        fusion_layer = self.config.fusion_layer
        if mode == "text":
            if input_ids is None:
                raise ValueError("mode='text' needs `input_ids`.")
            layers = self.encoder.layer[:fusion_layer]
            hidden_states = self.embeddings(input_ids, token_type_ids)
        elif mode == "fusion":
            if text_hidden_states is None:
                raise ValueError("mode='fusion' needs `text_hidden_states` from mode='text'.")
            layers = self.encoder.layer[fusion_layer:]
            hidden_states = text_hidden_states
        else:
            raise ValueError(f"mode must be 'text' or 'fusion', got {mode!r}.")
        self_mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        cross_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            mask_shape_of = encoder_hidden_states  # read for the batch size, key length and dtype only
            if encoder_index is not None:
                encoder_attention_mask = encoder_attention_mask[encoder_index]
                mask_shape_of = encoder_hidden_states[:1].expand(encoder_index.shape[0], -1, -1)
            cross_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=hidden_states,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=mask_shape_of,
            )
        for layer in layers:
            # Tensors positional: reentrant checkpointing (`use_reentrant=True`) only tracks positional inputs, and
            # the video tokens need their gradient (and must not be backpropagated inside the recompute).
            hidden_states = layer(hidden_states, self_mask, encoder_hidden_states, cross_mask, encoder_index, **kwargs)
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden_states, pooler_output=hidden_states[:, 0]
        )


# --------------------------------------------------------------------------------------------------------------------
# The dual encoder + fusion model
# --------------------------------------------------------------------------------------------------------------------


class InstAPModel(InstAPPreTrainedModel):
    """Video encoder, text/fusion encoder, projections W_v/W_t, the matching head, the instance attention pool and
    the two temperatures τ and τ_inst.
    """

    # A stage-2 checkpoint also holds the MLM head and the teacher; the backbone ignores them.
    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^distillation\."]
    _text_side_modules = ("text_projection", "itm_head")

    def __init__(self, config: InstAPConfig):
        super().__init__(config)
        self.vision_model = InstAPVisionModel._from_config(config.vision_config)
        self.text_model = InstAPTextModel._from_config(config.text_config)
        vision_width = config.vision_config.hidden_size
        text_width = config.text_config.hidden_size
        self.visual_projection = nn.Linear(vision_width, config.projection_dim)
        self.text_projection = nn.Linear(text_width, config.projection_dim)
        self.itm_head = nn.Linear(text_width, 2)
        self.attention_pool = InstAPAttentionPool(config)
        # τ itself (not its log), as UMT stores and clamps it.
        self.temperature = nn.Parameter(torch.tensor(config.temperature_init))
        self.instance_temperature = nn.Parameter(torch.tensor(config.instance_temperature_init))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module):
        self.text_model.embeddings.word_embeddings = value

    def clamped_temperatures(self) -> tuple[torch.Tensor, torch.Tensor]:
        """τ and τ_inst clamped to [temperature_min, temperature_max].

        A functional clamp (UMT clamps the parameter in place); an in-place write inside forward would race with
        ZeRO-3 partitioned parameters.
        """
        low, high = self.config.temperature_min, self.config.temperature_max
        temperature = self.temperature.clamp(low, high)
        if not self.config.separate_instance_temperature:  # the ablation of METHOD Table 5: one τ for both
            return temperature, temperature
        return temperature, self.instance_temperature.clamp(low, high)

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        pool_frames: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        """Encode videos; `pooler_output` is the L2-normalised projected embedding `(batch, projection_dim)`.

        With `pool_frames` (default: `config.eval_frame_pooling == "frames"` when no mask is given) each frame is
        pooled and projected on its own and the unit vectors are averaged, so a dot product with a text embedding
        is the frame-averaged cosine similarity of UMT's evaluation. Unlike CLIP's getters, which return the
        unnormalised projection, both getters return these normalised embeddings: the frame average is only
        defined on unit vectors, and every InstAP score is a dot product of them.
        """
        if pool_frames is None:
            pool_frames = bool_masked_pos is None and self.config.eval_frame_pooling == "frames"
        vision_outputs = self.vision_model(
            pixel_values, bool_masked_pos=bool_masked_pos, pool_frames=pool_frames, return_dict=True, **kwargs
        )
        embeds = F.normalize(self.visual_projection(vision_outputs.pooler_output), dim=-1)
        vision_outputs.pooler_output = embeds.mean(dim=1) if pool_frames else embeds
        return vision_outputs

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        """Encode captions with the text layers; `pooler_output` is the normalised projected [CLS] embedding."""
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, mode="text", return_dict=True, **kwargs
        )
        text_outputs.pooler_output = F.normalize(self.text_projection(text_outputs.pooler_output), dim=-1)
        return text_outputs

    def fuse(
        self,
        text_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        video_hidden_states: torch.Tensor,
        video_attention_mask: torch.Tensor | None = None,
        video_index: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        """Run the fusion layers: text states cross-attend to video tokens (`output_attentions` with eager
        attention gives the maps as `cross_attentions`); `video_index` as in `match_score`."""
        return self.text_model(
            text_hidden_states=text_hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=video_hidden_states,
            encoder_attention_mask=video_attention_mask,
            encoder_index=video_index,
            mode="fusion",
            return_dict=True,
            **kwargs,
        )

    def match_score(
        self,
        video_hidden_states: torch.Tensor,
        text_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        video_attention_mask: torch.Tensor | None = None,
        video_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Matching-head logits `(pairs, 2)` (index 1 = "matches") for aligned pairs of video tokens and text states.

        Args:
            video_hidden_states: `(pairs, video_tokens, vision_width)`, e.g. `get_video_features(...).last_hidden_state`;
                with `video_index`, `(videos, video_tokens, vision_width)`, each video once.
            text_hidden_states: `(pairs, length, text_width)`, e.g. `get_text_features(...).last_hidden_state`.
            video_index: optional `(pairs,)` row of `video_hidden_states` (and `video_attention_mask`) of each pair:
                the same scores as the gathered videos, with each video's cross-attention keys and values projected
                once however many pairs share it (VTM's hard negatives: two thirds of the pairs).
        """
        fused = self.fuse(
            text_hidden_states, attention_mask, video_hidden_states, video_attention_mask, video_index=video_index
        )
        return self.itm_head(fused.last_hidden_state[:, 0])

    def encode_instances(
        self,
        instance_pixel_values: torch.Tensor,
        scene_hidden_states: torch.Tensor,
        instance_sample_index: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> InstAPInstanceOutput:
        """Encode instance crop clips and pool them against their scene (METHOD Eq. 5–7).

        Args:
            instance_pixel_values: `(instances, frames, channels, crop, crop)`.
            scene_hidden_states: `(scenes, scene_tokens, width)` the scene videos' tokens V (visible ones in training).
            instance_sample_index: `(instances,)` which scene each instance belongs to; `None` when
                `scene_hidden_states` is already aligned with the instances.
            bool_masked_pos: optional crop token mask (`True` = hidden).
        """
        crops = self.vision_model(instance_pixel_values, bool_masked_pos=bool_masked_pos)
        crop_tokens = crops.last_hidden_state
        pooled_tokens, _ = self.attention_pool(crop_tokens, scene_hidden_states, scene_index=instance_sample_index)
        instance_embeds = F.normalize(self.visual_projection(pooled_tokens.mean(dim=1)), dim=-1)
        return InstAPInstanceOutput(
            crop_hidden_states=crop_tokens,
            crop_pooled=crop_tokens.mean(dim=1),
            pooled_hidden_states=pooled_tokens,
            instance_embeds=instance_embeds,
        )

    def instance_matching_context(self, instances: InstAPInstanceOutput) -> torch.Tensor:
        """The video tokens the matching head fuses with an instance caption (`config.instance_vtm_context`):
        `(instances, 1, width)` for `"pooled"`, `(instances, crop_tokens, width)` otherwise."""
        context = self.config.instance_vtm_context
        if context == "pooled":
            return instances.crop_pooled[:, None, :]
        if context == "attention_pool":
            return instances.pooled_hidden_states
        return instances.crop_hidden_states

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> InstAPOutput:
        """Dual-encoder similarity, CLIP style: `logits_per_video[i, j]` = cos(video i, text j) / τ.

        `output_hidden_states` / `output_attentions` reach both towers (`vision_model_output`, `text_model_output`).
        """
        video = self.get_video_features(pixel_values, bool_masked_pos=bool_masked_pos, return_dict=True, **kwargs)
        text = self.get_text_features(input_ids, attention_mask, return_dict=True, **kwargs)
        temperature, _ = self.clamped_temperatures()
        logits_per_video = video.pooler_output @ text.pooler_output.t() / temperature
        loss = None
        if return_loss:
            loss = contrastive_loss(video.pooler_output, text.pooler_output, temperature)
        return InstAPOutput(
            loss=loss,
            logits_per_video=logits_per_video,
            logits_per_text=logits_per_video.t(),
            video_embeds=video.pooler_output,
            text_embeds=text.pooler_output,
            vision_model_output=video,
            text_model_output=text,
        )


# --------------------------------------------------------------------------------------------------------------------
# Task heads
# --------------------------------------------------------------------------------------------------------------------

# The stage-2 loss terms (output field `loss_<term>`) and the config weights whose product weighs each in the total
# (Eq. 11-13). The trainer's logging and the tests read this table.
STAGE2_LOSS_WEIGHTS: dict[str, tuple[str, ...]] = {
    "rec": ("lambda_rec",),
    "vtc": ("lambda_vtc",),
    "vtm": ("lambda_vtm",),
    "mlm": ("lambda_mlm",),
    "inst_vtc": ("lambda_inst", "lambda_inst_vtc"),
    "inst_vtm": ("lambda_inst", "lambda_inst_vtm"),
    "inst_mlm": ("lambda_inst", "lambda_inst_mlm"),
}


def loss_term_weight(config: InstAPConfig, term: str) -> float:
    return math.prod(getattr(config, name) for name in STAGE2_LOSS_WEIGHTS[term])


def _media_mask_ratio(config: InstAPConfig, num_frames: int) -> float:
    # An image is a 1-frame clip and gets the image ratio (0.5); videos get 0.8.
    return config.image_mask_ratio if num_frames == 1 else config.video_mask_ratio


def _pair_indices_with_negatives(negatives: torch.Tensor) -> torch.Tensor:
    """Rows whose negative could be drawn (`sample_hard_negatives` returns -1 when none exists)."""
    return torch.nonzero(negatives >= 0, as_tuple=False).squeeze(1)


class InstAPForPreTraining(InstAPPreTrainedModel):
    """Stage 2, instance-aware alignment: L = λ_rec·L_rec + L_global + L_inst (METHOD §4)."""

    _tied_weights_keys = {"mlm_head.decoder.weight": "instap.text_model.embeddings.word_embeddings.weight"}
    _text_side_modules = ("mlm_head",)

    def __init__(self, config: InstAPConfig):
        super().__init__(config)
        self.instap = InstAPModel(config)
        self.mlm_head = InstAPMLMHead(config.text_config)
        self.distillation = InstAPTeacherDistillation(config) if config.teacher_config is not None else None
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.mlm_head.decoder = new_embeddings

    @contextmanager
    def _instance_checkpointing(self) -> Iterator[None]:
        """Checkpoint the encoders' layers while the instance branch runs, where the video encoder sees only crops
        and the text encoder only instance captions (`config.crop_checkpointing`, `instance_text_checkpointing`).
        Layers already checkpointed (`gradient_checkpointing_enable`) keep their setting; the others are restored."""
        modes = {self.instap.vision_model: self.config.crop_checkpointing,
                 self.instap.text_model: self.config.instance_text_checkpointing}
        changed = []
        if self.training and torch.is_grad_enabled():
            for tower, mode in modes.items():
                if mode == "none":
                    continue
                kwargs = {"use_reentrant": False}
                if mode == "selective":
                    kwargs["context_fn"] = selective_recompute_context
                for module in tower.modules():
                    if isinstance(module, GradientCheckpointingLayer) and not module.gradient_checkpointing:
                        changed.append((module, module.__dict__.get("_gradient_checkpointing_func")))
                        module.gradient_checkpointing = True
                        module._gradient_checkpointing_func = partial(checkpoint, **kwargs)
        try:
            yield
        finally:
            for module, function in changed:
                del module.gradient_checkpointing  # back to the class default (False)
                if function is None:
                    del module._gradient_checkpointing_func
                else:
                    module._gradient_checkpointing_func = function

    # -- pieces of the step, each returning the unweighted loss term ------------------------------------------------

    def _scene_mask_and_targets(self, pixel_values: torch.Tensor, mask_tokens: bool, with_targets: bool = True):
        """Token mask for the scene videos (`None`: every token) and, with a teacher, the distillation targets."""
        ratio = _media_mask_ratio(self.config, pixel_values.shape[1]) if mask_tokens else 0.0
        if self.distillation is None:
            return _random_video_mask(pixel_values, ratio, self.config.vision_config.patch_size), None
        return self.distillation.mask_and_targets(pixel_values, ratio, with_targets=with_targets)

    def _matching_loss(
        self,
        video_tokens: torch.Tensor,
        text_states: torch.Tensor,
        attention_mask: torch.Tensor,
        similarity: torch.Tensor,
        exclude: torch.Tensor,
    ) -> torch.Tensor:
        """VTM over [positives; hard-negative video per text; hard-negative text per video] (UMT `vtm_loss`)."""
        with torch.no_grad():
            if not self.config.vtm_hard_negatives:
                similarity = torch.zeros_like(similarity)
            text_for_video = sample_hard_negatives(similarity, exclude)
            video_for_text = sample_hard_negatives(similarity.t(), exclude.t())
        count = video_tokens.shape[0]
        positives = torch.arange(count, device=video_tokens.device)
        rows_v = _pair_indices_with_negatives(text_for_video)  # videos paired with a wrong text
        rows_t = _pair_indices_with_negatives(video_for_text)  # texts paired with a wrong video
        video_index = torch.cat([positives, video_for_text[rows_t], rows_v])
        text_index = torch.cat([positives, rows_t, text_for_video[rows_v]])
        logits = self.instap.match_score(
            video_tokens, text_states[text_index], attention_mask[text_index], video_index=video_index
        )
        labels = torch.zeros(video_index.shape[0], dtype=torch.long, device=logits.device)
        labels[:count] = 1
        return matching_loss(logits, labels)

    def _masked_language_loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, video_tokens: torch.Tensor
    ) -> torch.Tensor:
        text_config = self.config.text_config
        masked_ids, labels = mask_tokens_for_mlm(
            input_ids,
            attention_mask,
            vocab_size=text_config.vocab_size,
            mask_token_id=text_config.mask_token_id,
            special_token_ids=[text_config.cls_token_id, text_config.pad_token_id],
            probability=self.config.mlm_probability,
        )
        text_states = self.instap.text_model(
            input_ids=masked_ids, attention_mask=attention_mask, mode="text", return_dict=True
        )
        fused = self.instap.fuse(text_states.last_hidden_state, attention_mask, video_tokens)
        # The head (a projection onto the whole vocabulary) at the chosen tokens only: the loss ignores the others.
        chosen = labels != IGNORE_INDEX
        return mlm_loss(self.mlm_head(fused.last_hidden_state[chosen]), labels[chosen])

    def _limit_instances(self, instance_sample_index: torch.Tensor) -> torch.Tensor | None:
        """Indices of the instances kept this step: at most `max_instances_per_sample` per sample, a random subset."""
        cap = self.config.max_instances_per_sample
        counts = torch.bincount(instance_sample_index)
        if counts.numel() == 0 or int(counts.max()) <= cap:
            return None
        order = torch.randperm(instance_sample_index.numel(), device=instance_sample_index.device)
        shuffled = instance_sample_index[order]
        # Rank of each shuffled instance among the instances of its sample.
        sort_key = shuffled * instance_sample_index.numel() + torch.arange(shuffled.numel(), device=shuffled.device)
        sorted_order = torch.argsort(sort_key)
        sorted_samples = shuffled[sorted_order]
        first = torch.searchsorted(sorted_samples, sorted_samples, right=False)
        rank = torch.arange(sorted_samples.numel(), device=shuffled.device) - first
        keep = order[sorted_order[rank < cap]]
        return torch.sort(keep).values

    def _crop_mask(self, instance_pixel_values: torch.Tensor, mask_tokens: bool) -> torch.Tensor | None:
        config = self.config
        if not mask_tokens or config.crop_mask_strategy == "none":
            return None
        ratio = config.crop_mask_ratio
        if ratio is None:
            ratio = _media_mask_ratio(config, instance_pixel_values.shape[1])
        if config.crop_mask_strategy == "teacher" and self.distillation is not None:
            mask, _ = self.distillation.mask_and_targets(instance_pixel_values, ratio, with_targets=False)
            return mask
        return _random_video_mask(instance_pixel_values, ratio, config.vision_config.patch_size)

    # -- the step ------------------------------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        source_ids: torch.Tensor | None = None,
        instance_pixel_values: torch.Tensor | None = None,
        instance_input_ids: torch.Tensor | None = None,
        instance_attention_mask: torch.Tensor | None = None,
        instance_sample_index: torch.Tensor | None = None,
        instance_source_id: torch.Tensor | None = None,
        mask_tokens: bool = True,
        return_loss: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> InstAPForPreTrainingOutput:
        r"""
        One stage-2 step. Under torch.distributed this forward is a collective (every rank must call it): it
        gathers the step's counts once, then the embeddings and ids of the global and instance VTC.

        Args:
            pixel_values: `(batch, frames, 3, height, width)` scene clips (images: 1 frame), one media type per batch.
            input_ids, attention_mask: `(batch, length)` global captions.
            source_ids: `(batch,)` globally unique ids of the source samples; equal ids are soft positives of the
                global VTC. Defaults to the row index.
            instance_pixel_values: `(instances, frames, 3, crop, crop)` crop clips.
            instance_input_ids, instance_attention_mask: `(instances, length)` instance captions.
            instance_sample_index: `(instances,)` row of `pixel_values` each instance comes from.
            instance_source_id: `(instances,)` source ids of the instances (same-source masking of Eq. 8).
                Defaults to `source_ids[instance_sample_index]`.
            mask_tokens: hide scene and crop tokens with the media type's ratio (teacher-guided with a teacher), in
                training and evaluation alike; `False` encodes every token.
            return_loss: compute the loss terms; `False` returns only the embeddings and similarity logits.
        """
        config = self.config
        batch_size = pixel_values.shape[0]
        device = pixel_values.device
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids)
        if source_ids is None:
            # Row indices, made distinct across processes: gathered rows of different ranks must not collide.
            source_ids = torch.arange(batch_size, device=device) + process_rank() * (1 << 32)
        has_instances = (
            instance_pixel_values is not None and instance_input_ids is not None and instance_pixel_values.shape[0] > 0
        )
        if has_instances and instance_sample_index is None:
            raise ValueError("instance_pixel_values needs instance_sample_index (the scene of each instance).")
        if has_instances:
            if instance_attention_mask is None:
                instance_attention_mask = torch.ones_like(instance_input_ids)
            if instance_source_id is None:
                instance_source_id = source_ids[instance_sample_index]
            keep = self._limit_instances(instance_sample_index)
            if keep is not None:
                instance_pixel_values = instance_pixel_values[keep]
                instance_input_ids = instance_input_ids[keep]
                instance_attention_mask = instance_attention_mask[keep]
                instance_sample_index = instance_sample_index[keep]
                instance_source_id = instance_source_id[keep]
        temperature, instance_temperature = self.instap.clamped_temperatures()
        terms: dict[str, torch.Tensor] = {}

        # Scene videos: teacher mask and targets, then the student on the visible tokens (one pass for all losses).
        mask, targets = self._scene_mask_and_targets(pixel_values, mask_tokens, with_targets=return_loss)
        vision_outputs = self.instap.vision_model(
            pixel_values, bool_masked_pos=mask, output_hidden_states=targets is not None, return_dict=True
        )
        video_tokens = vision_outputs.last_hidden_state
        video_embeds = F.normalize(self.instap.visual_projection(vision_outputs.pooler_output), dim=-1)
        logits_per_video = text_embeds = text_outputs = None
        if input_ids is not None:
            text_outputs = self.instap.text_model(
                input_ids=input_ids, attention_mask=attention_mask, mode="text", return_dict=True
            )
            text_embeds = F.normalize(self.instap.text_projection(text_outputs.pooler_output), dim=-1)
            logits_per_video = video_embeds @ text_embeds.t() / temperature

        if return_loss:
            # The step's only extra collective: every rank's batch size (checked) and instance count.
            counts = gather_counts([batch_size, instance_pixel_values.shape[0] if has_instances else 0], device)
            check_equal_batch_sizes(counts[:, 0].tolist())
            if targets is not None and config.lambda_rec > 0:
                terms["rec"] = reconstruction_loss(
                    *self.distillation.reconstruction(self.instap.vision_model, vision_outputs, mask, targets)
                )
            if input_ids is not None:
                terms.update(
                    self._global_losses(
                        video_tokens, video_embeds, input_ids, attention_mask, text_outputs, text_embeds,
                        logits_per_video, source_ids, temperature,
                    )
                )
            # λ_inst = 0 is the global-only ablation (METHOD Table 4): the instance branch is not run at all.
            # Otherwise every rank enters it when any rank has instances: its gathers are collectives.
            instance_counts = counts[:, 1].tolist()
            if config.lambda_inst > 0 and any(instance_counts):
                if has_instances:
                    with self._instance_checkpointing():
                        instance_terms = self._instance_losses(
                            video_tokens,
                            instance_pixel_values,
                            instance_input_ids,
                            instance_attention_mask,
                            instance_sample_index,
                            instance_source_id,
                            instance_temperature,
                            instance_counts,
                            mask_tokens,
                        )
                    terms.update(instance_terms)
                else:
                    terms["inst_vtc"] = self._instance_contrastive_without_local_rows(
                        instance_temperature, instance_counts, device,
                        text_length=input_ids.shape[1] if input_ids is not None else 0,
                    )

        return InstAPForPreTrainingOutput(
            loss=self._total_loss(terms) if terms else None,
            loss_rec=terms.get("rec"),
            loss_vtc=terms.get("vtc"),
            loss_vtm=terms.get("vtm"),
            loss_mlm=terms.get("mlm"),
            loss_inst_vtc=terms.get("inst_vtc"),
            loss_inst_vtm=terms.get("inst_vtm"),
            loss_inst_mlm=terms.get("inst_mlm"),
            temperature=temperature.detach(),
            instance_temperature=instance_temperature.detach(),
            logits_per_video=logits_per_video,
            logits_per_text=None if logits_per_video is None else logits_per_video.t(),
            video_embeds=video_embeds,
            text_embeds=text_embeds,
            bool_masked_pos=mask,
        )

    def _global_losses(
        self, video_tokens, video_embeds, input_ids, attention_mask, text_outputs, text_embeds, logits_per_video,
        source_ids, temperature,
    ) -> dict[str, torch.Tensor]:
        config = self.config
        terms = {
            "vtc": self._contrastive(
                video_embeds,
                text_embeds,
                all_gather_with_grad(video_embeds),
                all_gather_with_grad(text_embeds),
                process_rank() * video_embeds.shape[0],
                temperature,
                source_ids=gather_without_grad(source_ids),
                same_source=config.global_same_source,
            )
        }
        same_source = source_ids[:, None] == source_ids[None, :]
        if config.exclude_identical_texts:
            same_source = same_source | identical_texts(input_ids, attention_mask)
        terms["vtm"] = self._matching_loss(
            video_tokens, text_outputs.last_hidden_state, attention_mask, logits_per_video.detach(), same_source
        )
        if config.lambda_mlm > 0:
            terms["mlm"] = self._masked_language_loss(input_ids, attention_mask, video_tokens)
        return terms

    def _instance_losses(
        self,
        video_tokens: torch.Tensor,
        instance_pixel_values: torch.Tensor,
        instance_input_ids: torch.Tensor,
        instance_attention_mask: torch.Tensor,
        instance_sample_index: torch.Tensor,
        instance_source_id: torch.Tensor,
        instance_temperature: torch.Tensor,
        instance_counts: list[int],
        mask_tokens: bool,
    ) -> dict[str, torch.Tensor]:
        config = self.config
        instances = self.instap.encode_instances(
            instance_pixel_values,
            video_tokens,
            instance_sample_index,
            bool_masked_pos=self._crop_mask(instance_pixel_values, mask_tokens),
        )
        text_outputs = self.instap.text_model(
            input_ids=instance_input_ids, attention_mask=instance_attention_mask, mode="text", return_dict=True
        )
        caption_embeds = F.normalize(self.instap.text_projection(text_outputs.pooler_output), dim=-1)
        row_offset = sum(instance_counts[: process_rank()])  # this rank's first row among the gathered instances
        same_text = gathered_same_text = None
        if config.exclude_identical_texts:
            masked_ids = instance_input_ids.masked_fill(instance_attention_mask == 0, -1)
            gathered_same_text = identical_texts(all_gather_variable(masked_ids, instance_counts, with_grad=False))
            rows = slice(row_offset, row_offset + instance_input_ids.shape[0])
            same_text = gathered_same_text[rows, rows]  # this rank's block, for the local VTM negatives
        terms = {
            # Instance counts differ between ranks: gather with padding.
            "inst_vtc": self._contrastive(
                instances.instance_embeds,
                caption_embeds,
                all_gather_variable(instances.instance_embeds, instance_counts),
                all_gather_variable(caption_embeds, instance_counts),
                row_offset,
                instance_temperature,
                source_ids=all_gather_variable(instance_source_id, instance_counts, with_grad=False),
                same_source=config.instance_same_source,
                exclude_pairs=gathered_same_text,
            )
        }
        # Hard negatives never come from the same source sample (nor the positive itself).
        with torch.no_grad():
            similarity = instances.instance_embeds @ caption_embeds.t() / instance_temperature
            exclude = instance_source_id[:, None] == instance_source_id[None, :]
            if same_text is not None:
                exclude = exclude | same_text
        terms["inst_vtm"] = self._matching_loss(
            self.instap.instance_matching_context(instances),
            text_outputs.last_hidden_state,
            instance_attention_mask,
            similarity,
            exclude,
        )
        if config.lambda_inst > 0 and config.lambda_inst_mlm > 0:
            terms["inst_mlm"] = self._masked_language_loss(
                instance_input_ids, instance_attention_mask, instances.pooled_hidden_states
            )
        return terms

    def _instance_contrastive_without_local_rows(
        self, instance_temperature: torch.Tensor, instance_counts: list[int], device, text_length: int = 0
    ) -> torch.Tensor:
        """This rank has no instance but others do: join their gathers with zero rows.

        The loss over the gathered instances is the same on every rank; the empty leaves make this rank take part
        in the gathers' backward (an all-reduce) as well. The local-only instance terms (VTM, MLM) have no rows here.
        """
        dim, dtype = self.config.projection_dim, self.instap.visual_projection.weight.dtype
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32  # all_gather_variable gathers half precision as float32
        empty_crops = torch.zeros(0, dim, device=device, dtype=dtype, requires_grad=True)
        empty_captions = torch.zeros(0, dim, device=device, dtype=dtype, requires_grad=True)
        empty_ids = torch.zeros(0, dtype=torch.long, device=device)
        same_text = None
        if self.config.exclude_identical_texts:  # join the caption-id gather too (the processor's fixed length)
            empty_captions_ids = torch.zeros(0, text_length, dtype=torch.long, device=device)
            same_text = identical_texts(all_gather_variable(empty_captions_ids, instance_counts, with_grad=False))
        return self._contrastive(
            empty_crops,
            empty_captions,
            all_gather_variable(empty_crops, instance_counts),
            all_gather_variable(empty_captions, instance_counts),
            sum(instance_counts[: process_rank()]),
            instance_temperature,
            source_ids=all_gather_variable(empty_ids, instance_counts, with_grad=False),
            same_source=self.config.instance_same_source,
            exclude_pairs=same_text,
        )

    def _contrastive(
        self, video_local, text_local, video_all, text_all, row_offset, temperature, **kwargs
    ) -> torch.Tensor:
        """Eq. 2 / Eq. 8 in `config.contrastive_loss_form`: over the whole gathered batch, or this rank's rows."""
        if self.config.contrastive_loss_form == "local":
            return local_contrastive_loss(
                video_local, text_local, video_all, text_all, row_offset, temperature,
                world_size=process_world_size(), **kwargs,
            )
        return contrastive_loss(video_all, text_all, temperature, **kwargs)

    def _total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(loss_term_weight(self.config, name) * value for name, value in terms.items())


class InstAPForMaskedVideoModeling(InstAPPreTrainedModel):
    """Stage 1: the student regresses the frozen teacher's last-K-layer features on its visible tokens (Eq. 1)."""

    def __init__(self, config: InstAPConfig):
        super().__init__(config)
        if config.teacher_config is None:
            raise ValueError("InstAPForMaskedVideoModeling needs InstAPConfig.teacher_config (the CLIP teacher).")
        self.vision_model = InstAPVisionModel._from_config(config.vision_config)
        self.distillation = InstAPTeacherDistillation(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, mask_tokens: bool = True, **kwargs: Unpack[TransformersKwargs]
    ) -> InstAPForMaskedVideoModelingOutput:
        """`pixel_values`: `(batch, frames, 3, height, width)`; images (1 frame) use `image_mask_ratio`.
        `mask_tokens=False` aligns every token (no mask)."""
        if pixel_values.ndim == 4:
            pixel_values = pixel_values.unsqueeze(1)
        ratio = _media_mask_ratio(self.config, pixel_values.shape[1]) if mask_tokens else 0.0
        mask, targets = self.distillation.mask_and_targets(pixel_values, ratio)
        outputs = self.vision_model(pixel_values, bool_masked_pos=mask, output_hidden_states=True, return_dict=True)
        student, teacher = self.distillation.reconstruction(self.vision_model, outputs, mask, targets)
        return InstAPForMaskedVideoModelingOutput(
            loss=reconstruction_loss(student, teacher),
            student_features=student,
            teacher_features=teacher,
            bool_masked_pos=mask,
        )


class InstAPForGrounding(InstAPPreTrainedModel):
    """Phrase grounding (METHOD §5): a 3-layer MLP on the fused [CLS] predicts a normalised (cx, cy, w, h) box.

    Videos are grounded frame by frame: the caption is fused with each frame's tokens, giving one box per frame.
    """

    _text_side_modules = ("box_head",)

    def __init__(self, config: InstAPConfig):
        super().__init__(config)
        self.instap = InstAPModel(config)
        width, hidden = config.text_config.hidden_size, config.grounding_hidden_size
        self.box_head = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4)
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> InstAPForGroundingOutput:
        r"""
        Args:
            boxes: `(batch, frames, 4)` target boxes, normalised (cx, cy, w, h); `(batch, 4)` for images.
            box_mask: `(batch, frames)` which frames have a target box.
        """
        if pixel_values.ndim == 4:
            pixel_values = pixel_values.unsqueeze(1)
        batch_size, num_frames = pixel_values.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        video_tokens = self.instap.vision_model(pixel_values).last_hidden_state
        frames = num_frames // self.config.vision_config.tubelet_size
        frame_tokens = video_tokens.reshape(batch_size * frames, -1, video_tokens.shape[-1])
        text_states = self.instap.text_model(input_ids=input_ids, attention_mask=attention_mask, mode="text")
        repeat = lambda x: x.repeat_interleave(frames, dim=0)  # noqa: E731 - one caption per frame
        fused = self.instap.fuse(repeat(text_states.last_hidden_state), repeat(attention_mask), frame_tokens)
        pred_boxes = self.box_head(fused.last_hidden_state[:, 0]).sigmoid().reshape(batch_size, frames, 4)
        loss = loss_l1 = loss_giou = None
        if boxes is not None:
            if boxes.ndim == 2:
                boxes = boxes.unsqueeze(1)
            valid = None if box_mask is None else box_mask.reshape(-1).bool()
            loss_l1, loss_giou = box_regression_loss(pred_boxes.reshape(-1, 4), boxes.reshape(-1, 4), valid=valid)
            loss = loss_l1 + loss_giou
        return InstAPForGroundingOutput(loss=loss, loss_l1=loss_l1, loss_giou=loss_giou, pred_boxes=pred_boxes)


__all__ = [
    "InstAPForGrounding",
    "InstAPForMaskedVideoModeling",
    "InstAPForPreTraining",
    "InstAPModel",
    "InstAPPreTrainedModel",
    "InstAPTextModel",
    "InstAPVisionModel",
]
