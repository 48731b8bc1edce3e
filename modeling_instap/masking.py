"""Token masks for the video encoder (docs/method.md §3 "Mask", §4.1, §4.2).

Conventions shared by every function here:

* a mask is a bool tensor of shape ``(B, T*N)`` with **True = hidden** (not fed to the student) and
  False = visible, in the ViT's flattened ``(t, h, w)`` token order: token ``t*N + p`` is patch ``p``
  (row-major over the ``h x w`` grid) of frame ``t``;
* per-frame tensors of shape ``(B*T, N)`` are ordered sample-major, row ``b*T + t`` (the order in which
  the teacher sees the frames of ``video.transpose(1, 2).reshape(B*T, C, H, W)``-style batches);
* masks with the same number of visible tokens in every row can be applied with ``gather_visible``.

This module imports only torch; it is shipped as flat Hub remote code together with its siblings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "visible_count",
    "teacher_attention_mask",
    "mean_attention_mask",
    "random_token_mask",
    "gather_visible",
]


def _check_ratio(mask_ratio: float) -> None:
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1], got {mask_ratio}")


def visible_count(num_tokens: int, mask_ratio: float) -> int:
    """Number of visible tokens out of ``num_tokens``: ``num_tokens - int(num_tokens * mask_ratio)``.

    This is the UMT convention (``N_vis = N - int(N * mask_ratio)``, e.g. 196 patches at 0.8 -> 40
    visible): the hidden count is rounded *down* (with the plain float product, as UMT does), so the
    visible count is rounded up.
    """
    _check_ratio(mask_ratio)
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    return num_tokens - int(num_tokens * mask_ratio)


def _per_frame_mask(visible_idx: Tensor, rows: int, n: int, batch_size: int) -> Tensor:
    """(rows, n_vis) visible indices per frame -> (B, T*N) hidden mask."""
    mask = torch.ones(rows, n, dtype=torch.bool, device=visible_idx.device)
    mask.scatter_(1, visible_idx, False)
    return mask.view(batch_size, -1)


@torch.no_grad()
def teacher_attention_mask(
    cls_attention: Tensor,
    num_frames: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Attention-guided mask, ``mask_strategy="umt"`` (UMT ``engine_for_pretraining_umt.py``).

    Args:
        cls_attention: ``(B*T, N)``, the teacher's last-layer, head-averaged attention from CLS to the N
            patches of each frame (rows ordered ``b*T + t``). Non-negative; need not sum to 1.
        num_frames: ``T``.
        mask_ratio: ``rho`` (0.8 video, 0.5 image).
        generator: optional ``torch.Generator`` on ``cls_attention``'s device.

    In every frame, ``n_vis = visible_count(N, rho)`` patches are drawn **without replacement** with
    probability proportional to the attention (``torch.multinomial``) and made visible; the others are
    hidden. Drawing ``n_vis`` indices is distributed like taking the first ``n_vis`` of UMT's full
    permutation draw. Every frame therefore has exactly ``n_vis`` visible patches.

    Robustness: the attention is read in float32, NaN/negative values count as 0, and a tiny floor
    (1e-12 of the row mass) is added so that a frame with fewer than ``n_vis`` non-zero patches (e.g.
    fp16 underflow) still gets ``n_vis`` distinct visible patches: the zero-attention ones are then
    drawn only after all the others. A row with zero total mass is drawn uniformly.

    Returns:
        ``(B, T*N)`` bool, True = hidden.
    """
    if cls_attention.ndim != 2:
        raise ValueError(f"cls_attention must be (B*T, N), got shape {tuple(cls_attention.shape)}")
    rows, n = cls_attention.shape
    if num_frames <= 0 or rows % num_frames != 0:
        raise ValueError(f"cls_attention has {rows} rows, not a multiple of num_frames={num_frames}")
    batch_size = rows // num_frames
    n_vis = visible_count(n, mask_ratio)
    device = cls_attention.device
    if n_vis == 0 or rows == 0:
        return torch.ones(batch_size, num_frames * n, dtype=torch.bool, device=device)

    weights = torch.nan_to_num(cls_attention.detach().float(), nan=0.0, posinf=0.0).clamp(min=0.0)
    mass = weights.sum(dim=1, keepdim=True)
    weights = torch.where(mass > 0, weights / mass.clamp(min=torch.finfo(torch.float32).tiny), 1.0 / n)
    weights = weights + 1e-12
    visible_idx = torch.multinomial(weights, n_vis, replacement=False, generator=generator)
    return _per_frame_mask(visible_idx, rows, n, batch_size)


@torch.no_grad()
def mean_attention_mask(token_scores: Tensor, mask_ratio: float) -> Tensor:
    """Deterministic bottom-k mask, ``mask_strategy="mean_attention"`` (the InstAP paper's text).

    Args:
        token_scores: ``(B, L)``, the mean attention each token receives, ``s = (1/L) A^T 1`` over the
            teacher's joint space-time map.
        mask_ratio: ``rho``.

    Hides the ``k = ceil(rho * L)`` lowest-scoring tokens of each row (ties broken by index: among equal
    scores the lower index is hidden first; NaN counts as lowest). ``ceil`` is taken on
    ``rho * L - 1e-6`` so that float noise in the product (``0.07 * 100 = 7.000000000000001``) does not
    add a token. Every row has exactly ``L - k`` visible tokens.

    Returns:
        ``(B, L)`` bool, True = hidden.
    """
    _check_ratio(mask_ratio)
    if token_scores.ndim != 2:
        raise ValueError(f"token_scores must be (B, L), got shape {tuple(token_scores.shape)}")
    b, length = token_scores.shape
    k = max(0, math.ceil(mask_ratio * length - 1e-6))
    scores = torch.nan_to_num(token_scores.detach().float(), nan=float("-inf"))
    order = torch.sort(scores, dim=1, stable=True).indices  # ascending; stable keeps index order on ties
    mask = torch.zeros(b, length, dtype=torch.bool, device=token_scores.device)
    mask.scatter_(1, order[:, :k], True)
    return mask


@torch.no_grad()
def random_token_mask(
    batch_size: int,
    num_frames: int,
    tokens_per_frame: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform random mask with the same visible count in every frame (crops; runs without a teacher).

    In each frame ``visible_count(tokens_per_frame, mask_ratio)`` patches, a uniformly random subset,
    are visible (ranks of i.i.d. uniform noise). ``generator`` must live on ``device``.

    Returns:
        ``(batch_size, num_frames * tokens_per_frame)`` bool, True = hidden.
    """
    if batch_size < 0 or num_frames <= 0 or tokens_per_frame <= 0:
        raise ValueError(
            f"need batch_size >= 0, num_frames > 0, tokens_per_frame > 0; got {batch_size}, "
            f"{num_frames}, {tokens_per_frame}"
        )
    n_vis = visible_count(tokens_per_frame, mask_ratio)
    rows = batch_size * num_frames
    noise = torch.rand(rows, tokens_per_frame, generator=generator, device=device)
    visible_idx = noise.argsort(dim=1)[:, :n_vis]
    return _per_frame_mask(visible_idx, rows, tokens_per_frame, batch_size)


def gather_visible(tokens: Tensor, mask: Tensor) -> Tensor:
    """Keep the visible tokens of each row, in their original order.

    Args:
        tokens: ``(B, L, D)`` (any trailing shape ``(B, L, *)`` works).
        mask: ``(B, L)`` bool, True = hidden, with the same number of visible tokens in every row.

    Returns:
        ``(B, L_vis, D)``; row ``b`` holds ``tokens[b, l]`` for the visible ``l`` in increasing order
        (like UMT's ``x[~mask].reshape(B, -1, C)``). Gradients flow to the kept tokens.
        For stacked layers ``(K, B, L, D)`` apply it per layer or use ``x[:, ~mask].view(K, B, -1, D)``.

    Raises:
        ValueError: if the shapes do not match or the rows have different visible counts.
    """
    if mask.ndim != 2 or tokens.ndim < 2 or tokens.shape[:2] != mask.shape:
        raise ValueError(
            f"tokens must be (B, L, ...) and mask (B, L); got {tuple(tokens.shape)} and {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = hidden), got dtype {mask.dtype}")
    b = mask.shape[0]
    visible = ~mask
    counts = visible.sum(dim=1)
    if b > 0 and bool((counts != counts[0]).any()):
        raise ValueError(
            "gather_visible needs the same number of visible tokens in every row; got counts "
            f"{counts.tolist()}"
        )
    n_vis = int(counts[0]) if b > 0 else 0
    return tokens[visible].reshape(b, n_vis, *tokens.shape[2:])
