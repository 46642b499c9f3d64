"""The scorer formula, the differentiable top-k and the hard selection rule, as pure functions."""

import math
from fractions import Fraction

import pytest
import torch

from modeling_visionselector import (
    VisionSelectorScorer,
    differentiable_topk,
    hard_topk_mask,
    num_kept_tokens,
    topk_indices,
    validate_retention_ratio,
)


def naive_scores(scorer, features, lengths):
    """The paper's formula with the full N x N matrix: mean_j q_i . k_j / sqrt(h), per item."""
    out = []
    for item in torch.split(features, lengths):
        q, k = scorer.q_proj(item), scorer.k_proj(item)
        out.append((q @ k.T).mean(1) / math.sqrt(scorer.hidden_size))
    return torch.cat(out)


def test_scorer_equals_the_papers_n_by_n_formula():
    torch.manual_seed(0)
    scorer = VisionSelectorScorer(24, 10).double()
    for module in (scorer.q_proj, scorer.k_proj):
        torch.nn.init.normal_(module.bias)
    lengths = [7, 1, 30]
    features = torch.randn(sum(lengths), 24, dtype=torch.float64)
    torch.testing.assert_close(scorer(features, lengths).double(), naive_scores(scorer, features, lengths))


def test_scorer_scores_each_item_independently_of_the_others():
    torch.manual_seed(0)
    scorer = VisionSelectorScorer(16, 8)
    a, b = torch.randn(5, 16), torch.randn(9, 16)
    together = scorer(torch.cat([a, b]), [5, 9])
    torch.testing.assert_close(together[:5], scorer(a, [5]))
    torch.testing.assert_close(together[5:], scorer(b, [9]))


def test_scorer_rejects_lengths_that_do_not_cover_the_features():
    with pytest.raises(ValueError, match="sum to 5"):
        VisionSelectorScorer(4, 2)(torch.randn(6, 4), [2, 3])


def test_scorer_memory_is_linear_in_tokens():
    """16k tokens: the peak extra memory of the scorer stays far below one N x N float32 matrix (1 GiB)."""
    from torch.profiler import ProfilerActivity, profile

    scorer = VisionSelectorScorer(64, 32)
    features = torch.randn(16384, 64)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        scorer(features, [16384])
    largest = max(event.cpu_memory_usage for event in prof.key_averages())
    assert largest < 16 * 2**20, f"an allocation of {largest} bytes; N x N would be {16384**2 * 4}"


@pytest.mark.parametrize("lengths,k", [([6, 9, 1], [2, 4, 1]), ([12], [3]), ([5, 5], [4, 1])])
def test_differentiable_topk_gradcheck_float64(lengths, k):
    torch.manual_seed(0)
    scores = torch.randn(sum(lengths), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: differentiable_topk(s, lengths, k), (scores,))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_differentiable_topk_sums_to_k_per_item(dtype):
    torch.manual_seed(0)
    lengths, k = [64, 10, 300, 3], [13, 2, 60, 1]
    scores = (torch.randn(sum(lengths)) * 3).to(dtype)
    mask = differentiable_topk(scores, lengths, k)
    assert mask.dtype == dtype and mask.shape == scores.shape
    assert bool(((mask >= 0) & (mask <= 1)).all())
    sums = torch.stack([item.double().sum() for item in torch.split(mask, lengths)])
    # The mask is solved in float64 and rounded once to `dtype`: each value is off by at most half an ulp of
    # itself, so an item's sum by at most eps * k (its values sum to k).
    tolerance = torch.finfo(dtype).eps * torch.tensor(k, dtype=torch.float64) + 1e-12
    assert bool(((sums - torch.tensor(k, dtype=torch.float64)).abs() <= tolerance).all()), (sums, k)


def test_differentiable_topk_tends_to_the_hard_topk_as_scores_spread():
    torch.manual_seed(0)
    lengths, ratio = [50, 20], 0.2
    scores = torch.randperm(70).double() / 10  # distinct, 0.1 apart
    hard = hard_topk_mask(scores, lengths, ratio)
    k = [num_kept_tokens(n, ratio) for n in lengths]
    gaps = [(differentiable_topk(scores * spread, lengths, k) - hard).abs().max() for spread in (1, 10, 100, 1000)]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-6


def test_differentiable_topk_item_keeping_everything_is_ones_with_zero_gradient():
    scores = torch.randn(7, dtype=torch.float64, requires_grad=True)
    mask = differentiable_topk(scores, [3, 4], [3, 2])
    assert torch.equal(mask[:3], torch.ones(3, dtype=torch.float64))
    mask[:3].sum().backward()
    assert torch.equal(scores.grad, torch.zeros(7, dtype=torch.float64))


def test_differentiable_topk_rejects_bad_k():
    with pytest.raises(ValueError, match="positive"):
        differentiable_topk(torch.randn(4), [4], [0])
    with pytest.raises(ValueError, match="2 values of k for 1 items"):
        differentiable_topk(torch.randn(4), [4], [1, 2])


# ---------------------------------------------------------------- with a temperature (standardised scores)


@pytest.mark.parametrize("lengths,k", [([6, 9, 1], [2, 4, 1]), ([12], [3])])
def test_tempered_topk_gradcheck_float64(lengths, k):
    torch.manual_seed(0)
    scores = torch.randn(sum(lengths), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: differentiable_topk(s, lengths, k, temperature=0.7), (scores,))


def test_tempered_topk_ignores_the_scale_and_shift_of_each_item():
    """The sharpness is the temperature's, not the scores': a per-item affine map with a positive factor (what a
    higher learning rate or larger features do to the scores) leaves the mask as it was."""
    torch.manual_seed(0)
    lengths, k = [49, 30], [4, 3]
    scores = torch.randn(sum(lengths), dtype=torch.float64)
    factor = torch.tensor([1e3] * 49 + [1e-3] * 30, dtype=torch.float64)
    shift = torch.tensor([5.0] * 49 + [-7.0] * 30, dtype=torch.float64)
    tempered = differentiable_topk(scores, lengths, k, temperature=0.5)
    torch.testing.assert_close(differentiable_topk(scores * factor + shift, lengths, k, temperature=0.5), tempered)
    # without a temperature the scale is the sharpness: 1000x sharper in the first item, 1000x softer in the second
    raw = differentiable_topk(scores * factor, lengths, k)
    assert not torch.allclose(raw, tempered, atol=1e-3)


def test_tempered_topk_ranks_as_the_scores_sums_to_k_and_hardens_as_the_temperature_falls():
    torch.manual_seed(0)
    lengths, ratio = [50, 20], 0.2
    scores = torch.randperm(70).double()
    hard = hard_topk_mask(scores, lengths, ratio)
    k = [num_kept_tokens(n, ratio) for n in lengths]
    gaps = []
    for temperature in (1.0, 0.1, 0.01, 0.001):
        mask = differentiable_topk(scores, lengths, k, temperature=temperature)
        for item_mask, item_scores, item_k in zip(torch.split(mask, lengths), torch.split(scores, lengths), k):
            assert bool((item_mask[item_scores.argsort()].diff() >= 0).all())  # a monotone map per item
            assert item_mask.sum().item() == pytest.approx(item_k, abs=1e-9)
        gaps.append((mask - hard).abs().max())
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-6


def test_tempered_topk_of_a_constant_item_is_uniform_and_keeps_dtype():
    mask = differentiable_topk(torch.full((10,), 3.0), [10], [2], temperature=0.1)
    assert mask.dtype == torch.float32
    torch.testing.assert_close(mask, torch.full((10,), 0.2))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "0.5"])
def test_tempered_topk_rejects_bad_temperatures(bad):
    with pytest.raises(ValueError, match="`temperature` must be a finite number > 0"):
        differentiable_topk(torch.randn(4), [4], [1], temperature=bad)


def test_topk_indices_are_the_highest_scores_in_ascending_order():
    scores = torch.tensor([0.1, 5.0, -1.0, 3.0, 2.0, 9.0, 0.0])
    kept = topk_indices(scores, [4, 3], 0.5)
    assert [k.tolist() for k in kept] == [[1, 3], [1]]
    assert hard_topk_mask(scores, [4, 3], 0.5).tolist() == [0, 1, 0, 1, 0, 1, 0]


@pytest.mark.parametrize("n,ratio", [(1, 0.1), (10, 0.3), (64, 0.2), (1000, 0.1), (7, 1.0), (3, 0.34)])
def test_num_kept_tokens_is_max_1_floor_r_n(n, ratio):
    assert num_kept_tokens(n, ratio) == max(1, math.floor(Fraction(str(ratio)) * n))
    assert 1 <= num_kept_tokens(n, ratio) <= n


@pytest.mark.parametrize("bad", [0, 0.0, -0.2, 1.0001, 2, float("nan"), float("inf"), "0.3", None, True, [0.3]])
def test_validate_retention_ratio_rejects(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        validate_retention_ratio(bad)


@pytest.mark.parametrize("good", [1, 1.0, 0.5, 1e-6])
def test_validate_retention_ratio_accepts(good):
    assert validate_retention_ratio(good) == float(good)


def test_num_kept_tokens_is_exact_for_every_two_decimal_ratio():
    """floor(r * n) in exact rational arithmetic, for r = 0.01 ... 1.00 and n = 1 ... 4096 (float error would
    drop a token: 0.29 * 100 == 28.999999999999996)."""
    assert num_kept_tokens(100, 0.29) == 29
    wrong = [
        (hundredths, n)
        for hundredths in range(1, 101)
        for n in range(1, 4097)
        if num_kept_tokens(n, hundredths / 100) != max(1, hundredths * n // 100)
    ]
    assert wrong == []
