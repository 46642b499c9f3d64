"""The sequence surgery behind pruned prefill: removing the dropped visual tokens from a padded batch.

`PruningMixin.prune_inputs` takes a batch as the processor gives it and what the selection keeps, and returns what
the stock language model runs on (`PrunedInputs`): the kept placeholders, their original 3D rotary positions, the
rotary deltas `generate` continues from, the labels and the kept features in the stock forward's
`mm_encoder_outputs` form. The functions below it match placeholders to items and gather the kept tokens.

B is the batch size, L the original and L' the pruned sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .compatibility import missing_internal, require_parameters, stock_internal_error

if TYPE_CHECKING:
    from .modeling_visionselector import VisualTokenSelection

try:  # a transformers internal: the encoder output class of the deepstack families
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures
except ImportError as error:
    raise missing_internal(error) from error


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


class PruningMixin:
    """The sequence surgery of a VisionSelector model; mixed into `VisionSelectorMixin`."""

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



def placeholder_keep_mask(
    input_ids: torch.LongTensor,
    token_id: int,
    lengths: list[int],
    kept_indices: list[torch.LongTensor],
    kind: str = "image/video",
    contiguous_items: bool = False,
) -> torch.Tensor:
    """`(B, L)` bool: False at the placeholders (`input_ids == token_id`) of dropped visual tokens, True elsewhere.

    Placeholders are matched to items in reading order over (batch, sequence), the order in which the
    processor wrote them and the vision encoder returns their features; item `i` owns the next `lengths[i]`.
    """
    check_placeholder_rows(input_ids, token_id, lengths, kind, contiguous_items)
    placeholders = input_ids == token_id
    found = int(placeholders.sum())
    keep_flat = torch.zeros(found, dtype=torch.bool, device=input_ids.device)
    offset = 0
    for length, kept in zip(lengths, kept_indices):
        keep_flat[offset + kept.to(input_ids.device)] = True
        offset += length
    keep = torch.ones_like(placeholders)
    keep[placeholders] = keep_flat  # boolean indexing walks (batch, sequence) in reading order
    return keep


def check_placeholder_rows(
    input_ids: torch.LongTensor, token_id: int, lengths: list[int], kind: str = "image/video", contiguous_items: bool = False
) -> None:
    """A `ValueError` unless every row of `input_ids` holds the placeholders of whole items.

    Items own the placeholders in reading order, `lengths[i]` each: a row whose count ends inside an item (48 and 50
    placeholders for two images of 49 tokens) would hand the end of one row's image to the next row. With
    `contiguous_items` (images: each is one run of placeholders) every run must also end where an item ends.
    """
    per_row = (input_ids == token_id).sum(1).tolist()  # (B,)
    if sum(per_row) != sum(lengths):
        raise ValueError(
            f"`input_ids` holds {sum(per_row)} {kind} placeholder tokens (id {token_id}) but `{kind}_grid_thw` gives "
            f"{sum(lengths)} merged tokens ({lengths} per item): every {kind} needs exactly as many placeholders as its "
            "grid gives merged tokens (t * h * w / merge_size**2); build inputs with the processor."
        )
    boundaries = {0}
    total = 0
    for length in lengths:
        total += length
        boundaries.add(total)
    end = 0
    for row, count in enumerate(per_row):
        end += count
        if end not in boundaries:
            raise ValueError(
                f"`input_ids` row {row} holds {count} {kind} placeholder tokens (id {token_id}), which do not make whole "
                f"items: `{kind}_grid_thw` gives the items {lengths} merged tokens in reading order, so the rows' counts {per_row} would "
                "split an item between rows. Every image/video needs exactly as many placeholders as its `grid_thw` "
                "gives merged tokens, in its own row; build inputs with the processor."
            )
    if contiguous_items:
        placeholders = input_ids == token_id  # (B, L)
        run_ends = placeholders.clone()
        run_ends[:, :-1] &= ~placeholders[:, 1:]  # the last placeholder of each run
        ends = placeholders.flatten().long().cumsum(0)[run_ends.flatten()].tolist()
        split = [end for end in ends if end not in boundaries]
        if split:
            raise ValueError(
                f"`input_ids` holds a run of {kind} placeholder tokens (id {token_id}) that ends after {split[0]} "
                f"placeholders, inside an item: `{kind}_grid_thw` gives the items {lengths} merged tokens in reading order, and each "
                f"{kind}'s placeholders must be one run of exactly that many; build inputs with the processor."
            )


def batch_padding_side(attention_mask: torch.Tensor | None) -> str:
    """"right" if some row ends in padding, else "left" (also for a batch without padding: generation needs left)."""
    if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
        return "right"
    return "left"


def prune_batch(
    keep: torch.Tensor,
    attention_mask: torch.Tensor | None,
    sequences: dict[str, torch.Tensor],
    pad_values: dict[str, int],
    padding_side: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Drops every token where `keep` is False (and the old padding), then pads the rows again on `padding_side`.

    Args:
        keep (`torch.Tensor` of shape `(B, L)`, bool): tokens to keep.
        attention_mask (`torch.Tensor` of shape `(B, L)`, *optional*): 1 for real tokens; None means no padding.
        sequences (`dict[str, torch.Tensor]`): tensors whose last two dims are `(B, L)`, e.g. `input_ids` `(B, L)`
            or rotary positions `(3, B, L)`; each is gathered the same way.
        pad_values (`dict[str, int]`): the value written at new padding for each key of `sequences`.
        padding_side (`str`): "left" or "right".

    Returns:
        The new `(B, L')` attention mask and the gathered `sequences`, with L' the longest kept row.
    """
    if attention_mask is not None:
        keep = keep & attention_mask.bool()
    lengths = keep.sum(1)  # (B,)
    new_length = int(lengths.max())
    rows, columns = keep.nonzero(as_tuple=True)  # kept tokens in reading order
    rank = keep.long().cumsum(1)[rows, columns] - 1  # index of each kept token within its row
    target = rank + (new_length - lengths[rows] if padding_side == "left" else 0)

    new_mask = torch.zeros(keep.shape[0], new_length, dtype=torch.long, device=keep.device)
    new_mask[rows, target] = 1
    if attention_mask is not None:
        new_mask = new_mask.to(attention_mask.dtype)
    gathered = {}
    for name, value in sequences.items():
        out = value.new_full((*value.shape[:-2], keep.shape[0], new_length), pad_values[name])
        out[..., rows, target] = value[..., rows, columns]
        gathered[name] = out
    return new_mask, gathered


__all__ = ["PrunedInputs", "PruningMixin", "batch_padding_side", "check_placeholder_rows", "placeholder_keep_mask", "prune_batch"]
