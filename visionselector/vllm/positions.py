"""M-RoPE positions of a pruned Qwen2.5-VL prompt, and the kept tokens' offsets carried with their embeddings.

The stock `get_rope_index` (transformers 5.x) numbers a prompt like this: text tokens count up by one on all three
rows; an item (image or video) of merged grid (t, h, w) starting at position p gives its token at (i, j, l) the
position (p + T[i], p + j, p + l), where T[i] = int(i * time_interval) is the item's temporal position table
(all zeros for an image); the text after the item continues at p + max(h, w). transformers' `generate` continues
after the last prompt position (+ 1 per new token), so generated tokens are numbered exactly like more text at the
end of the prompt: under vLLM's Model Runner V2, a request resumed after preemption re-prefills its prompt plus the
tokens it generated through `get_mrope_input_positions`, and those tokens get the positions they were decoded at.
(A forward with a cache, then decoding, continues after the prompt's largest position instead; a late frame of a
long video can hold that one, beyond the text after the video. That rule would give a re-prefilled generated token
another position than the one it was decoded at, since the worker cannot tell prompt from generated tokens.)

A pruned prompt keeps k = max(1, int(r * n)) of an item's n placeholders. Which k is known only after the vision
encoder and the scorer ran, but everything else is not:

- text positions depend only on the grids, so they are exact up front (`prompt_positions`), for the whole prompt,
  whatever part of it a prefix-cache hit or a chunked prefill skips;
- where generation continues (after the last prompt token, which is text: see `prompt_positions`) too;
- each kept visual placeholder is given its item's anchor p on all three rows up front; the kept token's own
  offset (T[i], j, l) from p is computed right after the selection (`kept_token_offsets`) and travels with its
  embedding (`encode_offsets`), through vLLM's encoder cache, to the step that feeds the token to the language
  model, where the model adds it to the anchor (`decode_offsets`).

Everything here is plain integer arithmetic on small tensors; nothing imports vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# An offset is written in base 256 over OFFSET_DIGITS channels: every digit is an integer in [0, 255], exact in
# float16, bfloat16 and float32, so the offsets survive the embedding dtype bit for bit.
DIGIT_BASE = 256
OFFSET_DIGITS = 3
NUM_OFFSET_CHANNELS = 3 * OFFSET_DIGITS
MAX_OFFSET = DIGIT_BASE**OFFSET_DIGITS - 1


@dataclass(frozen=True)
class PrunedItem:
    """One image or video of a prompt, as the prompt holds it after pruning.

    Args:
        offset (`int`): index of the item's first placeholder in the prompt.
        num_kept (`int`): how many placeholders the prompt holds for it (k).
        grid (`tuple[int, int, int]`): its merged grid (t, h, w): t temporal patches, h x w merged tokens each.
        last_temporal_position (`int`): T[t - 1], the temporal position of its last frame group (0 for an image).
    """

    offset: int
    num_kept: int
    grid: tuple[int, int, int]
    last_temporal_position: int = 0


def temporal_positions(num_frames: int, time_interval: float | torch.Tensor) -> torch.LongTensor:
    """`(num_frames,)` temporal positions of an item, computed exactly as transformers' `get_vision_position_ids`.

    `time_interval` is `tokens_per_second * second_per_grid_ts[i]` for video i (with the processor's float32
    tensor, so the product rounds as it does in transformers) and 1 for an image.
    """
    return (torch.arange(num_frames) * time_interval).long()


def _walk(num_tokens: int, items: Sequence[PrunedItem]) -> tuple[list[torch.LongTensor], int, int]:
    """The positions of a pruned prompt in pieces, the next text position after it, and its largest position.

    The largest position is that of the full (unpruned) prompt: a dropped token of a video can hold it.
    """
    pieces = []
    position = 0  # the next text position
    largest = -1  # the largest position of the full (unpruned) prompt so far
    start = 0  # prompt index where the current text run starts
    for item in sorted(items, key=lambda item: item.offset):
        if item.offset < start:
            raise ValueError(f"Items overlap: one starts at prompt index {item.offset}, before index {start}.")
        text_length = item.offset - start
        pieces.append(torch.arange(position, position + text_length).expand(3, -1))
        position += text_length
        largest = max(largest, position - 1)
        _, height, width = item.grid
        pieces.append(torch.full((3, item.num_kept), position))
        largest = max(largest, position + max(item.last_temporal_position, height - 1, width - 1))
        position += max(height, width)
        start = item.offset + item.num_kept
    if start > num_tokens:
        raise ValueError(f"The placeholders end at prompt index {start}, past the prompt's {num_tokens} tokens.")
    pieces.append(torch.arange(position, position + num_tokens - start).expand(3, -1))
    position += num_tokens - start
    largest = max(largest, position - 1)
    return pieces, position, largest


def prompt_positions(num_tokens: int, items: Sequence[PrunedItem]) -> tuple[torch.LongTensor, int]:
    """Positions of a pruned prompt: exact for text, the item anchor for every kept visual placeholder.

    Args:
        num_tokens (`int`): length of the pruned prompt (under vLLM's Model Runner V2, of the prompt plus the tokens
            generated before a preemption: they are numbered like text, as they were when decoded).
        items (`Sequence[PrunedItem]`): its images and videos, in any order.

    Returns:
        `(torch.LongTensor of shape (3, num_tokens), int)`: the positions, and the M-RoPE delta (the position of
        generated token number `num_tokens + m` is `num_tokens + m + delta`, the last prompt position + 1 + m, as
        transformers' `generate` numbers them).
    """
    # A prompt that ends with placeholders would continue after its last kept token's own (t, h, w) position in
    # transformers, three different rows one delta cannot express: the processor refuses such prompts (here, in the
    # worker, an exception would end the engine for every request).
    pieces, next_position, _ = _walk(num_tokens, items)
    positions = torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)
    return positions, next_position - num_tokens


def largest_prompt_position(num_tokens: int, items: Sequence[PrunedItem]) -> int:
    """The largest rotary position of the full (unpruned) prompt that a pruned prompt stands for."""
    return _walk(num_tokens, items)[2]


def kept_token_offsets(
    kept_indices: torch.LongTensor, grid: tuple[int, int, int], item_temporal_positions: torch.LongTensor
) -> torch.LongTensor:
    """`(k, 3)` offsets (temporal, row, column) from the item anchor of the kept tokens.

    Args:
        kept_indices (`torch.LongTensor` of shape `(k,)`): indices into the item's merged tokens, raster order
            (frame group, row, column).
        grid (`tuple[int, int, int]`): the item's merged grid (t, h, w).
        item_temporal_positions (`torch.LongTensor` of shape `(t,)`, on `kept_indices`'s device): see
            `temporal_positions`.

    """
    _, height, width = grid
    frame = kept_indices // (height * width)
    row = kept_indices // width % height
    column = kept_indices % width
    return torch.stack([item_temporal_positions[frame], row, column], dim=1)


def check_offsets_fit(
    grid: tuple[int, int, int], item_temporal_positions: torch.LongTensor, max_position_embeddings: int
) -> None:
    """A `ValueError` if an item's position offsets from its anchor reach `max_position_embeddings` (or pass
    `MAX_OFFSET`, what `encode_offsets` carries). Called by the processor, where a `ValueError` refuses one request;
    in the worker it would end the engine for all of them.
    """
    _, height, width = grid
    largest = max(int(item_temporal_positions.max()), height - 1, width - 1)
    limit = min(max_position_embeddings - 1, MAX_OFFSET)
    if largest > limit:
        raise ValueError(
            f"An item of merged grid (t, h, w) = {tuple(grid)} spans {largest + 1} rotary positions (its last temporal "
            f"position is {int(item_temporal_positions.max())}); position offsets must lie in [0, {limit}] "
            f"(max_position_embeddings = {max_position_embeddings}). Sample fewer frames or at a higher fps, or use "
            "smaller images."
        )


def encode_offsets(offsets: torch.LongTensor, dtype: torch.dtype) -> torch.Tensor:
    """`(k, 3)` integer offsets in [0, MAX_OFFSET] -> `(k, NUM_OFFSET_CHANNELS)` base-256 digits in `dtype`."""
    powers = DIGIT_BASE ** torch.arange(OFFSET_DIGITS, device=offsets.device)  # (digits,)
    digits = offsets[:, :, None] // powers % DIGIT_BASE  # (k, 3, digits)
    return digits.reshape(offsets.shape[0], NUM_OFFSET_CHANNELS).to(dtype)


def decode_offsets(codes: torch.Tensor) -> torch.LongTensor:
    """Inverse of `encode_offsets`: `(k, NUM_OFFSET_CHANNELS)` digits -> `(k, 3)` offsets."""
    powers = DIGIT_BASE ** torch.arange(OFFSET_DIGITS, device=codes.device)
    digits = codes.round().long().reshape(codes.shape[0], 3, OFFSET_DIGITS)
    return (digits * powers).sum(-1)
