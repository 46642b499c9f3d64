"""The CPU-side parts of `benchmarks/vllm_serve.py` (its GPU runs are not part of the suite)."""

import importlib.util
import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoProcessor

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("vllm_serve", ROOT / "benchmarks" / "vllm_serve.py")
vllm_serve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vllm_serve)


def test_arguments():
    parity = vllm_serve.parse_args(["parity"])
    assert parity.ratios == [1.0, 0.3, 0.1] and parity.max_tokens is None  # the longest answer + 1
    speed = vllm_serve.parse_args(["speed", "--batch", "8"])
    assert speed.ratios == [0.5, 0.3, 0.2, 0.1] and speed.max_tokens == 64 and speed.batch == 8
    assert vllm_serve.parse_args(["speed", "--ratios", "0.25,1"]).ratios == [0.25, 1.0]
    with pytest.raises(ValueError, match=r"--ratios must lie in \(0, 1\], got \[0.0, 1.5\]"):
        vllm_serve.parse_args(["speed", "--ratios", "0,1.5,0.5"])
    with pytest.raises(ValueError, match="--batch must be >= 1, got 0"):
        vllm_serve.parse_args(["speed", "--batch", "0"])
    with pytest.raises(SystemExit):
        vllm_serve.parse_args(["serve"])


def test_table_and_files(tmp_path):
    rows = [{"engine": "stock", "TTFT mean s": 0.12345, "KV blocks": 12345, "output tok/s": None},
            {"engine": "plugin r=0.3", "TTFT mean s": 0.05, "KV blocks": 4000, "output tok/s": 2500.0}]
    columns = ["engine", "TTFT mean s", "output tok/s", "KV blocks"]
    table = vllm_serve.write_results(tmp_path, "speed", rows, columns, {"batch": 8})
    assert table.splitlines() == [
        "| engine | TTFT mean s | output tok/s | KV blocks |",
        "|---|---|---|---|",
        "| stock | 0.123 | - | 12345 |",
        "| plugin r=0.3 | 0.05 | 2,500 | 4000 |",
    ]
    assert (tmp_path / "speed.md").read_text() == table + "\n"
    assert json.loads((tmp_path / "speed.json").read_text()) == {"meta": {"batch": 8}, "rows": rows}


def test_model_folders_have_the_7b_structure_and_offline_token_ids(tmp_path):
    folders = vllm_serve.build_structure_folders(tmp_path, "7b")
    reference = json.loads(vllm_serve.STRUCTURES["7b"].read_text())
    stock = AutoConfig.from_pretrained(folders["stock"])
    selector = AutoConfig.from_pretrained(folders["visionselector"], trust_remote_code=True)
    assert stock.model_type == "qwen2_5_vl" and stock.architectures == ["Qwen2_5_VLForConditionalGeneration"]
    assert selector.model_type == "visionselector_qwen2_5_vl"
    assert selector.architectures == ["VisionSelectorQwen2_5_VLForConditionalGeneration"]
    assert selector.scorer_hidden_size == reference["scorer_hidden_size"]
    for config in (stock, selector):
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
                      "intermediate_size"):
            assert getattr(config.text_config, field) == reference["text_config"][field], field
        for field in ("depth", "hidden_size", "out_hidden_size", "window_size", "fullatt_block_indexes"):
            assert getattr(config.vision_config, field) == reference["vision_config"][field], field
    processor = AutoProcessor.from_pretrained(folders["visionselector"], trust_remote_code=False)
    vocab = processor.tokenizer.get_vocab()
    for token, field in (("<|image_pad|>", "image_token_id"), ("<|video_pad|>", "video_token_id"),
                         ("<|vision_start|>", "vision_start_token_id"), ("<|vision_end|>", "vision_end_token_id")):
        assert vocab[token] == getattr(selector, field) == getattr(stock, field)
    assert (folders["visionselector"] / "modeling_visionselector.py").exists()
    assert not list(folders["visionselector"].glob("*.safetensors"))  # vLLM fills random weights itself


def test_speed_requests():
    args = vllm_serve.parse_args(["speed", "--batch", "2", "--image-size", "64", "--video-frames", "4",
                                  "--video-size", "56"])
    images = vllm_serve.speed_requests(args, "image", 0.3)
    assert len(images) == 2 and images[0]["mm_processor_kwargs"] == {"retention_ratio": 0.3}
    assert images[0]["multi_modal_data"]["image"].size == (64, 64) and "<|image_pad|>" in images[0]["prompt"]
    (frames, metadata), = [request["multi_modal_data"]["video"] for request in vllm_serve.speed_requests(args, "video", None)[:1]]
    assert frames.shape == (4, 56, 56, 3) and metadata["fps"] == 2.0
    assert "mm_processor_kwargs" not in vllm_serve.speed_requests(args, "video", None)[0]


def test_parity_counts_whole_answers_by_their_tokens():
    processor = AutoProcessor.from_pretrained(vllm_serve.TINY_CHECKPOINT, trust_remote_code=False)
    tokenizer = processor.tokenizer
    # an answer is several words: as one token it is unknown, which made every sample count as wrong
    assert tokenizer.convert_tokens_to_ids("red yellow blue") == tokenizer.unk_token_id
    answer = vllm_serve.answer_token_ids(tokenizer, "red yellow blue")
    assert answer == tokenizer.convert_tokens_to_ids(["red", "yellow", "blue"]) + [tokenizer.eos_token_id]
    assert tokenizer.unk_token_id not in answer
    wrong = tokenizer.convert_tokens_to_ids(["red", "blue", "yellow"]) + [tokenizer.eos_token_id]
    generated = [answer, wrong, answer[:-1] + [answer[0]], answer + [0]]
    assert vllm_serve.whole_answer_accuracy(generated, [answer] * 4) == 0.5
    with pytest.raises(ValueError, match="no token for a word"):
        vllm_serve.answer_token_ids(tokenizer, "red magenta")


def test_speed_runs_each_engine_in_its_own_process(tmp_path, monkeypatch):
    argv = ["speed", "--out", str(tmp_path), "--ratios", "0.5,0.1"]
    args = vllm_serve.parse_args(argv)
    commands = []

    def run(command, check):
        assert check
        commands.append(command)
        child = vllm_serve.parse_args(command[2:])
        assert child.engine is not None and child.ratios == [0.5, 0.1]
        rows = [{"engine": child.engine, "input": "video", vllm_serve.TTFT_MEAN: 0.5, vllm_serve.KV_BLOCKS: 3}]
        (child.out / f"engine-{child.engine}.json").parent.mkdir(parents=True, exist_ok=True)
        (child.out / f"engine-{child.engine}.json").write_text(json.dumps(rows))

    monkeypatch.setattr(vllm_serve.subprocess, "run", run)
    table = vllm_serve.run_speed(args, argv)
    assert [vllm_serve.parse_args(c[2:]).engine for c in commands] == ["stock", "evs-0.5", "evs-0.9", "plugin"]
    assert all(c[1] == str(Path(vllm_serve.__file__).resolve()) for c in commands)
    header = table.splitlines()[0]
    assert "TTFT mean s (incl. queueing)" in header and "KV blocks (computed)" in header
    meta = json.loads((tmp_path / "speed.json").read_text())["meta"]
    assert "queueing" in meta["note"] and "not read from the engine" in meta["note"]
    with pytest.raises(ValueError, match="--engine must be one of"):
        vllm_serve.run_speed(vllm_serve.parse_args([*argv, "--engine", "nope"]), argv)
