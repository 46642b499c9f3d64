"""Deprecated name of `visionselector.publishing` (saving, pushing and converting scorer-only artifacts).

The publishing code is not remote code, so it left the folder that checkpoints ship. This package only re-exports
it, with a `FutureWarning`, for one release. (It is a folder, not a `hub_utils.py`, so that git sees the move of
`hub_utils.py` to `visionselector/publishing.py` as the rename it is.)
"""

import warnings

warnings.warn(
    "`modeling_visionselector.hub_utils` moved to `visionselector.publishing` and will be removed in the next "
    "release: `from visionselector.publishing import save_scorer, push_scorer_to_hub, convert_checkpoint_to_scorer`.",
    FutureWarning,
    stacklevel=2,
)

from visionselector.publishing import *  # noqa: E402, F401, F403
from visionselector.publishing import __all__  # noqa: E402, F401
