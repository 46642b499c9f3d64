"""VisionSelector for the Qwen-VL families: a learned scorer keeps the most useful merged visual tokens before the LLM.

Each family's stock `*ForConditionalGeneration` is subclassed, not patched: the vision encoder and the language
model are the stock modules. What changes is the sequence the language model sees. In inference the dropped visual
tokens are removed from the sequence (with their placeholders in `input_ids`, the attention mask, the rotary
positions and, for Qwen3-VL, the deepstack features), so the prefill runs on a shorter sequence and the kept tokens
keep their original 3D positions. In training nothing is removed: every visual token is scaled by a differentiable
top-k mask of its score.

`VisionSelectorMixin` is written once for every family, in four files along its seams:

| file | what |
| --- | --- |
| `modeling_visionselector.py` (this one) | the scorer, the selection, `forward`, and the family classes |
| `loading.py` | `from_backbone`, `from_pretrained` of full checkpoints and scorer-only artifacts, renaming rules |
| `pruning.py` | the sequence surgery: the pruned batch the stock language model runs on |
| `generation.py` | `generate` on the pruned prompt |

The family classes are defined from the descriptions of `families.py` (`define_model_class`), one per stock class:

| class | stock class |
| --- | --- |
| `VisionSelectorQwen2VLForConditionalGeneration` | `Qwen2VLForConditionalGeneration` |
| `VisionSelectorQwen2_5_VLForConditionalGeneration` | `Qwen2_5_VLForConditionalGeneration` |
| `VisionSelectorQwen3VLForConditionalGeneration` | `Qwen3VLForConditionalGeneration` |
| `VisionSelectorQwen3VLMoeForConditionalGeneration` | `Qwen3VLMoeForConditionalGeneration` |
| `VisionSelectorQwen3_5ForConditionalGeneration` | `Qwen3_5ForConditionalGeneration` |
| `VisionSelectorQwen3_5MoeForConditionalGeneration` | `Qwen3_5MoeForConditionalGeneration` |

`VisionSelectorForConditionalGeneration` is the Qwen2.5-VL class under its first name (published checkpoints'
`auto_map` and `architectures` use it). `from_backbone` (this module's function, or the classmethod of any of these
classes) returns the class of the backbone's family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput, can_return_tuple, logging

from .compatibility import missing_internal, require_fields, require_parameters, stock_internal_error
from .configuration_visionselector import CONFIG_CLASSES, VisionSelectorFields
from .families import FAMILIES, MODEL_CLASSES, Family, visionselector_class_for
from .generation import PrunedGenerationMixin, check_empty_cache
from .loading import (  # noqa: F401 (SCORER_PREFIX, SCORER_WEIGHTS_NAME, check_scorer_tensors, scorer_unquantized: re-exported)
    SCORER_PREFIX,
    SCORER_WEIGHTS_NAME,
    VisionSelectorLoadingMixin,
    check_scorer_tensors,
    register_conversion_rules,
    scorer_unquantized,
)
from .pruning import PrunedInputs, PruningMixin, check_placeholder_rows
from .scoring import VisionSelectorScorer, build_scorer, differentiable_topk, hard_topk_mask, num_kept_tokens, validate_retention_ratio
from .selectors import get_selector, select_tokens

try:  # a transformers internal: the weight initialisers
    from transformers import initialization as init
except ImportError as error:
    raise missing_internal(error) from error

logger = logging.get_logger(__name__)


@dataclass
class VisualTokenSelection(ModelOutput):
    """
    Which merged visual tokens are kept, per item: the rows of `image_grid_thw`, then those of `video_grid_thw`.

    Args:
        kept_indices (`list[torch.LongTensor]`): ascending indices into each item's merged tokens.
        scores (`list[torch.FloatTensor]`): the score of every merged token of each item.
        features (`list[torch.FloatTensor]`): each item's merged tokens, `(n_i, hidden_size)`.
        num_images (`int`): how many of the items are images; the rest are videos.
        deepstack_features (`list[list[torch.FloatTensor]]`, *optional*): Qwen3-VL only: per item, the features
            the vision encoder hands to early decoder layers, one `(n_i, hidden_size)` tensor per deepstack layer.
    """

    kept_indices: list[torch.LongTensor] | None = None
    scores: list[torch.FloatTensor] | None = None
    features: list[torch.FloatTensor] | None = None
    num_images: int | None = None
    deepstack_features: list[list[torch.FloatTensor]] | None = None


@dataclass
class VisionSelectorOutput(ModelOutput):
    """
    What the selection did. `forward` returns the stock model's own output class (which differs between
    transformers releases) extended with these fields.

    Args:
        attention_mask (`torch.LongTensor` of shape `(batch_size, pruned_length)`, *optional*):
            In eval mode, the mask of the pruned sequence the logits belong to.
        labels (`torch.LongTensor` of shape `(batch_size, pruned_length)`, *optional*):
            In eval mode with `labels`, the labels of the pruned sequence, aligned with the logits.
        kept_indices (`list[torch.LongTensor]`, *optional*): see [`VisualTokenSelection`].
        soft_mask (`torch.FloatTensor` of shape `(num_visual_tokens,)`, *optional*):
            In training, the differentiable top-k mask that scaled every merged visual token.
        hard_mask (`torch.FloatTensor` of shape `(num_visual_tokens,)`, *optional*):
            In training, the hard top-k mask of the same scores (the inference selection).
        scores (`torch.FloatTensor` of shape `(num_visual_tokens,)`, *optional*):
            In training, the scores of every merged visual token, item after item.
        item_lengths (`list[int]`, *optional*): In training, the number of merged tokens of each item.
    """

    attention_mask: torch.LongTensor | None = None
    labels: torch.LongTensor | None = None
    kept_indices: list[torch.LongTensor] | None = None
    soft_mask: torch.FloatTensor | None = None
    hard_mask: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    item_lengths: list[int] | None = None


_OUTPUT_CLASSES: dict[type, type] = {}


def with_selection_fields(outputs: ModelOutput, **fields) -> ModelOutput:
    """`outputs` as an instance of a subclass of its own class that also has the [`VisionSelectorOutput`] fields."""
    base = type(outputs)
    if base not in _OUTPUT_CLASSES:
        name = f"VisionSelector{base.__name__}"
        _OUTPUT_CLASSES[base] = dataclass(type(name, (VisionSelectorOutput, base), {"__module__": __name__}))
    return _OUTPUT_CLASSES[base](**outputs, **fields)


class VisionSelectorMixin(VisionSelectorLoadingMixin, PruningMixin, PrunedGenerationMixin):
    """The VisionSelector part of a Qwen-VL model: the scorer, the selection and the pruned `forward`, with the
    loading (`VisionSelectorLoadingMixin`), the sequence surgery (`PruningMixin`) and `generate`
    (`PrunedGenerationMixin`) of their own files.

    Placed before the stock class in the bases, so `super()` is the stock model. Everything family-specific
    comes from the stock model itself (its `get_rope_index`, its encoder outputs, its checkpoint layout), which must
    meet the contract of `families.py`.
    """

    config: VisionSelectorFields
    stock_class: type = None  # the stock class of the family, set by `define_model_class`

    def __init__(self, config):
        super().__init__(config)
        self.scorer = build_scorer(config)
        self.post_init()
        if config.scorer_only:  # the backbone checkpoint has no scorer; `from_pretrained` loads it from the artifact
            self._keys_to_ignore_on_load_missing = {*(self._keys_to_ignore_on_load_missing or ()), r"^scorer\."}

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VisionSelectorScorer):
            for projection in (module.q_proj, module.k_proj):
                init.normal_(projection.weight, mean=0.0, std=self.config.scorer_init_std)
                init.zeros_(projection.bias)

    # ------------------------------------------------------------------ selection

    def _encode_visual_items(self, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw):
        """Merged tokens of every image, then every video (`(n_i, D)` each), and their deepstack features, if any."""
        features, deepstack = [], []
        for kind, pixels, grid, encode in (
            ("image", pixel_values, image_grid_thw, self.model.get_image_features),
            ("video", pixel_values_videos, video_grid_thw, self.model.get_video_features),
        ):
            if pixels is None:
                continue
            self._check_visual_input(kind, pixels, grid)
            internal = f"{type(self.model).__name__}.get_{kind}_features"
            require_parameters(encode, internal, (f"{kind}_grid_thw",))
            encoded = encode(pixels, grid, return_dict=True)
            require_fields(encoded, internal, ("pooler_output",))
            items = list(encoded.pooler_output)
            lengths = (grid.prod(-1) // self.config.vision_config.spatial_merge_size**2).tolist()
            if [tuple(item.shape[:1]) for item in items] != [(n,) for n in lengths] or any(i.ndim != 2 for i in items):
                raise stock_internal_error(
                    internal,
                    f"returned a `pooler_output` of shapes {[tuple(item.shape) for item in items]}, not one "
                    f"(merged tokens, hidden) tensor per {kind} with {lengths} tokens",
                )
            features += items
            # Qwen3-VL: per deepstack layer, one tensor per item; dropping them would silently change the logits.
            num_layers = len(getattr(self.config.vision_config, "deepstack_visual_indexes", None) or ())
            if num_layers:
                require_fields(encoded, internal, ("deepstack_features",))
                layers = encoded.deepstack_features
                if len(layers) != num_layers or any(len(layer) != len(items) for layer in layers):
                    raise stock_internal_error(
                        internal,
                        f"returned `deepstack_features` of {[len(layer) for layer in layers]} items per layer, not "
                        f"{num_layers} layers of {len(items)} items",
                    )
                deepstack += [list(per_item) for per_item in zip(*layers)]  # (layers, items) -> (items, layers)
            else:
                deepstack += [None] * len(items)
        return features, (deepstack if any(item is not None for item in deepstack) else None)

    def _check_visual_input(self, kind: str, pixels, grid) -> None:
        """A `ValueError` naming the argument unless `pixels` and `grid` are what the processor gives for `kind`s:
        a `(n, 3)` integer grid of positive (t, h, w) with h and w multiples of the merge size, and `(patches, C *
        T * P * P)` pixels with one row per patch of the grid."""
        grid_name, pixels_name = f"{kind}_grid_thw", "pixel_values" if kind == "image" else "pixel_values_videos"
        if grid is None:
            raise ValueError(f"`{grid_name}` is required with the {kind} pixels (`{pixels_name}`).")
        if not isinstance(grid, torch.Tensor) or grid.is_floating_point() or grid.is_complex() or grid.dtype == torch.bool:
            described = f"a {grid.dtype} tensor" if isinstance(grid, torch.Tensor) else f"a {type(grid).__name__}"
            raise ValueError(f"`{grid_name}` must be an integer tensor of shape (num_{kind}s, 3), got {described}.")
        if grid.ndim != 2 or grid.shape[-1] != 3 or grid.shape[0] == 0:
            raise ValueError(
                f"`{grid_name}` must have shape (num_{kind}s, 3), one (t, h, w) row per {kind}, got shape {tuple(grid.shape)}."
            )
        merge = self.config.vision_config.spatial_merge_size
        for row, (t, h, w) in enumerate(grid.tolist()):
            if t < 1 or h < 1 or w < 1 or h % merge or w % merge:
                raise ValueError(
                    f"`{grid_name}` row {row} is {[t, h, w]}: t, h and w must be positive, h and w multiples of the "
                    f"spatial merge size {merge}; pass the processor's grid."
                )
        vision = self.config.vision_config
        width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        if not isinstance(pixels, torch.Tensor) or not pixels.is_floating_point():
            described = f"a {pixels.dtype} tensor" if isinstance(pixels, torch.Tensor) else f"a {type(pixels).__name__}"
            raise ValueError(f"`{pixels_name}` must be a floating-point tensor of shape (patches, {width}), got {described}.")
        patches = int(grid.prod(-1).sum())
        if pixels.ndim != 2 or pixels.shape != (patches, width):
            raise ValueError(
                f"`{pixels_name}` must have shape (patches, C * T * P * P) = ({patches}, {width}) for `{grid_name}` "
                f"{grid.tolist()} ({patches} patches), got shape {tuple(pixels.shape)}; pass the processor's pixels "
                "with their own grid."
            )

    def _merged_grids(self, image_grid_thw, video_grid_thw, num_images: int) -> list[tuple[int, int, int]]:
        merge = self.config.vision_config.spatial_merge_size
        grids = image_grid_thw.tolist() if num_images else []
        grids += video_grid_thw.tolist() if video_grid_thw is not None else []
        return [(t, h // merge, w // merge) for t, h, w in grids]

    def select_visual_tokens(
        self,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        retention_ratio: float | None = None,
        selector: str = "learned",
    ) -> VisualTokenSelection:
        """Scores every merged visual token and picks the ones pruned inference keeps.

        Args:
            pixel_values (`torch.Tensor` of shape `(num_image_patches, C * T * P * P)`, *optional*): as the processor gives.
            image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`, *optional*)
            pixel_values_videos (`torch.Tensor` of shape `(num_video_patches, C * T * P * P)`, *optional*)
            video_grid_thw (`torch.LongTensor` of shape `(num_videos, 3)`, *optional*)
            retention_ratio (`float`, *optional*): in (0, 1]; defaults to `config.retention_ratio`.
            selector (`str`, *optional*, defaults to `"learned"`): how to choose the kept tokens; see
                `modeling_visionselector.selectors.SELECTORS` for the training-free alternatives.

        Returns:
            [`VisualTokenSelection`]: one entry per image, then per video; item i keeps
            `max(1, floor(retention_ratio * n_i))` of its n_i merged tokens.
        """
        ratio = self._resolve_ratio(retention_ratio)
        get_selector(selector)
        features, deepstack = self._encode_visual_items(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        if not features:
            raise ValueError("`select_visual_tokens` needs `pixel_values` or `pixel_values_videos`.")
        num_images = 0 if pixel_values is None else image_grid_thw.shape[0]
        grids = self._merged_grids(image_grid_thw, video_grid_thw if pixel_values_videos is not None else None, num_images)
        lengths = [item.shape[0] for item in features]
        flat = torch.cat(features)
        scores = self.scorer(flat, lengths)
        kept = select_tokens(
            scores, lengths, [num_kept_tokens(n, ratio) for n in lengths], selector, features=flat, grids=grids
        )
        return VisualTokenSelection(
            kept_indices=kept, scores=list(torch.split(scores, lengths)), features=features, num_images=num_images,
            deepstack_features=deepstack,
        )

    def _resolve_ratio(self, retention_ratio) -> float:
        return validate_retention_ratio(self.config.retention_ratio if retention_ratio is None else retention_ratio)

    # ------------------------------------------------------------------ forward

    def _check_stock_forward(self) -> None:
        """A `StockInternalError` unless the stock forward takes what the pruned forward and generate hand it."""
        for owner in (self.stock_class, type(self.model)):
            require_parameters(
                owner.forward, f"{owner.__name__}.forward", ("mm_encoder_outputs", "mm_token_type_ids", "position_ids")
            )
        if not hasattr(self.model, "rope_deltas"):  # decoding steps add it to the text position of each new token
            raise stock_internal_error(f"{type(self.model).__name__}.rope_deltas", "does not exist")

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        mm_encoder_outputs: dict[str, ModelOutput] | None = None,
        retention_ratio: float | None = None,
        selector: str = "learned",
        mask_temperature: float | None = None,
        **kwargs,
    ):
        r"""
        Arguments are those of the stock forward (the cache, `use_cache`, `logits_to_keep`, `second_per_grid_ts`, ...
        pass through `kwargs` under whatever name the installed transformers uses), plus:

        retention_ratio (`float`, *optional*):
            Share of each image's/video's merged tokens to keep, in (0, 1]. Defaults to `config.retention_ratio`
            in eval mode and to `config.train_retention_ratio` in training mode.
        selector (`str`, *optional*, defaults to `"learned"`):
            How eval mode chooses the kept tokens (see `select_visual_tokens`); training always uses the scorer.
        mask_temperature (`float`, *optional*):
            Training mode: the temperature of the differentiable top-k over each item's standardised scores (its
            sharpness is 1 / temperature; see `differentiable_topk`). `None`: the paper's top-k over raw scores.
            `VisionSelectorSFTTrainer` passes its schedule's value. Ignored in eval mode.

        With raw `pixel_values` / `pixel_values_videos`:

        - **eval mode**: the dropped visual tokens are removed before the language model. The returned `logits`
          are those of the *pruned* sequence, `(batch_size, pruned_length, vocab_size)`; its attention mask is
          `outputs.attention_mask`, the selection `outputs.kept_indices`. `labels` of shape
          `(batch_size, sequence_length)` are pruned the same way before the loss and returned as `outputs.labels`.
        - **training mode**: nothing is removed; every merged visual token (and its deepstack features) is multiplied
          by its differentiable top-k mask value, so gradients reach the scorer. `outputs.soft_mask`,
          `outputs.hard_mask` and `outputs.scores` cover all merged tokens (for the curriculum loss).

        Without raw pixels (text only, or features already in `mm_encoder_outputs`, as in the decoding steps of
        `generate`), this is exactly the stock forward.

        Returns:
            The stock forward's output class extended with the fields of [`VisionSelectorOutput`].
        """
        stock_inputs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            **kwargs,
        )
        has_pixels = pixel_values is not None or pixel_values_videos is not None
        if not has_pixels:
            if retention_ratio is not None:
                self._resolve_ratio(retention_ratio)
            get_selector(selector)
            return super().forward(mm_encoder_outputs=mm_encoder_outputs, **stock_inputs)
        if mm_encoder_outputs is not None:
            raise ValueError("Pass either raw pixels or `mm_encoder_outputs`, not both.")
        if input_ids is None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("VisionSelector needs `input_ids` (not `inputs_embeds`) to find the visual placeholders.")

        if self.training:
            ratio = validate_retention_ratio(
                self.config.train_retention_ratio if retention_ratio is None else retention_ratio
            )
            features, deepstack = self._encode_visual_items(
                pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw
            )
            lengths = [item.shape[0] for item in features]
            num_images = image_grid_thw.shape[0] if pixel_values is not None else 0
            self._check_sequence_inputs(input_ids, attention_mask, labels)
            check_placeholder_rows(input_ids, self.config.image_token_id, lengths[:num_images], "image", True)
            check_placeholder_rows(input_ids, self.config.video_token_id, lengths[num_images:], "video")
            self._check_token_types(input_ids, mm_token_type_ids)
            scores = self.scorer(torch.cat(features), lengths)  # (N,)
            kept = [num_kept_tokens(n, ratio) for n in lengths]
            soft_mask = differentiable_topk(scores, lengths, kept, temperature=mask_temperature)  # (N,)
            hard_mask = hard_topk_mask(scores.detach(), lengths, ratio)  # (N,)
            # Scale every merged token, and each of its deepstack features, by its soft mask value.
            item_masks = [mask[:, None] for mask in torch.split(soft_mask, lengths)]
            features = [item * mask.to(item.dtype) for item, mask in zip(features, item_masks)]
            if deepstack is not None:
                deepstack = [[layer * mask.to(layer.dtype) for layer in item] for item, mask in zip(deepstack, item_masks)]
            self._check_stock_forward()
            stock_inputs["mm_token_type_ids"] = self._mm_token_type_ids(input_ids, mm_token_type_ids)
            outputs = super().forward(
                mm_encoder_outputs=self._encoder_outputs(features, deepstack, num_images), **stock_inputs
            )
            return with_selection_fields(
                outputs, soft_mask=soft_mask, hard_mask=hard_mask, scores=scores, item_lengths=lengths
            )

        check_empty_cache(kwargs)
        selection = self.select_visual_tokens(
            pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, retention_ratio, selector
        )
        pruned = self.prune_inputs(
            selection,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            mm_token_type_ids=mm_token_type_ids,
            labels=labels,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            second_per_grid_ts=kwargs.pop("second_per_grid_ts", None),
        )
        self._check_stock_forward()
        self.model.rope_deltas = pruned.rope_deltas
        outputs = super().forward(
            input_ids=pruned.input_ids,
            attention_mask=pruned.attention_mask,
            position_ids=pruned.position_ids,
            labels=pruned.labels,
            mm_encoder_outputs=pruned.mm_encoder_outputs,
            **kwargs,
        )
        return with_selection_fields(
            outputs, attention_mask=pruned.attention_mask, labels=pruned.labels, kept_indices=selection.kept_indices
        )


def define_model_class(family: Family) -> type:
    """The VisionSelector model class of `family` (`VisionSelector` + the stock class name), defined in this module
    with its renaming rules, and registered for `from_backbone`'s dispatch and for `save_pretrained`'s code copy."""
    name = family.model_class_name
    deepstack = "; the deepstack features are pruned alike" if family.deepstack else "; everything else is the stock model"
    doc = f"{family.name} with a Learnable Importance Scorer under `scorer.`{deepstack}."
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": doc + (f"\n\n    {family.note}\n    " if family.note else ""),
        "config_class": CONFIG_CLASSES[family.model_type],
        "stock_class": family.stock_model,
    }
    model_class = type(name, (VisionSelectorMixin, family.stock_model), namespace)
    globals()[name] = MODEL_CLASSES[family.model_type] = model_class
    register_conversion_rules(model_class, family.model_type)
    # `save_pretrained` copies this file and its relative imports next to the weights (the config's auto_map names
    # every auto class), so that `AutoModel.from_pretrained(folder, trust_remote_code=True)` finds the code.
    model_class.register_for_auto_class("AutoModel")
    return model_class


for _family in FAMILIES.values():
    define_model_class(_family)

# The first name of the Qwen2.5-VL class, kept: published checkpoints' `auto_map` and `architectures` use it.
VisionSelectorForConditionalGeneration = MODEL_CLASSES["qwen2_5_vl"]
# The VisionSelector class of each stock `model_type` (the registry of `families.py`).
VISIONSELECTOR_CLASSES = MODEL_CLASSES


def from_backbone(model_or_path, **kwargs):
    """A VisionSelector around a stock Qwen-VL backbone of any family, with a fresh scorer: the family-neutral entry
    point, the same as `VisionSelectorMixin.from_backbone` (see it for the arguments)."""
    return VisionSelectorMixin.from_backbone(model_or_path, **kwargs)


__all__ = [
    "VisionSelectorMixin",
    "VisionSelectorForConditionalGeneration",
    "VisionSelectorQwen2VLForConditionalGeneration",
    "VisionSelectorQwen2_5_VLForConditionalGeneration",
    "VisionSelectorQwen3VLForConditionalGeneration",
    "VisionSelectorQwen3VLMoeForConditionalGeneration",
    "VisionSelectorQwen3_5ForConditionalGeneration",
    "VisionSelectorQwen3_5MoeForConditionalGeneration",
    "VisionSelectorOutput",
    "VisualTokenSelection",
    "PrunedInputs",
    "VISIONSELECTOR_CLASSES",
    "define_model_class",
    "from_backbone",
    "visionselector_class_for",
    "with_selection_fields",
]
