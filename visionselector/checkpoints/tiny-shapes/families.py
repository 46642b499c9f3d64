"""The Qwen-VL families VisionSelector wraps, each described once, and the contract a stock model must meet.

A family is one [`Family`] in `FAMILIES`. Everything else reads it: the configuration classes
(`configuration_visionselector.py`), the model classes and the weight-renaming rules (`modeling_visionselector.py`),
`from_backbone`'s dispatch, and outside the remote code the tiny test models (`visionselector/tiny.py`), the prefill
benchmark and the Hub configurations. The class names follow from the stock ones: the configuration of the stock
`Qwen3VLConfig` family is `VisionSelectorQwen3VLConfig`, its model `VisionSelectorQwen3VLForConditionalGeneration`.

Adding a family: append its `Family` below (a family shipped with checkpoints must be here, in the remote code), or
call [`register_family`] at run time for a family of your own; then give it a tiny builder in `visionselector/tiny.py`
and run `tests/test_stock_contract.py`, which checks the contract below on a tiny model of every family.

The stock contract: what VisionSelector needs of a family's stock `*ForConditionalGeneration` (`model`):

- `model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)` and `get_video_features(...,
  video_grid_thw, ...)` return an output whose `pooler_output` holds one `(merged_tokens, hidden)` tensor per item
  (and, for a `deepstack` family, `deepstack_features`: per deepstack layer, one tensor per item);
- `model.model.get_rope_index(input_ids, mm_token_type_ids=..., image_grid_thw=..., video_grid_thw=...,
  attention_mask=...)` returns `(positions (3, B, L), deltas)`, and `model.model.rope_deltas` exists (decoding adds it
  to each new token's text position);
- `forward` (of the model and of `model.model`) takes `mm_encoder_outputs` (a dict "image"/"video" -> an encoder
  output with those fields), `mm_token_type_ids` and `position_ids`, and `generate` takes 4-row positions (the text
  row first, then the 3 rotary rows);
- the image placeholders of an item are one run of `image_token_id` in `input_ids`; a video's are one run, or one run
  per frame where `video_per_frame`.

Each point is checked where it is used (a change raises `StockInternalError` naming the internal; see
`compatibility.py`).
"""

from __future__ import annotations

import dataclasses
import re

from .compatibility import check_transformers_version

check_transformers_version()

from transformers import (  # noqa: E402
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeConfig,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

PREFIX = "VisionSelector"


@dataclasses.dataclass(frozen=True)
class Family:
    """One backbone family: its stock classes and what differs between families.

    Args:
        name (`str`): the family as users write it ("Qwen2.5-VL").
        stock_config (`type`): the stock configuration class; its `model_type` keys the family.
        stock_model (`type`): the stock `*ForConditionalGeneration` the VisionSelector class subclasses.
        processor (`str`): the name of the stock processor class in transformers.
        patch_size (`int`): the vision patch side in pixels (14 or 16).
        deepstack (`bool`): the vision encoder hands features of intermediate layers to the first decoder layers
            (`deepstack_features`), which are pruned with the tokens.
        video_per_frame (`bool`): a video's placeholders are one run per frame (with timestamps between them)
            rather than one run.
        note (`str`): what the model class's docstring adds for this family.
    """

    name: str
    stock_config: type
    stock_model: type
    processor: str
    patch_size: int
    deepstack: bool = False
    video_per_frame: bool = False
    note: str = ""

    @property
    def model_type(self) -> str:
        """The stock `model_type` ("qwen2_5_vl")."""
        return self.stock_config.model_type

    @property
    def visionselector_model_type(self) -> str:
        """The `model_type` of the VisionSelector configuration ("visionselector_qwen2_5_vl")."""
        return f"visionselector_{self.model_type}"

    @property
    def config_class_name(self) -> str:
        return PREFIX + self.stock_config.__name__

    @property
    def model_class_name(self) -> str:
        return PREFIX + self.stock_model.__name__

    def check(self) -> None:
        """A `ValueError` unless the description is usable: stock classes that belong together, a known patch."""
        if not (isinstance(self.stock_config, type) and isinstance(getattr(self.stock_config, "model_type", None), str)):
            raise ValueError(f"`stock_config` of {self.name!r} must be a configuration class, got {self.stock_config!r}.")
        if getattr(self.stock_model, "config_class", None) is not self.stock_config:
            raise ValueError(
                f"`stock_model` of {self.name!r} must be the model class of {self.stock_config.__name__}, got "
                f"{getattr(self.stock_model, '__name__', self.stock_model)!r}."
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.processor):
            raise ValueError(f"`processor` of {self.name!r} must be a class name, got {self.processor!r}.")
        if self.patch_size not in (14, 16):
            raise ValueError(f"`patch_size` of {self.name!r} must be 14 or 16, got {self.patch_size!r}.")


_QWEN3_5_NOTE = (
    "Its language model mixes Gated DeltaNet (linear-attention, recurrent) layers with full attention. Dropped tokens\n"
    "    are removed from the sequence, not masked, so the recurrent layers never step through them: the pruned model is\n"
    "    the stock model run on the kept tokens alone (at their original 3D positions)."
)

# The families, by stock `model_type`, in the order of their releases.
FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("Qwen2-VL", Qwen2VLConfig, Qwen2VLForConditionalGeneration, "Qwen2VLProcessor", 14),
        Family("Qwen2.5-VL", Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor", 14),
        Family(
            "Qwen3-VL", Qwen3VLConfig, Qwen3VLForConditionalGeneration, "Qwen3VLProcessor", 16, deepstack=True,
            video_per_frame=True,
        ),
        Family(
            "Qwen3-VL-MoE", Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, "Qwen3VLProcessor", 16,
            deepstack=True, video_per_frame=True,
        ),
        Family(
            "Qwen3.5", Qwen3_5Config, Qwen3_5ForConditionalGeneration, "Qwen3VLProcessor", 16, video_per_frame=True,
            note=_QWEN3_5_NOTE,
        ),
        Family(
            "Qwen3.5-MoE", Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration, "Qwen3VLProcessor", 16,
            video_per_frame=True, note=_QWEN3_5_NOTE.replace("Its language", "As Qwen3.5, with MoE MLPs. Its language"),
        ),
    )
}


# The VisionSelector model class of each stock `model_type` (filled by `modeling_visionselector.define_model_class`).
MODEL_CLASSES: dict[str, type] = {}


def family_of(model_type: str, source: str = "the backbone") -> Family:
    """The family of a stock or VisionSelector `model_type`, or a `ValueError` naming the accepted ones."""
    for family in FAMILIES.values():
        if model_type in (family.model_type, family.visionselector_model_type):
            return family
    raise ValueError(
        f"{source} is a {model_type!r} model; VisionSelector supports {sorted(FAMILIES)} and their VisionSelector types "
        f"{sorted(family.visionselector_model_type for family in FAMILIES.values())}."
    )


def visionselector_class_for(model_type: str, source: str = "the backbone") -> type:
    """The VisionSelector model class of a stock or VisionSelector `model_type`, or a `ValueError` naming the accepted
    ones."""
    family = family_of(model_type, source)
    if family.model_type not in MODEL_CLASSES:  # the model module defines every family's class at import
        from . import modeling_visionselector  # noqa: F401
    return MODEL_CLASSES[family.model_type]


def register_family(family: Family, *, overwrite: bool = False) -> tuple[type, type]:
    """Adds a family at run time: its configuration and model classes, renaming rules and `from_backbone` dispatch.

    Returns:
        `(config_class, model_class)`, also importable from `configuration_visionselector` / `modeling_visionselector`.

    A family registered this way exists in this process only: a checkpoint's remote code knows the families of
    `FAMILIES` in the code it ships. Raises a `ValueError` for a family already known (unless `overwrite`).
    """
    if not isinstance(family, Family):
        raise ValueError(f"`family` must be a Family, got {type(family).__name__}.")
    family.check()
    if family.model_type in FAMILIES and not overwrite:
        raise ValueError(f"The family {family.model_type!r} is registered already; pass `overwrite=True` to replace it.")
    FAMILIES[family.model_type] = family
    from . import configuration_visionselector, modeling_visionselector

    config_class = configuration_visionselector.define_config_class(family)
    return config_class, modeling_visionselector.define_model_class(family)


__all__ = ["FAMILIES", "MODEL_CLASSES", "Family", "family_of", "register_family", "visionselector_class_for"]
