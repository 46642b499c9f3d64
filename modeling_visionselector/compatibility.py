"""Which transformers the remote code runs under, and the checks of the stock internals it relies on.

This code ships inside every checkpoint, so a version cap here would freeze each checkpoint at the releases of the
day it was saved. Instead:

- below `MIN_TRANSFORMERS` (the APIs the code is built on do not exist yet) importing it raises an `ImportError`;
- above the newest tested release line it loads with one warning naming the tested range;
- each stock internal it relies on (a signature, an output field, a returned shape) is checked where it is used,
  so a release that changes one fails there with a [`StockInternalError`] naming the internal and the installed
  version, not with a `TypeError` deep inside.

Code paths are chosen by what the installed transformers has (feature detection), not by its version.
`tests/test_stock_contract.py` pins every internal for every family, so a new release's breakage is named at once.
"""

from __future__ import annotations

import inspect
import warnings

import transformers
from packaging import version

# The oldest release the code runs on, and the first release line the test suite has not run on (it passed on
# 5.20.x to 5.25.x).
MIN_TRANSFORMERS = version.Version("5.20.0")
UNTESTED_TRANSFORMERS = version.Version("5.26.0")
TESTED_TRANSFORMERS = f">={MIN_TRANSFORMERS},<{UNTESTED_TRANSFORMERS}"
# The installed release, without pre-release or local tags (a 5.26.0.dev0 counts as 5.26.0).
TRANSFORMERS_VERSION = version.Version(version.Version(transformers.__version__).base_version)


_WARNED = "_visionselector_warned_untested_release"


class StockInternalError(RuntimeError):
    """A stock transformers internal VisionSelector relies on is missing or changed in the installed release."""


def check_transformers_version() -> None:
    """`ImportError` below `MIN_TRANSFORMERS`; one `UserWarning` above the tested range; nothing inside it."""
    installed = transformers.__version__
    if TRANSFORMERS_VERSION < MIN_TRANSFORMERS:
        raise ImportError(
            f"VisionSelector needs transformers >={MIN_TRANSFORMERS}, but transformers {installed} is installed: "
            f"`pip install 'transformers{TESTED_TRANSFORMERS}'`."
        )
    # transformers imports a checkpoint's code once per code file (each with its sibling imports), so this module
    # runs more than once per checkpoint: the mark that it warned sits on the one module all copies share.
    if TRANSFORMERS_VERSION >= UNTESTED_TRANSFORMERS and not getattr(transformers, _WARNED, False):
        setattr(transformers, _WARNED, True)
        warnings.warn(
            f"VisionSelector was tested with transformers {TESTED_TRANSFORMERS}; transformers {installed} is newer. It "
            "loads, and checks each transformers internal it relies on where it uses it: if this release changed "
            f"one, the error names it. Tested releases: `pip install 'transformers{TESTED_TRANSFORMERS}'`.",
            UserWarning,
            stacklevel=2,
        )


def missing_internal(error: ImportError) -> ImportError:
    """The `ImportError` to raise when an import of a transformers internal fails: it names the installed release."""
    return ImportError(
        f"VisionSelector relies on a transformers internal that transformers {transformers.__version__} lacks ({error}); "
        f"it was tested with transformers {TESTED_TRANSFORMERS}: `pip install 'transformers{TESTED_TRANSFORMERS}'`."
    )


def stock_internal_error(internal: str, problem: str) -> StockInternalError:
    """The error for a stock `internal` (e.g. `Qwen2_5_VLModel.get_rope_index`) that `problem` describes."""
    return StockInternalError(
        f"`{internal}` {problem} in transformers {transformers.__version__}: VisionSelector relies on it and was "
        f"tested with transformers {TESTED_TRANSFORMERS}. Install a tested release (`pip install "
        f"'transformers{TESTED_TRANSFORMERS}'`) or a VisionSelector release that supports this one."
    )


_NAMED_PARAMETERS: dict[object, frozenset[str]] = {}


def require_parameters(function, internal: str, names) -> None:
    """A [`StockInternalError`] unless `function` takes each of `names` as a named parameter (not only `**kwargs`,
    where a renamed argument would vanish silently)."""
    key = getattr(function, "__func__", function)
    if key not in _NAMED_PARAMETERS:
        parameters = inspect.signature(function).parameters.values()
        _NAMED_PARAMETERS[key] = frozenset(
            p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
    missing = [name for name in names if name not in _NAMED_PARAMETERS[key]]
    if missing:
        raise stock_internal_error(
            internal, f"takes no {', '.join(f'`{name}`' for name in missing)} (its signature: {inspect.signature(function)})"
        )


def require_fields(output, internal: str, names) -> None:
    """A [`StockInternalError`] unless `output` (what `internal` returned) has each field of `names`."""
    missing = [name for name in names if getattr(output, name, None) is None]
    if missing:
        raise stock_internal_error(
            internal, f"returned a {type(output).__name__} without {', '.join(f'`{name}`' for name in missing)}"
        )


__all__ = [
    "MIN_TRANSFORMERS",
    "TESTED_TRANSFORMERS",
    "TRANSFORMERS_VERSION",
    "UNTESTED_TRANSFORMERS",
    "StockInternalError",
    "check_transformers_version",
    "require_fields",
    "require_parameters",
    "stock_internal_error",
]
