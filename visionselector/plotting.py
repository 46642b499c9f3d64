"""Pictures of which merged visual tokens a VisionSelector keeps: dropped tokens dimmed, kept ones outlined.

A merged token covers `patch_size * merge_size` px square of the image as the processor resized it (28 x 28 px
for Qwen2.5-VL), and, for video, `temporal_patch_size` consecutive frames. Merged tokens are numbered in raster
order (frame, row, column), as `kept_indices` numbers them.

    selection = model.select_visual_tokens(**vision_inputs, retention_ratio=0.2)
    draw_selection(selection, inputs["image_grid_thw"], images=[image])[0].save("kept.png")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

KEPT_OUTLINE = (255, 196, 0)


def _as_image(frame) -> Image.Image:
    if isinstance(frame, Image.Image):
        return frame.convert("RGB")
    array = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.dtype != np.uint8:
        array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).convert("RGB")


def _frame_panel(frame: Image.Image, kept: np.ndarray, rows: int, columns: int, cell: int, dim: float, width: int) -> Image.Image:
    """One frame at the processor's size with the cells not in the boolean `(rows, columns)` `kept` dimmed."""
    frame = frame.resize((columns * cell, rows * cell), Image.BICUBIC)
    pixels = np.asarray(frame, dtype=np.float32)
    shade = np.where(kept, 1.0, dim).repeat(cell, axis=0).repeat(cell, axis=1)  # (rows * cell, columns * cell)
    panel = Image.fromarray((pixels * shade[..., None]).astype(np.uint8))
    draw = ImageDraw.Draw(panel)
    for row, column in zip(*np.nonzero(kept)):
        x, y = int(column) * cell, int(row) * cell
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=KEPT_OUTLINE, width=width)
    return panel


def draw_kept_tokens(
    image,
    kept_indices,
    grid_thw,
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    dim: float = 0.3,
    outline_width: int = 2,
) -> Image.Image:
    """The image (or one panel per merged frame of a video) with its dropped merged tokens dimmed.

    Args:
        image (`PIL.Image.Image`, array or tensor, or a sequence of them for a video): the item as given to the
            processor; it is resized to the processor's size `grid_thw[1:] * patch_size`. A video's frames are
            those the processor received; merged frame i is drawn from frame `i * temporal_patch_size`.
        kept_indices (`torch.LongTensor` or sequence of `int`): the item's kept merged tokens, in raster order.
        grid_thw (`torch.LongTensor` or sequence of 3 `int`): the item's row of `image_grid_thw` or
            `video_grid_thw`, in patches.
        patch_size, merge_size, temporal_patch_size (`int`): the vision config's values (Qwen2.5-VL: 14, 2, 2).
        dim (`float`): brightness of dropped tokens, in [0, 1].
        outline_width (`int`): width in px of the outline around kept tokens.

    Returns:
        `PIL.Image.Image`: one image; for a video, its merged frames side by side, 4 px apart.
    """
    t, h, w = (int(v) for v in (grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else grid_thw))
    if h % merge_size or w % merge_size:
        raise ValueError(f"grid_thw {[t, h, w]} is not divisible by merge_size={merge_size}.")
    if not 0.0 <= dim <= 1.0:
        raise ValueError(f"`dim` must be in [0, 1], got {dim}.")
    rows, columns = h // merge_size, w // merge_size
    kept = torch.as_tensor(kept_indices, dtype=torch.long).flatten().cpu()
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= t * rows * columns):
        raise ValueError(f"kept_indices must lie in [0, {t * rows * columns}) for grid_thw {[t, h, w]}.")
    mask = np.zeros(t * rows * columns, dtype=bool)
    mask[kept.numpy()] = True
    mask = mask.reshape(t, rows, columns)

    is_video = not isinstance(image, Image.Image) and (
        isinstance(image, (list, tuple)) or np.asarray(image).ndim == 4
    )
    frames = list(image) if is_video else [image]
    if not is_video and t != 1:
        raise ValueError(f"A single image has grid_thw with t == 1, got {[t, h, w]}; pass a video's frames.")
    cell = patch_size * merge_size
    panels = [
        _frame_panel(_as_image(frames[min(i * temporal_patch_size, len(frames) - 1)]), mask[i], rows, columns, cell, dim, outline_width)
        for i in range(t)
    ]
    return tile(panels, columns=len(panels))


def draw_selection(selection, image_grid_thw=None, video_grid_thw=None, *, images=(), videos=(), **kwargs) -> list[Image.Image]:
    """`draw_kept_tokens` for every item of a [`VisualTokenSelection`]: the images, then the videos.

    Args:
        selection: what `model.select_visual_tokens(...)` returned (or any object with `kept_indices`), or a
            list of kept indices per item.
        image_grid_thw, video_grid_thw (`torch.LongTensor` of shape `(items, 3)`): the processor's grids.
        images, videos: the items as given to the processor, in the same order.
        **kwargs: passed to `draw_kept_tokens`.
    """
    kept = getattr(selection, "kept_indices", selection)
    grids = [] if image_grid_thw is None or not len(images) else list(image_grid_thw)
    grids += [] if video_grid_thw is None or not len(videos) else list(video_grid_thw)
    items = list(images) + list(videos)
    if not (len(kept) == len(grids) == len(items)):
        raise ValueError(f"Got {len(kept)} selected items, {len(grids)} grid rows and {len(items)} images/videos.")
    return [draw_kept_tokens(item, index, grid, **kwargs) for item, index, grid in zip(items, kept, grids)]


def tile(panels: Sequence[Image.Image], columns: int | None = None, gap: int = 4, background=(255, 255, 255)) -> Image.Image:
    """Panels on a grid of `columns` (default: all in one row), `gap` px apart, top-left aligned."""
    if not panels:
        raise ValueError("`tile` needs at least one panel.")
    columns = len(panels) if columns is None else max(1, columns)
    rows = -(-len(panels) // columns)
    cell_w = max(panel.width for panel in panels)
    cell_h = max(panel.height for panel in panels)
    canvas = Image.new("RGB", (columns * cell_w + (columns - 1) * gap, rows * cell_h + (rows - 1) * gap), background)
    for i, panel in enumerate(panels):
        canvas.paste(panel, ((i % columns) * (cell_w + gap), (i // columns) * (cell_h + gap)))
    return canvas


def with_caption(panel: Image.Image, text: str, height: int = 16, background=(255, 255, 255)) -> Image.Image:
    """The panel under a strip of `height` px holding `text` in PIL's default font."""
    from PIL import ImageFont

    canvas = Image.new("RGB", (panel.width, panel.height + height), background)
    canvas.paste(panel, (0, height))
    ImageDraw.Draw(canvas).text((2, 2), text, fill=(0, 0, 0), font=ImageFont.load_default())
    return canvas


__all__ = ["draw_kept_tokens", "draw_selection", "tile", "with_caption"]
