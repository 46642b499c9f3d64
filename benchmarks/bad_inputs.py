"""A campaign of bad and unusual inputs against the public API, the two command lines and the trainer (issue 22).

Usage:
    python benchmarks/bad_inputs.py                        # ~330 cases, a few minutes on 1 CPU thread
    python benchmarks/bad_inputs.py --details              # also one line per case
    python benchmarks/bad_inputs.py --out /tmp/bad_inputs.json

Every case is generated from tables (ratios x entry points, grid / pixel / mask / placeholder / label changes x
entry points, generate arguments, loading, CLI argument lists, trainer data) on a tiny random Qwen2.5-VL, and says
whether its input is valid and which argument is at fault when it is not. Each outcome is classified as:

| outcome | meaning |
| --- | --- |
| clear error | invalid input refused with a `ValueError` (API) or one `error:` line and exit 2 (CLI; exit 1 where the model cannot be loaded) that names the argument; a trainer `UserWarning` for data that would train on nothing |
| unnamed error | invalid input refused with a `ValueError` / error line that does not name the argument |
| handled valid | valid (if unusual) input that ran, with finite outputs and the documented number of kept tokens |
| refused valid | valid input refused |
| crash | any other exception, or a CLI traceback |
| silent acceptance | invalid input that ran without a word |
| wrote on failure | a CLI command that failed but left files behind, or changed one of its inputs |
| hang | no answer within `--timeout` seconds |
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="bad-inputs-hf-home-"))
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="bad-inputs-hf-modules-"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

OUTCOMES = (
    "clear error", "unnamed error", "handled valid", "refused valid", "crash", "silent acceptance", "wrote on failure", "hang",
)


@dataclass
class Case:
    group: str
    name: str
    run: object  # () -> None; raises on refusal
    valid: bool
    names: tuple[str, ...] = ()  # what a clear error must mention (any one)
    kind: str = "api"  # "api", "cli" (run returns (code, stderr)), "warning" (a UserWarning is the right answer)


class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout()


# ---------------------------------------------------------------------------------------------------- fixtures


class World:
    """The tiny models, processor, inputs and folders every case uses."""

    def __init__(self, root: Path):
        from modeling_visionselector import VisionSelectorForConditionalGeneration
        from visionselector.publishing import save_scorer
        from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl

        self.root = root
        self.processor = tiny_processor(min_pixels=28 * 28, max_pixels=112 * 112)
        self.stock = tiny_qwen2_5_vl(seed=0)
        torch.manual_seed(1)
        self.model = VisionSelectorForConditionalGeneration.from_backbone(self.stock).eval()
        self.config = self.model.config
        self.stock.save_pretrained(root / "backbone")
        self.processor.save_pretrained(root / "backbone")
        model = VisionSelectorForConditionalGeneration.from_backbone(str(root / "backbone"))
        model.save_pretrained(root / "run")
        self.processor.save_pretrained(root / "run")
        save_scorer(model, root / "scorer", processor=self.processor)
        Image.new("RGB", (56, 56), "red").save(root / "square.png")
        Image.new("RGB", (28 * 201, 28), "red").save(root / "strip.png")
        (root / "text.png").write_text("not an image")
        (root / "folder").mkdir()

    def inputs(self, samples, padding_side="left", seed=0):
        rng = np.random.default_rng(seed)
        texts, images = [], []
        for items in samples:
            content = [{"type": "image"} for _ in items] + [{"type": "text", "text": "what colour is the square"}]
            images += [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in items]
            texts.append(self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
        self.processor.tokenizer.padding_side = padding_side
        try:
            return dict(self.processor(text=texts, images=images or None, return_tensors="pt", padding=True))
        finally:
            self.processor.tokenizer.padding_side = "left"


def _kept_counts_right(inputs, kept, ratio, merge=2) -> bool:
    grids = inputs["image_grid_thw"]
    ratio = float(str(ratio)) if hasattr(ratio, "dtype") else ratio
    expected = [max(1, math.floor(Fraction(repr(float(ratio))) * int(g.prod()) // merge**2)) for g in grids]
    return [len(k) for k in kept] == expected


def _entry(world: World, entry: str, inputs: dict, **kwargs):
    """Runs `inputs` through one public entry point and checks what a valid input must give."""
    model = world.model
    ratio = kwargs.get("retention_ratio", world.config.retention_ratio)
    if entry == "forward":
        with torch.no_grad():
            out = model(**inputs, **kwargs)
        assert torch.isfinite(out.logits).all()
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
            assert _kept_counts_right(inputs, out.kept_indices, ratio), "wrong number of kept tokens"
        if ratio == 1.0 and kwargs.get("selector", "learned") == "learned" and "labels" not in kwargs:
            with torch.no_grad():
                assert torch.equal(out.logits, world.stock(**inputs).logits), "ratio 1.0 differs from the stock model"
    elif entry == "train":
        model.train()
        try:
            out = model(**inputs, **kwargs)
            assert torch.isfinite(out.logits).all()
        finally:
            model.eval()
    elif entry == "generate":
        out = model.generate(**inputs, max_new_tokens=kwargs.pop("max_new_tokens", 2), do_sample=False, **kwargs)
        assert out.shape[0] >= inputs["input_ids"].shape[0]
    elif entry == "select":
        selection = model.select_visual_tokens(inputs.get("pixel_values"), inputs.get("image_grid_thw"), **kwargs)
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
            assert _kept_counts_right(inputs, selection.kept_indices, ratio), "wrong number of kept tokens"


# ---------------------------------------------------------------------------------------------------- cases


def api_cases(world: World) -> list[Case]:
    cases = []
    base = lambda: world.inputs([[(56, 56)], [(112, 84), (28, 56)]])  # noqa: E731
    entries = ("forward", "generate", "select", "train")

    valid_ratios = {"1.0": 1.0, "0.5": 0.5, "1e-9": 1e-9, "np.float32(0.29)": np.float32(0.29), "Fraction(1, 3)": Fraction(1, 3),
                    "int 1": 1, "None": None}
    bad_ratios = {"0": 0.0, "-0.1": -0.1, "1.5": 1.5, "nan": float("nan"), "inf": float("inf"), "'0.3'": "0.3", "True": True,
                  "[0.3]": [0.3], "tensor(0.3)": torch.tensor(0.3), "2": 2, "-1": -1, "complex": 0.3j}
    for entry in entries:
        for label, value in valid_ratios.items():
            cases.append(Case("retention_ratio", f"{entry} ratio={label}", lambda e=entry, v=value: _entry(world, e, base(), retention_ratio=v), True))
        for label, value in bad_ratios.items():
            cases.append(Case("retention_ratio", f"{entry} ratio={label}", lambda e=entry, v=value: _entry(world, e, base(), retention_ratio=v),
                              False, ("retention_ratio",)))

    for entry in ("forward", "generate", "select"):
        for name in ("learned", "random", "uniform", "norm", "divprune", "dart"):
            cases.append(Case("selector", f"{entry} selector={name}", lambda e=entry, n=name: _entry(world, e, base(), retention_ratio=0.3, selector=n), True))
        for name in ("nonsense", "", "LEARNED", 3, ["learned"]):
            cases.append(Case("selector", f"{entry} selector={name!r}", lambda e=entry, n=name: _entry(world, e, base(), retention_ratio=0.3, selector=n),
                              False, ("selector",)))

    # grids of two 4 x 4 images (32 patches) in one row and one 2 x 4 image in the other
    grid_inputs = lambda: world.inputs([[(56, 56), (56, 56)], [(28, 56)]])  # noqa: E731
    grid_changes = {}
    for item in (0, 2):
        for dim, dim_name in enumerate("thw"):
            for value in (-2, -1, 0, 1, 3, 6, 8):
                grid_changes[f"item {item} {dim_name}={value}"] = (item, dim, value)
    other_grid_changes = {
        "float": lambda g: g.float(), "list": lambda g: g.tolist(), "drop a row": lambda g: g[:-1],
        "extra row": lambda g: torch.cat([g, g[-1:]]), "(1, n, 3)": lambda g: g[None], "flat": lambda g: g.flatten(),
        "empty": lambda g: g[:0], "bool": lambda g: g.bool(), "moved patches": lambda g: torch.tensor([[1, 2, 4], [1, 6, 4], [1, 2, 4]]),
        "None": lambda g: None, "numpy": lambda g: g.numpy(),
    }
    for entry in ("forward", "generate", "train"):
        for label, (item, dim, value) in grid_changes.items():
            def run(e=entry, item=item, dim=dim, value=value):
                inputs = grid_inputs()
                grid = inputs["image_grid_thw"].clone()
                grid[item, dim] = value
                _entry(world, e, {**inputs, "image_grid_thw": grid}, retention_ratio=0.5)
            # a grid cell set to its own value is the valid input; any other value is invalid
            valid = (item, dim, value) in {(0, 0, 1), (2, 0, 1), (2, 1, 2)} or ((item, dim) in {(0, 1), (0, 2), (2, 2)} and value == 4)
            cases.append(Case("image_grid_thw", f"{entry} {label}", run, valid, ("image_grid_thw",)))
        for label, change in other_grid_changes.items():
            cases.append(Case("image_grid_thw", f"{entry} grid {label}",
                              lambda e=entry, c=change: _entry(world, e, {**(i := grid_inputs()), "image_grid_thw": c(i["image_grid_thw"])}, retention_ratio=0.5),
                              False, ("image_grid_thw",)))

    pixel_changes = {
        "drop 1 row": lambda p: p[:-1], "drop 4 rows": lambda p: p[:-4], "extra row": lambda p: torch.cat([p, p[:1]]),
        "narrow": lambda p: p[:, :-1], "wide": lambda p: torch.cat([p, p[:, :1]], 1), "empty": lambda p: p[:0],
        "integer": lambda p: p.long(), "3-d": lambda p: p[None], "numpy": lambda p: p.numpy(),
    }
    for entry in ("forward", "generate", "train"):
        for label, change in pixel_changes.items():
            cases.append(Case("pixel_values", f"{entry} pixels {label}",
                              lambda e=entry, c=change: _entry(world, e, {**(i := base()), "pixel_values": c(i["pixel_values"])}, retention_ratio=0.5),
                              False, ("pixel_values",)))
        for label, change in {"float64": lambda p: p.double(), "bfloat16": lambda p: p.bfloat16()}.items():
            cases.append(Case("pixel_values", f"{entry} pixels {label}",
                              lambda e=entry, c=change: _entry(world, e, {**(i := base()), "pixel_values": c(i["pixel_values"])}, retention_ratio=0.5), True))

    def mask_change(label):
        def change(inputs):
            mask = inputs["attention_mask"].clone()
            if label == "all-zero row":
                mask[0] = 0
            elif label == "zero over placeholders":
                mask[inputs["input_ids"] == world.config.image_token_id] = 0
            elif label == "zero over one placeholder":
                r, c = (inputs["input_ids"] == world.config.image_token_id).nonzero()[0].tolist()
                mask[r, c] = 0
            elif label == "shorter":
                mask = mask[:, 1:]
            elif label == "longer":
                mask = torch.cat([mask, mask[:, :1]], 1)
            elif label == "values 2":
                mask = mask * 2
            elif label == "one row":
                mask = mask[:1]
            elif label == "bool":
                mask = mask.bool()
            elif label == "None":
                mask = None
            return {**inputs, "attention_mask": mask}
        return change

    for entry in ("forward", "generate", "train"):
        for label in ("all-zero row", "zero over placeholders", "zero over one placeholder", "shorter", "longer", "values 2", "one row"):
            cases.append(Case("attention_mask", f"{entry} mask {label}", lambda e=entry, c=mask_change(label): _entry(world, e, c(base()), retention_ratio=0.5),
                              False, ("attention_mask",)))
        for label in ("bool", "None"):
            valid_inputs = (lambda c=mask_change(label): c(world.inputs([[(56, 56)], [(56, 56)]])))
            cases.append(Case("attention_mask", f"{entry} mask {label}", lambda e=entry, v=valid_inputs: _entry(world, e, v(), retention_ratio=0.5), True))

    image = world.config.image_token_id

    def placeholder_change(label):
        def change(inputs):
            ids = inputs["input_ids"].clone()
            rows = [(ids[r] == image).nonzero().flatten() for r in range(ids.shape[0])]
            if label == "48/50 split between rows":
                ids[0, rows[0][-1]] = 10
                ids[1, rows[1][0] - 1] = image
            elif label == "one to text":
                ids[1, rows[1][0]] = 10
            elif label == "extra placeholder":
                ids[1, rows[1][-1] + 2] = image
            elif label == "run split inside a row":
                ids[1, rows[1][3]] = 10
                ids[1, rows[1][-1] + 2] = image
            elif label == "all removed":
                ids[ids == image] = 10
            elif label == "video token instead":
                ids[ids == image] = world.config.video_token_id
            return {**inputs, "input_ids": ids, "mm_token_type_ids": (ids == image).long() + 2 * (ids == world.config.video_token_id).long()}
        return change

    for entry in ("forward", "generate", "train"):
        for label in ("48/50 split between rows", "one to text", "extra placeholder", "run split inside a row", "all removed", "video token instead"):
            cases.append(Case("input_ids", f"{entry} placeholders {label}",
                              lambda e=entry, c=placeholder_change(label): _entry(world, e, c(world.inputs([[(56, 56)], [(112, 84), (28, 56)]], "right")), retention_ratio=0.5),
                              False, ("input_ids",)))
        cases.append(Case("mm_token_type_ids", f"{entry} token types not matching input_ids",
                          lambda e=entry: _entry(world, e, {**(i := base()), "mm_token_type_ids": torch.zeros_like(i["input_ids"])}, retention_ratio=0.5),
                          False, ("mm_token_type_ids",)))
        for side in ("left", "right"):
            cases.append(Case("input_ids", f"{entry} {side}-padded batch of mixed sizes",
                              lambda e=entry, s=side: _entry(world, e, world.inputs([[], [(28, 28), (112, 112)], [(84, 28)]], s), retention_ratio=0.3), True))

    for entry in ("forward", "train"):
        for label, change in {"shorter": lambda l: l[:, 1:], "longer": lambda l: torch.cat([l, l[:, :1]], 1), "one row": lambda l: l[:1]}.items():
            cases.append(Case("labels", f"{entry} labels {label}",
                              lambda e=entry, c=change: _entry(world, e, (i := base()), labels=c(i["input_ids"]), retention_ratio=0.5), False, ("labels",)))
        cases.append(Case("labels", f"{entry} labels all -100",
                          lambda e=entry: _entry(world, e, (i := base()), labels=torch.full_like(i["input_ids"], -100), retention_ratio=0.5), True))
        cases.append(Case("labels", f"{entry} labels = input_ids",
                          lambda e=entry: _entry(world, e, (i := base()), labels=i["input_ids"].clone(), retention_ratio=0.5), True))
    return cases


def generate_cases(world: World) -> list[Case]:
    from transformers import DynamicCache, GenerationConfig, TextStreamer

    model = world.model
    inputs = lambda: world.inputs([[(112, 112)], [(56, 56)]])  # noqa: E731
    length = lambda: inputs()["input_ids"].shape[1]  # noqa: E731
    valid = {
        "num_beams=2": dict(num_beams=2), "num_return_sequences=2 sampling": dict(num_return_sequences=2, do_sample=True),
        "use_cache=False": dict(use_cache=False), "return_dict_in_generate": dict(return_dict_in_generate=True, output_scores=True),
        "max_length=prompt+3": dict(max_length=None), "min_new_tokens=2": dict(min_new_tokens=2),
        "GenerationConfig(retention_ratio=0.2)": dict(generation_config=GenerationConfig(retention_ratio=0.2, max_new_tokens=2)),
        "GenerationConfig(selector='norm')": dict(generation_config=GenerationConfig(selector="norm", max_new_tokens=2)),
        "streamer": dict(streamer=TextStreamer(world.processor.tokenizer)), "empty cache": dict(past_key_values=DynamicCache()),
        "prefill_chunk_size=8": dict(prefill_chunk_size=8),
    }
    cases = []
    for label, kwargs in valid.items():
        def run(kwargs=kwargs):
            kwargs = dict(kwargs)
            if "max_length" in kwargs:
                kwargs = {"max_length": length() + 3}
            if "streamer" in kwargs:  # a streamer takes one sample, as in the stock `generate`
                with contextlib.redirect_stdout(io.StringIO()):
                    return model.generate(**world.inputs([[(56, 84)]]), max_new_tokens=2, **kwargs)
            if "generation_config" in kwargs:
                with contextlib.redirect_stdout(io.StringIO()):
                    return model.generate(**inputs(), **kwargs)
            with contextlib.redirect_stdout(io.StringIO()):
                return model.generate(**inputs(), **({"max_new_tokens": 2} | kwargs))
        cases.append(Case("generate", label, run, True))
    filled = DynamicCache()
    with torch.no_grad():
        model(**inputs(), retention_ratio=1.0, past_key_values=filled, use_cache=True)
    bad = {
        "max_length=10": (dict(max_length=10), ("max_length",)),
        "GenerationConfig(retention_ratio=5.0)": (dict(generation_config=GenerationConfig(retention_ratio=5.0, max_new_tokens=2)), ("retention_ratio",)),
        "GenerationConfig(retention_ratio=0)": (dict(generation_config=GenerationConfig(retention_ratio=0.0, max_new_tokens=2)), ("retention_ratio",)),
        "GenerationConfig(selector='nonsense')": (dict(generation_config=GenerationConfig(selector="nonsense", max_new_tokens=2)), ("selector",)),
        "assistant_model": (dict(assistant_model=model, max_new_tokens=2), ("assistant_model", "Assisted")),
        "inputs_embeds with pixels": (dict(inputs_embeds=torch.zeros(2, 3, 32), max_new_tokens=2), ("inputs_embeds",)),
        "filled cache": (dict(past_key_values=filled, max_new_tokens=2), ("past_key_values",)),
        "no input_ids": (dict(input_ids=None, max_new_tokens=2), ("input_ids",)),
    }
    for label, (kwargs, names) in bad.items():
        cases.append(Case("generate", label, lambda kwargs=kwargs: model.generate(**{**inputs(), **kwargs}), False, names))
    return cases


def loading_cases(world: World) -> list[Case]:
    from modeling_visionselector import VisionSelectorForConditionalGeneration as Model
    from visionselector.tiny import tiny_model, tiny_qwen2_5_vl

    root = world.root
    tiny_qwen2_5_vl(text_hidden_size=64, vision_hidden_size=64).save_pretrained(root / "bigger")
    tiny_model("qwen3_vl").save_pretrained(root / "qwen3")

    def corrupted(folder, name):
        target = Path(tempfile.mkdtemp(dir=root))
        for path in (root / folder).iterdir():
            (target / path.name).write_bytes(path.read_bytes())
        (target / name).write_bytes((target / name).read_bytes()[:100])
        return target

    def generation_json(value):
        target = Path(tempfile.mkdtemp(dir=root))
        for path in (root / "run").iterdir():
            (target / path.name).write_bytes(path.read_bytes())
        data = json.loads((target / "generation_config.json").read_text())
        (target / "generation_config.json").write_text(json.dumps({**data, **value}))
        return target

    return [
        Case("loading", "full checkpoint", lambda: Model.from_pretrained(root / "run"), True),
        Case("loading", "scorer-only artifact", lambda: Model.from_pretrained(root / "scorer"), True),
        Case("loading", "from_pretrained(retention_ratio=0.5)", lambda: Model.from_pretrained(root / "run", retention_ratio=0.5), True),
        Case("loading", "generation_config.json retention_ratio 0.5", lambda: Model.from_pretrained(generation_json({"retention_ratio": 0.5})), True),
        Case("loading", "from_pretrained(retention_ratio=3.0)", lambda: Model.from_pretrained(root / "run", retention_ratio=3.0), False, ("retention_ratio",)),
        Case("loading", "from_pretrained(train_retention_ratio=nan)", lambda: Model.from_pretrained(root / "run", train_retention_ratio=float("nan")), False, ("train_retention_ratio",)),
        Case("loading", "generation_config.json retention_ratio 5", lambda: Model.from_pretrained(generation_json({"retention_ratio": 5.0})), False, ("retention_ratio",)),
        Case("loading", "generation_config.json selector nonsense", lambda: Model.from_pretrained(generation_json({"selector": "nonsense"})), False, ("selector",)),
        Case("loading", "corrupted model.safetensors", lambda: Model.from_pretrained(corrupted("run", "model.safetensors")), False, ("model.safetensors",)),
        Case("loading", "corrupted scorer.safetensors", lambda: Model.from_pretrained(corrupted("scorer", "scorer.safetensors")), False, ("scorer.safetensors",)),
        Case("loading", "scorer-only on a bigger backbone", lambda: Model.from_pretrained(root / "scorer", base_model_name_or_path=str(root / "bigger")), False, ("64",)),
        Case("loading", "scorer-only on another family", lambda: Model.from_pretrained(root / "scorer", base_model_name_or_path=str(root / "qwen3")), False, ("qwen3_vl",)),
        Case("loading", "scorer-only on a missing folder", lambda: Model.from_pretrained(root / "scorer", base_model_name_or_path=str(root / "missing")), False, ("missing",)),
        Case("loading", "config retention_ratio = 3.0", lambda: setattr(world.model.config, "retention_ratio", 3.0), False, ("retention_ratio",)),
        Case("loading", "save_pretrained with generation_config.retention_ratio = 2", lambda: _save_with_generation_ratio(world, 2.0), False, ("retention_ratio",)),
        Case("loading", "from_backbone(retention_ratio=0)", lambda: Model.from_backbone(world.stock, retention_ratio=0.0), False, ("retention_ratio",)),
        Case("loading", "from_backbone(not a model)", lambda: Model.from_backbone(42), False, ("model_or_path",)),
    ]


def _save_with_generation_ratio(world, value):
    world.model.generation_config.retention_ratio = value
    try:
        world.model.save_pretrained(tempfile.mkdtemp(dir=world.root))
    finally:
        del world.model.generation_config.retention_ratio


def _snapshot(root: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def _cli(main, argv, api=None):
    def run():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv) if api is None else main(argv, api=api)
        return code, err.getvalue()
    return run


class _NoUploads:
    def __getattr__(self, name):
        raise AssertionError(f"the Hub was called ({name})")


class _RecordingApi:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


def cli_cases(world: World) -> list[Case]:
    from visionselector.cli import main as cli
    from visionselector.hub import main as hub

    r = world.root
    (r / "outputs").mkdir()
    counter = iter(range(10**6))
    out = lambda: str(r / "outputs" / f"out{next(counter)}")  # noqa: E731  (not created: a failure must not create it)
    image, strip = str(r / "square.png"), str(r / "strip.png")
    gen = ["generate", "--image", image, "--prompt", "what colour", "--max-new-tokens", "2"]
    cases = [
        Case("cli", "generate valid", _cli(cli, gen), True, kind="cli"),
        Case("cli", "generate valid --show-kept", _cli(cli, gen + ["--show-kept", str(r / "kept.png")]), True, kind="cli"),
        Case("cli", "generate two images ratio 0.1", _cli(cli, gen + ["--image", image, "--retention-ratio", "0.1"]), True, kind="cli"),
        Case("cli", "generate selector divprune", _cli(cli, gen + ["--selector", "divprune"]), True, kind="cli"),
        Case("cli", "demo 2 samples", _cli(cli, ["demo", "--samples", "2", "--batch-size", "2", "--out", str(r / "demo.png")]), True, kind="cli"),
    ]
    bad_cli = {
        "aspect ratio > 200": (["generate", "--image", strip, "--prompt", "x"], "aspect ratio"),
        "prompt with <|image_pad|>": (["generate", "--image", image, "--prompt", "a <|image_pad|> b"], "--prompt"),
        "prompt with <|vision_start|>": (["generate", "--image", image, "--prompt", "<|vision_start|>"], "--prompt"),
        "--show-kept a folder": (gen + ["--show-kept", str(r / "folder")], "--show-kept"),
        "--show-kept in a missing folder": (gen + ["--show-kept", str(r / "no" / "k.png")], "does not exist"),
        "--device bogus": (gen + ["--device", "bogus"], "--device"),
        "--device cuda:7": (gen + ["--device", "cuda:7"], "--device"),
        "--image a folder": (["generate", "--image", str(r / "folder"), "--prompt", "x"], "folder"),
        "--image missing": (["generate", "--image", str(r / "missing.png"), "--prompt", "x"], "missing.png"),
        "--image not an image": (["generate", "--image", str(r / "text.png"), "--prompt", "x"], "text.png"),
        "--model a file": (gen + ["--model", image], "--model"),
        "--model missing folder": (gen + ["--model", str(r / "missing")], "missing"),
        "--model a stock backbone": (gen + ["--model", str(r / "backbone")], "qwen2_5_vl"),
        "--model a scorer-only artifact of a missing backbone": (gen + ["--model", "SCORER_OF_MISSING"], "missing"),
        "--retention-ratio 0": (gen + ["--retention-ratio", "0"], "--retention-ratio"),
        "--retention-ratio 1.5": (gen + ["--retention-ratio", "1.5"], "--retention-ratio"),
        "--retention-ratio nan": (gen + ["--retention-ratio", "nan"], "--retention-ratio"),
        "--selector best": (gen + ["--selector", "best"], "best"),
        "--max-new-tokens 0": (["generate", "--image", image, "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
        "unknown option": (gen + ["--bogus"], "--bogus"),
        "no --prompt": (["generate", "--image", image], "--prompt"),
        "demo --out a folder": (["demo", "--out", str(r / "folder")], "--out"),
        "demo --samples 0": (["demo", "--samples", "0"], "--samples"),
        "demo --batch-size -1": (["demo", "--batch-size", "-1"], "--batch-size"),
        "demo --out in a missing folder": (["demo", "--out", str(r / "no" / "d.png")], "does not exist"),
    }
    if torch.cuda.is_available():
        bad_cli.pop("--device cuda:7")
    else:
        bad_cli["--device cuda (no GPU)"] = (gen + ["--device", "cuda"], "--device")
    orphan = r / "orphan-scorer"  # a scorer-only artifact whose backbone folder is gone
    orphan.mkdir()
    for path in (r / "scorer").iterdir():
        (orphan / path.name).write_bytes(path.read_bytes())
    config = json.loads((orphan / "config.json").read_text())
    (orphan / "config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(r / "missing")}))
    for label, (argv, name) in bad_cli.items():
        argv = [str(orphan) if arg == "SCORER_OF_MISSING" else arg for arg in argv]
        cases.append(Case("cli", f"visionselector {label}", _cli(cli, argv), False, (name,), kind="cli"))

    run, scorer, backbone = str(r / "run"), str(r / "scorer"), str(r / "backbone")
    cases += [
        Case("cli", "hub save valid", lambda: _cli(hub, ["save", "--checkpoint", run, "--output_dir", out()])(), True, kind="cli"),
        Case("cli", "hub convert valid", lambda: _cli(hub, ["convert", "--checkpoint", run, "--output_dir", out(), "--processor", "none"])(), True, kind="cli"),
        Case("cli", "hub merge valid", lambda: _cli(hub, ["merge", "--scorer", scorer, "--output_dir", out()])(), True, kind="cli"),
        Case("cli", "hub push valid (recorded)", _cli(hub, ["push", "--checkpoint", run, "--repo_id", "me/scorer"], api=_RecordingApi()), True, kind="cli"),
    ]
    corrupt_run = Path(tempfile.mkdtemp(dir=r))
    for path in (r / "run").iterdir():
        (corrupt_run / path.name).write_bytes(path.read_bytes())
    (corrupt_run / "model.safetensors").write_bytes((corrupt_run / "model.safetensors").read_bytes()[:100])
    bad_hub = {
        "save into its checkpoint": (["save", "--checkpoint", run, "--output_dir", run], "overwrite"),
        "convert into its checkpoint": (["convert", "--checkpoint", run, "--output_dir", run], "overwrite"),
        "save inside its checkpoint": (["save", "--checkpoint", run, "--output_dir", run + "/sub"], "overwrite"),
        "save into the backbone": (["save", "--checkpoint", run, "--base_model", backbone, "--output_dir", backbone], "overwrite"),
        "merge into its scorer": (["merge", "--scorer", scorer, "--output_dir", scorer], "overwrite"),
        "merge into the backbone": (["merge", "--scorer", scorer, "--output_dir", backbone], "overwrite"),
        "save corrupted safetensors": (["save", "--checkpoint", str(corrupt_run), "--output_dir", "OUT"], "model.safetensors"),
        "save unknown option": (["save", "--checkpoint", run, "--output_dir", "OUT", "--bogus", "1"], "--bogus"),
        "save missing checkpoint": (["save", "--checkpoint", str(r / "missing"), "--output_dir", "OUT"], "--checkpoint"),
        "save checkpoint is a file": (["save", "--checkpoint", image, "--output_dir", "OUT"], "--checkpoint"),
        "save unreadable --results": (["save", "--checkpoint", run, "--output_dir", "OUT", "--results", str(r / "missing.json")], "missing.json"),
        # a stock config is also what the paper's releases have, so the fix named is --base_model
        "save a stock backbone": (["save", "--checkpoint", backbone, "--output_dir", "OUT"], "--base_model"),
        "save no --output_dir": (["save", "--checkpoint", run], "--output_dir"),
        "push corrupted safetensors": (["push", "--checkpoint", str(corrupt_run), "--repo_id", "me/x"], "model.safetensors"),
        "push missing checkpoint": (["push", "--checkpoint", str(r / "missing"), "--repo_id", "me/x"], "--checkpoint"),
        "merge a full checkpoint": (["merge", "--scorer", run, "--output_dir", "OUT"], "scorer-only"),
        "merge missing scorer": (["merge", "--scorer", str(r / "missing"), "--output_dir", "OUT"], "--scorer"),
        "merge missing --base_model": (["merge", "--scorer", scorer, "--output_dir", "OUT", "--base_model", str(r / "missing")], "--base_model"),
        "merge unknown option": (["merge", "--scorer", scorer, "--output_dir", "OUT", "--bogus"], "--bogus"),
        "merge no --output_dir": (["merge", "--scorer", scorer], "--output_dir"),
        "unknown command": (["upload"], "upload"),
    }
    for label, (argv, name) in bad_hub.items():
        def runner(argv=argv):
            return _cli(hub, [out() if a == "OUT" else a for a in argv], api=_NoUploads())()
        cases.append(Case("cli", f"visionselector-hub {label}", runner, False, (name,), kind="cli"))
    return cases


def trainer_cases(world: World) -> list[Case]:
    from datasets import Dataset

    from visionselector.tiny import tiny_processor, tiny_qwen2_5_vl
    from visionselector_training import VisionSelectorSFTConfig, VisionSelectorSFTTrainer

    def rows(n=2, answer=True, image=True):
        rng = np.random.default_rng(0)
        out = []
        for _ in range(n):
            messages = [{"role": "user", "content": "what is the colour of the square"}]
            if answer:
                messages.append({"role": "assistant", "content": "red"})
            row = {"messages": messages}
            if image:
                row["images"] = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))]
            out.append(row)
        return out

    def trainer(data, **overrides):
        values = dict(output_dir=tempfile.mkdtemp(dir=world.root), use_cpu=True, bf16=False, max_steps=1, per_device_train_batch_size=2,
                      logging_steps=1, save_strategy="no", report_to="none", seed=0, disable_tqdm=True)
        return VisionSelectorSFTTrainer(tiny_qwen2_5_vl(), args=VisionSelectorSFTConfig(**{**values, **overrides}),
                                        train_dataset=data, processing_class=tiny_processor())

    def train(data, **overrides):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer(data, **overrides).train()

    def labels_case(delta, mode):
        t = trainer(Dataset.from_list(rows()))
        batch = t._prepare_inputs(next(iter(t.get_train_dataloader())))
        labels = batch["labels"]
        batch["labels"] = labels[:, :delta] if delta < 0 else torch.cat([labels, labels[:, :1]], 1)
        t.model.train(mode == "train")
        t.compute_loss(t.model, batch)

    def truncated():
        t = trainer(Dataset.from_list(rows()))
        buffer = io.BytesIO()
        Image.new("RGB", (56, 56), "blue").save(buffer, format="PNG")
        path = world.root / "cut.png"
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        examples = rows()
        examples[1]["images"] = [Image.open(path)]
        t.data_collator(examples)

    def cut_answers():
        t = trainer(Dataset.from_list(rows()))
        length = t._prepare_inputs(next(iter(t.get_train_dataloader())))["input_ids"].shape[1]
        train(Dataset.from_list(rows()), max_length=length - 3)

    return [
        Case("trainer", "one valid step", lambda: train(Dataset.from_list(rows())), True),
        Case("trainer", "empty dataset", lambda: trainer(Dataset.from_list(rows()).select([])), False, ("train_dataset",)),
        Case("trainer", "no assistant turn", lambda: train(Dataset.from_list(rows(answer=False))), False, ("supervised",), kind="warning"),
        Case("trainer", "max_length cuts every answer", cut_answers, False, ("supervised",), kind="warning"),
        Case("trainer", "text-only data", lambda: train(Dataset.from_list(rows(image=False))), False, ("image or video",), kind="warning"),
        Case("trainer", "labels shorter (train)", lambda: labels_case(-1, "train"), False, ("labels",)),
        Case("trainer", "labels longer (train)", lambda: labels_case(1, "train"), False, ("labels",)),
        Case("trainer", "labels shorter (eval)", lambda: labels_case(-1, "eval"), False, ("labels",)),
        Case("trainer", "labels longer (eval)", lambda: labels_case(1, "eval"), False, ("labels",)),
        Case("trainer", "truncated image", truncated, False, ("cut.png", "example 1")),
        Case("trainer", "train_retention_ratio 0", lambda: trainer(Dataset.from_list(rows()), train_retention_ratio=0.0), False, ("train_retention_ratio",)),
        Case("trainer", "peft_config", lambda: VisionSelectorSFTTrainer(tiny_qwen2_5_vl(), peft_config=object()), False, ("peft_config",)),
        Case("trainer", "loss_type dft", lambda: trainer(Dataset.from_list(rows()), loss_type="dft"), False, ("loss_type",)),
        Case("trainer", "not a Qwen-VL model", lambda: VisionSelectorSFTTrainer(torch.nn.Linear(2, 2)), False, ("model",)),
        Case("trainer", "a missing model folder", lambda: VisionSelectorSFTTrainer(
            str(world.root / "missing"), args=VisionSelectorSFTConfig(tempfile.mkdtemp(dir=world.root), use_cpu=True, bf16=False, report_to="none"),
            train_dataset=Dataset.from_list(rows())), False, ("missing",)),
    ]


# ---------------------------------------------------------------------------------------------------- running


def classify(case: Case, timeout: float, world: World) -> tuple[str, str]:
    before = _snapshot(world.root) if case.kind == "cli" and not case.valid else None
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(timeout))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = case.run()
    except _Timeout:
        return "hang", f"no answer in {timeout:g} s"
    except ValueError as error:
        message = " ".join(str(error).split())
        if case.valid:
            return "refused valid", message
        named = any(name in message for name in case.names)
        return ("clear error" if named else "unnamed error"), message
    except BaseException as error:  # noqa: BLE001 - every other exception is a crash
        if isinstance(error, KeyboardInterrupt):
            raise
        return "crash", f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    finally:
        signal.alarm(0)
    if case.kind == "cli":
        code, err = result
        lines = [line for line in err.splitlines() if "error:" in line]
        if code == 0:
            return ("handled valid" if case.valid else "silent acceptance"), "exit 0"
        if "Traceback" in err:
            return "crash", err.strip().splitlines()[-1][:200]
        if case.valid:
            return "refused valid", err.strip()[:200]
        if before is not None and _snapshot(world.root) != before:
            return "wrote on failure", lines[0][:200] if lines else err[:200]
        # exit 2: bad arguments; exit 1: the model could not be loaded (`visionselector --help`)
        if code in (1, 2) and len(lines) == 1:
            line = lines[0]
            return ("clear error" if any(name in err for name in case.names) else "unnamed error"), line[:200]
        return "unnamed error", f"exit {code}: {err.strip()[:200]}"
    if case.kind == "warning":
        texts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        if any(name in text for text in texts for name in case.names):
            return "clear error", next(t for t in texts if any(n in t for n in case.names))[:200]
        return "silent acceptance", "no warning"
    return ("handled valid" if case.valid else "silent acceptance"), ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60, help="seconds per case before it counts as a hang")
    parser.add_argument("--details", action="store_true", help="print one line per case")
    parser.add_argument("--out", type=Path, default=None, help="write every case and its outcome as JSON")
    parser.add_argument("--groups", default=None, help="comma-separated groups to run (default: all)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _campaign(args)
    finally:
        torch.set_num_threads(threads)


def _campaign(args) -> int:
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as root:
        world = World(Path(root))
        cases = api_cases(world) + generate_cases(world) + loading_cases(world) + cli_cases(world) + trainer_cases(world)
        if args.groups:
            cases = [case for case in cases if case.group in args.groups.split(",")]
        results = []
        for case in cases:
            torch.manual_seed(0)
            outcome, detail = classify(case, args.timeout, world)
            results.append({"group": case.group, "case": case.name, "valid": case.valid, "outcome": outcome, "detail": detail})
            if args.details:
                print(f"{outcome:>17}  {case.group:>18}  {case.name}  {detail[:140]}")
    seconds = time.perf_counter() - started

    groups = sorted({r["group"] for r in results}, key=[r["group"] for r in results].index)
    header = f"{'group':>18}  {'cases':>5}  " + "  ".join(f"{o:>{max(5, len(o))}}" for o in OUTCOMES)
    print(f"{len(results)} inputs, {seconds:.0f} s on {torch.get_num_threads()} CPU thread(s)")
    print(header)
    print("-" * len(header))
    for group in groups + ["all"]:
        rows = [r for r in results if group in ("all", r["group"])]
        counts = [sum(r["outcome"] == o for r in rows) for o in OUTCOMES]
        print(f"{group:>18}  {len(rows):>5}  " + "  ".join(f"{c:>{max(5, len(o))}}" for c, o in zip(counts, OUTCOMES)))
    bad = [r for r in results if r["outcome"] not in ("clear error", "handled valid")]
    if bad:
        print("\nnot clear errors or handled valid inputs:")
        for r in bad:
            print(f"  {r['outcome']:>17}  {r['group']}: {r['case']}  {r['detail'][:160]}")
    if args.out:
        args.out.write_text(json.dumps({"seconds": seconds, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
