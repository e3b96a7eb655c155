"""clamp: optogenetics for transformer training.

Clamp, freeze or ablate named subcircuits during chosen steps of training and time when
the induction head forms. The flow (docs/design.md): recipe.yaml ─spec→ Recipe ─compile→ Plan
─train→ run dir ─phases→ phase times ─graph→ graph ─report→ report.

The curated API (everything else is importable from its module, but may change):
"""
from .analysis.explanations import compare, explain, predict
from .analysis.graph import Graph
from .analysis.results import SuiteResult, load_results
from .api import Discovery, bench, discover, plan, prepare_text
from .models.adapter import Adapter
from .models.plugins import trust_plugins
from .models.usermodel import model_factory
from .names.errors import InputError, RunError
from .recipe.compile import Plan, compile_plan
from .recipe.spec import load_recipe, recipe_from_data, with_overrides
from .recipe.suite import Suite, load_suite
from .recipe.types import Recipe, dump_recipe
from .training.runs import Run, run

__all__ = ["InputError", "RunError", "Recipe", "load_recipe", "recipe_from_data", "dump_recipe",
           "with_overrides", "Plan", "compile_plan", "plan", "Run", "run", "Suite", "load_suite", "bench",
           "SuiteResult", "load_results", "Graph", "explain", "compare", "predict", "Adapter", "model_factory",
           "trust_plugins", "discover", "Discovery", "prepare_text"]
__version__ = "0.1.0"
