"""Tests for modeling_instap.masking, against loop-based references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from modeling_instap.masking import (
    gather_visible,
    mean_attention_mask,
    random_token_mask,
    teacher_attention_mask,
    visible_count,
)


def test_visible_count_umt_convention():
    assert visible_count(196, 0.8) == 40
    assert visible_count(196, 0.5) == 98
    assert visible_count(196, 0.0) == 196
    assert visible_count(196, 1.0) == 0
    for n in range(1, 60):
        for ratio in (0.1, 0.25, 0.5, 0.75, 0.8, 0.9):
            assert visible_count(n, ratio) == n - int(n * ratio)
    with pytest.raises(ValueError):
        visible_count(10, 1.5)


def _frames(mask: torch.Tensor, num_frames: int, n: int) -> torch.Tensor:
    return mask.view(mask.shape[0], num_frames, n)


def test_teacher_mask_exact_count_per_frame_and_layout():
    gen = torch.Generator().manual_seed(0)
    b, t, n = 3, 4, 16
    attn = torch.rand(b * t, n, generator=gen).softmax(-1)
    mask = teacher_attention_mask(attn, num_frames=t, mask_ratio=0.8, generator=gen)
    assert mask.shape == (b, t * n) and mask.dtype == torch.bool
    visible_per_frame = (~_frames(mask, t, n)).sum(-1)
    assert torch.all(visible_per_frame == visible_count(n, 0.8))


def test_teacher_mask_frame_order_with_concentrated_attention():
    # Row b*T + t attends only to 4 patches (others exactly 0): with 4 visible patches per frame those
    # must be the visible ones, in frame t of sample b, in (t, h, w) order.
    b, t, n = 2, 3, 16
    attn = torch.zeros(b * t, n)
    expected = torch.ones(b, t * n, dtype=torch.bool)
    for bi in range(b):
        for ti in range(t):
            patches = [(bi * 5 + ti * 3 + k * 4) % n for k in range(4)]
            for p in patches:
                attn[bi * t + ti, p] = 1.0 + p
                expected[bi, ti * n + p] = False
    mask = teacher_attention_mask(attn, num_frames=t, mask_ratio=0.75, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, expected)
    # fewer non-zero patches than visible slots: still exactly n_vis distinct visible patches
    sparse = torch.zeros(4, n)
    sparse[:, 0] = 1.0
    mask = teacher_attention_mask(sparse, num_frames=2, mask_ratio=0.5, generator=torch.Generator().manual_seed(2))
    frames = _frames(mask, 2, n)
    assert torch.all((~frames).sum(-1) == 8) and torch.all(~frames[..., 0])
    # zero-mass rows are drawn uniformly rather than failing
    mask = teacher_attention_mask(torch.zeros(2, n), num_frames=1, mask_ratio=0.5)
    assert torch.all((~mask).sum(-1) == 8)


def _inclusion_probabilities(p: list[float], k: int) -> list[float]:
    """Exact P(index i among k draws without replacement, prob ∝ p), by enumerating draw sequences."""
    n = len(p)
    incl = [0.0] * n
    for seq in itertools.permutations(range(n), k):
        prob, remaining = 1.0, 1.0
        for j in seq:
            prob *= p[j] / remaining
            remaining -= p[j]
        for j in seq:
            incl[j] += prob
    return incl


@pytest.mark.parametrize("ratio", [0.8, 0.6])  # 1 and 2 visible patches out of 5
def test_teacher_mask_inclusion_follows_attention(ratio):
    weights = [0.05, 0.1, 0.15, 0.3, 0.4]
    n, rows = len(weights), 20000
    attn = torch.tensor(weights).expand(rows, n).contiguous()
    mask = teacher_attention_mask(attn, num_frames=1, mask_ratio=ratio, generator=torch.Generator().manual_seed(3))
    freq = (~mask).double().mean(0).tolist()
    exact = _inclusion_probabilities(weights, visible_count(n, ratio))
    for f, e in zip(freq, exact):
        assert abs(f - e) < 0.015, (freq, exact)
    assert freq == sorted(freq)  # higher attention, more often visible


def test_mean_attention_mask_hides_lowest_with_index_ties():
    gen = torch.Generator().manual_seed(4)
    b, length = 5, 23
    scores = torch.randint(0, 4, (b, length), generator=gen).float()  # many ties
    for ratio in (0.8, 0.5, 0.3, 0.0, 1.0):
        mask = mean_attention_mask(scores, ratio)
        k = math.ceil(ratio * length)
        for i in range(b):
            order = sorted(range(length), key=lambda j, i=i: (float(scores[i, j]), j))
            hidden = set(order[:k])
            assert [bool(mask[i, j]) for j in range(length)] == [j in hidden for j in range(length)]
    # float noise in ratio * L does not add a token: 0.07 * 100 = 7.000000000000001
    assert int(mean_attention_mask(torch.rand(2, 100), 0.07).sum(1)[0]) == 7
    assert int(mean_attention_mask(torch.rand(1, 1568), 0.8).sum()) == 1255


def test_random_token_mask_counts_uniformity_and_seed():
    b, t, n = 64, 4, 10
    mask = random_token_mask(b, t, n, 0.7, generator=torch.Generator().manual_seed(5))
    assert mask.shape == (b, t * n) and mask.dtype == torch.bool
    assert torch.all((~_frames(mask, t, n)).sum(-1) == visible_count(n, 0.7))
    freq = (~_frames(mask, t, n)).double().mean((0, 1))
    assert torch.all((freq - 0.3).abs() < 0.06)
    again = random_token_mask(b, t, n, 0.7, generator=torch.Generator().manual_seed(5))
    assert torch.equal(mask, again)
    assert not torch.equal(mask, random_token_mask(b, t, n, 0.7, generator=torch.Generator().manual_seed(6)))


def test_gather_visible_keeps_order():
    gen = torch.Generator().manual_seed(7)
    b, length, d = 3, 12, 4
    tokens = torch.randn(b, length, d, generator=gen, requires_grad=True)
    mask = random_token_mask(b, 3, 4, 0.5, generator=gen)
    out = gather_visible(tokens, mask)
    assert out.shape == (b, 6, d)
    for i in range(b):
        kept = [j for j in range(length) if not mask[i, j]]
        assert kept == sorted(kept)
        for slot, j in enumerate(kept):
            assert torch.equal(out[i, slot], tokens[i, j])
    out.sum().backward()
    assert torch.equal(tokens.grad[..., 0], (~mask).float())
    # trailing dims beyond D
    extra = torch.randn(b, length, 2, 5)
    assert gather_visible(extra, mask).shape == (b, 6, 2, 5)


def test_gather_visible_rejects_uneven_rows():
    tokens = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, False, False, True], [True, True, False, True]])
    with pytest.raises(ValueError, match="same number of visible tokens"):
        gather_visible(tokens, mask)
    with pytest.raises(ValueError):
        gather_visible(tokens, torch.zeros(2, 5, dtype=torch.bool))
