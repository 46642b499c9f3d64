"""The multimodal processor of a VisionSelector checkpoint in vLLM: k placeholders per item, the ratio in the hash.

vLLM's processor of the family (Qwen2.5-VL, Qwen3-VL) is reused; three things change (`PruningProcessorMixin`):

- the retention ratio r of a request is its `mm_processor_kwargs["retention_ratio"]`, else the server's
  `--mm-processor-kwargs`, else the checkpoint's `config.retention_ratio`; it is validated, kept out of the
  Hugging Face processor call, and always part of every item's multimodal hash (so that processor-cache, encoder
  cache and prefix-cache entries of different ratios never mix, whichever of the three places set it);
- every image and video item of n merged tokens gets k = `num_kept_tokens(n, r)` placeholders, the count the
  transformers model keeps; k travels to the model as `{image,video}_num_kept_tokens`;
- each video's temporal position table (`video_temporal_positions`, integers) is computed from the processor's own
  float32 `second_per_grid_ts`, exactly as transformers computes it, before vLLM casts floating outputs to the
  model dtype (bfloat16 would shift fractional seconds per grid).

What the worker cannot serve is refused here, where a `ValueError` fails one request (HTTP 400); in the worker an
exception ends the engine for every request: an item whose positions span `max_position_embeddings` or more
(`check_offsets_fit`), and a prompt that ends with placeholders (see `positions.prompt_positions`). Qwen3-VL videos
are not accepted at all (`VisionSelectorQwen3VLProcessingInfo`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from transformers import BatchFeature
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLMultiModalProcessor, Qwen2_5_VLProcessingInfo
from vllm.model_executor.models.qwen3_vl import Qwen3VLMultiModalProcessor, Qwen3VLProcessingInfo
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate

from modeling_visionselector.scoring import num_kept_tokens, validate_retention_ratio

from .positions import check_offsets_fit, temporal_positions

RETENTION_RATIO_KEY = "retention_ratio"
MODALITIES = ("image", "video")


def item_num_kept_tokens(grid_thw: torch.Tensor, spatial_merge_size: int, retention_ratio: float) -> torch.LongTensor:
    """`(items,)` placeholders per item: `num_kept_tokens(n, r)` of the n = t * h * w / merge**2 merged tokens."""
    merged = (grid_thw.prod(-1) // spatial_merge_size**2).tolist()
    return torch.tensor([num_kept_tokens(int(n), retention_ratio) for n in merged], dtype=torch.long)


def video_temporal_positions(
    video_grid_thw: torch.Tensor, second_per_grid_ts: torch.Tensor | None, tokens_per_second: float
) -> torch.LongTensor:
    """Every video's temporal position table, concatenated: `(sum of t,)`, as transformers' `get_rope_index`."""
    tables = []
    for index, frames in enumerate(video_grid_thw[:, 0].tolist()):
        seconds = 1 if second_per_grid_ts is None else second_per_grid_ts[index]
        tables.append(temporal_positions(int(frames), tokens_per_second * seconds))
    return torch.cat(tables) if tables else torch.zeros(0, dtype=torch.long)


class RetentionRatioInfo:
    """Processing-info mixin: the retention ratio of a request, kept out of the Hugging Face processor."""

    def retention_ratio(self, hf_processor_mm_kwargs: Mapping[str, object]) -> float:
        """The ratio for a request: its own, else the server's, else the checkpoint's; a `ValueError` if bad."""
        merged = self.ctx.get_merged_mm_kwargs(hf_processor_mm_kwargs)
        if RETENTION_RATIO_KEY in merged:
            return validate_retention_ratio(merged[RETENTION_RATIO_KEY])
        return validate_retention_ratio(getattr(self.get_hf_config(), RETENTION_RATIO_KEY))

    def get_hf_processor(self, **kwargs: object):
        kwargs.pop(RETENTION_RATIO_KEY, None)
        return super().get_hf_processor(**kwargs)


class VisionSelectorProcessingInfo(RetentionRatioInfo, Qwen2_5_VLProcessingInfo):
    pass


class VisionSelectorQwen3VLProcessingInfo(RetentionRatioInfo, Qwen3VLProcessingInfo):
    # Qwen3-VL lays a video out frame by frame, each frame's tokens between timestamp text; how many of a frame's
    # tokens are kept is known only after the encoder ran, but vLLM fixes the prompt before. So no video: vLLM
    # refuses a request with one (at most 0 videos), and profiles no video.
    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, "video": 0}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.get_max_image_tokens()}


class PruningProcessorMixin:
    """Multimodal-processor mixin: k placeholders per item, the ratio in the hash, the refusals (module docstring)."""

    info: RetentionRatioInfo

    def _get_mm_hashes(self, inputs):
        ratio = self.info.retention_ratio(inputs.hf_processor_mm_kwargs)
        kwargs = {**inputs.hf_processor_mm_kwargs, RETENTION_RATIO_KEY: ratio}
        return super()._get_mm_hashes(dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs))

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        hf_processor = self.info.get_hf_processor(**hf_kwargs)
        tokens_per_second = getattr(self.info.get_hf_config().vision_config, "tokens_per_second", 1)
        temporal = {}

        def call(**kwargs):
            kwargs.pop(RETENTION_RATIO_KEY, None)  # the server's default arrives here merged in: not an HF option
            outputs = hf_processor(**kwargs)
            if "video_grid_thw" in outputs:  # before vLLM casts floating outputs to the model dtype
                temporal["positions"] = video_temporal_positions(
                    outputs["video_grid_thw"], outputs.get("second_per_grid_ts"), tokens_per_second
                )
            return outputs

        outputs = self.info.ctx.call_hf_processor(call, hf_data, hf_kwargs)
        if "positions" in temporal:
            outputs["video_temporal_positions"] = temporal["positions"]
        return outputs

    def _postprocess_hf_mm_data(
        self, mm_inputs: Mapping[str, object], hf_processor_mm_kwargs: Mapping[str, object], processed_data: BatchFeature
    ) -> BatchFeature:
        processed_data = super()._postprocess_hf_mm_data(mm_inputs, hf_processor_mm_kwargs, processed_data)
        config = self.info.get_hf_config()
        ratio = self.info.retention_ratio(hf_processor_mm_kwargs)
        merge = config.vision_config.spatial_merge_size
        for modality in MODALITIES:
            grid = processed_data.get(f"{modality}_grid_thw")
            if grid is not None:
                processed_data[f"{modality}_num_kept_tokens"] = item_num_kept_tokens(grid, merge, ratio)
        if "video_grid_thw" in processed_data and "video_temporal_positions" not in processed_data:
            # video embeddings given by the caller: their `second_per_grid_ts` as given, or 1 s per grid
            processed_data["video_temporal_positions"] = video_temporal_positions(
                processed_data["video_grid_thw"],
                processed_data.get("second_per_grid_ts"),
                getattr(config.vision_config, "tokens_per_second", 1),
            )
        # Every item (a cache hit was checked when it was first processed, under the same server settings).
        max_positions = config.get_text_config().max_position_embeddings
        for modality in MODALITIES:
            grids = processed_data.get(f"{modality}_grid_thw")
            if grids is None:
                continue
            if modality == "video":
                tables = processed_data["video_temporal_positions"].split(grids[:, 0].tolist())
            else:
                tables = [torch.zeros(1, dtype=torch.long)] * len(grids)
            for (t, h, w), table in zip(grids.tolist(), tables):
                check_offsets_fit((t, h // merge, w // merge), table, max_positions)
        return processed_data

    def apply(self, inputs, timing_ctx):
        outputs = super().apply(inputs, timing_ctx)
        ends = [item.offset + item.length for ranges in outputs["mm_placeholders"].values() for item in ranges]
        if ends and max(ends) == len(outputs["prompt_token_ids"]):
            raise ValueError(
                "The prompt ends with the placeholders of an image or video; end it with text (the chat template "
                "puts <|vision_end|> after every item). Generated tokens continue after the last prompt position, "
                "which for a pruned item is known only after the encoder ran."
            )
        return outputs

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        video_grid_thw = hf_inputs.get("video_grid_thw", torch.empty((0, 3), dtype=torch.long))
        return dict(
            **super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs),
            image_num_kept_tokens=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            video_num_kept_tokens=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            video_temporal_positions=MultiModalFieldConfig.flat_from_sizes(
                "video", video_grid_thw[:, 0], keep_on_cpu=True
            ),
        )

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, Any],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        hf_processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        vocab = self.info.get_tokenizer().get_vocab()
        placeholder = {"image": vocab[hf_processor.image_token], "video": vocab[hf_processor.video_token]}

        def kept_placeholders(item_idx: int, modality: str) -> list[int]:
            num_kept = out_mm_kwargs[modality][item_idx][f"{modality}_num_kept_tokens"].data
            return [placeholder[modality]] * int(num_kept)

        return [
            PromptReplacement(
                modality=modality,
                target=[placeholder[modality]],
                replacement=partial(kept_placeholders, modality=modality),
            )
            for modality in MODALITIES
        ]


class VisionSelectorMultiModalProcessor(PruningProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    info: VisionSelectorProcessingInfo


class VisionSelectorQwen3VLMultiModalProcessor(PruningProcessorMixin, Qwen3VLMultiModalProcessor):
    info: VisionSelectorQwen3VLProcessingInfo
