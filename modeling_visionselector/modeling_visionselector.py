"""VisionSelector for the Qwen-VL family: a learned scorer keeps the most useful merged visual tokens before the LLM.

Each family's stock `*ForConditionalGeneration` is subclassed, not patched: the vision encoder and the language
model are the stock modules. What changes is the sequence the language model sees. In inference the dropped visual
tokens are removed from the sequence (with their placeholders in `input_ids`, the attention mask, the rotary
positions and, for Qwen3-VL, the deepstack features), so the prefill runs on a shorter sequence and the kept tokens
keep their original 3D positions. In training nothing is removed: every visual token is scaled by a differentiable
top-k mask of its score. The pruning is written once, in `VisionSelectorMixin`; the family classes only name their
stock class and configuration:

| class | stock class |
| --- | --- |
| `VisionSelectorQwen2VLForConditionalGeneration` | `Qwen2VLForConditionalGeneration` |
| `VisionSelectorForConditionalGeneration` | `Qwen2_5_VLForConditionalGeneration` |
| `VisionSelectorQwen3VLForConditionalGeneration` | `Qwen3VLForConditionalGeneration` |
| `VisionSelectorQwen3VLMoeForConditionalGeneration` | `Qwen3VLMoeForConditionalGeneration` |
| `VisionSelectorQwen3_5ForConditionalGeneration` | `Qwen3_5ForConditionalGeneration` |
| `VisionSelectorQwen3_5MoeForConditionalGeneration` | `Qwen3_5MoeForConditionalGeneration` |
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from dataclasses import dataclass

import torch
from packaging import version
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeForConditionalGeneration,
)
from transformers.configuration_utils import PreTrainedConfig
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple, cached_file, logging

from .compatibility import (
    TESTED_TRANSFORMERS,
    TRANSFORMERS_VERSION,
    require_fields,
    require_parameters,
    stock_internal_error,
)
from .configuration_visionselector import (
    VisionSelectorConfig,
    VisionSelectorFields,
    VisionSelectorQwen2VLConfig,
    VisionSelectorQwen3_5Config,
    VisionSelectorQwen3_5MoeConfig,
    VisionSelectorQwen3VLConfig,
    VisionSelectorQwen3VLMoeConfig,
)
from .pruning import batch_padding_side, check_placeholder_rows, placeholder_keep_mask, prune_batch
from .scoring import (
    VisionSelectorScorer,
    build_scorer,
    differentiable_topk,
    hard_topk_mask,
    num_kept_tokens,
    validate_retention_ratio,
)
from .selectors import get_selector

# Internals below the public API of transformers (the weight-renaming rules, the weight initialisers, Qwen3-VL's
# encoder output): a release that moves one fails here, naming it.
try:
    from transformers import initialization as init
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures
except ImportError as error:
    import transformers

    raise ImportError(
        f"VisionSelector relies on a transformers internal that transformers {transformers.__version__} lacks ({error}); "
        f"it was tested with transformers {TESTED_TRANSFORMERS}: `pip install 'transformers{TESTED_TRANSFORMERS}'`."
    ) from error

logger = logging.get_logger(__name__)

# A scorer-only artifact (see `visionselector.publishing.save_scorer`): its scorer tensors, named as in `state_dict()`.
SCORER_WEIGHTS_NAME = "scorer.safetensors"
# The scorer's tensors are named with this prefix in the full model's state dict (`scorer.q_proj.weight`, ...).
SCORER_PREFIX = "scorer."
# The `from_pretrained` arguments that say where the artifact's files are.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
# The names `generate` has used for the cache: `past_key_values`, and `cache` from transformers 5.24 on.
_CACHE_KWARGS = ("cache", "past_key_values")
# The selection settings a generation config may carry, used by `generate` as its defaults.
_GENERATION_SELECTION_FIELDS = ("retention_ratio", "selector")
# The first transformers whose chunked prefill of Qwen-VL prompts with images equals the whole prefill.
_CHUNKED_MULTIMODAL_PREFILL = version.Version("5.23.0")


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


@dataclass
class PrunedInputs:
    """
    A batch with the dropped visual tokens removed: what the stock language model runs on.

    Args:
        input_ids (`torch.LongTensor` of shape `(B, L')`)
        attention_mask (`torch.LongTensor` of shape `(B, L')`)
        position_ids (`torch.LongTensor` of shape `(3, B, L')`): the original 3D rotary positions of the kept tokens.
        rope_deltas (`torch.LongTensor` of shape `(B, 1)`): next text position minus the pruned row length.
        labels (`torch.LongTensor` of shape `(B, L')`, *optional*): the labels of the kept tokens.
        mm_encoder_outputs (`dict[str, ModelOutput]`): the kept features of the images and of the videos, in the
            form the stock forward takes.
        original_length (`int`): L, the length before pruning.
    """

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    position_ids: torch.LongTensor
    rope_deltas: torch.LongTensor
    labels: torch.LongTensor | None
    mm_encoder_outputs: dict[str, ModelOutput]
    original_length: int


class _CallerPromptStreamer(BaseStreamer):
    """Hands a streamer the caller's prompt in place of the pruned prompt that `generate` puts first."""

    def __init__(self, streamer: BaseStreamer, prompt: torch.LongTensor):
        self.streamer, self.prompt = streamer, prompt

    def put(self, value):
        if self.prompt is not None:
            value, self.prompt = self.prompt.to(value.device), None
        self.streamer.put(value)

    def end(self):
        self.streamer.end()


def scorer_unquantized(quantization_config):
    """A copy of a transformers quantization config (object or dict) that leaves the scorer, and as by default the
    output head, unquantized: `scorer` added to `modules_to_not_convert` (`llm_int8_skip_modules` for bitsandbytes).
    The scorer is small, and trains and ranks in floating point."""
    config = copy.deepcopy(quantization_config)
    values = config if isinstance(config, dict) else vars(config)
    name = "llm_int8_skip_modules" if "llm_int8_skip_modules" in values else "modules_to_not_convert"
    skipped = list(values.get(name) or ["lm_head"])  # None: transformers' default skips the output head
    if "scorer" not in skipped:
        skipped.append("scorer")
    if isinstance(config, dict):
        config[name] = skipped
    else:
        setattr(config, name, skipped)
    return config


class VisionSelectorMixin:
    """The VisionSelector part of a Qwen-VL model: scorer, selection, pruned forward and generate, loading.

    Placed before the stock class in the bases, so `super()` is the stock model. Everything family-specific
    comes from the stock model itself (its `get_rope_index`, its encoder outputs, its checkpoint layout).
    """

    config: VisionSelectorFields
    stock_class: type = None  # the stock class of the family, set by each VisionSelector class

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
        quantization_config=None,
        use_kernels: bool | None = None,
        **config_overrides,
    ):
        """A VisionSelector around a stock Qwen-VL model, with the backbone's weights and a fresh scorer.

        Whatever class it is called on, it returns the VisionSelector class of the backbone's family (Qwen2-VL,
        Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5 or Qwen3.5-MoE).

        Args:
            model_or_path (stock `*ForConditionalGeneration` or `str`): a loaded backbone, whose tensors the new
                model shares (no copy), or a Hub id / folder of a stock checkpoint.
            revision, dtype, device_map, attn_implementation, quantization_config, use_kernels: passed to
                `from_pretrained` for a path (a quantized backbone keeps the scorer unquantized: see
                `scorer_unquantized`). A loaded backbone's own Hub-kernel choice (`backbone.use_kernels`;
                transformers 5.25's `from_pretrained` turns kernels on by default) is applied to the new model, so
                that it runs the same kernels as the stock model.
            **config_overrides: VisionSelector configuration fields (e.g. `retention_ratio=0.3`).
        """
        for selector_class in VISIONSELECTOR_CLASSES.values():
            if isinstance(model_or_path, selector_class.stock_class) and not isinstance(model_or_path, VisionSelectorMixin):
                return selector_class._wrap_backbone(model_or_path, **config_overrides)
        if not isinstance(model_or_path, (str, bytes)) and not hasattr(model_or_path, "__fspath__"):
            accepted = ", ".join(c.stock_class.__name__ for c in VISIONSELECTOR_CLASSES.values())
            raise ValueError(
                f"`model_or_path` must be a stock {accepted}, or a Hub id / folder of one, got "
                f"{type(model_or_path).__name__}."
            )
        from transformers import AutoConfig

        path = str(model_or_path)
        _check_local_folder(path, "model_or_path")
        backbone_config = AutoConfig.from_pretrained(path, revision=revision)
        selector_class = visionselector_class_for(backbone_config.model_type, path)
        config_overrides.setdefault("base_model_name_or_path", path)
        config_overrides.setdefault("base_model_revision", revision)
        config = selector_class.config_class.from_backbone_config(backbone_config, **config_overrides)
        loading = {
            "dtype": dtype,
            "device_map": device_map,
            "attn_implementation": attn_implementation,
            "quantization_config": quantization_config,
            "use_kernels": use_kernels,
        }
        return selector_class.from_pretrained(
            path, config=config, revision=revision, **{k: v for k, v in loading.items() if v is not None}
        )

    @classmethod
    def _wrap_backbone(cls, backbone, **config_overrides):
        config_overrides.setdefault("base_model_name_or_path", backbone.config.name_or_path or None)
        config = cls.config_class.from_backbone_config(backbone.config, **config_overrides)
        config._attn_implementation = backbone.config._attn_implementation
        with torch.device("meta"):
            model = cls(config)
        # Take the backbone's tensors as they are (assign, no copy), then its non-persistent buffers.
        result = model.load_state_dict(backbone.state_dict(), strict=False, assign=True)
        scorer_keys = {f"scorer.{name}" for name, _ in model.scorer.named_parameters()}
        if set(result.missing_keys) != scorer_keys or result.unexpected_keys:
            raise ValueError(
                f"The backbone does not match a {cls.stock_class.__name__} of its config: missing "
                f"{sorted(set(result.missing_keys) - scorer_keys)}, unexpected {sorted(result.unexpected_keys)}."
            )
        for name, buffer in backbone.named_buffers():
            module_name, _, buffer_name = name.rpartition(".")
            setattr(model.get_submodule(module_name), buffer_name, buffer)
        parameter = next(backbone.parameters())
        model.scorer.to_empty(device=parameter.device).to(parameter.dtype)
        model._init_weights(model.scorer)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.get_input_embeddings().weight
        model.generation_config = copy.deepcopy(backbone.generation_config)
        model.train(backbone.training)
        # The backbone's Hub-kernel choice (`from_pretrained` applies kernels by default from transformers 5.25 on; a
        # model built from its config does not): the wrapped model runs the same kernels as the stock one.
        if getattr(backbone, "use_kernels", False):
            model.set_use_kernels(True, getattr(backbone, "kernel_config", None))
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """[`~PreTrainedModel.from_pretrained`] for full checkpoints, and the assembly of scorer-only artifacts.

        A scorer-only artifact (its config says `scorer_only=True`; see `save_scorer`) holds the scorer in
        `scorer.safetensors` and no backbone: the backbone is loaded from the config's `base_model_name_or_path` at
        `base_model_revision`, then the scorer from the artifact. The location arguments (`revision`, `subfolder`,
        `token`, `cache_dir`, `local_files_only`, ...) find the artifact's files; all but `revision` and
        `subfolder` apply to the backbone too. The other arguments (`dtype`, `device_map`, ...) load the backbone.

        A `retention_ratio` or `selector` in the checkpoint's `generation_config.json` is checked here, and used
        by `generate` as its default.
        """
        loaded = cls._load_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if pretrained_model_name_or_path is not None and kwargs.get("generation_config") is None:
            # transformers drops every field it does not know from a `generation_config.json` marked
            # `_from_model_config` (as `save_pretrained` marks an untouched one): take ours from the file itself.
            hub_kwargs = {name: kwargs[name] for name in _HUB_KWARGS if name in kwargs}
            path = cached_file(
                pretrained_model_name_or_path, "generation_config.json", _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False, **hub_kwargs,
            )
            if path is not None:
                with open(path, encoding="utf-8") as file:
                    stored = json.load(file)
                for name in _GENERATION_SELECTION_FIELDS:
                    if stored.get(name) is not None and getattr(model.generation_config, name, None) is None:
                        setattr(model.generation_config, name, stored[name])
        check_generation_selection_settings(model.generation_config, f"the generation config of {pretrained_model_name_or_path}")
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """[`~PreTrainedModel.save_pretrained`], refusing a `retention_ratio` or `selector` in the generation config
        that `from_pretrained` would refuse."""
        check_generation_selection_settings(self.generation_config, "model.generation_config")
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def _load_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        if pretrained_model_name_or_path is not None and not isinstance(config, PreTrainedConfig):
            _check_local_folder(str(pretrained_model_name_or_path), "pretrained_model_name_or_path")
        hub_kwargs = {name: kwargs[name] for name in _HUB_KWARGS if name in kwargs}
        if kwargs.get("quantization_config") is not None:
            kwargs["quantization_config"] = scorer_unquantized(kwargs["quantization_config"])
        if pretrained_model_name_or_path is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        if not isinstance(config, PreTrainedConfig):
            stored, _ = cls.config_class.get_config_dict(config or pretrained_model_name_or_path, **hub_kwargs)
            if not stored.get("scorer_only", False):
                return cls._from_full_checkpoint(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
            # As `PreTrainedModel.from_pretrained` does: keyword arguments that are config fields update the config.
            loading = {name: kwargs.pop(name) for name in ("dtype", "torch_dtype", "quantization_config") if name in kwargs}
            config, kwargs = cls.config_class.from_pretrained(
                config or pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
            kwargs.update(loading)
        elif not getattr(config, "scorer_only", False):
            return cls._from_full_checkpoint(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

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
        revision = config.base_model_revision or "main"
        ignore_mismatched_sizes = backbone_kwargs.pop("ignore_mismatched_sizes", False)
        try:
            location = {name: backbone_kwargs[name] for name in _HUB_KWARGS if name in backbone_kwargs}
            base_type = cls.config_class.get_config_dict(base, **{**location, "revision": revision})[0].get("model_type")
            if visionselector_class_for(base_type, source).config_class.model_type != config.model_type:
                raise ValueError(
                    f"{source} is a {base_type!r} model, but the artifact is a {config.model_type!r} scorer: load it on "
                    "a backbone of its own family."
                )
            model, loading_info = super().from_pretrained(
                base,
                *model_args,
                config=config,
                revision=revision,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below as a ValueError naming both shapes
                **backbone_kwargs,
            )
        except OSError as error:
            raise OSError(f"Cannot load {source} (its config's `base_model_name_or_path`): {error}") from error
        mismatched = sorted(loading_info["mismatched_keys"], key=str)
        if mismatched and not ignore_mismatched_sizes:
            described = "; ".join(f"{name}: {tuple(given)} in the backbone, {tuple(expected)} in the artifact's config" for name, given, expected in mismatched[:5])
            raise ValueError(
                f"The scorer-only artifact {pretrained_model_name_or_path} was made for another size of backbone than "
                f"{source}: {len(mismatched)} tensors differ ({described}). Load it on the backbone it was trained on."
            )
        model.load_scorer(scorer_file)
        model.config.scorer_only = False  # the model is whole now; `save_pretrained` writes a full checkpoint
        model.config.name_or_path = str(pretrained_model_name_or_path)
        return (model, loading_info) if output_loading_info else model

    @classmethod
    def _from_full_checkpoint(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """The stock loading of a full checkpoint, with a clear `ValueError` for a scorer of another width."""
        if kwargs.get("ignore_mismatched_sizes"):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise ValueError(
                f"Cannot read the weights of {pretrained_model_name_or_path}: {_unreadable_safetensors(pretrained_model_name_or_path)}"
                f"{error} (a truncated or corrupted file?)."
            ) from error
        mismatched = sorted(loading_info["mismatched_keys"], key=str)
        described = "; ".join(f"{name}: {tuple(given)} given, {tuple(expected)} expected" for name, given, expected in mismatched)
        if any(name.startswith(SCORER_PREFIX) for name, *_ in mismatched):
            raise ValueError(
                f"The checkpoint {pretrained_model_name_or_path} does not fit its configuration (text hidden size "
                f"{model.config.text_config.hidden_size}, scorer_hidden_size {model.config.scorer_hidden_size}): {described}."
            )
        if mismatched:  # what the stock loading raises, since the caller did not ask to ignore mismatched sizes
            raise RuntimeError(
                f"The checkpoint {pretrained_model_name_or_path} has tensors of other shapes than the model: {described}. "
                "Pass `ignore_mismatched_sizes=True` to load it with those tensors freshly initialised."
            )
        return (model, loading_info) if output_loading_info else model

    def load_scorer(self, weights: str | dict[str, torch.Tensor], source: str | None = None) -> None:
        """Loads scorer weights: a safetensors file, or tensors named as in `state_dict()` (`scorer.q_proj.weight`, ...).

        Raises a `ValueError` naming the tensors and shapes unless they are exactly this model's scorer.
        """
        if not isinstance(weights, dict):
            source = source or str(weights)
            try:
                weights = load_file(weights)
            except SafetensorError as error:
                raise ValueError(f"Cannot read the scorer weights {weights}: {error} (a truncated or corrupted file?).") from error
        check_scorer_tensors(weights, self.config, source or "the scorer weights")
        with torch.no_grad():
            self.scorer.load_state_dict({name.removeprefix(SCORER_PREFIX): value for name, value in weights.items()})

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
        choose = get_selector(selector)
        features, deepstack = self._encode_visual_items(pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)
        if not features:
            raise ValueError("`select_visual_tokens` needs `pixel_values` or `pixel_values_videos`.")
        num_images = 0 if pixel_values is None else image_grid_thw.shape[0]
        grids = self._merged_grids(image_grid_thw, video_grid_thw if pixel_values_videos is not None else None, num_images)
        lengths = [item.shape[0] for item in features]
        scores = list(torch.split(self.scorer(torch.cat(features), lengths), lengths))
        kept = [
            choose(item, item_scores, num_kept_tokens(item.shape[0], ratio), grid)
            for item, item_scores, grid in zip(features, scores, grids)
        ]
        return VisualTokenSelection(
            kept_indices=kept, scores=scores, features=features, num_images=num_images, deepstack_features=deepstack
        )

    def _generation_selection_settings(self, retention_ratio, selector, generation_config) -> tuple[float, str]:
        """The ratio and selector of a `generate` call: its arguments, else those of the `generation_config` passed,
        else those of the model's generation config, else `config.retention_ratio` and `"learned"`."""
        configs = [(generation_config, "generation_config"), (self.generation_config, "model.generation_config")]
        for config, source in configs:
            if config is not None:
                check_generation_selection_settings(config, source)
        if retention_ratio is None:
            retention_ratio = next((c.retention_ratio for c, _ in configs if getattr(c, "retention_ratio", None) is not None), None)
        if selector is None:
            selector = next((c.selector for c, _ in configs if getattr(c, "selector", None) is not None), "learned")
        get_selector(selector)
        return self._resolve_ratio(retention_ratio), selector

    def _resolve_ratio(self, retention_ratio) -> float:
        return validate_retention_ratio(self.config.retention_ratio if retention_ratio is None else retention_ratio)

    # ------------------------------------------------------------------ pruning

    def _mm_token_type_ids(self, input_ids, mm_token_type_ids):
        if mm_token_type_ids is not None:
            return mm_token_type_ids
        return (input_ids == self.config.image_token_id).long() + 2 * (input_ids == self.config.video_token_id).long()

    def _encoder_outputs(self, features, deepstack, num_images: int) -> dict[str, ModelOutput]:
        """`mm_encoder_outputs` for the stock forward: the given per-item features of the images and of the videos."""
        outputs = {}
        for kind, items in (("image", slice(0, num_images)), ("video", slice(num_images, None))):
            if not features[items]:
                continue
            fields = {"pooler_output": tuple(features[items])}
            if deepstack is not None:  # back to the stock layout: per layer, one tensor per item
                fields["deepstack_features"] = [tuple(layer) for layer in zip(*deepstack[items])]
            # The stock forward reads only these attributes, in every family.
            encoder_output = BaseModelOutputWithPooling if deepstack is None else BaseModelOutputWithDeepstackFeatures
            outputs[kind] = encoder_output(**fields)
        return outputs

    def _check_token_types(self, input_ids, mm_token_type_ids) -> None:
        """A `ValueError` unless `mm_token_type_ids` (if given) marks exactly the image (1) and video (2) placeholders
        of `input_ids` (checked after the placeholders themselves, which are the likelier culprit)."""
        if mm_token_type_ids is not None and (
            not isinstance(mm_token_type_ids, torch.Tensor)
            or mm_token_type_ids.shape != input_ids.shape
            or not torch.equal(mm_token_type_ids.to(input_ids.device).long(), self._mm_token_type_ids(input_ids, None))
        ):
            raise ValueError(
                "`mm_token_type_ids` must mark the placeholders of `input_ids` (1 at each image placeholder, 2 at each "
                "video placeholder, 0 elsewhere, same shape); build both with the processor, or leave it out."
            )

    def _check_sequence_inputs(self, input_ids, attention_mask, labels) -> None:
        """A `ValueError` naming the argument unless `attention_mask` and `labels` fit `input_ids` `(B, L)`: the same
        shape, a mask of 0/1 with at least one 1 per row and 1 at every visual placeholder."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"`input_ids` must be an integer tensor of shape (batch, length), got {shape}.")
        for name, value in (("attention_mask", attention_mask), ("labels", labels)):
            if value is not None and (not isinstance(value, torch.Tensor) or value.shape != input_ids.shape):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"`{name}` must have the shape of `input_ids` {tuple(input_ids.shape)} (one value per token), got {shape}."
                )
        if attention_mask is None:
            return
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError(f"`attention_mask` must hold only 0 (padding) and 1 (token), got values {attention_mask.unique().tolist()}.")
        empty = (attention_mask.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"`attention_mask` is all zero in rows {empty}: every row needs at least one token.")
        visual = torch.isin(input_ids, torch.tensor([self.config.image_token_id, self.config.video_token_id], device=input_ids.device))
        masked = (visual & (attention_mask == 0)).nonzero().tolist()
        if masked:
            raise ValueError(
                f"`attention_mask` is 0 at {len(masked)} visual placeholder tokens (first at row {masked[0][0]}, position "
                f"{masked[0][1]}): image/video placeholders must be attended (mask 1); only padding is masked."
            )

    def prune_inputs(
        self,
        selection: VisualTokenSelection,
        *,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        labels: torch.LongTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        padding_side: str | None = None,
    ) -> PrunedInputs:
        """Removes the visual tokens `selection` drops from a (padded) batch, keeping every other token's position.

        Args:
            selection ([`VisualTokenSelection`]): what `select_visual_tokens` returned for this batch's pixels.
            input_ids (`torch.LongTensor` of shape `(B, L)`), attention_mask (`(B, L)`, *optional*), labels
                (`(B, L)`, *optional*), mm_token_type_ids (`(B, L)`, *optional*), image_grid_thw, video_grid_thw,
                second_per_grid_ts (Qwen2.5-VL): as the processor gives them.
            position_ids (`torch.LongTensor` of shape `(3, B, L)` or `(4, B, L)`, *optional*): the full sequence's
                rotary positions; by default the stock `get_rope_index`.
            padding_side (`str`, *optional*): "left" or "right" for the pruned rows; by default the batch's own side.

        Returns:
            [`PrunedInputs`]
        """
        self._check_sequence_inputs(input_ids, attention_mask, labels)
        num_images = selection.num_images
        groups = {
            "image": (self.config.image_token_id, slice(0, num_images)),
            "video": (self.config.video_token_id, slice(num_images, None)),
        }
        keep = torch.ones_like(input_ids, dtype=torch.bool)
        for kind, (token_id, items) in groups.items():
            lengths = [item.shape[0] for item in selection.features[items]]
            # an image's placeholders are one run; a Qwen3-VL video's are split by frame
            keep &= placeholder_keep_mask(
                input_ids, token_id, lengths, selection.kept_indices[items], kind, contiguous_items=kind == "image"
            )
        self._check_token_types(input_ids, mm_token_type_ids)

        if position_ids is None:
            position_ids = self._stock_positions(
                input_ids,
                mm_token_type_ids=self._mm_token_type_ids(input_ids, mm_token_type_ids),
                image_grid_thw=image_grid_thw if num_images else None,
                video_grid_thw=video_grid_thw if len(selection.features) > num_images else None,
                attention_mask=attention_mask,
                **({} if second_per_grid_ts is None else {"second_per_grid_ts": second_per_grid_ts}),
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
        new_mask, gathered = prune_batch(
            keep, attention_mask, sequences, pad_values, padding_side or batch_padding_side(attention_mask)
        )
        positions = gathered["position_ids"]
        # Generation continues after the largest position of the caller's whole prompt, as in the stock model (a
        # dropped video token can hold it: a late frame's time position can pass the text after the video).
        # `generate` adds the deltas to a 0-based count of the pruned row.
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        rope_deltas = position_ids.masked_fill(~real[None], 0).amax(dim=(0, 2)) + 1 - new_mask.sum(1)

        def kept(values):
            return [item[index] for item, index in zip(values, selection.kept_indices)]

        deepstack = selection.deepstack_features
        if deepstack is not None:
            deepstack = [[layer[index] for layer in item] for item, index in zip(deepstack, selection.kept_indices)]
        return PrunedInputs(
            input_ids=gathered["input_ids"],
            attention_mask=new_mask,
            position_ids=positions,
            rope_deltas=rope_deltas[:, None],
            labels=gathered.get("labels"),
            mm_encoder_outputs=self._encoder_outputs(kept(selection.features), deepstack, num_images),
            original_length=input_ids.shape[1],
        )

    def _stock_positions(self, input_ids: torch.LongTensor, **rope_inputs) -> torch.LongTensor:
        """The stock `get_rope_index` positions `(3, B, L)` of the whole sequence (its deltas are not needed)."""
        internal = f"{type(self.model).__name__}.get_rope_index"
        require_parameters(self.model.get_rope_index, internal, rope_inputs)
        result = self.model.get_rope_index(input_ids, **rope_inputs)
        positions = result[0] if isinstance(result, tuple) and len(result) == 2 else None
        if not isinstance(positions, torch.Tensor) or positions.shape != (3, *input_ids.shape):
            got = positions if isinstance(positions, torch.Tensor) else result
            got = f"a tensor of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else f"a {type(got).__name__}"
            raise stock_internal_error(
                internal, f"returned {got}, not the pair (positions (3, {', '.join(map(str, input_ids.shape))}), deltas)"
            )
        return positions

    def _check_stock_forward(self) -> None:
        """A `StockInternalError` unless the stock forward takes what the pruned forward and generate hand it."""
        for owner in (self.stock_class, type(self.model)):
            require_parameters(
                owner.forward, f"{owner.__name__}.forward", ("mm_encoder_outputs", "mm_token_type_ids", "position_ids")
            )
        if not hasattr(self.model, "rope_deltas"):  # decoding steps add it to the text position of each new token
            raise stock_internal_error(f"{type(self.model).__name__}.rope_deltas", "does not exist")

    # ------------------------------------------------------------------ forward

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

        _check_empty_cache(kwargs)
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

    # ------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(
        self, inputs: torch.Tensor | None = None, *args, retention_ratio: float | None = None, selector: str | None = None, **kwargs
    ):
        """[`~GenerationMixin.generate`] on the pruned prompt.

        The visual tokens are selected once, before generation; the stock generation loop (greedy, sampling,
        beam search, `num_return_sequences`, with or without cache, chunked prefill) then runs on the shorter
        prompt, re-padded on the left whatever the input's padding side. The returned sequences start with the
        caller's full `input_ids`, so trimming `out[:, input_ids.shape[1]:]` gives the new tokens; a `max_length` or
        `min_length` (keyword, `generation_config` or the model's saved generation config) counts the caller's
        prompt, and a `streamer` receives the caller's prompt first, then the new tokens, as from the stock model.

        Args:
            retention_ratio (`float`, *optional*): share of visual tokens kept, in (0, 1]; defaults to the
                `retention_ratio` of the `generation_config` passed, then of the model's generation config (a
                checkpoint's `generation_config.json`), then `config.retention_ratio`. 1.0 reproduces the stock model
                token for token.
            selector (`str`, *optional*): how to choose the kept tokens; defaults likewise to a generation config's
                `selector`, then `"learned"`.
        """
        # Every argument by name, however the caller passed it (the stock signature decides the positions).
        bound = inspect.signature(super().generate).bind(inputs, *args, **kwargs)
        arguments = {name: value for name, value in bound.arguments.items() if name != "kwargs"}
        arguments.update(bound.arguments.get("kwargs", {}))
        input_ids = arguments.pop("inputs", None)
        input_ids = arguments.pop("input_ids", None) if input_ids is None else input_ids
        ratio, selector = self._generation_selection_settings(retention_ratio, selector, arguments.get("generation_config"))
        pixel_values = arguments.pop("pixel_values", None)
        pixel_values_videos = arguments.pop("pixel_values_videos", None)
        if pixel_values is None and pixel_values_videos is None:
            return super().generate(input_ids, **arguments)

        if input_ids is None or arguments.get("inputs_embeds") is not None:
            raise ValueError("VisionSelector needs `input_ids` (not `inputs_embeds`) to find the visual placeholders.")
        if arguments.get("assistant_model") is not None:
            raise ValueError(
                "Assisted generation is not supported with pruned visual tokens: the assistant would see the "
                "full prompt while this model sees the pruned one. Generate without `assistant_model`."
            )
        _check_empty_cache(arguments)
        generation_config = arguments.get("generation_config") or self.generation_config
        chunked = arguments.get("prefill_chunk_size", getattr(generation_config, "prefill_chunk_size", None)) is not None
        # A known defect of the stock chunked prefill in older releases (not a feature check): a version floor.
        if chunked and TRANSFORMERS_VERSION < _CHUNKED_MULTIMODAL_PREFILL:
            raise ValueError(
                f"`prefill_chunk_size` with images or videos needs transformers >= {_CHUNKED_MULTIMODAL_PREFILL}: the "
                f"stock chunked prefill of transformers {TRANSFORMERS_VERSION} gives Qwen-VL prompts other tokens "
                "than the whole prefill. Upgrade transformers, or generate without `prefill_chunk_size`."
            )
        image_grid_thw = arguments.pop("image_grid_thw", None)
        video_grid_thw = arguments.pop("video_grid_thw", None)
        selection = self.select_visual_tokens(
            pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, ratio, selector
        )
        pruned = self.prune_inputs(
            selection,
            input_ids=input_ids,
            attention_mask=arguments.pop("attention_mask", None),
            position_ids=arguments.pop("position_ids", None),
            mm_token_type_ids=arguments.pop("mm_token_type_ids", None),
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            second_per_grid_ts=arguments.pop("second_per_grid_ts", None),
            padding_side="left",
        )
        # The 4-row positions `generate` expects: the 1D text positions of the shorter sequence, then the 3D ones.
        text_positions = (pruned.attention_mask.long().cumsum(-1) - 1).masked_fill(pruned.attention_mask == 0, 0)
        position_ids = torch.cat([text_positions[None], pruned.position_ids], dim=0)
        arguments.update(_lengths_of_the_pruned_prompt(arguments, generation_config, pruned))
        if arguments.get("streamer") is not None:
            arguments["streamer"] = _CallerPromptStreamer(arguments["streamer"], input_ids)
        self._check_stock_forward()
        self.model.rope_deltas = pruned.rope_deltas

        outputs = super().generate(
            pruned.input_ids,
            attention_mask=pruned.attention_mask,
            position_ids=position_ids,
            mm_token_type_ids=self._mm_token_type_ids(pruned.input_ids, None),
            mm_encoder_outputs=pruned.mm_encoder_outputs,
            **arguments,
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


def check_generation_selection_settings(generation_config, source: str = "generation_config") -> None:
    """A `ValueError` unless the `retention_ratio` and `selector` a generation config may carry are valid."""
    ratio = getattr(generation_config, "retention_ratio", None)
    if ratio is not None:
        validate_retention_ratio(ratio, f"{source}.retention_ratio")
    name = getattr(generation_config, "selector", None)
    if name is not None:
        try:
            get_selector(name)
        except ValueError as error:
            raise ValueError(f"`{source}.selector`: {error}") from None


def _lengths_of_the_pruned_prompt(arguments: dict, generation_config, pruned: PrunedInputs) -> dict[str, int]:
    """`max_length` / `min_length` for the pruned prompt, so that each counts the caller's prompt as given."""
    removed = pruned.original_length - pruned.input_ids.shape[1]
    lengths = {}
    for name in ("max_length", "min_length"):
        length = arguments.get(name, getattr(generation_config, name, None))
        if length is not None and (name != "max_length" or arguments.get("max_new_tokens", generation_config.max_new_tokens) is None):
            if name == "max_length" and length <= pruned.original_length:
                # the stock check, on the caller's lengths rather than the pruned prompt's
                raise ValueError(
                    f"Input length of input_ids is {pruned.original_length}, but `max_length` is set to {length}. This "
                    "can lead to unexpected behavior. You should consider increasing `max_length` or, better yet, "
                    "setting `max_new_tokens`."
                )
            lengths[name] = max(0, length - removed)
    return lengths


def _check_empty_cache(arguments: dict) -> None:
    """A `ValueError` if `arguments` carry a filled cache, under either of its names."""
    for name in _CACHE_KWARGS:
        cache = arguments.get(name)
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError(
                f"Continuing from a filled `{name}` is not supported with visual inputs: the cache holds a pruned "
                "prompt whose positions no longer match `input_ids`. Run the whole prompt again without a cache."
            )


def check_scorer_tensors(tensors: dict[str, torch.Tensor], config, source: str) -> None:
    """Raises a `ValueError` unless `tensors` are exactly the `scorer.*` tensors of a model with `config`."""
    with torch.device("meta"):
        reference = build_scorer(config)
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


def _unreadable_safetensors(folder) -> str:
    """"<file>: " for the first safetensors file of a local `folder` that cannot be opened, else ""."""
    if not os.path.isdir(str(folder)):
        return ""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            try:
                with safe_open(os.path.join(folder, name), "pt") as handle:
                    for key in handle.keys():
                        handle.get_slice(key)
            except (SafetensorError, OSError):
                return f"{os.path.join(folder, name)}: "
    return ""


def _check_local_folder(name: str, argument: str) -> None:
    """A `ValueError` for a `name` that can only be a local path (see `_looks_like_a_path`) but is not a folder here,
    where the Hub client would answer "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"."""
    if _looks_like_a_path(name) and not os.path.isdir(os.path.expanduser(name)):
        what = "a file, not a folder" if os.path.isfile(os.path.expanduser(name)) else "not a folder on this machine"
        raise ValueError(f"`{argument}` {name!r} is {what}; give a checkpoint folder or a Hub id (org/name).")


def _looks_like_a_path(name: str) -> bool:
    """Whether `name` can only be a local path: absolute, relative to `.`/`~`, or deeper than a Hub `org/name`."""
    return os.path.isabs(name) or name.startswith((".", "~")) or len(name.replace(os.sep, "/").split("/")) > 2


# ---------------------------------------------------------------------------------------------------- families


class VisionSelectorQwen2VLForConditionalGeneration(VisionSelectorMixin, Qwen2VLForConditionalGeneration):
    """Qwen2-VL with a Learnable Importance Scorer under `scorer.`; everything else is the stock model."""

    config_class = VisionSelectorQwen2VLConfig
    stock_class = Qwen2VLForConditionalGeneration


class VisionSelectorForConditionalGeneration(VisionSelectorMixin, Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL with a Learnable Importance Scorer under `scorer.`; everything else is the stock model."""

    config_class = VisionSelectorConfig
    stock_class = Qwen2_5_VLForConditionalGeneration


class VisionSelectorQwen3VLForConditionalGeneration(VisionSelectorMixin, Qwen3VLForConditionalGeneration):
    """Qwen3-VL with a Learnable Importance Scorer under `scorer.`; the deepstack features are pruned alike."""

    config_class = VisionSelectorQwen3VLConfig
    stock_class = Qwen3VLForConditionalGeneration


class VisionSelectorQwen3VLMoeForConditionalGeneration(VisionSelectorMixin, Qwen3VLMoeForConditionalGeneration):
    """Qwen3-VL-MoE with a Learnable Importance Scorer under `scorer.`; the deepstack features are pruned alike."""

    config_class = VisionSelectorQwen3VLMoeConfig
    stock_class = Qwen3VLMoeForConditionalGeneration


class VisionSelectorQwen3_5ForConditionalGeneration(VisionSelectorMixin, Qwen3_5ForConditionalGeneration):
    """Qwen3.5 with a Learnable Importance Scorer under `scorer.`; everything else is the stock model.

    Its language model mixes Gated DeltaNet (linear-attention, recurrent) layers with full attention. Dropped tokens
    are removed from the sequence, not masked, so the recurrent layers never step through them: the pruned model is
    the stock model run on the kept tokens alone (at their original 3D positions).
    """

    config_class = VisionSelectorQwen3_5Config
    stock_class = Qwen3_5ForConditionalGeneration


class VisionSelectorQwen3_5MoeForConditionalGeneration(VisionSelectorMixin, Qwen3_5MoeForConditionalGeneration):
    """Qwen3.5-MoE with a Learnable Importance Scorer under `scorer.`; as Qwen3.5, with MoE MLPs."""

    config_class = VisionSelectorQwen3_5MoeConfig
    stock_class = Qwen3_5MoeForConditionalGeneration


# The VisionSelector class of each stock `model_type`.
VISIONSELECTOR_CLASSES = {
    "qwen2_vl": VisionSelectorQwen2VLForConditionalGeneration,
    "qwen2_5_vl": VisionSelectorForConditionalGeneration,
    "qwen3_vl": VisionSelectorQwen3VLForConditionalGeneration,
    "qwen3_vl_moe": VisionSelectorQwen3VLMoeForConditionalGeneration,
    "qwen3_5": VisionSelectorQwen3_5ForConditionalGeneration,
    "qwen3_5_moe": VisionSelectorQwen3_5MoeForConditionalGeneration,
}


def visionselector_class_for(model_type: str, source: str = "the backbone"):
    """The VisionSelector class for a stock or VisionSelector `model_type`, or a `ValueError` naming the accepted ones."""
    for stock_type, selector_class in VISIONSELECTOR_CLASSES.items():
        if model_type in (stock_type, selector_class.config_class.model_type):
            return selector_class
    raise ValueError(
        f"{source} is a {model_type!r} model; VisionSelector supports {sorted(VISIONSELECTOR_CLASSES)} and their "
        f"VisionSelector types {sorted(c.config_class.model_type for c in VISIONSELECTOR_CLASSES.values())}."
    )


# A remote-code class is not under `transformers.`, so a family's checkpoint renaming rules (Qwen2/2.5-VL on disk:
# `visual.*`, `model.layers.*`; in memory: `model.visual.*`, `model.language_model.*`; Qwen3-VL-MoE: fused experts)
# must be registered for it by name, or a stock checkpoint would load with the language model left at random. The
# paper's released checkpoints (transformers 4.5x) keep the scorer in the vision tower, at `visual.importance_scorer.*`;
# that rule comes first, or `^visual` -> `model.visual` would take it. On save the rules are reversed and a reversed
# rule renames to its first source: `^scorer` is listed first so that our checkpoints always keep the scorer at
# `scorer.*`. Families whose checkpoints already use the in-memory names have no stock rules (None).
for _stock_type, _selector_class in VISIONSELECTOR_CLASSES.items():
    _stock_rules = get_checkpoint_conversion_mapping(_selector_class.stock_class.__name__)
    if _stock_rules is None:
        _stock_rules = get_checkpoint_conversion_mapping(_stock_type)
    register_checkpoint_conversion_mapping(
        _selector_class.__name__,
        [WeightRenaming(source_patterns=["^scorer", "^visual.importance_scorer"], target_patterns="scorer")]
        + list(_stock_rules or []),
        overwrite=True,
    )
    # `save_pretrained` copies this file and its relative imports next to the weights (the config's auto_map names
    # every auto class), so that `AutoModel.from_pretrained(folder, trust_remote_code=True)` finds the code.
    _selector_class.register_for_auto_class("AutoModel")


__all__ = [
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
    "VISIONSELECTOR_CLASSES",
    "visionselector_class_for",
    "with_selection_fields",
]
