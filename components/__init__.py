"""Custom TFX components of tfx-nsl.

Each component loads on first use (PEP 562), so that a worker importing one
executor does not import the others: GraphBuilder's and the
RobustnessEvaluator's pull in TFX's standard components and TFMA (about
150 MB and 2 s), which GraphAugmentation's executor does not need.
"""
import importlib

_LAZY = {
    'GraphAugmentation': 'tfx_nsl.components.graph_augmentation',
    'GraphBuilder': 'tfx_nsl.components.graph_builder',
    'RobustnessEvaluator': 'tfx_nsl.components.robustness_evaluator',
}

__all__ = list(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
