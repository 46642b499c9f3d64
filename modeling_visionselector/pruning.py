"""Pruning a padded batch to the tokens it keeps: the gather behind pruned prefill.

B is the batch size, L the original and L' the pruned sequence length.
"""

from __future__ import annotations

import torch


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
