# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Zero-shot video-text and instance retrieval with matching-head re-ranking (METHOD §5, UMT `retrieval_utils`).

1. Dual encoder: every text and every video is embedded once; `scores[v, t]` = cosine similarity (frame-averaged
   for videos, see `InstAPModel.get_video_features`). The score matrix is built in chunks.
2. Re-ranking: for each query, its top-k candidates are scored by the matching head on fused pairs; every other
   candidate gets -100. Text→video and video→text are re-ranked separately, as in UMT. The score of a candidate is
   `rerank_score`: `"positive_logit"` (METHOD §5, UMT) or `"fused"`, the log of the product of both models'
   probabilities, `s/τ + log p(match)` (BLIP adds the similarity to the logit for the same reason: a matching head
   that is less sure than the dual encoder refines its ranking instead of replacing it).

Memory stays bounded: video tokens (the fusion context, the big tensors) are never held for the whole split. The
second pass walks the videos in chunks, re-encodes each chunk (or reuses a chunk cache within a byte budget) and
scores every pair of either direction's top-k lists that involves those videos, in fusion batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .retrieval import ground_truth_with_identical_texts, video_text_retrieval_metrics

__all__ = [
    "EncodedTexts",
    "backbone_of",
    "RetrievalResult",
    "encode_texts",
    "encode_videos",
    "instance_retrieval",
    "RERANK_SCORES",
    "describe_rerank",
    "rerank_with_matching_head",
    "similarity_in_chunks",
    "zero_shot_retrieval",
]

RERANK_FLOOR = -100.0  # UMT's score for candidates outside the top k
# The re-ranking rules (`rerank_pair_scores`), each with the words a results table uses for it.
_RERANK_RULES = {
    "positive_logit": "the matching head's positive logit",
    "fused": "the dual encoder's and the matching head's log probabilities added (s/τ + log p(match))",
}
RERANK_SCORES = tuple(_RERANK_RULES)


def check_rerank_score(rerank_score: str) -> None:
    if rerank_score not in RERANK_SCORES:
        raise ValueError(f"rerank_score must be one of {RERANK_SCORES}, got {rerank_score!r}.")


def describe_rerank(rerank_score: str, k: int) -> str:
    """One sentence for a results table: what the re-ranked rows are."""
    check_rerank_score(rerank_score)
    return f"Re-ranked rows: {_RERANK_RULES[rerank_score]} on each query's top {k}; recalls only, since ranks outside the top k are not meaningful."


def rerank_pair_scores(
    match_logits: torch.Tensor, dual_scores: torch.Tensor, rerank_score: str, temperature: float | None = None
) -> torch.Tensor:
    """The re-ranked score of each pair from its matching-head logits `(pairs, 2)` and dual-encoder cosine `(pairs,)`.

    `"positive_logit"`: the logit of "matches". `"fused"`: `cosine / temperature + log softmax(logits)[1]`, the log of
    the dual encoder's (unnormalised) and the matching head's probabilities; the per-query normaliser of the dual
    encoder's softmax does not change a query's ranking. Fused scores are kept above `RERANK_FLOOR`, so a top-k
    candidate always ranks above the rest.
    """
    check_rerank_score(rerank_score)
    if rerank_score == "positive_logit":
        return match_logits[:, 1]
    if temperature is None:
        raise ValueError('rerank_score="fused" needs the dual encoder\'s temperature.')
    fused = dual_scores / temperature + match_logits.float().log_softmax(dim=-1)[:, 1]
    return fused.clamp_min(RERANK_FLOOR + 1)


@dataclass
class EncodedTexts:
    """Text-side tensors needed for both scoring stages: embeddings, text-layer states and their masks."""

    embeds: torch.Tensor  # (num_texts, projection_dim), normalised
    hidden_states: torch.Tensor  # (num_texts, length, text_width), output of the text layers
    attention_mask: torch.Tensor  # (num_texts, length)


@dataclass
class RetrievalResult:
    """Both score matrices and both metric sets (`dual` = dual encoder only, `rerank` = matching head)."""

    scores_dual: torch.Tensor
    scores_rerank_v2t: torch.Tensor | None
    scores_rerank_t2v: torch.Tensor | None
    metrics_dual: dict[str, float]
    metrics_rerank: dict[str, float] | None
    timings: dict[str, float] = field(default_factory=dict)


class NoInstancesError(ValueError):
    """Instance retrieval was asked of batches that hold no instance."""


def backbone_of(model):
    """The `InstAPModel` inside a task head (`InstAPForPreTraining.instap`, also through a PEFT wrapper, which forwards
    attributes; its `base_model` would be the PEFT tuner), or `model` itself."""
    return model.instap if hasattr(model, "instap") else model


@torch.no_grad()
def encode_texts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 256) -> EncodedTexts:
    """Embed all captions with the text layers (mode "text"), in batches."""
    backbone = backbone_of(model)
    device = next(backbone.parameters()).device
    embeds, states = [], []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        mask = attention_mask[start : start + batch_size].to(device)
        out = backbone.get_text_features(ids, mask)
        embeds.append(out.pooler_output.float().cpu())
        states.append(out.last_hidden_state.cpu())
    return EncodedTexts(torch.cat(embeds), torch.cat(states), attention_mask.cpu())


@torch.no_grad()
def encode_videos(
    model, video_batches: Iterable[torch.Tensor], keep_tokens: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Embed videos given as an iterable of `pixel_values` batches; optionally keep each batch's tokens (on CPU)."""
    backbone = backbone_of(model)
    device = next(backbone.parameters()).device
    embeds, tokens = [], [] if keep_tokens else None
    for pixel_values in tqdm(video_batches, desc="encoding videos", disable=None, leave=False):
        out = backbone.get_video_features(pixel_values.to(device))
        embeds.append(out.pooler_output.float().cpu())
        if keep_tokens:
            tokens.append(out.last_hidden_state.cpu())
    if not embeds:
        raise ValueError("No video batch to encode.")
    return torch.cat(embeds), tokens


def similarity_in_chunks(video_embeds: torch.Tensor, text_embeds: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """`(num_videos, num_texts)` dot products, computed `chunk` videos at a time."""
    rows = [video_embeds[start : start + chunk] @ text_embeds.t() for start in range(0, video_embeds.shape[0], chunk)]
    return torch.cat(rows)


@torch.no_grad()
def rerank_with_matching_head(
    model,
    scores: torch.Tensor,
    texts: EncodedTexts,
    video_token_batches: Callable[[], Iterator[torch.Tensor]],
    k: int = 128,
    fusion_batch_size: int = 256,
    rerank_score: str = "positive_logit",
    temperature: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank the top `k` of each query by the matching head (UMT `itm` re-ranking).

    Args:
        scores: `(num_videos, num_texts)` dual-encoder scores.
        texts: the encoded captions.
        video_token_batches: a callable returning a fresh iterator over the videos' token tensors
            `(batch, tokens, width)` in the order of `scores`' rows (re-encoding on the fly keeps memory bounded).
        k: candidates re-ranked per query (`k_test`, 128 in UMT/InstAP).
        rerank_score, temperature: how a pair is scored (`rerank_pair_scores`; `"fused"` needs the temperature of
            `scores`).

    Returns:
        `(scores_v2t, scores_t2v)`, both `(num_videos, num_texts)`: re-ranked scores on each direction's top-k
        pairs and -100 elsewhere.
    """
    check_rerank_score(rerank_score)
    backbone = backbone_of(model)
    device = next(backbone.parameters()).device
    num_videos, num_texts = scores.shape
    k_v2t, k_t2v = min(k, num_texts), min(k, num_videos)
    top_texts = scores.topk(k_v2t, dim=1).indices  # (num_videos, k): texts re-ranked for each video query
    top_videos = scores.t().topk(k_t2v, dim=1).indices  # (num_texts, k): videos re-ranked for each text query
    v2t = torch.full_like(scores, RERANK_FLOOR)
    t2v = torch.full_like(scores, RERANK_FLOOR)
    # Pairs of the text->video direction, grouped by video so each video's tokens are needed once.
    t2v_pairs_video = top_videos.reshape(-1)
    t2v_pairs_text = torch.arange(num_texts).repeat_interleave(k_t2v)
    order = torch.argsort(t2v_pairs_video, stable=True)
    t2v_pairs_video, t2v_pairs_text = t2v_pairs_video[order], t2v_pairs_text[order]

    offset = 0
    for tokens in tqdm(video_token_batches(), desc=f"re-ranking (top {k})", disable=None, leave=False):
        chunk = torch.arange(offset, offset + tokens.shape[0])
        offset += tokens.shape[0]
        # (video, text) pairs of both directions whose video lies in this chunk.
        v2t_videos = chunk.repeat_interleave(k_v2t)
        v2t_texts = top_texts[chunk].reshape(-1)
        lo, hi = torch.searchsorted(t2v_pairs_video, torch.tensor([chunk[0], chunk[-1] + 1]))
        pair_videos = torch.cat([v2t_videos, t2v_pairs_video[lo:hi]])
        pair_texts = torch.cat([v2t_texts, t2v_pairs_text[lo:hi]])
        direction = torch.cat([torch.zeros(v2t_videos.numel(), dtype=torch.bool), torch.ones(hi - lo, dtype=torch.bool)])
        for start in range(0, pair_videos.numel(), fusion_batch_size):
            sl = slice(start, start + fusion_batch_size)
            videos, text_index = pair_videos[sl], pair_texts[sl]
            # Each video of the batch once; its pairs share its cross-attention keys and values.
            batch_videos, video_index = torch.unique(videos, return_inverse=True)
            logits = backbone.match_score(
                tokens[batch_videos - chunk[0]].to(device),
                texts.hidden_states[text_index].to(device),
                texts.attention_mask[text_index].to(device),
                video_index=video_index.to(device),
            )
            positive = rerank_pair_scores(logits.cpu(), scores[videos, text_index], rerank_score, temperature).float()
            is_t2v = direction[sl]
            v2t[videos[~is_t2v], text_index[~is_t2v]] = positive[~is_t2v]
            t2v[videos[is_t2v], text_index[is_t2v]] = positive[is_t2v]
    if offset != num_videos:
        raise ValueError(f"video_token_batches yielded {offset} videos, the score matrix has {num_videos}.")
    return v2t, t2v


def zero_shot_retrieval(
    model,
    video_batches: Callable[[], Iterator[torch.Tensor]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    text_to_video,
    k: int = 128,
    rerank: bool = True,
    text_batch_size: int = 256,
    fusion_batch_size: int = 256,
    identical_texts_match: bool = True,
    rerank_score: str = "positive_logit",
) -> RetrievalResult:
    """Global video-text retrieval: dual-encoder scores, then matching-head re-ranking of the top `k`.

    Args:
        video_batches: callable returning a fresh iterator of `pixel_values` batches, in a fixed order; called once
            for the embeddings and, with `rerank`, once more for the fusion context.
        input_ids, attention_mask: all captions, tokenised.
        text_to_video: ground truth as accepted by `video_text_retrieval_metrics` (e.g. the video index of each
            caption; several captions may share a video).
        identical_texts_match: texts with identical tokens share their videos in the ground truth
            (`ground_truth_with_identical_texts`; METHOD §5: the best-ranked correct item counts).
        rerank_score: the re-ranked score of a pair (`rerank_pair_scores`).
    """
    import time

    model_was_training = backbone_of(model).training
    backbone_of(model).eval()
    timings = {}
    if identical_texts_match:
        text_to_video = ground_truth_with_identical_texts(text_to_video, input_ids, attention_mask)
    start = time.perf_counter()
    texts = encode_texts(model, input_ids, attention_mask, batch_size=text_batch_size)
    video_embeds, _ = encode_videos(model, video_batches())
    scores = similarity_in_chunks(video_embeds, texts.embeds)
    timings["dual_encoder_s"] = time.perf_counter() - start
    metrics_dual = video_text_retrieval_metrics(scores, text_to_video)
    v2t = t2v = metrics_rerank = None
    if rerank:
        start = time.perf_counter()

        def token_batches():
            backbone = backbone_of(model)
            device = next(backbone.parameters()).device
            # Runs inside `rerank_with_matching_head`, which is under no_grad.
            for pixel_values in video_batches():
                yield backbone.vision_model(pixel_values.to(device)).last_hidden_state

        temperature = backbone_of(model).clamped_temperatures()[0].item()
        v2t, t2v = rerank_with_matching_head(
            model, scores, texts, token_batches, k=k, fusion_batch_size=fusion_batch_size, rerank_score=rerank_score,
            temperature=temperature,
        )
        timings["rerank_s"] = time.perf_counter() - start
        metrics_rerank = _rerank_metrics(v2t, t2v, text_to_video)
    backbone_of(model).train(model_was_training)
    return RetrievalResult(scores, v2t, t2v, metrics_dual, metrics_rerank, timings)


def _rerank_metrics(v2t: torch.Tensor, t2v: torch.Tensor, ground_truth) -> dict[str, float]:
    """Metrics of re-ranked scores: each direction is read from its own re-ranked matrix.

    Only the recalls: outside its top k every candidate scores -100, so the rank of a correct item left there
    (hence the median and mean rank) says nothing about the re-ranking; R@K for K <= k is exact.
    """
    rerank_v2t = video_text_retrieval_metrics(v2t, ground_truth)
    rerank_t2v = video_text_retrieval_metrics(t2v, ground_truth)

    def recalls(metrics: dict[str, float], prefix: str) -> dict[str, float]:
        return {key: value for key, value in metrics.items() if key.startswith(prefix) and not key.endswith(("medr", "meanr"))}

    metrics = recalls(rerank_t2v, "t2v_")
    metrics.update(recalls(rerank_v2t, "v2t_"))
    metrics["r_mean"] = (metrics["t2v_r_mean"] + metrics["v2t_r_mean"]) / 2
    return metrics


@torch.no_grad()
def instance_retrieval(
    model,
    batches: Callable[[], Iterator[dict]],
    k: int = 128,
    rerank: bool = True,
    use_attention_pool: bool = True,
    fusion_batch_size: int = 256,
    identical_texts_match: bool = True,
    rerank_score: str = "positive_logit",
) -> RetrievalResult:
    """Instance retrieval (METHOD §5): instance crops against all instance captions of the split.

    Args:
        batches: callable returning an iterator of evaluation batches in the model's batch contract (scene
            `pixel_values` plus the `instance_*` tensors; batches without instances are skipped).
        use_attention_pool: InstAP scores crops through the attention pool with their scene; `False` scores the
            crops alone (how global-only models such as UMT are evaluated).

    The crop of instance i is the query for its own caption i ("video" side = crops, "text" side = captions);
    re-ranking uses the matching head with the instance VTM context (`InstAPModel.instance_matching_context`, per
    `config.instance_vtm_context`; the crop alone gives its pooled embedding or its tokens). With `identical_texts_match`, a crop whose caption is word for word
    another instance's caption is correctly retrieved by either (many instances share a description).
    """
    import time

    backbone = backbone_of(model)
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    pooled_context = backbone.config.instance_vtm_context == "pooled"
    crop_embeds, contexts, caption_embeds, caption_states, caption_masks, caption_ids = [], [], [], [], [], []
    start = time.perf_counter()
    for batch in batches():
        if "instance_pixel_values" not in batch:
            continue
        crops = batch["instance_pixel_values"].to(device)
        if use_attention_pool:
            scenes = backbone.vision_model(batch["pixel_values"].to(device)).last_hidden_state
            instances = backbone.encode_instances(crops, scenes, batch["instance_sample_index"].to(device))
            embeds, context = instances.instance_embeds, backbone.instance_matching_context(instances)
        else:  # the crop alone (global-only models): its pooled embedding or its tokens
            video = backbone.get_video_features(crops)
            embeds, crop_tokens = video.pooler_output, video.last_hidden_state
            context = crop_tokens.mean(dim=1, keepdim=True) if pooled_context else crop_tokens
        crop_embeds.append(embeds.float().cpu())
        contexts.append(context.cpu())
        text = backbone.get_text_features(
            batch["instance_input_ids"].to(device), batch["instance_attention_mask"].to(device)
        )
        caption_embeds.append(text.pooler_output.float().cpu())
        caption_states.append(text.last_hidden_state.cpu())
        caption_masks.append(batch["instance_attention_mask"].cpu())
        caption_ids.append(batch["instance_input_ids"].cpu())
    if not crop_embeds:
        raise NoInstancesError("No batch with instances: instance retrieval needs instance crops and captions.")
    lengths = {mask.shape[1] for mask in caption_masks}
    if len(lengths) > 1:
        raise ValueError(f"Instance captions must be padded to one length across batches, got lengths {sorted(lengths)}.")
    queries = torch.cat(crop_embeds)
    texts = EncodedTexts(torch.cat(caption_embeds), torch.cat(caption_states), torch.cat(caption_masks))
    scores = similarity_in_chunks(queries, texts.embeds)
    ground_truth = torch.arange(scores.shape[0])
    if identical_texts_match:
        ground_truth = ground_truth_with_identical_texts(ground_truth, torch.cat(caption_ids), texts.attention_mask)
    timings = {"dual_encoder_s": time.perf_counter() - start}
    metrics_dual = video_text_retrieval_metrics(scores, ground_truth)
    v2t = t2v = metrics_rerank = None
    if rerank:
        start = time.perf_counter()
        context = torch.cat(contexts)
        # Crops alone (global-only models) were scored with the global temperature, through the pool the instance one.
        temperature = backbone.clamped_temperatures()[1 if use_attention_pool else 0].item()
        v2t, t2v = rerank_with_matching_head(
            model, scores, texts, lambda: iter(context.split(fusion_batch_size)), k=k, fusion_batch_size=fusion_batch_size,
            rerank_score=rerank_score, temperature=temperature,
        )
        timings["rerank_s"] = time.perf_counter() - start
        metrics_rerank = _rerank_metrics(v2t, t2v, ground_truth)
    backbone.train(was_training)
    return RetrievalResult(scores, v2t, t2v, metrics_dual, metrics_rerank, timings)
