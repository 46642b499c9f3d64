"""VisionSelector for Qwen2.5-VL: learned visual token selection, as a transformers model package.

The sibling files of this folder are also the remote code that `save_pretrained` ships with a checkpoint.
"""

from .configuration_visionselector import VisionSelectorConfig
from .modeling_visionselector import (
    SCORER_WEIGHTS_NAME,
    VisionSelectorCausalLMOutputWithPast,
    VisionSelectorForConditionalGeneration,
    VisualTokenSelection,
    check_scorer_tensors,
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
    "VisionSelectorConfig",
    "VisionSelectorForConditionalGeneration",
    "VisionSelectorCausalLMOutputWithPast",
    "VisualTokenSelection",
    "SCORER_WEIGHTS_NAME",
    "check_scorer_tensors",
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
