"""VisionSelector checkpoints in vLLM: vLLM's own Qwen2.5-VL and Qwen3-VL with the learned scorer after the encoder.

What the subclasses change (`VisionSelectorServing`; everything else is vLLM's `Qwen2_5_VLForConditionalGeneration`
and `Qwen3VLForConditionalGeneration`; Qwen3-VL's deepstack features are channels of each merged token there, so
the kept rows carry the deepstack features of the kept tokens):

- `embed_multimodal`: the vision encoder runs on the items in groups no larger than the encoder budget vLLM
  profiled (the scheduler counts an item as its k kept tokens); right after each group, the scorer of
  `modeling_visionselector.scoring` scores each item's merged tokens, the top k (the item's placeholder count)
  are kept in their original order and the group's full features are freed. Each kept embedding carries its
  rotary offset from the item's anchor in `NUM_OFFSET_CHANNELS` extra channels (see `positions.py`). No GPU sync:
  the grids and counts are host-side fields, the per-item tables reach the GPU by asynchronous copies.
- `get_mrope_input_positions`: the prompt's positions, computed once when the request arrives (and again, on the
  prompt plus its generated tokens, when Model Runner V2 resumes a preempted request: generated tokens are
  numbered like text, so they get back the positions they were decoded at): exact for every text token and for
  where generation continues; each kept visual placeholder gets its item's anchor.
- `embed_input_ids`: strips the offset channels of the embeddings fed in this step and writes the offsets, at
  the tokens they belong to, into a buffer of the model; `forward` adds that buffer to the step's positions, in
  place (so that the buffers CUDA graphs captured see it too). A step that feeds no visual token adds zeros.
- `hf_to_vllm_mapper`: the scorer loads from `scorer.*`, or from the paper's `visual.importance_scorer.*`.
- What the worker must never meet is refused before, with a `ValueError` naming it: bad requests by the processor
  (`processing.py`); engine settings, and checkpoints of other families, by `check_supported` in `__init__`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLImagePixelInputs,
    Qwen2_5_VLVideoPixelInputs,
)
from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder, Qwen3VLForConditionalGeneration
from vllm.model_executor.models.utils import WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFeatureSpec
from vllm.multimodal.utils import copy_mm_embedding_modality
from vllm.utils.torch_utils import async_tensor_h2d

from modeling_visionselector import SCORER_PREFIX
from modeling_visionselector.scoring import build_scorer
from modeling_visionselector.selectors import select_tokens

from .positions import (
    NUM_OFFSET_CHANNELS,
    PrunedItem,
    decode_offsets,
    encode_offsets,
    kept_token_offsets,
    prompt_positions,
)
from .processing import (
    VisionSelectorMultiModalProcessor,
    VisionSelectorProcessingInfo,
    VisionSelectorQwen3VLMultiModalProcessor,
    VisionSelectorQwen3VLProcessingInfo,
)

# The `model_type`s of the checkpoints the plugin serves, and what of them.
SERVED_MODEL_TYPES = {
    "visionselector_qwen2_5_vl": "Qwen2.5-VL: images and videos",
    "visionselector_qwen3_vl": "Qwen3-VL: images",
}
# The paper's checkpoints keep the scorer inside the vision tower; ours at the top level.
SCORER_RENAMING = WeightsMapper(orig_to_new_regex={re.compile(r"^(model\.)?visual\.importance_scorer\."): SCORER_PREFIX})


def served_types() -> str:
    return "; ".join(f"{model_type!r} ({what})" for model_type, what in SERVED_MODEL_TYPES.items())


def check_supported(vllm_config: VllmConfig, served_model_type: str = "visionselector_qwen2_5_vl") -> None:
    """A `ValueError` for the engine settings this model cannot serve (each names the setting to drop)."""
    model_config = vllm_config.model_config
    config = model_config.hf_config
    if getattr(config, "scorer_only", False):
        raise ValueError(
            f"{model_config.model} is a scorer-only VisionSelector artifact (no backbone weights). vLLM loads one "
            "folder: write a full checkpoint first with `visionselector-hub merge --scorer <artifact> --output_dir "
            "<folder>` and serve that folder."
        )
    model_type = getattr(config, "model_type", None)
    if model_type != served_model_type:
        raise ValueError(
            f"{model_config.model} is a {model_type!r} checkpoint, but its architecture "
            f"({', '.join(getattr(model_config, 'architectures', None) or [])}) is served for {served_model_type!r} "
            f"checkpoints; the VisionSelector vLLM plugin serves {served_types()}. Serve this one with transformers "
            "(`generate` of the checkpoint's model class)."
        )
    multimodal_config = model_config.get_multimodal_config()
    if multimodal_config.is_multimodal_pruning_enabled():
        raise ValueError(
            "VisionSelector prunes images and videos itself: drop --video-pruning-rate (EVS), or set the ratio "
            "with --mm-processor-kwargs '{\"retention_ratio\": r}'."
        )
    # The kept tokens' offsets are added to the positions of the whole step in `forward`; a forward that sees
    # only part of the step (pipeline stages, micro-batches) or a drafter fed the raw embeddings would miss them.
    unsupported = {
        "--pipeline-parallel-size > 1": vllm_config.parallel_config.pipeline_parallel_size > 1,
        "--enable-dbo (micro-batching)": vllm_config.parallel_config.use_ubatching,
        "speculative decoding": vllm_config.speculative_config is not None,
        # LoRA on the vision tower and connector counts an item's encoder tokens from its placeholders (k), not
        # from the n merged tokens the encoder really produces
        "--enable-tower-connector-lora": bool(getattr(vllm_config.lora_config, "enable_tower_connector_lora", False)),
    }
    for setting, used in unsupported.items():
        if used:
            raise ValueError(f"The VisionSelector vLLM plugin does not support {setting} yet; drop that setting.")


class UnservedVisionSelectorFamily(torch.nn.Module):
    """What vLLM builds for a VisionSelector family the plugin does not serve: a `ValueError` that says so."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        model_config = vllm_config.model_config
        raise ValueError(
            f"{model_config.model} is a {getattr(model_config.hf_config, 'model_type', None)!r} VisionSelector "
            f"checkpoint ({', '.join(model_config.architectures or [])}); the VisionSelector vLLM plugin serves "
            f"{served_types()}. Serve this one with transformers (`generate` of the checkpoint's model class); "
            "vLLM's Transformers backend would not prune it."
        )


def encoder_groups(sizes: Sequence[int], budget: int) -> list[slice]:
    """Consecutive groups of items whose sizes sum to at most `budget` (an item larger than it goes alone)."""
    groups, start, total = [], 0, 0
    for index, size in enumerate(sizes):
        if index > start and total + size > budget:
            groups.append(slice(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        groups.append(slice(start, len(sizes)))
    return groups


def pruned_item(feature: MultiModalFeatureSpec, spatial_merge_size: int) -> PrunedItem:
    """The `PrunedItem` of one image or video of a request, from what the processor produced for it."""
    modality = feature.modality
    data = feature.data
    if modality not in ("image", "video") or data is None:
        raise ValueError(f"Expected the processed data of an image or a video, got {modality!r} with {data!r}.")
    t, h, w = data[f"{modality}_grid_thw"].data.tolist()
    num_kept = int(data[f"{modality}_num_kept_tokens"].data)
    if feature.mm_position.length != num_kept:
        raise ValueError(
            f"The {modality} at prompt index {feature.mm_position.offset} has {feature.mm_position.length} "
            f"placeholders, but its processor output keeps {num_kept} tokens."
        )
    last_temporal = int(data["video_temporal_positions"].data[-1]) if modality == "video" else 0
    return PrunedItem(
        offset=feature.mm_position.offset,
        num_kept=num_kept,
        grid=(t, h // spatial_merge_size, w // spatial_merge_size),
        last_temporal_position=last_temporal,
    )


class VisionSelectorServing:
    """Model mixin, before vLLM's model class: the VisionSelector scorer (`scorer.q_proj`, `scorer.k_proj`), the
    selection after the encoder and the positions of the kept tokens (module docstring)."""

    served_model_type: str
    # no EVS: `check_supported` refuses --video-pruning-rate
    supported_video_pruning_methods = ()

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        check_supported(vllm_config, self.served_model_type)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        self.scorer = build_scorer(config)
        scheduler_config = vllm_config.scheduler_config
        # merged tokens the vision encoder may process at once: what vLLM profiled its memory with
        self.encoder_budget = scheduler_config.max_num_encoder_input_tokens
        # (3, tokens of a step): the kept visual tokens' offsets from their anchor, zero elsewhere
        self.register_buffer(
            "visual_position_offsets",
            torch.zeros(3, scheduler_config.max_num_batched_tokens + 1, dtype=torch.long),
            persistent=False,
        )
        self._offsets_written = False

    # ------------------------------------------------------------------ selection

    def _kept_embeddings(self, modality: str, item_input, num_kept: list[int], tables) -> list[torch.Tensor]:
        """Each item's kept embeddings and their offsets, the encoder run on groups within `encoder_budget`.

        The scheduler counts an item as its k kept tokens, so one step may bring up to budget / r merged tokens at
        ratio r. Each group's full features are scored and cut to their k kept tokens before the next group runs,
        and freed then: peak memory is one group's encoder run and features (what vLLM profiled) plus the kept
        embeddings of the step (at most the encoder budget), at any ratio. The scorer scores each item on its own
        (its mean key is the item's), so scoring per item is the same as scoring the group at once.
        """
        process = self._process_image_input if modality == "image" else self._process_video_input
        merge = self.visual.spatial_merge_size
        grid = item_input[f"{modality}_grid_thw"]  # on the CPU (vLLM keeps it there)
        grids = [(t, h // merge, w // merge) for t, h, w in grid.tolist()]
        if item_input["type"] not in ("pixel_values", "pixel_values_videos"):
            # embeddings given by the caller: nothing to encode
            groups, parts = [slice(0, len(grids))], [item_input]
        else:
            pixels_key = item_input["type"]
            patches = grid.prod(-1).tolist()
            starts = [0]
            for count in patches:
                starts.append(starts[-1] + count)
            groups = encoder_groups([count // merge**2 for count in patches], self.encoder_budget)
            parts = []
            for group in groups:
                fields = {
                    pixels_key: item_input[pixels_key][starts[group.start] : starts[group.stop]],
                    f"{modality}_grid_thw": grid[group],
                }
                if modality == "image":
                    parts.append(Qwen2_5_VLImagePixelInputs(type="pixel_values", **fields))
                else:
                    seconds = item_input.get("second_per_grid_ts")
                    parts.append(
                        Qwen2_5_VLVideoPixelInputs(
                            type="pixel_values_videos",
                            second_per_grid_ts=None if seconds is None else seconds[group],
                            **fields,
                        )
                    )
        outputs = []
        for group, part in zip(groups, parts):
            # the group's full features live only during this call: freed before the next group runs
            outputs.extend(self._select(process(part), num_kept[group], grids[group], tables[group]))
        return outputs

    def _select(self, features, num_kept: list[int], grids, tables) -> list[torch.Tensor]:
        """The kept embeddings of some items, `(k, hidden_size + NUM_OFFSET_CHANNELS)` each, from their features."""
        outputs = []
        for item, k, grid, table in zip(features, num_kept, grids, tables):
            # the merged tokens' own features: Qwen3-VL's deepstack features follow them as more channels
            scores = self.scorer(item[:, : self.scorer.q_proj.in_features], [item.shape[0]])  # (n,)
            (kept,) = select_tokens(scores, [item.shape[0]], [k])  # (k,) ascending
            offsets = kept_token_offsets(kept, grid, async_tensor_h2d(table, kept.device))  # (k, 3)
            outputs.append(torch.cat([item[kept], encode_offsets(offsets, item.dtype)], dim=1))
        return outputs

    def embed_multimodal(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        """Kept embeddings of every item, each `(k, hidden_size + NUM_OFFSET_CHANNELS)`: features, then offsets."""
        inputs = self._parse_and_validate_multimodal_inputs(**kwargs)
        outputs = []
        for modality, item_input in inputs.items():  # the order vLLM passed the modalities in
            # host-side metadata: vLLM keeps these fields on the CPU (`keep_on_cpu`), so no GPU sync reads them
            num_kept = torch.as_tensor(kwargs[f"{modality}_num_kept_tokens"]).reshape(-1).tolist()
            if modality == "video":
                frames = item_input["video_grid_thw"][:, 0].tolist()
                tables = list(torch.as_tensor(kwargs["video_temporal_positions"]).split(frames))
            else:
                tables = [torch.zeros(1, dtype=torch.long)] * len(num_kept)
            outputs.extend(self._kept_embeddings(modality, item_input, num_kept, tables))
        return tuple(outputs)

    def get_encoder_cudagraph_config(self):
        # the encoder CUDA graphs return the encoder output directly, past `embed_multimodal`'s selection
        return dataclasses.replace(super().get_encoder_cudagraph_config(), modalities=[])

    # ------------------------------------------------------------------ positions

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]
    ) -> tuple[torch.Tensor, int]:
        merge = self.config.vision_config.spatial_merge_size
        items = [pruned_item(feature, merge) for feature in mm_features]
        return prompt_positions(len(input_tokens), items)

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings=None,
        *,
        is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._offsets_written:
            self.visual_position_offsets.zero_()
            self._offsets_written = False
        if multimodal_embeddings is not None and len(multimodal_embeddings) > 0:
            codes = torch.cat([embedding[:, -NUM_OFFSET_CHANNELS:] for embedding in multimodal_embeddings])
            multimodal_embeddings = [
                copy_mm_embedding_modality(embedding, embedding[:, :-NUM_OFFSET_CHANNELS])
                for embedding in multimodal_embeddings
            ]
            step = self.visual_position_offsets[:, : input_ids.shape[0]]
            # The runners build `is_multimodal` on the CPU: its indices cost no GPU sync, and reach the GPU by an
            # asynchronous copy from pinned memory.
            index = async_tensor_h2d(is_multimodal.nonzero().squeeze(1), step.device)
            step[:, index] = decode_offsets(codes).T
            self._offsets_written = True
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)

    def add_visual_position_offsets(self, positions: torch.Tensor) -> torch.Tensor:
        """Adds the offsets `embed_input_ids` wrote for this step to the step's `(3, tokens)` positions, in place."""
        if positions.shape[-1] > self.visual_position_offsets.shape[-1]:
            raise ValueError(
                f"A step of {positions.shape[-1]} tokens exceeds max_num_batched_tokens "
                f"({self.visual_position_offsets.shape[-1] - 1})."
            )
        # in place: CUDA graphs read the runner's position buffer, not a new tensor
        positions += self.visual_position_offsets[: positions.shape[0], : positions.shape[-1]]
        return positions

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        self.add_visual_position_offsets(positions)
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)


@MULTIMODAL_REGISTRY.register_processor(
    VisionSelectorMultiModalProcessor,
    info=VisionSelectorProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class VisionSelectorQwen2_5_VLForConditionalGeneration(VisionSelectorServing, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL plus the VisionSelector scorer: images and videos."""

    served_model_type = "visionselector_qwen2_5_vl"
    hf_to_vllm_mapper = SCORER_RENAMING | Qwen2_5_VLForConditionalGeneration.hf_to_vllm_mapper


@MULTIMODAL_REGISTRY.register_processor(
    VisionSelectorQwen3VLMultiModalProcessor,
    info=VisionSelectorQwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class VisionSelectorQwen3VLForConditionalGeneration(VisionSelectorServing, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL plus the VisionSelector scorer: images (its processor refuses videos, see `processing.py`)."""

    served_model_type = "visionselector_qwen3_vl"
    hf_to_vllm_mapper = SCORER_RENAMING | Qwen3VLForConditionalGeneration.hf_to_vllm_mapper
