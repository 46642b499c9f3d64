"""The multi-head scorer (`scorer_heads`): heads=1 is the paper's scorer, heads > 1 a max (or logsumexp) of heads.

Its math against a naive O(N^2) formula, its config validation, its save/load round trips (full checkpoints,
scorer-only artifacts, remote code) and its pruned generation against the stock model fed the same kept tokens.
"""

import json
import math

import pytest
import torch
from transformers import AutoModel

from modeling_visionselector import VisionSelectorConfig, VisionSelectorForConditionalGeneration
from modeling_visionselector.scoring import VisionSelectorScorer, build_scorer
from oracle import greedy_tokens, pruned_embeddings, split_kept_indices, unbatch
from visionselector.publishing import save_scorer
from visionselector.tiny import tiny_qwen2_5_vl_config

GENERATE = dict(max_new_tokens=4, do_sample=False, retention_ratio=0.3)


def naive_scores(scorer: VisionSelectorScorer, features: torch.Tensor, lengths: list[int], heads: int, reduction: str):
    """Each head's score as the paper writes it, the mean over the item's tokens j of q_i . k_j / sqrt(head width),
    with the N x N products spelt out; then the reduction over heads."""
    with torch.no_grad():
        queries, keys = scorer.q_proj(features).double(), scorer.k_proj(features).double()
    width = queries.shape[-1] // heads
    scores = []
    for q, k in zip(torch.split(queries, lengths), torch.split(keys, lengths)):
        per_head = torch.stack(
            [(q[:, a * width : (a + 1) * width] @ k[:, a * width : (a + 1) * width].T).mean(1) / math.sqrt(width) for a in range(heads)],
            dim=-1,
        )  # (n, heads)
        scores.append(per_head.logsumexp(-1) if reduction == "logsumexp" else per_head.amax(-1))
    return torch.cat(scores)


# ---------------------------------------------------------------------------------------------------- the math


def test_one_head_is_the_papers_scorer_bit_for_bit():
    torch.manual_seed(0)
    paper = VisionSelectorScorer(24, 12)
    one_head = VisionSelectorScorer(24, 12, num_heads=1)
    one_head.load_state_dict(paper.state_dict())
    features, lengths = torch.randn(17, 24), [5, 12]
    assert torch.equal(one_head(features, lengths), paper(features, lengths))
    torch.testing.assert_close(paper(features, lengths).double(), naive_scores(paper, features, lengths, 1, "max"))


@pytest.mark.parametrize("reduction", ["max", "logsumexp"])
@pytest.mark.parametrize("heads", [2, 4, 12])
def test_heads_score_as_the_naive_formula(heads, reduction):
    torch.manual_seed(heads)
    scorer = VisionSelectorScorer(24, 12, num_heads=heads, head_reduction=reduction).double()
    features, lengths = torch.randn(23, 24, dtype=torch.float64), [2, 8, 13]
    torch.testing.assert_close(scorer(features, lengths), naive_scores(scorer, features, lengths, heads, reduction))


def test_max_of_heads_ranks_two_kinds_of_token_above_the_rest():
    """What one head cannot do: two target directions, each orthogonal to the other and to the distractors. With one
    head of q = x . (e0 + e1) the targets tie with a distractor on both; the max of two heads ranks both first."""
    features = torch.zeros(6, 4)
    features[0, 0] = features[1, 1] = 1.0  # targets of two kinds
    features[2:, 2] = 1.0  # four distractors of one kind
    features[2:, 3] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    scorer = VisionSelectorScorer(4, 2, num_heads=2)
    with torch.no_grad():
        scorer.q_proj.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        scorer.q_proj.bias.zero_()
        scorer.k_proj.weight.zero_()
        scorer.k_proj.bias.fill_(1.0)  # a mean key of ones: each head scores q_i^a
    scores = scorer(features, [6])
    assert set(torch.topk(scores, 2).indices.tolist()) == {0, 1}


def test_heads_keep_the_tensors_and_the_parameter_count():
    paper, heads = VisionSelectorScorer(32, 16), VisionSelectorScorer(32, 16, num_heads=4)
    assert {name: value.shape for name, value in paper.state_dict().items()} == {
        name: value.shape for name, value in heads.state_dict().items()
    }


def test_scores_have_no_gradient_gaps_for_every_head_reduction():
    torch.manual_seed(1)
    for reduction in ("max", "logsumexp"):
        scorer = VisionSelectorScorer(16, 8, num_heads=4, head_reduction=reduction)
        scorer(torch.randn(20, 16), [8, 12]).square().sum().backward()
        assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in scorer.parameters())


# ---------------------------------------------------------------------------------------------------- config


def test_config_defaults_to_the_papers_scorer_and_builds_what_it_says():
    config = VisionSelectorConfig.from_backbone_config(tiny_qwen2_5_vl_config(text_hidden_size=48))
    assert (config.scorer_heads, config.scorer_head_reduction) == (1, "max")
    config = VisionSelectorConfig.from_backbone_config(
        tiny_qwen2_5_vl_config(text_hidden_size=48), scorer_heads=4, scorer_head_reduction="logsumexp"
    )
    scorer = build_scorer(config)
    assert (scorer.num_heads, scorer.head_reduction, scorer.hidden_size) == (4, "logsumexp", 24)


def test_a_checkpoint_without_the_head_fields_loads_the_papers_scorer():
    """Every checkpoint written before `scorer_heads` existed (the embedded one's config.json has no such key)."""
    from visionselector.cli import EMBEDDED_CHECKPOINT

    assert "scorer_heads" not in json.loads((EMBEDDED_CHECKPOINT / "config.json").read_text())
    model = VisionSelectorForConditionalGeneration.from_pretrained(EMBEDDED_CHECKPOINT)
    assert (model.config.scorer_heads, model.scorer.num_heads) == (1, 1)


@pytest.mark.parametrize(
    "field,value,accepted",
    [
        ("scorer_heads", 0, "positive integer"),
        ("scorer_heads", -2, "positive integer"),
        ("scorer_heads", 2.0, "positive integer"),
        ("scorer_heads", True, "positive integer"),
        ("scorer_heads", 5, r"\[1, 2, 3, 4, 6, 8, 12, 24\]"),  # must divide scorer_hidden_size 24
        ("scorer_head_reduction", "mean", r"\('max', 'logsumexp'\)"),
    ],
)
def test_bad_head_settings_are_value_errors_naming_value_and_range(field, value, accepted):
    with pytest.raises(ValueError, match=field) as error:
        VisionSelectorConfig.from_backbone_config(tiny_qwen2_5_vl_config(text_hidden_size=48), **{field: value})
    assert repr(value) in str(error.value)
    assert error.match(accepted)


# ---------------------------------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def base_dir(stock_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("Qwen2.5-VL-tiny")
    stock_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def heads_model(base_dir):
    """A 4-head VisionSelector on `base_dir` with a trained-looking (non-initial) scorer."""
    torch.manual_seed(3)
    model = VisionSelectorForConditionalGeneration.from_backbone(str(base_dir), scorer_heads=4).eval()
    with torch.no_grad():
        for parameter in model.scorer.parameters():
            parameter.normal_()
    return model


def scores(model, inputs) -> torch.Tensor:
    selection = model.select_visual_tokens(inputs["pixel_values"], inputs["image_grid_thw"], retention_ratio=0.3)
    return torch.cat(selection.scores)


@pytest.fixture(scope="module")
def image_inputs(processor):
    from conftest import build_inputs

    return build_inputs(processor, [[("image", 56, 84)], [("image", 84, 56)]])


def test_from_backbone_picks_the_heads_scorer(heads_model):
    assert heads_model.config.scorer_heads == 4 and heads_model.scorer.num_heads == 4


@pytest.mark.parametrize("artifact", ["full", "scorer_only"])
def test_heads_round_trip_through_save_and_auto_model(heads_model, processor, image_inputs, tmp_path, artifact):
    folder = tmp_path / artifact
    if artifact == "full":
        heads_model.save_pretrained(folder)
    else:
        save_scorer(heads_model, folder, processor=processor, repo_id="me/VisionSelector-tiny-heads")
        assert "4-head scorer" in (folder / "README.md").read_text()
    assert json.loads((folder / "config.json").read_text())["scorer_heads"] == 4  # the checkpoint says which scorer
    for loaded in (
        VisionSelectorForConditionalGeneration.from_pretrained(folder),
        AutoModel.from_pretrained(folder, trust_remote_code=True),
    ):
        assert loaded.scorer.num_heads == 4
        assert all(torch.equal(value, loaded.state_dict()[name]) for name, value in heads_model.state_dict().items())
        assert torch.equal(scores(loaded, image_inputs), scores(heads_model, image_inputs))
        assert torch.equal(loaded.generate(**image_inputs, **GENERATE), heads_model.generate(**image_inputs, **GENERATE))


def test_heads_change_the_ranking_of_the_same_tensors(heads_model, stock_model, image_inputs):
    """The config field is what picks the scorer: the same tensors under heads=1 score otherwise."""
    paper = VisionSelectorForConditionalGeneration.from_backbone(stock_model).eval()  # the backbone of heads_model
    paper.scorer.load_state_dict(heads_model.scorer.state_dict())
    assert paper.scorer.num_heads == 1
    assert not torch.allclose(scores(paper, image_inputs), scores(heads_model, image_inputs))


@pytest.mark.parametrize("ratio", [0.1, 0.37])
def test_heads_generation_matches_stock_oracle_on_kept_tokens(heads_model, stock_model, make_inputs, ratio):
    inputs = make_inputs([[("image", 56, 84), ("image", 84, 56)], [("video", 4, 56, 56)]])
    selection = heads_model.select_visual_tokens(
        inputs.get("pixel_values"), inputs.get("image_grid_thw"), inputs.get("pixel_values_videos"), inputs.get("video_grid_thw"),
        retention_ratio=ratio,
    )  # fmt: skip
    out = heads_model.generate(**inputs, retention_ratio=ratio, max_new_tokens=5, do_sample=False)
    eos = heads_model.generation_config.eos_token_id
    prompt_length = inputs["input_ids"].shape[1]
    for row, (sample, kept) in enumerate(zip(unbatch(inputs, heads_model.config), split_kept_indices(inputs, heads_model.config, selection.kept_indices))):
        embeds, positions = pruned_embeddings(stock_model, sample, kept)
        generated = out[row, prompt_length:].tolist()
        generated = generated[: generated.index(eos) + 1] if eos in generated else generated
        assert generated == greedy_tokens(stock_model, embeds, positions, 5)


# ---------------------------------------------------------------------------------------------------- scripts


def test_prefill_benchmark_times_both_scorers_with_their_parameter_count():
    from conftest import ROOT, load_script

    prefill = load_script("benchmarks_prefill", ROOT / "benchmarks" / "prefill.py")
    rows = prefill.bench_scorer([16, 32], 24, 1, torch.device("cpu"), torch.float32, naive_max_gib=1.0)
    assert [(row["scorer"], row["tokens"]) for row in rows] == [("paper", 16), ("paper", 32), ("heads=4 max", 16), ("heads=4 max", 32)]
    assert {row["parameters"] for row in rows} == {2 * (24 * 12 + 12)}
    assert all(row["max_abs_difference"] < 1e-4 for row in rows)  # the mean-key form equals the N x N formula
    table = prefill.scorer_table(rows)
    assert "| heads=4 max | 600 | 32 |" in table and "| paper | 600 | 16 |" in table


def test_hub_configs_write_the_scorer_fields(tmp_path):
    from conftest import ROOT, load_script

    generate = load_script("hub_configs_generate", ROOT / "hub_configs" / "generate.py")
    name = "VisionSelector-Qwen2.5-VL-3B-Instruct"
    written = json.loads((ROOT / "hub_configs" / name / "config.json").read_text())
    assert (written["scorer_heads"], written["scorer_head_reduction"]) == (1, "max")  # the paper's scorer, stated
    assert generate.main(["--scorer-heads", "4", "--output-dir", str(tmp_path)]) == 0
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["scorer_heads"] == 4
    assert generate.main(["--check", "--scorer-heads", "4", "--output-dir", str(tmp_path)]) == 0
    assert generate.main(["--check", "--output-dir", str(tmp_path)]) == 1  # not the paper's scorer
    with pytest.raises(SystemExit):
        generate.main(["--scorer-heads", "7", "--output-dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
