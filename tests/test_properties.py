"""Property-based tests: random batches of images and videos, padding sides, ratios and selectors.

Each generated batch holds 1-4 samples with 0-3 images of random grid sizes, some with a video. Properties:
every row of a left- or right-padded batch generates what the same sample generates alone (plus fixed examples:
the equivalence scenarios and a batch of rows of different lengths); prefill equals the stock-model oracle on the kept tokens; every item
keeps max(1, floor(r * n)) tokens (r read as the decimal it prints as); text tokens are never dropped; ratio 1.0 equals the stock model.
Hypothesis runs derandomized (the same cases on every run), bounded by `max_examples`.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import SCENARIOS, build_inputs, new_tokens
from modeling_visionselector.selectors import SELECTORS
from oracle import prefill_logits, pruned_embeddings, split_kept_indices, unbatch

SIDES = st.sampled_from([28, 56, 84, 112])
IMAGE = st.tuples(st.just("image"), SIDES, SIDES)
VIDEO = st.tuples(st.just("video"), st.sampled_from([2, 4]), st.sampled_from([28, 56, 84]), st.sampled_from([28, 56]))
SAMPLE = st.tuples(st.lists(IMAGE, max_size=3), st.lists(VIDEO, max_size=1), st.booleans()).map(
    lambda parts: parts[0] + parts[1] if parts[2] else parts[1] + parts[0]  # video before or after the images
)
BATCH = st.lists(SAMPLE, min_size=1, max_size=4).filter(lambda samples: any(samples))
RATIO = st.one_of(st.sampled_from([1.0, 0.5, 0.2, 0.1]), st.floats(0.01, 1.0))
# "random" draws from the global generator, so a sample alone draws other tokens than in its batch
DETERMINISTIC_SELECTORS = sorted(name for name in SELECTORS if name != "random")

PROPERTY_SETTINGS = settings(
    max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def visual_tokens_per_item(inputs):
    grids = [g for key in ("image_grid_thw", "video_grid_thw") if inputs.get(key) is not None for g in inputs[key]]
    return [int(g.prod()) // 4 for g in grids]


@PROPERTY_SETTINGS
@given(samples=BATCH, ratio=RATIO, padding_side=st.sampled_from(["left", "right"]), selector=st.sampled_from(sorted(SELECTORS)))
def test_prefill_equals_the_oracle_and_keeps_the_right_tokens(model, stock_model, processor, samples, ratio, padding_side, selector):
    inputs = build_inputs(processor, samples, padding_side, seed=len(samples))
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(**inputs, retention_ratio=ratio, selector=selector)
    # every item keeps max(1, floor(r * n)) distinct tokens, r read as the decimal it prints as
    counts = visual_tokens_per_item(inputs)
    assert [len(k) for k in out.kept_indices] == [max(1, math.floor(Fraction(repr(ratio)) * n)) for n in counts]
    assert all(torch.equal(k, k.unique()) and int(k.max()) < n for k, n in zip(out.kept_indices, counts))
    # text tokens are never dropped: the pruned rows hold exactly the text plus the kept visual tokens
    visual = torch.isin(inputs["input_ids"], torch.tensor([model.config.image_token_id, model.config.video_token_id]))
    text = int(((inputs["attention_mask"] == 1) & ~visual).sum())
    assert int(out.attention_mask.sum()) == text + sum(len(k) for k in out.kept_indices)
    # and the logits are those of the stock model on the kept tokens at their original positions
    per_sample = split_kept_indices(inputs, model.config, out.kept_indices)
    for row, (sample, kept) in enumerate(zip(unbatch(inputs, model.config), per_sample)):
        embeds, positions = pruned_embeddings(stock_model, sample, kept)
        expected = prefill_logits(stock_model, embeds, positions)[0]
        torch.testing.assert_close(out.logits[row][out.attention_mask[row].bool()], expected, atol=1e-5, rtol=1e-4)
    if ratio == 1.0:
        with torch.no_grad():
            torch.testing.assert_close(out.logits, stock_model(**inputs).logits, atol=0, rtol=0)


# Cases every run checks besides the drawn ones: the equivalence scenarios (left-padded, the learned selector, two
# ratios) and a batch of rows of different lengths padded on either side.
ALONE_EXAMPLES = [
    dict(samples=SCENARIOS[name], ratio=ratio, padding_side="left", selector="learned")
    for name in SCENARIOS
    for ratio in (0.2, 0.6)
] + [
    dict(samples=[[("image", 56, 84)], [("image", 112, 56), ("image", 28, 28)]], ratio=0.3, padding_side=side, selector="learned")
    for side in ("left", "right")
]


def with_examples(cases):
    def decorate(test):
        for case in reversed(cases):
            test = example(**case)(test)
        return test

    return decorate


@PROPERTY_SETTINGS
@given(
    samples=BATCH,
    ratio=RATIO,
    padding_side=st.sampled_from(["left", "right"]),
    selector=st.sampled_from(DETERMINISTIC_SELECTORS),
)
@with_examples(ALONE_EXAMPLES)
def test_each_row_generates_what_it_generates_alone(model, processor, samples, ratio, padding_side, selector):
    inputs = build_inputs(processor, samples, padding_side, seed=len(samples))
    mask = inputs["attention_mask"]
    # the padding really is on `padding_side`
    assert torch.equal(mask, mask.sort(dim=1, descending=padding_side == "right", stable=True).values)
    kwargs = dict(retention_ratio=ratio, selector=selector, max_new_tokens=5, do_sample=False)
    eos = model.generation_config.eos_token_id
    batched = new_tokens(model.generate(**inputs, **kwargs), inputs["input_ids"].shape[1], eos)
    for row, sample in enumerate(unbatch(inputs, model.config)):
        alone = model.generate(**sample, **kwargs)
        assert batched[row] == new_tokens(alone, sample["input_ids"].shape[1], eos)[0]


def test_a_row_that_ends_early_in_a_padded_batch_is_padded_and_the_others_go_on(model, make_inputs):
    """`max_new_tokens` past one row's eos: that row is padded, the others equal their own runs."""
    inputs = make_inputs([[("image", 56, 84)], [("image", 112, 56), ("image", 28, 28)], [("video", 4, 56, 56)]])
    kwargs = dict(retention_ratio=0.3, max_new_tokens=6, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    first_tokens = model.generate(**inputs, **kwargs)[:, prompt]
    eos = int(first_tokens[0])  # make row 0 stop at once
    out = model.generate(**inputs, eos_token_id=eos, pad_token_id=0, **kwargs)
    samples = unbatch(inputs, model.config)
    stopped = []
    for row, sample in enumerate(samples):
        alone = model.generate(**sample, eos_token_id=eos, pad_token_id=0, **kwargs)[0, sample["input_ids"].shape[1] :]
        ours = out[row, prompt : prompt + len(alone)]
        assert ours.tolist() == alone.tolist()
        if eos in alone.tolist():
            stopped.append(row)
            end = alone.tolist().index(eos) + 1
            assert set(out[row, prompt + end :].tolist()) <= {0}
    assert 0 in stopped and out.shape[1] > prompt + 1


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_half_precision_runs_on_cpu_within_tolerance_of_float32(stock_model, make_inputs, dtype, tolerance):
    """Scores and (at a fixed selection) logits of bf16/fp16 stay within `tolerance` x the float32 logit scale."""
    import copy

    from modeling_visionselector import VisionSelectorForConditionalGeneration

    torch.manual_seed(1)
    full = VisionSelectorForConditionalGeneration.from_backbone(copy.deepcopy(stock_model)).eval()
    half = copy.deepcopy(full).to(dtype)
    inputs = make_inputs([[("image", 112, 84)], [("image", 56, 56), ("video", 4, 56, 56)]])
    half_inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    args = [inputs.get(k) for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")]
    half_args = [half_inputs.get(k) for k in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")]
    with torch.no_grad():
        scores = torch.cat(full.select_visual_tokens(*args, retention_ratio=1.0).scores)
        half_scores = torch.cat(half.select_visual_tokens(*half_args, retention_ratio=1.0).scores)
        assert half_scores.dtype == torch.float32
        assert float((half_scores - scores).abs().max()) <= tolerance * float(scores.abs().max()) + 1e-6
        reference = full(**inputs, retention_ratio=1.0).logits
        logits = half(**half_inputs, retention_ratio=1.0).logits
    assert logits.dtype == dtype
    scale = float(reference.abs().max())
    deviation = float((logits.float() - reference).abs().max())
    assert deviation <= tolerance * scale
    # Generation: the same tokens as float32 wherever float32's choice is clear, i.e. while the same tokens are
    # kept and float32's top-1 logit leads the top-2 by more than twice the measured logit deviation.
    kwargs = dict(retention_ratio=0.3, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_logits=True)
    reference_out = full.generate(**inputs, **kwargs)
    out = half.generate(**half_inputs, **kwargs)
    prompt = inputs["input_ids"].shape[1]
    assert out.sequences.shape == (2, prompt + 3)
    with torch.no_grad():
        same_selection = all(
            torch.equal(a, b)
            for a, b in zip(full.select_visual_tokens(*args, retention_ratio=0.3).kept_indices,
                            half.select_visual_tokens(*half_args, retention_ratio=0.3).kept_indices)
        )
    assert same_selection
    compared = 0
    for row in range(2):
        for step, step_logits in enumerate(reference_out.logits):
            top2 = step_logits[row].topk(2).values
            if float(top2[0] - top2[1]) <= 2 * deviation:
                break
            assert int(out.sequences[row, prompt + step]) == int(reference_out.sequences[row, prompt + step])
            compared += 1
    assert compared >= 2


def test_inputs_are_not_modified(model, make_inputs):
    inputs = make_inputs([[("image", 56, 84), ("video", 4, 56, 56)], [("image", 28, 56)]], padding_side="right")
    before = {k: v.clone() for k, v in inputs.items()}
    with torch.no_grad():
        model(**inputs, retention_ratio=0.2)
    model.generate(**inputs, retention_ratio=0.2, max_new_tokens=2)
    for key, value in before.items():
        assert torch.equal(inputs[key], value), key


def test_a_failed_call_leaves_no_state_behind(model, make_inputs):
    inputs = make_inputs([[("image", 56, 84)]])
    kwargs = dict(max_new_tokens=3, do_sample=False)
    expected = model.generate(**inputs, retention_ratio=0.4, **kwargs)
    bad = inputs["input_ids"].clone()
    bad[bad == model.config.image_token_id] = 10
    with pytest.raises(ValueError):
        model.generate(**{**inputs, "input_ids": bad}, retention_ratio=0.1, **kwargs)
    assert torch.equal(model.generate(**inputs, retention_ratio=0.4, **kwargs), expected)
    assert np.isfinite(model.scorer.q_proj.weight.detach().numpy()).all()
