"""Value sources: what a clamp or an ablation sets a site to (the plug-in interface and the built-ins).

Layer 2 of 7 (model layer, beside models/, tasks/ and measures/); imports names/, models/ and
tasks/. `from clamp.values import ValueSource, register_value, NoOptions, Context` is the
plug-in interface (README, "Extending clamp"); base.py defines it, and each other module here
holds built-in sources, registered when this package is imported. Adding one is one class in one
of these files (or a new file listed below) and its doc line.
"""
from . import ablations, graft, patterns, residual  # noqa: F401,E402  (register the built-in sources)
from .ablations import Constant, Mean, Resample, Zero  # noqa: F401
from .base import VALUES, Context, NoOptions, ValueSource, get_value, register_value, row_mask  # noqa: F401
from .graft import Graft  # noqa: F401
from .patterns import (  # noqa: F401
    DisallowPreviousToken,
    Induction,
    Match,
    PerfectCopy,
    PreviousToken,
    PreviousTokenOptions,  # noqa: F401
)
from .residual import Embedding, PreviousTokenInput, embedding_residual  # noqa: F401
