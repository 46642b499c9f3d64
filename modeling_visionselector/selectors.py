"""Token selectors: which merged visual tokens of one item to keep.

Every selector is a pure function `(features, scores, k, grid) -> kept indices`:

- features (`torch.Tensor` of shape `(n, D)`): the item's merged tokens, in raster order (frame, row, column).
- scores (`torch.Tensor` of shape `(n,)`): the learned scorer's scores of those tokens.
- k (`int`): how many to keep, 1 <= k <= n.
- grid (`tuple[int, int, int]`): the item's merged grid (t, h, w), t * h * w == n.

It returns a `torch.LongTensor` of shape `(k,)`: distinct, ascending indices into the item.
"""

from __future__ import annotations

import torch

from .scoring import item_topk


def learned(features: torch.Tensor, scores: torch.Tensor, k: int, grid: tuple[int, int, int]) -> torch.LongTensor:
    """The k highest learned scores (VisionSelector)."""
    return item_topk(scores, k)


SELECTORS = {
    "learned": learned,
}


def get_selector(name: str):
    """The selector called `name`, or a `ValueError` listing the accepted names."""
    if not isinstance(name, str) or name not in SELECTORS:
        raise ValueError(f"Unknown selector {name!r}; accepted: {sorted(SELECTORS)}.")
    return SELECTORS[name]
