"""Token selectors: which merged visual tokens of one item to keep.

Every selector is a pure function `(features, scores, k, grid) -> kept indices`:

- features (`torch.Tensor` of shape `(n, D)`): the item's merged tokens, in raster order (frame, row, column).
- scores (`torch.Tensor` of shape `(n,)`): the learned scorer's scores of those tokens.
- k (`int`): how many to keep, 1 <= k <= n.
- grid (`tuple[int, int, int]`): the item's merged grid (t, h, w), t * h * w == n.

It returns a `torch.LongTensor` of shape `(k,)` on the device of `features`: distinct, ascending indices into the
item. Only `learned` and `learned+diversity` read the scores; the others are the training-free baselines:

| name | rule |
| --- | --- |
| `learned` | the k highest learned scores (VisionSelector) |
| `random` | k indices drawn uniformly without replacement from torch's global generator (or `generator`) |
| `uniform` | an even lattice over the (t, h, w) grid: k spread over evenly spaced frames, rows and columns |
| `norm` | the k largest feature L2 norms |
| `divprune` | greedy max-min (farthest point) diversity on cosine distance, starting from the largest norm |
| `dart` | `min(k, 8)` largest-norm pivots, then the tokens whose highest cosine similarity to a pivot is lowest |
| `learned+diversity` | MMR over the 2k best-scored tokens: `relevance - max cosine similarity to the kept ones` |
"""

from __future__ import annotations

import math

import torch

from .scoring import item_topk


def _ascending(indices: torch.Tensor, device) -> torch.LongTensor:
    return indices.to(device=device, dtype=torch.long).sort().values


def _unit_rows(features: torch.Tensor) -> torch.Tensor:
    """`(n, D)` float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    return torch.nn.functional.normalize(features.float(), dim=-1)


def _evenly_spaced(count: int, length: int) -> torch.LongTensor:
    """`count` <= `length` distinct positions in [0, length), each the centre of one of `count` equal bins."""
    return ((torch.arange(count, dtype=torch.float64) + 0.5) * (length / count)).floor().long()


def _split_evenly(total: int, parts: int) -> list[int]:
    """`total` split into `parts` integers that differ by at most one, the larger ones spread out."""
    return [(total * (i + 1)) // parts - (total * i) // parts for i in range(parts)]


def learned(features: torch.Tensor, scores: torch.Tensor, k: int, grid: tuple[int, int, int]) -> torch.LongTensor:
    """The k highest learned scores (VisionSelector)."""
    return item_topk(scores, k)


def random_choice(
    features: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    grid: tuple[int, int, int],
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """k distinct indices drawn uniformly; drawn on the CPU so a `torch.manual_seed` reproduces them on any device."""
    order = torch.randperm(features.shape[0], generator=generator)  # CPU: the global generator unless given one
    return _ascending(order[:k], features.device)


def uniform(features: torch.Tensor, scores: torch.Tensor, k: int, grid: tuple[int, int, int]) -> torch.LongTensor:
    """An even lattice over the grid: frames, then rows within a frame, then columns within a row.

    The k tokens are split as evenly as possible over `min(t, k)` evenly spaced frames; a frame's share m goes to
    r evenly spaced rows, with r the row count of a lattice of the frame's aspect ratio
    (`round(sqrt(m * h / w))`, at least `ceil(m / w)`, at most h), and each row's share to evenly spaced columns.
    Keeping a quarter of a 2h x 2w grid thus keeps exactly one token of every 2 x 2 block.
    """
    t, h, w = (int(size) for size in grid)
    if t * h * w != features.shape[0]:
        raise ValueError(f"Grid {grid} holds {t * h * w} tokens, but the item has {features.shape[0]}.")
    kept = []
    frames = _evenly_spaced(min(t, k), t).tolist()
    for frame, per_frame in zip(frames, _split_evenly(k, len(frames))):
        # never more rows than tokens to place, or a row's share would be zero
        rows = min(h, per_frame, max(-(-per_frame // w), round((per_frame * h / w) ** 0.5), 1))
        for row, per_row in zip(_evenly_spaced(rows, h).tolist(), _split_evenly(per_frame, rows)):
            kept.append((frame * h + row) * w + _evenly_spaced(per_row, w))
    return _ascending(torch.cat(kept), features.device)


def norm(features: torch.Tensor, scores: torch.Tensor, k: int, grid: tuple[int, int, int]) -> torch.LongTensor:
    """The k largest feature L2 norms."""
    return item_topk(features.float().norm(dim=-1), k)


def divprune(features: torch.Tensor, scores: torch.Tensor, k: int, grid: tuple[int, int, int]) -> torch.LongTensor:
    """Greedy max-min diversity (DivPrune-style farthest point sampling) on cosine distance.

    Starts from the largest-norm token; each step keeps the token whose cosine distance to its nearest kept token
    is largest (ties: the lowest index).
    """
    unit = _unit_rows(features)  # (n, D)
    chosen = torch.empty(k, dtype=torch.long, device=features.device)
    chosen[0] = features.float().norm(dim=-1).argmax()
    nearest = torch.full((unit.shape[0],), float("inf"), device=features.device)  # distance to the kept set
    for step in range(1, k):
        nearest = torch.minimum(nearest, 1.0 - unit @ unit[chosen[step - 1]])
        nearest[chosen[step - 1]] = -float("inf")  # never pick a kept token again
        chosen[step] = nearest.argmax()
    return chosen.sort().values


def dart(
    features: torch.Tensor, scores: torch.Tensor, k: int, grid: tuple[int, int, int], num_pivots: int = 8
) -> torch.LongTensor:
    """Pivots plus the tokens least duplicated by them (DART-style duplication-aware selection).

    The `min(k, num_pivots)` largest-norm tokens are pivots; the remaining budget goes to the other tokens whose
    highest cosine similarity to any pivot is lowest, i.e. those the pivots duplicate least.
    """
    pivots = item_topk(features.float().norm(dim=-1), min(k, num_pivots))
    unit = _unit_rows(features)  # (n, D)
    duplication = (unit @ unit[pivots].T).amax(dim=1)  # (n,) similarity to the closest pivot
    duplication[pivots] = float("inf")  # pivots are kept already
    rest = torch.topk(-duplication, k - pivots.numel(), sorted=False).indices
    return _ascending(torch.cat([pivots, rest]), features.device)


def learned_diversity(
    features: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    grid: tuple[int, int, int],
    candidates_per_kept: float = 2.0,
    diversity_weight: float = 1.0,
) -> torch.LongTensor:
    """Learned scores re-ranked for diversity by maximal marginal relevance (MMR).

    Candidates are the `min(n, ceil(2 k))` best-scored tokens; their scores are min-max scaled to relevance in
    [0, 1]. Starting from the best score, each step keeps the candidate maximising
    `relevance - diversity_weight * (highest cosine similarity to an already kept token)`. With the default
    weight 1 an exact copy of a kept token loses to every candidate orthogonal to the kept ones; with
    `diversity_weight=0` this is exactly `learned`.
    """
    n = features.shape[0]
    pool = torch.topk(scores, min(n, max(k, math.ceil(candidates_per_kept * k))), sorted=True).indices  # (c,)
    relevance = scores[pool].float()
    spread = (relevance.max() - relevance.min()).clamp_min(torch.finfo(torch.float32).tiny)
    relevance = (relevance - relevance.min()) / spread  # (c,) in [0, 1]
    unit = _unit_rows(features[pool])  # (c, D)
    chosen = torch.empty(k, dtype=torch.long, device=features.device)
    chosen[0] = 0  # the best score
    redundancy = torch.full_like(relevance, -float("inf"))  # highest similarity to a kept candidate
    taken = torch.zeros_like(relevance, dtype=torch.bool)
    for step in range(1, k):
        taken[chosen[step - 1]] = True
        redundancy = torch.maximum(redundancy, unit @ unit[chosen[step - 1]])
        gain = (relevance - diversity_weight * redundancy).masked_fill(taken, -float("inf"))
        chosen[step] = gain.argmax()
    return _ascending(pool[chosen], features.device)


SELECTORS = {
    "learned": learned,
    "random": random_choice,
    "uniform": uniform,
    "norm": norm,
    "divprune": divprune,
    "dart": dart,
    "learned+diversity": learned_diversity,
}


# The selectors that read the learned scores; the others are the training-free baselines.
SCORE_READING_SELECTORS = ("learned", "learned+diversity")
TRAINING_FREE_SELECTORS = tuple(name for name in SELECTORS if name not in SCORE_READING_SELECTORS)


def get_selector(name: str):
    """The selector called `name`, or a `ValueError` listing the accepted names."""
    if not isinstance(name, str) or name not in SELECTORS:
        raise ValueError(f"Unknown selector {name!r}; accepted: {sorted(SELECTORS)}.")
    return SELECTORS[name]


def select_tokens(
    scores: torch.Tensor,
    lengths: list[int],
    kept: list[int],
    selector: str = "learned",
    features: torch.Tensor | None = None,
    grids: list[tuple[int, int, int]] | None = None,
) -> list[torch.LongTensor]:
    """The one rule that decides which merged visual tokens are kept; every path calls it: pruned `forward` and
    `generate` (through `select_visual_tokens`), training's hard top-k mask (`hard_topk_mask`), the vLLM model and the
    benchmarks.

    Args:
        scores (`torch.Tensor` of shape `(N,)`): the scores of the merged tokens of all items, item after item.
        lengths (`list[int]`): tokens per item; they sum to N.
        kept (`list[int]`): how many tokens each item keeps (`num_kept_tokens`), 1 <= kept[i] <= lengths[i].
        selector (`str`, *optional*, defaults to `"learned"`): the rule, a name of `SELECTORS`.
        features (`torch.Tensor` of shape `(N, D)`, *optional*): the merged tokens; the training-free selectors and
            `learned+diversity` read them.
        grids (`list[tuple[int, int, int]]`, *optional*): each item's merged (t, h, w) grid; `uniform` reads it.

    Returns:
        `list[torch.LongTensor]`: per item, the ascending indices of its kept tokens.
    """
    choose = get_selector(selector)
    if len(kept) != len(lengths) or any(not 1 <= k <= n for k, n in zip(kept, lengths)):
        raise ValueError(f"`kept` must give each item 1 to its length {lengths} tokens, got {kept}.")
    if selector != "learned" and features is None:
        raise ValueError(f"The selector {selector!r} reads the visual features: pass `features`.")
    item_features = [None] * len(lengths) if features is None else torch.split(features, lengths)
    item_grids = [None] * len(lengths) if grids is None else grids
    return [
        choose(item, item_scores, k, grid)
        for item, item_scores, k, grid in zip(item_features, torch.split(scores, lengths), kept, item_grids)
    ]
