"""Custom TFX components of tfx-nsl."""
from tfx_nsl.components.graph_augmentation import GraphAugmentation
from tfx_nsl.components.graph_builder import GraphBuilder
from tfx_nsl.components.robustness_evaluator import RobustnessEvaluator

__all__ = ['GraphAugmentation', 'GraphBuilder', 'RobustnessEvaluator']
