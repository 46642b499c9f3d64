"""Writing an output folder safely: never into a command's own inputs, and all or nothing.

`written_folder(target, inputs)` refuses a `target` that is one of the local `inputs` or lies inside one, then hands
out a temporary folder next to `target` (same file system) to write into. On success the written files move into
`target` by `os.replace` (a missing or empty `target` is replaced by the whole folder in one rename); on failure the
temporary folder is removed and `target` is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_not_an_input(
    target: str | os.PathLike, inputs: dict[str, object], target_name: str = "output_dir", nested: bool = True
) -> None:
    """A `ValueError` if `target` is (or, with `nested`, lies inside) one of the local paths in `inputs` (name -> path).

    Inputs that are not local paths (Hub ids, None, objects) are skipped.
    """
    resolved = Path(target).expanduser().resolve()
    for name, value in inputs.items():
        if not isinstance(value, (str, os.PathLike)) or not os.path.exists(os.path.expanduser(value)):
            continue
        source = Path(value).expanduser().resolve()
        if resolved == source or (nested and source in resolved.parents):
            raise ValueError(
                f"`{target_name}` {str(target)!r} is {'the' if resolved == source else 'inside the'} input `{name}` "
                f"{str(value)!r}: writing there would overwrite the input. Choose another folder."
            )


@contextlib.contextmanager
def written_folder(
    target: str | os.PathLike, inputs: dict[str, object] | None = None, target_name: str = "output_dir", nested: bool = True
) -> Iterator[Path]:
    """Yields a fresh temporary folder next to `target`; its files land in `target` only if the block succeeds."""
    target = Path(target).expanduser()
    check_not_an_input(target, inputs or {}, target_name, nested)
    if target.exists() and not target.is_dir():
        raise ValueError(f"`{target_name}` {str(target)!r} is a file, not a folder.")
    parent = target.absolute().parent
    if not parent.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the folder it becomes gets the usual mode
    try:
        yield staging
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if not target.exists():
            os.replace(staging, target)
            return
        for path in sorted(staging.rglob("*")):  # into an existing folder: file by file, each replace atomic
            destination = target / path.relative_to(staging)
            if path.is_dir():
                destination.mkdir(exist_ok=True)
            else:
                os.replace(path, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
