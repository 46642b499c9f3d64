"""Which tokens the scorer's language-modelling loss covers: the labels of a collated batch.

TRL's vision collator keeps the image/video placeholders and the vision start/end tokens in the labels, and masks
assistant turns only through `{% generation %}` markers of the chat template, which the Qwen templates lack (TRL
ships a marked copy of the official Qwen2.5-VL template; other Qwen templates have none). `VisionSelectorCollator`
wraps any collator and sets the labels to -100 at the vision tokens and, for `messages` data whose template TRL cannot
mark, outside the assistant turns, found by the ChatML turn boundaries `<|im_start|>assistant\\n ... <|im_end|>`.
The labels are final when the batch leaves the collator, so `Trainer` counts the right tokens for
`num_items_in_batch`.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
ASSISTANT_HEADER = "<|im_start|>assistant\n"
END_OF_TURN = "<|im_end|>"


def assistant_turn_mask(input_ids: torch.LongTensor, header_ids: list[int], end_id: int) -> torch.BoolTensor:
    """`(B, L)` mask of the assistant turns' tokens: after each `header_ids` run, up to and including the next `end_id`.

    A turn cut short by truncation runs to the end of the row.
    """
    batch, length = input_ids.shape
    width = len(header_ids)
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    if length < width:
        return mask
    header = torch.as_tensor(header_ids, device=input_ids.device)
    starts = (input_ids.unfold(1, width, 1) == header).all(-1)  # (B, L - width + 1): a header begins here
    for row in range(batch):
        ends = (input_ids[row] == end_id).nonzero().flatten()
        for begin in (starts[row].nonzero().flatten() + width).tolist():
            later = ends[ends >= begin]
            mask[row, begin : int(later[0]) + 1 if len(later) else length] = True
    return mask


class VisionSelectorCollator:
    """Wraps a collator: labels -100 at `ignored_token_ids` and, with `header_ids`, outside the assistant turns.

    Args:
        collator (`Callable`): the collator whose batches have `input_ids` and `labels`.
        ignored_token_ids (`list[int]`): never supervised (the vision placeholders and their start/end tokens).
        header_ids (`list[int]`, *optional*): the token ids of `<|im_start|>assistant\\n`; given, only the assistant
            turns are supervised.
        end_id (`int`, *optional*): the id of `<|im_end|>`; needed with `header_ids`.
    """

    def __init__(self, collator, ignored_token_ids: list[int], header_ids: list[int] | None = None, end_id: int | None = None):
        if header_ids is not None and end_id is None:
            raise ValueError("`end_id` is needed with `header_ids`.")
        self.collator = collator
        self.ignored_token_ids = torch.tensor(sorted(ignored_token_ids))
        self.header_ids = header_ids
        self.end_id = end_id

    def __call__(self, examples):
        try:
            batch = self.collator(examples)
        except OSError as error:  # PIL's "image file is truncated" names neither the file nor the example
            raise _unreadable_image_error(examples, error) or error

        labels = batch.get("labels")
        if labels is None:
            return batch
        input_ids = batch["input_ids"]
        drop = torch.isin(input_ids, self.ignored_token_ids.to(input_ids.device))
        if self.header_ids is not None:
            drop |= ~assistant_turn_mask(input_ids, self.header_ids, self.end_id)
        batch["labels"] = labels.masked_fill(drop, IGNORE_INDEX)
        return batch


def _unreadable_image_error(examples, error: OSError) -> ValueError | None:
    """A `ValueError` naming the first image of `examples` that cannot be decoded, or None if all of them can."""
    for row, example in enumerate(examples):
        images = example.get("images") if isinstance(example, dict) else None
        for index, image in enumerate(images or []):
            if not hasattr(image, "load"):
                continue
            try:
                image.load()
            except OSError as image_error:
                where = getattr(image, "filename", "") or "an in-memory image"
                return ValueError(
                    f"Image {index} of example {row} of the batch ({where}) cannot be read: {image_error}. Fix or drop "
                    "that example."
                )
    return None


def chatml_turn_ids(tokenizer) -> tuple[list[int], int]:
    """The ids of `<|im_start|>assistant\\n` and of `<|im_end|>`, or a `ValueError` if the tokenizer lacks ChatML."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in ("<|im_start|>", END_OF_TURN) if token not in vocab]
    if missing:
        raise ValueError(
            f"`assistant_only_loss` needs the assistant turns: the chat template has no `{{% generation %}}` markers "
            f"and the tokenizer has no ChatML tokens {missing} to find them by. Use a template with generation "
            "markers, or train on the whole sequence with `assistant_only_loss=False`."
        )
    return tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False), vocab[END_OF_TURN]


__all__ = ["VisionSelectorCollator", "assistant_turn_mask", "chatml_turn_ids"]
