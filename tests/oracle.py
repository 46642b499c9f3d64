"""An independent reference for pruned inference, built only from the stock Qwen2.5-VL.

For one sample (batch of one, no padding): take the stock visual features and the stock `get_rope_index`
positions, keep the visual tokens a selection names, and run the stock model on `inputs_embeds` of that
shorter sequence. Nothing here uses VisionSelector code.
"""

from __future__ import annotations

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


@torch.no_grad()
def greedy_tokens(stock, embeds, positions, max_new_tokens: int) -> list[int]:
    """Greedy continuation by re-running the whole pruned sequence each step (no cache), stopping at eos."""
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


def _items_per_row(input_ids, token_id: int) -> list[int]:
    """How many placeholder runs (images or videos) each row holds."""
    starts = torch.ones_like(input_ids, dtype=torch.bool)
    starts[:, 1:] = input_ids[:, 1:] != input_ids[:, :-1]
    return ((input_ids == token_id) & starts).sum(1).tolist()


def unbatch(inputs, config) -> list[dict]:
    """The samples of a padded processor batch, each as an unpadded batch of one with its own pixels and grids."""
    samples = []
    images_per_row = _items_per_row(inputs["input_ids"], config.image_token_id)
    videos_per_row = _items_per_row(inputs["input_ids"], config.video_token_id)
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
    images_per_row = _items_per_row(inputs["input_ids"], config.image_token_id)
    videos_per_row = _items_per_row(inputs["input_ids"], config.video_token_id)
    num_images = sum(images_per_row)
    image_kept, video_kept = list(kept_indices[:num_images]), list(kept_indices[num_images:])
    per_sample = []
    for n_images, n_videos in zip(images_per_row, videos_per_row):
        per_sample.append(image_kept[:n_images] + video_kept[:n_videos])
        image_kept, video_kept = image_kept[n_images:], video_kept[n_videos:]
    return per_sample
