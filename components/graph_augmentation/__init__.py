"""GraphAugmentation: NSL neighbor features joined into Examples with Beam.

Loads the component on first use, for the reason given in
tfx_nsl.components.graph_builder.
"""
import tfx_nsl

__all__ = ['GraphAugmentation']


__getattr__ = tfx_nsl.lazy_getattr(
    __name__, {'GraphAugmentation': f'{__name__}.component'})
