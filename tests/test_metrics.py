"""Tests of `instap_eval`: retrieval ranks and recalls, grounding IoU, and their `evaluate` wrappers.

Expected values are worked out by hand in the comments; the random tests compare the chunked count-based ranks
with brute-force sorting.
"""

import doctest
import os

import evaluate
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import instap_eval
from instap_eval import (
    available_metrics,
    box_cxcywh_to_xyxy,
    grounding_ious,
    grounding_metrics,
    metric_path,
    metrics_from_ranks,
    paired_box_iou,
    retrieval_metrics,
    retrieval_ranks,
    video_text_retrieval_metrics,
)
from instap_eval import grounding as grounding_module
from instap_eval import retrieval as retrieval_module

# ----------------------------------------------------------------------------------------------------------------
# Reference implementations (slow, obviously correct)
# ----------------------------------------------------------------------------------------------------------------


def brute_force_rank(row, correct, ties="pessimistic"):
    """Sort the candidates, breaking ties against (pessimistic) or for (optimistic) the correct ones."""
    correct = set(correct)
    if ties == "pessimistic":
        order = sorted(range(len(row)), key=lambda c: (-row[c], c in correct))
    else:
        order = sorted(range(len(row)), key=lambda c: (-row[c], c not in correct))
    return 1 + next(position for position, c in enumerate(order) if c in correct)


def argsort_ranks(scores, is_correct):
    """UMT-style ranks from a full argsort (exact when there are no ties)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    position = np.argsort(order, axis=1)  # position[q, c] = where candidate c lands for query q
    return np.where(is_correct, position, np.iinfo(np.int64).max).min(axis=1) + 1


def random_ground_truth(generator, num_queries, num_candidates, max_matches=3):
    is_correct = np.zeros((num_queries, num_candidates), dtype=bool)
    for query in range(num_queries):
        count = generator.integers(1, max_matches + 1)
        is_correct[query, generator.choice(num_candidates, size=count, replace=False)] = True
    return is_correct


# ----------------------------------------------------------------------------------------------------------------
# Retrieval: hand-computed cases
# ----------------------------------------------------------------------------------------------------------------

# Integer scores, one correct candidate per row; the rank is 1 + the number of higher scores.
HAND_SCORES = torch.tensor(
    [
        [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],  # correct 0 (11): nothing higher -> rank 1
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # correct 8 (8): 9, 10, 11 higher -> rank 4
        [5, 3, 8, 1, 0, 2, 9, 4, 7, 6, 11, 10],  # correct 1 (3): 5 8 9 4 7 6 11 10 higher -> rank 9
        [0, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1],  # correct 0 (0): all 11 others higher -> rank 12
    ],
    dtype=torch.float32,
)
HAND_CORRECT = [0, 8, 1, 0]
HAND_RANKS = [1, 4, 9, 12]


def test_hand_computed_ranks_and_recalls():
    assert retrieval_ranks(HAND_SCORES, HAND_CORRECT).tolist() == HAND_RANKS
    metrics = retrieval_metrics(HAND_SCORES, HAND_CORRECT)
    # R@1: {1} of 4; R@5: {1, 4}; R@10: {1, 4, 9}; median of 1 4 9 12 = (4 + 9) / 2; mean = 26 / 4.
    expected = {"r1": 25.0, "r5": 50.0, "r10": 75.0, "r_mean": 50.0, "medr": 6.5, "meanr": 6.5}
    assert metrics == pytest.approx(expected)
    assert list(metrics) == list(expected)


def test_custom_ks_and_odd_median():
    metrics = retrieval_metrics(HAND_SCORES[:3], HAND_CORRECT[:3], ks=(3, 9))  # ranks 1, 4, 9
    assert metrics == pytest.approx(
        {"r3": 100 / 3, "r9": 100.0, "r_mean": 200 / 3, "medr": 4.0, "meanr": 14 / 3}
    )


def test_ties_pessimistic_and_optimistic():
    scores = torch.tensor(
        [
            [0.5, 0.5, 0.5, 0.1],  # correct {1}: incorrect 0 and 2 tie with it -> pessimistic 3, optimistic 1
            [0.5, 0.5, 0.5, 0.1],  # correct {0, 1}: only incorrect 2 ties -> pessimistic 2, optimistic 1
            [0.2, 0.2, 0.2, 0.2],  # constant row, correct {3}: pessimistic last (4), optimistic 1
            [5.0, -100.0, -100.0, -100.0],  # re-ranked, correct 2 left at -100: pessimistic 4, optimistic 2
        ]
    )
    correct = [[1], [0, 1], [3], [2]]
    assert retrieval_ranks(scores, correct).tolist() == [3, 2, 4, 4]
    assert retrieval_ranks(scores, correct, ties="optimistic").tolist() == [1, 1, 1, 2]
    assert retrieval_metrics(scores, correct, ks=(1, 3))["r1"] == 0.0
    assert retrieval_metrics(scores, correct, ks=(1, 3))["r3"] == 50.0
    assert retrieval_metrics(scores, correct, ks=(1, 3), ties="optimistic")["r1"] == 75.0


def test_multiple_correct_items_best_ranked_counts():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2]])
    # Correct 2 (0.3) and 4 (0.2): the best is 2, behind 0.9 and 0.8 -> rank 3.
    assert retrieval_ranks(scores, [[2, 4]]).tolist() == [3]
    assert retrieval_ranks(scores, [[4, 2, 2]]).tolist() == [3]  # duplicates change nothing


def test_duplicate_indices_do_not_hide_ties():
    # Correct {0}, incorrect 1 ties with it: pessimistic rank 2, even if index 0 is listed twice.
    scores = torch.tensor([[0.5, 0.5, 0.1]])
    assert retrieval_ranks(scores, [[0, 0]]).tolist() == [2]
    assert retrieval_ranks(scores, [[0, 0]], ties="optimistic").tolist() == [1]


def test_ground_truth_forms_agree():
    scores = HAND_SCORES
    is_correct = torch.zeros(scores.shape, dtype=torch.bool)
    is_correct[torch.arange(4), torch.tensor(HAND_CORRECT)] = True
    forms = [
        HAND_CORRECT,
        [[index] for index in HAND_CORRECT],
        [0, [8], np.int64(1), np.array([0])],
        torch.tensor(HAND_CORRECT),
        np.array(HAND_CORRECT, dtype=np.int32),
        is_correct,
        is_correct.numpy(),
    ]
    for ground_truth in forms:
        assert retrieval_ranks(scores, ground_truth).tolist() == HAND_RANKS
    assert retrieval_ranks(scores.numpy(), HAND_CORRECT).tolist() == HAND_RANKS


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64])
def test_score_dtypes(dtype):
    # Small integers are exact in every dtype, so the ranks must not change.
    assert retrieval_ranks(HAND_SCORES.to(dtype), HAND_CORRECT).tolist() == HAND_RANKS


def test_video_text_hand_computed():
    scores_v2t = torch.tensor(
        [
            [0.9, 0.2, 0.4, 0.1],  # video 0, texts {0, 1}: best is text 0 (0.9), on top -> v2t rank 1
            [0.3, 0.8, 0.7, 0.2],  # video 1, text 2 (0.7): behind 0.8 -> v2t rank 2
            [0.1, 0.6, 0.5, 0.4],  # video 2, text 3 (0.4): behind 0.6, 0.5 -> v2t rank 3
        ]
    )
    text_to_video = [0, 0, 1, 2]
    # t2v (columns): text 0 -> video 0: 0.9 top (1); text 1 -> video 0: 0.2 below 0.8, 0.6 (3);
    # text 2 -> video 1: 0.7 top (1); text 3 -> video 2: 0.4 top (1). Ranks 1 3 1 1.
    expected = {
        "t2v_r1": 75.0,
        "t2v_r5": 100.0,
        "t2v_r10": 100.0,
        "t2v_r_mean": 275 / 3,
        "t2v_medr": 1.0,
        "t2v_meanr": 1.5,
        "v2t_r1": 100 / 3,
        "v2t_r5": 100.0,
        "v2t_r10": 100.0,
        "v2t_r_mean": 700 / 9,
        "v2t_medr": 2.0,
        "v2t_meanr": 2.0,
        "r_mean": (275 / 3 + 700 / 9) / 2,  # = mean of the six recalls
    }
    is_match = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)  # (videos, texts)
    for ground_truth in (
        text_to_video,
        torch.tensor(text_to_video),
        is_match,
        is_match.numpy(),
        [[0], [0], [1], [2]],
    ):
        metrics = video_text_retrieval_metrics(scores_v2t, ground_truth)
        assert metrics == pytest.approx(expected)
        assert set(metrics) == set(expected)
    six_recalls = [expected[f"{d}_r{k}"] for d in ("t2v", "v2t") for k in (1, 5, 10)]
    assert expected["r_mean"] == pytest.approx(np.mean(six_recalls))


def test_video_text_matrix_must_match_scores_orientation():
    scores_v2t = torch.rand(3, 4)
    with pytest.raises(ValueError, match="shape of the scores"):
        video_text_retrieval_metrics(scores_v2t, torch.ones(4, 3, dtype=torch.bool))


def test_text_matching_several_videos():
    # Text 0 matches videos 0 and 1 (e.g. an instance caption true of two crops).
    scores_v2t = torch.tensor(
        [
            [0.1, 0.9, 0.4],  # video 0, texts {0, 1}: best text 1 (0.9) on top -> v2t rank 1
            [0.5, 0.2, 0.3],  # video 1, texts {0, 2}: best text 0 (0.5) on top -> v2t rank 1
        ]
    )
    # t2v: text 0 -> {0, 1}: best 0.5 on top (1); text 1 -> {0}: 0.9 on top (1); text 2 -> {1}: 0.3 < 0.4 (2).
    metrics = video_text_retrieval_metrics(scores_v2t, [[0, 1], [0], [1]], ks=(1,))
    assert metrics == pytest.approx(
        {
            "t2v_r1": 200 / 3,
            "t2v_r_mean": 200 / 3,
            "t2v_medr": 1.0,
            "t2v_meanr": 4 / 3,
            "v2t_r1": 100.0,
            "v2t_r_mean": 100.0,
            "v2t_medr": 1.0,
            "v2t_meanr": 1.0,
            "r_mean": 250 / 3,
        }
    )
    # A video without any text has no defined rank.
    with pytest.raises(ValueError, match="no correct candidate"):
        video_text_retrieval_metrics(torch.rand(3, 2), [0, 1])


# ----------------------------------------------------------------------------------------------------------------
# Retrieval: chunking and random comparisons with brute force
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 500, 10_000, None])
def test_chunked_equals_unchunked_random(chunk_size):
    generator = np.random.default_rng(0)
    scores = generator.standard_normal((500, 700)).astype(np.float32)
    is_correct = random_ground_truth(generator, 500, 700)
    expected = argsort_ranks(scores, is_correct)  # continuous scores: no ties
    assert retrieval_ranks(scores, is_correct, chunk_size=chunk_size).numpy().tolist() == expected.tolist()

    # With many ties (scores rounded to 5 levels) both conventions must still be chunk-independent.
    tied_scores = np.round(scores).clip(-2, 2)
    correct_lists = [np.flatnonzero(row).tolist() for row in is_correct]
    for ties in ("pessimistic", "optimistic"):
        whole = retrieval_ranks(tied_scores, correct_lists, ties=ties, chunk_size=500)
        chunked = retrieval_ranks(tied_scores, correct_lists, ties=ties, chunk_size=chunk_size)
        assert torch.equal(whole, chunked)
    for query in range(0, 500, 50):
        row = tied_scores[query].tolist()
        assert whole[query] == brute_force_rank(row, correct_lists[query], "optimistic")


@pytest.mark.parametrize("chunk_size", [3, 128, None])
def test_video_text_chunked_equals_unchunked_random(chunk_size):
    generator = np.random.default_rng(1)
    scores_v2t = torch.from_numpy(generator.standard_normal((500, 700)).astype(np.float32))
    text_to_video = torch.from_numpy(generator.integers(0, 500, size=700))
    text_to_video[:500] = torch.arange(500)  # every video gets a text
    whole = video_text_retrieval_metrics(scores_v2t, text_to_video, chunk_size=10_000)
    assert video_text_retrieval_metrics(scores_v2t, text_to_video, chunk_size=chunk_size) == whole

    is_match = torch.zeros(500, 700, dtype=torch.bool)
    is_match[text_to_video, torch.arange(700)] = True
    assert video_text_retrieval_metrics(scores_v2t, is_match, chunk_size=chunk_size) == whole
    # The t2v direction is the plain retrieval of the transposed matrix.
    t2v = retrieval_metrics(scores_v2t.T.contiguous(), text_to_video)
    assert whole["t2v_r1"] == t2v["r1"] and whole["t2v_medr"] == t2v["medr"]
    v2t_ranks = argsort_ranks(scores_v2t.numpy(), is_match.numpy())
    assert whole["v2t_meanr"] == pytest.approx(v2t_ranks.mean())


def test_default_chunk_size_bounds_chunk_elements():
    assert retrieval_module._default_chunk_size(10_000) * 10_000 <= retrieval_module.DEFAULT_CHUNK_ELEMENTS
    assert retrieval_module._default_chunk_size(10**9) == 1


# ----------------------------------------------------------------------------------------------------------------
# Retrieval: errors
# ----------------------------------------------------------------------------------------------------------------


def test_retrieval_input_errors():
    scores = torch.rand(3, 4)
    with pytest.raises(ValueError, match="no correct candidate"):
        retrieval_ranks(scores, [[0], [], [1]])
    with pytest.raises(ValueError, match="no correct candidate"):
        retrieval_ranks(scores, torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        retrieval_ranks(scores, [0, 4, 1])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        retrieval_ranks(scores, [0, -1, 1])
    with pytest.raises(ValueError, match="describes 2 queries"):
        retrieval_ranks(scores, [0, 1])
    with pytest.raises(ValueError, match="boolean matrix or a 1-D integer"):
        retrieval_ranks(scores, torch.ones(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_ranks(torch.tensor([[0.1, float("nan")]]), [0])
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_ranks(scores, [0, 1, 2], chunk_size=0)
    with pytest.raises(ValueError, match="ties"):
        retrieval_ranks(scores, [0, 1, 2], ties="mean")
    with pytest.raises(ValueError, match="non-empty"):
        retrieval_ranks(torch.rand(4), [0])
    with pytest.raises(ValueError, match="non-empty"):
        metrics_from_ranks(torch.tensor([], dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------------
# Retrieval: properties
# ----------------------------------------------------------------------------------------------------------------


@st.composite
def score_matrices_with_matches(draw):
    """Small integer-valued score matrices (so ties are frequent) with 1-3 correct candidates per query."""
    num_queries = draw(st.integers(1, 6))
    num_candidates = draw(st.integers(1, 8))
    scores = draw(hnp.arrays(np.float32, (num_queries, num_candidates), elements=st.integers(-2, 2)))
    correct = [
        draw(st.lists(st.integers(0, num_candidates - 1), min_size=1, max_size=3, unique=True))
        for _ in range(num_queries)
    ]
    return scores, correct


@settings(max_examples=60, deadline=None)
@given(score_matrices_with_matches(), st.sampled_from(["pessimistic", "optimistic"]), st.integers(1, 4))
def test_ranks_match_brute_force_sorting(case, ties, chunk_size):
    scores, correct = case
    ranks = retrieval_ranks(scores, correct, ties=ties, chunk_size=chunk_size).tolist()
    assert ranks == [brute_force_rank(row.tolist(), c, ties) for row, c in zip(scores, correct)]
    optimistic = retrieval_ranks(scores, correct, ties="optimistic")
    assert (optimistic <= retrieval_ranks(scores, correct)).all()


@settings(max_examples=60, deadline=None)
@given(score_matrices_with_matches(), st.randoms(use_true_random=False))
def test_consistent_permutations_leave_metrics_unchanged(case, random):
    scores, correct = case
    num_queries, num_candidates = scores.shape
    candidate_order = list(range(num_candidates))  # new column j holds old column candidate_order[j]
    random.shuffle(candidate_order)
    new_index = {old: new for new, old in enumerate(candidate_order)}
    permuted_scores = scores[:, candidate_order]
    permuted_correct = [[new_index[c] for c in row] for row in correct]
    for ties in ("pessimistic", "optimistic"):
        original = retrieval_ranks(scores, correct, ties=ties)
        assert torch.equal(retrieval_ranks(permuted_scores, permuted_correct, ties=ties), original)
        # Reordering the queries reorders the ranks and leaves the metrics unchanged.
        query_order = list(range(num_queries))
        random.shuffle(query_order)
        reordered = retrieval_ranks(scores[query_order], [correct[q] for q in query_order], ties=ties)
        assert torch.equal(reordered, original[query_order])
        assert metrics_from_ranks(reordered) == pytest.approx(metrics_from_ranks(original))


@settings(max_examples=40, deadline=None)
@given(score_matrices_with_matches())
def test_monotone_score_transform_leaves_ranks_unchanged(case):
    scores, correct = case
    # A strictly increasing map (like a temperature or an affine rescale) cannot change any ranking.
    transformed = np.exp(0.5 * scores) * 3.0 - 1.0
    assert torch.equal(retrieval_ranks(transformed, correct), retrieval_ranks(scores, correct))


# ----------------------------------------------------------------------------------------------------------------
# Grounding
# ----------------------------------------------------------------------------------------------------------------

# xyxy boxes and their IoUs with the ground truth, worked out by hand.
PRED_BOXES = [[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 10, 10], [0, 0, 10, 10]]
GT_BOXES = [[1, 1, 3, 3], [0, 0, 2, 1], [0, 0, 10, 8], [0, 0, 10, 9.5]]
# intersection/union: 1/(4+4-1) = 1/7; 2/4 = 0.5 (exactly); 80/100 = 0.8; 95/100 = 0.95.
HAND_IOUS = [1 / 7, 0.5, 0.8, 0.95]


def test_grounding_hand_computed():
    assert grounding_ious(PRED_BOXES, GT_BOXES).tolist() == pytest.approx(HAND_IOUS)
    metrics = grounding_metrics(torch.tensor(PRED_BOXES), torch.tensor(GT_BOXES))
    # IoU >= 0.5: 3 of 4 (0.5 itself counts); >= 0.7: 2; >= 0.9: 1.
    expected = {"iou@0.5": 75.0, "iou@0.7": 50.0, "iou@0.9": 25.0, "mean_iou": 100 * np.mean(HAND_IOUS)}
    assert metrics == pytest.approx(expected)
    assert list(metrics) == list(expected)
    assert grounding_metrics(PRED_BOXES, GT_BOXES, thresholds=(0.25, 1.0)) == pytest.approx(
        {"iou@0.25": 75.0, "iou@1": 0.0, "mean_iou": 100 * np.mean(HAND_IOUS)}
    )


def test_grounding_normalized_cxcywh_matches_xyxy():
    def to_normalized_cxcywh(box):
        x1, y1, x2, y2 = (coordinate / 16 for coordinate in box)  # an image of 16 x 16 pixels
        return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]

    pred = [to_normalized_cxcywh(box) for box in PRED_BOXES]
    gt = [to_normalized_cxcywh(box) for box in GT_BOXES]
    assert grounding_ious(pred, gt, box_format="cxcywh").tolist() == pytest.approx(HAND_IOUS)
    assert grounding_metrics(pred, gt, box_format="cxcywh") == pytest.approx(
        grounding_metrics(PRED_BOXES, GT_BOXES)
    )
    assert box_cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4])).tolist() == pytest.approx(
        [0.4, 0.3, 0.6, 0.7]
    )


def test_grounding_trajectories_with_invalid_frames():
    nan_box = [float("nan")] * 4
    pred = [
        [[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]],
        [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]],
    ]
    gt = [
        [[0, 0, 2, 2], [0, 0, 2, 1], [7, 7, 8, 8]],  # IoUs 1, 0.5, 0 (frame 2 invalid)
        [[0, 0, 10, 8], nan_box, [0, 0, 10, 2]],  # IoUs 0.8, - (invalid, NaN padding), 0.2
    ]
    valid = [[True, True, False], [True, False, True]]
    # Sample 0: (1 + 0.5) / 2 = 0.75; sample 1: (0.8 + 0.2) / 2 = 0.5.
    assert grounding_ious(pred, gt, valid_mask=valid).tolist() == pytest.approx([0.75, 0.5])
    metrics = grounding_metrics(pred, gt, valid_mask=np.array(valid))
    assert metrics == pytest.approx({"iou@0.5": 100.0, "iou@0.7": 50.0, "iou@0.9": 0.0, "mean_iou": 62.5})
    # Without a mask every frame counts (sample 0: (1 + 0.5 + 0) / 3).
    first = grounding_ious(torch.tensor(pred[:1]), torch.tensor(gt[:1]))
    assert first.tolist() == pytest.approx([0.5])


def test_grounding_degenerate_boxes_give_zero_not_nan():
    nan = float("nan")
    inf = float("inf")
    pred = torch.tensor(
        [
            [1, 1, 1, 3],  # zero width
            [0, 0, 2, 0],  # zero height, identical to its ground truth
            [2, 2, 0, 0],  # inverted corners
            [nan, 0, 1, 1],  # diverged prediction
            [0, 0, inf, 1],  # infinite box
            [0, 0, 2, 2],  # proper box against a degenerate ground truth
        ],
        dtype=torch.float32,
    )
    gt = torch.tensor(
        [[0, 0, 2, 2], [0, 0, 2, 0], [0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 1], [1, 1, 1, 1]],
        dtype=torch.float32,
    )
    ious = grounding_ious(pred, gt)
    assert ious.tolist() == [0.0] * 6
    assert paired_box_iou(pred, gt).isfinite().all()
    assert grounding_metrics(pred, gt)["mean_iou"] == 0.0
    # cxcywh with zero or negative size.
    assert grounding_ious(
        [[0.5, 0.5, 0, 0.2], [0.5, 0.5, -0.1, 0.2]], [[0.5, 0.5, 0.2, 0.2]] * 2, box_format="cxcywh"
    ).tolist() == [0.0, 0.0]


def test_grounding_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        grounding_metrics([[0, 0, 1, 1]], [[0, 0, 1, 1], [0, 0, 1, 1]])
    with pytest.raises(ValueError, match="box_format"):
        grounding_metrics([[0, 0, 1, 1]], [[0, 0, 1, 1]], box_format="xywh")
    with pytest.raises(ValueError, match="no valid frame"):
        grounding_metrics([[[0, 0, 1, 1]]] * 2, [[[0, 0, 1, 1]]] * 2, valid_mask=[[True], [False]])
    with pytest.raises(ValueError, match="applies to trajectories"):
        grounding_metrics([[0, 0, 1, 1]], [[0, 0, 1, 1]], valid_mask=[True])
    with pytest.raises(ValueError, match="valid_mask"):
        grounding_metrics([[[0, 0, 1, 1]]], [[[0, 0, 1, 1]]], valid_mask=[[True, True]])
    with pytest.raises(ValueError, match="num_samples, 4"):
        grounding_metrics([[0, 0, 1]], [[0, 0, 1]])


proper_boxes = st.tuples(
    st.floats(-10, 10), st.floats(-10, 10), st.floats(0.01, 10), st.floats(0.01, 10)
).map(lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(proper_boxes, proper_boxes), min_size=1, max_size=5))
def test_iou_properties(pairs):
    boxes1 = torch.tensor([pair[0] for pair in pairs], dtype=torch.float64)
    boxes2 = torch.tensor([pair[1] for pair in pairs], dtype=torch.float64)
    ious = paired_box_iou(boxes1, boxes2)
    assert ((ious >= 0) & (ious <= 1 + 1e-12)).all()
    assert torch.allclose(ious, paired_box_iou(boxes2, boxes1))
    assert torch.allclose(paired_box_iou(boxes1, boxes1), torch.ones(len(pairs), dtype=torch.float64))
    # Translating and scaling both boxes together changes nothing.
    assert torch.allclose(paired_box_iou(boxes1 * 3 + 5, boxes2 * 3 + 5), ious)


# ----------------------------------------------------------------------------------------------------------------
# evaluate wrappers, loaded offline from the installed package
# ----------------------------------------------------------------------------------------------------------------


def test_metric_path_points_into_the_package():
    assert available_metrics() == ["grounding_iou", "retrieval_recall"]
    for name in available_metrics():
        path = metric_path(name)
        assert os.path.isfile(os.path.join(path, f"{name}.py"))
        assert os.path.dirname(os.path.dirname(path)) == os.path.dirname(instap_eval.__file__)
    with pytest.raises(ValueError, match="Unknown metric"):
        metric_path("bleu")


def test_evaluate_retrieval_recall():
    recall = evaluate.load(metric_path("retrieval_recall"), keep_in_memory=True)
    generator = np.random.default_rng(2)
    scores = generator.standard_normal((20, 30)).astype(np.float32)
    is_correct = random_ground_truth(generator, 20, 30)
    correct_lists = [np.flatnonzero(row).tolist() for row in is_correct]
    expected = retrieval_metrics(scores, correct_lists)
    assert recall.compute(predictions=scores, references=correct_lists) == pytest.approx(expected)
    # Streaming in batches gives the same result.
    for start in range(0, 20, 8):
        recall.add_batch(predictions=scores[start : start + 8], references=correct_lists[start : start + 8])
    assert recall.compute() == pytest.approx(expected)
    # One correct index per query, as plain integers; options reach the function.
    single = [row[0] for row in correct_lists]
    assert recall.compute(predictions=scores.tolist(), references=single, ks=(2,), ties="optimistic") == (
        pytest.approx(retrieval_metrics(scores, single, ks=(2,), ties="optimistic"))
    )
    # Equal-length index lists come back from Arrow as a 2-D array; still one list per query.
    pairs = [[0, 1]] * 20
    assert recall.compute(predictions=scores, references=pairs) == pytest.approx(
        retrieval_metrics(scores, pairs)
    )


def test_evaluate_retrieval_recall_hand_case():
    recall = evaluate.load(metric_path("retrieval_recall"), keep_in_memory=True)
    results = recall.compute(predictions=HAND_SCORES.tolist(), references=[[c] for c in HAND_CORRECT])
    assert results == pytest.approx(
        {"r1": 25.0, "r5": 50.0, "r10": 75.0, "r_mean": 50.0, "medr": 6.5, "meanr": 6.5}
    )


def test_evaluate_grounding_iou():
    grounding = evaluate.load(metric_path("grounding_iou"), keep_in_memory=True)
    results = grounding.compute(predictions=PRED_BOXES, references=GT_BOXES)
    assert results == pytest.approx(grounding_metrics(PRED_BOXES, GT_BOXES))
    results = grounding.compute(predictions=PRED_BOXES, references=GT_BOXES, thresholds=(0.8,))
    assert results == pytest.approx({"iou@0.8": 50.0, "mean_iou": 100 * np.mean(HAND_IOUS)})


def test_evaluate_grounding_iou_trajectories():
    trajectory = evaluate.load(metric_path("grounding_iou"), "trajectory", keep_in_memory=True)
    # Trajectories of 3 and 1 frames; sample 0 as in the hand case above (IoU 0.75), sample 1 IoU 0.8.
    predictions = [[[0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2]], [[0, 0, 10, 10]]]
    references = [[[0, 0, 2, 2], [0, 0, 2, 1], [7, 7, 8, 8]], [[0, 0, 10, 8]]]
    valid_mask = [[True, True, False], [True]]
    results = trajectory.compute(predictions=predictions, references=references, valid_mask=valid_mask)
    assert results == pytest.approx({"iou@0.5": 100.0, "iou@0.7": 100.0, "iou@0.9": 0.0, "mean_iou": 77.5})
    with pytest.raises(KeyError, match="Unknown config"):
        evaluate.load(metric_path("grounding_iou"), "bogus")


def test_docstring_examples():
    for module in (retrieval_module, grounding_module):
        assert doctest.testmod(module).failed == 0
