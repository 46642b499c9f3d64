"""Selector names grouped by what a selector needs: the rules themselves are `modeling_visionselector.selectors`.

`SCORE_READING_SELECTORS` rank tokens by the learned scorer's scores, so they need a trained scorer;
`TRAINING_FREE_SELECTORS` (the baselines the learned scorer is compared with) read only the visual features.
"""

from modeling_visionselector.selectors import SELECTORS

SCORE_READING_SELECTORS = ("learned", "learned+diversity")
TRAINING_FREE_SELECTORS = tuple(name for name in SELECTORS if name not in SCORE_READING_SELECTORS)

__all__ = ["SCORE_READING_SELECTORS", "TRAINING_FREE_SELECTORS"]
