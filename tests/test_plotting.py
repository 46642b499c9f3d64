"""Pictures of kept tokens: dropped 28 x 28 px cells dimmed, kept ones outlined, one panel per merged frame."""

import numpy as np
import pytest
import torch
from PIL import Image

from visionselector.plotting import KEPT_OUTLINE, draw_kept_tokens, draw_selection, tile, with_caption


def _flat_image(value=200, size=(112, 84)):
    return Image.new("RGB", size, (value, value, value))


def test_dropped_cells_dimmed_kept_cells_outlined():
    # 112 x 84 px = 8 x 6 patches = a 4 x 3 grid of merged tokens (w x h)
    panel = draw_kept_tokens(_flat_image(), kept_indices=[0, 5], grid_thw=(1, 6, 8), dim=0.25)
    assert panel.size == (112, 84)
    pixels = np.asarray(panel)
    # kept token 0 (row 0, column 0): outline on its border, untouched inside
    assert tuple(pixels[0, 0]) == KEPT_OUTLINE
    assert tuple(pixels[14, 14]) == (200, 200, 200)
    # kept token 5 is row 1, column 1 (4 tokens per row)
    assert tuple(pixels[28 + 14, 28 + 14]) == (200, 200, 200)
    # dropped token 1 (row 0, column 1): dimmed
    assert tuple(pixels[14, 28 + 14]) == (50, 50, 50)


def test_image_is_resized_to_the_processor_grid():
    panel = draw_kept_tokens(_flat_image(size=(300, 250)), [0], torch.tensor([1, 4, 6]))
    assert panel.size == (6 * 14, 4 * 14)


def test_video_draws_one_panel_per_merged_frame():
    frames = np.zeros((4, 56, 56, 3), dtype=np.uint8)
    frames[2:] = 255  # merged frame 1 is drawn from frame 2
    panel = draw_kept_tokens(frames, kept_indices=[4 + 3], grid_thw=(2, 4, 4), dim=0.5)
    assert panel.size == (56 + 4 + 56, 56)
    pixels = np.asarray(panel)
    assert tuple(pixels[10, 10]) == (0, 0, 0)  # frame 0, dropped, black
    assert tuple(pixels[10, 60 + 10]) == (127, 127, 127)  # frame 1, token 0 dropped: dimmed white
    assert tuple(pixels[28 + 14, 60 + 28 + 14]) == (255, 255, 255)  # frame 1, token 3 kept


def test_accepts_tensors_and_channel_first_arrays():
    chw = torch.full((3, 28, 28), 0.5)
    panel = draw_kept_tokens(chw, torch.tensor([0]), [1, 2, 2])
    assert panel.size == (28, 28)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kept_indices=[12], grid_thw=(1, 6, 8)), "kept_indices"),
        (dict(kept_indices=[-1], grid_thw=(1, 6, 8)), "kept_indices"),
        (dict(kept_indices=[0], grid_thw=(2, 6, 8)), "single image"),
        (dict(kept_indices=[0], grid_thw=(1, 5, 8)), "divisible"),
        (dict(kept_indices=[0], grid_thw=(1, 6, 8), dim=1.5), "dim"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        draw_kept_tokens(_flat_image(), **kwargs)


def test_draw_selection_with_a_model(model, make_inputs):
    inputs = make_inputs([[("image", 56, 84), ("video", 4, 56, 56)]])
    selection = model.select_visual_tokens(
        inputs["pixel_values"], inputs["image_grid_thw"], inputs["pixel_values_videos"], inputs["video_grid_thw"],
        retention_ratio=0.5,
    )
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8))
    video = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    panels = draw_selection(selection, inputs["image_grid_thw"], inputs["video_grid_thw"], images=[image], videos=[video])
    assert [panel.size for panel in panels] == [(84, 56), (56 + 4 + 56, 56)]
    with pytest.raises(ValueError, match="selected items"):
        draw_selection(selection, inputs["image_grid_thw"], images=[image])


def test_tile_and_caption():
    panels = [_flat_image(size=(10, 20)), _flat_image(size=(30, 10)), _flat_image(size=(10, 10))]
    assert tile(panels).size == (3 * 30 + 2 * 4, 20)
    assert tile(panels, columns=2, gap=0).size == (60, 40)
    assert with_caption(panels[0], "x").size == (10, 36)
    with pytest.raises(ValueError):
        tile([])
