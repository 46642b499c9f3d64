"""GPU check of the vLLM plugin: parity with transformers, and serving speed against stock vLLM and EVS.

Usage (a CUDA machine with `pip install ".[vllm]"`; nothing is downloaded):

    python benchmarks/vllm_serve.py parity   # (a) the embedded tiny-shapes checkpoint, vLLM vs transformers
    python benchmarks/vllm_serve.py speed    # (b) random weights with Qwen2.5-VL-7B's structure: stock, EVS, plugin

(a) `parity`: the held-out task samples, greedy, at retention 1.0, 0.3 and 0.1 (`--ratios`): the share of samples
    whose vLLM tokens equal the transformers model's `generate` tokens, and both whole-answer accuracies (every
    answer token, then the end of turn, as `visionselector.tasks.answer_accuracy` counts them).
(b) `speed`: a folder with the 7B's configuration (token ids remapped to an offline word-level tokenizer, so no
    download) is served with random weights (`load_format="dummy"`): stock vLLM, vLLM's EVS at pruning rate 1 - r
    (video only), and the plugin at r = 0.5, 0.3, 0.2, 0.1, the plugin's ratio set per request on one engine.
    Each engine runs in its own process (`speed --engine NAME`, started by `speed`), so that one engine's GPU memory
    is gone before the next starts. Each runs a burst of `--batch` images and one of videos, all submitted at once:
    time to first token (mean and median; it includes the time a request waits in the queue behind the others of
    the burst, so it grows with the burst), output tokens per second over the burst, and the KV-cache blocks the
    burst needs, computed as ceil((prompt + output tokens) / block size) per request (not read from the engine).

Writes a markdown table (printed, and `--out`/<command>.md) and the JSON beside it. These numbers have not been
measured yet: the machines this package is developed on have no GPU with vLLM.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CHECKPOINT = ROOT / "visionselector" / "checkpoints" / "tiny-shapes"
STRUCTURES = {"7b": ROOT / "hub_configs" / "VisionSelector-Qwen2.5-VL-7B-Instruct" / "config.json"}
# the offline word-level tokenizer of `visionselector.tiny`: its special token ids
TOKEN_IDS = dict(
    image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4, bos_token_id=1, eos_token_id=2
)
SPEED_RATIOS = (0.5, 0.3, 0.2, 0.1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["parity", "speed"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vllm")
    parser.add_argument("--ratios", type=str, default=None, help="comma-separated; parity: 1.0,0.3,0.1, speed: 0.5,0.3,0.2,0.1")
    parser.add_argument("--samples", type=int, default=200, help="parity: held-out task samples")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="parity: the longest answer + 1, speed: 64 new tokens per request"
    )
    parser.add_argument("--structure", choices=sorted(STRUCTURES), default="7b", help="speed: the model structure")
    parser.add_argument("--engine", default=None, help="speed: run this one engine (of `engine_runs`) in this process")
    parser.add_argument("--batch", type=int, default=32, help="speed: requests per batch")
    parser.add_argument("--image-size", type=int, default=1344, help="speed: image side in px")
    parser.add_argument("--video-frames", type=int, default=32, help="speed: frames per video (2 fps)")
    parser.add_argument("--video-size", type=int, default=448, help="speed: video frame side in px")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--max-model-len", type=int, default=32768)
    args = parser.parse_args(argv)
    default_ratios = "1.0,0.3,0.1" if args.command == "parity" else ",".join(map(str, SPEED_RATIOS))
    args.ratios = [float(value) for value in (args.ratios or default_ratios).split(",")]
    bad = [ratio for ratio in args.ratios if not 0.0 < ratio <= 1.0]
    if bad:
        raise ValueError(f"--ratios must lie in (0, 1], got {bad}.")
    if args.max_tokens is None and args.command == "speed":
        args.max_tokens = 64
    for name in ("samples", "batch", "image_size", "video_frames", "video_size", "max_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    return args


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Rows (mappings column -> value) as a markdown table; floats with 3 significant decimals, None as '-'."""

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, rows: list[dict], columns: list[str], meta: dict) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, columns)
    (out_dir / f"{name}.md").write_text(table + "\n")
    (out_dir / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return table


# ---------------------------------------------------------------------------------------------------- models


def build_structure_folders(out_dir: Path, structure: str = "7b", config_overrides: dict | None = None) -> dict:
    """Two model folders with `structure`'s configuration and no weights: "stock" (Qwen2.5-VL) and "visionselector".

    Token ids are remapped to the offline tokenizer of `visionselector.tiny` (the embedding keeps the structure's
    vocabulary size); the processor is the stock Qwen2.5-VL one with Qwen2.5-VL's default pixel limits.
    """
    from transformers import Qwen2_5_VLConfig
    from transformers.dynamic_module_utils import custom_object_save

    from modeling_visionselector import VisionSelectorConfig, VisionSelectorForConditionalGeneration
    from visionselector.tiny import tiny_processor

    stored = json.loads(STRUCTURES[structure].read_text())
    for key in ("auto_map", "architectures", "model_type", "transformers_version"):
        stored.pop(key, None)
    stored.update(TOKEN_IDS)
    stored["text_config"] = dict(stored["text_config"], **{k: TOKEN_IDS[k] for k in ("bos_token_id", "eos_token_id")})
    stored["text_config"]["pad_token_id"] = 0
    stored.update(config_overrides or {})
    processor = tiny_processor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280 * 4)
    folders = {}
    selector_config = VisionSelectorConfig(**stored)
    stock_fields = {k: v for k, v in selector_config.to_dict().items() if k in Qwen2_5_VLConfig().to_dict()}
    for name, config in (
        ("stock", Qwen2_5_VLConfig(**{k: v for k, v in stock_fields.items() if k != "model_type"})),
        ("visionselector", selector_config),
    ):
        folder = out_dir / f"{structure}-{name}"
        config.architectures = [
            "Qwen2_5_VLForConditionalGeneration" if name == "stock" else VisionSelectorForConditionalGeneration.__name__
        ]
        config.save_pretrained(folder)
        processor.save_pretrained(folder)
        if name == "visionselector":
            custom_object_save(VisionSelectorForConditionalGeneration, folder)
        folders[name] = folder
    return folders


# ---------------------------------------------------------------------------------------------------- (a) parity


def answer_token_ids(tokenizer, answer: str) -> list[int]:
    """The tokens a whole answer is written with: its words, then the end of turn (as `tasks.task_inputs`)."""
    ids = tokenizer.convert_tokens_to_ids(answer.split()) + [tokenizer.eos_token_id]
    if tokenizer.unk_token_id in ids:
        raise ValueError(f"The tokenizer has no token for a word of the answer {answer!r}.")
    return ids


def whole_answer_accuracy(generated: list[list[int]], answers: list[list[int]]) -> float:
    """Share of samples whose generated tokens begin with the whole answer and its end of turn."""
    return sum(tokens[: len(answer)] == answer for tokens, answer in zip(generated, answers)) / len(answers)


def run_parity(args) -> str:
    import torch
    from transformers import AutoModel, AutoProcessor
    from vllm import LLM, SamplingParams

    from visionselector.tasks import make_samples

    samples = make_samples(args.samples)
    processor = AutoProcessor.from_pretrained(TINY_CHECKPOINT, trust_remote_code=False)
    answers = [answer_token_ids(processor.tokenizer, sample.answer) for sample in samples]
    max_tokens = args.max_tokens or max(len(answer) for answer in answers)
    model = AutoModel.from_pretrained(TINY_CHECKPOINT, trust_remote_code=True).eval().to("cuda")
    llm = LLM(model=str(TINY_CHECKPOINT), trust_remote_code=True, dtype="float32", max_model_len=1024, seed=0,
              gpu_memory_utilization=args.gpu_memory_utilization)
    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    prompts = [processor.apply_chat_template(s.messages(), add_generation_prompt=True) for s in samples]
    rows = []
    for ratio in args.ratios:
        requests = [
            {"prompt": prompt, "multi_modal_data": {"image": s.image}, "mm_processor_kwargs": {"retention_ratio": ratio}}
            for prompt, s in zip(prompts, samples)
        ]
        served = [list(output.outputs[0].token_ids) for output in llm.generate(requests, greedy)]
        local = []
        for prompt, sample in zip(prompts, samples):
            inputs = processor(text=[prompt], images=[sample.image], return_tensors="pt").to("cuda")
            with torch.no_grad():
                out = model.generate(**inputs, retention_ratio=ratio, max_new_tokens=max_tokens, do_sample=False)
            local.append(out[0, inputs["input_ids"].shape[1]:].tolist())
        rows.append({
            "retention": ratio,
            "same tokens": sum(a == b for a, b in zip(served, local)) / len(samples),
            "accuracy vLLM": whole_answer_accuracy(served, answers),
            "accuracy transformers": whole_answer_accuracy(local, answers),
        })
    return write_results(args.out, "parity", rows, list(rows[0]), {"samples": args.samples, "max_tokens": max_tokens})


# ---------------------------------------------------------------------------------------------------- (b) speed


def speed_requests(args, kind: str, ratio: float | None) -> list[dict]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pad = "<|vision_start|><|image_pad|><|vision_end|>" if kind == "image" else "<|vision_start|><|video_pad|><|vision_end|>"
    prompt = f"<|im_start|>user\n{pad}describe the {kind}<|im_end|>\n<|im_start|>assistant\n"
    requests = []
    for _ in range(args.batch):
        if kind == "image":
            data = Image.fromarray(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8))
        else:
            frames = rng.integers(0, 256, (args.video_frames, args.video_size, args.video_size, 3), dtype=np.uint8)
            data = (frames, {"fps": 2.0, "duration": args.video_frames / 2.0, "total_num_frames": args.video_frames,
                             "frames_indices": list(range(args.video_frames)), "video_backend": "opencv",
                             "do_sample_frames": False})
        request = {"prompt": prompt, "multi_modal_data": {kind: data}}
        if ratio is not None:
            request["mm_processor_kwargs"] = {"retention_ratio": ratio}
        requests.append(request)
    return requests


TTFT_MEAN, TTFT_MEDIAN = "TTFT mean s (incl. queueing)", "TTFT median s (incl. queueing)"
KV_BLOCKS = "KV blocks (computed)"
SPEED_COLUMNS = ["engine", "input", "prompt tokens", TTFT_MEAN, TTFT_MEDIAN, "output tok/s", KV_BLOCKS]


def measure(llm, requests, max_tokens: int) -> dict:
    """One burst: every request submitted at once (so TTFT includes queueing behind the rest of the burst)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
    llm.generate(requests[:1], params)  # warm-up: compile paths for this input size
    start = time.perf_counter()
    outputs = llm.generate(requests, params)
    wall = time.perf_counter() - start
    block_size = llm.llm_engine.vllm_config.cache_config.block_size
    ttft = [o.metrics.first_token_latency for o in outputs if o.metrics is not None]
    return {
        "prompt tokens": statistics.mean(len(o.prompt_token_ids) for o in outputs),
        TTFT_MEAN: statistics.mean(ttft) if ttft else None,
        TTFT_MEDIAN: statistics.median(ttft) if ttft else None,
        "output tok/s": sum(len(o.outputs[0].token_ids) for o in outputs) / wall,
        KV_BLOCKS: sum(
            math.ceil((len(o.prompt_token_ids) + len(o.outputs[0].token_ids)) / block_size) for o in outputs
        ),
    }


def engine_runs(args, folders: dict) -> dict[str, tuple[Path, dict, list]]:
    """name -> (model folder, extra engine arguments, ratios served per request) of every engine `speed` runs."""
    runs = {"stock": (folders["stock"], {}, [None])}
    for ratio in args.ratios:
        runs[f"evs-{1 - ratio:.1f}"] = (folders["stock"], {"video_pruning_rate": round(1 - ratio, 6)}, [None])
    runs["plugin"] = (folders["visionselector"], {}, args.ratios)
    return runs


def engine_command(argv: list[str], name: str, rows_file: Path) -> list[str]:
    """The command that runs engine `name` alone in a fresh process and writes its rows to `rows_file`."""
    return [sys.executable, str(Path(__file__).resolve()), *argv, "--engine", name, "--out", str(rows_file.parent)]


def run_engine(args, name: str, folder: Path, extra: dict, ratios: list) -> list[dict]:
    from vllm import LLM

    llm = LLM(model=str(folder), trust_remote_code=True, load_format="dummy", dtype="bfloat16", seed=0,
              disable_log_stats=False, max_model_len=args.max_model_len,
              gpu_memory_utilization=args.gpu_memory_utilization, limit_mm_per_prompt={"image": 1, "video": 1},
              **extra)
    rows = []
    for kind in ("image", "video"):
        if name.startswith("evs") and kind == "image":
            continue  # EVS prunes video only
        for ratio in ratios:
            if ratio is not None:
                label = f"plugin r={ratio}"
            else:
                label = f"EVS {name.removeprefix('evs-')}" if name.startswith("evs") else name
            requests = speed_requests(args, kind, ratio)
            rows.append({"engine": label, "input": kind, **measure(llm, requests, args.max_tokens)})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def run_speed(args, argv: list[str]) -> str:
    folders = build_structure_folders(args.out / "models", args.structure)
    runs = engine_runs(args, folders)
    if args.engine is not None:  # the child process: one engine, its rows to a file
        if args.engine not in runs:
            raise ValueError(f"--engine must be one of {sorted(runs)}, got {args.engine!r}.")
        rows = run_engine(args, args.engine, *runs[args.engine])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"engine-{args.engine}.json").write_text(json.dumps(rows) + "\n")
        return ""
    rows = []
    for name in runs:
        rows_file = args.out / "engines" / f"engine-{name}.json"
        # a fresh process per engine: its GPU memory and engine core processes are gone when it exits
        subprocess.run(engine_command(argv, name, rows_file), check=True)
        rows.extend(json.loads(rows_file.read_text()))
    meta = {k: str(v) for k, v in vars(args).items()}
    meta["note"] = ("TTFT includes queueing: each burst submits every request at once. KV blocks are computed as "
                    "ceil((prompt + output tokens) / block size) per request, summed, not read from the engine.")
    return write_results(args.out, "speed", rows, SPEED_COLUMNS, meta)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    print(run_parity(args) if args.command == "parity" else run_speed(args, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
