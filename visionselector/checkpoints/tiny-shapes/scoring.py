"""The Learnable Importance Scorer, the differentiable top-k and the hard selection rule.

Everything here is stateless math on one flat tensor of merged visual tokens, split into items (one image or
one video each) by `lengths`. Shapes use N for the total number of merged tokens, D for their width (the LLM
hidden size) and h for the scorer width.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import torch
from torch import nn


def _as_written(retention_ratio) -> str:
    """The shortest decimal that prints as `retention_ratio`: `repr` of a float, `str` of a numpy scalar
    (`np.float32(0.29)` prints as 0.29, while its exact float value is 0.28999999165...)."""
    if isinstance(retention_ratio, float) or not hasattr(retention_ratio, "dtype"):
        return repr(float(retention_ratio))
    return str(retention_ratio)


def validate_retention_ratio(retention_ratio, name: str = "retention_ratio") -> float:
    """Returns `retention_ratio` as a float, or raises a `ValueError` naming it and the accepted range (0, 1].

    A numpy scalar becomes the float of the decimal it prints as, so `np.float32(0.29)` keeps what 0.29 keeps.
    """
    if isinstance(retention_ratio, bool) or not isinstance(retention_ratio, numbers.Real):
        raise ValueError(f"`{name}` must be a number in (0, 1], got {retention_ratio!r} ({type(retention_ratio).__name__}).")
    value = float(_as_written(retention_ratio))
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"`{name}` must be in (0, 1], got {retention_ratio!r}.")
    return value


def num_kept_tokens(num_tokens: int, retention_ratio: float) -> int:
    """How many of an item's `num_tokens` merged tokens survive: `max(1, floor(retention_ratio * num_tokens))`.

    The product is exact for the ratio as written: a float ratio is read as the shortest decimal that prints as it
    (`repr`; `str` for a numpy scalar), so 0.29 of 100 tokens keeps 29, where float arithmetic
    (0.29 * 100 = 28.999999999999996) would keep 28.
    """
    ratio = Fraction(_as_written(retention_ratio))
    return max(1, ratio.numerator * num_tokens // ratio.denominator)


def segment_ids(lengths: list[int], device=None) -> torch.LongTensor:
    """`(N,)` item index of every token, for items of the given lengths laid end to end."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.as_tensor(lengths, device=device))


# How a multi-head scorer combines its heads' scores into one per token (`scorer_head_reduction`).
HEAD_REDUCTIONS = ("max", "logsumexp")


def validate_scorer_heads(num_heads, hidden_size) -> int:
    """Returns `num_heads`, or raises a `ValueError` naming it and the accepted values: a positive integer that
    divides the scorer width `hidden_size`."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, numbers.Integral) or num_heads < 1:
        raise ValueError(f"`scorer_heads` must be a positive integer that divides scorer_hidden_size={hidden_size}, got {num_heads!r}.")
    if hidden_size % num_heads:
        divisors = [d for d in range(1, hidden_size + 1) if hidden_size % d == 0]
        raise ValueError(
            f"`scorer_heads` must divide scorer_hidden_size={hidden_size} (accepted: {divisors}), got {num_heads!r}."
        )
    return int(num_heads)


def validate_head_reduction(reduction) -> str:
    """Returns `reduction`, or raises a `ValueError` naming it and the accepted values `HEAD_REDUCTIONS`."""
    if reduction not in HEAD_REDUCTIONS:
        raise ValueError(f"`scorer_head_reduction` must be one of {HEAD_REDUCTIONS}, got {reduction!r}.")
    return reduction


class VisionSelectorScorer(nn.Module):
    """Scores every merged visual token of an item by how much the item's other tokens "attend" to it.

    With q_i = W_q x_i + b_q and k_j = W_k x_j + b_k (width h), the score of token i is the mean over the item's
    tokens j of q_i . k_j / sqrt(h) (VisionSelector, eq. 2). The mean of dot products is the dot product with the
    mean key, and the mean key is W_k applied to the mean token, so the score costs O(N h), never O(N^2).

    With `num_heads` H > 1 the h query and key columns split into H heads of h / H, each scoring as above
    (q_i^a . mean_j k_j^a / sqrt(h / H)), and a token's score is the max over heads (or their logsumexp): for a
    given item a union of H half-spaces of feature space rather than one, so tokens of H different kinds can all
    rank high. Same tensors, same cost; H = 1 is the paper's scorer exactly.

    Args:
        input_size (`int`): width D of the merged visual tokens (the LLM hidden size).
        hidden_size (`int`): width h of the query and key projections.
        num_heads (`int`, *optional*, defaults to 1): H, a divisor of h.
        head_reduction (`str`, *optional*, defaults to `"max"`): `"max"` or `"logsumexp"` over the heads.
    """

    def __init__(self, input_size: int, hidden_size: int, num_heads: int = 1, head_reduction: str = "max"):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = validate_scorer_heads(num_heads, hidden_size)
        self.head_reduction = validate_head_reduction(head_reduction)
        self.q_proj = nn.Linear(input_size, hidden_size, bias=True)
        self.k_proj = nn.Linear(input_size, hidden_size, bias=True)

    def extra_repr(self) -> str:
        return "" if self.num_heads == 1 else f"num_heads={self.num_heads}, head_reduction={self.head_reduction!r}"

    def forward(self, features: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """
        Args:
            features (`torch.Tensor` of shape `(N, D)`): merged visual tokens of all items, item after item.
            lengths (`list[int]`): tokens per item; they sum to N.

        Returns:
            `torch.Tensor` of shape `(N,)`, float32 (float64 for float64 features): the score of every token.
        """
        if sum(lengths) != features.shape[0]:
            raise ValueError(f"Item lengths {lengths} sum to {sum(lengths)}, but {features.shape[0]} features were given.")
        # No GPU sync (vLLM serves with this code): the lengths reach the device by an asynchronous copy from
        # pinned memory, and `output_size` spares repeat_interleave reading the repeats back.
        host_lengths = torch.tensor(lengths, dtype=torch.long)
        if features.is_cuda:
            host_lengths = host_lengths.pin_memory()
        device_lengths = host_lengths.to(features.device, non_blocking=True)
        item = torch.repeat_interleave(
            torch.arange(len(lengths), device=features.device), device_lengths, output_size=features.shape[0]
        )  # (N,)
        # Per-item mean token, accumulated in at least float32 so that 16k bf16 tokens average without drift.
        accumulate = torch.promote_types(features.dtype, torch.float32)
        counts = device_lengths.to(accumulate)[:, None]
        mean_tokens = torch.zeros(len(lengths), features.shape[-1], device=features.device, dtype=accumulate)
        mean_tokens = mean_tokens.index_add(0, item, features.to(accumulate)) / counts  # (items, D)
        # In the projections' dtype: a trainer may keep the scorer in float32 on a half-precision backbone.
        dtype = self.q_proj.weight.dtype
        mean_keys = self.k_proj(mean_tokens.to(dtype)).to(accumulate)  # (items, h)
        queries = self.q_proj(features.to(dtype)).to(accumulate)  # (N, h)
        if self.num_heads == 1:  # the paper's scorer, operation for operation
            return (queries * mean_keys[item]).sum(-1) / math.sqrt(self.hidden_size)  # (N,)
        head_size = self.hidden_size // self.num_heads
        per_head = (queries * mean_keys[item]).unflatten(-1, (self.num_heads, head_size)).sum(-1)  # (N, H)
        per_head = per_head / math.sqrt(head_size)
        if self.head_reduction == "max":
            return per_head.amax(-1)  # (N,)
        return per_head.logsumexp(-1)  # (N,)


def build_scorer(config) -> VisionSelectorScorer:
    """The scorer a VisionSelector configuration describes (`scorer_hidden_size`, `scorer_heads`,
    `scorer_head_reduction`; a configuration without the head fields describes the paper's scorer)."""
    return VisionSelectorScorer(
        config.text_config.hidden_size,
        config.scorer_hidden_size,
        num_heads=getattr(config, "scorer_heads", 1),
        head_reduction=getattr(config, "scorer_head_reduction", "max"),
    )


def item_topk(scores: torch.Tensor, k: int) -> torch.LongTensor:
    """Ascending indices of the k highest of one item's `(n,)` scores: the `learned` selector's rule."""
    return torch.topk(scores, k, sorted=False).indices.sort().values


def topk_indices(scores: torch.Tensor, lengths: list[int], retention_ratio: float) -> list[torch.LongTensor]:
    """The kept tokens of each item at `retention_ratio` (its `num_kept_tokens` highest scores, as ascending indices
    into the item), by `selectors.select_tokens`."""
    from .selectors import select_tokens

    return select_tokens(scores, lengths, [num_kept_tokens(n, retention_ratio) for n in lengths])


def hard_topk_mask(scores: torch.Tensor, lengths: list[int], retention_ratio: float) -> torch.Tensor:
    """`(N,)` float mask with 1 at the tokens `topk_indices` keeps (the inference selection) and 0 elsewhere."""
    mask = torch.zeros_like(scores)
    offsets = [0] + torch.tensor(lengths).cumsum(0).tolist()[:-1]
    for offset, kept in zip(offsets, topk_indices(scores, lengths, retention_ratio)):
        mask[offset + kept] = 1.0
    return mask


def _pad_items(values: torch.Tensor, lengths: list[int], fill: float) -> torch.Tensor:
    """`(N,)` -> `(items, max_len)`, padded with `fill`."""
    return nn.utils.rnn.pad_sequence(list(torch.split(values, lengths)), batch_first=True, padding_value=fill)


class _SigmoidTopK(torch.autograd.Function):
    """m = sigmoid(s + t(s)) with t solved per row so that the row sums to k; rows are padded with -inf."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: torch.Tensor, iterations: int):
        # scores: (R, M), -inf at padding; k: (R,) float in (0, n_r)
        work = scores.double()
        valid = torch.isfinite(work)
        finite = work.masked_fill(~valid, 0.0)
        big = torch.finfo(torch.float64).max
        # sigmoid(-40) < 5e-18, so at t = lo every row sums below any k >= 1e-3, and at t = hi above n - 1e-3.
        lo = -finite.masked_fill(~valid, -big).amax(1) - 40.0
        hi = -finite.masked_fill(~valid, big).amin(1) + 40.0
        for _ in range(iterations):  # bisection: the row sum is increasing in t
            mid = (lo + hi) / 2
            too_big = torch.sigmoid(work + mid[:, None]).sum(1) > k
            hi = torch.where(too_big, mid, hi)
            lo = torch.where(too_big, lo, mid)
        t = (lo + hi) / 2
        for _ in range(2):  # Newton polish of the last bits
            mask = torch.sigmoid(work + t[:, None])
            slope = (mask * (1 - mask)).sum(1).clamp_min(1e-300)
            t = t - (mask.sum(1) - k) / slope
        mask = torch.sigmoid(work + t[:, None])
        ctx.save_for_backward(mask)
        return mask.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_mask: torch.Tensor):
        (mask,) = ctx.saved_tensors
        # d m_i / d s_j = sigma'_i (delta_ij + dt/ds_j) with dt/ds_j = -sigma'_j / sum(sigma'), from sum(m) = k.
        slope = mask * (1 - mask)  # sigma', zero at padding
        grad = grad_mask.double()
        mean_grad = (grad * slope).sum(1, keepdim=True) / slope.sum(1, keepdim=True).clamp_min(1e-300)
        return (slope * (grad - mean_grad)).to(grad_mask.dtype), None, None


def standardized_item_scores(scores: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """`(N,)` scores shifted and scaled per item to mean 0 and standard deviation 1 (computed in float64).

    A monotone map per item: each item's ranking, hence its hard top-k, is unchanged. An item whose scores are all
    equal (or of length 1) maps to zeros.
    """
    work = scores.double()
    item = segment_ids(lengths, device=scores.device)  # (N,)
    counts = torch.as_tensor(lengths, device=scores.device, dtype=torch.float64)
    means = torch.zeros(len(lengths), device=scores.device, dtype=torch.float64).index_add(0, item, work) / counts
    centred = work - means[item]  # (N,)
    variances = torch.zeros_like(means).index_add(0, item, centred.square()) / counts
    # the floor (before the square root, whose gradient at 0 is infinite) only guards constant items (0 / floor = 0);
    # any real spread of float32 scores is far above it
    return centred / variances.clamp_min(1e-60).sqrt()[item]


def differentiable_topk(
    scores: torch.Tensor,
    lengths: list[int],
    k: list[int] | torch.Tensor,
    iterations: int = 64,
    temperature: float | None = None,
) -> torch.Tensor:
    """Soft top-k mask: sigmoid(s_i + t) per item, with the threshold t of each item solved so that it sums to k.

    With `temperature` tau, the sigmoid takes the item's standardised scores instead, sigmoid(z_i / tau + t) with
    z = (s - mean) / std over the item: the mask's sharpness is then 1 / tau alone, whatever the scale of the scores
    (which grows with the learning rate and the features' norm); without it (the paper's formulation) the sharpness
    is the scores' own spread. Either way the mask ranks tokens as the scores do.

    The backward is the exact gradient through the implicit threshold (not a straight-through estimate). As the
    scores of an item spread apart (or tau falls), its mask tends to the hard top-k mask. An item with k >= its
    length keeps everything (mask 1, zero gradient).

    Args:
        scores (`torch.Tensor` of shape `(N,)`): scores of all items, item after item.
        lengths (`list[int]`): tokens per item.
        k (`list[int]` or `torch.Tensor` of shape `(items,)`): target sum of each item's mask, 0 < k.
        iterations (`int`): bisection steps; 64 halve the bracket to below float64 resolution.
        temperature (`float`, *optional*): tau > 0 for standardised scores; `None` (the default): raw scores.

    Returns:
        `torch.Tensor` of shape `(N,)`, dtype of `scores`: the soft mask.
    """
    k = torch.as_tensor(k, dtype=torch.float64, device=scores.device)
    n = torch.as_tensor(lengths, dtype=torch.float64, device=scores.device)
    if k.shape != n.shape:
        raise ValueError(f"Got {k.numel()} values of k for {n.numel()} items.")
    if bool((k <= 0).any()):
        raise ValueError(f"Every k must be positive, got {k.tolist()}.")
    dtype = scores.dtype
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature < math.inf:
            raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}.")
        scores = standardized_item_scores(scores, lengths) / temperature  # (N,) float64
    full = k >= n
    padded = _pad_items(scores, lengths, float("-inf"))  # (items, max_len)
    mask = _SigmoidTopK.apply(padded, torch.where(full, n - 0.5, k), iterations)
    mask = torch.where(full[:, None], 1.0, mask)  # items asked to keep all their tokens keep them, with zero gradient
    valid = torch.arange(padded.shape[1], device=scores.device)[None, :] < n[:, None]
    return mask[valid].to(dtype)
