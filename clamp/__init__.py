"""clamp: optogenetics for transformer training.

Clamp, freeze or ablate named subcircuits during chosen steps of training and time when
the induction head forms. The flow (docs/design.md): recipe.yaml ─spec→ Recipe ─compile→ Plan
─train→ run dir ─phases→ phase times ─graph→ graph ─report→ report.
"""
from .errors import InputError, RunError
from .spec import Recipe, load_recipe, recipe_from_data, dump_recipe, with_overrides
from .compile import Plan, compile_plan
from .runs import Run, run
from .bench import bench, load_suite
from .graph import Graph

__all__ = ["InputError", "RunError", "Recipe", "load_recipe", "recipe_from_data", "dump_recipe",
           "with_overrides", "Plan", "compile_plan", "Run", "run", "bench", "load_suite", "Graph"]
__version__ = "0.1.0"
