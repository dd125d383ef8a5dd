"""Model evaluation: every decision mode from one pass of backbone features, a report and its plots.

`evaluate_model(MODEL, CORPUS, OUT)` is what `retinascan evaluate` runs. It depends on `training` (feature
cache, head outputs) and `metrics`; nothing in training depends on it, and neither imports the pipeline.
"""

from .modes import EVALUATION_MODES, all_decisions
from .run import EvaluationResult, EvaluationSettings, evaluate_model

__all__ = ["EVALUATION_MODES", "EvaluationResult", "EvaluationSettings", "all_decisions", "evaluate_model"]
