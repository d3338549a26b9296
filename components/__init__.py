"""Custom TFX components of tfx-nsl.

Each component loads on first use (PEP 562), so that a worker importing one
executor does not import the others: GraphBuilder's and the
RobustnessEvaluator's pull in TFX's standard components and TFMA (about
150 MB and 2 s), which GraphAugmentation's executor does not need.
"""
import tfx_nsl

_LAZY = {
    'GraphAugmentation': 'tfx_nsl.components.graph_augmentation',
    'GraphBuilder': 'tfx_nsl.components.graph_builder',
    'RobustnessEvaluator': 'tfx_nsl.components.robustness_evaluator',
}

__all__ = list(_LAZY)

__getattr__ = tfx_nsl.lazy_getattr(__name__, _LAZY)
