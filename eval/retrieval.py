# Copyright 2026 The InstAP Authors. Licensed under the Apache License, Version 2.0.
"""Recall@K, median and mean rank for cross-modal retrieval, in plain torch.

Conventions (docs/method.md §5):

* ``scores[q, c]`` is the similarity of query ``q`` and candidate ``c``; higher means more similar.
* A query may have any number of correct candidates; the *best-ranked* correct one counts (UMT takes the
  minimum rank over the ground-truth items).
* Ranks are 1-based: rank 1 means a correct candidate is on top.
* Ties are broken *pessimistically* by default: every incorrect candidate whose score equals the best correct
  score is ranked ahead of it, and the other correct candidates at that score are not (one of the tied correct
  candidates is the best-ranked one). So

      rank = 1 + #{c : s_c > s*} + #{c incorrect : s_c == s*},    s* = max over correct c of s_c.

  UMT ranks with ``np.argsort``, whose order among equal scores is an implementation detail. The pessimistic
  rule is reproducible and never flatters a model: a constant score matrix (e.g. a collapsed model) gets
  R@1 = 0 rather than whatever the sort's order of equal values gives, and after top-k re-ranking (everything
  outside the top k set to -100) a correct item left at -100 ranks behind all the other -100 candidates.
  ``ties="optimistic"`` (only strictly greater scores count) bounds the effect of ties from the other side;
  without ties both agree with an argsort.

Ranks are computed from counts instead of a full ``argsort``, in chunks of query rows, so a 10K x 10K score
matrix needs only a few chunks' worth of extra memory (a chunk holds about ``DEFAULT_CHUNK_ELEMENTS`` scores).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "RECALL_KEYS",
    "chance_mean_recall",
    "GroundTruth",
    "ground_truth_with_identical_texts",
    "TieBreak",
    "metrics_from_ranks",
    "retrieval_metrics",
    "retrieval_ranks",
    "video_text_retrieval_metrics",
]

TieBreak = Literal["pessimistic", "optimistic"]

GroundTruth = torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]]
"""The correct candidates of every query, in one of three forms:

* a boolean matrix with the shape of the score matrix, ``True`` where candidate ``c`` is correct for query ``q``;
* a 1-D integer array of length ``num_queries``: the single correct candidate of each query;
* a sequence (one entry per query) of index lists, or of single indices: the correct candidates of each query.
"""

# About 1M scores per chunk. The comparisons are boolean (1 byte per score) but counting them casts to int64
# internally, so a chunk costs some 20-30 bytes per score in temporaries: ~25 MiB here. Larger chunks are no
# faster on CPU (10K x 10K, both directions: ~0.6 s at 2^18 to 2^22 scores per chunk).
DEFAULT_CHUNK_ELEMENTS = 1 << 20


RECALL_KEYS = ("t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "r_mean")


def chance_mean_recall(num_items: int, ks: Sequence[int] = (1, 5, 10)) -> float:
    """Mean of R@K (percent) of a random ranking over `num_items` candidates (one correct item each)."""
    return 100.0 * sum(min(k, num_items) for k in ks) / len(ks) / num_items


def _as_tensor(array: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Wraps a NumPy array as a tensor without copying it."""
    if isinstance(array, torch.Tensor):
        return array
    with warnings.catch_warnings():
        # Read-only arrays (e.g. from Arrow via `evaluate`) trigger a warning; nothing here writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(array))


class _Matches:
    """The correct (query, candidate) pairs, read a chunk of query rows at a time.

    Holds either a dense boolean matrix (kept on the CPU, possibly as a transposed view) or the pairs as two index
    vectors sorted by query, so that ground truth given as indices never becomes an N x M matrix.
    """

    def __init__(
        self,
        num_queries: int,
        num_candidates: int,
        dense: torch.Tensor | None = None,
        query_ids: torch.Tensor | None = None,
        candidate_ids: torch.Tensor | None = None,
    ) -> None:
        self.num_queries = num_queries
        self.num_candidates = num_candidates
        self.dense = dense
        if dense is None:
            # Drop duplicate pairs (an index listed twice), which would otherwise be counted twice in the ties.
            # `unique` also sorts the flat ids, hence the pairs by query.
            pair_ids = torch.unique(query_ids * num_candidates + candidate_ids)
            self.query_ids = pair_ids // num_candidates
            self.candidate_ids = pair_ids % num_candidates
            # offsets[q] is where the pairs of query q start.
            self.offsets = torch.searchsorted(self.query_ids, torch.arange(num_queries + 1))

    @classmethod
    def from_ground_truth(cls, ground_truth: GroundTruth, num_queries: int, num_candidates: int) -> _Matches:
        if isinstance(ground_truth, (torch.Tensor, np.ndarray)) and ground_truth.dtype != object:
            ground_truth = _as_tensor(ground_truth)
            if ground_truth.dtype == torch.bool:
                if tuple(ground_truth.shape) != (num_queries, num_candidates):
                    raise ValueError(
                        f"A boolean ground-truth matrix must have the shape of the scores, "
                        f"({num_queries}, {num_candidates}), got {tuple(ground_truth.shape)}."
                    )
                return cls(num_queries, num_candidates, dense=ground_truth.cpu())
            if ground_truth.is_floating_point() or ground_truth.is_complex() or ground_truth.ndim != 1:
                raise ValueError(
                    "Ground truth given as an array must be a boolean matrix or a 1-D integer vector "
                    f"(one correct index per query); got dtype {ground_truth.dtype}, shape {tuple(ground_truth.shape)}."
                )
            num_described = len(ground_truth)
            query_ids = torch.arange(num_described)
            candidate_ids = ground_truth.cpu().long()
        else:
            per_query = [
                [int(index)] if isinstance(index, (int, np.integer)) else [int(i) for i in index]
                for index in ground_truth
            ]
            num_described = len(per_query)
            lengths = torch.tensor([len(indices) for indices in per_query], dtype=torch.long)
            query_ids = torch.repeat_interleave(torch.arange(len(per_query)), lengths)
            candidate_ids = torch.tensor([i for indices in per_query for i in indices], dtype=torch.long)
        if num_described != num_queries:
            raise ValueError(
                f"The ground truth describes {num_described} queries but the scores have {num_queries} rows."
            )
        if len(candidate_ids) and (candidate_ids.min() < 0 or candidate_ids.max() >= num_candidates):
            raise ValueError(f"Ground-truth indices must lie in [0, {num_candidates}).")
        return cls(num_queries, num_candidates, query_ids=query_ids, candidate_ids=candidate_ids)

    def transpose(self) -> _Matches:
        """The same pairs seen from the candidates' side (for the other retrieval direction)."""
        if self.dense is not None:
            return _Matches(self.num_candidates, self.num_queries, dense=self.dense.T)
        return _Matches(
            self.num_candidates, self.num_queries, query_ids=self.candidate_ids, candidate_ids=self.query_ids
        )

    def chunk(self, start: int, end: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The correct pairs of queries ``start:end``, as (row within the chunk, candidate) index vectors."""
        if self.dense is not None:
            rows, candidates = self.dense[start:end].nonzero(as_tuple=True)
        else:
            low, high = int(self.offsets[start]), int(self.offsets[end])
            rows, candidates = self.query_ids[low:high] - start, self.candidate_ids[low:high]
        return rows.to(device), candidates.to(device)


def _check_ties(ties: str) -> None:
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"`ties` must be 'pessimistic' or 'optimistic', got {ties!r}.")


def _default_chunk_size(num_candidates: int) -> int:
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, num_candidates))


def _ranks_of_rows(
    scores: torch.Tensor, matches: _Matches, ties: TieBreak, chunk_size: int | None
) -> torch.Tensor:
    """Best-match ranks of all rows of ``scores`` (which may be a transposed view), chunk by chunk."""
    num_queries, num_candidates = scores.shape
    if chunk_size is None:
        chunk_size = _default_chunk_size(num_candidates)
    elif chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive number of rows, got {chunk_size}.")
    ranks = torch.empty(num_queries, dtype=torch.long)
    for start in range(0, num_queries, chunk_size):
        end = min(start + chunk_size, num_queries)
        chunk = scores[start:end]
        # Compare in a dtype where -inf exists and `amax` is implemented everywhere; this copies one chunk at most.
        if not chunk.is_floating_point():
            chunk = chunk.double()
        elif torch.finfo(chunk.dtype).bits < 32:
            chunk = chunk.float()
        if torch.isnan(chunk).any():
            raise ValueError(f"The scores of queries {start}:{end} contain NaN; ranks would be meaningless.")

        rows, candidates = matches.chunk(start, end, chunk.device)
        num_matches = torch.bincount(rows, minlength=end - start)
        if (num_matches == 0).any():
            first = start + int((num_matches == 0).nonzero()[0])
            raise ValueError(f"Query {first} has no correct candidate; every query needs at least one.")

        match_scores = chunk[rows, candidates]
        best_match_score = torch.full((end - start,), -torch.inf, dtype=chunk.dtype, device=chunk.device)
        best_match_score.scatter_reduce_(0, rows, match_scores, reduce="amax")
        if ties == "optimistic":
            chunk_ranks = 1 + (chunk > best_match_score[:, None]).sum(dim=1)
        else:
            # Everything scoring >= s* is ahead of the best match, except the correct candidates tied at s*.
            num_tied_matches = torch.zeros(end - start, dtype=torch.long, device=chunk.device)
            num_tied_matches.index_add_(0, rows, (match_scores == best_match_score[rows]).long())
            chunk_ranks = 1 + (chunk >= best_match_score[:, None]).sum(dim=1) - num_tied_matches
        ranks[start:end] = chunk_ranks.cpu()
    return ranks


def retrieval_ranks(
    scores: torch.Tensor | np.ndarray,
    ground_truth: GroundTruth,
    *,
    ties: TieBreak = "pessimistic",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """1-based rank of the best-ranked correct candidate of every query.

    Args:
        scores: ``(num_queries, num_candidates)`` similarities, higher is better. Not copied: only one chunk of
            rows at a time is compared (and upcast, for integer or half-precision scores). NaN is an error.
        ground_truth: the correct candidates of each query, see `GroundTruth`. Every query needs at least one.
        ties: ``"pessimistic"`` ranks incorrect candidates tied with the best correct one ahead of it;
            ``"optimistic"`` counts only strictly higher scores. See the module docstring.
        chunk_size: query rows per chunk; by default about ``DEFAULT_CHUNK_ELEMENTS`` scores per chunk.

    Returns:
        ``(num_queries,)`` int64 ranks on the CPU, 1 to ``num_candidates``.
    """
    _check_ties(ties)
    scores = _as_tensor(scores)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(
            f"`scores` must be a non-empty (num_queries, num_candidates) matrix, got {tuple(scores.shape)}."
        )
    matches = _Matches.from_ground_truth(ground_truth, *scores.shape)
    return _ranks_of_rows(scores, matches, ties, chunk_size)


def metrics_from_ranks(ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (percent), their mean, and the median and mean rank of 1-based ``ranks``.

    Returns ``{"r1": ..., "r5": ..., "r10": ..., "r_mean": ..., "medr": ..., "meanr": ...}`` (one ``r{k}`` per
    ``k`` in ``ks``). ``r_mean`` is the mean of the recalls; ``medr`` is the statistical median (the mean of the
    two middle ranks for an even count), as ``np.median``. Values are not rounded.
    """
    ranks = _as_tensor(ranks).cpu().double()
    if ranks.ndim != 1 or len(ranks) == 0:
        raise ValueError(f"`ranks` must be a non-empty 1-D vector, got shape {tuple(ranks.shape)}.")
    recalls = {f"r{k}": 100.0 * (ranks <= k).double().mean().item() for k in ks}
    return {
        **recalls,
        "r_mean": float(np.mean(list(recalls.values()))),
        "medr": float(np.median(ranks.numpy())),
        "meanr": ranks.mean().item(),
    }


def retrieval_metrics(
    scores: torch.Tensor | np.ndarray,
    ground_truth: GroundTruth,
    *,
    ks: Sequence[int] = (1, 5, 10),
    ties: TieBreak = "pessimistic",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Recall@K, median and mean rank of one retrieval direction (queries are the rows of ``scores``).

    See `retrieval_ranks` for the arguments and `metrics_from_ranks` for the returned keys.

    Example::

        >>> scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.1, 0.2, 0.3]])
        >>> metrics = retrieval_metrics(scores, [0, [0, 2], 0], ks=(1, 2))  # ranks 1, 2, 3
        >>> {key: round(value, 2) for key, value in metrics.items()}
        {'r1': 33.33, 'r2': 66.67, 'r_mean': 50.0, 'medr': 2.0, 'meanr': 2.0}
    """
    return metrics_from_ranks(retrieval_ranks(scores, ground_truth, ties=ties, chunk_size=chunk_size), ks)


def video_text_retrieval_metrics(
    scores_v2t: torch.Tensor | np.ndarray,
    text_to_video: GroundTruth,
    *,
    ks: Sequence[int] = (1, 5, 10),
    ties: TieBreak = "pessimistic",
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Both directions of video-text retrieval, with UMT's keys (``itm_eval``).

    Args:
        scores_v2t: ``(num_videos, num_texts)`` similarities. Text-to-video ranks read its columns through a
            transposed view, so the matrix is never copied.
        text_to_video: which videos each text describes, in one of three forms:

            * ``(num_texts,)`` integers, the video of each text (several texts may share a video);
            * a boolean matrix **of the same shape as** ``scores_v2t``, ``(num_videos, num_texts)``,
              ``True`` where video ``v`` and text ``t`` match (the orientation cannot be inferred from a square
              matrix, so it is fixed to that of the scores);
            * a sequence with one entry per text: the index list (or single index) of its videos.

            Every text needs a video and every video a text.
        ks, ties, chunk_size: as in `retrieval_metrics`.

    Returns:
        ``t2v_r{k}``, ``t2v_r_mean``, ``t2v_medr``, ``t2v_meanr`` (text to video: UMT ``img_r*``), the same
        with ``v2t_`` (video to text: UMT ``txt_r*``), and ``r_mean``, the mean of the ``2 * len(ks)`` recalls
        (UMT ``r_mean``, InstAP's "mean recall"). Recalls are in percent, ranks 1-based.
    """
    _check_ties(ties)
    scores_v2t = _as_tensor(scores_v2t)
    if scores_v2t.ndim != 2 or 0 in scores_v2t.shape:
        raise ValueError(
            f"`scores_v2t` must be a non-empty (num_videos, num_texts) matrix, got {tuple(scores_v2t.shape)}."
        )
    num_videos, num_texts = scores_v2t.shape
    is_dense = isinstance(text_to_video, (torch.Tensor, np.ndarray)) and text_to_video.dtype in (
        torch.bool,
        np.bool_,
    )
    if is_dense:
        v2t_matches = _Matches.from_ground_truth(text_to_video, num_videos, num_texts)
        t2v_matches = v2t_matches.transpose()
    else:
        t2v_matches = _Matches.from_ground_truth(text_to_video, num_texts, num_videos)
        v2t_matches = t2v_matches.transpose()

    t2v = metrics_from_ranks(_ranks_of_rows(scores_v2t.T, t2v_matches, ties, chunk_size), ks)
    v2t = metrics_from_ranks(_ranks_of_rows(scores_v2t, v2t_matches, ties, chunk_size), ks)
    results = {f"t2v_{key}": value for key, value in t2v.items()}
    results.update({f"v2t_{key}": value for key, value in v2t.items()})
    results["r_mean"] = (t2v["r_mean"] + v2t["r_mean"]) / 2
    return results


def ground_truth_with_identical_texts(
    text_to_video: GroundTruth, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> list[list[int]]:
    """Extend the ground truth so that texts with identical tokens share their videos (METHOD §5).

    Two captions that tokenize alike cannot be told apart by any model: a video described by one of them is
    correctly retrieved by the other, and the best-ranked correct item counts. Without this, a split whose
    captions repeat (several instances described by the same words) counts a correct retrieval as a miss.

    Args:
        text_to_video: the ground truth of `video_text_retrieval_metrics`, one of its three forms.
        input_ids, attention_mask: `(num_texts, length)` the tokenized texts (padding ignored).

    Returns:
        One list of video indices per text: the videos of every text with the same tokens.
    """
    input_ids = _as_tensor(input_ids).cpu()
    num_texts = input_ids.shape[0]
    if attention_mask is not None:
        input_ids = input_ids * _as_tensor(attention_mask).cpu().to(input_ids.dtype)
    _, group = torch.unique(input_ids, dim=0, return_inverse=True)
    if isinstance(text_to_video, (torch.Tensor, np.ndarray)) and text_to_video.dtype in (torch.bool, np.bool_):
        dense = _as_tensor(text_to_video).cpu()  # (num_videos, num_texts)
        per_text = [dense[:, t].nonzero().flatten().tolist() for t in range(num_texts)]
    elif isinstance(text_to_video, (torch.Tensor, np.ndarray)):
        per_text = [[int(v)] for v in _as_tensor(text_to_video).cpu().tolist()]
    else:
        per_text = [[int(v)] if isinstance(v, (int, np.integer)) else [int(i) for i in v] for v in text_to_video]
    if len(per_text) != num_texts:
        raise ValueError(f"The ground truth describes {len(per_text)} texts but {num_texts} were tokenized.")
    videos_of_group: dict[int, set[int]] = {}
    for text, videos in enumerate(per_text):
        videos_of_group.setdefault(int(group[text]), set()).update(videos)
    return [sorted(videos_of_group[int(group[text])]) for text in range(num_texts)]
