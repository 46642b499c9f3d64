"""The token selectors: the contract every one of them keeps, one behaviour each, and the model API accepting them."""

import pytest
import torch

from modeling_visionselector import VisionSelectorForConditionalGeneration
from modeling_visionselector.selectors import SELECTORS, get_selector, learned_diversity, random_choice
from visionselector.tiny import tiny_qwen2_5_vl

GRIDS = [(1, 6, 10), (3, 4, 5), (1, 1, 7), (5, 2, 2)]


def _item(grid, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    return torch.randn(n, dim, generator=generator), torch.randn(n, generator=generator)


@pytest.mark.parametrize("name", sorted(SELECTORS))
@pytest.mark.parametrize("grid", GRIDS)
def test_exactly_k_distinct_ascending_indices_in_range(name, grid):
    features, scores = _item(grid)
    n = features.shape[0]
    for k in sorted({1, 2, n // 3 or 1, n - 1 or 1, n}):
        kept = SELECTORS[name](features, scores, k, grid)
        assert kept.dtype == torch.long and kept.shape == (k,), (name, k)
        assert bool((kept[1:] > kept[:-1]).all()), "ascending and distinct"
        assert 0 <= int(kept.min()) and int(kept.max()) < n


@pytest.mark.parametrize("name", sorted(set(SELECTORS) - {"random"}))
def test_deterministic(name):
    features, scores = _item((2, 6, 6))
    first = SELECTORS[name](features, scores, 17, (2, 6, 6))
    assert torch.equal(first, SELECTORS[name](features.clone(), scores.clone(), 17, (2, 6, 6)))


def test_random_reproducible_under_manual_seed_and_varies_with_it():
    features, scores = _item((1, 10, 10))
    torch.manual_seed(3)
    first = get_selector("random")(features, scores, 20, (1, 10, 10))
    torch.manual_seed(3)
    assert torch.equal(first, get_selector("random")(features, scores, 20, (1, 10, 10)))
    torch.manual_seed(4)
    assert not torch.equal(first, get_selector("random")(features, scores, 20, (1, 10, 10)))
    generator = torch.Generator().manual_seed(3)
    again = random_choice(features, scores, 20, (1, 10, 10), generator=generator)
    assert torch.equal(first, again), "the global generator and an explicit one seeded alike agree"


def test_learned_keeps_the_highest_scores():
    features, scores = _item((1, 5, 8))
    kept = get_selector("learned")(features, scores, 9, (1, 5, 8))
    assert set(kept.tolist()) == set(scores.topk(9).indices.tolist())


def test_norm_keeps_the_largest_norms():
    features, scores = _item((1, 5, 8))
    kept = get_selector("norm")(features, scores, 9, (1, 5, 8))
    assert set(kept.tolist()) == set(features.norm(dim=-1).topk(9).indices.tolist())


def test_uniform_keeps_one_token_per_block_and_balances_frames():
    features, scores = _item((1, 8, 8))
    kept = get_selector("uniform")(features, scores, 16, (1, 8, 8))
    rows, columns = kept // 8, kept % 8
    blocks = (rows // 2) * 4 + columns // 2
    assert sorted(blocks.tolist()) == list(range(16)), "a quarter of the grid: one token in every 2 x 2 block"

    features, scores = _item((4, 6, 6))
    kept = get_selector("uniform")(features, scores, 20, (4, 6, 6))
    assert torch.bincount(kept // 36, minlength=4).tolist() == [5, 5, 5, 5]
    rows = (kept % 36) // 6
    assert int(rows.min()) <= 1 and int(rows.max()) >= 4, "each frame's kept tokens span its rows"


def test_divprune_keeps_one_token_per_cluster():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=generator) * 5
    features = (centres[:, None, :] + 0.01 * torch.randn(4, 10, 32, generator=generator)).reshape(40, 32)
    order = torch.randperm(40, generator=generator)
    features = features[order]
    cluster = torch.arange(4).repeat_interleave(10)[order]
    kept = get_selector("divprune")(features, torch.zeros(40), 4, (1, 5, 8))
    assert sorted(cluster[kept].tolist()) == [0, 1, 2, 3]


def test_dart_keeps_no_duplicate_of_a_pivot():
    generator = torch.Generator().manual_seed(0)
    pivots = torch.nn.functional.normalize(torch.randn(8, 32, generator=generator), dim=-1) * 10
    duplicates = pivots.repeat_interleave(5, 0) / 10 + 1e-3 * torch.randn(40, 32, generator=generator)
    others = torch.nn.functional.normalize(torch.randn(32, 32, generator=generator), dim=-1)
    features = torch.cat([pivots, duplicates, others])  # 0-7 pivots, 8-47 their duplicates, 48-79 others
    kept = get_selector("dart")(features, torch.zeros(80), 20, (1, 8, 10)).tolist()
    assert set(range(8)) <= set(kept), "the largest norms are the pivots"
    assert not set(range(8, 48)) & set(kept), "no near-copy of a pivot is kept while other tokens remain"


def test_learned_diversity_skips_duplicates_of_kept_tokens():
    features = torch.eye(20)
    features[1:4] = features[0]  # the four best-scored tokens are one token four times
    scores = torch.linspace(10, 0, 20)
    kept = get_selector("learned+diversity")(features, scores, 3, (1, 4, 5))
    assert kept.tolist() == [0, 4, 5], "the best token, then the best tokens that are not its copies"
    assert get_selector("learned")(features, scores, 3, (1, 4, 5)).tolist() == [0, 1, 2]
    no_penalty = learned_diversity(features, scores, 3, (1, 4, 5), diversity_weight=0.0)
    assert no_penalty.tolist() == [0, 1, 2], "without the penalty it is the learned top-k"


def test_unknown_selector_name_raises():
    with pytest.raises(ValueError, match="accepted"):
        get_selector("top-k")


# ---------------------------------------------------------------- through the model


@pytest.fixture(scope="module")
def model():
    return VisionSelectorForConditionalGeneration.from_backbone(tiny_qwen2_5_vl()).eval()


@pytest.fixture(scope="module")
def inputs():
    """One 8 x 8-patch image (16 merged tokens) and one 2-frame 4 x 4-patch video (8 merged tokens)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.tensor([[1, 3] + [5] * 16 + [4, 3] + [6] * 8 + [4, 20, 21]])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(64, 1176, generator=generator),
        "image_grid_thw": torch.tensor([[1, 8, 8]]),
        "pixel_values_videos": torch.randn(32, 1176, generator=generator),
        "video_grid_thw": torch.tensor([[2, 4, 4]]),
    }


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_model_accepts_every_selector(model, inputs, name):
    visual = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
    selection = model.select_visual_tokens(**visual, retention_ratio=0.5, selector=name)
    assert [len(kept) for kept in selection.kept_indices] == [8, 4]
    with torch.no_grad():
        out = model(**inputs, retention_ratio=0.5, selector=name)
    assert out.logits.shape[1] == inputs["input_ids"].shape[1] - 12
    generated = model.generate(**inputs, retention_ratio=0.5, selector=name, max_new_tokens=2, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 2)


def test_model_passes_each_item_its_merged_grid(model, inputs):
    visual = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
    selection = model.select_visual_tokens(**visual, retention_ratio=0.25, selector="uniform")
    for features, scores, kept, k, grid in zip(
        selection.features, selection.scores, selection.kept_indices, (4, 2), ((1, 4, 4), (2, 2, 2))
    ):
        assert torch.equal(kept, get_selector("uniform")(features, scores, k, grid))


def test_model_rejects_an_unknown_selector(model, inputs):
    visual = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
    with pytest.raises(ValueError, match="Unknown selector"):
        model.select_visual_tokens(**visual, selector="best")
    with pytest.raises(ValueError, match="Unknown selector"), torch.no_grad():
        model(**inputs, selector="best")
    with pytest.raises(ValueError, match="Unknown selector"):
        model.generate(**inputs, selector="best", max_new_tokens=1)
