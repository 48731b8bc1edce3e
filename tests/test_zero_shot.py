"""Zero-shot retrieval with matching-head re-ranking against a brute-force reference."""

import pytest
import torch

from instap_eval.zero_shot import RERANK_FLOOR, zero_shot_retrieval
from modeling_instap import InstAPConfig, InstAPModel


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = InstAPModel(InstAPConfig.from_preset("tiny")).eval()
    videos = torch.randn(6, 2, 3, 32, 32)
    input_ids = torch.randint(4, 512, (7, 9))
    input_ids[:, 0] = 1
    attention_mask = torch.ones_like(input_ids)
    attention_mask[3, 6:] = 0
    text_to_video = torch.tensor([0, 1, 2, 3, 4, 5, 2])  # two captions for video 2
    return model, videos, input_ids, attention_mask, text_to_video


def batches_of(videos, size):
    return lambda: iter(videos.split(size))


def brute_force(model, videos, input_ids, attention_mask, k):
    """Dense reference: fuse every (video, text) pair, keep the matching logit on each direction's top k."""
    with torch.no_grad():
        video = model.get_video_features(videos)
        text = model.get_text_features(input_ids, attention_mask)
        tokens = model.vision_model(videos).last_hidden_state
        scores = video.pooler_output @ text.pooler_output.t()
        full = torch.empty_like(scores)
        for v in range(scores.shape[0]):
            for t in range(scores.shape[1]):
                logits = model.match_score(tokens[v : v + 1], text.last_hidden_state[t : t + 1], attention_mask[t : t + 1])
                full[v, t] = logits[0, 1]
    v2t = torch.full_like(scores, RERANK_FLOOR)
    t2v = torch.full_like(scores, RERANK_FLOOR)
    for v, texts in enumerate(scores.topk(k, dim=1).indices):
        v2t[v, texts] = full[v, texts]
    for t, vids in enumerate(scores.t().topk(k, dim=1).indices):
        t2v[vids, t] = full[vids, t]
    return scores, v2t, t2v


def test_rerank_matches_brute_force(model_and_data):
    model, videos, input_ids, attention_mask, text_to_video = model_and_data
    result = zero_shot_retrieval(
        model, batches_of(videos, 4), input_ids, attention_mask, text_to_video, k=3, fusion_batch_size=5
    )
    scores, v2t, t2v = brute_force(model, videos, input_ids, attention_mask, k=3)
    torch.testing.assert_close(result.scores_dual, scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.scores_rerank_v2t, v2t, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(result.scores_rerank_t2v, t2v, rtol=1e-4, atol=1e-4)
    # Exactly k re-ranked entries per query in each direction.
    assert ((result.scores_rerank_v2t != RERANK_FLOOR).sum(dim=1) == 3).all()
    assert ((result.scores_rerank_t2v != RERANK_FLOOR).sum(dim=0) == 3).all()
    for metrics in (result.metrics_dual, result.metrics_rerank):
        six = [metrics[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10)]
        assert metrics["r_mean"] == pytest.approx(sum(six) / 6)


def test_chunking_does_not_change_results(model_and_data):
    model, videos, input_ids, attention_mask, text_to_video = model_and_data
    one = zero_shot_retrieval(model, batches_of(videos, 1), input_ids, attention_mask, text_to_video, k=4)
    all_ = zero_shot_retrieval(model, batches_of(videos, 6), input_ids, attention_mask, text_to_video, k=4)
    torch.testing.assert_close(one.scores_rerank_t2v, all_.scores_rerank_t2v, rtol=1e-4, atol=1e-4)
    assert one.metrics_rerank == pytest.approx(all_.metrics_rerank)


def test_k_covering_all_candidates_scores_every_pair(model_and_data):
    """With k >= every candidate count both directions fuse all pairs, so the two re-ranked matrices agree."""
    model, videos, input_ids, attention_mask, text_to_video = model_and_data
    result = zero_shot_retrieval(model, batches_of(videos, 3), input_ids, attention_mask, text_to_video, k=100)
    assert (result.scores_rerank_v2t != RERANK_FLOOR).all()
    torch.testing.assert_close(result.scores_rerank_v2t, result.scores_rerank_t2v)


def test_wrong_video_count_is_an_error(model_and_data):
    model, videos, input_ids, attention_mask, text_to_video = model_and_data
    calls = {"n": 0}

    def shrinking_batches():
        calls["n"] += 1
        # The second pass (re-ranking) yields one video fewer than the first: must not pass silently.
        return iter(videos.split(3) if calls["n"] == 1 else videos[:5].split(3))

    with pytest.raises(ValueError, match="yielded 5 videos"):
        zero_shot_retrieval(model, shrinking_batches, input_ids, attention_mask, text_to_video, k=2)


def test_identical_texts_count_as_correct(model_and_data):
    """Hand-made: texts 0 and 2 are the same words (with different padding) for videos 0 and 2."""
    from instap_eval.retrieval import ground_truth_with_identical_texts

    input_ids = torch.tensor([[1, 9, 8, 0], [1, 7, 0, 0], [1, 9, 8, 5], [1, 6, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]])
    assert ground_truth_with_identical_texts([0, 1, 2, 3], input_ids, attention_mask) == [[0, 2], [1], [0, 2], [3]]
    # Text 0 scores highest with video 2 (its twin's video): a hit once identical texts match, a miss before.
    scores = torch.tensor([[0.1, 0.0, 0.2, 0.0], [0.0, 0.9, 0.0, 0.0], [0.8, 0.0, 0.7, 0.0], [0.0, 0.0, 0.0, 0.9]])
    from instap_eval.retrieval import video_text_retrieval_metrics

    strict = video_text_retrieval_metrics(scores, torch.arange(4))
    shared = video_text_retrieval_metrics(scores, ground_truth_with_identical_texts(torch.arange(4), input_ids, attention_mask))
    assert strict["t2v_r1"] == 75.0 and shared["t2v_r1"] == 100.0
    assert strict["v2t_r1"] == 50.0 and shared["v2t_r1"] == 100.0

    # Through zero_shot_retrieval: a caption repeated for two videos is correct for either.
    model, videos, ids, mask, _ = model_and_data
    ids = ids[:6].clone()
    mask = torch.ones_like(ids)
    ids[4] = ids[1]
    result = zero_shot_retrieval(model, batches_of(videos, 3), ids, mask, torch.arange(6), k=3)
    expected = video_text_retrieval_metrics(result.scores_dual, [[0], [1, 4], [2], [3], [1, 4], [5]])
    assert result.metrics_dual == pytest.approx(expected)
    off = zero_shot_retrieval(model, batches_of(videos, 3), ids, mask, torch.arange(6), k=3, identical_texts_match=False)
    assert off.metrics_dual == pytest.approx(video_text_retrieval_metrics(result.scores_dual, torch.arange(6)))


def test_fused_rerank_is_dual_plus_match_log_probability(model_and_data):
    """`rerank_score="fused"`: each top-k pair scores cosine / τ + log p(match), checked against the dense reference."""
    model, videos, input_ids, attention_mask, text_to_video = model_and_data
    result = zero_shot_retrieval(
        model, batches_of(videos, 4), input_ids, attention_mask, text_to_video, k=3, rerank_score="fused"
    )
    scores, v2t_logit, _ = brute_force(model, videos, input_ids, attention_mask, k=3)
    with torch.no_grad():
        tokens = model.vision_model(videos).last_hidden_state
        text = model.get_text_features(input_ids, attention_mask)
        log_p = torch.empty_like(scores)
        for v in range(scores.shape[0]):
            for t in range(scores.shape[1]):
                logits = model.match_score(tokens[v : v + 1], text.last_hidden_state[t : t + 1], attention_mask[t : t + 1])
                log_p[v, t] = logits.log_softmax(-1)[0, 1]
    temperature = model.clamped_temperatures()[0]
    kept = v2t_logit != RERANK_FLOOR
    expected = torch.where(kept, scores / temperature + log_p, torch.full_like(scores, RERANK_FLOOR))
    torch.testing.assert_close(result.scores_rerank_v2t, expected, rtol=1e-4, atol=1e-4)


def test_fused_rerank_with_an_indifferent_matching_head_keeps_the_dual_ranking(model_and_data):
    """A matching head that outputs the same logits for every pair adds a constant: fused = dual ranking, while the
    positive logit alone ties every candidate (so its ranking is arbitrary, not the dual encoder's)."""
    import copy

    model, videos, input_ids, attention_mask, _ = model_and_data
    indifferent = copy.deepcopy(model)
    with torch.no_grad():
        indifferent.itm_head.weight.zero_()
        indifferent.itm_head.bias.copy_(torch.tensor([0.3, -0.2]))
    text_to_video = torch.arange(6).tolist() + [2]
    fused = zero_shot_retrieval(
        indifferent, batches_of(videos, 6), input_ids, attention_mask, text_to_video, k=100, rerank_score="fused"
    )
    assert torch.equal(fused.scores_rerank_v2t.argsort(dim=1), fused.scores_dual.argsort(dim=1))
    assert torch.equal(fused.scores_rerank_t2v.argsort(dim=0), fused.scores_dual.argsort(dim=0))
    assert fused.metrics_rerank == pytest.approx({key: fused.metrics_dual[key] for key in fused.metrics_rerank})
    logit = zero_shot_retrieval(indifferent, batches_of(videos, 6), input_ids, attention_mask, text_to_video, k=100)
    assert torch.unique(logit.scores_rerank_v2t).numel() == 1


def test_unknown_rerank_score_is_an_error(model_and_data):
    model, videos, input_ids, attention_mask, text_to_video = model_and_data
    with pytest.raises(ValueError, match="rerank_score must be one of"):
        zero_shot_retrieval(model, batches_of(videos, 6), input_ids, attention_mask, text_to_video, rerank_score="itc")
