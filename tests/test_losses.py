"""Tests for modeling_instap.losses, each against a slow, loop-based reference."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_instap.losses import (
    all_gather_variable,
    all_gather_with_grad,
    box_cxcywh_to_xyxy,
    box_regression_loss,
    check_equal_batch_sizes,
    contrastive_loss,
    gather_counts,
    gather_without_grad,
    generalized_box_iou,
    local_contrastive_loss,
    mask_tokens_for_mlm,
    matching_loss,
    mlm_loss,
    reconstruction_loss,
    sample_hard_negatives,
)

# ----------------------------------------------------------------------------------------------------
# slow references
# ----------------------------------------------------------------------------------------------------


def _logits_ref(v: torch.Tensor, t: torch.Tensor, temp: float) -> list[list[float]]:
    n, d = v.shape
    return [[sum(float(v[i, k]) * float(t[j, k]) for k in range(d)) / temp for j in range(n)] for i in range(n)]


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _contrastive_ref(v, t, temp, ids=None, mode="positive") -> float:
    """Loop reference: per direction, per row, build the denominator and the targets explicitly."""
    logits = _logits_ref(v, t, temp)
    n = len(logits)
    total = 0.0
    for direction in ("v2t", "t2v"):
        dir_sum = 0.0
        for i in range(n):
            row = [logits[i][j] if direction == "v2t" else logits[j][i] for j in range(n)]
            if ids is None:
                dir_sum += -(row[i] - _logsumexp(row))
            elif mode == "positive":
                pos = [j for j in range(n) if int(ids[i]) == int(ids[j])]
                lse = _logsumexp(row)
                dir_sum += sum(-(row[j] - lse) / len(pos) for j in pos)
            else:  # exclude: denominator over the diagonal and other-source entries only
                denominator_terms = []
                for j in range(n):
                    if j == i or int(ids[i]) != int(ids[j]):
                        denominator_terms.append(row[j])
                dir_sum += -(row[i] - _logsumexp(denominator_terms))
        total += dir_sum / n
    return total / 2


def _normed(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)


# ----------------------------------------------------------------------------------------------------
# distributed helpers, single process
# ----------------------------------------------------------------------------------------------------


def test_all_gather_single_process_identity_and_grad():
    x = torch.randn(5, 3, requires_grad=True)
    y = all_gather_with_grad(x)
    assert torch.equal(y, x)
    w = torch.randn(5, 3)
    (y * w).sum().backward()
    assert torch.equal(x.grad, w)

    z = gather_without_grad(x)
    assert torch.equal(z, x) and not z.requires_grad
    assert gather_counts([5, 2]).tolist() == [[5, 2]]
    v = all_gather_variable(x, counts=[5], with_grad=False)
    assert torch.equal(v, x) and not v.requires_grad


def test_unequal_batch_sizes_raise_naming_them():
    check_equal_batch_sizes([4, 4, 4])
    with pytest.raises(ValueError, match=r"\[4, 3\]"):
        check_equal_batch_sizes([4, 3])


# ----------------------------------------------------------------------------------------------------
# contrastive loss
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temp", [0.07, 0.5])
def test_contrastive_diagonal_matches_loop(temp):
    gen = torch.Generator().manual_seed(0)
    v, t = _normed(7, 5, gen), _normed(7, 5, gen)
    got = contrastive_loss(v, t, temp)
    assert got.ndim == 0
    assert got.item() == pytest.approx(_contrastive_ref(v, t, temp), rel=1e-5)


def test_contrastive_soft_positives_match_loop():
    gen = torch.Generator().manual_seed(1)
    v, t = _normed(9, 6, gen), _normed(9, 6, gen)
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 0])
    got = contrastive_loss(v, t, torch.tensor(0.1), source_ids=ids, same_source="positive")
    assert got.item() == pytest.approx(_contrastive_ref(v, t, 0.1, ids, "positive"), rel=1e-5)
    # all ids distinct == plain diagonal targets
    distinct = contrastive_loss(v, t, 0.1, source_ids=torch.arange(9), same_source="positive")
    assert distinct.item() == pytest.approx(contrastive_loss(v, t, 0.1).item(), rel=1e-6)


def test_contrastive_exclude_matches_double_loop():
    gen = torch.Generator().manual_seed(2)
    v, t = _normed(10, 4, gen), _normed(10, 4, gen)
    ids = torch.tensor([5, 5, 5, 7, 7, 9, 11, 11, 11, 11])
    got = contrastive_loss(v, t, 0.05, source_ids=ids, same_source="exclude")
    assert got.item() == pytest.approx(_contrastive_ref(v, t, 0.05, ids, "exclude"), rel=1e-5)
    # distinct ids: exclude mode == diagonal
    distinct = contrastive_loss(v, t, 0.05, source_ids=torch.arange(10), same_source="exclude")
    assert distinct.item() == pytest.approx(contrastive_loss(v, t, 0.05).item(), rel=1e-6)


def _with_pair_offset(v, t, i, j, delta):
    """Append one dimension per pair so that only logit (i, j) changes (by delta * temperature units).

    v_i gets +1 in the new dimension, t_j gets +delta; every other row has 0 there.
    """
    n = v.shape[0]
    extra_v = torch.zeros(n, 1, dtype=v.dtype)
    extra_t = torch.zeros(n, 1, dtype=t.dtype)
    extra_v[i, 0] = 1.0
    extra_t[j, 0] = delta
    return torch.cat([v, extra_v], 1), torch.cat([t, extra_t], 1)


def test_contrastive_exclude_ignores_same_source_logits():
    gen = torch.Generator().manual_seed(3)
    v, t = _normed(6, 8, gen), _normed(6, 8, gen)
    ids = torch.tensor([0, 0, 1, 1, 1, 2])
    base_v, base_t = _with_pair_offset(v, t, 0, 1, 0.0)
    base = contrastive_loss(base_v, base_t, 0.1, source_ids=ids, same_source="exclude")
    # (0, 1), (1, 0), (2, 4), (4, 3): same-source off-diagonal pairs. Changing their logit changes nothing.
    for i, j in [(0, 1), (1, 0), (2, 4), (4, 3)]:
        for delta in (-50.0, 3.0, 80.0):
            vv, tt = _with_pair_offset(v, t, i, j, delta)
            changed = contrastive_loss(vv, tt, 0.1, source_ids=ids, same_source="exclude")
            assert changed.item() == pytest.approx(base.item(), rel=1e-12, abs=1e-12)
    # ... while a cross-source pair is a real negative.
    vv, tt = _with_pair_offset(v, t, 0, 2, 3.0)
    assert contrastive_loss(vv, tt, 0.1, source_ids=ids, same_source="exclude").item() > base.item() + 1e-3
    # and in "positive" mode a same-source pair matters.
    vv, tt = _with_pair_offset(v, t, 0, 1, 3.0)
    pos_base = contrastive_loss(base_v, base_t, 0.1, source_ids=ids, same_source="positive")
    assert contrastive_loss(vv, tt, 0.1, source_ids=ids, same_source="positive").item() != pytest.approx(
        pos_base.item()
    )


def test_contrastive_exclude_numerically_safe():
    gen = torch.Generator().manual_seed(4)
    v = _normed(8, 4, gen).float().requires_grad_()
    t = _normed(8, 4, gen).float().requires_grad_()
    temp = torch.tensor(0.001, requires_grad=True)
    # every row has only its diagonal left: loss 0, gradients 0, no NaN
    loss = contrastive_loss(v, t, temp, source_ids=torch.zeros(8, dtype=torch.long), same_source="exclude")
    loss.backward()
    assert loss.item() == 0.0
    for g in (v.grad, t.grad, temp.grad):
        assert torch.isfinite(g).all() and torch.all(g == 0)
    # mixed, tiny temperature, float32: finite loss and gradients
    v.grad = t.grad = temp.grad = None
    ids = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])
    for mode in ("positive", "exclude"):
        loss = contrastive_loss(v, t, temp, source_ids=ids, same_source=mode)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(g).all() for g in (v.grad, t.grad, temp.grad))


def test_contrastive_rejects_bad_arguments():
    v = torch.randn(3, 4)
    with pytest.raises(ValueError):
        contrastive_loss(v, torch.randn(4, 4), 0.1)
    with pytest.raises(ValueError):
        contrastive_loss(v, v, 0.1, source_ids=torch.arange(3), same_source="bogus")


# ----------------------------------------------------------------------------------------------------
# hard negatives
# ----------------------------------------------------------------------------------------------------


def test_hard_negatives_never_excluded_and_proportional():
    gen = torch.Generator().manual_seed(5)
    sim = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, 3.0]])
    exclude = torch.tensor([[False, True, False, False, False, True]])
    reps = 40000
    picks = sample_hard_negatives(sim.expand(reps, -1), exclude.expand(reps, -1), generator=gen)
    assert picks.shape == (reps,) and picks.dtype == torch.long
    assert not exclude[0, picks].any()
    allowed = [j for j in range(6) if not exclude[0, j]]
    z = sum(math.exp(float(sim[0, j])) for j in allowed)
    counts = torch.bincount(picks, minlength=6).double() / reps
    for j in range(6):
        expected = math.exp(float(sim[0, j])) / z if j in allowed else 0.0
        assert abs(counts[j].item() - expected) < 0.01, (j, counts[j].item(), expected)


def test_hard_negatives_extremes_and_empty_rows():
    gen = torch.Generator().manual_seed(6)
    # excluded entries have enormous similarity; allowed ones are tiny after softmax; a row all excluded.
    sim = torch.tensor([[1e4, -1e4, -1e4 + 1.0], [5.0, 5.0, 5.0], [0.0, 1e3, float("nan")]])
    exclude = torch.tensor([[True, False, False], [True, True, True], [False, True, False]])
    for _ in range(200):
        picks = sample_hard_negatives(sim, exclude, generator=gen)
        assert picks[1].item() == -1
        for row in (0, 2):
            assert picks[row].item() >= 0 and not exclude[row, picks[row]]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_hard_negatives_hypothesis(data):
    n = data.draw(st.integers(1, 6))
    m = data.draw(st.integers(1, 6))
    values = data.draw(
        st.lists(st.floats(-50, 50, allow_nan=False), min_size=n * m, max_size=n * m)
    )
    flags = data.draw(st.lists(st.booleans(), min_size=n * m, max_size=n * m))
    seed = data.draw(st.integers(0, 2**31 - 1))
    sim = torch.tensor(values, dtype=torch.float32).view(n, m)
    exclude = torch.tensor(flags).view(n, m)
    picks = sample_hard_negatives(sim, exclude, generator=torch.Generator().manual_seed(seed))
    for i in range(n):
        p = int(picks[i])
        if all(flags[i * m : (i + 1) * m]):
            assert p == -1
        else:
            assert 0 <= p < m and not flags[i * m + p]


# ----------------------------------------------------------------------------------------------------
# matching and MLM
# ----------------------------------------------------------------------------------------------------


def test_matching_loss_vs_manual():
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(9, 2, generator=gen, dtype=torch.float64)
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0])
    ref = 0.0
    for p in range(9):
        a, b = float(logits[p, 0]), float(logits[p, 1])
        ref += -([a, b][int(labels[p])] - _logsumexp([a, b]))
    assert matching_loss(logits, labels).item() == pytest.approx(ref / 9, rel=1e-6)


def _mlm_batch(gen: torch.Generator, b: int = 128, s: int = 48, vocab: int = 1000):
    cls_id, sep_id, pad_id = 1, 2, 0
    ids = torch.randint(5, vocab, (b, s), generator=gen)
    lengths = torch.randint(3, s + 1, (b,), generator=gen)
    attn = (torch.arange(s)[None, :] < lengths[:, None]).long()
    ids[:, 0] = cls_id
    ids[torch.arange(b), lengths - 1] = sep_id
    ids[attn == 0] = pad_id
    return ids, attn, (cls_id, sep_id, pad_id)


def test_mlm_masking_rates_and_protected_tokens():
    gen = torch.Generator().manual_seed(8)
    vocab, mask_id = 1000, 3
    ids, attn, (cls_id, sep_id, pad_id) = _mlm_batch(gen, vocab=vocab)
    ids_before, attn_before = ids.clone(), attn.clone()
    masked, labels = mask_tokens_for_mlm(
        ids, attn, vocab_size=vocab, mask_token_id=mask_id, special_token_ids=[cls_id, pad_id],
        probability=0.5, generator=torch.Generator().manual_seed(9),
    )
    assert torch.equal(ids, ids_before) and torch.equal(attn, attn_before)
    assert masked.shape == ids.shape and labels.shape == ids.shape

    eligible = 0
    chosen = replaced_mask = replaced_random = unchanged = 0
    for i in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            orig, new, lab = int(ids[i, j]), int(masked[i, j]), int(labels[i, j])
            protected = attn[i, j] == 0 or orig in (cls_id, pad_id)
            if protected:
                assert lab == -100 and new == orig
                continue
            eligible += 1
            if lab == -100:
                assert new == orig
                continue
            assert lab == orig
            chosen += 1
            if new == mask_id:
                replaced_mask += 1
            elif new == orig:
                unchanged += 1
            else:
                replaced_random += 1
                assert 0 <= new < vocab and new not in (cls_id, pad_id)
    assert abs(chosen / eligible - 0.5) < 0.03
    assert abs(replaced_mask / chosen - 0.8) < 0.03
    assert abs(replaced_random / chosen - 0.1) < 0.02
    assert abs(unchanged / chosen - 0.1) < 0.02
    # [SEP] can be chosen (UMT), since it is not in special_token_ids
    sep_positions = ids == sep_id
    assert (labels[sep_positions] == sep_id).any()


def test_mlm_masking_reproducible_and_any_id_option():
    gen = torch.Generator().manual_seed(10)
    ids, attn, (cls_id, _, pad_id) = _mlm_batch(gen, b=16, s=12, vocab=6)
    kwargs = dict(vocab_size=6, mask_token_id=3, special_token_ids=[cls_id, pad_id], probability=0.9)
    a = mask_tokens_for_mlm(ids, attn, **kwargs, generator=torch.Generator().manual_seed(0))
    b = mask_tokens_for_mlm(ids, attn, **kwargs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # with a tiny vocab, random ids never hit [CLS]/[PAD] by default...
    ids_big = ids.repeat(50, 1)
    attn_big = attn.repeat(50, 1)
    m, lab = mask_tokens_for_mlm(ids_big, attn_big, **kwargs, generator=torch.Generator().manual_seed(1))
    assert not torch.isin(m[lab != -100], torch.tensor([cls_id, pad_id])).any()
    # ...but they may when the UMT behaviour is requested.
    m, lab = mask_tokens_for_mlm(
        ids_big, attn_big, **kwargs, generator=torch.Generator().manual_seed(1), random_excludes_special=False
    )
    assert torch.isin(m[lab != -100], torch.tensor([cls_id, pad_id])).any()


def test_mlm_loss_vs_manual():
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    labels = torch.full((3, 5), -100)
    labels[0, 1], labels[1, 4], labels[2, 0], labels[2, 3] = 2, 6, 0, 2
    ref, count = 0.0, 0
    for i in range(3):
        for j in range(5):
            if labels[i, j] != -100:
                row = [float(x) for x in logits[i, j]]
                ref += -(row[int(labels[i, j])] - _logsumexp(row))
                count += 1
    got = mlm_loss(logits, labels)
    assert got.ndim == 0 and got.item() == pytest.approx(ref / count, rel=1e-6)


def test_mlm_loss_no_masked_token_keeps_graph():
    w = torch.randn(4, 7, requires_grad=True)
    logits = torch.randn(2, 3, 4) @ w
    loss = mlm_loss(logits, torch.full((2, 3), -100))
    assert loss.ndim == 0 and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert w.grad is not None and torch.all(w.grad == 0)


# ----------------------------------------------------------------------------------------------------
# reconstruction
# ----------------------------------------------------------------------------------------------------


def test_reconstruction_loss_vs_loop_and_limits():
    gen = torch.Generator().manual_seed(12)
    s = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    ref, count = 0.0, 0
    for k in range(2):
        for b in range(3):
            for ll in range(4):
                a = [float(x) for x in s.detach()[k, b, ll]]
                c = [float(x) for x in t.detach()[k, b, ll]]
                na, nc = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in c))
                ref += sum((x / na - y / nc) ** 2 for x, y in zip(a, c))
                count += 1
    got = reconstruction_loss(s, t)
    assert got.item() == pytest.approx(ref / count, rel=1e-6)
    got.backward()
    assert s.grad is not None and t.grad is None  # teacher detached
    x = torch.randn(2, 3, 4, 5, generator=gen)
    assert reconstruction_loss(x, x * 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert reconstruction_loss(x, -2.0 * x).item() == pytest.approx(4.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------------
# boxes
# ----------------------------------------------------------------------------------------------------


def test_giou_hand_computed():
    b1 = torch.tensor([[0, 0, 1, 1], [0, 0, 4, 4], [1, 1, 3, 2], [0, 0, 2, 2]], dtype=torch.float64)
    b2 = torch.tensor([[2, 2, 3, 3], [1, 1, 2, 2], [1, 1, 3, 2], [1, 1, 3, 3]], dtype=torch.float64)
    expected = [
        0.0 - (9.0 - 2.0) / 9.0,  # disjoint: IoU 0, union 2, enclosing 3x3
        1.0 / 16.0,  # nested: inter 1, union 16, enclosing 16
        1.0,  # identical
        1.0 / 7.0 - 2.0 / 9.0,  # partial: inter 1, union 7, enclosing 9
    ]
    got = generalized_box_iou(b1, b2)
    assert got.shape == (4,)
    for g, e in zip(got.tolist(), expected):
        assert g == pytest.approx(e, rel=1e-9)
    # symmetric
    assert torch.allclose(generalized_box_iou(b2, b1), got)


def test_box_conversion():
    cxcywh = torch.tensor([[0.5, 0.25, 0.2, 0.1], [0.1, 0.9, 0.0, 0.2]], dtype=torch.float64)
    expected = torch.tensor([[0.4, 0.2, 0.6, 0.3], [0.1, 0.8, 0.1, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), expected)


def test_box_regression_loss_vs_manual_and_valid():
    gen = torch.Generator().manual_seed(14)
    pred = (torch.rand(6, 4, generator=gen, dtype=torch.float64) * 0.5 + 0.25).requires_grad_()
    target = torch.rand(6, 4, generator=gen, dtype=torch.float64) * 0.5 + 0.25
    target[4] = float("nan")  # garbage in an invalid row must not leak
    valid = torch.tensor([True, True, False, True, False, True])
    l1, giou = box_regression_loss(pred, target, weight_l1=2.0, weight_giou=0.5, valid=valid)
    idx = [0, 1, 3, 5]
    p = pred.detach()
    ref_l1 = sum(sum(abs(float(p[i, c]) - float(target[i, c])) for c in range(4)) for i in idx) / 4
    g = generalized_box_iou(box_cxcywh_to_xyxy(pred.detach()[idx]), box_cxcywh_to_xyxy(target[idx]))
    ref_giou = float((1 - g).mean())
    assert l1.item() == pytest.approx(2.0 * ref_l1, rel=1e-6)
    assert giou.item() == pytest.approx(0.5 * ref_giou, rel=1e-6)
    (l1 + giou).backward()
    assert torch.isfinite(pred.grad).all() and torch.all(pred.grad[[2, 4]] == 0)
    # identical boxes: zero loss; no valid box: zero loss attached to the graph
    l1, giou = box_regression_loss(pred.detach(), pred.detach())
    assert l1.item() == pytest.approx(0.0) and giou.item() == pytest.approx(0.0, abs=1e-9)
    pred.grad = None
    l1, giou = box_regression_loss(pred, target, valid=torch.zeros(6, dtype=torch.bool))
    assert l1.item() == 0.0 and giou.item() == 0.0 and l1.requires_grad
    (l1 + giou).backward()
    assert torch.all(pred.grad == 0)


# ----------------------------------------------------------------------------------------------------
# real 2-process gloo run
# ----------------------------------------------------------------------------------------------------

_WORLD = 2
_LOCAL = 3
_DIM = 6
_FEAT = 5


def _global_problem():
    gen = torch.Generator().manual_seed(1234)
    n = _WORLD * _LOCAL
    return {
        "xv": torch.randn(n, _FEAT, generator=gen, dtype=torch.float64),
        "xt": torch.randn(n, _FEAT, generator=gen, dtype=torch.float64),
        "proj": torch.randn(_FEAT, _DIM, generator=gen, dtype=torch.float64),
        "ids": torch.tensor([0, 0, 1, 2, 2, 2]),  # crosses the rank boundary at row 3
        "temp": 0.1,
    }


def _embed_and_loss(xv, xt, proj, temp, ids, mode):
    v = F.normalize(xv @ proj, dim=-1)
    t = F.normalize(xt @ proj, dim=-1)
    return contrastive_loss(v, t, temp, source_ids=ids, same_source=mode)


_MODES = [(False, "positive"), (True, "positive"), (True, "exclude")]


def _dist_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=_WORLD)
    try:
        assert dist.get_world_size() == _WORLD and dist.get_backend() == "gloo"
        prob = _global_problem()
        rows = slice(rank * _LOCAL, (rank + 1) * _LOCAL)
        results = {}
        for use_ids, mode in _MODES:
            xv = prob["xv"][rows].clone().requires_grad_()
            xt = prob["xt"][rows].clone().requires_grad_()
            proj = prob["proj"].clone().requires_grad_()  # a shared "parameter", replicated as under DDP
            temp = torch.tensor(prob["temp"], dtype=torch.float64, requires_grad=True)
            v_local = F.normalize(xv @ proj, dim=-1)
            t_local = F.normalize(xt @ proj, dim=-1)
            v_all = all_gather_with_grad(v_local)
            t_all = all_gather_with_grad(t_local)
            ids = gather_without_grad(prob["ids"][rows]) if use_ids else None
            # One collective for the step's counts; the instance-style gather of unequal row counts.
            counts = gather_counts([_LOCAL, rank + 1])
            assert counts.tolist() == [[_LOCAL, r + 1] for r in range(_WORLD)]
            uneven = torch.full((rank + 1, 2), float(rank), requires_grad=True)
            gathered = all_gather_variable(uneven, counts=counts[:, 1].tolist())
            assert gathered.tolist() == [[float(r)] * 2 for r in range(_WORLD) for _ in range(r + 1)]
            (gathered.sum() * 1.0).backward()
            assert torch.equal(uneven.grad, torch.full_like(uneven, float(_WORLD)))
            loss = contrastive_loss(v_all, t_all, temp, source_ids=ids, same_source=mode)
            v_local.retain_grad()
            t_local.retain_grad()
            loss.backward()
            # DDP: average parameter gradients over processes
            proj_grad = proj.grad.clone()
            temp_grad = temp.grad.clone()
            dist.all_reduce(proj_grad)
            dist.all_reduce(temp_grad)
            # The local-loss form: this rank's rows against the gathered columns, the same update under DDP.
            xv2 = prob["xv"][rows].clone().requires_grad_()
            xt2 = prob["xt"][rows].clone().requires_grad_()
            proj2 = prob["proj"].clone().requires_grad_()
            temp2 = torch.tensor(prob["temp"], dtype=torch.float64, requires_grad=True)
            v2, t2 = F.normalize(xv2 @ proj2, dim=-1), F.normalize(xt2 @ proj2, dim=-1)
            local = local_contrastive_loss(
                v2, t2, all_gather_with_grad(v2), all_gather_with_grad(t2), rank * _LOCAL, temp2,
                source_ids=ids, same_source=mode, world_size=_WORLD,
            )
            local.backward()
            local_proj_grad, local_temp_grad = proj2.grad.clone(), temp2.grad.clone()
            dist.all_reduce(local_proj_grad)
            dist.all_reduce(local_temp_grad)
            local_value = local.detach().clone()
            dist.all_reduce(local_value)
            results[(use_ids, mode)] = {
                "local_loss_mean": local_value / _WORLD,
                "local_proj_grad": local_proj_grad / _WORLD,
                "local_temp_grad": local_temp_grad / _WORLD,
                "local_xv_grad": xv2.grad.detach(),
                "loss": loss.detach(),
                "v_local_grad": v_local.grad.detach(),
                "t_local_grad": t_local.grad.detach(),
                "xv_grad": xv.grad.detach(),
                "proj_grad": proj_grad / _WORLD,
                "temp_grad": temp_grad / _WORLD,
            }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_dist_worker, args=(os.path.join(tmp, "store"), tmp), nprocs=_WORLD, join=True)
        per_rank = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(_WORLD)]

    prob = _global_problem()
    for use_ids, mode in _MODES:
        xv = prob["xv"].clone().requires_grad_()
        xt = prob["xt"].clone().requires_grad_()
        proj = prob["proj"].clone().requires_grad_()
        temp = torch.tensor(prob["temp"], dtype=torch.float64, requires_grad=True)
        v = F.normalize(xv @ proj, dim=-1)
        t = F.normalize(xt @ proj, dim=-1)
        v.retain_grad()
        t.retain_grad()
        ids = prob["ids"] if use_ids else None
        loss = contrastive_loss(v, t, temp, source_ids=ids, same_source=mode)
        loss.backward()
        for r in range(_WORLD):
            res = per_rank[r][(use_ids, mode)]
            rows = slice(r * _LOCAL, (r + 1) * _LOCAL)
            torch.testing.assert_close(res["loss"], loss.detach())
            # each rank holds W * dL/d(its rows); DDP's 1/W averaging turns that into dL/d(rows)
            torch.testing.assert_close(res["v_local_grad"] / _WORLD, v.grad[rows])
            torch.testing.assert_close(res["t_local_grad"] / _WORLD, t.grad[rows])
            torch.testing.assert_close(res["xv_grad"] / _WORLD, xv.grad[rows])
            torch.testing.assert_close(res["proj_grad"], proj.grad)
            torch.testing.assert_close(res["temp_grad"], temp.grad)
            # The local-loss form: the same mean loss and, after DDP's averaging, the same gradients.
            torch.testing.assert_close(res["local_loss_mean"], loss.detach())
            torch.testing.assert_close(res["local_proj_grad"], proj.grad)
            torch.testing.assert_close(res["local_temp_grad"], temp.grad)
            torch.testing.assert_close(res["local_xv_grad"], res["xv_grad"])


def test_identical_texts_ignores_padding_and_excludes_pairs_from_the_contrastive_denominators():
    from modeling_instap.losses import identical_texts

    ids = torch.tensor([[1, 5, 6, 2, 0], [1, 5, 6, 2, 9], [1, 7, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    same = identical_texts(ids, mask)  # rows 0 and 1 differ only under the padding
    assert same.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    assert identical_texts(ids)[0, 1].item() is False
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    t = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    excluded = contrastive_loss(v, t, 0.1, exclude_pairs=same)
    logits = v @ t.t() / 0.1
    drop = same & ~torch.eye(3, dtype=torch.bool)
    by_hand = (F.cross_entropy(logits.masked_fill(drop, float("-inf")), torch.arange(3))
               + F.cross_entropy(logits.t().masked_fill(drop, float("-inf")), torch.arange(3))) / 2
    torch.testing.assert_close(excluded, by_hand)
    assert not torch.allclose(excluded, contrastive_loss(v, t, 0.1))
