"""Loss functions of InstAP (docs/method.md §3-§4), as small pure functions.

Every function here is stateless: learnable quantities (temperatures, heads) live in the model and are
passed in. All losses are computed in at least float32 (autocast is switched off locally; half and
bfloat16 inputs are upcast, float64 stays float64) and return 0-dim tensors.

Distributed helpers
-------------------
``all_gather_with_grad`` concatenates a tensor over processes along dim 0. Its backward sums the incoming
gradient over processes and returns the local slice. When every process computes the *same* loss from
the gathered tensors (the pattern used for VTC), rank ``r`` therefore receives ``W * dL/dx_r``; DDP then
averages parameter gradients over the ``W`` processes, so the update equals the one a single process
would compute on the global batch. (UMT returns the local slice without the sum, which under DDP
averaging scales the contrastive gradients by ``1/W``.)

This module imports only torch; it is shipped as flat Hub remote code together with its siblings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "all_gather_with_grad",
    "gather_without_grad",
    "all_gather_variable",
    "check_equal_batch_sizes",
    "gather_counts",
    "process_rank",
    "process_world_size",
    "contrastive_loss",
    "local_contrastive_loss",
    "sample_hard_negatives",
    "matching_loss",
    "mask_tokens_for_mlm",
    "mlm_loss",
    "reconstruction_loss",
    "box_cxcywh_to_xyxy",
    "generalized_box_iou",
    "box_regression_loss",
]

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------------------------


def _is_distributed() -> bool:
    """True when torch.distributed is available, initialised and has more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_counts(counts: Sequence[int], device: torch.device | None = None) -> Tensor:
    """All-gather a few per-rank counts in one collective: ``(len(counts),)`` -> ``(world, len(counts))``.

    The model gathers its local batch size and instance count once per step: the batch sizes must match (the
    row offsets of the gathers assume it; a ``ValueError`` names the sizes instead of a hang), and the instance
    counts size the padded instance gathers. ``(1, len(counts))`` in one process.
    """
    local = torch.tensor([list(counts)], dtype=torch.long, device=device)
    if not _is_distributed():
        return local
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return torch.cat(gathered).cpu()


def check_equal_batch_sizes(batch_sizes: Sequence[int]) -> None:
    """Raise when the ranks' local batch sizes (a column of ``gather_counts``) differ."""
    sizes = [int(size) for size in batch_sizes]
    if any(size != sizes[0] for size in sizes):
        raise ValueError(
            "all-gather requires the same local batch size on every process along dim 0; got sizes "
            f"{sizes} over ranks 0..{len(sizes) - 1}. Pad or drop the last batch so all ranks match."
        )


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate over processes along dim 0. Backward: all_reduce(SUM), return local slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        ctx.local = tensor.shape[0]
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor)
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local
        return grad[start : start + ctx.local]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` over all processes along dim 0, keeping the autograd graph.

    Shapes: ``(n, *rest)`` on every rank -> ``(W * n, *rest)``, rank ``r``'s rows at ``[r*n, (r+1)*n)``.
    The local size ``n`` must be equal on all ranks (the caller checks it once per step with
    ``gather_counts``/``check_equal_batch_sizes``; this function adds no collective of its own).

    Backward: the gradient of the gathered tensor is summed over processes (all_reduce SUM) and the
    rows of this rank are returned, like ``torch.distributed.nn.functional.all_gather``. Under DDP
    gradient averaging a ``W``-process run then yields the same parameter gradients as one process on
    the global batch (when every process computes the loss on the gathered tensors).

    In a single process (torch.distributed unavailable or uninitialised, or world size 1) the input
    tensor itself is returned. Every rank must call this function (it is a collective).
    """
    if not _is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def gather_without_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` over all processes along dim 0 without gradient (``(n, *) -> (W*n, *)``).

    Used for ids and for no-grad similarity computations. The result is always detached, also in a
    single process (where it is ``tensor.detach()``, the same values), so that a graph never flows
    through it in one world size and not in another. Equal local sizes are required, as above.
    """
    if not _is_distributed():
        return tensor.detach()
    with torch.no_grad():
        tensor = tensor.detach().contiguous()
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(out, tensor)
        return torch.cat(out, dim=0)


def all_gather_variable(tensor: Tensor, counts: Sequence[int], with_grad: bool = True) -> Tensor:
    """Like ``all_gather_with_grad`` (or ``gather_without_grad``) for local sizes that differ across ranks.

    The instance count of a step differs from rank to rank, so the rows are padded to the longest rank,
    gathered (one collective), and the padding rows dropped: ``(n_r, *rest)`` on rank ``r`` ->
    ``(sum_r n_r, *rest)`` in rank order. ``counts`` are every rank's ``n_r`` (a column of
    ``gather_counts``). Identity (detached when ``with_grad=False``) in one process.
    """
    if not _is_distributed():
        return tensor if with_grad else tensor.detach()
    counts = [int(count) for count in counts]
    if counts[dist.get_rank()] != tensor.shape[0]:
        raise ValueError(f"all_gather_variable: this rank has {tensor.shape[0]} rows but counts say {counts}.")
    if tensor.is_floating_point() and tensor.dtype in (torch.float16, torch.bfloat16):
        # Under autocast one rank's rows may be half precision while an empty rank's are float32; the gather needs
        # one dtype on every rank, and the losses compute in float32 anyway.
        tensor = tensor.float()
    longest = max(counts)
    padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
    padded = torch.cat([tensor, padding], dim=0)
    gathered = all_gather_with_grad(padded) if with_grad else gather_without_grad(padded)
    rows = torch.cat([torch.arange(r * longest, r * longest + n) for r, n in enumerate(counts)])
    return gathered[rows.to(tensor.device)]


def process_rank() -> int:
    """This process's rank, 0 in one process."""
    return dist.get_rank() if _is_distributed() else 0


def process_world_size() -> int:
    """The number of processes, 1 in one process."""
    return dist.get_world_size() if _is_distributed() else 1


# ----------------------------------------------------------------------------------------------------
# contrastive / matching
# ----------------------------------------------------------------------------------------------------


def _fp32(t: Tensor) -> Tensor:
    """Upcast half/bfloat16 to float32; float32 and float64 are kept as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def contrastive_loss(
    video_embeds: Tensor,
    text_embeds: Tensor,
    temperature: Tensor | float,
    source_ids: Tensor | None = None,
    same_source: str = "positive",
    exclude_pairs: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE between paired video and text embeddings (METHOD Eq. 2 and Eq. 8).

    Args:
        video_embeds: ``(N, D)``, already L2-normalised (row ``i`` pairs with text row ``i``).
        text_embeds: ``(N, D)``, already L2-normalised.
        temperature: scalar ``tau`` (a 0-dim tensor receives gradient; clamping is the caller's job).
        source_ids: ``(N,)`` integer ids of the source sample of each pair, or ``None``.
        same_source: how pairs ``(i, j)`` with ``source_ids[i] == source_ids[j]`` are treated:
            ``"positive"`` (global VTC, UMT ``vtc_loss``): all of them are positives with soft targets,
            ``q_ij = 1[s_i = s_j] / sum_k 1[s_i = s_k]``;
            ``"exclude"`` (instance VTC, Eq. 8): for ``i != j`` they are removed from the denominator
            (logit set to ``-inf``) and the target is the diagonal.
        exclude_pairs: optional ``(N, N)`` bool of further off-diagonal pairs removed from both denominators
            (e.g. ``identical_texts``: a caption shared by two samples is no negative of either).

    Formula, with logits ``l = v @ t.T / tau`` (``(N, N)``)::

        L_v2t = -1/N sum_i sum_j q_ij log softmax_j(l_i.)      L_t2v = same on l.T
        loss  = (L_v2t + L_t2v) / 2

    with ``q = I`` when ``source_ids is None``. In ``"exclude"`` mode the softmax of row ``i`` runs
    over ``{j : j == i or s_j != s_i}`` only. The diagonal is never masked, so every row keeps a finite
    entry and the loss and its gradient are finite however many entries are ``-inf``.

    Distributed use: gather both embeddings (``all_gather_with_grad``) and the ids
    (``gather_without_grad``, made globally unique) first; every process then computes the same full
    loss, and the gradients come out right under DDP (see the module docstring).

    Computed in (at least) float32 with autocast off. Returns a 0-dim tensor.
    """
    if video_embeds.ndim != 2 or text_embeds.ndim != 2 or video_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"video_embeds and text_embeds must both be (N, D); got {tuple(video_embeds.shape)} and "
            f"{tuple(text_embeds.shape)}"
        )
    if same_source not in ("positive", "exclude"):
        raise ValueError(f"same_source must be 'positive' or 'exclude', got {same_source!r}")
    n = video_embeds.shape[0]
    if source_ids is not None and source_ids.shape != (n,):
        raise ValueError(f"source_ids must have shape ({n},), got {tuple(source_ids.shape)}")

    with torch.autocast(device_type=video_embeds.device.type, enabled=False):
        if isinstance(temperature, Tensor):
            temperature = _fp32(temperature)
        logits = _fp32(video_embeds) @ _fp32(text_embeds).t() / temperature
        targets = torch.arange(n, device=logits.device)

        if exclude_pairs is not None:
            if exclude_pairs.shape != (n, n):
                raise ValueError(f"exclude_pairs must have shape ({n}, {n}), got {tuple(exclude_pairs.shape)}")
            keep = torch.eye(n, dtype=torch.bool, device=logits.device)
            if source_ids is not None and same_source == "positive":  # soft positives stay in
                keep = keep | (source_ids.view(-1, 1) == source_ids.view(1, -1))
            logits = logits.masked_fill(exclude_pairs.to(torch.bool) & ~keep, float("-inf"))
        if source_ids is None:
            return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2

        same = source_ids.view(-1, 1) == source_ids.view(1, -1)  # (N, N), symmetric, diagonal True
        if same_source == "positive":
            soft = same.to(logits.dtype)
            soft = soft / soft.sum(dim=1, keepdim=True)
            # soft is symmetric, so the same targets serve both directions.
            # Excluded entries are -inf with zero target: leave them out of the sum (0 * -inf would be NaN).
            loss_v2t = -(F.log_softmax(logits, dim=1).masked_fill(soft == 0, 0.0) * soft).sum(dim=1).mean()
            loss_t2v = -(F.log_softmax(logits.t(), dim=1).masked_fill(soft == 0, 0.0) * soft).sum(dim=1).mean()
            return (loss_v2t + loss_t2v) / 2

        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        drop = same & ~eye
        neg_inf = float("-inf")
        loss_v2t = F.cross_entropy(logits.masked_fill(drop, neg_inf), targets)
        loss_t2v = F.cross_entropy(logits.t().masked_fill(drop.t(), neg_inf), targets)
        return (loss_v2t + loss_t2v) / 2


def local_contrastive_loss(
    video_local: Tensor,
    text_local: Tensor,
    video_all: Tensor,
    text_all: Tensor,
    row_offset: int,
    temperature: Tensor | float,
    source_ids: Tensor | None = None,
    same_source: str = "positive",
    exclude_pairs: Tensor | None = None,
    world_size: int = 1,
) -> Tensor:
    """The rows of ``contrastive_loss`` that belong to this rank (open_clip's ``local_loss``), scaled to be
    equal in gradient to the global form under DDP.

    This rank's ``n`` pairs (``video_local``/``text_local``, rows ``row_offset ... row_offset + n`` of the gathered
    ``(N, D)`` ``video_all``/``text_all``) are scored against all ``N`` columns in both directions: logits are
    ``(n, N)`` instead of ``(N, N)``, so memory per rank falls by ``N / n`` (the world size). ``source_ids`` and
    ``exclude_pairs`` are the gathered ``(N,)`` ids and ``(N, N)`` pairs, as for ``contrastive_loss``.

    With ``L_r`` this rank's share of the global loss (``sum_r L_r = L``), the value returned is ``world_size * L_r``:
    the all-gather's backward sums every rank's contribution into each rank's rows, and DDP averages over the ranks,
    so the update is the global form's. Its mean over ranks is the global loss; in one process it is the loss itself.
    """
    n, total = video_local.shape[0], video_all.shape[0]
    if text_local.shape[0] != n or text_all.shape[0] != total or not 0 <= row_offset <= total - n:
        raise ValueError(
            f"local rows ({n}) at offset {row_offset} do not fit the {total} gathered rows "
            f"(video {tuple(video_all.shape)}, text {tuple(text_all.shape)})"
        )
    if same_source not in ("positive", "exclude"):
        raise ValueError(f"same_source must be 'positive' or 'exclude', got {same_source!r}")
    with torch.autocast(device_type=video_local.device.type, enabled=False):
        if isinstance(temperature, Tensor):
            temperature = _fp32(temperature)
        rows = torch.arange(row_offset, row_offset + n, device=video_local.device)
        columns = torch.arange(total, device=video_local.device)
        is_target = rows[:, None] == columns[None, :]  # (n, N)
        drop = torch.zeros(n, total, dtype=torch.bool, device=video_local.device)
        if exclude_pairs is not None:
            drop |= exclude_pairs[rows].to(torch.bool)
        soft = None
        if source_ids is not None:
            same = source_ids[rows].view(-1, 1) == source_ids.view(1, -1)
            if same_source == "exclude":
                drop |= same
            else:
                soft = same.to(torch.float32)
                soft = soft / soft.sum(dim=1, keepdim=True)
                drop &= ~same  # soft positives stay in
        drop &= ~is_target
        total_loss = 0.0
        for queries, keys in ((video_local, text_all), (text_local, video_all)):
            logits = (_fp32(queries) @ _fp32(keys).t() / temperature).masked_fill(drop, float("-inf"))
            if soft is not None:
                per_row = -(F.log_softmax(logits, dim=1).masked_fill(soft == 0, 0.0) * soft).sum(dim=1)
            else:
                per_row = F.cross_entropy(logits, rows, reduction="none")
            total_loss = total_loss + per_row.sum()
        return world_size * total_loss / (2 * total)


def identical_texts(input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """``(N, N)`` bool: whether captions ``i`` and ``j`` are the same token sequence (padding ignored).

    Two samples with the same caption are not negatives of each other for that text; left in, they become VTM hard
    negatives (the head is taught that a matching pair does not match) and false negatives of the contrastive loss.
    """
    ids = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -1)
    return (ids[:, None, :] == ids[None, :, :]).all(dim=-1)


@torch.no_grad()
def sample_hard_negatives(
    similarity: Tensor,
    exclude: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one hard negative per row, with probability ``softmax(similarity)`` over allowed entries.

    Args:
        similarity: ``(N, M)`` scores, already divided by the temperature (no gradient is taken).
        exclude: ``(N, M)`` bool, True for entries that must never be drawn (the positives and the
            pairs that share a source sample).
        generator: optional ``torch.Generator`` on ``similarity``'s device, for reproducibility.

    Returns:
        ``(N,)`` long: for row ``i`` an index ``j`` with ``exclude[i, j] == False`` drawn from
        ``p_ij = exp(s_ij) / sum_{k not excluded} exp(s_ik)`` (``torch.multinomial``, UMT ``vtm_loss``);
        ``-1`` for rows in which every entry is excluded (the caller drops those rows).

    An excluded index is never returned: excluded entries get probability exactly 0, and the draws are
    verified afterwards (any excluded pick, which multinomial should never make, is replaced by the
    row's most similar allowed entry). NaN scores are treated as 0 and infinities clipped to +-1e4.
    """
    if similarity.ndim != 2 or exclude.shape != similarity.shape:
        raise ValueError(
            f"similarity must be (N, M) and exclude the same shape; got {tuple(similarity.shape)} and "
            f"{tuple(exclude.shape)}"
        )
    exclude = exclude.to(torch.bool)
    n, m = similarity.shape
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=similarity.device)
    if m == 0:
        return torch.full((n,), -1, dtype=torch.long, device=similarity.device)
    sim = torch.nan_to_num(similarity.detach().float(), nan=0.0, posinf=1e4, neginf=-1e4)
    has_candidate = (~exclude).any(dim=1)
    masked = sim.masked_fill(exclude, float("-inf"))
    # Rows without any candidate would be all -inf (NaN softmax): give them a dummy uniform row.
    masked = torch.where(has_candidate.unsqueeze(1), masked, torch.zeros_like(masked))
    probs = torch.softmax(masked, dim=1)
    picks = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    bad = exclude.gather(1, picks.unsqueeze(1)).squeeze(1) & has_candidate
    picks = torch.where(bad, masked.argmax(dim=1), picks)
    return torch.where(has_candidate, picks, torch.full_like(picks, -1))


def matching_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Two-way matching (VTM, METHOD Eq. 3 and Eq. 9) cross-entropy.

    ``logits``: ``(P, 2)`` from the matching head; ``labels``: ``(P,)`` long, 1 = matched, 0 = not.
    Returns ``mean_p -log softmax(logits_p)[labels_p]`` (0-dim, at least float32).
    """
    if logits.ndim != 2 or logits.shape[1] != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be (P, 2) and labels (P,); got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.cross_entropy(_fp32(logits), labels.long())


# ----------------------------------------------------------------------------------------------------
# masked language modelling
# ----------------------------------------------------------------------------------------------------


def mask_tokens_for_mlm(
    input_ids: Tensor,
    attention_mask: Tensor,
    vocab_size: int,
    mask_token_id: int,
    special_token_ids: Sequence[int],
    probability: float = 0.5,
    generator: torch.Generator | None = None,
    random_excludes_special: bool = True,
) -> tuple[Tensor, Tensor]:
    """BERT-style masking of caption tokens for MLM (METHOD Eq. 4 and Eq. 10; UMT ``MLMLoss``).

    Each token is chosen independently with ``probability`` (UMT: 0.5), except padding
    (``attention_mask == 0``) and the ids in ``special_token_ids`` (the caller passes [CLS] and [PAD];
    UMT lets [SEP] be chosen). Of the chosen tokens, 80 % become ``mask_token_id``, 10 % a random id and
    10 % stay unchanged (one uniform draw per token splits the three cases).

    Random ids are uniform over ``[0, vocab_size)``; with ``random_excludes_special=True`` (default)
    the ids in ``special_token_ids`` are left out of that draw, so no [CLS]/[PAD] appears inside a
    caption. UMT draws any id: pass ``random_excludes_special=False`` to reproduce it exactly.

    Args:
        input_ids: ``(B, S)`` long. attention_mask: ``(B, S)``, 0 at padding.
        generator: optional ``torch.Generator`` on ``input_ids``'s device.

    Returns:
        ``(masked_input_ids, labels)``, both new ``(B, S)`` long tensors: ``labels`` holds the original
        id at chosen positions and -100 elsewhere. The inputs are not modified.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"input_ids and attention_mask shapes differ: {tuple(input_ids.shape)} vs "
            f"{tuple(attention_mask.shape)}"
        )
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must lie in [0, 1], got {probability}")
    device = input_ids.device
    special = torch.as_tensor(list(special_token_ids), dtype=input_ids.dtype, device=device)
    protected = (attention_mask == 0) | torch.isin(input_ids, special)

    chosen = (torch.rand(input_ids.shape, generator=generator, device=device) < probability) & ~protected
    split = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = chosen & (split < 0.8)
    to_random = chosen & (split >= 0.8) & (split < 0.9)

    if random_excludes_special:
        allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
        in_range = special[(special >= 0) & (special < vocab_size)]
        allowed[in_range] = False
        pool = allowed.nonzero().squeeze(1)
        if pool.numel() == 0:
            raise ValueError("no token id is left for random replacement once special ids are excluded")
        draw = torch.randint(0, pool.numel(), input_ids.shape, generator=generator, device=device)
        random_ids = pool[draw].to(input_ids.dtype)
    else:
        random_ids = torch.randint(
            0, vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype
        )

    masked = input_ids.clone()
    masked = torch.where(to_mask, torch.full_like(masked, mask_token_id), masked)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the masked positions, averaged over all masked tokens of the batch.

    ``logits``: ``(..., V)`` (e.g. ``(B, S, V)``); ``labels``: ``logits.shape[:-1]``, -100 where the
    token was not chosen. ``loss = sum_{p: y_p != -100} -log softmax(logits_p)[y_p] / #{p: y_p != -100}``.

    If no token is masked the result is ``logits.sum() * 0.0``-like: 0 but still attached to the graph,
    so every parameter that produced ``logits`` receives a (zero) gradient and DDP, which expects each
    parameter used in the forward to get a gradient, does not hang or fail. The implementation sums
    the per-token losses with ``ignore_index=-100`` and divides by ``max(count, 1)``, which gives exactly
    that, without a host-device synchronisation. At least float32, 0-dim.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match logits[:-1] {tuple(logits.shape[:-1])}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        flat_logits = _fp32(logits.reshape(-1, logits.shape[-1]))
        flat_labels = labels.reshape(-1).long()
        total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
        count = (flat_labels != IGNORE_INDEX).sum().clamp(min=1)
        return total / count


# ----------------------------------------------------------------------------------------------------
# reconstruction (stage 1 and stage 2)
# ----------------------------------------------------------------------------------------------------


def reconstruction_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Feature reconstruction of the teacher on visible tokens (METHOD Eq. 1; UMT ``uta_loss``).

    ``student``, ``teacher``: ``(K, B, L, D)`` (K aligned layers, L visible tokens; any leading shape
    works). Both are L2-normalised over D (``F.normalize``, eps 1e-12); the teacher is detached::

        loss = mean_{k, b, l} || s_kbl - t_kbl ||^2 = mean (2 - 2 cos(s_kbl, t_kbl))

    0 for identical directions, 4 for opposite ones. At least float32, 0-dim.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
    with torch.autocast(device_type=student.device.type, enabled=False):
        s = F.normalize(_fp32(student), dim=-1)
        t = F.normalize(_fp32(teacher.detach()), dim=-1)
        return (2.0 - 2.0 * (s * t).sum(dim=-1)).mean()


# ----------------------------------------------------------------------------------------------------
# boxes
# ----------------------------------------------------------------------------------------------------


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Element-wise generalised IoU of paired xyxy boxes: ``(N, 4) x (N, 4) -> (N,)``.

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with ``C`` the smallest box enclosing ``A`` and ``B``;
    in ``[-1, 1]``, 1 for identical boxes. Widths/heights are clamped at 0, so inverted boxes count as
    empty; denominators are clamped at ``eps`` (two identical empty boxes give 0).
    """
    if boxes1.shape != boxes2.shape or boxes1.shape[-1] != 4:
        raise ValueError(f"boxes must be paired (N, 4); got {tuple(boxes1.shape)}, {tuple(boxes2.shape)}")

    def area(b: Tensor) -> Tensor:
        return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)

    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area(boxes1) + area(boxes2) - inter
    iou = inter / union.clamp(min=eps)
    lt_c = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    rb_c = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    enclosing = (rb_c - lt_c).clamp(min=0).prod(dim=-1)
    return iou - (enclosing - union) / enclosing.clamp(min=eps)


def box_regression_loss(
    pred_cxcywh: Tensor,
    target_cxcywh: Tensor,
    weight_l1: float = 1.0,
    weight_giou: float = 1.0,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """L1 and GIoU box losses (DETR convention), averaged over the valid boxes.

    Args:
        pred_cxcywh, target_cxcywh: ``(N, 4)`` boxes as (cx, cy, w, h) (a trajectory flattened to its
            boxes).
        weight_l1, weight_giou: multipliers applied to the two returned terms.
        valid: optional ``(N,)`` bool, False for boxes to ignore (e.g. frames without a box).

    Returns:
        ``(l1, giou)``: ``l1 = weight_l1 * mean_n sum_c |pred_nc - target_nc|`` (per-box L1 distance
        over the 4 coordinates, as in DETR) and ``giou = weight_giou * mean_n (1 - GIoU_n)`` on xyxy
        boxes, both means over valid boxes. With no valid box both are 0 and still attached to
        ``pred_cxcywh``'s graph. Invalid rows are replaced by a dummy box before any arithmetic, so
        garbage in them cannot produce NaN. At least float32, 0-dim each.
    """
    if pred_cxcywh.shape != target_cxcywh.shape or pred_cxcywh.ndim != 2 or pred_cxcywh.shape[1] != 4:
        raise ValueError(
            f"boxes must be (N, 4); got {tuple(pred_cxcywh.shape)} and {tuple(target_cxcywh.shape)}"
        )
    n = pred_cxcywh.shape[0]
    with torch.autocast(device_type=pred_cxcywh.device.type, enabled=False):
        pred = _fp32(pred_cxcywh)
        target = _fp32(target_cxcywh.detach())
        if valid is None:
            valid = torch.ones(n, dtype=torch.bool, device=pred.device)
        elif valid.shape != (n,):
            raise ValueError(f"valid must have shape ({n},), got {tuple(valid.shape)}")
        valid = valid.to(device=pred.device, dtype=torch.bool)
        dummy = pred.new_tensor([0.5, 0.5, 1.0, 1.0]).expand_as(pred)
        keep = valid.unsqueeze(1)
        pred = torch.where(keep, pred, dummy)
        target = torch.where(keep, target, dummy)
        weight = valid.to(pred.dtype)
        count = weight.sum().clamp(min=1.0)
        l1 = ((pred - target).abs().sum(dim=1) * weight).sum() / count
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
        giou_loss = ((1.0 - giou) * weight).sum() / count
        return weight_l1 * l1, weight_giou * giou_loss
