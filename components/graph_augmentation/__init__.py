"""GraphAugmentation: NSL neighbor features joined into Examples with Beam."""
from tfx_nsl.components.graph_augmentation.component import GraphAugmentation

__all__ = ['GraphAugmentation']
