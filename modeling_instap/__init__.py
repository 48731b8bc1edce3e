"""InstAP models on the `PreTrainedModel` API.

Importing this package registers the `instap` model type with `AutoConfig`, `AutoModel` and
`AutoModelForPreTraining`, and the `zero-shot-video-classification` pipeline task, and marks the classes for
remote code, so that `save_pretrained` writes an `auto_map` and copies these files: a folder saved from here loads
with `AutoModel.from_pretrained(folder, trust_remote_code=True)` in a process that never imported `modeling_instap`.
(`import instap_processing` imports this package and registers the processors too: the one import a script needs.)
"""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .configuration_instap import InstAPConfig, InstAPTextConfig, InstAPVisionConfig
from .modeling_instap import (
    InstAPForGrounding,
    InstAPForMaskedVideoModeling,
    InstAPForPreTraining,
    InstAPModel,
    InstAPPreTrainedModel,
    InstAPTextModel,
    InstAPVisionModel,
    selective_recompute_context,
)
from .pipeline_instap import InstAPZeroShotVideoClassificationPipeline

AutoConfig.register(InstAPConfig.model_type, InstAPConfig, exist_ok=True)
AutoModel.register(InstAPConfig, InstAPModel, exist_ok=True)
AutoModelForPreTraining.register(InstAPConfig, InstAPForPreTraining, exist_ok=True)

InstAPConfig.register_for_auto_class()
InstAPModel.register_for_auto_class("AutoModel")
InstAPForPreTraining.register_for_auto_class("AutoModelForPreTraining")

__all__ = [
    "InstAPConfig",
    "InstAPForGrounding",
    "InstAPForMaskedVideoModeling",
    "InstAPForPreTraining",
    "InstAPModel",
    "InstAPPreTrainedModel",
    "InstAPTextConfig",
    "InstAPTextModel",
    "InstAPVisionConfig",
    "InstAPVisionModel",
    "InstAPZeroShotVideoClassificationPipeline",
    "selective_recompute_context",
]
