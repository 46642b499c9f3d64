"""The vLLM plugin below the engine, on CPU: registration, processor, weights, selection and positions.

vLLM's PyPI wheel is built for CUDA: on CPU `import vllm` works but no engine starts. Everything an engine would
call on this model is called here directly, with vLLM's own classes: the processor vLLM builds for the embedded
tiny-shapes checkpoint, the model class vLLM would build (on vLLM's CPU platform, `VLLM_TARGET_DEVICE=cpu`, with
its weights loaded by vLLM's loader), and the per-step gathering of encoder outputs that vLLM's model runners do
(mirrored in `run_prompt`, as chunked prefill and prefix-cache hits cut a prompt into steps).

The reference is the transformers model and transformers' own `get_rope_index`, computed live: the full prompt's
positions with the dropped placeholders removed are what the pruned prompt must get. Qwen3-VL (images) is checked
the same way on a tiny merged checkpoint built in the test.

Skipped where vLLM is not installed (the core environments).
"""

import os
import socket
import weakref
from contextlib import ExitStack, contextmanager
from types import SimpleNamespace

import pytest

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # vLLM's CPU platform: the vision tower runs on CPU
pytest.importorskip("vllm")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModel  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402
from vllm import ModelRegistry  # noqa: E402
from vllm.config import DeviceConfig, LoRAConfig, ModelConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.distributed import init_distributed_environment, initialize_model_parallel  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402
from vllm.model_executor.model_loader import get_model_loader  # noqa: E402
from vllm.model_executor.model_loader.utils import process_weights_after_loading  # noqa: E402
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration  # noqa: E402
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration  # noqa: E402
from vllm.multimodal import MULTIMODAL_REGISTRY  # noqa: E402
from vllm.multimodal.encoder_budget import MultiModalBudget  # noqa: E402
from vllm.multimodal.inputs import MultiModalFeatureSpec  # noqa: E402
from vllm.multimodal.utils import group_and_batch_mm_kwargs, strip_covered_mm_data  # noqa: E402
from vllm.multimodal.video_prune.evs import compute_mrope_for_media, recompute_mrope_positions  # noqa: E402
from vllm.plugins import load_general_plugins  # noqa: E402
from vllm.v1.worker.gpu.mm.rope import RopeState  # noqa: E402

from modeling_visionselector import SCORER_PREFIX, VisionSelectorForConditionalGeneration  # noqa: E402
from visionselector.publishing import save_scorer  # noqa: E402
from modeling_visionselector.scoring import VisionSelectorScorer, num_kept_tokens  # noqa: E402
from visionselector.merge import merge_scorer_artifact  # noqa: E402
from visionselector.tiny import tiny_model, tiny_processor, tiny_qwen2_5_vl  # noqa: E402
from visionselector.vllm import ARCHITECTURES, register  # noqa: E402
from visionselector.vllm.model import (  # noqa: E402
    SCORER_RENAMING,
    UnservedVisionSelectorFamily,
    VisionSelectorQwen2_5_VLForConditionalGeneration,
    VisionSelectorQwen3VLForConditionalGeneration,
    check_supported,
    encoder_groups,
)
from visionselector.vllm.positions import (  # noqa: E402
    MAX_OFFSET,
    check_offsets_fit,
    NUM_OFFSET_CHANNELS,
    decode_offsets,
    encode_offsets,
    kept_token_offsets,
    temporal_positions,
)
from visionselector.vllm.processing import video_temporal_positions  # noqa: E402

CHECKPOINT = os.path.join(os.path.dirname(__file__), "..", "visionselector", "checkpoints", "tiny-shapes")
IMAGE_PAD, VIDEO_PAD = "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
TOKEN_IDS = {"image": 5, "video": 6}  # the tiny-shapes tokenizer's <|image_pad|> and <|video_pad|>


@contextmanager
def without_the_triton_requirement():
    """Lifts one check of vLLM >= 0.34, only while `CpuPlatform.check_and_update_config` runs.

    vLLM 0.34 refuses to build a `VllmConfig` on an x86 CPU without Triton ("vLLM on x86 CPUs requires Triton
    (triton-cpu)"): its CPU engine runs Triton kernels, and triton-cpu is not on PyPI. These tests build configs,
    the processor and the model, and call the model's methods directly; they run no engine step, hence no Triton
    kernel. Every other part of the platform's config check runs as it does in an engine.
    """
    import vllm.triton_utils
    from vllm.platforms import current_platform

    platform = type(current_platform)
    original = platform.__dict__["check_and_update_config"]

    def check_and_update_config(cls, vllm_config):
        has_triton = vllm.triton_utils.HAS_TRITON
        vllm.triton_utils.HAS_TRITON = True
        try:
            return original.__func__(cls, vllm_config)
        finally:
            vllm.triton_utils.HAS_TRITON = has_triton

    platform.check_and_update_config = classmethod(check_and_update_config)
    try:
        yield
    finally:
        platform.check_and_update_config = original


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_model(model_config: ModelConfig):
    """The model vLLM would build for `model_config`, its weights loaded by vLLM's default loader (strict)."""
    vllm_config = VllmConfig(model_config=model_config, device_config=DeviceConfig(device="cpu"))
    model_class, _ = ModelRegistry.resolve_model_cls(model_config.architectures, model_config=model_config)
    with set_current_vllm_config(vllm_config):
        model = model_class(vllm_config=vllm_config).eval()
        get_model_loader(vllm_config.load_config).load_weights(model, model_config)
        process_weights_after_loading(model, model_config, torch.device("cpu"))
    return model


@pytest.fixture(scope="module")
def engine():
    """vLLM's config, processor and model for the embedded checkpoint, and the transformers model beside them."""
    torch.set_num_threads(1)
    load_general_plugins()  # what every vLLM process does: runs our entry point
    model_config = ModelConfig(model=CHECKPOINT, trust_remote_code=True, dtype="float32", max_model_len=4096)
    with ExitStack() as stack:
        stack.enter_context(without_the_triton_requirement())
        stack.enter_context(set_current_vllm_config(VllmConfig(model_config=model_config)))
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0, backend="gloo", distributed_init_method=f"tcp://127.0.0.1:{free_port()}"
        )
        initialize_model_parallel(1, 1)
        model = build_model(model_config)
        processor = MULTIMODAL_REGISTRY.create_processor(model_config)
        reference = AutoModel.from_pretrained(CHECKPOINT, trust_remote_code=True).eval()
        yield SimpleNamespace(
            model_config=model_config,
            model=model,
            processor=processor,
            hf_processor=processor.info.get_hf_processor(),
            reference=reference,
        )


# ---------------------------------------------------------------------------------------------------- inputs

RNG = np.random.default_rng(0)
IMAGES = {
    "wide": Image.fromarray(RNG.integers(0, 256, (140, 420, 3), dtype=np.uint8)),
    "tall": Image.fromarray(RNG.integers(0, 256, (448, 168, 3), dtype=np.uint8)),
}
# 3 frames per second and 2 frames per temporal patch: 2/3 s per grid, 4/3 rotary steps per grid
# (frames, fps) of each video, 2 frames per temporal patch. "video": 3 fps, so 2/3 s per grid and 4/3 rotary steps
# per grid. "long video": 1 fps, 4 rotary steps per grid: its last frames (at 44) lie past the text after it (its
# grid is 9 x 7 merged tokens, so that text runs from 9 to 16 after the video's start).
VIDEOS = {
    "video": (RNG.integers(0, 256, (6, 112, 84, 3), dtype=np.uint8), 3.0),
    "long video": (RNG.integers(0, 256, (24, 112, 84, 3), dtype=np.uint8), 1.0),
}


def video_metadata(frames: int, fps: float) -> dict:
    return {
        "fps": fps,
        "duration": frames / fps,
        "total_num_frames": frames,
        "frames_indices": list(range(frames)),
        "video_backend": "opencv",
        "do_sample_frames": False,
    }


def make_prompt(items: list[str], text: str = "what is the colour") -> str:
    """A chat prompt with the items (names of IMAGES, or "video") separated by a little text."""
    content = " left ".join(VIDEO_PAD if item in VIDEOS else IMAGE_PAD for item in items)
    return f"<|im_start|>user\n{content}{text}<|im_end|>\n<|im_start|>assistant\n"


def mm_data(items: list[str]) -> dict:
    data = {}
    for item in items:
        if item in VIDEOS:
            frames, fps = VIDEOS[item]
            data.setdefault("video", []).append((frames, video_metadata(len(frames), fps)))
        else:
            data.setdefault("image", []).append(IMAGES[item])
    return data


def vllm_process(engine, items: list[str], **mm_processor_kwargs):
    """vLLM's processor on a prompt: token ids with k placeholders per item, and the items as the runner gets them."""
    prompt_ids = engine.processor.info.get_tokenizer().encode(make_prompt(items))
    out = engine.processor(
        prompt_ids, engine.processor.info.parse_mm_data(mm_data(items)), hf_processor_mm_kwargs=mm_processor_kwargs
    )
    features = [
        MultiModalFeatureSpec(
            data=out["mm_kwargs"][modality][index],
            modality=modality,
            identifier=out["mm_hashes"][modality][index],
            mm_position=out["mm_placeholders"][modality][index],
        )
        for modality in out["mm_placeholders"]
        for index in range(len(out["mm_placeholders"][modality]))
    ]
    return out, sorted(features, key=lambda feature: feature.mm_position.offset)


def encoder_outputs(model, features) -> dict[str, torch.Tensor]:
    """`embed_multimodal` on the request's items, grouped by modality as vLLM's runners group them."""
    outputs = {}
    for modality in ("image", "video"):
        group = [feature for feature in features if feature.modality == modality]
        if not group:
            continue
        batches = list(group_and_batch_mm_kwargs([(modality, feature.data) for feature in group], device="cpu"))
        assert len(batches) == 1
        with torch.no_grad():
            embeddings = model.embed_multimodal(**batches[0][2])
        outputs.update({feature.identifier: embedding for feature, embedding in zip(group, embeddings)})
    return outputs


def run_prompt(model, prompt_ids, features, outputs, steps):
    """The prompt's positions as the language model receives them, step after step, and its merged embeddings.

    Mirrors what vLLM's runners do each step: the step's slice of the positions computed when the request arrived,
    the slice of every item's encoder output that falls in the step, `embed_input_ids`, then `forward`'s position
    update. `steps` are (start, end) token ranges; a first start > 0 is a prefix-cache hit.
    """
    up_front, delta = model.get_mrope_input_positions(prompt_ids, features)
    positions, embeddings = {}, {}
    for start, end in steps:
        step_embeddings, is_multimodal = [], torch.zeros(end - start, dtype=torch.bool)
        for feature in features:
            offset, length = feature.mm_position.offset, feature.mm_position.length
            first, last = max(start - offset, 0), min(end - offset, length)
            if first < last:
                step_embeddings.append(outputs[feature.identifier][first:last])
                is_multimodal[offset + first - start : offset + last - start] = True
        ids = torch.tensor(prompt_ids[start:end])
        with torch.no_grad():
            step_embeds = model.embed_input_ids(ids, step_embeddings, is_multimodal=is_multimodal)
        step_positions = up_front[:, start:end].clone()
        model.add_visual_position_offsets(step_positions)
        for index in range(start, end):
            positions[index] = step_positions[:, index - start]
            embeddings[index] = step_embeds[index - start]
    order = sorted(positions)
    return torch.stack([positions[i] for i in order], 1), torch.stack([embeddings[i] for i in order]), delta, order


def transformers_reference(engine, items: list[str], retention_ratio: float):
    """The transformers model on the same prompt: full ids and positions, kept indices, pruned ids and positions."""
    videos = [VIDEOS[item][0] for item in items if item in VIDEOS] or None
    metadata = [
        VideoMetadata(**{k: v for k, v in video_metadata(len(frames), fps).items() if k != "do_sample_frames"})
        for frames, fps in (VIDEOS[item] for item in items if item in VIDEOS)
    ]
    inputs = engine.hf_processor(
        text=[make_prompt(items)],
        images=[IMAGES[item] for item in items if item not in VIDEOS] or None,
        videos=videos,
        video_metadata=metadata if videos else None,
        do_sample_frames=False,
        return_tensors="pt",
    )
    ids = inputs["input_ids"]
    token_types = (ids == TOKEN_IDS["image"]).long() + 2 * (ids == TOKEN_IDS["video"]).long()
    full_positions, _ = engine.reference.model.get_rope_index(
        ids,
        mm_token_type_ids=token_types,
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
    )
    with torch.no_grad():
        selection = engine.reference.select_visual_tokens(
            inputs.get("pixel_values"),
            inputs.get("image_grid_thw"),
            inputs.get("pixel_values_videos"),
            inputs.get("video_grid_thw"),
            retention_ratio=retention_ratio,
        )
    kept = {"image": list(selection.kept_indices[: selection.num_images]), "video": list(selection.kept_indices[selection.num_images :])}
    features = {"image": list(selection.features[: selection.num_images]), "video": list(selection.features[selection.num_images :])}
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    kept_features = []
    position = 0
    while position < ids.shape[1]:  # placeholder runs in prompt order
        modality = {TOKEN_IDS["image"]: "image", TOKEN_IDS["video"]: "video"}.get(int(ids[0, position]))
        if modality is None:
            position += 1
            continue
        item_kept, item_features = kept[modality].pop(0), features[modality].pop(0)
        run = torch.zeros(item_features.shape[0], dtype=torch.bool)
        run[item_kept] = True
        keep[position : position + run.numel()] = run
        kept_features.append(item_features[item_kept])
        position += run.numel()
    return SimpleNamespace(
        inputs=inputs,
        full_positions=full_positions[:, 0],
        pruned_ids=ids[0, keep].tolist(),
        pruned_positions=full_positions[:, 0, keep],
        kept_features=kept_features,
        selection=selection,
    )


# ---------------------------------------------------------------------------------------------------- registration


def test_entry_point_registers_a_subclass_of_vllms_qwen2_5_vl(engine):
    register()  # vLLM may call it in every process, more than once
    assert set(ARCHITECTURES) <= set(ModelRegistry.get_supported_archs())
    # the embedded checkpoint names the class by its first name; checkpoints saved now by its explicit one: both serve
    assert engine.model_config.architectures == ["VisionSelectorForConditionalGeneration"]
    for architectures in (engine.model_config.architectures, ["VisionSelectorQwen2_5_VLForConditionalGeneration"]):
        model_class, architecture = ModelRegistry.resolve_model_cls(architectures, model_config=engine.model_config)
        assert model_class is VisionSelectorQwen2_5_VLForConditionalGeneration
        assert issubclass(model_class, Qwen2_5_VLForConditionalGeneration)


def test_unsupported_settings_are_named():
    def settings(
        scorer_only=False, model_type="visionselector_qwen2_5_vl", pruning=False, pp=1, dbo=False, spec=None, lora=None
    ):
        multimodal = SimpleNamespace(is_multimodal_pruning_enabled=lambda: pruning)
        model_config = SimpleNamespace(
            model="m",
            hf_config=SimpleNamespace(scorer_only=scorer_only, model_type=model_type),
            get_multimodal_config=lambda: multimodal,
        )
        parallel = SimpleNamespace(pipeline_parallel_size=pp, use_ubatching=dbo)
        return SimpleNamespace(
            model_config=model_config, parallel_config=parallel, speculative_config=spec, lora_config=lora
        )

    check_supported(settings())
    check_supported(settings(lora=LoRAConfig()))  # LoRA on the language model: served
    for kwargs, message in [
        (dict(scorer_only=True), "visionselector-hub merge"),
        (dict(model_type="visionselector_qwen3_vl"), "'visionselector_qwen3_vl' checkpoint.*Qwen2.5-VL"),
        (dict(lora=LoRAConfig(enable_tower_connector_lora=True)), "--enable-tower-connector-lora"),
        (dict(pruning=True), "--video-pruning-rate"),
        (dict(pp=2), "--pipeline-parallel-size"),
        (dict(dbo=True), "--enable-dbo"),
        (dict(spec=object()), "speculative decoding"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_supported(settings(**kwargs))


# ---------------------------------------------------------------------------------------------------- processor


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.3, 0.1, 0.01])
def test_placeholders_per_item_are_the_transformers_count(engine, ratio):
    items = ["wide", "tall", "video"]
    out, features = vllm_process(engine, items, retention_ratio=ratio)
    merge = engine.model_config.hf_config.vision_config.spatial_merge_size
    for feature in features:
        grid = feature.data[f"{feature.modality}_grid_thw"].data
        n = int(grid.prod()) // merge**2
        assert feature.mm_position.length == num_kept_tokens(n, ratio) == int(feature.data[f"{feature.modality}_num_kept_tokens"].data)
    reference = transformers_reference(engine, items, ratio)
    assert [len(kept) for kept in reference.selection.kept_indices] == [
        f.mm_position.length for f in sorted(features, key=lambda f: f.modality != "image")
    ]
    assert out["prompt_token_ids"] == reference.pruned_ids


def test_ratio_is_part_of_the_hash_wherever_it_is_set(engine):
    hashes = {}
    for ratio in (1.0, 0.5, 0.3, 0.1):
        out, _ = vllm_process(engine, ["wide", "video"], retention_ratio=ratio)
        hashes[ratio] = out["mm_hashes"]
    again, _ = vllm_process(engine, ["wide", "video"], retention_ratio=0.3)
    assert again["mm_hashes"] == hashes[0.3]
    for modality in ("image", "video"):
        assert len({tuple(h[modality]) for h in hashes.values()}) == 4  # every ratio its own entries
    # no ratio in the request: the checkpoint's default (0.2) is hashed like a request that names it
    default, _ = vllm_process(engine, ["wide", "video"])
    named, _ = vllm_process(engine, ["wide", "video"], retention_ratio=0.2)
    assert default["mm_hashes"] == named["mm_hashes"] and default["mm_hashes"] != hashes[0.3]
    # the server's --mm-processor-kwargs default: hashed and counted like the same ratio in a request
    server = ModelConfig(
        model=CHECKPOINT, trust_remote_code=True, dtype="float32", max_model_len=4096,
        mm_processor_kwargs={"retention_ratio": 0.5},
    )
    server_processor = MULTIMODAL_REGISTRY.create_processor(server)
    prompt_ids = server_processor.info.get_tokenizer().encode(make_prompt(["wide", "video"]))
    served = server_processor(prompt_ids, server_processor.info.parse_mm_data(mm_data(["wide", "video"])))
    assert served["mm_hashes"] == hashes[0.5]
    assert served["mm_placeholders"] == vllm_process(engine, ["wide", "video"], retention_ratio=0.5)[0]["mm_placeholders"]
    request = server_processor(
        prompt_ids, server_processor.info.parse_mm_data(mm_data(["wide", "video"])),
        hf_processor_mm_kwargs={"retention_ratio": 0.1},
    )
    assert request["mm_hashes"] == hashes[0.1]  # a request's own ratio wins over the server's


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), "0.3", True])
def test_bad_ratio_is_a_value_error_naming_it(engine, bad):
    with pytest.raises(ValueError, match=r"retention_ratio.*\(0, 1\]"):
        vllm_process(engine, ["wide"], retention_ratio=bad)


def test_temporal_positions_are_exact_for_fractional_seconds_per_grid(engine):
    """`video_temporal_positions` is transformers' temporal row, also where a bfloat16 cast would shift it."""
    frames = np.zeros((264, 28, 28, 3), dtype=np.uint8)  # 132 grids at 2/3 s: 4/3 rotary steps per grid
    out = engine.processor(
        engine.processor.info.get_tokenizer().encode(make_prompt(["video"])),
        engine.processor.info.parse_mm_data({"video": [(frames, video_metadata(264, 3.0))]}),
        hf_processor_mm_kwargs={"retention_ratio": 0.1},
    )
    item = out["mm_kwargs"]["video"][0]
    grid = item["video_grid_thw"].data
    table = item["video_temporal_positions"].data
    seconds = torch.tensor([2 / 3])  # what the transformers processor returns for 3 fps, float32
    reference = engine.reference.model.get_vision_position_ids(0, grid, 1, 2, 2 * seconds[0])[0].reshape(grid[0], -1)[:, 0]
    assert torch.equal(table, reference)
    assert torch.equal(table, video_temporal_positions(grid[None], seconds, 2))
    shifted = video_temporal_positions(grid[None], seconds.to(torch.bfloat16), 2)
    assert not torch.equal(shifted, reference)  # vLLM casts floating outputs to the model dtype: why the table


# ---------------------------------------------------------------------------------------------------- weights


def test_scorer_weight_names(engine):
    assert SCORER_RENAMING.map_name("visual.importance_scorer.q_proj.weight") == "scorer.q_proj.weight"
    assert SCORER_RENAMING.map_name("model.visual.importance_scorer.k_proj.bias") == "scorer.k_proj.bias"
    mapper = VisionSelectorQwen2_5_VLForConditionalGeneration.hf_to_vllm_mapper
    assert mapper.map_name("scorer.k_proj.weight") == "scorer.k_proj.weight"
    assert mapper.map_name("visual.importance_scorer.k_proj.weight") == "scorer.k_proj.weight"
    assert mapper.map_name("visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    assert mapper.map_name("model.layers.0.mlp.up_proj.weight") == "language_model.model.layers.0.mlp.up_proj.weight"

    model = engine.model
    original = {name: value.clone() for name, value in model.scorer.state_dict().items()}
    reference = {f"scorer.{name}": value for name, value in engine.reference.scorer.state_dict().items()}
    assert all(torch.equal(original[name.removeprefix(SCORER_PREFIX)], value) for name, value in reference.items())
    try:
        for prefix in ("visual.importance_scorer.", "model.visual.importance_scorer.", SCORER_PREFIX):
            new = {name: torch.randn_like(value) for name, value in original.items()}
            loaded = model.load_weights((prefix + name, value) for name, value in new.items())
            assert loaded == {f"scorer.{name}" for name in new}
            assert all(torch.equal(model.scorer.state_dict()[name], value) for name, value in new.items())
    finally:
        model.scorer.load_state_dict(original)


def test_merged_scorer_artifact_is_servable(engine, tmp_path):
    """`visionselector-hub merge` output: vLLM's strict loader fills every parameter, the scorer the artifact's."""
    base_dir, artifact_dir = tmp_path / "base", tmp_path / "artifact"
    tiny_qwen2_5_vl(seed=0, text_hidden_size=32).save_pretrained(base_dir, max_shard_size="200KB")
    torch.manual_seed(5)
    with_scorer = VisionSelectorForConditionalGeneration.from_backbone(str(base_dir))
    save_scorer(with_scorer, artifact_dir, processor=tiny_processor(), base_model_name_or_path=str(base_dir))
    merged = merge_scorer_artifact(artifact_dir, tmp_path / "full")
    config = ModelConfig(model=str(merged), trust_remote_code=True, dtype="float32", max_model_len=1024)
    model = build_model(config)  # raises if a parameter was not in the checkpoint
    for name, value in with_scorer.scorer.state_dict().items():
        assert torch.equal(model.scorer.state_dict()[name], value)
    assert torch.equal(
        model.visual.patch_embed.proj.weight.flatten(1), with_scorer.model.visual.patch_embed.proj.weight.flatten(1)
    )
    scorer_only = ModelConfig(model=str(artifact_dir), trust_remote_code=True, dtype="float32", max_model_len=1024)
    with pytest.raises(ValueError, match="visionselector-hub merge"):
        check_supported(VllmConfig(model_config=scorer_only))


def test_the_plugin_builds_the_scorer_the_config_names(engine, tmp_path):
    """A merged checkpoint of the 4-head scorer (`scorer_heads=4`) serves with that scorer: same tensors, the
    transformers model's scores."""
    base_dir, artifact_dir = tmp_path / "base", tmp_path / "artifact"
    tiny_qwen2_5_vl(seed=0, text_hidden_size=32).save_pretrained(base_dir, max_shard_size="200KB")
    torch.manual_seed(6)
    with_scorer = VisionSelectorForConditionalGeneration.from_backbone(str(base_dir), scorer_heads=4).eval()
    with torch.no_grad():
        for parameter in with_scorer.scorer.parameters():
            parameter.normal_()
    save_scorer(with_scorer, artifact_dir, processor=tiny_processor(), base_model_name_or_path=str(base_dir))
    merged = merge_scorer_artifact(artifact_dir, tmp_path / "full")
    model = build_model(ModelConfig(model=str(merged), trust_remote_code=True, dtype="float32", max_model_len=1024))
    assert (model.scorer.num_heads, model.scorer.head_reduction) == (4, "max")
    for name, value in with_scorer.scorer.state_dict().items():
        assert torch.equal(model.scorer.state_dict()[name], value)
    features = torch.randn(30, 32)
    assert torch.equal(model.scorer(features, [12, 18]), with_scorer.scorer(features, [12, 18]))


# ---------------------------------------------------------------------------------------------------- selection


def test_selection_is_the_transformers_models(engine):
    items = ["wide", "tall", "video"]
    _, features = vllm_process(engine, items, retention_ratio=0.3)
    outputs = encoder_outputs(engine.model, features)
    reference = transformers_reference(engine, items, 0.3)
    for feature, expected in zip(features, reference.kept_features):
        output = outputs[feature.identifier]
        assert output.shape == (expected.shape[0], expected.shape[1] + NUM_OFFSET_CHANNELS)
        torch.testing.assert_close(output[:, :-NUM_OFFSET_CHANNELS], expected, rtol=1e-4, atol=1e-5)
    # the encoder run in groups of at most one item (a smaller budget than the batch) gives the same outputs
    budget = engine.model.encoder_budget
    engine.model.encoder_budget = 1
    try:
        grouped = encoder_outputs(engine.model, features)
    finally:
        engine.model.encoder_budget = budget
    assert all(torch.equal(grouped[key], outputs[key]) for key in outputs)


def test_encoder_groups():
    assert encoder_groups([3, 3, 3], 6) == [slice(0, 2), slice(2, 3)]
    assert encoder_groups([10, 2, 2], 4) == [slice(0, 1), slice(1, 3)]  # too big for the budget: alone
    assert encoder_groups([1, 1], 100) == [slice(0, 2)]
    assert encoder_groups([], 5) == []


# ---------------------------------------------------------------------------------------------------- positions

CASES = {
    "wide image": ["wide"],
    "tall image": ["tall"],
    "two images": ["tall", "wide"],
    "video at 2/3 s per grid": ["video"],
    "image and video": ["wide", "video"],
    "video whose last frames lie past the text after it": ["long video"],
}


@pytest.mark.parametrize("ratio", [1.0, 0.3])
@pytest.mark.parametrize("case", list(CASES))
def test_positions_are_transformers_positions_of_the_kept_tokens(engine, case, ratio):
    items = CASES[case]
    out, features = vllm_process(engine, items, retention_ratio=ratio)
    prompt_ids = out["prompt_token_ids"]
    outputs = encoder_outputs(engine.model, features)
    reference = transformers_reference(engine, items, ratio)
    assert prompt_ids == reference.pruned_ids
    length = len(prompt_ids)
    first_item = features[0].mm_position
    splits = {
        "one step": [(0, length)],
        "chunks of 7": [(start, min(start + 7, length)) for start in range(0, length, 7)],
        "chunk ends inside the first item": [(0, first_item.offset + 1), (first_item.offset + 1, length)],
        # a prefix-cache hit that covers the first item partly, then the whole of it
        "cache hit inside the first item": [(first_item.offset + first_item.length // 2, length)],
        "cache hit past the first item": [(first_item.offset + first_item.length + 1, length)],
    }
    for name, steps in splits.items():
        positions, embeddings, delta, order = run_prompt(engine.model, prompt_ids, features, outputs, steps)
        assert torch.equal(positions, reference.pruned_positions[:, order]), name
        # generation continues where transformers' `generate` continues: after the last prompt position
        assert delta == int(reference.full_positions[0, -1]) + 1 - length, name
    # every visual embedding fed is the kept feature (offset channels stripped), in prompt order
    positions, embeddings, _, _ = run_prompt(engine.model, prompt_ids, features, outputs, [(0, length)])
    visual = torch.tensor([token in TOKEN_IDS.values() for token in prompt_ids])
    torch.testing.assert_close(embeddings[visual], torch.cat(reference.kept_features), rtol=1e-4, atol=1e-5)


def test_a_step_without_visual_tokens_adds_nothing(engine):
    out, features = vllm_process(engine, ["tall"], retention_ratio=0.3)
    outputs = encoder_outputs(engine.model, features)
    prompt_ids = out["prompt_token_ids"]
    run_prompt(engine.model, prompt_ids, features, outputs, [(0, len(prompt_ids))])  # writes offsets
    assert int(engine.model.visual_position_offsets.abs().sum()) > 0
    decode = torch.full((3, 4), 100)
    engine.model.embed_input_ids(torch.tensor([7, 8, 9, 10]))  # a decode step: text only
    assert torch.equal(engine.model.add_visual_position_offsets(decode), torch.full((3, 4), 100))
    assert int(engine.model.visual_position_offsets.abs().sum()) == 0


def test_evs_positions_differ_where_ours_do_not(engine):
    """vLLM's EVS: text after a tall image lands at base + width; fractional seconds per grid collapse to 0."""
    merge = 2
    reference = transformers_reference(engine, ["tall"], 1.0)
    out, features = vllm_process(engine, ["tall"], retention_ratio=1.0)
    (feature,) = features
    grid = feature.data["image_grid_thw"].data
    ids = torch.tensor(out["prompt_token_ids"])
    evs_media = compute_mrope_for_media(grid, merge).T  # (4, n): t, h, w, width
    start = feature.mm_position.offset
    before = torch.arange(len(ids)).expand(3, -1).clone()  # EVS starts from positions it then rewrites
    evs, _ = recompute_mrope_positions(ids, [evs_media], before, 0, 3, TOKEN_IDS["image"], TOKEN_IDS["video"])
    end = start + feature.mm_position.length
    ours, _ = engine.model.get_mrope_input_positions(out["prompt_token_ids"], features)
    assert torch.equal(ours[:, end:], reference.full_positions[:, end:])
    _, height, width = (grid // torch.tensor([1, merge, merge])).tolist()
    assert height > width
    assert int(evs[0, end]) == int(reference.full_positions[0, end]) - height + width  # base + width: wrong

    # EVS on a video at 2/3 s per grid: the temporal row of its kept tokens is all zeros
    _, video_features = vllm_process(engine, ["video"], retention_ratio=1.0)
    video = video_features[0].data
    video_grid = video["video_grid_thw"].data
    seconds = torch.tensor([2 / 3])
    fake_model = SimpleNamespace(
        visual=SimpleNamespace(spatial_merge_size=merge),
        config=SimpleNamespace(vision_config=SimpleNamespace(tokens_per_second=2)),
        video_pruning_rate=0.01,
    )
    n = int(video_grid.prod()) // merge**2
    (evs_video,) = Qwen2_5_VLForConditionalGeneration._postprocess_video_embeds_evs(
        fake_model, (torch.randn(n, 8),), {"video_grid_thw": video_grid[None], "second_per_grid_ts": seconds}
    )
    assert int(evs_video[:, -4].max()) == 0  # every frame at temporal position 0
    table = video["video_temporal_positions"].data
    assert int(table.max()) > 0 and torch.equal(table, temporal_positions(int(video_grid[0]), 2 * seconds[0]))


def test_offsets_round_trip_in_every_embedding_dtype():
    offsets = torch.tensor([[0, 0, 0], [255, 256, 65535], [MAX_OFFSET, 17, 3]])
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert torch.equal(decode_offsets(encode_offsets(offsets, dtype)), offsets)
    with pytest.raises(ValueError, match=r"must lie in \[0, 16777215\]"):
        check_offsets_fit((2, 1, 1), torch.tensor([0, MAX_OFFSET + 1]), 2**30)
    check_offsets_fit((2, 1, 1), torch.tensor([0, MAX_OFFSET]), 2**30)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4095\] \(max_position_embeddings = 4096\)"):
        check_offsets_fit((2, 1, 1), torch.tensor([0, 4096]), 4096)
    check_offsets_fit((2, 1, 1), torch.tensor([0, 4095]), 4096)
    kept = torch.tensor([0, 5, 13, 23])  # grid (2, 3, 4): frame, row, column
    assert kept_token_offsets(kept, (2, 3, 4), torch.tensor([0, 7])).tolist() == [[0, 0, 0], [0, 1, 1], [7, 0, 1], [7, 2, 3]]


def test_prompt_positions_for_a_long_video_and_any_selection(engine):
    """A video whose temporal positions run past the text after it: generation continues after the last position.

    Pure positions, no encoder: for a random selection, anchor + `kept_token_offsets` is transformers' position of
    every kept token, the text is where transformers puts it, and the delta is the stock model's on the full prompt.
    """
    from visionselector.vllm.positions import PrunedItem, largest_prompt_position, prompt_positions

    generator = torch.Generator().manual_seed(0)
    grid, merge = torch.tensor([66, 16, 12]), 2  # 66 temporal patches of 8 x 6 merged tokens
    seconds = torch.tensor([2 / 3])
    n, prefix, suffix = int(grid.prod()) // merge**2, [7, 10, 3], [4, 13, 2, 7]
    full_ids = torch.tensor([prefix + [TOKEN_IDS["video"]] * n + suffix])
    full, _ = engine.reference.model.get_rope_index(
        full_ids, mm_token_type_ids=2 * (full_ids == TOKEN_IDS["video"]).long(), video_grid_thw=grid[None],
        second_per_grid_ts=seconds,
    )
    full = full[:, 0]
    table = video_temporal_positions(grid[None], seconds, 2)
    assert int(table[-1]) > 8 + len(suffix)  # the video's last temporal position is past the text after it
    for k in (n, 37, 1):
        kept = torch.randperm(n, generator=generator)[:k].sort().values
        item = PrunedItem(offset=len(prefix), num_kept=k, grid=(66, 8, 6), last_temporal_position=int(table[-1]))
        positions, delta = prompt_positions(len(prefix) + k + len(suffix), [item])
        positions[:, len(prefix) : len(prefix) + k] += kept_token_offsets(kept, (66, 8, 6), table).T
        keep = torch.ones(full.shape[1], dtype=torch.bool)
        keep[len(prefix) : len(prefix) + n] = False
        keep[len(prefix) + kept] = True
        assert torch.equal(positions, full[:, keep])
        assert delta == int(full[0, -1]) + 1 - positions.shape[1]  # generate's rule: the last position + 1
        assert largest_prompt_position(positions.shape[1], [item]) == int(full.max()) > int(full[0, -1])


# ---------------------------------------------------------------------------------------------------- preemption


def recording_rope_state():
    """Model Runner V2's `RopeState` with host arrays for its staged GPU buffers (this machine has no CUDA)."""
    state = RopeState.__new__(RopeState)
    state.num_dims = 3
    rows = {}
    state.prefill_positions = SimpleNamespace(
        stage_write=lambda row, start, values: rows.__setitem__(row, torch.as_tensor(np.asarray(values)))
    )
    state.prefill_delta = SimpleNamespace(np=np.zeros(1, dtype=np.int64))

    def staged():
        return torch.stack([rows[index] for index in range(3)]).long(), int(state.prefill_delta.np[0])

    return state, staged


def test_generated_tokens_keep_their_positions_when_model_runner_v2_resumes_a_preempted_request(engine):
    """Model Runner V2 resumes a preempted request by prefilling its prompt and the tokens it generated (the
    scheduler's `prefill_token_ids`) through `get_mrope_input_positions` (`RopeState.init_prefill_positions`); in
    between it decodes token i at i + delta (`_prepare_rope_positions_kernel`). A generated token must get back the
    position it was decoded at, here after a video whose last frames lie past the text after it; and those are the
    positions transformers' `generate` gives the same tokens."""
    out, features = vllm_process(engine, ["long video"], retention_ratio=0.3)
    prompt = out["prompt_token_ids"]
    state, staged = recording_rope_state()
    state.init_prefill_positions(0, engine.model, prompt, features)
    prompt_positions, delta = staged()

    reference = transformers_reference(engine, ["long video"], 0.3)
    assert int(reference.full_positions.max()) > int(reference.full_positions[0, -1])  # the case that matters
    captured = []
    hook = engine.reference.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(kwargs["position_ids"][-3:, 0]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            generated = engine.reference.generate(
                **reference.inputs, retention_ratio=0.3, max_new_tokens=4, min_new_tokens=4, do_sample=False
            )[0, reference.inputs["input_ids"].shape[1] :].tolist()
    finally:
        hook.remove()
    decoded = torch.tensor([len(prompt) + m + delta for m in range(len(generated))]).expand(3, -1)
    # transformers feeds generated token m (but the last) at step m + 1
    assert torch.equal(torch.cat(captured[1:], dim=1), decoded[:, :-1])

    # preempted, then resumed (with a prefix-cache hit over the video: the scheduler strips its tensors)
    resumed = strip_covered_mm_data(features, len(prompt) - 1, uses_mrope=True)
    assert resumed[0].data is not features[0].data
    state.init_prefill_positions(0, engine.model, prompt + generated, resumed)
    positions, resumed_delta = staged()
    assert torch.equal(positions[:, : len(prompt)], prompt_positions)
    assert torch.equal(positions[:, len(prompt) :], decoded)
    assert resumed_delta == delta


# ---------------------------------------------------------------------------------------------------- requests refused


def test_a_video_whose_positions_pass_max_position_embeddings_is_refused_by_the_processor(engine):
    """Refused where a `ValueError` fails that request only (HTTP 400), not in the worker, where it would end the
    engine. 12 temporal patches at 0.01 fps: 200 s per grid, 400 rotary steps per grid, the last at 4400."""
    frames = np.zeros((24, 28, 28, 3), dtype=np.uint8)
    prompt_ids = engine.processor.info.get_tokenizer().encode(make_prompt(["video"]))
    assert engine.model_config.hf_config.get_text_config().max_position_embeddings == 4096
    message = r"spans 4401 rotary positions.*\[0, 4095\] \(max_position_embeddings = 4096\)"
    with pytest.raises(ValueError, match=message):
        engine.processor(
            prompt_ids,
            engine.processor.info.parse_mm_data({"video": [(frames, video_metadata(24, 0.01))]}),
            hf_processor_mm_kwargs={"retention_ratio": 0.5},
        )
    accepted = engine.processor(  # at 0.02 fps the last frames are at 2200
        prompt_ids,
        engine.processor.info.parse_mm_data({"video": [(frames, video_metadata(24, 0.02))]}),
        hf_processor_mm_kwargs={"retention_ratio": 0.5},
    )
    assert int(accepted["mm_kwargs"]["video"][0]["video_temporal_positions"].data[-1]) == 2200


def test_a_prompt_that_ends_with_placeholders_is_refused_by_the_processor(engine):
    prompt_ids = engine.processor.info.get_tokenizer().encode("<|im_start|>user\n<|vision_start|><|image_pad|>")
    with pytest.raises(ValueError, match="ends with the placeholders of an image or video"):
        engine.processor(prompt_ids, engine.processor.info.parse_mm_data(mm_data(["wide"])), hf_processor_mm_kwargs={})


def test_every_family_of_the_model_package_is_registered_served_or_refused():
    """A family added to the model package without a vLLM entry would fall back to vLLM's Transformers backend."""
    from modeling_visionselector import VISIONSELECTOR_CLASSES

    assert {model_class.__name__ for model_class in VISIONSELECTOR_CLASSES.values()} <= set(ARCHITECTURES)


@pytest.mark.parametrize(
    "architecture", sorted(name for name, target in ARCHITECTURES.items() if target.endswith(":UnservedVisionSelectorFamily"))
)
def test_families_not_served_are_refused_not_served_by_the_transformers_backend(engine, architecture):
    model_class, _ = ModelRegistry.resolve_model_cls([architecture], model_config=engine.model_config)
    assert model_class is UnservedVisionSelectorFamily
    config = SimpleNamespace(
        model_config=SimpleNamespace(
            model="ckpt", hf_config=SimpleNamespace(model_type="visionselector_qwen2_vl"), architectures=[architecture]
        )
    )
    message = r"'visionselector_qwen2_vl' VisionSelector checkpoint.*serves 'visionselector_qwen2_5_vl'.*Qwen3-VL: images"
    with pytest.raises(ValueError, match=message):
        model_class(vllm_config=config)


# ---------------------------------------------------------------------------------------------------- memory and syncs


def test_each_encoder_group_is_scored_cut_and_freed_before_the_next_runs(engine):
    """At ratio r one step may bring budget / r merged tokens: the full features of one group at a time only."""
    items = ["wide", "tall"]
    _, features = vllm_process(engine, items, retention_ratio=0.1)
    model = engine.model
    expected = encoder_outputs(model, features)
    sizes = [int(f.data["image_grid_thw"].data.prod()) // 4 for f in features]
    held, scored = [], []
    encode, score = model._process_image_input, model.scorer.forward

    def process(part):
        assert all(ref() is None for ref in held), "an earlier group's features are still held"
        outputs = encode(part)
        held.extend(weakref.ref(output) for output in outputs)
        return outputs

    def scorer(features, lengths):
        scored.append(features.shape[0])
        return score(features, lengths)

    budget = model.encoder_budget
    model.encoder_budget = max(sizes)  # one item per group
    model._process_image_input, model.scorer.forward = process, scorer
    try:
        grouped = encoder_outputs(model, features)
    finally:
        model.encoder_budget = budget
        del model._process_image_input, model.scorer.forward
    assert len(held) == 2 and sorted(scored) == sorted(sizes)  # never more than one item's features at once
    assert all(torch.equal(grouped[key], expected[key]) for key in expected)


def test_the_scorer_needs_no_host_sync():
    """On the meta device every op that would read device memory back to the host (repeat_interleave without
    `output_size`, `.item()`, `nonzero`) fails: the scorer runs there, so it runs on a GPU without syncing."""
    scorer = VisionSelectorScorer(16, 8).to("meta")
    scores = scorer(torch.empty(10, 16, device="meta"), [3, 7])
    assert scores.shape == (10,) and scores.device.type == "meta"


# ---------------------------------------------------------------------------------------------------- Qwen3-VL


@pytest.fixture(scope="module")
def qwen3(engine, tmp_path_factory):
    """A merged tiny VisionSelector Qwen3-VL checkpoint (deepstack layers): vLLM's processor and model, and the
    transformers model beside them."""
    root = tmp_path_factory.mktemp("qwen3_vl")
    # sharded, as the Hub holds big backbones (transformers loads a merged unsharded one without its scorer shard)
    tiny_model("qwen3_vl", seed=0).save_pretrained(root / "base", max_shard_size="200KB")
    torch.manual_seed(5)
    with_scorer = VisionSelectorForConditionalGeneration.from_backbone(str(root / "base"))
    processor = tiny_processor(family="qwen3_vl")
    save_scorer(with_scorer, root / "artifact", processor=processor, base_model_name_or_path=str(root / "base"))
    merged = merge_scorer_artifact(root / "artifact", root / "full")
    model_config = ModelConfig(model=str(merged), trust_remote_code=True, dtype="float32", max_model_len=4096)
    model = build_model(model_config)  # strict: every parameter, the scorer included, from the merged folder
    return SimpleNamespace(
        model_config=model_config,
        model=model,
        processor=MULTIMODAL_REGISTRY.create_processor(model_config),
        hf_processor=processor,
        reference=AutoModel.from_pretrained(merged, trust_remote_code=True).eval(),
    )


def qwen3_features(qwen3, items: list[str], ratio: float):
    tokenizer = qwen3.processor.info.get_tokenizer()
    out = qwen3.processor(
        tokenizer.encode(make_prompt(items)),
        qwen3.processor.info.parse_mm_data(mm_data(items)),
        hf_processor_mm_kwargs={"retention_ratio": ratio},
    )
    features = [
        MultiModalFeatureSpec(
            data=out["mm_kwargs"]["image"][index],
            modality="image",
            identifier=out["mm_hashes"]["image"][index],
            mm_position=out["mm_placeholders"]["image"][index],
        )
        for index in range(len(out["mm_placeholders"]["image"]))
    ]
    return out, features


@pytest.mark.parametrize("ratio", [1.0, 0.3, 0.05])
def test_qwen3_vl_images_are_served_as_the_transformers_model_prunes_them(qwen3, ratio):
    """Registration, placeholders, selection with the deepstack features of the kept tokens, and positions against
    transformers' Qwen3-VL `get_rope_index` on the full prompt, with chunked prefill and prefix-cache hits."""
    model = qwen3.model
    assert isinstance(model, VisionSelectorQwen3VLForConditionalGeneration)
    assert isinstance(model, Qwen3VLForConditionalGeneration) and model.use_deepstack
    for name, value in qwen3.reference.scorer.state_dict().items():
        assert torch.equal(model.scorer.state_dict()[name], value)

    items = ["wide", "tall"]
    out, features = qwen3_features(qwen3, items, ratio)
    prompt_ids = out["prompt_token_ids"]
    inputs = qwen3.hf_processor(
        text=[make_prompt(items)], images=[IMAGES[item] for item in items], return_tensors="pt"
    )
    ids = inputs["input_ids"]
    full_positions, _ = qwen3.reference.model.get_rope_index(
        ids, mm_token_type_ids=(ids == TOKEN_IDS["image"]).long(), image_grid_thw=inputs["image_grid_thw"]
    )
    full_positions = full_positions[:, 0]
    with torch.no_grad():
        selection = qwen3.reference.select_visual_tokens(
            inputs["pixel_values"], inputs["image_grid_thw"], None, None, retention_ratio=ratio
        )
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    starts = [int(index) for index in torch.nonzero(ids[0] == TOKEN_IDS["image"]).flatten()
              if index == 0 or ids[0, index - 1] != TOKEN_IDS["image"]]
    for start, item_features, kept in zip(starts, selection.features, selection.kept_indices):
        run = torch.zeros(item_features.shape[0], dtype=torch.bool)
        run[kept] = True
        keep[start : start + run.numel()] = run
    assert prompt_ids == ids[0, keep].tolist()
    assert [f.mm_position.length for f in features] == [len(kept) for kept in selection.kept_indices]

    outputs = encoder_outputs(model, features)
    width = selection.features[0].shape[1]
    layers = len(selection.deepstack_features[0])
    for feature, item_features, deepstack, kept in zip(
        features, selection.features, selection.deepstack_features, selection.kept_indices
    ):
        output = outputs[feature.identifier]
        assert output.shape == (len(kept), width * (1 + layers) + NUM_OFFSET_CHANNELS)
        torch.testing.assert_close(output[:, :width], item_features[kept], rtol=1e-4, atol=1e-5)
        for layer, layer_features in enumerate(deepstack):
            torch.testing.assert_close(
                output[:, width * (1 + layer) : width * (2 + layer)], layer_features[kept], rtol=1e-4, atol=1e-5
            )

    length = len(prompt_ids)
    first = features[0].mm_position
    for steps in (
        [(0, length)],
        [(start, min(start + 7, length)) for start in range(0, length, 7)],
        [(first.offset + first.length // 2, length)],
    ):
        positions, _, delta, order = run_prompt(model, prompt_ids, features, outputs, steps)
        assert torch.equal(positions, full_positions[:, keep][:, order])
        assert delta == int(full_positions[0, -1]) + 1 - length
    # one step: the language model gets the kept features, and its deepstack layers the kept deepstack features
    _, embeddings, _, _ = run_prompt(model, prompt_ids, features, outputs, [(0, length)])
    visual = torch.tensor(prompt_ids) == TOKEN_IDS["image"]
    kept_features = torch.cat([item[kept] for item, kept in zip(selection.features, selection.kept_indices)])
    torch.testing.assert_close(embeddings[visual], kept_features, rtol=1e-4, atol=1e-5)
    for layer in range(layers):
        kept_layer = torch.cat(
            [deepstack[layer][kept] for deepstack, kept in zip(selection.deepstack_features, selection.kept_indices)]
        )
        fed = model.deepstack_input_embeds[layer][:length]
        torch.testing.assert_close(fed[visual], kept_layer, rtol=1e-4, atol=1e-5)
        assert int(fed[~visual].abs().sum()) == 0


def test_qwen3_vl_videos_are_refused(qwen3):
    """Qwen3-VL lays a video out frame by frame between timestamp text: how many of a frame's tokens are kept is
    known only after the encoder ran, while vLLM fixes the prompt before. vLLM refuses the modality itself, with its
    client error (HTTP 400), and profiles no video."""
    assert qwen3.processor.info.get_supported_mm_limits() == {"image": None, "video": 0}
    with pytest.raises(VLLMValidationError, match="At most 0 video"):
        qwen3_features(qwen3, ["video"], 0.3)
    # what the engine profiles its encoder memory with: images only
    budget = MultiModalBudget(VllmConfig(model_config=qwen3.model_config), MULTIMODAL_REGISTRY)
    assert set(budget.mm_max_toks_per_item) == {"image"} and budget.get_encoder_budget() > 0
