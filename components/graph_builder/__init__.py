"""GraphBuilder component and its search modes.

The component loads on first use (PEP 562): a package whose __init__
imports its executor lets two SDK harness threads deadlock on import
locks (one in the executor waiting for `scoring`, the other holding
`scoring` and waiting for the half-initialized package), which Flink's
workers hit when unpickling functions of both modules at once.
"""
import tfx_nsl

from tfx_nsl.components.graph_builder.params import Exact
from tfx_nsl.components.graph_builder.params import Lsh
from tfx_nsl.components.graph_builder.params import Partition

__all__ = ['GraphBuilder', 'Exact', 'Lsh', 'Partition']


__getattr__ = tfx_nsl.lazy_getattr(
    __name__, {'GraphBuilder': f'{__name__}.component'})
