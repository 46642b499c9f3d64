"""Independent references for pruned inference, built only from the stock model. Nothing here uses VisionSelector code.

- The kept-embeddings oracle (Qwen2.5-VL; one sample, no padding): take the stock visual features and the stock
  `get_rope_index` positions, keep the visual tokens a selection names, and run the stock model on `inputs_embeds`
  of that shorter sequence.
- The masked-sequence oracle (attention-only families, padded batches): the full sequence with the dropped
  placeholders masked out of the attention mask, at the stock positions (see below).
- The kept-sequence oracle (every family, Qwen3.5's recurrent layers included): each sample alone, as the stock
  model's embeddings of only the kept tokens at their full-sequence positions, one row, no padding (see the end).
"""

from __future__ import annotations

import inspect

import torch


def sample_features(stock, inputs) -> list[torch.Tensor]:
    """Stock merged features of every image, then every video, of `inputs` (one sample)."""
    features = []
    if inputs.get("pixel_values") is not None:
        features += list(stock.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output)
    if inputs.get("pixel_values_videos") is not None:
        features += list(
            stock.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"]).pooler_output
        )
    return features


@torch.no_grad()
def pruned_embeddings(stock, inputs, kept_indices: list[torch.Tensor]):
    """`inputs_embeds` `(1, L', D)` and positions `(3, 1, L')` of one sample with only the kept visual tokens."""
    input_ids = inputs["input_ids"]
    assert input_ids.shape[0] == 1 and bool(inputs["attention_mask"].all()), "the oracle takes one unpadded sample"
    config = stock.config
    features = sample_features(stock, inputs)
    num_images = 0 if inputs.get("image_grid_thw") is None else inputs["image_grid_thw"].shape[0]
    positions, _ = stock.model.get_rope_index(
        input_ids,
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
    )
    embeds = stock.get_input_embeddings()(input_ids)[0].clone()  # (L, D)
    # Walk the sequence: each placeholder run belongs to the next image (or video) in order.
    next_item = {config.image_token_id: 0, config.video_token_id: num_images}
    kept_sets = [set(kept.tolist()) for kept in kept_indices]
    keep, token_in_item, item = [], 0, None
    previous = None
    for j, token in enumerate(input_ids[0].tolist()):
        if token in next_item:
            if token != previous:
                item, token_in_item = next_item[token], 0
                next_item[token] += 1
            if token_in_item in kept_sets[item]:
                embeds[j] = features[item][token_in_item]
                keep.append(j)
            token_in_item += 1
        else:
            keep.append(j)
        previous = token
    keep = torch.tensor(keep)
    return embeds[keep][None], positions[:, :, keep]


@torch.no_grad()
def prefill_logits(stock, embeds, positions) -> torch.Tensor:
    """Stock logits `(1, L', V)` for the pruned sample."""
    return stock(inputs_embeds=embeds, position_ids=positions).logits


# Where the stock model puts the tokens after the prompt depends on the path, in every release 5.20 - 5.24:
# - `generate` extends the prompt's positions by one per step: the last prompt position + 1, + 2, ...;
# - a forward with the prompt, then decoding steps with its cache and no positions, use `rope_deltas` from
#   `get_rope_index`: the largest position of the whole prompt + 1, + 2, ... A late frame of a long video can hold
#   that largest (time) position, beyond the text after the video, so the two differ there.


def largest_prompt_position(stock, inputs) -> int:
    """The largest rotary position of one sample's whole prompt (where a forward + cached decode continues from)."""
    return int(stock_positions(stock, inputs).max())


@torch.no_grad()
def greedy_tokens(stock, embeds, positions, max_new_tokens: int) -> list[int]:
    """Greedy continuation by re-running the whole pruned sequence each step (no cache), stopping at eos; the new
    tokens at the positions `generate` gives them (the last one + 1, ...)."""
    eos = stock.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    tokens = []
    for _ in range(max_new_tokens):
        token = int(prefill_logits(stock, embeds, positions)[0, -1].argmax())
        tokens.append(token)
        if token in eos:
            break
        embeds = torch.cat([embeds, stock.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
        positions = torch.cat([positions, positions[:, :, -1:] + 1], dim=2)
    return tokens


def _items_per_row(inputs, config, token_id: int, grid_key: str) -> list[int]:
    """How many images (or videos) each row holds: the next grid rows whose merged tokens (t * h * w / merge**2) add
    up to the row's placeholders. (Counting placeholder runs would not do: Qwen3-VL and Qwen3.5 split a video into one
    run per frame.)"""
    grids = inputs.get(grid_key)
    sizes = [] if grids is None else [t * h * w // config.vision_config.spatial_merge_size**2 for t, h, w in grids.tolist()]
    counts, item = [], 0
    for placeholders in (inputs["input_ids"] == token_id).sum(1).tolist():
        start = item
        while placeholders > 0:
            placeholders -= sizes[item]
            item += 1
        assert placeholders == 0, "placeholders do not match the grids"
        counts.append(item - start)
    return counts


def unbatch(inputs, config) -> list[dict]:
    """The samples of a padded processor batch, each as an unpadded batch of one with its own pixels and grids."""
    samples = []
    images_per_row = _items_per_row(inputs, config, config.image_token_id, "image_grid_thw")
    videos_per_row = _items_per_row(inputs, config, config.video_token_id, "video_grid_thw")
    cursors = {"image": [0, 0], "video": [0, 0]}  # next item, next pixel row
    for row, (n_images, n_videos) in enumerate(zip(images_per_row, videos_per_row)):
        real = inputs["attention_mask"][row].bool()
        sample = {key: inputs[key][row][real][None] for key in ("input_ids", "attention_mask", "mm_token_type_ids")}
        for kind, count, pixels_key, grid_key in (
            ("image", n_images, "pixel_values", "image_grid_thw"),
            ("video", n_videos, "pixel_values_videos", "video_grid_thw"),
        ):
            if not count:
                continue
            item, pixel_row = cursors[kind]
            grid = inputs[grid_key][item : item + count]
            patches = int(grid.prod(-1).sum())
            sample[grid_key] = grid
            sample[pixels_key] = inputs[pixels_key][pixel_row : pixel_row + patches]
            if kind == "video" and inputs.get("second_per_grid_ts") is not None:
                sample["second_per_grid_ts"] = inputs["second_per_grid_ts"][item : item + count]
            cursors[kind] = [item + count, pixel_row + patches]
        samples.append(sample)
    return samples


def split_kept_indices(inputs, config, kept_indices: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Per-sample kept indices, from the batch's (images of all samples, then videos of all samples)."""
    images_per_row = _items_per_row(inputs, config, config.image_token_id, "image_grid_thw")
    videos_per_row = _items_per_row(inputs, config, config.video_token_id, "video_grid_thw")
    num_images = sum(images_per_row)
    image_kept, video_kept = list(kept_indices[:num_images]), list(kept_indices[num_images:])
    per_sample = []
    for n_images, n_videos in zip(images_per_row, videos_per_row):
        per_sample.append(image_kept[:n_images] + video_kept[:n_videos])
        image_kept, video_kept = image_kept[n_images:], video_kept[n_videos:]
    return per_sample


# ------------------------------------------------------------------ the masked-sequence oracle (any Qwen-VL family)
#
# The full sequence, with the placeholders of the dropped visual tokens masked out of the attention mask, the stock
# positions of the full sequence and the stock features: at every kept position the stock model then computes
# exactly what the pruned model computes there. It works for padded batches and every family (Qwen3-VL's deepstack
# features included), and needs nothing but the stock model and the kept indices.


def masked_attention(inputs, config, kept_indices: list[torch.Tensor]) -> torch.Tensor:
    """`(B, L)` attention mask of `inputs` with 0 at the placeholders of dropped visual tokens.

    `kept_indices` are per item: every image of the batch in reading order, then every video. Each image (video)
    owns the next `t * h * w / merge**2` image (video) placeholders in reading order over (row, position).
    """
    merge = config.vision_config.spatial_merge_size
    mask = inputs["attention_mask"].clone()
    grids = [g for key in ("image_grid_thw", "video_grid_thw") if inputs.get(key) is not None for g in inputs[key].tolist()]
    num_images = 0 if inputs.get("image_grid_thw") is None else len(inputs["image_grid_thw"])
    owners = {config.image_token_id: iter(range(num_images)), config.video_token_id: iter(range(num_images, len(grids)))}
    left = {config.image_token_id: 0, config.video_token_id: 0}  # placeholders the current item still owns
    current = {}
    for row in range(inputs["input_ids"].shape[0]):
        for column, token in enumerate(inputs["input_ids"][row].tolist()):
            if token not in owners:
                continue
            if left[token] == 0:
                item = next(owners[token])
                t, h, w = grids[item]
                current[token] = [item, 0, set(kept_indices[item].tolist())]
                left[token] = t * h * w // merge**2
            item, index, kept = current[token]
            if index not in kept:
                mask[row, column] = 0
            current[token][1] += 1
            left[token] -= 1
    return mask


def stock_positions(stock, inputs) -> torch.Tensor:
    """`(3, B, L)` stock rotary positions of the full sequence (`second_per_grid_ts` where the family has it)."""
    extra = {}
    if "second_per_grid_ts" in inspect.signature(stock.model.get_rope_index).parameters:
        extra["second_per_grid_ts"] = inputs.get("second_per_grid_ts")
    positions, _ = stock.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        attention_mask=inputs["attention_mask"],
        **extra,
    )
    return positions


@torch.no_grad()
def masked_logits(
    stock, inputs, kept_indices, extra_tokens: torch.Tensor | None = None, after_largest: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stock logits `(B, L [+ n], V)` of the full sequence with the dropped placeholders masked, and that mask.

    `extra_tokens` `(B, n)` are appended after the prompt (text), at the positions `generate` gives them, or with
    `after_largest` where a forward + cached decode puts them (see above).
    """
    mask = masked_attention(inputs, stock.config, kept_indices)
    positions = stock_positions(stock, inputs)
    input_ids = inputs["input_ids"]
    if extra_tokens is not None and extra_tokens.shape[1]:
        n = extra_tokens.shape[1]
        if after_largest:
            start = positions.masked_fill(inputs["attention_mask"][None] == 0, 0).amax(dim=(0, 2))  # (B,)
        else:
            start = positions[:, :, -1].amax(dim=0)  # (B,), left padding: the last column is real
        input_ids = torch.cat([input_ids, extra_tokens], dim=1)
        mask = torch.cat([mask, torch.ones_like(extra_tokens)], dim=1)
        steps = start[None, :, None] + torch.arange(1, n + 1)[None, None, :]
        positions = torch.cat([positions, steps.expand(3, -1, -1)], dim=2)
    visual = {key: inputs[key] for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                                           "second_per_grid_ts") if inputs.get(key) is not None}
    mm_token_type_ids = torch.zeros_like(input_ids)
    mm_token_type_ids[:, : inputs["mm_token_type_ids"].shape[1]] = inputs["mm_token_type_ids"]
    out = stock(input_ids=input_ids, attention_mask=mask, position_ids=positions, mm_token_type_ids=mm_token_type_ids,
                use_cache=False, **visual)
    return out.logits, mask


@torch.no_grad()
def masked_greedy(stock, inputs, kept_indices, max_new_tokens: int) -> list[list[int]]:
    """Greedy continuation of every row by re-running the whole masked sequence each step (no cache); rows stop
    after their eos."""
    eos = stock.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    batch = inputs["input_ids"].shape[0]
    tokens = torch.zeros(batch, 0, dtype=torch.long)
    for _ in range(max_new_tokens):
        logits, _ = masked_logits(stock, inputs, kept_indices, tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    rows = []
    for row in tokens.tolist():
        cut = next((i for i, token in enumerate(row) if token in eos), None)
        rows.append(row if cut is None else row[: cut + 1])
    return rows


# ------------------------------------------------------------------ the kept-sequence oracle (every family)
#
# Masking a token is not removing it where the language model has recurrent layers (Qwen3.5's Gated DeltaNet): a
# recurrent layer zeroes a masked position's input but still steps through it (its state decays, its causal
# convolution window shifts), so the masked-sequence oracle above does not describe pruning there. What pruning
# promises, in every family, is this: each sample is the stock model run on ONLY the kept tokens' embeddings (the
# stock features at the kept placeholders, text embeddings elsewhere) at their full-sequence 3D positions, as a
# single row with no padding. For Qwen3-VL the kept tokens' deepstack features go with them.


@torch.no_grad()
def kept_sequence(stock, sample, kept_indices: list[torch.Tensor]) -> dict:
    """The stock inputs of one unpadded sample reduced to its kept tokens: `inputs_embeds` `(1, L', D)`,
    `position_ids` `(3, 1, L')` (the full sequence's, at the kept columns) and, for a family with deepstack features,
    `visual_pos_masks` `(1, L')` and `deepstack_visual_embeds` (per layer, `(kept visual tokens, D)`)."""
    input_ids = sample["input_ids"]
    assert input_ids.shape[0] == 1 and bool(sample["attention_mask"].all()), "the oracle takes one unpadded sample"
    config = stock.config
    keep = masked_attention(sample, config, kept_indices)[0].bool()  # (L,): False at dropped placeholders
    embeds = stock.get_input_embeddings()(input_ids)  # (1, L, D)
    visual = torch.zeros_like(input_ids, dtype=torch.bool)
    deepstack = None
    for kind, token_id, pixels, grid in (
        ("image", config.image_token_id, "pixel_values", "image_grid_thw"),
        ("video", config.video_token_id, "pixel_values_videos", "video_grid_thw"),
    ):
        if sample.get(pixels) is None:
            continue
        encoded = getattr(stock.model, f"get_{kind}_features")(sample[pixels], sample[grid], return_dict=True)
        placeholders = input_ids == token_id  # the stock scatter: features in reading order
        embeds[placeholders] = torch.cat(encoded.pooler_output).to(embeds.dtype)
        visual |= placeholders
        layers = getattr(encoded, "deepstack_features", None)
        if layers is not None:  # per layer, this kind's features at its placeholders, in sequence order
            parts = [torch.zeros_like(embeds[0]) for _ in layers] if deepstack is None else deepstack
            for part, layer in zip(parts, layers):
                part[placeholders[0]] = torch.cat(layer).to(embeds.dtype)
            deepstack = parts
    inputs = {"inputs_embeds": embeds[:, keep], "position_ids": stock_positions(stock, sample)[:, :, keep]}
    if deepstack is not None:
        kept_visual = visual[0] & keep
        inputs["visual_pos_masks"] = kept_visual[keep][None]
        inputs["deepstack_visual_embeds"] = [layer[kept_visual] for layer in deepstack]
    return inputs


@torch.no_grad()
def kept_sequence_logits(stock, inputs: dict) -> torch.Tensor:
    """Stock logits `(1, L', V)` of a `kept_sequence`: the stock language model on it, then the stock LM head."""
    hidden = stock.model.language_model(**inputs, use_cache=False).last_hidden_state
    return stock.lm_head(hidden)


@torch.no_grad()
def kept_sequence_greedy(stock, inputs: dict, max_new_tokens: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy continuation of a `kept_sequence` by re-running the whole sequence each step (no cache), stopping at
    eos; each new token at the last position + 1 (where `generate` puts it). Returns the tokens and each step's
    logits `(V,)`."""
    eos = stock.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    inputs = dict(inputs)
    tokens, step_logits = [], []
    for _ in range(max_new_tokens):
        logits = kept_sequence_logits(stock, inputs)[0, -1]
        step_logits.append(logits)
        token = int(logits.argmax())
        tokens.append(token)
        if token in eos:
            break
        inputs["inputs_embeds"] = torch.cat([inputs["inputs_embeds"], stock.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
        inputs["position_ids"] = torch.cat([inputs["position_ids"], inputs["position_ids"][:, :, -1:] + 1], dim=2)
        if "visual_pos_masks" in inputs:
            inputs["visual_pos_masks"] = torch.cat([inputs["visual_pos_masks"], torch.zeros(1, 1, dtype=torch.bool)], dim=1)
    return tokens, step_logits
