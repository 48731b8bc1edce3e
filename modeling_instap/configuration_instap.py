"""InstAP model configuration.

`InstAPConfig` holds three sub-configurations, following the composite-config layout of CLIP/SigLIP:

- `vision_config` ([`InstAPVisionConfig`]): the space-time ViT video encoder (UMT style: tubelet embedding, no CLS,
  fixed sinusoid positions, q/v bias, drop-path).
- `text_config` ([`InstAPTextConfig`]): the BERT text encoder whose upper layers (from `fusion_layer` on) carry
  cross-attention to the video tokens and form the fusion encoder.
- `teacher_config` (`CLIPVisionConfig`, optional): the frozen CLIP vision tower used for the attention-guided masks
  and the reconstruction targets (stage 1, and L_rec in stage 2).

Every number of the method (docs/method.md §2–§4) is a field here: temperatures and their clamp, mask strategy and
ratios, teacher input size and returned layers, all loss weights, the MLM probability, the hard-negative switch and
the instance-crop settings. Where the paper and the UMT code disagree, the field selects the reading.
"""

import math
from typing import Literal

from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.clip.configuration_clip import CLIPVisionConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)


def _check_number(config: PreTrainedConfig, name: str) -> float:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{type(config).__name__}.{name} must be a finite number, got {value!r}.")
    return value


def _check_positive(config: PreTrainedConfig, *names: str) -> None:
    for name in names:
        if _check_number(config, name) <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be > 0, got {getattr(config, name)!r}.")


def _check_fraction(config: PreTrainedConfig, name: str, *, include_one: bool = False) -> None:
    value = _check_number(config, name)
    upper_ok = value <= 1.0 if include_one else value < 1.0
    if not (0.0 <= value and upper_ok):
        bound = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"{type(config).__name__}.{name} must be in {bound}, got {value!r}.")


def _check_choice(config: PreTrainedConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {choices}, got {value!r}.")


class InstAPVisionConfig(PreTrainedConfig):
    r"""
    Configuration of [`InstAPVisionModel`], a ViT over space-time patch tokens (UMT's student).

    Args:
        hidden_size (`int`, defaults to 768): width of the encoder.
        num_hidden_layers (`int`, defaults to 12): number of transformer blocks.
        num_attention_heads (`int`, defaults to 12): attention heads per block.
        intermediate_size (`int`, defaults to 3072): width of the MLP.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation.
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon (UMT uses 1e-6).
        image_size (`int`, defaults to 224): input resolution (square).
        patch_size (`int`, defaults to 16): spatial patch size.
        tubelet_size (`int`, defaults to 1): temporal patch size (UMT-L/B use 1).
        num_channels (`int`, defaults to 3): input channels.
        num_frames (`int`, defaults to 16): default frames per clip; the position table is regenerated for any
            frame count and resolution, so this is only the default.
        qkv_bias (`bool`, defaults to `True`): learn a bias for queries and values (never for keys, as in BEiT/UMT).
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        drop_path_rate (`float`, defaults to 0.2): stochastic depth rate of the last block, increasing linearly
            from 0 over depth.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal weight init (UMT/ViT). Patch
            tokens carry their content from the first layer, so the video tower is not collapsed at 0.02 at any
            width (mean cosine of pooled videos 0.6-0.7 at width 64).
    """

    model_type = "instap_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    image_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 1
    num_channels: int = 3
    num_frames: int = 16
    qkv_bias: bool = True
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.2
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_values()

    def validate_values(self):
        """Raise a `ValueError` naming the field if a value is out of range or inconsistent."""
        _check_positive(
            self, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
            "patch_size", "tubelet_size", "num_channels", "num_frames",
        )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"InstAPVisionConfig.hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"InstAPVisionConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})."
            )
        if self.hidden_size % 2 != 0:
            raise ValueError(f"InstAPVisionConfig.hidden_size must be even for the sinusoid table, got {self.hidden_size}.")
        _check_fraction(self, "drop_path_rate")
        _check_fraction(self, "attention_dropout")


class InstAPTextConfig(PreTrainedConfig):
    r"""
    Configuration of [`InstAPTextModel`], a BERT encoder whose layers from `fusion_layer` on add bidirectional
    cross-attention to video tokens (the fusion encoder of ALBEF/UMT). Field names follow `BertConfig`, so a BERT
    checkpoint's config maps onto it directly.

    Args:
        vocab_size (`int`, defaults to 30522): vocabulary size (bert-*-uncased).
        hidden_size (`int`, defaults to 768), num_hidden_layers (`int`, defaults to 12),
        num_attention_heads (`int`, defaults to 12), intermediate_size (`int`, defaults to 3072),
        hidden_act (`str`, defaults to `"gelu"`), hidden_dropout_prob (`float`, defaults to 0.1),
        attention_probs_dropout_prob (`float`, defaults to 0.1), max_position_embeddings (`int`, defaults to 512),
        type_vocab_size (`int`, defaults to 2), layer_norm_eps (`float`, defaults to 1e-12).
        initializer_range (`float`, *optional*): std of the weight init of a from-scratch tower. By default
            `hidden_size ** -0.5`, so each projection keeps the scale of its input at any width: with BERT's fixed
            0.02 a narrow tower starts with every caption's [CLS] nearly the same vector (mean cosine 1.0000 at
            width 64), a plateau that training leaves only by luck. The `instap-b`/`instap-l` presets set BERT's
            0.02 (their text tower is loaded from BERT; only cross-attention starts fresh).
        fusion_layer (`int`, defaults to 9): index of the first fusion layer. Layers `[0, fusion_layer)` are the
            text encoder, layers `[fusion_layer, num_hidden_layers)` the fusion encoder.
        encoder_hidden_size (`int`, defaults to 768): width of the video tokens the fusion layers attend to. The
            composite [`InstAPConfig`] sets it to the video encoder's width.
        pad_token_id, cls_token_id, sep_token_id, mask_token_id (`int`): special token ids of the tokenizer
            (bert-base-uncased values by default); the MLM masking never touches [PAD] and [CLS].
    """

    model_type = "instap_text_model"
    base_config_key = "text_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float | None = None
    fusion_layer: int = 9
    encoder_hidden_size: int = 768
    pad_token_id: int | None = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.initializer_range is None:
            self.initializer_range = self.hidden_size**-0.5
        self.validate_values()

    def validate_values(self):
        """Raise a `ValueError` naming the field if a value is out of range or inconsistent."""
        _check_positive(
            self, "initializer_range", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "encoder_hidden_size",
        )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"InstAPTextConfig.hidden_size ({self.hidden_size}) must be a multiple of "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if not 0 < self.fusion_layer < self.num_hidden_layers:
            raise ValueError(
                f"InstAPTextConfig.fusion_layer must be in (0, num_hidden_layers={self.num_hidden_layers}) so that "
                f"both the text and the fusion encoder have layers, got {self.fusion_layer}."
            )
        for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                # A warning, as transformers gives for token ids: a config rebuilt with another vocabulary may not
                # have set them yet, and only the MLM masking and the [PAD] embedding read them.
                logger.warning(
                    f"InstAPTextConfig.{name}={value} is outside [0, vocab_size={self.vocab_size}); set it to the "
                    "tokenizer's id before pre-training (MLM masking and the [PAD] embedding read it)."
                )
        _check_fraction(self, "hidden_dropout_prob")
        _check_fraction(self, "attention_probs_dropout_prob")

    @property
    def num_fusion_layers(self) -> int:
        return self.num_hidden_layers - self.fusion_layer


class InstAPConfig(PreTrainedConfig):
    r"""
    Configuration of the InstAP models ([`InstAPModel`], [`InstAPForPreTraining`],
    [`InstAPForMaskedVideoModeling`], [`InstAPForGrounding`]).

    Args:
        vision_config (`dict` or [`InstAPVisionConfig`]): the video encoder.
        text_config (`dict` or [`InstAPTextConfig`]): the text + fusion encoder.
        teacher_config (`dict` or `CLIPVisionConfig`, *optional*): the frozen CLIP teacher. Without it, masks are
            random and the reconstruction loss is skipped.
        projection_dim (`int`, defaults to 512): size of the shared video-text embedding space.
        temperature_init (`float`, defaults to 0.07): initial τ of the global contrastive loss. Stored as τ itself
            (not its log), as in UMT, and clamped to `[temperature_min, temperature_max]` at every forward.
        instance_temperature_init (`float`, defaults to 0.07): initial τ_inst of the instance contrastive loss.
        separate_instance_temperature (`bool`, defaults to `True`): the instance VTC learns its own τ_inst (METHOD
            Eq. 8); `False` uses the global τ for both (the baseline row of the paper's Table 5).
        temperature_min, temperature_max (`float`): the clamp, [0.001, 0.5].
        mask_strategy (`str`, defaults to `"umt"`): how the teacher picks visible tokens. `"umt"`: per frame, draw
            the visible patches with probability proportional to the teacher's CLS attention (UMT code).
            `"mean_attention"`: hide the tokens receiving the lowest mean attention (the paper's text).
            `"random"`: uniform random tokens per frame (no teacher needed).
        video_mask_ratio (`float`, defaults to 0.8), image_mask_ratio (`float`, defaults to 0.5): ρ for videos and
            images (1-frame clips).
        teacher_image_size (`int`, defaults to 224): the teacher's input size; chosen so its patch grid equals the
            student's (196 for CLIP L/14 against a /16 student at 224).
        teacher_num_layers (`int`, defaults to 6): K, the number of last blocks aligned between student and teacher.
        lambda_rec, lambda_vtc, lambda_vtm, lambda_mlm (`float`, defaults to 1.0): weights of L_rec and the global
            losses. lambda_inst (`float`, defaults to 0.1): weight of the instance losses; lambda_inst_vtc,
            lambda_inst_vtm, lambda_inst_mlm (`float`, defaults to 1.0) weight the terms inside L_inst.
        mlm_probability (`float`, defaults to 0.5): share of caption tokens chosen for MLM (UMT).
        vtm_hard_negatives (`bool`, defaults to `True`): sample VTM negatives from the similarity distribution;
            `False` samples them uniformly among non-positives.
        global_same_source (`str`, defaults to `"positive"`): in the global VTC, pairs sharing a source id are soft
            positives (UMT); `"exclude"` drops them from the denominator instead.
        instance_same_source (`str`, defaults to `"exclude"`): in the instance VTC, other instances of the same
            sample leave the denominator (METHOD Eq. 8); `"positive"` makes them soft positives.
        crop_mask_strategy (`str`, defaults to `"random"`): masking of instance crops during training (`"random"`,
            `"teacher"` or `"none"`); crops are never masked at evaluation.
        crop_mask_ratio (`float`, *optional*): ρ of the crop clips in training, for images and videos alike; by
            default the ratio of their media type (`video_mask_ratio` / `image_mask_ratio`, METHOD §4.2). A higher
            value is a speed knob: the crops are most of the instance branch's cost (README, benchmarks).
        max_instances_per_sample (`int`, defaults to 4): cap on the instances of one sample entering a step.
        crop_checkpointing, instance_text_checkpointing (`str`, default to `"none"`): activation checkpointing of the
            encoders' layers in the instance branch only, memory knobs that change no value: the crop clips' pass
            through the video encoder, and the instance captions' passes through the text and fusion layers.
            `"selective"` keeps each layer's matmul and attention outputs and recomputes the rest (LayerNorm, GELU,
            softmax, dropout) in backward; `"full"` keeps each layer's input only and recomputes the layer. Layers
            checkpointed for the whole model (`gradient_checkpointing_enable`) keep that.
        crop_size (`int`, *optional*): side of the crop clips; defaults to the video encoder's `image_size`.
        instance_vtm_context (`str`, defaults to `"pooled"`): visual context of the instance VTM: the raw pooled crop
            embedding as one token (the paper's Eq. 9), all crop tokens (`"tokens"`), or the crop tokens after the
            attention pool over the scene (`"attention_pool"`, Z of Eq. 5, which also sees what the crop's surroundings
            show, as the captions' "left of the blue square" or "in the top left" need).
        exclude_identical_texts (`bool`, defaults to `False`): captions with the same tokens are never negatives of
            each other: not drawn as VTM hard negatives (global and instance), and out of the instance VTC's
            denominators. METHOD does not do this (False); data whose short captions repeat across samples needs it.
        contrastive_loss_form (`str`, defaults to `"global"`): every rank computes the VTC losses over the whole
            gathered batch (`"global"`), or only its own rows against the gathered columns (`"local"`, open_clip's
            local loss: the same update under DDP, logits `world_size` times smaller; the logged value is the rank's
            share times the world size, whose mean over ranks is the loss).
        attention_pool_num_heads (`int`, *optional*): heads of the instance attention pool (video encoder heads by
            default).
        eval_frame_pooling (`str`, defaults to `"frames"`): how `get_video_features` pools a clip without a mask:
            each frame, averaging the frame similarities (UMT's evaluation), or all tokens at once (`"video"`).
        grounding_hidden_size (`int`, *optional*): width of the 3-layer box MLP (text width by default).
        tie_word_embeddings (`bool`, defaults to `True`): tie the MLM decoder to the word embeddings (BERT).
    """

    model_type = "instap"
    sub_configs_defaults = {
        "vision_config": InstAPVisionConfig,
        "text_config": InstAPTextConfig,
        "teacher_config": SubConfigSpec(config_class=CLIPVisionConfig, optional=True),
    }

    vision_config: dict | InstAPVisionConfig | None = None
    text_config: dict | InstAPTextConfig | None = None
    teacher_config: dict | CLIPVisionConfig | None = None

    projection_dim: int = 512
    temperature_init: float = 0.07
    instance_temperature_init: float = 0.07
    separate_instance_temperature: bool = True
    temperature_min: float = 0.001
    temperature_max: float = 0.5

    mask_strategy: Literal["umt", "mean_attention", "random"] = "umt"
    video_mask_ratio: float = 0.8
    image_mask_ratio: float = 0.5
    teacher_image_size: int = 224
    teacher_num_layers: int = 6

    lambda_rec: float = 1.0
    lambda_vtc: float = 1.0
    lambda_vtm: float = 1.0
    lambda_mlm: float = 1.0
    lambda_inst: float = 0.1
    lambda_inst_vtc: float = 1.0
    lambda_inst_vtm: float = 1.0
    lambda_inst_mlm: float = 1.0

    mlm_probability: float = 0.5
    vtm_hard_negatives: bool = True
    global_same_source: Literal["positive", "exclude"] = "positive"
    instance_same_source: Literal["positive", "exclude"] = "exclude"

    crop_mask_strategy: Literal["random", "teacher", "none"] = "random"
    crop_mask_ratio: float | None = None
    max_instances_per_sample: int = 4
    crop_checkpointing: Literal["none", "selective", "full"] = "none"
    instance_text_checkpointing: Literal["none", "selective", "full"] = "none"
    crop_size: int | None = None
    instance_vtm_context: Literal["pooled", "tokens", "attention_pool"] = "pooled"
    exclude_identical_texts: bool = False
    contrastive_loss_form: Literal["global", "local"] = "global"
    attention_pool_num_heads: int | None = None
    eval_frame_pooling: Literal["frames", "video"] = "frames"
    grounding_hidden_size: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # The fusion layers' cross-attention keys/values read video tokens: their width is the video encoder's.
        self.text_config.encoder_hidden_size = self.vision_config.hidden_size
        if self.crop_size is None:
            self.crop_size = self.vision_config.image_size
        if self.attention_pool_num_heads is None:
            self.attention_pool_num_heads = self.vision_config.num_attention_heads
        if self.grounding_hidden_size is None:
            self.grounding_hidden_size = self.text_config.hidden_size
        self.validate_values()

    def validate_values(self):
        """Raise a `ValueError` naming the field if a value of the method is out of range or inconsistent."""
        _check_positive(
            self, "projection_dim", "temperature_init", "instance_temperature_init", "temperature_min",
            "temperature_max", "teacher_image_size", "teacher_num_layers", "max_instances_per_sample", "crop_size",
            "attention_pool_num_heads", "grounding_hidden_size",
        )
        for name in ("temperature_init", "instance_temperature_init"):
            value = getattr(self, name)
            if not self.temperature_min <= value <= self.temperature_max:
                raise ValueError(
                    f"InstAPConfig.{name} ({value}) must lie in [temperature_min, temperature_max] = "
                    f"[{self.temperature_min}, {self.temperature_max}]."
                )
        _check_choice(self, "mask_strategy", ("umt", "mean_attention", "random"))
        _check_choice(self, "global_same_source", ("positive", "exclude"))
        _check_choice(self, "instance_same_source", ("positive", "exclude"))
        _check_choice(self, "crop_mask_strategy", ("random", "teacher", "none"))
        _check_choice(self, "instance_vtm_context", ("pooled", "tokens", "attention_pool"))
        _check_choice(self, "crop_checkpointing", ("none", "selective", "full"))
        _check_choice(self, "instance_text_checkpointing", ("none", "selective", "full"))
        _check_choice(self, "contrastive_loss_form", ("global", "local"))
        _check_choice(self, "eval_frame_pooling", ("frames", "video"))
        _check_fraction(self, "video_mask_ratio")
        _check_fraction(self, "image_mask_ratio")
        if self.crop_mask_ratio is not None:
            _check_fraction(self, "crop_mask_ratio")
        _check_fraction(self, "mlm_probability", include_one=True)
        for name in (
            "lambda_rec", "lambda_vtc", "lambda_vtm", "lambda_mlm", "lambda_inst", "lambda_inst_vtc",
            "lambda_inst_vtm", "lambda_inst_mlm",
        ):
            if _check_number(self, name) < 0:
                raise ValueError(f"InstAPConfig.{name} must be >= 0, got {getattr(self, name)!r}.")
        if self.vision_config.hidden_size % self.attention_pool_num_heads != 0:
            raise ValueError(
                f"InstAPConfig.attention_pool_num_heads ({self.attention_pool_num_heads}) must divide the video "
                f"width ({self.vision_config.hidden_size})."
            )
        if self.crop_size % self.vision_config.patch_size != 0:
            raise ValueError(
                f"InstAPConfig.crop_size ({self.crop_size}) must be a multiple of the patch size "
                f"({self.vision_config.patch_size})."
            )
        if self.mask_strategy != "random" or self.crop_mask_strategy == "teacher":
            if self.teacher_config is None:
                logger.info("No teacher_config: teacher-guided masks fall back to random masks.")
        if self.teacher_config is not None:
            teacher = self.teacher_config
            if self.teacher_image_size % teacher.patch_size != 0:
                raise ValueError(
                    f"InstAPConfig.teacher_image_size ({self.teacher_image_size}) must be a multiple of the teacher's "
                    f"patch size ({teacher.patch_size})."
                )
            teacher_grid = self.teacher_image_size // teacher.patch_size
            student_grid = self.vision_config.image_size // self.vision_config.patch_size
            if teacher_grid != student_grid:
                raise ValueError(
                    f"InstAPConfig.teacher_image_size ({self.teacher_image_size}) gives a {teacher_grid}x{teacher_grid} "
                    f"teacher grid, but the student grid is {student_grid}x{student_grid}: the masks and targets are "
                    f"per patch, so both grids must match (use {student_grid * teacher.patch_size})."
                )
            if self.vision_config.tubelet_size != 1:
                raise ValueError(
                    "InstAPConfig: a teacher needs vision_config.tubelet_size == 1 (the teacher scores every frame), "
                    f"got {self.vision_config.tubelet_size}."
                )
            if not 0 < self.teacher_num_layers <= min(teacher.num_hidden_layers, self.vision_config.num_hidden_layers):
                raise ValueError(
                    f"InstAPConfig.teacher_num_layers ({self.teacher_num_layers}) must be in [1, min(teacher depth "
                    f"{teacher.num_hidden_layers}, student depth {self.vision_config.num_hidden_layers})]."
                )

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "InstAPConfig":
        """Build a named configuration: `"instap-l"` (the paper's), `"instap-b"` or `"tiny"` (tests and demos).

        Keyword arguments override top-level fields of the preset.
        """
        fields = cls.preset_fields(name)
        fields.update(kwargs)
        return cls(**fields)

    @staticmethod
    def preset_fields(name: str) -> dict:
        """The fields a preset sets (a fresh dict; sub-configs as dicts), before defaults and derived values."""
        presets = {"instap-l": _instap_large, "instap-b": _instap_base, "tiny": _instap_tiny}
        if name not in presets:
            raise ValueError(f"Unknown InstAP preset {name!r}; choose one of {sorted(presets)}.")
        return presets[name]()

    def preset_name(self) -> str | None:
        """The preset whose architecture this is (widths, depths, heads, patch, fusion layer, projection), or None."""

        def architecture(config: "InstAPConfig") -> tuple:
            v, t = config.vision_config, config.text_config
            return (
                v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size, v.patch_size,
                t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size, t.fusion_layer,
                config.projection_dim,
            )

        return next((name for name in PRESETS if architecture(InstAPConfig.from_preset(name)) == architecture(self)), None)


PRESETS = ("instap-l", "instap-b", "tiny")  # largest first: the order presets are matched in


def _instap_large() -> dict:
    # ViT-L/16 student, BERT-large (fusion from layer 19), CLIP ViT-L/14 teacher at 196² (14x14 grid = student's).
    return {
        "vision_config": {
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
            "image_size": 224, "patch_size": 16, "num_frames": 16, "drop_path_rate": 0.2,
        },
        "text_config": {
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
            "fusion_layer": 19, "initializer_range": 0.02,
        },
        "teacher_config": {
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
            "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
        },
        "projection_dim": 768,
        "teacher_image_size": 196,
        "teacher_num_layers": 6,
    }


def _instap_base() -> dict:
    # ViT-B/16 student, BERT-base (fusion from layer 9), CLIP ViT-B/16 teacher at 224² (UMT-B).
    return {
        "vision_config": {
            "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "image_size": 224, "patch_size": 16, "num_frames": 16, "drop_path_rate": 0.2,
        },
        "text_config": {"fusion_layer": 9, "initializer_range": 0.02},
        "teacher_config": {
            "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "image_size": 224, "patch_size": 16, "projection_dim": 512, "hidden_act": "quick_gelu",
        },
        "projection_dim": 512,
        "teacher_image_size": 224,
        "teacher_num_layers": 6,
    }


def _instap_tiny() -> dict:
    # A few hundred thousand parameters: 32² inputs, 4x4 patch grid, 4 blocks; runs in milliseconds on CPU.
    return {
        "vision_config": {
            "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
            "image_size": 32, "patch_size": 8, "num_frames": 4, "drop_path_rate": 0.1,
        },
        "text_config": {
            "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
            "intermediate_size": 128, "max_position_embeddings": 64, "fusion_layer": 2,
            "pad_token_id": 0, "cls_token_id": 1, "sep_token_id": 2, "mask_token_id": 3,
        },
        "teacher_config": {
            "hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 96,
            "image_size": 32, "patch_size": 8, "projection_dim": 32, "hidden_act": "quick_gelu",
        },
        "projection_dim": 32,
        "teacher_image_size": 32,
        "teacher_num_layers": 2,
    }


__all__ = ["InstAPConfig", "InstAPTextConfig", "InstAPVisionConfig"]
