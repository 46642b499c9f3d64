"""VisionSelector for the Qwen-VL family: learned visual token selection, as a transformers model package.

The sibling files of this folder (but `hub_utils.py`) are also the remote code that `save_pretrained` ships with a
checkpoint.
"""

from .configuration_visionselector import (
    CONFIG_CLASSES,
    SUPPORTED_TRANSFORMERS,
    VisionSelectorConfig,
    VisionSelectorFields,
    VisionSelectorQwen2VLConfig,
    VisionSelectorQwen3_5Config,
    VisionSelectorQwen3_5MoeConfig,
    VisionSelectorQwen3VLConfig,
    VisionSelectorQwen3VLMoeConfig,
)
from .modeling_visionselector import (
    SCORER_WEIGHTS_NAME,
    VISIONSELECTOR_CLASSES,
    PrunedInputs,
    VisionSelectorForConditionalGeneration,
    VisionSelectorMixin,
    VisionSelectorOutput,
    VisionSelectorQwen2VLForConditionalGeneration,
    VisionSelectorQwen3_5ForConditionalGeneration,
    VisionSelectorQwen3_5MoeForConditionalGeneration,
    VisionSelectorQwen3VLForConditionalGeneration,
    VisionSelectorQwen3VLMoeForConditionalGeneration,
    VisualTokenSelection,
    check_scorer_tensors,
    visionselector_class_for,
    with_selection_fields,
)
from .hub_utils import convert_checkpoint_to_scorer, push_scorer_to_hub, save_scorer, scorer_state_dict
from .scoring import (
    VisionSelectorScorer,
    differentiable_topk,
    hard_topk_mask,
    num_kept_tokens,
    topk_indices,
    validate_retention_ratio,
)

__all__ = [
    "CONFIG_CLASSES",
    "SUPPORTED_TRANSFORMERS",
    "VISIONSELECTOR_CLASSES",
    "VisionSelectorConfig",
    "VisionSelectorFields",
    "VisionSelectorQwen2VLConfig",
    "VisionSelectorQwen3VLConfig",
    "VisionSelectorQwen3VLMoeConfig",
    "VisionSelectorQwen3_5Config",
    "VisionSelectorQwen3_5MoeConfig",
    "VisionSelectorMixin",
    "VisionSelectorForConditionalGeneration",
    "VisionSelectorQwen2VLForConditionalGeneration",
    "VisionSelectorQwen3VLForConditionalGeneration",
    "VisionSelectorQwen3VLMoeForConditionalGeneration",
    "VisionSelectorQwen3_5ForConditionalGeneration",
    "VisionSelectorQwen3_5MoeForConditionalGeneration",
    "VisionSelectorOutput",
    "VisualTokenSelection",
    "PrunedInputs",
    "SCORER_WEIGHTS_NAME",
    "check_scorer_tensors",
    "visionselector_class_for",
    "with_selection_fields",
    "scorer_state_dict",
    "convert_checkpoint_to_scorer",
    "push_scorer_to_hub",
    "save_scorer",
    "VisionSelectorScorer",
    "differentiable_topk",
    "hard_topk_mask",
    "num_kept_tokens",
    "topk_indices",
    "validate_retention_ratio",
]
