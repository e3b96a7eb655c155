"""Progress measures: the metric columns of an evaluation (the plug-in interface and the built-ins).

Layer 2 of 7 (model layer, beside models/, tasks/ and values/); imports names/, models/ and tasks/.
`from clamp.measures import Measure, register_measure` is the plug-in interface (README,
"Extending clamp"); base.py defines it, and each other module here holds built-in measures,
registered when this package is imported. A built-in is a plug-in's equal: adding one is one class
in one of these files (or a new file imported below) and its line in the README's measure list.
"""
from . import attention, scores, similarity, weights  # noqa: F401,E402  (register the built-in measures)
from .attention import induction_strengths, prev_token_scores  # noqa: F401,E402
from .base import (  # noqa: F401
                   MEASURE_PLUGINS,
                   MEASURES,
                   REPEATS,
                   Measure,
                   Outputs,
                   evaluate,
                   forwards,
                   head_column,
                   head_site,
                   instances,
                   needs_repeats,
                   per_head,
                   register_measure,
                   run_forwards,
                   score,
)
from .scores import position_accuracies  # noqa: F401,E402
from .similarity import negative_similarities  # noqa: F401,E402
from .weights import composition_baseline, composition_scores, copying_scores  # noqa: F401,E402
