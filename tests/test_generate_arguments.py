"""`generate` arguments however they are given: lengths from a generation config, positional arguments by the stock
signature, a streamer. (Left- and right-padded batches: `test_properties.py`.)"""

import copy

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from oracle import unbatch

TWO_ROWS = [[("image", 56, 84)], [("image", 112, 56), ("image", 28, 28)]]


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.values, self.ended = [], False

    def put(self, value):
        self.values.append(value.detach().clone())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("where", ["generation_config", "model_generation_config"])
def test_max_length_from_a_generation_config_counts_the_callers_prompt(model, make_inputs, where):
    inputs = make_inputs(TWO_ROWS)
    prompt = inputs["input_ids"].shape[1]
    lengths = dict(max_length=prompt + 3, min_length=prompt + 3, do_sample=False)
    saved = model.generation_config
    try:
        if where == "generation_config":
            out = model.generate(**inputs, retention_ratio=0.2, generation_config=GenerationConfig(**lengths))
        else:
            model.generation_config = copy.deepcopy(saved)
            for name, value in lengths.items():
                setattr(model.generation_config, name, value)
            out = model.generate(**inputs, retention_ratio=0.2)
    finally:
        model.generation_config = saved
    assert out.shape[1] == prompt + 3


def test_max_new_tokens_wins_over_max_length_as_in_the_stock_generate(model, make_inputs):
    inputs = make_inputs(TWO_ROWS)
    prompt = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, retention_ratio=0.2, max_length=prompt + 1, max_new_tokens=4, min_new_tokens=4)
    assert out.shape[1] == prompt + 4


def test_a_positional_streamer_receives_the_callers_prompt_then_the_new_tokens(model, stock_model, make_inputs):
    (sample,) = unbatch(make_inputs([[("image", 84, 56)]]), model.config)
    input_ids = sample.pop("input_ids")
    ours, stock = RecordingStreamer(), RecordingStreamer()
    # generate(inputs, generation_config, logits_processor, stopping_criteria, prefix_allowed_tokens_fn,
    #          synced_gpus, assistant_model, streamer, ...)
    out = model.generate(input_ids, None, None, None, None, None, None, ours, **sample, retention_ratio=0.3,
                         max_new_tokens=4, do_sample=False)
    assert ours.ended
    assert torch.equal(ours.values[0], input_ids)
    assert torch.cat([v.reshape(-1) for v in ours.values[1:]]).tolist() == out[0, input_ids.shape[1]:].tolist()
    # at ratio 1.0 the streamer sees exactly what it sees from the stock model
    ours_full = RecordingStreamer()
    model.generate(input_ids, streamer=ours_full, **sample, retention_ratio=1.0, max_new_tokens=4, do_sample=False)
    stock_model.generate(input_ids, streamer=stock, **sample, max_new_tokens=4, do_sample=False)
    assert [v.tolist() for v in ours_full.values] == [v.tolist() for v in stock.values]


def test_a_positional_assistant_model_is_refused(model, stock_model, make_inputs):
    inputs = make_inputs([[("image", 56, 56)]])
    input_ids = inputs.pop("input_ids")
    with pytest.raises(ValueError, match="Assisted generation"):
        model.generate(input_ids, None, None, None, None, None, stock_model, **inputs, max_new_tokens=2)
