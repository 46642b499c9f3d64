"""Training data as people have it: TRL's `messages` + `images` rows and the LLaVA / ShareGPT layout, read lazily.

The layouts, told apart by their columns:

| layout | columns | visuals |
| --- | --- | --- |
| LLaVA / ShareGPT (the paper's data, Qwen's fine-tuning code) | `conversations` (`from`/`value` or `role`/`content`), `image`, `video` | `<image>` / `<video>` tags anywhere in a turn; `image` and `video` a path or a list of paths |
| TRL | `messages` (`role`/`content`), `images`, optionally `videos` | `{"type": "image"}` blocks, or, for string contents, every image before the first user turn |

Both become one row type, the one `visionselector-data convert` writes and `VisionLanguageCollator` reads:
`{"messages": [{"role", "content": [{"type": "text" | "image" | "video", "text"}]}], "images": [path],
"videos": [path]}`, where a video is a video file (decoded by the processor's video backend) or a folder of frames.
Paths are resolved against `image_folder` (LLaVA's `--image_folder`), by default the data file's folder. Nothing is
decoded up front: the dataset holds paths (memory-mapped Arrow, or a stream), and the collator opens the images and
frames of each batch as it builds it.

Rows that cannot be used (a missing file, a tag count that does not match the visuals, no assistant turn, an unknown
role, a video file without a video backend) are found in one pass before training and reported by row number, then
skipped (`on_bad_row="skip"`) or refused (`on_bad_row="error"`), so a long run does not stop midway on them. A LLaVA
row without any tag puts its visuals before the text of its first user turn, as TRL does.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

ON_BAD_ROW = ("error", "skip")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
TAGS = {"<image>": "image", "<video>": "video"}
_TAG_PATTERN = re.compile("|".join(re.escape(tag) for tag in TAGS))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The modules transformers' `load_video` decodes video files with, by its backend names; torchcodec first (the
# processors' own decoder).
VIDEO_BACKENDS = {"torchcodec": "torchcodec", "av": "pyav", "decord": "decord", "cv2": "opencv"}
# Frames per second sampled from a video file when the processor does not say (Qwen's default).
DEFAULT_VIDEO_FPS = 2.0
# Shown in a report, at most this many bad rows by number.
REPORTED_ROWS = 20


class BadRow(ValueError):
    """A row that cannot be trained on; `str()` says why."""


def validate_on_bad_row(value: str) -> str:
    if value not in ON_BAD_ROW:
        raise ValueError(f"`on_bad_row` must be one of {list(ON_BAD_ROW)}, got {value!r}.")
    return value


def detect_format(columns) -> str:
    """`"llava"` (a `conversations` column) or `"messages"` (TRL's); a `ValueError` naming the columns otherwise."""
    columns = set(columns)
    if "conversations" in columns:
        return "llava"
    if "messages" in columns:
        return "messages"
    raise ValueError(
        f"Cannot tell the dataset's layout from its columns {sorted(columns)}: expected `conversations` (LLaVA / "
        "ShareGPT, with `image` / `video`) or `messages` (TRL, with `images`)."
    )


# ---------------------------------------------------------------- one row


def _paths(value, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRow(f"`{name}` must be a path or a list of paths, got {type(value).__name__}")


def _split_tags(text: str) -> list[dict]:
    """`"<image>\\nWhat is it?"` -> `[{"type": "image"}, {"type": "text", "text": "What is it?"}]`."""
    blocks = []
    position = 0
    for match in _TAG_PATTERN.finditer(text):
        piece = text[position : match.start()].strip()
        if piece:
            blocks.append({"type": "text", "text": piece})
        blocks.append({"type": TAGS[match.group()], "text": None})
        position = match.end()
    piece = text[position:].strip()
    if piece or not blocks:
        blocks.append({"type": "text", "text": piece})
    return blocks


def _place_untagged(messages: list[dict], images: list, videos: list) -> None:
    """Visuals without any tag go before the text of the first user turn (TRL's rule for string contents)."""
    for message in messages:
        if message["role"] == "user":
            placeholders = [{"type": "image", "text": None} for _ in images]
            placeholders += [{"type": "video", "text": None} for _ in videos]
            message["content"] = placeholders + message["content"]
            return
    raise BadRow("the visuals have no user turn to go in")


def _count(messages: list[dict], kind: str) -> int:
    return sum(block["type"] == kind for message in messages for block in message["content"])


def _finish(messages: list[dict], images: list[str], videos: list[str]) -> dict:
    """Checks the placeholders against the visuals and that there is an answer; returns the normalised row."""
    if not any(message["role"] == "assistant" for message in messages):
        raise BadRow("no assistant turn")
    num_images, num_videos = _count(messages, "image"), _count(messages, "video")
    if num_images == 0 and num_videos == 0 and (images or videos):
        _place_untagged(messages, images, videos)
    elif num_images != len(images) or num_videos != len(videos):
        raise BadRow(
            f"{num_images} image and {num_videos} video placeholders for {len(images)} images and {len(videos)} videos"
        )
    return {"messages": messages, "images": images, "videos": videos}


def llava_row(row: dict) -> dict:
    """A LLaVA / ShareGPT row as a normalised row (paths as given); `BadRow` if it cannot be used."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRow("`conversations` is not a non-empty list of turns")
    messages = []
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRow(f"turn {number} is not an object")
        speaker = turn.get("from", turn.get("role"))
        if speaker not in ROLES:
            raise BadRow(f"turn {number} has role {speaker!r}; accepted: {sorted(ROLES)}")
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str):
            raise BadRow(f"turn {number} has no text (`value` or `content`)")
        messages.append({"role": ROLES[speaker], "content": _split_tags(text)})
    return _finish(messages, _paths(row.get("image"), "image"), _paths(row.get("video"), "video"))


def messages_row(row: dict) -> dict:
    """A TRL `messages` row (string or block contents) as a normalised row; a row without `images` is text-only."""
    raw = row.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRow("`messages` is not a non-empty list")
    images = _paths(row.get("images", row.get("image")), "images")
    videos = _paths(row.get("videos", row.get("video")), "videos")
    messages = []
    for number, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise BadRow(f"message {number} has role {role!r}; accepted: ['assistant', 'system', 'user']")
        content = message.get("content")
        if isinstance(content, str):
            blocks = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = []
            for block in content:
                kind = block.get("type") if isinstance(block, dict) else None
                if kind not in ("text", "image", "video"):
                    raise BadRow(f"message {number} has a content block of type {kind!r}")
                blocks.append({"type": kind, "text": block.get("text") if kind == "text" else None})
        else:
            raise BadRow(f"message {number} has no content")
        messages.append({"role": role, "content": blocks})
    return _finish(messages, images, videos)


def _resolve(path: str, root: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(root, path))


def video_backend() -> str | None:
    """The `load_video` backend of the first installed decoder of `VIDEO_BACKENDS`, or `None`."""
    for module, backend in VIDEO_BACKENDS.items():
        if importlib.util.find_spec(module) is not None:
            return backend
    return None


def video_backend_available() -> bool:
    return video_backend() is not None


def frame_paths(folder: str) -> list[str]:
    """The image files of a folder of video frames, in name order."""
    return sorted(
        os.path.join(folder, name) for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS)
    )


def check_files(row: dict) -> None:
    """`BadRow` unless every image is a file and every video a decodable file or a folder holding frames."""
    for path in row["images"]:
        if not os.path.isfile(path):
            raise BadRow(f"image {path!r} does not exist")
    for path in row["videos"]:
        if os.path.isdir(path):
            if not frame_paths(path):
                raise BadRow(f"video folder {path!r} holds no frames ({', '.join(IMAGE_EXTENSIONS)})")
        elif not os.path.isfile(path):
            raise BadRow(f"video {path!r} does not exist")
        elif not video_backend_available():
            raise BadRow(
                f"video file {path!r} needs a video decoder: install one of {list(VIDEO_BACKENDS)} "
                "(e.g. `pip install av`), or give the video as a folder of frames"
            )


def normalize_row(row: dict, layout: str, root: str, check: bool = True) -> dict:
    """A row of `layout` ("llava" or "messages") as a normalised row with paths resolved against `root`."""
    normalized = llava_row(row) if layout == "llava" else messages_row(row)
    normalized["images"] = [_resolve(path, root) for path in normalized["images"]]
    normalized["videos"] = [_resolve(path, root) for path in normalized["videos"]]
    if check:
        check_files(normalized)
    return normalized


# ---------------------------------------------------------------- files


def read_rows(path: str):
    """`(row_number, row)` of a JSON array or JSONL file, numbered from 0 (a JSONL row is its line, blank lines
    skipped); a line that is not JSON yields `(row_number, BadRow)`."""
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as file:
            number = 0
            for line in file:
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, BadRow(f"not JSON: {error}")
                number += 1
        return
    with open(path, encoding="utf-8") as file:
        rows = json.load(file)
    if not isinstance(rows, list):
        raise ValueError(f"{path!r} must hold a JSON array of rows (or be a .jsonl file), got {type(rows).__name__}.")
    yield from enumerate(rows)


@dataclass
class DataReport:
    """What one pass over a data file found: its layout, how many rows it has, which could not be used and why."""

    path: str
    layout: str
    num_rows: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)

    @property
    def num_usable(self) -> int:
        return self.num_rows - len(self.bad_rows)

    def describe(self) -> str:
        shown = "; ".join(f"row {number}: {reason}" for number, reason in self.bad_rows[:REPORTED_ROWS])
        more = f"; and {len(self.bad_rows) - REPORTED_ROWS} more" if len(self.bad_rows) > REPORTED_ROWS else ""
        return f"{len(self.bad_rows)} of {self.num_rows} rows of {self.path} cannot be used (rows numbered from 0): {shown}{more}."


def _layout_of(path: str) -> str:
    for _, row in read_rows(path):
        if isinstance(row, dict):
            return detect_format(row)
    raise ValueError(f"{path!r} holds no rows.")


def scan(path: str, image_folder: str | None = None, on_bad_row: str = "error") -> DataReport:
    """One pass over a JSON/JSONL file: the layout, the row count and the unusable rows (nothing is decoded).

    With `on_bad_row="error"` any unusable row raises a `ValueError` listing them by number; with `"skip"` they are
    reported in a warning and left out by `iter_rows`.
    """
    validate_on_bad_row(on_bad_row)
    layout = _layout_of(path)
    root = image_folder or os.path.dirname(os.path.abspath(path))
    report = DataReport(path, layout)
    for number, row in read_rows(path):
        report.num_rows += 1
        try:
            if isinstance(row, BadRow):
                raise row
            if not isinstance(row, dict):
                raise BadRow(f"not an object but {type(row).__name__}")
            normalize_row(row, layout, root)
        except BadRow as error:
            report.bad_rows.append((number, str(error)))
    if report.bad_rows:
        if on_bad_row == "error":
            raise ValueError(report.describe() + " Fix them, or pass `--on_bad_row skip` to train without them.")
        warnings.warn("Skipping them: " + report.describe(), stacklevel=2)
    if not report.num_usable:
        raise ValueError(f"{path!r} has no usable row ({report.num_rows} rows).")
    return report


def iter_rows(path: str, image_folder: str | None = None, skip: frozenset[int] = frozenset()):
    """The normalised rows of a file, leaving out the row numbers in `skip` (files are checked by `scan`)."""
    layout = _layout_of(path)
    root = image_folder or os.path.dirname(os.path.abspath(path))
    for number, row in read_rows(path):
        if number in skip:
            continue
        yield normalize_row(row, layout, root, check=False)


def features():
    """The `datasets.Features` of a normalised row."""
    import datasets

    block = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    message = {"role": datasets.Value("string"), "content": datasets.List(block)}
    return datasets.Features(
        {
            "messages": datasets.List(message),
            "images": datasets.List(datasets.Value("string")),
            "videos": datasets.List(datasets.Value("string")),
        }
    )


def _generate(path: str, image_folder: str | None, skip: tuple[int, ...], fingerprint: tuple):
    yield from iter_rows(path, image_folder, frozenset(skip))


def load_local_dataset(
    path: str, image_folder: str | None = None, on_bad_row: str = "error", streaming: bool = False
):
    """A local JSON/JSONL file of either layout as `(dataset, report)`: normalised rows holding paths.

    Without `streaming` the rows are written once to a memory-mapped Arrow file (the `datasets` cache); with it they
    are read from the file as training consumes them. Either way no image is decoded before its batch.
    """
    if not path.endswith((".json", ".jsonl")):
        raise ValueError(f"A local dataset must be a .json or .jsonl file, got {path!r}.")
    import datasets

    report = scan(path, image_folder, on_bad_row)
    stat = os.stat(path)
    gen_kwargs = {
        "path": os.path.abspath(path),
        "image_folder": image_folder,
        # a tuple: `from_generator` would split a list into shards
        "skip": tuple(number for number, _ in report.bad_rows),
        # the cache of `from_generator` is keyed by these arguments: a changed file is read again
        "fingerprint": (stat.st_size, stat.st_mtime_ns),
    }
    builder = datasets.IterableDataset if streaming else datasets.Dataset
    return builder.from_generator(_generate, features=features(), gen_kwargs=gen_kwargs), report


def normalize_dataset(dataset, image_folder: str | None = None, on_bad_row: str = "error"):
    """A `datasets.Dataset` or `IterableDataset` in the LLaVA layout (a `conversations` column) as normalised rows;
    any other dataset is returned as it is. Relative paths start from `image_folder` (default: the working
    directory). A `Dataset` is checked row by row first (nothing decoded) and its unusable rows refused or left out as
    `scan` does; an `IterableDataset` checks each row as it streams, and with `on_bad_row="skip"` leaves out the
    unusable ones with a warning."""
    import datasets

    columns = dataset.column_names
    if columns is None or "conversations" not in columns:
        return dataset
    validate_on_bad_row(on_bad_row)
    root = image_folder or os.getcwd()
    visual_columns = [name for name in ("conversations", "image", "video") if name in columns]
    if isinstance(dataset, datasets.Dataset):
        report = DataReport("the training dataset", "llava", num_rows=len(dataset))
        for number, row in enumerate(dataset.select_columns(visual_columns)):
            try:
                normalize_row(row, "llava", root)
            except BadRow as error:
                report.bad_rows.append((number, str(error)))
        if report.bad_rows:
            if on_bad_row == "error":
                raise ValueError(report.describe() + " Fix them, or pass `on_bad_row='skip'` to train without them.")
            warnings.warn("Skipping them: " + report.describe(), stacklevel=2)
            bad = {number for number, _ in report.bad_rows}
            dataset = dataset.select([number for number in range(len(dataset)) if number not in bad])
        return dataset.map(
            lambda row: normalize_row(row, "llava", root, check=False), remove_columns=columns, features=features()
        )

    def rows(shard):
        for number, row in enumerate(shard):
            try:
                yield normalize_row(row, "llava", root)
            except BadRow as error:
                if on_bad_row == "error":
                    raise ValueError(f"Row {number} of the training stream cannot be used: {error}.") from error
                warnings.warn(f"Skipping row {number} of the training stream: {error}.", stacklevel=2)

    return datasets.IterableDataset.from_generator(rows, features=features(), gen_kwargs={"shard": dataset})


def steps_for(num_rows: int, per_device_batch_size: int, gradient_accumulation_steps: int, world_size: int, epochs: float) -> int:
    """The optimizer steps `Trainer` takes over `epochs` passes of `num_rows` rows (its own count for a sized set)."""
    batches = math.ceil(num_rows / (per_device_batch_size * world_size))
    per_epoch = max(batches // gradient_accumulation_steps + int(batches % gradient_accumulation_steps > 0), 1)
    return math.ceil(epochs * per_epoch)


# ---------------------------------------------------------------- conversion


def convert(input_path: str, output_path: str, image_folder: str | None = None, on_bad_row: str = "error") -> DataReport:
    """Writes a JSON/JSONL file of either layout as TRL-format JSONL (`messages` with content blocks, `images`,
    `videos`), paths relative to the output file's folder. Returns the report of the pass (unusable rows left out
    with `on_bad_row="skip"`)."""
    report = scan(input_path, image_folder, on_bad_row)
    out_root = os.path.dirname(os.path.abspath(output_path))
    skip = frozenset(number for number, _ in report.bad_rows)
    with open(output_path, "w", encoding="utf-8") as file:
        for row in iter_rows(input_path, image_folder, skip):
            for key in ("images", "videos"):
                row[key] = [os.path.relpath(path, out_root) for path in row[key]]
            for message in row["messages"]:
                message["content"] = [
                    {"type": "text", "text": block["text"]} if block["type"] == "text" else {"type": block["type"]}
                    for block in message["content"]
                ]
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="visionselector-data", description="Check and convert training data for the VisionSelector trainer."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("convert", "write a LLaVA/ShareGPT or TRL JSON/JSONL file as TRL-format JSONL (messages, images, videos)"),
        ("check", "report the rows that cannot be used, by number"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("input", help="a .json or .jsonl file")
        if name == "convert":
            command.add_argument("output", help="the .jsonl file to write")
        command.add_argument("--image_folder", default=None, help="folder relative paths start from (default: the input's)")
        if name == "convert":
            command.add_argument("--on_bad_row", choices=ON_BAD_ROW, default="error", help="refuse or leave out unusable rows")
    args = parser.parse_args(argv)
    if args.command == "convert":
        report = convert(args.input, args.output, args.image_folder, args.on_bad_row)
        print(f"Wrote {report.num_usable} of {report.num_rows} rows ({report.layout} layout) to {args.output}.")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = scan(args.input, args.image_folder, "skip")
        print(report.describe() if report.bad_rows else f"All {report.num_rows} rows ({report.layout} layout) are usable.")


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------- collation


def _load_image(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, dict):  # a `datasets.Image` left undecoded: {"bytes", "path"}
        if image.get("bytes") is not None:
            import io

            return _load_image(Image.open(io.BytesIO(image["bytes"])))
        image = image["path"]
    if isinstance(image, str):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    raise TypeError(f"An image must be a path or a PIL image, got {type(image).__name__}.")


def _load_video(video, fps: float):
    """`(frames, metadata)`: a video as a `(T, H, W, 3)` array and the `VideoMetadata` its processor reads the time
    from. A video file is sampled at `fps` by the first installed decoder (its metadata says which frames); a folder
    of frames, a list of frames (PIL images or paths) or an array is taken as sampled at `fps` already."""
    import numpy as np
    from transformers.video_utils import VideoMetadata

    if isinstance(video, str) and not os.path.isdir(video):
        from transformers.video_utils import load_video

        backend = video_backend()
        if backend is None:
            raise ValueError(f"video file {video!r} needs a video decoder: install one of {list(VIDEO_BACKENDS)}")
        return load_video(video, fps=fps, backend=backend)
    if isinstance(video, str):
        video = frame_paths(video)
    if isinstance(video, (list, tuple)):
        video = np.stack([np.asarray(_load_image(frame)) for frame in video])
    frames = len(video)
    return video, VideoMetadata(total_num_frames=frames, fps=fps, frames_indices=list(range(frames)))


def _render_messages(messages: list[dict]) -> list[dict]:
    """Content blocks as chat templates expect them: no `None` fields (a template tests `'image' in content`)."""
    rendered = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [{key: value for key, value in block.items() if value is not None} for block in content]
        rendered.append({"role": message["role"], "content": content})
    return rendered


class VisionLanguageCollator:
    """Builds a training batch from normalised rows (see the module docstring): opens the batch's images and video
    frames, renders the chat template and runs the processor. Labels are the input ids with padding at -100; the
    trainer's `VisionSelectorCollator` then masks the vision tokens and, for assistant-only loss, the other turns.

    Args:
        processor (`ProcessorMixin`): the model's processor (image and video processors, tokenizer, chat template).
        max_length (`int`, *optional*): truncation length; `None` (the default) does not truncate.
        on_bad_row (`str`, *optional*, defaults to `"error"`): a file that cannot be opened at this point (deleted or
            corrupt after the scan) raises (`"error"`), or drops its row from the batch with a warning (`"skip"`).
    """

    def __init__(self, processor, max_length: int | None = None, on_bad_row: str = "error"):
        self.processor = processor
        self.max_length = max_length
        self.on_bad_row = validate_on_bad_row(on_bad_row)

    def _load(self, example: dict):
        images = [_load_image(image) for image in example.get("images") or []]
        fps = getattr(getattr(self.processor, "video_processor", None), "fps", None) or DEFAULT_VIDEO_FPS
        videos = [_load_video(video, fps) for video in example.get("videos") or []]
        return images, videos

    def __call__(self, examples: list[dict]) -> dict:
        texts, images, videos, metadata = [], [], [], []
        for example in examples:
            try:
                example_images, example_videos = self._load(example)
            except (OSError, ValueError) as error:
                if self.on_bad_row == "error":
                    raise ValueError(f"Cannot open a visual of a training row: {error}") from error
                warnings.warn(f"Skipping a training row whose visual cannot be opened: {error}", stacklevel=2)
                continue
            images += example_images
            videos += [frames for frames, _ in example_videos]
            metadata += [video_metadata for _, video_metadata in example_videos]
            messages = _render_messages(example["messages"])
            texts.append(self.processor.apply_chat_template(messages, tokenize=False))
        if not texts:
            raise ValueError("Every row of this batch has a visual that cannot be opened.")
        batch = self.processor(
            text=texts,
            images=images or None,
            videos=videos or None,
            **({"video_metadata": metadata} if videos else {}),
            padding=True,
            padding_side="right",
            truncation=self.max_length is not None,
            max_length=self.max_length,
            add_special_tokens=False,
            return_tensors="pt",
        )
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return batch


def uses_vision_language_collator(sample: dict) -> bool:
    """Whether a dataset row is a normalised row (it has a `videos` column), which `VisionLanguageCollator` reads."""
    return isinstance(sample, dict) and "messages" in sample and "videos" in sample


__all__ = [
    "BadRow",
    "DataReport",
    "VisionLanguageCollator",
    "convert",
    "detect_format",
    "load_local_dataset",
    "llava_row",
    "messages_row",
    "normalize_dataset",
    "normalize_row",
    "scan",
    "steps_for",
]
