"""Publish a VisionSelector scorer: a few megabytes that point at the official backbone.

Usage:

    # a scorer-only folder from a full checkpoint (a `save_pretrained` of ours, or the paper's released ones)
    visionselector-hub save --checkpoint runs/7b/final --output_dir scorer-7b --results results.json
    visionselector-hub save --checkpoint path/to/VisionSelector-Qwen2.5-VL-7B \
        --base_model Qwen/Qwen2.5-VL-7B-Instruct --output_dir scorer-7b          # `convert` is the same command

    # a full checkpoint from a scorer-only artifact, for engines that load one folder (vLLM): the backbone's
    # shards are copied as they are, the scorer added as one more shard
    visionselector-hub merge --scorer me/VisionSelector-Qwen2.5-VL-7B --output_dir VisionSelector-Qwen2.5-VL-7B-full

    # the same, uploaded in one commit (the repo is created if needed)
    visionselector-hub push --checkpoint runs/7b/final --repo_id me/VisionSelector-Qwen2.5-VL-7B --private \
        --revision v1 --commit_message "Scorer trained at 20% retention"

    # one code repository for all your scorers: push the code once, then point each scorer at it (`auto_map`
    # "me/visionselector-code--module.Class"), so that a fix pushed there reaches every scorer
    visionselector-hub push-code --repo_id me/visionselector-code
    visionselector-hub push --checkpoint runs/7b/final --repo_id me/VisionSelector-Qwen2.5-VL-7B \
        --code_repo me/visionselector-code
    visionselector-hub save-code --output_dir visionselector-code                  # the same, as a local folder

Only the config and the scorer tensors of the checkpoint are read; the backbone is never loaded (`merge` copies
its files).
(`python -m visionselector.hub ...` works the same.)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from safetensors import SafetensorError
from transformers import HfArgumentParser

from visionselector.publishing import convert_checkpoint_to_scorer, push_code_to_hub, push_scorer_to_hub, save_code


@dataclass
class ScorerArguments:
    checkpoint: str = field(
        metadata={
            "help": "Folder or Hub id of a full checkpoint: a `save_pretrained` of VisionSelectorForConditionalGeneration, "
            "or the paper's VisionSelector-Qwen2.5-VL-3B/7B."
        }
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Hub id of the backbone (default: the checkpoint config's `base_model_name_or_path`)."},
    )
    base_model_revision: str | None = field(default=None, metadata={"help": "Revision of the backbone."})
    processor: str = field(
        default="checkpoint",
        metadata={"help": "'checkpoint' ships the checkpoint's processor, 'none' ships none, else a folder/Hub id."},
    )
    results: str | None = field(
        default=None, metadata={"help": "Accuracy-vs-retention table for the model card: a .json, .csv or .md file."}
    )
    license: str = field(default="apache-2.0", metadata={"help": "Licence of the scorer (card metadata)."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra Hub tags."})
    code_repo: str | None = field(
        default=None,
        metadata={
            "help": "A shared code repository (Hub id, or a folder `save-code` wrote) that the scorer's auto_map points "
            "at, instead of shipping its own copy of the code (the default)."
        },
    )


@dataclass
class SaveArguments:
    output_dir: str = field(metadata={"help": "The scorer-only folder to write."})


@dataclass
class PushArguments:
    repo_id: str = field(metadata={"help": "The Hub model repo, e.g. me/VisionSelector-Qwen2.5-VL-7B."})
    private: bool = field(default=False, metadata={"help": "Create the repo private (an existing repo keeps its own)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to; created if missing."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})


@dataclass
class MergeArguments:
    scorer: str = field(metadata={"help": "Folder or Hub id of a scorer-only artifact (`scorer_only: true`)."})
    output_dir: str = field(metadata={"help": "The full checkpoint folder to write."})
    base_model: str | None = field(
        default=None,
        metadata={"help": "Folder or Hub id of the backbone (default: the artifact config's `base_model_name_or_path`)."},
    )
    base_model_revision: str | None = field(default=None, metadata={"help": "Revision of the backbone."})
    revision: str | None = field(default=None, metadata={"help": "Revision of the artifact."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})


@dataclass
class SaveCodeArguments:
    output_dir: str = field(metadata={"help": "The code folder to write."})


COMMANDS = {
    "save": SaveArguments,
    "convert": SaveArguments,
    "push": PushArguments,
    "merge": MergeArguments,
    "save-code": SaveCodeArguments,
    "push-code": PushArguments,
}


def _processor(value: str):
    if value == "checkpoint":
        return "checkpoint"
    if value.lower() == "none":
        return None
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(value, trust_remote_code=False)  # a stock processor: no remote code


def main(argv: list[str] | None = None, api=None) -> int:
    """Runs `visionselector-hub <command> ...` (the commands of `COMMANDS`); `api` (an `HfApi`) is for tests.

    Returns 0 on success, 2 on a usage error or a failure, which is printed as one `error:` line.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + f"\nCommands: {', '.join(COMMANDS)}; `<command> --help` lists the options.", file=sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"visionselector-hub: error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    command = argv[0]
    prog = f"visionselector-hub {command}"
    try:
        if command == "merge":
            _merge(argv[1:], prog)
        elif command in ("save-code", "push-code"):
            _code(command, argv[1:], prog, api)
        else:
            parser = HfArgumentParser((ScorerArguments, COMMANDS[command]), prog=prog)
            scorer_args, command_args = parser.parse_args_into_dataclasses(args=argv[1:])
            _run(command, scorer_args, command_args, api)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed by argparse
        return int(exit_.code or 0)
    except (ValueError, OSError, SafetensorError) as error:
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


def _merge(argv: list[str], prog: str) -> None:
    from visionselector.merge import merge_scorer_artifact

    (args,) = HfArgumentParser(MergeArguments, prog=prog).parse_args_into_dataclasses(args=argv)
    _check_local(args.scorer, "--scorer")
    _check_local(args.base_model, "--base_model")
    folder = merge_scorer_artifact(
        args.scorer,
        args.output_dir,
        base_model_name_or_path=args.base_model,
        base_model_revision=args.base_model_revision,
        revision=args.revision,
        **({"token": args.token} if args.token else {}),
    )
    print(f"Wrote the full checkpoint to {folder}")


def _code(command: str, argv: list[str], prog: str, api) -> None:
    """`save-code` / `push-code`: the shared code repository that `--code_repo` artifacts point at."""
    (args,) = HfArgumentParser(COMMANDS[command], prog=prog).parse_args_into_dataclasses(args=argv)
    if command == "save-code":
        print(f"Wrote the code repository to {save_code(args.output_dir)}")
        return
    commit = push_code_to_hub(
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        token=args.token,
        api=api,
    )
    print(f"Uploaded the code to {getattr(commit, 'commit_url', None) or args.repo_id}")


def _check_local(value: str | None, option: str) -> None:
    """A `ValueError` for a path that can only be local (absolute, `./`, `~`, or deeper than `org/name`) but is not a
    folder here; a Hub id is left to the Hub."""
    if value is None:
        return
    path = os.path.expanduser(value)
    if os.path.isfile(path):
        raise ValueError(f"{option} {value!r} is a file; it must be a folder or a Hub id.")
    if (os.path.isabs(path) or value.startswith((".", "~")) or value.count("/") > 1) and not os.path.isdir(path):
        raise ValueError(f"{option} {value!r}: no such folder (a local path; a Hub id has the form org/name).")


def _run(command: str, scorer_args: ScorerArguments, command_args, api) -> None:
    from transformers import PreTrainedConfig

    _check_local(scorer_args.checkpoint, "--checkpoint")
    try:
        stored, _ = PreTrainedConfig.get_config_dict(scorer_args.checkpoint)
    except OSError as error:
        raise OSError(f"cannot read the config of --checkpoint {scorer_args.checkpoint!r}: {error}") from error
    if not isinstance(stored, dict):
        raise ValueError(f"the config.json of --checkpoint {scorer_args.checkpoint!r} is not a JSON object.")
    if not scorer_args.base_model and not stored.get("base_model_name_or_path"):
        raise ValueError(
            f"the config of {scorer_args.checkpoint} names no backbone (the paper's releases don't): pass "
            "--base_model with the Hub id the scorer was trained on, e.g. --base_model Qwen/Qwen2.5-VL-7B-Instruct"
        )
    common = dict(
        base_model_name_or_path=scorer_args.base_model,
        base_model_revision=scorer_args.base_model_revision,
        processor=_processor(scorer_args.processor),
        results=scorer_args.results,
        license=scorer_args.license,
        tags=scorer_args.tags,
        code_repo=scorer_args.code_repo,
    )
    if command == "push":
        commit = push_scorer_to_hub(
            scorer_args.checkpoint,
            command_args.repo_id,
            private=command_args.private,
            revision=command_args.revision,
            commit_message=command_args.commit_message,
            create_pr=command_args.create_pr,
            token=command_args.token,
            api=api,
            **common,
        )
        print(f"Uploaded the scorer to {getattr(commit, 'commit_url', None) or command_args.repo_id}")
    else:
        folder = convert_checkpoint_to_scorer(scorer_args.checkpoint, command_args.output_dir, **common)
        print(f"Wrote the scorer-only artifact to {folder}")


if __name__ == "__main__":
    sys.exit(main())
