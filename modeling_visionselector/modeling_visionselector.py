"""VisionSelector for Qwen2.5-VL: a learned scorer keeps the most useful merged visual tokens before the LLM.

The stock `Qwen2_5_VLForConditionalGeneration` is subclassed, not patched: the vision encoder and the language
model are the stock modules. What changes is the sequence the language model sees. In inference the dropped
visual tokens are removed from the sequence (with their placeholders in `input_ids`, the attention mask and the
rotary positions), so the prefill runs on a shorter sequence and the kept tokens keep their original 3D positions.
In training nothing is removed: every visual token is scaled by a differentiable top-k mask of its score.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.configuration_utils import PreTrainedConfig
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.utils import ModelOutput, can_return_tuple, cached_file, logging

from .compression import batch_padding_side, compress_batch, placeholder_keep_mask
from .configuration_visionselector import VisionSelectorConfig
from .selectors import get_selector
from .scoring import (
    VisionSelectorScorer,
    differentiable_topk,
    hard_topk_mask,
    num_kept_tokens,
    validate_retention_ratio,
)

logger = logging.get_logger(__name__)

# A remote-code class is not under `transformers.`, so the checkpoint renaming rules of Qwen2.5-VL (on disk:
# `visual.*`, `model.layers.*`; in memory: `model.visual.*`, `model.language_model.*`) must be registered for it
# by name, or a stock checkpoint would load with the language model left at random.
# The paper's released checkpoints (transformers 4.5x) keep the scorer in the vision tower, at
# `visual.importance_scorer.*`; that rule comes first, or `^visual` -> `model.visual` would take it. On save the
# rules are reversed and a reversed rule renames to its first source: `^scorer` is listed first so that our own
# checkpoints always keep the scorer at `scorer.*`, however the model was built or loaded.
register_checkpoint_conversion_mapping(
    "VisionSelectorForConditionalGeneration",
    [WeightRenaming(source_patterns=["^scorer", "^visual.importance_scorer"], target_patterns="scorer")]
    + get_checkpoint_conversion_mapping("Qwen2_5_VLForConditionalGeneration"),
    overwrite=True,
)

# A scorer-only artifact (see `hub_utils.save_scorer`): its scorer tensors, named as in `state_dict()`.
SCORER_WEIGHTS_NAME = "scorer.safetensors"
# The `from_pretrained` arguments that say where the artifact's files are.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


@dataclass
class VisualTokenSelection(ModelOutput):
    """
    Which merged visual tokens are kept, per item: the rows of `image_grid_thw`, then those of `video_grid_thw`.

    Args:
        kept_indices (`list[torch.LongTensor]`): ascending indices into each item's merged tokens.
        scores (`list[torch.FloatTensor]`): the score of every merged token of each item.
        features (`list[torch.FloatTensor]`): each item's merged tokens, `(n_i, hidden_size)`.
        num_images (`int`): how many of the items are images; the rest are videos.
    """

    kept_indices: list[torch.LongTensor] | None = None
    scores: list[torch.FloatTensor] | None = None
    features: list[torch.FloatTensor] | None = None
    num_images: int | None = None


@dataclass
class VisionSelectorCausalLMOutputWithPast(CausalLMOutputWithPast):
    """
    [`CausalLMOutputWithPast`] plus what the selection did.

    Args:
        attention_mask (`torch.LongTensor` of shape `(batch_size, compressed_length)`, *optional*):
            In eval mode, the mask of the compressed sequence the logits belong to.
        kept_indices (`list[torch.LongTensor]`, *optional*): see [`VisualTokenSelection`].
        soft_mask (`torch.FloatTensor` of shape `(num_visual_tokens,)`, *optional*):
            In training, the differentiable top-k mask that scaled every merged visual token.
        hard_mask (`torch.FloatTensor` of shape `(num_visual_tokens,)`, *optional*):
            In training, the hard top-k mask of the same scores (the inference selection).
        labels (`torch.LongTensor` of shape `(batch_size, compressed_length)`, *optional*):
            In eval mode with `labels`, the labels of the compressed sequence, aligned with `logits`.
    """

    attention_mask: torch.LongTensor | None = None
    kept_indices: list[torch.LongTensor] | None = None
    soft_mask: torch.FloatTensor | None = None
    hard_mask: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None


@dataclass
class _PrunedInputs:
    input_ids: torch.LongTensor  # (B, L')
    attention_mask: torch.LongTensor  # (B, L')
    position_ids: torch.LongTensor  # (3, B, L'), the original rotary positions of the kept tokens
    rope_deltas: torch.LongTensor  # (B, 1)
    labels: torch.LongTensor | None
    mm_encoder_outputs: dict[str, BaseModelOutputWithPooling]
    original_length: int


class VisionSelectorForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL with a Learnable Importance Scorer that prunes merged visual tokens before the language model.

    The scorer lives under the `scorer.` prefix; everything else is the stock model, loaded from and saved to the
    stock checkpoint layout.
    """

    config: VisionSelectorConfig
    config_class = VisionSelectorConfig

    def __init__(self, config: VisionSelectorConfig):
        super().__init__(config)
        self.scorer = VisionSelectorScorer(config.text_config.hidden_size, config.scorer_hidden_size)
        self.post_init()
        if config.scorer_only:  # the backbone checkpoint has no scorer; `from_pretrained` loads it from the artifact
            self._keys_to_ignore_on_load_missing.add(r"^scorer\.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VisionSelectorScorer):
            for projection in (module.q_proj, module.k_proj):
                init.normal_(projection.weight, mean=0.0, std=self.config.scorer_init_std)
                init.zeros_(projection.bias)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_backbone(
        cls,
        model_or_path,
        *,
        revision: str | None = None,
        dtype=None,
        device_map=None,
        attn_implementation: str | None = None,
        **config_overrides,
    ) -> "VisionSelectorForConditionalGeneration":
        """A VisionSelector around a stock Qwen2.5-VL, with the backbone's weights and a fresh scorer.

        Args:
            model_or_path (`Qwen2_5_VLForConditionalGeneration` or `str`): a loaded backbone, whose tensors the
                new model shares (no copy), or a Hub id / folder of a stock Qwen2.5-VL checkpoint.
            revision, dtype, device_map, attn_implementation: passed to `from_pretrained` for a path.
            **config_overrides: fields of [`VisionSelectorConfig`] (e.g. `retention_ratio=0.3`).
        """
        if isinstance(model_or_path, Qwen2_5_VLForConditionalGeneration):
            return cls._wrap_backbone(model_or_path, **config_overrides)
        if not isinstance(model_or_path, (str, bytes)) and not hasattr(model_or_path, "__fspath__"):
            raise ValueError(
                "`model_or_path` must be a Qwen2_5_VLForConditionalGeneration or a Hub id / folder of one, got "
                f"{type(model_or_path).__name__}."
            )
        from transformers import AutoConfig

        path = str(model_or_path)
        backbone_config = AutoConfig.from_pretrained(path, revision=revision)
        config_overrides.setdefault("base_model_name_or_path", path)
        config_overrides.setdefault("base_model_revision", revision)
        config = VisionSelectorConfig.from_backbone_config(backbone_config, **config_overrides)
        loading = {"dtype": dtype, "device_map": device_map, "attn_implementation": attn_implementation}
        return cls.from_pretrained(
            path, config=config, revision=revision, **{k: v for k, v in loading.items() if v is not None}
        )

    @classmethod
    def _wrap_backbone(cls, backbone, **config_overrides):
        config_overrides.setdefault("base_model_name_or_path", backbone.config.name_or_path or None)
        config = VisionSelectorConfig.from_backbone_config(backbone.config, **config_overrides)
        config._attn_implementation = backbone.config._attn_implementation
        with torch.device("meta"):
            model = cls(config)
        # Take the backbone's tensors as they are (assign, no copy), then its non-persistent buffers.
        result = model.load_state_dict(backbone.state_dict(), strict=False, assign=True)
        scorer_keys = {f"scorer.{name}" for name, _ in model.scorer.named_parameters()}
        if set(result.missing_keys) != scorer_keys or result.unexpected_keys:
            raise ValueError(
                f"The backbone does not match a Qwen2.5-VL of its config: missing {sorted(set(result.missing_keys) - scorer_keys)}, "
                f"unexpected {sorted(result.unexpected_keys)}."
            )
        for name, buffer in backbone.named_buffers():
            module_name, _, buffer_name = name.rpartition(".")
            setattr(model.get_submodule(module_name), buffer_name, buffer)
        parameter = next(backbone.parameters())
        model.scorer.to_empty(device=parameter.device).to(parameter.dtype)
        model._init_weights(model.scorer)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.language_model.embed_tokens.weight
        model.generation_config = copy.deepcopy(backbone.generation_config)
        return model.train(backbone.training)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """[`~PreTrainedModel.from_pretrained`] for full checkpoints, and the assembly of scorer-only artifacts.

        A scorer-only artifact (its config says `scorer_only=True`; see `save_scorer`) holds the scorer in
        `scorer.safetensors` and no backbone: the backbone is loaded from the config's `base_model_name_or_path` at
        `base_model_revision`, then the scorer from the artifact. The location arguments (`revision`, `subfolder`,
        `token`, `cache_dir`, `local_files_only`, ...) find the artifact's files; all but `revision` and
        `subfolder` apply to the backbone too. The other arguments (`dtype`, `device_map`, ...) load the backbone.
        """
        hub_kwargs = {name: kwargs[name] for name in _HUB_KWARGS if name in kwargs}
        if pretrained_model_name_or_path is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        if not isinstance(config, PreTrainedConfig):
            stored, _ = cls.config_class.get_config_dict(config or pretrained_model_name_or_path, **hub_kwargs)
            if not stored.get("scorer_only", False):
                return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
            # As `PreTrainedModel.from_pretrained` does: keyword arguments that are config fields update the config.
            loading = {name: kwargs.pop(name) for name in ("dtype", "torch_dtype", "quantization_config") if name in kwargs}
            config, kwargs = cls.config_class.from_pretrained(
                config or pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
            kwargs.update(loading)
        elif not getattr(config, "scorer_only", False):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

        scorer_file = cached_file(
            pretrained_model_name_or_path, SCORER_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs
        )
        if scorer_file is None:
            raise ValueError(
                f"{pretrained_model_name_or_path} is a scorer-only artifact without {SCORER_WEIGHTS_NAME}: its scorer "
                "weights must be that safetensors file (no other format is loaded). Write it with `save_scorer`."
            )
        backbone_kwargs = {
            name: value for name, value in {**kwargs, **hub_kwargs}.items() if name not in ("revision", "subfolder")
        }
        output_loading_info = backbone_kwargs.pop("output_loading_info", False)
        base = config.base_model_name_or_path
        source = f"the backbone {base!r} of the scorer-only artifact {pretrained_model_name_or_path}"
        if _looks_like_a_path(base) and not os.path.isdir(base):
            raise ValueError(
                f"Cannot load {source} (its config's `base_model_name_or_path`): not a folder on this machine. Pass "
                "`base_model_name_or_path=<folder or Hub id>` to `from_pretrained`, or fix it in the artifact's config."
            )
        try:
            model, loading_info = super().from_pretrained(
                base,
                *model_args,
                config=config,
                revision=config.base_model_revision or "main",
                output_loading_info=True,
                **backbone_kwargs,
            )
        except OSError as error:
            raise OSError(f"Cannot load {source} (its config's `base_model_name_or_path`): {error}") from error
        model.load_scorer(scorer_file)
        model.config.scorer_only = False  # the model is whole now; `save_pretrained` writes a full checkpoint
        model.config.name_or_path = str(pretrained_model_name_or_path)
        return (model, loading_info) if output_loading_info else model

    def load_scorer(self, weights: str | dict[str, torch.Tensor], source: str | None = None) -> None:
        """Loads scorer weights: a safetensors file, or tensors named as in `state_dict()` (`scorer.q_proj.weight`, ...).

        Raises a `ValueError` naming the tensors and shapes unless they are exactly this model's scorer.
        """
        if not isinstance(weights, dict):
            source = source or str(weights)
            weights = load_file(weights)
        check_scorer_tensors(weights, self.config, source or "the scorer weights")
        with torch.no_grad():
            self.scorer.load_state_dict({name.removeprefix("scorer."): value for name, value in weights.items()})

    # ------------------------------------------------------------------ selection

    def _visual_features(self, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw):
        """Merged tokens of every image, then every video, as a list of `(n_i, hidden_size)` tensors."""
        features = []
        for kind, pixels, grid, encode in (
            ("image", pixel_values, image_grid_thw, self.model.get_image_features),
            ("video", pixel_values_videos, video_grid_thw, self.model.get_video_features),
        ):
            if pixels is None:
                continue
            if grid is None:
                raise ValueError(f"`{kind}_grid_thw` is required with the {kind} pixels.")
            patches = int(grid.prod(-1).sum())
            if grid.ndim != 2 or grid.shape[-1] != 3 or pixels.shape[0] != patches:
                raise ValueError(
                    f"`{kind}_grid_thw` {grid.tolist()} describes {patches} patches, but the {kind} pixels hold "
                    f"{pixels.shape[0]} (shape {tuple(pixels.shape)}); pass the processor's pixels with their own grid."
                )
            features.extend(encode(pixels, grid).pooler_output)
        return features

    def _merged_grids(self, image_grid_thw, video_grid_thw, num_images: int) -> list[tuple[int, int, int]]:
        merge = self.config.vision_config.spatial_merge_size
        grids = image_grid_thw.tolist() if num_images else []
        grids += video_grid_thw.tolist() if video_grid_thw is not None else []
        return [(t, h // merge, w // merge) for t, h, w in grids]

    def _select(self, features: list[torch.Tensor], retention_ratio: float, selector: str = "learned", grids=None):
        """Scores of all tokens `(N,)`, item lengths, and the kept indices of each item under `selector`."""
        choose = get_selector(selector)
        lengths = [item.shape[0] for item in features]
        scores = self.scorer(torch.cat(features), lengths)
        grids = grids if grids is not None else [(1, 1, n) for n in lengths]
        kept = [
            choose(item, item_scores, num_kept_tokens(item.shape[0], retention_ratio), grid)
            for item, item_scores, grid in zip(features, torch.split(scores, lengths), grids)
        ]
        return scores, lengths, kept

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
            `max(1, int(retention_ratio * n_i))` of its n_i merged tokens.
        """
        ratio = self._resolve_ratio(retention_ratio)
        get_selector(selector)
        features = self._visual_features(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        if not features:
            raise ValueError("`select_visual_tokens` needs `pixel_values` or `pixel_values_videos`.")
        num_images = 0 if pixel_values is None else image_grid_thw.shape[0]
        grids = self._merged_grids(image_grid_thw, video_grid_thw if pixel_values_videos is not None else None, num_images)
        scores, lengths, kept = self._select(features, ratio, selector, grids)
        return VisualTokenSelection(
            kept_indices=kept, scores=list(torch.split(scores, lengths)), features=features, num_images=num_images
        )

    def _resolve_ratio(self, retention_ratio) -> float:
        return validate_retention_ratio(self.config.retention_ratio if retention_ratio is None else retention_ratio)

    # ------------------------------------------------------------------ pruning

    def _mm_token_type_ids(self, input_ids, mm_token_type_ids):
        if mm_token_type_ids is not None:
            return mm_token_type_ids
        return (input_ids == self.config.image_token_id).long() + 2 * (input_ids == self.config.video_token_id).long()

    def _prune(
        self,
        selection: VisualTokenSelection,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        mm_token_type_ids: torch.IntTensor | None,
        labels: torch.LongTensor | None,
        image_grid_thw: torch.LongTensor | None,
        video_grid_thw: torch.LongTensor | None,
        second_per_grid_ts: torch.Tensor | None,
    ) -> _PrunedInputs:
        """Removes the dropped visual tokens from a (padded) batch, keeping every other token's position."""
        num_images = selection.num_images
        groups = {
            "image": (self.config.image_token_id, slice(0, num_images)),
            "video": (self.config.video_token_id, slice(num_images, None)),
        }
        keep = torch.ones_like(input_ids, dtype=torch.bool)
        for token_id, items in groups.values():
            lengths = [item.shape[0] for item in selection.features[items]]
            keep &= placeholder_keep_mask(input_ids, token_id, lengths, selection.kept_indices[items])

        if position_ids is None:
            position_ids, _ = self.model.get_rope_index(
                input_ids,
                mm_token_type_ids=self._mm_token_type_ids(input_ids, mm_token_type_ids),
                image_grid_thw=image_grid_thw if num_images else None,
                video_grid_thw=video_grid_thw if len(selection.features) > num_images else None,
                second_per_grid_ts=second_per_grid_ts,
                attention_mask=attention_mask,
            )
        elif position_ids.ndim == 3 and position_ids.shape[0] == 4:
            position_ids = position_ids[1:]  # the text row is rebuilt by `generate` for the shorter sequence
        if position_ids.ndim != 3 or position_ids.shape[0] != 3 or position_ids.shape[1:] != input_ids.shape:
            raise ValueError(
                f"`position_ids` must have shape (3, batch, length) = (3, {', '.join(map(str, input_ids.shape))}), "
                f"got {tuple(position_ids.shape)}."
            )

        pad_token_id = self.config.text_config.pad_token_id
        sequences = {"input_ids": input_ids, "position_ids": position_ids}
        pad_values = {"input_ids": 0 if pad_token_id is None else pad_token_id, "position_ids": 0, "labels": -100}
        if labels is not None:
            sequences["labels"] = labels
        new_mask, gathered = compress_batch(
            keep, attention_mask, sequences, pad_values, batch_padding_side(attention_mask)
        )
        positions = gathered["position_ids"]
        # Next text position after the prompt is max + 1, as in the stock model; generate adds it to a 0-based count.
        rope_deltas = positions.masked_fill(new_mask[None] == 0, 0).amax(dim=(0, 2)) + 1 - new_mask.sum(1)

        mm_encoder_outputs = {}
        for kind, (_, items) in groups.items():
            kept = [item[index] for item, index in zip(selection.features[items], selection.kept_indices[items])]
            if kept:
                mm_encoder_outputs[kind] = BaseModelOutputWithPooling(pooler_output=tuple(kept))
        return _PrunedInputs(
            input_ids=gathered["input_ids"],
            attention_mask=new_mask,
            position_ids=positions,
            rope_deltas=rope_deltas[:, None],
            labels=gathered.get("labels"),
            mm_encoder_outputs=mm_encoder_outputs,
            original_length=input_ids.shape[1],
        )

    def _soft_masked_features(self, features: list[torch.Tensor], retention_ratio: float):
        """Training: scales every merged token by its differentiable top-k mask value (nothing is dropped)."""
        lengths = [item.shape[0] for item in features]
        scores = self.scorer(torch.cat(features), lengths)
        k = [num_kept_tokens(n, retention_ratio) for n in lengths]
        soft_mask = differentiable_topk(scores, lengths, k)  # (N,)
        hard_mask = hard_topk_mask(scores.detach(), lengths, retention_ratio)  # (N,)
        flat = torch.cat(features)
        masked = flat * soft_mask[:, None].to(flat.dtype)  # (N, D)
        return list(torch.split(masked, lengths)), soft_mask, hard_mask

    # ------------------------------------------------------------------ forward

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        retention_ratio: float | None = None,
        selector: str = "learned",
        **kwargs,
    ) -> VisionSelectorCausalLMOutputWithPast | CausalLMOutputWithPast:
        r"""
        Arguments are those of [`Qwen2_5_VLForConditionalGeneration.forward`], plus:

        retention_ratio (`float`, *optional*):
            Share of each image's/video's merged tokens to keep, in (0, 1]. Defaults to `config.retention_ratio`
            in eval mode and to `config.train_retention_ratio` in training mode.
        selector (`str`, *optional*, defaults to `"learned"`):
            How eval mode chooses the kept tokens (see `select_visual_tokens`); training always uses the scorer.

        With raw `pixel_values` / `pixel_values_videos`:

        - **eval mode**: the dropped visual tokens are removed before the language model. The returned `logits`
          are those of the *compressed* sequence, `(batch_size, compressed_length, vocab_size)`; its attention
          mask is `outputs.attention_mask` and the selection `outputs.kept_indices`. `labels` of shape
          `(batch_size, sequence_length)` are compressed the same way before the loss.
        - **training mode**: nothing is removed; every merged visual token is multiplied by its differentiable
          top-k mask value, so gradients reach the scorer. `outputs.soft_mask` and `outputs.hard_mask` give the
          soft and hard masks over all merged tokens (for the curriculum loss).

        Without raw pixels (text only, or features already in `mm_encoder_outputs`, as in the decoding steps of
        `generate`), this is exactly the stock forward.
        """
        has_pixels = pixel_values is not None or pixel_values_videos is not None
        if not has_pixels:
            if retention_ratio is not None:
                self._resolve_ratio(retention_ratio)
            get_selector(selector)
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                mm_token_type_ids=mm_token_type_ids,
                second_per_grid_ts=second_per_grid_ts,
                logits_to_keep=logits_to_keep,
                mm_encoder_outputs=mm_encoder_outputs,
                **kwargs,
            )
        if mm_encoder_outputs is not None:
            raise ValueError("Pass either raw pixels or `mm_encoder_outputs`, not both.")
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("VisionSelector needs `input_ids` (not `inputs_embeds`) to find the visual placeholders.")

        if self.training:
            ratio = validate_retention_ratio(
                self.config.train_retention_ratio if retention_ratio is None else retention_ratio
            )
            features = self._visual_features(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
            masked, soft_mask, hard_mask = self._soft_masked_features(features, ratio)
            num_images = image_grid_thw.shape[0] if pixel_values is not None else 0
            encoded = {}
            if num_images:
                encoded["image"] = BaseModelOutputWithPooling(pooler_output=tuple(masked[:num_images]))
            if len(masked) > num_images:
                encoded["video"] = BaseModelOutputWithPooling(pooler_output=tuple(masked[num_images:]))
            outputs = super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                labels=labels,
                use_cache=use_cache,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                mm_token_type_ids=self._mm_token_type_ids(input_ids, mm_token_type_ids),
                second_per_grid_ts=second_per_grid_ts,
                logits_to_keep=logits_to_keep,
                mm_encoder_outputs=encoded,
                **kwargs,
            )
            return VisionSelectorCausalLMOutputWithPast(**outputs, soft_mask=soft_mask, hard_mask=hard_mask)

        _check_empty_cache(past_key_values)
        selection = self.select_visual_tokens(
            pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, retention_ratio, selector
        )
        pruned = self._prune(
            selection,
            input_ids,
            attention_mask,
            position_ids,
            mm_token_type_ids,
            labels,
            image_grid_thw,
            video_grid_thw,
            second_per_grid_ts,
        )
        self.model.rope_deltas = pruned.rope_deltas
        outputs = super().forward(
            input_ids=pruned.input_ids,
            attention_mask=pruned.attention_mask,
            position_ids=pruned.position_ids,
            past_key_values=past_key_values,
            labels=pruned.labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            mm_encoder_outputs=pruned.mm_encoder_outputs,
            **kwargs,
        )
        return VisionSelectorCausalLMOutputWithPast(
            **outputs, attention_mask=pruned.attention_mask, kept_indices=selection.kept_indices, labels=pruned.labels
        )

    # ------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        *args,
        retention_ratio: float | None = None,
        selector: str = "learned",
        **kwargs,
    ):
        """[`~GenerationMixin.generate`] on the pruned prompt.

        The visual tokens are selected once, before generation; the stock generation loop (greedy, sampling,
        beam search, `num_return_sequences`, with or without cache, chunked prefill) then runs on the shorter
        prompt. The returned sequences start with the caller's full `input_ids`, so trimming
        `out[:, input_ids.shape[1]:]` gives the new tokens. A `max_length` counts the original prompt.

        Args:
            retention_ratio (`float`, *optional*): share of visual tokens kept, in (0, 1]; defaults to
                `config.retention_ratio`. 1.0 reproduces the stock model token for token.
            selector (`str`, *optional*, defaults to `"learned"`): how to choose the kept tokens.
        """
        input_ids = kwargs.pop("input_ids", None) if inputs is None else inputs
        ratio = self._resolve_ratio(retention_ratio)
        get_selector(selector)
        pixel_values = kwargs.pop("pixel_values", None)
        pixel_values_videos = kwargs.pop("pixel_values_videos", None)
        if pixel_values is None and pixel_values_videos is None:
            return super().generate(input_ids, *args, **kwargs)

        if input_ids is None or kwargs.get("inputs_embeds") is not None:
            raise ValueError("VisionSelector needs `input_ids` (not `inputs_embeds`) to find the visual placeholders.")
        if kwargs.get("assistant_model") is not None or (len(args) > 6 and args[6] is not None):
            raise ValueError(
                "Assisted generation is not supported with pruned visual tokens: the assistant would see the "
                "full prompt while this model sees the pruned one. Generate without `assistant_model`."
            )
        _check_empty_cache(kwargs.get("past_key_values"))
        image_grid_thw = kwargs.pop("image_grid_thw", None)
        video_grid_thw = kwargs.pop("video_grid_thw", None)
        second_per_grid_ts = kwargs.pop("second_per_grid_ts", None)
        attention_mask = kwargs.pop("attention_mask", None)
        selection = self.select_visual_tokens(
            pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, ratio, selector
        )
        pruned = self._prune(
            selection,
            input_ids,
            attention_mask,
            kwargs.pop("position_ids", None),
            kwargs.pop("mm_token_type_ids", None),
            None,
            image_grid_thw,
            video_grid_thw,
            second_per_grid_ts,
        )
        # The 4-row positions `generate` expects: the 1D text positions of the shorter sequence, then the 3D ones.
        text_positions = (pruned.attention_mask.long().cumsum(-1) - 1).masked_fill(pruned.attention_mask == 0, 0)
        position_ids = torch.cat([text_positions[None], pruned.position_ids], dim=0)
        removed = pruned.original_length - pruned.input_ids.shape[1]
        for length_key in ("max_length", "min_length"):
            if kwargs.get(length_key) is not None:
                kwargs[length_key] = kwargs[length_key] - removed
        self.model.rope_deltas = pruned.rope_deltas

        outputs = super().generate(
            pruned.input_ids,
            *args,
            attention_mask=pruned.attention_mask,
            position_ids=position_ids,
            mm_token_type_ids=self._mm_token_type_ids(pruned.input_ids, None),
            mm_encoder_outputs=pruned.mm_encoder_outputs,
            **kwargs,
        )
        sequences = outputs if isinstance(outputs, torch.Tensor) else outputs.sequences
        copies = sequences.shape[0] // input_ids.shape[0]  # num_return_sequences
        restored = torch.cat(
            [input_ids.to(sequences.device).repeat_interleave(copies, dim=0), sequences[:, pruned.input_ids.shape[1] :]],
            dim=1,
        )
        if isinstance(outputs, torch.Tensor):
            return restored
        outputs.sequences = restored
        return outputs


# `save_pretrained` then copies this file and its relative imports next to the weights (the config's auto_map
# names every auto class), so that `AutoModel.from_pretrained(folder, trust_remote_code=True)` finds the code.
VisionSelectorForConditionalGeneration.register_for_auto_class("AutoModel")


def check_scorer_tensors(tensors: dict[str, torch.Tensor], config: VisionSelectorConfig, source: str) -> None:
    """Raises a `ValueError` unless `tensors` are exactly the `scorer.*` tensors of a model with `config`."""
    with torch.device("meta"):
        reference = VisionSelectorScorer(config.text_config.hidden_size, config.scorer_hidden_size)
    expected = {f"scorer.{name}": value.shape for name, value in reference.state_dict().items()}
    if set(tensors) != set(expected):
        raise ValueError(
            f"{source} must hold exactly the tensors {sorted(expected)}: missing {sorted(set(expected) - set(tensors))}, "
            f"unexpected {sorted(set(tensors) - set(expected))}."
        )
    mismatched = [
        f"{name}: {tuple(tensors[name].shape)} given, {tuple(shape)} expected"
        for name, shape in expected.items()
        if tensors[name].shape != shape
    ]
    if mismatched:
        raise ValueError(
            f"{source} does not fit the backbone (text hidden size {config.text_config.hidden_size}, "
            f"scorer_hidden_size {config.scorer_hidden_size}): " + "; ".join(mismatched) + "."
        )


def _looks_like_a_path(name: str) -> bool:
    """Whether `name` can only be a local path: absolute, relative to `.`/`~`, or deeper than a Hub `org/name`."""
    return os.path.isabs(name) or name.startswith((".", "~")) or len(name.replace(os.sep, "/").split("/")) > 2


def _check_empty_cache(past_key_values):
    if past_key_values is not None and past_key_values.get_seq_length() > 0:
        raise ValueError(
            "Continuing from a filled `past_key_values` is not supported with visual inputs: the cache holds a "
            "pruned prompt whose positions no longer match `input_ids`. Run the whole prompt again without a cache."
        )


__all__ = ["VisionSelectorForConditionalGeneration", "VisionSelectorCausalLMOutputWithPast", "VisualTokenSelection"]
