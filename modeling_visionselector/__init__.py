"""VisionSelector for the Qwen-VL family: learned visual token selection, as a transformers model package.

The sibling files of this folder are also the remote code that `save_pretrained` ships with a checkpoint. The
publishing functions (`save_scorer`, `push_scorer_to_hub`, `convert_checkpoint_to_scorer`, `scorer_state_dict`) are
not remote code: they live in `visionselector.publishing`; importing them from here still works, with a
`FutureWarning`, until the next release removes them.
"""

import warnings

from .compatibility import MIN_TRANSFORMERS, TESTED_TRANSFORMERS, StockInternalError
from .configuration_visionselector import (
    CONFIG_CLASSES,
    VisionSelectorConfig,
    VisionSelectorFields,
    VisionSelectorQwen2_5_VLConfig,
    VisionSelectorQwen2VLConfig,
    VisionSelectorQwen3_5Config,
    VisionSelectorQwen3_5MoeConfig,
    VisionSelectorQwen3VLConfig,
    VisionSelectorQwen3VLMoeConfig,
)
from .families import FAMILIES, Family, family_of, register_family
from .loading import BACKBONE_LOCATION_KWARGS, HUB_LOCATION_KWARGS, SCORER_PREFIX, SCORER_WEIGHTS_NAME, check_scorer_tensors
from .modeling_visionselector import (
    VISIONSELECTOR_CLASSES,
    PrunedInputs,
    VisionSelectorForConditionalGeneration,
    VisionSelectorMixin,
    VisionSelectorOutput,
    VisionSelectorQwen2_5_VLForConditionalGeneration,
    VisionSelectorQwen2VLForConditionalGeneration,
    VisionSelectorQwen3_5ForConditionalGeneration,
    VisionSelectorQwen3_5MoeForConditionalGeneration,
    VisionSelectorQwen3VLForConditionalGeneration,
    VisionSelectorQwen3VLMoeForConditionalGeneration,
    VisualTokenSelection,
    from_backbone,
    visionselector_class_for,
    with_selection_fields,
)
from .scoring import (
    VisionSelectorScorer,
    differentiable_topk,
    hard_topk_mask,
    num_kept_tokens,
    topk_indices,
    validate_retention_ratio,
)
from .selectors import SELECTORS, TRAINING_FREE_SELECTORS, select_tokens

__all__ = [
    "BACKBONE_LOCATION_KWARGS",
    "CONFIG_CLASSES",
    "FAMILIES",
    "Family",
    "HUB_LOCATION_KWARGS",
    "SELECTORS",
    "TRAINING_FREE_SELECTORS",
    "family_of",
    "from_backbone",
    "register_family",
    "select_tokens",
    "MIN_TRANSFORMERS",
    "TESTED_TRANSFORMERS",
    "StockInternalError",
    "VISIONSELECTOR_CLASSES",
    "VisionSelectorConfig",
    "VisionSelectorFields",
    "VisionSelectorQwen2_5_VLConfig",
    "VisionSelectorQwen2VLConfig",
    "VisionSelectorQwen3VLConfig",
    "VisionSelectorQwen3VLMoeConfig",
    "VisionSelectorQwen3_5Config",
    "VisionSelectorQwen3_5MoeConfig",
    "VisionSelectorMixin",
    "VisionSelectorForConditionalGeneration",
    "VisionSelectorQwen2_5_VLForConditionalGeneration",
    "VisionSelectorQwen2VLForConditionalGeneration",
    "VisionSelectorQwen3VLForConditionalGeneration",
    "VisionSelectorQwen3VLMoeForConditionalGeneration",
    "VisionSelectorQwen3_5ForConditionalGeneration",
    "VisionSelectorQwen3_5MoeForConditionalGeneration",
    "VisionSelectorOutput",
    "VisualTokenSelection",
    "PrunedInputs",
    "SCORER_PREFIX",
    "SCORER_WEIGHTS_NAME",
    "check_scorer_tensors",
    "visionselector_class_for",
    "with_selection_fields",
    "VisionSelectorScorer",
    "differentiable_topk",
    "hard_topk_mask",
    "num_kept_tokens",
    "topk_indices",
    "validate_retention_ratio",
]

# Names that moved to `visionselector.publishing`: importable from here for one more release.
_MOVED_TO_PUBLISHING = ("convert_checkpoint_to_scorer", "push_scorer_to_hub", "save_scorer", "scorer_state_dict")


def __getattr__(name):
    if name in _MOVED_TO_PUBLISHING:
        warnings.warn(
            f"`modeling_visionselector.{name}` moved to `visionselector.publishing.{name}` and will be removed "
            f"from `modeling_visionselector` in the next release: `from visionselector.publishing import {name}`.",
            FutureWarning,
            stacklevel=2,
        )
        from visionselector import publishing

        return getattr(publishing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
