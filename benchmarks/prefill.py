"""Prefill speed and memory of VisionSelector against the stock Qwen2.5-VL and against the ideal speedup.

Usage:
    python benchmarks/prefill.py                      # CPU, float32, the default sizes: a few minutes on 2 cores
    python benchmarks/prefill.py --device cuda --attn flash_attention_2 --dtype bfloat16
    python benchmarks/prefill.py --sizes 1024,8x16x16 --ratios 1.0,0.2 --repeats 5 --out /tmp/prefill.json

What is measured, per input and retention ratio r, all in one run (median of `--repeats` after one warm-up):

- T_full: the stock `Qwen2_5_VLForConditionalGeneration` prefill (encoder + all visual tokens through the LLM).
- T_pruned(r): the VisionSelector prefill with the learned selector; speedup = T_full / T_pruned(r).
- T_vision(r): encoder + scorer + selection (`select_visual_tokens`), and within it T_select(r): scorer + top-k.
- T_llm(r): the language model alone on the pruned sequence (embeddings, all layers, the last token's logits).
- ideal speedup = T_full / (T_vision(r) + T_llm(r)): what pruning could give if gathering the kept tokens and
  rebuilding positions cost nothing; achieved/ideal = speedup / ideal is the overhead of doing it for real.
- KV cache bytes of the prefill, and peak memory of the prefill above the weights (CUDA: allocator peak;
  CPU: allocation records of the profiler during the warm-up call).

The model. The 7B is far too slow to prefill a 4096-token image on 2 CPU cores, so the benchmark builds a random
Qwen2.5-VL with the 7B's structure (vision: 32 blocks, patch 14, 2 x 2 merge, 112 px windows with full attention at
blocks 7/15/23/31, SwiGLU MLP; LLM: 28 layers, 7:1 grouped-query attention, SwiGLU MLP, mRoPE 2:3:3) at a shrunk
width. What decides the speedup of pruning is the vision encoder's share of prefill compute, because only the LLM
part shrinks with r. Counted in multiply-accumulates (MACs, `prefill_macs` below), that share is about 28% for the
7B at 256 merged tokens and about 32% at 4096 (full-attention blocks over 16k patches weigh in). Shrinking every
width by the same factor s keeps the matrix products' ratio but makes attention (N^2 d, not N d^2) weigh 1/s times
more, so one shrunk model cannot match the 7B at every size. Instead:

- the LLM is the 7B's at width / `--width-divisor` (default 32: hidden 112, 7 query heads and 1 key-value head of
  dim 16, MLP 592), the same for every input;
- for each input, the vision width (a multiple of 16, heads of dim 16, MLP at the 7B's 3420/1280 ratio) is the
  largest whose vision share does not exceed the 7B's, and its MLP width is then raised until the two shares match.

The table states both shares and also the 7B's ideal speedup from MAC counts. The shrunk LLM still gives its
attention a larger share than the 7B's does, so the measured ideal is somewhat above the 7B's MAC ideal at long
sequences; achieved/ideal compares like with like.

The scorer part times `VisionSelectorScorer` (mean-key form, O(N h)) against the naive N x N formula
(`(q @ k.T).mean(1)`, O(N^2 h)) at N = 1k ... 16k tokens of the benchmark LLM width (`--scorer-width` to change),
checking both agree, and skips the naive one where its N x N matrix would exceed `--naive-max-gib`.

Writes the tables as markdown (printed, and next to the JSON) and everything as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the CPU memory profiler's start/stop lines off stderr
import torch  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

from modeling_visionselector import VisionSelectorForConditionalGeneration, VisionSelectorScorer, topk_indices  # noqa: E402

IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 5, 6, 3, 4
TEXT_TOKENS = 32  # prompt text around the visual tokens (16 before, 16 after)
PATCH_VALUES = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch


# ---------------------------------------------------------------------------------------------- compute model


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Widths and depths of a Qwen2.5-VL that matter for prefill compute."""

    vision_hidden: int
    vision_mlp: int
    llm_hidden: int
    llm_mlp: int
    llm_heads: int
    llm_kv_heads: int
    vision_depth: int = 32
    vision_full_attention: tuple[int, ...] = (7, 15, 23, 31)
    window_merged: int = 4  # 112 px windows = 4 x 4 merged tokens = 8 x 8 patches
    llm_layers: int = 28

    @property
    def llm_head_dim(self) -> int:
        return self.llm_hidden // self.llm_heads


QWEN2_5_VL_7B = Architecture(vision_hidden=1280, vision_mlp=3420, llm_hidden=3584, llm_mlp=18944, llm_heads=28, llm_kv_heads=4)


def _blocks(size: int, block: int) -> list[int]:
    return [block] * (size // block) + ([size % block] if size % block else [])


def vision_macs(arch: Architecture, grid: tuple[int, int, int]) -> float:
    """MACs of the vision encoder and merger on one item of (t, h, w) merged tokens (4 patches each)."""
    t, h, w = grid
    patches = 4 * t * h * w
    d, m = arch.vision_hidden, arch.vision_mlp
    per_layer_linear = patches * (4 * d * d + 3 * d * m)  # qkv + output projections, SwiGLU MLP
    window_sq = t * sum((4 * a * b) ** 2 for a in _blocks(h, arch.window_merged) for b in _blocks(w, arch.window_merged))
    frame_sq = t * (4 * h * w) ** 2  # full attention is per frame
    full = len(arch.vision_full_attention)
    attention = 2 * d * (full * frame_sq + (arch.vision_depth - full) * window_sq)  # scores and weighted sum
    merger = t * h * w * ((4 * d) ** 2 + 4 * d * arch.llm_hidden)
    return patches * PATCH_VALUES * d + arch.vision_depth * per_layer_linear + attention + merger


def llm_macs(arch: Architecture, length: int) -> float:
    """MACs of a causal LLM prefill of `length` tokens (the last token's logits are negligible and left out)."""
    d, kv = arch.llm_hidden, arch.llm_kv_heads * arch.llm_head_dim
    per_token = 2 * d * d + 2 * d * kv + 3 * d * arch.llm_mlp
    attention = 2 * d * length * (length + 1) / 2
    return arch.llm_layers * (length * per_token + attention)


def prefill_macs(arch: Architecture, grid: tuple[int, int, int], retention_ratio: float = 1.0) -> tuple[float, float]:
    """(vision MACs, LLM MACs) of a prefill of one item plus `TEXT_TOKENS` text tokens at `retention_ratio`."""
    n = grid[0] * grid[1] * grid[2]
    kept = max(1, int(retention_ratio * n))
    return vision_macs(arch, grid), llm_macs(arch, kept + TEXT_TOKENS + 2)


def vision_share(arch: Architecture, grid) -> float:
    vision, llm = prefill_macs(arch, grid)
    return vision / (vision + llm)


def benchmark_architecture(grid, width_divisor: int) -> Architecture:
    """The 7B at LLM width / `width_divisor`, with the vision width solved so the vision MAC share is the 7B's."""
    base = QWEN2_5_VL_7B
    llm_hidden = max(16, base.llm_hidden // width_divisor // 16 * 16)
    llm_heads = llm_hidden // 16  # head dim 16
    arch = dataclasses.replace(
        base,
        llm_hidden=llm_hidden,
        llm_mlp=round(base.llm_mlp * llm_hidden / base.llm_hidden),
        llm_heads=llm_heads,
        llm_kv_heads=max(1, llm_heads // (base.llm_heads // base.llm_kv_heads)),
    )
    target = vision_share(base, grid)
    start = max(16, base.vision_hidden // width_divisor // 16 * 16)
    for hidden in range(start, 15, -16):
        arch = dataclasses.replace(arch, vision_hidden=hidden, vision_mlp=round(hidden * base.vision_mlp / base.vision_hidden))
        if vision_share(arch, grid) <= target:
            break
    # Vision MACs are linear in the MLP width: solve for the width that gives the target share exactly.
    vision, llm = prefill_macs(arch, grid)
    per_mlp_unit = (vision - vision_macs(dataclasses.replace(arch, vision_mlp=0), grid)) / arch.vision_mlp
    wanted = target * llm / (1 - target)
    mlp = max(1, round(arch.vision_mlp + (wanted - vision) / per_mlp_unit))
    return dataclasses.replace(arch, vision_mlp=mlp)


def qwen_config(arch: Architecture, attn: str) -> Qwen2_5_VLConfig:
    head_dim = arch.llm_head_dim
    section = [head_dim // 8, 3 * head_dim // 16, head_dim // 2 - head_dim // 8 - 3 * head_dim // 16]  # 2:3:3
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=1024,
            hidden_size=arch.llm_hidden,
            intermediate_size=arch.llm_mlp,
            num_hidden_layers=arch.llm_layers,
            num_attention_heads=arch.llm_heads,
            num_key_value_heads=arch.llm_kv_heads,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            depth=arch.vision_depth,
            hidden_size=arch.vision_hidden,
            intermediate_size=arch.vision_mlp,
            num_heads=arch.vision_hidden // 16,
            out_hidden_size=arch.llm_hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=list(arch.vision_full_attention),
            tokens_per_second=2,
        ),
        image_token_id=IMAGE_TOKEN,
        video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn
    return config


# ---------------------------------------------------------------------------------------------- inputs


def parse_size(text: str) -> tuple[str, tuple[int, int, int]]:
    """"1024" -> an image of 32 x 32 merged tokens; "8x16x16" -> a video of 8 x 16 x 16 merged tokens."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        side = math.isqrt(parts[0])
        if side * side != parts[0]:
            raise ValueError(f"An image size must be a square number of merged tokens, got {text!r}.")
        return "image", (1, side, side)
    if len(parts) == 3:
        return "video", tuple(parts)
    raise ValueError(f"A size is N (square image of N merged tokens) or TxHxW (video), got {text!r}.")


def make_inputs(kind: str, grid, device, dtype) -> dict:
    t, h, w = grid
    n = t * h * w
    pad = IMAGE_TOKEN if kind == "image" else VIDEO_TOKEN
    ids = list(range(10, 26)) + [VISION_START] + [pad] * n + [VISION_END] + list(range(30, 46))
    input_ids = torch.tensor([ids], device=device)
    pixels = torch.randn(4 * n, PATCH_VALUES, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    grid_thw = torch.tensor([[t, 2 * h, 2 * w]], device=device)
    visual = {"pixel_values": pixels, "image_grid_thw": grid_thw} if kind == "image" else {
        "pixel_values_videos": pixels, "video_grid_thw": grid_thw}
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **visual}


# ---------------------------------------------------------------------------------------------- measuring


def measure(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function over `repeats` rounds; a round calls every function once, in turn, so a
    change in machine load during the run touches all of them alike. The caller has warmed them up."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(fn, device: torch.device):
    """(result of fn(), peak bytes of tensors allocated during the call above those alive before it).

    CUDA: the caching allocator's peak. CPU: the profiler's allocation and free records, summed in time order (so
    the peak is seen at operator granularity).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = fn()
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return result, peak


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def kv_bytes_7b(length: int) -> int:
    """KV cache of the 7B in bfloat16 for `length` tokens."""
    arch = QWEN2_5_VL_7B
    return 2 * arch.llm_layers * arch.llm_kv_heads * arch.llm_head_dim * length * 2


@torch.no_grad()
def bench_input(label, kind, grid, ratios, args, device, dtype) -> list[dict]:
    arch = benchmark_architecture(grid, args.width_divisor)
    torch.manual_seed(0)
    stock = Qwen2_5_VLForConditionalGeneration(qwen_config(arch, args.attn)).to(device, dtype).eval()
    model = VisionSelectorForConditionalGeneration.from_backbone(stock).eval()  # shares the stock tensors
    inputs = make_inputs(kind, grid, device, dtype)
    visual = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    n = grid[0] * grid[1] * grid[2]

    # T_vision(r) = encoder (the same for every r) + scorer and top-k at r, timed apart.
    fns = {
        "full": lambda: stock(**inputs, use_cache=True, logits_to_keep=1),
        "encoder": lambda: encode_visual_items(stock, visual),
    }
    features = fns["encoder"]()
    lengths = [f.shape[0] for f in features]
    flat = torch.cat(features)
    selections = {}
    for ratio in ratios:
        selections[ratio] = model.select_visual_tokens(**visual, retention_ratio=ratio)
        llm_inputs = _pruned_llm_inputs(model, inputs, selections[ratio])
        fns[f"pruned@{ratio}"] = lambda ratio=ratio: model(**inputs, retention_ratio=ratio, use_cache=True, logits_to_keep=1)
        fns[f"select@{ratio}"] = lambda ratio=ratio: topk_indices(model.scorer(flat, lengths), lengths, ratio)
        fns[f"llm@{ratio}"] = lambda llm_inputs=llm_inputs: _llm_prefill(model, llm_inputs)

    outputs, peaks = {}, {}
    for name, fn in fns.items():  # the warm-up calls; the prefills' ones also record the peak memory
        if name == "full" or name.startswith("pruned@"):
            outputs[name], peaks[name] = peak_memory(fn, device)
        else:
            outputs[name] = fn()
    t = measure(fns, args.repeats, device)

    full_length = inputs["input_ids"].shape[1]
    full_7b = sum(prefill_macs(QWEN2_5_VL_7B, grid, 1.0))
    rows = []
    for ratio in ratios:
        pruned = outputs[f"pruned@{ratio}"]
        t_pruned, t_llm = t[f"pruned@{ratio}"], t[f"llm@{ratio}"]
        t_vision = t["encoder"] + t[f"select@{ratio}"]
        ideal = t["full"] / (t_vision + t_llm)
        vision_7b, llm_7b = prefill_macs(QWEN2_5_VL_7B, grid, ratio)
        rows.append({
            "input": label, "kind": kind, "merged_grid": list(grid), "visual_tokens": n,
            "kept_visual_tokens": sum(len(k) for k in selections[ratio].kept_indices), "retention_ratio": ratio,
            "prefill_length": pruned.attention_mask.shape[1], "full_length": full_length,
            "t_full_s": t["full"], "t_pruned_s": t_pruned, "t_encoder_s": t["encoder"], "t_select_s": t[f"select@{ratio}"],
            "t_vision_s": t_vision, "t_llm_s": t_llm,
            "speedup": t["full"] / t_pruned, "ideal_speedup": ideal, "achieved_over_ideal": t["full"] / t_pruned / ideal,
            "select_share_of_prefill": t[f"select@{ratio}"] / t_pruned,
            "kv_cache_bytes": cache_bytes(pruned.past_key_values), "kv_cache_bytes_full": cache_bytes(outputs["full"].past_key_values),
            "kv_cache_bytes_7b_bf16": kv_bytes_7b(pruned.attention_mask.shape[1]),
            "peak_bytes": peaks[f"pruned@{ratio}"], "peak_bytes_full": peaks["full"],
            "ideal_speedup_7b_macs": full_7b / (vision_7b + llm_7b),
            "vision_mac_share_7b": vision_share(QWEN2_5_VL_7B, grid), "vision_mac_share_bench": vision_share(arch, grid),
            "vision_time_share_bench": t["encoder"] / t["full"],
            "architecture": dataclasses.asdict(arch),
        })
    print(f"  {label}: stock {t['full'] * 1e3:.0f} ms, encoder {t['encoder'] * 1e3:.0f} ms", file=sys.stderr, flush=True)
    return rows


def encode_visual_items(stock, visual) -> list[torch.Tensor]:
    """The stock vision encoder's merged tokens of every image, then every video."""
    features = []
    if visual.get("pixel_values") is not None:
        features += stock.model.get_image_features(visual["pixel_values"], visual["image_grid_thw"]).pooler_output
    if visual.get("pixel_values_videos") is not None:
        features += stock.model.get_video_features(visual["pixel_values_videos"], visual["video_grid_thw"]).pooler_output
    return features


def _llm_prefill(model, llm_inputs):
    """The language model alone: all layers over the pruned sequence, then the last token's logits."""
    out = model.model.language_model(**llm_inputs, use_cache=True)
    return model.lm_head(out.last_hidden_state[:, -1:]), out.past_key_values


def _pruned_llm_inputs(model, inputs, selection) -> dict:
    """The language model's inputs for the pruned prompt: embeddings with the kept features, positions, mask."""
    pruned = model.prune_inputs(
        selection,
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
    )
    embeds = model.model.get_input_embeddings()(pruned.input_ids)  # (1, L', D)
    placeholders = (pruned.input_ids == IMAGE_TOKEN) | (pruned.input_ids == VIDEO_TOKEN)
    kept = torch.cat([f[i] for f, i in zip(selection.features, selection.kept_indices)])
    embeds[placeholders] = kept.to(embeds.dtype)
    return {"inputs_embeds": embeds, "attention_mask": pruned.attention_mask, "position_ids": pruned.position_ids}


@torch.no_grad()
def bench_scorer(sizes, width: int, repeats: int, device, dtype, naive_max_gib: float) -> list[dict]:
    torch.manual_seed(0)
    scorer = VisionSelectorScorer(width, width // 2).to(device, dtype)
    rows = []
    for n in sizes:
        features = torch.randn(n, width, device=device, dtype=dtype)

        def naive():
            q, k = scorer.q_proj(features).float(), scorer.k_proj(features).float()
            return (q @ k.T).mean(1) / math.sqrt(scorer.hidden_size)  # (N, N) then its row means

        fns = {
            "scorer_s": lambda: scorer(features, [n]),
            "scorer_topk_s": lambda: topk_indices(scorer(features, [n]), [n], 0.2),
        }
        row = {"tokens": n, "width": width, "naive_s": None}
        if n * n * 4 / 2**30 <= naive_max_gib:
            fns["naive_s"] = naive
            row["max_abs_difference"] = float((naive() - fns["scorer_s"]()).abs().max())
        for fn in fns.values():
            fn()  # warm-up
        row.update(measure(fns, repeats, device))
        rows.append(row)
    return rows


def _growth_exponent(rows, key) -> float | None:
    points = [(math.log(r["tokens"]), math.log(r[key])) for r in rows if r[key]]
    if len(points) < 2:
        return None
    mx, my = (sum(p[i] for p in points) / len(points) for i in (0, 1))
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


# ---------------------------------------------------------------------------------------------- reporting


def _mib(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def prefill_table(rows) -> str:
    lines = [
        "| input | r | visual tokens | prefill ms | speedup | ideal | achieved/ideal | scorer+top-k % | KV MiB | KV MiB (7B bf16) | peak MiB | 7B MAC ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['input']} | {r['retention_ratio']} | {r['kept_visual_tokens']}/{r['visual_tokens']} | "
            f"{r['t_pruned_s'] * 1e3:.0f} (stock {r['t_full_s'] * 1e3:.0f}) | {r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | "
            f"{100 * r['achieved_over_ideal']:.0f}% | {100 * r['select_share_of_prefill']:.2f}% | {_mib(r['kv_cache_bytes'])} | "
            f"{_mib(r['kv_cache_bytes_7b_bf16'])} | {_mib(r['peak_bytes'])} (stock {_mib(r['peak_bytes_full'])}) | "
            f"{r['ideal_speedup_7b_macs']:.2f}x |"
        )
    return "\n".join(lines)


def shares_table(rows) -> str:
    lines = ["| input | vision MAC share, 7B | vision MAC share, benchmark model | encoder time share, measured | vision width / MLP |",
             "|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        if r["input"] not in seen:
            seen.add(r["input"])
            a = r["architecture"]
            lines.append(
                f"| {r['input']} | {100 * r['vision_mac_share_7b']:.1f}% | {100 * r['vision_mac_share_bench']:.1f}% | "
                f"{100 * r['vision_time_share_bench']:.1f}% | {a['vision_hidden']} / {a['vision_mlp']} |"
            )
    return "\n".join(lines)


def scorer_table(rows) -> str:
    lines = ["| N tokens | scorer ms | scorer + top-k (r=0.2) ms | naive N x N ms | naive / scorer |", "|---|---|---|---|---|"]
    for r in rows:
        naive = "skipped (memory cap)" if r["naive_s"] is None else f"{r['naive_s'] * 1e3:.2f}"
        ratio = "" if r["naive_s"] is None else f"{r['naive_s'] / r['scorer_s']:.0f}x"
        lines.append(f"| {r['tokens']} | {r['scorer_s'] * 1e3:.2f} | {r['scorer_topk_s'] * 1e3:.2f} | {naive} | {ratio} |")
    grow_fast, grow_naive = _growth_exponent(rows, "scorer_s"), _growth_exponent(rows, "naive_s")
    if grow_fast is not None:
        lines.append("")
        lines.append(
            f"Time ~ N^a over these N: scorer a = {grow_fast:.2f}"
            + ("" if grow_naive is None else f", naive a = {grow_naive:.2f}")
            + " (1 = linear, 2 = quadratic)."
        )
    return "\n".join(lines)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--attn", default="sdpa", help="attention implementation: sdpa, eager, flash_attention_2")
    parser.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16 (default on CUDA), float16")
    parser.add_argument("--sizes", default="256,1024,4096,8x16x16",
                        help="comma-separated: N = square image of N merged tokens, TxHxW = video of T x H x W merged tokens")
    parser.add_argument("--ratios", default="1.0,0.5,0.3,0.2,0.1")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared machine, OpenMP threads that wait for each other "
                        "slow small kernels by 10x or more and ruin the ratios; pass 2 on an idle 2-core machine)")
    parser.add_argument("--width-divisor", type=int, default=32, help="LLM width = 7B width / this")
    parser.add_argument("--scorer-sizes", default="1024,2048,4096,8192,16384")
    parser.add_argument("--scorer-width", type=int, default=None, help="token width for the scorer timing (default: the benchmark LLM's)")
    parser.add_argument("--naive-max-gib", type=float, default=4.0, help="skip the naive scorer where its N x N float32 matrix is larger")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/prefill_<device>.json)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.attn == "flash_attention_2" and dtype == torch.float32:
        parser.error("flash_attention_2 needs --dtype bfloat16 or float16.")
    ratios = [float(r) for r in args.ratios.split(",")]
    out = Path(args.out or Path(__file__).parent / "results" / f"prefill_{device.type}.json")

    started = time.perf_counter()
    bench_input("warm-up", "image", (1, 2, 2), [0.5], argparse.Namespace(**{**vars(args), "repeats": 1}), device, dtype)  # first-call costs
    rows = []
    for size in args.sizes.split(","):
        kind, grid = parse_size(size)
        label = f"image {grid[1] * 28}x{grid[2] * 28} px" if kind == "image" else f"video {2 * grid[0]} frames {grid[1] * 28}x{grid[2] * 28} px"
        rows.extend(bench_input(label, kind, grid, ratios, args, device, dtype))
    width = args.scorer_width or benchmark_architecture((1, 16, 16), args.width_divisor).llm_hidden
    scorer_rows = bench_scorer([int(s) for s in args.scorer_sizes.split(",")], width, args.repeats, device, dtype, args.naive_max_gib)
    elapsed = time.perf_counter() - started

    report = "\n\n".join([
        f"Hardware: {hardware(device)}; dtype {str(dtype).removeprefix('torch.')}, attention {args.attn}, "
        f"median of {args.repeats}; total {elapsed:.0f} s.",
        prefill_table(rows), shares_table(rows), scorer_table(scorer_rows),
    ])
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "hardware": hardware(device), "dtype": str(dtype), "attn": args.attn, "repeats": args.repeats,
        "width_divisor": args.width_divisor, "elapsed_s": elapsed, "prefill": rows, "scorer": scorer_rows,
    }, indent=1))
    out.with_suffix(".md").write_text(report + "\n")
    print(f"\nWrote {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
