"""Configuration of VisionSelector models: a Qwen-VL configuration plus the scorer and retention settings.

One configuration class per backbone family (see `families.py`), each a subclass of the stock one with its own
`model_type`, defined from the family's description by `define_config_class`:

| class | stock configuration | `model_type` |
| --- | --- | --- |
| `VisionSelectorQwen2VLConfig` | `Qwen2VLConfig` | `visionselector_qwen2_vl` |
| `VisionSelectorQwen2_5_VLConfig` | `Qwen2_5_VLConfig` | `visionselector_qwen2_5_vl` |
| `VisionSelectorQwen3VLConfig` | `Qwen3VLConfig` | `visionselector_qwen3_vl` |
| `VisionSelectorQwen3VLMoeConfig` | `Qwen3VLMoeConfig` | `visionselector_qwen3_vl_moe` |
| `VisionSelectorQwen3_5Config` | `Qwen3_5Config` | `visionselector_qwen3_5` |
| `VisionSelectorQwen3_5MoeConfig` | `Qwen3_5MoeConfig` | `visionselector_qwen3_5_moe` |

`VisionSelectorConfig` is the Qwen2.5-VL class under its first name (published checkpoints' `auto_map` use it).
The fields VisionSelector adds are declared once, in `VisionSelectorFields`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from .compatibility import TRANSFORMERS_VERSION, check_transformers_version  # noqa: F401 (TRANSFORMERS_VERSION: re-exported)

# Remote code runs under the user's transformers: below the oldest release it runs on, fail here, at import, rather
# than deep inside a forward; above the tested releases, warn once (see `compatibility.py`).
check_transformers_version()

from huggingface_hub.dataclasses import strict  # noqa: E402
from transformers import PreTrainedConfig  # noqa: E402

from .families import FAMILIES, Family  # noqa: E402
from .scoring import validate_head_reduction, validate_retention_ratio, validate_scorer_heads  # noqa: E402


@dataclasses.dataclass(kw_only=True, repr=False)
class VisionSelectorFields:
    r"""
    The fields a VisionSelector configuration adds to its backbone's.

    Args:
        scorer_hidden_size (`int`, *optional*, defaults to `text_config.hidden_size // 2`):
            Width h of the scorer's query and key projections. The default gives the paper's scorer: 12,848,640
            parameters on Qwen2.5-VL-7B, 4,196,352 on Qwen2.5-VL-3B.
        scorer_heads (`int`, *optional*, defaults to 1):
            Number of heads H the scorer's h query and key columns split into, a divisor of `scorer_hidden_size`.
            A token's score is then the max over the heads' paper scores (or their logsumexp, see
            `scorer_head_reduction`): a union of H half-spaces, so that targets of H different kinds can all rank
            high. Same tensors, same parameter count, same O(N h) cost; 1 (the default) is the paper's scorer exactly,
            so every paper checkpoint loads unchanged. A checkpoint's config says which scorer its weights belong to.
        scorer_head_reduction (`str`, *optional*, defaults to `"max"`):
            How a scorer with `scorer_heads` > 1 combines its heads' scores: `"max"` or `"logsumexp"`. Unused at 1.
        retention_ratio (`float`, *optional*, defaults to 0.3):
            Share of each image's and video's merged visual tokens kept at inference, in (0, 1]; an item of n
            tokens keeps `max(1, floor(retention_ratio * n))`. `forward` and `generate` accept a per-call override.
            1.0 reproduces the backbone exactly.
        train_retention_ratio (`float`, *optional*, defaults to 0.2):
            Share of tokens the differentiable top-k keeps in training, in (0, 1]. The paper trains at 0.2 and
            evaluates at any ratio.
        scorer_init_std (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the scorer weights (biases start at zero); >= 0.
        base_model_name_or_path (`str`, *optional*):
            Hub id or path of the backbone the scorer was trained on. A scorer-only checkpoint is assembled from it.
        base_model_revision (`str`, *optional*):
            Revision (branch, tag or commit) of `base_model_name_or_path`.
        scorer_only (`bool`, *optional*, defaults to `False`):
            Marks the configuration of a scorer-only artifact (written by `save_scorer`): its folder holds the scorer
            weights in `scorer.safetensors` and no backbone, so `from_pretrained` loads the backbone from
            `base_model_name_or_path`. The configuration of a loaded model has it `False`.
    """

    # The VisionSelector model class of this configuration, for `auto_map` (set by each configuration class).
    model_class_name = None

    scorer_hidden_size: int | None = None
    scorer_heads: int = 1
    scorer_head_reduction: str = "max"
    retention_ratio: float = 0.3
    train_retention_ratio: float = 0.2
    scorer_init_std: float = 0.02
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    scorer_only: bool = False

    def __setattr__(self, name, value):
        # Checked on every assignment too: `from_pretrained(..., retention_ratio=r)` sets the loaded config's field.
        if name in ("retention_ratio", "train_retention_ratio"):
            value = validate_retention_ratio(value, name)
        super().__setattr__(name, value)

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a backbone's `to_dict()` names the stock type; this class has its own
        super().__post_init__(**kwargs)
        if self.scorer_hidden_size is None:
            self.scorer_hidden_size = self.text_config.hidden_size // 2
        if isinstance(self.scorer_hidden_size, bool) or self.scorer_hidden_size < 1:
            raise ValueError(f"`scorer_hidden_size` must be a positive integer, got {self.scorer_hidden_size!r}.")
        self.scorer_heads = validate_scorer_heads(self.scorer_heads, self.scorer_hidden_size)
        self.scorer_head_reduction = validate_head_reduction(self.scorer_head_reduction)
        self.retention_ratio = validate_retention_ratio(self.retention_ratio, "retention_ratio")
        self.train_retention_ratio = validate_retention_ratio(self.train_retention_ratio, "train_retention_ratio")
        std = self.scorer_init_std
        if isinstance(std, bool) or not isinstance(std, numbers.Real) or math.isnan(std) or std < 0:
            raise ValueError(f"`scorer_init_std` must be a number >= 0, got {std!r}.")
        if self.scorer_only and not self.base_model_name_or_path:
            raise ValueError("A scorer-only configuration (`scorer_only=True`) needs `base_model_name_or_path`.")
        if getattr(self, "auto_map", None) is None:
            self.auto_map = self.default_auto_map()

    @classmethod
    def default_auto_map(cls) -> dict[str, str]:
        """The `auto_map` that `save_pretrained` writes, so that every auto class finds the shipped code."""
        model = f"modeling_visionselector.{cls.model_class_name}"
        return {
            "AutoConfig": f"configuration_visionselector.{cls.__name__}",
            "AutoModel": model,
            "AutoModelForImageTextToText": model,
            "AutoModelForVision2Seq": model,
        }

    @classmethod
    def from_backbone_config(cls, backbone_config: PreTrainedConfig, **overrides):
        """The configuration of a VisionSelector around a backbone with `backbone_config`, with `overrides` applied."""
        unknown = sorted(set(overrides) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields {unknown}.")
        values = backbone_config.to_dict()
        for key in ("model_type", "architectures", "auto_map", "transformers_version"):
            values.pop(key, None)
        values.update(overrides)
        return cls(**values)


# The configuration class of each stock `model_type`.
CONFIG_CLASSES: dict[str, type] = {}


def define_config_class(family: Family) -> type:
    """The configuration class of `family` (`VisionSelector` + the stock class name), defined in this module."""
    name = family.config_class_name
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": (
            f"\n    Configuration of a [`{family.model_class_name}`] ({family.name}): every field of "
            f"[`{family.stock_config.__name__}`]\n    plus those of [`VisionSelectorFields`].\n    "
        ),
        "model_type": family.visionselector_model_type,
        "model_class_name": family.model_class_name,
    }
    config_class = strict(type(name, (VisionSelectorFields, family.stock_config), namespace))
    globals()[name] = CONFIG_CLASSES[family.model_type] = config_class
    return config_class


for _family in FAMILIES.values():
    define_config_class(_family)

# The first name of the Qwen2.5-VL configuration, kept: published checkpoints' `auto_map` and users' code use it.
VisionSelectorConfig = CONFIG_CLASSES["qwen2_5_vl"]
