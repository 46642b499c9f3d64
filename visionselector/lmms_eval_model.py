"""The `visionselector` model of lmms-eval: any benchmark of lmms-eval, with a share of the visual tokens.

    pip install "visionselector[eval]"
    lmms-eval --model visionselector \
        --model_args pretrained=some-org/VisionSelector-Qwen2.5-VL-7B,retention_ratio=0.2 \
        --tasks mme,pope,textvqa_val --batch_size 8

lmms-eval finds this model through the `lmms_eval.models` entry point of this package (`manifest` below), so it
needs no fork and no copied file. It is a chat model of lmms-eval: every request arrives as chat messages (the
task's `doc_to_messages`, or lmms-eval's own messages built from `doc_to_visual` and `doc_to_text`), goes through
the checkpoint's processor and chat template, and is answered by `model.generate(..., retention_ratio=...,
selector=...)` on left-padded batches.

`pretrained` is a VisionSelector checkpoint (a full one, or a scorer-only artifact whose backbone is loaded from
its `base_model_name_or_path`; with the scorer its config names, the paper's or a multi-head one, `scorer_heads`),
loaded with `AutoModel` and `trust_remote_code=True`; or a stock Qwen-VL
checkpoint, wrapped with a fresh scorer, to evaluate the training-free selectors (`random`, `uniform`, `norm`,
`divprune`, `dart`) with the same code.

Model arguments (`--model_args key=value,...`):

| argument | default | meaning |
| --- | --- | --- |
| `pretrained` | (required) | Hub id or folder of the checkpoint |
| `revision` | `None` | Hub revision of `pretrained` |
| `retention_ratio` | the checkpoint's `config.retention_ratio` | share of each image's and video's visual tokens kept, in (0, 1] |
| `selector` | `learned` | `learned`, `random`, `uniform`, `norm`, `divprune`, `dart`, `learned+diversity` |
| `seed` | `0` | torch's global generator is seeded with it before each task's requests (random selector, sampling) |
| `dtype` | `auto` | `auto`, `bfloat16`, `float16`, `float32` |
| `attn_implementation` | the checkpoint's | `sdpa`, `flash_attention_2`, `eager` |
| `device` / `device_map` | `cuda` if available, else `cpu` / `None` | where the model runs; `device_map=auto` spreads it over the GPUs |
| `min_pixels`, `max_pixels` | the processor's | image resolution bounds of the processor, in pixels |
| `max_new_tokens` | `128` | new tokens per answer when the task does not set `max_new_tokens` |
| `batch_size` | `1` (or `--batch_size`) | requests per `generate` call |
| `system_prompt` | `None` (the chat template's default) | a system message put before every conversation |

Reproducibility: requests run in the order (task, split, document id), in batches of `batch_size`, and torch's
generator is seeded with `seed` at the start of each task. The random selector draws one permutation per image in
that order, so a document gets the same random tokens whatever the batch size and whichever other tasks run.
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from tqdm import tqdm

MODEL_NAME = "visionselector"

# Generation keywords of lmms-eval tasks that `generate` understands; `until` and `do_sample` are handled apart.
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "num_beams", "repetition_penalty", "length_penalty")
DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def manifest():
    """The registration lmms-eval loads from the entry point of `pyproject.toml` (`lmms_eval.models` group).

    A function, so that importing this module does not import `lmms_eval.models`, whose registry loads the entry
    points (and so this module) when it is first imported.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, chat_class_path=f"{__name__}.VisionSelector")


def is_visionselector_checkpoint(pretrained: str, revision: str | None = None) -> bool:
    """Whether `pretrained` holds a VisionSelector config (of any family the package supports)."""
    from transformers import PreTrainedConfig

    from modeling_visionselector import VISIONSELECTOR_CLASSES

    config_dict, _ = PreTrainedConfig.get_config_dict(pretrained, revision=revision)
    return config_dict.get("model_type") in {model.config_class.model_type for model in VISIONSELECTOR_CLASSES.values()}


def load_model(
    pretrained: str,
    *,
    revision: str | None = None,
    dtype="auto",
    attn_implementation: str | None = None,
    device_map=None,
):
    """A VisionSelector model from a VisionSelector checkpoint (full or scorer-only) or a stock Qwen-VL one.

    Returns `(model, trained)`: `trained` is False for a stock checkpoint, whose scorer is freshly initialised.
    """
    from transformers import AutoModel

    loading = {"dtype": dtype, "attn_implementation": attn_implementation, "device_map": device_map, "revision": revision}
    loading = {name: value for name, value in loading.items() if value is not None}
    if is_visionselector_checkpoint(pretrained, revision):
        return AutoModel.from_pretrained(pretrained, trust_remote_code=True, **loading), True
    from modeling_visionselector import VisionSelectorForConditionalGeneration

    # the VisionSelector class of the backbone's family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL(-MoE), Qwen3.5(-MoE))
    return VisionSelectorForConditionalGeneration.from_backbone(pretrained, **loading), False


def load_processor(pretrained: str, model_config, *, revision: str | None = None, min_pixels=None, max_pixels=None):
    """The checkpoint's processor (a scorer-only artifact without one: its backbone's), padding on the left.

    `min_pixels` / `max_pixels` replace the image and video processors' pixel bounds (their `size`'s
    `shortest_edge` / `longest_edge`); the bound not given keeps its stored value.
    """
    from transformers import AutoProcessor

    def load(source, source_revision, **kwargs):
        # trust_remote_code=False: the processor is a stock one; the tokenizer would otherwise ask about the auto_map.
        return AutoProcessor.from_pretrained(source, revision=source_revision, trust_remote_code=False, **kwargs)

    source, source_revision = pretrained, revision
    try:
        processor = load(source, source_revision)
    except (OSError, ValueError):
        source = getattr(model_config, "base_model_name_or_path", None)
        if not source:
            raise
        source_revision = getattr(model_config, "base_model_revision", None)
        processor = load(source, source_revision)
    if min_pixels is not None or max_pixels is not None:
        stored = processor.image_processor.size
        size = {
            "shortest_edge": stored.shortest_edge if min_pixels is None else int(min_pixels),
            "longest_edge": stored.longest_edge if max_pixels is None else int(max_pixels),
        }
        processor = load(source, source_revision, size=size)
    processor.tokenizer.padding_side = "left"
    return processor


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return int(value)


class VisionSelector(lmms):
    """lmms-eval chat model: a VisionSelector checkpoint answering with `retention_ratio` of its visual tokens."""

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        revision: str | None = None,
        retention_ratio: float | None = None,
        selector: str = "learned",
        seed: int = 0,
        dtype: str = "auto",
        attn_implementation: str | None = None,
        device: str | None = None,
        device_map: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_new_tokens: int = 128,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        system_prompt: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"Unknown model arguments {sorted(kwargs)} for `{MODEL_NAME}`; see `{__name__}`'s docstring.")
        from modeling_visionselector import validate_retention_ratio
        from modeling_visionselector.selectors import SCORE_READING_SELECTORS, SELECTORS, TRAINING_FREE_SELECTORS

        if selector not in SELECTORS:
            raise ValueError(f"Unknown selector {selector!r}; accepted: {', '.join(SELECTORS)}.")
        if str(dtype) not in DTYPES:
            raise ValueError(f"`dtype` must be one of {', '.join(DTYPES)}, got {dtype!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer, got {seed!r}.")
        self.batch_size_per_device = _positive_int(batch_size, "batch_size")
        self.max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if value is not None:
                _positive_int(value, name)
        if min_pixels is not None and max_pixels is not None and int(min_pixels) > int(max_pixels):
            raise ValueError(f"`min_pixels` ({min_pixels}) must not exceed `max_pixels` ({max_pixels}).")
        if retention_ratio is not None:
            retention_ratio = validate_retention_ratio(retention_ratio, "retention_ratio")

        if device is None:
            # one process per GPU under `accelerate launch` / `torchrun`: LOCAL_RANK picks this process's GPU
            local_rank = os.environ.get("LOCAL_RANK")
            device = f"cuda:{local_rank}" if local_rank is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        model, trained = load_model(
            str(pretrained),
            revision=revision,
            dtype=DTYPES[str(dtype)],
            attn_implementation=attn_implementation,
            device_map=device_map,
        )
        # the score-reading selectors are meaningless with the fresh scorer of a backbone
        if not trained and selector in SCORE_READING_SELECTORS:
            raise ValueError(
                f"{pretrained!r} is a stock checkpoint without a trained scorer, so selector={selector!r} would rank "
                "tokens by random scores. Pass a training-free selector "
                f"({', '.join(TRAINING_FREE_SELECTORS)}) or a VisionSelector checkpoint."
            )
        self._model = (model if device_map is not None else model.to(device)).eval()
        self._device = self._model.device
        self.processor = load_processor(
            str(pretrained), self._model.config, revision=revision, min_pixels=min_pixels, max_pixels=max_pixels
        )
        self.retention_ratio = self._model.config.retention_ratio if retention_ratio is None else retention_ratio
        self.selector = selector
        self.seed = seed
        self.system_prompt = system_prompt

    # The properties lmms-eval reads.
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_device

    @property
    def device(self):
        return self._device

    # ------------------------------------------------------------------ requests

    def loglikelihood(self, requests: list[Instance]):
        raise NotImplementedError(f"`{MODEL_NAME}` answers generation tasks (output_type generate_until) only.")

    def generate_until_multi_round(self, requests: list[Instance]):
        raise NotImplementedError(f"`{MODEL_NAME}` answers generation tasks (output_type generate_until) only.")

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answers every request; batches hold requests of one task, split and set of generation arguments."""
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            _, _, gen_kwargs, doc_id, task, split = request.args
            key = (task, split, json.dumps(gen_kwargs, sort_keys=True, default=str))
            groups.setdefault(key, []).append(index)
        answers: list[GenerationResult | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="Model Responding")
        for key in sorted(groups, key=lambda key: (str(key[0]), str(key[1]), key[2])):
            indices = sorted(groups[key], key=lambda index: (requests[index].args[3], index))
            torch.manual_seed(self.seed)  # per task: its draws depend on nothing else that runs
            for start in range(0, len(indices), self.batch_size):
                batch = [requests[index] for index in indices[start : start + self.batch_size]]
                for index, answer in zip(indices[start : start + self.batch_size], self._answer(batch)):
                    answers[index] = answer
                progress.update(len(batch))
        progress.close()
        return answers

    def _messages(self, request: Instance) -> list[dict]:
        """The request's conversation in the processor's format (PIL images and video paths inline)."""
        _, doc_to_messages, _, doc_id, task, split = request.args
        messages = doc_to_messages(self.task_dict[task][split][doc_id])
        converted = []
        if self.system_prompt:
            converted.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            parts = []
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": part["text"]})
                elif kind in ("image", "video"):
                    parts.append({"type": kind, kind: part.get("url", part.get(kind))})
                else:
                    raise ValueError(f"`{MODEL_NAME}` reads text, images and videos; task {task!r} sent {kind!r}.")
            converted.append({"role": message["role"], "content": parts})
        return converted

    def _generation_arguments(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """`generate` keywords and stop strings from a task's `generation_kwargs` (greedy unless temperature > 0)."""
        arguments = {name: gen_kwargs[name] for name in GENERATION_KEYS if gen_kwargs.get(name) is not None}
        arguments.setdefault("max_new_tokens", self.max_new_tokens)
        sample = float(arguments.get("temperature", 0) or 0) > 0
        if not sample:  # greedy: drop the sampling knobs so generate does not warn about them
            for name in ("temperature", "top_p", "top_k"):
                arguments.pop(name, None)
        arguments["do_sample"] = sample
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        # "\n\n" is the stop lmms-eval gives tasks that set none (its few-shot delimiter); it would cut a chat model's
        # multi-paragraph answers, so it is dropped, as lmms-eval's own Qwen2.5-VL models do.
        return arguments, [stop for stop in until if stop and stop != "\n\n"]

    @torch.no_grad()
    def _answer(self, batch: list[Instance]) -> list[GenerationResult]:
        conversations = [self._messages(request) for request in batch]
        arguments, until = self._generation_arguments(batch[0].args[2])
        inputs = self.processor.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding=True,
        ).to(self.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
            output = self.model.generate(
                **inputs,
                retention_ratio=self.retention_ratio,
                selector=self.selector,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **arguments,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        results = []
        for request, text, tokens in zip(batch, texts, new_tokens):
            for stop in until:
                text = text.split(stop)[0]
            count = int((tokens != self.tokenizer.pad_token_id).sum())
            results.append(GenerationResult(text=text, token_counts=TokenCounts(output_tokens=count)))
            self.cache_hook.add_partial("generate_until", (request.args[0], request.args[2]), text)
        return results


__all__ = ["MODEL_NAME", "manifest", "VisionSelector", "is_visionselector_checkpoint", "load_model", "load_processor"]
