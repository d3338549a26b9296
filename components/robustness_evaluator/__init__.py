"""RobustnessEvaluator component.

Loads the component on first use, for the reason given in
tfx_nsl.components.graph_builder.
"""
import tfx_nsl

__all__ = ['RobustnessEvaluator']


__getattr__ = tfx_nsl.lazy_getattr(
    __name__, {'RobustnessEvaluator': f'{__name__}.component'})
