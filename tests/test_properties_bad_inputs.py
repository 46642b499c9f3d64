"""Property-based test of bad inputs: a valid processor batch, then one random change to its grid, its
pixels, its attention mask or its placeholder layout. Whatever the change, the model either runs and its logits equal
the stock-model oracle on the kept tokens (tests/oracle.py), or it raises a `ValueError` naming the argument that was
changed; never another exception. Hypothesis runs derandomized (the same cases on every run), bounded by
`max_examples`.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import build_inputs
from oracle import prefill_logits, pruned_embeddings, split_kept_indices, unbatch

SIDES = st.sampled_from([28, 56, 84])
SAMPLE = st.lists(st.tuples(st.just("image"), SIDES, SIDES), max_size=2)
BATCH = st.lists(SAMPLE, min_size=1, max_size=3).filter(lambda samples: any(samples))
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _grid(inputs, draw):
    grid = inputs["image_grid_thw"]
    kind = draw(st.sampled_from(["cell", "float", "list", "drop row", "extra row", "swap h w", "3-d", "flat"]))
    if kind == "cell":
        grid = grid.clone()
        item, dim = draw(st.integers(0, grid.shape[0] - 1)), draw(st.integers(0, 2))
        grid[item, dim] = draw(st.sampled_from([-2, -1, 0, 1, 2, 3, 4, 6, 8]))
    elif kind == "float":
        grid = grid.float()
    elif kind == "list":
        grid = grid.tolist()
    elif kind == "drop row":
        grid = grid[:-1]
    elif kind == "extra row":
        grid = torch.cat([grid, grid[-1:]])
    elif kind == "swap h w":
        grid = grid[:, [0, 2, 1]]
    elif kind == "3-d":
        grid = grid[None]
    else:
        grid = grid.flatten()
    return "image_grid_thw", {"image_grid_thw": grid}


def _pixels(inputs, draw):
    pixels = inputs["pixel_values"]
    kind = draw(st.sampled_from(["drop rows", "extra rows", "narrow", "wide", "empty", "integer", "3-d"]))
    rows = draw(st.integers(1, 8))
    pixels = {
        "drop rows": lambda: pixels[:-rows],
        "extra rows": lambda: torch.cat([pixels, pixels[:rows]]),
        "narrow": lambda: pixels[:, :-1],
        "wide": lambda: torch.cat([pixels, pixels[:, :1]], 1),
        "empty": lambda: pixels[:0],
        "integer": lambda: pixels.long(),
        "3-d": lambda: pixels[None],
    }[kind]()
    return "pixel_values", {"pixel_values": pixels}


def _mask(inputs, draw, image_token_id):
    mask = inputs["attention_mask"].clone()
    row = draw(st.integers(0, mask.shape[0] - 1))
    kind = draw(st.sampled_from(["zero row", "zero placeholders", "shorter", "longer", "value 2", "unchanged"]))
    if kind == "zero row":
        mask[row] = 0
    elif kind == "zero placeholders":
        placeholders = (inputs["input_ids"] == image_token_id).nonzero()
        if len(placeholders):
            r, c = placeholders[draw(st.integers(0, len(placeholders) - 1))].tolist()
            mask[r, c] = 0
    elif kind == "shorter":
        mask = mask[:, 1:]
    elif kind == "longer":
        mask = torch.cat([mask, mask[:, :1]], 1)
    elif kind == "value 2":
        mask[row][mask[row] == 1] = 2
    return "attention_mask", {"attention_mask": mask}


def _placeholders(inputs, draw, image_token_id):
    ids = inputs["input_ids"].clone()
    mask = inputs["attention_mask"]
    placeholders = (ids == image_token_id).nonzero().tolist()
    text = ((ids != image_token_id) & (mask == 1)).nonzero().tolist()
    kind = draw(st.sampled_from(["to text", "from text", "move"]))
    if kind in ("to text", "move"):
        r, c = placeholders[draw(st.integers(0, len(placeholders) - 1))]
        ids[r, c] = 10
    if kind in ("from text", "move"):
        r, c = text[draw(st.integers(0, len(text) - 1))]
        ids[r, c] = image_token_id
    # the token types follow the changed placeholders, as a processor would write them
    return "input_ids", {"input_ids": ids, "mm_token_type_ids": (ids == image_token_id).long()}


@st.composite
def bad_batches(draw):
    samples = draw(BATCH)
    side = draw(st.sampled_from(["left", "right"]))
    change = draw(st.sampled_from(["none", "grid", "pixels", "mask", "placeholders"]))
    return samples, side, change, draw


@SETTINGS
@given(case=bad_batches(), ratio=st.sampled_from([1.0, 0.5, 0.2]))
def test_every_input_runs_oracle_equal_or_is_a_value_error_naming_it(model, stock_model, processor, case, ratio):
    samples, side, change, draw = case
    inputs = dict(build_inputs(processor, samples, side, seed=len(samples)))
    image_token_id = model.config.image_token_id
    name, changed = None, {}
    if change == "grid":
        name, changed = _grid(inputs, draw)
    elif change == "pixels":
        name, changed = _pixels(inputs, draw)
    elif change == "mask":
        name, changed = _mask(inputs, draw, image_token_id)
    elif change == "placeholders":
        name, changed = _placeholders(inputs, draw, image_token_id)
    bad = {**inputs, **changed}
    try:
        with torch.no_grad():
            out = model(**bad, retention_ratio=ratio)
    except ValueError as error:
        assert name is not None, f"a valid batch was refused: {error}"
        assert f"`{name}`" in str(error), f"the error for a changed `{name}` names another argument: {error}"
        return
    # it ran: then it must be the stock model on the kept tokens, row by row
    for row, (sample, kept) in enumerate(zip(unbatch(bad, model.config), split_kept_indices(bad, model.config, out.kept_indices))):
        embeds, positions = pruned_embeddings(stock_model, sample, kept)
        expected = prefill_logits(stock_model, embeds, positions)[0]
        torch.testing.assert_close(out.logits[row][out.attention_mask[row].bool()], expected, atol=1e-5, rtol=1e-4)
