"""clamp: optogenetics for transformer training.

Clamp, freeze or ablate named subcircuits during chosen steps of training and time when
the induction head forms. The flow (docs/design.md): recipe.yaml ─spec→ Recipe ─compile→ Plan
─train→ run dir ─phases→ phase times ─graph→ graph ─report→ report.

The curated API (everything else is importable from its module, but may change):
"""
from .errors import InputError, RunError
from .recipe import Recipe, dump_recipe
from .spec import load_recipe, recipe_from_data, with_overrides
from .compile import Plan, compile_plan
from .runs import Run, run
from .suite import Suite, load_suite
from .results import SuiteResult, load_results
from .graph import Graph
from .explanations import compare, explain, predict
from .api import bench, plan
from .adapter import Adapter
from .usermodel import model_factory
from .plugins import trust_plugins

__all__ = ["InputError", "RunError", "Recipe", "load_recipe", "recipe_from_data", "dump_recipe",
           "with_overrides", "Plan", "compile_plan", "plan", "Run", "run", "Suite", "load_suite", "bench",
           "SuiteResult", "load_results", "Graph", "explain", "compare", "predict", "Adapter", "model_factory",
           "trust_plugins"]
__version__ = "0.1.0"
