"""`generate` on the pruned prompt: the stock generation loop, run on the kept tokens.

The one file a transformers upgrade of the generation internals touches: how `generate` binds its arguments, the
cache's keyword names, the 4-row positions it expects, its length checks and its streamer protocol.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
from packaging import version
from transformers.generation.streamers import BaseStreamer

from .compatibility import TRANSFORMERS_VERSION
from .scoring import validate_retention_ratio
from .selectors import get_selector

if TYPE_CHECKING:
    from .pruning import PrunedInputs

# The names `generate` has used for the cache: `past_key_values`, and `cache` from transformers 5.24 on.
CACHE_KWARGS = ("cache", "past_key_values")
# The selection settings a generation config may carry, used by `generate` as its defaults.
GENERATION_SELECTION_FIELDS = ("retention_ratio", "selector")
# The first transformers whose chunked prefill of Qwen-VL prompts with images equals the whole prefill.
_CHUNKED_MULTIMODAL_PREFILL = version.Version("5.23.0")


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


class PrunedGenerationMixin:
    """`generate` of a VisionSelector model; mixed into `VisionSelectorMixin`, before the stock class."""


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
        check_empty_cache(arguments)
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


def check_empty_cache(arguments: dict) -> None:
    """A `ValueError` if `arguments` carry a filled cache, under either of its names."""
    for name in CACHE_KWARGS:
        cache = arguments.get(name)
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError(
                f"Continuing from a filled `{name}` is not supported with visual inputs: the cache holds a pruned "
                "prompt whose positions no longer match `input_ids`. Run the whole prompt again without a cache."
            )


__all__ = ["CACHE_KWARGS", "GENERATION_SELECTION_FIELDS", "PrunedGenerationMixin", "check_empty_cache", "check_generation_selection_settings"]
