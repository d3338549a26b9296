"""RobustnessEvaluator component."""
from tfx_nsl.components.robustness_evaluator.component import RobustnessEvaluator
