"""Custom TFX components of tfx-nsl."""
from tfx_nsl.components.graph_builder import GraphBuilder

__all__ = ['GraphBuilder']
