"""Progress measures: the metric columns of an evaluation (the plug-in interface and the built-ins).

Layer 2 of 7 (model layer, beside models/, tasks/ and values/); imports names/, models/ and
tasks/. `from clamp.measures import Measure, register_measure` is the plug-in interface (README,
"Extending clamp").
"""
from .base import *  # noqa: F401,F403
from .base import MEASURE_PLUGINS, Measure, register_measure  # noqa: F401
