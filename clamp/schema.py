"""Where plug-ins import the helpers for their options from: `from clamp.schema import opt, positive`.

Top layer (a re-export; the definitions are clamp/names/schema.py's).
"""
from .names.schema import between, non_negative, opt, positive, unbuild  # noqa: F401
