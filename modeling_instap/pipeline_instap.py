# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Zero-shot video classification (video-to-text retrieval over candidate texts) with an InstAP model.

    from transformers import pipeline

    classifier = pipeline("zero-shot-video-classification", model="org/instap-l", trust_remote_code=True)
    classifier("video.mp4", candidate_labels=["a dog catches a frisbee", "a man is cooking"])
    # [{"label": "a dog catches a frisbee", "score": 0.93}, {"label": "a man is cooking", "score": 0.07}]

Scores are the softmax over the candidates of the dual-encoder logits cos(video, text) / τ (frame-averaged cosine,
as at evaluation, METHOD §5). With `rerank=True` the `rerank_k` best candidates of the dual encoder are re-scored by
the matching head (its positive logit on the fused video-text pair, UMT's re-ranking) and the scores are the softmax
of those logits over the re-ranked candidates (0 for the others).

This file is self-contained (only `torch` and `transformers` imports) because it ships as Hub remote code: a folder
written by `instap_train.hub.export_for_hub` holds a copy and names it in `config.json` under `custom_pipelines`, so
`pipeline(..., trust_remote_code=True)` works where the InstAP packages are not installed. Importing this module
registers the task with `transformers.pipelines.PIPELINE_REGISTRY` (for folders without `custom_pipelines`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

__all__ = ["TASK", "InstAPZeroShotVideoClassificationPipeline", "register_pipeline"]

# Not a built-in task of transformers 5.23 (`transformers.pipelines.SUPPORTED_TASKS` has "video-classification" and
# "zero-shot-image-classification" only), so registering it shadows nothing.
TASK = "zero-shot-video-classification"


class InstAPZeroShotVideoClassificationPipeline(Pipeline):
    """Ranks candidate texts for a video with an InstAP dual encoder (optionally re-ranked by the matching head).

    Inputs: a video path, encoded bytes, a `(T, H, W, C)` uint8 array/tensor, or a list of those (one result list
    per video). Frames are sampled and resized by the model's `InstAPVideoProcessor` (evaluation sampling: the
    middle frame of each of `num_frames` segments).

    Call arguments:
        candidate_labels (`list[str]`): the texts to rank (class names or captions).
        hypothesis_template (`str`, defaults to `"{}"`): formats each label into a text, e.g. `"a video of {}."`.
        rerank (`bool`, defaults to `False`): re-score the best `rerank_k` candidates with the matching head.
        rerank_k (`int`, *optional*): candidates re-ranked (all by default).
        num_frames (`int`, *optional*): frames sampled per video (the processor's default otherwise).
        top_k (`int`, *optional*): return only the best `top_k` labels.

    Returns: `[{"label": str, "score": float}, ...]` sorted by decreasing score; the scores sum to 1.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __call__(self, videos: Any, candidate_labels: list[str] | None = None, **kwargs: Any):
        if candidate_labels is None:
            raise ValueError("Pass `candidate_labels`: the texts to rank for each video.")
        if isinstance(candidate_labels, str):
            candidate_labels = [candidate_labels]
        if not candidate_labels:
            raise ValueError("`candidate_labels` is empty.")
        return super().__call__(videos, candidate_labels=list(candidate_labels), **kwargs)

    def _sanitize_parameters(
        self,
        candidate_labels=None,
        hypothesis_template=None,
        num_frames=None,
        rerank=None,
        rerank_k=None,
        top_k=None,
        **kwargs,
    ):
        preprocess_params: dict[str, Any] = {}
        if candidate_labels is not None:
            preprocess_params["candidate_labels"] = candidate_labels
        if hypothesis_template is not None:
            preprocess_params["hypothesis_template"] = hypothesis_template
        if num_frames is not None:
            preprocess_params["num_frames"] = int(num_frames)
        forward_params: dict[str, Any] = {}
        if rerank is not None:
            forward_params["rerank"] = bool(rerank)
        if rerank_k is not None:
            forward_params["rerank_k"] = int(rerank_k)
        postprocess_params: dict[str, Any] = {}
        if top_k is not None:
            postprocess_params["top_k"] = int(top_k)
        return preprocess_params, forward_params, postprocess_params

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        processor = self.processor
        if hasattr(processor, "tokenize"):  # InstAPProcessor: padded to its max_length, no token type ids
            return dict(processor.tokenize(texts))
        encoded = processor.tokenizer(
            texts, padding=True, truncation=True, return_token_type_ids=False, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def preprocess(self, video, candidate_labels=None, hypothesis_template="{}", num_frames=None):
        kwargs = {} if num_frames is None else {"num_frames": num_frames}
        vision = self.processor(videos=[video], **kwargs)
        texts = [hypothesis_template.format(label) for label in candidate_labels]
        inputs = {"pixel_values": vision["pixel_values"].to(self.dtype)}
        inputs.update(self._tokenize(texts))
        inputs["candidate_labels"] = list(candidate_labels)
        return inputs

    def _forward(self, model_inputs, rerank=False, rerank_k=None):
        candidate_labels = model_inputs.pop("candidate_labels")
        model = self.model.instap if hasattr(self.model, "instap") else self.model
        video = model.get_video_features(model_inputs["pixel_values"])
        text = model.get_text_features(model_inputs["input_ids"], model_inputs["attention_mask"])
        temperature, _ = model.clamped_temperatures()
        logits = (video.pooler_output @ text.pooler_output.t() / temperature)[0]  # (num_labels,)
        outputs = {"candidate_labels": candidate_labels, "logits": logits}
        if rerank:
            k = len(candidate_labels) if rerank_k is None else max(1, min(int(rerank_k), len(candidate_labels)))
            top = logits.topk(k).indices
            # The one video for every candidate: its cross-attention keys and values projected once.
            match = model.match_score(
                video.last_hidden_state[:1], text.last_hidden_state[top], model_inputs["attention_mask"][top],
                video_index=top.new_zeros(k),
            )[:, 1]
            outputs["rerank_indices"] = top
            outputs["rerank_logits"] = match
        return outputs

    def postprocess(self, model_outputs, top_k=None):
        labels = model_outputs["candidate_labels"]
        if "rerank_logits" in model_outputs:
            scores = torch.zeros(len(labels), dtype=torch.float32)
            scores[model_outputs["rerank_indices"].cpu()] = model_outputs["rerank_logits"].float().cpu().softmax(-1)
        else:
            scores = model_outputs["logits"].float().cpu().softmax(-1)
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        if top_k is not None:
            order = order[:top_k]
        return [{"label": labels[i], "score": float(scores[i])} for i in order]


def register_pipeline(overwrite: bool = False) -> bool:
    """Registers the task with `PIPELINE_REGISTRY` (model class: `AutoModel`); returns whether it registered."""
    if TASK in PIPELINE_REGISTRY.get_supported_tasks() and not overwrite:
        return False
    PIPELINE_REGISTRY.register_pipeline(
        TASK,
        pipeline_class=InstAPZeroShotVideoClassificationPipeline,
        pt_model=AutoModel,
        type="multimodal",
    )
    return True


# The installed module takes the task over; a copy loaded as remote code (`transformers_modules.*`) only claims it
# when nothing else has.
register_pipeline(overwrite=not __name__.startswith("transformers_modules"))
