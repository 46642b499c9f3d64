"""The `visionselector` command: a demo on the embedded tiny checkpoint, and pruned generation with any model.

    visionselector demo                      # accuracy / tokens kept / prefill time per retention ratio, and a PNG
    visionselector generate --image cat.png --prompt "describe the image" --retention-ratio 0.3 --show-kept kept.png

Exit codes: 0 success, 1 the model could not be loaded or run, 2 bad arguments (argparse's code for usage errors):
an unknown option, a missing or unreadable image file, a retention ratio outside (0, 1].
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EMBEDDED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "tiny-shapes"
DEMO_RATIOS = (1.0, 0.5, 0.3, 0.2, 0.1)
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# Qwen-VL processors refuse images whose longer side is more than this many times the shorter.
MAX_ASPECT_RATIO = 200


class CommandError(Exception):
    """A failure the user can act on: printed as one `error:` line, exit code `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def _ratio(text: str) -> float:
    """argparse type: a retention ratio in (0, 1]."""
    from modeling_visionselector import validate_retention_ratio

    try:
        return validate_retention_ratio(float(text), "--retention-ratio")
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from error


def _selector_names() -> list[str]:
    from modeling_visionselector.selectors import SELECTORS

    return list(SELECTORS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionselector",
        description=(
            "VisionSelector for Qwen-VL backbones (Qwen2-VL, Qwen2.5-VL, Qwen3-VL(-MoE) and Qwen3.5(-MoE)): keep the "
            "visual tokens that matter, prefill on fewer tokens."
        ),
        epilog=(
            "exit codes: 0 success, 1 the model could not be loaded or run, 2 bad arguments.\n"
            f"embedded checkpoint: {EMBEDDED_CHECKPOINT}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="answer held-out questions with the embedded tiny checkpoint at several retention ratios",
        description=(
            "Loads the embedded tiny checkpoint (a Qwen2.5-VL-architecture model trained on 'what colours are the "
            "squares', three small squares among circles, triangles, diamonds and crosses of the same colours), "
            "answers held-out samples at retention 1.0, 0.5, 0.3, 0.2 and 0.1 with the learned scorer and with every "
            "training-free selector, prints the accuracy of the learned scorer, of the best training-free selector "
            "and of random selection, visual tokens kept and prefill time, and writes a PNG of the kept tokens."
        ),
    )
    demo.add_argument("--model", default=str(EMBEDDED_CHECKPOINT), help="a checkpoint trained on the task (default: the embedded one)")
    demo.add_argument("--samples", type=int, default=100, help="held-out samples per setting (default: %(default)s)")
    demo.add_argument("--batch-size", type=int, default=50, help="samples per forward pass (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random selection (default: %(default)s)")
    demo.add_argument("--out", type=Path, default=Path("visionselector-demo.png"), help="where to write the PNG (default: %(default)s)")

    generate = commands.add_parser(
        "generate",
        help="answer a prompt about images with pruned visual tokens",
        description="Runs a VisionSelector model on images and a prompt, keeping a share of each image's visual tokens.",
        epilog="example: visionselector generate --image shapes.png --prompt 'what colours are the squares' --retention-ratio 0.1",
    )
    generate.add_argument(
        "--model",
        default=str(EMBEDDED_CHECKPOINT),
        help="folder or Hub id of a VisionSelector checkpoint (default: the embedded tiny checkpoint)",
    )
    generate.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    generate.add_argument("--image", dest="images", action="append", required=True, metavar="FILE", help="an image file; repeat for several")
    generate.add_argument("--prompt", required=True, help="the question or instruction, after the images")
    generate.add_argument("--retention-ratio", type=_ratio, default=None, metavar="R", help="share of visual tokens kept, in (0, 1] (default: the model's)")
    generate.add_argument("--selector", default="learned", help="how tokens are chosen: learned (default), random, uniform, norm, ...")
    generate.add_argument("--max-new-tokens", type=int, default=32, help="(default: %(default)s)")
    generate.add_argument("--seed", type=int, default=0, help="seed for the random selector (default: %(default)s)")
    generate.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    generate.add_argument("--show-kept", type=Path, default=None, metavar="OUT.png", help="write the images with the kept tokens highlighted")
    return parser


# ---------------------------------------------------------------------- loading


def load_model_and_processor(model: str, revision: str | None = None, device: str | None = None):
    """A VisionSelector and its processor from a folder or a Hub id; `CommandError` with the reason if not."""
    import torch
    from transformers import AutoProcessor

    from transformers import PreTrainedConfig

    from modeling_visionselector import VISIONSELECTOR_CLASSES

    local = Path(model).expanduser()
    looks_local = local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and local.exists() and not local.is_dir():
        raise CommandError(f"--model {model!r} is a file; it must be a checkpoint folder or a Hub id.", EXIT_USAGE)
    if looks_local and not local.is_dir():
        raise CommandError(f"model folder {model!r} does not exist.", EXIT_USAGE)
    source = str(local) if looks_local else model
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(source, revision=revision)
        model_type = config_dict.get("model_type")
        model_class = {c.config_class.model_type: c for c in VISIONSELECTOR_CLASSES.values()}.get(model_type)
        if model_class is None:
            raise CommandError(
                f"{model!r} is a {model_type!r} checkpoint, not a VisionSelector "
                f"({', '.join(sorted(c.config_class.model_type for c in VISIONSELECTOR_CLASSES.values()))}); train a "
                "scorer for it first (see visionselector_training).",
                EXIT_USAGE,
            )
        config = model_class.config_class.from_pretrained(source, revision=revision)
        network = model_class.from_pretrained(source, config=config, revision=revision)
        # trust_remote_code=False: the tokenizer only reads config.json, whose auto_map would otherwise prompt.
        processor = AutoProcessor.from_pretrained(source, revision=revision, trust_remote_code=False)
    except CommandError:
        raise
    except Exception as error:  # noqa: BLE001 - every loading failure becomes one readable line
        reason = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        where = "folder" if looks_local else "Hub id"
        offline = "" if looks_local else (
            " If you are offline (HF_HUB_OFFLINE=1 or no network), download it first or pass a local folder."
        )
        raise CommandError(f"could not load a VisionSelector model from {where} {model!r}: {reason}.{offline}") from error
    device = _device(device)
    return network.to(device).eval(), processor


def _device(name: str | None):
    """The torch device `--device` names (default: cuda if available, else cpu); `CommandError` if it is unusable."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise CommandError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps): {error}", EXIT_USAGE) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}.get(device.type)
    if available is False or (device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count()):
        raise CommandError(f"--device {name!r} is not available on this machine.", EXIT_USAGE)
    return device


def _open_images(paths: list[str]):
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        if os.path.isdir(path):
            raise CommandError(f"--image {path!r} is a folder, not an image file.", EXIT_USAGE)
        if not os.path.isfile(path):
            raise CommandError(f"image file {path!r} does not exist.", EXIT_USAGE)
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise CommandError(f"cannot read image {path!r}: {error}", EXIT_USAGE) from error
        width, height = images[-1].size
        if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
            raise CommandError(
                f"image {path!r} is {width} x {height} px, an aspect ratio of {max(width, height) / min(width, height):.0f}; "
                f"Qwen-VL processors accept at most {MAX_ASPECT_RATIO}. Crop or pad it.",
                EXIT_USAGE,
            )
    return images


def _check_png_path(path: Path | None, option: str) -> None:
    """A `CommandError` unless a PNG can be written at `path` (checked before any work is done)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{option} {str(path)!r} is a folder; give a file name such as {str(path / 'kept.png')!r}.", EXIT_USAGE)
    if not path.parent.is_dir():
        raise CommandError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist.", EXIT_USAGE)


# ---------------------------------------------------------------------- generate


def run_generate(args) -> int:
    import torch

    from visionselector.plotting import draw_selection, tile

    if args.selector not in _selector_names():
        raise CommandError(f"unknown selector {args.selector!r}; accepted: {', '.join(_selector_names())}.", EXIT_USAGE)
    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.", EXIT_USAGE)
    _check_png_path(args.show_kept, "--show-kept")
    if args.device is not None:
        _device(args.device)
    images = _open_images(args.images)
    model, processor = load_model_and_processor(args.model, args.revision, args.device)
    ratio = model.config.retention_ratio if args.retention_ratio is None else args.retention_ratio
    special = [token for token in (getattr(processor, "image_token", None), getattr(processor, "video_token", None)) if token]
    special += [token for token in ("<|vision_start|>", "<|vision_end|>") if token in processor.tokenizer.get_vocab()]
    held = [token for token in special if token in args.prompt]
    if held:
        raise CommandError(
            f"--prompt holds the vision token(s) {held}, which only the processor may write (one per visual token); "
            "the images go in --image.",
            EXIT_USAGE,
        )

    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": args.prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    try:
        inputs = processor(text=[text], images=images, return_tensors="pt").to(model.device)
        torch.manual_seed(args.seed)
        output = model.generate(
            **inputs, retention_ratio=ratio, selector=args.selector, max_new_tokens=args.max_new_tokens, do_sample=False
        )
    except ValueError as error:
        raise CommandError(f"cannot generate: {' '.join(str(error).split())}", EXIT_USAGE) from error
    answer = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    print(answer.strip())

    torch.manual_seed(args.seed)  # the same draw as in generate, for the random selector
    selection = model.select_visual_tokens(
        inputs["pixel_values"], inputs["image_grid_thw"], retention_ratio=ratio, selector=args.selector
    )
    kept = [len(k) for k in selection.kept_indices]
    totals = [len(s) for s in selection.scores]
    print(
        f"kept {sum(kept)} of {sum(totals)} visual tokens (retention {ratio:g}, selector {args.selector}; "
        f"per image {', '.join(f'{k}/{n}' for k, n in zip(kept, totals))})",
        file=sys.stderr,
    )
    if args.show_kept is not None:
        vision = model.config.vision_config
        panels = draw_selection(
            selection,
            inputs["image_grid_thw"].cpu(),
            images=images,
            patch_size=vision.patch_size,
            merge_size=vision.spatial_merge_size,
            temporal_patch_size=vision.temporal_patch_size,
        )
        _save_png(tile(panels), args.show_kept)
        print(f"wrote {args.show_kept}", file=sys.stderr)
    return EXIT_OK


def _save_png(image, path: Path) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise CommandError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist.", EXIT_USAGE)
    image.save(path, format="PNG")


# ---------------------------------------------------------------------- demo


class _StageTimer:
    """Wall time spent inside one module's forward, through forward hooks (the module itself is untouched)."""

    def __init__(self, module):
        self.seconds = 0.0
        self._handles = [
            module.register_forward_pre_hook(lambda *_: setattr(self, "_start", time.perf_counter())),
            module.register_forward_hook(lambda *_: setattr(self, "seconds", self.seconds + time.perf_counter() - self._start)),
        ]

    def remove(self):
        for handle in self._handles:
            handle.remove()


def _accuracy(model, batches, ratio: float, selector: str, seed: int):
    """Share of whole answers right (`tasks.answer_accuracy`) and mean kept tokens per image, over pre-built batches."""
    import torch

    from visionselector.tasks import answer_accuracy

    kept = []
    hook = model.register_forward_hook(lambda _, __, output: kept.extend(len(k) for k in output.kept_indices))
    try:
        torch.manual_seed(seed)  # the random selector draws from torch's global generator
        accuracy = answer_accuracy(model, batches, retention_ratio=ratio, selector=selector, use_cache=False)
    finally:
        hook.remove()
    return accuracy, sum(kept) / len(kept)


def _prefill_times(model, inputs, ratios, repeats: int = 5) -> dict[float, tuple[float, float]]:
    """Per ratio, the best of `repeats` seconds of (language-model prefill, whole forward) on one batch.

    The ratios take turns within each repeat, so that other work on a shared machine slows them alike.
    """
    import torch

    best = {ratio: (float("inf"), float("inf")) for ratio in ratios}
    timer = _StageTimer(model.model.language_model)
    try:
        with torch.no_grad():
            for _ in range(repeats):
                for ratio in ratios:
                    timer.seconds = 0.0
                    start = time.perf_counter()
                    model(**inputs, retention_ratio=ratio, logits_to_keep=1, use_cache=False)
                    total = time.perf_counter() - start
                    best[ratio] = (min(best[ratio][0], timer.seconds), min(best[ratio][1], total))
    finally:
        timer.remove()
    return best


def demo_figure(model, processor, sample, rival: str = "random", ratios=(0.5, 0.2, 0.1), seed: int = 0):
    """Panels of one sample: the image, then per ratio the kept tokens and greedy answer of the learned scorer
    (first row) and of the training-free selector `rival` (second row)."""
    import torch

    from visionselector.plotting import draw_kept_tokens, tile, with_caption
    from visionselector.tasks import task_inputs

    inputs, answer_ids = task_inputs(processor, [sample])
    inputs = inputs.to(model.device)
    vision = model.config.vision_config
    draw = dict(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size)
    grid = inputs["image_grid_thw"][0].cpu()
    caption = dict(height=28)
    panels = [with_caption(sample.image.resize(tuple(int(v) * vision.patch_size for v in grid[[2, 1]])), f"{sample.question}\nanswer: {sample.answer}", **caption)]
    rows = []
    for selector in ("learned", rival):
        row = []
        for ratio in ratios:
            torch.manual_seed(seed)
            with torch.no_grad():
                output = model.generate(
                    **inputs, retention_ratio=ratio, selector=selector, max_new_tokens=answer_ids.shape[1], do_sample=False
                )
            said = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            torch.manual_seed(seed)  # the same draw as in generate, for the random selector
            kept = model.select_visual_tokens(inputs["pixel_values"], inputs["image_grid_thw"], retention_ratio=ratio, selector=selector).kept_indices[0]
            panel = draw_kept_tokens(sample.image, kept.cpu(), grid, **draw)
            mark = "right" if said == sample.answer else "wrong"
            row.append(with_caption(panel, f"{selector}, r = {ratio:g}: {mark}\n{said}", **caption))
        rows.append(row)
    blank = with_caption(sample.image.resize(panels[0].size).point(lambda _: 255), "dimmed: dropped\noutlined: kept", **caption)
    return tile(panels + rows[0] + [blank] + rows[1], columns=len(ratios) + 1)


def run_demo(args) -> int:
    import torch

    from modeling_visionselector.selectors import TRAINING_FREE_SELECTORS
    from visionselector.tasks import HELD_OUT_SEED, QUESTION, make_samples, task_inputs

    if args.samples < 1 or args.batch_size < 1:
        raise CommandError("--samples and --batch-size must be >= 1.", EXIT_USAGE)
    _check_png_path(args.out, "--out")
    started = time.perf_counter()
    model, processor = load_model_and_processor(args.model, device="cpu")
    samples = make_samples(args.samples, seed=HELD_OUT_SEED)
    batches = [
        task_inputs(processor, samples[i : i + args.batch_size], with_answers=True)
        for i in range(0, len(samples), args.batch_size)
    ]
    total_tokens = int(batches[0][0]["image_grid_thw"][0].prod()) // model.config.vision_config.spatial_merge_size**2
    prompts = task_inputs(processor, samples[: args.batch_size])[0]  # the timed batch: prompts without answers
    with torch.no_grad():  # warm-up, so the first timed setting does not pay for it
        model(**prompts, logits_to_keep=1, use_cache=False)

    batch_size = len(samples[: args.batch_size])
    times = _prefill_times(model, prompts, DEMO_RATIOS)
    print(
        f"{len(samples)} held-out samples of '{QUESTION}' (the answer: the three colours in rainbow order, right only "
        f"if all three are). Best training-free: the most accurate of {', '.join(TRAINING_FREE_SELECTORS)} at that ratio. "
        f"Times: ms per sample, batch of {batch_size}, best of 5; LLM prefill = the language model on the pruned "
        "prompt, forward = vision encoder + scorer + LLM prefill."
    )
    header = (
        f"{'retention':>9}  {'visual tokens kept':>18}  {'accuracy learned':>16}  {'best training-free':>25}  "
        f"{'accuracy random':>15}  {'LLM prefill ms':>14}  {'forward ms':>10}"
    )
    print(header)
    print("-" * len(header))
    rivals = {}
    for ratio in DEMO_RATIOS:
        learned, kept = _accuracy(model, batches, ratio, "learned", args.seed)
        accuracy = {name: _accuracy(model, batches, ratio, name, args.seed)[0] for name in TRAINING_FREE_SELECTORS}
        rival = max(accuracy, key=accuracy.get)
        rivals[ratio] = rival
        language_model, total = (1000 * seconds / batch_size for seconds in times[ratio])
        print(
            f"{ratio:>9.1f}  {f'{kept:.0f} / {total_tokens}':>18}  {learned:>16.1%}  "
            f"{f'{accuracy[rival]:.1%} {rival}':>25}  {accuracy['random']:>15.1%}  {language_model:>14.2f}  {total:>10.2f}"
        )
    figure = demo_figure(model, processor, samples[0], rival=rivals[min(DEMO_RATIOS)], seed=args.seed)
    _save_png(figure, args.out)
    print(f"wrote {args.out} (dimmed: dropped tokens; outlined: kept tokens) in {time.perf_counter() - started:.1f} s total")
    return EXIT_OK


# ---------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Runs the command line `argv` (default: `sys.argv[1:]`) and returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed by argparse
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        return run_demo(args) if args.command == "demo" else run_generate(args)
    except CommandError as error:
        print(f"visionselector {args.command}: error: {error}", file=sys.stderr)
        return error.code


if __name__ == "__main__":
    raise SystemExit(main())
